"""build_datasets: raw JSONL tokenized on the fly, and every bad input failing with a clear message."""

import numpy as np
import pytest
from data_helpers import rows, write_jsonl

from minibridge.training.data import DataError, IndexedDatasetWriter, build_datasets


def test_jsonl_documents_get_bos_and_eos(tmp_path, word_tokenizer):
    path = write_jsonl(tmp_path / "raw.jsonl", [{"text": "hi yo"}, {"text": "what is two"}, {"text": "four"}])
    train, valid = build_datasets("jsonl", seq_length=5, data_paths=path, tokenizer=word_tokenizer,
                                  split="1,0,0", seed=0, sample_layout="legacy")
    assert valid is None
    stream = [t for r in rows(train) for t in r["input_ids"]]
    docs = {(0, 8, 9, 1), (0, 10, 11, 12, 1), (0, 13, 1)}  # bos ... eos; 12 tokens -> 3 rows, 3 pads
    assert len(train) == 3 and stream[12:] == [2, 2, 2]
    found, cur = set(), []
    for r in rows(train):
        for t, d in zip(r["input_ids"], r["document_ids"]):
            cur.append(t)
            if t == 1:
                found.add(tuple(cur))
                cur = []
    assert found == docs


def test_validation_is_none_when_the_split_gives_nothing(tmp_path):
    with IndexedDatasetWriter(tmp_path / "d", np.uint16) as w:
        for i in range(10):
            w.add_document([i + 1] * 5)
    train, valid = build_datasets("indexed", seq_length=8, data_paths=[tmp_path / "d"],
                                  sample_layout="legacy")  # 969,30,1 of 10
    assert valid is None and len(train) == 7  # 50 tokens in windows of 8
    train, valid = build_datasets("indexed", seq_length=8, data_paths=[tmp_path / "d"], split="8,2",
                                  sample_layout="legacy")
    assert len(train) == 5 and len(valid) == 2


@pytest.fixture
def prefix(tmp_path):
    with IndexedDatasetWriter(tmp_path / "d", np.uint16) as w:
        w.add_document([1, 2, 3])
    return tmp_path / "d"


def test_bad_arguments(tmp_path, prefix, word_tokenizer):
    with pytest.raises(DataError, match=r"unknown data kind 'parquet'; expected one of \['mock', 'indexed'"):
        build_datasets("parquet", seq_length=8)
    with pytest.raises(DataError, match="seq_length must be a positive int, got 0"):
        build_datasets("mock", seq_length=0, vocab_size=8)
    with pytest.raises(DataError, match="needs data_paths"):
        build_datasets("indexed", seq_length=8)
    with pytest.raises(DataError, match=r"blend_weights has 1 values \[1.0\] but data_paths has 2 paths"):
        build_datasets("indexed", seq_length=8, data_paths=[prefix, prefix], blend_weights=[1.0])
    with pytest.raises(DataError, match="blend_weights .* must be finite, non-negative"):
        build_datasets("indexed", seq_length=8, data_paths=[prefix, prefix], blend_weights=[1.0, -1])
    with pytest.raises(DataError, match="needs a tokenizer"):
        build_datasets("jsonl", seq_length=8, data_paths=[tmp_path / "x.jsonl"])
    with pytest.raises(DataError, match="split 'x,y': expected up to three numbers"):
        build_datasets("indexed", seq_length=8, data_paths=[prefix], split="x,y")
    with pytest.raises(DataError, match="split '0,1,0' leaves no training documents out of 1"):
        build_datasets("indexed", seq_length=8, data_paths=[prefix], split="0,1,0")
    with pytest.raises(DataError, match="no usable tokenizer"):
        build_datasets("jsonl", seq_length=8, data_paths=[tmp_path / "x.jsonl"], tokenizer=tmp_path / "none")


def test_missing_and_empty_data(tmp_path, word_tokenizer):
    with pytest.raises(FileNotFoundError, match=r"nothere.idx does not exist"):
        build_datasets("indexed", seq_length=8, data_paths=[tmp_path / "nothere"])
    with pytest.raises(FileNotFoundError, match=r"JSONL file .*missing.jsonl does not exist"):
        build_datasets("jsonl", seq_length=8, data_paths=[tmp_path / "missing.jsonl"], tokenizer=word_tokenizer)
    with IndexedDatasetWriter(tmp_path / "empty", np.uint16):
        pass
    with pytest.raises(DataError, match="empty.*empty dataset"):
        build_datasets("indexed", seq_length=8, data_paths=[tmp_path / "empty"])
    with IndexedDatasetWriter(tmp_path / "blank", np.uint16) as w:
        w.add_document([])
    with pytest.raises(DataError, match=r"blank \(train\): empty dataset \(no tokens"):
        build_datasets("indexed", seq_length=8, data_paths=[tmp_path / "blank"], split="1,0,0")
    write_jsonl(tmp_path / "empty.jsonl", ["", "   "])
    for kind in ("jsonl", "sft"):
        with pytest.raises(DataError, match=r"empty.jsonl: empty dataset"):
            build_datasets(kind, seq_length=8, data_paths=[tmp_path / "empty.jsonl"], tokenizer=word_tokenizer)


@pytest.mark.parametrize("line, message", [
    ('{"text": "hi"', r"raw.jsonl:2: not valid JSON"),
    ('{"body": "hi"}', r"raw.jsonl:2: missing key 'text' \(keys present: \['body'\]\)"),
    ('{"text": ["hi"]}', r"raw.jsonl:2: key 'text' must be str, got list"),
])
def test_bad_jsonl_lines_name_file_line_and_key(tmp_path, word_tokenizer, line, message):
    path = write_jsonl(tmp_path / "raw.jsonl", [{"text": "hi yo"}, line])
    with pytest.raises(DataError, match=message):
        build_datasets("jsonl", seq_length=8, data_paths=[path], tokenizer=word_tokenizer)


def test_custom_json_key(tmp_path, word_tokenizer):
    path = write_jsonl(tmp_path / "raw.jsonl", [{"content": "hi"}])
    train, _ = build_datasets("jsonl", seq_length=4, data_paths=[path], tokenizer=word_tokenizer,
                              json_key="content", sample_layout="legacy")
    assert rows(train)[0]["input_ids"] == [0, 8, 1, 2]
