"""LoRA and DoRA on any linear layer, tensor-parallel ones included.

`attach` switches a linear module's class to a subclass that adds the adapter (the base weight keeps
its object and its name; LoRA only adds names), as the TP pass switches classes:

    q_proj.weight                    frozen base, (out, in) or this rank's block of it
    q_proj.lora_A.weight             (rank, in)
    q_proj.lora_B.weight             (out, rank), zero at initialisation
    q_proj.lora_magnitude_vector     (out,), DoRA only

LoRA (Hu et al. 2021; peft's `Linear.forward`):   y = base(x) + B(A(dropout(x))) * scale,  scale = alpha / rank
DoRA (Liu et al. 2024; peft's `DoraLinearLayer`): y = base(x) + (g - 1) * (W x') + g * B(A(x')) * scale, where
x' = dropout(x), g = m / ||W + scale * B A||_row and the norm is detached (section 4.3 of the paper); without
active dropout W x' is base(x) minus its bias. Both are exactly what peft computes, so adapters move
between the two unchanged.

Under tensor parallelism (all local arithmetic, no extra collective in forward):

    base            A                     B                     magnitude        where the sum happens
    column / kv     replicated (partial   column / kv block     column / kv      outputs stay sharded
                    grad: summed over tp)
    row             row block (columns)   replicated (partial   replicated       the region's all-reduce of
                                          grad: summed)         (partial grad)   the partial outputs
A row-parallel layer's DoRA norm covers columns held by every rank: squared norms are all-reduced
(on detached tensors, outside autograd). The row base output is a partial sum without bias, and
g * (partial) summed over ranks is g * (full), so the DoRA formula survives the split.
LoRA dropout draws from each rank's own generator: a column-parallel layer's replicated input gets a
different mask on each rank (still dropout, but not the single-process sample).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..parallel.collectives import all_reduce_
from ..parallel.tensor import RowParallelLinear


class AdapterFactor(nn.Module):
    """A or B: a bare weight applied as x @ W^T (no bias, no default init drawing from the global RNG)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class LoraMixin:
    """Mixed in front of a linear class. Attributes set by `attach`: lora_A, lora_B, lora_dropout,
    lora_magnitude_vector (DoRA), lora_scale, lora_dora, lora_dropout_post, lora_norm_group."""

    base_adds_bias = True  # RowParallelLinear leaves its bias to the parallel region
    lora_norm_group = None  # tp group of a row-parallel base (DoRA norms span its ranks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = super().forward(x)
        a, b = self.lora_A, self.lora_B
        if not self.lora_dora:
            x = x.to(a.weight.dtype)
            if self.lora_dropout_post:  # Megatron's dropout_position="post"
                return result + self.lora_dropout(b(a(x))) * self.lora_scale
            return result + b(a(self.lora_dropout(x))) * self.lora_scale
        return result + self._dora_delta(x.to(a.weight.dtype), result)

    def _dora_delta(self, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        if isinstance(self.lora_dropout, nn.Identity) or not self.training:
            base = result - self.bias if self.bias is not None and self.base_adds_bias else result
        else:  # peft recomputes the base product on the dropped-out input
            x = self.lora_dropout(x)
            base = F.linear(x, self.weight.to(x.dtype))
        scale = self.lora_magnitude_vector / self.dora_weight_norm(x.dtype)
        return (scale - 1) * base + scale * self.lora_B(self.lora_A(x)) * self.lora_scale

    @torch.no_grad()
    def dora_weight_norm(self, dtype: torch.dtype) -> torch.Tensor:
        """||W + scale * B A|| per output row, detached, in `dtype` (peft's get_weight_norm)."""
        lora_weight = (self.lora_B.weight @ self.lora_A.weight).to(dtype)
        return row_norms(self.weight.to(dtype) + self.lora_scale * lora_weight, dtype, self.lora_norm_group)

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """The base weight with the adapter folded in, computed in fp32, in the base dtype.
        DoRA: (m / ||W + dW||_row) * (W + dW) with dW = scale * B A (peft's merge)."""
        merged = self.weight.float() + self.lora_scale * (self.lora_B.weight.float() @ self.lora_A.weight.float())
        if self.lora_dora:
            squares = merged.pow(2).sum(dim=1)
            if self.lora_norm_group is not None:
                all_reduce_(squares, self.lora_norm_group)
            merged *= (self.lora_magnitude_vector.float() / squares.sqrt())[:, None]
        return merged.to(self.weight.dtype)

    def extra_repr(self) -> str:
        kind = "dora" if self.lora_dora else "lora"
        return f"{super().extra_repr()}, {kind} rank={self.lora_A.weight.shape[0]} scale={self.lora_scale:g}"


class LoraLinear(LoraMixin, nn.Linear):
    pass


class LoraRowParallelLinear(LoraMixin, RowParallelLinear):
    base_adds_bias = False


_CLASSES: dict[type, type] = {nn.Linear: LoraLinear, RowParallelLinear: LoraRowParallelLinear}
ADAPTER_NAMES = ("lora_A", "lora_B", "lora_dropout", "lora_magnitude_vector")


def lora_class(base: type) -> type:
    """The adapter subclass of a linear class (made once for classes other than the two above)."""
    if base not in _CLASSES:
        if not issubclass(base, nn.Linear):
            raise TypeError(f"LoRA wraps linear layers; {base.__name__} is not an nn.Linear")
        extra = {"base_adds_bias": not issubclass(base, RowParallelLinear)}
        _CLASSES[base] = type(f"Lora{base.__name__}", (LoraMixin, base), extra)
    return _CLASSES[base]


def is_adapted(module: nn.Module) -> bool:
    return isinstance(module, LoraMixin)


def row_norms(weight: torch.Tensor, dtype: torch.dtype, group=None) -> torch.Tensor:
    """||weight||_row in `dtype`; with `group` (a row-parallel weight's tp ranks, each holding some
    columns) the squared norms are summed over the group first."""
    if group is None:
        return torch.linalg.norm(weight, dim=1).to(dtype)
    squares = weight.float().pow(2).sum(dim=1)
    return all_reduce_(squares, group).sqrt().to(dtype)


def attach(module: nn.Linear, a: torch.Tensor, b: torch.Tensor, scale: float, dora: bool, dropout: float = 0.0,
           dropout_post: bool = False, norm_group=None) -> None:
    """Turn `module` into its adapter subclass with factors `a` (rank, in) and `b` (out, rank), local
    blocks already (their values may be set later, as on meta). DoRA's magnitude is allocated beside
    them, uninitialised: `init_magnitude` sets it once the base weight holds its values."""
    if is_adapted(module):
        raise ValueError(f"{module} already has an adapter")
    base = type(module)
    module.__class__ = lora_class(base)
    module.lora_base_class = base
    module.lora_A, module.lora_B = AdapterFactor(a), AdapterFactor(b)
    module.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
    module.lora_scale, module.lora_dora, module.lora_dropout_post = float(scale), dora, dropout_post
    module.lora_norm_group = norm_group
    if dora:
        module.lora_magnitude_vector = nn.Parameter(module.weight.new_empty(module.weight.shape[0]))


@torch.no_grad()
def init_magnitude(module: nn.Module, weight: torch.Tensor, out: torch.Tensor) -> None:
    """DoRA's magnitude at initialisation into `out`: ||W + scale * B A||_row of the rows `weight` of the
    base weight, computed the way forward does, so a fresh adapter (B = 0) leaves the output bit for bit
    unchanged. With B = 0, W + scale * B A is W exactly, so only W's rows are needed (an FSDP2 rank holds
    the same rows of the weight and of the magnitude: both are sharded on dim 0 alike)."""
    out.copy_(row_norms(weight.to(module.weight.dtype), module.weight.dtype, module.lora_norm_group))


def detach_adapter(module: nn.Module, merge: bool) -> None:
    """Back to the plain base class, folding the adapter into the weight first when `merge`."""
    if merge:
        with torch.no_grad():
            module.weight.copy_(module.merged_weight())
    for name in ADAPTER_NAMES:
        if hasattr(module, name):
            delattr(module, name)
    module.__class__ = module.lora_base_class
    for name in ("lora_base_class", "lora_scale", "lora_dora", "lora_dropout_post", "lora_norm_group"):
        module.__dict__.pop(name, None)
