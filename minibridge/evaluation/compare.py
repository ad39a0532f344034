"""transformers vs minibridge on one prompt: logits, top-k agreement and (optionally) each block's output.

    result = compare_with_transformers(hf_folder, chunks, input_ids, top_k=5, per_layer=True)
    print(result.summary()); result.first_diverging_layer

What is compared (fp32 arithmetic on both models' outputs, positions 0..T-1 of the prompt):
- logits: max and mean |hf - ours| over every position and vocabulary entry; the cosine similarity
  of the two logit vectors at each position (min and mean); top-1 agreement (fraction of positions
  whose argmax agree) and top-k overlap (mean over positions of |top-k(hf) & top-k(ours)| / k).
- per layer: the residual stream after each block. transformers' `output_hidden_states` holds the
  embeddings, then the output of blocks 0..L-2, and last the final norm's output (not block L-1's),
  so ours are read with forward hooks on the blocks (activations only) and the final norm, and entry
  L-1 is "block L-1 + final norm". The difference is relative: max|hf - ours| / max|hf| of that layer,
  so one tolerance fits layers whose scales grow; the first layer above `tolerance` is named.
Megatron Bridge's compare.py fails a cosine similarity below 0.99 (COSINE_LIMIT); so does `ok`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from ..errors import ConfigError

COSINE_LIMIT = 0.99  # Megatron Bridge's examples/conversion/compare_hf_and_megatron/compare.py
# Relative hidden-state tolerance per dtype: fp32 runs agree to ~1e-6 (sdpa vs ours ~1e-5 in
# attention); bf16/fp16 round each block's output to 8 / 11 mantissa bits (2^-8 = 3.9e-3), and
# rounding differences compound over blocks, so a few ulps of the layer's largest value.
DEFAULT_TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


@dataclass
class LayerDiff:
    layer: int
    max_abs: float  # max |hf - ours| over positions and hidden units
    mean_abs: float
    relative: float  # max_abs / max |hf|
    with_final_norm: bool = False  # the last entry: block L-1 followed by the final norm


@dataclass
class Comparison:
    positions: int
    vocab: int
    dtype: str
    max_abs_diff: float
    mean_abs_diff: float
    cosine_min: float
    cosine_mean: float
    top1_agreement: float  # fraction of positions
    topk_overlap: float  # mean fraction of shared top-k tokens
    top_k: int
    tolerance: float
    layers: list[LayerDiff] = field(default_factory=list)
    first_diverging_layer: int | None = None
    hf_next_token: int | None = None
    our_next_token: int | None = None

    @property
    def ok(self) -> bool:
        return self.cosine_min >= COSINE_LIMIT and self.first_diverging_layer is None

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok, "cosine_limit": COSINE_LIMIT}

    def summary(self) -> str:
        lines = [
            f"logits ({self.positions} positions x {self.vocab}, {self.dtype}): max |diff| {self.max_abs_diff:.6g}, "
            f"mean |diff| {self.mean_abs_diff:.6g}",
            f"cosine similarity per position: min {self.cosine_min:.8f}, mean {self.cosine_mean:.8f} "
            f"(limit {COSINE_LIMIT})",
            f"top-1 agreement {100 * self.top1_agreement:.1f}% of positions; top-{self.top_k} overlap "
            f"{100 * self.topk_overlap:.1f}%; next token: transformers {self.hf_next_token}, minibridge "
            f"{self.our_next_token}",
        ]
        for d in self.layers:
            name = f"layer {d.layer}" + (" + final norm" if d.with_final_norm else "")
            flag = "  <-- first above tolerance" if d.layer == self.first_diverging_layer else ""
            lines.append(f"  {name:<22} max |diff| {d.max_abs:.6g}  mean {d.mean_abs:.6g}  relative "
                         f"{d.relative:.3g}{flag}")
        if self.layers:
            first = self.first_diverging_layer
            lines.append(f"every layer within tolerance {self.tolerance:g}" if first is None else
                         f"first layer whose relative difference exceeds {self.tolerance:g}: layer {first}")
        return "\n".join(lines)


def logit_metrics(hf: torch.Tensor, ours: torch.Tensor, top_k: int) -> dict:
    """The logit fields of Comparison from (T, vocab) logits of both models."""
    if hf.shape != ours.shape:
        raise ConfigError(f"transformers' logits have shape {list(hf.shape)}, minibridge's {list(ours.shape)}: "
                          f"not the same model (vocabulary padding?)")
    hf, ours = hf.float(), ours.float()
    diff = (hf - ours).abs()
    cosine = torch.nn.functional.cosine_similarity(hf, ours, dim=-1)
    k = min(top_k, hf.shape[-1])
    hf_top, our_top = hf.topk(k, dim=-1).indices, ours.topk(k, dim=-1).indices
    shared = (hf_top[:, :, None] == our_top[:, None, :]).any(-1).sum(-1).double() / k  # (T,)
    return dict(max_abs_diff=diff.max().item(), mean_abs_diff=diff.mean().item(), cosine_min=cosine.min().item(),
                cosine_mean=cosine.mean().item(), top1_agreement=(hf_top[:, 0] == our_top[:, 0]).double().mean().item(),
                topk_overlap=shared.mean().item(), top_k=k, hf_next_token=int(hf_top[-1, 0]),
                our_next_token=int(our_top[-1, 0]))


def layer_diffs(hf_states, our_states) -> list[LayerDiff]:
    """Per-block differences: hf_states are transformers' hidden_states[1:] (L tensors, the last after
    the final norm), our_states the block outputs 0..L-2 and the final norm's output."""
    out = []
    for i, (h, o) in enumerate(zip(hf_states, our_states)):
        h, o = h.float().reshape(o.shape), o.float()
        d = (h - o).abs()
        scale = h.abs().max().item()
        out.append(LayerDiff(i, d.max().item(), d.mean().item(), d.max().item() / scale if scale else d.max().item(),
                             with_final_norm=i == len(hf_states) - 1))
    return out


