"""`wasmgroup batch --ray`: the jobs over a Ray cluster, one `Runtime` actor per node.

Each alive node with CPUs gets one actor (`NodeRuntime`) holding a Runtime of its own (its own
warm workers and compile cache) that runs the node's CPUs' worth of programs at once (`--jobs`
overrides). The driver (this process) sends each actor at most `per_node` jobs ahead
(default: twice what it runs at once), so a slow node never holds more than that, and writes
each result into the results file as it comes back: only the driver writes, once per job.

Programs, mapped directories, library directories and stdin files must be on a filesystem
every node sees, at the same path; the actor checks them before running a job, which
otherwise fails alone: "program not found on node 10.0.0.7/1a2b3c4d: /data/p.wasm".

A node or actor that dies: the jobs it had not answered run again on the other nodes (a job
that outlives MAX_ATTEMPTS such deaths fails with that reason instead); nodes that join later
get an actor too. Ray is imported only here, and only when a batch asks for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from wasmgroup.orchestrator.batch import (
    TICK,
    BatchError,
    BatchOptions,
    Finished,
    failed_result,
)
from wasmgroup.orchestrator.batch_jobs import Job
from wasmgroup.orchestrator.program import EXIT_RUNTIME_ERROR, RunResult

log = logging.getLogger("wasmgroup")
RAY_MISSING = "--ray needs Ray, an optional extra: pip install 'wasmgroup[ray]'"
MAX_ATTEMPTS = 3  # deaths of the node or actor running a job before the job fails
MAX_ACTOR_DEATHS = 3  # actors lost on a node still alive before it gets no more
NODES_EVERY = 1.0  # seconds between looks for nodes that joined or left
NO_NODE_GRACE = 30.0  # seconds without a node able to run jobs before the batch stops


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BatchError(RAY_MISSING) from None
    return ray


class NodeRuntime:
    """The actor on one node: a Runtime that runs the jobs sent to this node."""

    def __init__(self, workers: int) -> None:
        import ray

        from wasmgroup.orchestrator.runtime import Runtime

        node_id = ray.get_runtime_context().get_node_id()
        address = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        self.node = f"{address}/{node_id[:8]}"
        self.runtime = Runtime(workers=workers)

    def run(self, job: Job, timeout: float | None, memory_limit: int | None
            ) -> tuple[RunResult, str]:
        """The job's result, and this node's name."""
        for what, path in job.host_paths():
            if not os.path.exists(path):
                return RunResult(EXIT_RUNTIME_ERROR, error=(
                    f"{what} not found on node {self.node}: {path} (with --ray, programs and "
                    "directories must be on a filesystem every node sees)")), self.node
        started = time.monotonic()
        try:
            result = self.runtime.run(job.program, job.args,
                                      **job.run_options(timeout, memory_limit))
        except Exception as err:  # a job fails alone, whatever went wrong
            result = RunResult(EXIT_RUNTIME_ERROR, error=f"internal error on node {self.node}: "
                                                         f"{type(err).__name__}: {err}")
            result.wall_s = time.monotonic() - started
        return result, self.node


@dataclass
class _Node:
    node_id: str
    workers: int  # programs at once
    limit: int  # jobs sent ahead
    actor: Any = None
    deaths: int = 0
    in_flight: dict[Any, Job] = field(default_factory=dict)  # ObjectRef -> job

    @property
    def name(self) -> str:
        return self.node_id[:8]


class RayBackend:
    """Runs a batch's jobs over a Ray cluster (see the module docstring)."""

    def __init__(self, address: str | None, per_node: int | None = None) -> None:
        self.address = address
        self.per_node = per_node
        self.ray = import_ray()

    def run(self, jobs: Sequence[Job], options: BatchOptions, finished: Finished,
            tick: Callable[[int], None]) -> None:
        ray = self.ray
        ours = not ray.is_initialized()
        if ours:
            try:
                ray.init(address=self.address, logging_level=logging.ERROR,
                         log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as err:
                where = self.address or os.environ.get("RAY_ADDRESS") or "a new local Ray"
                raise BatchError(f"cannot reach the Ray cluster at {where}: "
                                 f"{str(err).splitlines()[0]}") from None
        nodes: dict[str, _Node] = {}
        try:
            _Scheduler(ray, nodes, options, self.per_node, finished, tick).run(jobs)
        finally:
            for node in nodes.values():
                if node.actor is not None:
                    with contextlib.suppress(Exception):
                        ray.kill(node.actor)
            if ours:
                ray.shutdown()


class _Scheduler:
    """The driver's loop: actors on nodes, jobs sent with back-pressure, results collected,
    the jobs of a lost node or actor sent again."""

    def __init__(self, ray: Any, nodes: dict[str, _Node], options: BatchOptions,
                 per_node: int | None, finished: Finished, tick: Callable[[int], None]) -> None:
        self.ray = ray
        self.nodes = nodes
        self.options = options
        self.per_node = per_node
        self.finished = finished
        self.tick = tick
        self.remote = ray.remote(NodeRuntime)
        self.queue: deque[Job] = deque()
        self.attempts: dict[str, int] = {}
        self.owner: dict[Any, _Node] = {}  # ObjectRef -> the node it was sent to

    def run(self, jobs: Sequence[Job]) -> None:
        self.queue.extend(jobs)
        looked = 0.0
        no_node_since: float | None = None
        while self.queue or self.owner:
            now = time.monotonic()
            if now - looked >= NODES_EVERY:
                self._look_for_nodes()
                looked = now
            self._send()
            if not self.owner:
                # Jobs wait and no node takes them: wait for one to join, for a while.
                no_node_since = no_node_since or now
                if now - no_node_since > NO_NODE_GRACE:
                    raise BatchError(f"no Ray node is left to run the {len(self.queue)} jobs "
                                     "not yet run (--resume runs them later)", status=1)
                time.sleep(TICK)
                self.tick(0)
                continue
            no_node_since = None
            ready, _ = self.ray.wait(list(self.owner), num_returns=1, timeout=TICK)
            if ready:
                ready, _ = self.ray.wait(list(self.owner), num_returns=len(self.owner),
                                         timeout=0)
            for ref in ready:
                self._collect(ref)
            self.tick(len(self.owner))

    def _look_for_nodes(self) -> None:
        alive = {}
        for info in self.ray.nodes():
            cpus = int(info.get("Resources", {}).get("CPU", 0))
            if info.get("Alive") and cpus > 0:
                alive[info["NodeID"]] = cpus
        for node_id, node in self.nodes.items():
            if node_id not in alive and node.actor is not None:
                node.actor = None  # its jobs come back as errors and are sent again
        for node_id, cpus in alive.items():
            if node_id not in self.nodes:
                workers = self.options.jobs or cpus
                self.nodes[node_id] = _Node(node_id, workers, self.per_node or 2 * workers)
            node = self.nodes[node_id]
            if node.actor is None and node.deaths < MAX_ACTOR_DEATHS:
                from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

                node.actor = self.remote.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                    num_cpus=0, max_concurrency=node.limit, max_restarts=0,
                    max_task_retries=0).remote(node.workers)

    def _send(self) -> None:
        for node in self.nodes.values():
            while node.actor is not None and self.queue and len(node.in_flight) < node.limit:
                job = self.queue.popleft()
                ref = node.actor.run.remote(job, self.options.timeout, self.options.memory_limit)
                node.in_flight[ref] = job
                self.owner[ref] = node

    def _collect(self, ref: Any) -> None:
        ray = self.ray
        node = self.owner.pop(ref)
        job = node.in_flight.pop(ref)
        try:
            result, where = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.NodeDiedError,
                ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError) as err:
            self._lost(node, job, err)
            return
        except ray.exceptions.RayError as err:
            text = str(err).strip().splitlines()
            self.finished(job, failed_result(f"Ray: {text[0] if text else type(err).__name__}"),
                          node.name)
            return
        self.finished(job, result, where)

    def _lost(self, node: _Node, job: Job, err: Exception) -> None:
        """The node or actor died before answering for `job`: send it again, elsewhere if
        the node is gone."""
        if node.actor is not None:
            with contextlib.suppress(Exception):  # it may be alive but unreachable
                self.ray.kill(node.actor)
            node.actor = None
            node.deaths += 1
        attempts = self.attempts[job.key] = self.attempts.get(job.key, 0) + 1
        if attempts >= MAX_ATTEMPTS:
            self.finished(job, failed_result(
                f"the Ray node or actor running it died {attempts} times (last: node "
                f"{node.name}: {type(err).__name__})"), node.name)
        else:
            log.info("node %s lost (%s): job %s sent again", node.name, type(err).__name__,
                     job.id)
            self.queue.appendleft(job)
