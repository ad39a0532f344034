"""Tiny HF checkpoints with tokenizers of each family's kind, and local lm_eval tasks (no hub, no network).

Llama: a byte-level BPE (Llama 3's kind) that adds BOS and, like Llama 3, names no pad token. Gemma: a
transformers GemmaTokenizer (spaces as "▁", byte fallback, BOS added) over characters and a few merges.
The tasks are YAML files reading JSONL data beside them (`dataset_path: json`): a multiple-choice task
(trailing spaces in contexts, an empty context, one-token choices that share a forward), a perplexity
task (texts longer than the rolling window) and a generation task (stop strings, a token budget).
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import pytest
from harness_helpers import CHOICE_DOCS, MAX_GEN_TOKS, PROMPTS, TEXTS, UNTIL
from hf_checkpoints import make_checkpoint, real_config, shrink

# lm_eval and datasets must never try the hub here (their calls would wait for a network timeout).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

def _gemma_tokenizer(folder: Path) -> None:
    """A GemmaTokenizer over single characters, the 256 byte-fallback tokens and a few merges."""
    from transformers import GemmaTokenizer

    vocab = {token: i for i, token in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])}
    vocab.update({f"<0x{b:02X}>": len(vocab) + b for b in range(256)})
    for char in "▁" + string.ascii_letters + string.digits + string.punctuation:
        vocab.setdefault(char, len(vocab))
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("▁", "a"), ("i", "n"), ("▁", "i")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True).save_pretrained(folder)


def _llama_tokenizer(folder: Path) -> None:
    from minibridge.training.data import pydoc_corpus, train_tokenizer

    train_tokenizer(pydoc_corpus()[:20], folder, vocab_size=300)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("pad_token", None)  # Llama 3 names no pad token: lm_eval falls back to EOS
    config_path.write_text(json.dumps(config))


@pytest.fixture(scope="session")
def harness_lms(tmp_path_factory):
    """{"llama": folder, "gemma": folder}: tiny fp32 HF checkpoints with their tokenizer files beside them."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("harness_lms")
    out = {}
    for family, name, write_tokenizer in (("llama", "Llama-3.2-1B", _llama_tokenizer),
                                          ("gemma", "gemma-3-1b-it", _gemma_tokenizer)):
        folder = root / family
        write_tokenizer(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
        # an untied output layer: a random tied model mostly repeats its last token, which would leave the
        # generation tests nothing to cut at stop strings
        make_checkpoint(folder, shrink(real_config(name), vocab_size=len(tokenizer), tie_word_embeddings=False, **ids))
        out[family] = folder
    return out


def _task(folder: Path, name: str, rows: list[dict], **fields) -> None:
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    spec = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test", **fields}
    (folder / f"{name}.yaml").write_text(json.dumps(spec, indent=1))  # JSON is YAML


@pytest.fixture(scope="session")
def harness_tasks(tmp_path_factory) -> Path:
    """A folder for lm_eval's include_path with the tasks mb_choice, mb_rolling and mb_generate."""
    folder = tmp_path_factory.mktemp("harness_tasks")
    _task(folder, "mb_choice", [{"question": q, "choices": c, "label": y} for q, c, y in CHOICE_DOCS],
          output_type="multiple_choice", doc_to_text="{{question}}", doc_to_choice="choices",
          doc_to_target="label", target_delimiter="", metric_list=[{"metric": "acc"}, {"metric": "acc_norm"}])
    _task(folder, "mb_rolling", [{"text": t} for t in TEXTS], output_type="loglikelihood_rolling",
          doc_to_text="", doc_to_target="{{text}}",
          metric_list=[{"metric": m} for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")])
    _task(folder, "mb_generate", [{"prompt": p, "answer": "x"} for p in PROMPTS], output_type="generate_until",
          doc_to_text="{{prompt}}", doc_to_target="{{answer}}",
          generation_kwargs={"until": UNTIL, "max_gen_toks": MAX_GEN_TOKS, "do_sample": False},
          metric_list=[{"metric": "exact_match"}])
    return folder
