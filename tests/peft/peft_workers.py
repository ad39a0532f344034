"""Rank-side checks of tensor-parallel adapters against the single-process model (fp32)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from peft_helpers import batch, randomize_adapters
from spawn import check_each

from minibridge import AutoBridge
from minibridge.parallel import ParallelConfig, finalize_grads, initialize
from minibridge.parallel.sharding import take_block
from minibridge.peft import adapter_parameters, apply_peft, merge_peft

PEFT = dict(rank=4, alpha=8, seed=3)


def _close(got, want, what):
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=lambda m: f"{what}: {m}")


def check_tp(folder, scheme, tp, sequence_parallel, out_dir):
    """Fresh adapters are the single-process ones cut to blocks; with random values, logits, loss,
    every adapter gradient, the HF adapter files (export and import) and the merged weights match
    one process."""
    bridge = AutoBridge.from_hf_pretrained(folder)
    ids = batch(bridge.config.vocab_size, (2, 16))
    ref = apply_peft(bridge.to_model(dtype=torch.float32, progress=False), scheme, **PEFT)
    fresh = {n: p.detach().clone() for n, p in adapter_parameters(ref).items()}
    randomize_adapters(ref)
    with torch.no_grad():
        ref_logits = ref(ids)
    ref_loss = ref(ids, labels=ids)
    ref_loss.backward()

    dims = initialize(ParallelConfig(tp=tp, sequence_parallel=sequence_parallel))
    model = apply_peft(bridge.to_model(parallel=dims, dtype=torch.float32, progress=False), scheme, **PEFT)
    specs = model.sharding.specs
    adapters = adapter_parameters(model)
    assert set(adapters) == set(fresh)
    for name, p in adapters.items():
        _close(p, take_block(fresh[name], specs.get(name)), f"initial {name}")
    randomize_adapters(model)
    with torch.no_grad():
        _close(model(ids), ref_logits, "logits")
    loss = model(ids, labels=ids)
    _close(loss, ref_loss, "loss")
    loss.backward()
    finalize_grads(model, dims)
    for name, p in model.named_parameters():
        if name in adapters:
            _close(p.grad, take_block(ref.get_parameter(name).grad, specs.get(name)), f"grad of {name}")
        else:
            assert p.grad is None, f"{name} is frozen but has a gradient"
    tag = f"{scheme}-{tp}-{sequence_parallel}"
    bridge.save_hf_adapter(model, f"{out_dir}/tp-{tag}")
    if dims.rank == 0:
        bridge.save_hf_adapter(ref, f"{out_dir}/single-{tag}")
    dist.barrier()
    fresh = bridge.to_model(parallel=dims, dtype=torch.float32, progress=False)
    imported = adapter_parameters(bridge.load_hf_adapter(fresh, f"{out_dir}/single-{tag}"))
    for name, p in adapters.items():  # an imported adapter lands in this rank's blocks
        assert torch.equal(imported[name], p), name
    merge_peft(model)
    merge_peft(ref)
    for (name, got), (ref_name, want) in zip(bridge.export_hf_weights(model), bridge.export_hf_weights(ref)):
        assert name == ref_name
        _close(got, want, f"merged {name}")
    dist.barrier()


def check_pp_export_and_import(folder, out_dir):
    """Under pp=2 each rank holds half the adapters: the exported folder is the single-process one,
    and an imported adapter lands on the right stage."""
    bridge = AutoBridge.from_hf_pretrained(folder)
    dims = initialize(ParallelConfig(pp=2, pipeline_layout=(4, 3)))  # tiny Gemma: 7 layers
    chunk = apply_peft(bridge.to_model(parallel=dims, dtype=torch.float32, progress=False), "dora", **PEFT)
    randomize_adapters(chunk)
    bridge.save_hf_adapter(chunk, f"{out_dir}/tp-pp")
    if dims.rank == 0:
        ref = apply_peft(bridge.to_model(dtype=torch.float32, progress=False), "dora", **PEFT)
        randomize_adapters(ref)
        bridge.save_hf_adapter(ref, f"{out_dir}/single-pp")
    dist.barrier()
    fresh = bridge.to_model(parallel=dims, dtype=torch.float32, progress=False)
    again = bridge.load_hf_adapter(fresh, f"{out_dir}/single-pp")
    mine = adapter_parameters(chunk)
    assert mine and adapter_parameters(again).keys() == mine.keys()
    for name, p in adapter_parameters(again).items():
        assert torch.equal(p, mine[name]), name


def check_tp_cases(cases, pp_case=None):
    check_each(check_tp, cases)
    if pp_case is not None:
        check_pp_export_and_import(**pp_case)
