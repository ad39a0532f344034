"""flash-attn's test rule: a kernel's error against a high-precision oracle may be at most about twice
the error of the plain PyTorch reference run in the kernel's own (lower) precision."""

from __future__ import annotations

import torch


def max_error(x: torch.Tensor, oracle: torch.Tensor) -> float:
    return (x.double() - oracle.double()).abs().max().item()


def assert_flash_rule(name: str, out: torch.Tensor, ref_lowp: torch.Tensor, oracle: torch.Tensor,
                      factor: float = 2.0, floor: float = 1e-6) -> None:
    """out: the kernel; ref_lowp: `*_ref` in the same dtype as the kernel; oracle: `*_ref` in fp64.

    `floor` (relative to the oracle's largest magnitude) covers the case where the low-precision
    reference happens to be exact, e.g. fp32 inputs whose products are representable.
    """
    assert out.shape == oracle.shape, f"{name}: shape {tuple(out.shape)} != {tuple(oracle.shape)}"
    err, ref_err = max_error(out, oracle), max_error(ref_lowp, oracle)
    scale = max(1.0, oracle.abs().max().item())
    bound = factor * ref_err + floor * scale
    assert err <= bound, f"{name}: max error {err:.3e} > {factor} x reference error {ref_err:.3e} + {floor * scale:.1e}"
