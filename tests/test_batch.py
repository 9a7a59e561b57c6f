"""`wasmgroup batch`: the job file's checks (pure, fast), then the real command over real
guests (build/guests/batch/job.wasm) and workers: failing jobs fail alone, results written as
jobs finish, a batch SIGKILLed half-way and resumed loses and repeats nothing, progress and
summary; after each run no process of it is left and nothing in /dev/shm."""

from __future__ import annotations

import io
import json
import os
import pty
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
from leaks import processes_marked
from test_cli import WASMGROUP, wasmgroup

from wasmgroup.orchestrator.batch import Progress, percentile, short_error
from wasmgroup.orchestrator.batch_jobs import Job, JobFileError, parse_job, parse_jobs
from wasmgroup.orchestrator.batch_results import (
    ResultsFile,
    ResultsFileError,
    output_name,
    read_results,
)
from wasmgroup.orchestrator.program import RunResult


# ---------------------------------------------------------------------- the job file (pure)
def test_a_job_line_with_every_field() -> None:
    line = json.dumps({
        "id": "j1", "program": "bin/p.wasm", "args": ["-n", ""], "env": {"K": "v"},
        "dirs": ["data::/in", "/abs/out::/out", "plain"], "lib_paths": ["lib"], "cwd": "/in",
        "stdin": "text é", "timeout": 2.5, "memory_limit": 1 << 20, "max_threads": 4})
    job = parse_job(line, 7, "/base")
    assert job == Job(id="j1", line=7, program="/base/bin/p.wasm", args=("-n", ""),
                      env={"K": "v"}, dirs=("/base/data::/in", "/abs/out::/out",
                                            "/base/plain::plain"),
                      lib_paths=("/base/lib",), cwd="/in", stdin="text é".encode(),
                      timeout=2.5, memory_limit=1 << 20, max_threads=4)
    assert job.key == '"j1"'
    options = job.run_options(timeout=9, memory_limit=None)
    assert options["timeout"] == 2.5 and options["stdin"] == "text é".encode()
    assert options["max_threads"] == 4
    assert [what for what, _ in job.host_paths()] == [
        "program", "directory", "directory", "directory", "library directory"]


def test_defaults_and_the_batchs_own_limits() -> None:
    job = parse_job('{"id": 3, "program": "/p.wasm", "stdin_file": "in.txt"}', 1, "/b")
    assert (job.args, job.env, job.dirs, job.cwd, job.stdin) == ((), {}, (), "/", None)
    assert job.key == "3" and job.stdin_file == "/b/in.txt"
    options = job.run_options(timeout=4.0, memory_limit=1 << 16)
    assert (options["timeout"], options["memory_limit"], options["stdin"]) == (
        4.0, 1 << 16, "/b/in.txt")


