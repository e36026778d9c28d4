"""The `mmrs` command (and `python -m pipeline`): the command line of cli.py, whose imports
take about half a second. A command that will start worker processes starts their fork
server first, so that its imports (about 0.7 s, in a process of its own) overlap those."""

from __future__ import annotations

import argparse
import sys

from .build.workers import add_worker_options, start_fork_server, starts_workers


class _Look(argparse.ArgumentParser):
    """A parser that fails quietly: the command's own parser reports the errors."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(message)


def starts_workers_early(argv: list[str]) -> bool:
    """Whether the command in argv will start worker processes (workers.starts_workers),
    from a first look at its command and worker options only."""
    look = _Look(add_help=False)
    look.add_argument("command", nargs="?")
    add_worker_options(look)
    try:
        args, rest = look.parse_known_args(argv)
    except ValueError:
        return False
    return starts_workers(args.command, args) and not {"-h", "--help"} & set(rest)


def main() -> int:
    if starts_workers_early(sys.argv[1:]):
        start_fork_server()
    from .cli import main as command

    return command()


if __name__ == "__main__":
    sys.exit(main())
