"""Megatron Bridge 0.6's fine-tuning datasets (`--dataset squad|gsm8k|tulu3|openmathinstruct2|...`), formatted as
it formats them, and the column mapping of any other Hugging Face dataset (`dataset.kind=hf`).

Sources (Megatron Bridge 0.6.2): megatron/bridge/recipes/utils/dataset_utils.py (default_*_config: the
preprocessing, separator, val_proportion), data/sources/hf.py (_HF_DATASET_PRESETS: hub id, subset,
split), data/sources/hf_adapters.py (the row -> prompt/completion or messages adapters) and
data/sft_processing.py (tokenize_prompt_completion_example):

    squad        rajpurkar/squad train; "Context: {context} Question: {question} Answer:" + " " + answers.text[0];
                 validation: 10% of train (train_test_split, seed 5678)
    gsm8k        openai/gsm8k (main) train; "Question: {question} Answer:" + " " + answer; no validation
    openmathinstruct2
                 nvidia/OpenMathInstruct-2 train_1M; "Problem: {problem} Solution:" + " " + generated_solution;
                 validation 5%
    openmathinstruct2-thinking
                 the same rows as a chat: user problem, assistant {"thinking": the solution up to its last
                 \\boxed{}, boxes unwrapped, "content": "#### {expected_answer}"}; validation 5%
    tulu3        allenai/tulu-3-sft-mixture train, its `messages` as a chat; validation 5%

A prompt/completion preset is tokenized without a chat template (Megatron Bridge's
PromptCompletionSFTPreprocessingConfig): both texts stripped of spaces, prompt tokens (no BOS), then the tokens
of separator + completion (the separator's leading space dropped for a tokenizer where spaces do not change
tokens), then EOS; the loss is on the completion and EOS. Chat presets use the tokenizer's chat template with
the loss on the assistant turns (sft.encode_messages).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import DataError

ROLES = ("system", "user", "assistant", "tool")  # the roles a chat row may use
VALIDATION_SEED = 5678  # Megatron Bridge's GPTSFTDatasetConfig seed of its recipes: the val_proportion split


@dataclass(frozen=True)
class Preset:
    hub_id: str
    subset: str | None
    split: str
    columns: tuple[str, ...]  # the columns render reads
    render: Callable[[dict], dict]  # row -> {"prompt", "completion"} or {"messages"}
    val_proportion: float | None  # validation rows taken from the training split
    separator: str = " "  # between prompt and completion (prompt/completion presets)


def _squad(row: dict) -> dict:
    answers = row["answers"]
    texts = answers.get("text") if isinstance(answers, dict) else None
    if not isinstance(texts, list) or not texts or not isinstance(texts[0], str):
        raise ValueError("expected {'text': [answer, ...], ...} with at least one answer")
    return {"prompt": f"Context: {row['context']} Question: {row['question']} Answer:", "completion": texts[0]}


def _gsm8k(row: dict) -> dict:
    return {"prompt": f"Question: {row['question']} Answer:", "completion": str(row["answer"])}


def _openmathinstruct2(row: dict) -> dict:
    return {"prompt": f"Problem: {row['problem']} Solution:", "completion": str(row["generated_solution"])}


def _box_end(text: str, start: int) -> int:
    """Index of the brace closing the `\\boxed{` that starts at `start`, or -1."""
    depth = 0
    for i in range(start + len("\\boxed{") - 1, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return i
    return -1


def _unbox(text: str) -> str:
    """Every `\\boxed{x}` -> `x` (an unclosed one is kept as it is, and ends the search)."""
    out, pos = [], 0
    while (i := text.find("\\boxed{", pos)) != -1:
        end = _box_end(text, i)
        if end == -1:
            break
        out += [text[pos:i], text[i + len("\\boxed{") : end]]
        pos = end + 1
    return "".join(out) + text[pos:]


def _openmathinstruct2_thinking(row: dict) -> dict:
    solution = str(row["generated_solution"])
    thinking = solution.rstrip()
    last = solution.rfind("\\boxed{")
    if last != -1 and _box_end(solution, last) != -1:
        thinking = solution[:last].rstrip()
        thinking = thinking[:-1].rstrip() if thinking.endswith("$") else thinking
    return {"messages": [
        {"role": "user", "content": row["problem"]},
        {"role": "assistant", "thinking": _unbox(thinking), "content": f"#### {row['expected_answer']}"},
    ]}


def _messages(column: str) -> Callable[[dict], dict]:
    return lambda row: {"messages": row[column]}


PRESETS: dict[str, Preset] = {
    "squad": Preset("rajpurkar/squad", None, "train", ("context", "question", "answers"), _squad, 0.1),
    "gsm8k": Preset("openai/gsm8k", "main", "train", ("question", "answer"), _gsm8k, None),
    "openmathinstruct2": Preset("nvidia/OpenMathInstruct-2", None, "train_1M",
                                ("problem", "generated_solution"), _openmathinstruct2, 0.05),
    "openmathinstruct2-thinking": Preset("nvidia/OpenMathInstruct-2", None, "train_1M",
                                         ("problem", "generated_solution", "expected_answer"),
                                         _openmathinstruct2_thinking, 0.05),
    "tulu3": Preset("allenai/tulu-3-sft-mixture", None, "train", ("messages",), _messages("messages"), 0.05),
}


def column_preset(columns: list[str], prompt: str | None, completion: str | None, messages: str | None,
                  text: str | None, name: str) -> Preset:
    """The mapping of a plain HF dataset (dataset.kind=hf): the columns named, else `messages`, `prompt` and
    `completion`, or `text`, whichever the dataset has. Its rows go through sft.py's encoders (chat template
    when the config asks for it), or are raw text documents when `text` is chosen."""
    if not (prompt or completion or messages or text):
        if "messages" in columns:
            messages = "messages"
        elif "prompt" in columns and "completion" in columns:
            prompt, completion = "prompt", "completion"
        elif "text" in columns:
            text = "text"
        else:
            raise DataError(f"{name}: no column to train on among {columns}; name them with dataset.prompt_column "
                            f"and dataset.completion_column, dataset.messages_column or dataset.text_column")
    if text:
        return Preset("", None, "train", (text,), lambda row: {"text": row[text]}, None, "")
    if messages:
        return Preset("", None, "train", (messages,), _messages(messages), None, "")
    if not (prompt and completion):
        raise DataError(f"{name}: dataset.prompt_column and dataset.completion_column go together (got "
                        f"prompt_column={prompt!r}, completion_column={completion!r})")
    return Preset("", None, "train", (prompt, completion),
                  lambda row: {"prompt": row[prompt], "completion": row[completion]}, None, "")


def check_messages(messages, where: str) -> None:
    """A chat row: a non-empty list of {"role", "content"} with known roles and at least one answer."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: messages[{i}] must be an object with 'role' and 'content', got {m!r}")
        if m["role"] not in ROLES:
            raise DataError(f"{where}: messages[{i}] has unknown role {m['role']!r}; expected one of "
                            f"{', '.join(ROLES)}")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: no message has role 'assistant', so there is nothing to train on")


