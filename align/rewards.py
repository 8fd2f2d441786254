"""Verifiable rewards for TinyStories-Instruct-style prompts (GRPO, Shao et al. 2024; RLVR in Tulu 3).

A reward is ``fn(prompt_info, completion) -> float in [0, 1]``, 1 being good, where ``prompt_info`` is
``data.instruct.parse_header(prompt)``: {"words": [...], "features": [...], "sentence": str, ...}.

    word_inclusion  share of the required words used (whole word, case-insensitive, simple inflections)
    dialogue        Dialogue requested: 1 if the completion has quoted speech, else 0; not requested: 1
    length          1 for min_words <= n <= max_words, n / min_words below, 1 - (n - max) / max above (>= 0)
    repetition      1 - share of repeated word n-grams (n = 3): distinct n-grams / all n-grams
    finished        1 if the text ends a sentence: . ! ? optionally followed by closing quotes

The combination is a weighted mean, ``sum_k w_k r_k / sum_k w_k``, so it stays in [0, 1]. Parameterised
rewards are configured with functools.partial, e.g. ``{**REWARDS, "length": partial(length, max_words=200)}``
passed as ``combined_reward(..., rewards=...)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from data.instruct import has_dialogue

Reward = Callable[[dict, str], float]

_WORDS = re.compile(r"[a-z]+(?:['’][a-z]+)*")
_FINISHED = re.compile(r"[.!?][\"”’']*$")


def _forms(word: str) -> list[str]:
    """The word and its simple inflections: +s, +es, +ed, +d, +ing; e-drop (dance -> dancing);
    y -> ies/ied (carry -> carries). Irregular forms and consonant doubling (run -> running) are not covered."""
    w = word.lower()
    forms = {w, w + "s", w + "es", w + "ed", w + "d", w + "ing"}
    if w.endswith("e"):
        forms.add(w[:-1] + "ing")
    if len(w) > 1 and w.endswith("y") and w[-2] not in "aeiou":
        forms |= {w[:-1] + "ies", w[:-1] + "ied"}
    return sorted(forms)


def word_inclusion(prompt_info: dict, completion: str, inflections: bool = True) -> float:
    """Share of the required words that occur in the completion as whole words (1 if none required)."""
    words = prompt_info.get("words") or []
    if not words:
        return 1.0
    found = 0
    for word in words:
        forms = _forms(word) if inflections else [word.lower()]
        pattern = r"\b(?:" + "|".join(map(re.escape, forms)) + r")\b"
        found += re.search(pattern, completion, flags=re.IGNORECASE) is not None
    return found / len(words)


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
    tokens = _WORDS.findall(completion.lower())
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def finished(prompt_info: dict, completion: str) -> float:
    """1 if the completion ends with a finished sentence (. ! ? then optional closing quotes), else 0."""
    return float(_FINISHED.search(completion.strip()) is not None)


REWARDS: dict[str, Reward] = {
    "word_inclusion": word_inclusion,
    "dialogue": dialogue,
    "length": length,
    "repetition": repetition,
    "finished": finished,
}


def check_weights(weights, rewards: Mapping[str, Reward] = REWARDS) -> None:
    """Raise ValueError unless `weights` maps known reward names to numbers >= 0 with a positive sum."""
    if not isinstance(weights, Mapping) or not weights:
        raise ValueError(f"reward weights must be a mapping such as {{word_inclusion: 1.0}}, got {weights!r}")
    unknown = sorted(set(weights) - set(rewards))
    if unknown:
        raise ValueError(f"unknown reward(s) {unknown}; valid: {sorted(rewards)} (YAML needs a space after "
                         "each colon: {word_inclusion: 1.0})")
    values = list(weights.values())
    if not all(isinstance(w, (int, float)) and w >= 0 for w in values) or sum(values) <= 0:
        raise ValueError(f"reward weights must be numbers >= 0 with a positive sum, got {dict(weights)}")


def combined_reward(
    prompt_info: dict, completion: str, weights: Mapping[str, float], rewards: Mapping[str, Reward] = REWARDS
) -> tuple[float, dict[str, float]]:
    """Weighted mean of the named rewards -> (total in [0, 1], {name: reward})."""
    check_weights(weights, rewards)
    per = {name: float(rewards[name](prompt_info, completion)) for name in weights}
    total = sum(weights[name] * per[name] for name in weights) / sum(weights.values())
    return total, per
