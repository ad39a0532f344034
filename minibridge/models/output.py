"""The output layer and the language-model loss.

`OutputHead` is the plain form: logits = hidden @ W^T, then HF's cross entropy on fp32 logits.
`ChunkedOutputHead` fuses the output layer with the loss and walks over the tokens in chunks,
computing each chunk's gradients during the forward pass, so the (tokens x vocab) logits never
exist at once: with Gemma's 262,144-token vocabulary, 8,192 tokens of fp32 logits would be 8.6 GB.
A parallel pass swaps in a vocab-sharded head (minibridge.parallel.tensor.VocabParallelHead).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
FEW_ROWS = 16  # OutputHead.logits: up to this many rows take the weight-streaming product on CPU


def shift_labels(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The targets of HF-convention labels (aligned with the inputs): position t predicts labels[t + 1].
    The one place labels are shifted: `CausalLM.forward` for its HF form, the trainer for its batches
    (before a context-parallel split, so a chunk's last token targets the next chunk's first)."""
    return F.pad(labels, (0, 1), value=ignore_index)[..., 1:]


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"):
    """Next-token cross entropy on fp32 logits, as transformers' ForCausalLMLoss; "sum" for token sums."""
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction=reduction
    )


class OutputHead:
    """How final hidden states become logits and the loss."""

    def logits(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        rows = hidden.numel() // hidden.shape[-1]
        if 1 < rows <= FEW_ROWS and hidden.device.type == "cpu" and weight.dtype == torch.float32:
            # A batch of decode steps: torch's fp32 CPU GEMM runs a few rows against the (vocab, hidden)
            # weight about as one matrix-vector product each (4 rows ~4x the time of one), while
            # weight @ hidden^T streams the weight once: 3.5x faster for 4 rows of Gemma's 262k x 1152.
            flat = hidden.reshape(rows, hidden.shape[-1])
            return (weight @ flat.t()).t().reshape(*hidden.shape[:-1], weight.shape[0])
        return F.linear(hidden, weight)

    def loss(self, hidden, weight, targets, reduction: str = "mean"):
        return causal_lm_loss(F.linear(hidden, weight), targets, reduction)


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Sum of token losses of softmax(hidden @ W^T); gradients computed chunk by chunk in forward.

    Per chunk, the logits are computed in the model dtype and upcast to fp32, exactly as
    transformers does for the whole tensor, so the loss matches to summation order.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_tokens):
        grad_hidden = torch.zeros_like(hidden)
        need_weight = ctx.needs_input_grad[1]  # False for a frozen output layer (LoRA / DoRA)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        need_grad = ctx.needs_input_grad[0] or need_weight
        for start in range(0, hidden.shape[0], chunk_tokens):
            h, t = hidden[start : start + chunk_tokens], targets[start : start + chunk_tokens]
            logits = F.linear(h, weight).float()
            valid = t != IGNORE_INDEX
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, t.clamp(min=0)[:, None]).squeeze(1)
            total += ((lse - picked) * valid).sum()
            if need_grad:
                grad_logits = torch.softmax(logits, dim=-1)  # d loss / d logits = softmax - one_hot
                grad_logits[torch.arange(len(t), device=t.device), t.clamp(min=0)] -= 1.0
                grad_logits *= valid[:, None]
                grad_hidden[start : start + chunk_tokens] = (grad_logits.to(weight.dtype) @ weight).to(hidden.dtype)
                if need_weight:
                    grad_weight.addmm_(grad_logits.t(), h.float())
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype) if need_weight else None)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        # Scaled in place and handed over: autograd then adopts them as .grad without another copy
        # (the weight gradient alone is vocab x hidden, 1.2 GB in fp32 for Gemma 3 1B).
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad_total.to(grad_weight.dtype))
        return grad_hidden.mul_(grad_total.to(grad_hidden.dtype)), grad_weight, None, None


class ChunkedOutputHead(OutputHead):
    """Output layer + loss over `chunk_tokens` tokens at a time (logits are never held in full)."""

    def __init__(self, chunk_tokens: int = 2048):
        self.chunk_tokens = chunk_tokens

    def loss(self, hidden, weight, targets, reduction: str = "mean"):
        targets = targets.reshape(-1)
        total = _FusedLinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets, self.chunk_tokens)
        return total if reduction == "sum" else total / (targets != IGNORE_INDEX).sum()
