"""The `wasmgroup` command line.

Follows wasmtime's habits where they fit: `wasmgroup PROG.wasm ARGS` means `run`, `--env K`
inherits the host's value, `--timeout` ends with status 124 as timeout(1) does; wasmer's
`--mapdir GUEST:HOST` and `--volume HOST:GUEST` are accepted beside `--dir HOST::GUEST`.
Every option is checked before anything starts: a bad value is one line naming the option,
under the subcommand's own usage, status 2.

Ctrl-C at any moment prints one line, `wasmgroup run: interrupted`, and exits 130, as shells
report SIGINT: while the program runs `run_program` turns it into the program's outcome; before
that (the imports of wasmtime take a while, hence imported late, inside `main`) and after, it
is caught here.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from wasmgroup.orchestrator.launch import EXIT_INTERRUPTED, command_of
from wasmgroup.shared.versions import distribution_version

EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 128 + 13  # SIGPIPE
WASMGROUP_VERSION = distribution_version("wasmgroup")
WASMTIME_VERSION = distribution_version("wasmtime")
MAX_POOL = 64  # idle workers: beyond this a typo, not a wish (each is a Python process)
MAX_RUNS = 1_000_000
MAX_THREADS = (1 << 29) - 1  # wasi-threads: thread ids are in [1, 2^29)
MAX_SEED = 2**63 - 1
MAX_DELAY = 1.0  # seconds: a longer perturbation delay is a typo, not a short delay
VERSION_TEXT = f"wasmgroup {WASMGROUP_VERSION} (wasmtime {WASMTIME_VERSION})"
log = logging.getLogger("wasmgroup")


# ---------------------------------------------------------------------- option values
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20,
               "mb": 1000**2, "mib": 1 << 20, "g": 1 << 30, "gb": 1000**3, "gib": 1 << 30}
_DURATION_UNITS = {"": 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_size(text: str, minimum: int = 65536) -> int:
    """`65536`, `64K`, `16MiB`, `1G`: bytes (K/M/G and KiB/MiB/GiB are powers of 1024), at
    least `minimum` (by default one wasm page)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size (bytes, or with K, M, G, KiB, MiB, GiB)")
    size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if size < minimum:
        raise argparse.ArgumentTypeError(
            f"{text!r} is less than one wasm page (64KiB)" if minimum == 65536
            else f"{text!r} is less than {minimum} bytes")
    return size


def parse_module_size(text: str) -> int:
    return parse_size(text, minimum=1)


def parse_duration(text: str) -> float:
    """`10`, `2.5s`, `500ms`, `1m`: seconds, more than zero."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _DURATION_UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (seconds, or with "
                                         "ms, s, m, h)")
    seconds = float(match.group(1)) * _DURATION_UNITS[unit]
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than zero")
    return seconds


def parse_pool(text: str) -> int:
    try:
        size = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= size <= MAX_POOL:
        raise argparse.ArgumentTypeError(f"{size} is not between 0 and {MAX_POOL}")
    return size


def _whole_number(text: str, least: int, most: int) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not least <= number <= most:
        raise argparse.ArgumentTypeError(f"{number} is not between {least} and {most}")
    return number


def parse_max_threads(text: str) -> int:
    return _whole_number(text, 1, MAX_THREADS)


def parse_runs(text: str) -> int:
    return _whole_number(text, 1, MAX_RUNS)


def parse_jobs(text: str) -> int:
    return _whole_number(text, 1, MAX_POOL)


def parse_seed(text: str) -> int:
    return _whole_number(text, 0, MAX_SEED)


def parse_delay(text: str) -> float:
    """A perturbation delay: a duration of at most MAX_DELAY seconds."""
    seconds = parse_duration(text)
    if seconds > MAX_DELAY:
        raise argparse.ArgumentTypeError(f"{text!r} is more than {MAX_DELAY:g} s")
    return seconds


def parse_expect(text: str) -> bytes:
    """The expected output: a file's bytes."""
    try:
        with open(text, "rb") as f:
            return f.read()
    except OSError as err:
        raise argparse.ArgumentTypeError(f"cannot read {text!r}: {err.strerror}") from None


