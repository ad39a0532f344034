"""Supervised fine-tuning data: JSONL conversations with the loss on answers only.

Rows are either {"prompt": str, "completion": str} or {"messages": [{"role", "content"}, ...]}.

Messages are rendered with the tokenizer's chat template. The assistant spans are found by rendering
prefixes of the conversation: the answer of message k starts where the render of messages[:k] with
add_generation_prompt=True ends and stops where the render of messages[:k+1] ends (so it includes the
template's end-of-turn marker, which the model must learn to emit). Each span is tokenized on its own,
the way inference sees it (the prompt is tokenized up to the generation prompt, then the answer is
generated), so a BPE merge can never straddle the prompt/answer boundary.

Prompt/completion rows use the chat template as a user/assistant pair when chat_template=True and the
tokenizer has one; otherwise prompt tokens (with the tokenizer's BOS) + completion tokens + EOS, with
loss on the completion and EOS.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .jsonl import iter_jsonl, require
from .presets import check_messages, encode_text
from .samples import make_row


def _template(tokenizer, messages, where, **kwargs) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except Exception as err:  # jinja errors (raise_exception in templates, bad roles) carry the reason
        raise DataError(f"{where}: the chat template failed on this conversation: {err}") from None


def encode_messages(tokenizer, messages: list[dict], where: str) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, loss mask) of one conversation; the mask is True on assistant answers."""
    full = _template(tokenizer, messages, where)
    segments, pos = [], 0
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if k == 0:  # transformers refuses to render the empty prefix, so there is no prompt to locate
            raise DataError(f"{where}: the conversation starts with an assistant message; it needs a "
                            "user (or system) message before the first answer")
        before = _template(tokenizer, messages[:k], where, add_generation_prompt=True)
        upto = _template(tokenizer, messages[: k + 1], where)
        if not (full.startswith(upto) and upto.startswith(before) and len(before) >= pos):
            raise DataError(
                f"{where}: the chat template is not prefix-consistent (rendering the first {k} messages "
                "plus the generation prompt is not a prefix of the full conversation), so the answer "
                "spans cannot be located"
            )
        segments += [(full[pos : len(before)], False), (full[len(before) : len(upto)], True)]
        pos = len(upto)
    segments.append((full[pos:], False))
    ids, loss = [], []
    for text, is_answer in segments:
        piece = encode_text(tokenizer, text)
        ids += piece
        loss += [is_answer] * len(piece)
    return np.asarray(ids, dtype=np.int64), np.asarray(loss, dtype=bool)


def encode_prompt_completion(tokenizer, prompt: str, completion: str, where: str,
                             chat_template: bool) -> tuple[np.ndarray, np.ndarray]:
    if chat_template and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        return encode_messages(tokenizer, messages, where)
    if tokenizer.eos_token_id is None:
        raise DataError(f"{where}: the tokenizer has no eos_token to end the completion with")
    p = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    c = encode_text(tokenizer, completion) + [tokenizer.eos_token_id]
    return np.asarray(p + c, dtype=np.int64), np.asarray([False] * len(p) + [True] * len(c), dtype=bool)


