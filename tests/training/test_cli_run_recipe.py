"""Megatron Bridge's run_recipe.py command line: --help, --mode/--model, --dataset presets, the convenience
flags, --dry-run, --deterministic, --config-file, Hydra's override grammar, and run_config.yaml."""

import json

import pytest
import yaml

from minibridge.train import main as train_main
from minibridge.training.command_line import USAGE

DEBUG = ["--recipe", "llama3_debug_pretrain_config"]


def dry_run(capsys, *argv) -> dict:
    assert train_main([*argv, "--dry-run"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.startswith("# recipe: ")
    return yaml.safe_load(out)


def error(capsys, *argv) -> str:
    assert train_main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err


def test_help_prints_the_usage_not_the_recipe_list(capsys):
    for flag in ("--help", "-h"):
        assert train_main([flag]) == 0
        out = capsys.readouterr().out
        assert out.strip() == USAGE
        for text in ("--mode", "--dataset", "-tp", "--dry-run", "--deterministic", "~key", "${section.key}",
                     "--config-file"):
            assert text in out
        assert "llama31_405b_pretrain_config" not in out


def test_convenience_flags_map_to_megatron_bridge_keys_and_trailing_overrides_win(capsys, tmp_path):
    cfg = dry_run(capsys, *DEBUG, "-tp", "2", "-pp", "2", "-vp", "2", "-cp", "1", "-gb", "16", "-mb", "2",
                  "-sl", "64", "-ms", "9", "--lr", "1e-3", "--min_lr=1e-5", "--warmup_iters", "3",
                  "--save_dir", str(tmp_path / "s"), "--load_dir", str(tmp_path / "l"), "--save_interval", "7",
                  "train.micro_batch_size=4")
    m = cfg["model"]
    assert (m["tensor_model_parallel_size"], m["pipeline_model_parallel_size"],
            m["virtual_pipeline_model_parallel_size"], m["context_parallel_size"]) == (2, 2, 2, 1)
    assert cfg["train"]["global_batch_size"] == 16 and cfg["train"]["train_iters"] == 9
    assert cfg["train"]["micro_batch_size"] == 4  # the trailing override beats -mb 2
    assert m["seq_length"] == cfg["dataset"]["seq_length"] == 64  # -sl sets the dataset; the model follows
    assert cfg["optimizer"]["lr"] == 1e-3 and cfg["optimizer"]["min_lr"] == 1e-5
    assert cfg["scheduler"]["lr_warmup_iters"] == 3
    assert cfg["checkpoint"]["save"] == str(tmp_path / "s") and cfg["checkpoint"]["load"] == str(tmp_path / "l")
    assert cfg["checkpoint"]["save_interval"] == 7


def test_modes_pick_the_fine_tuning_recipes(capsys, hf_checkpoint):
    src = str(hf_checkpoint("Llama-3.2-1B"))
    lora = dry_run(capsys, "--model", "llama3_debug", "--mode", "lora", "--pretrained_checkpoint", src)
    assert lora["peft"]["scheme"] == "lora" and lora["checkpoint"]["pretrained_checkpoint"] == src
    dora = dry_run(capsys, "--recipe", "llama3_debug_finetune_config", "--mode", "dora", "--pretrained-checkpoint", src)
    assert dora["peft"]["scheme"] == "dora"
    sft = dry_run(capsys, "--model", "llama3_debug", "--mode", "sft", "--pretrained-checkpoint", src)
    assert sft["peft"] is None and sft["checkpoint"]["pretrained_checkpoint"] == src
    # a pretrain recipe with a fine-tuning mode: that model's fine-tuning recipe
    mapped = dry_run(capsys, *DEBUG, "--mode", "lora", "--pretrained-checkpoint", src)
    assert mapped["peft"]["scheme"] == "lora"
    assert dry_run(capsys, "--model", "llama3_debug", "--mode", "pretrain")["peft"] is None
    # the older flag still works, alone
    assert dry_run(capsys, "--recipe", "llama3_debug_finetune_config", "--peft_scheme", "dora",
                   "--pretrained-checkpoint", src)["peft"]["scheme"] == "dora"


def test_modes_prefer_the_megatron_bridge_0_6_names_when_they_exist():
    from minibridge.training.command_line import choose_recipe, parse_run_recipe

    def pick(argv, names):
        return choose_recipe(parse_run_recipe(argv), names)

    dora = ["--model", "m", "--mode", "dora"]
    assert pick(dora, {"m_finetune_config", "m_peft_config"}) == ("m_peft_config", "dora")
    assert pick(dora, {"m_finetune_config"}) == ("m_finetune_config", "dora")
    sft = ["--model", "m", "--mode", "sft"]
    assert pick(sft, {"m_finetune_config", "m_sft_config"}) == ("m_sft_config", "none")
    assert pick(sft, {"m_finetune_config"}) == ("m_finetune_config", "none")
    assert pick(["--recipe", "m_pretrain_config", "--mode", "lora"], {"m_pretrain_config", "m_peft_config"}) == \
        ("m_peft_config", "lora")
    assert pick(["--recipe", "m_peft_config", "--mode", "dora"], {"m_peft_config"}) == ("m_peft_config", "dora")
    assert pick(["--recipe", "m_finetune_config"], {"m_finetune_config"}) == ("m_finetune_config", None)
    with pytest.raises(ValueError, match="incompatible with recipe 'm_sft_config'.*m_peft_config"):
        pick(["--recipe", "m_sft_config", "--mode", "lora"], {"m_sft_config"})
    with pytest.raises(ValueError, match="incompatible with recipe 'm_peft_config'.*m_sft_config"):
        pick(["--recipe", "m_peft_config", "--mode", "sft"], {"m_peft_config"})


def test_mode_errors(capsys):
    assert "incompatible" in error(capsys, "--recipe", "llama3_debug_finetune_config", "--mode", "pretrain")
    assert "disagree" in error(capsys, *DEBUG, "--mode", "sft", "--peft_scheme", "lora")
    assert "'lorra'" in error(capsys, *DEBUG, "--mode", "lorra")
    assert "needs --mode" in error(capsys, "--model", "llama3_debug")
    assert "no recipe llama9_pretrain_config" in error(capsys, "--model", "llama9", "--mode", "pretrain")
    assert "not both" in error(capsys, *DEBUG, "--model", "llama3_debug", "--mode", "pretrain")


def test_dataset_presets(capsys, tmp_path):
    assert dry_run(capsys, *DEBUG, "--dataset", "mock")["dataset"]["kind"] == "mock"
    indexed = dry_run(capsys, *DEBUG, "--dataset", "megatron-indexed", f"dataset.data_paths=[{tmp_path / 'c'}]")
    assert indexed["dataset"]["kind"] == "indexed" and indexed["dataset"]["data_paths"] == [str(tmp_path / "c")]
    jsonl = dry_run(capsys, *DEBUG, "--dataset", "local-jsonl", f"dataset.data_paths=[{tmp_path / 'a.jsonl'}]",
                    f"dataset.tokenizer={tmp_path}")
    assert jsonl["dataset"]["kind"] == "sft"
    for name in ("squad", "gsm8k", "tulu3", "openmathinstruct2", "openmathinstruct2-thinking"):  # Megatron Bridge's
        hf = dry_run(capsys, *DEBUG, "--dataset", name, "dataset.hf_path=/data/local", f"dataset.tokenizer={tmp_path}")
        assert (hf["dataset"]["kind"], hf["dataset"]["preset"], hf["dataset"]["hf_path"]) == ("hf", name, "/data/local")
    assert "tokenizes text" in error(capsys, *DEBUG, "--dataset", "squad")
    assert "dataset.kind=sft for prompt/completion JSONL" in error(
        capsys, *DEBUG, "--dataset", "squad", "dataset.data_paths=[a.jsonl]", f"dataset.tokenizer={tmp_path}")
    assert "did you mean 'squad'" in error(capsys, *DEBUG, "dataset.kind=hf", "dataset.preset=sqad",
                                           f"dataset.tokenizer={tmp_path}")
    assert "vision-language" in error(capsys, *DEBUG, "--dataset", "cord-v2")
    assert "did you mean 'mock'" in error(capsys, *DEBUG, "--dataset", "mocck")
    assert "dataset.data_paths" in error(capsys, *DEBUG, "--dataset", "megatron-indexed")


def test_deterministic_sets_the_config_field(capsys):
    assert dry_run(capsys, *DEBUG)["model"]["deterministic_mode"] is False
    assert dry_run(capsys, *DEBUG, "--deterministic")["model"]["deterministic_mode"] is True


def test_unknown_flags_and_arguments(capsys):
    assert "did you mean --dry-run" in error(capsys, *DEBUG, "--dry-rn")
    assert "--lr needs a value" in error(capsys, *DEBUG, "--lr")
    assert "'stray'" in error(capsys, *DEBUG, "stray")
    assert "takes no value" in error(capsys, *DEBUG, "--dry-run=yes")


# ------------------------------------------------------------------------------- Hydra's grammar


def test_add_force_add_and_delete(capsys):
    base = dry_run(capsys, *DEBUG)
    cfg = dry_run(capsys, *DEBUG, "+train.train_iters=7", "++train.eval_iters=3", "optimizer.lr=1e-2",
                  "~optimizer.lr", "~checkpoint.save_interval", "~train.seed=1234")
    assert cfg["train"]["train_iters"] == 7 and cfg["train"]["eval_iters"] == 3
    assert cfg["optimizer"]["lr"] == 3e-4  # OptimizerConfig's default, not the 1e-2 before it
    assert cfg["checkpoint"]["save_interval"] == 500 != base["checkpoint"]["save_interval"]
    assert cfg["train"]["seed"] == 1234
    err = error(capsys, *DEBUG, "~train.seed=99")
    assert "train.seed is 1234, not 99" in err
    assert "has no default" in error(capsys, *DEBUG, "~model.hidden_size")
    assert "unknown override key 'train.trian_iters'" in error(capsys, *DEBUG, "~train.trian_iters")


def test_delete_peft_means_full_training(capsys, hf_checkpoint):
    src = str(hf_checkpoint("Llama-3.2-1B"))
    cfg = dry_run(capsys, "--recipe", "llama3_debug_finetune_config", "--pretrained-checkpoint", src, "~peft")
    assert cfg["peft"] is None
    cfg = dry_run(capsys, "--recipe", "llama3_debug_finetune_config", "--pretrained-checkpoint", src,
                  "peft=dora", "peft.dim=4", "~peft.dim")
    assert cfg["peft"]["scheme"] == "dora" and cfg["peft"]["dim"] == 32


def test_interpolation(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MB_TEST_ROOT", str(tmp_path))
    cfg = dry_run(capsys, *DEBUG, "logger.log_dir=${checkpoint.save}/logs", f"checkpoint.save={tmp_path}/run",
                  "train.eval_iters=${train.train_iters}", "train.train_iters=6",
                  "checkpoint.save_interval=${train.eval_iters}",  # a chain: save_interval -> eval_iters -> 6
                  "logger.wandb_exp_name=${oc.env:MB_TEST_ROOT}-${oc.env:MB_NOT_SET,x}",
                  r"logger.wandb_project=\${literal}")
    assert cfg["logger"]["log_dir"] == f"{tmp_path}/run/logs"  # the final value, set after the reference
    assert cfg["train"]["eval_iters"] == 6 and cfg["checkpoint"]["save_interval"] == 6
    assert cfg["logger"]["wandb_exp_name"] == f"{tmp_path}-x"
    assert cfg["logger"]["wandb_project"] == "${literal}"
    cycle = error(capsys, *DEBUG, "train.eval_iters=${train.train_iters}", "train.train_iters=${train.eval_iters}")
    assert "cycle" in cycle
    assert "does not name a setting" in error(capsys, *DEBUG, "logger.log_dir=${checkpoint.svae}")
    assert "MB_NOT_SET" in error(capsys, *DEBUG, "logger.log_dir=${oc.env:MB_NOT_SET}")
    assert "train.eval_iters=" in error(capsys, *DEBUG, "train.eval_iters=${checkpoint.save}/x")


# ------------------------------------------------------------------------------- --config-file


def test_config_file_is_merged_before_the_overrides(capsys, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  train_iters: 11\n  eval_iters: 5\noptimizer:\n  lr: 2.0e-3\n"
                    "logger:\n  log_dir: ${checkpoint.save}/yaml_logs\n")
    cfg = dry_run(capsys, *DEBUG, "--config-file", str(path), "train.eval_iters=4", f"checkpoint.save={tmp_path}")
    assert cfg["train"]["train_iters"] == 11 and cfg["optimizer"]["lr"] == 2e-3
    assert cfg["train"]["eval_iters"] == 4  # the override after the file wins
    assert cfg["logger"]["log_dir"] == f"{tmp_path}/yaml_logs"
    # a flag is an override too: it beats the file
    assert dry_run(capsys, *DEBUG, "--config-file", str(path), "-ms", "3")["train"]["train_iters"] == 3


def test_config_file_errors(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    assert str(bad) in error(capsys, *DEBUG, "--config-file", str(bad)) and "YAML" in capsys.readouterr().err + "YAML"
    bad.write_text("- a\n- b\n")
    assert "expected a mapping" in error(capsys, *DEBUG, "--config-file", str(bad))
    bad.write_text("train:\n  trian_iters: 3\n")
    assert "train.trian_iters" in error(capsys, *DEBUG, "--config-file", str(bad))
    assert "missing.yaml" in error(capsys, *DEBUG, "--config-file", str(tmp_path / "missing.yaml"))


def test_a_dry_run_reads_back_as_a_config_file(capsys, tmp_path, hf_checkpoint):
    src = str(hf_checkpoint("Llama-3.2-1B"))
    argv = ["--recipe", "llama3_debug_finetune_config", "--pretrained-checkpoint", src, "--mode", "dora",
            "peft.dim=4", "-gb", "8", "model.num_layers=2"]
    assert train_main([*argv, "--dry-run"]) == 0
    text = capsys.readouterr().out
    path = tmp_path / "run_config.yaml"
    path.write_text(text)
    # the same recipe in its default form, plus the file: the same configuration
    again = dry_run(capsys, "--recipe", "llama3_debug_finetune_config", "--pretrained-checkpoint", src,
                    "--config-file", str(path))
    assert again == yaml.safe_load(text)


def test_each_checkpoint_holds_run_config_yaml(capsys, tmp_path):
    save = tmp_path / "run"
    argv = [*DEBUG, "train.global_batch_size=4", "train.micro_batch_size=2", "-sl", "32", "train.eval_interval=null",
            "logger.tensorboard_dir=null", "--warmup_iters", "0", "model.vocab_size=256", "model.num_layers=2",
            "-ms", "1", "--save_dir", str(save)]
    assert train_main(argv) == 0, capsys.readouterr().err
    folder = save / "iter_0000001"
    stored = json.loads((folder / "run.json").read_text())["config"]
    assert yaml.safe_load((folder / "run_config.yaml").read_text()) == stored
    capsys.readouterr()
    assert dry_run(capsys, *argv) == stored  # what --dry-run printed is what the checkpoint records


# ------------------------------------------------------------------------------- one override path


def test_the_recipe_is_built_once_and_every_source_is_one_list_of_typed_changes(capsys, tmp_path, monkeypatch):
    from minibridge import recipes
    from minibridge.training.hydra_grammar import hydra_changes

    real, calls = recipes.RECIPES["llama3_debug_pretrain_config"], []
    monkeypatch.setitem(recipes.RECIPES, "llama3_debug_pretrain_config", lambda **kw: calls.append(kw) or real(**kw))
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  train_iters: 11\n")
    cfg = dry_run(capsys, *DEBUG, "--config-file", str(path), "--dataset", "mock", "--deterministic",
                  "logger.log_dir=${checkpoint.save}/logs", "--peft_scheme", "dora",
                  "--pretrained-checkpoint", str(tmp_path))
    assert len(calls) == 1 and cfg["train"]["train_iters"] == 11 and cfg["peft"]["scheme"] == "dora"
    base = real()
    changes = hydra_changes(base, ["+train.train_iters=7", "train.seed=9", "~train.seed", "peft=dora", "~peft.alpha",
                                   "logger.log_dir=${checkpoint.save}/x", ("model.deterministic_mode", True)])
    assert changes == [("train.train_iters", 7), ("train.seed", 9), ("train.seed", 1234), ("peft", "dora"),
                       ("peft.alpha", 64), ("logger.log_dir", f"{base.checkpoint.save}/x"),
                       ("model.deterministic_mode", True)]
