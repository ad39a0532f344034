"""`apply_peft` / `merge_peft`: choose the linears that get adapters, initialise them identically under
every parallel layout, freeze the base, and fold the adapters back in.

Targets are matched against three spellings of each block linear, so Megatron Bridge and peft users
both feel at home:

    short names     q_proj k_proj v_proj o_proj gate_proj up_proj down_proj   (ours and HF's)
    Megatron names  linear_qkv (q, k, v)  linear_proj (o)  linear_fc1 (gate, up)  linear_fc2 (down)
    full names      layers.0.attn.q_proj | model.layers.0.self_attn.q_proj (HF, from the bridge's table)
                    | decoder.layers.0.self_attention.linear_qkv (Megatron)
    wildcards       fnmatch on any full spelling: "*.layers.0.*.linear_qkv", "*.mlp.*", ...

Patterns are checked against the whole model (every layer, whatever this pipeline stage holds), and
one that matches nothing is an error. A factors come from a generator seeded by (seed, parameter
name) and are cut to this rank's block, so TP/PP/DP runs start from the same adapters as one process.
`apply_peft` is `attach_peft` (the modules, frozen base) then `init_adapters` (the values); the trainer
runs the first on the meta model, before FSDP2 shards it, and the second once the weights are loaded.
"""

from __future__ import annotations

import math
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import torch
from torch import nn

from ..errors import ConfigError
from ..models import ModelChunks
from ..parallel.fsdp import local_rows
from ..parallel.sharding import ShardSpec, take_block
from .lora import attach, detach_adapter, init_magnitude, is_adapted

SCHEMES = ("lora", "dora")
DEFAULT_RANK = 32  # Megatron Bridge: LoRA dim 32 alpha 32, DoRA dim 32 alpha 64
DEFAULT_ALPHA = {"lora": 32, "dora": 64}
DEFAULT_TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")
MEGATRON_NAMES = {"q_proj": "linear_qkv", "k_proj": "linear_qkv", "v_proj": "linear_qkv", "o_proj": "linear_proj",
                  "gate_proj": "linear_fc1", "up_proj": "linear_fc1", "down_proj": "linear_fc2"}
