"""Benchmark: generation tokens/s (prefill and decode), minibridge vs transformers `generate`, on CPU.

Cases: a Llama-3.2-1B shape (2 layers, the real 128,256 vocabulary, prompt 256) and a Gemma-3-1B shape
(6 layers: five sliding-window layers of window 512 and one global, the real 262,144 vocabulary,
prompt 640 so the window matters); batch 1, and a left-padded batch of 4 with prompts a quarter as long
(the same prompt tokens; row r padded by r/8 of its length); greedy. Both sides load the
same random-weight HF checkpoint (written once by transformers) and each run is a fresh process
(`--child`), sides alternating over `--repeats` rounds, the best of each kept. Prefill is the time of a
generation of one token; decode tokens/s is batch x (N - 1) / (time(N tokens) - time(1 token)), timed
the same way for both. The last column says whether both produced the same greedy token ids.

Batch-1 decode is bound by memory bandwidth: every new token reads every weight once (the output
layer's full vocabulary x hidden matrix included; of the embedding table only one row). The second
table sets each side's batch-1 decode tokens/s against that bound, measured bandwidth / weight bytes
per token, the bandwidth measured in the same run (the best of several sums and matrix-vector products
over a 1 GiB fp32 tensor, read-only streams like the weights', on the benchmark's thread count): once in the parent (the
header and the bound column), and again in each child right after its decode, which that side's ratio
uses (on a shared machine the load drifts between processes). KV-cache reads are left out of the bound
(at these prompt lengths they are ~1% of the weights).

dtype "auto" picks bf16 when this CPU multiplies bf16 at least as fast as fp32 (AMX / AVX512-BF16),
else fp32 (on an AVX2-only CPU torch's bf16 matmul is ~100x slower than fp32).

    python benchmarks/bench_generate.py [--dtype auto|bf16|fp32] [--cases llama,gemma] [--batches 1,4]
                                        [--new-tokens 32] [--repeats 2] [--prompt-divisor 1] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from report import machine_line, pick_dtype  # noqa: E402
from report import run_child, write_report  # noqa: E402
import torch  # noqa: E402

CASES = {"llama": ("Llama-3.2-1B", 2, 256), "gemma": ("gemma-3-1b-it", 6, 640)}
DTYPES = {"bf16": "bfloat16", "fp32": "float32"}


def make_checkpoint(case: str, dtype: str, folder: Path) -> Path:
    import torch
    import transformers

    name, layers, _ = CASES[case]
    hf = json.loads((REPO / "tests" / "data" / "hf_configs" / f"{name}.json").read_text())
    hf.update(num_hidden_layers=layers)
    hf.pop("layer_types", None)
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(**hf)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=getattr(torch, DTYPES[dtype]))
    model.save_pretrained(folder)
    return folder


def _prompts(batch: int, length: int, vocab: int):
    """(input_ids, attention_mask): row r is left-padded by r * length // 8 tokens."""
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for row in range(batch):
        mask[row, : row * length // 8] = 0
    return ids.masked_fill(mask == 0, 0), mask


class _Clock:
    """A transformers streamer that only notes when tokens arrive: the prompt first, then each new token."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def weight_bytes_per_token(model, embedding: torch.Tensor, tied: bool) -> int:
    """Bytes of weights one batch-1 decode step reads: every parameter once (a tied table once, as the
    output layer), of an untied embedding table only the row of the new token."""
    unique = {id(p): p for p in model.parameters()}.values()
    total = sum(p.numel() * p.element_size() for p in unique)
    if not tied:
        total -= embedding.numel() * embedding.element_size() - embedding.shape[1] * embedding.element_size()
    return total


def measure_bandwidth(threads: int, gib: float = 1.0, repeats: int = 5) -> float:
    """Read bandwidth in bytes/s over a `gib` GiB fp32 tensor (far past the caches) on `threads` torch
    threads: the best of `repeats` runs of two read-only streams, a sum and a matrix-vector product
    (the access pattern of a decode step's weights; torch's sum alone reaches less on some CPUs)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    x = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
    matrix, vector = x.view(-1, 4096), torch.ones(4096)
    x.sum()  # first touch, page faults
    best = float("inf")
    for _ in range(repeats):
        for probe in (x.sum, lambda: torch.mv(matrix, vector)):
            start = time.perf_counter()
            probe()
            best = min(best, time.perf_counter() - start)
    torch.set_num_threads(previous)
    return x.numel() * 4 / best


def child(side: str, folder: str, dtype_name: str, batch: int, length: int, new_tokens: int, threads: int) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    dtype = getattr(torch, DTYPES[dtype_name])
    if side == "minibridge":
        from minibridge import AutoBridge
        from minibridge.generate import GenerationStats, generate_ids

        model = AutoBridge.from_hf_pretrained(folder).to_model(dtype=dtype, progress=False).eval()
        vocab = model.config.vocab_size
        weights = weight_bytes_per_token(model, model.embed_tokens.weight, model.lm_head is None)

        def run(ids, mask, n):
            stats = GenerationStats()
            out = generate_ids(model, ids, mask, max_new_tokens=n, eos_token_id=None, stats=stats)
            return out, stats.prefill_s, stats.decode_s
    else:
        import transformers

        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa").eval()
        vocab = model.config.vocab_size
        embedding = model.get_input_embeddings().weight
        weights = weight_bytes_per_token(model, embedding, model.get_output_embeddings().weight is embedding)

        def run(ids, mask, n):
            clock = _Clock()
            with torch.inference_mode():
                start = time.perf_counter()
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                     do_sample=False, pad_token_id=0, streamer=clock)
            first, last = clock.times[1], clock.times[-1]  # times[0]: the prompt, before any work
            return out[:, ids.shape[1]:], first - start, last - first

    ids, mask = _prompts(batch, length, vocab)
    run(ids[:, -16:], mask[:, -16:], 3)  # warm-up: allocator, lazy imports, generation config
    out, prefill, decode = run(ids, mask, new_tokens)
    bandwidth = measure_bandwidth(torch.get_num_threads())  # right after, in the same process: the same load
    return {"bandwidth": bandwidth, "prefill_tps": batch * length / prefill, "decode_tps": batch * (new_tokens - 1) / decode,
            "prefill_s": prefill, "decode_s": decode, "ids": out.tolist(), "weight_bytes": weights}


