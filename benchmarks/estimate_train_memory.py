"""Estimate: the peak memory of bench_train_step's training step without its arithmetic (FakeTensorMode).

bf16 matmuls run at ~1 GFLOP/s on an AVX2-only CPU, so the Llama step at 2048 tokens (6.4 TFLOP) cannot
be measured here. Its peak does not need the numbers, only the tensors: each side is built and stepped
by bench_train_step's own code (`build`, then `report.train_step`: forward, loss, backward, optimizer
step, zero_grad; a warm-up step and `--steps` more, as `best_training_step` takes them) under torch's
`FakeTensorMode`, where every tensor has its shape, dtype and device (CPU, so the CPU code paths are
taken) and no data. `LiveBytes`, a dispatch mode inside it, adds the bytes of every new storage an op
returns and subtracts them when the storage is freed (a weak reference's callback): the peak of live
tensor bytes, the number torch's `MemTracker` (torch.distributed._tools) computes, without its module hooks.

What it cannot see: memory a kernel allocates inside itself (on AVX2, a bf16 matmul's fp32 result before
rounding; oneDNN's scratch), the allocator's slack, and the Python objects. bench_train_step measures the
peak RSS of a fresh process above its RSS after the imports, so that is what `--measure` compares it with
(the same side, mode, dtype and length, its child run here): the gap is the kernels and the allocator.

    python benchmarks/estimate_train_memory.py [--pairs research:llama-2048,...] [--dtype bf16]
                                               [--seq-divisors 1] [--steps 1] [--measure] [--report NAME]
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
import weakref
from collections import Counter
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only
from torch.utils.weak import WeakIdKeyDictionary

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import bench_train_step as bench  # noqa: E402
from report import machine_line, run_child, train_step, write_report  # noqa: E402

GiB = 2**30
SNAPSHOT_STEP = 1 << 20  # a new snapshot of the live storages when the peak has risen by this many bytes


class LiveBytes(TorchDispatchMode):
    """Live tensor bytes while active: `live`, `peak`, the step and phase (report.train_step's marks) the
    peak was reached in, and `at_peak`: the bytes live at the peak (within SNAPSHOT_STEP of it) summed by
    what they are (`kinds()`: storage id -> "parameters", "optimizer state", "gradients") or else by the
    phase and op that made them. A storage counts from the op that first returns it to its last reference."""

    def __init__(self):
        super().__init__()
        self.storages = WeakIdKeyDictionary()  # storage -> [bytes, label]
        self.live = self.peak = 0
        self.phase, self.peak_phase, self.step = "build", "build", 0
        self.at_peak: Counter = Counter()
        self.assumed: Counter = Counter()  # code location -> values read from data-less tensors there
        self._snapshot_at = -SNAPSHOT_STEP
        self.kinds = dict  # () -> {id(storage): kind}, set once the parameters and optimizer exist

    def _assumed_scalar(self, tensor: torch.Tensor):
        """A value for code that reads one from a tensor (a branch such as "every target valid?"): True
        or 1, the first code outside torch that asked is noted in `assumed` (the report lists them)."""
        caller = next((f"{Path(f.filename).name}:{f.lineno}" for f in reversed(traceback.extract_stack()[:-2])
                       if "/torch/" not in f.filename), "?")
        self.assumed[caller] += 1
        return True if tensor.dtype == torch.bool else 1 if not tensor.dtype.is_floating_point else 1.0

    def mark(self, phase: str) -> None:
        self.step += phase == "forward"
        self.phase = phase

    def _free(self, entry) -> None:
        self.live -= entry[0]

    def _track(self, func, tensor: torch.Tensor) -> None:
        if tensor.device.type != "cpu":  # the meta tensors a model is first built from
            return
        storage = tensor.untyped_storage()
        size = storage.nbytes()
        entry = self.storages.get(storage)
        if entry is None:
            entry = self.storages[storage] = [size, f"{self.phase}: {func.__name__} ({str(tensor.dtype)[6:]})"]
            weakref.finalize(storage, self._free, entry)
            self.live += size
        elif entry[0] != size:  # resized in place
            self.live, entry[0] = self.live + size - entry[0], size
        if self.live > self.peak:
            self.peak = self.live
            if self.peak >= self._snapshot_at + SNAPSHOT_STEP:
                self._take_snapshot()

    def _take_snapshot(self) -> None:
        kinds = self.kinds()
        self.at_peak = Counter()
        for storage, (size, label) in self.storages.items():
            self.at_peak[kinds.get(id(storage), label)] += size
        self._snapshot_at = self.peak
        self.peak_phase = f"step {self.step} {self.phase}" if self.step else "build"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        try:
            out = func(*args, **(kwargs or {}))
        except DataDependentOutputException:  # .item() of a tensor without data
            return self._assumed_scalar(args[0])
        tree_map_only(torch.Tensor, lambda t: self._track(func, t), out)
        return out


def storage_kinds(optimizer) -> dict[int, str]:
    """{id(storage): "parameters" | "gradients" | "optimizer state"} of the research modes' optimizers (torch's
    AdamW, StepInBackward) and of MasterWeightsAdamW."""
    if hasattr(optimizer, "optimizers"):  # StepInBackward: {param: [(slice, optimizer of a view), ...]}
        params, inner = list(optimizer.optimizers), [o for pieces in optimizer.optimizers.values() for _, o in pieces]
    elif hasattr(optimizer, "masters"):  # MasterWeightsAdamW: fp32 masters stepped by torch's AdamW
        params, inner = optimizer.params, [optimizer.inner]
    else:
        params, inner = [p for group in optimizer.param_groups for p in group["params"]], [optimizer]
    kinds = {}
    for o in inner:
        for state in getattr(o, "state", {}).values():
            kinds.update((id(t.untyped_storage()), "optimizer state") for t in state.values()
                         if isinstance(t, torch.Tensor))
    kinds.update((id(t.untyped_storage()), "optimizer state") for t in getattr(optimizer, "masters", []))
    kinds.update((id(p.grad.untyped_storage()), "gradients") for p in params if p.grad is not None)
    kinds.update((id(p.untyped_storage()), "parameters") for p in params)
    return kinds


def fake_mode():
    """torch's FakeTensorMode, without its memo of the fake tensor made from each op's meta result: that
    memo holds a weak reference to every fake tensor, and in torch 2.13 `module.to(dtype)` swaps a fake
    parameter with `torch.utils.swap_tensors`, which refuses a tensor with weak references. The memo
    serves a meta result turned fake twice, which eager ops do not do."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    mode.fake_tensor_converter.set_tensor_memo = lambda meta, fake: None
    return mode