SUBLAYERS = {"q_proj": "attn", "k_proj": "attn", "v_proj": "attn", "o_proj": "attn",
             "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
MEGATRON_SUBLAYERS = {"attn": "self_attention", "mlp": "mlp"}
INITS = ("kaiming", "uniform", "xavier", "normal")
ADAPTER_PARAMS = ("lora_A.weight", "lora_B.weight", "lora_magnitude_vector")


@dataclass
class AdapterState:
    """What `apply_peft` attached to a chunk (`chunk.adapters`): the settings, the adapted modules of
    the whole model, and the parameters it froze (merge_peft unfreezes exactly those)."""

    scheme: str
    rank: int
    alpha: float
    dropout: float
    dropout_position: str
    use_rslora: bool
    modules: list[str]
    frozen: list[str] = field(default_factory=list)
    base_model_name_or_path: str | None = None  # an HF PEFT folder's, when loaded from one
    init: str = "kaiming"  # how A is drawn (init_lora_a), from a generator seeded by (seed, name)
    seed: int = 0


def candidate_modules(config) -> list[str]:
    """Every linear of the whole model that can take an adapter, in model order."""
    return [f"layers.{i}.{SUBLAYERS[p]}.{p}" for i in range(config.num_layers) for p in MEGATRON_NAMES]


def _spellings(name: str, hf_name) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(short names, full names) a pattern may use for module `name`; `hf_name(name)`, when given
    (the bridge's `mapping.hf_module_name`), adds its Hugging Face spelling."""
    _, index, sublayer, short = name.split(".")
    megatron = f"decoder.layers.{index}.{MEGATRON_SUBLAYERS[sublayer]}.{MEGATRON_NAMES[short]}"
    fulls = (name, megatron) + ((hf_name(name),) if hf_name is not None else ())
    return (short, MEGATRON_NAMES[short]), fulls


def _matches(pattern: str, spellings) -> bool:
    shorts, fulls = spellings
    if any(c in pattern for c in "*?["):
        return any(fnmatchcase(full, pattern) for full in fulls)
    return pattern in shorts or pattern in fulls


def _as_list(patterns) -> list[str]:
    return [patterns] if isinstance(patterns, str) else list(patterns or [])


def select_modules(config, targets=None, exclude=None, hf_name=None) -> list[str]:
    """The module names (of the whole model) that `targets` minus `exclude` select."""
    targets = _as_list(DEFAULT_TARGETS if targets is None else targets)
    exclude = _as_list(exclude)
    spellings = {name: _spellings(name, hf_name) for name in candidate_modules(config)}
    for pattern in targets + exclude:
        if not any(_matches(pattern, s) for s in spellings.values()):
            raise ConfigError(
                f"peft target {pattern!r} matches no linear layer of this {config.family} model; expected a "
                f"Megatron name ({', '.join(DEFAULT_TARGETS)}), a module name ({', '.join(MEGATRON_NAMES)}), a full "
                f"name ('layers.0.attn.q_proj'; an HF name such as 'model.layers.0.self_attn.q_proj' when the "
                f"bridge spells them: hf_name=bridge.mapping.hf_module_name) or a wildcard ('*.layers.0.*.linear_qkv')")
    chosen = [n for n, s in spellings.items()
              if any(_matches(t, s) for t in targets) and not any(_matches(e, s) for e in exclude)]
    if not chosen:
        raise ConfigError(f"peft targets {targets} minus excludes {exclude} leave no layer to adapt")
    return chosen


def _seeded(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))


def init_lora_a(shape: tuple[int, int], method: str, generator: torch.Generator) -> torch.Tensor:
    """A's initial values (full shape, fp32). kaiming/uniform: kaiming_uniform(a=sqrt(5)) as peft and
    Megatron Bridge's default branch; xavier: xavier_uniform as Megatron Bridge's LinearAdapter;
    normal: N(0, 0.2^2) as NeMo's adapters."""
    a = torch.empty(shape)
    if method in ("kaiming", "uniform"):
        return nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
    if method == "xavier":
        return nn.init.xavier_uniform_(a, generator=generator)
    if method == "normal":
        return a.normal_(0.0, 0.2, generator=generator)
    raise ConfigError(f"lora A init {method!r}: expected one of {', '.join(INITS)}")


def adapter_specs(base: ShardSpec | None, rank: int) -> dict[str, ShardSpec]:
    """How A, B and the magnitude are split, given the base weight's split (see lora.py's table)."""
    if base is None or base.size == 1:
        return {}
    out, inp = base.full_shape
    tp, r = base.size, base.rank
    if base.kind in ("column", "kv"):
        return {"lora_A.weight": ShardSpec("replicated", (rank, inp), r, tp, grad_reduce=True),
                "lora_B.weight": ShardSpec(base.kind, (out, rank), r, tp, replicas=base.replicas),
                "lora_magnitude_vector": ShardSpec(base.kind, (out,), r, tp, replicas=base.replicas)}
    if base.kind == "row":
        return {"lora_A.weight": ShardSpec("row", (rank, inp), r, tp),
                "lora_B.weight": ShardSpec("replicated", (out, rank), r, tp, grad_reduce=True),
                "lora_magnitude_vector": ShardSpec("replicated", (out,), r, tp, grad_reduce=True)}
    raise ValueError(f"no LoRA layout for a {base.kind}-parallel weight")


def apply_peft(model, scheme: str = "lora", rank: int = DEFAULT_RANK, alpha: float | None = None, dropout: float = 0.0,
               targets=None, exclude=None, *, dropout_position: str = "pre", init: str = "kaiming",
               use_rslora: bool = False, seed: int = 0, hf_name=None):
    """Attach LoRA or DoRA adapters to `model` (a model, sharded or not, or this rank's pipeline chunks)
    and freeze everything else. Returns `model`. Defaults: Megatron Bridge's rank 32, alpha 32 (LoRA)
    or 64 (DoRA), its four block linears; scale alpha / rank (alpha / sqrt(rank) with rsLoRA).
    Targets may also be HF module names when `hf_name` spells them (`bridge.mapping.hf_module_name`).
    Under tensor parallelism every rank of the group calls this (DoRA's norms of row-parallel layers
    are all-reduced)."""
    attach_peft(model, scheme, rank, alpha, dropout, targets, exclude, dropout_position=dropout_position, init=init,
                use_rslora=use_rslora, seed=seed, hf_name=hf_name)
    return init_adapters(model)


def attach_peft(model, scheme: str = "lora", rank: int = DEFAULT_RANK, alpha: float | None = None, dropout: float = 0.0,
                targets=None, exclude=None, *, dropout_position: str = "pre", init: str = "kaiming",
                use_rslora: bool = False, seed: int = 0, hf_name=None):
    """`apply_peft`'s first half: attach the adapter modules, their values uninitialised (on meta as
    `build_model(adapters=...)` calls it, before FSDP2 fixes the parameter set), and freeze the rest.
    `init_adapters` sets the values once the base weights are in. Returns `model`."""
    if scheme not in SCHEMES:
        raise ConfigError(f"peft scheme {scheme!r}: expected one of {', '.join(SCHEMES)}")
    if not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"LoRA rank {rank!r}: expected a positive integer")
    if init not in INITS:
        raise ConfigError(f"lora A init {init!r}: expected one of {', '.join(INITS)}")
    alpha = DEFAULT_ALPHA[scheme] if alpha is None else alpha
    if dropout_position not in ("pre", "post") or (scheme == "dora" and dropout_position == "post"):
        raise ConfigError(f"dropout_position={dropout_position!r}: expected 'pre' or 'post' ('pre' only for DoRA)")
    if not 0 <= dropout < 1:
        raise ConfigError(f"LoRA dropout {dropout}: expected a value in [0, 1)")
    chunks = ModelChunks.of(model)
    if has_adapters(chunks):
        raise ConfigError("the model already has adapters; merge_peft(model) or start from a fresh model")
    names = select_modules(chunks.config, targets, exclude, hf_name)
    scale = alpha / math.sqrt(rank) if use_rslora else alpha / rank
    for chunk in chunks:
        frozen = [n for n, p in chunk.named_parameters() if p.requires_grad]
        chunk.requires_grad_(False)
        specs = chunk.sharding.specs if chunk.sharding is not None else None
        dims = chunk.sharding.dims if chunk.sharding is not None else None
        modules = dict(chunk.named_modules())
        for name in names:
            module = modules.get(name)
            if module is None:
                continue  # a layer of another pipeline stage
            base = (specs or {}).get(f"{name}.weight")
            out, inp = base.full_shape if base is not None else tuple(module.weight.shape)
            new = adapter_specs(base, rank)
            like = dict(dtype=module.weight.dtype, device=module.weight.device)
            a, b = (torch.empty(_local_shape(new.get(f"lora_{x}.weight"), shape), **like)
                    for x, shape in (("A", (rank, inp)), ("B", (out, rank))))
            group = dims.tp_group if base is not None and base.kind == "row" and base.size > 1 else None
            attach(module, a, b, scale, scheme == "dora", dropout, dropout_position == "post", norm_group=group)
            if specs is not None:
                specs.update({f"{name}.{p}": s for p, s in new.items() if hasattr(module, p.split(".")[0])})
        chunk.adapters = AdapterState(scheme, rank, alpha, dropout, dropout_position, use_rslora, names, frozen,
                                      init=init, seed=seed)
    return model


