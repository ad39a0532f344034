"""Tokenize JSONL into Megatron's indexed format, like Megatron-LM's tools/preprocess_data.py.

    python -m minibridge.training.data.preprocess --input corpus.jsonl --output-prefix out/corpus \\
        --tokenizer TOKENIZER_DIR [--json-keys text] [--append-eod] [--workers 4]
    python -m minibridge.training.data.preprocess --hf-dataset NAME_OR_DIR [--hf-split train] [--hf-subset NAME] \\
        --output-prefix out/corpus --tokenizer TOKENIZER_DIR [--json-keys text] [--append-eod]

writes out/corpus_text_document.bin/.idx (one pair per json key: PREFIX_{key}_document), one sequence
per document, in uint16 when the vocabulary has under 65500 ids, else int32 (Megatron's choice), so
Megatron's own loaders read the result. Documents are tokenized as the "jsonl" data kind does (with
the tokenizer's own BOS if it adds one), except that EOS is appended only with --append-eod (the
"jsonl" kind always appends it); in batches, by --workers processes, in input order. Files are written under temporary names and renamed at the end, so an interrupted run
leaves no partial dataset behind. A progress line (documents, MB, rates, ETA) goes to stderr.
--hf-dataset reads a Hugging Face dataset instead (hub id, save_to_disk folder, parquet/json files; the
`datasets` package), --json-keys naming its text columns; it tokenizes in the main process, in batches.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import sys
from itertools import islice
from pathlib import Path

from ...cli import run_main
from .errors import DataError
from .hf import HFSource, load_split
from .indexed import IndexedDatasetWriter, optimal_dtype
from .jsonl import encode_documents, parse_line, require
from .progress import Progress
from .tokenizer import load_tokenizer

CHUNK_LINES = 256
_WORKER: dict = {}  # per-process tokenizer and options, set by _init


def _init(tokenizer_dir: str, keys: list[str], append_eod: bool, path: str) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # processes already give the parallelism
    _WORKER.update(tokenizer=load_tokenizer(tokenizer_dir), keys=keys, append_eod=append_eod, path=path)


def _encode_chunk(chunk: list[tuple[int, bytes]]) -> tuple[dict[str, list[list[int]]], int]:
    """Token ids per key for a chunk of (line number, raw line); and the chunk's byte count."""
    rows = [parse_line(raw, _WORKER["path"], lineno) for lineno, raw in chunk]
    out = {}
    for key in _WORKER["keys"]:
        texts = [require(row, key, _WORKER["path"], lineno) for row, (lineno, _) in zip(rows, chunk)]
        out[key] = encode_documents(_WORKER["tokenizer"], texts, append_eos=_WORKER["append_eod"])
    return out, sum(len(raw) for _, raw in chunk)


def _chunks(path: Path):
    with open(path, "rb") as f:
        lines = ((n, raw) for n, raw in enumerate(f, start=1) if raw.strip())
        while chunk := list(islice(lines, CHUNK_LINES)):
            yield chunk


def preprocess(input_path, output_prefix, tokenizer_dir, json_keys=("text",), append_eod=False,
               workers=1, log_interval=5.0) -> dict[str, str]:
    """Run the conversion; returns {json key: written prefix}."""
    input_path = Path(input_path)
    if not input_path.is_file():
        raise FileNotFoundError(f"--input {input_path} does not exist")
    if workers < 1:
        raise DataError(f"--workers must be at least 1, got {workers}")
    keys = list(json_keys)
    tokenizer = load_tokenizer(str(tokenizer_dir))
    dtype = optimal_dtype(len(tokenizer))
    prefixes = {key: f"{output_prefix}_{key}_document" for key in keys}
    progress = Progress(input_path.stat().st_size, log_interval)
    init_args = (str(tokenizer_dir), keys, append_eod, str(input_path))
    with contextlib.ExitStack() as stack:
        writers = {k: stack.enter_context(IndexedDatasetWriter(p, dtype)) for k, p in prefixes.items()}
        if workers == 1:
            _init(*init_args)
            results = map(_encode_chunk, _chunks(input_path))
        else:
            pool = stack.enter_context(multiprocessing.Pool(workers, initializer=_init, initargs=init_args))
            results = pool.imap(_encode_chunk, _chunks(input_path))
        for encoded, nbytes in results:
            tokens = 0
            for key, docs in encoded.items():
                for ids in docs:
                    # An empty document keeps its slot with no sequences, as Megatron's builder does.
                    writers[key].add_document(ids, [len(ids)] if ids else [])
                    tokens += len(ids)
            progress.update(len(encoded[keys[0]]), nbytes, tokens)
        if progress.docs == 0:
            raise DataError(f"{input_path}: empty dataset (no JSON lines)")
    progress.update(0, 0, 0, force=True)
    return prefixes


