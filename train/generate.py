"""`python -m train.generate --run runs/<name> --prompt "Once upon a time"`: print sampled stories.

Options: --num_samples N, --max_new_tokens N, --temperature T (0 = greedy), --top_k K, --top_p P,
--seed S, --device auto|cpu|cuda, --adapter DIR (a LoRA adapter saved by fine-tuning).
"""

from __future__ import annotations

import argparse

from inputs.files import check_text
from train.cli import user_errors_exit_2
from train.rundir.load import load_run, pick_device
from train.sampling import sample_stories


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run directory (runs/<name>)")
    parser.add_argument("--prompt", default="Once upon a time")
    parser.add_argument("--num_samples", type=int, default=1)
    parser.add_argument("--max_new_tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top_k", type=int, default=50)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--adapter", default=None, help="LoRA adapter directory")
    args = parser.parse_args(argv)
    with user_errors_exit_2():
        check_text(args.prompt, "--prompt")  # an undecodable byte of the argument arrives as a lone surrogate
        _, tokenizer, model = load_run(args.run, pick_device(args.device), args.adapter)
    for i, story in enumerate(sample_stories(model, tokenizer, args.prompt, args.num_samples, args.max_new_tokens,
                                             args.temperature, args.top_k, args.top_p, args.seed)):
        print(("\n---\n" if i else "") + story)


if __name__ == "__main__":
    main()
