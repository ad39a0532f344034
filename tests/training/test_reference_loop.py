"""The training loop against an independent reference loop, step by step (issue 27).

The reference: transformers' AutoModelForCausalLM from the same HF folder, torch.optim.AdamW with
Megatron-Core's parameter groups (no weight decay on biases and 1-D parameters), gradient accumulation
and clipping written out by hand, and the learning rates / weight decays that Megatron-Core 0.19.2's own
OptimizerParamScheduler produced (tests/data/megatron_schedule/). Each micro-batch's loss is normalised
by Megatron-Core's rule for model.calculate_per_token_loss (pipeline_parallel/schedules.py): True, the
token sum over the global batch's loss tokens; False, the micro-batch's own token mean divided by the
number of micro-batches. Both loops see the same micro-batches (the trainer's are recorded and replayed).

Tiny Llama 3.1-like (attention and MLP biases, untied) and Gemma 3-like (tied, q/k norms, sliding window
shorter than the sequence) checkpoints, fp32, full fine-tuning, warmup + decay, scheduled weight decay,
clipping active; pretraining-style (mock) and SFT data (answers of uneven length), both modes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from spawn import run_distributed
from test_megatron_schedule import CASES, overrides_of

from minibridge.models.output import IGNORE_INDEX
from minibridge.recipes import build_config
from minibridge.training.loop import Trainer

MICRO_BATCH = 2
CLIP = 0.4  # below the first steps' gradient norms: clipping is active
FAMILIES = {  # family -> (shipped config, its shrink overrides, recipe, fixture case)
    "llama": ("Llama-3.1-8B", dict(attention_bias=True, mlp_bias=True), "llama3_debug_finetune_config", "llama_loop"),
    "gemma": ("gemma-3-1b-it", dict(num_hidden_layers=3), "gemma3_debug_finetune_config", "gemma_loop"),
}
QUESTIONS = ["What does pickle do?", "Name a loop.", "How are dictionaries ordered in Python?", "Why?",
             "What is a generator expression and when is it evaluated?", "Is None falsy?", "Which module times code?"]
ANSWERS = ["It serialises objects.", "for", "By insertion order since 3.7, as the language reference says.", "Yes.",
           "A lazy iterator, evaluated as it is consumed.", "Yes, None is false in a boolean context.", "timeit"]


@pytest.fixture(scope="module")
def checkpoints(hf_checkpoint, pydoc_data, tmp_path_factory):
    """family -> a tiny HF folder with pydoc's tokenizer beside its weights."""
    out = {}
    for family, (name, overrides, _, _) in FAMILIES.items():
        folder = tmp_path_factory.mktemp(family) / "hf"
        shutil.copytree(hf_checkpoint(name, vocab_size=pydoc_data["vocab_size"], **overrides), folder)
        for file in Path(pydoc_data["tokenizer"]).iterdir():
            shutil.copy(file, folder / file.name)
        out[family] = folder
    return out


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("sft") / "qa.jsonl"
    rows = [{"prompt": q, "completion": " " + a} for q, a in zip(QUESTIONS * 3, ANSWERS * 3)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def loop_overrides(family: str, data: str | None, per_token: bool, save: Path) -> list[str]:
    case = CASES[FAMILIES[family][3]]["config"]
    data_overrides = ["dataset.kind=mock"] if data is None else [
        "dataset.kind=sft", f"dataset.data_paths=[{data}]", "dataset.packing=false"]
    return overrides_of(case) + data_overrides + [
        f"train.micro_batch_size={MICRO_BATCH}", "model.seq_length=48", f"optimizer.clip_grad={CLIP}",
        "optimizer.weight_decay=0.05", "optimizer.adam_beta2=0.95", "optimizer.adam_eps=1e-8",
        f"model.calculate_per_token_loss={str(per_token).lower()}", "train.eval_interval=null",
        "logger.tensorboard_dir=null", "mixed_precision=fp32", "model.tensor_model_parallel_size=1",
        "optimizer.use_distributed_optimizer=false", f"checkpoint.save={save}", "checkpoint.save_interval=1000",
        "checkpoint.export_hf_on_finish=true"]


def train(folder: Path, family: str, overrides: list[str]):
    """minibridge's run: (its micro-batches, step by step; metrics.jsonl's rows; the final HF weights)."""
    config = build_config(FAMILIES[family][2], pretrained_checkpoint=str(folder), peft_scheme="none",
                          overrides=overrides)
    trainer = Trainer(config)
    seen, record = [], trainer.forward.micro_batch
    trainer.forward.micro_batch = lambda batch: seen.append(record(batch)) or seen[-1]
    trainer.run()
    save = Path(config.checkpoint.save)
    rows = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    rows = [row for row in rows if "loss" in row]
    per_step = config.train.global_batch_size // MICRO_BATCH
    steps = [seen[i:i + per_step] for i in range(0, len(seen), per_step)]
    weights = {}
    for file in (save / "hf").glob("*.safetensors"):
        weights.update(load_file(file))
    return steps, rows, weights


def reference(folder: Path, steps, lrs, wds, per_token: bool):
    """The independent loop: (per-step token-mean loss, gradient norm before clipping, final state dict)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    named = list(model.named_parameters())
    decay = [p for n, p in named if not (n.endswith(".bias") or p.ndim == 1)]
    no_decay = [p for n, p in named if n.endswith(".bias") or p.ndim == 1]
    optimizer = torch.optim.AdamW([{"params": decay, "wd_mult": 1.0}, {"params": no_decay, "wd_mult": 0.0}],
                                  lr=0.0, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    losses, norms = [], []
    for step, micro_batches in enumerate(steps):
        for group in optimizer.param_groups:
            group["lr"], group["weight_decay"] = lrs[step], wds[step] * group["wd_mult"]
        total_tokens = sum(int((mb.targets != IGNORE_INDEX).sum()) for mb in micro_batches)
        summed_total = 0.0
        for mb in micro_batches:
            logits = model(input_ids=mb.input_ids, position_ids=mb.position_ids).logits
            summed = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), mb.targets.flatten(),
                                                       ignore_index=IGNORE_INDEX, reduction="sum")
            own = (mb.targets != IGNORE_INDEX).sum().clamp(min=1)
            loss = summed / total_tokens if per_token else summed / own / len(micro_batches)
            loss.backward()
            summed_total += summed.item()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP).item())
        optimizer.step()
        optimizer.zero_grad()
        losses.append(summed_total / total_tokens)
    return losses, norms, model.state_dict()


def close(got: float, want: float, rel: float) -> bool:
    return abs(got - want) <= rel * abs(want)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("data", ["pretraining", "sft"])
@pytest.mark.parametrize("per_token", [False, True], ids=["per_micro_batch", "per_token"])
def test_training_equals_the_reference_loop(family, data, per_token, checkpoints, sft_data, tmp_path, one_thread):
    case = CASES[FAMILIES[family][3]]
    steps, rows, weights = train(checkpoints[family], family, loop_overrides(
        family, sft_data if data == "sft" else None, per_token, tmp_path / "run"))
    iters = case["config"]["train_iters"]
    assert len(steps) == len(rows) == iters
    assert [row["lr"] for row in rows] == case["lr"][:iters]  # Megatron's floats, exactly
    losses, norms, state = reference(checkpoints[family], steps, case["lr"], case["wd"], per_token)
    assert max(norms) > CLIP  # clipping was active
    for step, (row, loss, norm) in enumerate(zip(rows, losses, norms)):
        assert close(row["loss"], loss, 1e-5), (step, row["loss"], loss)
        assert close(row["grad_norm"], norm, 1e-4), (step, row["grad_norm"], norm)
    # k_proj's bias has a zero gradient up to rounding (softmax is invariant to adding q . b_k to every
    # key's score), and Adam scales that rounding noise up to steps of size lr: it is compared in the
    # whole-model norm only.
    for name, tensor in weights.items():
        want = state[name]
        assert name.endswith("k_proj.bias") or (tensor - want).abs().max() <= 1e-4 * want.abs().max(), name
    diff = sum(float((weights[n] - state[n]).square().sum()) for n in weights)
    assert diff ** 0.5 <= 1e-4 * sum(float(state[n].square().sum()) for n in weights) ** 0.5


def test_the_two_normalisations_differ_on_sft_data(checkpoints, sft_data, tmp_path, one_thread):
    """The rule matters where micro-batches hold unequal numbers of answer tokens (so the test above
    tells them apart): the first step's gradient norms are clearly not the same."""
    norms = {}
    for per_token in (False, True):
        _, rows, _ = train(checkpoints["llama"], "llama", loop_overrides(
            "llama", sft_data, per_token, tmp_path / str(per_token)) + ["train.train_iters=5"])
        norms[per_token] = [row["grad_norm"] for row in rows]
    assert not close(norms[False][0], norms[True][0], 0.05), norms  # measured 5.12 vs 4.67


def dp_losses(folder: str, overrides: list[str], out: str) -> None:
    """One run (any world size): rank 0 writes [(loss, grad_norm)] per step to `out`."""
    import torch.distributed as dist

    config = build_config("llama3_debug_finetune_config", pretrained_checkpoint=folder, peft_scheme="none",
                          overrides=overrides)
    Trainer(config).run()
    if not dist.is_initialized() or dist.get_rank() == 0:
        rows = [json.loads(line) for line in (Path(config.checkpoint.save) / "metrics.jsonl").read_text().splitlines()]
        Path(out).write_text(json.dumps([(r["loss"], r["grad_norm"]) for r in rows if "loss" in r]))


@pytest.mark.parametrize("per_token, layout", [
    (False, []), (True, []),  # dp=2 under both rules
    (False, ["model.pipeline_model_parallel_size=2"]), (True, ["model.pipeline_model_parallel_size=2"]),
], ids=["dp2-per_micro_batch", "dp2-per_token", "pp2-per_micro_batch", "pp2-per_token"])
def test_two_ranks_equal_one_process(per_token, layout, checkpoints, sft_data, tmp_path):
    """dp=2 (each rank half of the micro-batches) and pp=2 (one layer a stage, the 1F1B schedule) equal one
    process on SFT data, under both rules."""
    overrides = loop_overrides("llama", sft_data, per_token, tmp_path / "one")
    overrides = [o for o in overrides if not o.startswith("checkpoint.export_hf")] + ["train.train_iters=6"]
    dp_losses(str(checkpoints["llama"]), overrides, str(tmp_path / "one.json"))
    two_ranks = [o.replace(str(tmp_path / "one"), str(tmp_path / "two")) for o in overrides] + layout
    run_distributed(dp_losses, 2, str(checkpoints["llama"]), two_ranks, str(tmp_path / "two.json"))
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert len(one) == len(two) == 6
    for (loss1, norm1), (loss2, norm2) in zip(one, two):
        assert close(loss2, loss1, 1e-5) and close(norm2, norm1, 1e-4), (one, two)
