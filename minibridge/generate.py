"""Text generation with a KV cache: `python -m minibridge.generate`, and `generate()` for research code.

    python -m minibridge.generate --hf_model_path DIR [--hf-revision REV] [--megatron_model_path DIR]
        [--prompt "..." --prompt "..." | --prompts-file FILE] [--batch-size 8] [--max_new_tokens 20]
        [--temperature 0.7 --top_k 50 --top_p 0.9 --seed 0] [--stop STR ...] [--stream] [--no-chat-template]
    torchrun --nproc-per-node=2 -m minibridge.generate --hf_model_path DIR --prompt "..."          # tensor parallel
    torchrun --nproc-per-node=2 -m minibridge.generate --hf_model_path DIR --pp 2 --prompt "..."   # pipeline stages

    from minibridge.generate import generate
    texts = generate(model, tokenizer, ["Hello", "The capital of France is"], max_new_tokens=20)
    texts, ids = generate(model, tokenizer, prompts, do_sample=True, top_p=0.9, seed=0, return_ids=True)

The work lives in minibridge/generation/ (the token loop, sampling, pipeline stages, stop strings,
streaming); this module is the command line and re-exports the functions research code uses.
The prompts are wrapped in the tokenizer's chat template when it has one (`--no-chat-template`: plain
text). `--stream` writes each prompt's text as it is generated, prompt after prompt in input order
(a batch's later rows are written when their turn comes); without it each text is written when
complete. Only global rank 0 writes.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from .cli import run_main
from .errors import ConfigError
from .generation import (GenerationStats, PrintStreamer, choose_tokens, encode_prompts, eos_of_folder, generate,
                         generate_ids, left_pad, read_prompts, sampling_settings)

__all__ = ["DEFAULT_MAX_NEW_TOKENS", "DEFAULT_PROMPT", "GenerationStats", "choose_tokens", "encode_prompts",
           "generate", "generate_ids", "left_pad", "main", "sampling_settings"]

# Megatron Bridge's examples/conversion/hf_to_megatron_generate_text.py defaults.
DEFAULT_PROMPT = "Hello, how are you?"
DEFAULT_MAX_NEW_TOKENS = 20
DEFAULT_BATCH_SIZE = 8


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m minibridge.generate", description=__doc__.split("\n")[0])
    p.add_argument("--hf_model_path", "--hf-model-path", required=True,
                   help="HF folder: config, tokenizer, and the weights unless --megatron_model_path is given")
    p.add_argument("--megatron_model_path", "--megatron-model-path",
                   help="a minibridge checkpoint (from training or `minibridge.convert import`) or a Megatron-Core "
                        "torch_dist one (Megatron Bridge, Megatron-LM) to load instead")
    p.add_argument("--hf-revision", "--hf_revision",
                   help="hub revision (branch, tag or commit) of a --hf_model_path hub id; not for a local folder")
    prompts = p.add_mutually_exclusive_group()
    prompts.add_argument("--prompt", action="append", help=f"a prompt; repeat for several (default: {DEFAULT_PROMPT!r})")
    prompts.add_argument("--prompts-file", "--prompts_file", help="a UTF-8 text file, one prompt per line "
                         "(blank lines skipped)")
    p.add_argument("--batch-size", "--batch_size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"prompts per batch (left padded; default {DEFAULT_BATCH_SIZE}); outputs keep the input order")
    p.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                   help=f"default {DEFAULT_MAX_NEW_TOKENS}")
    p.add_argument("--temperature", type=float, help="sampling temperature (sampling when > 0; 0: greedy)")
    p.add_argument("--top_k", "--top-k", type=int, help="sample among the k most likely tokens")
    p.add_argument("--top_p", "--top-p", type=float, help="sample among the most likely tokens of mass p")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling generator (default 0; batch k: seed + k)")
    p.add_argument("--stop", action="append", default=[], metavar="STR",
                   help="stop a text once it contains STR, cut before it (repeatable)")
    p.add_argument("--stream", action="store_true", help="write each text as it is generated")
    template = p.add_mutually_exclusive_group()
    template.add_argument("--apply_chat_template", "--apply-chat-template", "--chat-template", dest="chat_template",
                          action="store_const", const=True, default=None,
                          help="wrap each prompt as a user message with the tokenizer's chat template (the "
                               "default when the tokenizer has one; an error when it has none)")
    template.add_argument("--no-chat-template", "--no_chat_template", dest="chat_template", action="store_const",
                          const=False, help="the prompts as plain text, even when the tokenizer has a chat template")
    p.add_argument("--tp", type=int, help="tensor parallel size (default: the torchrun world size / --pp)")
    p.add_argument("--pp", type=int, default=1, help="pipeline parallel size (stages; default 1)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], help="default: the checkpoint's dtype")
    p.add_argument("--device", help="default: cuda when available, else cpu")
    args = p.parse_args(argv)
    for name in ("batch_size", "pp") + (("tp",) if args.tp is not None else ()):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(args, name)}: expected an integer >= 1")
    args.prompt = read_prompts(args.prompts_file) if args.prompts_file else args.prompt or [DEFAULT_PROMPT]
    return args


def _layout(args, num_layers: int):
    """The ParallelConfig of --tp/--pp under torchrun, or None for one process; the layers are split as
    evenly as they go (the first stages take one more), since generation has no pipeline bubble to balance."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    tp = args.tp or max(1, world // args.pp)
    if tp * args.pp == 1 and world == 1:
        return None
    if world % (tp * args.pp):
        raise ConfigError(f"--tp {tp} --pp {args.pp}: needs a multiple of {tp * args.pp} processes (torchrun "
                          f"--nproc-per-node={tp * args.pp}), got a world of {world}")
    if args.pp > num_layers:
        raise ConfigError(f"--pp {args.pp}: the model has only {num_layers} layers (one stage needs one at least)")
    from .parallel import ParallelConfig

    base, extra = divmod(num_layers, args.pp)
    layout = tuple(base + (stage < extra) for stage in range(args.pp)) if args.pp > 1 else None
    return ParallelConfig(tp=tp, pp=args.pp, pipeline_layout=layout)


