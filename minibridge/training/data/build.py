"""build_datasets: one entry point from a data config to (train, validation) sequence datasets.

kinds:
    "mock"     Megatron's MockGPTLowLevelDataset (megatron_gpt.MockDocuments); vocabulary from the
               tokenizer or vocab_size=, EOD its EOS (else vocab_size - 1, as Megatron's NullTokenizer)
    "indexed"  Megatron .bin/.idx prefixes (IndexedDataset), samples as Megatron's GPTDataset
    "jsonl"    raw-text JSONL (json_key, default "text") tokenized on the fly, then samples like "indexed"
    "sft"      prompt/completion or chat-messages JSONL, loss on the answers only
    "hf"       a Hugging Face dataset (hf.HFSource: hub id, folder or file; a Megatron Bridge preset such as
               squad, or columns mapped to messages, prompt/completion or text), tokenized once and cached;
               validation: its val_proportion of the rows (a preset's own by default)

sample_layout "megatron" (default) builds mock/indexed/jsonl samples as Megatron Core's GPTDataset
(megatron_gpt.MegatronGPTDataset); "legacy" keeps minibridge's earlier ones: disjoint seq_length windows
of the shuffled documents, the last one padded (WindowDataset), and uniform random mock tokens (MockDataset).

File kinds split each file in file order with Megatron's split string ("969,30,1": train/validation/test,
the test part unused here; mock data always "1,1,1", as Megatron's): by sequence (a .idx sequence, Megatron's GPT unit) for "indexed" in the
megatron layout, else by document. Several data_paths are blended by blend_weights (one per path;
without weights, in proportion to their sizes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError
from .hf import HFSource, check_available, tokenize_hf
from .indexed import IndexedDataset
from .jsonl import JsonlTextSource
from .megatron_gpt import MOCK_SPLIT, IndexedSequences, MegatronGPTDataset, MockDocuments, megatron_split_ranges
from .samples import BlendedDataset, MockDataset, SequenceDataset, WindowDataset, parse_split, split_ranges
from .sft import SFTDataset, SFTSource
from .tokenizer import load_tokenizer

KINDS = ("mock", "indexed", "jsonl", "sft", "hf")
SAMPLE_LAYOUTS = ("megatron", "legacy")
DEFAULT_MOCK_SAMPLES = 8192


MOCK_NOTICE = ("dataset.kind=mock: training on MOCK data (random token ids, Megatron's mock dataset), not text; "
               "pass --dataset squad, dataset.hf_path=..., or dataset.data_paths=[...] for real data")


def check_data(config, rank: int) -> None:
    """Before any work: say so when the data is mock, and stop when a Hugging Face dataset cannot be had."""
    if config.kind == "mock" and rank == 0:
        print(MOCK_NOTICE, flush=True)
    if config.kind == "hf":
        check_available(HFSource.from_config(config))


def _pad_id(tokenizer) -> int:
    """Pad with the tokenizer's pad token, else EOS (Llama 3 has no pad token), else 0: padded
    positions carry label -100, so the id only has to be a valid embedding row."""
    if tokenizer is None:
        return 0
    for pid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if pid is not None:
            return int(pid)
    return 0


def _weights(blend_weights, paths: list[str]) -> list[float | None]:
    if blend_weights is None:
        return [None] * len(paths)
    weights = list(blend_weights)
    if len(weights) != len(paths):
        raise DataError(f"blend_weights has {len(weights)} values {weights} but data_paths has "
                        f"{len(paths)} paths {paths}: give one weight per path")
    try:
        weights = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise DataError(f"blend_weights {weights}: every weight must be a number") from None
    if any(not np.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise DataError(f"blend_weights {weights}: weights must be finite, non-negative, not all zero")
    return weights


def _blend(parts: list[tuple[SequenceDataset, float | None]]) -> SequenceDataset | None:
    parts = [(d, len(d) if w is None else w) for d, w in parts]  # no weights: proportional to size
    parts = [(d, w) for d, w in parts if w > 0]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0][0]
    return BlendedDataset([d for d, _ in parts], [w for _, w in parts])


def build_datasets(kind: str, *, seq_length: int, tokenizer=None, data_paths=None, blend_weights=None,
                   split="969,30,1", seed: int = 1234, packing: bool = True, chat_template: bool = True,
                   num_mock_samples: int | None = None, vocab_size: int | None = None,
                   json_key: str = "text", sample_layout: str = "megatron",
                   num_train_samples: int | None = None, num_valid_samples: int | None = None,
                   hf_source: HFSource | None = None, cache_dir=None) -> tuple[SequenceDataset, SequenceDataset | None]:
    """(train, validation) datasets; validation is None when the split gives it nothing.

    tokenizer: an HF tokenizer or a folder to load one from (required for "jsonl" and "sft").
    num_mock_samples: training samples of legacy "mock" (validation gets the split's share on top);
    in the megatron layout, as num_train_samples.
    num_train_samples: megatron layout: build at least this many training samples (Megatron's
    train_iters * global_batch_size: more epochs, drawn as Megatron draws them); None: one epoch.
    num_valid_samples: the same for the validation split.
    hf_source: the rows of kind "hf"; cache_dir: where its tokenized rows are cached (None: not cached).
    """
    if kind not in KINDS:
        raise DataError(f"unknown data kind {kind!r}; expected one of {list(KINDS)}")
    if sample_layout not in SAMPLE_LAYOUTS:
        raise DataError(f"sample_layout={sample_layout!r}: expected one of {list(SAMPLE_LAYOUTS)}")
    if isinstance(seq_length, bool) or not isinstance(seq_length, int) or seq_length < 1:
        raise DataError(f"seq_length must be a positive int, got {seq_length!r}")
    tokenizer = load_tokenizer(tokenizer)
    weights = parse_split(split)
    megatron = sample_layout == "megatron" and kind != "sft"
    if kind == "mock" and megatron:
        vocab = vocab_size if vocab_size is not None else (len(tokenizer) if tokenizer is not None else None)
        eos = getattr(tokenizer, "eos_token_id", None)
        source = MockDocuments(vocab, eos if eos is not None else (vocab or 1) - 1)
        requested = num_train_samples if num_train_samples is not None else num_mock_samples
        (a, b), (c, d), _ = megatron_split_ranges(MOCK_SPLIT, len(source))
        train = MegatronGPTDataset(source, np.arange(a, b), seq_length, seed=seed, packing=packing,
                                   pad_id=_pad_id(tokenizer), name="mock data (train)", num_samples=requested)
        valid = MegatronGPTDataset(source, np.arange(c, d), seq_length, seed=seed, packing=packing,
                                   pad_id=_pad_id(tokenizer), name="mock data (validation)",
                                   num_samples=num_valid_samples)
        return train, valid
    if kind == "mock":
        vocab = vocab_size if vocab_size is not None else (len(tokenizer) if tokenizer is not None else None)
        n = DEFAULT_MOCK_SAMPLES if num_mock_samples is None else int(num_mock_samples)
        n_valid = int(round(n * weights[1] / weights[0])) if weights[0] > 0 else 0
        train = MockDataset(n, seq_length, vocab, seed=seed, packing=packing)
        valid = MockDataset(n_valid, seq_length, vocab, seed=seed, packing=packing, offset=n) if n_valid else None
        return train, valid
    if kind == "hf":
        return _build_hf(hf_source, tokenizer, seq_length=seq_length, seed=seed, packing=packing, megatron=megatron,
                         chat_template=chat_template, cache_dir=cache_dir,
                         num_samples=(num_train_samples, num_valid_samples))

    paths = [data_paths] if isinstance(data_paths, (str, Path)) else list(data_paths or [])
    paths = [str(p) for p in paths]
    if not paths:
        raise DataError(f"data kind {kind!r} needs data_paths (a list of files or .bin/.idx prefixes)")
    blend = _weights(blend_weights, paths)
    if kind in ("jsonl", "sft") and tokenizer is None:
        raise DataError(f"data kind {kind!r} tokenizes text and needs a tokenizer (an HF tokenizer or folder)")
    pad_id = _pad_id(tokenizer)

    train_parts, valid_parts = [], []
    for path, w in zip(paths, blend):
        if kind == "indexed":
            source = IndexedSequences(IndexedDataset(path)) if megatron else IndexedDataset(path)
        elif kind == "jsonl":
            source = JsonlTextSource(path, tokenizer, key=json_key)
        else:
            source = SFTSource(path, tokenizer, chat_template=chat_template)
        if len(source) == 0:
            raise DataError(f"{path}: empty dataset (no documents)")
        if megatron:
            (a, b), (c, d), _ = [r or (0, 0) for r in megatron_split_ranges(split, len(source))]
        else:
            (a, b), (c, d), _ = split_ranges(split, len(source))
        make = SFTDataset if kind == "sft" else (MegatronGPTDataset if megatron else WindowDataset)
        if b <= a:
            raise DataError(f"{path}: split {split!r} leaves no training documents out of {len(source)}")
        requested = {"num_samples": num_train_samples} if megatron else {}
        train_parts.append((make(source, np.arange(a, b), seq_length, seed=seed, packing=packing,
                                 pad_id=pad_id, name=f"{path} (train)", **requested), w))
        if d > c:
            requested = {"num_samples": num_valid_samples} if megatron else {}
            valid_parts.append((make(source, np.arange(c, d), seq_length, seed=seed, packing=packing,
                                     pad_id=pad_id, name=f"{path} (validation)", **requested), w))
    train = _blend(train_parts)
    if train is None:
        raise DataError(f"empty dataset: every path has blend weight 0 ({dict(zip(paths, blend))})")
    return train, _blend(valid_parts)


def _build_hf(source: HFSource | None, tokenizer, *, seq_length: int, seed: int, packing: bool, megatron: bool,
              chat_template: bool, cache_dir, num_samples) -> tuple[SequenceDataset, SequenceDataset | None]:
    if source is None:
        raise DataError("data kind 'hf' needs hf_source (an HFSource: hub id or local path, preset, columns)")
    if tokenizer is None:
        raise DataError("data kind 'hf' tokenizes text and needs a tokenizer (an HF tokenizer or folder)")
    data = tokenize_hf(source, tokenizer, chat_template=chat_template, cache_dir=cache_dir,
                       settings={"seq_length": seq_length, "packing": packing})
    parts = []
    for rows, part, requested in zip((data.train_rows, data.valid_rows), ("train", "validation"), num_samples):
        if len(rows) == 0:
            parts.append(None)
        elif data.sft is not None:
            parts.append(SFTDataset(data.sft, rows, seq_length, seed=seed, packing=packing, pad_id=_pad_id(tokenizer),
                                    name=f"{data.name} ({part})"))
        elif megatron:
            parts.append(MegatronGPTDataset(data.text, rows, seq_length, seed=seed, packing=packing,
                                            pad_id=_pad_id(tokenizer), name=f"{data.name} ({part})",
                                            num_samples=requested))
        else:
            parts.append(WindowDataset(data.text, rows, seq_length, seed=seed, packing=packing,
                                       pad_id=_pad_id(tokenizer), name=f"{data.name} ({part})"))
    return parts[0], parts[1]
