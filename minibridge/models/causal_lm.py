"""The decoder-only language model skeleton both families share: embed, blocks, norm, output layer.

Blocks live in a ModuleDict keyed by their global index, so a pipeline stage that keeps layers 8..15
still names them `layers.8 ...` and checkpoints do not depend on the parallel layout.
"""

from __future__ import annotations

import torch
from torch import nn

from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from .common import Embedding, RMSNorm, rope_tables
from .output import ChunkedOutputHead, shift_labels
from .config import FULL, SLIDING, ModelConfig
from .kv_cache import KVCache


# The parallel style of each parameter of the decoder skeleton (module-name regex -> style, first match
# wins), read by minibridge.parallel.plan: q/gate/up column-parallel, o/down row-parallel, k/v split by
# KV head, vocabulary-parallel embedding and output; norms replicated ("partial": gradients summed over
# tp, for per-head norms that see only this rank's heads; "sequence": summed under sequence parallelism).
LAYER = r"layers\.\d+\."
DECODER_TP_PLAN = (
    (r"embed_tokens", "vocab"),
    (r"lm_head", "vocab"),
    (LAYER + r"attn\.q_proj", "column"),
    (LAYER + r"attn\.[kv]_proj", "kv"),
    (LAYER + r"attn\.o_proj", "row"),
    (LAYER + r"mlp\.(gate|up)_proj", "column"),
    (LAYER + r"mlp\.down_proj", "row"),
    (LAYER + r"attn\.[qk]_norm", "partial"),
    (r"(layers\.\d+\.)?\w*norm", "sequence"),
)


class CausalLM(nn.Module):
    block_class: type[nn.Module]
    gemma_norms = False  # the final norm's flavour (models/common.py RMSNorm)

    def __init__(self, config: ModelConfig, layers: range | None = None, first: bool = True, last: bool = True):
        """The whole model, or one pipeline stage: `layers` (global indices), with the embedding when
        `first` and the final norm and output layer when `last` (a tied last stage keeps its own copy
        of the embedding weight, whose gradient the pipeline sums with the first stage's)."""
        super().__init__()
        self.config = config
        self.is_first, self.is_last = first, last
        tied = config.tie_word_embeddings
        h, vocab = config.hidden_size, config.vocab_size
        self.embed_tokens = Embedding(vocab, h, padding_idx=config.pad_token_id) if first or (last and tied) else None
        layers = range(config.num_layers) if layers is None else layers
        self.layers = nn.ModuleDict({str(i): self.block_class(config, i) for i in layers})
        self.norm = RMSNorm(h, config.rms_norm_eps, gemma=self.gemma_norms) if last else None
        # Tied models read the output projection straight from the embedding: one parameter, one name.
        self.lm_head = nn.Linear(h, vocab, bias=False) if last and not tied else None
        # The loss is the fused, chunked output layer + cross entropy: (tokens x vocab) logits never
        # exist at once (4.3 GB of fp32 for Gemma's 262k vocabulary at 4096 tokens). Logits-only calls
        # are the plain product.
        self.head = ChunkedOutputHead()
        self.recompute = "none"
        # Set by passes, read through minibridge.models.ModelChunks (see models/chunks.py):
        self.sharding = None  # minibridge.parallel.sharding.Sharding under a parallel layout
        self.adapters = None  # minibridge.peft.AdapterState once LoRA/DoRA adapters are attached
        self.tied_table = None  # see output_weight()

    def output_weight(self) -> torch.Tensor:
        """The output projection: the lm_head, or the embedding table when tied (as the lookup of this
        forward handed it on, so that both gradients meet in the lookup's backward: common._TableLookup)."""
        if not self.config.tie_word_embeddings:
            return self.lm_head.weight
        table, self.tied_table = self.tied_table, None
        return self.embed_tokens.weight if table is None else table

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden, table = self.embed_tokens.lookup(input_ids)
        if self.is_last and self.config.tie_word_embeddings:
            self.tied_table = table  # read once by output_weight() in this forward's logits or loss
        return hidden

    def rope(self, position_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """fp32 cos/sin tables per layer type; Gemma's local layers have their own base."""
        c = self.config
        tables = {FULL: rope_tables(c.rope, c.head_dim, position_ids, dtype)}
        if SLIDING in c.layer_types:
            tables[SLIDING] = rope_tables(c.rope_local or c.rope, c.head_dim, position_ids, dtype)
        return tables

    def hidden_states(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                      document_ids: torch.Tensor | None = None, hidden_states: torch.Tensor | None = None,
                      kv_cache: KVCache | None = None) -> torch.Tensor:
        """The blocks' output (before the final norm): from `input_ids` on the first stage, from the
        previous stage's `hidden_states` on a later one. Packed sequences pass `position_ids` that
        restart at each document and `document_ids`. Generation passes a `kv_cache` (models/kv_cache.py):
        `input_ids` are then the new tokens after the cached ones (positions continue from the cache)."""
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
        return hidden

    def logits(self, hidden: torch.Tensor, logits_to_keep: int = 0) -> torch.Tensor:
        """(B, T, vocab) logits of the last stage's hidden states (the last `logits_to_keep` positions)."""
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return self.head.logits(self.norm(hidden), self.output_weight())

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        """Next-token cross entropy against `targets`, already shifted (`output.shift_labels`), -100
        ignored: summed over tokens, or with reduction="mean" averaged over the targets."""
        return self.head.loss(self.norm(hidden), self.output_weight(), targets, reduction)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, document_ids: torch.Tensor | None = None,
                loss_reduction: str = "mean", hidden_states: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, logits_to_keep: int = 0) -> torch.Tensor:
        """The HF form: logits (B, T, vocab), or with `labels` the next-token loss (labels aligned with
        the inputs, shifted here, -100 ignored), averaged over tokens or, with loss_reduction="sum",
        summed. A stage before the last returns its hidden states. `logits_to_keep=1` computes the
        output layer for the last position only (generation)."""
        hidden = self.hidden_states(input_ids, position_ids, document_ids, hidden_states, kv_cache)
        if not self.is_last:
            return hidden
        if labels is None:
            return self.logits(hidden, logits_to_keep)
        return self.loss(hidden, shift_labels(labels), loss_reduction)

    def set_recompute(self, granularity: str) -> None:
        """Activation recomputation: "none", "selective" (attention core only) or "full" (whole blocks)."""
        if granularity not in ("none", "selective", "full"):
            raise ConfigError(f"recompute granularity {granularity!r}: expected none, selective or full")
        self.recompute = granularity
        for block in self.layers.values():
            block.attn.recompute_core = granularity == "selective"
