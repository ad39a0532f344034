"""lm-evaluation-harness integration: minibridge models as lm_eval's `--model minibridge`.

    python -m minibridge.harness --model minibridge --model_args pretrained=HF_DIR,dtype=bfloat16 \\
        --tasks hellaswag,wikitext --batch_size 8 [any other lm_eval flag]
    python -m minibridge.harness --model minibridge --model_args checkpoint=CKPT,pretrained=HF_DIR --tasks ...
    python -m minibridge.harness --model minibridge --model_args checkpoint=CKPT,tokenizer=TOK_DIR --tasks ...

    import lm_eval
    from minibridge.harness import MinibridgeLM
    results = lm_eval.simple_evaluate(model=MinibridgeLM(pretrained="HF_DIR", batch_size=8), tasks=["arc_easy"])
    from minibridge.harness import register; register()        # then model="minibridge" works by name
    results = lm_eval.simple_evaluate(model="minibridge", model_args="pretrained=HF_DIR", tasks=["arc_easy"])

lm_eval (0.4.13 checked) finds models only in its own registry (no entry points or plugins), so `python -m
minibridge.harness` registers the model and then runs lm_eval's own command line with the same arguments.
lm_eval is an optional extra (`pip install minibridge[lm-eval]`), imported only when used: this package
imports without it. The model arguments are listed in `MinibridgeLM`'s docstring (model.py); how each
request is scored, and why the numbers equal `--model hf`, in model.py's.
"""

from __future__ import annotations

MODEL_NAME = "minibridge"  # --model minibridge


def register() -> None:
    """Add MinibridgeLM to lm_eval's model registry under `minibridge` (idempotent)."""
    from lm_eval.api import registry

    from .model import MinibridgeLM

    try:
        if registry.get_model(MODEL_NAME) is MinibridgeLM:
            return
    except (KeyError, ValueError):  # not registered yet (lm_eval 0.4.13 raises KeyError, earlier 0.4 ValueError)
        pass
    registry.register_model(MODEL_NAME)(MinibridgeLM)


def __getattr__(name: str):
    # `from minibridge.harness import MinibridgeLM` imports lm_eval; importing the package does not
    if name == "MinibridgeLM":
        from .model import MinibridgeLM

        return MinibridgeLM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MODEL_NAME", "MinibridgeLM", "register"]
