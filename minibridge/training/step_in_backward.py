"""The optimizer step taken inside backward, one parameter at a time, so no step holds every gradient.

A research loop (`model(ids, labels=ids).backward(); optimizer.step()`) keeps a gradient for every
parameter until the step: with bf16 parameters and torch's AdamW that is 2 of its 8 bytes a parameter.
Stepping each parameter as soon as autograd has finished its gradient (torch's
`register_post_accumulate_grad_hook`), then dropping the gradient, keeps at most the gradients still
in flight, the technique of torch's tutorial "How to save memory by fusing the optimizer step into the
backward pass" and of torchtune's `optimizer_in_bwd`. Each parameter gets its own instance of the
optimizer class with the same settings, so the update is the one that class makes (bit for bit where
the class steps each tensor on its own, as torch's AdamW does on CPU by default).

A parameter larger than `slice_size` elements (the 262M-element embedding of a 128k vocabulary) is
stepped in pieces: one optimizer per contiguous slice of it, each a view of the parameter. torch's
default AdamW on CPU makes full-size temporaries of the parameter it steps (`exp_avg_sq.sqrt()`, its
quotient: 2 x 0.5 GB for that embedding in bf16); stepped a slice at a time they are 2 x 8 MiB. The
update of an elementwise optimizer (Adam, AdamW, SGD) does not depend on how the tensor is cut, so the
result is the same bit for bit (tests/training/test_step_in_backward.py); an optimizer that mixes the
elements of a tensor (Adafactor's factored moments, Muon's orthogonalisation) needs `slice_size=None`.
The slices are those of the precision-aware optimizer (minibridge.training.precision_aware.slices), not
its update: its fused fp32 kernel rounds differently from torch's default AdamW on bf16 parameters.

What it cannot do, by construction: clip by the global gradient norm (the norm is known only after the
last gradient, when the first parameters have already moved) or accumulate gradients over several
backward passes. The trainer (minibridge.training.loop) needs both and keeps MixedPrecisionAdamW.
"""

from __future__ import annotations

import torch

from .precision_aware import SLICE, slices


class StepInBackward:
    """`optimizer_class(**settings)` per parameter of `params` (per slice of `slice_size` elements of a larger
    one), stepped by backward itself; `step()` and `zero_grad()` are there for loops written for an ordinary
    optimizer and do nothing. `optimizers[param]` lists the optimizers of a parameter with the slice of its
    flattened elements each steps."""

    def __init__(self, params, optimizer_class=torch.optim.AdamW, slice_size: int | None = SLICE, **settings):
        self.optimizers: dict[torch.Tensor, list[tuple[slice, torch.optim.Optimizer]]] = {}
        self.handles = []
        for param in params:
            if param.requires_grad and param not in self.optimizers:  # a tied weight: one optimizer
                self.optimizers[param] = self._optimizers(param, optimizer_class, slice_size, settings)
                self.handles.append(param.register_post_accumulate_grad_hook(self._step))

    @staticmethod
    def _optimizers(param, optimizer_class, slice_size, settings) -> list:
        if slice_size is None or param.numel() <= slice_size or not param.is_contiguous():
            return [(slice(None), optimizer_class([param], **settings))]
        flat = param.detach().view(-1)  # views: stepping a slice moves the parameter's own elements
        return [(piece, optimizer_class([flat[piece]], **settings)) for piece in slices(flat.numel(), slice_size)]

    def _step(self, param: torch.Tensor) -> None:
        optimizers = self.optimizers[param]
        if len(optimizers) == 1:
            optimizers[0][1].step()
        else:
            grad = param.grad.reshape(-1)
            for piece, optimizer in optimizers:
                (view,) = optimizer.param_groups[0]["params"]
                view.grad = grad[piece]
                optimizer.step()
                view.grad = None
        param.grad = None

    def step(self) -> None:
        """Nothing left to do: every parameter stepped during backward."""

    def zero_grad(self) -> None:
        """Nothing to zero: every gradient was dropped once its parameter stepped."""

    def set_lr(self, lr: float) -> None:
        for optimizers in self.optimizers.values():
            for _, optimizer in optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = lr

    def remove(self) -> None:
        """Take the hooks off (the parameters then need an ordinary optimizer again)."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