@pytest.mark.parametrize(("line", "field", "problem"), [
    ('{"id": "a", "program": "p"', None, "not JSON (Expecting ',' delimiter at column 27)"),
    ('["a", "p"]', None, "expected a JSON object, not a list"),
    ('{"id": "a", "program": "p", "arg": []}', "arg", "unknown field (known: id, program,"),
    ('{"program": "p"}', "id", "missing (every job needs an id, unique in the file)"),
    ('{"id": true, "program": "p"}', "id", "expected a string or an integer, not a boolean"),
    ('{"id": " ", "program": "p"}', "id", "is empty"),
    ('{"id": "a"}', "program", "missing"),
    ('{"id": "a", "program": 5}', "program", "expected a string, not a number"),
    ('{"id": "a", "program": "p", "args": "x y"}', "args",
     "expected a list of strings, not a string"),
    ('{"id": "a", "program": "p", "args": [1]}', "args", "expected a list of strings"),
    ('{"id": "a", "program": "p", "env": {"K": 1}}', "env", "expected an object of strings"),
    ('{"id": "a", "program": "p", "env": {"A=B": "1"}}', "env", "'A=B' is not a variable"),
    ('{"id": "a", "program": "p", "dirs": ["h::"]}', "dirs", "'h::': expected HOST::GUEST"),
    ('{"id": "a", "program": "p", "dirs": [""]}', "dirs", "expected a list of non-empty"),
    ('{"id": "a", "program": "p", "cwd": "in"}', "cwd", "'in' is not an absolute guest path"),
    ('{"id": "a", "program": "p", "stdin": "x", "stdin_file": "f"}', "stdin_file",
     "give stdin or stdin_file, not both"),
    ('{"id": "a", "program": "p", "timeout": -1}', "timeout",
     "expected a positive number of seconds, not -1"),
    ('{"id": "a", "program": "p", "timeout": "10s"}', "timeout",
     'expected a positive number of seconds, not "10s"'),
    ('{"id": "a", "program": "p", "memory_limit": 1.5}', "memory_limit",
     "expected a positive integer, not 1.5"),
    ('{"id": "a", "program": "p", "memory_limit": 4096}', "memory_limit",
     "4096 bytes is less than one wasm page (65536)"),
    ('{"id": "a", "program": "p", "max_threads": 0}', "max_threads",
     "expected a positive integer, not 0"),
])
def test_a_bad_line_names_its_field(line: str, field: str | None, problem: str) -> None:
    with pytest.raises(JobFileError) as caught:
        parse_jobs('{"id": 0, "program": "ok.wasm"}\n\n' + line + "\n", "/base")
    assert caught.value.line == 3 and caught.value.field == field
    assert caught.value.problem.startswith(problem), caught.value.problem
    where = f"line 3: field {field!r}: " if field else "line 3: "
    assert str(caught.value).startswith(where)


def test_ids_are_unique_and_typed() -> None:
    jobs = parse_jobs('{"id": 1, "program": "p"}\n{"id": "1", "program": "p"}\n', "/")
    assert [job.key for job in jobs] == ["1", '"1"']  # two jobs: 1 and "1"
    with pytest.raises(JobFileError, match="line 3: field 'id': 'a' is already the id of line 1"):
        parse_jobs('{"id": "a", "program": "p"}\n{"id": "b", "program": "p"}\n'
                   '{"id": "a", "program": "q"}\n', "/")


# ---------------------------------------------------------------------- results (pure-ish)
def test_a_half_written_last_line_is_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a", "exit_code": 0}\n{"id": 2, "exit_code": 1}\n{"id": "c", "ex')
    done, complete = read_results(path)
    assert set(done) == {'"a"', "2"} and complete == len(path.read_text()) - len('{"id": "c", "ex')
    sink = ResultsFile(path, resume=True)
    sink.write(parse_job('{"id": "c", "program": "/p"}', 1, "/"), RunResult(0, stdout=b"out"))
    sink.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["a", 2, "c"]
    assert lines[2]["stdout"] == "out"


def test_a_results_file_that_is_not_ours_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a"}\nnot a result\n{"id": "b"}\n')
    with pytest.raises(ResultsFileError, match="line 2 is not a result line"):
        read_results(path)
    with pytest.raises(ResultsFileError, match="already holds results: --resume"):
        ResultsFile(path, resume=False)


def test_output_names_are_safe_and_distinct() -> None:
    assert output_name("job-1.a") == "job-1.a" and output_name(7) == "7"
    names = {output_name(i) for i in ("a/b", "a_b", "../x", ".hidden", "7", 7)}
    assert len(names) == 6
    assert all("/" not in n and not n.startswith(".") for n in names)


def test_summary_helpers() -> None:
    assert percentile([], 50) == 0.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 95) == 95.0
    trap = ("the program trapped in main thread: error while executing at wasm backtrace:\n"
            "    0:    0x7b3 - job.wasm!main\n\nCaused by:\n    wasm trap: unreachable")
    assert short_error(trap) == "the program trapped in main thread: wasm trap: unreachable"
    assert short_error("one line") == "one line"


def test_plain_progress_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(10, stream=stream, every=0)
    progress.update(4, 1, 2)
    assert stream.getvalue().startswith("wasmgroup batch: 4/10 done, 1 failed, 2 running, ")
    assert ", ETA " in stream.getvalue()
    Progress(10, stream=stream, quiet=True, every=0).update(5, 0, 0)
    assert stream.getvalue().count("\n") == 1


