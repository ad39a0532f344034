"""Benchmark: what the per-item checksums (minibridge.checkpoint.integrity) add to a checkpoint save and load.

A Llama-shaped model (the debug recipe widened to --hidden, fp32, AdamW state included, as training saves
it) is saved and resumed in one process, in turn with and without checksums (checksums.json written and
verified, or not), best of --rounds for each side. Prints the checkpoint's size, both times, the ratios,
and the machine line.

    python benchmarks/bench_checkpoint.py [--hidden 1024] [--layers 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from report import machine_line, write_report  # noqa: E402


def trainer(save: Path, hidden: int, layers: int):
    from minibridge.recipes import build_config
    from minibridge.training.loop import Trainer

    return Trainer(build_config("llama3_debug_pretrain_config", overrides=[
        f"model.hidden_size={hidden}", f"model.intermediate_size={4 * hidden}", f"model.num_layers={layers}",
        "model.num_heads=8", "model.num_kv_heads=4", f"model.head_dim={hidden // 8}", "model.vocab_size=32000",
        "train.global_batch_size=1", "train.micro_batch_size=1", "model.seq_length=32", "train.eval_interval=null",
        "logger.tensorboard_dir=null", "train.train_iters=2", "scheduler.lr_warmup_iters=1",
        f"checkpoint.save={save}"]))


def timed(checksums: bool, work: Path, hidden: int, layers: int) -> tuple[float, float, int]:
    """(save seconds, resume seconds, checkpoint bytes) with checksums on or off."""
    import minibridge.checkpoint.folder as folder
    import minibridge.checkpoint.reader as reader

    save = work / ("on" if checksums else "off")
    shutil.rmtree(save, ignore_errors=True)
    writer, verifier = folder.write_checksums, reader.read_checksums
    if not checksums:
        folder.write_checksums, reader.read_checksums = (lambda *a: None), (lambda *a: None)
    try:
        run = trainer(save, hidden, layers)
        run.train_step()
        run.step = 1
        start = time.perf_counter()
        saved = run.save()
        save_seconds = time.perf_counter() - start
        run.close()
        start = time.perf_counter()
        trainer(save, hidden, layers).close()  # resumes from the checkpoint: reads and verifies every item
        load_seconds = time.perf_counter() - start
    finally:
        folder.write_checksums, reader.read_checksums = writer, verifier
    size = sum(p.stat().st_size for p in saved.glob("*.distcp"))
    return save_seconds, load_seconds, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    best = {True: [float("inf"), float("inf"), 0], False: [float("inf"), float("inf"), 0]}
    with tempfile.TemporaryDirectory() as work:
        for _ in range(args.rounds):
            for checksums in (False, True):  # in turn, so a busy moment hits both sides
                s, l, size = timed(checksums, Path(work), args.hidden, args.layers)
                best[checksums] = [min(best[checksums][0], s), min(best[checksums][1], l), size]
    off, on = best[False], best[True]
    lines = [
        "# Checkpoint checksums: save and resume with and without them", "", f"- {machine_line()}",
        f"- checkpoint: {on[2] / 1e6:.0f} MB (model + AdamW state, fp32), best of {args.rounds}",
        f"- `python benchmarks/bench_checkpoint.py --hidden {args.hidden} --layers {args.layers}`", "",
        "| | without checksums | with checksums | ratio |", "|---|---|---|---|",
        f"| save | {off[0]:.2f} s | {on[0]:.2f} s | {on[0] / off[0]:.2f}x |",
        f"| resume (load) | {off[1]:.2f} s | {on[1]:.2f} s | {on[1] / off[1]:.2f}x |",
    ]
    print("\n".join(lines))
    write_report("bench_checkpoint", lines)


if __name__ == "__main__":
    main()
