"""Pretrained model families loaded from and saved to Hugging Face checkpoints (issue 10).

    model, params = load_hf("/path/to/checkpoint", window=2048)   # config.json + safetensors
    logits, state = model.apply({"params": params}, tokens, positions, model.init_state(1))
    save_hf(model, params, "/path/to/export")
    tok = load_tokenizer("/path/to/checkpoint")                    # tokenizer.json

Families register themselves in `registry.FAMILIES` when their module is imported below:
`qwen2` (model_types qwen2, jet_nemotron) and `ouro` (model_type ouro).
"""

from sleep_lm.pretrained import ouro, qwen2  # noqa: F401  (register the families)
from sleep_lm.pretrained.hf import load_hf, save_hf
from sleep_lm.pretrained.registry import FAMILIES, Family, for_model_type, for_name, register
from sleep_lm.pretrained.tokenizer import load_tokenizer

__all__ = [
    "FAMILIES",
    "Family",
    "for_model_type",
    "for_name",
    "load_hf",
    "load_tokenizer",
    "register",
    "save_hf",
]
