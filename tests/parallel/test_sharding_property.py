"""Property: any tiny config, any valid tp -> each rank imports only its blocks, the blocks tile the full
tensors, and reassembling them gives back the source bytes (the export path, ranks simulated in one
process; the multi-process tests run the same code with real all-gathers)."""

import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_checkpoints import make_checkpoint, random_hf_configs
from minibridge import AutoBridge
from minibridge.parallel import LayoutError, ParallelConfig, ParallelDims
from minibridge.parallel.sharding import assemble
from minibridge.bridge.safetensors_io import read_tensor


def _valid_tps(config):
    out = []
    for tp in (1, 2, 3, 4, 8):
        try:
            ParallelDims(ParallelConfig(tp=tp), tp, 0, 1).validate_model(config)
            out.append(tp)
        except LayoutError:
            pass
    return out


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_hf_configs(), st.sampled_from([torch.float32, torch.bfloat16]), st.data())
def test_rank_blocks_tile_and_reassemble_exactly(hf_config, dtype, data):
    with tempfile.TemporaryDirectory() as tmp:
        bridge = AutoBridge.from_hf_pretrained(make_checkpoint(Path(tmp), hf_config, dtype=dtype))
        tp = data.draw(st.sampled_from(_valid_tps(bridge.config)), label="tp")
        ranks = [
            bridge.to_model(parallel=ParallelDims(ParallelConfig(tp=tp), tp, r, 1), dtype=dtype, progress=False)
            for r in range(tp)
        ]
        for name, _ in ranks[0].named_parameters():
            spec = ranks[0].sharding.specs.get(name)
            blocks = [m.get_parameter(name).detach() for m in ranks]
            source = read_tensor(bridge.folder.tensors[bridge.mapping.to_hf(name)])
            if spec is None or spec.dim is None:
                assert all(torch.equal(b, source) for b in blocks), name
                continue
            # the distinct blocks' ranges are disjoint and cover the (padded) dimension
            ranges = sorted({m.sharding.specs[name].local_range() for m in ranks})
            total = spec.padded_rows if spec.kind == "vocab" else spec.full_shape[spec.dim]
            assert ranges[0][0] == 0 and ranges[-1][1] == total
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:])), (name, ranges)
            full = assemble(blocks, spec)
            assert full.dtype == source.dtype and torch.equal(full.view(torch.uint8), source.view(torch.uint8)), name
