"""Model FLOPs per token, device peak FLOP/s and model FLOPs utilization (MFU).

Convention (PaLM, Chowdhery et al. 2022, appendix B; Megatron-LM `num_floating_point_operations`):
count only matmul FLOPs, 2 per multiply-add, and a training step costs 3x the forward pass (the
backward computes gradients for both activations and weights: 2x forward). For a dense decoder this
is the familiar `6 N + attention`, where N counts the weights that take part in matmuls (all linear
layers plus the output layer, not the embedding lookup) and the attention term is what the scores
and the weighted sum of values cost. Activation recomputation is deliberately NOT counted: MFU
measures useful model work, so recomputing makes MFU drop instead of inflating it (that would be HFU).

Per token and layer, forward (h hidden, d head_dim, H heads, G kv heads, F intermediate, V vocab):

    q, o projections        2 * h * (H d)          each
    k, v projections        2 * h * (G d)          each (grouped-query attention shares k/v heads)
    gated MLP               3 * 2 * h * F          (gate, up, down)
    scores Q K^T            2 * H d * keys
    values  P V             2 * H d * keys
and once per token the output layer 2 * h * V (computed even when tied to the embedding).

`keys` is the average number of keys a query attends to. With causal masking the query at position i
(1-based) sees min(i, W) keys, W the sliding window (W = T for full attention), so the average over a
sequence of T tokens is (T + 1) / 2 for full layers (the usual "T / 2" counted exactly) and smaller
for sliding-window layers once T > W. Masked-out blocks are assumed skipped, as flash attention does.
Packed sequences with per-document masks do less attention work than this; the count ignores that.
"""

from __future__ import annotations

import time

import torch

from ..models.config import SLIDING


def average_keys_per_query(seq_length: int, window: int | None = None) -> float:
    """Mean over positions i = 1..T of min(i, W): the keys one causal query attends to."""
    t = int(seq_length)
    if t <= 0:
        raise ValueError(f"seq_length must be positive, got {seq_length}")
    w = t if window is None else min(int(window), t)
    if w <= 0:
        raise ValueError(f"sliding window must be positive, got {window}")
    # Positions 1..w see i keys (a triangle), positions w+1..t see w keys each (a band).
    return (w * (w + 1) / 2 + (t - w) * w) / t


def model_flops_per_token(config, seq_length: int) -> float:
    """Training FLOPs (forward + backward = 3x forward) per token for `config` at `seq_length`.

    `config` is a `minibridge.models.config.ModelConfig` (or anything with the same fields).
    """
    h, f, d = config.hidden_size, config.intermediate_size, config.head_dim
    q_width, kv_width = config.num_heads * d, config.num_kv_heads * d
    projections = 2 * h * (2 * q_width + 2 * kv_width)
    mlp = 2 * 3 * h * f
    forward = 0.0
    for kind in config.layer_types:
        window = config.sliding_window if kind == SLIDING else None
        keys = average_keys_per_query(seq_length, window)
        forward += projections + mlp + 4 * q_width * keys
    forward += 2 * h * config.vocab_size
    return 3.0 * forward


# Dense (no structured sparsity) peak FLOP/s from the vendor datasheets: (bf16/fp16, tf32, fp32).
# Matched by substring of torch.cuda.get_device_name, first match wins, so variants come first.
_GPU_PEAKS: tuple[tuple[str, tuple[float, float, float]], ...] = (
    ("H100 PCIe", (756e12, 378e12, 51e12)),
    ("H100 NVL", (835e12, 418e12, 60e12)),
    ("H200", (989e12, 494.5e12, 67e12)),
    ("H100", (989e12, 494.5e12, 67e12)),  # SXM5 (names like "NVIDIA H100 80GB HBM3")
    ("GH200", (989e12, 494.5e12, 67e12)),
    ("A100", (312e12, 156e12, 19.5e12)),
    ("L40S", (362e12, 183e12, 91.6e12)),
)

_CPU_PEAK_CACHE: dict[torch.dtype, float] = {}


def _gpu_peak(name: str, dtype: torch.dtype) -> float | None:
    for key, (half, tf32, fp32) in _GPU_PEAKS:
        if key.lower() in name.lower():
            if dtype in (torch.bfloat16, torch.float16):
                return half
            if dtype == torch.float32:
                # fp32 matmuls run on tensor cores (TF32) only when PyTorch is allowed to use them.
                return tf32 if torch.backends.cuda.matmul.allow_tf32 else fp32
            return None
    return None


def measure_cpu_matmul_flops(dtype: torch.dtype = torch.bfloat16, max_size: int = 2048, seconds: float = 0.5) -> float:
    """Achieved FLOP/s of a square torch.matmul on this CPU: the best of repetitions over ~`seconds`.

    A measured rate rather than a datasheet number: CPU peaks depend on cores, AVX-512/AMX and the
    thread count torch uses, none of which is easy to look up. The matrix grows from 256 towards
    `max_size` while one product takes under a tenth of the budget: a CPU without native bf16 (AVX2
    only) runs a 2048^3 bf16 product at well under 1 GFLOP/s, i.e. for over a minute, so the size
    must adapt. The best repetition is taken because other processes only ever slow one down.
    """
    size = 256
    while True:
        a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
        torch.matmul(a, b)  # warm-up: thread pool start, kernel selection
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = time.perf_counter() - t0
        if size >= max_size or best > seconds / 10:
            break
        size *= 2
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size**3 / best


def peak_flops(device: torch.device | str | int | None = None, dtype: torch.dtype = torch.bfloat16) -> float | None:
    """Peak matmul FLOP/s of one `device` in `dtype`, or None when unknown.

    CUDA: the datasheet table above (H100/H200/A100/L40S). CPU: `measure_cpu_matmul_flops` (0.5 to
    1.5 s), run once per dtype and process. Other devices, and GPUs not in the table, give None.
    """
    if device is None:
        device = torch.device("cpu")
    elif isinstance(device, int):
        device = torch.device("cuda", device)
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return None
        return _gpu_peak(torch.cuda.get_device_name(device), dtype)
    if device.type == "cpu":
        if dtype not in (torch.bfloat16, torch.float16, torch.float32):
            return None
        if dtype not in _CPU_PEAK_CACHE:
            _CPU_PEAK_CACHE[dtype] = measure_cpu_matmul_flops(dtype)
        return _CPU_PEAK_CACHE[dtype]
    return None


def mfu(tokens_per_sec: float, flops_per_token: float, peak: float | None, num_devices: int = 1) -> float | None:
    """Model FLOPs utilization as a fraction (0.312 means 31.2%), or None when the peak is unknown.

    `tokens_per_sec` is the throughput of all `num_devices` together (e.g. the global rate of a
    data-parallel job) and `peak` the peak of ONE device.
    """
    if not peak or peak <= 0 or num_devices <= 0:
        return None
    return tokens_per_sec * flops_per_token / (peak * num_devices)
