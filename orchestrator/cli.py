"""The `wasmgroup` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from wasmgroup.orchestrator.inspect import describe, format_text
from wasmgroup.shared.errors import WasmgroupError
from wasmgroup.shared.wasm import read_module_file

EXIT_USAGE = 2


def _inspect(args: argparse.Namespace) -> int:
    summaries = []
    for path in args.files:
        try:
            module = read_module_file(path)
        except (OSError, WasmgroupError) as err:
            text = f"{path}: {err.strerror}" if isinstance(err, OSError) else str(err)
            print(f"wasmgroup inspect: {text}", file=sys.stderr)
            return EXIT_USAGE
        summaries.append(describe(module, path))
    if args.json:
        json.dump(summaries, sys.stdout, indent=2)
        print()
    else:
        print("\n\n".join(format_text(s) for s in summaries))
    return 0


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
