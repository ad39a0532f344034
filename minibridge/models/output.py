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
# The fused output layer + loss holds one chunk of logits in the output layer's dtype at a time, and
# runs the three products of the output layer (logits, d hidden, d weight) once per chunk; each one
# streams the whole (vocab x hidden) weight, and the weight gradient is read and written once more per
# chunk. So chunks are large, and the softmax, which needs fp32, runs over parts of a chunk in a smaller
# fp32 buffer. benchmarks/bench_loss.py measures the trade on Llama's 128k x 2048 layer at 2048 tokens:
# on an AVX-512 BF16 CPU (bf16 matmul ~380 GFLOP/s) the default's products ran at ~320 GFLOP/s, 1.37-1.45x
# as fast as transformers' full-logits loss over three runs; 128-512 MB chunks were level within the
# noise, and 8 chunks of 261 tokens took 1.08-1.15x the time of one.
LOSS_CHUNK_BYTES = 512 * 2**20  # logits, in the output layer's dtype, of one chunk
SOFTMAX_PART_BYTES = 128 * 2**20  # fp32 logits of one part of a chunk (the softmax's buffer)


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


def _log_softmax_(logits: torch.Tensor) -> torch.Tensor:
    """log_softmax over the last dim, written over `logits`: transformers' cross entropy computes this
    very kernel (log_softmax, then nll_loss). Writing in place is safe: the kernel finishes a row's
    max and sum of exponentials before it writes the row. One fused pass instead of logsumexp's four
    (max, shifted copy, exp, sum) and a subtraction."""
    return torch.log_softmax(logits, -1, out=logits)


def _cross_entropy_part_(low, targets, scratch, need_grad: bool, all_valid: bool) -> torch.Tensor:
    """The summed token losses of `low`, rows of a chunk's logits in the output layer's dtype, computed
    on an fp32 copy in `scratch` (None when `low` is fp32 itself), as transformers upcasts its logits.
    With `need_grad`, `low` is overwritten by d loss / d logits = softmax - one_hot, rounded once."""
    logits = low if scratch is None else scratch[: len(low)].copy_(low)
    valid = targets != IGNORE_INDEX
    picked = targets.clamp(min=0)
    log_probs = _log_softmax_(logits)
    loss = -(log_probs.gather(1, picked[:, None]).squeeze(1) * valid).sum()
    if need_grad:
        grad = log_probs.exp_()
        grad[torch.arange(len(picked), device=picked.device), picked] -= 1.0
        if not all_valid:  # a pass over the part only where targets are ignored
            grad *= valid[:, None]
        if grad is not low:
            low.copy_(grad)
    return loss


WEIGHT_GRAD_ROWS = 16384  # vocabulary rows of d weight per product