# ---------------------------------------------------------------------- the real command
@pytest.fixture
def job_dir(guests: Path, tmp_path: Path) -> Path:
    """A batch's directory: bin/job.wasm, data/greeting.txt; jobs name them relatively."""
    (tmp_path / "bin").mkdir()
    shutil.copy(guests / "batch" / "job.wasm", tmp_path / "bin" / "job.wasm")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "greeting.txt").write_text("hello from data\n")
    (tmp_path / "input.txt").write_text("from a stdin file")
    return tmp_path


def write_jobs(directory: Path, jobs: list[dict[str, Any]], name: str = "jobs.jsonl") -> Path:
    path = directory / name
    path.write_text("".join(json.dumps({"program": "bin/job.wasm", **job}) + "\n"
                            for job in jobs))
    return path


def results_of(path: Path) -> dict[Any, dict[str, Any]]:
    """The results by id, checking that no id is there twice."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    by_id = {line["id"]: line for line in lines}
    assert len(by_id) == len(lines), "an id is in the results twice"
    return by_id


def test_mixed_jobs_each_fail_alone(job_dir: Path) -> None:
    jobs = write_jobs(job_dir, [
        {"id": "echo", "args": ["echo", "one", "two"]},
        {"id": 2, "args": ["exit", "3"]},
        {"id": "trap", "args": ["trap"]},
        {"id": "hang", "args": ["hang"], "timeout": 3},
        {"id": "oom", "args": ["oom"], "memory_limit": 16 << 20},
        {"id": "stdin", "args": ["cat"], "stdin": "typed stdin"},
        {"id": "stdin-file", "args": ["cat"], "stdin_file": "input.txt"},
        {"id": "dirs", "args": ["read", "greeting.txt"], "dirs": ["data::/data"],
         "cwd": "/data"},
        {"id": "env", "args": ["env", "WHO"], "env": {"WHO": "batch"}},
        {"id": "missing", "program": "bin/nope.wasm"},
        {"id": "last", "args": ["echo", "last"]},
    ])
    proc = wasmgroup("batch", "--jobs", "2", jobs)
    assert proc.returncode == 1, proc.stderr
    results = results_of(job_dir / "jobs.results.jsonl")  # the default, beside the job file
    assert len(results) == 11
    expect = {  # id: (exit code, stdout, error's start)
        "echo": (0, "job one two\n", None), 2: (3, "exiting 3\n", None),
        "trap": (134, "", "the program trapped in main thread"),
        "hang": (124, "hanging\n", "timed out after 3 s"),
        "stdin": (0, "typed stdin", None), "stdin-file": (0, "from a stdin file", None),
        "dirs": (0, "hello from data\ncwd /data\n", None), "env": (0, "WHO=batch\n", None),
        "missing": (125, "", f"cannot start: {job_dir}/bin/nope.wasm: No such file"),
        "last": (0, "job last\n", None)}
    if results["hang"]["stdout"] == "":
        expect["hang"] = (124, "", "timed out after 3 s")  # a loaded machine: not started yet
    for job_id, (code, stdout, error) in expect.items():
        result = results[job_id]
        assert (result["exit_code"], result["stdout"]) == (code, stdout), result
        assert (result["error"] or "").startswith(error or ""), result
        assert (result["error"] is None) == (error is None)
        assert result["timed_out"] == (job_id == "hang")
        assert result["wall_s"] > 0
    # Out of memory: malloc fails at the linear memory's limit and the program aborts (or, where
    # the Runtime also bounds the workers' own memory, it is stopped for exceeding it).
    oom = results["oom"]
    aborted = (oom["exit_code"], oom["error"]) == (
        134, "the program aborted (SIGABRT) in main thread") and oom["stderr"].startswith(
        "out of memory after 15 MiB")
    stopped = oom["exit_code"] == 137 and oom["error"].startswith("memory limit exceeded:")
    assert aborted or stopped, oom
    summary = proc.stdout.splitlines()
    assert summary[0].startswith("11 jobs in ") and ": 6 ok, 5 failed; wall p50 " in summary[0]
    assert summary[1] == "failed:"
    failures = sorted(line for line in summary[2:7] if not line.startswith("  oom: "))
    assert failures == sorted([
        "  2: exit 3", "  trap: exit 134: the program trapped in main thread: wasm trap: wasm "
        "`unreachable` instruction executed",
        "  hang: exit 124: timed out after 3 s (--timeout): every thread stopped",
        f"  missing: exit 125: cannot start: {job_dir}/bin/nope.wasm: No such file or "
        "directory"])
    assert f"  oom: exit {oom['exit_code']}: {oom['error']}" in summary[2:7]
    assert summary[7:] == [f"results: {job_dir / 'jobs.results.jsonl'}"]


def test_all_ok_is_status_0_and_quiet_prints_nothing(job_dir: Path) -> None:
    jobs = write_jobs(job_dir, [{"id": f"e{i}", "args": ["echo", str(i)]} for i in range(4)])
    results = job_dir / "out" / "r.jsonl"
    (job_dir / "out").mkdir()
    proc = wasmgroup("batch", "-q", "--results", results, jobs)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert {k: v["stdout"] for k, v in results_of(results).items()} == {
        f"e{i}": f"job {i}\n" for i in range(4)}
    # Run again without --resume: the results are not overwritten, nor appended to.
    again = wasmgroup("batch", "--results", results, jobs)
    assert again.returncode == 2
    assert again.stderr == (f"wasmgroup batch: {results} already holds results: --resume to "
                            "skip the jobs it holds, or remove it\n")
    assert len(results_of(results)) == 4


def test_a_bad_job_file_runs_nothing(job_dir: Path) -> None:
    jobs = job_dir / "jobs.jsonl"
    jobs.write_text('{"id": 1, "program": "bin/job.wasm", "args": ["echo"]}\n'
                    '{"id": 2, "program": "bin/job.wasm", "args": "echo 2"}\n')
    proc = wasmgroup("batch", jobs)
    assert proc.returncode == 2
    assert proc.stderr == (f"wasmgroup batch: {jobs} line 2: field 'args': expected a list of "
                           "strings, not a string\n")
    assert proc.stdout == ""
    assert not (job_dir / "jobs.results.jsonl").exists()
    missing = wasmgroup("batch", job_dir / "none.jsonl")
    assert missing.returncode == 2
    assert missing.stderr == (f"wasmgroup batch: cannot read {job_dir / 'none.jsonl'}: No such "
                              "file or directory\n")


@pytest.mark.parametrize(("args", "message"), [
    (["--jobs", "0"], "argument -j/--jobs: 0 is not between 1 and 64"),
    (["--timeout", "never"], "argument --timeout: 'never' is not a duration"),
    (["--memory-limit", "12"], "argument --memory-limit: '12' is less than one wasm page"),
    (["--inline-limit", "lots"], "argument --inline-limit: 'lots' is not a size"),
    (["--results", "/definitely/not/here/r.jsonl"],
     "argument --results: cannot write '/definitely/not/here/r.jsonl'"),
    (["--resume"], "the job file is missing: wasmgroup batch [OPTIONS] JOBS.jsonl"),
])
def test_options_are_checked_with_one_line(args: list[str], message: str) -> None:
    proc = wasmgroup("batch", *args, *(["jobs.jsonl"] if args != ["--resume"] else []))
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("usage: wasmgroup batch ")
    assert lines[-1].startswith(f"wasmgroup batch: error: {message}"), lines[-1]


def test_long_outputs_go_to_files_or_are_cut(job_dir: Path) -> None:
    jobs = write_jobs(job_dir, [{"id": "big/one", "args": ["big", "100000"]},
                                {"id": "small", "args": ["echo", "s"]}])
    proc = wasmgroup("batch", "--inline-limit", "1K", "--output-dir", job_dir / "outputs", jobs)
    assert proc.returncode == 0, proc.stderr
    results = results_of(job_dir / "jobs.results.jsonl")
    big = results["big/one"]
    assert big["stdout"] is None and big["stderr"] == ""
    file = Path(big["stdout_file"])
    assert file.parent == job_dir / "outputs" and file.name.endswith(".stdout")
    assert file.read_bytes() == (b"x" * 63 + b"\n") * (100000 // 64) + b"x" * (100000 % 64)
    assert results["small"]["stdout"] == "job s\n" and "stdout_file" not in results["small"]
    assert sorted(p.name for p in (job_dir / "outputs").iterdir()) == [file.name]

    (job_dir / "jobs.results.jsonl").unlink()
    proc = wasmgroup("batch", "--inline-limit", "1000", jobs)
    cut = results_of(job_dir / "jobs.results.jsonl")["big/one"]
    assert len(cut["stdout"]) == 1000 and cut["stdout_truncated"] == 100000


# ---------------------------------------------------------------------- processes killed
def start_batch(*args: str | Path, mark: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*WASMGROUP, "batch", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "WASMGROUP_TEST_MARK": mark})


def wait_for(condition: Any, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.05)


def lines_in(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def nothing_left(mark: str) -> None:
    wait_for(lambda: not processes_marked(mark), "the batch's processes to leave", 15)
    assert not [n for n in os.listdir("/dev/shm") if "wasmgroup" in n]


def running_programs(pid: int) -> list[psutil.Process]:
    """Worker processes under `pid` that host a program (map its linear memory)."""
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "memfd:wasmgroup-memory" in Path(f"/proc/{child.pid}/maps").read_text():
                found.append(child)
        except (OSError, psutil.Error):
            continue
    return found


def test_a_job_whose_worker_is_killed_fails_alone(job_dir: Path) -> None:
    jobs = write_jobs(job_dir, [{"id": "before", "args": ["echo", "before"]},
                                {"id": "victim", "args": ["hang"], "timeout": 120},
                                {"id": "after", "args": ["echo", "after"]}])
    results = job_dir / "jobs.results.jsonl"
    mark = uuid.uuid4().hex
    proc = start_batch("--jobs", "1", jobs, mark=mark)
    wait_for(lambda: lines_in(results) == 1, "the first job")
    wait_for(lambda: running_programs(proc.pid), "the victim's worker")
    time.sleep(0.3)  # the victim is hanging in the host (it printed "hanging")
    [victim] = running_programs(proc.pid)
    victim.kill()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    by_id = results_of(results)
    assert by_id["victim"]["exit_code"] == 125
    assert by_id["victim"]["error"] == (f"the worker process of the main thread (pid "
                                        f"{victim.pid}) killed by SIGKILL")
    assert by_id["after"]["stdout"] == "job after\n" and by_id["after"]["exit_code"] == 0
    assert "1 failed" in out.splitlines()[0]
    nothing_left(mark)


def test_a_batch_killed_half_way_resumes_losing_and_repeating_nothing(job_dir: Path) -> None:
    ids = [f"n{i:02}" for i in range(10)]
    jobs = write_jobs(job_dir, [{"id": i, "args": ["nap", "200", i]} for i in ids])
    results = job_dir / "jobs.results.jsonl"
    mark = uuid.uuid4().hex
    proc = start_batch("--jobs", "2", jobs, mark=mark)
    wait_for(lambda: lines_in(results) >= 3, "three results")
    proc.kill()  # SIGKILL: no clean-up of any kind
    proc.communicate(timeout=30)
    nothing_left(mark)  # its workers left with it
    before = results.read_bytes()
    assert before.endswith(b"\n")
    done_before = [json.loads(line)["id"] for line in before.splitlines()]
    assert 3 <= len(done_before) < len(ids)
    # What a kill in the middle of a write leaves: a line without its newline.
    with results.open("ab") as f:
        f.write(b'{"id": "n09", "exit_code": 0, "err')

    proc2 = wasmgroup("batch", "--resume", "--jobs", "2", jobs)
    assert proc2.returncode == 0, proc2.stderr
    after = results.read_bytes()
    assert after.startswith(before)  # the results already there, untouched
    by_id = results_of(results)
    assert sorted(by_id) == ids
    assert all(r["stdout"] == f"job {i}\n" and r["exit_code"] == 0 for i, r in by_id.items())
    summary = proc2.stdout.splitlines()
    ran = len(ids) - len(done_before)
    assert summary[0].startswith(f"{ran} jobs in ") and f": {ran} ok, 0 failed" in summary[0]
    assert summary[1] == (f"{len(done_before)} skipped, already in {results} (0 of them failed)")
    # Resuming a finished batch runs nothing and keeps the status.
    again = wasmgroup("batch", "--resume", jobs)
    assert again.returncode == 0 and again.stdout.startswith("0 jobs in ")
    assert results.read_bytes() == after


def test_ctrl_c_keeps_the_results_so_far(job_dir: Path) -> None:
    jobs = write_jobs(job_dir, [{"id": f"n{i}", "args": ["nap", "300", str(i)]}
                                for i in range(8)] + [{"id": "hang", "args": ["hang"]}])
    results = job_dir / "jobs.results.jsonl"
    mark = uuid.uuid4().hex
    proc = start_batch("--jobs", "2", jobs, mark=mark)
    wait_for(lambda: lines_in(results) >= 2, "two results")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err.splitlines()[-1] == (f"wasmgroup batch: interrupted (results so far in "
                                    f"{results}; --resume runs the rest)")
    nothing_left(mark)
    assert 2 <= len(results_of(results)) < 9


# ---------------------------------------------------------------------- progress
def test_progress_lines_when_stderr_is_not_a_terminal(job_dir: Path) -> None:
    jobs = write_jobs(job_dir, [{"id": i, "args": ["nap", "300", str(i)]} for i in range(6)])
    proc = wasmgroup("batch", "--jobs", "2", "--progress-every", "0.2", jobs)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines and all(line.startswith("wasmgroup batch: ") for line in lines)
    assert any(" running, " in line and " jobs/s, ETA " in line for line in lines)
    assert "\r" not in proc.stderr


def test_a_progress_bar_on_a_terminal(job_dir: Path) -> None:
    jobs = write_jobs(job_dir, [{"id": i, "args": ["nap", "300", str(i)]} for i in range(4)])
    leader, follower = pty.openpty()
    proc = subprocess.Popen([*WASMGROUP, "batch", "--jobs", "2", str(jobs)],
                            stdout=subprocess.PIPE, stderr=follower, stdin=subprocess.DEVNULL)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal's last writer left
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert b"\r[" in seen and b"/4 done, 0 failed, " in seen and b" jobs/s, ETA " in seen
    assert seen.endswith(b"\r\x1b[K")  # the bar is cleared before the summary
    assert out.decode().startswith("4 jobs in ")


# ---------------------------------------------------------------------- Ray, absent
def test_ray_is_imported_only_for_ray(job_dir: Path, tmp_path: Path) -> None:
    """With a `ray` that cannot be imported first on the path: a local batch runs, and
    --ray says in one line what to install."""
    fake = tmp_path / "no-ray"
    (fake / "ray").mkdir(parents=True)
    (fake / "ray" / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    jobs = write_jobs(job_dir, [{"id": "a", "args": ["echo", "a"]}])
    env = {"PYTHONPATH": str(fake)}
    assert wasmgroup("batch", "-q", jobs, env=env).returncode == 0
    # `--ray JOBS.jsonl`: the job file, not a cluster address.
    proc = wasmgroup("batch", "--results", job_dir / "r2.jsonl", "--ray", jobs, env=env)
    assert proc.returncode == 2
    assert proc.stderr == ("wasmgroup batch: --ray needs Ray, an optional extra: pip install "
                           "'wasmgroup[ray]'\n")
    assert not (job_dir / "r2.jsonl").exists()


def test_a_jobs_max_threads_caps_its_live_threads(job_dir: Path, guests: Path) -> None:
    jobs = write_jobs(job_dir, [
        {"id": "capped", "program": str(guests / "threads" / "spawn_until_refused.wasm"),
         "max_threads": 3},
        {"id": "free", "program": str(guests / "threads" / "spawn_until_refused.wasm"),
         "args": ["4"]}])
    proc = wasmgroup("batch", "--jobs", "2", jobs)
    assert proc.returncode == 0, proc.stderr
    results = results_of(job_dir / "jobs.results.jsonl")
    assert results["capped"]["stdout"] == (
        "created 2 threads, then: Resource temporarily unavailable\n")
    assert results["free"]["stdout"] == "created 4 threads, then: stopped\n"
