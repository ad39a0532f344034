"""Golden files of the resolved configuration: the `--dry-run` YAML of every recipe and of command lines that
use each part of the configuration path (run_recipe flags, Hydra's `+`, `++`, `~`, `${}`, `--config-file`,
--mode / --peft_scheme, fine-tuning from HF and Megatron folders), plus the Python recipes called with
Megatron Bridge's keyword arguments. A command line that fails records its one-line error.

    python tests/config_goldens/make_goldens.py          # rewrite the goldens (only before a config change)
    python tests/config_goldens/make_goldens.py --check  # compare, as tests/config_goldens/test_goldens.py

Everything runs in this process (minibridge.train.main), from the repository root, with SAVE_DIR and the
checkpoint folders under a scratch folder that the output names `<scratch>`.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden"
HF_CONFIGS = ROOT / "tests" / "data" / "hf_configs"
MEGATRON = "tests/data/megatron/llama/mcore"  # a Megatron Bridge torch_dist checkpoint (run_config.yaml)
TINY_LLAMA, TINY_GEMMA = "tests/data/megatron/llama/hf", "tests/data/megatron/gemma3/hf"
# The debug recipes' own architectures, as HF folders (fine-tuning reads the architecture from there).
CHECKPOINTS = {name: f"{name}.json" for name in (
    "Llama-3.2-1B", "Llama-3.2-3B", "Meta-Llama-3-8B", "Llama-3.1-8B", "Meta-Llama-3-70B", "Llama-3.1-70B",
    "Llama-3.1-405B", "gemma-3-1b-it")}
FINETUNED = {"llama32_1b": "Llama-3.2-1B", "llama32_3b": "Llama-3.2-3B", "llama3_8b": "Meta-Llama-3-8B",
             "llama31_8b": "Llama-3.1-8B", "llama3_70b": "Meta-Llama-3-70B", "llama31_70b": "Llama-3.1-70B",
             "llama31_405b": "Llama-3.1-405B", "gemma3_1b": "gemma-3-1b-it"}
YAML_FILE = """train:
  train_iters: 11
  eval_iters: 5
optimizer:
  lr: 2.0e-3
peft:
  scheme: dora
  dim: 4
logger:
  log_dir: ${checkpoint.save}/yaml_logs
model:
  num_layers: 12
