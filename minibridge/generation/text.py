"""From prompts to texts: encoding (with the chat template or not), batches, stop strings, streaming."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError
from .loop import GenerationStats, eos_ids, generate_ids
from .streaming import RowTexts, Streamer, check_stop_strings


def wants_chat_template(tokenizer, apply_chat_template: bool | None) -> bool:
    """True: the template, which the tokenizer must have; False: plain text; None: the template when
    the tokenizer has one (instruction-tuned checkpoints ship it), else plain text."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if apply_chat_template and not has:
        raise ConfigError("apply_chat_template: the tokenizer has no chat template (no chat_template in "
                          "tokenizer_config.json nor a chat_template.jinja); pass the prompts as plain text")
    return has if apply_chat_template is None else bool(apply_chat_template)


def encode_prompts(tokenizer, prompts: list[str], apply_chat_template: bool | None = False) -> list[list[int]]:
    """Token ids of each prompt: as the tokenizer encodes text (with its BOS), or, with the chat template,
    as a user message followed by the assistant's turn (`add_generation_prompt=True`)."""
    template = wants_chat_template(tokenizer, apply_chat_template)
    encoded = []
    for prompt in prompts:
        if template:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
            # the template writes the BOS itself: encoding must not add a second one
            encoded.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
        else:
            encoded.append(list(tokenizer(prompt)["input_ids"]))
    return encoded


def left_pad(sequences: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, longest), padding on the left."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, longest - len(seq):] = torch.tensor(seq)
            mask[row, longest - len(seq):] = 1
    return ids, mask


def read_prompts(path: str | Path) -> list[str]:
    """The prompts of a text file, one per line (UTF-8; blank lines skipped; the line ending removed)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"prompts file {path}: {'a folder' if path.is_dir() else 'no such file'}; expected a "
                          f"UTF-8 text file with one prompt per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ConfigError(f"prompts file {path}: not UTF-8 text ({err})") from None
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise ConfigError(f"prompts file {path}: no prompt in it (expected one prompt per line; blank lines "
                          f"are skipped)")
    return prompts


def generate(model, tokenizer, prompts: str | list[str], max_new_tokens: int = 32, do_sample: bool = False,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             seed: int | None = None, eos_token_id: int | list[int] | None = None, return_ids: bool = False,
             apply_chat_template: bool | None = False, stats: GenerationStats | None = None,
             stop_strings: str | list[str] | None = None, streamer: Streamer | None = None,
             batch_size: int | None = None):
    """The continuation text of each prompt (a list, one per prompt, in their order); with `return_ids`,
    also the new token ids of each (lists, up to and including EOS or the token completing a stop string).

    `eos_token_id` defaults to the tokenizer's. `apply_chat_template`: True wraps each prompt as a user
    message (the tokenizer must have a template), None does when the tokenizer has a template. A row
    stops at the first of `stop_strings` its text contains, and its text is cut before it.
    `streamer(index, piece)` receives each prompt's text as it settles (generation/streaming.py); the
    pieces of a prompt add up to its returned text. `batch_size` runs the prompts in batches of that
    many (default: one batch); batch k samples from `seed + k`. Pass `stats=GenerationStats()` to read
    the prefill and decode times back. Under torchrun every rank of the layout calls this alike.
    """
    single = isinstance(prompts, str)
    prompts = [prompts] if single else list(prompts)
    if not prompts:
        raise ConfigError("generate: no prompts")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"batch_size={batch_size!r}: expected an integer >= 1")
    stops = check_stop_strings(stop_strings)
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = eos if isinstance(eos, int) else (eos[0] if eos else 0)
    encoded = encode_prompts(tokenizer, prompts, apply_chat_template)
    size = batch_size or len(prompts)
    texts, rows = [], []
    for k, first in enumerate(range(0, len(prompts), size)):
        batch = list(range(first, min(first + size, len(prompts))))
        ids, mask = left_pad([encoded[i] for i in batch], pad)
        tracker = RowTexts(tokenizer, len(batch), eos_ids(eos), stops, streamer, batch)
        generate_ids(model, ids, mask, max_new_tokens, do_sample, temperature, top_k, top_p,
                     None if seed is None else seed + k, eos, pad, stats, on_step=tracker)
        batch_texts, batch_rows = tracker.close()
        texts += batch_texts
        rows += batch_rows
    return (texts, rows) if return_ids else texts
