"""Keys and values of past positions, so generation runs the model on new tokens only.

    cache = KVCache(model.config, capacity=prompt_len + max_new_tokens)
    logits = model(prompt_ids, kv_cache=cache, logits_to_keep=1)   # prefill: the whole prompt at once
    logits = model(next_ids, kv_cache=cache, logits_to_keep=1)     # decode: one new position per row

- Full-attention layers keep every position: a (B, capacity, Hkv, D) buffer written in place at
  [length, length + T) and read as the view [0, length + T) (doubled if a run outgrows it).
- Sliding-window layers (Gemma 3's local layers, window W) only ever look back W - 1 positions, so
  they keep a ring of W - 1 slots, position p in slot p % (W - 1): their memory does not grow with the
  text. A forward attends over the ring plus its own new keys (W keys for one new token), then writes
  the last W - 1 positions back. With one new token, the order of the keys in the ring does not matter
  (it sees all of them, and attention sums over keys); with several, the ring is read in position order
  and the kernel's window mask (queries aligned to the end of the keys) does the rest.

Buffers are allocated on first use from the keys themselves, so the cache needs no head counts and
holds this rank's heads under tensor parallelism. Every row of a batch shares the cache indices: left
padding keeps the rows aligned at the end. Padding is masked through `document_ids` (B, T) given to the
model with each forward: the attention kernel keeps queries inside their document, so with real tokens
in document 0 and padding in -1 a real token never sees padding and a padding query sees only padding
(never an empty row). Positions for RoPE are the caller's (`position_ids`, e.g. starting at 0 at each
row's first real token, as transformers does); they default to the cache index.
"""

from __future__ import annotations

import torch

from .config import ModelConfig


class KVCache:
    """The cache of a whole model (or of the layers one rank holds): one `LayerCache` per layer."""

    def __init__(self, config: ModelConfig, capacity: int = 256):
        self.config = config
        self.capacity = max(1, capacity)
        self.length = 0  # positions stored so far (the same for every row)
        self.layers: dict[int, LayerCache] = {}
        self.docs: torch.Tensor | None = None  # (B, capacity) document of every position, once padded
        self.ring_docs: torch.Tensor | None = None  # (B, W - 1) the same, in ring slots
        self.step = 0  # new positions of the forward in progress
        self._new_docs = None

    def layer(self, index: int) -> "LayerCache":
        if index not in self.layers:
            window = self.config.window_of(index)
            self.layers[index] = FullCache(self) if window is None else RingCache(self, window)
        return self.layers[index]

    @property
    def ring_size(self) -> int:
        return max(0, (self.config.sliding_window or 1) - 1)

    # ------------------------------------------------------------ one forward: begin, layers, end
    def begin(self, new_tokens: int, document_ids: torch.Tensor | None) -> None:
        """Called by the model before its layers with the new tokens' documents (None: all document 0)."""
        self.step = new_tokens
        self._new_docs = document_ids
        if document_ids is None and self.docs is None:
            return
        if self.docs is None:  # the first padded forward: every earlier position was a real token
            B = document_ids.shape[0]
            self.docs = torch.zeros(B, self.capacity, dtype=torch.long, device=document_ids.device)
            self.ring_docs = torch.full((B, self.ring_size), -1, dtype=torch.long, device=document_ids.device)
            self.ring_docs[:, : min(self.length, self.ring_size)] = 0
        if document_ids is None:
            self._new_docs = torch.zeros(self.docs.shape[0], new_tokens, dtype=torch.long, device=self.docs.device)
        self._grow_docs(self.length + new_tokens)
        self.docs[:, self.length : self.length + new_tokens] = self._new_docs

    def end(self) -> None:
        """Called by the model after its layers: the new positions are now part of the cache."""
        if self.ring_docs is not None and self.ring_size:
            slots, start = ring_slots(self.length, self.step, self.ring_size, self.ring_docs.device)
            self.ring_docs.index_copy_(1, slots, self._new_docs[:, start:])
        self.length += self.step
        self.step, self._new_docs = 0, None

    def _grow_docs(self, needed: int) -> None:
        if needed > self.docs.shape[1]:
            grown = torch.zeros(self.docs.shape[0], max(needed, 2 * self.docs.shape[1]), dtype=self.docs.dtype,
                                device=self.docs.device)
            grown[:, : self.length] = self.docs[:, : self.length]
            self.docs = grown

    def full_docs(self) -> torch.Tensor | None:
        return None if self.docs is None else self.docs[:, : self.length + self.step]

    def window_docs(self, read: torch.Tensor | slice | None) -> torch.Tensor | None:
        if self.docs is None:
            return None
        if read is None:
            return self._new_docs
        past = self.ring_docs[:, read] if isinstance(read, slice) else self.ring_docs.index_select(1, read)
        return torch.cat([past, self._new_docs], dim=1)

    def memory_bytes(self) -> dict[int, int]:
        """Bytes of keys and values held per layer (buffers, including unused capacity)."""
        return {i: c.nbytes() for i, c in sorted(self.layers.items())}


