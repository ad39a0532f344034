"""Megatron's precision-aware optimizer: Adam state kept in lower precision, the update computed in fp32.

Megatron-Core's `optimizer.use_precision_aware_optimizer` hands Transformer Engine's FusedAdam four dtypes
(megatron/core/optimizer/optimizer_config.py): `main_grads_dtype` (fp32 | bf16), `main_params_dtype`
(fp32 | fp16), `exp_avg_dtype` and `exp_avg_sq_dtype` (fp32 | fp16 | bf16 | fp8), and, for bf16 models,
`store_param_remainders` (default true). Here, as there, the dtypes are storage only: every update
loads a slice of the state into fp32, runs torch's own fused AdamW kernel on it (the kernel of the
default path, so fp32 storage gives the default path's bits), and stores the result back.

Storage, per parameter of a bf16 model (bytes): parameter 2, main grad 4 (bf16: 2), master 4
(remainders: 2), moments 4 + 4 (bf16: 2 + 2). All-fp32 state is 18; bf16 moments with remainders 12;
bf16 main grads as well 10.

Parameter remainders (Transformer Engine's `store_param_remainders`): the fp32 master's upper 16 bits
are the bf16 parameter itself, so only its lower 16 bits need storing. TE rounds the parameter to
nearest by adding one to the upper half when the lower half is >= 0x8000 (ties away from zero, where a
plain `.to(bf16)` breaks ties to even) and keeps the lower half as a signed int16; a negative
remainder says the upper half was rounded up. The master is therefore exact fp32, not an approximation.

Rounding the moments: the default is round to nearest, as TE's kernel stores them. Where a bf16 moment
moves by less than half its last place in a step (the second moment with beta2 = 0.999 decays 0.1% a
step, under bf16's 0.39% spacing) round to nearest stalls it; `moment_rounding="stochastic"` rounds up
with probability equal to the dropped fraction, so the stored moment moves by the right amount on
average (tests/training/test_precision_aware.py measures both). Its random bits come from a generator
seeded by (step, parameter, slice), so a resumed run draws the same bits.
"""

from __future__ import annotations

import sys
import zlib
from dataclasses import dataclass

import torch

from ..errors import ConfigError

# Megatron-LM's command-line names for the dtypes (megatron/training/arguments.py: dtype_map)
STATE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISION_KEYS = ("main_grads_dtype", "main_params_dtype", "exp_avg_dtype", "exp_avg_sq_dtype")
# Megatron Bridge's spellings of each (megatron/bridge/utils/activation_map.py: DTYPE_MAP)
_ALIASES = {"fp32": ("float32",), "bf16": ("bfloat16",), "fp16": ("float16",), "fp8": ("float8_e4m3fn",)}
DTYPE_NAMES = {spelling: short for short, more in _ALIASES.items()
               for name in (short, *more) for spelling in (name, f"torch.{name}")}
MAIN_GRADS_DTYPES = ("fp32", "bf16")
MAIN_PARAMS_DTYPES = ("fp32",)
MOMENT_DTYPES = ("fp32", "bf16", "fp16")
MOMENT_ROUNDINGS = ("nearest", "stochastic")
REMAINDER = "master_remainder"  # the optimizer-state key of a parameter's int16 remainder in checkpoints
SLICE = 1 << 22  # elements updated at once: bounds the fp32 temporaries at 4 x 16 MiB, whatever the parameter
assert sys.byteorder == "little", "parameter remainders index the halves of an fp32 word as little-endian"


@dataclass(frozen=True)
class StatePrecision:
    """The storage dtypes of one run's optimizer state (Megatron's names, its short dtype spellings)."""

    main_grads_dtype: str = "fp32"
    main_params_dtype: str = "fp32"
    exp_avg_dtype: str = "fp32"
    exp_avg_sq_dtype: str = "fp32"
    store_param_remainders: bool = True
    moment_rounding: str = "nearest"

    def dtype(self, key: str) -> torch.dtype:
        return STATE_DTYPES[getattr(self, key)]

    def remainders_for(self, param: torch.Tensor) -> bool:
        return self.store_param_remainders and param.dtype == torch.bfloat16 and self.main_params_dtype == "fp32"


def canonical_dtype(value, key: str) -> str:
    """"bf16", "bfloat16" or "torch.bfloat16" -> "bf16"; anything else is an error naming `key`."""
    name = DTYPE_NAMES.get(str(value))
    if name is None:
        raise ConfigError(f"{key}={value!r}: expected a dtype name such as fp32, bf16, fp16 (or bfloat16, "
                          f"torch.bfloat16)")
    return name


def check_precision(p: StatePrecision, where: str = "optimizer") -> None:
    """Megatron's choices for each dtype; fp16 masters and fp8 moments need TE's scaled kernels."""
    for key, allowed in (("main_grads_dtype", MAIN_GRADS_DTYPES), ("main_params_dtype", MAIN_PARAMS_DTYPES),
                         ("exp_avg_dtype", MOMENT_DTYPES), ("exp_avg_sq_dtype", MOMENT_DTYPES),
                         ("moment_rounding", MOMENT_ROUNDINGS)):
        value = getattr(p, key)
        if value not in allowed:
            hint = (" (fp16 masters and fp8 moments need Transformer Engine's per-tensor scaling, which minibridge "
                    "does not have)") if value in ("fp16", "fp8") else ""
            raise ConfigError(f"{where}.{key}={value!r}: expected one of {', '.join(allowed)}{hint}")


