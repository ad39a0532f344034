"""Extract the recipe fields tests/training/test_megatron_bridge_defaults.py compares, from Megatron Bridge's
own recipe code, into megatron_bridge_0.6.2.json (committed beside this script; the test needs neither
this script nor megatron-bridge).

    pip download megatron-bridge==0.6.2 --no-deps --python-version 3.12 --only-binary=:all: -d /tmp/mb
    unzip /tmp/mb/megatron_bridge-0.6.2-py3-none-any.whl -d /tmp/mb/whl
    python tests/data/megatron_bridge_recipes/extract.py /tmp/mb/whl > tests/data/megatron_bridge_recipes/megatron_bridge_0.6.2.json

The recipe functions really run: every module under megatron/bridge/recipes/ is the wheel's source,
executed. Everything they import from elsewhere (megatron.core, megatron.bridge.training.config, the
dataset and PEFT classes, AutoBridge) would need GPUs' worth of dependencies, so it is replaced by a
recorder that keeps the keyword arguments it is built with and the attributes the recipe then sets,
starting from the class's own dataclass defaults where the wheel defines the class (LoRA, DoRA:
dim/alpha/targets). AutoBridge's provider starts from the parallel defaults of Megatron's
TransformerConfig (TP = PP = CP = 1, no VP, no SP). Then the same post-processing as Megatron
Bridge's ConfigContainer.validate for the fields read here: ddp/optimizer use_distributed_optimizer
synced (either on turns both on), lr_decay_iters None -> train_iters.
"""

from __future__ import annotations

import ast
import importlib.abc
import importlib.util
import json
import sys
import types
from pathlib import Path

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/mb/whl")
REAL = "megatron.bridge.recipes"


def class_defaults(module: str, name: str) -> dict:
    """Literal defaults of `name`'s annotated fields in the wheel's source of `module` (if it is there)."""
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.is_file():
        return {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef) and node.name == name:
            out = {}
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
                    value = stmt.value
                    if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "field":
                        for kw in value.keywords:  # field(default_factory=lambda: [...])
                            if kw.arg == "default_factory" and isinstance(kw.value, ast.Lambda):
                                value = kw.value.body
                    try:
                        out[stmt.target.id] = ast.literal_eval(value)
                    except ValueError:
                        pass
            return out
    return {}


class Recorder:
    """Stand-in for a class the recipes build: keeps the kwargs, then whatever is set on it."""

    _defaults: dict = {}

    def __init__(self, *args, **kwargs):
        self.__dict__.update(self._defaults)
        self.__dict__.update(kwargs)
        if args:
            self.__dict__["_args"] = args


PARALLEL_DEFAULTS = dict(tensor_model_parallel_size=1, pipeline_model_parallel_size=1, context_parallel_size=1,
                         virtual_pipeline_model_parallel_size=None, sequence_parallel=False,
                         account_for_embedding_in_pipeline_split=False, account_for_loss_in_pipeline_split=False,
                         calculate_per_token_loss=False)  # megatron/core/transformer/transformer_config.py


def recorder_class(module: str, name: str) -> type:
    defaults = {**(PARALLEL_DEFAULTS if name.endswith("ModelProvider") else {}), **class_defaults(module, name)}
    return type(name, (Recorder,), {"_defaults": defaults})


class Provider(Recorder):
    _defaults = PARALLEL_DEFAULTS


class AutoBridge:
    def __init__(self, hf_path):
        self.hf_path = hf_path

    @classmethod
    def from_hf_pretrained(cls, hf_path, **_):
        return cls(hf_path)

    def to_megatron_provider(self, load_weights=False):
        return Provider(hf_path=self.hf_path)


def stub_function(name: str):
    if name in ("bf16_mixed", "fp16_mixed") or name.startswith("bf16_with"):
        return lambda *a, **k: Recorder(recipe=name)
    if name == "get_mixed_precision_config":
        return lambda recipe, *a, **k: Recorder(recipe=recipe)
    return lambda *a, **k: Recorder(function=name, args=a, **k)


class StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name == "AutoBridge":
            value = AutoBridge
        elif name[:1].isupper():
            value = recorder_class(self.__name__, name)
        else:
            value = stub_function(name)
        setattr(self, name, value)
        return value


