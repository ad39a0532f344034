"""Benchmark: load a full-size Llama-3.2-1B checkpoint with minibridge vs. transformers, on CPU.

Measures, for each library, the wall time of loading a ~2.5 GB bf16 safetensors checkpoint into a
bf16 model, then touching every page of every weight (so a lazy, mmap-backed load pays its page
faults too), and the process's peak RSS above its baseline (the RSS after importing torch and the
library, before loading). Each load runs in its own fresh subprocess; the sides alternate
(minibridge, hf, minibridge, hf, ...) so the first run warms the page cache for both, and per side we
keep the best time and the largest peak.

The aim: minibridge's peak RSS at most 1.2x the checkpoint's bytes above the interpreter baseline and
well below transformers'; its load time no worse than transformers'.

The checkpoint (random weights, the real shapes of a tied Llama 3.2 1B, config from
tests/data/hf_configs/Llama-3.2-1B.json) is written once with minibridge's streaming writer and
cached under --dir.

    python benchmarks/bench_load.py [--dir DIR] [--repeats 2] [--clean]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "tests" / "data" / "hf_configs" / "Llama-3.2-1B.json"
RESULTS = REPO / "benchmarks" / "results" / "bench_load-cpu.md"
DEFAULT_DIR = Path(tempfile.gettempdir()) / "minibridge-bench" / "llama32-1b"
GB = 1e9


# ----------------------------------------------------------------------------- checkpoint


def hf_entries(cfg: dict) -> list:
    import torch

    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    kv = cfg["num_key_value_heads"] * cfg.get("head_dim", h // cfg["num_attention_heads"])
    q = cfg["num_attention_heads"] * cfg.get("head_dim", h // cfg["num_attention_heads"])
    shapes = [("model.embed_tokens.weight", (cfg["vocab_size"], h))]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes += [
            (p + "input_layernorm.weight", (h,)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (q, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, q)),
            (p + "mlp.gate_proj.weight", (inter, h)),
            (p + "mlp.up_proj.weight", (inter, h)),
            (p + "mlp.down_proj.weight", (h, inter)),
        ]
    shapes.append(("model.norm.weight", (h,)))  # tied: no lm_head.weight
    return [(name, torch.bfloat16, shape) for name, shape in shapes]


def make_checkpoint(folder: Path) -> int:
    """Write config.json + model.safetensors once; returns the safetensors file's size in bytes."""
    weights = folder / "model.safetensors"
    if (folder / ".complete").exists() and weights.exists():
        return weights.stat().st_size
    import torch
    from minibridge.bridge.safetensors_io import write_safetensors

    folder.mkdir(parents=True, exist_ok=True)
    cfg = json.loads(CONFIG.read_text())
    cfg.update(architectures=["LlamaForCausalLM"], torch_dtype="bfloat16")
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    entries = hf_entries(cfg)
    torch.manual_seed(0)

    def tensors():
        for name, dtype, shape in entries:
            if name.endswith("norm.weight"):
                yield torch.ones(shape, dtype=dtype)
            else:
                yield (torch.randn(shape, dtype=torch.float32) * 0.02).to(dtype)

    print(f"writing checkpoint to {folder} ...", flush=True)
    write_safetensors(weights, entries, tensors())
    (folder / ".complete").write_text("ok\n")
    return weights.stat().st_size


# ----------------------------------------------------------------------------- child


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(side: str, folder: str) -> None:
    import torch

    if side == "minibridge":
        from minibridge import AutoBridge
    else:
        import transformers
    baseline = status_kib("VmRSS")
    start = time.perf_counter()
    if side == "minibridge":
        model = AutoBridge.from_hf_pretrained(folder).to_model(dtype=torch.bfloat16, progress=False)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    load_s = time.perf_counter() - start
    # Touch one element per 4 KiB page of every weight, so a lazy (mmap-backed) load pays for its page
    # faults in time and RSS; strided, so no full-size temporary (a p.float() would add 1 GB of RSS).
    with torch.no_grad():
        total = sum(float(p.detach().reshape(-1)[:: 4096 // p.element_size()].float().sum())
                    for p in model.parameters())
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"side": side, "seconds": seconds, "load_only_s": load_s, "baseline_kib": baseline,
                      "peak_kib": peak, "file_kib": status_kib("RssFile"), "checksum": total}))


def run_child(side: str, folder: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", side, str(folder)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{side} child failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- report


def report(best: dict, nbytes: int, repeats: int) -> str:
    rows = [f"Checkpoint: Llama-3.2-1B shape, bf16, {nbytes} bytes ({nbytes / GB:.3f} GB); "
            f"best time / max peak of {repeats} run(s) per side, fresh process each.",
            "Load time includes touching every weight page; file-backed RSS is mmapped checkpoint pages.", "",
            "| side | load time (s) | peak RSS above baseline (GB) | peak / checkpoint bytes "
            "| file-backed RSS at end (GB) |", "|---|---|---|---|---|"]
    for side in ("minibridge", "hf"):
        r = best[side]
        rows.append(f"| {side} | {r['seconds']:.2f} | {r['peak_bytes'] / GB:.3f} | {r['peak_bytes'] / nbytes:.2f}x "
                    f"| {r['file_kib'] * 1024 / GB:.3f} |")
    mb, hf = best["minibridge"], best["hf"]
    rows += ["", f"minibridge / HF: time {mb['seconds'] / hf['seconds']:.2f}x, "
                 f"peak RSS {mb['peak_bytes'] / hf['peak_bytes']:.2f}x"]
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="checkpoint cache folder")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side (alternating)")
    keep = parser.add_mutually_exclusive_group()
    keep.add_argument("--keep", dest="clean", action="store_false", help="keep the checkpoint (default)")
    keep.add_argument("--clean", dest="clean", action="store_true", help="delete the checkpoint at the end")
    parser.set_defaults(clean=False)  # store_false alone would default --clean to True
    parser.add_argument("--child", nargs=2, metavar=("SIDE", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)

    nbytes = make_checkpoint(args.dir)
    best: dict = {}
    for i in range(args.repeats):
        for side in ("minibridge", "hf"):
            r = run_child(side, args.dir)
            r["peak_bytes"] = (r["peak_kib"] - r["baseline_kib"]) * 1024
            print(f"run {i + 1} {side:10s} {r['seconds']:6.2f} s (load call {r['load_only_s']:.2f} s)  peak +{r['peak_bytes'] / GB:.3f} GB "
                  f"(baseline {r['baseline_kib'] / 2**20:.2f} GiB)", flush=True)
            b = best.setdefault(side, dict(r))
            b["seconds"] = min(b["seconds"], r["seconds"])
            b["peak_bytes"] = max(b["peak_bytes"], r["peak_bytes"])
    text = report(best, nbytes, args.repeats)
    print()
    print(text, end="")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("# bench_load (CPU)\n\n" + text)
    print(f"\nwrote {RESULTS.relative_to(REPO)}")
    if args.clean:
        shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
