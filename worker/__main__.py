"""`python -m wasmgroup.worker FD`: a worker process (see worker/main.py).

A worker the pool starts ahead of need imports wasmtime and creates its engine at idle CPU
priority (SCHED_IDLE), so that starting it never slows the program's running threads; it
returns to normal priority before it serves anything (and before it starts other threads,
which inherit the policy). A thread that needs a worker before any is ready gets one started
at normal priority.
"""

import contextlib
import os
import sys

if os.environ.pop("WASMGROUP_WORKER_BACKGROUND", None) == "1":
    # Not Linux, or not permitted: start at normal priority.
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

from wasmgroup.worker.main import main

sys.exit(main())
