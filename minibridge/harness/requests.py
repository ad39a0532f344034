"""lm_eval's `generate_until` settings read as its HFLM reads them (lm_eval/models/huggingface.py and
`normalize_gen_kwargs`, `handle_stop_sequences`, `postprocess_generated_text` in lm_eval/models/utils.py).

A task's `generation_kwargs` (overridden by `--gen_kwargs`) say when to stop (`until`: strings, to which
the tokenizer's EOS text is added; `max_gen_toks`, or its aliases) and how to choose tokens (greedy unless
`do_sample` or a temperature > 0). Stop strings are applied after generation: the text is cut at the
first occurrence of each, which is what HFLM returns too (its stopping criteria only end the batch early).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

# lm_eval's aliases of the generation budget, in its priority order
MAX_TOKEN_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")
GENERATION_KEYS = ("until", *MAX_TOKEN_KEYS, "do_sample", "temperature", "top_k", "top_p")


@dataclass(frozen=True)
class GenerationSettings:
    until: tuple[str, ...]      # stop strings, EOS text included
    max_gen_toks: int
    do_sample: bool
    temperature: float          # 0: greedy
    top_k: int | None = None
    top_p: float | None = None


def generation_settings(gen_kwargs, eos_text: str | None, default_max_gen_toks: int) -> GenerationSettings:
    """Checked settings of one request's `gen_kwargs` (a dict); keys HF's generate() would take but
    minibridge does not implement (num_beams, repetition_penalty, ...) are refused by name."""
    if not isinstance(gen_kwargs, dict):
        raise ConfigError(f"generate_until: gen_kwargs={gen_kwargs!r}: expected a dict")
    unknown = [key for key in gen_kwargs if key not in GENERATION_KEYS]
    if unknown:
        raise ConfigError(f"generate_until: generation_kwargs {', '.join(map(repr, unknown))} not supported by "
                          f"--model minibridge; supported: {', '.join(GENERATION_KEYS)}")
    until = gen_kwargs.get("until")
    until = [] if until is None else [until] if isinstance(until, str) else until
    if not isinstance(until, (list, tuple)) or not all(isinstance(s, str) for s in until):
        raise ConfigError(f"generate_until: until={gen_kwargs.get('until')!r}: expected a string or a list of strings")
    until = list(until)
    if eos_text is not None and eos_text not in until:
        until.append(eos_text)
    budget = next((gen_kwargs[k] for k in MAX_TOKEN_KEYS if gen_kwargs.get(k) is not None), default_max_gen_toks)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"generate_until: max_gen_toks={budget!r}: expected an integer >= 1")
    try:
        temperature = float(gen_kwargs.get("temperature") or 0.0)
    except (TypeError, ValueError):
        raise ConfigError(f"generate_until: temperature={gen_kwargs['temperature']!r}: expected a number") from None
    do_sample = gen_kwargs.get("do_sample")
    do_sample = temperature > 0 if do_sample is None else bool(do_sample)
    if not do_sample or temperature == 0:  # lm_eval: do_sample=False means temperature 0 (greedy)
        return GenerationSettings(tuple(until), budget, False, 0.0)
    return GenerationSettings(tuple(until), budget, True, temperature, gen_kwargs.get("top_k"), gen_kwargs.get("top_p"))


def cut_at_stops(text: str, until) -> str:
    """The text before the first occurrence of each stop string (empty strings ignored)."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text
