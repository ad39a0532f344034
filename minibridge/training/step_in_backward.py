"""The optimizer step taken inside backward, one parameter at a time, so no step holds every gradient.

A research loop (`model(ids, labels=ids).backward(); optimizer.step()`) keeps a gradient for every
parameter until the step: with bf16 parameters and torch's AdamW that is 2 of its 8 bytes a parameter.
Stepping each parameter as soon as autograd has finished its gradient (torch's
`register_post_accumulate_grad_hook`), then dropping the gradient, keeps at most the gradients still
in flight, the technique of torch's tutorial "How to save memory by fusing the optimizer step into the
backward pass" and of torchtune's `optimizer_in_bwd`. Each parameter gets its own instance of the
optimizer class with the same settings, so the update is the one that class makes (bit for bit where
the class steps each tensor on its own, as torch's AdamW does on CPU by default).

What it cannot do, by construction: clip by the global gradient norm (the norm is known only after the
last gradient, when the first parameters have already moved) or accumulate gradients over several
backward passes. The trainer (minibridge.training.loop) needs both and keeps MixedPrecisionAdamW.
"""

from __future__ import annotations

import torch


class StepInBackward:
    """`optimizer_class(**settings)` per parameter of `params`, stepped by backward itself; `step()` and
    `zero_grad()` are there for loops written for an ordinary optimizer and do nothing."""

    def __init__(self, params, optimizer_class=torch.optim.AdamW, **settings):
        self.optimizers: dict[torch.Tensor, torch.optim.Optimizer] = {}
        self.handles = []
        for param in params:
            if param.requires_grad and param not in self.optimizers:  # a tied weight: one optimizer
                self.optimizers[param] = optimizer_class([param], **settings)
                self.handles.append(param.register_post_accumulate_grad_hook(self._step))

    def _step(self, param: torch.Tensor) -> None:
        self.optimizers[param].step()
        param.grad = None

    def step(self) -> None:
        """Nothing left to do: every parameter stepped during backward."""

    def zero_grad(self) -> None:
        """Nothing to zero: every gradient was dropped once its parameter stepped."""

    def set_lr(self, lr: float) -> None:
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = lr

    def remove(self) -> None:
        """Take the hooks off (the parameters then need an ordinary optimizer again)."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
