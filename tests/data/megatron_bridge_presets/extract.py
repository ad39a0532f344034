"""Render a few rows of each Megatron Bridge 0.6.2 fine-tuning preset with its own code, into presets.json
(committed beside this script; tests/training/data/test_data_hf.py needs neither this script nor megatron-bridge).

    python tests/data/megatron_bridge_presets/extract.py /tmp/mcore > tests/data/megatron_bridge_presets/presets.json

Executed from the unpacked package (ROOT/megatron/bridge/...): data/sources/hf_adapters.py (the row adapters of
squad, gsm8k, openmathinstruct2, openmathinstruct2_thinking) and data/sft_processing.py (normalize_sft_example and
tokenize_prompt_completion_example with each preset's PromptCompletionSFTPreprocessingConfig from
recipes/utils/dataset_utils.py: prompt_column "input", completion_column "output", separator " "). Their GPU-side
imports are replaced by stubs. The prompt and completion texts are what tokenize_prompt_completion_example hands
to the tokenizer, recorded by a tokenizer whose tokens are characters (space-sensitive, as BPE and SentencePiece
tokenizers are, so the separator's space is kept). Chat presets (tulu3, openmathinstruct2_thinking) record the
conversation ChatSFTPreprocessingConfig passes to the tokenizer's chat template.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/mcore") / "megatron" / "bridge"

ROWS = {
    "squad": [
        {"id": "1", "title": "Normans", "context": " The Normans were the people who in the 10th and 11th centuries "
         "gave their name to Normandy, a region in France. ", "question": "In what country is Normandy located?",
         "answers": {"text": ["France", "France"], "answer_start": [159, 159]}},
        {"id": "2", "title": "Physics", "context": "Force is a push or pull. It is measured in newtons.",
         "question": "What unit measures force? ", "answers": {"text": [" newtons", "newtons"],
                                                               "answer_start": [40, 41]}},
    ],
    "gsm8k": [
        {"question": "Tom has 3 apples and buys 2 more. How many apples does he have?",
         "answer": "He has 3 + 2 = <<3+2=5>>5 apples.\n#### 5"},
    ],
    "openmathinstruct2": [
        {"problem": "What is $2+3$?", "generated_solution": "We add: $2+3=\\boxed{5}$.", "expected_answer": "5",
         "problem_source": "augmented_math"},
    ],
    "openmathinstruct2_thinking": [
        {"problem": "Compute $4 \\cdot 6$.", "generated_solution": "First $\\boxed{4}$ times 6 is 24, so the "
         "answer is $\\boxed{24}$.", "expected_answer": "24", "problem_source": "augmented_math"},
    ],
    "tulu3": [
        {"id": "t1", "source": "tulu", "messages": [
            {"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Say hi."},
            {"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "Again."},
            {"role": "assistant", "content": "Hi again!"}]},
    ],
}


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def stub(name: str, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module


class CharTokenizer:
    """Tokens are characters; records every text tokenized. eos 0."""

    eos_token_id = 0

    def __init__(self):
        self.texts = []

    def encode(self, text, add_special_tokens=False):
        self.texts.append(text)
        return [ord(c) for c in text]


def main() -> None:
    stub("megatron.bridge.data.token_utils", json2token=None)
    stub("megatron.bridge.utils.common_utils", resolve_path=None)
    stub("megatron.bridge.data.conversation_processing", get_processor_tokenizer=lambda t: t,
         normalize_chat_conversation=lambda row: list(row.get("messages") or row.get("conversation")))
    adapters = load("mb_hf_adapters", ROOT / "data/sources/hf_adapters.py")
    sft = load("mb_sft_processing", ROOT / "data/sft_processing.py")
    pair = sft.PromptCompletionSFTPreprocessingConfig(prompt_column="input", completion_column="output", separator=" ")
    chat = sft.ChatSFTPreprocessingConfig()
    out = {"megatron_bridge": "0.6.2", "source": "megatron/bridge/data/sources/hf_adapters.py, "
           "megatron/bridge/data/sft_processing.py, megatron/bridge/recipes/utils/dataset_utils.py", "presets": {}}
    for name, rows in ROWS.items():
        rendered = []
        for row in rows:
            adapted = adapters.adapt_hf_dataset([row], adapter_name=None if name == "tulu3" else name)[0]
            if "messages" in adapted or "conversation" in adapted:
                normal = sft.normalize_sft_example(adapted, chat)
                rendered.append({"row": row, "messages": normal["conversation"]})
                continue
            tokenizer = CharTokenizer()
            sft.tokenize_prompt_completion_example(adapted, tokenizer, pair)
            prompt, completion = tokenizer.texts[-2:]  # after the three texts of the space-sensitivity check
            rendered.append({"row": row, "prompt": prompt, "completion": completion})
        out["presets"][name.replace("_", "-")] = rendered
    json.dump(out, sys.stdout, indent=1, ensure_ascii=False)
    print()


if __name__ == "__main__":
    main()
