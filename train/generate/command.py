"""`python -m train.generate --run runs/<name> --prompt "Once upon a time"`: print sampled stories.

Options: --num_samples N, --max_new_tokens N, --temperature T (0 = greedy), --top_k K (0 = all), --top_p P in (0, 1],
--seed S, --device auto|cpu|cuda|cuda:N|mps, --adapter DIR (a LoRA adapter saved by fine-tuning).

Every flag is checked before the run is loaded (train/generate/flags.py), and the run's sizes plus the decoding of
num_samples x (prompt + max_new_tokens) tokens against this machine's memory (train/estimate/memory.py)
before sampling; a
model with a context limit caps max_new_tokens with a note (model/generate.py `context_room`).
"""

from __future__ import annotations

from inputs.files import check_text
from model.generate import context_room
from train.cli import ArgumentParser, user_errors_exit_2
from train.config import ConfigError
from train.estimate.memory import check_memory
from train.generate.flags import check_flags, note_capped
from train.generate.sampling import sample_stories
from train.rundir.load import load_run, pick_device


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
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
        check_flags(args, "num_samples", "max_new_tokens", "temperature", "top_k", "top_p", "seed")
        device = pick_device(args.device)
        cfg, tokenizer, model = load_run(args.run, device, args.adapter)
        prompt_tokens = len(tokenizer.encode(args.prompt).ids)
        if prompt_tokens == 0:
            raise ConfigError(f"--prompt {args.prompt!r} encodes to no tokens; give some text to continue")
        room = context_room(model, prompt_tokens)
        if room == 0:
            raise ConfigError(f"--prompt has {prompt_tokens} tokens, all of the model's context; shorten it")
        note_capped(args.max_new_tokens, room, prompt_tokens)
        tokens = prompt_tokens + (args.max_new_tokens if room is None else min(args.max_new_tokens, room))
        check_memory(cfg, device, f"--num_samples={args.num_samples} --max_new_tokens={args.max_new_tokens}",
                     batch=args.num_samples, tokens=tokens)
        for i, story in enumerate(sample_stories(model, tokenizer, args.prompt, args.num_samples,
                                                 args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                                                 args.seed)):
            print(("\n---\n" if i else "") + story, flush=True)

