"""Load an HF checkpoint split over tensor-parallel ranks and compare with the single-process model.

    torchrun --nproc-per-node=2 examples/tp_compare.py --hf-model DIR [--tp 2] [--sequence-parallel]
"""

import argparse

import torch
import torch.distributed as dist

from minibridge import AutoBridge
from minibridge.parallel import ParallelConfig, initialize


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hf-model", required=True)
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--sequence-parallel", action="store_true")
    parser.add_argument("--seq", type=int, default=64)
    args = parser.parse_args()

    dims = initialize(ParallelConfig(tp=args.tp, sequence_parallel=args.sequence_parallel))
    bridge = AutoBridge.from_hf_pretrained(args.hf_model)
    model = bridge.to_model(parallel=dims, dtype=torch.float32)
    ids = torch.randint(0, bridge.config.vocab_size, (1, args.seq), generator=torch.Generator().manual_seed(0))
    ids = ids.to(dims.device)
    with torch.no_grad():
        logits = model(ids)  # full vocabulary, gathered over the tp ranks
        loss = model(ids, labels=ids)  # vocab-parallel cross entropy, logits never gathered
    if dims.rank == 0:
        single = bridge.to_model(dtype=torch.float32, device=dims.device, progress=False)
        with torch.no_grad():
            diff = (single(ids) - logits).abs().max().item()
            loss_diff = abs(single(ids, labels=ids).item() - loss.item())
        print(f"tp={args.tp} sp={args.sequence_parallel} dp={dims.dp}: max |logit diff| {diff:.2e}, |loss diff| {loss_diff:.2e}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
