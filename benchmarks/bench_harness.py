"""Benchmark: lm_eval perplexity (loglikelihood_rolling), `--model minibridge` vs `--model hf`, on CPU.

A Llama-3.2-1B shape (2 layers, the real 128,256 vocabulary; random fp32 weights written once by
transformers, bench_generate.make_checkpoint) scores the same texts in rolling windows of `--max-length`
tokens, `--batch` windows per forward, through lm_eval's own HFLM and through MinibridgeLM. Each side runs
in a fresh process (`--child`) so its peak RSS is its own; the table gives the time of the requests, how
far scoring raised the peak RSS above the peak of loading, and whether the scores agree to 1e-5. HFLM holds (batch x window x
vocab) logits and their log-softmax at once (2 x 1 GB at batch 4, window 512); minibridge one row's.

    python benchmarks/bench_harness.py [--batch 4] [--max-length 512] [--texts 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_generate import make_checkpoint  # noqa: E402
from report import machine_line, run_child, write_report  # noqa: E402


def child(side: str, folder: str, batch: int, max_length: int, texts: int, threads: int) -> dict:
    import torch
    from lm_eval.api.instance import Instance

    torch.set_num_threads(threads)
    args = dict(pretrained=folder, dtype="float32", device="cpu", batch_size=batch, max_length=max_length)
    if side == "hf":
        from lm_eval.models.huggingface import HFLM as LM
    else:
        from minibridge.harness import MinibridgeLM as LM
    lm = LM(**args)
    from minibridge.training.data import pydoc_corpus

    corpus = pydoc_corpus()[:texts]
    requests = [Instance("loglikelihood_rolling", {}, (text[:6000],), i) for i, text in enumerate(corpus)]
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    scores = lm.loglikelihood_rolling(requests, disable_tqdm=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tokens = sum(len(lm.tok_encode(r.args[0])) for r in requests)
    return {"seconds": seconds, "tokens": tokens, "extra_mb": (peak - loaded) / 1024, "scores": scores}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        side, folder, batch, max_length, texts, threads = sys.argv[2:8]
        print(json.dumps(child(side, folder, int(batch), int(max_length), int(texts), int(threads))))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--texts", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    from minibridge.training.data import pydoc_corpus, train_tokenizer

    work = Path(tempfile.mkdtemp(prefix="bench_harness_"))
    try:
        folder = make_checkpoint("llama", "fp32", work / "model")
        train_tokenizer(pydoc_corpus()[:20], work / "model", vocab_size=1024)  # ids inside the 128k vocabulary
        runs = {side: run_child(__file__, side, folder, args.batch, args.max_length, args.texts, args.threads)
                for side in ("hf", "minibridge")}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    hf, ours = runs["hf"], runs["minibridge"]
    same = isinstance(hf, dict) and isinstance(ours, dict) and all(
        math.isclose(a, b, rel_tol=1e-5) for a, b in zip(ours["scores"], hf["scores"]))
    lines = [f"# lm_eval loglikelihood_rolling: --model minibridge vs --model hf ({machine_line()})", "",
             f"Llama-3.2-1B shape, 2 layers, vocab 128,256, fp32; {args.texts} texts, windows of {args.max_length}, "
             f"batch {args.batch}, {args.threads} threads", "",
             "| side | tokens | seconds | tokens/s | peak RSS growth while scoring, over loading (MB) | scores equal (1e-5) |",
             "|---|---|---|---|---|---|"]
    for side, run in runs.items():
        if isinstance(run, str):
            lines.append(f"| {side} | {run} | | | | |")
            continue
        lines.append(f"| {side} | {run['tokens']} | {run['seconds']:.2f} | {run['tokens'] / run['seconds']:,.0f} | "
                     f"{run['extra_mb']:,.0f} | {'yes' if same else 'no'} |")
    write_report("bench_harness", lines)


if __name__ == "__main__":
    main()
