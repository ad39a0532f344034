"""Text-level generation: streamed pieces add up to the returned texts exactly (API and CLI), stop
strings cut the text before them and stop the row, prompts files run in batches in input order, and
the chat template is on by default exactly when the tokenizer has one."""

import json
import shutil

import pytest
import torch
from gen_workers import PROMPTS, SAMPLING
from transformers import AutoTokenizer

from minibridge import AutoBridge
from minibridge.errors import ConfigError
from minibridge.generate import generate, main
from minibridge.generation import RowTexts, settled_length

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llama(tiny_lms):
    folder = tiny_lms["llama"]
    return AutoBridge.from_hf_pretrained(folder).to_model(progress=False).eval(), AutoTokenizer.from_pretrained(folder)


def _stop_in(text: str) -> str:
    """Two characters of `text` (from its middle on, preferably), none of them a replacement character."""
    starts = [*range(len(text) // 2, len(text) - 1), *range(len(text) // 2)]
    return next(text[i:i + 2] for i in starts if "\ufffd" not in text[i:i + 2])


def _collect():
    pieces = {}

    def streamer(index, piece):
        assert piece, "no empty pieces"
        pieces.setdefault(index, []).append(piece)

    return pieces, streamer


@pytest.mark.parametrize("sampling", [{}, SAMPLING], ids=["greedy", "sampled"])
def test_streamed_text_equals_the_returned_text(llama, sampling):
    model, tokenizer = llama
    plain = generate(model, tokenizer, PROMPTS, max_new_tokens=24, eos_token_id=[], **sampling)
    pieces, streamer = _collect()
    texts = generate(model, tokenizer, PROMPTS, max_new_tokens=24, eos_token_id=[], streamer=streamer, **sampling)
    assert texts == plain
    assert {i: "".join(p) for i, p in pieces.items()} == {i: t for i, t in enumerate(texts) if t}


def test_partial_characters_and_words_wait(llama):
    _, tokenizer = llama
    text = "naïve café: 日本語 text\nnext line, ünïcödé €100 done"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert any("\ufffd" in tokenizer.decode(ids[:n]) for n in range(len(ids)))  # some tokens end mid character
    pieces, streamer = _collect()
    rows = RowTexts(tokenizer, 1, eos=[], stops=[], streamer=streamer)
    for token in ids:
        rows(torch.tensor([token]), None)
        settled = "".join(pieces.get(0, []))
        assert "\ufffd" not in settled and text.startswith(settled)
        assert settled == "" or settled.endswith("\n") or text[len(settled)] == " "  # whole words only
    assert "".join(pieces[0]) == text[: text.rfind(" ")]  # all but the last word, before the end
    assert rows.close()[0] == [text] and "".join(pieces[0]) == text
    assert settled_length("ab cd", 0) == 2 and settled_length("ab\ncd", 0) == 3 and settled_length("ab\n", 0) == 3
    assert settled_length("ab cd ef", 4) == 4 and settled_length("x\ufffd", 0) == 0


def test_stop_strings_cut_the_text_and_stop_the_row(llama):
    model, tokenizer = llama
    full, full_ids = generate(model, tokenizer, PROMPTS, max_new_tokens=24, eos_token_id=[], return_ids=True)
    row = max(range(len(full)), key=lambda r: len(full[r]))
    stop = _stop_in(full[row])  # from the middle of the longest text
    pieces, streamer = _collect()
    texts, ids = generate(model, tokenizer, PROMPTS, max_new_tokens=24, eos_token_id=[], return_ids=True,
                          stop_strings=["never appears \x00", stop], streamer=streamer)
    for r in range(len(PROMPTS)):
        cut = full[r].find(stop)
        assert texts[r] == (full[r] if cut < 0 else full[r][:cut])
        assert "".join(pieces.get(r, [])) == texts[r]
        assert ids[r] == full_ids[r][: len(ids[r])]  # the same tokens, up to where the row stopped
        if cut >= 0:  # the last id completed the stop string
            assert stop in tokenizer.decode(ids[r]) and stop not in tokenizer.decode(ids[r][:-1])
    assert len(ids[row]) < len(full_ids[row])
    with pytest.raises(ConfigError, match="stop_strings"):
        generate(model, tokenizer, "x", stop_strings=[""])


def test_cli_stream_prompts_file_stop_and_batches(tiny_lms, tmp_path, capsys):
    folder = tiny_lms["gemma"]
    model = AutoBridge.from_hf_pretrained(folder).to_model(progress=False).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompts = PROMPTS[:2] + ["def f(x):"]  # one line each
    texts = generate(model, tokenizer, prompts, max_new_tokens=12, apply_chat_template=None)
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("\n".join(prompts[:2]) + "\n\n   \n" + prompts[2] + "\n")  # blank lines skipped
    common = ["--hf_model_path", str(folder), "--max_new_tokens", "12", "--prompts-file", str(prompts_file)]
    expected = "".join(f"=== prompt: {p}\n{t}\n" for p, t in zip(prompts, texts))
    for extra in ([], ["--stream"], ["--batch-size", "2"], ["--stream", "--batch-size", "2"], ["--batch-size", "1"]):
        assert main(common + extra) == 0
        assert capsys.readouterr().out.split("prefill:")[0] == expected, extra
    stop = _stop_in(texts[1])
    assert main(common + ["--stream", "--stop", stop, "--stop", "\x00none"]) == 0
    cut = [t[: t.find(stop)] if stop in t else t for t in texts]
    assert capsys.readouterr().out.split("prefill:")[0] == "".join(f"=== prompt: {p}\n{t}\n" for p, t in zip(prompts, cut))
    for path, named in ((tmp_path / "missing.txt", "no such file"), (tmp_path, "a folder")):
        assert main(common[:-1] + [str(path)]) == 2
        assert named in capsys.readouterr().err
    (tmp_path / "blank.txt").write_text("\n  \n\n")
    assert main(common[:-1] + [str(tmp_path / "blank.txt")]) == 2
    assert "no prompt in it" in capsys.readouterr().err


def test_chat_template_on_by_default_only_when_the_tokenizer_has_one(tiny_lms, llama, tmp_path, capsys):
    model, tokenizer = llama
    templated = generate(model, tokenizer, PROMPTS, max_new_tokens=6, apply_chat_template=True, return_ids=True)
    plain = generate(model, tokenizer, PROMPTS, max_new_tokens=6, return_ids=True)
    assert templated != plain  # the template changes what the model sees
    assert generate(model, tokenizer, PROMPTS, max_new_tokens=6, apply_chat_template=None, return_ids=True) == templated
    bare = tmp_path / "no_template"  # the same checkpoint, its tokenizer without a chat template
    shutil.copytree(tiny_lms["llama"], bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    untemplated = AutoTokenizer.from_pretrained(bare)
    assert not untemplated.chat_template
    assert generate(model, untemplated, PROMPTS, max_new_tokens=6, apply_chat_template=None, return_ids=True) == plain
    with pytest.raises(ConfigError, match="no chat template"):
        generate(model, untemplated, PROMPTS, apply_chat_template=True)
    args = ["--hf_model_path", str(bare), "--prompt", PROMPTS[0], "--max_new_tokens", "6"]
    assert main(args) == 0
    assert capsys.readouterr().out.startswith(f"=== prompt: {PROMPTS[0]}\n{plain[0][0]}\n")
    assert main(args + ["--apply_chat_template"]) == 2
    assert "no chat template" in capsys.readouterr().err
    assert main(["--hf_model_path", str(tiny_lms["llama"]), "--prompt", PROMPTS[0], "--max_new_tokens", "6"]) == 0
    assert capsys.readouterr().out.startswith(f"=== prompt: {PROMPTS[0]}\n{templated[0][0]}\n")
