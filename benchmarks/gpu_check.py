"""`make gpu-check`: everything that needs a GPU, in one run of at most 6 minutes (--quick: 3), one report.

Made for a lent GPU machine: no network, its own `python3` (torch 2.11, triton 3.6, transformers 5.17, no
flash-attn), a bare checkout with nothing pip-installed. It installs nothing: every stage runs through
`checkout_imports.py`, which serves `minibridge.kernels` / `minibridge.recipes` from the checkout's folders
(setup.py's SOURCES mapping, without setup.py). Stages, each a child process with its own budget:

  imports   the package imports, and Triton is the real one (not the interpreter)
  gpu tests `pytest -m gpu`: the Triton kernels compiled for this GPU vs their `*_ref`, bf16, real shapes
  kernels   bench_kernels.py --device cuda: RMSNorm, RoPE, attention vs torch / torch.compile / flash-attn
  train step  bench_train_step.py --device cuda: a Llama-3.2-1B- and a Gemma-3-1B-shaped bf16 training step
            (every layer, the real vocabularies) beside transformers' on the same GPU: tokens/s, MFU, peak
            CUDA memory; --quick the research pairs (AdamW on bf16 weights), full also the trainer's step

The report, benchmarks/results/gpu-check-<gpu>.md, is rewritten after every stage (and says which one is
running), so a run cut off by the device's time limit still leaves one. A stage over its budget is killed
(its process group) and reported with its output so far, stderr included, as text.

    python3 benchmarks/gpu_check.py [--quick]     # on the GPU machine
    python3 benchmarks/gpu_check.py --dry-run     # anywhere: checks the plan, runs only the imports stage
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TOTAL_BUDGET = {False: 360, True: 180}  # seconds, full and --quick: one device call is 10 minutes at most
RUN = [sys.executable, "benchmarks/checkout_imports.py"]  # every stage: the checkout's packages, no install
IMPORTS = ("import torch, triton, minibridge, minibridge.kernels as k, minibridge.recipes; "
           "from minibridge.kernels import launch; "
           "print('minibridge.kernels from', k.__file__); print('triton', triton.__version__, 'HAS_TRITON', k.HAS_TRITON); "
           "print('torch', torch.__version__, 'cuda', torch.version.cuda, 'devices', torch.cuda.device_count()); "
           "print('flash-attn', k.HAS_FLASH_ATTN)")


def plan(quick: bool) -> list[tuple[str, list[str], int]]:
    """(stage, command, budget in seconds); the budgets add up to at most TOTAL_BUDGET[quick] - 20. No GPU
    has run them yet: the budgets are estimates (the training step last, as the stage most likely cut)."""
    seqs = ["--seqs", "2048", "4096", "--repeats", "2", "--rounds", "1"] if quick else ["--seqs", "2048", "4096", "8192"]
    pairs = "research:llama-2048,research:gemma-4096" + ("" if quick else ",trainer:llama-2048,trainer:gemma-4096")
    return [
        ("imports", [*RUN, "-c", IMPORTS], 20 if quick else 30),
        ("gpu tests", [*RUN, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *(["-x"] if quick else []),
                       "tests"], 60 if quick else 130),
        ("kernels", [*RUN, "benchmarks/bench_kernels.py", "--device", "cuda", *seqs, "--report", "gpu-check-kernels"],
         40 if quick else 100),
        ("train step", [*RUN, "benchmarks/bench_train_step.py", "--device", "cuda", "--pairs", pairs,
                        "--steps", "2" if quick else "3", "--report", "gpu-check-train-step"], 40 if quick else 80),
    ]


def check_plan(stages, quick: bool) -> list[str]:
    """What is wrong with a plan: over budget, or a stage that would install or reach the network."""
    problems = []
    total = sum(budget for _, _, budget in stages)
    if total > TOTAL_BUDGET[quick] - 20:
        problems.append(f"budgets add up to {total} s, over {TOTAL_BUDGET[quick] - 20} s")
    for name, cmd, _ in stages:
        words = " ".join(cmd).lower()
        if any(bad in words.split() for bad in ("pip", "install", "uv", "conda", "make")) or "http" in words:
            problems.append(f"stage {name!r} would install or download: {words}")
        if cmd[:2] != RUN:
            problems.append(f"stage {name!r} does not run through checkout_imports.py")
    return problems


def run_stage(cmd: list[str], budget: float, log: Path) -> tuple[int, float]:
    """Run `cmd` with stdout and stderr into `log` (text, as it comes); past `budget` s kill its group."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = 124
    return code, time.perf_counter() - start


def tail(log: Path, lines: int = 40) -> list[str]:
    text = log.read_text(errors="replace") if log.is_file() else ""
    return text.splitlines()[-lines:]


def write(report: Path, header: list[str], sections: list[str], running: str | None) -> None:
    lines = header + ([f"- **running now: {running}** (a report that ends here was cut off)"] if running else [])
    report.write_text("\n".join(lines + [""] + sections) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"within {TOTAL_BUDGET[True]} s")
    parser.add_argument("--dry-run", action="store_true", help="no GPU needed: check the plan, run only imports")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the report and stage logs go")
    args = parser.parse_args(argv)
    stages = plan(args.quick)
    problems = check_plan(stages, args.quick)
    for name, cmd, budget in stages:
        print(f"gpu_check plan: {name:10s} {budget:4d} s  {' '.join(cmd[1:])}", flush=True)
    if problems:
        print("gpu_check: bad plan: " + "; ".join(problems), file=sys.stderr)
        return 1
    import torch  # after the plan: a broken torch still lets --dry-run say what it would do

    has_gpu = torch.cuda.is_available()
    if args.dry_run:
        print("gpu_check: dry run: no GPU present" if not has_gpu else "gpu_check: dry run (a GPU is present)")
        stages = stages[:1]
    elif not has_gpu:
        print("gpu_check: no GPU present (torch.cuda.is_available() is False): nothing to check here; "
              "`make test` covers the CPU paths, `--dry-run` checks this plan", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name() if has_gpu else "no GPU (dry run)"
    tag = "-".join(gpu.lower().split()) if has_gpu else "dry-run"
    args.results.mkdir(parents=True, exist_ok=True)
    report = args.results / f"gpu-check-{tag}.md"
    header = [f"# gpu-check on {gpu}{' (--quick)' if args.quick else ''}", "",
              f"- python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}",
              f"- budget {TOTAL_BUDGET[args.quick]} s: " + ", ".join(f"{n} {b} s" for n, _, b in stages)]
    sections, failed = [], []
    for name, cmd, budget in stages:
        write(report, header, sections, name)
        log = args.results / f"gpu-check-{tag}-{name.replace(' ', '-')}.log"
        code, seconds = run_stage(cmd, budget, log)
        status = "ok" if code == 0 else f"timed out after {budget} s" if code == 124 else f"exit {code}"
        print(f"gpu_check: {name}: {status} in {seconds:.0f} s", flush=True)
        if code != 0:
            failed.append(name)
        sections += [f"## {name}: {status} in {seconds:.0f} s", "", f"`{' '.join(cmd[1:])}`", "", "```",
                     *tail(log), "```", ""]
        write(report, header, sections, None)
    print(f"gpu_check: report {report}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
