"""`rnnsgd status`: how much of a sweep's grid MLflow holds, in total and per axis value.

A point is done (it has a FINISHED run), failed (its latest run FAILED), running (its run is RUNNING under a
live driver) or missing (never run, stopped, or orphaned by a driver that is gone). The grid comes from the
sweep file, or, given a sweep name, from the definition its parent run stored.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from rnnsgd.config import format_value
from rnnsgd.sweep.spec import Sweep
from rnnsgd.sweep.tracking import (
    DRIVER,
    STATES,
    SweepTracker,
    check_reachable,
    driver_alive,
    point_state,
    resolve_tracking_uri,
    store_exists,
)


@dataclass
class Coverage:
    sweep: Sweep
    states: dict[str, str]  # point_id -> one of STATES
    outcomes: Counter = field(default_factory=Counter)  # outcome tags of the done points
    orphaned: int = 0  # RUNNING runs whose driver is gone (counted as missing)
    outside: int = 0  # points with runs under the parent that this grid does not hold

    def totals(self) -> Counter:
        return Counter(self.states.values())

    def by_axis(self) -> list[tuple[str, str, Counter]]:
        """(key, value, counts of STATES) for every value of every key that varies in the grid."""
        rows = []
        for key in self.sweep.varying_keys():
            for value in dict.fromkeys(p.flat[key] for p in self.sweep.points):
                c = Counter(self.states[p.point_id] for p in self.sweep.points if p.flat[key] == value)
                rows.append((key, format_value(value), c))
        return rows


def coverage(sweep: Sweep, children: dict, live_driver: bool) -> Coverage:
    cov = Coverage(sweep, {})
    for p in sweep.points:
        state, run = point_state(children.get(p.point_id, []))
        if state == "running" and not live_driver:
            state = "missing"
            cov.orphaned += 1
        if state == "done":
            cov.outcomes[run.outcome or "?"] += 1
        cov.states[p.point_id] = state
    cov.outside = len(set(children) - set(cov.states))
    return cov


def render(cov: Coverage, uri: str, parent) -> str:
    t = cov.totals()
    total = len(cov.sweep.points)
    lines = [f"sweep {cov.sweep.name}  ({cov.sweep.source}; tracking {uri})"]
    if parent is None:
        lines.append("never run: no parent run in MLflow yet")
    else:
        alive = driver_alive(parent)
        driver = parent.data.tags.get(DRIVER, "?")
        running = f", driver {driver} running" if alive else ""
        lines.append(f"parent run {parent.info.run_id}: {parent.info.status}{running}")
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(cov.outcomes.items()))
    outcomes = f" ({outcomes})" if outcomes else ""
    lines.append(
        f"points {total}: done {t['done']}{outcomes}, failed {t['failed']}, running {t['running']}, "
        f"missing {t['missing']}"
    )
    if cov.orphaned:
        lines.append(
            f"{cov.orphaned} run(s) RUNNING under a driver that is gone: re-run the sweep to resume them"
        )
    if cov.outside:
        lines.append(f"{cov.outside} point(s) with runs under this sweep lie outside this grid")
    rows = cov.by_axis()
    if rows:
        kw = max(len("axis"), *(len(k) for k, _, _ in rows))
        vw = max(len("value"), *(len(v) for _, v, _ in rows))
        lines.append("")
        lines.append(f"{'axis':<{kw}}  {'value':<{vw}}  " + "  ".join(f"{s:>7}" for s in STATES))
        previous = None
        for key, value, c in rows:
            name = key if key != previous else ""
            previous = key
            lines.append(f"{name:<{kw}}  {value:<{vw}}  " + "  ".join(f"{c[s]:>7}" for s in STATES))
    return "\n".join(lines)


def sweep_status(sweep: Sweep, tracking_uri: str | None = None) -> tuple[Coverage, str]:
    """(coverage, rendered text) of a sweep; an unreachable tracking URI raises SweepError."""
    uri, where = resolve_tracking_uri(tracking_uri, sweep.tracking_uri, sweep.source)
    check_reachable(uri, where)
    tracker = SweepTracker(uri) if store_exists(uri) else None
    found = tracker.parent_info(sweep.name) if tracker else None
    children, parent = {}, None
    if found is not None:
        experiment_id, parent = found
        children = tracker.children(experiment_id, parent.info.run_id)
    cov = coverage(sweep, children, live_driver=parent is not None and driver_alive(parent))
    return cov, render(cov, uri, parent)
