"""The results file of `wasmgroup batch`: one JSON line per finished job, appended and flushed
(one `write`) as each job finishes, so a batch killed at any moment keeps every result it had.

    {"id": "a1", "exit_code": 0, "error": null, "wall_s": 0.012, "timed_out": false,
     "stdout": "...", "stderr": ""}

stdout and stderr are text (UTF-8; bytes that are not are replaced) up to the inline limit.
A longer output goes to a file under the output directory (`stdout_file`: its path) when one
is given; otherwise it is cut at the limit and `stdout_truncated` gives its full size in bytes.
An output file is complete before its result line is written. Under Ray, `node` names the
node that ran the job.

Resuming reads the ids already there. Only the last line can be incomplete (the batch was
killed while writing it): it is cut off and its job runs again, so nothing is lost and
nothing written twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from wasmgroup.orchestrator.batch_jobs import Job, job_key
from wasmgroup.orchestrator.program import RunResult
from wasmgroup.shared.errors import WasmgroupError

DEFAULT_INLINE_LIMIT = 16 * 1024  # bytes of stdout (and of stderr) kept in the results line


class ResultsFileError(WasmgroupError):
    """The results file cannot be used (the message says why)."""


def read_results(path: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """(the results by job key, the size of the file's complete part). A line is complete
    once it has its newline (the last byte of the one write that wrote it): a last line
    without one is the line a killed batch was writing, left out of both; a complete line
    that is not a result is an error (the file is not ours, or was edited)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}, 0
    except OSError as err:
        raise ResultsFileError(f"cannot read {path}: {err.strerror}") from None
    *complete, _incomplete = data.split(b"\n")
    results: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            record = None
        if not isinstance(record, dict) or "id" not in record:
            raise ResultsFileError(f"{path} line {number} is not a result line: remove it or "
                                   "give another --results file")
        results[job_key(record["id"])] = record
    return results, sum(len(line) + 1 for line in complete)


class ResultsFile:
    """Appends one result line per job; with `resume`, first cuts off an incomplete last line
    and remembers which jobs are done (`done`)."""

    def __init__(self, path: Path, *, resume: bool, output_dir: Path | None = None,
                 inline_limit: int = DEFAULT_INLINE_LIMIT) -> None:
        self.path = path
        self.output_dir = None if output_dir is None else output_dir.absolute()
        self.inline_limit = inline_limit
        self.done: dict[str, dict[str, Any]] = {}
        if resume:
            self.done, complete = read_results(path)
        elif path.exists() and path.stat().st_size > 0:
            raise ResultsFileError(f"{path} already holds results: --resume to skip the jobs "
                                   "it holds, or remove it")
        try:
            if self.output_dir is not None:
                self.output_dir.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                               0o644)
        except OSError as err:
            raise ResultsFileError(f"cannot write {err.filename}: {err.strerror}") from None
        if resume and os.fstat(self._fd).st_size > complete:
            os.truncate(self._fd, complete)  # the line a killed batch left half-written

    def write(self, job: Job, result: RunResult, node: str | None = None) -> dict[str, Any]:
        """Write `job`'s result line (its output files first); returns the record."""
        record: dict[str, Any] = {
            "id": job.id, "exit_code": result.exit_code, "error": result.error,
            "wall_s": round(result.wall_s, 4), "timed_out": result.timed_out}
        for name, data in (("stdout", result.stdout), ("stderr", result.stderr)):
            record.update(self._output(job, name, data))
        if node is not None:
            record["node"] = node
        line = json.dumps(record, ensure_ascii=False) + "\n"
        data = line.encode("utf-8", "surrogatepass")
        written = 0
        while written < len(data):  # one write in practice; a short write is finished
            written += os.write(self._fd, data[written:])
        self.done[job.key] = record
        return record

    def _output(self, job: Job, name: str, data: bytes) -> dict[str, Any]:
        if len(data) <= self.inline_limit:
            return {name: data.decode("utf-8", "replace")}
        if self.output_dir is None:
            return {name: data[:self.inline_limit].decode("utf-8", "replace"),
                    f"{name}_truncated": len(data)}
        target = self.output_dir / f"{output_name(job.id)}.{name}"
        partial = target.with_name(target.name + ".partial")
        partial.write_bytes(data)
        partial.replace(target)  # complete before the result line names it
        return {name: None, f"{name}_file": str(target)}

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1


def output_name(job_id: str | int) -> str:
    """A file name for a job's outputs: the id when it is a safe name, else the id's safe
    characters and a hash of it (two ids never share a name)."""
    text = str(job_id)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", text)[:80]
    if isinstance(job_id, int) or (safe == text and not text.startswith(".")
                                   and not text.isdigit()):
        return text
    digest = hashlib.sha256(job_key(job_id).encode()).hexdigest()[:12]
    return f"{safe.lstrip('.')}-{digest}"
