"""The job file of `wasmgroup batch`: one JSON object per line, every line checked before
any job runs.

    {"id": "a1", "program": "bin/tool.wasm", "args": ["-n", "3"], "env": {"K": "v"},
     "dirs": ["data::/data"], "lib_paths": ["lib"], "cwd": "/data", "stdin": "text",
     "timeout": 10, "memory_limit": 67108864, "max_threads": 16}

Only `id` (a string or an integer, unique in the file) and `program` are required. Host paths
(`program`, the host side of `dirs`, `lib_paths`, `stdin_file`) are absolute or relative to
the job file's directory, so a job file and its programs move together. `stdin` (text) and
`stdin_file` (a host file) exclude each other; without either the program reads an empty
stdin. `timeout` is in seconds, `memory_limit` in bytes (the linear memory's ceiling),
`max_threads` the threads live at once, the main thread included (a spawn beyond: EAGAIN).
Blank lines are skipped; an unknown field is an error (a typo would otherwise be ignored).

Pure: parsing takes the file's text and its directory and returns `Job`s or raises
`JobFileError` naming the line and the field. Whether the files exist is checked when a job
runs (on the node that runs it, under Ray), where a missing one fails that job alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from wasmgroup.shared.errors import WasmgroupError

JOB_FIELDS = ("id", "program", "args", "env", "dirs", "lib_paths", "cwd", "stdin",
              "stdin_file", "timeout", "memory_limit", "max_threads")
MAX_ID_LENGTH = 200  # ids name output files and appear in summaries


class JobFileError(WasmgroupError):
    """A job file line that is not a job: `line` (1-based) and `field` (or None) at fault."""

    def __init__(self, line: int, field: str | None, problem: str) -> None:
        self.line = line
        self.field = field
        self.problem = problem
        where = f"line {line}" + (f": field {field!r}" if field else "")
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class Job:
    """One job, checked; host paths absolute."""
    id: str | int
    line: int  # where it is in the job file
    program: str
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    dirs: tuple[str, ...] = ()  # HOST::GUEST, HOST absolute
    lib_paths: tuple[str, ...] = ()
    cwd: str = "/"
    stdin: bytes | None = None
    stdin_file: str | None = None
    timeout: float | None = None
    memory_limit: int | None = None
    max_threads: int | None = None

    @property
    def key(self) -> str:
        """The id as the results file spells it: 1 and "1" are two jobs."""
        return job_key(self.id)

    def host_paths(self) -> list[tuple[str, str]]:
        """(what, path) of every host file or directory the job needs, for checks on a node."""
        paths = [("program", self.program)]
        paths += [("directory", spec.partition("::")[0]) for spec in self.dirs]
        paths += [("library directory", lib) for lib in self.lib_paths]
        if self.stdin_file is not None:
            paths.append(("stdin file", self.stdin_file))
        return paths

    def run_options(self, timeout: float | None = None, memory_limit: int | None = None
                    ) -> dict[str, Any]:
        """Keywords for `Runtime.submit`; `timeout`/`memory_limit`: the batch's defaults,
        for jobs that give none."""
        return {"env": dict(self.env), "dirs": self.dirs, "lib_paths": self.lib_paths,
                "cwd": self.cwd,
                "stdin": self.stdin_file if self.stdin_file is not None else self.stdin,
                "timeout": self.timeout if self.timeout is not None else timeout,
                "memory_limit": (self.memory_limit if self.memory_limit is not None
                                 else memory_limit),
                "max_threads": self.max_threads}


def job_key(job_id: object) -> str:
    return json.dumps(job_id)


def parse_jobs(text: str, base_dir: str) -> list[Job]:
    """Every job of a job file's `text`, host paths resolved against `base_dir`; raises
    `JobFileError` for the first line that is not a job (or repeats an id)."""
    jobs: list[Job] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        job = parse_job(line, number, base_dir)
        if job.key in seen:
            raise JobFileError(number, "id", f"{job.id!r} is already the id of line "
                                             f"{seen[job.key]}")
        seen[job.key] = number
        jobs.append(job)
    return jobs


def parse_job(line: str, number: int, base_dir: str) -> Job:
    """One line of a job file (see the module's docstring)."""
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as err:
        raise JobFileError(number, None, f"not JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(raw, dict):
        raise JobFileError(number, None, f"expected a JSON object, not {_kind(raw)}")
    for name in raw:
        if name not in JOB_FIELDS:
            raise JobFileError(number, name, f"unknown field (known: {', '.join(JOB_FIELDS)})")
    check = _Checker(raw, number)
    job_id = check.id()
    program = check.string("program", required=True)
    assert program is not None
    stdin = check.string("stdin")
    stdin_file = check.string("stdin_file")
    if stdin is not None and stdin_file is not None:
        raise JobFileError(number, "stdin_file", "give stdin or stdin_file, not both")
    cwd = check.string("cwd") or "/"
    if not cwd.startswith("/"):
        raise JobFileError(number, "cwd", f"{cwd!r} is not an absolute guest path")
    return Job(
        id=job_id, line=number, program=_host_path(base_dir, program),
        args=tuple(check.strings("args")), env=check.env(),
        dirs=tuple(_dir_spec(base_dir, spec, number) for spec in check.strings("dirs")),
        lib_paths=tuple(_host_path(base_dir, p) for p in check.strings("lib_paths")),
        cwd=cwd, stdin=None if stdin is None else stdin.encode(),
        stdin_file=None if stdin_file is None else _host_path(base_dir, stdin_file),
        timeout=check.positive("timeout", float), memory_limit=check.memory_limit(),
        max_threads=check.positive("max_threads", int))


class _Checker:
    """Field checks for one line; each raises a JobFileError naming the field."""

    def __init__(self, raw: dict[str, Any], line: int) -> None:
        self.raw = raw
        self.line = line

    def fail(self, name: str, problem: str) -> JobFileError:
        return JobFileError(self.line, name, problem)

    def id(self) -> str | int:
        if "id" not in self.raw:
            raise self.fail("id", "missing (every job needs an id, unique in the file)")
        value = self.raw["id"]
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise self.fail("id", f"expected a string or an integer, not {_kind(value)}")
        if isinstance(value, str) and not value.strip():
            raise self.fail("id", "is empty")
        if len(str(value)) > MAX_ID_LENGTH:
            raise self.fail("id", f"longer than {MAX_ID_LENGTH} characters")
        return value

    def string(self, name: str, required: bool = False) -> str | None:
        if name not in self.raw:
            if required:
                raise self.fail(name, "missing")
            return None
        value = self.raw[name]
        if not isinstance(value, str):
            raise self.fail(name, f"expected a string, not {_kind(value)}")
        if name != "stdin" and (not value or "\0" in value):
            raise self.fail(name, "expected a path (not empty, no NUL)")
        return value

    def strings(self, name: str) -> list[str]:
        value = self.raw.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(name, f"expected a list of strings, not {_kind(value)}")
        if name != "args" and not all(value):
            raise self.fail(name, "expected a list of non-empty strings")
        return value

    def env(self) -> dict[str, str]:
        value = self.raw.get("env", {})
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise self.fail("env", "expected an object of strings ({\"KEY\": \"value\"})")
        for key in value:
            if not key or "=" in key or "\0" in key:
                raise self.fail("env", f"{key!r} is not a variable name")
        return dict(value)

    def positive(self, name: str, kind: type[float] | type[int]) -> Any:
        if name not in self.raw or self.raw[name] is None:
            return None
        value = self.raw[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 \
                or value == float("inf") or (kind is int and not float(value).is_integer()):
            what = "a positive number of seconds" if kind is float else "a positive integer"
            raise self.fail(name, f"expected {what}, not {json.dumps(value)}")
        return kind(value)

    def memory_limit(self) -> int | None:
        value = self.positive("memory_limit", int)
        if value is not None and value < 65536:
            raise self.fail("memory_limit", f"{value} bytes is less than one wasm page (65536)")
        return value  # type: ignore[no-any-return]


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(value), "?")


def _host_path(base_dir: str, path: str) -> str:
    return os.path.normpath(os.path.join(base_dir, path))


def _dir_spec(base_dir: str, spec: str, line: int) -> str:
    """HOST::GUEST (or plain HOST, seen in the guest under the name given) with HOST
    resolved against the job file's directory."""
    host, sep, guest = spec.partition("::")
    if not host or (sep and not guest):
        raise JobFileError(line, "dirs", f"{spec!r}: expected HOST::GUEST or HOST")
    return f"{_host_path(base_dir, host)}::{guest if sep else host}"