def encode_row(tokenizer, row: dict, where: str, chat_template: bool) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, loss mask) of one {"messages"} or {"prompt", "completion"} row."""
    if "messages" in row:
        if not (chat_template and getattr(tokenizer, "chat_template", None)):
            raise DataError(f"{where}: 'messages' rows need a chat template, but "
                            + ("chat_template=False" if not chat_template else
                               f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has none"))
        check_messages(row["messages"], where)
        return encode_messages(tokenizer, row["messages"], where)
    for key in ("prompt", "completion"):
        if not isinstance(row.get(key), str):
            raise DataError(f"{where}: {key!r} must be a string, got {type(row.get(key)).__name__}")
    return encode_prompt_completion(tokenizer, row["prompt"], row["completion"], where, chat_template)


class SFTSource:
    """All conversations of one JSONL file, tokenized once (SFT sets are small) into flat arrays."""

    def __init__(self, path: str | Path, tokenizer, chat_template: bool = True):
        self.path = Path(path)
        rows = []
        for lineno, _, row in iter_jsonl(self.path):
            where = f"{self.path}:{lineno}"
            if "messages" not in row and "prompt" not in row and "completion" not in row:
                raise DataError(f"{where}: missing key 'messages' or 'prompt'/'completion' "
                                f"(keys present: {sorted(row)})")
            if "messages" not in row:
                require(row, "prompt", self.path, lineno)
                require(row, "completion", self.path, lineno)
            rows.append(encode_row(tokenizer, row, where, chat_template))
        if not rows:
            raise DataError(f"{self.path}: empty dataset (no JSON lines)")
        self.set_arrays(*pack_rows(rows))

    @classmethod
    def from_arrays(cls, name: str, ids, loss, lengths) -> "SFTSource":
        """A source of conversations already tokenized (the HF kinds' cache): flat ids and mask, lengths."""
        source = cls.__new__(cls)
        source.path = Path(name)
        source.set_arrays(np.asarray(ids, dtype=np.int64), np.asarray(loss, dtype=bool),
                          np.asarray(lengths, dtype=np.int64))
        return source

    def set_arrays(self, ids: np.ndarray, loss: np.ndarray, lengths: np.ndarray) -> None:
        self.ids, self.loss, self.lengths = ids, loss, lengths
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        # where each conversation's first answer token is (its length when it has none)
        answer_at = np.flatnonzero(loss)
        self.first_answer = lengths.copy()
        if len(answer_at):
            k = np.searchsorted(answer_at, self.starts)  # the first answer token at or after each start
            pos = answer_at[np.minimum(k, len(answer_at) - 1)]
            has = (k < len(answer_at)) & (pos < self.starts + lengths)
            self.first_answer[has] = (pos - self.starts)[has]

    def __len__(self) -> int:
        return len(self.lengths)


def pack_rows(rows: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat ids, flat loss mask, lengths) of encoded rows."""
    lengths = np.asarray([len(x) for x, _ in rows], dtype=np.int64)
    return np.concatenate([x for x, _ in rows]), np.concatenate([m for _, m in rows]), lengths


class SFTDataset:
    """Rows of conversations. With packing, conversations (shuffled by seed) are packed next-fit into
    rows, each a separate document; without, one conversation per row. A conversation longer than
    seq_length is truncated to its first seq_length tokens (a warning counts them); one whose prompt alone
    fills seq_length (no answer token would be left) is dropped and counted."""

    def __init__(self, source: SFTSource, documents: np.ndarray, seq_length: int, *, seed: int,
                 packing: bool, pad_id: int, name: str):
        order = np.asarray(documents, dtype=np.int64)
        if len(order) == 0:
            raise DataError(f"{name}: empty dataset (no conversations in this split)")
        order = order[np.random.default_rng(seed).permutation(len(order))]
        fits = source.first_answer[order] < seq_length
        if not fits.all():
            warnings.warn(f"{name}: dropped {int((~fits).sum())} of {len(order)} conversations whose prompt fills "
                          f"seq_length={seq_length} (no answer token would be trained)", stacklevel=2)
            order = order[fits]
            if len(order) == 0:
                raise DataError(f"{name}: every conversation's prompt is longer than seq_length={seq_length}")
        lengths = np.minimum(source.lengths[order], seq_length)
        too_long = int((source.lengths[order] > seq_length).sum())
        if too_long:
            warnings.warn(f"{name}: {too_long} of {len(order)} conversations are longer than "
                          f"seq_length={seq_length} and are truncated", stacklevel=2)
        bounds = [0]
        if packing:
            used = 0
            for i, n in enumerate(lengths):
                if used + n > seq_length:
                    bounds.append(i)
                    used = 0
                used += n
            bounds.append(len(order))
        else:
            bounds = list(range(len(order) + 1))
        self.source, self.order, self.lengths = source, order, lengths
        self.bounds = np.asarray(bounds, dtype=np.int64)
        self.seq_length, self.packing, self.pad_id, self.name = seq_length, packing, pad_id, name

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: sample {index} out of range (0..{len(self) - 1})")
        pieces = []
        for j in range(int(self.bounds[index]), int(self.bounds[index + 1])):
            s, n = int(self.source.starts[self.order[j]]), int(self.lengths[j])
            pieces.append((self.source.ids[s : s + n], self.source.loss[s : s + n]))
        return make_row(pieces, self.seq_length, self.pad_id, self.packing)
