"""Shared by the benchmark scripts: print a markdown report and keep it under benchmarks/results/."""

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def device_tag(device: str = "cpu") -> str:
    """'cpu', or the CUDA card's name as a file-name slug (e.g. 'nvidia-h100-80gb-hbm3')."""
    if device.startswith("cuda"):
        return "-".join(torch.cuda.get_device_name(torch.device(device)).lower().split())
    return "cpu"


def write_report(name: str, lines: list[str], device: str = "cpu", suffix: str = "md") -> Path:
    """Print `lines` and write them to results/<name>-<device>.<suffix> (results are named by device)."""
    report = "\n".join(lines) + "\n"
    if suffix == "md":
        print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{device_tag(device)}.{suffix}"
    path.write_text(report)
    return path


def run_child(script: str, *args) -> dict | str:
    """Run `script --child args...` in a fresh process (so its peak RSS is its own) and return the JSON
    dict its last stdout line holds, or a short reason why there is none (out of memory, an error)."""
    proc = subprocess.run([sys.executable, script, "--child", *map(str, args)], capture_output=True, text=True)
    if proc.returncode in (-9, 137):
        return "killed (out of memory)"
    if proc.returncode != 0:
        return f"failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def best_training_step(step_fn, optimizer, ids, steps: int) -> tuple[float, float]:
    """(best seconds, last loss) over `steps` forward + backward + optimizer steps after one warm-up
    step (allocator, optimizer state); the best, since other processes only ever slow a step down."""
    times = []
    for _ in range(steps + 1):  # the first step warms up (allocator, optimizer state)
        start = time.perf_counter()
        loss = step_fn(ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return min(times[1:]) if len(times) > 1 else times[0], float(loss)
