import shutil

import pytest
from hf_checkpoints import make_checkpoint, real_config, shrink


@pytest.fixture(scope="session")
def tiny_lms(tmp_path_factory):
    """HF folders of a tiny Llama and a tiny Gemma 3 (sliding window 8, layers 0-4 and 6 local) with a
    320-token byte-level BPE tokenizer saved beside the weights; the configs name its BOS 0, EOS 1, PAD 2."""
    from transformers import AutoTokenizer

    from minibridge.training.data import pydoc_corpus, train_tokenizer

    root = tmp_path_factory.mktemp("tiny_lms")
    tokenizer = train_tokenizer(pydoc_corpus()[:30], root / "tokenizer", vocab_size=320)
    size = len(AutoTokenizer.from_pretrained(tokenizer))
    out = {}
    for key, name in (("llama", "Llama-3.2-1B"), ("gemma", "gemma-3-1b-it")):
        config = shrink(real_config(name), vocab_size=size, bos_token_id=0, eos_token_id=1, pad_token_id=2)
        folder = make_checkpoint(root / key, config)
        for file in tokenizer.iterdir():
            shutil.copy(file, folder / file.name)
        out[key] = folder
    return out
