"""How the Megatron fixtures of this folder were made (run by hand; CI never runs this, nor needs the packages).

Stage `hf` (the project's .venv): tiny HF checkpoints from tests/data/hf_configs, bf16 (Megatron Bridge
builds Gemma 3 in bf16, so bf16 sources make every comparison bit for bit):

    .venv/bin/python tests/data/megatron/make_fixtures.py hf

Stage `mcore` / `export` (a throwaway venv with Megatron Bridge 0.6.2 and Megatron-Core 0.19.2; they declare
Python >= 3.12, their wheels ran on 3.11 here):

    python3.11 -m venv /tmp/mb31venv && /tmp/mb31venv/bin/pip install torch==2.13.0
    /tmp/mb31venv/bin/pip install --no-deps --ignore-requires-python megatron-core==0.19.2 megatron-bridge==0.6.2
    /tmp/mb31venv/bin/pip install --no-deps nvidia-modelopt
    /tmp/mb31venv/bin/pip install numpy transformers==5.12.1 omegaconf hydra-core einops pyyaml tqdm rich six \
        regex packaging safetensors triton==3.9.0 tensorboard pydantic pulp requests datasets braceexpand psutil
    /tmp/mb31venv/bin/python tests/data/megatron/make_fixtures.py mcore     # their import_ckpt -> <name>/mcore
    /tmp/mb31venv/bin/pip install scipy     # modelopt.torch, which their load_megatron_model imports, needs it
    .venv/bin/python tests/data/megatron/make_fixtures.py ours              # our convert import --format megatron
    /tmp/mb31venv/bin/python tests/data/megatron/make_fixtures.py export 2>&1 | tee tests/data/megatron/mbridge_export_log.txt

`ours` writes our Megatron checkpoints of the fixtures (and of the Llama one with its vocabulary padded to a
multiple of 128) under $MEGATRON_FIXTURE_WORK (default /tmp/minibridge-megatron-fixtures; not committed).
`export` reads each with Megatron Bridge's `AutoBridge.export_ckpt` and records in mbridge_export_record.json,
per case, the sha256 of every tensor of our folder and the verdict on every HF tensor their export wrote
against the source (tests/convert/test_megatron_write.py checks that today's writer still writes those tensors).
Their export needed, beyond the shims below: scipy, their layer spec and fusions set for the CPU after their
load_model_config (our run_config.yaml leaves both to the machine that loads it), and no tokenizer (the
fixtures hold none; PreTrainedCausalLM._load_tokenizer returns None).

`mcore` was run as `make_fixtures.py mcore llama` then `make_fixtures.py mcore gemma3` (one process per family is
also what the NVTE_* reset below allows in one process). Their `run_config.yaml` records the absolute path of
the HF folder it was made from (hf_model_id); nothing reads it.

What their CPU path needed (nothing of it is minibridge code):
- a `typing.override` shim (Python 3.11 has none),
- an import-only `transformer_engine` stand-in (megatron/bridge/peft/lora_layers.py imports it unconditionally),
- an import-only `megatron.energon` stand-in (their multimodal data modules import it; its own needs,
  multistorageclient and ryml, are not on this registry); nvidia-modelopt (--no-deps), requests, datasets,
  tensorboard, pydantic, pulp, braceexpand, psutil,
- no-op `torch.cuda.synchronize` / `torch.cuda.get_rng_state`, `torch.cuda.current_device` -> "cpu" (CPU only),
- `temporary_distributed_context("gloo")` around the conversion,
- Llama: Megatron-Core's local layer spec (gpt_provider.local_layer_spec) with rope/norm/bias fusions off,
- Gemma 3 (it has only a TE spec): CPU stand-ins for its four Transformer Engine layer classes, patched into
  gemma3_provider's module globals (and transformer_block.LayerNormImpl for the final norm), that register the same parameter names (layer_norm_weight, post_layernorm).
"""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURES = {"llama": ("Llama-3.2-1B", dict(vocab_size=250)), "gemma3": ("gemma-3-1b-it", {})}
WORK = Path(os.environ.get("MEGATRON_FIXTURE_WORK", "/tmp/minibridge-megatron-fixtures"))  # not committed


