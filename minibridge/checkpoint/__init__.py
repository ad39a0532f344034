"""minibridge checkpoints: the torch.distributed.checkpoint (DCP) format training saves and resumes
from and `minibridge.convert` reads and writes, reshardable across layouts.

    folder.py   save folders (iter_NNNNNNN, latest_checkpointed_iteration.txt, run.json): save, load,
                resolve, atomic publish, stale temporaries
    blocks.py   what DCP sees: blocks of full tensors (ShardedBlock, LazyBlock) and their planners
    reader.py   SafeFileSystemReader: DCP metadata without unpickling anything but DCP's classes
    integrity.py  checksums.json: a crc32 per stored item, written at save, verified as items are read
    lock.py     RunLock: one training run per save folder
    megatron.py Megatron-Core torch_dist folders: the marker (metadata.json), the same safe reader widened by
                exactly what Megatron pickles (checkpoint_kind, MegatronReader)
"""

from .blocks import BlockLoadPlanner, BlockSavePlanner, LazyBlock, ShardedBlock, block_of, training_state
from .folder import (
    LATEST, RUN_FILE, check_shapes, check_storage, clean_stale, iteration_dir, last_intact_checkpoint,
    latest_iteration, load_checkpoint, read_checkpoint, read_run_info, resolve_checkpoint, save_checkpoint,
)
from .lock import LOCK_NAME, RunLock
from .reader import SafeFileSystemReader

__all__ = [
    "BlockLoadPlanner", "BlockSavePlanner", "LATEST", "LOCK_NAME", "LazyBlock", "RUN_FILE", "RunLock",
    "SafeFileSystemReader", "ShardedBlock", "block_of", "check_shapes", "check_storage", "clean_stale",
    "iteration_dir", "last_intact_checkpoint", "latest_iteration", "load_checkpoint", "read_checkpoint",
    "read_run_info", "resolve_checkpoint", "save_checkpoint", "training_state",
]
