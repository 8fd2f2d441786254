"""Docs of the `tinystories_next` task, built from a local TinyStories copy when the task loads.

For each chosen held-out story with at least 3 sentences: a cut k in [2, n-1] (seeded, where sentence k+1 has
balanced quotes), the context is
sentences 1..k, the answer sentence k+1, and `num_choices - 1` distractors are sentences of *other* stories whose
word count is within a factor 1.5 of the answer's where the pool allows (so length alone rarely gives it away;
acc_norm also divides by byte length). The answer's place among the choices is seeded too. Everything comes from
one `random.Random(seed)`, and the stories are read in file order, so the same data and metadata give the same docs.

Only the validation split is read (files named valid*/val*/test* in a directory, see data/corpus.py; a hub id's
`validation` split; or a single file): those stories are never trained on. The data is metadata `data_dir`, a
data.path value resolved as training resolves it (data/sources.py); without it, `tinystories-sample` (the sample
shipped in data/sample/, or $TINYSTORIES_DIR when set).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

# a sentence ends at . ! ? (optionally followed by a closing quote) before whitespace and a capital or an
# opening quote: `"Can I play?" asked Sue.` stays one sentence
_BOUNDARY = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"”’']))\s+(?=[\"“‘A-Z])")
DEFAULTS = {"num_docs": 500, "seed": 1234, "num_choices": 4}


def sentences(story: str) -> list[str]:
    return [" ".join(s.split()) for s in _BOUNDARY.split(story.strip()) if s.strip()]


def balanced(sentence: str) -> bool:
    """No quote left open or closed (a cut inside a quotation, `"See, we fixed it!` of `..it! We..."`), which
    would give an answer away; needs 3 words or more."""
    return (sentence.count('"') % 2 == 0 and sentence.count("“") == sentence.count("”")
            and len(sentence.split()) >= 3)


def data_dir(metadata: dict) -> str:
    from data.sources import SAMPLE

    return str(metadata.get("data_dir") or SAMPLE)


def held_out_stories(path: str) -> list[str]:
    from data.corpus import DataError, open_corpus
    from data.sources import resolve_path

    path = resolve_path(path)
    local = Path(path).expanduser()
    if local.is_file():  # a single file: all of it is taken as held out
        from data.readers import READERS

        if local.suffix not in READERS:
            raise DataError(f"tinystories_next: {path} is not a .txt, .jsonl or .parquet file")
        return [s for batch, _ in READERS[local.suffix](local).batches() for s in batch]
    corpus = open_corpus(path)
    if not corpus.has_validation:
        raise DataError(f"tinystories_next: {path} has no validation file (valid*.txt, val*.jsonl, ...); the task "
                        "uses held-out stories only")
    return [s for batch, _ in corpus.batches("validation") for s in batch]


def build_docs(stories: list[str], num_docs: int = 500, seed: int = 1234, num_choices: int = 4) -> list[dict]:
    """Up to `num_docs` docs {context, choices, label, story}; deterministic in (stories, arguments)."""
    if num_choices < 2:
        raise ValueError(f"tinystories_next: num_choices={num_choices} must be at least 2")
    rng = random.Random(seed)
    split = [sentences(s) for s in stories]
    pool = [(i, s) for i, sents in enumerate(split) for s in sents if balanced(s)]
    order = [i for i, sents in enumerate(split) if any(balanced(s) for s in sents[2:])]
    rng.shuffle(order)
    docs = []
    for i in order[:num_docs]:
        sents = split[i]
        k = rng.choice([k for k in range(2, len(sents)) if balanced(sents[k])])
        answer = sents[k]
        distractors = _distractors(rng, pool, i, sents, answer, num_choices - 1)
        if len(distractors) < num_choices - 1:
            continue  # too few other sentences (a tiny corpus)
        label = rng.randrange(num_choices)
        choices = distractors[:label] + [answer] + distractors[label:]
        docs.append({"context": " ".join(sents[:k]), "choices": choices, "label": label, "story": i})
    return docs


def _distractors(rng: random.Random, pool: list[tuple[int, str]], story: int, own: list[str], answer: str, n: int
                 ) -> list[str]:
    """n sentences of other stories, none equal to a sentence of this story (case-insensitive)."""
    words, seen, picked = len(answer.split()), {s.lower() for s in own}, []
    for attempt in range(50 * n):
        j, sentence = pool[rng.randrange(len(pool))]
        similar = attempt >= 25 * n or words / 1.5 <= len(sentence.split()) <= words * 1.5
        if j != story and similar and sentence.lower() not in seen:
            picked.append(sentence)
            seen.add(sentence.lower())
            if len(picked) == n:
                break
    return picked


def load_docs(**metadata):
    """lm_eval `custom_dataset`: {"test": Dataset} of the docs; `metadata` is the task's plus the TaskManager's."""
    import datasets

    args = {key: int(metadata.get(key) or value) for key, value in DEFAULTS.items()}
    docs = build_docs(held_out_stories(data_dir(metadata)), **args)
    if not docs:
        from data.corpus import DataError

        raise DataError(f"tinystories_next: no story in {data_dir(metadata)} has 3 sentences or more "
                        "(and other stories for distractors)")
    return {"test": datasets.Dataset.from_list(docs)}
