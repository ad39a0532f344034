"""Generation with the KV cache: cached forwards equal full forwards, greedy ids equal transformers'
`generate(do_sample=False)` (batched, left-padded, past Gemma's window), the sliding-window ring stays
bounded, sampling is reproducible, tensor parallelism gives the same tokens, and the CLI works."""

import json

import pytest
import torch
from gen_workers import PROMPTS, SAMPLING, parallel_generate, run_generate
from hf_checkpoints import load_hf
from spawn import run_distributed
from transformers import AutoTokenizer

from minibridge import AutoBridge
from minibridge.generate import GenerationStats, choose_tokens, generate, generate_ids, left_pad, main
from minibridge.models import KVCache

pytestmark = pytest.mark.usefixtures("one_thread")

EOS, PAD = 1, 2


def _model(folder):
    return AutoBridge.from_hf_pretrained(folder).to_model(progress=False).eval()


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_cached_forward_equals_full_forward(tiny_lms, family):
    model = _model(tiny_lms[family])
    ids = torch.randint(3, model.config.vocab_size, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(model.config, capacity=4)  # small: full layers grow while running
        pieces, t = [model(ids[:, :11], kv_cache=cache)], 11
        for step in (1, 1, 3, 1, 5, 1, 1, 2, 4):  # single tokens and chunks, before and after the ring wraps
            pieces.append(model(ids[:, t : t + step], kv_cache=cache))
            t += step
    assert t == 30 and cache.length == 30
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_greedy_ids_equal_transformers_batched_and_left_padded(tiny_lms, family):
    folder = tiny_lms[family]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    assert batch["attention_mask"].sum(1).tolist()[1] > 8 + 4  # past the window: the ring wraps in the prefill
    hf = load_hf(folder).generate(**batch, max_new_tokens=24, do_sample=False, eos_token_id=EOS, pad_token_id=PAD)
    expected = hf[:, batch["input_ids"].shape[1]:]
    model = _model(folder)
    ids, mask = left_pad([tokenizer(p)["input_ids"] for p in PROMPTS], PAD)
    assert torch.equal(ids, batch["input_ids"]) and torch.equal(mask, batch["attention_mask"])
    ours = generate_ids(model, ids, mask, max_new_tokens=24, eos_token_id=EOS, pad_token_id=PAD)
    assert torch.equal(ours, expected)
    for row, prompt in enumerate(PROMPTS):  # each prompt alone gives its row of the batch
        alone = generate_ids(model, torch.tensor([tokenizer(prompt)["input_ids"]]), max_new_tokens=24, eos_token_id=EOS)
        assert alone[0].tolist() == ours[row, : alone.shape[1]].tolist()
    texts, rows = generate(model, tokenizer, PROMPTS, max_new_tokens=24, return_ids=True)
    for row, text, new in zip(expected.tolist(), texts, rows):
        trimmed = row[: row.index(EOS) + 1] if EOS in row else row
        assert new == trimmed and text == tokenizer.decode(trimmed, skip_special_tokens=True)


def test_sliding_layers_keep_a_bounded_ring(tiny_lms):
    model = _model(tiny_lms["gemma"])
    window, B = model.config.sliding_window, 2
    sliding = [i for i, kind in enumerate(model.config.layer_types) if kind == "sliding_attention"]
    full = [i for i in range(model.config.num_layers) if i not in sliding]
    cache = KVCache(model.config, capacity=1)
    ids = torch.randint(3, 300, (B, 20))
    sizes = []
    with torch.no_grad():
        model(ids, kv_cache=cache)
        for t in range(40):
            model(ids[:, t % 20 : t % 20 + 1], kv_cache=cache)
            sizes.append(cache.memory_bytes())
    per_ring = 2 * B * (window - 1) * model.config.num_kv_heads * model.config.head_dim * 4  # k and v, fp32
    for i in sliding:
        assert cache.layers[i].keys.shape[1] == window - 1
        assert {s[i] for s in sizes} == {per_ring}
    for i in full:
        assert cache.layers[i].keys.shape[1] >= 60 and sizes[-1][i] > sizes[0][i]


def test_sampling_is_reproducible_with_a_seed(tiny_lms):
    model, tokenizer = _model(tiny_lms["llama"]), AutoTokenizer.from_pretrained(tiny_lms["llama"])

    def ids(**kw):
        return generate(model, tokenizer, PROMPTS, max_new_tokens=16, return_ids=True, **kw)[1]

    first = ids(**SAMPLING)
    assert ids(**SAMPLING) == first
    assert ids(**{**SAMPLING, "seed": 4}) != first
    greedy = ids()
    assert ids(do_sample=True, top_k=1, seed=0) == greedy  # top-k 1 and a tiny top-p leave the argmax only
    assert ids(do_sample=True, top_p=1e-6, seed=0) == greedy


def test_top_k_and_top_p_filter_like_transformers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    expected = TopPLogitsWarper(0.7)(None, TopKLogitsWarper(10)(None, logits / 0.5)).softmax(-1)
    draws = torch.stack([choose_tokens(logits, True, 0.5, 10, 0.7, torch.Generator().manual_seed(s)) for s in range(400)])
    allowed = expected > 0
    assert bool(allowed.gather(1, draws.t()).all())  # never a token transformers filters out
    freq = torch.zeros_like(expected).scatter_add_(1, draws.t(), torch.ones(4, 400)) / 400
    assert (freq - expected).abs().max() < 0.1


def test_tensor_and_pipeline_parallel_generate_the_same_tokens(tiny_lms, tmp_path):
    expected = {key: {"greedy": run_generate(folder)[1], "sampled": run_generate(folder, **SAMPLING)[1]}
                for key, folder in tiny_lms.items()}
    run_distributed(parallel_generate, 2, dict(tiny_lms), expected, str(tmp_path))
    text = (tmp_path / "stdout.txt").read_text()
    assert "tokens/s" in text and PROMPTS[1] in text
    texts = run_generate(tiny_lms["gemma"])[0]  # the streamed pp=2 command line prints them in order
    streamed = (tmp_path / "pp_stdout.txt").read_text().split("prefill:")[0]
    assert streamed == "".join(f"=== prompt: {p}\n{t}\n" for p, t in zip(PROMPTS, texts))


def test_command_line(tiny_lms, tmp_path, capsys):
    folder = tiny_lms["gemma"]
    texts = run_generate(folder)[0]
    args = ["--hf_model_path", str(folder), "--max_new_tokens", "12"] + [a for p in PROMPTS for a in ("--prompt", p)]
    assert main(args) == 0  # the tiny tokenizer has a chat template: on by default
    chat = run_generate(folder, apply_chat_template=True)[0]
    assert capsys.readouterr().out.split("prefill:")[0] == "".join(f"=== prompt: {p}\n{t}\n" for p, t in zip(PROMPTS, chat))
    args.append("--no-chat-template")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.split("prefill:")[0] == "".join(f"=== prompt: {p}\n{t}\n" for p, t in zip(PROMPTS, texts))
    assert "prefill:" in out and "decode:" in out and "tokens/s" in out
    assert main(args + ["--temperature", "0.8", "--top_k", "50", "--seed", "3"]) == 0
    sampled = capsys.readouterr().out
    assert main(args + ["--temperature", "0.8", "--top_k", "50", "--seed", "3"]) == 0
    assert capsys.readouterr().out.split("prefill:")[0] == sampled.split("prefill:")[0]
    assert main(args[:-1] + ["--apply_chat_template"]) == 0
    assert capsys.readouterr().out.split("prefill:")[0].endswith(f"{chat[-1]}\n")

    from minibridge.convert import main as convert

    assert convert(["import", "--hf-model", str(folder), "--megatron-path", str(tmp_path / "mb"), "--no-progress"]) == 0
    assert main(args + ["--megatron_model_path", str(tmp_path / "mb")]) == 0
    last = capsys.readouterr().out
    assert all(t in last for t in texts), (last, texts)
    assert convert(["import", "--hf-model", str(folder), "--megatron-path", str(tmp_path / "mcore"), "--format",
                    "megatron", "--no-progress"]) == 0  # a Megatron-Core torch_dist folder
    assert main(args + ["--megatron_model_path", str(tmp_path / "mcore")]) == 0
    last = capsys.readouterr().out
    assert all(t in last for t in texts), (last, texts)


def test_stats_and_chat_template(tiny_lms):
    model, tokenizer = _model(tiny_lms["llama"]), AutoTokenizer.from_pretrained(tiny_lms["llama"])
    stats = GenerationStats()
    texts = generate(model, tokenizer, "hello", max_new_tokens=5, eos_token_id=[], stats=stats)
    assert len(texts) == 1 and stats.new_tokens == 4 and stats.prompt_tokens == len(tokenizer("hello")["input_ids"])
    assert stats.prefill_tokens_per_s > 0 and stats.decode_tokens_per_s > 0
    _, rows = generate(model, tokenizer, ["hello"], max_new_tokens=3, apply_chat_template=True, eos_token_id=[],
                       return_ids=True)
    assert len(rows[0]) == 3


def test_bad_inputs(tiny_lms, tmp_path, capsys):
    model, tokenizer = _model(tiny_lms["llama"]), AutoTokenizer.from_pretrained(tiny_lms["llama"])
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        generate(model, tokenizer, "hi", max_new_tokens=0)
    with pytest.raises(ValueError, match="no prompts"):
        generate(model, tokenizer, [])
    with pytest.raises(ValueError, match="at least one token"):
        generate_ids(model, torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3))
    assert main(["--hf_model_path", str(tmp_path / "nowhere"), "--prompt", "x"]) == 2
    assert "not a model folder" in capsys.readouterr().err
    bare = tmp_path / "bare"  # weights and config, no tokenizer
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((tiny_lms["llama"] / name).read_bytes())
    assert main(["--hf_model_path", str(bare), "--prompt", "x"]) == 2
    assert "tokenizer" in capsys.readouterr().err
    assert main(["--hf_model_path", str(tiny_lms["llama"]), "--prompt", "x", "--megatron_model_path", str(tmp_path)]) == 2
    assert "found neither run.json" in capsys.readouterr().err
    assert json.loads((tiny_lms["llama"] / "config.json").read_text())["eos_token_id"] == EOS


def test_triton_kernels_generate_the_same_tokens(tiny_lms, monkeypatch):
    """The GPU path (Triton attention, RMSNorm, RoPE; interpreted here) with the cache, padding and the ring."""
    model = _model(tiny_lms["gemma"])
    ids, mask = left_pad([list(range(3, 14)), [7, 8, 9]], PAD)  # 11 tokens: past the window in the prefill
    expected = generate_ids(model, ids, mask, max_new_tokens=3)
    monkeypatch.setenv("MINIBRIDGE_KERNEL_BACKEND", "triton")
    assert torch.equal(generate_ids(model, ids, mask, max_new_tokens=3), expected)
