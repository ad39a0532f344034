"""The model an evaluation tool runs: an HF folder, or a minibridge checkpoint, on this rank's layout.

    bridge, chunks = load_model(hf_model="hf/llama", megatron_path=None, dims=dims, dtype=torch.float32)

`megatron_path` is a save folder (its latest iteration) or one `iter_NNNNNNN` folder, read with the
conversion helpers (checked against the HF config first; adapters merged into their base). Without
`hf_model`, the architecture comes from the checkpoint's run.json (a model trained from scratch).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..conversion import AutoBridge
from ..bridge.hf_config import parse_dtype as dtype_from_name
from ..bridge.hf_folder import resolve_model_path
from ..conversion import load_megatron_model
from ..conversion.checkpoints import checkpoint_tokenizer
from ..conversion.exporter import bridge_of_checkpoint
from ..errors import ConfigError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
def parse_dtype(name: str | None) -> torch.dtype | None:
    """--dtype bf16 | fp16 | fp32 (also bfloat16, float16, float32, auto); None keeps the checkpoint's."""
    return dtype_from_name(name, "--dtype ")


def model_bridge(hf_model: str | None, megatron_path: str | None, hf_revision: str | None = None) -> AutoBridge:
    """The bridge (config, name tables) of the model to evaluate."""
    if hf_model is None and megatron_path is None:
        raise ConfigError("give the model: --hf-model DIR (an HF folder) and/or --megatron-path CKPT "
                          "(a minibridge checkpoint)")
    if hf_model is not None:
        return AutoBridge.from_hf_pretrained(resolve_model_path(hf_model, hf_revision))
    return bridge_of_checkpoint(megatron_path)


def load_model(bridge: AutoBridge, megatron_path: str | None, dims, dtype: torch.dtype | None = None,
               device=None, progress: bool = True):
    """This rank's ModelChunks, in eval mode: the HF folder's weights, or the checkpoint's."""
    if megatron_path is not None:
        chunks = load_megatron_model(bridge, megatron_path, parallel=dims, dtype=dtype, device=device,
                                     progress=progress)
    else:
        chunks = bridge.to_model_chunks(dims, dtype, device, progress=progress)
    for chunk in chunks:
        chunk.eval()
    return chunks


def default_tokenizer(hf_model: str | None, megatron_path: str | None, bridge: AutoBridge) -> str | None:
    """The tokenizer of the model: its HF folder's (when it holds one), else the one the checkpoint's run
    trained with."""
    if hf_model is not None:
        folder = Path(bridge.source)
        return str(folder) if any((folder / name).is_file() for name in TOKENIZER_FILES) else None
    if megatron_path is not None:
        return checkpoint_tokenizer(megatron_path)
    return None
