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
"""

from __future__ import annotations

import math
import zlib
from fnmatch import fnmatchcase

import torch
from torch import nn

from ..errors import ConfigError
from ..parallel.sharding import ShardSpec, take_block
from .lora import attach, detach_adapter, is_adapted

SCHEMES = ("lora", "dora")
DEFAULT_ALPHA = {"lora": 32, "dora": 64}  # Megatron Bridge: LoRA dim 32 alpha 32, DoRA dim 32 alpha 64
DEFAULT_TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")
MEGATRON_NAMES = {"q_proj": "linear_qkv", "k_proj": "linear_qkv", "v_proj": "linear_qkv", "o_proj": "linear_proj",
                  "gate_proj": "linear_fc1", "up_proj": "linear_fc1", "down_proj": "linear_fc2"}
SUBLAYERS = {"q_proj": "attn", "k_proj": "attn", "v_proj": "attn", "o_proj": "attn",
             "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
MEGATRON_SUBLAYERS = {"attn": "self_attention", "mlp": "mlp"}
INITS = ("kaiming", "uniform", "xavier", "normal")
ADAPTER_PARAMS = ("lora_A.weight", "lora_B.weight", "lora_magnitude_vector")


def _chunks(model) -> list:
    return list(model) if isinstance(model, (list, tuple)) else [model]


def candidate_modules(config) -> list[str]:
    """Every linear of the whole model that can take an adapter, in model order."""
    return [f"layers.{i}.{SUBLAYERS[p]}.{p}" for i in range(config.num_layers) for p in MEGATRON_NAMES]


def _spellings(name: str, mapping) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(short names, full names) a pattern may use for module `name`."""
    _, index, sublayer, short = name.split(".")
    megatron = f"decoder.layers.{index}.{MEGATRON_SUBLAYERS[sublayer]}.{MEGATRON_NAMES[short]}"
    hf = mapping.to_hf(f"{name}.weight").removesuffix(".weight")
    return (short, MEGATRON_NAMES[short]), (name, megatron, hf)


def _matches(pattern: str, spellings) -> bool:
    shorts, fulls = spellings
    if any(c in pattern for c in "*?["):
        return any(fnmatchcase(full, pattern) for full in fulls)
    return pattern in shorts or pattern in fulls


def _as_list(patterns) -> list[str]:
    return [patterns] if isinstance(patterns, str) else list(patterns or [])


def select_modules(config, targets=None, exclude=None) -> list[str]:
    """The module names (of the whole model) that `targets` minus `exclude` select."""
    from ..bridge.mappings import WeightMapping

    mapping = WeightMapping(config.family)
    targets = _as_list(DEFAULT_TARGETS if targets is None else targets)
    exclude = _as_list(exclude)
    spellings = {name: _spellings(name, mapping) for name in candidate_modules(config)}
    for pattern in targets + exclude:
        if not any(_matches(pattern, s) for s in spellings.values()):
            raise ConfigError(
                f"peft target {pattern!r} matches no linear layer of this {config.family} model; expected a "
                f"Megatron name ({', '.join(DEFAULT_TARGETS)}), a module name ({', '.join(MEGATRON_NAMES)}), a full "
                f"name ('layers.0.attn.q_proj', 'model.layers.0.self_attn.q_proj') or a wildcard "
                f"('*.layers.0.*.linear_qkv')")
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


