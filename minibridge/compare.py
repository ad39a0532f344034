"""transformers vs minibridge on a prompt, as Megatron Bridge's compare_hf_and_megatron/compare.py:

    python -m minibridge.compare --hf-model DIR [--megatron-path CKPT] --prompt "..." [--dtype fp32]
        [--top-k 5] [--per-layer] [--tolerance 1e-4] [--json FILE]
    torchrun --nproc-per-node=2 -m minibridge.compare --hf_model_path DIR --prompt "..." --tp 2

The HF folder gives transformers' model (and the tokenizer, and the config); minibridge runs the same
folder's weights, or those of a minibridge checkpoint (--megatron-path: a save folder or an
iter_NNNNNNN folder). Prints the max / mean absolute logit difference, the cosine similarity of the
logits per position (min and mean), top-1 agreement and top-k overlap; with --per-layer, each block's
hidden-state difference and the first layer above --tolerance (relative to the layer's largest value;
default by dtype: fp32 1e-4, fp16 1e-2, bf16 5e-2). Exits 1 when the minimum cosine similarity is
below 0.99 (Megatron Bridge's limit) or a layer exceeds the tolerance, 0 otherwise, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys

from .cli import run_main

DEFAULT_PROMPT = "Hello, how are you?"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m minibridge.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf-model", "--hf_model", "--hf-model-path", "--hf_model_path", required=True,
                   help="Hugging Face model folder (or hub id): transformers' side, the tokenizer and the config")
    p.add_argument("--hf-revision", "--hf_revision", help="hub revision of a --hf-model hub id")
    p.add_argument("--megatron-path", "--megatron_path", "--megatron-model-path", "--megatron_model_path",
                   help="minibridge or Megatron torch_dist checkpoint for minibridge's side (default: the HF folder's weights)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"default {DEFAULT_PROMPT!r}")
    p.add_argument("--tokenizer", help="tokenizer folder (default: --hf-model's)")
    p.add_argument("--dtype", help="bf16, fp16 or fp32 for both models (default: the checkpoint's)")
    p.add_argument("--top-k", "--top_k", type=int, default=5, help="top-k overlap size (default 5)")
    p.add_argument("--per-layer", "--per_layer", action="store_true", help="compare each block's output too")
    p.add_argument("--tolerance", type=float, help="relative per-layer tolerance (default by dtype)")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size of minibridge's model (under torchrun)")
    p.add_argument("--pp", type=int, default=1, help="pipeline parallel size: 1 only (the whole model per rank)")
    p.add_argument("--json", "--output", help="write the comparison as JSON to this file")
    return p


def _input_ids(args, bridge):
    import torch

    from .bridge.hf_folder import load_hf_tokenizer
    from .errors import ConfigError

    tokenizer = load_hf_tokenizer(args.tokenizer or bridge.source, "pass --tokenizer DIR")
    ids = list(tokenizer(args.prompt)["input_ids"])
    if not ids:
        raise ConfigError(f"--prompt {args.prompt!r} encodes to no tokens")
    return torch.tensor([ids], dtype=torch.long)


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    from .errors import ConfigError
    from .evaluation import json_safe, load_model, model_bridge, parse_dtype
    from .evaluation.compare import compare_with_transformers
    from .files import write_atomic
    from .parallel import ParallelConfig, initialize
    from .parallel.dims import from_rank0

    if args.pp != 1:
        raise ConfigError(f"--pp {args.pp}: compare runs the whole model on each rank (pipeline-parallel "
                          f"comparison is not implemented); shard it with --tp instead")
    dtype = parse_dtype(args.dtype)
    bridge = model_bridge(args.hf_model, None, args.hf_revision)
    ids = _input_ids(args, bridge)
    layout = ParallelConfig(tp=args.tp).validate(bridge.config)  # any prompt length (no cp)
    dims = initialize(layout)
    rank0 = dims.rank == 0
    chunks = load_model(bridge, args.megatron_path, dims, dtype, progress=False)
    result = compare_with_transformers(bridge.source, chunks, ids, top_k=args.top_k, per_layer=args.per_layer,
                                       tolerance=args.tolerance, rank0=rank0)
    ok = from_rank0(result.ok if rank0 else None)  # every rank exits alike
    if rank0:
        ours = args.megatron_path or args.hf_model
        print(f"transformers ({args.hf_model}) vs minibridge ({ours}, tp={args.tp}) on {ids.shape[1]} prompt tokens")
        print(result.summary(), flush=True)
        if args.json:
            record = {"hf_model": args.hf_model, "megatron_path": args.megatron_path, "prompt": args.prompt,
                      "tp": args.tp, **result.to_dict()}
            write_atomic(args.json, json.dumps(json_safe(record), indent=2) + "\n")  # nan/inf as null
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    return run_main("minibridge.compare", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
