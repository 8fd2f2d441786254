"""`python -m train.generate --run runs/<name> --prompt ...`: print sampled stories (train/generate/command.py)."""

from train.generate.command import main

if __name__ == "__main__":
    main()