def make_hf() -> None:
    import torch

    sys.path.insert(0, str(HERE.parents[1]))  # tests/
    from hf_checkpoints import make_checkpoint, real_config, shrink

    for name, (config, overrides) in FIXTURES.items():
        hf = shrink(real_config(config), **overrides)
        hf["torch_dtype"] = hf["dtype"] = "bfloat16"
        out = HERE / name / "hf"
        make_checkpoint(out, hf, dtype=torch.bfloat16, seed=31)
        print("wrote", out, sorted(p.name for p in out.iterdir()))


# ------------------------------------------------------------------ Megatron Bridge side (throwaway venv only)


def _shims() -> None:
    import typing

    import torch

    if not hasattr(typing, "override"):
        typing.override = lambda f: f
    # Megatron-Core first, with no transformer_engine at all (its optional imports see none); then an empty,
    # import-only stand-in for the one unconditional `import transformer_engine.pytorch` (peft/lora_layers.py)
    import megatron.core  # noqa: F401

    for module in ("transformer_engine", "transformer_engine.pytorch"):
        stand_in = types.ModuleType(module)
        stand_in.__path__, stand_in.__version__ = [], "0.0.0"  # an old version: no TE code path is taken
        sys.modules.setdefault(module, stand_in)
    # megatron-energon (their multimodal data modules import it at module level; it needs packages this registry
    # lacks): an import-only stand-in whose every name is a plain class
    def placeholder(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {"__class_getitem__": classmethod(lambda cls, item: cls)})

    for module in ("megatron.energon", "megatron.energon.flavors", "megatron.energon.task_encoder",
                   "megatron.energon.flavors.base_dataset", "megatron.energon.task_encoder.base"):
        stand_in = types.ModuleType(module)
        stand_in.__path__, stand_in.__getattr__ = [], placeholder
        sys.modules.setdefault(module, stand_in)
    # annotations of lora_layers' TE classes name te.ops.Sequential at class creation
    sys.modules["transformer_engine.pytorch"].ops = types.SimpleNamespace(Sequential=object)
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.get_rng_state = lambda *a, **k: torch.zeros(16, dtype=torch.uint8)
    torch.cuda.current_device = lambda: "cpu"  # DCP's save finalize puts a flag tensor there


def _fusions_off(provider) -> None:
    for key in ("apply_rope_fusion", "persist_layer_norm", "bias_activation_fusion", "masked_softmax_fusion",
                "gradient_accumulation_fusion", "bias_dropout_fusion", "cross_entropy_loss_fusion"):
        if hasattr(provider, key):
            setattr(provider, key, False)


