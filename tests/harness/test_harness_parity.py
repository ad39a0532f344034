"""`--model minibridge` gives what `--model hf` gives on the same checkpoint: loglikelihoods (multiple
choice and rolling perplexity) to fp32 rounding, greedy flags and generated strings exactly, for both
families, with the HF folder or a minibridge checkpoint (with or without the HF folder) as the source."""

from __future__ import annotations

import pytest
from harness_helpers import (MAX_LENGTH, PROMPTS, TASKS, assert_same, assert_same_results, evaluate, hf_results,
                             responses)
from hf_checkpoints import make_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_tasks_equal_hf(harness_lms, harness_tasks, family):
    theirs = hf_results(harness_lms[family], harness_tasks)
    ours = evaluate("minibridge", f"pretrained={harness_lms[family]}", harness_tasks)
    assert_same_results(ours, theirs)
    # the rolling task really rolls: some texts are longer than one window
    assert max(len(s["doc"]["text"]) for s in ours["samples"]["mb_rolling"]) > 4 * MAX_LENGTH
    assert ours["config"]["model_num_parameters"] > 0


def _requests(kind: str, arguments: list[tuple]):
    from lm_eval.api.instance import Instance

    return [Instance(request_type=kind, doc={}, arguments=args, idx=i) for i, args in enumerate(arguments)]


def _greedy_pairs(hf, words: list[str], count: int = 3) -> list[tuple[str, str]]:
    """(context, continuation) pairs whose continuation is transformers' greedy next token, among contexts
    where that token's text encodes back to the same token (a random model often picks a lone byte)."""
    import torch

    pairs = []
    for i in range(1, len(words)):
        context = " ".join(words[:i])
        ids = hf.tok_encode(context)
        with torch.no_grad():
            token = int(hf.model(torch.tensor([ids])).logits[0, -1].argmax())
        text = hf.tok_decode([token])
        if text.strip() and hf.tok_encode(context + text) == ids + [token]:
            pairs.append((context, text))
        if len(pairs) == count:
            return pairs
    raise AssertionError(f"no context among {words} has a greedy token that encodes back to itself")


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_requests_equal_hf(harness_lms, family):
    """Direct requests: greedy continuations (is_greedy true), contexts past max_length, batch sizes and the
    one-token forward sharing that cannot change a score, and stop strings the outputs really hold."""
    from lm_eval.models.huggingface import HFLM

    from minibridge.harness import MinibridgeLM

    folder = str(harness_lms[family])
    common = dict(dtype="float32", device="cpu", max_length=MAX_LENGTH)
    hf, ours = HFLM(pretrained=folder, batch_size=4, **common), MinibridgeLM(pretrained=folder, batch_size=4, **common)
    greedy = {"until": [], "max_gen_toks": 8, "do_sample": False}
    raw = ours.generate_until(_requests("generate_until", [(p, greedy) for p in PROMPTS]))
    assert raw == hf.generate_until(_requests("generate_until", [(p, greedy) for p in PROMPTS]))
    assert len(set(raw)) > 1 and all(raw)

    long_context = " ".join(PROMPTS * 3)  # longer than max_length: truncated from the left
    pairs = [(p, text) for p, text in zip(PROMPTS, raw)] + _greedy_pairs(hf, long_context.split()) + [
        (long_context, " and so on"), (long_context, raw[0]), ("Pick one: ", "A"), ("Pick one: ", "B"), ("", "x y")]
    expected = hf.loglikelihood(_requests("loglikelihood", pairs))
    got = ours.loglikelihood(_requests("loglikelihood", pairs))
    assert_same(got, expected)
    assert any(is_greedy for _, is_greedy in got) and not all(is_greedy for _, is_greedy in got)
    alone = MinibridgeLM(pretrained=folder, batch_size=1, logits_cache=False, **common)
    assert_same(alone.loglikelihood(_requests("loglikelihood", pairs)), got)

    texts = [(long_context,), ("",), (PROMPTS[1],)]
    rolling = ours.loglikelihood_rolling(_requests("loglikelihood_rolling", texts))
    assert_same(rolling, hf.loglikelihood_rolling(_requests("loglikelihood_rolling", texts)))
    assert_same(alone.loglikelihood_rolling(_requests("loglikelihood_rolling", texts)), rolling)

    # add_bos_token=false reaches the tokenizer as it does in HFLM (and changes the scores)
    no_bos = dict(add_bos_token=False, batch_size=4, **common)
    few = _requests("loglikelihood", pairs[-3:-1])  # contexts short enough to keep their first token
    without = MinibridgeLM(pretrained=folder, **no_bos).loglikelihood(few)
    assert_same(without, HFLM(pretrained=folder, **no_bos).loglikelihood(few))
    with pytest.raises(AssertionError):
        assert_same(without, got[-3:-1])

    # a stop string from the middle of each output: the text ends before its first occurrence
    stops = [(p, {"until": [text[len(text) // 2]], "max_gen_toks": 8}) for p, text in zip(PROMPTS, raw)]
    cut = ours.generate_until(_requests("generate_until", stops))
    assert cut == hf.generate_until(_requests("generate_until", stops))
    assert cut == [text.split(text[len(text) // 2])[0] for text in raw]
    assert any(0 < len(c) < len(text) for c, text in zip(cut, raw))


def test_checkpoint_sources_equal_hf(harness_lms, harness_tasks, tmp_path):
    """A minibridge checkpoint of other weights (same architecture): its scores, not the HF folder's, with
    the HF folder beside it or alone (architecture from run.json, tokenizer named)."""
    import json
    import shutil

    from minibridge.conversion import import_checkpoint
    from minibridge.errors import ConfigError
    from minibridge.harness import MinibridgeLM

    base = harness_lms["llama"]
    other = tmp_path / "other"
    shutil.copytree(base, other)
    make_checkpoint(other, json.loads((base / "config.json").read_text()), seed=7)
    checkpoint = tmp_path / "ckpt"
    import_checkpoint(other, checkpoint, progress=False)
    tasks = TASKS[:2]
    theirs = hf_results(other, harness_tasks)
    for args in (f"pretrained={base},checkpoint={checkpoint}", f"checkpoint={checkpoint},tokenizer={base}"):
        assert_same_results(evaluate("minibridge", args, harness_tasks, tasks=tasks), theirs, tasks)
    with pytest.raises(AssertionError):  # and the checkpoint's weights are not the HF folder's
        assert_same(responses(hf_results(base, harness_tasks), "mb_rolling"), responses(theirs, "mb_rolling"))
    with pytest.raises(ConfigError, match="tokenizer=DIR"):
        MinibridgeLM(checkpoint=str(checkpoint))
