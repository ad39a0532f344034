"""Generation arguments: temperature 0 is greedy, out-of-range sampling settings and contexts past the
model's positions are named errors (API: ConfigError; CLI: one line, exit code 2)."""

import math

import pytest
import torch
from hf_checkpoints import make_checkpoint, real_config, shrink

from minibridge import AutoBridge
from minibridge.errors import ConfigError
from minibridge.generate import generate_ids, left_pad, main, sampling_settings

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(folder):
    return AutoBridge.from_hf_pretrained(folder).to_model(progress=False).eval()


def test_temperature_zero_is_greedy_whatever_top_k_and_top_p_say(tiny_lms):
    model = _model(tiny_lms["llama"])
    ids, mask = left_pad([list(range(3, 12)), [5, 6, 7]], 2)
    greedy = generate_ids(model, ids, mask, max_new_tokens=6)
    for top_k, top_p in ((5, None), (None, 0.9), (50, 0.5)):
        got = generate_ids(model, ids, mask, max_new_tokens=6, do_sample=True, temperature=0.0, top_k=top_k,
                           top_p=top_p, seed=3)
        assert torch.equal(got, greedy), (top_k, top_p)


@pytest.mark.parametrize("kwargs, named", [
    (dict(temperature=-1.0), "temperature=-1.0"), (dict(temperature=math.nan), "temperature=nan"),
    (dict(temperature=math.inf), "temperature=inf"), (dict(top_k=0), "top_k=0"), (dict(top_k=-1), "top_k=-1"),
    (dict(top_k=2.5), "top_k=2.5"), (dict(top_p=1.5), "top_p=1.5"), (dict(top_p=0.0), "top_p=0.0"),
    (dict(top_p=math.nan), "top_p=nan"), (dict(max_new_tokens=0), "max_new_tokens=0"),
])
def test_out_of_range_sampling_settings_are_named(kwargs, named):
    settings = dict(do_sample=True, temperature=1.0, top_k=None, top_p=None, max_new_tokens=4) | kwargs
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        sampling_settings(**settings)


def test_generation_past_max_position_embeddings_says_how_to_extend(tmp_path):
    folder = make_checkpoint(tmp_path / "short", shrink(real_config("Llama-3.2-1B"), max_position_embeddings=16))
    model = _model(folder)
    ids = torch.arange(3, 13)[None]  # 10 tokens
    assert generate_ids(model, ids, max_new_tokens=6).shape == (1, 6)  # 16 positions: exactly the limit
    with pytest.raises(ConfigError, match=r"17 positions.*max_position_embeddings=16.*rope"):
        generate_ids(model, ids, max_new_tokens=7)


@pytest.mark.parametrize("args, named", [
    (["--max_new_tokens", "0"], "max_new_tokens=0"), (["--top_k", "-1"], "top_k=-1"),
    (["--temperature", "nan"], "temperature=nan"), (["--top_p", "2"], "top_p=2.0"),
])
def test_cli_bad_arguments_are_one_line_and_exit_2(tiny_lms, capsys, args, named):
    assert main(["--hf_model_path", str(tiny_lms["llama"]), "--prompt", "x", *args]) == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_temperature_zero_prints_the_greedy_text(tiny_lms, capsys):
    common = ["--hf_model_path", str(tiny_lms["gemma"]), "--prompt", "def f(x):", "--max_new_tokens", "5"]
    assert main(common) == 0
    greedy = capsys.readouterr().out.split("prefill:")[0]
    assert main(common + ["--temperature", "0", "--top_k", "3", "--seed", "7"]) == 0
    assert capsys.readouterr().out.split("prefill:")[0] == greedy