def ring_slots(length: int, new: int, size: int, device) -> tuple[torch.Tensor, int]:
    """Ring slots of the last min(new, size) of `new` positions starting at `length`, and the index of
    the first of them among the new positions."""
    start = max(0, new - size)
    positions = torch.arange(length + start, length + new, device=device)
    return positions % size, start


class LayerCache:
    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None

    def __init__(self, parent: KVCache):
        self.parent = parent

    def update(self, k: torch.Tensor, v: torch.Tensor):
        """Store the new (B, T, Hkv, D) keys and values; return the keys, values and (B, Tk) documents
        (None without padding) the new queries attend over, the queries being the last T of them."""
        raise NotImplementedError

    def _allocate(self, k: torch.Tensor, slots: int) -> None:
        B, _, H, D = k.shape
        self.keys = torch.empty(B, slots, H, D, dtype=k.dtype, device=k.device)
        self.values = torch.empty_like(self.keys)

    def nbytes(self) -> int:
        return 0 if self.keys is None else 2 * self.keys.nbytes


class FullCache(LayerCache):
    """Every position, in order."""

    def update(self, k, v):
        start, end = self.parent.length, self.parent.length + k.shape[1]
        if self.keys is None:
            self._allocate(k, max(self.parent.capacity, end))
        elif end > self.keys.shape[1]:  # outgrown: double (amortised O(1) per token)
            old_k, old_v = self.keys, self.values
            self._allocate(k, max(end, 2 * old_k.shape[1]))
            self.keys[:, :start], self.values[:, :start] = old_k[:, :start], old_v[:, :start]
        self.keys[:, start:end] = k
        self.values[:, start:end] = v
        return self.keys[:, :end], self.values[:, :end], self.parent.full_docs()


class RingCache(LayerCache):
    """The last W - 1 positions, position p in slot p % (W - 1)."""

    def __init__(self, parent: KVCache, window: int):
        super().__init__(parent)
        self.window = window
        self.size = window - 1

    def update(self, k, v):
        length, new, size = self.parent.length, k.shape[1], self.size
        if self.keys is None:
            self._allocate(k, size)
        if length == 0 or size == 0:
            read = None  # nothing earlier to see
        elif length < size:
            read = slice(0, length)  # slots 0 .. length - 1 hold positions 0 .. length - 1
        elif new == 1:
            read = slice(None)  # one query sees the whole ring: order does not matter
        else:  # several queries: read the ring in position order, oldest first
            read = (torch.arange(size, device=k.device) + length) % size
        docs = self.parent.window_docs(read)
        if read is not None:
            past_k, past_v = (t[:, read] if isinstance(read, slice) else t.index_select(1, read)
                              for t in (self.keys, self.values))
            keys, values = torch.cat([past_k, k], dim=1), torch.cat([past_v, v], dim=1)
        else:
            keys, values = k, v
        if size:
            if new == 1:
                slot = length % size
                self.keys[:, slot], self.values[:, slot] = k[:, 0], v[:, 0]
            else:
                slots, start = ring_slots(length, new, size, k.device)
                self.keys.index_copy_(1, slots, k[:, start:])
                self.values.index_copy_(1, slots, v[:, start:])
        return keys, values, docs