def _local_shape(spec: ShardSpec | None, full: tuple[int, ...]) -> tuple[int, ...]:
    return spec.local_shape() if spec is not None else full


@torch.no_grad()
def init_adapters(model):
    """`apply_peft`'s second half, on the loaded base: A from a generator seeded by (seed, name), cut to
    this rank's block (and to its dp rows under FSDP2), B = 0, DoRA's magnitude from the base weight's
    rows. Every layout gets the values one process gets. Returns `model`."""
    for chunk in ModelChunks.of(model):
        state, specs = chunk.adapters, chunk.sharding.specs if chunk.sharding is not None else {}
        for name, module in chunk.named_modules():
            if not is_adapted(module):
                continue
            base = specs.get(f"{name}.weight")
            inp = base.full_shape[1] if base is not None else module.weight.shape[1]
            full = init_lora_a((state.rank, inp), state.init, _seeded(state.seed, f"{name}.lora_A.weight"))
            a, rows = local_rows(module.lora_A.weight)
            a.copy_(take_block(full, specs.get(f"{name}.lora_A.weight"), rows))
            local_rows(module.lora_B.weight)[0].zero_()
            if module.lora_dora:
                init_magnitude(module, local_rows(module.weight)[0], local_rows(module.lora_magnitude_vector)[0])
    return model


