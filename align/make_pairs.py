"""`python -m align.make_pairs --run runs/<sft> --kind offline|on_policy --out pairs.jsonl`: DPO preference pairs.

Written in TRL's standard preference format, one JSON object per line (`DPOTrainer` reads it as is):

    {"prompt": "Words: ...\\nStory:\\n", "chosen": "<completion>", "rejected": "<completion>"}

offline    from the instruction data alone (data/sft.py): chosen = the story the header was derived from, which
           meets it by construction; rejected (kept only if it scores below the chosen one) is
             --rejected other    the lowest-scoring of `candidates` other stories drawn at random (typically one
                                 whose words do not match the header), or
             --rejected swapped  the same story with the header's words replaced by those of another header: a
                                 minimal pair, told apart only by reading the header, so the DPO gradient falls
                                 on the required words (the shared prefix cancels exactly).
on_policy  K completions per prompt sampled from the SFT model (K copies of the prompt decode as one batch with
           the KV cache), scored by the combined reward (align/rewards.py); chosen = best, rejected = worst of
           the non-empty ones (an empty completion is no side of a pair), prompts whose K scores tie are skipped: a
           tie states no preference. On-policy pairs keep DPO's data where the policy puts its mass (Tajwar et al.
           2024, arXiv:2404.14367; Xu et al. 2024, arXiv:2404.10719).

--unpaired writes KTO's unpaired format instead (TRL's unpaired preference format, `KTOTrainer`): each pair's chosen
completion as a desirable row, its rejected one as an undesirable row,

    {"prompt": "Words: ...\\nStory:\\n", "completion": "<completion>", "label": true}

`--out` is checked before any pair is made (train/rundir/paths.py `check_output`): never an input or inside a run
folder; an existing file is replaced only with --force, and only if it is a pairs file (`PAIRS`: empty, or a first
line with prompt/chosen/rejected or prompt/completion/label).

`load_pairs` reads such a JSONL file, or any Hugging Face dataset with those columns (`datasets.load_dataset`: a hub
id, or a local folder of .jsonl/.parquet files), in the format of its first row.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

from align.config import AlignConfig
from align.rewards import combined_reward, group_rewards, read_rewards, reward_terms
from data.corpus import DataError
from data.instruct import InstructExample, parse_header
from data.words import word_pattern
from inputs.errors import InputError
from inputs.files import regular_file
from inputs.json import json_lines
from train.estimate.memory import check_decoding
from train.generate.flags import check_flags
from train.rundir.paths import FileKind, check_output

COLUMNS = ("prompt", "chosen", "rejected")
UNPAIRED = ("prompt", "completion", "label")  # label: true = desirable


def is_pairs_file(path: Path) -> bool:
    """Whether `path` is what `save_pairs` writes: empty, or a first line that is a JSON object with COLUMNS or
    UNPAIRED."""
    with path.open("rb") as f:
        first = f.readline(1 << 20)
    try:
        row = json.loads(first) if first.strip() else None
    except ValueError:
        return False
    return not first.strip() and path.stat().st_size == 0 or isinstance(row, dict) and (
        set(COLUMNS) <= set(row) or set(UNPAIRED) <= set(row))


PAIRS = FileKind("a JSONL file of preference pairs (prompt/chosen/rejected or prompt/completion/label)", is_pairs_file)
REJECTED = ("other", "swapped")
DECODE_BATCH = 64  # on-policy completions decoded at once


def score(prompt: str, completion: str, weights: dict[str, float]) -> float:
    """Combined reward of a completion for the header in `prompt`."""
    return combined_reward(parse_header(prompt), completion, weights)[0]


def swap_words(story: str, words: list[str], replacements: list[str]) -> str:
    """`story` with every form of words[k] that word_inclusion would match replaced by replacements[k]."""
    for word, new in zip(words, replacements):
        story = re.sub(word_pattern(word), lambda m, new=new: new.capitalize() if m.group()[0].isupper() else new,
                       story, flags=re.IGNORECASE)
    return story


def offline_pairs(examples: list[InstructExample], weights: dict[str, float], seed: int = 0,
                  candidates: int = 4, rejected: str = "other") -> list[dict]:
    """chosen = each example's own story; rejected = the worst of `candidates` random other stories ("other"),
    or the same story with its header words swapped for another header's ("swapped": a minimal pair that only
    the header tells apart)."""
    if rejected not in REJECTED:
        raise ValueError(f"unknown rejected kind {rejected!r}; valid: {list(REJECTED)}")
    rng = random.Random(seed)
    pairs = []
    for i, ex in enumerate(examples):
        draws = [j for j in rng.sample(range(len(examples)), min(candidates + 1, len(examples))) if j != i]
        if rejected == "swapped":
            others = [swap_words(ex.story, ex.words, examples[j].words) for j in draws[:1]]
        else:
            others = [examples[j].story for j in draws[:candidates]]
        if not others:
            continue
        worst = min(others, key=lambda story: score(ex.prompt, story, weights))
        if score(ex.prompt, worst, weights) < score(ex.prompt, ex.story, weights):
            pairs.append({"prompt": ex.prompt, "chosen": ex.story, "rejected": worst})
    return pairs


def on_policy_pairs(model, tokenizer, prompts: list[str], weights: dict[str, float], k: int = 4,
                    max_new_tokens: int = 160, temperature: float = 1.0, seed: int = 0,
                    batch_size: int = DECODE_BATCH) -> list[dict]:
    """Best vs worst of k sampled completions per prompt; ties skipped."""
    from finetune.evaluate import generate_stories

    if k < 2:
        raise ValueError(f"on-policy pairs need k >= 2 samples per prompt, got {k}")
    repeated = [p for p in prompts for _ in range(k)]  # k copies in a row: equal lengths, one decode batch
    samples = generate_stories(model, tokenizer, repeated, max_new_tokens, batch_size, temperature, seed)
    pairs = []
    for i, prompt in enumerate(prompts):
        group = samples[i * k:(i + 1) * k]
        scores = [total for total, _ in group_rewards(parse_header(prompt), group, weights)]  # the k as one group
        kept = [j for j in range(k) if group[j].strip()]  # an empty completion is no side of a pair (load_pairs)
        if len(kept) < 2:
            continue
        best, worst = max(kept, key=scores.__getitem__), min(kept, key=scores.__getitem__)
        if scores[best] > scores[worst]:
            pairs.append({"prompt": prompt, "chosen": group[best], "rejected": group[worst]})
    return pairs


def unpair(pairs: list[dict]) -> list[dict]:
    """prompt/chosen/rejected pairs -> prompt/completion/label rows: chosen desirable, rejected undesirable."""
    return [{"prompt": p["prompt"], "completion": p[key], "label": key == "chosen"}
            for p in pairs for key in ("chosen", "rejected")]


def save_pairs(pairs: list[dict], path: str | Path, unpaired: bool = False) -> Path:
    """Pairs as JSONL at `path`: prompt/chosen/rejected, or with `unpaired` KTO's prompt/completion/label rows.
    NUL characters are dropped from the text: a sampled byte-level token can decode to one, and no text reader
    takes it (inputs/files.py), so the file would be refused by `load_pairs`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows, columns = (unpair(pairs), UNPAIRED) if unpaired else (pairs, COLUMNS)
    with path.open("w") as f:
        for row in rows:
            clean = {c: row[c].replace("\0", "") if isinstance(row[c], str) else row[c] for c in columns}
            f.write(json.dumps(clean, ensure_ascii=False) + "\n")
    return path


