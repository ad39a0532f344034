"""Fixtures of the data-pipeline tests: a BPE tokenizer trained on pydoc text, a word-level tokenizer
with a known vocabulary (so expected token lists can be written by hand)."""

import pytest

from minibridge.training.data import pydoc_corpus, train_tokenizer
from minibridge.training.data.tokenizer import BOS, CHAT_TEMPLATE, EOS, IM_END, IM_START, PAD

# id of each word of the word-level tokenizer: the five specials first, like train_tokenizer.
WORDS = [BOS, EOS, PAD, IM_START, IM_END, "user", "assistant", "system", "hi", "yo", "what", "is", "two",
         "four", "ok", "[UNK]"]
VOCAB = {w: i for i, w in enumerate(WORDS)}


@pytest.fixture(scope="session")
def bpe_tokenizer_dir(tmp_path_factory):
    return train_tokenizer(pydoc_corpus(), tmp_path_factory.mktemp("bpe_tokenizer"), vocab_size=1024)


@pytest.fixture(scope="session")
def bpe_tokenizer(bpe_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bpe_tokenizer_dir)


@pytest.fixture(scope="session")
def word_tokenizer():
    """Whitespace-split words -> VOCAB ids, BOS prepended by encode, ChatML template (newlines vanish)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, 0)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                      unk_token="[UNK]", extra_special_tokens=[IM_START, IM_END])
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped
