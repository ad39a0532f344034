"""The decoder-only language model skeleton both families share: embed, blocks, norm, output layer.

Blocks live in a ModuleDict keyed by their global index, so a pipeline stage that keeps layers 8..15
still names them `layers.8 ...` and checkpoints do not depend on the parallel layout.
"""

from __future__ import annotations

import torch
from torch import nn

from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from .common import RMSNorm, rope_tables
from .output import OutputHead
from .config import FULL, SLIDING, ModelConfig
from .kv_cache import KVCache


class CausalLM(nn.Module):
    block_class: type[nn.Module]

    def __init__(self, config: ModelConfig, layers: range | None = None, first: bool = True, last: bool = True):
        """The whole model, or one pipeline stage: `layers` (global indices), with the embedding when
        `first` and the final norm and output layer when `last` (a tied last stage keeps its own copy
        of the embedding weight, whose gradient the pipeline sums with the first stage's)."""
        super().__init__()
        self.config = config
        self.is_first, self.is_last = first, last
        tied = config.tie_word_embeddings
        h, vocab = config.hidden_size, config.vocab_size
        self.embed_tokens = nn.Embedding(vocab, h, padding_idx=config.pad_token_id) if first or (last and tied) else None
        layers = range(config.num_layers) if layers is None else layers
        self.layers = nn.ModuleDict({str(i): self.block_class(config, i) for i in layers})
        self.norm = RMSNorm(h, config.rms_norm_eps, gemma=config.is_gemma) if last else None
        # Tied models read the output projection straight from the embedding: one parameter, one name.
        self.lm_head = nn.Linear(h, vocab, bias=False) if last and not tied else None
        self.head = OutputHead()
        self.recompute = "none"

    def output_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def rope(self, position_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """fp32 cos/sin tables per layer type; Gemma's local layers have their own base."""
        c = self.config
        tables = {FULL: rope_tables(c.rope, c.head_dim, position_ids, dtype)}
        if SLIDING in c.layer_types:
            tables[SLIDING] = rope_tables(c.rope_local or c.rope, c.head_dim, position_ids, dtype)
        return tables

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        loss_reduction: str = "mean",
        hidden_states: torch.Tensor | None = None,
        labels_shifted: bool = False,
        kv_cache: KVCache | None = None,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        """Logits (B, T, vocab), or with `labels` the next-token loss (HF convention: labels aligned with
        inputs, shifted inside, -100 ignored), averaged over tokens or, with loss_reduction="sum", summed.

        Packed sequences pass `position_ids` that restart at each document and `document_ids`.
        A pipeline stage after the first takes the previous stage's `hidden_states`; one before the
        last returns its hidden states.
        Generation passes a `kv_cache` (models/kv_cache.py): `input_ids` are then the new tokens after
        the cached ones (positions continue from the cache unless given), and `logits_to_keep=1` computes
        the output layer for the last position only.
        """
        hidden = self.embed(input_ids) if self.is_first else hidden_states
        if position_ids is None:
            start = kv_cache.length if kv_cache is not None else 0
            position_ids = torch.arange(start, start + input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        tables = self.rope(position_ids)
        full = self.recompute == "full" and torch.is_grad_enabled()
        if kv_cache is not None:
            kv_cache.begin(input_ids.shape[1], document_ids)
        for index, block in self.layers.items():
            args = (hidden, tables[self.config.layer_types[int(index)]], document_ids)
            if kv_cache is not None:
                hidden = block(*args, kv_cache=kv_cache.layer(int(index)))
                continue
            # Full recomputation keeps only each block's input and reruns the block in backward.
            hidden = checkpoint(block, *args, use_reentrant=False) if full else block(*args)
        if kv_cache is not None:
            kv_cache.end()
        if not self.is_last:
            return hidden
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        hidden = self.norm(hidden)
        if labels is None:
            return self.head.logits(hidden, self.output_weight())
        return self.head.loss(hidden, self.output_weight(), labels, loss_reduction, labels_shifted)

    def set_recompute(self, granularity: str) -> None:
        """Activation recomputation: "none", "selective" (attention core only) or "full" (whole blocks)."""
        if granularity not in ("none", "selective", "full"):
            raise ConfigError(f"recompute granularity {granularity!r}: expected none, selective or full")
        self.recompute = granularity
        for block in self.layers.values():
            block.attn.recompute_core = granularity == "selective"