def parse_dir(text: str) -> str:
    """--dir HOST::GUEST (or plain HOST); says what was meant by wasmer's one-colon form."""
    host, sep, guest = text.partition("::")
    if not host or (sep and not guest):
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST::GUEST or HOST")
    if not os.path.isdir(host):
        hint = ""
        if not sep and text.count(":") == 1:
            left, right = text.split(":")
            hint = (f" (wasmgroup maps with two colons: did you mean --dir {left}::{right}, "
                    f"or wasmer's --mapdir {right}:{left}?)")
        raise argparse.ArgumentTypeError(f"{host!r} is not a directory{hint}")
    return text


def _mapping(host: str, guest: str, text: str, form: str) -> str:
    if not host or not guest:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {form}")
    if not os.path.isdir(host):
        raise argparse.ArgumentTypeError(f"{host!r} is not a directory")
    return f"{host}::{guest}"


def parse_mapdir(text: str) -> str:
    """wasmer's --mapdir GUEST:HOST (or GUEST::HOST), as HOST::GUEST."""
    guest, _, host = text.partition("::") if "::" in text else text.partition(":")
    return _mapping(host, guest, text, "GUEST:HOST")


def parse_volume(text: str) -> str:
    """wasmer's --volume HOST:GUEST, as HOST::GUEST."""
    host, _, guest = text.rpartition(":")
    return _mapping(host, guest, text, "HOST:GUEST")


def parse_env(text: str) -> tuple[str, str | None]:
    """KEY=VALUE, or KEY alone: the host's value of KEY (unset in the guest if it has none)."""
    key, sep, value = text.partition("=")
    if not key or "\0" in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE or KEY")
    return key, (value if sep else None)


def parse_lib_path(text: str) -> str:
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a directory")
    return text


def parse_trace(text: str) -> Path:
    """A file to write (its directory must exist), or `-` for stderr."""
    if text != "-":
        parent = Path(text).parent
        if not parent.is_dir():
            raise argparse.ArgumentTypeError(f"cannot write {text!r}: no directory {parent}")
        if Path(text).is_dir():
            raise argparse.ArgumentTypeError(f"cannot write {text!r}: it is a directory")
    return Path(text)


WASMTIME_W = {"timeout": parse_duration, "max-memory-size": parse_size}
ALWAYS_ON = ("threads", "shared-memory", "bulk-memory")  # wasmtime features wasmgroup has on


def parse_wasmtime_option(text: str) -> tuple[str, object]:
    """wasmtime's `-W KEY=VALUE` / `-S KEY=VALUE`: the keys wasmgroup has an equivalent for."""
    key, _, value = text.partition("=")
    if key in ALWAYS_ON and value in ("", "y", "yes", "true"):
        return key, None  # nothing to do: always on here
    if key not in WASMTIME_W:
        raise argparse.ArgumentTypeError(
            f"{text!r}: wasmgroup understands timeout=S, max-memory-size=SIZE and "
            f"{', '.join(ALWAYS_ON)} (always on)")
    return key, WASMTIME_W[key](value)


def parse_output(text: str) -> Path:
    """A file to write (not `-`: these outputs are not for a terminal)."""
    if text == "-":
        raise argparse.ArgumentTypeError("give a file name (- is not supported here)")
    return parse_trace(text)


# ---------------------------------------------------------------------- commands
def _module_summary(path: str) -> dict[str, object]:
    from wasmgroup.orchestrator.inspect import describe
    from wasmgroup.orchestrator.wat import wasm_bytes
    from wasmgroup.shared.wasm import parse_module

    with open(path, "rb") as f:
        data = wasm_bytes(f.read(), path)
    return describe(parse_module(data, source=path), path)