@torch.no_grad()
def our_outputs(model, input_ids: torch.Tensor, per_layer: bool):
    """(logits (T, vocab), [block 0..L-2 outputs, final norm output] or []) of a whole model chunk;
    under tensor parallelism (no sequence parallelism) every rank gets the full tensors."""
    if not (model.is_first and model.is_last):
        raise ConfigError("compare runs the whole model on each rank; pipeline-parallel chunks are not "
                          "supported (use --tp)")
    seen: dict[str, torch.Tensor] = {}
    handles = []
    if per_layer:
        last = str(max(int(i) for i in model.layers))
        for name, block in model.layers.items():
            if name != last:
                handles.append(block.register_forward_hook(lambda mod, args, out, n=name: seen.__setitem__(n, out)))
        handles.append(model.norm.register_forward_hook(lambda mod, args, out: seen.__setitem__(last, out)))
    try:
        logits = model(input_ids)
    finally:
        for handle in handles:
            handle.remove()
    states = [seen[str(i)][0] for i in sorted(int(k) for k in seen)]
    return logits[0], states


@torch.no_grad()
def hf_outputs(folder, input_ids: torch.Tensor, dtype: torch.dtype, per_layer: bool):
    """(logits (T, vocab), hidden_states[1:] or []) of transformers on the same ids (no remote code)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, trust_remote_code=False)
    model.to(input_ids.device).eval()
    out = model(input_ids=input_ids, output_hidden_states=per_layer)
    states = [h[0] for h in out.hidden_states[1:]] if per_layer else []
    return out.logits[0], states


def compare_outputs(hf_logits, our_logits, hf_states, our_states, top_k: int = 5,
                    tolerance: float | None = None, dtype: torch.dtype = torch.float32) -> Comparison:
    """Comparison of both models' outputs (see the module docstring)."""
    if hf_states and len(hf_states) != len(our_states):
        raise ConfigError(f"transformers has {len(hf_states)} layers, minibridge {len(our_states)}: not the same model")
    tolerance = DEFAULT_TOLERANCE.get(dtype, 5e-2) if tolerance is None else float(tolerance)
    layers = layer_diffs(hf_states, our_states)
    first = next((d.layer for d in layers if not d.relative <= tolerance), None)  # nan counts as diverged
    return Comparison(positions=our_logits.shape[0], vocab=our_logits.shape[-1],
                      dtype=str(dtype).removeprefix("torch."), tolerance=tolerance, layers=layers,
                      first_diverging_layer=first, **logit_metrics(hf_logits, our_logits, top_k))


def compare_with_transformers(hf_folder, chunks, input_ids: torch.Tensor, top_k: int = 5, per_layer: bool = False,
                              tolerance: float | None = None, rank0: bool = True) -> Comparison | None:
    """Run this rank's (whole-model) chunk on `input_ids` (1, T), and on rank 0 transformers from
    `hf_folder` in the same dtype; the Comparison on rank 0, None on the others."""
    if top_k < 1:
        raise ConfigError(f"--top-k {top_k}: expected an integer >= 1")
    model = chunks[0]
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    ids = input_ids.to(device)
    our_logits, our_states = our_outputs(model, ids, per_layer)
    if not rank0:
        return None
    hf_logits, hf_states = hf_outputs(hf_folder, ids, dtype, per_layer)
    return compare_outputs(hf_logits, our_logits, hf_states, our_states, top_k, tolerance, dtype)
