"""Evaluation tools: loss and perplexity on a dataset (`python -m minibridge.eval`), and transformers
vs minibridge logits and hidden states on a prompt (`python -m minibridge.compare`).

    from minibridge.evaluation import eval_dataset, evaluate_perplexity, load_model, model_bridge

It sits above training (the trainer's forward and data pipeline) and conversion (checkpoint loading).
"""

from .models import default_tokenizer, load_model, model_bridge, parse_dtype
from .perplexity import EvalResult, eval_dataset, evaluate_perplexity, json_safe

__all__ = ["EvalResult", "default_tokenizer", "eval_dataset", "evaluate_perplexity", "json_safe", "load_model",
           "model_bridge", "parse_dtype"]
