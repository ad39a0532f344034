"""Gemma 3 text models on the Hugging Face side (Gemma3ForCausalLM, and the text part of the multimodal
Gemma3ForConditionalGeneration; the model is models/gemma3.py).

Beyond the decoder's common keys: the activation under its Gemma name (`hidden_activation`), the
attention scale (`query_pre_attn_scalar`), the layer pattern (5.x `layer_types` or 4.x
`sliding_window_pattern`: layer i is global when (i + 1) % pattern == 0), the window, and the local
layers' RoPE (`rope_local_base_freq`, never scaled). Soft-capping and bidirectional attention, which
Gemma 3 does not use, are refused.
"""

from __future__ import annotations

from ...errors import UnsupportedModelError
from ...models.config import ACTIVATIONS, FULL, SLIDING
from ..family import Architecture, HFFamily, register
from ..json_checks import REQUIRED
from ..mappings import ATTENTION_ROWS, DECODER_ENDS, MLP_ROWS, layer_rows


def read(text, values: dict, defaults: dict, rope_from, rope_params) -> dict:
    """The Gemma-specific ModelConfig fields of a (text) config."""
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if text.obj.get(key) is not None:
            text.fail(key, text.obj[key], "null (Gemma 3 has no softcapping; it is not supported)",
                      UnsupportedModelError)
    if text.bool("use_bidirectional_attention", False, null="default"):
        text.fail("use_bidirectional_attention", True, "false (bidirectional attention is not supported)",
                  UnsupportedModelError)
    layers = values["num_layers"]
    layer_types = text.strings("layer_types", None, choices=(FULL, SLIDING), null="default")
    if layer_types is None:
        pattern = text.int("sliding_window_pattern", defaults["sliding_window_pattern"])
        layer_types = [SLIDING if (i + 1) % pattern else FULL for i in range(layers)]
    elif len(layer_types) != layers:
        text.fail("layer_types", layer_types, f"{layers} entries, one per layer (num_hidden_layers={layers})")
    window = text.int("sliding_window", defaults["sliding_window"], null="keep")
    if window is None and SLIDING in layer_types:
        text.fail("sliding_window", window, "a positive integer (the config has sliding_attention layers)")
    activation = text.string("hidden_activation", defaults["hidden_activation"], ACTIVATIONS, null="keep")
    # Local layers: base `rope_local_base_freq`, never scaled (scaling applies to global layers only).
    local = rope_from(rope_params.get(SLIDING), text.number("rope_local_base_freq", defaults["rope_local_base_freq"]))
    return dict(hidden_act=activation or text.string("hidden_act", REQUIRED, ACTIVATIONS), rope_local=local,
                layer_types=tuple(layer_types), sliding_window=window,
                query_pre_attn_scalar=text.number("query_pre_attn_scalar", defaults["query_pre_attn_scalar"]))


def write(config) -> dict:
    return dict(
        hidden_activation=config.hidden_act, rope_local_base_freq=(config.rope_local or config.rope).theta,
        layer_types=list(config.layer_types), sliding_window=config.sliding_window,
        query_pre_attn_scalar=config.query_pre_attn_scalar or config.head_dim,
    )


FAMILY = register(HFFamily(
    name="gemma3",
    architectures=(
        Architecture("Gemma3ForCausalLM", "gemma3", "gemma3_text"),
        # transformers 5.x writes `model.language_model.`; 4.x checkpoints use `language_model.model.`.
        Architecture("Gemma3ForConditionalGeneration", "gemma3", "gemma3",
                     text_prefixes=("model.language_model.", "language_model.model."),
                     head_prefixes=("", "language_model."), multimodal=True),
    ),
    # transformers' Gemma3TextConfig defaults (the gemma-3-4b config relies on most of them)
    defaults=dict(
        vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
        num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh", max_position_embeddings=131072,
        rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=False, query_pre_attn_scalar=256, pad_token_id=0,
        sliding_window=4096, sliding_window_pattern=6, rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
    ),
    weights=tuple(DECODER_ENDS + layer_rows([
        ("attn_norm.weight", "input_layernorm.weight"),
        ("post_attn_norm.weight", "post_attention_layernorm.weight"),
        ("mlp_norm.weight", "pre_feedforward_layernorm.weight"),
        ("post_mlp_norm.weight", "post_feedforward_layernorm.weight"),
        ("attn.q_norm.weight", "self_attn.q_norm.weight"),
        ("attn.k_norm.weight", "self_attn.k_norm.weight"),
    ] + ATTENTION_ROWS + MLP_ROWS)),
    read=read,
    write=write,
))
