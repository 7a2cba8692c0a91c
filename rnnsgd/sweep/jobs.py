"""What the driver hands its Ray Tune trials, and what they hand back: the sweep's shared settings and each
trial's jobs, built once by the runner (rnnsgd.sweep.runner), and the messages a trial reports about its
points (rnnsgd.sweep.trial), which the driver writes to MLflow (rnnsgd.sweep.recorder). A trial never talks
to MLflow itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rnnsgd.sweep.faults import Fault
from rnnsgd.sweep.spec import Pack, Point, Resources

MESSAGES = "rnnsgd.messages"  # the key of a Tune report that carries a trial's messages since its last one


@dataclass(frozen=True)
class TrialContext:
    """The settings every trial of one driver's run shares."""

    sweep: str  # the sweep's name: the storage's folder
    faults: tuple[Fault, ...]  # RNNSGD_FAULT, parsed by the driver (rnnsgd.sweep.faults)
    storage: str  # a path or a URI: where the points' checkpoints live (trial.PointStore)
    checkpoint_every_s: float
    resources: Resources  # one trial's share
    pack: Pack  # pack.memory_fraction bounds what a trial's pack may use
    umask: int  # the driver's, which the trials take on


@dataclass(frozen=True)
class Job:
    """One point a trial trains. run_key names the point's run: its checkpoints carry it, so that a point
    resumes only from a checkpoint of the run it is in (a re-run after a FAILED run starts afresh). run_id is
    the driver's: the interrupted run it re-attaches the point to (None: a new run, created when the trial
    first reports)."""

    point: Point
    run_key: str
    run_id: str | None = None


@dataclass(frozen=True)
class Message:
    """What a trial tells the driver about one of its points, in the order it happened:

    start    data: the run's tags for this attempt (host, trial, device, the step it resumed from)
    restart  data: why its checkpoint was unreadable: it starts again from step 0, in a new run if its
             run has logged anything (the old one ends FAILED)
    evals    data: evaluations (metrics dicts with "step"), a resumed checkpoint's history first; the
             driver logs those of a step past the last one its run holds, so none is logged twice
    end      data: {"outcome", "tags", "traceback"}: the run ends (rnnsgd.sweep.tracking.OUTCOME_STATUS)
    """

    point_id: str
    kind: str  # start | restart | evals | end
    data: Any