def _main(argv: list[str] | None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    from .conversion import AutoBridge
    from .bridge.hf_folder import load_hf_tokenizer, resolve_model_path

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, None: None}[args.dtype]
    wants_sampling = bool(args.temperature) or args.top_k is not None or args.top_p is not None
    do_sample, temperature, top_k, top_p = sampling_settings(wants_sampling, args.temperature, args.top_k,
                                                             args.top_p, args.max_new_tokens)
    folder = resolve_model_path(args.hf_model_path, args.hf_revision)
    bridge = AutoBridge.from_hf_pretrained(folder)
    layout = _layout(args, bridge.config.num_layers)
    tokenizer = load_hf_tokenizer(bridge.source, "an export of a model trained on mock data gets one from "
                                                 "`minibridge.convert export --tokenizer DIR`")
    dims = None
    if layout is not None:
        from .parallel import initialize

        dims = initialize(layout)
    device = args.device or (dims.device if dims is not None else "cuda" if torch.cuda.is_available() else "cpu")
    rank0 = dims is None or dims.rank == 0
    if args.megatron_model_path:
        from .conversion import load_megatron_model

        chunks = load_megatron_model(bridge, args.megatron_model_path, parallel=dims, dtype=dtype, device=device)
    else:
        chunks = bridge.to_model_chunks(dims, dtype, device, progress=rank0)
    for chunk in chunks:
        chunk.eval()
    if rank0 and args.chat_template is None and getattr(tokenizer, "chat_template", None):
        print("using the tokenizer's chat template (--no-chat-template: the prompts as plain text)", file=sys.stderr,
              flush=True)
    stats = GenerationStats()
    printer = PrintStreamer([f"=== prompt: {prompt}\n" for prompt in args.prompt], live=args.stream) if rank0 else None
    generate(chunks, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens, do_sample=do_sample,
             temperature=temperature, top_k=top_k, top_p=top_p, seed=args.seed,
             eos_token_id=eos_of_folder(folder, tokenizer), apply_chat_template=args.chat_template, stats=stats,
             stop_strings=args.stop, streamer=printer, batch_size=args.batch_size)
    if rank0:
        print(stats.summary(), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("minibridge.generate", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
