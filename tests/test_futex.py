"""shared/futex.py: the wait that a group's own wake word ends (how a link operation reaches a
thread parked in futex_wait without waking every other thread on the guest's futex)."""

from __future__ import annotations

import ctypes
import threading
import time

import pytest

from wasmgroup.shared.futex import WakeWord, futex_waitv_works, futex_wake

SECOND = 1_000_000_000


def _waiting(target: object, *args: object) -> tuple[threading.Thread, list[str]]:
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(target(*args)))  # type: ignore
    thread.start()
    time.sleep(0.2)  # asleep in the kernel by now (a wake before it sleeps also counts)
    return thread, outcome


@pytest.fixture
def word() -> ctypes.c_uint32:
    return ctypes.c_uint32(7)


def test_a_wake_ends_only_the_waiter_of_its_own_word(word: ctypes.c_uint32) -> None:
    if not futex_waitv_works():
        pytest.skip("no futex_waitv on this kernel")
    address = ctypes.addressof(word)
    mine, other = WakeWord(), WakeWord()
    waiter, outcome = _waiting(mine.wait, address, 7, mine.value, 10 * SECOND)
    bystander, seen = _waiting(other.wait, address, 7, other.value, 10 * SECOND)
    mine.wake()
    waiter.join(5)
    assert outcome == ["wake"]
    assert seen == []  # still asleep: the guest's futex was not woken
    futex_wake(address, 1)
    bystander.join(5)
    assert seen == ["woken"]


def test_a_wake_before_the_wait_is_not_lost(word: ctypes.c_uint32) -> None:
    wake = WakeWord()
    seen = wake.value
    wake.wake()  # between reading the word and sleeping: the kernel sees it changed
    started = time.monotonic()
    outcome = wake.wait(ctypes.addressof(word), 7, seen, SECOND // 2)
    assert outcome == ("wake" if futex_waitv_works() else "timeout")
    if futex_waitv_works():
        assert time.monotonic() - started < 1


def test_the_guest_word_still_decides(word: ctypes.c_uint32) -> None:
    wake = WakeWord()
    address = ctypes.addressof(word)
    assert wake.wait(address, 8, wake.value, SECOND) == "mismatch"
    started = time.monotonic()
    assert wake.wait(address, 7, wake.value, 50_000_000) == "timeout"
    assert 0.04 < time.monotonic() - started < 2
