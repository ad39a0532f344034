"""SFT rows: answer-only loss masks checked against hand-built token lists (word-level tokenizer with
known ids, see conftest.VOCAB), the real chat template of the trained BPE tokenizer, packing, errors."""

import numpy as np
import pytest
from data_helpers import identity_seed, rows, write_jsonl

from minibridge.training.data import DataError, SFTDataset, SFTSource, build_datasets

# VOCAB ids: 0 bos, 1 eos, 2 pad, 3 im_start, 4 im_end, 5 user, 6 assistant, 7 system, 8 hi, 9 yo,
# 10 what, 11 is, 12 two, 13 four, 14 ok
QA = {"prompt": "what is two", "completion": "four"}
# <|bos|><|im_start|>user\nwhat is two<|im_end|>\n<|im_start|>assistant\n | four<|im_end|>\n
QA_CHAT = [0, 3, 5, 10, 11, 12, 4, 3, 6, 13, 4]
QA_CHAT_LOSS = [0] * 9 + [1, 1]
DIALOG = {"messages": [{"role": "system", "content": "ok"}, {"role": "user", "content": "hi"},
                       {"role": "assistant", "content": "yo"}, {"role": "user", "content": "what is two"},
                       {"role": "assistant", "content": "four"}]}
DIALOG_IDS = [0, 3, 7, 14, 4, 3, 5, 8, 4, 3, 6, 9, 4, 3, 5, 10, 11, 12, 4, 3, 6, 13, 4]
DIALOG_LOSS = [0] * 11 + [1, 1] + [0] * 8 + [1, 1]


def source(tmp_path, tokenizer, rows_, chat_template=True):
    return SFTSource(write_jsonl(tmp_path / "sft.jsonl", rows_), tokenizer, chat_template=chat_template)


def labels_of(ids, loss):
    return [t if m else -100 for t, m in zip(ids, loss)]


def test_prompt_completion_with_chat_template(tmp_path, word_tokenizer):
    src = source(tmp_path, word_tokenizer, [QA])
    assert src.ids.tolist() == QA_CHAT and src.loss.astype(int).tolist() == QA_CHAT_LOSS


def test_prompt_completion_without_template_ends_with_eos(tmp_path, word_tokenizer):
    src = source(tmp_path, word_tokenizer, [QA], chat_template=False)
    assert src.ids.tolist() == [0, 10, 11, 12, 13, 1]  # BOS from the tokenizer, EOS appended
    assert src.loss.astype(int).tolist() == [0, 0, 0, 0, 1, 1]


def test_messages_train_on_every_assistant_turn(tmp_path, word_tokenizer):
    src = source(tmp_path, word_tokenizer, [DIALOG])
    assert src.ids.tolist() == DIALOG_IDS and src.loss.astype(int).tolist() == DIALOG_LOSS


def test_unpacked_rows_pad_one_conversation(tmp_path, word_tokenizer):
    src = source(tmp_path, word_tokenizer, [QA])
    (row,) = rows(SFTDataset(src, np.arange(1), 14, seed=0, packing=False, pad_id=2, name="t"))
    assert row == {"input_ids": QA_CHAT + [2, 2, 2], "labels": labels_of(QA_CHAT, QA_CHAT_LOSS) + [-100] * 3,
                   "position_ids": list(range(14)), "document_ids": [0] * 14}


def test_packed_rows_hold_several_conversations(tmp_path, word_tokenizer):
    src = source(tmp_path, word_tokenizer, [QA, DIALOG, QA])  # 11 + 23 + 11 tokens
    ds = SFTDataset(src, np.arange(3), 36, seed=identity_seed(3), packing=True, pad_id=2, name="t")
    assert ds.bounds.tolist() == [0, 2, 3]  # [QA, DIALOG] fill 34 of 36; the second QA needs a new row
    first, second = rows(ds)
    assert first["input_ids"] == QA_CHAT + DIALOG_IDS + [2, 2]
    assert first["labels"] == labels_of(QA_CHAT, QA_CHAT_LOSS) + labels_of(DIALOG_IDS, DIALOG_LOSS) + [-100] * 2
    assert first["position_ids"] == list(range(11)) + list(range(23)) + [0, 1]
    assert first["document_ids"] == [0] * 11 + [1] * 23 + [2, 2]
    assert second["input_ids"] == QA_CHAT + [2] * 25 and second["document_ids"] == [0] * 11 + [1] * 25


