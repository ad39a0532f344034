"""Shared by the benchmark scripts: print a markdown report and keep it under benchmarks/results/."""

import json
import subprocess
import sys
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
