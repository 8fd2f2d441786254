"""Verifiable rewards for TinyStories-Instruct-style prompts (GRPO, Shao et al. 2024; RLVR in Tulu 3).

A reward is ``fn(prompt_info, completion, **params) -> float in [0, 1]``, 1 being good, where ``prompt_info``
is ``data.instruct.parse_header(prompt)``: {"words": [...], "features": [...], "sentence": str, ...}, and
``params`` are its keyword arguments (with defaults), settable from YAML.

    word_inclusion  share of the required words used (data/words.py; inflections: simple inflections count)
    dialogue        Dialogue requested: 1 if the completion has quoted speech, else 0; not requested: 1
    length          1 for min_words <= n <= max_words, n / min_words below, 1 - (n - max) / max above (>= 0)
    repetition      1 - share of repeated word n-grams (n = 3): distinct n-grams / all n-grams
    finished        1 if the text ends a sentence: . ! ? optionally followed by closing quotes
    length_penalty  Kimi k1.5's length penalty (a `GroupReward`, below)

A `GroupReward` reads the group of completions sampled for one prompt: ``fn(prompt_info, completions, others,
**params) -> [float in [0, 1]]``, ``others[i]`` being completion i's weighted mean of the spec's other
(per-completion) rewards. Kimi k1.5 (arXiv:2501.12599, §2.3.3): with word counts len_i and the group's min_len,
max_len, lambda_i = 0.5 - (len_i - min_len) / (max_len - min_len) (0 when all lengths are equal) is added to a
correct completion's reward, min(0, lambda_i) to an incorrect one's; here correct means others_i >= threshold,
and the term is reported shifted by +1/2 into [0, 1] like every reward: a shift common to the group cancels in
the group-relative advantage. A completion scored alone (make_pairs, align.evaluate) is a group of one: 1/2.

The combination is a weighted mean, ``sum_k w_k r_k / sum_k w_k``, so it stays in [0, 1]. A spec
(``align.rewards``, ``--rewards``) maps each reward's name to its weight, or to its weight and parameters:

    rewards: {word_inclusion: 1.0, length: {weight: 0.5, min_words: 40, max_words: 120}, repetition: {n: 2}}

(``weight`` defaults to 1). ``reward_terms`` checks a spec once (unknown reward or parameter, negative weight)
and binds the parameters: ``{name: (weight, fn)}``.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Mapping
from functools import partial

from data.instruct import has_dialogue
from data.words import word_inclusion as _included
from inputs.errors import InputError
from inputs.yaml import parse_yaml
from model.component import Registry

Reward = Callable[..., float]

_WORDS = re.compile(r"[a-z]+(?:['’][a-z]+)*")
_FINISHED = re.compile(r"[.!?][\"”’']*$")


def word_inclusion(prompt_info: dict, completion: str, inflections: bool = True) -> float:
    """Share of the required words that occur in the completion as whole words (1 if none required)."""
    return _included(prompt_info.get("words") or [], completion, inflections)


def dialogue(prompt_info: dict, completion: str) -> float:
    """1 unless Dialogue is requested and the completion has no quoted speech."""
    requested = any(f.strip().lower() == "dialogue" for f in prompt_info.get("features") or [])
    return float(has_dialogue(completion)) if requested else 1.0


def length(prompt_info: dict, completion: str, min_words: int = 80, max_words: int = 300) -> float:
    """1 inside [min_words, max_words] (whitespace words), linear falloff to 0 at 0 words and 2 * max_words.

    The default band covers roughly the 5th to 95th percentile of TinyStories story lengths (104-331)."""
    if not 0 < min_words <= max_words:
        raise ValueError(f"length reward needs 0 < min_words <= max_words, got {min_words}, {max_words}")
    n = len(completion.split())
    if n < min_words:
        return n / min_words
    if n > max_words:
        return max(0.0, 1.0 - (n - max_words) / max_words)
    return 1.0


def repetition(prompt_info: dict, completion: str, n: int = 3) -> float:
    """Distinct word n-grams / all word n-grams (lowercased); 1 when the text has fewer than n words."""
    if n < 1:
        raise ValueError(f"repetition reward needs n >= 1, got {n}")
    tokens = _WORDS.findall(completion.lower())
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def finished(prompt_info: dict, completion: str) -> float:
    """1 if the completion ends with a finished sentence (. ! ? then optional closing quotes), else 0."""
    return float(_FINISHED.search(completion.strip()) is not None)


class GroupReward:
    """A reward of each completion among the group sampled for its prompt (see the module docstring)."""

    def __init__(self, fn: Callable[..., list[float]]):
        self.fn, self.__name__ = fn, getattr(fn, "__name__", repr(fn))

    def __call__(self, prompt_info: dict, completions: list[str], others: list[float]) -> list[float]:
        return self.fn(prompt_info, completions, others)


def length_penalty(prompt_info: dict, completions: list[str], others: list[float],
                   threshold: float = 0.75) -> list[float]:
    """Kimi k1.5's length penalty, + 1/2: shorter completions of a group gain, longer correct ones lose less than
    longer incorrect ones (which never gain). `threshold`: the other rewards' mean that counts as correct."""
    if not 0 <= threshold <= 1:
        raise ValueError(f"length_penalty needs 0 <= threshold <= 1, got {threshold}")
    n = [len(c.split()) for c in completions]
    lo, hi = min(n), max(n)
    lam = [0.5 - (k - lo) / (hi - lo) if hi > lo else 0.0 for k in n]
    return [0.5 + (x if other >= threshold else min(0.0, x)) for x, other in zip(lam, others)]


