"""The tokenizer of a Hugging Face checkpoint directory: its `tokenizer.json`, read by the
`tokenizers` package (the fast tokenizer's own file; no transformers needed)."""

from __future__ import annotations

import os

TOKENIZER = "tokenizer.json"


def load_tokenizer(path):
    """`tokenizers.Tokenizer` from `path`/tokenizer.json (ValueError if it is missing).

    Use `tok.encode(text).ids` / `tok.decode(ids)`; token ids index the model's vocabulary.
    """
    from tokenizers import Tokenizer

    path = os.path.expanduser(os.fspath(path))
    if not os.path.isdir(path):
        raise ValueError(f"checkpoint directory {path!r} does not exist")
    file = os.path.join(path, TOKENIZER)
    if not os.path.isfile(file):
        raise ValueError(f"checkpoint directory {path!r} has no {TOKENIZER}")
    return Tokenizer.from_file(file)
