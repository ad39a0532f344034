"""`make gpu-check` without a GPU: its plan (commands, budgets, nothing installed), its dry run, the
bare-checkout imports it relies on, and a stage cut off by its budget still leaving a readable log."""

import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_train_step  # noqa: E402
import gpu_check  # noqa: E402


def test_plan_fits_the_device_call_and_installs_nothing():
    for quick in (False, True):
        stages = gpu_check.plan(quick)
        assert gpu_check.check_plan(stages, quick) == []
        assert sum(budget for _, _, budget in stages) <= (180 if quick else 360) - 20
        assert [name for name, _, _ in stages] == ["imports", "gpu tests", "kernels", "train step"]
    bad = [("setup", [*gpu_check.RUN, "-m", "pip", "install", "-e", "."], 500)]
    problems = gpu_check.check_plan(bad, True)
    assert any("install" in p for p in problems) and any("budgets" in p for p in problems)


def test_the_training_step_stage_is_a_valid_cuda_run_of_both_families():
    """Its arguments as bench_train_step parses them: bf16 on CUDA, a Llama and a Gemma case, known modes;
    --quick the research pairs, the full run also the trainer's."""
    for quick in (False, True):
        name, cmd, _ = gpu_check.plan(quick)[-1]
        assert name == "train step" and cmd[2] == "benchmarks/bench_train_step.py"
        args = bench_train_step.parse_args(cmd[3:])
        pairs = [tuple(pair.split(":")) for pair in args.pairs.split(",")]
        assert args.device == "cuda" and args.dtype == "auto" and args.layers == 0  # auto: bf16, every layer
        assert all(mode in bench_train_step.MODES and case in bench_train_step.CASES for mode, case in pairs)
        assert {bench_train_step.CASES[case][0] for _, case in pairs} == {"Llama-3.2-1B", "gemma-3-1b-it"}
        assert {mode for mode, _ in pairs} == ({"research"} if quick else {"research", "trainer"})


def test_dry_run_says_no_gpu_and_imports_from_the_checkout(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--quick", "--results", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dry run: no GPU present" in proc.stdout
    assert "gpu_check plan: gpu tests" in proc.stdout and "pip" not in proc.stdout
    assert "gpu_check plan: train step" in proc.stdout and "bench_train_step.py --device cuda" in proc.stdout
    log = (tmp_path / "gpu-check-dry-run-imports.log").read_text()
    assert f"minibridge.kernels from {ROOT / 'kernels' / 'minibridge_kernels' / '__init__.py'}" in log
    report = (tmp_path / "gpu-check-dry-run.md").read_text()
    assert "## imports: ok" in report and "b'" not in report


def test_bare_checkout_imports_without_setup_py_mapping(tmp_path):
    """`python -S` skips site-packages' .pth files, so the editable install's mapping is gone (as on a
    machine where nothing was pip-installed); torch stays importable through PYTHONPATH."""
    env = {"PYTHONPATH": sysconfig.get_paths()["purelib"], "PATH": "/usr/bin:/bin"}
    code = "import minibridge.kernels as k, minibridge.recipes as r; print(k.__file__); print(r.__file__)"
    plain = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert plain.returncode != 0 and "No module named 'minibridge" in plain.stderr
    hooked = subprocess.run([sys.executable, "-S", str(ROOT / "benchmarks" / "checkout_imports.py"), "-c", code],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert hooked.returncode == 0, hooked.stderr
    assert hooked.stdout.split() == [str(ROOT / "kernels/minibridge_kernels/__init__.py"),
                                     str(ROOT / "recipes/__init__.py")]


def test_a_stage_over_budget_leaves_its_output_as_text(tmp_path):
    log = tmp_path / "stage.log"
    cmd = [sys.executable, "-c", "import sys, time; print('to stdout', flush=True); "
           "print('to stderr', file=sys.stderr, flush=True); time.sleep(60)"]
    code, seconds = gpu_check.run_stage(cmd, 3, log)
    assert code == 124 and seconds < 30
    text = "\n".join(gpu_check.tail(log))
    assert "to stdout" in text and "to stderr" in text and "b'" not in text
