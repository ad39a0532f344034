"""Hugging Face datasets as training data (`dataset.kind=hf`, `--dataset squad`, ...), read with the `datasets`
library (the `[data]` extra).

    source = HFSource("rajpurkar/squad", preset="squad")            # or a local folder / file, a subset, a split
    data = tokenize_hf(source, tokenizer, cache_dir="/ckpt/data_cache")   # HFData: SFTSource or text documents

`hf_path` is a hub id (online, or from the HF cache with HF_DATASETS_OFFLINE=1), a folder written by
`save_to_disk`, a folder of parquet/json/jsonl/arrow/csv files, or one such file. A preset (presets.py)
formats the rows as Megatron Bridge does; without one, the columns map onto `messages`, `prompt`/`completion`
or `text` rows. Each split is tokenized once, with a progress line, and cached (cache.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cache import cache_key, rank_zero_first, shared_build, tokenizer_identity
from .errors import DataError
from .jsonl import encode_documents
from .presets import PRESETS, VALIDATION_SEED, Preset, column_preset, encode_megatron_pairs, space_sensitive
from .progress import Progress
from .sft import SFTSource, encode_row

FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".arrow": "arrow", ".csv": "csv"}
BATCH_ROWS = 256


@dataclass(frozen=True)
class HFSource:
    """Which rows: `path` (hub id, folder or file), its `subset` (config name) and `split`; `preset` formats them
    (else the column names map them); validation: `val_proportion` of the rows (a preset's own by default)."""

    path: str | None = None  # None: the preset's hub id
    preset: str | None = None
    split: str | None = None  # None: the preset's, else "train"
    subset: str | None = None
    columns: dict = field(default_factory=dict)  # prompt / completion / messages / text -> column name
    val_proportion: float | None = None  # None: the preset's; 0: no validation

    def resolved(self) -> tuple[str, str | None, str, float]:
        """(path, subset, split, validation proportion) with the preset's defaults filled in."""
        preset = PRESETS.get(self.preset) if self.preset else None
        if self.preset and preset is None:
            raise DataError(f"unknown dataset preset {self.preset!r}; expected one of {', '.join(PRESETS)}")
        path = self.path or (preset.hub_id if preset else None)
        if not path:
            raise DataError("a Hugging Face dataset needs dataset.hf_path (a hub id or a local folder or file)")
        subset = self.subset if self.subset is not None else (preset.subset if preset and not self.path else None)
        split = self.split or (preset.split if preset and not self.path else "train")
        proportion = self.val_proportion if self.val_proportion is not None else (
            preset.val_proportion if preset else None) or 0.0
        if not 0 <= proportion < 1:
            raise DataError(f"dataset.val_proportion={proportion}: expected a fraction in [0, 1)")
        return path, subset, split, proportion

    @classmethod
    def from_config(cls, d) -> "HFSource | None":
        """The source a DatasetConfig names (None unless its kind is hf)."""
        if d.kind != "hf":
            return None
        columns = {"prompt": d.prompt_column, "completion": d.completion_column, "messages": d.messages_column,
                   "text": d.text_column}
        return cls(d.hf_path, d.preset, d.hf_split, d.hf_subset, {k: v for k, v in columns.items() if v},
                   d.val_proportion)

    @property
    def name(self) -> str:
        path, subset, split, _ = self.resolved()
        return f"{self.preset or 'dataset'} {path}{f' ({subset})' if subset else ''} split {split!r}"


@dataclass
class HFData:
    """A tokenized split: SFT conversations (`sft`) or raw text documents (`ids`/`lengths`), and the rows
    of training and validation."""

    name: str
    train_rows: np.ndarray
    valid_rows: np.ndarray
    sft: SFTSource | None = None
    text: "TextDocuments | None" = None


class TextDocuments:
    """Documents of one text column, tokenized (BOS per the tokenizer, EOS appended): a megatron_gpt source."""

    def __init__(self, ids: np.ndarray, lengths: np.ndarray):
        self.ids, self.lengths = ids, lengths
        self.starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.lengths)

    def document_lengths(self) -> np.ndarray:
        return self.lengths

    def tokens(self, doc: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        s, n = int(self.starts[doc]), int(self.lengths[doc])
        return self.ids[s : s + n][start:stop]


def import_datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("Hugging Face datasets need the `datasets` package: pip install 'minibridge[data]'") from None
    return datasets


def _load(path: str, subset: str | None, split: str):
    datasets = import_datasets()
    local = Path(path).expanduser()
    if local.is_file():
        builder = FILE_BUILDERS.get(local.suffix.lower())
        if builder is None:
            raise DataError(f"{local}: expected a {', '.join(FILE_BUILDERS)} file, a dataset folder or a hub id")
        return datasets.load_dataset(builder, data_files=str(local), split="train")
    if local.is_dir() and ((local / "state.json").is_file() or (local / "dataset_dict.json").is_file()):
        loaded = datasets.load_from_disk(str(local))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(f"{local}: no split {split!r} (splits: {', '.join(loaded)}); set dataset.hf_split")
            return loaded[split]
        return loaded
    return datasets.load_dataset(str(local) if local.is_dir() else path, subset, split=split)


def load_split(source: HFSource):
    """The rows of the source's split (a datasets.Dataset); any failure is one DataError line."""
    path, subset, split, _ = source.resolved()
    try:
        rows = _load(path, subset, split)
    except DataError:
        raise
    except Exception as err:  # the datasets library raises many types: not found, offline, bad files
        reason = (str(err).strip().splitlines() or [""])[0][:300]
        if "corresponds to no data" in reason:  # how the datasets library reports a split with no rows
            raise DataError(f"{source.name}: the split is empty (no rows)") from None
        hint = ("" if Path(path).expanduser().exists() else
                "; without network pass a local copy: dataset.hf_path=DIR (save_to_disk, parquet or json), "
                "--dataset local-jsonl dataset.data_paths=[FILE.jsonl], or run once online to fill the HF cache")
        raise DataError(f"cannot load Hugging Face dataset {path!r}{f' subset {subset!r}' if subset else ''} split "
                        f"{split!r}: {type(err).__name__}: {reason}{hint}") from None
    if len(rows) == 0:
        raise DataError(f"{source.name}: the split is empty (no rows)")
    return rows


def check_available(source: HFSource) -> None:
    """Open the split before any work (rank 0 first under torch.distributed, which fills the HF cache), so a
    dataset that cannot be had stops the run with one line."""
    rank_zero_first(lambda: load_split(source), source.name)


def _preset(source: HFSource, columns: list[str]) -> Preset:
    if source.preset:
        return PRESETS[source.preset]
    c = source.columns
    return column_preset(columns, c.get("prompt"), c.get("completion"), c.get("messages"), c.get("text"), source.name)


def _rows(rows, preset: Preset, name: str):
    """(row number, rendered row) of every row, checking the columns the preset reads."""
    missing = [c for c in preset.columns if c not in rows.column_names]
    if missing:
        raise DataError(f"{name}: no column {missing[0]!r} (columns: {', '.join(rows.column_names)})")
    number = 0
    for batch in rows.select_columns(list(preset.columns)).iter(batch_size=BATCH_ROWS):
        for i in range(len(batch[preset.columns[0]])):
            row = {c: batch[c][i] for c in preset.columns}
            for c, value in row.items():
                if value is None:
                    raise DataError(f"{name}, row {number}, column {c!r}: missing value (null)")
            try:
                rendered = preset.render(row)
            except (KeyError, TypeError, ValueError) as err:
                bad = next((c for c in preset.columns if c in str(err)), preset.columns[-1])
                raise DataError(f"{name}, row {number}, column {bad!r}: {err}") from None
            for key in ("prompt", "completion", "text"):
                if key in rendered and not isinstance(rendered[key], str):
                    column = preset.columns[("prompt", "completion").index(key)] if key != "text" else preset.columns[0]
                    raise DataError(f"{name}, row {number}, column {column!r}: expected a string, got "
                                    f"{type(rendered[key]).__name__}")
            yield number, rendered
            number += 1


def _encode_split(rows, preset: Preset, tokenizer, chat_template: bool, name: str,
                  log_interval: float) -> dict[str, np.ndarray]:
    """Every row tokenized: ids, loss (SFT rows) and lengths, in batches of rows, with a progress line."""
    progress = Progress(len(rows), log_interval, label=f"tokenizing {name}:", bytes=False)
    keep_space = space_sensitive(tokenizer)
    ids, loss, lengths, batch = [], [], [], []

    def flush():
        where = f"{name}, rows {batch[0][0]}-{batch[-1][0]}"
        if "text" in batch[0][1]:
            encoded = [(np.asarray(x, dtype=np.int64), None)
                       for x in encode_documents(tokenizer, [r["text"] for _, r in batch], append_eos=True)]
        elif "messages" in batch[0][1] or preset.separator == "":
            encoded = [encode_row(tokenizer, r, f"{name}, row {n}", chat_template) for n, r in batch]
        else:
            encoded = encode_megatron_pairs(tokenizer, [(r["prompt"], r["completion"]) for _, r in batch],
                                            preset.separator, keep_space, where)
        for x, m in encoded:
            ids.append(x)
            lengths.append(len(x))
            if m is not None:
                loss.append(m)
        progress.update(len(batch), 0, sum(lengths[-len(batch):]))
        batch.clear()

    for number, row in _rows(rows, preset, name):
        batch.append((number, row))
        if len(batch) == BATCH_ROWS:
            flush()
    if batch:
        flush()
    progress.update(0, 0, 0, force=True)
    out = {"ids": np.concatenate(ids), "lengths": np.asarray(lengths, dtype=np.int64)}
    if loss:
        out["loss"] = np.concatenate(loss)
    return out


def validation_rows(n: int, proportion: float) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows): datasets' train_test_split(test_size=proportion, seed=5678) of n rows,
    the split Megatron Bridge makes of its adapted rows (same count, same seed, so the same rows)."""
    if proportion <= 0:
        return np.arange(n), np.arange(0)
    datasets = import_datasets()
    parts = datasets.Dataset.from_dict({"row": np.arange(n)}).train_test_split(test_size=proportion,
                                                                                seed=VALIDATION_SEED)
    return np.asarray(parts["train"]["row"], dtype=np.int64), np.asarray(parts["test"]["row"], dtype=np.int64)


def tokenize_hf(source: HFSource, tokenizer, *, chat_template: bool = True, cache_dir: str | Path | None = None,
                settings: dict | None = None, log_interval: float = 5.0) -> HFData:
    """The source's split tokenized, from the cache under `cache_dir` when an earlier run made it (the key also
    holds `settings`, e.g. seq_length and packing); under torch.distributed rank 0 builds it, the others wait."""
    rows = load_split(source)
    name = source.name
    preset = _preset(source, rows.column_names)
    _, _, _, proportion = source.resolved()
    key = cache_key({
        "dataset": getattr(rows, "_fingerprint", None), "preset": source.preset, "columns": list(preset.columns),
        "source": source.resolved(), "tokenizer": tokenizer_identity(tokenizer), "chat_template": chat_template,
        "settings": settings or {},
    })
    arrays = shared_build(cache_dir, f"{source.preset or 'hf'}-{key}", name,
                          lambda: _encode_split(rows, preset, tokenizer, chat_template, name, log_interval))
    train_rows, valid_rows = validation_rows(len(arrays["lengths"]), proportion)
    if len(train_rows) == 0:
        raise DataError(f"{name}: val_proportion={proportion} leaves no training rows out of {len(arrays['lengths'])}")
    if "loss" in arrays:
        return HFData(name, train_rows, valid_rows, sft=SFTSource.from_arrays(name, arrays["ids"], arrays["loss"],
                                                                                arrays["lengths"]))
    return HFData(name, train_rows, valid_rows, text=TextDocuments(arrays["ids"], arrays["lengths"]))
