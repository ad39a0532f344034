"""AdamW with fp32 master weights and gradients, gradient clipping over the parallel layout, and an
optional ZeRO-1 split of the optimizer over data-parallel ranks.

Mixed precision as Megatron does it: bf16 parameters compute the forward and backward; every bf16
parameter has an fp32 `main_grad` that micro-batch gradients accumulate into (a post-accumulate
hook moves each bf16 `.grad` there and frees it), and an fp32 master copy that torch's AdamW updates
before it is rounded back into the bf16 parameter. fp32 parameters are their own masters.

State is keyed by parameter name (never by position), so checkpoints reshard across layouts.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from ..models import ModelChunks
from ..parallel.collectives import all_reduce_
from ..parallel.data import grad_of
from ..parallel.dims import ParallelDims


def _accumulate_into_main_grad(param: torch.Tensor) -> None:
    param.main_grad.add_(param.grad.float())
    param.grad = None


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Megatron's rule: biases and norm weights (every 1-D parameter) take no weight decay."""
    return param.ndim < 2


class MixedPrecisionAdamW:
    def __init__(
        self,
        model: torch.nn.Module,
        lr: float,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        dims: ParallelDims | None = None,
        distributed: bool = False,
    ):
        self.dims = dims
        chunks = ModelChunks.of(model)  # this rank's pipeline chunks
        self.params = {n: p for n, p in chunks.named_parameters() if p.requires_grad}
        self.specs = chunks.specs
        # A tied last pipeline stage holds a copy of the embedding: count it once in the norm.
        self.norm_skip = {id(c.embed_tokens.weight) for c in chunks if c.embed_tokens is not None and not c.is_first}
        self.owned = self._partition(distributed)
        self.masters: dict[str, torch.Tensor] = {}
        for name, p in self.params.items():
            if p.dtype != torch.float32:
                p.main_grad = torch.zeros_like(p, dtype=torch.float32)
                p.register_post_accumulate_grad_hook(_accumulate_into_main_grad)
            if name in self.owned:
                self.masters[name] = p if p.dtype == torch.float32 else p.detach().float().requires_grad_()
        decay = [m for n, m in self.masters.items() if not no_weight_decay(n, self.params[n])]
        no_decay = [m for n, m in self.masters.items() if no_weight_decay(n, self.params[n])]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        self.inner = torch.optim.AdamW([g for g in groups if g["params"]] or [{"params": []}], lr=lr, betas=betas, eps=eps)
        for master in self.masters.values():  # eager state, so a checkpoint load has tensors to fill
            self.inner.state[master] = {
                "step": torch.zeros((), dtype=torch.float32),
                "exp_avg": torch.zeros_like(master, dtype=torch.float32),
                "exp_avg_sq": torch.zeros_like(master, dtype=torch.float32),
            }

    def _partition(self, distributed: bool) -> set[str]:
        """ZeRO-1: each dp rank owns the optimizer state of about 1/dp of the parameters (greedy by size)."""
        if not distributed or self.dims is None or self.dims.dp == 1:
            return set(self.params)
        loads = [0] * self.dims.dp
        self.owner = {}
        for name, p in sorted(self.params.items(), key=lambda kv: -kv[1].numel()):
            rank = loads.index(min(loads))
            self.owner[name] = rank
            loads[rank] += p.numel()
        return {n for n, r in self.owner.items() if r == self.dims.dp_rank}

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None
            if p.dtype != torch.float32:
                p.main_grad.zero_()

    def set_lr(self, lr: float) -> None:
        for group in self.inner.param_groups:
            group["lr"] = lr

    def grad_norm(self) -> float:
        """L2 norm of the whole model's gradient: sharded blocks summed over tp, replicas counted once."""
        total = torch.zeros((), dtype=torch.float64)
        for name, p in self.params.items():
            g = grad_of(p)
            if g is None or id(p) in self.norm_skip:
                continue
            spec = self.specs.get(name)
            sq = torch.linalg.vector_norm(g.float()).double() ** 2  # no full-size float64 copy
            if spec is not None and spec.size > 1:
                # replicated tensors appear on every tp rank, KV blocks on `replicas` ranks
                sq = sq / (spec.size if spec.dim is None else spec.replicas)
            total += sq
        if self.dims is not None and self.dims.tp > 1:
            all_reduce_(total, self.dims.tp_group)
        if self.dims is not None and self.dims.config.pp > 1:
            all_reduce_(total, self.dims.pp_group)
        return math.sqrt(total.item())

    @torch.no_grad()
    def step(self, max_grad_norm: float | None = None) -> float:
        """Clip, update the masters, write back into the parameters; returns the pre-clip grad norm."""
        norm = self.grad_norm()
        scale = 1.0
        if max_grad_norm and norm > max_grad_norm:
            scale = max_grad_norm / (norm + 1e-6)
        if math.isfinite(norm):
            for name, master in self.masters.items():
                g = grad_of(self.params[name])  # fp32 already: a main_grad, or an fp32 parameter's grad
                master.grad = g if g is not None else torch.zeros_like(master)
                if scale != 1.0:
                    master.grad.mul_(scale)
            self.inner.step()
            for name, master in self.masters.items():
                if master is not self.params[name]:
                    self.params[name].copy_(master)
                master.grad = None
            self._share_updates()
        return norm

    def _share_updates(self) -> None:
        """ZeRO-1: every owner sends its freshly updated parameters to the other dp ranks."""
        if len(self.owned) == len(self.params):
            return
        ranks = dist.get_process_group_ranks(self.dims.dp_group)
        for name, p in self.params.items():
            dist.broadcast(p.data, src=ranks[self.owner[name]], group=self.dims.dp_group)

    # -- named state, for checkpoints (this rank's owned parameters only)
    def named_state(self) -> dict[str, dict[str, torch.Tensor]]:
        out = {}
        for name, master in self.masters.items():
            state = dict(self.inner.state[master])
            if master is not self.params[name]:
                state["master"] = master
            out[name] = state
        return out
