"""The provider form of the Megatron Bridge docs, a thin layer over `initialize` and `to_model`:

    provider = bridge.to_megatron_provider()
    provider.tensor_model_parallel_size = 2
    provider.sequence_parallel = True
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..parallel import MegatronLayout, current, initialize


@dataclass
class ModelProvider(MegatronLayout):
    """The model (`config`) and its layout (MegatronLayout's fields: tensor_model_parallel_size, ...,
    seq_length, recompute_granularity) of `bridge`'s checkpoint, made in `params_dtype`."""

    bridge: object = field(default=None, repr=False)
    params_dtype: torch.dtype = torch.float32
    finalized: bool = False

    def finalize(self) -> "ModelProvider":
        """Validate the layout against the model (sizes, divisibility, supported features)."""
        self.validate_layout()
        self.finalized = True
        return self

    def provide_distributed_model(self, wrap_with_ddp: bool = False, device=None):
        """Initialise process groups if needed and return this rank's model with the HF weights.

        With `wrap_with_ddp`, the model is wrapped in torch DDP over the data-parallel group;
        `minibridge.parallel.finalize_grads` then leaves data-parallel averaging to DDP.
        """
        if not self.finalized:
            self.finalize()
        wanted = self.parallel_config()
        dims = current()
        if dims is None or dims.config != wanted:
            dims = initialize(wanted)
        model = self.bridge.to_model(parallel=dims, dtype=self.params_dtype, device=device,
                                     recompute=self.recompute_granularity)
        if wrap_with_ddp and dims.dp > 1:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(model, process_group=dims.dp_group)
        return model
