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

    model = AutoBridge.from_hf_pretrained(folder).to_model(parallel=parallel, progress=False).eval()
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
