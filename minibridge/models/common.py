"""Building blocks shared by the Llama 3 and Gemma 3 models.

Tensors are laid out (batch, seq, heads, head_dim) between the projections and the attention core.
Every numerical choice below mirrors `transformers` (5.x) so that fp32 logits agree to ~1e-6 and bf16
logits to a few ulps; the comments say which detail matters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from minibridge.kernels import apply_rope, rms_norm
from minibridge.kernels.attention import attention as kernel_attention

from .config import ModelConfig, RopeConfig


class RMSNorm(nn.Module):
    """RMSNorm in both flavours.

    Llama: normalise in fp32, cast back to the input dtype, then multiply by `weight` (in that dtype).
    Gemma: normalise in fp32, multiply by `(1 + weight)` in fp32, cast once at the end; the weight is
    stored as an offset from one, so it is initialised to zero.
    In bf16 the two orders differ by ~0.4 in the logits, so the order is part of the model
    (`minibridge.kernels.rms_norm_ref` spells both out; the Triton kernel keeps the same casts).
    """

    def __init__(self, dim: int, eps: float, gemma: bool = False):
        super().__init__()
        self.eps = eps
        self.gemma = gemma
        self.weight = nn.Parameter(torch.zeros(dim) if gemma else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, self.gemma)  # Triton on a GPU; on CPU the code above


def rope_inv_freq(rope: RopeConfig, head_dim: int, device=None) -> torch.Tensor:
    """Inverse frequencies in fp32, with the checkpoint's scaling (as transformers' ROPE_INIT_FUNCTIONS)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    inv_freq = 1.0 / (rope.theta**exponents)
    if rope.rope_type == "linear":
        return inv_freq / rope.factor
    if rope.rope_type == "llama3":
        # Llama 3.1: wavelengths above original_max / low_freq_factor are divided by `factor`, those
        # below original_max / high_freq_factor kept, and a linear ramp in 1/wavelength in between.
        old_len = rope.original_max_position_embeddings
        low_wavelen = old_len / rope.low_freq_factor
        high_wavelen = old_len / rope.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
        smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(is_medium, smoothed, scaled)
    return inv_freq


def rope_tables(
    rope: RopeConfig, head_dim: int, position_ids: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (batch, seq, head_dim), computed in fp32 and cast once to `dtype`.

    The angles must be fp32: building the table in bf16 moves bf16 logits by ~0.3. The models keep
    the tables in fp32: `apply_rope` casts them to the activations' dtype on the reference path, as
    transformers does, and the Triton kernel rotates in fp32 with one rounding at the end.
    """
    inv_freq = rope_inv_freq(rope, head_dim, device=position_ids.device)
    angles = position_ids[..., None].float() * inv_freq
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    window: int | None = None,
    document_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention with GQA, an optional sliding window and optional packed documents.

    (B, T, H, D) in and out. `document_ids` (B, T) gives each token's document within its row: a
    query never sees keys of another document. The models' single dispatch point into
    `minibridge.kernels.attention`: Triton or flash-attn on a GPU, SDPA on CPU (blockwise over the
    window for local layers); MINIBRIDGE_KERNEL_BACKEND=ref switches a whole run to the reference.
    """
    return kernel_attention(q, k, v, causal=True, window=window, scale=scale, document_ids=document_ids)


class Attention(nn.Module):
    """Self-attention with grouped KV heads. Local head counts come from tensor shapes, so a
    tensor-parallel pass can shard the projections without touching this code."""

    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        bias = config.attention_bias
        self.head_dim = d
        self.scale = config.attention_scale
        self.window = config.window_of(layer)
        self.recompute_core = False  # selective recomputation: keep no attention internals for backward
        self.core = attention  # the attention kernel; a context-parallel pass swaps in ring attention
        self.q_proj = nn.Linear(h, config.num_heads * d, bias=bias)
        self.k_proj = nn.Linear(h, config.num_kv_heads * d, bias=bias)
        self.v_proj = nn.Linear(h, config.num_kv_heads * d, bias=bias)
        self.o_proj = nn.Linear(config.num_heads * d, h, bias=bias)

    def normalize_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head transforms of q and k before RoPE: none here (Gemma 3 adds its q/k norms)."""
        return q, k

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], document_ids: torch.Tensor | None = None,
        kv_cache=None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, -1, self.head_dim)
        k = self.k_proj(x).view(B, T, -1, self.head_dim)
        v = self.v_proj(x).view(B, T, -1, self.head_dim)
        q, k = apply_rope(*self.normalize_qk(q, k), *rope)
        if kv_cache is not None:  # generation (models/kv_cache.py): attend over the cached positions too
            k, v, document_ids = kv_cache.update(k, v)
        if self.recompute_core and torch.is_grad_enabled():
            out = checkpoint(self.core, q, k, v, self.scale, self.window, document_ids, use_reentrant=False)
        else:
            out = self.core(q, k, v, self.scale, self.window, document_ids)
        return self.o_proj(out.reshape(B, T, -1))


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)): SwiGLU for Llama, GeGLU with the tanh GELU for Gemma."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        h, f, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(h, f, bias=bias)
        self.up_proj = nn.Linear(h, f, bias=bias)
        self.down_proj = nn.Linear(f, h, bias=bias)
        self.gelu = config.hidden_act == "gelu_pytorch_tanh"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate_proj(x)
        gate = F.gelu(gate, approximate="tanh") if self.gelu else F.silu(gate)
        return self.down_proj(gate * self.up_proj(x))
