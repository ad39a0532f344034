"""Profile: one research training step of minibridge and of transformers, op by op, in one process.

Both sides of bench_train_step's research pair are built in this process and stepped in turn (a
warm-up each, then `--steps` profiled steps each, alternating, so both see the same machine phase);
torch.profiler's self CPU time of every aten op is summed into the parts of a step: the matrix products
(the linear layers and the output layer), attention, the loss, norms, the embedding, the optimizer and
the rest (elementwise, copies). The table puts the two sides side by side, the last column the
seconds minibridge saves or loses per part, which is where a speed ratio comes from.

    python benchmarks/profile_train_step.py [--case llama-2048] [--dtype auto] [--seq-divisor 4] [--steps 1]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_train_step import CASES, SIDES, build, case_config  # noqa: E402
from report import machine_line, pick_dtype, write_report  # noqa: E402

# first matching pattern names the part (aten op names, lower case)
PARTS = (
    ("optimizer", ("adam", "_foreach", "lerp", "addcdiv")),
    ("attention", ("scaled_dot_product", "flash_attention", "_efficient_attention", "softmax_backward_data")),
    ("loss", ("cross_entropy", "log_softmax", "nll_loss", "logsumexp")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("norm", ("rsqrt", "rms_norm", "norm")),
    ("embedding", ("embedding", "index_add", "index_select")),
)


def part_of(op: str) -> str:
    name = op.lower()
    return next((part for part, patterns in PARTS if any(p in name for p in patterns)), "other")


def profile(step) -> dict[str, float]:
    """Seconds of self CPU time per part of one call of `step`."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    parts: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        parts[part_of(event.key)] += event.self_cpu_time_total / 1e6
    return parts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="llama-2048", choices=list(CASES))
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--seq-divisor", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--report", default="profile_train_step")
    args = parser.parse_args()
    dtype = pick_dtype() if args.dtype == "auto" else args.dtype
    hf, seq = case_config(args.case, "cpu")
    sides = {side: build(side, "research", hf, seq // args.seq_divisor, dtype, "none") for side in SIDES}

    def stepper(side):
        step_fn, optimizer, ids = sides[side]

        def step():
            step_fn(ids).backward()
            optimizer.step()
            optimizer.zero_grad()
        return step

    for side in SIDES:
        stepper(side)()  # warm-up: allocator, optimizer state
    totals = {side: defaultdict(float) for side in SIDES}
    for _ in range(args.steps):
        for side in SIDES:
            for part, seconds in profile(stepper(side)).items():
                totals[side][part] += seconds / args.steps
    names = [p for p, _ in PARTS] + ["other"]
    lines = [f"# profile_train_step ({machine_line()}; research step, {args.case}, {dtype}, seq "
             f"{seq // args.seq_divisor}, self CPU seconds per step, mean of {args.steps})", "",
             "| part | minibridge (s) | transformers (s) | transformers - minibridge (s) |", "|---|---|---|---|"]
    for part in names + ["total"]:
        mb = sum(totals["minibridge"].values()) if part == "total" else totals["minibridge"][part]
        hf_s = sum(totals["hf"].values()) if part == "total" else totals["hf"][part]
        lines.append(f"| {part} | {mb:.3f} | {hf_s:.3f} | {hf_s - mb:+.3f} |")
    write_report(args.report, lines)


if __name__ == "__main__":
    main()
