"""Llama 3 / 3.1 / 3.2 on the Hugging Face side (LlamaForCausalLM; the model is models/llama.py)."""

from __future__ import annotations

from ..family import Architecture, HFFamily, Key, register
from ..mappings import ATTENTION_ROWS, DECODER_ENDS, MLP_ROWS, layer_rows

FAMILY = register(HFFamily(
    name="llama",
    architectures=(Architecture("LlamaForCausalLM", "llama", "llama"),),
    # transformers' LlamaConfig defaults, for the keys a config.json may omit
    defaults=dict(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        hidden_act="silu", max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False,
        attention_bias=False, mlp_bias=False, rope_theta=10000.0,
    ),
    keys=(Key("hidden_act", "hidden_act", "activation"), Key("mlp_bias", "mlp_bias", "bool")),
    weights=tuple(DECODER_ENDS + layer_rows(
        [("attn_norm.weight", "input_layernorm.weight"), ("mlp_norm.weight", "post_attention_layernorm.weight")]
        + ATTENTION_ROWS + MLP_ROWS)),
))