def estimate(side: str, mode: str, hf: dict, seq: int, dtype_name: str, steps: int) -> dict:
    """One side's step under FakeTensorMode: peak live tensor bytes over building it, a warm-up step and
    `steps` more (what bench_train_step.measure takes its peak RSS over), where it was and what it held."""
    for module in bench.SIDE_MODULES[side]:  # imported outside, as bench_train_step imports them first
        __import__(module)
    with fake_mode(), LiveBytes() as live:
        step_fn, optimizer, ids = bench.build(side, mode, hf, seq, dtype_name, "none", device="cpu")
        live.kinds = lambda: storage_kinds(optimizer)
        for _ in range(steps + 1):
            train_step(step_fn, optimizer, ids, mark=live.mark)
        end = live.live
    return {"peak_gib": live.peak / GiB, "end_gib": end / GiB, "where": live.peak_phase, "seq": seq,
            "at_peak": [(k, v / GiB) for k, v in live.at_peak.most_common()],
            "assumed": dict(live.assumed)}


def child(side: str, mode: str, case: str, dtype_name: str, steps: int, seq_divisor: int) -> dict:
    hf, seq = bench.case_config(case, "cpu")
    return estimate(side, mode, hf, seq // seq_divisor, dtype_name, steps)


def held(result: dict, top: int = 7) -> str:
    """What the peak held, in GiB: the named kinds, then the largest groups by phase and op."""
    parts = [f"{kind} {gib:.2f}" for kind, gib in result["at_peak"][:top] if gib >= 0.005]
    rest = sum(gib for _, gib in result["at_peak"][top:])
    return "; ".join(parts + ([f"the rest {rest:.2f}"] if rest >= 0.005 else []))


def measured_rows(path: Path) -> dict:
    """{(mode, case, side, seq): peak} of a bench_train_step report (its rows' last column is the peak)."""
    rows = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 7 and cells[0] in bench.MODES and cells[3].isdigit():
            rows[cells[0], cells[1], cells[2], int(cells[3])] = float(cells[-1])
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="research:llama-2048,research-in-backward:llama-2048")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--seq-divisors", default="1", help="comma-separated: each divides every sequence length")
    parser.add_argument("--steps", type=int, default=1, help="steps after the warm-up (bench_train_step's --steps)")
    parser.add_argument("--measure", action="store_true",
                        help="also run bench_train_step's own child of each side (real arithmetic) for its peak RSS")
    parser.add_argument("--measured", action="append", default=[], type=Path,
                        help="bench_train_step reports (same dtype and steps) whose rows give measured peaks")
    parser.add_argument("--report", default="estimate_train_memory", help="name of the report in benchmarks/results/")
    args = parser.parse_args(argv)
    args.pairs = [tuple(p.split(":")) for p in args.pairs.split(",")]
    args.seq_divisors = [int(d) for d in args.seq_divisors.split(",")]
    for mode, case in args.pairs:
        if mode not in ESTIMATED_MODES or case not in bench.CASES:
            parser.error(f"{mode}:{case}: modes {', '.join(ESTIMATED_MODES)}; cases {', '.join(bench.CASES)}")
    return args