def test_long_conversations_are_truncated_with_a_warning(tmp_path, word_tokenizer):
    src = source(tmp_path, word_tokenizer, [DIALOG])
    with pytest.warns(UserWarning, match="1 of 1 conversations are longer than seq_length=12"):
        ds = SFTDataset(src, np.arange(1), 12, seed=0, packing=True, pad_id=2, name="t")
    assert rows(ds)[0]["input_ids"] == DIALOG_IDS[:12]


def test_chat_template_of_the_trained_tokenizer(tmp_path, bpe_tokenizer):
    path = write_jsonl(tmp_path / "chat.jsonl", [DIALOG, {"prompt": "Say hi.", "completion": "Hi there!"}])
    src = SFTSource(path, bpe_tokenizer)
    answers = [bpe_tokenizer.decode(src.ids[s : s + n][src.loss[s : s + n]])
               for s, n in zip(src.starts, src.lengths)]
    assert answers == ["yo<|im_end|>\nfour<|im_end|>\n", "Hi there!<|im_end|>\n"]
    # the whole row is exactly what the template renders, as inference would tokenize it
    full = bpe_tokenizer.apply_chat_template(DIALOG["messages"], tokenize=False)
    assert bpe_tokenizer.decode(src.ids[: src.lengths[0]]) == full


def test_build_sft_datasets(tmp_path, bpe_tokenizer_dir):
    path = write_jsonl(tmp_path / "sft.jsonl", [DIALOG, QA] * 20)
    train, valid = build_datasets("sft", seq_length=64, data_paths=[path], tokenizer=bpe_tokenizer_dir,
                                  split="90,10,0", seed=5)
    again, _ = build_datasets("sft", seq_length=64, data_paths=[path], tokenizer=bpe_tokenizer_dir,
                              split="90,10,0", seed=5)
    assert rows(train) == rows(again) and len(valid) >= 1
    for r in rows(train):
        assert len(r["input_ids"]) == 64
        assert sum(t != -100 for t in r["labels"]) > 0
        starts = [t for t in range(64) if t == 0 or r["document_ids"][t] != r["document_ids"][t - 1]]
        assert all(r["position_ids"][t] == 0 and r["labels"][t] == -100 for t in starts)


@pytest.mark.parametrize("row, chat_template, message", [
    ({"messages": DIALOG["messages"]}, False, r"sft.jsonl:2: 'messages' rows need a chat template, but chat_template=False"),
    ({"messages": [{"role": "user", "content": "hi"}]}, True, r"sft.jsonl:2: no message has role 'assistant'"),
    ({"messages": [{"role": "user"}]}, True, r"sft.jsonl:2: messages\[0\] must be an object with 'role' and 'content'"),
    ({"messages": [{"role": "assistant", "content": "yo"}]}, True, r"sft.jsonl:2: the conversation starts with an assistant"),
    ({"messages": []}, True, r"sft.jsonl:2: 'messages' must be a non-empty list"),
    ({"prompt": "hi"}, True, r"sft.jsonl:2: missing key 'completion'"),
    ({"prompt": "hi", "completion": 3}, True, r"sft.jsonl:2: key 'completion' must be str, got int"),
    ({"question": "hi"}, True, r"sft.jsonl:2: missing key 'messages' or 'prompt'/'completion' \(keys present: \['question'\]\)"),
    ("{not json", True, r"sft.jsonl:2: not valid JSON"),
    ("[1, 2]", True, r"sft.jsonl:2: expected a JSON object, got list"),
])
def test_bad_rows_name_file_line_and_key(tmp_path, word_tokenizer, row, chat_template, message):
    with pytest.raises(DataError, match=message):
        source(tmp_path, word_tokenizer, [QA, row], chat_template=chat_template)


def test_messages_need_a_tokenizer_with_a_template(tmp_path, word_tokenizer):
    import copy

    bare = copy.deepcopy(word_tokenizer)
    bare.chat_template = None
    with pytest.raises(DataError, match="'messages' rows need a chat template, but tokenizer .* has none"):
        source(tmp_path, bare, [DIALOG])
    assert source(tmp_path, bare, [QA]).ids.tolist() == [0, 10, 11, 12, 13, 1]  # prompt/completion falls back