def _add_weight_grad_(grad_weight, low, h, first: bool) -> None:
    """grad_weight (+)= low^T @ h, a block of vocabulary rows at a time. One (vocab x hidden) product
    in bf16 on a CPU without native bf16 matmuls (AVX2) goes through an fp32 result of the whole
    output (1 GB for Llama's 128k x 2048) before rounding into `out`; blocks of rows bound that at
    WEIGHT_GRAD_ROWS x hidden, and each row of the result is the same dot products (bit-identical)."""
    for row in range(0, grad_weight.shape[0], WEIGHT_GRAD_ROWS):
        rows = slice(row, row + WEIGHT_GRAD_ROWS)
        if first:
            torch.mm(low[:, rows].t(), h, out=grad_weight[rows])
        else:
            grad_weight[rows].addmm_(low[:, rows].t(), h)


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Sum of token losses of softmax(hidden @ W^T); gradients computed chunk by chunk in forward.

    Per chunk, the logits are computed in the model dtype and upcast to fp32 (a part at a time),
    exactly as transformers does for the whole tensor, so the loss matches to summation order. The
    weight gradient is accumulated in the weight's dtype with the chunk products in that dtype, as
    transformers' one (tokens x vocab) product does: for bf16 every matmul is a bf16 one (~4-10x the
    fp32 rate on AVX-512 BF16 / AMX CPUs) and no fp32 (vocab x hidden) buffer exists (1.2 GB for
    Gemma 3 1B); the price is one bf16 rounding of the running sum per chunk. Every chunk reuses the
    first chunk's logits buffer and every part the fp32 one: no allocation, and on CPU no page
    faults, per chunk. Neither gradient buffer is zero-filled: every chunk writes its rows of
    d hidden, and the first chunk's product starts d weight.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_tokens, part_tokens):
        need_weight = ctx.needs_input_grad[1]  # False for a frozen output layer (LoRA / DoRA)
        need_grad = ctx.needs_input_grad[0] or need_weight
        grad_hidden = torch.empty_like(hidden) if need_grad else None
        grad_weight = torch.empty_like(weight) if need_weight else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        rows = min(chunk_tokens, hidden.shape[0])
        logits_low = torch.empty(rows, weight.shape[0], dtype=weight.dtype, device=weight.device)
        scratch = None if weight.dtype == torch.float32 else torch.empty(
            min(part_tokens, rows), weight.shape[0], dtype=torch.float32, device=weight.device)
        all_valid = bool((targets != IGNORE_INDEX).all())  # one host sync per call, not one per chunk
        for start in range(0, hidden.shape[0], chunk_tokens):
            h, t = hidden[start : start + chunk_tokens].to(weight.dtype), targets[start : start + chunk_tokens]
            low = logits_low[: len(t)]
            torch.mm(h, weight.t(), out=low)  # F.linear's product
            for part in range(0, len(t), part_tokens):
                total += _cross_entropy_part_(low[part : part + part_tokens], t[part : part + part_tokens],
                                              scratch, need_grad, all_valid)
            if not need_grad:
                continue
            rows_grad = grad_hidden[start : start + chunk_tokens]
            if rows_grad.dtype == weight.dtype:
                torch.mm(low, weight, out=rows_grad)
            else:
                rows_grad.copy_(low @ weight)
            if need_weight:
                _add_weight_grad_(grad_weight, low, h, first=start == 0)
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
                for row in range(0, grad_weight.shape[0], WEIGHT_GRAD_ROWS):  # fp32 += bf16 converts
                    ctx.main_grad[row : row + WEIGHT_GRAD_ROWS].add_(grad_weight[row : row + WEIGHT_GRAD_ROWS])
                grad_weight = None  # (its whole operand to fp32 first: 1 GB for Llama's output layer)
        ctx.main_grad = None
        return grad_hidden.mul_(grad_total.to(grad_hidden.dtype)), grad_weight, None, None, None


class ChunkedOutputHead(OutputHead):
    """Output layer + loss a chunk of tokens at a time (logits are never held in full): chunks of
    `chunk_bytes` of logits in the output layer's dtype, softmax parts of SOFTMAX_PART_BYTES of fp32;
    `chunk_tokens` / `part_tokens` fix the token counts instead (tests)."""

    def __init__(self, chunk_bytes: int = LOSS_CHUNK_BYTES, *, chunk_tokens: int | None = None,
                 part_tokens: int | None = None):
        self.chunk_bytes, self.chunk_tokens, self.part_tokens = chunk_bytes, chunk_tokens, part_tokens

    def token_counts(self, weight: torch.Tensor) -> tuple[int, int]:
        """(tokens per chunk, tokens per fp32 softmax part) for this output layer."""
        vocab = weight.shape[0]
        chunk = self.chunk_tokens or max(1, self.chunk_bytes // (weight.element_size() * vocab))
        part = min(self.part_tokens or max(1, SOFTMAX_PART_BYTES // (4 * vocab)), chunk)
        return chunk - chunk % part, part  # whole parts: evaluation's parts are training's, summed alike

    def loss(self, hidden, weight, targets, reduction: str = "mean"):
        targets = targets.reshape(-1)
        hidden = hidden.reshape(-1, hidden.shape[-1])
        chunk, part = self.token_counts(weight)
        if torch.is_grad_enabled():
            total = _FusedLinearCrossEntropy.apply(hidden, weight, targets, chunk, part)
        else:  # evaluation: the same parts' fp32 logits, without the gradients
            total = sum(causal_lm_loss(F.linear(hidden[s : s + part], weight), targets[s : s + part], "sum")
                        for s in range(0, hidden.shape[0], part))
        return total if reduction == "sum" else total / (targets != IGNORE_INDEX).sum()
