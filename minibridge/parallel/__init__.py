"""Parallelism on torch.distributed: layout and groups, collectives, the tensor-parallel pass, DP."""

from .collectives import count_communication
from .data import finalize_grads
from .dims import LayoutError, MegatronLayout, ParallelConfig, ParallelDims, current, initialize
from .plan import apply_tensor_parallel

__all__ = [
    "LayoutError", "MegatronLayout", "ParallelConfig", "ParallelDims", "apply_tensor_parallel", "count_communication",
    "current", "finalize_grads", "initialize",
]
