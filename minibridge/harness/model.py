"""`MinibridgeLM`: a minibridge model as an lm-evaluation-harness language model (`--model minibridge`).

It follows lm_eval's HFLM (lm_eval/models/huggingface.py) request for request, so scores equal
`--model hf` on the same checkpoint to fp32 rounding:

- Tokenization is lm_eval's own (`TemplateLM.loglikelihood` and `_encode_pair`): trailing whitespace of
  a context moves to its continuation, the pair is encoded whole and split at the context's length, an
  empty context becomes the prefix token (BOS, else EOS). `tok_encode` adds special tokens as the
  tokenizer does (BOS for Llama 3 and Gemma 3) unless `add_bos_token` says otherwise or the text already
  starts with BOS.
- loglikelihood: requests sorted longest first (lm_eval's `Collator`; requests that differ only in a
  one-token continuation share one forward), `batch_size` rows right-padded per forward, the last
  `max_length + 1` tokens kept. Only the continuation positions go through the output layer; their
  log-softmax is taken in fp32. `is_greedy`: every continuation token is the argmax.
- loglikelihood_rolling: `get_rolling_token_windows` + `make_disjoint_window` over the whole text
  (context 1, windows of `max_length`, the first one conditioned on the prefix token), summed per text.
- generate_until: contexts grouped by generation settings, sorted longest first, left-truncated to
  `max_length - max_gen_toks` and left-padded, then `minibridge.generation.generate_ids` (prefill + KV
  cache); the new tokens are decoded without special tokens and cut at the `until` strings.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from ..errors import ConfigError, reject_unknown_keys
from .loading import load
from .requests import cut_at_stops, generation_settings

try:  # lm_eval is an optional extra: this module imports without it, MinibridgeLM(...) says what to install
    from lm_eval.api.model import TemplateLM
    from lm_eval.models.utils import Collator
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError:
    TemplateLM = object
    Collator = get_rolling_token_windows = make_disjoint_window = None

INSTALL_HINT = "lm_eval is not installed: pip install minibridge[lm-eval] (or pip install lm_eval)"
DEFAULT_MAX_LENGTH = 2048       # HFLM's, when neither the config nor the tokenizer names a context length
TOKENIZER_INFINITY = 10**29     # transformers' model_max_length when a tokenizer names none (~1e30)
DEFAULT_MAX_GEN_TOKS = 256      # HFLM's max_gen_toks
ARGUMENTS = ("pretrained", "hf_model", "checkpoint", "tokenizer", "dtype", "device", "batch_size",
             "max_batch_size", "max_length", "max_gen_toks", "add_bos_token", "prefix_token_id", "logits_cache",
             "revision", "trust_remote_code", "backend")


def _positive_int(name: str, value) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if isinstance(value, bool) or number is None or number < 1 or str(number) != str(value).strip():
        raise ConfigError(f"{name}={value!r}: expected an integer >= 1"
                          + ("; automatic batch sizes are not supported" if str(value).startswith("auto") else ""))
    return number


class MinibridgeLM(TemplateLM):
    """An lm_eval LM running a minibridge model. `--model_args` (or keyword arguments):

    pretrained / hf_model  HF folder or hub id (config, tokenizer, weights), or a minibridge model object
    checkpoint             a minibridge checkpoint folder (weights; architecture from run.json without pretrained)
    tokenizer              tokenizer folder or object (default: the HF folder's, or the one run.json names)
    dtype                  auto (the checkpoint's), float32, bfloat16, float16
    device                 default cuda when available, else cpu
    batch_size             rows per forward (loglikelihood) and prompts per generation batch (default 1)
    max_length             context length (default: the config's max_position_embeddings)
    max_gen_toks           generation budget when a task names none (default 256)
    add_bos_token          force BOS on (true) or off (false); default: the tokenizer's own rule
    prefix_token_id        the token an empty context is replaced by (default BOS, else EOS)
    logits_cache           share one forward among requests differing in a one-token continuation (default true)
    """

    backend = "causal"

    def __init__(self, pretrained=None, checkpoint=None, tokenizer=None, dtype="auto", device=None, batch_size=1,
                 max_batch_size=None, max_length=None, max_gen_toks=DEFAULT_MAX_GEN_TOKS, add_bos_token=None,
                 prefix_token_id=None, logits_cache=True, revision=None, trust_remote_code=False,
                 backend="causal", hf_model=None, **unknown) -> None:
        if TemplateLM is object:
            raise ConfigError(INSTALL_HINT)
        super().__init__()
        reject_unknown_keys("model_args.", unknown, ARGUMENTS)
        if trust_remote_code:
            raise ConfigError("trust_remote_code=True: minibridge never runs code from a model folder; it reads "
                              "Llama 3 and Gemma 3 checkpoints itself")
        if backend not in ("causal", "default"):
            raise ConfigError(f"backend={backend!r}: minibridge models are causal (decoder-only)")
        if hf_model is not None and pretrained is not None and str(hf_model) != str(pretrained):
            raise ConfigError(f"pretrained={pretrained} and hf_model={hf_model}: two names for the HF folder; pass one")
        self.batch_size = _positive_int("batch_size", batch_size)
        self._max_length = None if max_length is None else _positive_int("max_length", max_length)
        self._max_gen_toks = _positive_int("max_gen_toks", max_gen_toks)
        loaded = load(pretrained if pretrained is not None else hf_model, checkpoint, tokenizer, dtype, device,
                      revision, add_bos_token)
        self.model, self.tokenizer, self.source = loaded.model, loaded.tokenizer, loaded.source
        self.generation_eos = loaded.eos_token_id
        self._device = next(self.model.parameters()).device
        self.add_bos_token = add_bos_token
        self.custom_prefix_token_id = prefix_token_id
        self.logits_cache = bool(logits_cache)
        self.revision = revision
        # HFLM's configure_pad_token: the tokenizer's pad, else unk, else EOS (what fills finished rows)
        pad = next((t for t in (self.tokenizer.pad_token_id, getattr(self.tokenizer, "unk_token_id", None),
                                self.tokenizer.eos_token_id) if t is not None), 0)
        self.pad_token_id = int(pad)

    # ------------------------------------------------------------------ what lm_eval reads

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        if self.custom_prefix_token_id is not None:
            return int(self.custom_prefix_token_id)
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        if self._max_length:
            return self._max_length
        if self.model.config.max_position_embeddings:
            return int(self.model.config.max_position_embeddings)
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", None)
        if tokenizer_limit is not None and tokenizer_limit < TOKENIZER_INFINITY:
            return int(tokenizer_limit)
        return DEFAULT_MAX_LENGTH

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def tokenizer_name(self) -> str:
        return str(self.tokenizer.name_or_path).replace("/", "__")

    def get_model_info(self) -> dict:
        return {"model_num_parameters": sum(p.numel() for p in self.model.parameters()),
                "model_dtype": str(next(self.model.parameters()).dtype), "model_revision": self.revision,
                "model_source": self.source}

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    # ------------------------------------------------------------------ tokens

    def _special_tokens(self, add_special_tokens: bool | None, text: str, bos_text: str | None) -> dict:
        """HFLM's rule: an explicit flag, else add_bos_token, else the tokenizer's default; a text that
        already starts with BOS gets no second one."""
        if add_special_tokens is None and bos_text and text.startswith(bos_text):
            return {"add_special_tokens": False}
        flag = add_special_tokens if add_special_tokens is not None else self.add_bos_token
        return {} if flag is None else {"add_special_tokens": flag}

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs) -> list[int]:
        bos_text = self.tokenizer.decode(self.prefix_token_id)
        ids = self.tokenizer.encode(string, **self._special_tokens(add_special_tokens, string, bos_text))
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------------ scoring

    @torch.inference_mode()
    def _continuation_logprobs(self, rows: list[list[int]], lengths: list[int]):
        """Per row, (len, vocab) fp32 log-probabilities of the row's last `len` targets. Rows are right-padded
        (causal attention: padding after a row's tokens cannot change them, so no mask is needed); row i
        has `len(rows[i])` inputs and its targets are predicted at positions len(rows[i]) - len ... - 1."""
        longest = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), longest), dtype=torch.long)  # the padding's value never matters
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        hidden = self.model.hidden_states(ids.to(self.device))
        for i, (row, n) in enumerate(zip(rows, lengths)):
            # one row at a time through the output layer: (len, vocab) at once, never (batch, seq, vocab)
            logits = self.model.logits(hidden[i : i + 1, len(row) - n : len(row)])[0]
            yield logits.float().log_softmax(dim=-1)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(log p(continuation | context), is_greedy) of each ((context, continuation), context_ids,
        continuation_ids), in the order given."""

        def longest_first(request):  # HFLM's sort key: descending length, then the tokens
            tokens = request[1] + request[2]
            return -len(tokens), tuple(tokens)

        collator = Collator(requests, sort_fn=longest_first, group_by="contexts" if self.logits_cache else None,
                            group_fn=lambda request: request[-2] + request[-1][:-1])
        results = []
        bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="Running loglikelihood requests")
        for chunk in collator.get_batched(n=self.batch_size):
            rows, lengths = [], []
            for _, context, continuation in chunk:
                if not context or not continuation or len(continuation) > self.max_length:
                    raise ConfigError(f"loglikelihood: a request of {len(context)} context and {len(continuation)} "
                                      f"continuation tokens; expected both non-empty and the continuation within "
                                      f"max_length={self.max_length}")
                rows.append((context + continuation)[-(self.max_length + 1):][:-1])  # left-truncated
                lengths.append(len(continuation))
            for (request, context, continuation), logprobs in zip(chunk, self._continuation_logprobs(rows, lengths)):
                greedy = logprobs.argmax(dim=-1)
                cached = collator.get_cache(req_str=request, cxt_toks=context, cont_toks=continuation,
                                            logits=logprobs[None])
                for request_str, tokens, shared in cached:  # several when requests share this forward
                    n = len(tokens)
                    target = torch.tensor(tokens, device=logprobs.device)
                    score = float(shared[0, -n:].gather(-1, target[:, None]).sum())
                    answer = (score, bool((greedy[-n:] == target).all()))
                    results.append(answer)
                    if request_str is not None:
                        self.cache_hook.add_partial("loglikelihood", request_str, answer)
                    bar.update(1)
        bar.close()
        return collator.get_original(results)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, counts = [], []
        for (text,) in tqdm([r.args for r in requests], disable=disable_tqdm or self.rank != 0,
                            desc="Tokenizing rolling windows"):
            pairs = get_rolling_token_windows(token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                                              max_seq_len=self.max_length, context_len=1)
            mine = [(None, *make_disjoint_window(pair)) for pair in pairs]
            windows += mine
            counts.append(len(mine))
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals, start = [], 0
        for request, count in zip(requests, counts):
            totals.append(sum(score for score, _ in scores[start : start + count]))
            start += count
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, totals[-1])
        return totals

    # ------------------------------------------------------------------ generation

    def _encode_contexts(self, contexts: list[str], max_tokens: int) -> list[list[int]]:
        """HFLM's tok_batch_encode: one special-token rule for the batch (its first text decides whether
        BOS is there already), each row left-truncated to its last `max_tokens` tokens."""
        special = self._special_tokens(None, contexts[0], getattr(self.tokenizer, "bos_token", None))
        rows = self.tokenizer(list(contexts), **special)["input_ids"]
        return [list(row[-max_tokens:]) or [self.prefix_token_id] for row in rows]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from ..generation import generate_ids, left_pad

        collator = Collator([r.args for r in requests], sort_fn=lambda r: (-len(self.tok_encode(r[0])), r[0]),
                            group_by="gen_kwargs", group_fn=lambda r: r[1])
        eos_text = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        results = []
        bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="Running generate_until requests")
        for chunk in collator.get_batched(n=self.batch_size):
            contexts, all_kwargs = zip(*chunk)
            settings = generation_settings(all_kwargs[0], eos_text, self.max_gen_toks)
            room = self.max_length - settings.max_gen_toks
            if room < 1:
                raise ConfigError(f"generate_until: max_gen_toks={settings.max_gen_toks} leaves no room for the "
                                  f"context within max_length={self.max_length}")
            ids, mask = left_pad(self._encode_contexts(contexts, room), self.pad_token_id)
            new = generate_ids(self.model, ids, mask, max_new_tokens=settings.max_gen_toks,
                               do_sample=settings.do_sample, temperature=settings.temperature if settings.do_sample else None,
                               top_k=settings.top_k, top_p=settings.top_p, eos_token_id=self.generation_eos,
                               pad_token_id=self.pad_token_id)
            for context, row in zip(contexts, new.tolist()):
                text = cut_at_stops(self.tok_decode(row), settings.until)
                results.append(text)
                self.cache_hook.add_partial("generate_until", (context, all_kwargs[0]), text)
                bar.update(1)
        bar.close()
        return collator.get_original(results)
