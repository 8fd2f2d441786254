"""One alignment run of a sweep, trained and scored once: `train_aligned` writes `ablate.json` beside the run.

Scores, on the same held-out prompts for every run (the first `prompts` instruction examples derived from the
validation stories with the SFT run's seed), `samples` completions each, sampled at `temperature` with a fixed
`seed` and at most `max_new_tokens` tokens (align/evaluate.py `sample_completions`):

    reward        mean over completions of the combined reward  sum_k w_k r_k / sum_k w_k   (the sweep's `rewards`,
                  the same weights for every run, whatever each method trained on)
    r_k           mean of each reward term, all_words: share of completions using every required word
    kl            mean over completions y ~ pi of  sum_{t in y} [log pi(y_t | x, y_<t) - log ref(y_t | x, y_<t)]:
                  the per-sequence log-ratio to the reference (the SFT run), whose mean estimates
                  KL(pi || ref) per completion at temperature 1 (completion tokens and their closing EOT)
    kl_per_token  the same sum over all completions / their tokens
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from align.ablate.stages import STAGES
from align.config import AlignTree
from align.evaluate import sample_completions, score_completions
from align.losses.logprobs import token_logprobs
from data.instruct import InstructExample
from data.sft import IGNORE, example_tensors, instruct_examples, pad_batch, tokenize_examples
from data.tokenizer import eot_id
from model.lora import merge_lora
from train.config import load_config
from train.errors import TrainingHalted
from train.quiet import quiet
from train.rundir.claim import is_finished
from train.rundir.load import load_run

WHOLE = 1 << 30  # no truncation when scoring: the policy decoded these sequences, so they fit the model


def train_aligned(stage: str, scoring: dict, values: dict, threads: int) -> dict:
    """Train one run of `stage` (its config as plain values: a worker process receives it pickled, and an alignment
    tree's class is built at import) to the end or resume it, score it (`score_run(run_dir, **scoring)`) and write
    `ablate.json` last, atomically: {stage, wall_s, halted, threads, scores}; returns it."""
    cfg = load_config(None, values, tree=AlignTree)
    quiet()
    if threads:
        torch.set_num_threads(threads)
    run_dir = Path(cfg.train.out_dir) / cfg.train.name
    t0, halted = time.perf_counter(), None
    try:
        if not is_finished(run_dir):  # finished but unscored: score it
            STAGES[stage].train(cfg)
    except TrainingHalted as err:  # a diverged run is a result too: NaN in the table
        halted = str(err)
        print(f"warning: {cfg.train.name} halted: {err}", file=sys.stderr)
    scores = None if halted else score_run(run_dir, **scoring)
    info = {"stage": stage, "wall_s": time.perf_counter() - t0, "halted": halted,
            "threads": torch.get_num_threads(), "scores": scores}
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "ablate.json.tmp"
    tmp.write_text(json.dumps(info))
    tmp.replace(run_dir / "ablate.json")
    return info


@torch.no_grad()
def score_run(run_dir: Path, reference: str, data: str, prompt_seed: int, val_fraction: float, prompts: int,
              samples: int, temperature: float, max_new_tokens: int, seed: int, rewards: dict,
              batch_size: int = 32) -> dict:
    """The run's rewards and KL to `reference` (see the module docstring) -> {reward, each term, all_words, kl,
    kl_per_token, prompts, samples, seconds, example}."""
    start = time.perf_counter()
    heldout = instruct_examples(data, prompt_seed, val_fraction)["validation"][:prompts]
    _, tokenizer, policy = load_run(run_dir)
    merge_lora(policy)  # the same function, no adapter matmuls while sampling
    examples, stories = sample_completions(policy, tokenizer, heldout, max_new_tokens, batch_size, temperature, seed,
                                           samples)
    out = score_completions(examples, stories, rewards, len(examples) // len(heldout))
    _, _, ref = load_run(reference)
    merge_lora(ref)
    rows = tokenize_examples(tokenizer, [InstructExample(ex.prompt, story) for ex, story in zip(examples, stories)],
                             WHOLE)
    ratio, tokens = [], 0.0
    for i in range(0, len(rows), batch_size):
        inputs, targets = pad_batch([example_tensors(*row) for row in rows[i:i + batch_size]], eot_id(tokenizer))
        mask = (targets != IGNORE).float()  # (B, T) completion tokens
        logp = token_logprobs(policy(inputs)[0], targets) - token_logprobs(ref(inputs)[0], targets)  # (B, T)
        ratio += (logp * mask).sum(-1).tolist()  # (B,) per completion
        tokens += float(mask.sum())
    return {**out, "kl": sum(ratio) / len(ratio), "kl_per_token": sum(ratio) / tokens,
            "seconds": time.perf_counter() - start}