"""
DEBUG, DEBUG_FT = ["--recipe", "llama3_debug_pretrain_config"], ["--recipe", "llama3_debug_finetune_config"]
GEMMA, GEMMA_FT = ["--recipe", "gemma3_debug_pretrain_config"], ["--recipe", "gemma3_debug_finetune_config"]
CKPT = "<scratch>/ckpt"
CASES: dict[str, list[str]] = {
    "flags": [*DEBUG, "-tp", "2", "-pp", "2", "-vp", "2", "-gb", "16", "-mb", "2", "-sl", "64", "-ms", "9", "--lr",
              "1e-3", "--min_lr=1e-5", "--warmup_iters", "3", "--save_dir", "out/s", "--load_dir", "out/l",
              "--save_interval", "7", "train.micro_batch_size=4"],
    "hydra_add_delete": [*DEBUG, "+train.train_iters=7", "++train.eval_iters=3", "optimizer.lr=1e-2", "~optimizer.lr",
                         "~checkpoint.save_interval", "~train.seed=1234", "~logger.log_interval"],
    "interpolation": [*DEBUG, "logger.log_dir=${checkpoint.save}/logs", "checkpoint.save=out/run",
                      "train.eval_iters=${train.train_iters}", "train.train_iters=6",
                      "checkpoint.save_interval=${train.eval_iters}", "model.seq_length=128",
                      "logger.wandb_exp_name=${oc.env:GOLDEN_ENV}-${oc.env:GOLDEN_NOT_SET,x}",
                      r"logger.wandb_project=\${literal}"],
    "config_file": [*GEMMA, "--pretrained-checkpoint", TINY_GEMMA, "--config-file", "<scratch>/run.yaml", "train.eval_iters=4", "checkpoint.save=out/g",
                    "-gb", "16"],
    "aliases_and_architecture": [*DEBUG, "--pretrained-checkpoint", TINY_LLAMA, "peft=dora", "peft.dim=8", "checkpoint.most_recent_k=3",
                                 "model.num_attention_heads=8", "model.rotary_base=10000", "model.num_layers=6",
                                 "dataset.sequence_length=512", "mixed_precision=bf16_mixed"],
    "deterministic_mock": [*GEMMA, "--deterministic", "--dataset", "mock", "-tp", "2", "model.sequence_parallel=true",
                           "model.sliding_window_pattern=3", "dist.use_torch_fsdp2=true"],
    "local_jsonl": [*DEBUG, "--dataset", "local-jsonl", "dataset.data_paths=[a.jsonl,b.jsonl]", "dataset.tokenizer=tok"],
    "indexed_blend": [*DEBUG, "--dataset", "megatron-indexed", "dataset.data_paths=[c1,c2]",
                      "dataset.blend_weights=[0.3,0.7]"],
    "squad_preset": [*DEBUG, "--dataset", "squad", "dataset.hf_path=data/squad", "dataset.tokenizer=tok"],
    "mode_lora": ["--model", "llama3_debug", "--mode", "lora", "--pretrained-checkpoint", TINY_LLAMA],
    "mode_sft": ["--model", "llama3_debug", "--mode", "sft", "--pretrained_checkpoint", TINY_LLAMA, "-gb", "4"],
    "pretrain_to_lora": [*DEBUG, "--mode", "lora", "--pretrained-checkpoint", TINY_LLAMA],
    "pretrain_peft_scheme": [*DEBUG, "--peft_scheme", "dora", "--pretrained-checkpoint", TINY_LLAMA],
    "finetune_dora_overrides": [*DEBUG_FT, "--pretrained-checkpoint", TINY_LLAMA, "--peft_scheme", "dora",
                                "peft.dim=4", "optimizer.lr=1e-3", "checkpoint.save=out/ft"],
    "finetune_delete_peft": [*DEBUG_FT, "--pretrained-checkpoint", TINY_LLAMA, "~peft", "dataset.data_paths=[x.jsonl]"],
    "finetune_megatron": [*DEBUG_FT, "--pretrained-checkpoint", MEGATRON, "--mode", "dora"],
    "gemma_sft_squad": [*GEMMA_FT, "--pretrained-checkpoint", TINY_GEMMA, "--mode", "sft", "--dataset", "squad",
                        "dataset.hf_path=data/squad", "dataset.hf_split=validation"],
    "gemma_ft_kind": [*GEMMA_FT, "--pretrained-checkpoint", TINY_GEMMA, "dataset.kind=sft",
                      "dataset.data_paths=[t.jsonl]", "peft.target_modules=[linear_qkv,linear_proj]"],
    "llama8b_mode_sft": ["--model", "llama3_8b", "--mode", "sft", "--pretrained-checkpoint",
                         f"{CKPT}/Meta-Llama-3-8B", "-tp", "4"],
    "llama405b_peft_dora": ["--recipe", "llama31_405b_peft_config", "--pretrained-checkpoint",
                            f"{CKPT}/Llama-3.1-405B", "--peft_scheme", "dora"],
    "gemma1b_continued_pretraining": ["--recipe", "gemma3_1b_pretrain_config", "--pretrained-checkpoint",
                                      f"{CKPT}/gemma-3-1b-it", "model.seq_length=4096"],
    "error_unknown_key": [*DEBUG, "train.nonsense=1", "optimizer.learning_rate=3"],
    "error_delete_mismatch": [*DEBUG, "~train.seed=99"],
    "error_mode": [*DEBUG_FT, "--mode", "pretrain"],
    "error_finetune_shape": ["--recipe", "llama3_8b_finetune_config", "--pretrained-checkpoint", TINY_LLAMA],
    "error_cycle": [*DEBUG, "train.eval_iters=${train.train_iters}", "train.train_iters=${train.eval_iters}"],
}
# Megatron Bridge's keyword arguments of the recipe functions (the seed documents' examples).
API_CASES: dict[str, tuple[str, dict]] = {
    "api_llama3_8b_pretrain": ("llama3_8b_pretrain_config", dict(
        name="run1", dir="/results", data_paths=["0.3", "a", "0.7", "b"], train_iters=1000, global_batch_size=64,
        seq_length=4096, lr=1e-4, min_lr=1e-5, lr_warmup_iters=10, tensor_model_parallel_size=2,
        wandb_project="p", precision_config="fp32")),
    "api_llama3_8b_finetune": ("llama3_8b_finetune_config", dict(
        name="ft", dir="/results", pretrained_checkpoint=f"{CKPT}/Meta-Llama-3-8B", peft="dora",
        finetune_lr=3e-4, packed_sequence=False, data_paths=["t.jsonl"], train_iters=50)),
    "api_llama3_8b_sft": ("llama3_8b_sft_config", dict(pretrained_checkpoint=f"{CKPT}/Meta-Llama-3-8B",
                                                      seq_length=1024, global_batch_size=16)),
    "api_llama31_405b_finetune_full": ("llama31_405b_finetune_config", dict(peft=None, micro_batch_size=2)),
    "api_gemma3_1b_peft": ("gemma3_1b_peft_config", dict(peft_scheme="dora", finetune_lr=2e-4, eval_interval=5)),
    "api_low_precision_mxfp8": ("llama3_8b_low_precision_pretrain_config",
                                dict(mixed_precision_recipe="bf16_with_mxfp8_mixed", train_iters=5)),
    "api_debug_vocab": ("llama3_debug_pretrain_config", dict(vocab_size=300, mock=True, seq_length=64)),
    "api_gemma_debug_finetune": ("gemma3_debug_finetune_config", dict(peft=None, pretrained_checkpoint=TINY_GEMMA)),
}


def _recipes() -> list[str]:
    from minibridge.recipes import RECIPES

    return list(RECIPES)


def cases() -> dict[str, list[str]]:
    """Every golden's command line: one dry run per recipe, then CASES."""
    out = {"list": ["--list"]}
    out.update({f"recipe_{name}": ["--recipe", name] for name in _recipes()})
    for model, folder in FINETUNED.items():
        out[f"finetune_{model}"] = ["--recipe", f"{model}_finetune_config", "--pretrained-checkpoint",
                                    f"{CKPT}/{folder}"]
    out.update(CASES)
    return out


