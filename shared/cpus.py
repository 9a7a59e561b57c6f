"""How many CPUs this process may actually use.

`os.cpu_count()` counts the machine's CPUs; a process pinned with `taskset`, or a container
given a CPU quota, gets fewer. Used for the default worker pool size and for the guest's
`thread_parallelism` (what `sysconf(_SC_NPROCESSORS_ONLN)` reports).
"""

from __future__ import annotations

import math
import os

CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"


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
