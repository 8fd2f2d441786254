"""lm-evaluation-harness model `tinystack`: any run directory of this stack (every mixer: softmax, linear, GAU,
Mamba, hybrids, LoRA runs) behind lm_eval's `LM` interface. `python -m train.evals.evaluate` drives it.

    lm = TinystackLM(run="runs/demo")      # or TinystackLM(model=model, tokenizer=tokenizer)
    lm_eval.simple_evaluate(model=lm, tasks=["tinystories_next"], task_manager=...)

Requests, with L = the model's max_seq_len (the block length it was trained on):

    loglikelihood(context, continuation)
        sum_t log p(c_t | context, c_<t) over the continuation tokens, and whether each c_t is the argmax.
        Tokenised as lm_eval's Hugging Face model does: trailing spaces of the context move to the continuation,
        `context + continuation` is encoded whole and the continuation is what follows the context's own tokens
        (so a BPE merge across the boundary is scored as the model would see the text). An empty context is
        conditioned on `<|endoftext|>`, which precedes every story in training. A context longer than the window
        is cut from the left: each scored token sees at most L tokens.
    loglikelihood_rolling(text)
        sum over every token of `<|endoftext|>` + text, in windows of L: the first window predicts tokens 1..L,
        every later one predicts the next L - rolling_overlap tokens with the window filled by the tokens before
        them (so even the last, short window has a full context). rolling_overlap=0 is lm_eval's own convention
        (`get_rolling_token_windows(..., context_len=1)`, every token scored once, the same numbers as the
        `hf` model on a `train.interop.export_hf` export);
        a larger overlap gives every window's first token more context.
    generate_until(context, gen_kwargs)
        greedy (or sampled, if the task asks for do_sample / temperature > 0) with the model's decode cache:
        one prefill, then one token per step, exactly as train/generate/command.py; stops at `<|endoftext|>`, at any
        `until` string (the text is cut before it) or after `max_gen_toks` tokens. The prompt keeps its last
        L - min(max_gen_toks, L/2) tokens so that the prompt and most of the generation fit the trained length.

Batching: scoring windows of every request are sorted by length, right-padded and run `batch_size` at a time; a
causal model's outputs at real positions do not depend on the padding after them (every mixer here is causal, and
the MoE FFN routes tokens one by one without capacity limits). The decode cache has no padding mask, so generation
batches prompts of equal token length and equal generation settings.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from data.tokenizer import eot_id
from model.generate import filter_logits

DEFAULT_BATCH = 16
DEFAULT_GEN_TOKS = 256


def score_windows(n_tokens: int, start: int, window: int, overlap: int = 0) -> list[tuple[int, int, int]]:
    """(input_start, first_target, end) for every window that scores target positions start..n_tokens-1 of a
    token list: the window's input is tokens[input_start:end-1] (at most `window` tokens) and it scores the
    targets first_target..end-1. The first window scores up to `window` targets, later ones up to
    window - overlap; every input is as long as it can be (a full window wherever the text allows)."""
    assert 1 <= start <= n_tokens and 0 <= overlap < window
    spans, first = [], start
    while first < n_tokens:
        end = min(n_tokens, first + (window if first == start else window - overlap))
        spans.append((max(0, end - 1 - window), first, end))
        first = end
    return spans


def _int(value, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"tinystack model: {name}={value!r} must be an integer") from None


@register_model("tinystack")
class TinystackLM(LM):
    """`run`: a run directory (train/rundir/load.py `load_run`), or pass `model` and `tokenizer` directly."""

    def __init__(self, run: str | Path | None = None, model=None, tokenizer=None, device: str = "auto",
                 batch_size: int | str = DEFAULT_BATCH, max_seq_len: int | None = None,
                 max_gen_toks: int = DEFAULT_GEN_TOKS, rolling_overlap: int = 0, adapter: str | None = None,
                 seed: int = 0, progress: bool = False, max_batch_size: int | None = None) -> None:
        super().__init__()
        from train.rundir.load import load_run, pick_device

        if model is None:
            if run is None:
                raise ValueError("tinystack model: pass run=runs/<name> (or model= and tokenizer=)")
            cfg, tokenizer, model = load_run(run, pick_device(device), adapter)
            window = cfg.model.max_seq_len or cfg.data.seq_len
        else:
            if tokenizer is None:
                raise ValueError("tinystack model: model= needs tokenizer= too")
            window = model.cfg.max_seq_len
        self.model, self.tokenizer, self.run = model.eval(), tokenizer, None if run is None else str(run)
        self._device = next(model.parameters()).device
        self.max_length = _int(max_seq_len or window, "max_seq_len")
        if self.max_length < 2:
            raise ValueError(f"tinystack model: max_seq_len={self.max_length}: the model's window is unknown "
                             "(model.max_seq_len is 0); pass max_seq_len=N")
        self.batch_size = DEFAULT_BATCH if batch_size in ("auto", None) or str(batch_size).startswith("auto") \
            else _int(batch_size, "batch_size")  # (max_batch_size, which lm_eval passes along, is not used)
        if self.batch_size < 1:
            raise ValueError(f"tinystack model: batch_size={self.batch_size} must be at least 1")
        self.max_gen_toks = _int(max_gen_toks, "max_gen_toks")
        self.rolling_overlap = _int(rolling_overlap, "rolling_overlap")
        if not 0 <= self.rolling_overlap < self.max_length:
            raise ValueError(f"tinystack model: rolling_overlap={self.rolling_overlap} must be in "
                             f"[0, max_seq_len={self.max_length})")
        self.seed, self.progress = _int(seed, "seed"), progress in (True, "True", "true", "1")
        self.eot = eot_id(tokenizer)

    # ------------------------------------------------------------------ lm_eval plumbing
    @property
    def tokenizer_name(self) -> str:
        from data.tokens import content_hash

        return "tinystack-" + content_hash(self.tokenizer.to_str())

    def get_model_info(self) -> dict:
        cfg = self.model.cfg
        return {"tinystack_run": self.run, "mixers": cfg.layer_mixers(), "n_params": self.model.num_params(),
                "max_seq_len": self.max_length, "rolling_overlap": self.rolling_overlap}

    def encode(self, text: str) -> list[int]:
        """The text's own tokens: no special tokens added (an imported tokenizer's post-processor may add BOS)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context tokens, continuation tokens); see the module docstring. An empty context is [EOT]."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        if not context:
            return [self.eot], self.encode(continuation)
        whole, ctx = self.encode(context + continuation), self.encode(context)
        if whole[:len(ctx)] == ctx and len(whole) > len(ctx):
            return ctx, whole[len(ctx):]
        return ctx, self.encode(continuation)  # the boundary merged into the context: score the pieces apart

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score(self, items: list[tuple[list[int], int]], overlap: int = 0, desc: str = "scoring"
              ) -> list[tuple[float, bool]]:
        """For each (tokens, start): (sum of log p(tokens[t] | tokens[<t]) for t >= start, all argmax). Long
        items are cut into windows (`score_windows`); all windows are batched together, longest first."""
        pieces = []  # (item, input_start, first_target, end)
        for i, (tokens, start) in enumerate(items):
            pieces += [(i, *span) for span in score_windows(len(tokens), start, self.max_length, overlap)]
        pieces.sort(key=lambda p: p[3] - 1 - p[1], reverse=True)
        total = [0.0] * len(items)
        greedy = [True] * len(items)
        batches = range(0, len(pieces), self.batch_size)
        for b in tqdm(batches, desc=desc, disable=not self.progress):
            batch = pieces[b:b + self.batch_size]
            width = batch[0][3] - 1 - batch[0][1]
            inputs = torch.full((len(batch), width), self.eot, dtype=torch.long)
            for row, (i, lo, _, end) in enumerate(batch):
                inputs[row, :end - 1 - lo] = torch.tensor(items[i][0][lo:end - 1])
            logits, _ = self.model(inputs.to(self._device))  # (B, W, V)
            for row, (i, lo, first, end) in enumerate(batch):
                pos = slice(first - 1 - lo, end - 1 - lo)  # outputs that predict targets first..end-1
                logp = F.log_softmax(logits[row, pos].float(), dim=-1)  # (n, V)
                target = torch.tensor(items[i][0][first:end], device=logp.device)
                total[i] += logp.gather(-1, target[:, None]).sum().item()
                greedy[i] = greedy[i] and bool((logp.argmax(-1) == target).all())
        return list(zip(total, greedy))

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        items = []
        for request in requests:
            ctx, cont = self.encode_pair(*request.args[:2])
            if not cont:
                items.append(None)
                continue
            items.append((ctx + cont, len(ctx)))
        scored = iter(self.score([x for x in items if x is not None], desc="loglikelihood"))
        out = [(0.0, True) if x is None else next(scored) for x in items]
        for request, result in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        items = [([self.eot] + self.encode(request.args[0]), 1) for request in requests]
        keep = [i for i, (tokens, _) in enumerate(items) if len(tokens) > 1]
        scored = self.score([items[i] for i in keep], self.rolling_overlap, desc="loglikelihood_rolling")
        out = [0.0] * len(items)
        for i, (value, _) in zip(keep, scored):
            out[i] = value
        for request, result in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, result)
        return out

    # ------------------------------------------------------------------ generation
    def _settings(self, gen_kwargs: dict) -> dict:
        kwargs = dict(gen_kwargs or {})
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_gen = _int(kwargs.pop("max_gen_toks", kwargs.pop("max_new_tokens", self.max_gen_toks)), "max_gen_toks")
        temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
        if not kwargs.pop("do_sample", temperature > 0):
            temperature = 0.0
        top_k, top_p = kwargs.pop("top_k", None), kwargs.pop("top_p", None)
        return {"until": [s for s in until if s], "max_gen_toks": max_gen, "temperature": temperature,
                "top_k": None if top_k is None else int(top_k), "top_p": None if top_p is None else float(top_p)}

    def prompt_tokens(self, context: str, max_gen_toks: int) -> list[int]:
        ids = self.encode(context) or [self.eot]
        keep = self.max_length - min(max_gen_toks, self.max_length // 2)
        return ids[-keep:]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[str, list[int]] = defaultdict(list)
        settings, prompts = [], []
        for i, request in enumerate(requests):
            context, gen_kwargs = request.args[0], request.args[1] if len(request.args) > 1 else {}
            s = self._settings(gen_kwargs)
            settings.append(s)
            prompts.append(self.prompt_tokens(context, s["max_gen_toks"]))
            groups[json.dumps([s, len(prompts[-1])], sort_keys=True)].append(i)
        out = [""] * len(requests)
        chunks = [(idx[b:b + self.batch_size]) for idx in groups.values()
                  for b in range(0, len(idx), self.batch_size)]
        generator = torch.Generator(device=self._device).manual_seed(self.seed)
        for chunk in tqdm(chunks, desc="generate_until", disable=not self.progress):
            texts = self._generate([prompts[i] for i in chunk], settings[chunk[0]], generator)
            for i, text in zip(chunk, texts):
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out

    @torch.no_grad()
    def _generate(self, prompts: list[list[int]], s: dict, generator: torch.Generator) -> list[str]:
        """Equal-length prompts -> their continuations, cut before the first stop string."""
        n, until = len(prompts), s["until"]
        ids = torch.tensor(prompts, dtype=torch.long, device=self._device)
        state = self.model.init_state(n)
        logits, state = self.model(ids, state)
        new: list[list[int]] = [[] for _ in range(n)]
        texts, done = [""] * n, [False] * n
        for _ in range(s["max_gen_toks"]):
            last = logits[:, -1, :]
            if s["temperature"] == 0:
                nxt = last.argmax(-1)
            else:
                probs = filter_logits(last, s["temperature"], s["top_k"], s["top_p"]).softmax(-1)
                nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
            for row, token in enumerate(nxt.tolist()):
                if done[row]:
                    continue
                if token == self.eot:
                    done[row] = True
                    continue
                new[row].append(token)
                texts[row] = self.decode(new[row])
                done[row] = any(stop in texts[row] for stop in until)
            if all(done):
                break
            logits, state = self.model(nxt[:, None], state)
        return [cut(text, until) for text in texts]


def cut(text: str, until: Iterable[str]) -> str:
    """`text` up to the earliest occurrence of any stop string."""
    ends = [text.find(stop) for stop in until if stop in text]
    return text[:min(ends)] if ends else text
