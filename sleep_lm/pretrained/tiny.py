r"""Tiny random checkpoints in Hugging Face layout: the pretrained path without a download.

    python -m sleep_lm.pretrained.tiny --family=ouro --out=/tmp/tiny_ouro
    python -m sleep_lm.pretrained.tiny --family=jet_nemotron --out=/tmp/tiny_jet

writes a directory that ``load_hf`` / ``load_tokenizer`` read like a downloaded model:

* ``config.json`` + ``model.safetensors``: a randomly initialised (``--seed``) model of the
  family at toy size (width 32, 4 heads of 8, 2 KV heads, SwiGLU 64):
  - ``ouro``: an Ouro checkpoint as on the hub (no Jet layers: a run inserts them at load
    with ``model.hf_options.jet_positions``, as the paper does to Ouro-1.4B), 2 layers looped
    ``total_ut_steps`` = 2 times, untied head, early-exit gate;
  - ``jet_nemotron``: a Jet-Nemotron-style decoder of 4 layers "jet, attn, swa, jet"
    (sliding window 16), tied embeddings, Jet blocks of 2 heads (key 8, value 16);
* ``tokenizer.json``: a byte-level BPE (the GPT-2 / Qwen / SmolLM scheme: every byte is a
  token, so any text encodes) with ``TOKENIZER_VOCAB`` tokens: "<|endoftext|>" (id 0), the
  256 byte tokens and merges learned from GSM-Infinite problem text of the generator
  (fixed seed; the ``tokenizers`` trainer is deterministic, so the file is too). Problems
  take about 2.7x fewer tokens than bytes. The model's vocabulary equals the tokenizer's.

Nothing is downloaded and no torch is needed. ``experiments/gsm_infinite.py:tiny`` (and
``:tiny_jet``) train and evaluate from such a directory on a CPU in seconds; the weights are
random, so the numbers say only that the path runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

FAMILIES = ("ouro", "jet_nemotron")
TOKENIZER_VOCAB = 384
END_TOKEN = "<|endoftext|>"


def train_tokenizer(vocab_size: int = TOKENIZER_VOCAB, problems: int = 60):
    """A byte-level BPE ``tokenizers.Tokenizer`` with ``vocab_size`` tokens (END_TOKEN = id 0),
    its merges learned from ``problems`` GSM-Infinite prompts + answers (generator seed 0)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from sleep_lm.tasks.gsm_infinite import generator

    if vocab_size < 257:
        raise ValueError(f"vocab_size: allowed >= 257 (256 bytes + end token), got {vocab_size}")
    rng = np.random.default_rng(0)
    texts = []
    for i in range(problems):
        p = generator.generate_problem(
            rng,
            op=2 + i % 4,  # ops >= 2, the benchmark's smallest
            mode=generator.MODES[i % len(generator.MODES)],
            template=generator.TEMPLATES[i % len(generator.TEMPLATES)],
            level=generator.LEVELS[i % len(generator.LEVELS)],
            length=600,  # bytes: the question, the statements it needs and distractors
        )
        texts.append(p["prompt"] + generator.answer_text(p["answer"]))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def tiny_model(family: str, vocab_size: int = TOKENIZER_VOCAB):
    """The Flax module of a tiny random checkpoint of ``family`` (see the module docstring)."""
    extra = json.dumps({"bos_token_id": 0, "eos_token_id": 0, "max_position_embeddings": 4096})
    if family == "ouro":
        from sleep_lm.model.ouro import OuroConfig, OuroLM

        cfg = OuroConfig(
            vocab_size=vocab_size,
            width=32,
            intermediate_size=64,
            num_layers=2,
            heads=4,
            kv_heads=2,
            head_dim=8,
            rope_theta=10_000.0,
            total_ut_steps=2,
            hf_extra=extra,
        )
        return OuroLM(cfg)
    if family == "jet_nemotron":
        from sleep_lm.model.qwen2 import Qwen2Config, Qwen2LM

        cfg = Qwen2Config(
            vocab_size=vocab_size,
            width=32,
            intermediate=64,
            heads=4,
            kv_heads=2,
            head_dim=8,
            layers=("jet", "attn", "swa", "jet"),
            sliding_window=16,
            rope_theta=10_000.0,
            tie_embeddings=True,
            jet_heads=2,
            jet_key_head_dim=8,
            jet_value_head_dim=16,
            hf_extra=extra,
        )
        return Qwen2LM(config=cfg)
    raise ValueError(f"family: allowed {', '.join(FAMILIES)}, got {family!r}")


def write_tiny(out, family: str = "ouro", seed: int = 0) -> str:
    """Writes the tiny checkpoint of ``family`` (config.json, model.safetensors,
    tokenizer.json) into directory ``out``; returns its path."""
    import jax

    from sleep_lm.pretrained.hf import save_hf

    out = os.path.expanduser(os.fspath(out))
    tok = train_tokenizer()
    model = tiny_model(family, vocab_size=tok.get_vocab_size())
    params = model.init_params(jax.random.key(seed))
    save_hf(model, params, out)
    tok.save(os.path.join(out, "tokenizer.json"))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sleep_lm.pretrained.tiny",
        description="Write a tiny random checkpoint in Hugging Face layout (no download).",
    )
    parser.add_argument("--family", choices=FAMILIES, default="ouro")
    parser.add_argument("--out", required=True, help="directory to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    path = write_tiny(args.out, args.family, args.seed)
    print(f"wrote a tiny random {args.family} checkpoint to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
