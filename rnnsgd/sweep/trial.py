"""The function one Ray Tune trial runs: a pack of same-shape grid points (rnnsgd.sweep.packing), each from
its last checkpoint if it has one, each into its own run.

    start:  attach every point to its one MLflow run (the interrupted run the driver names, or the run an
            earlier attempt of this trial opened, else a new child of the sweep's parent); a point that an
            earlier attempt already ended is skipped; resume each from its checkpoint in storage when that
            checkpoint belongs to its run (a Tune retry after the trial's process died, or a sweep re-run
            after an interrupted driver), else start at step 0; a checkpoint that cannot be read back
            (truncated, corrupt) restarts its point alone from step 0, in a new run if its old one logged
            anything (the old one ends FAILED, tagged rnnsgd.restarted)
    loop:   rnnsgd.packed.PackedTrainer(cfgs, states).run(on_eval), in runs that fit the trial's memory budget
            (packing.split_to_fit); on_eval hands a point's metrics to its run (sent in batches,
            tracking.TrialRun), saves its checkpoint (trainer.state_dict() + the run id), closes its run at
            its last evaluation and reports to Tune (at most every REPORT_S); a resumed point first sends
            what its checkpoint's history holds and MLflow lacks
    end:    per point: FINISHED (completed / budget / diverged), FAILED with the traceback (an error in the
            learner: the point leaves the pack, no retry, it would fail again), KILLED (a Tune stop or
            Ctrl+C: SystemExit inside tune.report). An MLflow or storage failure (a checkpoint that cannot
            be written: a full disk) retries the whole trial: its ended points are skipped, the others
            resume from their checkpoints; on_eval raises it, and it ends the pack's run (PackedTrainer.run
            isolates the learner's errors, not on_eval's).

Checkpoints live by point id in the sweep's storage rather than in Tune's trial folders: a retry, a resumed
sweep and a grown grid all find them the same way, and Tune never snapshots its experiment per checkpoint.

Fault injection (rnnsgd.sweep.faults), a testing aid: the driver forwards RNNSGD_FAULT to its trials.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rnnsgd.config import TrialConfig
from rnnsgd.metrics import STEP
from rnnsgd.sweep import faults
from rnnsgd.sweep.diskspace import CHECKPOINT
from rnnsgd.sweep.faults import Fault
from rnnsgd.sweep.jobs import Job, TrialContext
from rnnsgd.sweep.spec import Point
from rnnsgd.sweep.tracking import RESTARTED, TrialRun, error_tag

# Reports to Tune at most this often, and at every point's end: a report costs a few ms of the trial's core
# and of the driver's, and a pack of 16 evaluates hundreds of times a minute. A Tune stop waits for the next.
REPORT_S = 1.0


class TrackingError(RuntimeError):
    """MLflow failed inside a trial: infrastructure, so Tune retries the trial (unlike a learner error)."""


class StorageError(TrackingError):
    """A checkpoint could not be written or read (a full disk, a lost mount): infrastructure as well, so
    Tune retries the trial, whose points resume from the checkpoints they have."""


class CheckpointError(Exception):
    """A checkpoint that is there but cannot be read back (truncated, corrupt): its point starts again."""


class PointStore:
    """Each point's latest checkpoint, at <storage>/<sweep>/points/<point_id>/checkpoint.pt, where storage is
    a path or a URI (shared storage, s3:// or gs:// on a cluster). Retries and later drivers find it by id."""

    def __init__(self, storage: str, sweep: str) -> None:
        import pyarrow.fs as pafs

        if "://" in storage:
            self.fs, root = pafs.FileSystem.from_uri(storage)
        else:
            self.fs, root = pafs.LocalFileSystem(), str(Path(storage).resolve())
        self.root = f"{root.rstrip('/')}/{sweep}/points"

    def path(self, point_id: str) -> str:
        return f"{self.root}/{point_id}/{CHECKPOINT}"

    def save(self, point_id: str, meta: dict[str, Any], state: dict[str, Any]) -> None:
        """Write the checkpoint beside the old one, then rename it over: never half a file. On a failure
        (StorageError) the old checkpoint stays and the partial one is removed, so that a full disk is not
        made fuller by the attempt."""
        path = self.path(point_id)
        buffer = io.BytesIO()  # serialized first: a failed write then says why (torch's zip writer does not)
        torch.save({"meta": meta, "state": state}, buffer)
        try:
            self.fs.create_dir(path.rpartition("/")[0], recursive=True)
            with self.fs.open_output_stream(f"{path}.tmp") as f:
                f.write(buffer.getbuffer())
            self.fs.move(f"{path}.tmp", path)
        except Exception as e:
            with contextlib.suppress(Exception):
                self.fs.delete_file(f"{path}.tmp")
            raise StorageError(f"cannot write the checkpoint {path}: {type(e).__name__}: {e}") from e

    def load(self, point_id: str) -> dict[str, Any] | None:
        """The point's checkpoint, or None when it has none; CheckpointError when the file is there but is not
        a checkpoint this code wrote (truncated, corrupt), StorageError when the storage cannot be read."""
        path = self.path(point_id)
        try:
            with self.fs.open_input_file(path) as f:
                data = f.read()
        except FileNotFoundError:
            return None
        except Exception as e:
            raise StorageError(f"cannot read the checkpoint {path}: {type(e).__name__}: {e}") from e
        try:
            saved = torch.load(io.BytesIO(data), weights_only=True)
        except Exception as e:
            raise CheckpointError(f"unreadable checkpoint {path}: {type(e).__name__}: {e}") from e
        meta = saved.get("meta") if isinstance(saved, dict) else None
        if not (isinstance(meta, dict) and "run_id" in meta and isinstance(saved.get("state"), dict)):
            raise CheckpointError(f"unreadable checkpoint {path}: not a checkpoint of rnnsgd")
        return saved

    def point_ids(self) -> list[str]:
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        return [i.base_name for i in infos if i.type == pafs.FileType.Directory]

    def delete(self, point_id: str) -> None:
        self.fs.delete_dir(f"{self.root}/{point_id}")


def _device(cfg: TrialConfig, gpus: list) -> str:
    """cuda when Ray gave this trial a GPU (and set CUDA_VISIBLE_DEVICES), else cpu; an explicit one stays."""
    if cfg.train.device != "auto":
        return cfg.train.device
    return "cuda" if gpus and torch.cuda.is_available() else "cpu"


@dataclass(eq=False)
class Member:
    """One point of the trial's pack: its config, run, resumed state and faults."""

    point: Point
    cfg: TrialConfig  # train.device resolved
    run: TrialRun
    state: dict[str, Any] | None  # the checkpoint's trainer state, None for a fresh start
    meta: dict[str, Any]  # the checkpoint's meta ({} for a fresh start)
    faults: list[Fault]
    ended: bool = False  # its run is closed
    last_ckpt: float = -float("inf")  # perf_counter() of its last checkpoint


def run_trial(config: dict[str, Any], ctx: TrialContext, packs: list[list[Job]]) -> None:
    """Tune function trainable: config = {"i": index into packs}; ctx = the sweep's shared settings."""
    Trial(ctx, packs[config["i"]]).run()


class Trial:
    """One trial's pack: each point attached to its run, trained, checkpointed, its run ended."""

    def __init__(self, ctx: TrialContext, jobs: list[Job]) -> None:
        import ray
        from ray import tune

        self.ctx = ctx
        self.device = _device(jobs[0].point.config, ray.get_gpu_ids())
        torch.set_num_threads(max(1, int(ctx.resources.cpu)))  # its CPU share: more threads only spin
        os.umask(ctx.umask)  # its checkpoints are as private as the driver's files
        self.store = PointStore(ctx.storage, ctx.sweep)
        self.counts = {"points_done": 0, "points_failed": 0}  # in this trial, earlier attempts included
        self.members = [mb for mb in map(self.attach, jobs) if mb is not None]
        tags = {
            "device": self.device,
            "rnnsgd.host": socket.gethostname(),
            "rnnsgd.trial_id": tune.get_context().get_trial_id(),
            "rnnsgd.node_id": ray.get_runtime_context().get_node_id(),  # a host may run several nodes
            "rnnsgd.pack_size": str(len(jobs)),
        }
        for mb in self.members:
            resumed = {"rnnsgd.resumed_from_step": str(mb.meta.get("step", 0))}
            self.track("start", mb.run.start, mb.point, {**tags, **resumed})
            if mb.state is not None:
                self.track("relog", mb.run.relog, mb.state["history"])  # what the killed attempt had not sent
        self.service_s = 0.0  # MLflow requests, checkpoints and Tune reports of every point of the pack
        self.reported = -float("inf")  # perf_counter() of the last Tune report
        self.t_start = time.perf_counter()

    def track(self, what: str, fn, *args):
        """fn(*args), an MLflow call: its failure is a TrackingError, which Tune retries."""
        try:
            return fn(*args)
        except Exception as e:
            uri = self.ctx.tracking_uri
            raise TrackingError(f"MLflow at {uri}: {what}: {type(e).__name__}: {e}") from e

    def attach(self, job: Job) -> Member | None:
        """The point's one run (the driver's interrupted run, or one an earlier attempt opened) and its
        checkpoint when that belongs to the run; None when an earlier attempt of this trial ended it."""
        point = job.point
        run = self.track("attach", TrialRun.attach, self.ctx, point, job.run_id)
        if run is None:
            self.counts["points_done"] += 1
            return None
        try:
            saved = self.store.load(point.point_id)
        except CheckpointError as e:
            run, saved = self.restart(point, run, str(e)), None
        if saved is not None and saved["meta"].get("run_id") != run.run_id:
            saved = None  # left by an earlier run of the point, which failed: start afresh
        state, meta = (saved["state"], saved["meta"]) if saved else (None, {})
        point_faults = [f for f in self.ctx.faults if f.matches(point.point_id)]
        cfg = point.config.replace(**{"train.device": self.device})
        return Member(point, cfg, run, state, meta, point_faults)

    def restart(self, point: Point, run: TrialRun, why: str) -> TrialRun:
        """An unreadable checkpoint: its point starts again from step 0, alone (its pack-mates resume from
        their own). A run that has logged metrics ends FAILED, tagged RESTARTED with the reason, and a new
        run takes the point, so that no run holds two histories; then the file goes (in this order, so that
        an attempt that dies in between finds the same state or the new run)."""
        print(f"rnnsgd: point {point.point_id}: {why}: it starts again from step 0", file=sys.stderr)
        if not run.new and self.track("restart", run.last_logged_step) >= 0:
            tags = {"rnnsgd.error": why[:500], RESTARTED: why[:500]}
            self.track("restart", run.finish, "error", tags)
            run = self.track("restart", TrialRun.create, self.ctx, point)
        try:
            self.store.delete(point.point_id)
        except Exception as e:
            path = self.store.path(point.point_id)
            raise StorageError(f"cannot delete {path}: {type(e).__name__}: {e}") from e
        return run

    def train_s(self, mb: Member) -> float:
        """Its pack's training time while it was in it, over all attempts: this attempt's time, less the
        MLflow requests, checkpoints and Tune reports of every point of the pack."""
        return mb.meta.get("train_s", 0.0) + (time.perf_counter() - self.t_start) - self.service_s

    def on_eval(self, mb: Member, metrics: dict[str, float], trainer) -> None:
        """Log the evaluation, checkpoint the point when it is due, end its run at its last evaluation,
        report to Tune at most every REPORT_S. MLflow's and the storage's failures end the pack's run."""
        from ray import tune

        t0 = time.perf_counter()
        step = int(metrics[STEP])
        self.log(mb, metrics, step, trainer, t0)
        if trainer.outcome is not None or t0 - self.reported >= REPORT_S:
            self.reported = t0
            tune.report({"step": step, **self.counts})  # where a Tune stop (Ctrl+C, a scheduler) reaches it
        self.service_s += time.perf_counter() - t0
        faults.kill_after_checkpoint(mb.faults, step, fresh=mb.state is None)

    def log(self, mb: Member, metrics: dict[str, float], step: int, trainer, t0: float) -> None:
        """The evaluation to MLflow, a checkpoint to storage when due (t0: now), the run's end at the last
        evaluation; StorageError or TrackingError when they fail (the trial is retried)."""
        every_s = self.ctx.checkpoint_every_s
        try:
            mb.run.log(metrics, step)
            if every_s == 0 or t0 - mb.last_ckpt >= every_s or trainer.outcome is not None:
                mb.last_ckpt = t0
                meta = {"run_id": mb.run.run_id, "step": step, "train_s": self.train_s(mb)}
                self.store.save(mb.point.point_id, meta, trainer.state_dict())
            if trainer.outcome is not None:
                mb.run.finish(trainer.outcome, tags={"rnnsgd.train_s": f"{self.train_s(mb):.3f}"})
                mb.ended = True
                self.counts["points_done"] += 1
        except StorageError as e:
            raise StorageError(f"at step {step}: {e}") from e
        except Exception as e:
            raise TrackingError(f"MLflow at step {step}: {type(e).__name__}: {e}") from e

    def run(self) -> None:
        """Train the pack in runs that fit the trial's memory, then end every run still open."""
        from ray import tune

        try:
            self.train()
            total_s = (time.perf_counter() - self.t_start) - self.service_s
            tune.report({"step": -1, "outcome": "done", "train_s": total_s, **self.counts})
        except TrackingError:
            raise  # Tune retries the trial from its points' checkpoints (FailureConfig)
        except (SystemExit, KeyboardInterrupt):  # a Tune stop (a scheduler, Ctrl+C on the driver)
            self.end_open("killed", {"rnnsgd.killed_reason": "stopped by Ray Tune"})
            raise
        except Exception:  # the pack's own stepping raised: every point still in it FAILED, and no retry
            tb = traceback.format_exc()
            self.end_open("error", {"rnnsgd.error": error_tag(tb)}, tb)
            train_s = time.perf_counter() - self.t_start
            tune.report({"step": -1, "outcome": "done", "train_s": train_s, **self.counts})

    def train(self) -> None:
        from rnnsgd.memory import pack_bytes
        from rnnsgd.packed import PackedTrainer
        from rnnsgd.sweep.packing import split_to_fit, trial_budget

        budget = trial_budget(torch.device(self.device), self.ctx.pack, self.ctx.resources)
        for part in split_to_fit([mb.cfg for mb in self.members], budget):
            group = [self.members[k] for k in part]
            cfgs = [mb.cfg for mb in group]
            packed = PackedTrainer(
                cfgs,
                [mb.state for mb in group],
                budget_bytes=max(budget, pack_bytes(cfgs)),  # a point alone may exceed it
            )
            for mb, trainer in zip(group, packed.trainers, strict=True):
                faults.arm_raise(trainer, mb.faults)

            def on_eval(k: int, metrics: dict[str, float], trainer, group=group) -> None:
                self.on_eval(group[k], metrics, trainer)

            for mb, result in zip(group, packed.run(on_eval, isolate_errors=True), strict=True):
                self.finish(mb, result)

    def finish(self, mb: Member, result) -> None:
        """End a point's run after its pack's run: FAILED when the learner raised (no retry: it would again),
        else FINISHED (resumed from a checkpoint taken at its end, only its run was left to close)."""
        if mb.ended:
            return
        if result.status == "error":
            _quietly(mb.run.finish, "error", {"rnnsgd.error": error_tag(result.error)}, result.error)
            self.counts["points_failed"] += 1
        else:
            tags = {"rnnsgd.train_s": f"{self.train_s(mb):.3f}"}
            self.track("finish", mb.run.finish, result.status, tags)
            self.counts["points_done"] += 1
        mb.ended = True

    def end_open(self, outcome: str, tags: dict[str, str], tb: str | None = None) -> None:
        """On the way out of a stop or a failure: every run still open ends with `outcome`."""
        for mb in self.members:
            if not mb.ended:
                _quietly(mb.run.finish, outcome, tags, tb)
                if outcome == "error":
                    self.counts["points_failed"] += 1


def _quietly(fn, *args) -> None:
    """Closing a run on the way out of a failure: report a second failure, do not mask the first."""
    try:
        fn(*args)
    except Exception:
        traceback.print_exc()
