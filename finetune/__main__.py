"""`python -m finetune --config configs/finetune/lora.yaml [--finetune.base runs/<name>] [--section.key=value ...]`:
fine-tune a pretrained run on story instructions (LoRA or full), then evaluate base vs fine-tuned (eval.md)."""

from finetune.config import finetune_config
from train.cli import run_cli


def main(cfg) -> None:
    from finetune.sft import finetune  # Lightning loads only once the config and the base run are valid

    finetune(cfg)


if __name__ == "__main__":
    run_cli(main, usage=__doc__, load=finetune_config)
