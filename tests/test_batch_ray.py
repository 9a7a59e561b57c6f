"""`wasmgroup batch --ray` on a real Ray cluster of three nodes on this machine (Ray's own
`cluster_utils.Cluster`: a head and two nodes, one CPU each), driven by the real command:
jobs spread over the nodes' Runtime actors, a missing program named with its node, the Python
equivalent, and a node removed mid-batch whose unfinished jobs run again elsewhere, every job
exactly once in the results file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from test_batch import lines_in, nothing_left, results_of, start_batch, wait_for, write_jobs
from test_cli import wasmgroup

ray = pytest.importorskip("ray", reason="the Ray tests need the ray extra (scripts/setup-venv "
                                        "--dev installs it)")
from ray.cluster_utils import Cluster  # noqa: E402

NODE_ARGS = {"num_cpus": 1, "object_store_memory": 80 << 20}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Started once for the module (about 15 s here): it is the costly part."""
    started = Cluster(initialize_head=True,
                      head_node_args={**NODE_ARGS, "include_dashboard": False})
    nodes = [started.add_node(**NODE_ARGS) for _ in range(2)]
    started.wait_for_nodes()
    started.extra_nodes = nodes  # type: ignore[attr-defined]
    yield started
    started.shutdown()


def workers_under_cluster() -> list[int]:
    """wasmgroup worker processes started by the cluster's actors (descendants of this
    process, which started the cluster)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "wasmgroup.worker" in " ".join(proc.cmdline()) and proc.status() != "zombie":
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def no_workers_left() -> None:
    wait_for(lambda: not workers_under_cluster(), "the actors' workers to leave", 30)


@pytest.fixture
def job_dir(guests: Path, tmp_path: Path) -> Path:
    (tmp_path / "bin").mkdir()
    shutil.copy(guests / "batch" / "job.wasm", tmp_path / "bin" / "job.wasm")
    return tmp_path


def test_a_batch_over_the_nodes(cluster: Cluster, job_dir: Path) -> None:
    jobs = write_jobs(job_dir, [{"id": i, "args": ["nap", "100", str(i)]} for i in range(12)]
                      + [{"id": "missing", "program": "bin/nope.wasm"},
                         {"id": "trap", "args": ["trap"]}])
    proc = wasmgroup("batch", "--ray", cluster.address, jobs, timeout=240)
    assert proc.returncode == 1, proc.stderr
    results = results_of(job_dir / "jobs.results.jsonl")
    assert sorted(results, key=str) == sorted([*range(12), "missing", "trap"], key=str)
    for i in range(12):
        assert (results[i]["exit_code"], results[i]["stdout"]) == (0, f"job {i}\n")
    nodes = {r["node"] for r in results.values()}
    assert len(nodes) >= 2, nodes  # spread over the nodes (each takes 2 jobs ahead)
    assert results["trap"]["exit_code"] == 134
    missing = results["missing"]
    assert missing["exit_code"] == 125
    assert missing["error"] == (
        f"program not found on node {missing['node']}: {job_dir}/bin/nope.wasm (with --ray, "
        "programs and directories must be on a filesystem every node sees)")
    summary = proc.stdout.splitlines()
    assert summary[0].startswith("14 jobs in ") and ": 12 ok, 2 failed;" in summary[0]
    no_workers_left()


def test_the_python_equivalent(cluster: Cluster, job_dir: Path) -> None:
    # In a process of its own: ray.init installs Ray's fatal-signal handlers over wasmtime's
    # trap handlers, so a later in-process wasm trap (other tests run wasm in this process)
    # would kill the test runner with SIGILL. A coordinator never runs wasm itself.
    jobs = write_jobs(job_dir, [{"id": f"p{i}", "args": ["echo", str(i)]} for i in range(4)])
    script = f"""
import json, ray
from wasmgroup.orchestrator.batch import run_batch
summary = run_batch({str(jobs)!r}, {str(job_dir / "r.jsonl")!r}, ray={cluster.address!r},
                    per_node=1)
print(json.dumps([summary.ran, summary.ok, summary.all_ok, ray.is_initialized()]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr
    ran, ok, all_ok, still_connected = json.loads(done.stdout.splitlines()[-1])
    assert (ran, ok, all_ok) == (4, 4, True)
    assert not still_connected  # it connected, and left
    assert {k: v["stdout"] for k, v in results_of(job_dir / "r.jsonl").items()} == {
        f"p{i}": f"job {i}\n" for i in range(4)}
    no_workers_left()


def test_a_node_removed_mid_batch(cluster: Cluster, job_dir: Path) -> None:
    """Last in the module: it takes a node away (and puts a new one back for teardown)."""
    ids = [f"n{i:02}" for i in range(16)]
    jobs = write_jobs(job_dir, [{"id": i, "args": ["nap", "400", i]} for i in ids])
    results = job_dir / "jobs.results.jsonl"
    mark = uuid.uuid4().hex
    proc = start_batch("-v", "--ray", cluster.address, "--per-node", "2", jobs, mark=mark)
    victim = cluster.extra_nodes[0]  # type: ignore[attr-defined]
    victim_id = victim.node_id[:8]

    def victim_answered() -> bool:
        if not results.exists():
            return False
        return any(json.loads(line).get("node", "").endswith(victim_id)
                   for line in results.read_text().splitlines())

    wait_for(victim_answered, "a job done on the node to remove", 180)
    done_before = lines_in(results)
    cluster.remove_node(victim)
    out, err = proc.communicate(timeout=240)
    cluster.add_node(**NODE_ARGS)
    assert proc.returncode == 0, err
    by_id = results_of(results)  # every job exactly once
    assert sorted(by_id) == ids
    assert all(r["stdout"] == f"job {i}\n" and r["exit_code"] == 0 for i, r in by_id.items())
    assert done_before < len(ids)
    # The node had jobs in flight (2 ahead): they were sent again, and ran elsewhere.
    resent = [line for line in err.splitlines() if "sent again" in line]
    assert resent, err
    assert out.splitlines()[0].startswith("16 jobs in ")
    nothing_left(mark)
    no_workers_left()