def split_master(master: torch.Tensor, param: torch.Tensor, remainder: torch.Tensor) -> None:
    """Write the fp32 `master` into the bf16 `param` (rounded to nearest, ties away from zero) and the
    int16 `remainder` (its lower half), all three 1-D slices of equal length."""
    halves = master.view(torch.int16).view(-1, 2)  # [lower, upper] of each little-endian fp32 word
    lower, upper = halves[:, 0], halves[:, 1]
    remainder.copy_(lower)
    # lower >= 0x8000 as unsigned is lower < 0 as int16: round the upper half up (away from zero)
    param.view(torch.int16).copy_(upper + (lower < 0).to(torch.int16))


def join_master(param: torch.Tensor, remainder: torch.Tensor) -> torch.Tensor:
    """The exact fp32 master of a bf16 `param` slice and its int16 `remainder` (a new tensor)."""
    halves = torch.empty(param.numel(), 2, dtype=torch.int16, device=param.device)
    halves[:, 0] = remainder
    halves[:, 1] = param.view(torch.int16) - (remainder < 0).to(torch.int16)
    return halves.view(torch.float32).view(-1)


def round_stochastically(value: torch.Tensor, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """fp32 `value` rounded to bf16 up or down, up with the probability of the bits dropped: add 16
    random low bits and truncate (the sum carries into the kept bits exactly as often as it should)."""
    if dtype != torch.bfloat16:
        return value.to(dtype)  # fp16 and fp32 moments: nearest (fp16's 10 bits do not stall at beta2 0.999)
    noise = torch.randint(0, 1 << 16, value.shape, dtype=torch.int32, device=value.device, generator=generator)
    bits = value.view(torch.int32) + noise
    bits = torch.where(torch.isfinite(value), bits, value.view(torch.int32))  # inf/nan keep their bits
    upper = bits.view(torch.int16).view(-1, 2)[:, 1].contiguous()
    return upper.view(torch.bfloat16).view(value.shape)


def slices(numel: int, size: int = SLICE) -> list[slice]:
    """The pieces, `size` elements or fewer, that a flat tensor of `numel` elements is updated in."""
    return [slice(start, min(start + size, numel)) for start in range(0, numel, size)]


@dataclass
class Slot:
    """One parameter's storage: its bf16/fp32 `param` (local tensor), the fp32 master or int16
    remainder (`master` None when the parameter is its own fp32 master), and its Adam state."""

    param: torch.Tensor
    master: torch.Tensor | None
    remainder: torch.Tensor | None
    state: dict
    seed: int


def slot_seed(name: str) -> int:
    return zlib.crc32(name.encode())


def _load32(stored: torch.Tensor) -> torch.Tensor:
    return stored if stored.dtype == torch.float32 else stored.float()


def _store(dst: torch.Tensor, value: torch.Tensor, rounding: str, generator: torch.Generator | None) -> None:
    if dst.data_ptr() == value.data_ptr():
        return  # fp32 storage was updated in place
    dst.copy_(value if rounding == "nearest" else round_stochastically(value, dst.dtype, generator))


@torch.no_grad()
def update_slot(slot: Slot, grad: torch.Tensor, hyper: dict, scale: float, precision: StatePrecision) -> None:
    """One AdamW step of one parameter, slice by slice in fp32 (torch's fused AdamW kernel), the
    results stored back in their storage dtypes. `slot.state["step"]` is already incremented."""
    p, m, v = slot.param.view(-1), slot.state["exp_avg"].view(-1), slot.state["exp_avg_sq"].view(-1)
    g = grad.view(-1)
    generator = step = None
    if precision.moment_rounding == "stochastic":  # (reading the step synchronises a GPU: only here)
        generator, step = torch.Generator(device=p.device), int(slot.state["step"].item())
    for piece in slices(p.numel()):
        start = piece.start
        if slot.remainder is not None:
            master = join_master(p[piece], slot.remainder.view(-1)[piece])
        else:
            master = (slot.master if slot.master is not None else slot.param).view(-1)[piece]
        g32 = g[piece].float() if g.dtype != torch.float32 else g[piece]
        if scale != 1.0:
            g32 = g32 * scale  # the default path scales in place: the same fp32 product
        m32, v32 = _load32(m[piece]), _load32(v[piece])
        torch._fused_adamw_([master], [g32], [m32], [v32], [], [slot.state["step"]], amsgrad=False, maximize=False,
                            **hyper)
        if generator is not None:
            generator.manual_seed(hash((step, slot.seed, start)) & 0x7FFF_FFFF_FFFF_FFFF)
        _store(m[piece], m32, precision.moment_rounding, generator)
        _store(v[piece], v32, precision.moment_rounding, generator)
        if slot.remainder is not None:
            split_master(master, p[piece], slot.remainder.view(-1)[piece])
        elif slot.master is not None:
            p[piece].copy_(master)  # the fp32 master rounded into the bf16 parameter, as the default path does
