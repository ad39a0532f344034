"""The training loop end to end on CPU: learning, parallel equivalence, exact resume, resharding,
a save killed midway, non-finite losses, and the command line."""

import json
import os
import subprocess
import sys

import pytest

from loop_workers import run
from spawn import run_distributed

BASE = [
    "train.global_batch_size=8", "train.micro_batch_size=2", "model.seq_length=64", "train.eval_interval=null",
    "logger.tensorboard_dir=null", "optimizer.lr=3e-3", "scheduler.lr_warmup_iters=2", "model.vocab_size=256",
    "scheduler.lr_decay_iters=20",  # the schedule must not depend on where a run stops
]


def test_debug_recipes_learn_real_text(tmp_path, pydoc_data):
    """On pydoc's documentation text with a locally trained tokenizer the loss falls clearly."""
    for recipe in ("llama3_debug_pretrain_config", "gemma3_debug_pretrain_config"):
        losses = run(recipe, [
            "train.train_iters=30", "train.global_batch_size=8", "train.micro_batch_size=4", "model.seq_length=128",
            "dataset.kind=jsonl", f"dataset.data_paths=[{pydoc_data['jsonl']}]", f"dataset.tokenizer={pydoc_data['tokenizer']}",
            f"model.vocab_size={pydoc_data['vocab_size']}", "logger.tensorboard_dir=null", "train.eval_interval=null",
            "optimizer.lr=3e-3", "scheduler.lr_warmup_iters=3", f"checkpoint.save={tmp_path / recipe}",
        ])
        assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, (recipe, losses)
        assert (tmp_path / recipe / "metrics.jsonl").exists() and (tmp_path / recipe / "loss_curve.png").exists()


def test_resume_is_exact(tmp_path):
    """20 steps in one go equal 10 steps, a restart from the checkpoint, and 10 more (fp32, bitwise)."""
    straight = run("llama3_debug_pretrain_config", BASE + ["train.train_iters=20", f"checkpoint.save={tmp_path / 'a'}",
                                                           "checkpoint.save_interval=100"])
    first = run("llama3_debug_pretrain_config", BASE + ["train.train_iters=10", f"checkpoint.save={tmp_path / 'b'}",
                                                        "checkpoint.save_interval=10"])
    second = run("llama3_debug_pretrain_config", BASE + ["train.train_iters=20", f"checkpoint.save={tmp_path / 'b'}",
                                                         "checkpoint.save_interval=10"])
    assert len(first) == 10 and len(second) == 10
    assert first + second == straight
    assert (tmp_path / "b" / "latest_checkpointed_iteration.txt").read_text() == "20"


def test_tp2_and_dp2_match_one_process(tmp_path):
    reference = run("llama3_debug_pretrain_config", BASE + ["train.train_iters=10"])
    for layout in (["model.tensor_model_parallel_size=2", "model.sequence_parallel=true"],
                   ["optimizer.use_distributed_optimizer=true"]):  # world 2 with tp=1: dp=2 with ZeRO-1
        out = tmp_path / "losses.json"
        run_distributed(run, 2, "llama3_debug_pretrain_config", BASE + ["train.train_iters=10"] + layout, str(out))
        losses = json.loads(out.read_text())
        for step, (got, want) in enumerate(zip(losses, reference)):
            assert abs(got - want) <= 1e-4 * abs(want), (layout, step, got, want)


def test_reshard_on_resume_tp2_to_tp1_and_back(tmp_path):
    straight = run("llama3_debug_pretrain_config", BASE + ["train.train_iters=12"])
    tp2 = ["model.tensor_model_parallel_size=2"]
    run_distributed(run, 2, "llama3_debug_pretrain_config",
                    BASE + tp2 + ["train.train_iters=4", f"checkpoint.save={tmp_path}", "checkpoint.save_interval=4"])
    middle = run("llama3_debug_pretrain_config", BASE + ["train.train_iters=8", f"checkpoint.save={tmp_path}",
                                                         "checkpoint.save_interval=4"])
    out = tmp_path / "losses.json"
    run_distributed(run, 2, "llama3_debug_pretrain_config",
                    BASE + tp2 + ["train.train_iters=12", f"checkpoint.save={tmp_path}", "checkpoint.save_interval=4"],
                    str(out))
    resumed = middle + json.loads(out.read_text())
    for step, (got, want) in enumerate(zip(resumed, straight[4:])):
        assert abs(got - want) <= 1e-4 * abs(want), (step, got, want)


