"""The tokenizer of a Hugging Face checkpoint directory: its `tokenizer.json`, read by the
`tokenizers` package (the fast tokenizer's own file; no transformers needed)."""

from __future__ import annotations

from sleep_lm.pretrained.hf import checkpoint_file

TOKENIZER = "tokenizer.json"


def load_tokenizer(path):
    """`tokenizers.Tokenizer` from `path`/tokenizer.json (ValueError if it is missing).

    Use `tok.encode(text).ids` / `tok.decode(ids)`; token ids index the model's vocabulary.
    """
    from tokenizers import Tokenizer

    return Tokenizer.from_file(checkpoint_file(path, TOKENIZER))
