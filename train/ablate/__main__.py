"""`python -m train.ablate --config configs/ablations/<name>.yaml`: run a sweep (train/ablate/sweep.py), or a
scaling ladder when the file has `ladder:` (train/ablate/ladder.py)."""

from train.ablate.ladder import run_ladder
from train.ablate.sweep import main

if __name__ == "__main__":
    main(ladder=run_ladder)