def _arity(fn) -> int:
    """Positional arguments before a reward's parameters: (prompt_info, completion[s][, others])."""
    return 3 if isinstance(fn, GroupReward) else 2


def _trial(fn) -> list:
    """A reward's values on an empty prompt: one empty completion, or a group of two with others 1 and 0."""
    return fn({}, ["", "a b"], [1.0, 0.0]) if isinstance(fn, GroupReward) else [fn({}, "")]


def reward_contract(fn) -> None:
    """The contract of a REWARDS entry: `fn(prompt_info, completion, **params)` (or a GroupReward of
    `fn(prompt_info, completions, others, **params)`), every parameter after those with a default (a spec sets them
    by name), giving floats in [0, 1] (tried on an empty prompt). TypeError saying what is wrong."""
    if not callable(fn):
        raise TypeError(f"{fn!r} is not a function")
    params = list(inspect.signature(fn.fn if isinstance(fn, GroupReward) else fn).parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    k = _arity(fn)
    if len(params) < k or any(p.kind not in positional for p in params[:k]):
        raise TypeError(f"{fn.__name__} must take ({', '.join(p for p in ('prompt_info', 'completion', 'others')[:k])}"
                        ", **params)")
    undefaulted = [p.name for p in params[k:] if p.default is inspect.Parameter.empty]
    if undefaulted:
        raise TypeError(f"{fn.__name__}: parameters {undefaulted} need defaults (a reward spec sets them by name)")
    values = _trial(fn)
    if not all(not isinstance(v, bool) and isinstance(v, (int, float)) and 0 <= v <= 1 for v in values):
        raise TypeError(f"{fn.__name__} on an empty prompt gave {values!r}, not a float in [0, 1] per completion")


REWARDS = Registry("reward", reward_contract, {
    "word_inclusion": word_inclusion,
    "dialogue": dialogue,
    "length": length,
    "repetition": repetition,
    "finished": finished,
    "length_penalty": GroupReward(length_penalty),
})


def reward_params(fn: Reward) -> dict[str, object]:
    """A reward's settable parameters and their defaults (its keyword arguments after the first two)."""
    params = list(inspect.signature(fn.fn if isinstance(fn, GroupReward) else fn).parameters.values())[_arity(fn):]
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _term(name: str, value, fn: Reward) -> tuple[float, Reward]:
    """One spec entry (a weight, or {weight, **params}) -> (weight, fn with its parameters bound)."""
    params = dict(value) if isinstance(value, Mapping) else {"weight": value}
    weight = params.pop("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < math.inf:
        raise ValueError(f"{name}: the weight must be a number >= 0 (and finite), got {weight!r}")
    valid = reward_params(fn)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"{name}: unknown parameter(s) {unknown}; valid: {['weight', *valid]}")
    for key, value in params.items():  # the default's type (an int where a float goes is fine)
        default = valid[key]
        accepted = (int, float) if type(default) is float else type(default)
        if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, accepted) or (
                isinstance(value, float) and not math.isfinite(value)):
            raise ValueError(f"{name}.{key}: expected {type(default).__name__} like {default!r}, got {value!r}")
    if params:
        bound = GroupReward(partial(fn.fn, **params)) if isinstance(fn, GroupReward) else partial(fn, **params)
    else:
        bound = fn
    _trial(bound)  # a bad combination (length's min_words > max_words) fails now, not at the first sample
    return float(weight), bound


