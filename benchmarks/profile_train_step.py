"""Profile: one research training step of minibridge and of transformers, op by op, in one process.

Both sides of bench_train_step's research pair are built in this process and stepped in turn (a
warm-up each, then `--steps` profiled steps each, alternating, so both see the same machine phase);
torch.profiler's self CPU time of every aten op of forward + backward is summed into the parts of a
step: the matrix products (the linear layers and the output layer), attention, the loss, norms, the
embedding and the rest (elementwise, copies); the optimizer step is profiled on its own. The last
column is the seconds minibridge saves (+) or loses (-) per part, which is where a speed ratio comes from.

    python benchmarks/profile_train_step.py [--case llama-2048] [--dtype auto] [--seq-divisor 4] [--steps 1]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from train_step_sides import CASES, SIDES, build, case_config  # noqa: E402
from report import machine_line, pick_dtype, write_report  # noqa: E402

# first matching pattern names the part of a forward + backward (aten op names, lower case); the
# optimizer step is profiled on its own and is all "optimizer"
PARTS = (
    ("optimizer", ()),
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

    def forward_backward(side):
        step_fn, _, ids = sides[side]
        return lambda: step_fn(ids).backward()

    def optimizer_step(side):
        optimizer = sides[side][1]
        return lambda: (optimizer.step(), optimizer.zero_grad())

    for side in SIDES:  # warm-up: allocator, optimizer state
        forward_backward(side)()
        optimizer_step(side)()
    totals = {side: defaultdict(float) for side in SIDES}
    for _ in range(args.steps):
        for side in SIDES:
            for part, seconds in profile(forward_backward(side)).items():
                totals[side][part] += seconds / args.steps
            totals[side]["optimizer"] += sum(profile(optimizer_step(side)).values()) / args.steps
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
