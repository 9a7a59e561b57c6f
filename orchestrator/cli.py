"""The `wasmgroup` command line.

Ctrl-C at any moment prints one line, `wasmgroup run: interrupted`, and exits 130, as shells
report SIGINT: while the program runs `run_program` turns it into the program's outcome; before
that (the imports of wasmtime take a while, hence imported late) and after, it is caught here.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_BROKEN_PIPE = 128 + 13  # SIGPIPE


def _inspect(args: argparse.Namespace) -> int:
    """Every good file in full, one line on stderr for each bad one; status 2 if any was bad."""
    from wasmgroup.orchestrator.inspect import describe, format_text
    from wasmgroup.shared.errors import WasmgroupError
    from wasmgroup.shared.wasm import read_module_file

    summaries = []
    status = 0
    for path in args.files:
        try:
            summary = describe(read_module_file(path), path)
        except (OSError, WasmgroupError) as err:
            text = f"{path}: {err.strerror}" if isinstance(err, OSError) else str(err)
            print(f"wasmgroup inspect: {text}", file=sys.stderr)
            status = EXIT_USAGE
            continue
        if args.json:
            summaries.append(summary)
        else:
            print(("\n" if summaries else "") + format_text(summary), flush=True)
            summaries.append(summary)
    if args.json:
        json.dump(summaries, sys.stdout, indent=2)
        print()
    return status


def _run(args: argparse.Namespace) -> int:
    from wasmgroup.orchestrator.program import EXIT_RUNTIME_ERROR, run_program
    from wasmgroup.shared.errors import WasmgroupError

    env: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"wasmgroup run: --env expects KEY=VALUE, got {item!r}", file=sys.stderr)
            return EXIT_USAGE
        env[key] = value
    program_args = args.args[1:] if args.args[:1] == ["--"] else args.args
    # Unless given, run_program's own default (DEFAULT_MAX_MODULE_SIZE in cache.py).
    limits = {} if args.max_module_size is None else {"max_module_size": args.max_module_size}
    try:
        result = run_program(args.program, program_args, env=env, dirs=args.dir,
                             lib_paths=args.lib_path, cwd=args.cwd, capture_output=False,
                             verify_groups=args.verify_groups, trace=args.trace,
                             pool_size=args.pool, **limits)
    except (OSError, WasmgroupError) as err:
        text = f"{err.filename}: {err.strerror}" if isinstance(err, OSError) else str(err)
        print(f"wasmgroup run: {text}", file=sys.stderr)
        return EXIT_RUNTIME_ERROR
    # The outcome is decided and every worker gone: a Ctrl-C from here on changes nothing.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if result.error:
        print(f"wasmgroup run: {result.error}", file=sys.stderr)
    return result.exit_code


def _byte_size(text: str) -> int:
    """A size in bytes, with an optional K/M/G suffix (powers of 1024)."""
    scale = 1
    if text[-1:].upper() in _SCALES:
        scale, text = _SCALES[text[-1].upper()], text[:-1]
    try:
        value = int(text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the size must be positive")
    return value


_SCALES = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wasmgroup",
        description="Run dynamically linked, multi-threaded WebAssembly programs.")
    commands = parser.add_subparsers(dest="command", required=True)

    inspect = commands.add_parser(
        "inspect", help="show what modules are and what they need (dylink.0, imports, exports)")
    inspect.add_argument("files", nargs="+", metavar="FILE")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.set_defaults(handler=_inspect)

    run = commands.add_parser(
        "run", help="run a program (exit status: the program's; 134 trap; 125 cannot run)",
        description="Run a WebAssembly program. The guest sees only the directories given "
                    "with --dir; libraries are looked up inside that view.")
    run.add_argument("--dir", action="append", default=[], metavar="HOST::GUEST",
                     help="map host directory HOST at guest path GUEST (plain HOST: same name)")
    run.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                     help="set a guest environment variable (LD_LIBRARY_PATH is honoured)")
    run.add_argument("--lib-path", action="append", default=[], metavar="DIR",
                     help="host directory searched for libraries after the guest's own")
    run.add_argument("--cwd", default="/", metavar="GUEST_DIR",
                     help="the guest's working directory (default /)")
    run.add_argument("--verify-groups", action="store_true",
                     help="after every link operation, check that all threads' instance groups "
                          "agree on modules, table slots and GOT values; stop at the first "
                          "difference")
    run.add_argument("--trace", type=Path, metavar="FILE",
                     help="write one JSON line per link operation with per-phase timings")
    run.add_argument("--pool", type=int, default=None, metavar="N",
                     help="idle worker processes kept ready for new threads (default: one more "
                          "than the number of cores, at most 8)")
    run.add_argument("--max-module-size", type=_byte_size, default=None,
                     metavar="BYTES",
                     help="refuse module files larger than this, unread (suffix K, M or G; "
                          "default 256M)")
    run.add_argument("program", metavar="PROG.wasm")
    run.add_argument("args", nargs=argparse.REMAINDER, metavar="-- ARGS",
                     help="arguments for the program")
    run.set_defaults(handler=_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    command = "wasmgroup"
    try:
        args = build_parser().parse_args(argv)
        command = f"wasmgroup {args.command}"
        code: int = args.handler(args)
        sys.stdout.flush()
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # one line, however often it is pressed
        print(f"{command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader left (`| head -1`): the rest is unwanted. Point stdout at /dev/null so
        # that the interpreter's last flush does not fail again, and exit as a process that
        # SIGPIPE ended would be reported.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return code


if __name__ == "__main__":
    sys.exit(main())
