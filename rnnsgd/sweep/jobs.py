"""What the driver hands its Ray Tune trials: the sweep's shared settings and each trial's jobs, built once by
the runner (rnnsgd.sweep.runner) and read by attribute in the trial (rnnsgd.sweep.trial)."""

from __future__ import annotations

from dataclasses import dataclass

from rnnsgd.sweep.faults import Fault
from rnnsgd.sweep.spec import Pack, Point, Resources


@dataclass(frozen=True)
class TrialContext:
    """The settings every trial of one driver's run shares."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    sweep: str  # the sweep's name: MLflow's experiment and the storage's folder
    git_sha: str
    faults: tuple[Fault, ...]  # RNNSGD_FAULT, parsed by the driver (rnnsgd.sweep.faults)
    storage: str  # a path or a URI: where the points' checkpoints live (trial.PointStore)
    checkpoint_every_s: float
    resources: Resources  # one trial's share
    pack: Pack  # pack.memory_fraction bounds what a trial's pack may use
    planned_ms: int  # when the driver planned: a run FAILED after this ended in an attempt of its trial
    umask: int  # the driver's, which the trials take on


@dataclass(frozen=True)
class Job:
    """One point a trial trains, and the run the driver re-attaches it to (None: a new or the live run)."""

    point: Point
    run_id: str | None = None
