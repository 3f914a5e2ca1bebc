"""``python -m dszoo <command> [options]``: the dszoo commands by module name (installed, editable too)."""
from __future__ import annotations

import sys

from .commands import COMMANDS, command


def main(argv: list[str]) -> int:
    """Run the command ``argv[0]`` with the rest; with none or an unknown one, say what to run."""
    if not argv or argv[0] not in COMMANDS:
        listing = "\n".join(f"  {name:<16} {text}" for name, text in COMMANDS.items())
        said = f"unknown command {argv[0]!r}; " if argv and argv[0] not in ("-h", "--help") else ""
        print(f"{'error: ' if said else ''}{said}usage: python -m dszoo COMMAND [options] "
              f"(or dszoo-COMMAND); COMMAND --help for its options\n{listing}",
              file=sys.stderr if said or not argv else sys.stdout)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    return command(argv[0])(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
