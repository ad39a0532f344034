"""`python -m minibridge.eval`: perplexity against transformers, HF folder vs converted checkpoint,
parallel layouts vs one process, the trainer's validation, and bad inputs."""

import json
import math

import pytest
import torch

from eval_workers import run_commands
from hf_checkpoints import load_hf
from spawn import run_distributed

from minibridge.eval import main

SEQ = 16
COMMON = ["--seq-length", str(SEQ), "--no-progress", "--dtype", "fp32"]


@pytest.fixture(scope="module")
def llama(hf_checkpoint):
    return hf_checkpoint("Llama-3.2-1B")


def run_eval(tmp_path, name, *argv):
    out = tmp_path / f"{name}.json"
    assert main([*COMMON, *argv, "--output", str(out)]) == 0  # argv may override COMMON
    return json.loads(out.read_text())


def hf_reference(folder, dataset, n: int) -> tuple[float, int]:
    """(sum of NLLs, tokens) of transformers on the first n samples in training's order (DataIterator:
    Megatron windows in order, SFT rows shuffled by train.seed), each run with its labels (HF shifts
    them inside and means over non -100 targets); a (seq_length + 1)-token Megatron window ends with
    its final_label."""
    from minibridge.training.data import DataIterator

    model = load_hf(folder)
    order = DataIterator(dataset, global_batch_size=1, micro_batch_size=1, dp_rank=0, dp_size=1, seed=1234)
    total, tokens = 0.0, 0
    with torch.no_grad():
        for _ in range(n):
            (b,) = order.next_global_batch()
            ids, labels = b.input_ids, b.labels
            if b.final_label is not None:
                final = b.final_label.reshape(1, 1)
                ids, labels = torch.cat([ids, final.clamp(min=0)], 1), torch.cat([labels, final], 1)
            count = int((labels[:, 1:] != -100).sum())
            total += model(input_ids=ids, labels=labels).loss.double().item() * count
            tokens += count
    return total, tokens


def test_perplexity_equals_transformers(tmp_path, llama, indexed_data, one_thread):
    from minibridge.evaluation import eval_dataset

    got = run_eval(tmp_path, "hf", "--hf-model", str(llama), "--data-path", indexed_data, "--split", "all",
                   "--max-samples", "12", "--micro-batch-size", "3")
    dataset = eval_dataset("indexed", [indexed_data], seq_length=SEQ, part="all")
    total, tokens = hf_reference(llama, dataset, 12)
    assert got["samples"] == 12 and got["tokens"] == tokens == 12 * SEQ
    assert got["loss"] == pytest.approx(total / tokens, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(total / tokens), rel=1e-5)
    assert got["layout"]["tp"] == 1 and got["dataset"]["kind"] == "indexed" and got["model"]["dtype"] == "float32"


@pytest.mark.parametrize("kind", ["jsonl", "sft"])
def test_text_datasets_equal_transformers(tmp_path, hf_checkpoint, pydoc_data, kind, one_thread):
    """Raw-text JSONL (tokenized on the fly) and SFT rows (loss on the completions only, padded)."""
    from minibridge.evaluation import eval_dataset

    folder = hf_checkpoint("Llama-3.2-1B", vocab_size=pydoc_data["vocab_size"])
    texts = [json.loads(line)["text"] for line in open(pydoc_data["jsonl"])][:40]
    path = tmp_path / f"{kind}.jsonl"  # 40 of pydoc's topics: quick to tokenize
    rows = [{"text": t[:2000]} if kind == "jsonl" else {"prompt": t[:12], "completion": t[12:80]} for t in texts]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    seq = SEQ if kind == "jsonl" else 64  # the chat template's prompt + some of the completion
    got = run_eval(tmp_path, kind, "--hf-model", str(folder), "--data-path", str(path), "--dataset", kind,
                   "--tokenizer", pydoc_data["tokenizer"], "--split", "all", "--max-samples", "6",
                   "--seq-length", str(seq))
    dataset = eval_dataset(kind, [str(path)], seq_length=seq, tokenizer=pydoc_data["tokenizer"], part="all")
    total, tokens = hf_reference(folder, dataset, 6)
    assert got["samples"] == 6 and got["tokens"] == tokens > 0 and got["dataset"]["kind"] == kind
    assert got["loss"] == pytest.approx(total / tokens, rel=1e-5)


def test_checkpoint_equals_its_hf_folder(tmp_path, llama, indexed_data, one_thread):
    from minibridge.conversion import import_checkpoint

    ckpt = import_checkpoint(str(llama), tmp_path / "ckpt", progress=False)
    data = ["--data-path", indexed_data, "--split", "all", "--eval-iters", "4", "--micro-batch-size", "2"]
    hf = run_eval(tmp_path, "hf", "--hf-model", str(llama), *data)
    with_config = run_eval(tmp_path, "ckpt", "--hf-model", str(llama), "--megatron-path", str(ckpt), *data)
    iteration = next((tmp_path / "ckpt").glob("iter_*"))  # an iteration folder, the config from its run.json
    alone = run_eval(tmp_path, "alone", "--megatron-path", str(iteration), *data)
    # a Megatron torch_dist folder: the model from its run_config.yaml, the tokenizer from its tokenizer/
    from minibridge.conversion.megatron_writer import write_megatron_checkpoint

    write_megatron_checkpoint(str(llama), tmp_path / "mcore", progress=False)
    megatron = run_eval(tmp_path, "mcore", "--megatron-path", str(tmp_path / "mcore"), *data)
    assert hf["samples"] == 8
    for other in (with_config, alone, megatron):
        assert (other["loss"], other["tokens"]) == (hf["loss"], hf["tokens"])


