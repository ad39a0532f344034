import os
import sys
from pathlib import Path

import pytest
import torch

# Triton decides interpreted or compiled when a kernel is decorated, i.e. when minibridge.kernels is
# first imported: without a GPU every Triton kernel runs in its CPU interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "parallel"))
sys.path.insert(0, str(Path(__file__).parent / "training"))
sys.path.insert(0, str(Path(__file__).parent / "kernels"))

from hf_checkpoints import make_checkpoint, real_config, shrink  # noqa: E402


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """hf_checkpoint(name, dtype=torch.float32, **text_overrides) -> folder, cached per session."""
    cache = {}

    def build(name: str, dtype=torch.float32, **overrides):
        key = (name, dtype, tuple(sorted(overrides.items())))
        if key not in cache:
            folder = tmp_path_factory.mktemp(name.replace(".", "_"))
            cache[key] = make_checkpoint(folder, shrink(real_config(name), **overrides), dtype=dtype)
        return cache[key]

    return build


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def pydoc_data(tmp_path_factory):
    """pydoc's documentation topics as JSONL, and a byte-level BPE tokenizer trained on them here."""
    import json as _json

    from minibridge.training.data import pydoc_corpus, train_tokenizer

    folder = tmp_path_factory.mktemp("pydoc")
    texts = pydoc_corpus()
    tokenizer = train_tokenizer(texts, folder / "tokenizer", vocab_size=512)
    jsonl = folder / "pydoc.jsonl"
    jsonl.write_text("".join(_json.dumps({"text": t}) + "\n" for t in texts))
    return {"jsonl": str(jsonl), "tokenizer": str(tokenizer), "vocab_size": 512}


@pytest.fixture
def one_thread():
    """Tiny models: one torch thread is fastest, and never stalls on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
