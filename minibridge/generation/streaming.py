"""Text as it is generated: stop strings, and streaming the completed text of each row.

A row's text is always the decode of all its new tokens so far (`skip_special_tokens=True`), the
same call that makes the final text, so the streamed pieces add up to the returned text exactly. A
piece is only handed out once no later token can change it. transformers' TextStreamer writes up to
the last space, or everything at a newline; we hold back a little more:

- a trailing incomplete character (a byte-level or byte-fallback token that ends mid UTF-8
  sequence decodes to U+FFFD) waits for its remaining bytes;
- the last word waits for the next space or newline (a subword tokenizer may still extend it), and
  so does the space before it (`clean_up_tokenization_spaces` removes " " before "." or "'s");
- with stop strings, the last `len(longest stop) - 1` characters wait too: they could be the start
  of a stop string, which never reaches the output.

That suffices for tokenizers whose decode of more tokens only extends the decode of fewer beyond the
held-back tail: byte-level BPE (Llama 3) and SentencePiece-style byte fallback (Gemma 3) are such.

Stop strings: a row stops once its decoded text contains one; its text is cut before the earliest
occurrence (transformers' `stop_strings` keeps the stop string; we drop it, as an API server's `stop`
does), its ids end with the token that completed it. Decoding a row once per step costs O(length)
per step: negligible against a model forward at the lengths generation runs.
"""

from __future__ import annotations

import sys
from typing import Callable

import torch

from ..errors import ConfigError

# streamer(index, piece): `piece` is new text of prompt `index`; the pieces of a prompt, in order, add
# up to its returned text. A streamer object may also have `end(index)`, called once that text is complete.
Streamer = Callable[[int, str], None]


def check_stop_strings(stop_strings) -> list[str]:
    stops = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings or [])
    for stop in stops:
        if not isinstance(stop, str) or not stop:
            raise ConfigError(f"stop_strings: {stop!r} is not a non-empty string")
    return stops


def cut_at_stop(text: str, stops: list[str]) -> int | None:
    """The index of the earliest stop string in `text`, or None."""
    found = [i for i in (text.find(stop) for stop in stops) if i >= 0]
    return min(found) if found else None


def settled_length(text: str, hold: int) -> int:
    """How much of `text` no later token can change (see the module docstring)."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    if not text[:end].endswith("\n"):
        end = max(text.rfind(" ", 0, end), text.rfind("\n", 0, end) + 1, 0)
    return max(0, min(end, len(text) - hold))


class RowTexts:
    """The text of every row of a batch while it grows: the `on_step` hook of `generate_ids`."""

    def __init__(self, tokenizer, batch: int, eos: list[int], stops: list[str], streamer: Streamer | None = None,
                 indices: list[int] | None = None):
        self.tokenizer, self.eos, self.stops, self.streamer = tokenizer, set(eos), stops, streamer
        self.indices = indices if indices is not None else list(range(batch))
        self.ids: list[list[int]] = [[] for _ in range(batch)]
        self.sent = [0] * batch  # characters handed to the streamer
        self.done = [False] * batch
        self.texts: list[str | None] = [None] * batch  # final texts, once a row is done
        self.hold = max((len(s) for s in stops), default=1) - 1

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def __call__(self, tokens: torch.Tensor, finished: torch.Tensor) -> torch.Tensor:
        stop = torch.zeros(len(self.ids), dtype=torch.bool)
        for row, token in enumerate(tokens.tolist()):
            if self.done[row]:
                continue
            self.ids[row].append(token)
            if token in self.eos:
                self._finish(row, self.decode(self.ids[row]))
                continue
            if not self.stops and self.streamer is None:
                continue  # nothing to look at before the end
            text = self.decode(self.ids[row])
            cut = cut_at_stop(text, self.stops)
            if cut is not None:
                self._finish(row, text[:cut])
                stop[row] = True
            elif self.streamer is not None:
                self._send(row, text[: settled_length(text, self.hold)])
        return stop

    def _send(self, row: int, settled: str) -> None:
        if len(settled) > self.sent[row]:
            self.streamer(self.indices[row], settled[self.sent[row]:])
            self.sent[row] = len(settled)

    def _finish(self, row: int, text: str) -> None:
        self.done[row], self.texts[row] = True, text
        if self.streamer is not None:
            self._send(row, text)
            if hasattr(self.streamer, "end"):
                self.streamer.end(self.indices[row])

    def close(self) -> tuple[list[str], list[list[int]]]:
        """(texts, ids) of every row; rows that ran out of new tokens end here."""
        for row in range(len(self.ids)):
            if not self.done[row]:
                self._finish(row, self.decode(self.ids[row]))
        return self.texts, self.ids


class PrintStreamer:
    """Writes the texts of the prompts to a text stream (stdout by default) in prompt order, each after
    its `headers[index]` and followed by a newline. `live`: the prompt whose turn it is is written
    piece by piece as it settles (and flushed); the others wait, whole, for their turn (a batch finishes
    its rows in any order). Without `live`, each text is written once it is complete."""

    def __init__(self, headers: list[str], file=None, live: bool = True):
        self.headers, self.file, self.live = headers, file, live
        self.turn = 0  # the prompt being written
        self.pending: dict[int, list[str]] = {}
        self.complete: set[int] = set()
        self.started = False

    def _write(self, text: str) -> None:
        out = self.file or sys.stdout
        out.write(text)
        out.flush()

    def _start(self) -> None:
        if self.live and not self.started and self.turn < len(self.headers):
            self._write(self.headers[self.turn] + "".join(self.pending.pop(self.turn, [])))
            self.started = True

    def __call__(self, index: int, piece: str) -> None:
        self._start()
        if self.live and index == self.turn:
            self._write(piece)
        else:
            self.pending.setdefault(index, []).append(piece)

    def end(self, index: int) -> None:
        """Prompt `index` is complete: write every complete prompt whose turn has come."""
        self.complete.add(index)
        while self.turn in self.complete:
            rest = "".join(self.pending.pop(self.turn, []))
            self._write((rest if self.started else self.headers[self.turn] + rest) + "\n")
            self.turn, self.started = self.turn + 1, False
            self._start()
