"""Checkpoint conversion on the command line, as Megatron Bridge's examples/conversion/convert_checkpoints.py:

    python -m minibridge.convert import --hf-model DIR --megatron-path DIR [--tp N --pp N] [--torch-dtype bfloat16]
    python -m minibridge.convert import --hf-model DIR --megatron-path DIR --format megatron
                                        [--make-vocab-size-divisible-by 128]
    python -m minibridge.convert export [--hf-model DIR] --megatron-path DIR --hf-path DIR [--adapter-only]
                                        [--not-strict] [--tokenizer DIR]
    python -m minibridge.convert roundtrip --hf-model DIR [--tp N]
    torchrun --nproc-per-node=2 -m minibridge.convert import --hf-model DIR --megatron-path DIR --tp 2

`import` writes a minibridge checkpoint (what training saves and resumes from; `--pretrained-checkpoint`
takes it), or with `--format megatron` a Megatron-Core torch_dist checkpoint as Megatron Bridge writes it
(its `AutoBridge.export_ckpt` and `load_megatron_model` read it; every minibridge command does too).
`export` reads either kind (a Megatron Bridge or Megatron-LM checkpoint as well). `export` writes an HF folder, merging LoRA/DoRA adapters, or with `--adapter-only` the
adapters as an HF PEFT folder; `--hf-model` supplies the config, the tokenizer and the dtypes. Without
`--hf-model` (a model trained from scratch) config.json comes from the checkpoint's run.json and the
tokenizer from the folder the run trained with (or `--tokenizer`). `--not-strict` exports what a
checkpoint holds when it lacks parameters, or when the HF folder holds tensors the export does not make.
`--hf-model` may be a hub id when online, with `--hf-revision` (a branch, tag or commit).
`roundtrip` imports, exports and compares every tensor with the source; it exits 1 on any difference.
Bad inputs exit 2 with a message naming the path and what was expected.
"""

from __future__ import annotations

import argparse
import sys

from .cli import run_main

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
TORCH_DTYPES = ("float32", "float16", "bfloat16")  # Megatron Bridge's --torch-dtype choices
FORMATS = ("minibridge", "megatron")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m minibridge.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def common(cmd, megatron: bool = True, hf_required: bool = True):
        cmd.add_argument("--hf-model", "--hf_model", required=hf_required,
                         help="Hugging Face model folder (or hub id)" + ("" if hf_required else
                              "; default: the architecture recorded in the checkpoint (trained from scratch)"))
        cmd.add_argument("--hf-revision", "--hf_revision",
                         help="hub revision (branch, tag or commit) of a --hf-model hub id; not for a local folder")
        if megatron:
            cmd.add_argument("--megatron-path", "--megatron_path", required=True, help="minibridge checkpoint folder")
        cmd.add_argument("--no-progress", action="store_true", help="no progress bar")

    def dtypes(cmd, default: str):
        cmd.add_argument("--torch-dtype", "--torch_dtype", choices=TORCH_DTYPES, help=f"cast the weights ({default})")
        cmd.add_argument("--dtype", choices=DTYPES, help="the same, in short: bf16, fp16, fp32")

    imp = sub.add_parser("import", help="HF folder -> minibridge checkpoint")
    common(imp)
    imp.add_argument("--tp", type=int, default=1, help="tensor parallel size of the written layout (under torchrun)")
    imp.add_argument("--pp", type=int, default=1, help="pipeline parallel size of the written layout (under torchrun)")
    dtypes(imp, "default: keep the checkpoint's dtypes")
    imp.add_argument("--overwrite", action="store_true", help="replace a non-empty --megatron-path")
    imp.add_argument("--format", choices=FORMATS, default="minibridge",
                     help="minibridge (default: the checkpoint training writes) or megatron (Megatron-Core torch_dist, "
                          "as Megatron Bridge writes it)")
    imp.add_argument("--make-vocab-size-divisible-by", "--make_vocab_size_divisible_by", type=int,
                     help="--format megatron: pad the stored vocabulary with zero rows to a multiple of N")

    exp = sub.add_parser("export", help="minibridge checkpoint -> HF folder (or HF PEFT adapter)")
    common(exp, hf_required=False)
    exp.add_argument("--hf-path", "--hf_path", required=True, help="output folder")
    exp.add_argument("--adapter-only", "--adapter_only", action="store_true",
                     help="write only the LoRA/DoRA adapters, as an HF PEFT folder")
    dtypes(exp, "default: the --hf-model files' dtypes, else the checkpoint's")
    exp.add_argument("--not-strict", "--not_strict", action="store_true",
                     help="export what the checkpoint holds even when tensors are missing or left over")
    exp.add_argument("--tokenizer", help="tokenizer folder to include (default: --hf-model's, else the run's)")
    exp.add_argument("--max-shard-size", default="50GB", help="safetensors shard size (default 50GB)")
    exp.add_argument("--tp", type=int, default=1, help="shard a LoRA/DoRA merge over tp ranks (under torchrun)")
    exp.add_argument("--overwrite", action="store_true", help="replace a non-empty --hf-path")

    rt = sub.add_parser("roundtrip", help="import, export and compare every tensor with the source")
    common(rt, megatron=False)
    rt.add_argument("--tp", type=int, default=1)
    rt.add_argument("--pp", type=int, default=1)
    rt.add_argument("--work-dir", help="where the intermediate folders go (default: the system's temp folder)")
    return p


