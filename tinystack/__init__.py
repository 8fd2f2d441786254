"""tinystack: a modular, minimal LLM training stack. `tinystack <command> ...` runs one of its entry points
(tinystack/commands.py); importing this package loads nothing else."""
