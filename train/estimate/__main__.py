"""`python -m train.estimate --config FILE`: memory per device before a run (train/estimate/breakdown.py)."""

from train.estimate.breakdown import main

if __name__ == "__main__":
    main()