def _dtype(args):
    """--torch-dtype or --dtype (one of them, or both the same) as a torch dtype; None: keep."""
    import torch

    from .errors import ConfigError

    short = DTYPES.get(args.dtype) if args.dtype else None
    if short and args.torch_dtype and short != args.torch_dtype:
        raise ConfigError(f"--dtype {args.dtype} and --torch-dtype {args.torch_dtype} disagree; give one of them")
    name = args.torch_dtype or short
    return getattr(torch, name) if name else None


def _hf_model(args):
    """--hf-model as a local folder: a hub id is downloaded at --hf-revision (minibridge.bridge.hf_folder)."""
    if args.hf_model is None:
        if args.hf_revision is not None:
            from .errors import ConfigError

            raise ConfigError(f"--hf-revision {args.hf_revision} needs --hf-model (a hub id)")
        return None
    from .bridge.hf_folder import resolve_model_path

    return str(resolve_model_path(args.hf_model, args.hf_revision))


def _report(results) -> int:
    bad = [r for r in results if not r.ok]
    width = max((len(r.name) for r in bad), default=0)
    for r in bad:
        print(f"  {r.name:<{width}}  {r.status}: {r.detail}")
    print(f"roundtrip: {len(results)} tensors compared, {len(results) - len(bad)} identical, {len(bad)} differ")
    return 1 if bad else 0


def _import_megatron(args, hf_model, progress):
    from .conversion.megatron_writer import write_megatron_checkpoint
    from .errors import ConfigError

    if args.tp * args.pp > 1:
        raise ConfigError(f"--tp {args.tp} --pp {args.pp}: a Megatron checkpoint is written in one process; "
                          f"Megatron-Core reshards it to any layout when it loads")
    return write_megatron_checkpoint(hf_model, args.megatron_path, dtype=_dtype(args), overwrite=args.overwrite,
                                     make_vocab_size_divisible_by=args.make_vocab_size_divisible_by, progress=progress)


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    from .conversion import export_checkpoint, import_checkpoint, roundtrip
    from .parallel.dims import global_rank

    progress = not args.no_progress
    hf_model = _hf_model(args)
    if args.command == "import" and args.format == "megatron":
        out = _import_megatron(args, hf_model, progress)
        message = f"imported {args.hf_model} into {out} (Megatron torch_dist)"
    elif args.command == "import":
        if args.make_vocab_size_divisible_by is not None:
            from .errors import ConfigError

            raise ConfigError("--make-vocab-size-divisible-by pads a Megatron checkpoint's vocabulary: use it with "
                              "--format megatron (minibridge checkpoints store the vocabulary unpadded)")
        out = import_checkpoint(hf_model, args.megatron_path, tp=args.tp, pp=args.pp, dtype=_dtype(args),
                                overwrite=args.overwrite, progress=progress)
        message = f"imported {args.hf_model} into {out}"
    elif args.command == "export":
        out = export_checkpoint(hf_model, args.megatron_path, args.hf_path, adapter_only=args.adapter_only,
                                dtype=_dtype(args), max_shard_size=args.max_shard_size, overwrite=args.overwrite,
                                progress=progress, tp=args.tp, strict=not args.not_strict, tokenizer=args.tokenizer)
        message = f"exported {args.megatron_path} to {out}" + (" (adapters only)" if args.adapter_only else "")
    else:
        results = roundtrip(hf_model, tp=args.tp, pp=args.pp, work_dir=args.work_dir, progress=progress)
        return _report(results) if global_rank() == 0 else 0
    if global_rank() == 0:
        print(message)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("minibridge.convert", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
