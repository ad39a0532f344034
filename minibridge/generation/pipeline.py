"""One forward of the whole model for generation, on one rank or through pipeline stages.

A rank holds one chunk (a whole model, or its pipeline stage) or, with virtual stages, the chunks of
stages r, r + pp, r + 2 pp, ... (minibridge.parallel.pipeline.chunk_stages). A forward walks the
`pp * vp` stages in order: the rank of stage s receives the (B, T, hidden) states from the rank of
stage s - 1 (plain blocking dist.recv: generation has one micro-batch, there is nothing to overlap),
runs its chunk against its own KV cache and sends the result on; the rank of the last stage turns its
output into logits for the last position. The chosen tokens are then broadcast from the last stage to
every stage (`share`), so all ranks feed the same ids into the next step and take the same decisions
(EOS, stop strings). Every chunk has its own `KVCache`, which only ever holds that chunk's layers.

Under tensor parallelism the stage's tp ranks each run their shard; a hidden state is replicated over
them (generation does not use sequence parallelism), so each tp rank sends to the tp rank of the same
index in the next stage: they share a pipeline group.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..errors import ConfigError
from ..models import KVCache, ModelChunks


class StagedForward:
    """This rank's part of a generation forward: `logits(...)` and `share(tokens)` per step."""

    def __init__(self, chunks: ModelChunks, capacity: int):
        dims = chunks.dims
        self.chunks = chunks
        self.pp = dims.pp if dims is not None else 1
        if dims is not None and dims.sequence_parallel:
            raise ConfigError("generation runs without sequence parallelism (decode steps have one token); "
                              "build the model with sequence_parallel=False")
        if self.pp == 1 and not (len(chunks) == 1 and chunks[0].is_first and chunks[0].is_last):
            raise ConfigError("generation needs the whole model: these chunks are pipeline stages of a layout "
                              "without a pipeline group (pp=1)")
        self.caches = [KVCache(chunk.config, capacity=capacity) for chunk in chunks]
        self.stages = self.pp * len(chunks)
        self.device = next(chunks[0].parameters()).device
        self.dtype = next(chunks[0].parameters()).dtype
        self.group = dims.pp_group if self.pp > 1 else None
        self.ranks = dist.get_process_group_ranks(self.group) if self.pp > 1 else [None]
        self.pp_rank = dims.pp_rank if self.pp > 1 else 0
        self.is_last = (self.stages - 1) % self.pp == self.pp_rank  # this rank holds the last stage

    def _owner(self, stage: int) -> int:
        return self.ranks[stage % self.pp]

    def logits(self, ids: torch.Tensor, positions: torch.Tensor, documents: torch.Tensor | None):
        """(B, vocab) logits of the last position on the rank of the last stage, None on the others.
        `ids` (B, T) are the new tokens (every rank has them), `positions` their RoPE positions."""
        if self.pp == 1:
            out = self.chunks[0](ids, position_ids=positions, document_ids=documents, kv_cache=self.caches[0],
                                 logits_to_keep=1)
            return out[:, -1]
        shape = (*ids.shape, self.chunks[0].config.hidden_size)
        hidden = None
        for stage in range(self.stages):
            if stage % self.pp != self.pp_rank:
                continue
            v = stage // self.pp
            if stage > 0:
                hidden = torch.empty(shape, dtype=self.dtype, device=self.device)
                dist.recv(hidden, self._owner(stage - 1))
            out = self.chunks[v](ids, position_ids=positions, document_ids=documents, hidden_states=hidden,
                                 kv_cache=self.caches[v], logits_to_keep=1)
            if stage == self.stages - 1:
                return out[:, -1]
            dist.send(out.contiguous(), self._owner(stage + 1))
        return None

    def share(self, tokens: torch.Tensor | None, batch: int) -> torch.Tensor:
        """The last stage's (B,) tokens on every pipeline rank (`tokens` is None on the others)."""
        if self.pp == 1:
            return tokens
        if tokens is None:
            tokens = torch.empty(batch, dtype=torch.long, device=self.device)
        dist.broadcast(tokens, src=self._owner(self.stages - 1), group=self.group)
        return tokens
