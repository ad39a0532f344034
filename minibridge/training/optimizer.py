"""AdamW with fp32 master weights and gradients, gradient clipping over the parallel layout, and an
optional ZeRO-1 split of the optimizer over data-parallel ranks.

Mixed precision as Megatron does it: bf16 parameters compute the forward and backward; every bf16
parameter has an fp32 `main_grad` that micro-batch gradients accumulate into (a post-accumulate
hook moves each bf16 `.grad` there and frees it), and an fp32 master copy that torch's AdamW updates
before it is rounded back into the bf16 parameter. fp32 parameters are their own masters.

Under FSDP2 (minibridge.parallel.fsdp) the parameters are sharded fp32 DTensors, their own masters:
the same class runs torch's AdamW over them (no main_grad, no copies; ZeRO-1 is subsumed, the state
being sharded with the parameters), and the gradient norm adds up the dp shards as well.

State is keyed by parameter name (never by position), so checkpoints reshard across layouts.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.distributed as dist

from ..models import ModelChunks
from ..parallel.collectives import all_reduce_
from ..parallel.data import grad_of
from ..parallel.dims import ParallelDims
from ..parallel.fsdp import is_fsdp, local
from .precision_aware import REMAINDER, Slot, StatePrecision, join_master, slot_seed, split_master, update_slot


def _accumulate_into_main_grad(param: torch.Tensor) -> None:
    if param.grad is not None:  # None when a backward added into main_grad itself (models.common, models.output)
        param.main_grad.add_(param.grad)  # bf16 added into fp32 in place: no fp32 copy of the gradient first
        param.grad = None


def fastest_adamw(params) -> dict:
    """torch's fused AdamW (one kernel per parameter group, CPU and CUDA) where it runs on these fp32
    masters, else its foreach form (one op per group for all tensors), never the per-tensor loop."""
    probe = [p for p in params][:1]
    try:
        torch.optim.AdamW(probe or [torch.zeros(1, requires_grad=True)], fused=True)
        return {"fused": True}
    except (RuntimeError, ValueError):
        return {"foreach": True}


def _model_order(name: str) -> tuple[int, int]:
    """Embedding, layers by index, then the rest (final norm, output layer): a model's order of names."""
    parts = name.split(".")
    if parts[0] == "layers" and parts[1].isdigit():
        return 1, int(parts[1])
    return (0, 0) if parts[0] == "embed_tokens" else (2, 0)


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
        precision: StatePrecision | None = None,
    ):
        """`precision`: Megatron's precision-aware optimizer (minibridge.training.precision_aware), the
        state in the dtypes it names; None: fp32 state stepped by torch's AdamW."""
        self.dims = dims
        self.precision = precision
        chunks = ModelChunks.of(model)  # this rank's pipeline chunks
        self.fsdp = is_fsdp(chunks)  # sharded fp32 parameters: ZeRO-1 is subsumed
        # FSDP2 computing in bf16: its fp32 shards are the masters a checkpoint stores as such
        self.fsdp_masters = self.fsdp and chunks.sharding.fsdp.param_dtype is not None
        distributed = distributed and not self.fsdp
        self.params = {n: p for n, p in chunks.named_parameters() if p.requires_grad}
        self.specs = chunks.specs
        # A tied last pipeline stage holds a copy of the embedding: count it once in the norm.
        self.norm_skip = {id(c.embed_tokens.weight) for c in chunks if c.embed_tokens is not None and not c.is_first}
        self.owned = self._partition(distributed)
        main_grad_dtype = torch.float32 if precision is None else precision.dtype("main_grads_dtype")
        self.masters: dict[str, torch.Tensor] = {}  # the tensors torch's param groups hold (and state is keyed by)
        self.remainders: dict[str, torch.Tensor] = {}  # bf16 parameters whose master is themselves + these bits
        for name, p in self.params.items():
            if p.dtype != torch.float32:
                p.main_grad = torch.zeros_like(p, dtype=main_grad_dtype)
                p.register_post_accumulate_grad_hook(_accumulate_into_main_grad)
            if name not in self.owned:
                continue
            if precision is not None and precision.remainders_for(p):
                self.masters[name] = p  # a bf16 parameter is exactly its fp32 master's upper half: zero remainder
                self.remainders[name] = torch.zeros_like(p, dtype=torch.int16)
            else:
                self.masters[name] = p if p.dtype == torch.float32 else p.detach().float().requires_grad_()
        decay = [m for n, m in self.masters.items() if not no_weight_decay(n, self.params[n])]
        no_decay = [m for n, m in self.masters.items() if no_weight_decay(n, self.params[n])]
        # wd_mult as Megatron's param groups: set_weight_decay gives each group wd * wd_mult
        groups = [{"params": decay, "weight_decay": weight_decay, "wd_mult": 1.0},
                  {"params": no_decay, "weight_decay": 0.0, "wd_mult": 0.0}]
        groups = [g for g in groups if g["params"]] or [{"params": []}]
        self.weight_decay = weight_decay
        self.names = {id(m): n for n, m in self.masters.items()}
        self.inner = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **fastest_adamw(self.masters.values()))
        moments = (torch.float32, torch.float32) if precision is None else (
            precision.dtype("exp_avg_dtype"), precision.dtype("exp_avg_sq_dtype"))
        for master in self.masters.values():  # eager state, so a checkpoint load has tensors to fill
            self.inner.state[master] = {
                "step": torch.zeros((), dtype=torch.float32, device=master.device),
                "exp_avg": torch.zeros_like(master, dtype=moments[0]),
                "exp_avg_sq": torch.zeros_like(master, dtype=moments[1]),
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
        main_grads = []
        for p in self.params.values():
            p.grad = None
            if p.dtype != torch.float32:
                main_grads.append(p.main_grad)
        if main_grads:
            torch._foreach_zero_(main_grads)

    def set_lr(self, lr: float) -> None:
        for group in self.inner.param_groups:
            group["lr"] = lr

    def set_weight_decay(self, weight_decay: float) -> None:
        """The scheduler's weight decay for this step, in the groups that take it (Megatron's
        OptimizerParamScheduler.step: weight_decay = wd * wd_mult; biases and norms keep 0)."""
        self.weight_decay = weight_decay
        for group in self.inner.param_groups:
            group["weight_decay"] = weight_decay * group.get("wd_mult", 0.0)

    def grad_norm(self) -> float:
        """L2 norm of the whole model's gradient: sharded blocks summed over tp, replicas counted once."""
        grads, weights = [], []
        for name, p in self.params.items():
            g = grad_of(p)
            if g is None or id(p) in self.norm_skip:
                continue
            spec = self.specs.get(name)
            # replicated tensors appear on every tp rank, KV blocks on `replicas` ranks: count them once
            copies = 1 if spec is None or spec.size == 1 else spec.size if spec.dim is None else spec.replicas
            grads.append(g)
            weights.append(1.0 / copies)
        total = torch.zeros((), dtype=torch.float64)
        if grads:  # one fused pass over every gradient; squares summed in float64, no full-size copies
            low = any(g.dtype != torch.float32 for g in grads)  # bf16 main grads: their norms in fp32
            norms = torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32) if low else
                                torch._foreach_norm(grads)).double().cpu()
            total = (norms.square() * torch.tensor(weights, dtype=torch.float64)).sum()
        if self.dims is not None and self.dims.tp > 1:
            all_reduce_(total, self.dims.tp_group)
        if self.dims is not None and self.dims.config.pp > 1:
            all_reduce_(total, self.dims.pp_group)
        if self.fsdp and self.dims.dp > 1:  # each dp rank holds a shard of every gradient
            all_reduce_(total, self.dims.dp_group)
        return math.sqrt(total.item())

    @torch.no_grad()
    def step(self, max_grad_norm: float | None = None) -> float:
        """Clip, update the masters, write back into the parameters; returns the pre-clip grad norm."""
        norm = self.grad_norm()
        scale = 1.0
        if max_grad_norm and norm > max_grad_norm:
            scale = max_grad_norm / (norm + 1e-6)
        if math.isfinite(norm):
            if self.precision is None:
                self._step_fp32_state(scale)
            else:
                self._step_precision_aware(scale)
            self._share_updates()
        return norm

    def _step_fp32_state(self, scale: float) -> None:
        """torch's AdamW over the fp32 masters (their gradients the main grads), rounded into the parameters."""
        for name, master in self.masters.items():
            param = self.params[name]
            if master is param:  # fp32: its own master (a DTensor under FSDP2), its .grad in place
                master.grad = torch.zeros_like(master) if master.grad is None else master.grad
                continue
            g = grad_of(param)  # fp32 already: the main_grad
            master.grad = g if g is not None else torch.zeros_like(master)
        if scale != 1.0:
            torch._foreach_mul_([local(m.grad) for m in self.masters.values()], scale)
        self.inner.step()
        low = [(self.params[n], m) for n, m in self.masters.items() if m is not self.params[n]]
        if low:  # round the fp32 masters back into the bf16 parameters
            torch._foreach_copy_([p for p, _ in low], [m for _, m in low])
        for master in self.masters.values():
            master.grad = None

    def _step_precision_aware(self, scale: float) -> None:
        """Each parameter's state loaded into fp32 a slice at a time, stepped, stored back (precision_aware)."""
        for group in self.inner.param_groups:
            hyper = dict(lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1],
                         weight_decay=group["weight_decay"], eps=group["eps"])
            for master in group["params"]:
                name = self.names[id(master)]
                param, state = self.params[name], self.inner.state[master]
                state["step"] += 1  # before the kernel, as torch's fused AdamW does
                grad = grad_of(param)
                own = master is param
                slot = Slot(local(param), None if own else master, self.remainders.get(name),
                            {k: local(t) for k, t in state.items()}, slot_seed(name))
                update_slot(slot, local(grad) if grad is not None else torch.zeros_like(slot.param), hyper,
                            scale, self.precision)

    def _share_updates(self) -> None:
        """ZeRO-1: every owner sends its freshly updated parameters to the other dp ranks."""
        if len(self.owned) == len(self.params):
            return
        ranks = dist.get_process_group_ranks(self.dims.dp_group)
        for name, p in self.params.items():
            dist.broadcast(p.data, src=ranks[self.owner[name]], group=self.dims.dp_group)

    # -- named state, for checkpoints
    def named_param_groups(self) -> list[dict]:
        """torch's `param_groups` with parameter names for ids, as get_optimizer_state_dict writes them,
        for the whole model: every trainable parameter of every pipeline stage, whichever dp rank owns
        its state under ZeRO-1 (so every rank stores the same list). Collective over pp."""
        decays = [(n, not no_weight_decay(n, p)) for n, p in self.params.items()]
        if self.dims is not None and self.dims.config.pp > 1:
            stages: list = [None] * self.dims.config.pp
            dist.all_gather_object(stages, decays, group=self.dims.pp_group)
            decays = sorted(dict(pair for stage in stages for pair in stage).items(), key=lambda nd: _model_order(nd[0]))
        settings = {k: v for k, v in self.inner.param_groups[0].items() if k not in ("params", "weight_decay", "wd_mult")}
        groups = []
        for mult in (1.0, 0.0):
            params = [n for n, decay in decays if decay == bool(mult)]
            if params:
                groups.append({**settings, "weight_decay": self.weight_decay * mult, "wd_mult": mult, "params": params})
        return groups

    # (this rank's owned parameters only)
    def named_state(self) -> dict[str, dict[str, torch.Tensor]]:
        out = {}
        for name, master in self.masters.items():
            state = dict(self.inner.state[master])
            if name in self.remainders:  # the master's lower half (Megatron stores it as int16 as well)
                state[REMAINDER] = self.remainders[name]
            elif master is not self.params[name] or self.fsdp_masters:
                state["master"] = master
            out[name] = state
        return out

    def master_forms(self) -> dict[str, tuple[str, str, object]]:
        """For checkpoints that store a bf16 parameter's master in the other form (an fp32 "master" where
        this run keeps an int16 remainder, or the reverse): per parameter (the state key here, the other
        form's key, `make`); `make()` gives a tensor in the other form for a load to fill and a function
        that takes it in. A load fills the bf16 parameter first, so either form rebuilds the same master."""
        forms = {}
        for name, master in self.masters.items():
            param = self.params[name]
            if name in self.remainders:
                forms[name] = (REMAINDER, "master", partial(_as_master, param, self.remainders[name]))
            elif master is not param and param.dtype == torch.bfloat16:
                forms[name] = ("master", REMAINDER, partial(_as_remainder, param, master))
        return forms


def _as_master(param: torch.Tensor, remainder: torch.Tensor):
    full = join_master(param.detach().reshape(-1), remainder.reshape(-1))
    return full.view(param.shape), lambda: split_master(full, param.data.view(-1), remainder.view(-1))


def _as_remainder(param: torch.Tensor, master: torch.Tensor):
    remainder = torch.zeros_like(param, dtype=torch.int16)
    return remainder, lambda: master.data.copy_(join_master(param.detach().reshape(-1), remainder.view(-1)).view(
        master.shape))