def encode_text(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def space_sensitive(tokenizer) -> bool:
    """Whether a leading space changes the tokens ("x y" is not "x" + "y"): Megatron Bridge's test."""
    return encode_text(tokenizer, "x y") != encode_text(tokenizer, "x") + encode_text(tokenizer, "y")


def render_pair(prompt: str, completion: str, separator: str, keep_space: bool) -> tuple[str, str]:
    """The two texts Megatron Bridge tokenizes: the stripped prompt and separator + stripped completion."""
    if separator.startswith(" ") and not keep_space:
        separator = separator[1:]
    return prompt.strip(" "), separator + completion.strip(" ")


def encode_megatron_pairs(tokenizer, pairs: list[tuple[str, str]], separator: str, keep_space: bool,
                          where: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(token ids, loss mask) of each (prompt, completion): prompt tokens, then completion tokens and EOS (the loss
    on those); the texts are tokenized in one batch (the tokenizer's threads)."""
    if tokenizer.eos_token_id is None:
        raise DataError(f"{where}: the tokenizer has no eos_token to end the completion with")
    texts = [render_pair(p, c, separator, keep_space) for p, c in pairs]
    prompts = tokenizer([p for p, _ in texts], add_special_tokens=False)["input_ids"]
    answers = tokenizer([c for _, c in texts], add_special_tokens=False)["input_ids"]
    out = []
    for p, c in zip(prompts, answers):
        c = list(c) + [tokenizer.eos_token_id]
        mask = np.asarray([False] * len(p) + [True] * len(c), dtype=bool)
        out.append((np.asarray(list(p) + c, dtype=np.int64), mask))
    return out