class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "megatron" and not fullname.startswith("megatron."):
            return None
        real = fullname == REAL or fullname.startswith(REAL + ".")
        base = ROOT / fullname.replace(".", "/")
        if real and (base / "__init__.py").is_file() and fullname.count(".") < 4:
            # a recipes package: its own __init__ would import every family; keep it empty
            return importlib.util.spec_from_loader(fullname, self, is_package=True)
        if real and base.with_suffix(".py").is_file():
            return importlib.util.spec_from_file_location(fullname, base.with_suffix(".py"))
        return importlib.util.spec_from_loader(fullname, self, is_package=True)

    def create_module(self, spec):
        return StubModule(spec.name)

    def exec_module(self, module):
        module.__path__ = []


sys.meta_path.insert(0, Finder())


def load(module: str):
    return importlib.import_module(module)


def fields(cfg, kind: str) -> dict:
    m, t, o, s, d, ck = cfg.model, cfg.train, cfg.optimizer, cfg.scheduler, cfg.dataset, cfg.checkpoint
    packing = getattr(d, "enable_offline_packing", False)
    specs = getattr(d, "offline_packing_specs", None)
    mp = cfg.mixed_precision
    out = dict(
        kind=kind, hf_path=getattr(m, 'hf_path', None), tensor_model_parallel_size=m.tensor_model_parallel_size,
        pipeline_model_parallel_size=m.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=m.virtual_pipeline_model_parallel_size,
        context_parallel_size=m.context_parallel_size, sequence_parallel=m.sequence_parallel,
        account_for_embedding_in_pipeline_split=m.account_for_embedding_in_pipeline_split,
        account_for_loss_in_pipeline_split=m.account_for_loss_in_pipeline_split,
        deterministic_mode=getattr(m, "deterministic_mode", False),
        calculate_per_token_loss=m.calculate_per_token_loss,
        seq_length=m.seq_length, dataset_seq_length=d.seq_length,
        train_iters=t.train_iters, global_batch_size=t.global_batch_size, micro_batch_size=t.micro_batch_size,
        eval_interval=cfg.validation.eval_interval, eval_iters=cfg.validation.eval_iters,
        seed=cfg.rng.seed, log_interval=cfg.logger.log_interval, save_interval=ck.save_interval,
        lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay, adam_beta1=o.adam_beta1, adam_beta2=o.adam_beta2,
        adam_eps=o.adam_eps, clip_grad=o.clip_grad,
        use_distributed_optimizer=bool(o.use_distributed_optimizer or cfg.ddp.use_distributed_optimizer),
        lr_warmup_iters=s.lr_warmup_iters, lr_decay_iters=s.lr_decay_iters or t.train_iters,
        lr_decay_style=s.lr_decay_style, start_weight_decay=s.start_weight_decay,
        end_weight_decay=s.end_weight_decay, weight_decay_incr_style=s.weight_decay_incr_style,
        packing=bool(packing), packed_sequence_size=specs.packed_sequence_size if packing and specs else None,
        mixed_precision=mp if isinstance(mp, str) else mp.recipe,
        peft=None,
    )
    if cfg.peft is not None:
        p = cfg.peft
        out["peft"] = dict(scheme=type(p).__name__.lower(), dim=p.dim, alpha=p.alpha, dropout=p.dropout,
                           dropout_position=p.dropout_position, target_modules=list(p.target_modules))
    return out


def main() -> None:
    llama = load("megatron.bridge.recipes.llama.llama3")
    gemma = load("megatron.bridge.recipes.gemma.gemma3")
    # Its SFT/PEFT recipes download the tokenizer to grow the vocabulary to it: not a field read here.
    load("megatron.bridge.recipes.gemma.h100.gemma3")._adjust_gemma3_vocab_size = lambda model_cfg, hf_path: None
    out = {}
    for module in (llama, gemma):
        for name in sorted(module.__all__):
            fn = getattr(module, name)
            if name.endswith("_peft_config"):
                for scheme in ("lora", "dora"):
                    out[f"{name}(peft_scheme={scheme!r})"] = fields(fn(peft_scheme=scheme), "peft")
            else:
                kind = "sft" if name.endswith("_sft_config") else "pretrain"
                out[name] = fields(fn(), kind)
    json.dump({"megatron_bridge": "0.6.2", "recipes": out}, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
