"""Benchmark: the demo's loss curve with the Adam moments in fp32 and in bf16 (Megatron's precision-aware
optimizer, minibridge.training.precision_aware), rounded to nearest and stochastically.

Runs `make demo`'s training (examples/train_demo.py: the debug Llama, TP=2 on two CPU ranks, pydoc text,
300 steps) once per variant, then compares the mean training loss of the last 20 logged steps and the
final validation loss against fp32 moments (issue 33's target: within 1%). It writes both curves to
benchmarks/results/bench_moment_precision-cpu.{md,csv} and, with matplotlib installed, a PNG of them.

    python benchmarks/bench_moment_precision.py [--iters 300] [--out build/moment_precision]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "examples"))
from report import RESULTS, machine_line, write_report  # noqa: E402
from train_demo import prepare_data, train_command  # noqa: E402

PRECISION_AWARE = ["optimizer.use_precision_aware_optimizer=true", "optimizer.exp_avg_dtype=bf16",
                   "optimizer.exp_avg_sq_dtype=bf16"]
VARIANTS = {
    "fp32 moments": [],
    "bf16 moments, nearest": PRECISION_AWARE,
    "bf16 moments, stochastic": PRECISION_AWARE + ["optimizer.moment_rounding=stochastic"],
}
TAIL = 20  # logged steps averaged at the end


def curves(run: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    from minibridge.training.loss_curve import read_loss_history

    return read_loss_history(run / "metrics.jsonl")


def plot(results: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no matplotlib: `pip install matplotlib` for the PNG; the CSV has both curves)")
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, (train, val) in results.items():
        line, = ax.plot(*zip(*train), label=f"{name} (train)", linewidth=1)
        if val:
            ax.plot(*zip(*val), "o--", color=line.get_color(), label=f"{name} (validation)", markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("make demo: Adam moments in fp32 and bf16")
    ax.legend()
    fig.savefig(path, dpi=100)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--out", default=str(REPO / "build" / "moment_precision"))
    args = parser.parse_args()
    out = Path(args.out).resolve()
    prefix, tokenizer = prepare_data(out / "data", args.vocab)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results = {}
    for name, extra in VARIANTS.items():
        run = out / name.replace(" ", "_").replace(",", "")
        shutil.rmtree(run, ignore_errors=True)
        cmd = train_command(prefix, tokenizer, args.vocab, args.iters, run) + extra
        print(f"== {name}\n$ {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        results[name] = curves(run)
    base_train, base_val = results["fp32 moments"]
    lines = [f"# Adam moments in fp32 and bf16: the demo's {args.iters} steps", "", machine_line(), "",
             "| moments | train loss, last %d logged steps | vs fp32 | final validation loss | vs fp32 |" % TAIL,
             "|---|---|---|---|---|"]
    mean = lambda points: sum(v for _, v in points[-TAIL:]) / len(points[-TAIL:])  # noqa: E731
    for name, (train, val) in results.items():
        tail, final = mean(train), val[-1][1]
        lines.append(f"| {name} | {tail:.4f} | {100 * (tail / mean(base_train) - 1):+.2f}% | {final:.4f} | "
                     f"{100 * (final / base_val[-1][1] - 1):+.2f}% |")
    rows = ["step," + ",".join(f"{n} (train)" for n in results)]
    for i, (step, _) in enumerate(base_train):
        rows.append(f"{step}," + ",".join(f"{train[i][1]:.5f}" for train, _ in results.values()))
    write_report("bench_moment_precision", rows, suffix="csv")
    png = plot(results, RESULTS / "bench_moment_precision-cpu.png")
    lines += ["", f"Command: `python benchmarks/bench_moment_precision.py --iters {args.iters}`; curves: "
              f"bench_moment_precision-cpu.csv" + (f", {png.name}" if png else "")]
    write_report("bench_moment_precision", lines)
    print(json.dumps({n: mean(t) for n, (t, _) in results.items()}))


if __name__ == "__main__":
    main()
