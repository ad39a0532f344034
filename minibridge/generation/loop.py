"""The token loop: a prefill forward over the prompts, then one decode step per new token.

Several prompts run as one batch, left padded: each row's positions start at 0 at its first real
token and padding is masked out of attention, as transformers does with its attention mask. The
prompt is processed in one forward (prefill), then one token per step (decode) against the cache. A
row stops at EOS (or when `on_step` says so: stop strings) and is filled with the pad token from then
on; generation stops when every row has. Under tensor parallelism every rank runs the same loop on the
gathered logits and the tokens of tp rank 0 are broadcast; under pipeline parallelism the last stage
chooses and broadcasts (generation/pipeline.py), so ranks never diverge.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import ConfigError
from ..models import ModelChunks
from .pipeline import StagedForward
from .sampling import check_context, choose_tokens, sampling_settings


@dataclass
class GenerationStats:
    prompt_tokens: int = 0  # batch x padded prompt length, processed by the prefill
    new_tokens: int = 0  # tokens produced by decode steps (batch x steps)
    prefill_s: float = 0.0  # the prompt's forward and the first token
    decode_s: float = 0.0

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.new_tokens / self.decode_s if self.decode_s else 0.0

    def summary(self) -> str:
        return (f"prefill: {self.prompt_tokens} tokens in {self.prefill_s:.3f} s ({self.prefill_tokens_per_s:,.1f} "
                f"tokens/s); decode: {self.new_tokens} tokens in {self.decode_s:.3f} s "
                f"({self.decode_tokens_per_s:,.1f} tokens/s)")


def eos_ids(eos_token_id) -> list[int]:
    """`eos_token_id` (None, an id, or a list of ids) as a list."""
    return [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)


def eos_of_folder(folder, tokenizer):
    """The EOS id(s) transformers' generate() stops at for a model folder: generation_config.json, then
    config.json (or its text_config), then the tokenizer's (None when it has none)."""
    for name in ("generation_config.json", "config.json"):
        path = Path(folder) / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from None
        data = data if isinstance(data, dict) else {}
        text = data.get("text_config") if isinstance(data.get("text_config"), dict) else {}
        eos = data.get("eos_token_id", text.get("eos_token_id"))
        ids = eos if isinstance(eos, list) else [eos]
        if eos is not None and not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise ConfigError(f"{path}: eos_token_id={eos!r}: expected a token id or a list of token ids")
        if eos is not None:
            return eos
    return tokenizer.eos_token_id


def _sync_tokens(chunks: ModelChunks, tokens: torch.Tensor) -> torch.Tensor:
    """Under tensor parallelism, every rank takes tp rank 0's tokens (identical already, by construction)."""
    dims = chunks.dims
    if dims is None or dims.tp == 1:
        return tokens
    import torch.distributed as dist

    dist.broadcast(tokens, src=dist.get_global_rank(dims.tp_group, 0), group=dims.tp_group)
    return tokens


def _wait(device) -> None:
    """Let a GPU finish before reading the clock (CUDA work is asynchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# on_step(tokens (B,), finished (B,) bool before this step) -> (B,) bool of rows to stop after this token
StepHook = Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | None"]


@torch.inference_mode()
def generate_ids(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int = 32, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 eos_token_id: int | list[int] | None = None, pad_token_id: int = 0,
                 stats: GenerationStats | None = None, on_step: StepHook | None = None) -> torch.Tensor:
    """(B, N <= max_new_tokens) new token ids after left-padded `input_ids` (B, T) (`attention_mask`
    1 for real tokens, 0 for padding). Rows that reached EOS continue with `pad_token_id`. `model` is a
    whole model or this rank's pipeline chunks (every rank of the layout calls this with the same inputs).
    `on_step` sees every new token (the first from the prefill) and may stop rows (stop strings)."""
    chunks = ModelChunks.of(model)
    do_sample, temperature, top_k, top_p = sampling_settings(do_sample, temperature, top_k, top_p, max_new_tokens)
    input_ids = input_ids.to(next(chunks[0].parameters()).device)
    device = input_ids.device
    B, T = input_ids.shape
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.to(device).bool()
    if not mask.any(dim=1).all():
        raise ConfigError("every prompt needs at least one token")
    check_context(chunks[0], mask.sum(dim=1), max_new_tokens)
    padded = not bool(mask.all())
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    documents = torch.where(mask, 0, -1) if padded else None  # padding never attends to real tokens, nor they to it
    generator = None
    if do_sample and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    eos = torch.tensor(eos_ids(eos_token_id), dtype=torch.long, device=device)
    stats = stats if stats is not None else GenerationStats()
    forward = StagedForward(chunks, capacity=T + max_new_tokens)

    def step(ids, position_ids, document_ids):
        logits = forward.logits(ids, position_ids, document_ids)
        tokens = None
        if logits is not None:  # the last pipeline stage (every rank without a pipeline)
            tokens = _sync_tokens(chunks, choose_tokens(logits.float(), do_sample, temperature, top_k, top_p,
                                                        generator))
        return forward.share(tokens, B)

    def finish(tokens, finished):
        done = finished | torch.isin(tokens, eos)
        stop = on_step(tokens, finished) if on_step is not None else None
        return done if stop is None else done | stop.to(device)

    start = time.perf_counter()
    tokens = step(input_ids, positions, documents)
    _wait(device)
    stats.prefill_s += time.perf_counter() - start
    stats.prompt_tokens += B * T
    out = [tokens]
    finished = finish(tokens, torch.zeros(B, dtype=torch.bool, device=device))
    last = positions[:, -1:]
    start = time.perf_counter()
    for n in range(1, max_new_tokens):
        if bool(finished.all()):
            break
        tokens = step(tokens[:, None], last + n, None)
        tokens = tokens.masked_fill(finished, pad_token_id)
        finished = finish(tokens, finished)
        out.append(tokens)
    _wait(device)
    stats.decode_s += time.perf_counter() - start
    stats.new_tokens += B * (len(out) - 1)
    return torch.stack(out, dim=1)
