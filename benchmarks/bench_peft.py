"""Benchmark: one fine-tuning step (forward, backward, AdamW) with LoRA vs full fine-tuning in minibridge,
and transformers + peft LoRA on the same model, on CPU.

The model is the Llama-3.2-1B shape (real 128,256 vocabulary) cut to `--layers` layers, batch 1 at
`--seq` tokens, random weights. LoRA is Megatron Bridge's default (rank 32, alpha 32 on q, k, v, o,
gate, up, down). Each side runs in its own fresh process (`--child`), so peak RSS (above the
post-import baseline) is its own:

    minibridge full   every weight trains: MixedPrecisionAdamW, fp32 master weights + main grads
    minibridge lora   `apply_peft`: frozen base, bf16 adapters with fp32 masters and main grads
    hf+peft lora      `AutoModelForCausalLM.from_config` (sdpa) + `peft.get_peft_model`, torch AdamW on
                      the trainable parameters (peft keeps bf16-model adapters in fp32 by default)

Both minibridge sides use the training configuration (fused chunked output layer + loss).

dtype "auto" (the default) is bf16 where this CPU multiplies bf16 at least as fast as fp32 (AMX /
AVX512-BF16), else fp32: on an AVX2-only CPU torch's bf16 matmul runs at ~1 GFLOP/s (vs ~50 in fp32)
and a bf16 step of this shape takes many minutes. The report says which dtype ran.

    python benchmarks/bench_peft.py [--dtype auto|bf16|fp32] [--layers 4] [--seq 1024] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from report import best_training_step, machine_line, pick_dtype, run_child, write_report  # noqa: E402

SIDES = ("minibridge-full", "minibridge-lora", "hf+peft-lora")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA = 32, 32


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def _hf_config(layers: int) -> dict:
    config = json.loads((REPO / "tests" / "data" / "hf_configs" / "Llama-3.2-1B.json").read_text())
    config["num_hidden_layers"] = layers
    return config


def child(side: str, dtype_name: str, layers: int, seq: int, steps: int) -> dict:
    import torch

    torch.manual_seed(0)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    hf = _hf_config(layers)
    if side.startswith("minibridge"):
        from minibridge import AutoBridge
        from minibridge.bridge import config_from_hf
        from minibridge.peft import apply_peft, count_parameters
        from minibridge.training.optimizer import MixedPrecisionAdamW

        base = _rss_gb()
        config = config_from_hf(hf)
        model = AutoBridge.from_config(config).to_model(dtype=dtype, progress=False)
        if side == "minibridge-lora":
            apply_peft(model, "lora", rank=RANK, alpha=ALPHA, targets=TARGETS)
        trainable, total = count_parameters(model)
        optimizer = MixedPrecisionAdamW(model, lr=1e-4)
        step_fn = lambda ids: model(ids, labels=ids)  # noqa: E731
        vocab = config.vocab_size
    else:
        import peft
        import transformers

        base = _rss_gb()
        cfg = transformers.AutoConfig.for_model(**hf)
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
        model = peft.get_peft_model(model, peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS,
                                                           task_type="CAUSAL_LM"))
        params = [p for p in model.parameters() if p.requires_grad]
        trainable, total = model.get_nb_trainable_parameters()
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        step_fn = lambda ids: model(input_ids=ids, labels=ids).loss  # noqa: E731
        vocab = cfg.vocab_size
    model.train()
    ids = torch.randint(0, vocab, (1, seq))
    timing = best_training_step(step_fn, optimizer, ids, steps)
    return {"step_s": timing.seconds, "tokens_per_sec": seq / timing.seconds, "peak_gb": _rss_gb() - base,
            "loss": timing.loss, "trainable": int(trainable), "total": int(total)}


def run_side(side: str, dtype: str, layers: int, seq: int, steps: int) -> dict | str:
    return run_child(__file__, side, dtype, layers, seq, steps)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        side, dtype, layers, seq, steps = sys.argv[2:7]
        print(json.dumps(child(side, dtype, int(layers), int(seq), int(steps))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    args.dtype = pick_dtype() if args.dtype == "auto" else args.dtype
    lines = [f"# bench_peft ({machine_line()}; {args.dtype}, Llama-3.2-1B shape with {args.layers} layers, batch 1, seq {args.seq}, "
             f"best of {args.steps} step(s) after a warm-up; LoRA rank {RANK} alpha {ALPHA} on q k v o gate up down)", "",
             "| side | trainable params | step (s) | tokens/s | peak RSS (GB) | step vs minibridge full | memory vs minibridge full |",
             "|---|---|---|---|---|---|---|"]
    results = {}
    for side in SIDES:
        r = results[side] = run_side(side, args.dtype, args.layers, args.seq, args.steps)
        if isinstance(r, str):
            lines.append(f"| {side} | - | {r} | - | - | - | - |")
        else:
            full = results["minibridge-full"] if isinstance(results["minibridge-full"], dict) else r
            lines.append(f"| {side} | {r['trainable']:,} of {r['total']:,} | {r['step_s']:.2f} | {r['tokens_per_sec']:.0f} "
                         f"| {r['peak_gb']:.2f} | {r['step_s'] / full['step_s']:.2f}x | {r['peak_gb'] / full['peak_gb']:.2f}x |")
        print(lines[-1], flush=True)
    write_report("bench_peft", lines)


if __name__ == "__main__":
    main()
