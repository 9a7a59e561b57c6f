"""`python -m wasmgroup.worker FD`: a worker process (see worker/main.py).

A worker the pool starts ahead of need imports wasmtime and creates its engine at idle CPU
priority (SCHED_IDLE), so that starting it never slows the program's running threads; it
returns to normal priority before it serves anything (and before it starts other threads,
which inherit the policy). A thread that needs a worker before any is ready gets one started
at normal priority.

Ctrl-C is the coordinator's to handle: the coordinator starts every worker with SIGINT blocked
(a signal mask survives exec), so that not even the interpreter's start-up can be
interrupted, and the worker ignores it before anything else, which discards one already
pending. Workers stay in the coordinator's process group, the terminal's foreground group:
there they may read the terminal and write to it, and Ctrl-Z stops them with it.
"""

import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

import contextlib  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

if os.environ.pop("WASMGROUP_WORKER_BACKGROUND", None) == "1":
    # Not Linux, or not permitted: start at normal priority.
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

from wasmgroup.worker.main import main  # noqa: E402

code = main()
# Told to leave: nothing is left to save, and the coordinator waits for this exit (the
# interpreter's teardown of a worker's objects takes milliseconds).
for stream in (sys.stdout, sys.stderr):
    with contextlib.suppress(OSError, ValueError):
        stream.flush()
os._exit(code)
