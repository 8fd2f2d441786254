"""`tinystack <command> [arguments]`: one entry point for the whole stack; `tinystack <command> --help` shows the
command's own help. Each command is the module `python -m <module>` runs, with the same arguments and exit codes
(tinystack/commands.py)."""

from __future__ import annotations

import runpy
import sys

from tinystack.commands import COMMANDS, resolve


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_line}" for name, (_, help_line) in COMMANDS.items()]
    return "\n".join(["usage: tinystack <command> [arguments]   (tinystack <command> --help for its options)", "",
                      "commands:", *lines])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(usage(), file=sys.stderr)
        sys.exit(2)
    if argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; choose one of: {', '.join(COMMANDS)} (tinystack --help)",
              file=sys.stderr)
        sys.exit(2)
    module, args = resolve(command, args)
    sys.argv = [f"tinystack {command}", *args]  # what the module's argument parser reads and names itself by
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
