"""config.json fields of the released checkpoints this library targets (facts and sources in
the repository's shared/PRETRAINED.md notes), for building the full-size models abstractly
(``jax.eval_shape``: parameter counts, the memory plan, validating the fine-tune presets)
without their weights.

    from sleep_lm.pretrained import published
    cfg = qwen2.config_from_hf(published.JET_NEMOTRON_2B)
"""

# ByteDance/Ouro-1.4B config.json (Apache-2.0 model; remote modeling code).
OURO_1_4B = {
    "model_type": "ouro",
    "vocab_size": 49152,
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "head_dim": 128,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "total_ut_steps": 4,
    "early_exit_threshold": 1.0,
}

# jetai/modeling/configs/jetlm_2B.json (NVlabs/Jet-Nemotron): the fields the qwen2 family
# reads. Full attention at layers 14 and 19, sliding window at 20 and 21, Jet elsewhere.
JET_NEMOTRON_2B = {
    "model_type": "jet_nemotron",
    "vocab_size": 151936,
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    "layer_types": ["jet"] * 14 + ["attn"] + ["jet"] * 4 + ["attn", "swa", "swa"] + ["jet"] * 6,
    "efficient_attention_config": {
        "jet": {
            "conv_size": 4,
            "dconv_generator_reduction": 8,
            "expand_v": 2.6666666667,
            "head_dim": 96,
            "norm_eps": "1e-5",
            "num_heads": 12,
        },
        "swa": {"window_size": 1152},
    },
}
