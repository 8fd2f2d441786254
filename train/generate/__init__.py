"""Sampling from a trained run: the command (`python -m train.generate`), the stories sampled from a model and
its tokenizer (sampling, also used by the training loop's samples), and the checks of the sampling flags (flags)."""
