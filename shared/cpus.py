"""How many CPUs this process may actually use.

`os.cpu_count()` counts the machine's CPUs; a process pinned with `taskset`, or a container
given a CPU quota, gets fewer. Used for the default worker pool size and for the guest's
`thread_parallelism` (what `sysconf(_SC_NPROCESSORS_ONLN)` reports).
"""

from __future__ import annotations

import math
import os
import sys

CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"
GIL_TURN_SECONDS = 0.0005  # (Python's default: 5 ms)


def short_gil_turns() -> None:
    """Let a thread that wants the GIL have it after 0.5 ms rather than 5 ms, in a process
    whose threads mostly wait and then answer (the coordinator, a worker): with the default,
    a reader thread holding a spawn, a memory.grow or an ack waited up to 5 ms behind
    whichever thread computed (a standby group's replay log, a new worker's set-up), several
    times in a burst of pthread_creates. Only lowers it."""
    if sys.getswitchinterval() > GIL_TURN_SECONDS:
        sys.setswitchinterval(GIL_TURN_SECONDS)


def usable_cpus() -> int:
    """The CPUs in this process's affinity mask, lowered to the cgroup's CPU quota; >= 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    try:
        with open(CGROUP_CPU_MAX, encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        if quota != "max" and int(period) > 0:
            count = min(count, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota visible: the affinity mask is the limit
    return max(1, count)
