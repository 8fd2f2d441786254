"""`python -m align.evaluate base=runs/demo sft=runs/lora dpo=runs/dpo grpo=runs/grpo [--n 100] [--out FILE.md]`

Mean reward on held-out prompts for several runs side by side, as a Markdown table. Each run is
`name=path[,adapter=DIR]`: a plain run, a LoRA run directory (adapter on its base, train/rundir/adapter.py) or a base
run plus an adapter. Runs given under the same name (e.g. two seeds, `dpo=runs/dpo dpo=runs/dpo-1`) form one
row showing mean ± std over them.

    reward     = mean over prompts of the combined reward  sum_k w_k r_k / sum_k w_k   (align/rewards.py)
    r_k column = mean over prompts of reward k (each a share in [0, 1]: words used, ...)
    all words  = share of prompts whose completion uses every required word

The prompts are the first `--n` instruction examples derived from the validation stories (never trained on),
the same for every run; completions are greedy (or `--samples` per prompt at --temperature, with --seed), at most
`--max_new_tokens` tokens, decoded in batches of equal-length prompts with the KV cache (finetune/evaluate.py).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from align.config import AlignConfig
from align.rewards import combined_reward, read_rewards, reward_terms, word_inclusion
from data.instruct import InstructExample, parse_header
from finetune.evaluate import generate_stories
from train.config import ConfigError
from train.estimate.memory import check_decoding
from train.generate.flags import check_flags
from train.rundir.paths import FileKind, check_output, json_object, starts_with

TITLE = "# Rewards on held-out prompts"
REPORT = FileKind(f"a reward table (Markdown starting with {TITLE!r})", starts_with(TITLE.encode()))
DETAILS = FileKind("a reward table's details (JSON with weights and results)",
                   json_object(lambda d: {"weights", "results"} <= set(d)))


def parse_run(spec: str) -> tuple[str, str, str | None]:
    """'name=path[,adapter=DIR]' -> (name, path, adapter or None)."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise ValueError(f"run {spec!r}: expected name=path[,adapter=DIR], e.g. sft=runs/lora")
    path, *options = rest.split(",")
    adapter = None
    for option in options:
        key, _, value = option.partition("=")
        if key != "adapter" or not value:
            raise ValueError(f"run {spec!r}: unknown option {option!r}; the only option is adapter=DIR")
        adapter = value
    return name, path, adapter


def reward_scores(model, tokenizer, examples: list[InstructExample], weights: dict[str, float],
                  max_new_tokens: int = 160, batch_size: int = 32, temperature: float = 0.0, seed: int = 0,
                  samples: int = 1) -> dict:
    """Generate `samples` completions per prompt (1 when greedy) and score them -> {"reward", each reward,
    "all_words", ...}, means over every completion."""
    start = time.perf_counter()
    repeated, stories = sample_completions(model, tokenizer, examples, max_new_tokens, batch_size, temperature,
                                           seed, samples)
    return {**score_completions(repeated, stories, weights, len(repeated) // len(examples)),
            "seconds": time.perf_counter() - start}


def sample_completions(model, tokenizer, examples: list[InstructExample], max_new_tokens: int, batch_size: int,
                       temperature: float, seed: int, samples: int) -> tuple[list[InstructExample], list[str]]:
    """(each example repeated `samples` times in a row (once when greedy), its completion); model left as found."""
    was_training = model.training
    model.eval()
    samples = 1 if temperature == 0 else samples
    examples = [ex for ex in examples for _ in range(samples)]  # copies in a row decode in one batch
    stories = generate_stories(model, tokenizer, [ex.prompt for ex in examples], max_new_tokens, batch_size,
                               temperature, seed)
    model.train(was_training)
    return examples, stories


def score_completions(examples: list[InstructExample], stories: list[str], weights: dict[str, float],
                      samples: int = 1) -> dict:
    """Rewards of the completions of `sample_completions` (`samples` per prompt) -> {"reward", each reward,
    "all_words", ...}, means over every completion."""
    scored = [combined_reward(parse_header(ex.prompt), story, weights) for ex, story in zip(examples, stories)]
    out = {"reward": statistics.fmean(total for total, _ in scored)}
    out.update({name: statistics.fmean(per[name] for _, per in scored) for name in weights})
    words = [word_inclusion(parse_header(ex.prompt), story) for ex, story in zip(examples, stories)]
    out["all_words"] = sum(w == 1.0 for w in words) / len(words)
    return {**out, "prompts": len(examples) // samples, "samples": samples,
            "example": {"prompt": examples[0].prompt, "completion": stories[0]}}


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def markdown_table(results: dict[str, list[dict]], spec: dict) -> str:
    """One row per name (mean ± std over its runs)."""
    weights = {name: weight for name, (weight, _) in reward_terms(spec).items()}
    keys = ["reward", *weights, "all_words"]
    head = ["model", "runs", "mean reward", *(f"{k} (w={weights[k]:g})" for k in weights), "all words", "prompts"]
    lines = ["| " + " | ".join(head) + " |", "| --- | ---: |" + " ---: |" * (len(head) - 2)]
    for name, runs in results.items():
        cells = [_cell([r[k] for r in runs]) for k in keys]
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + f" | {runs[0]['prompts']} |")
    return "\n".join(lines)


