"""Tokenizers for the GSM-Infinite task: byte-level, or a Hugging Face ``tokenizer.json``.

Both expose ``encode(text) -> list[int]``, ``decode(ids) -> str``, ``vocab_size``,
``end_id`` (the token that ends an example; it is scored) and ``filler_id`` (the neutral token
that pads an example at the front to the exact sequence length).

- ``ByteTokenizer``: token b (0..255) is the UTF-8 byte b; 256 is the end token. The filler
  is the space byte (32). Vocabulary 257. For models trained from scratch.
- ``HFTokenizer``: a ``tokenizer.json`` read with the ``tokenizers`` package (no
  transformers). The end token is ``end_token`` or, by default, the first of
  ``DEFAULT_END_TOKENS`` the file defines; the filler is the single token that encodes " "
  (or ``filler`` when given). Encoding adds no special tokens (no BOS): lengths are measured
  in this tokenizer.
"""

from __future__ import annotations

END_BYTE = 256
DEFAULT_END_TOKENS = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>")


class ByteTokenizer:
    vocab_size = 257
    end_id = END_BYTE
    filler_id = ord(" ")
    name = "bytes"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        out = bytearray()
        text = []
        for i in ids:
            i = int(i)
            if 0 <= i < 256:
                out.append(i)
            else:
                text.append(out.decode("utf-8", errors="replace"))
                out = bytearray()
                text.append("<end>" if i == END_BYTE else f"<{i}>")
        text.append(out.decode("utf-8", errors="replace"))
        return "".join(text)

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class HFTokenizer:
    """A ``tokenizer.json`` through the ``tokenizers`` package; see the module docstring."""

    def __init__(self, path: str, end_token: str | None = None, filler: str | None = None):
        try:
            import tokenizers
        except ImportError as e:  # an install dependency, but keep the message actionable
            raise ValueError(f"tokenizer: needs the tokenizers package ({e})") from None
        try:
            self._tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - any parse failure is a bad config value
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"tokenizer: cannot read {path!r} ({first})") from None
        self.name = str(path)
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        candidates = (end_token,) if end_token else DEFAULT_END_TOKENS
        ids = [self._tok.token_to_id(t) for t in candidates]
        found = [i for i in ids if i is not None]
        if not found:
            raise ValueError(
                f"end_token: none of {', '.join(candidates)} is a token of {path!r}; "
                "set task.end_token"
            )
        self.end_id = int(found[0])
        filler_ids = self.encode(filler if filler is not None else " ")
        if len(filler_ids) != 1:
            raise ValueError(
                f"filler: {filler or ' '!r} is {len(filler_ids)} tokens in {path!r}, not one; "
                "set task.filler"
            )
        self.filler_id = int(filler_ids[0])

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name!r})"


def get_tokenizer(path: str | None = None, end_token: str | None = None, filler=None):
    """``ByteTokenizer()`` without a path, else ``HFTokenizer(path, ...)``."""
    if not path:
        return ByteTokenizer()
    return HFTokenizer(path, end_token=end_token, filler=filler)
