"""Llama 3 / 3.1 / 3.2: pre-norm blocks of GQA attention and a SwiGLU MLP, RMSNorm, RoPE.

    h = x + attn(attn_norm(x))
    y = h + mlp(mlp_norm(h))

HF calls `mlp_norm` "post_attention_layernorm"; the bridge's mapping table translates names.
"""

from __future__ import annotations

import torch
from torch import nn

from .causal_lm import DECODER_TP_PLAN, CausalLM
from .common import Attention, GatedMLP, RMSNorm
from .config import ModelConfig
from .registry import Family, register


class LlamaBlock(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = Attention(config, layer)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = GatedMLP(config)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], document_ids=None, kv_cache=None):
        h = x + self.attn(self.attn_norm(x), rope, document_ids, kv_cache)
        return h + self.mlp(self.mlp_norm(h))


class LlamaForCausalLM(CausalLM):
    block_class = LlamaBlock


FAMILY = register(Family("llama", LlamaForCausalLM, tp_plan=DECODER_TP_PLAN))
