"""Logits, loss and gradient parity with transformers on tiny models derived from every shipped config."""

import pytest
import torch

from hf_checkpoints import CONFIG_NAMES, load_hf
from minibridge import AutoBridge

GEMMA = [n for n in CONFIG_NAMES if n.startswith("gemma")]
T = 24  # longer than the tiny Gemma window (8): local and global layers both matter


def _pair(folder, dtype=torch.float32):
    model = AutoBridge.from_hf_pretrained(folder).to_model(dtype=dtype, progress=False)
    return model, load_hf(folder, dtype)


def _ids(vocab, batch=2, seq=T, seed=0):
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_logits_match_transformers_fp32(hf_checkpoint, name):
    model, hf = _pair(hf_checkpoint(name))
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        ours, ref = model(ids), hf(ids).logits
    assert ours.shape == ref.shape == (2, T, model.config.vocab_size)
    assert ref.abs().max() > 0.1  # the comparison is not between two near-zero tensors
    assert (ours - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", ["Llama-3.1-8B", "Llama-3.2-1B"])
def test_llama3_rope_scaling_beyond_2048_positions(hf_checkpoint, name):
    """llama3 scaling barely shows below ~2k positions: test positions 3000..3023 and 8190..8213."""
    model, hf = _pair(hf_checkpoint(name))
    ids = _ids(model.config.vocab_size, batch=1)
    for start in (3000, 8190):
        pos = torch.arange(start, start + T)[None]
        with torch.no_grad():
            ours, ref = model(ids, position_ids=pos), hf(ids, position_ids=pos).logits
        error = (ours - ref).abs().max().item()
        assert error <= 1e-4
    # and the scaling is really in play: without it these logits move far more than our error
    model.config = model.config.replace(rope=type(model.config.rope)(theta=model.config.rope.theta))
    with torch.no_grad():
        assert (model(ids, position_ids=pos) - ref).abs().max().item() > 100 * max(error, 1e-7)


def test_biases_and_untied_head(hf_checkpoint):
    folder = hf_checkpoint("Meta-Llama-3-8B", attention_bias=True, mlp_bias=True)
    model, hf = _pair(folder)
    assert model.layers["0"].attn.q_proj.bias is not None and model.layers["0"].mlp.up_proj.bias is not None
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", ["Llama-3.2-1B", "Llama-3.1-8B", *GEMMA])
def test_loss_and_every_gradient_match(hf_checkpoint, name):
    model, hf = _pair(hf_checkpoint(name))
    ids = _ids(model.config.vocab_size)
    labels = ids.clone()
    labels[0, :5] = -100  # ignored positions, as a prompt mask would leave them
    loss = model(ids, labels=labels)
    ref = hf(ids, labels=labels).loss
    assert abs(loss.item() - ref.item()) <= 1e-5
    loss.backward()
    ref.backward()
    bridge = AutoBridge.from_hf_pretrained(hf_checkpoint(name))
    hf_params = dict(hf.named_parameters())
    for local, param in model.named_parameters():
        hf_name = bridge.mapping.to_hf(local)
        if hf_name not in hf_params:  # transformers 5 renames the 4.x multimodal prefix on load
            hf_name = hf_name.replace("language_model.model.", "model.language_model.")
        hf_param = hf_params[hf_name]
        torch.testing.assert_close(param.grad, hf_param.grad, msg=lambda m: f"{local}: {m}")


@pytest.mark.parametrize("name", ["Llama-3.2-1B", "gemma-3-1b-it"])
def test_bf16_logits_close_to_transformers_bf16(hf_checkpoint, name):
    """bf16 against from_pretrained(dtype=bf16): same op order, so differences are sdpa-kernel ulps.

    We reach exact agreement in practice; the bound allows 2 bf16 ulps of the largest logit, the
    documented eager-vs-sdpa spread of transformers itself.
    """
    folder = hf_checkpoint(name, dtype=torch.bfloat16)
    model, hf = _pair(folder, torch.bfloat16)
    assert model.embed_tokens.weight.dtype == torch.bfloat16
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        ours, ref = model(ids).float(), hf(ids).logits.float()
    ulp = 2.0 ** (torch.floor(torch.log2(ref.abs().max())) - 7)
    assert (ours - ref).abs().max().item() <= 2 * ulp.item()
