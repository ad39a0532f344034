"""Running lm_eval on the local tasks and comparing two runs sample by sample."""

from __future__ import annotations

import math

TASKS = ["mb_choice", "mb_rolling", "mb_generate"]
REL = 1e-5  # fp32 rounding: same math, other kernels and summation orders
MAX_LENGTH = 24  # context length the tests evaluate with: the perplexity texts need several windows

CHOICE_DOCS = [  # (question, choices, label); contexts with and without trailing spaces, and an empty one
    ("The capital of France is", [" Paris", " Rome", " a city of lights"], 0),
    ("Question: is water wet?\nAnswer: ", ["yes", "no"], 0),
    ("2 + 2 =", [" 4", " 5", " 22", " four"], 0),
    ("", ["Once upon a time", "In the beginning"], 1),
    ("Pick a letter:", [" A", " B", " C", " D"], 2),
    ("def add(a, b):\n    return", [" a + b", " a - b"], 0),
]
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "In the beginning the Universe was created. This has made a lot of people very angry and been widely "
    "regarded as a bad move.",
    "import os\nfor name in sorted(os.listdir('.')):\n    print(name, os.path.getsize(name))\n",
    "Short.",
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief, it was the epoch of incredulity.",
]
PROMPTS = ["Once upon a time", "def main():\n", "The weather today is", "Q: What is 2 + 2?\nA:", "x"]
UNTIL = ["\n", "e"]  # stop strings as tasks write them (the direct tests pick ones the outputs hold)
MAX_GEN_TOKS = 10


def evaluate(model: str, model_args: str, tasks_folder, tasks=TASKS, batch_size: int = 3) -> dict:
    """lm_eval.simple_evaluate with every sample logged, on our task folder only (no built-in tasks)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from minibridge.harness import register

    register()
    args = f"{model_args},dtype=float32,device=cpu,max_length={MAX_LENGTH}"
    return lm_eval.simple_evaluate(model=model, model_args=args, tasks=list(tasks), batch_size=batch_size,
                                   task_manager=TaskManager(include_path=str(tasks_folder), include_defaults=False),
                                   log_samples=True)


_HF_RESULTS = {}


def hf_results(folder, tasks_folder) -> dict:
    """lm_eval's own HFLM (`--model hf`) on `folder`, once per folder and test process."""
    if folder not in _HF_RESULTS:
        _HF_RESULTS[folder] = evaluate("hf", f"pretrained={folder}", tasks_folder)
    return _HF_RESULTS[folder]


def responses(results: dict, task: str) -> list:
    """Each document's raw responses (lm_eval's `resps`), in document order."""
    return [s["resps"] for s in sorted(results["samples"][task], key=lambda s: s["doc_id"])]


def assert_same(ours, theirs, where: str = "") -> None:
    """Loglikelihoods to fp32 rounding, greedy flags and generated strings exactly, nested as lm_eval nests."""
    if isinstance(theirs, (list, tuple)):
        assert isinstance(ours, (list, tuple)) and len(ours) == len(theirs), (where, ours, theirs)
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(theirs, float):
        assert math.isclose(ours, theirs, rel_tol=REL, abs_tol=1e-6), (where, ours, theirs)
    else:  # is_greedy, generated text
        assert ours == theirs, (where, ours, theirs)


def assert_same_results(ours: dict, theirs: dict, tasks=TASKS) -> None:
    for task in tasks:
        assert_same(responses(ours, task), responses(theirs, task), task)
        for metric, value in theirs["results"][task].items():
            if isinstance(value, float) and not math.isnan(value):
                assert math.isclose(ours["results"][task][metric], value, rel_tol=REL), (task, metric)
