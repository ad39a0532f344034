"""`make bench`'s last step: one report from the tables the bench_*.py scripts just wrote.

It measures this CPU's fp32 and bf16 matmul rates (the yardstick the training step's FLOP/s are set
against), then gathers every results/bench_*-<device>.md into results/REPORT-<device>.md, after a
machine section, in the order the scripts ran. Tables keep their own headers, which say the command,
the dtype and the shapes each was measured with.

    python benchmarks/summarize.py [--device cpu]
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from report import RESULTS, device_tag, write_report  # noqa: E402

from minibridge.training.flops import measure_cpu_matmul_flops  # noqa: E402

ORDER = ("bench_train_step", "bench_load", "bench_generate", "bench_kernels", "bench_peft", "bench_comm",
         "bench_dp", "bench_pipeline", "bench_context")


def machine_section(device: str) -> list[str]:
    lines = ["## Machine", ""]
    if device.startswith("cuda"):
        return lines + [f"- GPU: {torch.cuda.get_device_name(torch.device(device))}", f"- torch {torch.__version__}", ""]
    rates = {name: measure_cpu_matmul_flops(dtype, seconds=2.0) for name, dtype in
             (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    return lines + [
        f"- CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}",
        f"- measured square matmul: fp32 {rates['fp32'] / 1e9:.1f} GFLOP/s, bf16 {rates['bf16'] / 1e9:.2f} GFLOP/s "
        f"(bf16 / fp32 = {rates['bf16'] / rates['fp32']:.3f}; the CPU benchmarks pick bf16 only where it is not slower)",
        "",
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    tag = device_tag(args.device)
    found = {path.name.removesuffix(f"-{tag}.md"): path for path in RESULTS.glob(f"bench_*-{tag}.md")}
    names = [n for n in ORDER if n in found] + sorted(set(found) - set(ORDER))
    lines = [f"# minibridge benchmark report ({tag})", "",
             "Written by `make bench`: every number below comes from the scripts of that run, each comparing "
             "against its reference (transformers, `*_ref`, or the analytic volume) in the same process.", ""]
    lines += machine_section(args.device)
    for name in names:
        body = found[name].read_text().strip().splitlines()
        title = body[0].lstrip("# ") if body and body[0].startswith("#") else name
        lines += [f"## {title}", "", *[f"#{line}" if line.startswith("#") else line for line in body[1:]], ""]
    write_report("REPORT", lines, args.device)


if __name__ == "__main__":
    main()
