"""Loss and perplexity of a model on a dataset, with the windows training uses:

    python -m minibridge.eval --hf-model DIR --data-path PREFIX [--seq-length 2048] [--output result.json]
    python -m minibridge.eval --megatron-path CKPT [--hf-model DIR] --data-path data.jsonl --dataset jsonl
    torchrun --nproc-per-node=4 -m minibridge.eval --hf-model DIR --data-path PREFIX --tp 2 --pp 2

The model is an HF folder or a minibridge checkpoint (a save folder: its latest iteration; or one
iter_NNNNNNN folder; --hf-model then gives the config, else the checkpoint's run.json does). The data
is an indexed .bin/.idx prefix, a raw-text JSONL file (--dataset jsonl) or an SFT JSONL file
(--dataset sft), cut into samples exactly as training cuts them (--split-weights, --seed,
--sample-layout, --packing as dataset.split / train.seed / dataset.sample_layout / dataset.packing).
--split picks the part: validation (default), train, or all documents. Perplexity is
exp(token-weighted mean NLL) over every loss token of the evaluated samples. Rank 0 prints a summary
and, with --output FILE.json, writes loss, perplexity, tokens, samples, model, dataset and layout.
"""

from __future__ import annotations

import argparse
import sys

from .cli import run_main

KINDS = ("indexed", "jsonl", "sft", "mock")


def _parser() -> argparse.ArgumentParser:
    from .evaluation.perplexity import DEFAULTS, PARTS
    from .training.config import TrainingConfig

    p = argparse.ArgumentParser(prog="python -m minibridge.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf-model", "--hf_model", "--hf-model-path", "--hf_model_path",
                   help="Hugging Face model folder (or hub id): config, tokenizer, and the weights unless "
                        "--megatron-path is given")
    p.add_argument("--hf-revision", "--hf_revision", help="hub revision of a --hf-model hub id")
    p.add_argument("--megatron-path", "--megatron_path", "--megatron-model-path", "--megatron_model_path",
                   help="minibridge or Megatron torch_dist checkpoint: a save folder (latest iteration) or an "
                        "iter_NNNNNNN folder")
    p.add_argument("--data-path", "--data_path", nargs="+", help="indexed prefix(es) or JSONL file(s)")
    p.add_argument("--dataset", choices=KINDS,
                   help="data kind (default: jsonl for *.jsonl files, else indexed; mock needs no data)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: --hf-model's, else the checkpoint run's)")
    p.add_argument("--seq-length", "--seq_length", type=int, default=2048, help="tokens per sample (default 2048)")
    p.add_argument("--micro-batch-size", "--micro_batch_size", type=int, default=1, help="default 1")
    p.add_argument("--global-batch-size", "--global_batch_size", type=int,
                   help="samples per step over every rank (default: micro batch size x data-parallel ranks)")
    limit = p.add_mutually_exclusive_group()
    limit.add_argument("--max-samples", "--max_samples", type=int, help="evaluate at most this many samples")
    limit.add_argument("--eval-iters", "--eval_iters", type=int, help="evaluate this many global batches")
    p.add_argument("--split", choices=PARTS, default="validation", help="which part of the data (default validation)")
    p.add_argument("--split-weights", "--split_weights", default=DEFAULTS.split,
                   help=f"train,validation,test shares as training's dataset.split (default {DEFAULTS.split})")
    p.add_argument("--seed", type=int, default=TrainingConfig.seed, help=f"train.seed (default {TrainingConfig.seed})")
    p.add_argument("--sample-layout", "--sample_layout", choices=("megatron", "legacy"), default=DEFAULTS.sample_layout)
    p.add_argument("--packing", action="store_true", help="pack documents, as dataset.packing=true")
    p.add_argument("--dtype", help="bf16, fp16 or fp32 (default: the checkpoint's)")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size")
    p.add_argument("--pp", type=int, default=1, help="pipeline parallel size")
    p.add_argument("--vp", type=int, default=1, help="virtual pipeline stages per rank")
    p.add_argument("--cp", type=int, default=1, help="context parallel size")
    p.add_argument("--sequence-parallel", "--sequence_parallel", action="store_true")
    p.add_argument("--output", "--json", help="write the result as JSON to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    return p


def _kind(args) -> str:
    if args.dataset:
        return args.dataset
    from .errors import ConfigError

    if not args.data_path:
        raise ConfigError("--data-path: give the data to evaluate (an indexed prefix or a JSONL file), "
                          "or --dataset mock")
    return "jsonl" if all(str(p).endswith(".jsonl") for p in args.data_path) else "indexed"


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    from .evaluation import default_tokenizer, eval_dataset, evaluate_perplexity, load_model, model_bridge, parse_dtype
    from .parallel import ParallelConfig, initialize

    kind, dtype = _kind(args), parse_dtype(args.dtype)
    bridge = model_bridge(args.hf_model, args.megatron_path, args.hf_revision)
    layout = ParallelConfig(tp=args.tp, pp=args.pp, vp=args.vp, cp=args.cp, sequence_parallel=args.sequence_parallel)
    layout.validate(bridge.config, args.seq_length)
    tokenizer = args.tokenizer or (default_tokenizer(args.hf_model, args.megatron_path, bridge)
                                   if kind != "mock" else None)
    data = eval_dataset(kind, args.data_path, seq_length=args.seq_length, tokenizer=tokenizer, part=args.split,
                        split=args.split_weights, seed=args.seed, packing=args.packing,
                        sample_layout=args.sample_layout, vocab_size=bridge.config.vocab_size)
    dims = initialize(layout)
    rank0 = dims.rank == 0
    chunks = load_model(bridge, args.megatron_path, dims, dtype, progress=rank0 and not args.no_progress)
    gbs = args.global_batch_size or args.micro_batch_size * dims.dp
    max_samples = args.eval_iters * gbs if args.eval_iters is not None else args.max_samples
    where = ", ".join(args.data_path) if args.data_path else f"{kind} data"
    result = evaluate_perplexity(chunks, dims, data, micro_batch_size=args.micro_batch_size, global_batch_size=gbs,
                                 max_samples=max_samples, seed=args.seed, data_source=where,
                                 progress=not args.no_progress)
    result.model = {"hf_model": args.hf_model, "megatron_path": args.megatron_path,
                    "dtype": str(next(chunks[0].parameters()).dtype).removeprefix("torch.")}
    result.dataset = {"kind": kind, "paths": args.data_path, "split": args.split, "split_weights": args.split_weights,
                      "seq_length": args.seq_length, "sample_layout": args.sample_layout, "packing": args.packing,
                      "seed": args.seed, "tokenizer": tokenizer, "available_samples": len(data)}
    if rank0:
        model = args.megatron_path or args.hf_model
        print(f"{model} on {where} ({args.split}): {result.summary()}", flush=True)
        if args.output:
            result.write_json(args.output)
            print(f"wrote {args.output}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("minibridge.eval", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
