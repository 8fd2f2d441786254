"""`python -m train.ablate --config configs/ablations/<name>.yaml`: run a sweep (train/ablate/sweep.py)."""

from train.ablate.sweep import main

if __name__ == "__main__":
    main()