@contextmanager
def adapters_hidden(model):
    """The base model alone for a while: every adapter's parameters are taken off its linear (what a
    checkpoint of the base model is read into) and put back, the same objects in the same order."""
    saved = [(m, dict(m._modules), dict(m._parameters)) for c in ModelChunks.of(model) for m in c.modules()
             if is_adapted(m)]
    for module, _, _ in saved:
        for name in ("lora_A", "lora_B"):
            module._modules.pop(name)
        module._parameters.pop("lora_magnitude_vector", None)
    try:
        yield model
    finally:
        for module, modules, params in saved:
            module._modules.clear()
            module._modules.update(modules)
            module._parameters.clear()
            module._parameters.update(params)


def has_adapters(model) -> bool:
    return any(is_adapted(m) for chunk in ModelChunks.of(model) for m in chunk.modules())


def adapter_parameters(model) -> dict[str, nn.Parameter]:
    """name -> parameter of every adapter tensor of `model` (one chunk, or this rank's chunks)."""
    return {n: p for chunk in ModelChunks.of(model) for n, p in chunk.named_parameters()
            if any(n.endswith(f".{p}") for p in ADAPTER_PARAMS)}


def _remove(model, merge: bool):
    for chunk in ModelChunks.of(model):
        specs = chunk.sharding.specs if chunk.sharding is not None else {}
        for name, module in list(chunk.named_modules()):
            if is_adapted(module):
                detach_adapter(module, merge)
                for p in ADAPTER_PARAMS:
                    specs.pop(f"{name}.{p}", None)
        if chunk.adapters is not None:
            trainable = set(chunk.adapters.frozen)
            for n, p in chunk.named_parameters():
                p.requires_grad_(n in trainable)
        chunk.adapters = None
    return model


def merge_peft(model):
    """Fold every adapter into its base weight (fp32 arithmetic, stored in the base dtype), remove the
    adapters and unfreeze what apply_peft froze. Parameter names are those of the plain model again,
    so `bridge.save_hf_pretrained(merge_peft(model), dir)` writes full HF weights. Every tensor-parallel
    rank calls it (DoRA norms of row-parallel layers are all-reduced). Returns `model`."""
    return _remove(model, merge=True)


def remove_peft(model):
    """Drop the adapters without merging (the base model as it was loaded)."""
    return _remove(model, merge=False)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters of the whole model, full sizes, summed over pipeline stages
    (a tied last stage's copy of the embedding counted once). Collective under pipeline parallelism."""
    chunks = ModelChunks.of(model)
    counts = torch.zeros(2, dtype=torch.int64)
    specs = chunks.specs
    for chunk in chunks:
        for name, p in chunk.named_parameters():
            if name == "embed_tokens.weight" and not chunk.is_first:
                continue
            n = math.prod(specs[name].full_shape) if name in specs else p.numel()
            counts += torch.tensor([n if p.requires_grad else 0, n])
    dims = chunks.dims
    if dims is not None and dims.config.pp > 1:
        from ..parallel.collectives import all_reduce_

        all_reduce_(counts, dims.pp_group)
    return int(counts[0]), int(counts[1])
