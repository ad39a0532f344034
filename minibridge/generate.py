"""Text generation with a KV cache: `python -m minibridge.generate`, and `generate()` for research code.

    python -m minibridge.generate --hf_model_path DIR [--hf-revision REV] [--megatron_model_path DIR]
        [--prompt "..." --prompt "..."] [--max_new_tokens 20] [--temperature 0.7 --top_k 50 --top_p 0.9 --seed 0]
        [--apply_chat_template]
    torchrun --nproc-per-node=2 -m minibridge.generate --hf_model_path DIR --prompt "..."     # tensor parallel

    from minibridge.generate import generate
    texts = generate(model, tokenizer, ["Hello", "The capital of France is"], max_new_tokens=20)
    texts, ids = generate(model, tokenizer, prompts, do_sample=True, top_p=0.9, seed=0, return_ids=True)

Greedy by default; sampling applies temperature, then top-k, then top-p (transformers' order) and draws
from a generator seeded with `seed`, so a run is reproducible. Several prompts run as one batch, left
padded: each row's positions start at 0 at its first real token and padding is masked out of
attention, as transformers does with its attention mask. The prompt is processed in one forward
(prefill), then one token per step (decode) against the cache. A row stops at EOS and is filled with
the pad token from then on; generation stops when every row has. Under tensor parallelism every rank
runs the same loop on the gathered logits and the tokens of tp rank 0 are broadcast, so ranks never
diverge.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass

import torch

from .cli import run_main
from .errors import ConfigError
from .models import KVCache, ModelChunks

# Megatron Bridge's examples/conversion/hf_to_megatron_generate_text.py defaults.
DEFAULT_PROMPT = "Hello, how are you?"
DEFAULT_MAX_NEW_TOKENS = 20


@dataclass
class GenerationStats:
    prompt_tokens: int = 0  # batch x padded prompt length, processed by the prefill
    new_tokens: int = 0  # tokens produced by decode steps (batch x steps)
    prefill_s: float = 0.0  # the prompt's forward and the first token
    decode_s: float = 0.0

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.new_tokens / self.decode_s if self.decode_s else 0.0

    def summary(self) -> str:
        return (f"prefill: {self.prompt_tokens} tokens in {self.prefill_s:.3f} s ({self.prefill_tokens_per_s:,.1f} "
                f"tokens/s); decode: {self.new_tokens} tokens in {self.decode_s:.3f} s "
                f"({self.decode_tokens_per_s:,.1f} tokens/s)")


# ------------------------------------------------------------------------------------------ sampling


def sampling_settings(do_sample: bool, temperature: float | None, top_k: int | None, top_p: float | None,
                      max_new_tokens: int) -> tuple[bool, float, int | None, float | None]:
    """Checked (do_sample, temperature, top_k, top_p). Temperature 0 means greedy, whatever top-k/top-p
    say (the limit of sampling as the temperature goes to 0)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={max_new_tokens!r}: expected an integer >= 1")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                    or not math.isfinite(temperature) or temperature < 0):
        raise ConfigError(f"temperature={temperature!r}: expected a finite number >= 0 (0: greedy)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ConfigError(f"top_k={top_k!r}: expected an integer >= 1 (or none for no top-k filtering)")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not math.isfinite(top_p) or not 0 < top_p <= 1):
        raise ConfigError(f"top_p={top_p!r}: expected a number in (0, 1] (or none for no top-p filtering)")
    if temperature == 0:
        return False, 1.0, None, None
    return do_sample, 1.0 if temperature is None else float(temperature), top_k, top_p


def check_context(model, lengths: torch.Tensor, max_new_tokens: int) -> None:
    """The longest prompt plus the new tokens stays within the positions the model was trained for."""
    limit = model.config.max_position_embeddings
    needed = int(lengths.max()) + max_new_tokens
    if limit is not None and needed > limit:
        raise ConfigError(
            f"a prompt of {int(lengths.max())} tokens + max_new_tokens={max_new_tokens} needs {needed} positions, "
            f"past the model's max_position_embeddings={limit}; lower max_new_tokens (or the prompt), or extend the "
            f"context with a RoPE scaling (rope_scaling in config.json, e.g. linear with factor "
            f"{-(-needed // limit)}) and max_position_embeddings={needed}")


def choose_tokens(logits: torch.Tensor, do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) next tokens from (B, vocab) fp32 logits: argmax, or a draw after temperature, top-k, top-p."""
    if not do_sample:
        return logits.argmax(dim=-1)
    if temperature is not None and temperature != 1.0:
        logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # transformers' TopPLogitsWarper: drop the least likely tokens whose total mass is <= 1 - top_p,
        # always keeping the most likely one.
        ordered, order = torch.sort(logits, dim=-1)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1 - top_p
        drop[..., -1] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _eos_tensor(eos_token_id, device) -> torch.Tensor:
    ids = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    return torch.tensor(ids, dtype=torch.long, device=device)


def _sync_tokens(model, tokens: torch.Tensor) -> torch.Tensor:
    """Under tensor parallelism, every rank takes tp rank 0's tokens (identical already, by construction)."""
    dims = model.sharding.dims if model.sharding is not None else None
    if dims is None or dims.tp == 1:
        return tokens
    import torch.distributed as dist

    dist.broadcast(tokens, src=dist.get_global_rank(dims.tp_group, 0), group=dims.tp_group)
    return tokens


def _wait(device) -> None:
    """Let a GPU finish before reading the clock (CUDA work is asynchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def generate_ids(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int = 32, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 eos_token_id: int | list[int] | None = None, pad_token_id: int = 0,
                 stats: GenerationStats | None = None) -> torch.Tensor:
    """(B, N <= max_new_tokens) new token ids after left-padded `input_ids` (B, T) (`attention_mask`
    1 for real tokens, 0 for padding). Rows that reached EOS continue with `pad_token_id`."""
    chunks = ModelChunks.of(model)
    if len(chunks) > 1 or not (chunks[0].is_first and chunks[0].is_last):
        raise ConfigError("generation runs a whole model; pipeline-parallel chunks are not supported")
    model = chunks[0]
    do_sample, temperature, top_k, top_p = sampling_settings(do_sample, temperature, top_k, top_p, max_new_tokens)
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    B, T = input_ids.shape
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.to(device).bool()
    if not mask.any(dim=1).all():
        raise ConfigError("every prompt needs at least one token")
    check_context(model, mask.sum(dim=1), max_new_tokens)
    padded = not bool(mask.all())
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    documents = torch.where(mask, 0, -1) if padded else None  # padding never attends to real tokens, nor they to it
    generator = None
    if do_sample and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    eos = _eos_tensor(eos_token_id, device)
    stats = stats if stats is not None else GenerationStats()
    cache = KVCache(model.config, capacity=T + max_new_tokens)

    def step(ids, position_ids, document_ids):
        logits = model(ids, position_ids=position_ids, document_ids=document_ids, kv_cache=cache, logits_to_keep=1)
        return _sync_tokens(model, choose_tokens(logits[:, -1].float(), do_sample, temperature, top_k, top_p, generator))

    start = time.perf_counter()
    tokens = step(input_ids, positions, documents)
    _wait(device)
    stats.prefill_s += time.perf_counter() - start
    stats.prompt_tokens += B * T
    out = [tokens]
    finished = torch.isin(tokens, eos)
    last = positions[:, -1:]
    start = time.perf_counter()
    for n in range(1, max_new_tokens):
        if bool(finished.all()):
            break
        tokens = step(tokens[:, None], last + n, None)
        tokens = tokens.masked_fill(finished, pad_token_id)
        finished |= torch.isin(tokens, eos)
        out.append(tokens)
    _wait(device)
    stats.decode_s += time.perf_counter() - start
    stats.new_tokens += B * (len(out) - 1)
    return torch.stack(out, dim=1)


# ------------------------------------------------------------------------------------------ texts


def encode_prompts(tokenizer, prompts: list[str], apply_chat_template: bool = False) -> list[list[int]]:
    """Token ids of each prompt: as the tokenizer encodes text (with its BOS), or, with the chat template,
    as a user message followed by the assistant's turn."""
    encoded = []
    for prompt in prompts:
        if apply_chat_template:
            if not getattr(tokenizer, "chat_template", None):
                raise ConfigError("apply_chat_template: the tokenizer has no chat template")
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
            encoded.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
        else:
            encoded.append(list(tokenizer(prompt)["input_ids"]))
    return encoded


def left_pad(sequences: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, longest), padding on the left."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, longest - len(seq):] = torch.tensor(seq)
            mask[row, longest - len(seq):] = 1
    return ids, mask


def _trim(ids: list[int], eos: set[int]) -> list[int]:
    """A row's new tokens up to and including its first EOS."""
    for i, token in enumerate(ids):
        if token in eos:
            return ids[: i + 1]
    return ids


def generate(model, tokenizer, prompts: str | list[str], max_new_tokens: int = 32, do_sample: bool = False,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             seed: int | None = None, eos_token_id: int | list[int] | None = None, return_ids: bool = False,
             apply_chat_template: bool = False, stats: GenerationStats | None = None):
    """The continuation text of each prompt (a list, one per prompt); with `return_ids`, also the new
    token ids of each (lists, up to and including EOS). `eos_token_id` defaults to the tokenizer's;
    pass `stats=GenerationStats()` to read the prefill and decode times back."""
    single = isinstance(prompts, str)
    prompts = [prompts] if single else list(prompts)
    if not prompts:
        raise ConfigError("generate: no prompts")
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = eos if isinstance(eos, int) else (eos[0] if eos else 0)
    ids, mask = left_pad(encode_prompts(tokenizer, prompts, apply_chat_template), pad)
    new = generate_ids(model, ids, mask, max_new_tokens, do_sample, temperature, top_k, top_p, seed, eos, pad, stats)
    eos_set = set(_eos_tensor(eos, "cpu").tolist())
    rows = [_trim(row, eos_set) for row in new.cpu().tolist()]
    texts = [tokenizer.decode(row, skip_special_tokens=True) for row in rows]
    return (texts, rows) if return_ids else texts


# ------------------------------------------------------------------------------------------ CLI


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m minibridge.generate", description=__doc__.split("\n")[0])
    p.add_argument("--hf_model_path", "--hf-model-path", required=True,
                   help="HF folder: config, tokenizer, and the weights unless --megatron_model_path is given")
    p.add_argument("--megatron_model_path", "--megatron-model-path",
                   help="a minibridge checkpoint (from training or `minibridge.convert import`) to load instead")
    p.add_argument("--hf-revision", "--hf_revision",
                   help="hub revision (branch, tag or commit) of a --hf_model_path hub id; not for a local folder")
    p.add_argument("--prompt", action="append", help=f"a prompt; repeat for a batch (default: {DEFAULT_PROMPT!r})")
    p.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                   help=f"default {DEFAULT_MAX_NEW_TOKENS}")
    p.add_argument("--temperature", type=float, help="sampling temperature (sampling when > 0; 0: greedy)")
    p.add_argument("--top_k", "--top-k", type=int, help="sample among the k most likely tokens")
    p.add_argument("--top_p", "--top-p", type=float, help="sample among the most likely tokens of mass p")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling generator (default 0)")
    p.add_argument("--apply_chat_template", "--apply-chat-template", action="store_true",
                   help="wrap each prompt as a user message with the tokenizer's chat template")
    p.add_argument("--tp", type=int, help="tensor parallel size (default: the torchrun world size)")
    p.add_argument("--pp", type=int, default=1, help="pipeline parallel size: only 1 for now (use --tp)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], help="default: the checkpoint's dtype")
    p.add_argument("--device", help="default: cuda when available, else cpu")
    args = p.parse_args(argv)
    args.prompt = args.prompt or [DEFAULT_PROMPT]
    if args.pp != 1:
        raise ConfigError(f"--pp {args.pp}: generation runs the whole model on each rank (pipeline-parallel "
                          f"generation is not implemented yet); shard it with --tp instead")
    return args


def _eos_of_folder(folder, tokenizer):
    """transformers' choice: generation_config.json, then config.json, then the tokenizer."""
    import json
    from pathlib import Path

    for name in ("generation_config.json", "config.json"):
        path = Path(folder) / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from None
        data = data if isinstance(data, dict) else {}
        text = data.get("text_config") if isinstance(data.get("text_config"), dict) else {}
        eos = data.get("eos_token_id", text.get("eos_token_id"))
        ids = eos if isinstance(eos, list) else [eos]
        if eos is not None and not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise ConfigError(f"{path}: eos_token_id={eos!r}: expected a token id or a list of token ids")
        if eos is not None:
            return eos
    return tokenizer.eos_token_id


def _main(argv: list[str] | None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    from .bridge import HFBridge
    from .bridge.hf_folder import check_contained

    world = int(os.environ.get("WORLD_SIZE", "1"))
    tp = args.tp or world
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, None: None}[args.dtype]
    wants_sampling = bool(args.temperature) or args.top_k is not None or args.top_p is not None
    do_sample, temperature, top_k, top_p = sampling_settings(wants_sampling, args.temperature, args.top_k,
                                                             args.top_p, args.max_new_tokens)
    from .bridge.hf_folder import resolve_model_path

    folder = resolve_model_path(args.hf_model_path, args.hf_revision)
    bridge = HFBridge.from_hf_pretrained(folder)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(check_contained(bridge.source)), trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{args.hf_model_path}: no usable tokenizer ({err}); an export of a model trained on "
                          f"mock data gets one from `minibridge.convert export --tokenizer DIR`") from None
    dims = None
    if tp > 1 or world > 1:
        from .parallel import ParallelConfig, initialize

        dims = initialize(ParallelConfig(tp=tp))
    device = args.device or (dims.device if dims is not None else "cuda" if torch.cuda.is_available() else "cpu")
    rank0 = dims is None or dims.rank == 0
    if args.megatron_model_path:
        from .conversion import load_megatron_model

        chunks = load_megatron_model(bridge, args.megatron_model_path, parallel=dims, dtype=dtype, device=device)
    else:
        chunks = bridge.to_model_chunks(dims, dtype, device, progress=rank0)
    model = chunks[0]
    model.eval()
    stats = GenerationStats()
    texts = generate(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens, do_sample=do_sample,
                     temperature=temperature, top_k=top_k, top_p=top_p, seed=args.seed,
                     eos_token_id=_eos_of_folder(folder, tokenizer),
                     apply_chat_template=args.apply_chat_template, stats=stats)
    if rank0:
        for prompt, text in zip(args.prompt, texts):
            print(f"=== prompt: {prompt}\n{text}", flush=True)
        print(stats.summary(), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("minibridge.generate", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
