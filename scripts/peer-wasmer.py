"""Runs WASIX programs under the real Wasmer (PyPI wasmer-sdk), for scripts/bench-peers.

Started by bench-peers with the Python of its own venv (build/peer-venv, wasmer-sdk pinned
there). Reads one JSON request a line on stdin, {"program", "args", "lib_dir"} and optionally
"files" ({guest path: host file}), runs the program in a fresh sandbox (every *.so of lib_dir
under /workspace/lib, LD_LIBRARY_PATH set, the files, cwd /workspace) and answers one JSON
line: {"exit_code", "stdout", "stderr", "run_s"} or {"error"} when Wasmer refuses to start it.
`--once` serves one request and exits (a whole fresh-process run).
"""

import asyncio
import json
import os
import pathlib
import sys
import time

from wasmer_sdk import PackageCommandDefinition, PackageDefinition, Wasmer, WasmerError

ENV = {"LD_LIBRARY_PATH": "/workspace/lib"}


async def serve(once: bool) -> None:
    packages: dict[str, object] = {}
    async with Wasmer() as wasmer:
        for line in sys.stdin:
            request = json.loads(line)
            program = request["program"]
            if program not in packages:
                packages[program] = await wasmer.packages.create(PackageDefinition(
                    modules={"m": pathlib.Path(program).read_bytes()},
                    commands={"run": PackageCommandDefinition(module="m")}))
            package = packages[program]
            files = {f"/workspace/lib/{p.name}": p.read_bytes()
                     for p in sorted(pathlib.Path(request["lib_dir"]).glob("*.so"))}
            files.update({guest: pathlib.Path(host).read_bytes()
                          for guest, host in request.get("files", {}).items()})
            try:
                async with await wasmer.sandboxes.create(packages=[package], files=files,
                                                         env=ENV) as sandbox:
                    started = time.perf_counter()
                    out = await sandbox.command(package, request["args"], cwd="/workspace",
                                                env=ENV).run(check=False, timeout=120)
                    answer = {"exit_code": out.exit_code,
                              "stdout": out.stdout.text("utf-8", "replace"),
                              "stderr": out.stderr.text("utf-8", "replace"),
                              "run_s": time.perf_counter() - started}
            except WasmerError as err:
                answer = {"error": str(err)}
            print(json.dumps(answer), flush=True)
            if once:
                break


asyncio.run(serve("--once" in sys.argv))
sys.stdout.flush()
# wasmer-sdk's native runtime sometimes aborts during interpreter teardown.
os._exit(0)
