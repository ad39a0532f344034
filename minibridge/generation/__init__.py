"""Generation with a KV cache: the token loop, sampling, pipeline stages, stop strings and streaming.

    from minibridge.generation import generate          # also importable from minibridge.generate
    texts = generate(model, tokenizer, prompts, max_new_tokens=64, stop_strings=["\\n\\n"],
                     streamer=lambda index, piece: print(piece, end="", flush=True))

sampling.py (settings, next-token choice) <- pipeline.py (one forward over this rank's stages) <-
loop.py (prefill + decode steps on ids) <- streaming.py (row texts: stop strings, settled pieces) <-
text.py (prompts -> texts: chat template, batches).
"""

from .loop import GenerationStats, eos_of_folder, generate_ids
from .sampling import check_context, choose_tokens, sampling_settings
from .streaming import PrintStreamer, RowTexts, settled_length
from .text import encode_prompts, generate, left_pad, read_prompts, wants_chat_template

__all__ = ["GenerationStats", "PrintStreamer", "RowTexts", "check_context", "choose_tokens", "encode_prompts",
           "eos_of_folder", "generate", "generate_ids", "left_pad", "read_prompts", "sampling_settings", "settled_length",
           "wants_chat_template"]