def reward_terms(spec, rewards: Mapping[str, Reward] = REWARDS) -> dict[str, tuple[float, Reward]]:
    """A reward spec -> {name: (weight, reward with its parameters bound)}; ValueError with one line if
    `spec` names an unknown reward or parameter, or has a negative or zero total weight."""
    if not isinstance(spec, Mapping) or not spec:
        raise ValueError(f"reward weights must be a mapping such as {{word_inclusion: 1.0}}, got {spec!r}")
    unknown = sorted(set(spec) - set(rewards))
    if unknown:
        raise ValueError(f"unknown reward(s) {unknown}; valid: {sorted(rewards)} (YAML needs a space after "
                         "each colon: {word_inclusion: 1.0})")
    terms = {name: _term(name, value, rewards[name]) for name, value in spec.items()}
    if sum(weight for weight, _ in terms.values()) <= 0:
        raise ValueError(f"reward weights must have a positive sum, got {dict(spec)}")
    return terms


def group_rewards(
    prompt_info: dict, completions: list[str], spec, rewards: Mapping[str, Reward] = REWARDS
) -> list[tuple[float, dict[str, float]]]:
    """Weighted mean of the rewards in `spec` for each completion of one prompt's group -> [(total in [0, 1],
    {name: reward})]; group rewards see the weighted mean of the per-completion ones (`others`)."""
    terms = reward_terms(spec, rewards)
    single = {name: [float(fn(prompt_info, c)) for c in completions]
              for name, (_, fn) in terms.items() if not isinstance(fn, GroupReward)}
    weight = sum(terms[name][0] for name in single)
    others = [sum(terms[name][0] * single[name][i] for name in single) / weight if weight else 0.0
              for i in range(len(completions))]
    per = {name: single[name] if name in single else [float(v) for v in fn(prompt_info, completions, others)]
           for name, (_, fn) in terms.items()}
    total = sum(w for w, _ in terms.values())
    return [(sum(w * per[name][i] for name, (w, _) in terms.items()) / total, {name: per[name][i] for name in per})
            for i in range(len(completions))]


def combined_reward(
    prompt_info: dict, completion: str, spec, rewards: Mapping[str, Reward] = REWARDS
) -> tuple[float, dict[str, float]]:
    """Weighted mean of the rewards in `spec` -> (total in [0, 1], {name: reward}): a group of one."""
    return group_rewards(prompt_info, [completion], spec, rewards)[0]


def read_rewards(text: str):
    """A reward spec given as YAML text on a command line (`--rewards`); ValueError with one line if not YAML."""
    try:
        return parse_yaml(text, "--rewards")  # inputs/yaml.py: strict and bounded
    except InputError as err:
        raise ValueError(f"--rewards is not valid YAML ({err.what}); e.g. "
                         "--rewards '{word_inclusion: 1.0, length: 0.5}'") from None
