"""`python -m train --config configs/pretrain/<name>.yaml [--section.key=value ...]`: pretrain a model."""

from train.cli import run_cli
from train.run import pretrain

if __name__ == "__main__":
    run_cli(pretrain, usage=__doc__)
