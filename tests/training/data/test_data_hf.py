"""Hugging Face datasets (dataset.kind=hf, --dataset squad/gsm8k/tulu3/openmathinstruct2[-thinking]): rows built
here with the `datasets` library in the columns of the real datasets, saved locally (save_to_disk, parquet,
JSON lines) and read through each preset offline. The expected renders come from Megatron Bridge 0.6.2's own
code (tests/data/megatron_bridge_presets/presets.json, made by extract.py there)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minibridge.training.data import DataError, HFSource, IndexedDataset, build_datasets
from minibridge.training.data.hf import tokenize_hf
from minibridge.training.data.presets import PRESETS, render_pair

datasets = pytest.importorskip("datasets")
FIXTURE = json.loads((Path(__file__).parents[2] / "data/megatron_bridge_presets/presets.json").read_text())
RENDERED = FIXTURE["presets"]


def save(tmp_path, rows, how="disk", name="data"):
    """`rows` as a local dataset: a save_to_disk folder, a parquet file or a JSON-lines file."""
    table = datasets.Dataset.from_list(rows)
    if how == "disk":
        table.save_to_disk(str(tmp_path / name))
        return str(tmp_path / name)
    path = tmp_path / f"{name}.{'parquet' if how == 'parquet' else 'jsonl'}"
    table.to_parquet(str(path)) if how == "parquet" else table.to_json(str(path))
    return str(path)


def squad_rows(n):
    return [{"id": str(i), "title": "t", "context": f"Item {i} is stored in box {i % 7}.",
             "question": f"Where is item {i}?", "answers": {"text": [f"box {i % 7}"], "answer_start": [0]}}
            for i in range(n)]


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_presets_render_rows_as_megatron_bridge(name):
    for case in RENDERED[name]:
        rendered = PRESETS[name].render(case["row"])
        if "messages" in case:
            assert rendered["messages"] == case["messages"]
        else:
            pair = render_pair(rendered["prompt"], rendered["completion"], PRESETS[name].separator, keep_space=True)
            assert pair == (case["prompt"], case["completion"])


@pytest.mark.parametrize("name,how", [("squad", "disk"), ("gsm8k", "parquet"), ("openmathinstruct2", "json")])
def test_prompt_completion_presets_tokenize_as_megatron_bridge(tmp_path, bpe_tokenizer, name, how):
    cases = RENDERED[name]
    source = HFSource(save(tmp_path, [c["row"] for c in cases], how), preset=name, val_proportion=0)
    sft = tokenize_hf(source, bpe_tokenizer).sft
    for k, case in enumerate(cases):
        prompt, completion = encode(bpe_tokenizer, case["prompt"]), encode(bpe_tokenizer, case["completion"])
        s, n = sft.starts[k], sft.lengths[k]
        assert sft.ids[s : s + n].tolist() == prompt + completion + [bpe_tokenizer.eos_token_id]  # no BOS, as MB
        assert sft.loss[s : s + n].tolist() == [False] * len(prompt) + [True] * (len(completion) + 1)


@pytest.mark.parametrize("name", ["tulu3", "openmathinstruct2-thinking"])
def test_chat_presets_use_the_chat_template_with_loss_on_answers(tmp_path, bpe_tokenizer, name):
    case = RENDERED[name][0]
    sft = tokenize_hf(HFSource(save(tmp_path, [case["row"]], "json"), preset=name, val_proportion=0), bpe_tokenizer).sft
    text = bpe_tokenizer.apply_chat_template(case["messages"], tokenize=False)
    assert sft.ids.tolist() == encode(bpe_tokenizer, text)
    answers = [m["content"] for m in case["messages"] if m["role"] == "assistant"]
    trained = bpe_tokenizer.decode(sft.ids[sft.loss])
    assert all(a in trained for a in answers) and "user" not in trained


def test_squad_validation_is_megatron_bridges_tenth_of_train(tmp_path, bpe_tokenizer_dir):
    path = save(tmp_path, squad_rows(40))
    source = HFSource(path, preset="squad")
    data = tokenize_hf(source, __import__("transformers").AutoTokenizer.from_pretrained(bpe_tokenizer_dir))
    theirs = datasets.Dataset.from_list(squad_rows(40)).train_test_split(test_size=0.1, seed=5678)
    assert sorted(int(r["id"]) for r in theirs["test"]) == sorted(data.valid_rows.tolist())
    assert len(data.train_rows) == 36
    train, valid = build_datasets("hf", seq_length=64, tokenizer=bpe_tokenizer_dir, hf_source=source, packing=False)
    assert (len(train), len(valid)) == (36, 4)


def test_generic_columns_messages_and_text(tmp_path, bpe_tokenizer):
    qa = save(tmp_path, [{"q": "What is two?", "a": "four"}] * 3, "json", "qa")
    sft = tokenize_hf(HFSource(qa, columns={"prompt": "q", "completion": "a"}), bpe_tokenizer).sft
    assert len(sft) == 3 and sft.loss.any()
    chat = save(tmp_path, [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}],
                "disk", "chat")
    assert tokenize_hf(HFSource(chat), bpe_tokenizer).sft is not None  # the messages column found by its name
    texts = save(tmp_path, [{"text": f"document number {i}"} for i in range(5)], "parquet", "texts")
    data = tokenize_hf(HFSource(texts), bpe_tokenizer)
    assert data.sft is None and len(data.text) == 5
    assert data.text.tokens(1).tolist() == bpe_tokenizer("document number 1")["input_ids"] + [
        bpe_tokenizer.eos_token_id]


def test_bad_input_names_dataset_split_row_and_column(tmp_path, bpe_tokenizer):
    rows = squad_rows(3)
    del rows[0]["answers"], rows[1]["answers"], rows[2]["answers"]
    with pytest.raises(DataError, match=r"squad .* split 'train': no column 'answers' \(columns: "):
        tokenize_hf(HFSource(save(tmp_path, rows, name="a"), preset="squad"), bpe_tokenizer)
    rows = squad_rows(3)
    rows[2]["answers"] = {"text": [], "answer_start": []}
    with pytest.raises(DataError, match=r"split 'train', row 2, column 'answers': .*at least one answer"):
        tokenize_hf(HFSource(save(tmp_path, rows, name="b"), preset="squad"), bpe_tokenizer)
    chat = [{"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "yo"}]}]
    with pytest.raises(DataError, match=r"tulu3 .*row 0: messages\[1\] has unknown role 'robot'"):
        tokenize_hf(HFSource(save(tmp_path, chat, "json", "c"), preset="tulu3"), bpe_tokenizer)
    datasets.Dataset.from_dict({"text": []}).to_parquet(str(tmp_path / "empty.parquet"))
    with pytest.raises(DataError, match="split 'train': the split is empty"):
        tokenize_hf(HFSource(str(tmp_path / "empty.parquet")), bpe_tokenizer)
    datasets.DatasetDict({"train": datasets.Dataset.from_list(squad_rows(2))}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(DataError, match="no split 'test' \\(splits: train\\); set dataset.hf_split"):
        tokenize_hf(HFSource(str(tmp_path / "dict"), split="test"), bpe_tokenizer)


def test_a_prompt_longer_than_seq_length_is_dropped_and_counted(tmp_path, bpe_tokenizer):
    rows = squad_rows(4)
    rows[1]["context"] = "word " * 200
    source = HFSource(save(tmp_path, rows), preset="squad", val_proportion=0)
    with pytest.warns(UserWarning, match="dropped 1 of 4 conversations whose prompt fills seq_length=64"):
        train, _ = build_datasets("hf", seq_length=64, tokenizer=bpe_tokenizer, hf_source=source, packing=False)
    assert len(train) == 3


def test_tokenized_rows_are_cached_and_read_back(tmp_path, bpe_tokenizer, capsys, monkeypatch):
    source = HFSource(save(tmp_path, squad_rows(30)), preset="squad")
    first = tokenize_hf(source, bpe_tokenizer, cache_dir=tmp_path / "cache", log_interval=0)
    err = capsys.readouterr().err
    assert "tokenizing squad" in err and "docs/s" in err and "ETA" in err
    monkeypatch.setattr("minibridge.training.data.hf._encode_split", lambda *a, **k: pytest.fail("tokenized again"))
    again = tokenize_hf(source, bpe_tokenizer, cache_dir=tmp_path / "cache")
    assert "read from the cache" in capsys.readouterr().out
    assert np.array_equal(first.sft.ids, again.sft.ids) and np.array_equal(first.sft.loss, again.sft.loss)
    assert len(list((tmp_path / "cache").glob("squad-*.npz"))) == 1
    monkeypatch.undo()
    tokenize_hf(source, bpe_tokenizer, cache_dir=tmp_path / "cache", settings={"seq_length": 128})
    assert len(list((tmp_path / "cache").glob("squad-*.npz"))) == 2  # another key: another file


def test_offline_hub_id_fails_with_one_line_saying_what_to_pass(tmp_path):
    code = ("from minibridge.training.data import HFSource\nfrom minibridge.training.data.hf import load_split\n"
            "load_split(HFSource(preset='squad'))")
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    last = proc.stderr.strip().splitlines()[-1]
    assert "DataError: cannot load Hugging Face dataset 'rajpurkar/squad'" in last
    assert "dataset.hf_path=DIR" in last and "dataset.data_paths=" in last and "--dataset" in last


def test_preprocess_hf_dataset_writes_the_same_bin_idx_as_jsonl(tmp_path, bpe_tokenizer_dir):
    texts = [f"The {i}th document of the corpus." for i in range(40)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    path = save(tmp_path, [{"text": t} for t in texts], "parquet", "c")
    run = [sys.executable, "-m", "minibridge.training.data.preprocess", "--tokenizer", bpe_tokenizer_dir, "--append-eod"]
    hf = subprocess.run(run + ["--hf-dataset", path, "--output-prefix", str(tmp_path / "hf")], capture_output=True,
                        text=True, timeout=300)
    assert hf.returncode == 0, hf.stderr
    assert "tokenizing" in hf.stderr and "ETA" in hf.stderr
    subprocess.run(run + ["--input", str(tmp_path / "c.jsonl"), "--output-prefix", str(tmp_path / "js")], check=True,
                   capture_output=True, timeout=300)
    a, b = IndexedDataset(tmp_path / "hf_text_document"), IndexedDataset(tmp_path / "js_text_document")
    assert len(a) == len(b) == 40 and all(np.array_equal(a[i], b[i]) for i in range(40))
    bad = subprocess.run(run + ["--hf-dataset", path, "--json-keys", "body", "--output-prefix", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "no column 'body'" in bad.stderr.strip().splitlines()[-1]