def apply_peft(model, scheme: str = "lora", rank: int = 32, alpha: float | None = None, dropout: float = 0.0,
               targets=None, exclude=None, *, dropout_position: str = "pre", init: str = "kaiming",
               use_rslora: bool = False, seed: int = 0):
    """Attach LoRA or DoRA adapters to `model` (a model, sharded or not, or this rank's pipeline chunks)
    and freeze everything else. Returns `model`. Defaults: Megatron Bridge's rank 32, alpha 32 (LoRA)
    or 64 (DoRA), its four block linears; scale alpha / rank (alpha / sqrt(rank) with rsLoRA).
    Under tensor parallelism every rank of the group calls this (DoRA's norms of row-parallel layers
    are all-reduced)."""
    if scheme not in SCHEMES:
        raise ConfigError(f"peft scheme {scheme!r}: expected one of {', '.join(SCHEMES)}")
    if not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"LoRA rank {rank!r}: expected a positive integer")
    alpha = DEFAULT_ALPHA[scheme] if alpha is None else alpha
    if dropout_position not in ("pre", "post") or (scheme == "dora" and dropout_position == "post"):
        raise ConfigError(f"dropout_position={dropout_position!r}: expected 'pre' or 'post' ('pre' only for DoRA)")
    if not 0 <= dropout < 1:
        raise ConfigError(f"LoRA dropout {dropout}: expected a value in [0, 1)")
    chunks = _chunks(model)
    if has_adapters(chunks):
        raise ConfigError("the model already has adapters; merge_peft(model) or start from a fresh model")
    names = select_modules(chunks[0].config, targets, exclude)
    scale = alpha / math.sqrt(rank) if use_rslora else alpha / rank
    for chunk in chunks:
        chunk.peft_frozen = [n for n, p in chunk.named_parameters() if p.requires_grad]
        chunk.requires_grad_(False)
        specs, dims = getattr(chunk, "tp_specs", None), getattr(chunk, "parallel_dims", None)
        modules = dict(chunk.named_modules())
        for name in names:
            module = modules.get(name)
            if module is None:
                continue  # a layer of another pipeline stage
            base = (specs or {}).get(f"{name}.weight")
            out, inp = base.full_shape if base is not None else tuple(module.weight.shape)
            new = adapter_specs(base, rank)
            a = init_lora_a((rank, inp), init, _seeded(seed, f"{name}.lora_A.weight"))
            a = take_block(a, new.get("lora_A.weight"))
            b = take_block(torch.zeros(out, rank), new.get("lora_B.weight"))
            like = dict(dtype=module.weight.dtype, device=module.weight.device)
            group = dims.tp_group if base is not None and base.kind == "row" and base.size > 1 else None
            attach(module, a.to(**like).contiguous(), b.to(**like).contiguous(), scale, scheme == "dora", dropout,
                   dropout_position == "post", norm_group=group)
            if specs is not None:
                specs.update({f"{name}.{p}": s for p, s in new.items() if hasattr(module, p.split(".")[0])})
        chunk.peft_config = dict(scheme=scheme, rank=rank, alpha=alpha, dropout=dropout,
                                 dropout_position=dropout_position, use_rslora=use_rslora, modules=names)
    return model


def has_adapters(model) -> bool:
    return any(is_adapted(m) for chunk in _chunks(model) for m in chunk.modules())


def adapter_parameters(model) -> dict[str, nn.Parameter]:
    """name -> parameter of every adapter tensor of `model` (one chunk, or this rank's chunks)."""
    return {n: p for chunk in _chunks(model) for n, p in chunk.named_parameters()
            if any(n.endswith(f".{p}") for p in ADAPTER_PARAMS)}


def _remove(model, merge: bool):
    for chunk in _chunks(model):
        specs = getattr(chunk, "tp_specs", {})
        for name, module in list(chunk.named_modules()):
            if is_adapted(module):
                detach_adapter(module, merge)
                for p in ADAPTER_PARAMS:
                    specs.pop(f"{name}.{p}", None)
        trainable = set(chunk.__dict__.pop("peft_frozen", []))
        for n, p in chunk.named_parameters():
            p.requires_grad_(n in trainable)
        chunk.__dict__.pop("peft_config", None)
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
    chunks = _chunks(model)
    counts = torch.zeros(2, dtype=torch.int64)
    for chunk in chunks:
        specs = getattr(chunk, "tp_specs", {})
        for name, p in chunk.named_parameters():
            if name == "embed_tokens.weight" and not getattr(chunk, "is_first", True):
                continue
            n = math.prod(specs[name].full_shape) if name in specs else p.numel()
            counts += torch.tensor([n if p.requires_grad else 0, n])
    dims = getattr(chunks[0], "parallel_dims", None)
    if dims is not None and dims.config.pp > 1:
        from ..parallel.collectives import all_reduce_

        all_reduce_(counts, dims.pp_group)
    return int(counts[0]), int(counts[1])