def run_side(side, folder, dtype, batch, length, new_tokens, threads) -> dict | str:
    return run_child(__file__, side, folder, dtype, batch, length, new_tokens, threads)


def _best(runs: list) -> dict | str:
    ok = [r for r in runs if isinstance(r, dict)]
    if not ok:
        return runs[-1]
    best = dict(ok[0])
    best["prefill_tps"] = max(r["prefill_tps"] for r in ok)
    best["decode_tps"] = max(r["decode_tps"] for r in ok)
    best["bandwidth"] = max(r["bandwidth"] for r in ok)
    return best


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        side, folder, dtype, batch, length, new, threads = sys.argv[2:9]
        print(json.dumps(child(side, folder, dtype, int(batch), int(length), int(new), int(threads))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--prompt-divisor", type=int, default=1, help="divide every prompt length (quick runs)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per side (default: torch's)")
    args = parser.parse_args()
    dtype = pick_dtype() if args.dtype == "auto" else args.dtype
    threads = args.threads or torch.get_num_threads()
    bandwidth = measure_bandwidth(threads)
    lines = [f"# bench_generate ({machine_line()}; {dtype}, {threads} threads, greedy, {args.new_tokens} new "
             f"tokens, best of {args.repeats} alternating runs; read bandwidth {bandwidth / 1e9:.1f} GB/s)", "",
             "| case | batch | prompt | side | prefill tokens/s | decode tokens/s | same ids |",
             "|---|---|---|---|---|---|---|"]
    ratios, bounds = [], []
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        for case in args.cases.split(","):
            folder = make_checkpoint(case, dtype, Path(tmp) / case)
            for batch in (int(b) for b in args.batches.split(",")):
                length = CASES[case][2] // args.prompt_divisor // batch
                runs = {"minibridge": [], "hf": []}
                for _ in range(args.repeats):
                    for side in runs:
                        runs[side].append(run_side(side, folder, dtype, batch, length, args.new_tokens, args.threads))
                mb, hf = _best(runs["minibridge"]), _best(runs["hf"])
                same = isinstance(mb, dict) and isinstance(hf, dict) and mb["ids"] == hf["ids"]
                for side, r in (("minibridge", mb), ("transformers", hf)):
                    if isinstance(r, str):
                        lines.append(f"| {case} | {batch} | {length} | {side} | {r} | - | - |")
                    else:
                        lines.append(f"| {case} | {batch} | {length} | {side} | {r['prefill_tps']:.1f} | "
                                     f"{r['decode_tps']:.2f} | {'yes' if same else 'no'} |")
                    print(lines[-1], flush=True)
                if isinstance(mb, dict) and isinstance(hf, dict):
                    ratios.append(f"| {case} | {batch} | {mb['prefill_tps'] / hf['prefill_tps']:.2f}x | "
                                  f"{mb['decode_tps'] / hf['decode_tps']:.2f}x |")
                    if batch == 1:
                        bounds.append(_bound_row(case, mb, hf, bandwidth))
            shutil.rmtree(folder, ignore_errors=True)
    lines += ["", "| case | batch | prefill minibridge / HF | decode minibridge / HF |", "|---|---|---|---|", *ratios]
    lines += ["", f"Batch-1 decode against the weight-read bound (read bandwidth {bandwidth / 1e9:.1f} GB/s, measured "
              f"in this run):", "",
              "| case | weights read per token | bound tokens/s | minibridge tokens/s | its GB/s | minibridge / bound | "
              "transformers tokens/s | its GB/s | transformers / bound |", "|---|---|---|---|---|---|---|---|---|",
              *bounds]
    write_report("bench_generate", lines)


def _bound_row(case: str, mb: dict, hf: dict, bandwidth: float) -> str:
    """A row of the bound table: bound = bandwidth / weight bytes per token (each side counts its own;
    both load the same checkpoint, so they agree). Each side's ratio uses the bandwidth its own process
    measured right after decoding (a shared machine's load drifts between processes)."""
    bound = bandwidth / mb["weight_bytes"]
    mb_bound, hf_bound = (r["bandwidth"] / r["weight_bytes"] for r in (mb, hf))
    return (f"| {case} | {mb['weight_bytes'] / 1e6:,.0f} MB | {bound:.2f} | {mb['decode_tps']:.2f} | "
            f"{mb['bandwidth'] / 1e9:.1f} | {mb['decode_tps'] / mb_bound:.0%} | {hf['decode_tps']:.2f} | "
            f"{hf['bandwidth'] / 1e9:.1f} | {hf['decode_tps'] / hf_bound:.0%} |")


if __name__ == "__main__":
    main()