def write_report(path: str | Path, results: dict[str, list[dict]], weights: dict[str, float], note: str) -> str:
    """Write the table (Markdown, with one example per model) to `path` and the details to path.json."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = markdown_table(results, weights)
    first = next(iter(results.values()))[0]["example"]
    examples = "\n\n".join(f"**{name}:**\n\n> " + runs[0]["example"]["completion"].replace("\n", "\n> ")
                           for name, runs in results.items())
    path.write_text(f"{TITLE}\n\n{note}\n\n{table}\n\n## Example\n\n```\n{first['prompt']}"
                    f"```\n\n{examples}\n")
    path.with_suffix(".json").write_text(json.dumps({"weights": weights, "results": results}, indent=2) + "\n")
    return table


def check_arguments(args) -> None:
    """The numeric and path arguments, before any model is loaded (one line each): --out FILE.md and FILE.json are
    written only where `check_output` allows (never inside a run folder; --force replaces only earlier tables)."""
    check_flags(args, "n", "max_new_tokens", "samples", "batch_size", "temperature", "seed", "prompt_seed")
    if args.out:
        if Path(args.out).suffix == ".json":
            raise ConfigError(f"--out {args.out}: the table is Markdown and its details go to the .json beside it; "
                              f"give a .md name, e.g. {Path(args.out).with_suffix('.md')}")
        inputs = [path for spec in args.runs for path in parse_run(spec)[1:] if path]
        check_output(args.out, REPORT, args.force, inputs)
        check_output(Path(args.out).with_suffix(".json"), DETAILS, args.force, inputs)


def main(argv: list[str] | None = None) -> None:
    from data.sft import instruct_examples
    from model.lora import merge_lora
    from train.cli import ArgumentParser, user_errors_exit_2
    from train.config import load_config
    from train.rundir.load import load_run, pick_device

    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="name=path[,adapter=DIR]; a repeated name averages its runs")
    parser.add_argument("--n", type=int, default=100, help="held-out prompts")
    parser.add_argument("--max_new_tokens", type=int, default=160)
    parser.add_argument("--rewards", default=None, help="reward weights as YAML (default: align.rewards' default)")
    parser.add_argument("--data", default=None, help="corpus (default: the first run's data.path)")
    parser.add_argument("--prompt_seed", type=int, default=None, help="seed deriving the held-out headers "
                        "(default: the first run's train.seed)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; else sampled with --seed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=1, help="completions per prompt when sampling")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--out", default=None, help="write the table here (Markdown) and the details to .json")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--force", action="store_true", help="replace --out (and its .json) if they are reward tables")
    args = parser.parse_args(argv)
    with user_errors_exit_2(ValueError):
        check_arguments(args)
        weights = read_rewards(args.rewards) if args.rewards else AlignConfig().rewards
        reward_terms(weights)  # a bad --rewards stops before any model is loaded
        specs = [parse_run(spec) for spec in args.runs]
        cfg = load_config(Path(specs[0][1]) / "config.yaml", run_file=True)
        seed = cfg.train.seed if args.prompt_seed is None else args.prompt_seed
        heldout = instruct_examples(args.data or cfg.data.path, seed, cfg.data.val_fraction)["validation"][: args.n]
        device, results = pick_device(args.device), {}
        for name, path, adapter in specs:
            run_cfg, tokenizer, model = load_run(path, device, adapter)
            prompts = [ex.prompt for ex in heldout]
            check_decoding(run_cfg, device, tokenizer, prompts, args.batch_size, args.max_new_tokens)
            merge_lora(model)  # same function, faster decoding
            scores = reward_scores(model, tokenizer, heldout, weights, args.max_new_tokens, args.batch_size,
                                   args.temperature, args.seed, args.samples)
            results.setdefault(name, []).append({"run": path, "adapter": adapter, **scores})
            print(f"{name} ({path}): reward {scores['reward']:.3f}  ({scores['seconds']:.0f}s)", file=sys.stderr)
        decoding = "greedy" if args.temperature == 0 else (f"{args.samples} sampled completion(s) per prompt at "
                                                           f"temperature {args.temperature}, seed {args.seed}")
        note = (f"{len(heldout)} prompts from the validation stories; {decoding} decoding, at most "
                f"{args.max_new_tokens} new tokens; reward weights {weights}.")
        print(write_report(args.out, results, weights, note) if args.out else markdown_table(results, weights))
        if args.out:
            print(f"wrote {args.out} and {Path(args.out).with_suffix('.json')}")


if __name__ == "__main__":
    main()
