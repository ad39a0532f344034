"""Gemma 3 text model: Llama's skeleton with Gemma's numerics.

    h = x + post_attn_norm(attn(attn_norm(x)))        # attention: q/k norms, query_pre_attn_scalar
    y = h + post_mlp_norm(mlp(mlp_norm(h)))           # GeGLU with tanh GELU

- every norm is Gemma's: fp32, times (1 + w), one cast at the end;
- embeddings are multiplied by sqrt(hidden) rounded to the model dtype first (34.0 in bf16 for 1152);
- layers alternate sliding-window (local RoPE base 10k, unscaled) and global (base 1M, with the
  checkpoint's linear scaling) attention as `config.layer_types` says;
- the output layer is tied to the embedding and has no soft-capping.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .causal_lm import DECODER_TP_PLAN, CausalLM
from .common import Attention, GatedMLP, RMSNorm
from .config import ModelConfig
from .registry import Family, register


class Gemma3Attention(Attention):
    """Attention with Gemma 3's per-head RMSNorm of q and k before RoPE."""

    def __init__(self, config: ModelConfig, layer: int):
        super().__init__(config, layer)
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps, gemma=True)
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps, gemma=True)

    def normalize_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q_norm(q), self.k_norm(k)


class Gemma3Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        h, eps = config.hidden_size, config.rms_norm_eps
        self.layer = layer
        self.attn_norm = RMSNorm(h, eps, gemma=True)
        self.attn = Gemma3Attention(config, layer)
        self.post_attn_norm = RMSNorm(h, eps, gemma=True)
        self.mlp_norm = RMSNorm(h, eps, gemma=True)
        self.mlp = GatedMLP(config)
        self.post_mlp_norm = RMSNorm(h, eps, gemma=True)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], document_ids=None, kv_cache=None):
        h = x + self.post_attn_norm(self.attn(self.attn_norm(x), rope, document_ids, kv_cache))
        return h + self.post_mlp_norm(self.mlp(self.mlp_norm(h)))


class Gemma3ForCausalLM(CausalLM):
    block_class = Gemma3Block
    gemma_norms = True

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = super().embed(input_ids)
        # transformers rounds sqrt(hidden) to the weight dtype before the multiply (HF PR 29402).
        scale = torch.tensor(math.sqrt(self.config.hidden_size), dtype=hidden.dtype, device=hidden.device)
        return hidden * scale


FAMILY = register(Family("gemma3", Gemma3ForCausalLM, tp_plan=DECODER_TP_PLAN))
