"""Tokenizers for the data pipeline: loading, plus a local one for demos and tests (no model hub here).

`train_tokenizer` trains a byte-level BPE (GPT-2 / Llama 3 style: every byte is a base symbol, so any
text round-trips) with the `tokenizers` library and saves a folder that transformers.AutoTokenizer
loads: tokenizer.json (which also adds BOS to every encoded text, like Llama 3) and
tokenizer_config.json naming bos/eos/pad and a ChatML-style chat template. `pydoc_corpus` gives real
English text to train it on that ships with Python itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from ...bridge.hf_folder import load_hf_tokenizer
from .errors import DataError

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [BOS, EOS, PAD, IM_START, IM_END]  # ids 0..4, in this order
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def pydoc_corpus() -> list[str]:
    """The documentation topics of the standard library's pydoc_data (~80 documents, ~460 kB of English
    prose and code), in the module's (stable) order."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise DataError("pydoc_data is missing from this Python installation (some distributions strip "
                        "it); pass your own texts to train_tokenizer instead") from None
    return [text for text in topics.values() if text.strip()]


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 4096) -> Path:
    """Train a byte-level BPE on `texts` and save an HF tokenizer folder at out_dir; returns out_dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    # 256 byte symbols + the specials are the floor; BPE merges fill the rest.
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise DataError(f"train_tokenizer: vocab_size={vocab_size} is below the {256 + len(SPECIAL_TOKENS)} "
                        "byte and special symbols a byte-level BPE needs")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                      extra_special_tokens=[IM_START, IM_END])
    wrapped.chat_template = CHAT_TEMPLATE
    out_dir = Path(out_dir)
    wrapped.save_pretrained(out_dir)
    # transformers 5 writes the template to chat_template.jinja and names its own backend class; also
    # keep the template in tokenizer_config.json and name the portable class, so 4.x readers load it too.
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.update(chat_template=CHAT_TEMPLATE, tokenizer_class="PreTrainedTokenizerFast")
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return out_dir


def load_tokenizer(tokenizer):
    """An HF tokenizer object as is, or a folder/hub id loaded with AutoTokenizer (no remote code)."""
    if tokenizer is None or hasattr(tokenizer, "apply_chat_template"):
        return tokenizer
    return load_hf_tokenizer(tokenizer, "expected an HF tokenizer folder (tokenizer.json, tokenizer_config.json)",
                             error=DataError)