def test_killed_during_save_resumes_from_previous_checkpoint(tmp_path):
    args = BASE + ["train.train_iters=12", f"checkpoint.save={tmp_path}", "checkpoint.save_interval=4"]
    cmd = [sys.executable, "-m", "minibridge.train", "--recipe", "llama3_debug_pretrain_config", *args]
    env = {**os.environ, "MINIBRIDGE_FAULT": "kill_during_save:8"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (tmp_path / "latest_checkpointed_iteration.txt").read_text() == "4"
    assert list(tmp_path.glob(".iter_0000008.tmp-*")) and not (tmp_path / "iter_0000008").exists()
    resumed = run("llama3_debug_pretrain_config", args)
    straight = run("llama3_debug_pretrain_config", BASE + ["train.train_iters=12"])
    assert resumed == straight[4:]
    assert not list(tmp_path.glob(".iter_*"))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    from minibridge.recipes import build_config
    from minibridge.training.progress import NonFiniteLossError
    from minibridge.training.loop import Trainer

    trainer = Trainer(build_config("llama3_debug_pretrain_config", overrides=BASE + [
        "train.train_iters=10", f"checkpoint.save={tmp_path}", "checkpoint.save_interval=2"]))
    loss_of = trainer.forward.loss

    def diverging(micro_batch, reduction):  # the loss blows up at step 3, as after a bad batch
        loss = loss_of(micro_batch, reduction)
        return loss * float("nan") if trainer.step >= 2 else loss

    trainer.forward.loss = diverging
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 3.*iter_0000002"):
        trainer.run()
    assert (tmp_path / "latest_checkpointed_iteration.txt").read_text() == "2"
    assert not (tmp_path / "iter_0000003").exists()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "minibridge.train", *args], capture_output=True, text=True, timeout=300)


def test_command_line_errors_are_clear():
    proc = _cli("--recipe", "llama3_debug_pretrain_config", "train.global_batch_sise=8")
    assert proc.returncode == 2 and "train.global_batch_sise" in proc.stderr and "train.global_batch_size" in proc.stderr
    proc = _cli("--recipe", "llama3_debug_pretrain_confg")
    assert proc.returncode == 2 and "llama3_debug_pretrain_config" in proc.stderr
    proc = _cli("--recipe", "llama3_debug_pretrain_config", "train.train_iters=ten")
    assert proc.returncode == 2 and "train.train_iters" in proc.stderr
    proc = _cli("--list")
    assert proc.returncode == 0 and "gemma3_1b_finetune_config" in proc.stdout and "TP=4 PP=4 VP=5" in proc.stdout


def test_pipeline_layouts_match_one_process_and_resume_across_pp(tmp_path):
    """PP=2 with 1F1B, PP=2 x VP=2 interleaved, TP=2 x PP=2: the single-process losses; then a PP=2
    checkpoint resumed with PP=1 continues the same curve."""
    reference = run("llama3_debug_pretrain_config", BASE + ["train.train_iters=8"])
    layouts = {2: [["model.pipeline_model_parallel_size=2"], ["model.pipeline_model_parallel_size=2", "model.pipeline_layout=[3,1]"],
                   ["model.pipeline_model_parallel_size=2", "model.virtual_pipeline_model_parallel_size=2"]],
               4: [["model.pipeline_model_parallel_size=2", "model.tensor_model_parallel_size=2"]]}
    for world, cases in layouts.items():
        for layout in cases:
            out = tmp_path / "losses.json"
            run_distributed(run, world, "llama3_debug_pretrain_config", BASE + ["train.train_iters=8"] + layout, str(out))
            for step, (got, want) in enumerate(zip(json.loads(out.read_text()), reference)):
                assert abs(got - want) <= 1e-4 * abs(want), (layout, step, got, want)
    save = [f"checkpoint.save={tmp_path / 'ck'}", "checkpoint.save_interval=4"]
    run_distributed(run, 2, "llama3_debug_pretrain_config",
                    BASE + ["train.train_iters=4", "model.pipeline_model_parallel_size=2"] + save)
    resumed = run("llama3_debug_pretrain_config", BASE + ["train.train_iters=8"] + save)
    for step, (got, want) in enumerate(zip(resumed, reference[4:])):
        assert abs(got - want) <= 1e-4 * abs(want), (step, got, want)


@pytest.mark.parametrize("recipe,extra,layouts", [
    ("llama3_debug_pretrain_config", [], [(2, ["model.context_parallel_size=2"]), (4, ["model.context_parallel_size=4"]),
                                          (4, ["model.context_parallel_size=2", "model.pipeline_model_parallel_size=2"])]),
    # Gemma at T=128 > its window of 64: local layers exchange halos, global layers run the ring
    ("gemma3_debug_pretrain_config", ["model.seq_length=128"],
     [(2, ["model.context_parallel_size=2"]), (4, ["model.context_parallel_size=2", "model.tensor_model_parallel_size=2"])]),
])
def test_context_parallel_matches_one_process(tmp_path, recipe, extra, layouts):
    reference = run(recipe, BASE + extra + ["train.train_iters=4"])
    for world, layout in layouts:
        out = tmp_path / "losses.json"
        run_distributed(run, world, recipe, BASE + extra + ["train.train_iters=4"] + layout, str(out))
        for step, (got, want) in enumerate(zip(json.loads(out.read_text()), reference)):
            assert abs(got - want) <= 1e-4 * abs(want), (layout, step, got, want)


@pytest.mark.slow
def test_tp2_pp2_dp2_on_eight_ranks(tmp_path):
    reference = run("llama3_debug_pretrain_config", BASE + ["train.train_iters=3"])
    out = tmp_path / "losses.json"
    run_distributed(run, 8, "llama3_debug_pretrain_config", BASE + [
        "train.train_iters=3", "model.tensor_model_parallel_size=2", "model.pipeline_model_parallel_size=2"], str(out))
    for step, (got, want) in enumerate(zip(json.loads(out.read_text()), reference)):
        assert abs(got - want) <= 1e-4 * abs(want), (step, got, want)
