"""Megatron-Core parameter names of the decoder families, as data: one table per family.

Each row pairs a minibridge parameter (`{i}`: the layer index) with a Megatron key and how the tensor
sits in it. Megatron stacks a layer's tensors under one key with a leading layer axis
(`decoder.layers.<suffix>`, `[L, ...]`, one chunk per layer); older writers and Megatron-LM's
non-homogeneous layers use `decoder.layers.<i>.<suffix>`. Kinds:

    whole   the tensor itself
    vocab   the first vocab_size rows (the stored embedding may be padded: make_vocab_size_divisible_by)
    q/k/v   rows of linear_qkv, interleaved per KV group: [q rows of the group's heads; k; v] per group
    gate/up the halves of linear_fc1 ([gate; up])

Keys use Transformer Engine's names even from Megatron-Core's local spec (the norms fused into the next
linear: `linear_qkv.layer_norm_weight`, `linear_fc1.layer_norm_weight`); `ALIASES` gives the local
spec's own module names, read when a checkpoint holds those instead. Gemma's norms are stored as HF
stores them (zero-centred weights), so no value changes here.
"""

from __future__ import annotations

import torch

LAYER_PREFIX = "decoder.layers."

COMMON = [
    ("embed_tokens.weight", "embedding.word_embeddings.weight", "vocab"),
    ("norm.weight", "decoder.final_layernorm.weight", "whole"),
    ("lm_head.weight", "output_layer.weight", "vocab"),  # absent when tied
]
LAYER = [
    ("attn_norm.weight", "self_attention.linear_qkv.layer_norm_weight", "whole"),
    *[(f"attn.{p}_proj.{t}", f"self_attention.linear_qkv.{t}", p) for p in "qkv" for t in ("weight", "bias")],
    ("attn.o_proj.weight", "self_attention.linear_proj.weight", "whole"),
    ("attn.o_proj.bias", "self_attention.linear_proj.bias", "whole"),
    ("mlp_norm.weight", "mlp.linear_fc1.layer_norm_weight", "whole"),
    *[(f"mlp.{p}_proj.{t}", f"mlp.linear_fc1.{t}", p) for p in ("gate", "up") for t in ("weight", "bias")],
    ("mlp.down_proj.weight", "mlp.linear_fc2.weight", "whole"),
    ("mlp.down_proj.bias", "mlp.linear_fc2.bias", "whole"),
]
GEMMA3_LAYER = [
    ("attn.q_norm.weight", "self_attention.q_layernorm.weight", "whole"),
    ("attn.k_norm.weight", "self_attention.k_layernorm.weight", "whole"),
    ("post_attn_norm.weight", "self_attention.linear_proj.post_layernorm.weight", "whole"),
    ("post_mlp_norm.weight", "mlp.linear_fc2.post_layernorm.weight", "whole"),
]
TABLES = {
    "llama": COMMON + [(f"layers.{{i}}.{a}", LAYER_PREFIX + b, k) for a, b, k in LAYER],
    "gemma3": COMMON + [(f"layers.{{i}}.{a}", LAYER_PREFIX + b, k) for a, b, k in LAYER + GEMMA3_LAYER],
}
# the local spec's module names for the TE-fused norms
ALIASES = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
}
# modules whose `_extra_state` (Transformer Engine's FP8 state; None without it) Megatron-Core stores per
# layer as a pickled item `<key>._extra_state/shard_<l>_<L>`: its four linears
EXTRA_STATE = ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1", "mlp.linear_fc2")


def qkv_slots(config) -> dict[str, tuple[int, int]]:
    """Rows of one KV group of linear_qkv, in heads of head_dim: [q rows of the group's heads; k; v]."""
    per = config.num_heads // config.num_kv_heads
    return {"q": (0, per), "k": (per, per + 1), "v": (per + 1, per + 2)}


def fuse_qkv(parts: dict[str, torch.Tensor], config) -> torch.Tensor:
    """linear_qkv's rows (weight or bias) of one layer from q, k and v, interleaved per KV group."""
    groups = [parts[kind].reshape(config.num_kv_heads, -1, *parts[kind].shape[1:]) for kind in qkv_slots(config)]
    return torch.cat(groups, dim=1).reshape(-1, *parts["q"].shape[1:])


def split_qkv(fused: torch.Tensor, config, kind: str) -> torch.Tensor:
    """The q, k or v rows of one layer's linear_qkv (the inverse of fuse_qkv)."""
    start, stop = qkv_slots(config)[kind]
    per = qkv_slots(config)["v"][1]
    grouped = fused.reshape(config.num_kv_heads, per * config.head_dim, *fused.shape[1:])
    return grouped[:, start * config.head_dim: stop * config.head_dim].reshape(-1, *fused.shape[1:])
