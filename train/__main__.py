"""`python -m train --config configs/pretrain/<name>.yaml [--section.key=value ...]`: pretrain a model."""

from train.cli import run_cli


def main(cfg) -> None:
    from train.run import pretrain  # Lightning and datasets load only once the config is valid

    pretrain(cfg)


if __name__ == "__main__":
    run_cli(main, usage=__doc__)
