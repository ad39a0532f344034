"""Shared by the generation tests, importable by spawned ranks."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

# Text prompts of different lengths; the longest is well past the tiny Gemma's window of 8 tokens.
PROMPTS = ["def", "The quick brown fox jumps over the lazy dog, then naps in the sun.", "import os\nprint("]
SAMPLING = dict(do_sample=True, temperature=0.8, top_k=50, top_p=0.95, seed=3)


def run_generate(folder, parallel=None, **kwargs):
    """(texts, ids) of the PROMPTS on the model of `folder`, loaded single-process or sharded."""
    from transformers import AutoTokenizer

    from minibridge import AutoBridge
    from minibridge.generate import generate

    model = AutoBridge.from_hf_pretrained(folder).to_model_chunks(parallel, progress=False)
    for chunk in model:
        chunk.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return generate(model, tokenizer, PROMPTS, max_new_tokens=12, return_ids=True, **kwargs)


def tp_generate(folders: dict, expected: dict, out_dir: str) -> None:
    """On 2 ranks: tp=2 greedy and sampled ids equal the single-process ones; then the CLI under a
    torchrun-like environment (rank 0's stdout kept in out_dir)."""
    import torch.distributed as dist

    from minibridge.generate import main
    from minibridge.parallel import ParallelConfig, initialize

    dims = initialize(ParallelConfig(tp=2))
    for key, folder in folders.items():
        assert run_generate(folder, dims)[1] == expected[key]["greedy"], f"{key}: greedy ids differ under tp=2"
        assert run_generate(folder, dims, **SAMPLING)[1] == expected[key]["sampled"], f"{key}: sampled ids differ"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["--hf_model_path", str(folders["gemma"]), "--prompt", PROMPTS[1], "--max_new_tokens", "12"]) == 0
    if dist.get_rank() == 0:
        Path(out_dir, "stdout.txt").write_text(stdout.getvalue())
    else:
        assert stdout.getvalue() == "", "only rank 0 prints"


# Pipeline layouts on 2 ranks: (family, layers per virtual stage); vp = len(layout) / 2.
PP_LAYOUTS = [("llama", (1, 1)), ("gemma", (4, 3)), ("gemma", (2, 2, 2, 1))]


def pp_generate(folders: dict, expected: dict, out_dir: str) -> None:
    """On 2 ranks: pp=2 (and pp=2 with two virtual stages each) greedy and sampled ids equal the
    single-process ones, each stage's KV cache holds its own layers only; then the CLI with --pp 2."""
    import torch
    import torch.distributed as dist

    from minibridge import AutoBridge
    from minibridge.generate import main
    from minibridge.generation.pipeline import StagedForward
    from minibridge.parallel import ParallelConfig, initialize

    for key, layout in PP_LAYOUTS:
        dims = initialize(ParallelConfig(pp=2, vp=len(layout) // 2, pipeline_layout=layout))
        where = f"{key} layout {layout}"
        assert run_generate(folders[key], dims)[1] == expected[key]["greedy"], f"{where}: greedy ids differ"
        assert run_generate(folders[key], dims, **SAMPLING)[1] == expected[key]["sampled"], f"{where}: sampled ids"
        chunks = AutoBridge.from_hf_pretrained(folders[key]).to_model_chunks(dims, progress=False)
        forward = StagedForward(chunks, capacity=8)
        ids = torch.tensor([[3, 4, 5]])
        logits = forward.logits(ids, torch.arange(3)[None], None)
        assert (logits is not None) == (dist.get_rank() == 1), "the last stage (rank 1) alone has logits"
        for chunk, cache in zip(chunks, forward.caches):
            assert sorted(cache.layers) == sorted(int(i) for i in chunk.layers), f"{where}: cache layers"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["--hf_model_path", str(folders["gemma"]), "--pp", "2", "--max_new_tokens", "12", "--stream",
                     "--no-chat-template", "--batch-size", "2"] + [a for p in PROMPTS for a in ("--prompt", p)]) == 0
    if dist.get_rank() == 0:
        Path(out_dir, "pp_stdout.txt").write_text(stdout.getvalue())
    else:
        assert stdout.getvalue() == "", "only rank 0 prints"


def parallel_generate(folders: dict, expected: dict, out_dir: str) -> None:
    """tp_generate, then pp_generate, in one spawned world (spawning ranks is the slow part)."""
    tp_generate(folders, expected, out_dir)
    pp_generate(folders, expected, out_dir)
