"""The `wasmgroup` command's entry point: for a run, the fork server first, then the CLI.

A one-thread `wasmgroup run` waits on two imports: the coordinator's (the command line, the
linker, the worker pool) and its first worker's (wasmtime and the host functions), which the
fork server (orchestrator/forkserver.py) does once for every worker. Forked as soon as the
modules both sides need are imported (once, for both: `forkserver.COMMON_MODULES`), before the
command line, the server does its imports while this process does its own and links the
program: on two cores, side by side, a start is the longer of the two rather than their sum,
at no more CPU. (Forked before those common modules, both processes import them: measured
interleaved on 2 cores, 15-20 ms more CPU, which a busy machine cannot hide.) `python -m
wasmgroup.orchestrator.cli` forks it in `cli._run`, after the command line's own imports.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

EXIT_INTERRUPTED = 130  # 128 + SIGINT
COMMANDS = ("run", "batch", "inspect", "trace", "stress", "cache", "completion")
VERBOSITY_FLAGS = ("-v", "-vv", "-vvv", "--verbose", "-q", "--quiet")


def command_of(argv: Sequence[str]) -> tuple[str, list[str]] | None:
    """The command `argv` (the arguments after `wasmgroup`) asks for, and its own arguments;
    None for no command at all, help or --version. As wasmtime: anything that is not a
    command is a program (or run's options) to run; verbosity flags before the command
    belong to it (`wasmgroup -v inspect X`)."""
    args = list(argv)
    if not args or args[0] in ("-h", "--help", "--version"):
        return None
    lead = 0
    while lead < len(args) - 1 and args[lead] in VERBOSITY_FLAGS:
        lead += 1
    if lead and args[lead] in COMMANDS:
        args = [args[lead], *args[:lead], *args[lead + 1:]]
    if args[0] in COMMANDS:
        return args[0], args[1:]
    return "run", args


def entry() -> None:
    found = command_of(sys.argv[1:])
    try:
        if found is not None and found[0] == "run":
            from wasmgroup.orchestrator import forkserver

            forkserver.fork_early()
        from wasmgroup.orchestrator import cli
    except KeyboardInterrupt:
        # Ctrl-C before the CLI's own handling is in place: as cli.main reports it (the
        # fork server, if forked, leaves when this process is gone).
        sys.stderr.write(f"wasmgroup{' ' + found[0] if found else ''}: interrupted\n")
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)
    cli.entry()


__all__ = ["COMMANDS", "VERBOSITY_FLAGS", "command_of", "entry"]
