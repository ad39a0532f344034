"""Megatron's precision-aware optimizer (minibridge.training.precision_aware): fp32 storage gives the
default path's bits, parameter remainders give its exact fp32 masters, lower-precision moments save
what they should, stochastic rounding keeps a bf16 second moment from stalling, and the settings are
checked as Megatron checks them."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minibridge.errors import ConfigError
from minibridge.recipes import build_config
from minibridge.training.optimizer import MixedPrecisionAdamW
from minibridge.training.precision_aware import (REMAINDER, Slot, StatePrecision, join_master, split_master,
                                                 update_slot)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-2**31, 2**31 - 1), min_size=1, max_size=64))
def test_remainders_hold_the_exact_fp32_master(words):
    master = torch.tensor(words, dtype=torch.int32).view(torch.float32)
    param = torch.empty(len(words), dtype=torch.bfloat16)
    remainder = torch.empty(len(words), dtype=torch.int16)
    split_master(master, param, remainder)
    assert torch.equal(join_master(param, remainder).view(torch.int32), master.view(torch.int32))
    finite = torch.isfinite(master) & torch.isfinite(param.float())
    nearest = master.to(torch.bfloat16)
    lower = master.view(torch.int32) & 0xFFFF
    differs = finite & (param.view(torch.int16) != nearest.view(torch.int16))
    assert bool((lower[differs] == 0x8000).all())  # only ties, which TE breaks away from zero


@pytest.fixture
def tiny(hf_checkpoint):
    return hf_checkpoint("Llama-3.2-1B")


def _model(folder):
    from minibridge import AutoBridge

    return AutoBridge.from_hf_pretrained(folder).to_model(dtype=torch.bfloat16, progress=False)


def _train(folder, precision, steps=4, clip=1.0):
    model = _model(folder)
    optimizer = MixedPrecisionAdamW(model, lr=1e-2, precision=precision)
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        model(ids, labels=ids).backward()
        optimizer.step(clip)
        optimizer.zero_grad()
    return model, optimizer


def _masters(optimizer):
    out = {}
    for name, state in optimizer.named_state().items():
        param = optimizer.params[name]
        if REMAINDER in state:
            out[name] = join_master(param.detach().reshape(-1), state[REMAINDER].reshape(-1))
        else:
            out[name] = state.get("master", param).detach().reshape(-1).float()
    return out


def test_fp32_storage_is_the_default_path_bit_for_bit_and_remainders_its_masters(tiny):
    base_model, base = _train(tiny, None)
    fp32_model, fp32 = _train(tiny, StatePrecision(store_param_remainders=False))
    for (name, p), q in zip(base_model.named_parameters(), fp32_model.parameters()):
        assert torch.equal(p, q), name
    assert all(torch.equal(base.inner.state[m]["exp_avg_sq"], fp32.inner.state[fp32.masters[n]]["exp_avg_sq"])
               for n, m in base.masters.items())
    # one step from the same start (a tie broken the other way changes every later gradient): masters as
    # remainders hold the default path's fp32 masters exactly, the parameters differ at ties only
    one_model, one = _train(tiny, None, steps=1)
    rem_model, rem = _train(tiny, StatePrecision(), steps=1)
    want, got = _masters(one), _masters(rem)
    assert all(torch.equal(want[n].view(torch.int32), got[n].view(torch.int32)) for n in want)
    for (name, p), q in zip(one_model.named_parameters(), rem_model.parameters()):
        lower = want[name].view(torch.int32) & 0xFFFF
        differs = p.reshape(-1).view(torch.int16) != q.reshape(-1).view(torch.int16)
        assert bool((lower[differs] == 0x8000).all()), name


def test_bf16_state_is_half_the_bytes_and_trains_like_fp32(tiny):
    full_model, full = _train(tiny, None, steps=6)
    low_model, low = _train(tiny, StatePrecision(main_grads_dtype="bf16", exp_avg_dtype="bf16",
                                                 exp_avg_sq_dtype="bf16"), steps=6)

    def state_bytes(opt):
        total = sum(p.main_grad.nbytes for p in opt.params.values())
        return total + sum(t.nbytes for s in opt.named_state().values() for k, t in s.items() if k != "step")

    n = sum(p.numel() for p in full.params.values())
    assert state_bytes(full) == 16 * n and state_bytes(low) == 8 * n  # main grad, master, m, v: 4+4+4+4 -> 2+2+2+2
    for (name, p), q in zip(full_model.named_parameters(), low_model.parameters()):
        assert (p.float() - q.float()).abs().max() <= 0.05 * p.float().abs().max() + 1e-3, name


def _second_moment_after(rounding: str, steps: int = 300) -> float:
    """A bf16 second moment fed g = 0 after g = 1: fp32 decays to 0.999**steps; nearest stalls at 1."""
    n = 4096
    precision = StatePrecision(exp_avg_dtype="bf16", exp_avg_sq_dtype="bf16", moment_rounding=rounding)
    param = torch.zeros(n)
    state = {"step": torch.tensor(0.0), "exp_avg": torch.zeros(n, dtype=torch.bfloat16),
             "exp_avg_sq": torch.ones(n, dtype=torch.bfloat16)}
    hyper = dict(lr=0.0, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8)
    for _ in range(steps):
        state["step"] += 1
        update_slot(Slot(param, None, None, state, seed=7), torch.zeros(n), hyper, 1.0, precision)
    return state["exp_avg_sq"].float().mean().item()


def test_stochastic_rounding_keeps_a_bf16_second_moment_from_stalling():
    exact = 0.999 ** 300
    assert _second_moment_after("nearest") == 1.0  # 0.999 is within half a bf16 step of 1: never moves
    assert abs(_second_moment_after("stochastic") - exact) < 0.01 * exact
    assert _second_moment_after("stochastic") == _second_moment_after("stochastic")  # seeded: resumes draw alike


BASE = ["train.train_iters=10", "model.vocab_size=256"]


@pytest.mark.parametrize("overrides,message", [
    (["optimizer.exp_avg_dtype=bf16"], "needs optimizer.use_precision_aware_optimizer=true"),
    (["optimizer.use_precision_aware_optimizer=true", "optimizer.exp_avg_dtype=fp8"], "per-tensor scaling"),
    (["optimizer.use_precision_aware_optimizer=true", "optimizer.main_params_dtype=fp16"], "main_params_dtype"),
    (["optimizer.use_precision_aware_optimizer=true", "optimizer.exp_avg_sq_dtype=half"], "exp_avg_sq_dtype='half'"),
    (["optimizer.use_precision_aware_optimizer=true", "optimizer.main_grads_dtype=bf16",
      "dist.use_torch_fsdp2=true"], "FSDP2 reduces gradients"),
])
def test_settings_are_checked_as_megatron_checks_them(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config("llama3_debug_pretrain_config", overrides=BASE + overrides)


def test_megatron_bridge_dtype_spellings_are_accepted():
    cfg = build_config("llama3_debug_pretrain_config", overrides=BASE + [
        "optimizer.use_precision_aware_optimizer=true", "optimizer.exp_avg_dtype=torch.bfloat16",
        "optimizer.exp_avg_sq_dtype=bfloat16", "optimizer.main_grads_dtype=bf16"])
    assert cfg.optimizer.state_precision() == StatePrecision(
        main_grads_dtype="bf16", exp_avg_dtype="bf16", exp_avg_sq_dtype="bf16")
