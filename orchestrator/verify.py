"""`--verify-groups`: do all instance groups agree on the link topology?

Each group describes itself as a `GroupState` (plain data, taken on the group's own thread
at a safe point): which module handles it has instantiated, what sits in every table slot
(`module:export`, `module:<unexported>` or `null`), and the value of every non-TLS GOT global.
`first_difference` compares them and names the first disagreement, or returns None.
"""

from __future__ import annotations

from wasmgroup.shared.plan import GroupState


def first_difference(states: list[GroupState]) -> str | None:
    """The first way in which a group differs from the first one, as one sentence."""
    if len(states) < 2:
        return None
    ref = states[0]
    for other in states[1:]:
        who = f"thread {other.thread_id} differs from thread {ref.thread_id}"
        if other.handles != ref.handles:
            return f"{who}: modules {list(other.handles)} vs {list(ref.handles)}"
        if len(other.table) != len(ref.table):
            return f"{who}: table length {len(other.table)} vs {len(ref.table)}"
        for slot, (mine, theirs) in enumerate(zip(other.table, ref.table, strict=True)):
            if mine != theirs:
                return f"{who}: table slot {slot} holds {mine} vs {theirs}"
        if other.got != ref.got:
            reference = dict(ref.got)
            for key, value in other.got:
                if reference.get(key) != value:
                    return f"{who}: {key} = {value:#x} vs {reference.get(key, 'missing')}"
            return f"{who}: GOT entries {len(other.got)} vs {len(ref.got)}"
    return None
