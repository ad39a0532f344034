"""`make demo`: train the debug Llama on two CPU ranks (TP=2) on real text, save, export to HF.

1. the documentation topics of the standard library's pydoc_data (real English that ships with
   Python) become a JSONL corpus, a byte-level BPE tokenizer is trained on it here, and the corpus is
   preprocessed into Megatron's indexed .bin/.idx format;
2. `torchrun --nproc-per-node=2 -m minibridge.train --recipe llama3_debug_pretrain_config ...` trains
   with tensor parallelism (and sequence parallelism) for a couple of minutes;
3. the run leaves a sharded checkpoint, metrics.jsonl, a loss-curve PNG and a Hugging Face export
   (weights, config and the tokenizer it trained with);
4. the model talks: `python -m minibridge.generate` on that export, the command printed for you to rerun.

    python examples/train_demo.py [--out demo_run] [--iters 120]
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from minibridge.training.data import pydoc_corpus, train_tokenizer


def prepare_data(data: Path, vocab: int) -> tuple[Path, Path]:
    """pydoc's topics as a JSONL corpus, a tokenizer trained on it, and Megatron's indexed data: (prefix, tokenizer)."""
    data.mkdir(parents=True, exist_ok=True)
    texts = pydoc_corpus()
    tokenizer = train_tokenizer(texts, data / "tokenizer", vocab_size=vocab)
    corpus = data / "pydoc.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    prefix = data / "pydoc"
    subprocess.run([sys.executable, "-m", "minibridge.training.data.preprocess", "--input", str(corpus),
                    "--output-prefix", str(prefix), "--tokenizer", str(tokenizer), "--append-eod"], check=True)
    print(f"corpus: {len(texts)} pydoc topics, tokenizer ({vocab} tokens) and indexed data in {data}")
    return prefix, tokenizer


def train_command(prefix: Path, tokenizer: Path, vocab: int, iters: int, run: Path) -> list[str]:
    """The demo's training: torchrun on two ranks, TP=2 with sequence parallelism (benchmarks reuse it)."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2"]
    return torchrun + [
        "-m", "minibridge.train", "--recipe", "llama3_debug_pretrain_config",
        "model.tensor_model_parallel_size=2", "model.sequence_parallel=true",
        "dataset.kind=indexed", f"dataset.data_paths=[{prefix}_text_document]", f"dataset.tokenizer={tokenizer}",
        f"model.vocab_size={vocab}", "model.seq_length=256", "train.global_batch_size=16",
        "train.micro_batch_size=4", f"train.train_iters={iters}", "train.eval_interval=50", "train.eval_iters=2",
        "dataset.split=90,10,0",
        "optimizer.lr=3e-3", "optimizer.min_lr=3e-4", "scheduler.lr_warmup_iters=10", "logger.log_interval=5",
        "logger.tensorboard_dir=null", f"checkpoint.save={run}", "checkpoint.save_interval=100",
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("SAVE_DIR", "demo_run"))
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--vocab", type=int, default=2048)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    run = out / "run"
    shutil.rmtree(run, ignore_errors=True)  # a fresh run each time (delete this line to resume instead)
    prefix, tokenizer = prepare_data(out / "data", args.vocab)
    cmd = train_command(prefix, tokenizer, args.vocab, args.iters, run) + ["checkpoint.export_hf_on_finish=true"]
    print("$ " + " ".join(cmd), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env)

    losses = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [m["loss"] for m in losses if "loss" in m]
    print(f"\nloss: {sum(train[:5]) / 5:.3f} (first 5 steps) -> {sum(train[-5:]) / 5:.3f} (last 5 steps)")
    print(f"checkpoint:  {run} (latest: iter_{int((run / 'latest_checkpointed_iteration.txt').read_text()):07d})")
    print(f"HF export:   {run / 'hf'}  (transformers.AutoModelForCausalLM.from_pretrained reads it)")
    print(f"metrics:     {run / 'metrics.jsonl'}, loss curve: {run / 'loss_curve.png'}")

    generate = [sys.executable, "-m", "minibridge.generate", "--hf_model_path", str(run / "hf"),
                "--prompt", "The module", "--max_new_tokens", "24"]
    print("\nthe trained model, from its HF export:\n$ " + " ".join(shlex.quote(a) for a in generate), flush=True)
    subprocess.run(generate, check=True, env=env)


if __name__ == "__main__":
    main()
