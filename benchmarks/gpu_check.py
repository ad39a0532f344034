"""`make gpu-check`: everything that needs a GPU, in one short run, with one report.

For the first session that is lent a GPU (the device tool's `status` says so at no cost): runs every
`gpu`-marked test (the Triton kernels compiled for real, bf16, full sizes; their CPU counterparts run
under TRITON_INTERPRET=1 in `make test`), then `bench_kernels.py --device cuda`, and writes
`benchmarks/results/gpu-check-<gpu>.md` with the test summary, the kernel table and the machine.
Without CUDA it says so and exits with code 2.

    python benchmarks/gpu_check.py [--quick]      # --quick: fewer benchmark lengths and repeats
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from report import RESULTS, device_tag, write_report  # noqa: E402


def run(cmd: list[str], timeout: int) -> tuple[int, str, float]:
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        code, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        code, out = 124, f"timed out after {timeout} s\n{err.stdout or ''}"
    return code, out, time.perf_counter() - start


def versions() -> str:
    """The versions this check ran with: a lent GPU machine brings its own, not constraints.txt's."""
    from importlib.metadata import PackageNotFoundError, version

    found = [f"python {sys.version.split()[0]}"]
    for name in ("torch", "triton", "transformers", "flash-attn"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} absent")
    return ", ".join(found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="bench_kernels at 2048 and 4096 only, 2 repeats")
    args = parser.parse_args()
    print(f"gpu_check: {versions()} (installs nothing: the interpreter's own packages)", flush=True)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it where one is lent (`make test` covers the CPU paths)",
              file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name()
    tests = run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"], 900)
    bench_cmd = [sys.executable, "benchmarks/bench_kernels.py", "--device", "cuda"]
    if args.quick:
        bench_cmd += ["--seqs", "2048", "4096", "--repeats", "2"]
    bench = run(bench_cmd, 900)
    table = RESULTS / f"bench_kernels-{device_tag('cuda')}.md"
    summary = [line for line in tests[1].splitlines() if " passed" in line or " failed" in line or "error" in line]
    lines = [f"# gpu-check on {gpu}", "",
             f"- {versions()}, CUDA {torch.version.cuda}, capability {torch.cuda.get_device_capability()}",
             f"- `pytest -m gpu`: exit {tests[0]} in {tests[2]:.0f} s: {summary[-1] if summary else 'no summary'}",
             f"- `{' '.join(bench_cmd[1:])}`: exit {bench[0]} in {bench[2]:.0f} s", "", "## gpu-marked tests", "",
             "```", *tests[1].splitlines()[-40:], "```", "", "## Kernel benchmarks", ""]
    lines += table.read_text().splitlines() if table.is_file() and bench[0] == 0 else ["```", *bench[1].splitlines()[-40:], "```"]
    write_report("gpu-check", lines, device="cuda")
    return 0 if tests[0] == 0 and bench[0] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
