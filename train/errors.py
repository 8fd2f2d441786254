"""The errors a run reports to its user as one line. This module imports nothing, so every entry point
(train/cli.py) and every module that raises them (train/config.py, the optimizers, train/module.py) can name them
without pulling in Lightning or an import cycle.

    ConfigError     a config problem the user can fix: one line, exit code 2
    TrainingHalted  `train.max_bad_steps` non-finite losses in a row (train/module.py): one line, exit code 1
"""


class ConfigError(ValueError):
    """A config problem the user can fix; the CLI prints it as one line and exits with code 2."""


class TrainingHalted(RuntimeError):
    """Raised after too many non-finite losses in a row; the CLI prints it as one line and exits with code 1."""