def _inspect(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Every good file in full, one line on stderr for each bad one; status 2 if any was bad."""
    import json

    from wasmgroup.orchestrator.inspect import format_text
    from wasmgroup.shared.errors import WasmgroupError

    summaries: list[dict[str, object]] = []
    status = 0
    for path in args.files:
        try:
            summary = _module_summary(path)
        except (OSError, WasmgroupError) as err:
            text = f"{path}: {err.strerror}" if isinstance(err, OSError) else str(err)
            print(f"wasmgroup inspect: {text}", file=sys.stderr)
            status = EXIT_USAGE
            continue
        if not args.json:
            print(("\n" if summaries else "") + format_text(summary), flush=True)
        summaries.append(summary)
    if args.json:
        json.dump([{**s, "wasmgroup": WASMGROUP_VERSION} for s in summaries], sys.stdout,
                  indent=2)
        print()
    return status


def _guest_view(args: argparse.Namespace, parser: argparse.ArgumentParser
                ) -> tuple[dict[str, str], list[str]]:
    """The guest's environment and directory mappings from --env/--dir/--mapdir/--volume;
    checks (and defaults to /) --cwd."""
    from wasmgroup.orchestrator.locate import GuestFilesystem

    env: dict[str, str] = {}
    for key, value in args.env:
        if value is None:
            value = os.environ.get(key)
            if value is None:
                log.warning("--env %s: not set on the host, not passed to the guest", key)
                continue
        env[key] = value
    dirs = [*args.dir, *args.mapdir, *args.volume]
    if args.cwd is None:
        args.cwd = "/"  # the root, visible or not, as a guest without directories has
    elif not args.cwd.startswith("/"):
        parser.error(f"argument --cwd: {args.cwd!r} is not an absolute guest path")
    else:
        fs = GuestFilesystem.from_specs(dirs, args.lib_path, args.cwd)
        visible = fs.is_directory(fs.absolute(args.cwd))
        fs.close()
        if not visible:
            parser.error(f"argument --cwd: {args.cwd!r} is not a directory the guest can see "
                         "(map one with --dir HOST::GUEST)")
    return env, dirs


def _program_args(args: argparse.Namespace) -> list[str]:
    return list(args.args[1:] if args.args[:1] == ["--"] else args.args)


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from wasmgroup.orchestrator import forkserver
    from wasmgroup.shared.cpus import short_gil_turns

    # This process only serves the program's requests from here on: its threads hand the GIL
    # over after 0.5 ms (shared/cpus.py). (The Python API leaves its caller's setting alone.)
    short_gil_turns()

    # First, while this process has one thread, no descriptor but stdio and has not touched
    # wasmtime: the fork server that the program's workers come from (orchestrator/
    # forkserver.py). This process imports wasmtime only if a module is not in the compile
    # cache.
    forkserver.fork_early()
    from wasmgroup.orchestrator.program import EXIT_RUNTIME_ERROR, run_program
    from wasmgroup.shared.errors import WasmgroupError

    if args.program is None:
        parser.error("the program to run is missing: wasmgroup run [OPTIONS] PROG.wasm [ARGS]")
    env, dirs = _guest_view(args, parser)
    program_args = _program_args(args)
    wasmtime_options = dict(args.wasmtime_options)
    timeout = args.timeout or wasmtime_options.get("timeout")
    max_memory = args.max_memory or wasmtime_options.get("max-memory-size")
    # Unless given, run_program's own default (DEFAULT_MAX_MODULE_SIZE in cache.py).
    limits = {} if args.max_module_size is None else {"max_module_size": args.max_module_size}
    try:
        result = run_program(args.program, program_args, env=env, dirs=dirs,
                             lib_paths=args.lib_path, cwd=args.cwd, capture_output=False,
                             verify_groups=args.verify_groups, trace=args.trace,
                             pool_size=args.pool, timeout=timeout, max_memory=max_memory,
                             max_threads=args.max_threads, **limits)
    except (OSError, WasmgroupError) as err:
        text = f"{err.filename}: {err.strerror}" if isinstance(err, OSError) else str(err)
        print(f"wasmgroup run: {text}", file=sys.stderr)
        return EXIT_RUNTIME_ERROR
    # The outcome is decided and every worker gone: a Ctrl-C from here on changes nothing.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if result.error:
        print(f"wasmgroup run: {result.error}", file=sys.stderr)
    elif result.verify_summary and not args.quiet:
        print(f"wasmgroup run: {result.verify_summary}", file=sys.stderr)
    return result.exit_code


def _stress(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import secrets

    from wasmgroup.orchestrator.program import DEFAULT_PERTURB_MAX_DELAY
    from wasmgroup.orchestrator.stress import (
        Outcome,
        ReferenceFailed,
        StressPlan,
        StressReport,
        failure_text,
        run_stress,
        summary_lines,
    )

    if args.program is None:
        parser.error("the program to stress is missing: wasmgroup stress [OPTIONS] PROG.wasm "
                     "[-- ARGS]")
    if not os.path.isfile(args.program):
        parser.error(f"{args.program!r} is not a file")
    env, dirs = _guest_view(args, parser)
    seed = args.seed if args.seed is not None else secrets.randbelow(1_000_000)
    options: dict[str, object] = {"env": env, "dirs": dirs, "lib_paths": args.lib_path,
                                  "cwd": args.cwd}
    if args.max_memory is not None:
        options["memory_limit"] = args.max_memory
    plan = StressPlan(args.program, tuple(_program_args(args)), runs=args.runs, seed=seed,
                      jobs=args.jobs, timeout=args.timeout, expect=args.expect,
                      max_delay=args.max_delay or DEFAULT_PERTURB_MAX_DELAY,
                      run_options=options)
    progress = _Progress(plan.runs, enabled=not args.quiet)
    if not args.quiet:
        last = f"..{seed + plan.runs - 1}" if plan.runs > 1 else ""
        print(f"stress: {plan.runs} runs of {plan.program} (seeds {seed}{last}, {plan.jobs} at "
              f"once); expected output: "
              f"{'from --expect' if plan.expect is not None else 'a reference run first'}",
              flush=True)

    def on_outcome(outcome: Outcome, report: StressReport) -> None:
        if outcome.kind is not None:
            progress.clear()
            print(f"run {outcome.index} (seed {outcome.seed}): {outcome.kind}: "
                  f"{failure_text(outcome, report)}; replay: --seed {outcome.seed} --runs 1",
                  flush=True)
        elif args.verbose:
            progress.clear()
            print(f"run {outcome.index} (seed {outcome.seed}): passed in "
                  f"{outcome.result.wall_s:.2f} s", flush=True)
        progress.update(len(report.outcomes), len(report.failures))

    try:
        report = run_stress(plan, on_outcome=on_outcome)
    except ReferenceFailed as err:
        print(f"wasmgroup stress: {err}", file=sys.stderr)
        return 1
    finally:
        progress.clear()
    print("\n".join(summary_lines(report)), flush=True)
    return 1 if report.failures else 0


class _Progress:
    """Runs done and failed on stderr: one line rewritten on a terminal, else a line about
    every tenth of the runs."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.terminal = sys.stderr.isatty()
        self.started = time.monotonic()
        self.shown = False
        self.step = max(1, total // 10)

    def update(self, done: int, failed: int) -> None:
        if not self.enabled or (not self.terminal and done % self.step and done != self.total):
            return
        elapsed = time.monotonic() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate else 0.0
        line = (f"stress: {done}/{self.total} runs, {failed} failed, {rate:.2f} runs/s, "
                f"ETA {eta:.0f} s")
        if self.terminal:
            sys.stderr.write("\r\033[K" + line)
            self.shown = True
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self.shown = False


def _cache(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from wasmgroup.orchestrator.cache import cache_info, clean_cache, default_cache_dir
    from wasmgroup.shared.errors import WasmgroupError

    directory = default_cache_dir()
    if args.action == "clean":
        removed, freed = clean_cache(directory)
        print(f"removed {removed} entries ({freed / (1 << 20):.1f} MiB) from {directory}")
        return 0
    try:
        info = cache_info(directory)
    except WasmgroupError as err:
        print(f"wasmgroup cache: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(f"directory: {info.directory}\nentries:   {info.entries}\n"
          f"size:      {info.size / (1 << 20):.1f} MiB\n"
          f"limit:     {info.limit / (1 << 20):.1f} MiB (WASMGROUP_CACHE_SIZE)")
    return 0


def _trace(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from wasmgroup.orchestrator.tracefile import TraceError, read_trace, report

    try:
        records = read_trace(args.file)
        report(records, sys.stdout)
        if args.chrome is not None:
            from wasmgroup.orchestrator.tracefile import write_chrome

            write_chrome(records, args.chrome)
        if args.plot is not None:
            from wasmgroup.orchestrator.tracefile import write_plot

            write_plot(records, args.plot)
    except (OSError, TraceError) as err:
        text = f"{err.filename}: {err.strerror}" if isinstance(err, OSError) else str(err)
        print(f"wasmgroup trace: {text}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def _batch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from wasmgroup.orchestrator.batch import BatchError, Progress, default_results_path, run_batch
    from wasmgroup.orchestrator.batch_jobs import JobFileError
    from wasmgroup.orchestrator.batch_results import ResultsFileError

    if args.jobs_file is None:
        if not isinstance(args.ray, str):
            parser.error("the job file is missing: wasmgroup batch [OPTIONS] JOBS.jsonl")
        args.jobs_file, args.ray = Path(args.ray), True  # `--ray JOBS.jsonl`: no address
    results = args.results or default_results_path(args.jobs_file)
    progress = Progress(0, quiet=args.quiet, every=args.progress_every)
    try:
        summary = run_batch(args.jobs_file, results, jobs=args.jobs, output_dir=args.output_dir,
                            inline_limit=args.inline_limit, resume=args.resume,
                            timeout=args.timeout, memory_limit=args.memory_limit,
                            ray=args.ray, per_node=args.per_node, progress=progress)
    except JobFileError as err:
        print(f"wasmgroup batch: {args.jobs_file} {err}", file=sys.stderr)
        return EXIT_USAGE
    except (ResultsFileError, BatchError) as err:
        print(f"wasmgroup batch: {err}", file=sys.stderr)
        return getattr(err, "status", EXIT_USAGE)
    except KeyboardInterrupt:
        # Every finished job's result is written; the programs still running were cancelled
        # (Ray's actors leave with the driver): leave now.
        print(f"wasmgroup batch: interrupted (results so far in {results}; --resume runs the "
              "rest)", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)
    if not args.quiet:
        print("\n".join(summary.lines(results)))
    return 0 if summary.all_ok else 1


def _completion(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from wasmgroup.orchestrator.completion import completion_script

    print(completion_script(build_parser(), args.shell), end="")
    return 0


# ---------------------------------------------------------------------- the parser
def _columns() -> int:
    """The terminal's width, as shutil.get_terminal_size finds it: argparse imports shutil
    (and with it the bz2 and lzma modules) for that alone, milliseconds of every start."""
    with contextlib.suppress(KeyError, ValueError):
        if (columns := int(os.environ["COLUMNS"])) > 0:
            return columns
    stdout = sys.__stdout__
    with contextlib.suppress(ValueError, OSError):
        if stdout is not None and (columns := os.get_terminal_size(stdout.fileno()).columns) > 0:
            return columns
    return 80


class _Formatter(argparse.HelpFormatter):
    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _columns() - 2 if width is None else width)  # (- 2: as argparse)


class _Parser(argparse.ArgumentParser):
    """argparse's parser with `_Formatter`; its subparsers are of this class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


def _verbosity() -> _Parser:
    common = _Parser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0,
                        help="say what wasmgroup decides (-vv: more)")
    common.add_argument("-q", "--quiet", action="store_true",
                        help="only errors on stderr (no warnings or summaries)")
    return common


def _add_guest_options(parser: argparse.ArgumentParser) -> None:
    """What the guest sees: directories, environment, libraries, working directory."""
    parser.add_argument("--dir", action="append", default=[], type=parse_dir,
                        metavar="HOST::GUEST",
                        help="map host directory HOST at guest path GUEST (plain HOST: same "
                             "name)")
    parser.add_argument("--mapdir", action="append", default=[], type=parse_mapdir,
                        metavar="GUEST:HOST", help="wasmer's form of --dir HOST::GUEST")
    parser.add_argument("--volume", action="append", default=[], type=parse_volume,
                        metavar="HOST:GUEST", help="wasmer's other form of --dir HOST::GUEST")
    parser.add_argument("--env", action="append", default=[], type=parse_env,
                        metavar="KEY[=VALUE]",
                        help="set a guest environment variable; KEY alone passes the host's "
                             "value (LD_LIBRARY_PATH is honoured)")
    parser.add_argument("--lib-path", action="append", default=[], type=parse_lib_path,
                        metavar="DIR",
                        help="host directory searched for libraries after the guest's own")
    parser.add_argument("--cwd", metavar="GUEST_DIR",
                        help="the guest's working directory (default /)")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with `only`, just that command's subparser (building all
    seven, ~60 arguments, is milliseconds of a start that a run waits for)."""
    parser = _Parser(
        prog="wasmgroup",
        description="Run dynamically linked, multi-threaded WebAssembly programs. "
                    "`wasmgroup PROG.wasm ARGS` is short for `wasmgroup run PROG.wasm ARGS`.")
    parser.add_argument("--version", action="version", version=VERSION_TEXT)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = [_verbosity()]

    if only in (None, "run"):
        run = commands.add_parser(
            "run", parents=common,
            help="run a program (exit status: the program's; 134 trap; 124 timeout; 125 cannot "
                 "run)",
            description="Run a WebAssembly program (.wasm or .wat). The guest sees only the "
                        "directories given with --dir; libraries are looked up inside that view.")
        _add_guest_options(run)
        run.add_argument("--timeout", type=parse_duration, metavar="SECONDS",
                         help="stop every thread after this long (10, 2.5s, 500ms, 1m); status 124")
        run.add_argument("--max-memory", type=parse_size, metavar="SIZE",
                         help="the most the linear memory may grow to (bytes, or 64MiB, 1G...): "
                              "memory.grow fails beyond it")
        run.add_argument("-W", "-S", dest="wasmtime_options", action="append", default=[],
                         type=parse_wasmtime_option, metavar="KEY=VALUE",
                         help="wasmtime's forms: -W timeout=S, -W max-memory-size=SIZE; "
                              "-W/-S threads (always on)")
        run.add_argument("--verify-groups", action="store_true",
                         help="after every link operation, check that all threads' instance groups "
                              "agree on modules, table slots and GOT values; stop at the first "
                              "difference; a summary at exit")
        run.add_argument("--trace", type=parse_trace, metavar="FILE",
                         help="write one JSON line per link operation and thread start/exit "
                              "(- for stderr); read it with `wasmgroup trace FILE`")
        run.add_argument("--pool", type=parse_pool, default=None, metavar="N",
                         help="idle worker processes kept ready for new threads (default: one more "
                              f"than the usable CPUs, at most 8; at most {MAX_POOL})")
        run.add_argument("--max-threads", type=parse_max_threads, default=None, metavar="N",
                         help="threads live at once, the main thread included: a spawn beyond "
                              "gets EAGAIN (default: as many worker processes as the memory "
                              "holds, one per 16 MiB)")
        run.add_argument("--max-module-size", type=parse_module_size, default=None,
                         metavar="SIZE",
                         help="refuse module files larger than this, unread (bytes, or 512K, 64M, "
                              "1G...; default 256M)")
        run.add_argument("program", nargs="?", metavar="PROG.wasm")
        run.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                         help="arguments for the program (after an optional --)")
        run.set_defaults(handler=_run)

    if only in (None, "batch"):
        batch = commands.add_parser(
            "batch", parents=common,
            help="run the jobs of a JSON-lines file, results to a file (status 0 all ok, 1 some "
                 "failed, 2 bad job file)",
            description="Run every job of JOBS.jsonl (one JSON object per line: id, program, args, "
                        "env, dirs, lib_paths, cwd, stdin or stdin_file, timeout, memory_limit; "
                        "paths relative to the job file's directory), several at once, writing one "
                        "JSON line per finished job to the results file as each finishes.")
        batch.add_argument("jobs_file", type=Path, nargs="?", metavar="JOBS.jsonl")
        batch.add_argument("-j", "--jobs", type=parse_jobs, metavar="N",
                           help="programs at once (default: the usable CPUs; under Ray: per node, "
                                "the node's CPUs)")
        batch.add_argument("--results", type=parse_output, metavar="FILE",
                           help="where the results go (default: JOBS.results.jsonl beside the job "
                                "file); it must not hold results unless --resume")
        batch.add_argument("--resume", action="store_true",
                           help="skip the jobs already in the results file, append the rest")
        batch.add_argument("--output-dir", type=Path, metavar="DIR",
                           help="write outputs longer than --inline-limit to DIR/ID.stdout and "
                                "DIR/ID.stderr (else they are cut at the limit)")
        batch.add_argument("--inline-limit", type=lambda t: parse_size(t, minimum=0),
                           default=16 * 1024, metavar="SIZE",
                           help="bytes of stdout and of stderr kept in the results line "
                                "(default 16K)")
        batch.add_argument("--timeout", type=parse_duration, metavar="SECONDS",
                           help="for jobs that give none: stop the program after this long")
        batch.add_argument("--memory-limit", type=parse_size, metavar="SIZE",
                           help="for jobs that give none: the most the linear memory may grow to")
        batch.add_argument("--ray", nargs="?", const=True, default=False, metavar="ADDRESS",
                           help="run the jobs on a Ray cluster (ADDRESS, else RAY_ADDRESS, else "
                                "a new local Ray), one runtime per node; programs and directories "
                                "must be on a filesystem every node sees (needs wasmgroup[ray])")
        batch.add_argument("--per-node", type=parse_jobs, metavar="N",
                           help="with --ray: jobs sent ahead to each node (default: twice its "
                                "CPUs)")
        batch.add_argument("--progress-every", type=parse_duration, metavar="SECONDS",
                           help="seconds between progress lines (default: 10 when stderr is not a "
                                "terminal; a bar redrawn in place when it is)")
        batch.set_defaults(handler=_batch)

    if only in (None, "inspect"):
        inspect = commands.add_parser(
            "inspect", parents=common,
            help="show what modules are and what they need (dylink.0, imports, exports)")
        inspect.add_argument("files", nargs="+", metavar="FILE")
        inspect.add_argument("--json", action="store_true", help="machine-readable output")
        inspect.set_defaults(handler=_inspect)

    if only in (None, "trace"):
        trace = commands.add_parser(
            "trace", parents=common, help="summarise a --trace file; export it for Perfetto or "
                                          "as a timeline picture")
        trace.add_argument("file", type=Path, metavar="FILE")
        trace.add_argument("--chrome", type=parse_output, metavar="OUT.json",
                           help="write the Chrome trace-event format (Perfetto, chrome://tracing)")
        trace.add_argument("--plot", type=parse_output, metavar="OUT.png",
                           help="draw a timeline (needs matplotlib: pip install wasmgroup[plot])")
        trace.set_defaults(handler=_trace)

    if only in (None, "stress"):
        stress = commands.add_parser(
            "stress", parents=common,
            help="rerun a program many times under perturbed schedules, with --verify-groups; "
                 "report each failing run's seed (status 1 if any failed)",
            description="Rerun a program many times with --verify-groups, each run with random "
                        "short delays at safe points and before acknowledgements, drawn from a "
                        "seed: run i uses seed S+i, and --seed S+i --runs 1 replays it. Failures: "
                        "wrong output, verify difference, hang (--timeout), trap, exit status. "
                        "Status 0 when every run passed, 1 otherwise, 2 for bad usage.")
        _add_guest_options(stress)
        stress.add_argument("--runs", type=parse_runs, default=100, metavar="N",
                            help="how many perturbed runs (default 100)")
        stress.add_argument("--seed", type=parse_seed, metavar="S",
                            help="the first run's seed (default: a random one, printed)")
        stress.add_argument("--jobs", type=parse_jobs, default=1, metavar="N",
                            help="runs at once (default 1: the least noise from other runs)")
        stress.add_argument("--timeout", type=parse_duration, metavar="SECONDS",
                            help="a run taking longer is stopped and counted as a hang (default: "
                                 "10 times the reference run, at least 10 s; 60 s with --expect)")
        stress.add_argument("--expect", type=parse_expect, metavar="FILE",
                            help="the expected standard output (and status 0); default: the "
                                 "output of a reference run without perturbation, made first")
        stress.add_argument("--max-delay", type=parse_delay, metavar="DURATION",
                            help="the longest perturbation delay (default 20ms, at most 1s)")
        stress.add_argument("--max-memory", type=parse_size, metavar="SIZE",
                            help="the most the linear memory may grow to, as for run")
        stress.add_argument("program", nargs="?", metavar="PROG.wasm")
        stress.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                            help="arguments for the program (after an optional --)")
        stress.set_defaults(handler=_stress)

    if only in (None, "cache"):
        cache = commands.add_parser(
            "cache", parents=common, help="the compile cache: where, how big; empty it",
            description="Compiled modules are cached in $WASMGROUP_CACHE, else "
                        "$XDG_CACHE_HOME/wasmgroup, else ~/.cache/wasmgroup; the oldest entries "
                        "are evicted beyond $WASMGROUP_CACHE_SIZE (default 1GiB).")
        cache.add_argument("action", choices=["info", "clean"])
        cache.set_defaults(handler=_cache)

    if only in (None, "completion"):
        completion = commands.add_parser(
            "completion", parents=common, help="print a shell completion script",
            description="bash: eval \"$(wasmgroup completion bash)\"; zsh: the same with zsh "
                        "in ~/.zshrc.")
        completion.add_argument("shell", choices=["bash", "zsh"])
        completion.set_defaults(handler=_completion)
    return parser


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[
        min(verbose, 2)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("wasmgroup: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    command = ["wasmgroup"]  # the command's name once known, for the message
    try:
        code = _main(argv, command)
        sys.stdout.flush()
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # one line, however often it is pressed
        print(f"{' '.join(command)}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader left (`| head -1`): the rest is unwanted. Point stdout at /dev/null so
        # that the interpreter's last flush does not fail again, and exit as a process that
        # SIGPIPE ended would be reported.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return code


def _main(argv: Sequence[str] | None, command: list[str]) -> int:
    """The command's exit status; its name is added to `command` as soon as it is known."""
    argv = list(sys.argv[1:] if argv is None else argv)
    found = command_of(argv)
    if found is None:
        parser = build_parser()
        parser.parse_args(argv)  # help or version: prints and exits
        parser.print_usage(sys.stderr)
        return EXIT_USAGE
    name, argv = found
    command.append(name)
    sub = subparsers(build_parser(only=name))[name]
    args = sub.parse_args(argv)
    _configure_logging(args.verbose, args.quiet)
    handler: Callable[[argparse.Namespace, argparse.ArgumentParser], int] = args.handler
    return handler(args, sub)


def entry() -> None:
    """The `wasmgroup` command: main(), then leave without the interpreter's teardown. By then
    every worker is reaped and every file closed; what is left is freeing the objects of a
    process about to end, which took 70-150 ms on a loaded machine after the program had
    ended (the exit would come that long after the program's last output)."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # the reader left: as main() reports it
            code = code or EXIT_BROKEN_PIPE
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    entry()