def load_pairs(source: str | Path, split: str = "train") -> list[dict]:
    """prompt/chosen/rejected (or, when the first row has a label, prompt/completion/label) rows from a JSONL file,
    or a Hugging Face dataset (hub id or local folder)."""
    path = Path(source)
    if path.suffix in (".jsonl", ".json") and path.exists():  # a FIFO or folder too: regular_file refuses it
        rows = []
        with regular_file(path, "pairs file").open("rb") as f:
            try:
                for _, _, row in json_lines(f, path):  # inputs/json.py: strict UTF-8, finite, valid strings, bounded
                    if row is not None:
                        rows.append(row if isinstance(row, dict) else {"<not an object>": row})
            except InputError as err:
                raise DataError(f"{err.file}: not a JSON object ({err.what}); one pair per line: "
                                '{"prompt": ..., "chosen": ..., "rejected": ...}') from None
    else:
        from datasets import load_dataset

        try:
            rows = list(load_dataset(str(source), split=split))
        except Exception as err:  # no network, unknown id, missing split: the fix is the same
            raise DataError(f"could not load preference pairs from {source!r} ({type(err).__name__}: {err}); "
                            "give a JSONL file written by python -m align.make_pairs, or a dataset with "
                            "prompt/chosen/rejected columns") from None
    if not rows:
        raise DataError(f"{source}: no preference pairs")
    columns = UNPAIRED if "label" in rows[0] else COLUMNS
    texts = [c for c in columns if c != "label"]
    bad = next((i for i, row in enumerate(rows) if not all(isinstance(row.get(c), str) for c in texts)
                or columns is UNPAIRED and not isinstance(row.get("label"), bool)), None)
    if bad is not None:
        kind = "prompt/completion and a true/false label (TRL's unpaired" if columns is UNPAIRED else \
            "prompt/chosen/rejected (TRL's standard"
        raise DataError(f"{source}: row {bad} lacks string fields {kind} preference format); got keys "
                        f"{sorted(rows[bad])}")
    empty = next((i for i, row in enumerate(rows) if not all(row[c].strip() for c in texts)), None)
    if empty is not None:  # an empty prompt would train on one token; an empty completion on none
        raise DataError(f"{source}: row {empty} has an empty {next(c for c in texts if not rows[empty][c].strip())}"
                        "; every row needs a prompt and non-empty completions")
    return [{c: row[c] for c in columns} for row in rows]


