"""`wasmgroup trace FILE`: read a `--trace` file back (see trace.py for its lines).

- `report`: operations by kind with p50/p95/max of each phase, spawns from a standby group
  vs cold, the slowest operations.
- `write_chrome`: the Chrome trace-event format (a `traceEvents` list of complete `X` spans
  and `M` metadata), which Perfetto and chrome://tracing open: one track per wasm thread,
  each link operation a span on its instigator's track with its phases nested inside, each
  other group's share of the broadcast on that group's track, thread lifetimes as spans.
- `write_plot`: the same timeline as a picture (needs matplotlib, an optional extra).

Trace lines are written when an operation ends, with `at_ms`; an operation's start is
`at_ms - total_ms` and its phases follow one another from there in the order below.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import IO, Any

LINK_OPS = ("start", "dlopen", "dlsym", "spawn")
# The phases of an operation in the order they happen, as trace fields (compile_ms is
# inside plan_ms, group_apply_ms inside broadcast_ms: not laid end to end).
PHASES = ("lock_wait_ms", "plan_ms", "replay_ms", "apply_ms", "broadcast_ms", "verify_ms")
SUMMARY_FIELDS = ("total_ms", "lock_wait_ms", "plan_ms", "compile_ms", "replay_ms", "apply_ms",
                  "broadcast_ms", "verify_ms")
SLOWEST = 5


class TraceError(Exception):
    """The file is not a wasmgroup trace (the message names the line)."""


def read_trace(path: Path) -> list[dict[str, Any]]:
    records = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                reason = err.msg if isinstance(err, json.JSONDecodeError) else "not UTF-8"
                raise TraceError(f"{path}:{number}: not a JSON line ({reason})") from None
            if (not isinstance(record, dict) or not isinstance(record.get("op"), str)
                    or not _is_number(record.get("at_ms"))):
                raise TraceError(f"{path}:{number}: not a trace line (needs op and a finite "
                                 "at_ms)")
            records.append(record)
    if not records:
        raise TraceError(f"{path}: empty: no trace lines")
    return records


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(
        value)


def _ms(record: dict[str, Any], key: str) -> float:
    value = record.get(key, 0.0)
    return float(value) if _is_number(value) and value >= 0 else 0.0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def _describe(record: dict[str, Any]) -> str:
    op = record["op"]
    what = record.get("name") or (f"thread {record['new_thread']}"
                                  if "new_thread" in record else "")
    phases = ", ".join(f"{key[:-3].replace('_', ' ')} {_ms(record, key):.1f}"
                       for key in PHASES if key in record)
    return (f"{op} {what} by thread {record.get('thread')}: {_ms(record, 'total_ms'):.1f} ms"
            + (f" ({phases})" if phases else "") + ("" if record.get("ok", True) else " FAILED"))


def report(records: list[dict[str, Any]], out: IO[str]) -> None:
    header = next((r for r in records if r["op"] == "trace"), {})
    ops = [r for r in records if r["op"] in LINK_OPS]
    threads = {r.get("thread") for r in records if r["op"] == "thread_start"} | {1}
    span = max(_ms(r, "at_ms") for r in records)
    print(f"trace of {header.get('program', '?')} (wasmgroup {header.get('wasmgroup', '?')}, "
          f"wasmtime {header.get('wasmtime', '?')}): {len(ops)} link operations, "
          f"{len(threads)} threads, {span:.1f} ms", file=out)
    print(f"\n{'operation':<10}{'count':>6}{'failed':>7}  {'phase (ms)':<14}{'p50':>9}"
          f"{'p95':>9}{'max':>9}", file=out)
    for kind in LINK_OPS:
        of_kind = [r for r in ops if r["op"] == kind]
        if not of_kind:
            continue
        failed = sum(1 for r in of_kind if r.get("ok") is False)
        first = True
        for field in SUMMARY_FIELDS:
            values = [_ms(r, field) for r in of_kind if field in r]
            if not values:
                continue
            label = f"{kind:<10}{len(of_kind):>6}{failed:>7}" if first else " " * 23
            first = False
            print(f"{label}  {field[:-3]:<14}{percentile(values, 0.5):>9.2f}"
                  f"{percentile(values, 0.95):>9.2f}{max(values):>9.2f}", file=out)
    spawns = [r for r in ops if r["op"] == "spawn"]
    if spawns:
        standby = sum(1 for r in spawns if r.get("standby"))
        print(f"\nspawns: {len(spawns)}: {standby} from a standby group, "
              f"{len(spawns) - standby} cold", file=out)
    if ops:
        print("\nslowest:", file=out)
        for record in sorted(ops, key=lambda r: -_ms(r, "total_ms"))[:SLOWEST]:
            print(f"  {_describe(record)}", file=out)


def _span(name: str, start_ms: float, dur_ms: float, tid: int, cat: str,
          args: dict[str, Any] | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"name": name, "cat": cat, "ph": "X", "ts": round(start_ms * 1000, 1),
                             "dur": round(max(dur_ms, 0.0) * 1000, 1), "pid": 1, "tid": tid}
    if args:
        event["args"] = args
    return event


def chrome_events(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    header = next((r for r in records if r["op"] == "trace"), {})
    end = max(_ms(r, "at_ms") for r in records)
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "ts": 0, "pid": 1, "tid": 0,
         "args": {"name": f"wasmgroup {header.get('program', '')}".strip()}}]
    names: dict[int, str] = {1: "main thread"}
    started: dict[int, float] = {1: 0.0}
    for record in records:
        op, tid = record["op"], record.get("thread")
        if not isinstance(tid, int):
            continue
        at = _ms(record, "at_ms")
        if op == "start" and "pid" in record:
            names[1] = f"main thread (pid {record['pid']})"
        if op == "thread_start":
            names[tid] = f"thread {tid} (pid {record.get('pid')})"
            started[tid] = at
        elif op == "thread_exit":
            since = started.pop(tid, 0.0)
            events.append(_span(f"thread {tid}", since, at - since, tid, "thread",
                                {"how": record.get("how"), "code": record.get("code")}))
        elif op in LINK_OPS:
            total = _ms(record, "total_ms")
            begin = at - total
            args = {k: v for k, v in record.items() if k not in ("op", "thread")}
            label = f"{op} {record.get('name', record.get('new_thread', ''))}".strip()
            events.append(_span(label, begin, total, tid, "link", args))
            cursor = begin
            broadcast_at = begin
            for phase in PHASES:
                if phase in record:
                    if phase == "broadcast_ms":
                        broadcast_at = cursor
                    events.append(_span(phase[:-3], cursor, _ms(record, phase), tid, "phase"))
                    cursor += _ms(record, phase)
            applied = record.get("group_apply_ms")
            if isinstance(applied, dict):
                for other, spent in applied.items():
                    if str(other).lstrip("-").isdigit() and _is_number(spent):
                        events.append(_span(f"apply {label}", broadcast_at, float(spent),
                                            int(other), "group"))
    for tid, since in started.items():  # threads still running when the trace ended
        events.append(_span(f"thread {tid}", since, end - since, tid, "thread"))
    for tid, name in names.items():
        events.append({"name": "thread_name", "ph": "M", "ts": 0, "pid": 1, "tid": tid,
                       "args": {"name": name}})
    return events


def write_chrome(records: list[dict[str, Any]], out: Path) -> None:
    document = {"traceEvents": chrome_events(records), "displayTimeUnit": "ms"}
    out.write_text(json.dumps(document), encoding="utf-8")


PHASE_COLOURS = {"lock_wait": "#bbbbbb", "plan": "#4c72b0", "replay": "#8172b2",
                 "apply": "#55a868", "broadcast": "#dd8452", "verify": "#c44e52",
                 "group": "#f2b880"}


def write_plot(records: list[dict[str, Any]], out: Path) -> None:
    """A timeline: one row per thread, its lifetime, link operations coloured by phase."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        raise TraceError("--plot needs matplotlib: pip install 'wasmgroup[plot]'") from None
    events = [e for e in chrome_events(records) if e["ph"] == "X"]
    tids = sorted({e["tid"] for e in events} | {1})
    row = {tid: i for i, tid in enumerate(tids)}
    figure, axes = plt.subplots(figsize=(12, 1.2 + 0.35 * len(tids)))
    for event in events:
        start, width = event["ts"] / 1000, event["dur"] / 1000
        y = row[event["tid"]]
        if event["cat"] == "thread":
            axes.barh(y, width, left=start, height=0.8, color="#e8eef7", edgecolor="#c0c8d8",
                      zorder=1)
        elif event["cat"] == "phase":
            axes.barh(y, max(width, 0.05), left=start, height=0.5,
                      color=PHASE_COLOURS.get(event["name"], "#999999"), zorder=2)
        elif event["cat"] == "group":
            axes.barh(y, max(width, 0.05), left=start, height=0.3, color=PHASE_COLOURS["group"],
                      zorder=3)
    axes.set_yticks(range(len(tids)), [f"thread {t}" if t != 1 else "main" for t in tids])
    axes.invert_yaxis()
    axes.set_xlabel("ms since start")
    header = next((r for r in records if r["op"] == "trace"), {})
    axes.set_title(f"wasmgroup link activity: {Path(str(header.get('program', ''))).name}")
    axes.legend(handles=[Patch(color=c, label=n) for n, c in PHASE_COLOURS.items()],
                loc="upper right", fontsize="small", ncol=4)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
