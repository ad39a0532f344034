"""Loss and perplexity of a model on a dataset, with the windows training uses.

    data = eval_dataset("indexed", ["data/corpus_text_document"], seq_length=2048, part="validation")
    result = evaluate_perplexity(chunks, dims, data, micro_batch_size=4, max_samples=1000)
    result.loss, result.perplexity, result.tokens

The samples are the ones `training.data.build_datasets` makes for training (Megatron's GPTDataset
windows, or SFT rows), batched by the same DataIterator and run through the trainer's forward
(`training.forward.ModelForward`: TP/SP/PP/CP/DP, the pipeline's forward_only path).
Perplexity = exp(token-weighted mean NLL over every loss token of the evaluated samples), i.e.
exp(sum of NLLs / number of targets), not the mean of per-batch perplexities.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field

from ..errors import DataError
from ..files import write_atomic
from ..training.config import DatasetConfig, TrainingConfig
from ..training.data import DataIterator, build_datasets, load_tokenizer
from ..training.forward import LossSums, ModelForward

PARTS = ("validation", "train", "all")  # "all": every document, the split ignored
DEFAULTS = DatasetConfig()  # the training defaults (split, packing, sample layout)


@dataclass
class EvalResult:
    loss: float  # token-weighted mean NLL (nats)
    perplexity: float
    tokens: int  # loss tokens evaluated
    samples: int  # sequences evaluated
    seconds: float
    model: dict = field(default_factory=dict)
    dataset: dict = field(default_factory=dict)
    layout: dict = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s}

    def summary(self) -> str:
        return (f"loss {self.loss:.6f} | perplexity {self.perplexity:.4f} | {self.tokens:,} tokens in "
                f"{self.samples:,} samples | {self.seconds:.2f} s ({self.tokens_per_s:,.0f} tokens/s)")

    def write_json(self, path) -> None:
        """The result as JSON at `path`, written atomically (non-finite numbers as null)."""
        write_atomic(path, json.dumps(json_safe(self.to_dict()), indent=2) + "\n")


def json_safe(value):
    """`value` with every non-finite float (nested in dicts and lists) as None: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def eval_dataset(kind: str, data_paths: list[str] | None, *, seq_length: int, tokenizer=None, part: str = "validation",
                 split: str = DEFAULTS.split, seed: int = TrainingConfig.seed, packing: bool = DEFAULTS.packing,
                 sample_layout: str = DEFAULTS.sample_layout, vocab_size: int | None = None):
    """The `part` of the data as training splits it (`build_datasets`, one epoch); `all` uses every document."""
    if part not in PARTS:
        raise DataError(f"split {part!r}: expected one of {list(PARTS)}")
    train, valid = build_datasets(kind, seq_length=seq_length, tokenizer=load_tokenizer(tokenizer),
                                  data_paths=data_paths, split="1,0,0" if part == "all" else split, seed=seed,
                                  packing=packing, sample_layout=sample_layout, vocab_size=vocab_size)
    data = valid if part == "validation" else train
    if data is None:
        where = ", ".join(map(str, data_paths or [])) or f"{kind} data"
        raise DataError(f"{where}: the split {split!r} leaves no validation documents; evaluate --split all "
                        f"(every document) or --split train, or give a split string with a validation share")
    return data


def evaluate_perplexity(chunks, dims, dataset, *, micro_batch_size: int = 1, global_batch_size: int | None = None,
                        max_samples: int | None = None, seed: int = TrainingConfig.seed, data_source: str = "data",
                        progress: bool = True) -> EvalResult:
    """Loss and perplexity of this rank's `chunks` over the first samples of `dataset` (all of them by
    default, rounded down to whole global batches; `max_samples` caps them)."""
    gbs = global_batch_size or micro_batch_size * dims.dp
    available = len(dataset) if max_samples is None else min(int(max_samples), len(dataset))
    iters = available // gbs
    if iters < 1:
        raise DataError(f"{data_source}: {available} sample(s) to evaluate (the dataset holds {len(dataset)}), fewer "
                        f"than one global batch of {gbs} (micro batch {micro_batch_size} x {dims.dp} data-parallel "
                        f"rank(s)); lower --micro-batch-size or --seq-length, or give more data")
    iterator = DataIterator(dataset, global_batch_size=gbs, micro_batch_size=micro_batch_size, dp_rank=dims.dp_rank,
                            dp_size=dims.dp, seed=seed)
    show = _progress_printer(dims.dp) if progress and dims.rank == 0 else None
    sums = ModelForward(chunks, dims, data_source).evaluate(iterator, iters, show)
    return _result(sums, dims)


def _progress_printer(dp: int):
    """About ten progress lines on stderr (rank 0's share: tokens x dp ranks estimates the total)."""
    def show(done: int, total: int, sums: LossSums) -> None:
        if done == total or done % max(1, total // 10) == 0:
            rate = dp * sums.tokens / sums.seconds if sums.seconds else 0.0
            print(f"eval: {done}/{total} batches | loss so far {sums.loss:.4f} | {rate:,.0f} tokens/s",
                  file=sys.stderr, flush=True)
    return show


def _result(sums: LossSums, dims) -> EvalResult:
    c = dims.config
    layout = {"world_size": dims.world_size, "tp": c.tp, "pp": c.pp, "vp": c.vp, "cp": c.cp, "dp": dims.dp,
              "sequence_parallel": c.sequence_parallel}
    return EvalResult(loss=sums.loss, perplexity=sums.perplexity, tokens=sums.tokens, samples=sums.samples,
                      seconds=sums.seconds, layout=layout)