def prepare(scratch: Path) -> None:
    """The checkpoint folders (config.json only) and the YAML file the cases name."""
    for name, source in CHECKPOINTS.items():
        (scratch / "ckpt" / name).mkdir(parents=True, exist_ok=True)
        (scratch / "ckpt" / name / "config.json").write_text((HF_CONFIGS / source).read_text())
    (scratch / "run.yaml").write_text(YAML_FILE)


def render(name: str, scratch: Path) -> str:
    """The text a golden holds: stdout, then stderr, then the exit code, `<scratch>` for the scratch folder."""
    from minibridge.train import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        if name in API_CASES:
            code = _api(*API_CASES[name], scratch)
        else:
            argv = [a.replace("<scratch>", str(scratch)) for a in cases()[name]]
            code = main([*argv, "--dry-run"] if argv != ["--list"] else argv)
    text = f"{out.getvalue()}--- stderr\n{err.getvalue()}--- exit {code}\n"
    return text.replace(str(scratch), "<scratch>")


def _api(recipe: str, kwargs: dict, scratch: Path) -> int:
    from minibridge.checkpoint.folder import run_config_yaml
    from minibridge.errors import MinibridgeError
    from minibridge.recipes import RECIPES

    kwargs = {k: v.replace("<scratch>", str(scratch)) if isinstance(v, str) else v for k, v in kwargs.items()}
    try:
        config = RECIPES[recipe](**kwargs)
    except MinibridgeError as error:
        print(error, file=sys.stderr)
        return 2
    print(run_config_yaml(config.to_dict()), end="")
    return 0


@contextlib.contextmanager
def environment():
    """The repository root as the working folder, SAVE_DIR and GOLDEN_ENV fixed, a scratch folder prepared."""
    saved_cwd, saved_env = os.getcwd(), dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp).resolve()
        prepare(scratch)
        os.chdir(ROOT)
        os.environ.update(SAVE_DIR=str(scratch / "runs"), GOLDEN_ENV="env-value")
        os.environ.pop("GOLDEN_NOT_SET", None)
        try:
            yield scratch
        finally:
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)


def names() -> list[str]:
    return [*cases(), *API_CASES]


def main(argv: list[str]) -> int:
    check = "--check" in argv
    GOLDEN.mkdir(exist_ok=True)
    differ = []
    with environment() as scratch:
        for name in names():
            text, path = render(name, scratch), GOLDEN / f"{name}.txt"
            if check:
                if not path.is_file() or path.read_text() != text:
                    differ.append(name)
            else:
                path.write_text(text)
    if not check:
        stale = sorted(p.name for p in GOLDEN.glob("*.txt") if p.stem not in names())
        print(f"wrote {len(names())} goldens to {GOLDEN}" + (f"; stale: {stale}" if stale else ""))
    print("\n".join(f"differs: {name}" for name in differ))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
