"""Signals a thread sends to itself or to its own program: `raise`, `abort`, `kill(getpid())`.

wasix-libc's `raise(sig)` is `thread_signal(own tid, sig)`, `kill(pid, sig)` is
`proc_signal(pid, sig)`, and `abort()` raises SIGABRT, then blocks every signal, raises it
again and, should that return, calls `_Exit(127)`. Signal numbers are Linux's.

A signal is delivered at once, in the calling thread (a signal to the program picks it, as
POSIX allows), through the export the guest registered with `callback_signal` (wasix-libc's
`__wasm_signal`, which runs the guest's handler, or libc's default one). It takes its
default action instead, as for a native process: when the guest registered no callback, or
one it does not export (`__wasm_signal_blocked`: abort() blocked all signals); when the
callback traps (wasix-libc's does for a signal at its default disposition until the program
has called sigaction once); for SIGKILL; and for a signal raised again while its own delivery
runs (blocked during its handler: libc's default handlers end in abort()). The default
action ends the program with status 128 + the signal, as shells report a process killed by
it, with a line naming it; SIGCHLD, SIGCONT, SIGURG and SIGWINCH are ignored, and so are the
stop signals (a guest has no job control). Signals to other threads are not delivered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import wasmtime

from wasmgroup.worker.host.wasix import GuestExit

if TYPE_CHECKING:
    from wasmgroup.worker.group import InstanceGroup

ESUCCESS, EINVAL = 0, 28
MAIN_HANDLE = 1
MAX_SIGNAL = 64

SIGNAL_NAMES = {
    1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT",
    7: "SIGBUS", 8: "SIGFPE", 9: "SIGKILL", 10: "SIGUSR1", 11: "SIGSEGV", 12: "SIGUSR2",
    13: "SIGPIPE", 14: "SIGALRM", 15: "SIGTERM", 16: "SIGSTKFLT", 17: "SIGCHLD", 18: "SIGCONT",
    19: "SIGSTOP", 20: "SIGTSTP", 21: "SIGTTIN", 22: "SIGTTOU", 23: "SIGURG", 24: "SIGXCPU",
    25: "SIGXFSZ", 26: "SIGVTALRM", 27: "SIGPROF", 28: "SIGWINCH", 29: "SIGIO", 30: "SIGPWR",
    31: "SIGSYS",
}
SIGKILL = 9
MAIN_THREAD = 1
WASIX_LIBC_MAIN_TID = 0x3FFFFFFF
IGNORED_BY_DEFAULT = frozenset({17, 18, 23, 28, 19, 20, 21, 22})  # CHLD CONT URG WINCH, stops


def signal_name(signal: int) -> str:
    return SIGNAL_NAMES.get(signal, f"SIGRT{signal}")


class GuestSignal(GuestExit):
    """The program ends by a signal's default action: status 128 + signal."""

    def __init__(self, signal: int) -> None:
        super().__init__(128 + signal)
        self.signal = signal
        self.name = signal_name(signal)


class SignalState:
    """One thread's view: the registered callback, and the signals being delivered."""

    def __init__(self) -> None:
        self.callback: str | None = None
        self.delivering: set[int] = set()


def raise_signal(group: InstanceGroup, signal: int) -> int:
    """Deliver `signal` to the calling thread; a WASI errno (or the program ends)."""
    if signal == 0:
        return ESUCCESS  # kill(pid, 0): only asks whether the target exists
    if not 0 < signal <= MAX_SIGNAL:
        return EINVAL
    state = group.signals
    handler = _callback(group, state.callback)
    if handler is not None and signal != SIGKILL and signal not in state.delivering:
        state.delivering.add(signal)
        callback = state.callback
        try:
            handler(group.store, signal)
            return ESUCCESS
        except (wasmtime.Trap, wasmtime.WasmtimeError):
            # The guest could not handle it: wasix-libc's __wasm_signal traps (a null
            # function pointer) for a signal left at its default until a first sigaction.
            state.callback = callback  # it had blocked signals before trapping
        finally:
            state.delivering.discard(signal)
    if signal in IGNORED_BY_DEFAULT:
        return ESUCCESS
    raise GuestSignal(signal)


def is_own_thread(group: InstanceGroup, tid: int) -> bool:
    """Whether `tid`, a pthread's id, names the calling thread. wasix-libc's main thread
    keeps the id it starts with, which no spawned thread can have (they stay below 2^29)."""
    return tid == group.thread_id or (group.thread_id == MAIN_THREAD
                                      and tid == WASIX_LIBC_MAIN_TID)


def _callback(group: InstanceGroup, name: str | None) -> wasmtime.Func | None:
    """The registered export, if the main module has it as a function of type (i32) -> ()."""
    instance = group.instances.get(MAIN_HANDLE)
    if name is None or instance is None:
        return None
    func = instance.exports(group.store).get(name)
    if not isinstance(func, wasmtime.Func):
        return None
    func_type = func.type(group.store)
    if [str(t) for t in func_type.params] != ["i32"] or func_type.results:
        return None
    return func


__all__ = ["GuestSignal", "SignalState", "is_own_thread", "raise_signal", "signal_name"]
