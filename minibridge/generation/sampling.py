"""Choosing the next token: the checked sampling settings, and greedy or sampled tokens from logits.

Sampling applies temperature, then top-k, then top-p (transformers' order) and draws from a generator
seeded by the caller, so a run is reproducible. Temperature 0 is greedy.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError


def sampling_settings(do_sample: bool, temperature: float | None, top_k: int | None, top_p: float | None,
                      max_new_tokens: int) -> tuple[bool, float, int | None, float | None]:
    """Checked (do_sample, temperature, top_k, top_p). Temperature 0 means greedy, whatever top-k/top-p
    say (the limit of sampling as the temperature goes to 0)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={max_new_tokens!r}: expected an integer >= 1")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                    or not math.isfinite(temperature) or temperature < 0):
        raise ConfigError(f"temperature={temperature!r}: expected a finite number >= 0 (0: greedy)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ConfigError(f"top_k={top_k!r}: expected an integer >= 1 (or none for no top-k filtering)")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not math.isfinite(top_p) or not 0 < top_p <= 1):
        raise ConfigError(f"top_p={top_p!r}: expected a number in (0, 1] (or none for no top-p filtering)")
    if temperature == 0:
        return False, 1.0, None, None
    return do_sample, 1.0 if temperature is None else float(temperature), top_k, top_p


def check_context(model, lengths: torch.Tensor, max_new_tokens: int) -> None:
    """The longest prompt plus the new tokens stays within the positions the model was trained for."""
    limit = model.config.max_position_embeddings
    needed = int(lengths.max()) + max_new_tokens
    if limit is not None and needed > limit:
        raise ConfigError(
            f"a prompt of {int(lengths.max())} tokens + max_new_tokens={max_new_tokens} needs {needed} positions, "
            f"past the model's max_position_embeddings={limit}; lower max_new_tokens (or the prompt), or extend the "
            f"context with a RoPE scaling (rope_scaling in config.json, e.g. linear with factor "
            f"{-(-needed // limit)}) and max_position_embeddings={needed}")


def choose_tokens(logits: torch.Tensor, do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) next tokens from (B, vocab) fp32 logits: argmax, or a draw after temperature, top-k, top-p."""
    if not do_sample:
        return logits.argmax(dim=-1)
    if temperature is not None and temperature != 1.0:
        logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # transformers' TopPLogitsWarper: drop the least likely tokens whose total mass is <= 1 - top_p,
        # always keeping the most likely one.
        ordered, order = torch.sort(logits, dim=-1)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1 - top_p
        drop[..., -1] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
