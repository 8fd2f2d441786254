"""`python -m align.ablate --config configs/ablations/align.yaml`: run an alignment sweep (align/ablate/sweep.py)."""

from align.ablate.sweep import main

if __name__ == "__main__":
    main()
