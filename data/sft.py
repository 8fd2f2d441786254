"""Instruction data for supervised fine-tuning: prompt-masked, padded batches with a resumable order.

Examples come from `roneneldan/TinyStoriesInstruct` (or a local copy: records whose fields include a
``Story:`` line) parsed with `from_instruct_record`, or are derived deterministically from any plain
TinyStories corpus with `derive_examples` (data/instruct.py). Held-out examples (validation loss and the
prompts of `finetune/evaluate.py`) come from the validation stories only.

One example, tokenized as generation will see it (prompt and story encoded separately):

    full    = prompt_ids (P) + story_ids + [EOT]             truncated to seq_len + 1 tokens
    inputs  = full[:-1]                                       (T,)  T <= seq_len
    targets = full[1:] with targets[:P - 1] = -100            loss on story tokens (and the EOT) only

so the loss is the completion loss  -sum_{t >= P} log p(x_t | x_<t) / #story tokens  (the prompt is
context, never a target). A batch is right-padded to its longest example with EOT inputs and -100
targets, so padding is never scored and, the attention being causal, never changes a real position.
The training order is data/blocks.py's ResumableSampler: a pure function of (seed, epoch, position).

Derived examples are fitted to the context (`derive_fitted`): a story longer than seq_len - P tokens is cut
to its longest prefix of whole sentences that fits, and its header is derived from that prefix, so every
required word is in the scored tokens (plain truncation at seq_len=128 would drop ~half of them, teaching
the model to ignore the words) and the story still ends with a finished sentence and EOT.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import torch
from torch.utils.data import Dataset

from data.corpus import DataError, load_stories, split_stories
from data.datamodule import SeededDataModule
from data.instruct import InstructExample, derive_examples, from_instruct_record, make_instruction, sentences
from data.tokenizer import eot_id

IGNORE = -100
INSTRUCT_HUB_ID = "roneneldan/TinyStoriesInstruct"
_STORY_FIELD = re.compile(r"^Story:", re.MULTILINE)


def is_instruct_records(texts: list[str]) -> bool:
    """True when most of the first records carry a ``Story:`` field line (TinyStoriesInstruct format)."""
    head = texts[:20]
    return bool(head) and sum(_STORY_FIELD.search(t) is not None for t in head) * 2 > len(head)


def _records(texts: list[str]) -> list[InstructExample]:
    if not is_instruct_records(texts):  # a line-per-row source (the hub's .txt files): regroup by EOT
        texts = split_stories("\n".join(texts))
    out = []
    for text in texts:
        try:
            out.append(from_instruct_record(text))
        except ValueError:  # a record without a story (truncated file): nothing to learn from
            continue
    return out


def _sentence_ends(story: str) -> list[int]:
    """Character offsets where the story's sentences (data.instruct.sentences) end."""
    ends, pos = [], 0
    for sentence in sentences(story):
        start = story.find(sentence, pos)
        if start < 0:
            break
        pos = start + len(sentence)
        ends.append(pos)
    return ends


def derive_fitted(stories: list[str], seed: int, tokenizer, seq_len: int) -> list[InstructExample]:
    """derive_examples, except that a story cut by seq_len is first shortened to its longest prefix of whole
    sentences that fits after its prompt (P + S <= seq_len), and the header is derived from that prefix with
    the same rng seed; so the required words and the random sentence always lie in the scored story tokens.
    (Cut at seq_len=128, only ~50% of the required words of TinyStories would be inside the target.)"""
    seeds = [i for i, story in enumerate(stories) if story.strip()]  # derive_examples' rng index per example
    examples = derive_examples(stories, seed)
    todo = list(range(len(examples)))
    for _ in range(4):  # a shorter story may draw a longer header: re-check the ones just shortened
        prompts = tokenizer.encode_batch([examples[j].prompt for j in todo])
        encoded = tokenizer.encode_batch([examples[j].story for j in todo])
        shortened = []
        for j, prompt, story in zip(todo, prompts, encoded):
            budget = seq_len - len(prompt.ids)  # story tokens that fit (its EOT is the extra target)
            if len(story.ids) <= budget or budget <= 0:
                continue
            limit = story.offsets[budget - 1][1]  # characters covered by the first `budget` tokens
            end = max((e for e in _sentence_ends(examples[j].story) if e <= limit), default=0)
            if end:  # else even the first sentence is too long: plain truncation
                examples[j] = make_instruction(examples[j].story[:end], random.Random(f"{seed}:{seeds[j]}"))
                shortened.append(j)
        todo = shortened
        if not todo:
            break
    return examples