def _gemma_cpu_layers() -> None:
    """CPU stand-ins for the TE classes gemma3_layer_spec names, with TE's parameter names."""
    import torch
    from megatron.bridge.models.gemma import gemma3_provider
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    class Norm(torch.nn.Module):  # TENorm's one parameter (zero-centred RMSNorm weight); never run here
        def __init__(self, config, hidden_size, eps=1e-6):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(hidden_size, dtype=config.params_dtype))

    norm = Norm

    class LayerNormColumn(ColumnParallelLinear):
        def __init__(self, input_size, output_size, *, config, init_method, gather_output, bias, skip_bias_add,
                     is_expert, skip_weight_param_allocation=False, tp_comm_buffer_name=None, **kwargs):
            super().__init__(input_size, output_size, config=config, init_method=init_method,
                             gather_output=gather_output, bias=bias, skip_bias_add=skip_bias_add, is_expert=is_expert,
                             skip_weight_param_allocation=skip_weight_param_allocation)
            self.layer_norm_weight = torch.nn.Parameter(torch.zeros(input_size, dtype=config.params_dtype))

    class RowLayerNorm(RowParallelLinear):
        def __init__(self, input_size, output_size, *, config, init_method, bias, input_is_parallel, skip_bias_add,
                     is_expert, tp_comm_buffer_name=None, **kwargs):
            super().__init__(input_size, output_size, config=config, init_method=init_method, bias=bias,
                             input_is_parallel=input_is_parallel, skip_bias_add=skip_bias_add, is_expert=is_expert)
            self.post_layernorm = norm(config, output_size)

    class Attention(DotProductAttention):
        def __init__(self, config, layer_number, attn_mask_type, attention_type, attention_dropout=None,
                     softmax_scale=None, cp_comm_type=None, pg_collection=None, **kwargs):
            super().__init__(config, layer_number, attn_mask_type, attention_type, attention_dropout=attention_dropout,
                             softmax_scale=softmax_scale, cp_comm_type=cp_comm_type, pg_collection=pg_collection)

    from megatron.core.transformer import transformer_block

    transformer_block.LayerNormImpl = Norm  # the final norm (torch's norm refuses zero-centred gamma)
    gemma3_provider.TELayerNormColumnParallelLinear = LayerNormColumn
    gemma3_provider.TERowParallelLinearLayerNorm = RowLayerNorm
    gemma3_provider.Gemma3TEDotProductAttention = Attention
    gemma3_provider.TENorm = lambda config, hidden_size, eps=1e-6: norm(config, hidden_size, eps)


def make_mcore() -> None:
    _shims()
    from megatron.bridge import AutoBridge
    from megatron.bridge.models.gpt_provider import local_layer_spec
    from megatron.bridge.training.model_load_save import temporary_distributed_context

    _gemma_cpu_layers()
    for name in sys.argv[2:] or FIXTURES:
        bridge = AutoBridge.from_hf_pretrained(str(HERE / name / "hf"))
        provider = bridge.to_megatron_provider(load_weights=True)
        if name == "llama":
            provider.transformer_layer_spec = local_layer_spec
        _fusions_off(provider)
        provider.finalize()
        for key in ("NVTE_FLASH_ATTN", "NVTE_FUSED_ATTN", "NVTE_UNFUSED_ATTN"):  # the previous model's backend
            os.environ.pop(key, None)
        with temporary_distributed_context("gloo"):
            model = provider.provide_distributed_model(wrap_with_ddp=False, use_cpu_initialization=True)
            bridge.save_megatron_model(model, str(HERE / name / "mcore"), low_memory_save=True)
        print("wrote", HERE / name / "mcore")


# our Megatron checkpoints that their exporter reads: (case, HF fixture, extra `convert import` flags)
OURS = {"llama": ("llama", []), "gemma3": ("gemma3", []),
        "llama_padded": ("llama", ["--make-vocab-size-divisible-by", "128"])}
RECORD = HERE / "mbridge_export_record.json"


