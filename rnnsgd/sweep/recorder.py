"""The points' runs in MLflow, written by the driver: a Ray Tune callback that turns what the trials report
(jobs.Message, under jobs.MESSAGES in their Tune reports) into their points' runs.

Trials never talk to MLflow, so that a trial's process needs neither MLflow nor a route to its server (on a
cluster, MLflow stays on the head's loopback). Per point, in the order its trial told it:

    a point's run is created (a new point) or re-opened (the interrupted run the plan re-attaches) at its
    first message; `start` tags it; `evals` are logged at steps past the last its run holds, so that what a
    retried or resumed trial sends again is logged once; `end` ends it, after which it takes nothing more
    (a retried trial says again how its ended points ended); `restart` (an unreadable checkpoint) ends a run
    that has logged anything FAILED, tagged RESTARTED, and the point goes on in a new run

Metrics are buffered and sent every PointRun.FLUSH_S, at a run's end and at `close`. An MLflow failure stops
the sweep: TrackingError out of the callback ends Tune's run, `error` says why for the driver's close-up, and
a re-run resumes every point from its checkpoint, the history MLflow lacks included.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from ray.tune import Callback

from rnnsgd.console import one_line
from rnnsgd.sweep.jobs import MESSAGES, Job, Message
from rnnsgd.sweep.tracking import RESTARTED, PointRun, SweepRun, error_tag

CHECK_S = 1.0  # how often the driver's loop looks for buffers due


class TrackingError(RuntimeError):
    """MLflow failed in the driver: the sweep stops, and a re-run resumes its points."""


@dataclass(eq=False)
class _Point:
    job: Job
    run: PointRun | None = None  # opened at the point's first message
    ended: bool = False


class Recorder(Callback):
    def __init__(self, where: SweepRun, jobs: list[Job]) -> None:
        self.where = where
        self.points = {j.point.point_id: _Point(j) for j in jobs}
        self.open: dict[str, _Point] = {}  # the points whose run is open
        self.error: str | None = None  # what MLflow raised, when it did
        self.checked = time.monotonic()

    # -------------------------------------------------------------------------------- Tune's hooks

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        messages = result.pop(MESSAGES, ())  # out of the result Tune keeps: it is written once, here
        self._guarded(self._take, messages)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self.checked >= CHECK_S:
            self.checked = time.monotonic()
            self._guarded(self._flush, True)

    # -------------------------------------------------------------------------------- the driver's

    def fail(self, job: Job, why: str) -> None:
        """End FAILED, with `why` as its traceback, the run of a point whose trial Tune gave up on (its
        retries spent), unless the point ended before; a point that never reported gets a run for it."""
        p = self.points[job.point.point_id]
        if not p.ended:
            self._end(p, "error", {}, why)

    def close(self) -> None:
        """Send every buffered metric (before the driver settles the runs still open)."""
        self._flush(False)

    # -------------------------------------------------------------------------------- messages

    def _guarded(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:
            self.error = f"MLflow at {self.where.tracking_uri} failed: {one_line(e)}"
            raise TrackingError(self.error) from e

    def _take(self, messages: list[Message]) -> None:
        for m in messages:
            p = self.points.get(m.point_id)
            if p is None or p.ended:
                continue
            if m.kind == "restart":
                self._restart(p, m.data)
            elif m.kind == "start":
                self._opened(p).tag(m.data)
            elif m.kind == "evals":
                self._opened(p).log(m.data)
            else:
                self._end(p, **m.data)

    def _opened(self, p: _Point) -> PointRun:
        if p.run is None:
            job, uri = p.job, self.where.tracking_uri
            if job.run_id is None:
                p.run = PointRun.create(self.where, job.point, job.run_key)
            else:
                p.run = PointRun.reopen(uri, job.run_id, job.point, job.run_key)
            self.open[job.point.point_id] = p
        return p.run

    def _end(self, p: _Point, outcome: str, tags: dict[str, str], traceback: str | None) -> None:
        if outcome == "error" and traceback:
            tags = {**tags, "rnnsgd.error": error_tag(traceback)}
        self._opened(p).finish(outcome, tags, traceback)
        p.ended = True
        del self.open[p.job.point.point_id]

    def _restart(self, p: _Point, why: str) -> None:
        """A run that holds evaluations ends FAILED, RESTARTED with the reason, so that no run holds two
        histories; the point's next message opens a new run, under the same key."""
        if p.run is None and p.job.run_id is None:
            return  # its run is not created yet: it will start at step 0
        run = self._opened(p)
        if run.last_step < 0:
            return
        run.finish("error", {"rnnsgd.error": why[:500], RESTARTED: why[:500]})
        p.run, p.job = None, replace(p.job, run_id=None)
        del self.open[p.job.point.point_id]

    def _flush(self, due_only: bool) -> None:
        for p in self.open.values():
            if not due_only or p.run.due():
                p.run.flush()