def preprocess_hf(dataset, output_prefix, tokenizer_dir, json_keys=("text",), append_eod=False, split="train",
                  subset=None, log_interval=5.0) -> dict[str, str]:
    """--hf-dataset: the text columns of one split of a Hugging Face dataset; returns {column: written prefix}."""
    keys = list(json_keys)
    source = HFSource(str(dataset), split=split, subset=subset)
    rows = load_split(source)
    missing = [k for k in keys if k not in rows.column_names]
    if missing:
        raise DataError(f"{source.name}: no column {missing[0]!r} (columns: {', '.join(rows.column_names)}); "
                        f"name the text columns with --json-keys")
    tokenizer = load_tokenizer(str(tokenizer_dir))
    prefixes = {key: f"{output_prefix}_{key}_document" for key in keys}
    progress = Progress(len(rows), log_interval, label=f"tokenizing {source.name}:", bytes=False)
    with contextlib.ExitStack() as stack:
        writers = {k: stack.enter_context(IndexedDatasetWriter(p, optimal_dtype(len(tokenizer))))
                   for k, p in prefixes.items()}
        first = 0
        for batch in rows.select_columns(keys).iter(batch_size=CHUNK_LINES):
            tokens = 0
            for key in keys:
                for i, text in enumerate(batch[key]):
                    if not isinstance(text, str):
                        raise DataError(f"{source.name}, row {first + i}, column {key!r}: expected a string, got "
                                        f"{type(text).__name__}")
                for ids in encode_documents(tokenizer, batch[key], append_eos=append_eod):
                    writers[key].add_document(ids, [len(ids)] if ids else [])
                    tokens += len(ids)
            first += len(batch[keys[0]])
            progress.update(len(batch[keys[0]]), 0, tokens)
    progress.update(0, 0, 0, force=True)
    return prefixes


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minibridge.training.data.preprocess", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="JSONL file, one document per line")
    source.add_argument("--hf-dataset", help="a Hugging Face dataset: hub id, save_to_disk folder, parquet/json file")
    parser.add_argument("--hf-split", default="train", help="its split (default: train)")
    parser.add_argument("--hf-subset", default=None, help="its subset (configuration name)")
    parser.add_argument("--output-prefix", required=True, help="writes PREFIX_{key}_document.bin/.idx")
    parser.add_argument("--tokenizer", required=True, help="HF tokenizer folder (or hub id when online)")
    parser.add_argument("--json-keys", nargs="+", default=["text"],
                        help="keys (--hf-dataset: columns) to tokenize (default: text)")
    parser.add_argument("--append-eod", action="store_true", help="append the EOS token to every document")
    parser.add_argument("--workers", type=int, default=1, help="tokenizer processes (default 1)")
    parser.add_argument("--log-interval", type=float, default=5.0, help="seconds between progress lines")
    args = parser.parse_args(argv)
    if args.hf_dataset:
        written = preprocess_hf(args.hf_dataset, args.output_prefix, args.tokenizer, args.json_keys, args.append_eod,
                                args.hf_split, args.hf_subset, args.log_interval)
    else:
        written = preprocess(args.input, args.output_prefix, args.tokenizer, args.json_keys,
                             args.append_eod, args.workers, args.log_interval)
    for key, prefix in written.items():
        print(f"{key}: wrote {prefix}.bin and {prefix}.idx")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("minibridge.training.data.preprocess", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