def instruct_examples(path: str, seed: int, val_fraction: float = 0.05, max_stories: int = 0, tokenizer=None,
                      seq_len: int = 0) -> dict[str, list[InstructExample]]:
    """-> {"train": [...], "validation": [...]}: TinyStoriesInstruct records, or examples derived from stories
    (story i of a split gets its own rng seeded by (seed, i), so the result is deterministic; with a tokenizer
    and seq_len, long stories are shortened to fit: `derive_fitted`)."""
    stories = load_stories(path, val_fraction, max_stories)
    named = INSTRUCT_HUB_ID.split("/")[1].lower() in Path(path).name.lower()
    if named or is_instruct_records(stories["train"]):
        splits = {name: _records(texts) for name, texts in stories.items()}
    elif tokenizer is not None and seq_len:
        splits = {name: derive_fitted(texts, seed, tokenizer, seq_len) for name, texts in stories.items()}
    else:
        splits = {name: derive_examples(texts, seed) for name, texts in stories.items()}
    for name, examples in splits.items():
        if not examples:
            raise DataError(f"no instruction examples in the {name} split of {path}")
    return splits


def tokenize_examples(tokenizer, examples: list[InstructExample], seq_len: int) -> list[tuple[list[int], int]]:
    """-> [(full ids truncated to seq_len + 1, prompt length P)], dropping examples whose prompt leaves no
    story token inside seq_len (nothing would be scored)."""
    eot = eot_id(tokenizer)
    prompts = tokenizer.encode_batch([ex.prompt for ex in examples])
    stories = tokenizer.encode_batch([ex.story for ex in examples])
    out = []
    for prompt, story in zip(prompts, stories):
        if len(prompt.ids) > seq_len:
            continue
        out.append(((prompt.ids + story.ids + [eot])[: seq_len + 1], len(prompt.ids)))
    return out


def example_tensors(ids: list[int], n_prompt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One example -> inputs (T,), targets (T,) with the prompt's targets at -100."""
    full = torch.tensor(ids, dtype=torch.long)
    inputs, targets = full[:-1], full[1:].clone()
    targets[: n_prompt - 1] = IGNORE  # targets[t] is token t + 1: a prompt token while t + 1 < P
    return inputs, targets


def pad_batch(items: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest example: inputs with `pad_id` (EOT), targets with -100 -> (B, T_max) each."""
    length = max(len(x) for x, _ in items)
    inputs = torch.full((len(items), length), pad_id, dtype=torch.long)
    targets = torch.full((len(items), length), IGNORE, dtype=torch.long)
    for row, (x, y) in enumerate(items):
        inputs[row, : len(x)], targets[row, : len(y)] = x, y
    return inputs, targets


class SFTExamples(Dataset):
    def __init__(self, tokenized: list[tuple[list[int], int]]):
        self.tokenized = tokenized

    def __len__(self) -> int:
        return len(self.tokenized)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return example_tensors(*self.tokenized[i])


class Collate:
    """Picklable collate_fn (DataLoader workers) that pads with EOT."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items):
        return pad_batch(items, self.pad_id)


class SFTDataModule(SeededDataModule):
    """Prompt-masked instruction examples, padded with EOT: data/datamodule.py's seeded, resumable,
    rank-sharded order and held-out subset (the completion loss)."""

    def __init__(self, tokenizer, examples: dict[str, list[InstructExample]], seq_len: int, batch_size: int,
                 grad_accum: int, max_steps: int, seed: int, val_batches: int, num_workers: int = 0):
        super().__init__(batch_size, grad_accum, max_steps, seed, val_batches, num_workers)
        self.train_set = SFTExamples(tokenize_examples(tokenizer, examples["train"], seq_len))
        self.val_set = SFTExamples(tokenize_examples(tokenizer, examples["validation"], seq_len))
        if len(self.train_set) < batch_size or len(self.val_set) < 1:
            raise DataError(f"too few instruction examples fit data.seq_len={seq_len}: {len(self.train_set)} "
                            f"training and {len(self.val_set)} validation (batch_size={batch_size}); use more "
                            "stories or a larger data.seq_len")
        self.collate = Collate(eot_id(tokenizer))
