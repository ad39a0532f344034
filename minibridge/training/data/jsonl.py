"""JSONL reading with file:line errors, and raw-text JSONL as a lazily tokenized document source.

JsonlTextSource never stores token ids: opening the file makes one pass that checks every line
(JSON, key present, a string) and records its byte offset and token count (fast tokenizers encode
batches in Rust threads); samples then re-read and re-tokenize just the documents they cover, with a
small LRU cache since consecutive windows share documents. This suits corpora up to a few GB; for
larger ones, preprocess once into Megatron's .bin/.idx (python -m minibridge.training.data.preprocess).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import DataError


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, int, dict]]:
    """(line number from 1, byte offset, object) for every non-blank line; bad lines raise DataError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSONL file {path} does not exist")
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if raw.strip():
                yield lineno, offset, parse_line(raw, path, lineno)
            offset += len(raw)


def parse_line(raw: bytes | str, path, lineno: int) -> dict:
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}:{lineno}: not valid JSON ({err})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
    return obj


def require(obj: dict, key: str, path, lineno: int, kind=str):
    if key not in obj:
        raise DataError(f"{path}:{lineno}: missing key {key!r} (keys present: {sorted(obj)})")
    value = obj[key]
    if not isinstance(value, kind):
        raise DataError(f"{path}:{lineno}: key {key!r} must be {kind.__name__}, "
                        f"got {type(value).__name__}")
    return value


def encode_documents(tokenizer, texts: list[str], append_eos: bool) -> list[list[int]]:
    """Token ids of raw documents with the tokenizer's own special tokens (e.g. Llama 3's BOS),
    plus EOS when asked (the document separator of pretraining data)."""
    ids = tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]
    if append_eos:
        eos = tokenizer.eos_token_id
        if eos is None:
            raise DataError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no eos_token; "
                            "raw text documents need one as separator")
        ids = [list(x) + [eos] for x in ids]
    return ids


class JsonlTextSource:
    """Documents = the `key` strings of a JSONL file, tokenized on demand (BOS per the tokenizer, EOS appended)."""

    def __init__(self, path: str | Path, tokenizer, key: str = "text", batch_size: int = 512,
                 cache_size: int = 256):
        self.path, self.tokenizer, self.key = Path(path), tokenizer, key
        offsets, lines, lengths, texts = [], [], [], []

        def flush():
            lengths.extend(len(x) for x in encode_documents(tokenizer, texts, append_eos=True))
            texts.clear()

        for lineno, offset, obj in iter_jsonl(self.path):
            texts.append(require(obj, key, self.path, lineno))
            offsets.append(offset)
            lines.append(lineno)
            if len(texts) == batch_size:
                flush()
        if texts:
            flush()
        if not offsets:
            raise DataError(f"{self.path}: empty dataset (no JSON lines)")
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._lines = np.asarray(lines, dtype=np.int64)
        self._lengths = np.asarray(lengths, dtype=np.int64)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    def __len__(self) -> int:
        return len(self._offsets)

    def document_lengths(self) -> np.ndarray:
        return self._lengths

    def _document(self, doc: int) -> np.ndarray:
        if doc in self._cache:
            self._cache.move_to_end(doc)
            return self._cache[doc]
        with open(self.path, "rb") as f:
            f.seek(int(self._offsets[doc]))
            raw = f.readline()
        lineno = int(self._lines[doc])
        text = require(parse_line(raw, self.path, lineno), self.key, self.path, lineno)
        ids = np.asarray(encode_documents(self.tokenizer, [text], append_eos=True)[0], dtype=np.int64)
        if len(ids) != self._lengths[doc]:
            raise DataError(f"{self.path}:{lineno}: now {len(ids)} tokens, {self._lengths[doc]} when "
                            "the file was opened (was it modified during training?)")
        self._cache[doc] = ids
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return ids

    def tokens(self, doc: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self._document(doc)[start:stop]
