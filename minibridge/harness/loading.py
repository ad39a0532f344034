"""What `MinibridgeLM` evaluates: the model, its tokenizer and the token ids generation stops at.

Three sources, as `--model_args` names them:

    pretrained=HF_DIR                         an HF folder (or a hub id when online): config, tokenizer, weights
    pretrained=HF_DIR,checkpoint=CKPT         the weights of a minibridge checkpoint (training, `convert import`,
                                              LoRA/DoRA adapters merged into the HF folder's base) of that model
    checkpoint=CKPT[,tokenizer=TOK_DIR]       a checkpoint trained from scratch: the architecture from its
                                              run.json, the tokenizer from `tokenizer` or the folder it trained with

`pretrained` may also be a minibridge model object (Python use; pass `tokenizer` then). Every folder is
read as minibridge reads user folders (safetensors only, no remote code, no file linking outside).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..bridge.hf_config import parse_dtype
from ..errors import ConfigError
from ..generation import eos_of_folder

@dataclass
class Loaded:
    model: torch.nn.Module          # a whole single-device CausalLM, in eval mode
    tokenizer: object               # a transformers tokenizer
    eos_token_id: int | list[int]   # what HF's generate() would stop at (generation_config.json first)
    source: str                     # for lm_eval's results: the folder or checkpoint the weights came from


def load_tokenizer(source, add_bos_token: bool | None = None):
    """A transformers tokenizer object as is, else AutoTokenizer of a folder (nothing in it linking out) or
    hub id; `add_bos_token` is handed to AutoTokenizer as lm_eval's HFLM does (it rebuilds the BOS rule)."""
    if hasattr(source, "encode") and hasattr(source, "decode"):
        return source
    from ..bridge.hf_folder import load_hf_tokenizer

    options = {} if add_bos_token is None else {"add_bos_token": add_bos_token}
    return load_hf_tokenizer(source, "pass tokenizer=DIR", **options)


def generation_eos(folder: Path | None, tokenizer) -> int | list[int]:
    """The EOS ids HF's generate() stops at for this folder (minibridge.generation.eos_of_folder:
    generation_config.json, config.json, the tokenizer); generation needs one."""
    eos = eos_of_folder(folder, tokenizer) if folder is not None else tokenizer.eos_token_id
    if eos is None:
        raise ConfigError(f"{folder or 'the tokenizer'}: no eos_token_id in generation_config.json, config.json or "
                          f"the tokenizer; generation needs one")
    return eos


def _whole_model(model) -> torch.nn.Module:
    from ..models import ModelChunks

    chunks = ModelChunks.of(model)
    if len(chunks) > 1 or not (chunks[0].is_first and chunks[0].is_last) or chunks.dims is not None:
        raise ConfigError("lm_eval runs a whole single-device model; pipeline chunks or a sharded model are not "
                          "supported (load it without a parallel layout)")
    return chunks[0].eval()


def load(pretrained=None, checkpoint=None, tokenizer=None, dtype=None, device=None, revision=None,
         add_bos_token: bool | None = None) -> Loaded:
    """The model, tokenizer and EOS ids of one of the sources of this module's docstring."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']}: --model minibridge evaluates in one process (no "
                          f"data or tensor parallel evaluation yet); run it without torchrun or accelerate launch")
    dtype = parse_dtype(dtype)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if pretrained is not None and not isinstance(pretrained, (str, Path)):
        if tokenizer is None:
            raise ConfigError("pretrained=<a model object>: pass tokenizer= (a tokenizer object or folder) too")
        if checkpoint is not None:
            raise ConfigError("pretrained=<a model object> holds its weights already; drop checkpoint=")
        model = _whole_model(pretrained)
        tok = load_tokenizer(tokenizer, add_bos_token)
        return Loaded(model, tok, generation_eos(None, tok), type(model).__name__)
    from ..conversion import AutoBridge
    from ..bridge.hf_folder import resolve_model_path
    from ..conversion import load_megatron_model

    folder = None
    if pretrained is not None:
        folder = resolve_model_path(pretrained, revision)
        bridge = AutoBridge.from_hf_pretrained(folder)
    elif checkpoint is not None:
        from ..conversion.checkpoints import checkpoint_tokenizer
        from ..conversion.exporter import bridge_of_checkpoint

        bridge = bridge_of_checkpoint(checkpoint)
        if tokenizer is None:
            tokenizer = checkpoint_tokenizer(checkpoint)
            if tokenizer is None:
                raise ConfigError(f"checkpoint={checkpoint}: it names no tokenizer (run.json: mock data?; Megatron: no tokenizer/ folder); pass "
                                  f"tokenizer=DIR, or pretrained=HF_DIR of the same model")
    else:
        raise ConfigError("MinibridgeLM needs pretrained=HF_DIR, checkpoint=CKPT (with tokenizer=DIR when its "
                          "run.json names none), or both")
    if checkpoint is not None:
        model = load_megatron_model(bridge, checkpoint, dtype=dtype, device=device)[0]
    else:
        model = bridge.to_model_chunks(None, dtype, device)[0]
    tok = load_tokenizer(tokenizer if tokenizer is not None else folder, add_bos_token)
    return Loaded(_whole_model(model), tok, generation_eos(folder, tok), str(checkpoint or pretrained))
