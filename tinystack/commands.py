"""The `tinystack` command table: subcommand -> (the module whose `python -m` entry point it runs, one line of help).

The modules are only named here, not imported, so `tinystack --help` starts in milliseconds; the chosen one
is run as `python -m <module>` would run it (tinystack/__main__.py). A command may have a variant selected by a
flag that is removed before the module sees the arguments (`tinystack export --gguf ...`).
"""

from __future__ import annotations

COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("train", "pretrain a model from a config (--config FILE [--section.key=value ...])"),
    "finetune": ("finetune", "LoRA or full fine-tuning of a pretrained run on story instructions"),
    "dpo": ("align.dpo", "Direct Preference Optimization from a fine-tuned run"),
    "grpo": ("align.grpo", "Group Relative Policy Optimization from a fine-tuned run"),
    "ppo": ("align.ppo", "Proximal Policy Optimization with a learned value head from a fine-tuned run"),
    "pairs": ("align.make_pairs", "make preference pairs (JSONL) for DPO from a run"),
    "align-eval": ("align.evaluate", "reward table of several runs on held-out prompts"),
    "merge": ("finetune.merge", "merge a LoRA adapter into its base: a plain run directory"),
    "ablate": ("train.ablate", "run an ablation sweep: train every variant and seed, write tables and plots"),
    "align-ablate": ("align.ablate", "an alignment sweep: methods x seeds from one SFT run, rewards with CIs"),
    "generate": ("train.generate", "sample text from a run"),
    "export": ("train.interop.export_hf", "write a Hugging Face Llama folder (--gguf: a llama.cpp GGUF file)"),
    "import": ("train.interop.import_hf", "a Hugging Face Llama folder as a run directory"),
    "evaluate": ("train.evals.evaluate", "lm-evaluation-harness tasks on a run"),
    "estimate": ("train.estimate", "memory estimate of a config before it runs"),
    "check": ("train.check", "is this run's loss normal? the run against its recipe's seed band (RUN)"),
}

VARIANTS: dict[str, dict[str, str]] = {  # command -> {flag: the module run instead}
    "export": {"--gguf": "train.interop.export_gguf"},
}


def resolve(command: str, args: list[str]) -> tuple[str, list[str]]:
    """(subcommand, its arguments) -> (module to run, the arguments it gets); KeyError for an unknown command."""
    module = COMMANDS[command][0]
    for flag, variant in VARIANTS.get(command, {}).items():
        if flag in args:
            module, args = variant, [a for a in args if a != flag]
    return module, args