def main(argv: list[str] | None = None) -> None:
    from data.sft import instruct_examples
    from model.lora import merge_lora
    from train.cli import ArgumentParser, user_errors_exit_2
    from train.config import load_config
    from train.rundir.load import load_run

    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="the SFT run (plain or LoRA run directory)")
    parser.add_argument("--kind", choices=["offline", "on_policy"], default="offline")
    parser.add_argument("--out", required=True, help="JSONL file to write")
    parser.add_argument("--n", type=int, default=2000, help="prompts (training stories) to use")
    parser.add_argument("--k", type=int, default=4, help="on_policy: samples per prompt")
    parser.add_argument("--max_new_tokens", type=int, default=160)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--rejected", choices=REJECTED, default="other", help="offline: how rejected is made")
    parser.add_argument("--candidates", type=int, default=4, help="offline: random stories tried as rejected")
    parser.add_argument("--rewards", default=None, help="reward weights as YAML, e.g. '{word_inclusion: 2}'")
    parser.add_argument("--data", default=None, help="corpus (default: the run's data.path)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="replace --out if it is an existing pairs file")
    parser.add_argument("--unpaired", action="store_true", help="write KTO's prompt/completion/label rows")
    args = parser.parse_args(argv)
    try:
        check_flags(args, "n", "k", "max_new_tokens", "candidates", "temperature", "seed")
        weights = read_rewards(args.rewards) if args.rewards else AlignConfig().rewards
        reward_terms(weights)
        check_output(args.out, PAIRS, args.force, inputs=(args.run,))
    except ValueError as err:
        print(f"error: {err if str(err).startswith('--') else f'--rewards: {err}'}", file=sys.stderr)
        sys.exit(2)
    with user_errors_exit_2():
        cfg = load_config(Path(args.run) / "config.yaml", run_file=True)
        examples = instruct_examples(args.data or cfg.data.path, cfg.train.seed, cfg.data.val_fraction)["train"]
        examples = examples[: args.n]
        if args.kind == "offline":
            pairs = offline_pairs(examples, weights, args.seed, args.candidates, args.rejected)
        else:
            run_cfg, tokenizer, model = load_run(args.run)
            check_decoding(run_cfg, "cpu", tokenizer, [ex.prompt for ex in examples], DECODE_BATCH, args.max_new_tokens)
            merge_lora(model)  # same function, no adapter matmuls while sampling
            pairs = on_policy_pairs(model, tokenizer, [ex.prompt for ex in examples], weights, args.k,
                                    args.max_new_tokens, args.temperature, args.seed)
        out = save_pairs(pairs, args.out, args.unpaired)
        print(f"{len(pairs)} {args.kind} pairs from {len(examples)} prompts -> {out}")


if __name__ == "__main__":
    main()