ESTIMATED_MODES = ("research", "research-fused", "research-in-backward")  # the trainer's allocator settings are
# per process and its optimizer's layout its own: not estimated here


def measured(args, known: dict, side: str, mode: str, case: str, divisor: int, seq: int) -> tuple[object, str]:
    """(this side's measured result, where it comes from): a report given with --measured, else its child
    of bench_train_step run now with --measure, else none."""
    if (mode, case, side, seq) in known:
        return {"peak_gb": known[mode, case, side, seq]}, "report"
    if args.measure:
        return run_child(bench.__file__, side, mode, case, args.dtype, args.steps, divisor, "none"), "run"
    return None, ""


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        side, mode, case, dtype, steps, divisor = sys.argv[2:8]
        print(json.dumps(child(side, mode, case, dtype, int(steps), int(divisor))))
        return
    args = parse_args()
    known = {k: v for path in args.measured for k, v in measured_rows(path).items()}
    lines = [f"# estimate_train_memory ({machine_line()}; {args.dtype}, batch 1, a warm-up step and {args.steps} "
             f"more; peak live tensor bytes under FakeTensorMode, beside bench_train_step's peak RSS where measured)",
             "", "| mode | case | side | seq | estimate (GiB) | reached in | measured peak RSS (GiB) | "
             "estimate / measured | held at the estimated peak (GiB) |", "|---|---|---|---|---|---|---|---|---|"]
    estimates, assumed = {}, Counter()
    for divisor in args.seq_divisors:
        for mode, case in args.pairs:
            for side in bench.SIDES:
                est = run_child(__file__, side, mode, case, args.dtype, args.steps, divisor)
                seq = bench.CASES[case][2] // divisor
                real, source = measured(args, known, side, mode, case, divisor, seq)
                estimates[divisor, mode, case, side] = est
                assumed.update(est.get("assumed", {}) if isinstance(est, dict) else {})
                lines.append(row(mode, case, side, seq, est, real, source))
                print(lines[-1], flush=True)
    lines += ["", "| mode | case | seq | estimate minibridge / transformers |", "|---|---|---|---|"]
    for divisor in args.seq_divisors:
        for mode, case in args.pairs:
            mb, hf = (estimates[divisor, mode, case, side] for side in bench.SIDES)
            if isinstance(mb, dict) and isinstance(hf, dict):
                lines.append(f"| {mode} | {case} | {mb['seq']} | {mb['peak_gib'] / hf['peak_gib']:.2f}x |")
    lines += ["", "Values read from data-less tensors (each assumed True / 1; they steer branches, not sizes): " +
              (", ".join(f"{where} x{n}" for where, n in sorted(assumed.items())) or "none")]
    write_report(args.report, lines)


def row(mode, case, side, seq, est, real, source) -> str:
    if isinstance(est, str):
        return f"| {mode} | {case} | {side} | {seq} | {est} | - | - | - | - |"
    shown, ratio = "-", "-"
    if isinstance(real, dict):
        shown, ratio = f"{real['peak_gb']:.2f}{' (report)' if source == 'report' else ''}", \
            f"{est['peak_gib'] / real['peak_gb']:.2f}"
    elif isinstance(real, str):
        shown = real
    return (f"| {mode} | {case} | {side} | {seq} | {est['peak_gib']:.2f} | {est['where']} | {shown} | {ratio} | "
            f"{held(est)} |")


if __name__ == "__main__":
    main()
