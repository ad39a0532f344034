"""The Triton kernels as torch custom operators: `torch.ops.minibridge.*`.

Each Triton path (RMSNorm, RoPE, attention forward and backward) is one `torch.library.custom_op` with a
fake implementation (`register_fake`: output shapes, dtypes and strides, no launch) and, for the
forward ops, a registered autograd formula (`register_autograd`) whose backward is itself a custom op.
So `torch.compile(model)` keeps each kernel as one node of its graph instead of breaking the graph at
a raw kernel launch, AOTAutograd traces forward and backward on fake tensors, and a model runs on
`meta` tensors. The ops live beside their kernels (rms_norm.py, rope.py, attention_triton.py); this
file only names them.

| op                                      | returns                         | backward                   |
|-----------------------------------------|---------------------------------|----------------------------|
| rms_norm_triton(x, w, eps, gemma)       | y (like x), rstd (rows,) fp32   | rms_norm_triton_backward   |
| rope_triton(q, k, cos, sin, backward)   | rotated q, k (contiguous)       | rope_triton, flag flipped  |
| attention_triton(q, k, v, causal, window, scale, document_ids) | out, lse (B, H, Tq) fp32 | attention_triton_backward |

Why `custom_op` and not `torch.library.triton_op`: triton_op registers the op's body as its own fake
implementation and, under AOTAutograd, inlines that body so the compiler sees the kernels. Under
TRITON_INTERPRET=1 (how every kernel is tested on CPU) `wrap_triton` hands back the interpreted kernel
itself, which would then run on fake tensors, so the path the GPU takes could not be tested here. The
kernels are already fused units (inductor gains nothing by looking inside), so an opaque op costs
nothing on a GPU, and one registration serves the GPU and the interpreter. All of `custom_op`,
`register_fake`, `register_autograd` and `torch.library.opcheck` exist since torch 2.4 (2.11 on the
lent GPU machines, 2.13 here). Outputs are bit-identical to calling the host functions directly
(tests/kernels/test_custom_ops.py).
"""

from __future__ import annotations

from typing import Callable

import torch

NAMESPACE = "minibridge"
OPS: dict[str, torch.library.CustomOpDef] = {}  # short name -> op, in registration order


def kernel_op(name: str) -> Callable[[Callable], torch.library.CustomOpDef]:
    """Register the decorated function as the functional op `minibridge::name` (no input mutated)."""

    def register(fn: Callable) -> torch.library.CustomOpDef:
        op = torch.library.custom_op(f"{NAMESPACE}::{name}", mutates_args=())(fn)
        OPS[name] = op
        return op

    return register


__all__ = ["NAMESPACE", "OPS", "kernel_op"]
