"""The two sides of bench_train_step's pairs: the cases (issue 14's shapes), the modes, and how each side's
model, optimizer and step are built (its docstring describes every mode). Also used by
estimate_train_memory.py and profile_train_step.py."""

from __future__ import annotations

import json
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

CASES = {"llama-2048": ("Llama-3.2-1B", 4, 2048), "gemma-4096": ("gemma-3-1b-it", 6, 4096),
         "gemma-8192": ("gemma-3-1b-it", 6, 8192)}  # (config, layers on CPU, sequence)
MODES = ("research", "research-fused", "research-in-backward", "trainer", "trainer-bf16-state", "compiled")
TRAINER_MODES = ("trainer", "trainer-bf16-state")
SIDES = ("minibridge", "hf")
SIDE_MODULES = {"minibridge": ("torch", "minibridge.bridge", "minibridge.training.optimizer"),
                "hf": ("torch", "transformers")}


def _hf_config(name: str, layers: int | None) -> dict:
    config = json.loads((REPO / "tests" / "data" / "hf_configs" / f"{name}.json").read_text())
    if layers:
        config["num_hidden_layers"] = layers
        config.pop("layer_types", None)
    return config


def case_config(case: str, device: str, layers: int = 0) -> tuple[dict, int]:
    """(HF config, sequence length) of a case: on CPU its few layers, on CUDA the model's own depth,
    `layers` if given."""
    name, cpu_layers, seq = CASES[case]
    return _hf_config(name, layers or (cpu_layers if device == "cpu" else None)), seq


class MasterWeightsAdamW:
    """transformers' side of the trainer mode: fp32 copies of bf16 parameters, stepped by torch AdamW
    (fused where torch has it), gradients converted from bf16, the result copied back."""

    def __init__(self, params, lr: float):
        self.params = [p for p in params if p.requires_grad]
        self.masters = [p.detach().float().requires_grad_() for p in self.params]
        self.inner = torch.optim.AdamW(self.masters, lr=lr, foreach=True)

    def step(self):
        with torch.no_grad():
            for p, m in zip(self.params, self.masters):
                m.grad = p.grad.float() if p.grad is not None else None
            self.inner.step()
            for p, m in zip(self.params, self.masters):
                p.copy_(m)
                m.grad = None

    def zero_grad(self):
        for p in self.params:
            p.grad = None


def build(side: str, mode: str, hf: dict, seq: int, dtype_name: str, recompute: str, device: str = "cpu"):
    """(step function, optimizer, input ids) of one side of a pair, its model built from `hf` on `device`."""
    torch.manual_seed(0)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    if side == "minibridge":
        from minibridge import AutoBridge
        from minibridge.bridge import config_from_hf
        from minibridge.training.optimizer import MixedPrecisionAdamW
        from minibridge.training.precision_aware import StatePrecision

        config = config_from_hf(hf)
        options = dict(compile=True) if mode == "compiled" else {}
        if mode in TRAINER_MODES:
            options["recompute"] = recompute
        model = AutoBridge.from_config(config).to_model(dtype=dtype, device=device, progress=False, **options)
        if mode in TRAINER_MODES:
            precision = StatePrecision(exp_avg_dtype="bf16", exp_avg_sq_dtype="bf16") if mode != "trainer" else None
            optimizer = MixedPrecisionAdamW(model, lr=1e-4, precision=precision)
        elif mode == "research-in-backward":
            from minibridge.training.step_in_backward import StepInBackward

            optimizer = StepInBackward(model.parameters(), torch.optim.AdamW, lr=1e-4)
        else:
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=mode == "research-fused")
        step_fn = lambda ids: model(ids, labels=ids)  # noqa: E731
        vocab = config.vocab_size
    else:
        import transformers

        cfg = transformers.AutoConfig.for_model(**hf)
        with torch.device(device):  # initialised where it runs (1B parameters take long on a CPU)
            model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
        if mode in TRAINER_MODES and recompute != "none":
            model.gradient_checkpointing_enable()
        optimizer = MasterWeightsAdamW(model.parameters(), 1e-4) if mode in TRAINER_MODES else torch.optim.AdamW(
            model.parameters(), lr=1e-4, fused=mode == "research-fused")
        forward = torch.compile(model) if mode == "compiled" else model
        step_fn = lambda ids: forward(input_ids=ids, labels=ids).loss  # noqa: E731
        vocab = cfg.vocab_size
    model.train()
    return step_fn, optimizer, torch.randint(0, vocab, (1, seq)).to(device)
