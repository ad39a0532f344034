"""FSDP2 composed with the passes before it, in one 4-rank world of tp=2 x FSDP2 dp=2: torch.compile
(pass 5 compiles each block in place, then pass 6 fully_shards it) and a vocabulary padded for TP.
Vocabulary 253 pads to 254 rows under tp=2, so each TP block's 127 embedding and lm_head rows split
64 / 63 over dp and the last dp shard of the last block ends in the padding row. A compiled run saves
a checkpoint that one process resumes, an uncompiled run resumes one process's: all losses equal to
one uncompiled process's, and the checkpoint holds one process's names, unpadded shapes and values."""

import json

import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from fsdp_workers import fsdp_world, train
from spawn import run_distributed
from test_fsdp import FSDP, LLAMA, TINY, close

VOCAB = [o for o in TINY if not o.startswith("model.vocab_size=")] + ["model.vocab_size=253"]
TP2 = ["model.tensor_model_parallel_size=2", "model.sequence_parallel=true"]
SAVE = ["checkpoint.save_interval=3", "train.train_iters=3"]


def test_compiled_blocks_and_padded_vocab_under_tp_fsdp2_match_one_process_and_reshard(tmp_path):
    plain, sharded = tmp_path / "plain", tmp_path / "tp_fsdp"
    straight = train(LLAMA, None, None, VOCAB + ["train.train_iters=6"])
    first_plain = train(LLAMA, None, None, VOCAB + SAVE + [f"checkpoint.save={plain}"])
    runs = [(LLAMA, None, None, VOCAB + TP2 + FSDP + SAVE + ["model.compile=true", f"checkpoint.save={sharded}"]),
            (LLAMA, None, None, VOCAB + TP2 + FSDP + ["train.train_iters=6", f"checkpoint.save={plain}"])]
    out = tmp_path / "losses.json"
    run_distributed(fsdp_world, 4, runs, str(out))
    compiled, plain_then_sharded = json.loads(out.read_text())
    sharded_then_plain = train(LLAMA, None, None, VOCAB + ["train.train_iters=6", f"checkpoint.save={sharded}"])

    # inductor's fused fp32 kernels (and the dp / tp sums) moved losses and grad norms by < 1e-7
    # relative here, far inside close()'s 1e-4
    close(first_plain, straight[:3], "plain")
    close(compiled, straight[:3], "compiled, tp=2 x fsdp dp=2")
    close(plain_then_sharded, straight[3:], "plain -> tp=2 x fsdp resume")
    close(sharded_then_plain, straight[3:], "compiled tp=2 x fsdp -> plain resume")

    # the compiled sharded run stored one process's names (no `_orig_mod.`), whole unpadded tensors
    theirs, ours = (_torch_state(folder, tmp_path) for folder in (plain, sharded))
    assert set(ours["model"]) == set(theirs["model"]) and len(theirs["model"]) == 2 * 9 + 3
    assert not any("_orig_mod" in name for name in ours["model"]), sorted(ours["model"])
    assert ours["model"]["embed_tokens.weight"].shape == (253, 64) == ours["model"]["lm_head.weight"].shape
    for name, tensor in theirs["model"].items():
        torch.testing.assert_close(ours["model"][name], tensor, rtol=1e-3, atol=1e-5, msg=name)
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(ours["optim"]["state"][name][key], theirs["optim"]["state"][name][key],
                                       rtol=1e-2, atol=1e-6, msg=f"{name} {key}")


def _torch_state(folder, tmp_path) -> dict:
    out = tmp_path / f"{folder.name}.pt"
    dcp_to_torch_save(str(folder / "iter_0000003"), str(out))
    return torch.load(out, weights_only=True)