def tensor_sha256(folder) -> dict:
    """sha256 of every tensor a DCP folder stores (whole tensors: fixtures only), by key. Torch alone, so the
    CI test (tests/convert/test_megatron_write.py) and this script compute the same thing."""
    import hashlib
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = dcp.FileSystemReader(str(folder))  # our own output, written a moment ago: trusted here
    stored = reader.read_metadata().state_dict_metadata
    out = {}
    for key, meta in sorted(stored.items()):
        if isinstance(meta, TensorStorageMetadata):
            tensor = torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
            with warnings.catch_warnings():  # one process without a process group, on purpose
                warnings.filterwarnings("ignore", message=".*torch.distributed is .*")
                dcp.load({key: tensor}, storage_reader=reader, no_dist=True)
            out[key] = hashlib.sha256(tensor.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
    return out


def export_ours() -> None:
    """Their AutoBridge.export_ckpt of our `convert import --format megatron` output, compared with the source.

    Run with the project's .venv on PATH first making the folders (`ours` stage), then here; the record of
    both (our tensors' sha256 and their export's verdict per HF tensor) goes to mbridge_export_record.json,
    the run's output to mbridge_export_log.txt."""
    import torch
    from safetensors.torch import load_file

    _shims()
    from megatron.bridge import AutoBridge
    from megatron.bridge.models.gpt_provider import GPTModelProvider, local_layer_spec
    from megatron.bridge.training import model_load_save

    _gemma_cpu_layers()
    load_model_config = model_load_save.load_model_config

    def cpu_config(path):  # our run_config.yaml leaves the layer spec to the machine: the local one on a CPU
        provider, args = load_model_config(path)
        if type(provider) is GPTModelProvider:
            provider.transformer_layer_spec = local_layer_spec
        _fusions_off(provider)
        return provider, args

    model_load_save.load_model_config = cpu_config
    from megatron.bridge.models.hf_pretrained.causal_lm import PreTrainedCausalLM

    PreTrainedCausalLM._load_tokenizer = lambda self: None  # the fixtures hold no tokenizer to save beside
    record = {}
    for case, (name, _) in OURS.items():
        for key in ("NVTE_FLASH_ATTN", "NVTE_FUSED_ATTN", "NVTE_UNFUSED_ATTN"):
            os.environ.pop(key, None)
        ours, out = WORK / case, WORK / f"{case}_exported_by_mbridge"
        bridge = AutoBridge.from_hf_pretrained(str(HERE / name / "hf"))
        bridge.export_ckpt(str(ours), str(out), show_progress=False)
        source = load_file(str(HERE / name / "hf" / "model.safetensors"))
        exported = {}
        for f in sorted(out.glob("*.safetensors")):
            exported.update(load_file(str(f)))
        verdict = {}
        for k in sorted(set(source) | set(exported)):
            a, b = source.get(k), exported.get(k)
            if a is None or b is None:
                verdict[k] = "only in the source" if b is None else "only in the export"
            elif a.shape[1:] == b.shape[1:] and a.shape[0] < b.shape[0] and a.dtype == b.dtype:  # padded rows kept
                same = torch.equal(a.view(torch.uint8), b[: a.shape[0]].view(torch.uint8))
                verdict[k] = (f"{list(a.shape)} vs {list(b.shape)}: the first {a.shape[0]} rows "
                              f"{'identical' if same else 'differ'}, the other {b.shape[0] - a.shape[0]} "
                              f"{'zero' if not b[a.shape[0]:].any() else 'nonzero'}")
            elif a.shape != b.shape or a.dtype != b.dtype:
                verdict[k] = f"{list(a.shape)} {a.dtype} vs {list(b.shape)} {b.dtype}"
            else:
                verdict[k] = "identical" if torch.equal(a.view(torch.uint8), b.view(torch.uint8)) else "values differ"
        record[case] = {"ours_sha256": tensor_sha256(ours / "iter_0000000"), "export": verdict,
                        "identical": sum(v == "identical" for v in verdict.values()), "tensors": len(verdict)}
        print(case, f"{record[case]['identical']}/{len(verdict)} tensors identical to the source", flush=True)
    RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print("wrote", RECORD)


def make_ours() -> None:
    """Our Megatron checkpoints of the fixtures, for `export` (the project's .venv)."""
    import subprocess

    for case, (name, flags) in OURS.items():
        subprocess.run([sys.executable, "-m", "minibridge.convert", "import", "--hf-model", str(HERE / name / "hf"),
                        "--megatron-path", str(WORK / case), "--format", "megatron", "--overwrite", "--no-progress",
                        *flags], check=True, cwd=HERE.parents[2])


if __name__ == "__main__":
    {"hf": make_hf, "mcore": make_mcore, "ours": make_ours, "export": export_ours}[sys.argv[1]]()
