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
from minibridge.memory import release_freed_memory

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


class _TableLookup(torch.autograd.Function):
    """F.embedding that also hands the table on to the tied output layer, so that both gradients meet
    in this one backward: the output layer's dense gradient arrives as `grad_table` and the looked-up
    rows are added into it in place. The stock path builds a dense, zero-filled (vocab x hidden)
    gradient for the lookup and autograd then adds the two: 302M elements each for Gemma 3 1B.
    Without a tied output layer the rows go straight into mixed precision's fp32 `main_grad` when the
    parameter has one (training.optimizer), else into a dense gradient as the stock backward does.
    Rows of `padding_idx` get no gradient, as transformers' nn.Embedding(padding_idx=...).
    This backward is the model's last: on CPU it hands the heap pages the freed activations held back
    to the OS (minibridge.memory.release_freed_memory), so the optimizer step that follows starts low."""

    @staticmethod
    def forward(ctx, ids, table, padding_idx):
        ctx.set_materialize_grads(False)  # an unused table output's gradient stays None, not dense zeros
        ctx.save_for_backward(ids)
        ctx.table, ctx.padding_idx = table, padding_idx
        return F.embedding(ids, table, padding_idx), table.view(table.shape)

    @staticmethod
    def backward(ctx, grad_hidden, grad_table):
        grads = _TableLookup.gradients(ctx, grad_hidden, grad_table)
        if ctx.table.device.type == "cpu":
            release_freed_memory()
        return grads

    @staticmethod
    def gradients(ctx, grad_hidden, grad_table):
        (ids,) = ctx.saved_tensors
        if grad_hidden is None:  # the embeddings did not reach the loss: only the output layer's gradient
            return None, grad_table, None
        ids, rows = ids.reshape(-1), grad_hidden.reshape(-1, grad_hidden.shape[-1])
        if ctx.padding_idx is not None:
            keep = ids != ctx.padding_idx
            ids, rows = ids[keep], rows[keep]
        table = ctx.table
        if grad_table is None:  # no tied output layer read the table in this graph
            main_grad = getattr(table, "main_grad", None)
            if main_grad is not None:
                main_grad.index_add_(0, ids, rows.to(main_grad.dtype))
                return None, None, None
            grad_table = torch.zeros_like(table)
        grad_table = grad_table.contiguous()
        return None, grad_table.index_add_(0, ids, rows.to(grad_table.dtype)), None


def lookup(ids: torch.Tensor, table: torch.Tensor, padding_idx: int | None = None):
    """(embeddings, the table as the tied output layer should read it; None without a gradient to
    route, when the parameter itself serves) with _TableLookup's backward."""
    if not (torch.is_grad_enabled() and table.requires_grad):
        return F.embedding(ids, table, padding_idx), None
    hidden, view = _TableLookup.apply(ids, table, padding_idx)
    if hasattr(table, "main_grad"):  # the fused loss adds the output layer's gradient into it directly
        view.main_grad = table.main_grad
    return hidden, view


class Embedding(nn.Embedding):
    """nn.Embedding (same parameters and initialisation) whose backward never builds a dense zero
    gradient (see _TableLookup); `lookup` also returns the table for a tied output layer."""

    def lookup(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return lookup(input_ids, self.weight, self.padding_idx)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lookup(input_ids)[0]


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


class _GatedProduct(torch.autograd.Function):
    """act(gate) * up that keeps only gate and up for backward and recomputes act(gate) there.
    Autograd of the two ops also keeps act(gate): one (tokens x intermediate) tensor per layer, 56 MB
    for Gemma 3 1B at 4096 tokens. The backward runs the ops autograd runs (mul, then the activation's
    own backward kernel), so the gradients are bit-identical."""

    @staticmethod
    def forward(ctx, gate, up, gelu):
        ctx.save_for_backward(gate, up)
        ctx.gelu = gelu
        return _activation(gate, gelu).mul_(up)

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        grad_up = grad * _activation(gate, ctx.gelu) if ctx.needs_input_grad[1] else None
        grad_act = grad * up
        if ctx.gelu:
            grad_gate = torch.ops.aten.gelu_backward(grad_act, gate, approximate="tanh")
        else:
            grad_gate = torch.ops.aten.silu_backward(grad_act, gate)
        return grad_gate, grad_up, None


def _activation(gate: torch.Tensor, gelu: bool) -> torch.Tensor:
    return F.gelu(gate, approximate="tanh") if gelu else F.silu(gate)


def gated_product(gate: torch.Tensor, up: torch.Tensor, gelu: bool) -> torch.Tensor:
    """act(gate) * up (GeGLU's tanh GELU or SwiGLU's SiLU), lean in memory under autograd."""
    if torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad):
        return _GatedProduct.apply(gate, up, gelu)
    return _activation(gate, gelu) * up


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
        return self.down_proj(gated_product(self.gate_proj(x), self.up_proj(x), self.gelu))
