"""The preprocess command end to end with the locally trained tokenizer: once as users run it (a
subprocess: slow to start, since it imports torch), the other cases in process through preprocess()."""

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import write_jsonl

from minibridge.training.data import DataError, IndexedDataset, build_datasets, pydoc_corpus
from minibridge.training.data.preprocess import preprocess

ROOT = Path(__file__).resolve().parents[3]


def run_preprocess(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "minibridge.training.data.preprocess", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    texts = pydoc_corpus()[:30] + ["", "short"]
    path = write_jsonl(tmp_path_factory.mktemp("corpus") / "docs.jsonl",
                       [{"text": t, "title": f"doc {i}"} for i, t in enumerate(texts)])
    return path, texts


def test_preprocess_writes_megatron_files(tmp_path, corpus, bpe_tokenizer_dir, bpe_tokenizer):
    path, texts = corpus
    out = run_preprocess("--input", path, "--output-prefix", tmp_path / "two", "--tokenizer", bpe_tokenizer_dir,
                         "--json-keys", "text", "title", "--append-eod", "--workers", "2")
    assert out.returncode == 0, out.stderr
    assert "docs/s" in out.stderr and "ETA" in out.stderr and "wrote" in out.stdout
    prefix = tmp_path / "two_text_document"
    # the .idx parses with the documented layout: uint16 (code 8) since the vocabulary is small
    raw = Path(f"{prefix}.idx").read_bytes()
    magic, version, code, n_seq, n_doc = struct.unpack("<9sQBQQ", raw[:34])
    assert (magic, version, code, n_seq, n_doc) == (b"MMIDIDX\x00\x00", 1, 8, len(texts), len(texts) + 1)
    expected = [bpe_tokenizer(t)["input_ids"] + [bpe_tokenizer.eos_token_id] for t in texts]
    lengths = np.frombuffer(raw, np.int32, n_seq, 34)
    assert lengths.tolist() == [len(e) for e in expected]
    flat = np.frombuffer(Path(f"{prefix}.bin").read_bytes(), np.uint16)
    assert flat.tolist() == [t for e in expected for t in e]
    ds = IndexedDataset(prefix)
    assert [ds[i].tolist() for i in range(len(ds))] == expected
    title = IndexedDataset(tmp_path / "two_title_document")
    assert bpe_tokenizer.decode(title[3]) == "<|bos|>doc 3<|eos|>"

    # two worker processes wrote the same bytes, in input order, as one process does
    preprocess(path, tmp_path / "one", bpe_tokenizer_dir, ["text", "title"], append_eod=True, workers=1)
    for suffix in ("bin", "idx"):
        assert Path(f"{prefix}.{suffix}").read_bytes() == (tmp_path / f"one_text_document.{suffix}").read_bytes()


def test_preprocessed_and_on_the_fly_jsonl_give_the_same_samples(tmp_path, corpus, bpe_tokenizer_dir):
    path, _ = corpus
    preprocess(path, tmp_path / "c", bpe_tokenizer_dir, append_eod=True)
    kw = dict(seq_length=48, tokenizer=bpe_tokenizer_dir, split="80,20,0", seed=11)
    indexed = build_datasets("indexed", data_paths=[tmp_path / "c_text_document"], **kw)
    raw = build_datasets("jsonl", data_paths=[path], **kw)
    for a, b in zip(indexed, raw):
        assert len(a) == len(b) > 0
        for i in range(len(a)):
            assert all(torch.equal(a[i][k], b[i][k]) for k in a[i]), i


def test_bad_line_fails_with_file_line_and_key_and_leaves_nothing(tmp_path, bpe_tokenizer_dir):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, {"body": "no text key"}])
    out = run_preprocess("--input", path, "--output-prefix", tmp_path / "out", "--tokenizer", bpe_tokenizer_dir)
    assert out.returncode != 0
    assert "bad.jsonl:2: missing key 'text'" in out.stderr and "Traceback" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]
    path.write_text('{"text": "fine"}\n{"text": \n')
    with pytest.raises(DataError, match="bad.jsonl:2: not valid JSON"):
        preprocess(path, tmp_path / "out", bpe_tokenizer_dir)
    path.write_text("\n")
    with pytest.raises(DataError, match="bad.jsonl: empty dataset"):
        preprocess(path, tmp_path / "out", bpe_tokenizer_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]
    with pytest.raises(FileNotFoundError, match="nope.jsonl does not exist"):
        preprocess(tmp_path / "nope.jsonl", tmp_path / "out", bpe_tokenizer_dir)
