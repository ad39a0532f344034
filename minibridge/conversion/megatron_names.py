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
