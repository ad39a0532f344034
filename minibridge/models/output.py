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
LOSS_CHUNK_BYTES = 128 * 2**20  # fp32 logits the fused output layer + loss holds at once (per chunk)


def chunk_tokens(vocab_size: int, budget_bytes: int = LOSS_CHUNK_BYTES) -> int:
    """Tokens per chunk of the fused loss so that a chunk's fp32 logits take `budget_bytes`."""
    return max(1, budget_bytes // (4 * vocab_size))


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
    transformers does for the whole tensor, so the loss matches to summation order. The weight
    gradient is accumulated in the weight's dtype with the chunk products in that dtype, as
    transformers' one (tokens x vocab) product does: for bf16 every matmul is a bf16 one (~4x the fp32
    rate on AVX-512 BF16 CPUs) and no fp32 (vocab x hidden) buffer exists (1.2 GB for Gemma 3 1B);
    the price is one bf16 rounding of the running sum per chunk. Every chunk reuses the first chunk's
    two logits buffers (model dtype and fp32): no allocation, and on CPU no page faults, per chunk.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_tokens):
        need_weight = ctx.needs_input_grad[1]  # False for a frozen output layer (LoRA / DoRA)
        need_grad = ctx.needs_input_grad[0] or need_weight
        grad_hidden = torch.zeros_like(hidden) if need_grad else None
        grad_weight = torch.zeros_like(weight) if need_weight else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        rows = min(chunk_tokens, hidden.shape[0])
        logits_low = torch.empty(rows, weight.shape[0], dtype=weight.dtype, device=weight.device)
        logits_fp32 = logits_low if weight.dtype == torch.float32 else torch.empty_like(logits_low, dtype=torch.float32)
        all_valid = bool((targets != IGNORE_INDEX).all())  # one host sync per call, not one per chunk
        for start in range(0, hidden.shape[0], chunk_tokens):
            h, t = hidden[start : start + chunk_tokens].to(weight.dtype), targets[start : start + chunk_tokens]
            low, logits = logits_low[: len(t)], logits_fp32[: len(t)]
            torch.mm(h, weight.t(), out=low)  # F.linear's product
            if logits is not low:
                logits.copy_(low)
            valid = t != IGNORE_INDEX
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, t.clamp(min=0)[:, None]).squeeze(1)
            total += ((lse - picked) * valid).sum()
            if need_grad:  # d loss / d logits = softmax - one_hot, built in the logits' own buffer
                grad_logits = logits.sub_(lse[:, None]).exp_()
                grad_logits[torch.arange(len(t), device=t.device), t.clamp(min=0)] -= 1.0
                if not all_valid:  # a pass over the chunk only where targets are ignored
                    grad_logits *= valid[:, None]
                if grad_logits is not low:
                    grad_logits = low.copy_(grad_logits)  # rounded to the weight's dtype, in its buffer
                grad_hidden[start : start + chunk_tokens] = (grad_logits @ weight).to(hidden.dtype)
                if need_weight:
                    grad_weight.addmm_(grad_logits.t(), h)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.main_grad = getattr(weight, "main_grad", None) if need_weight else None
        return total

    @staticmethod
    def backward(ctx, grad_total):
        # Scaled in place and handed over: autograd then adopts them as .grad without another copy.
        # Under mixed precision the weight gradient goes straight into the fp32 `main_grad` and is
        # freed here, at the start of backward, instead of living through it (0.6 GB in bf16 for Gemma 3 1B).
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad_total.to(grad_weight.dtype))
            if ctx.main_grad is not None:
                ctx.main_grad.add_(grad_weight)
                grad_weight = None
        ctx.main_grad = None
        return grad_hidden.mul_(grad_total.to(grad_hidden.dtype)), grad_weight, None, None


class ChunkedOutputHead(OutputHead):
    """Output layer + loss over `chunk_tokens` tokens at a time (logits are never held in full)."""

    def __init__(self, chunk_tokens: int = 2048):
        self.chunk_tokens = chunk_tokens

    def loss(self, hidden, weight, targets, reduction: str = "mean"):
        targets = targets.reshape(-1)
        hidden = hidden.reshape(-1, hidden.shape[-1])
        if torch.is_grad_enabled():
            total = _FusedLinearCrossEntropy.apply(hidden, weight, targets, self.chunk_tokens)
        else:  # evaluation: the same chunks, without the gradients the fused form computes on the way
            total = sum(causal_lm_loss(F.linear(hidden[s : s + self.chunk_tokens], weight),
                                       targets[s : s + self.chunk_tokens], "sum")
                        for s in range(0, hidden.shape[0], self.chunk_tokens))
        return total if reduction == "sum" else total / (targets != IGNORE_INDEX).sum()
