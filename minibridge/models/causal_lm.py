"""The decoder-only language model skeleton both families share: embed, blocks, norm, output layer.

Blocks live in a ModuleDict keyed by their global index, so a pipeline stage that keeps layers 8..15
still names them `layers.8 ...` and checkpoints do not depend on the parallel layout.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import OutputHead, RMSNorm, rope_tables
from .config import FULL, SLIDING, ModelConfig


class CausalLM(nn.Module):
    block_class: type[nn.Module]

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.layers = nn.ModuleDict({str(i): self.block_class(config, i) for i in range(config.num_layers)})
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, gemma=config.is_gemma)
        # Tied models read the output projection straight from the embedding: one parameter, one name.
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.head = OutputHead()

    def output_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def rope(self, position_ids: torch.Tensor, dtype: torch.dtype) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """cos/sin tables per layer type; Gemma's local layers have their own base."""
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
    ) -> torch.Tensor:
        """Logits (B, T, vocab) or, with `labels`, the mean next-token loss (HF convention)."""
        hidden = self.embed(input_ids)
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        tables = self.rope(position_ids, hidden.dtype)
        for index, block in self.layers.items():
            hidden = block(hidden, tables[self.config.layer_types[int(index)]])
        hidden = self.norm(hidden)
        if labels is None:
            return self.head.logits(hidden, self.output_weight())
        return self.head.loss(hidden, self.output_weight(), labels)

    @torch.no_grad()
    def reset_parameters(self):
        """Fresh initialisation for pretraining: N(0, init_std) matrices, zero biases, unit norms."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=self.config.init_std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
                if getattr(module, "padding_idx", None) is not None:
                    module.weight[module.padding_idx].zero_()
            elif isinstance(module, RMSNorm):
                module.reset_parameters()
