"""Learning rates and weight decays from Megatron-Core 0.19.2's own OptimizerParamScheduler, stepped as
Megatron Bridge 0.6.2's train loop steps it, into megatron_core_0.19.2.json (committed beside this script;
the tests need neither this script nor megatron-core).

    pip download megatron-core==0.19.2 --no-deps --ignore-requires-python -d /tmp/mcore
    (cd /tmp/mcore && unzip -q -o megatron_core-0.19.2-*.whl)
    PYTHONPATH=/tmp/mcore python tests/data/megatron_schedule/make_fixture.py \
        > tests/data/megatron_schedule/megatron_core_0.19.2.json

The scheduler module imports on CPU with torch alone (it warns that Transformer Engine and Apex are absent).
How Megatron Bridge drives it (training/config.py, training/optim.py, training/train.py): every count is in
samples, so lr_warmup_steps = lr_warmup_iters x global_batch_size (or lr_warmup_fraction x lr_decay_steps),
lr_decay_steps = lr_decay_iters x global_batch_size, wd_incr_steps = train_iters x global_batch_size,
wsd_decay_steps = lr_wsd_decay_iters x global_batch_size; the constructor calls step(0), iteration k then
trains with the values the scheduler set, and after each successful update train.py calls
step(increment=global_batch_size). So entry k - 1 of "lr" / "wd" is what iteration k trains with, after
k - 1 updates (a skipped update does not step the scheduler).
"""

import json
import sys

from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

# name -> the minibridge overrides of the case (the test applies them to a recipe) and the iterations to record
CASES = {
    # the reference-loop cases of tests/training/test_reference_loop.py
    "llama_loop": dict(lr=3e-3, min_lr=3e-4, lr_warmup_iters=4, train_iters=12, global_batch_size=8,
                       lr_decay_style="cosine", start_weight_decay=0.01, end_weight_decay=0.1,
                       weight_decay_incr_style="linear"),
    "gemma_loop": dict(lr=2e-3, min_lr=2e-4, lr_warmup_iters=3, lr_warmup_init=1e-4, train_iters=10,
                       global_batch_size=8, lr_decay_style="linear", start_weight_decay=0.02, end_weight_decay=0.08,
                       weight_decay_incr_style="cosine"),
    # schedule-only cases
    "decay_ends_early": dict(lr=1e-3, min_lr=1e-5, lr_warmup_iters=5, lr_decay_iters=30, train_iters=40,
                             global_batch_size=6, lr_decay_style="cosine", start_weight_decay=0.1,
                             end_weight_decay=0.1, weight_decay_incr_style="constant"),
    "warmup_fraction": dict(lr=5e-4, min_lr=5e-5, lr_warmup_iters=0, lr_warmup_fraction=0.15, train_iters=37,
                            global_batch_size=12, lr_decay_style="cosine", start_weight_decay=0.0,
                            end_weight_decay=0.1, weight_decay_incr_style="cosine"),
    "constant": dict(lr=2e-4, min_lr=0.0, lr_warmup_iters=3, train_iters=10, global_batch_size=4,
                     lr_decay_style="constant", start_weight_decay=0.05, end_weight_decay=0.05,
                     weight_decay_incr_style="constant"),
    **{f"wsd_{style}": dict(lr=3e-4, min_lr=3e-5, lr_warmup_iters=4, train_iters=30, global_batch_size=16,
                            lr_decay_style="WSD", lr_wsd_decay_iters=11, lr_wsd_decay_style=style,
                            start_weight_decay=0.1, end_weight_decay=0.1, weight_decay_incr_style="constant")
       for style in ("linear", "cosine", "exponential", "minus_sqrt")},
    "llama3_8b_recipe_head": dict(lr=3e-4, min_lr=3e-5, lr_warmup_iters=2000, train_iters=1168251,
                                  global_batch_size=512, lr_decay_style="cosine", start_weight_decay=0.1,
                                  end_weight_decay=0.1, weight_decay_incr_style="constant", record=2010),
}


class Optimizer:  # what the scheduler touches: param_groups
    def __init__(self):
        self.param_groups = [{"lr": 0.0, "weight_decay": 0.0}]


def record(case: dict) -> dict:
    g = case["global_batch_size"]
    decay_iters = case.get("lr_decay_iters") or case["train_iters"]
    decay_steps = decay_iters * g
    if case.get("lr_warmup_fraction") is not None:
        warmup_steps = case["lr_warmup_fraction"] * decay_steps
    else:
        warmup_steps = case["lr_warmup_iters"] * g
    optimizer = Optimizer()
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=case.get("lr_warmup_init", 0.0), max_lr=case["lr"], min_lr=case["min_lr"],
        lr_warmup_steps=warmup_steps, lr_decay_steps=decay_steps, lr_decay_style=case["lr_decay_style"],
        start_wd=case["start_weight_decay"], end_wd=case["end_weight_decay"], wd_incr_steps=case["train_iters"] * g,
        wd_incr_style=case["weight_decay_incr_style"],
        wsd_decay_steps=case["lr_wsd_decay_iters"] * g if "lr_wsd_decay_iters" in case else None,
        lr_wsd_decay_style=case.get("lr_wsd_decay_style"),
    )
    lrs, wds = [], []
    for _ in range(case.get("record", case["train_iters"] + 3)):  # a few past the end: min_lr / end_wd
        group = optimizer.param_groups[0]
        lrs.append(group["lr"])
        wds.append(group["weight_decay"])
        scheduler.step(increment=g)
    return {"config": {k: v for k, v in case.items() if k != "record"}, "lr": lrs, "wd": wds}


if __name__ == "__main__":
    json.dump({"source": "megatron-core 0.19.2, megatron/core/optimizer_param_scheduler.py",
               "cases": {name: record(case) for name, case in CASES.items()}}, sys.stdout, indent=1)
    sys.stdout.write("\n")