def test_parallel_layouts_equal_one_process(tmp_path, llama, indexed_data):
    """TP=2 (+SP), PP=2 (the pipeline's forward_only path; also from a checkpoint), CP=2 and DP=2."""
    from minibridge.conversion import import_checkpoint

    ckpt = import_checkpoint(str(llama), tmp_path / "ckpt", progress=False)
    data = ["--hf-model", str(llama), "--data-path", indexed_data, "--split", "all", "--max-samples", "8",
            "--micro-batch-size", "2", *COMMON]
    layouts = {"one": [], "tp2": ["--tp", "2", "--sequence-parallel"], "pp2": ["--pp", "2"], "cp2": ["--cp", "2"],
               "dp2": [], "pp2_ckpt": ["--pp", "2", "--megatron-path", str(ckpt)]}
    run_commands("eval", [[*data, "--output", str(tmp_path / "one.json")]])
    run_distributed(run_commands, 2, "eval",
                    [[*data, *flags, "--output", str(tmp_path / f"{name}.json")] for name, flags in layouts.items()
                     if name != "one"])
    want = json.loads((tmp_path / "one.json").read_text())
    for name in layouts:
        got = json.loads((tmp_path / f"{name}.json").read_text())
        assert got["tokens"] == want["tokens"] and got["samples"] == want["samples"] == 8, name
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5), name
    assert json.loads((tmp_path / "dp2.json").read_text())["layout"]["dp"] == 2


def test_trainer_validation_is_the_same_evaluation(tmp_path, hf_checkpoint, indexed_data, pydoc_data, one_thread):
    """Trainer.validate and minibridge.eval share ModelForward.evaluate: the same loss on the validation split."""
    from minibridge.recipes import build_config
    from minibridge.training.loop import Trainer

    folder = hf_checkpoint("Llama-3.2-1B", vocab_size=pydoc_data["vocab_size"])
    trainer = Trainer(build_config("llama3_debug_pretrain_config", overrides=[
        f"checkpoint.pretrained_checkpoint={folder}", "dataset.kind=indexed", f"dataset.data_paths=[{indexed_data}]",
        f"dataset.tokenizer={pydoc_data['tokenizer']}", "dataset.split=6,4,0", f"model.seq_length={SEQ}",
        "train.global_batch_size=4", "train.micro_batch_size=2", "train.eval_iters=3", "logger.tensorboard_dir=null",
        f"checkpoint.save={tmp_path / 'run'}", "train.eval_interval=null"]))
    try:
        val = trainer.validate()
    finally:
        trainer.close()
    got = run_eval(tmp_path, "valid", "--hf-model", str(folder), "--data-path", indexed_data, "--split-weights",
                   "6,4,0", "--tokenizer", pydoc_data["tokenizer"], "--max-samples", "12", "--micro-batch-size", "4")
    assert got["samples"] == 12 and got["loss"] == pytest.approx(val, rel=1e-6)


def error_of(capsys, *argv) -> str:
    assert main([*argv, "--no-progress"]) == 2
    return capsys.readouterr().err


def test_bad_inputs_give_clear_errors(tmp_path, llama, indexed_data, capsys):
    from minibridge.training.data import IndexedDatasetWriter

    err = error_of(capsys, "--hf-model", str(tmp_path / "missing"), "--data-path", indexed_data)
    assert "missing: not a model folder" in err
    err = error_of(capsys, "--megatron-path", str(tmp_path / "nockpt"), "--data-path", indexed_data)
    assert "nockpt: no such folder" in err and "expected a checkpoint" in err
    short = tmp_path / "short"
    writer = IndexedDatasetWriter(short)
    writer.add_document([1, 2, 3, 4, 5])
    writer.finalize()
    err = error_of(capsys, "--hf-model", str(llama), "--data-path", str(short), "--seq-length", "32", "--split", "all")
    assert "short" in err and "tokens" in err
    err = error_of(capsys, "--hf-model", str(llama), "--data-path", indexed_data, "--seq-length", "16")
    assert "leaves no validation documents" in err and "--split all" in err  # 9999,8,2 of 40 documents
    err = error_of(capsys, "--hf-model", str(llama), "--data-path", indexed_data, "--seq-length", "16", "--split",
                   "all", "--micro-batch-size", "1000")
    assert "fewer than one global batch of 1000" in err
    err = error_of(capsys, "--hf-model", str(llama), "--data-path", indexed_data, "--tp", "3")
    assert "tp=3" in err


def test_progress_lines_and_summary(tmp_path, llama, indexed_data, capsys, one_thread):
    assert main(["--hf-model", str(llama), "--data-path", indexed_data, "--split", "all", "--seq-length", str(SEQ),
                 "--eval-iters", "3"]) == 0
    captured = capsys.readouterr()
    assert "eval: 3/3 batches | loss so far" in captured.err and "tokens/s" in captured.err
    assert f"on {indexed_data} (all): loss " in captured.out and f"{3 * SEQ} tokens in 3 samples" in captured.out
