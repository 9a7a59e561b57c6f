"""Seeded schedule perturbation, for `wasmgroup stress`: short random delays at the points
where the order of link operations between threads is decided, so that rare interleavings
happen, and happen again from the same seed.

A group's delays come from its own stream, derived from (seed, thread id) alone: the same
seed gives every thread the same sequence of delays in every run, so a run replays as far as
the operating system's own timing allows. Without a seed no `Perturbation` exists and the
places below cost nothing (an attribute that is None, checked off the fast path).

Where a group pauses (each time with probability PAUSE_PROBABILITY, for a time drawn
uniformly from [0, max_delay]):
- before a link request leaves for the coordinator (dlopen, dlsym, spawn, closures: safe
  points where this thread's operation races other threads' for the topology lock);
- at a safe point, before applying an operation another group broadcast;
- before acknowledging it (the instigator and every other group wait on that).
"""

from __future__ import annotations

import time

PAUSE_PROBABILITY = 0.5


class Perturbation:
    """The delays of one group: `pause()` at each perturbation point."""

    def __init__(self, seed: int, thread_id: int, max_delay: float) -> None:
        import random  # (`stress` only: every worker imports this module at start)

        # A string seed is hashed with SHA-512 by `random`: stable across processes and runs
        # (unlike hash() of a tuple under hash randomisation).
        self._random = random.Random(f"wasmgroup-perturb:{seed}:{thread_id}")
        self.max_delay = max_delay

    def pause(self) -> None:
        # Two draws every time, paused or not: the stream's position depends only on how many
        # points were passed, not on what was drawn at them.
        pauses = self._random.random() < PAUSE_PROBABILITY
        delay = self._random.uniform(0.0, self.max_delay)
        if pauses and delay > 0:
            time.sleep(delay)


def from_config(config: object, thread_id: int) -> Perturbation | None:
    """The perturbation an assign config's `perturb` field asks for ({seed, max_delay}),
    for the group of `thread_id`; None when it asks for none."""
    if not isinstance(config, dict):
        return None
    return Perturbation(int(config["seed"]), thread_id, float(config["max_delay"]))


__all__ = ["PAUSE_PROBABILITY", "Perturbation", "from_config"]
