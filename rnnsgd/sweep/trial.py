"""The function one Ray Tune trial runs: a pack of same-shape grid points (rnnsgd.sweep.packing), each from
its last checkpoint if it has one. A trial never talks to MLflow: it reports what happens to its points
(jobs.Message) with its Tune reports, and the driver writes their runs (rnnsgd.sweep.recorder), so that the
trials' processes need neither MLflow nor a route to its server.

    start:  resume each point from its checkpoint in storage when that checkpoint belongs to its run (the
            job's run_key: a Tune retry after the trial's process died, or a sweep re-run after an
            interrupted driver), else start at step 0; a checkpoint that cannot be read back (truncated,
            corrupt) is deleted and its point alone starts again from step 0 (`restart`); tell the driver
            (`start`, with the resumed checkpoint's history as `evals`), at once
    loop:   rnnsgd.packed.PackedTrainer(cfgs, states).run(on_eval), in runs that fit the trial's memory budget
            (packing.split_to_fit); on_eval queues a point's evaluation (`evals`), saves its checkpoint
            (trainer.state_dict() + its run_key) when due, and at its last evaluation its `end`; the queue
            goes to the driver with a Tune report at most every REPORT_S and at every point's end
    end:    per point: its outcome (completed / budget / diverged), or error with the traceback (an error in
            the learner: the point leaves the pack, no retry, it would fail again). A Tune stop (Ctrl+C: a
            SystemExit inside tune.report) ends the trial at once: the driver closes the runs it leaves open.
            A storage failure (a checkpoint that cannot be written: a full disk) retries the whole trial: its
            points resume from their checkpoints; one whose final checkpoint is there only says it ended.

Checkpoints live by point id in the sweep's storage rather than in Tune's trial folders: a retry, a resumed
sweep and a grown grid all find them the same way, and Tune never snapshots its experiment per checkpoint.
What a killed trial had not reported is in its points' checkpoints, whose history the retry sends again.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rnnsgd.config import TrialConfig
from rnnsgd.metrics import STEP
from rnnsgd.sweep import faults
from rnnsgd.sweep.diskspace import CHECKPOINT
from rnnsgd.sweep.faults import Fault
from rnnsgd.sweep.jobs import MESSAGES, Job, Message, TrialContext
from rnnsgd.sweep.spec import Point

# Reports to Tune at most this often, and at every point's end: a report costs a few ms of the trial's core
# and of the driver's, and a pack of 16 evaluates hundreds of times a minute. A Tune stop waits for the next.
REPORT_S = 1.0


class StorageError(RuntimeError):
    """A checkpoint could not be written or read (a full disk, a lost mount): infrastructure, so Tune retries
    the trial (unlike a learner error), whose points resume from the checkpoints they have."""


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
        if not (isinstance(meta, dict) and "run_key" in meta and isinstance(saved.get("state"), dict)):
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
    """One point of the trial's pack: its config, resumed state and faults."""

    point: Point
    run_key: str
    cfg: TrialConfig  # train.device resolved
    state: dict[str, Any] | None  # the checkpoint's trainer state, None for a fresh start
    meta: dict[str, Any]  # the checkpoint's meta ({} for a fresh start)
    faults: list[Fault]
    ended: bool = False  # its end is told
    last_ckpt: float = -float("inf")  # perf_counter() of its last checkpoint


def run_trial(config: dict[str, Any], ctx: TrialContext, packs: list[list[Job]]) -> None:
    """Tune function trainable: config = {"i": index into packs}; ctx = the sweep's shared settings."""
    Trial(ctx, packs[config["i"]]).run()


@dataclass
class Outbox:
    """The messages for the driver since the last Tune report, and the counts every report carries."""

    messages: list[Message] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {"points_done": 0, "points_failed": 0})
    reported: float = -float("inf")  # perf_counter() of the last report

    def send(self, point_id: str, kind: str, data: Any) -> None:
        self.messages.append(Message(point_id, kind, data))

    def report(self, **result: Any) -> None:
        """A Tune report with the messages (where a Tune stop reaches the trial: SystemExit)."""
        from ray import tune

        messages, self.messages = self.messages, []
        self.reported = time.perf_counter()
        tune.report({**result, **self.counts, MESSAGES: messages})


class Trial:
    """One trial's pack: each point resumed or started, trained, checkpointed, its end told to the driver."""

    def __init__(self, ctx: TrialContext, jobs: list[Job]) -> None:
        import ray
        from ray import tune

        self.ctx = ctx
        self.device = _device(jobs[0].point.config, ray.get_gpu_ids())
        torch.set_num_threads(max(1, int(ctx.resources.cpu)))  # its CPU share: more threads only spin
        os.umask(ctx.umask)  # its checkpoints are as private as the driver's files
        self.store = PointStore(ctx.storage, ctx.sweep)
        self.out = Outbox()
        self.members = [self.attach(job) for job in jobs]
        tags = {
            "device": self.device,
            "rnnsgd.host": socket.gethostname(),
            "rnnsgd.trial_id": tune.get_context().get_trial_id(),
            "rnnsgd.node_id": ray.get_runtime_context().get_node_id(),  # a host may run several nodes
            "rnnsgd.pack_size": str(len(jobs)),
        }
        for mb in self.members:
            if mb.state is None or mb.state["outcome"] is None:  # one that ended only says so (finish)
                resumed = {"rnnsgd.resumed_from_step": str(mb.meta.get("step", 0))}
                self.out.send(mb.point.point_id, "start", {**tags, **resumed})
            if mb.state is not None:  # the history the driver may lack (a killed attempt's unreported tail)
                self.out.send(mb.point.point_id, "evals", mb.state["history"])
        self.t_start = time.perf_counter()
        self.out.report(step=0)  # the runs show as running at once
        self.service_s = time.perf_counter() - self.t_start  # checkpoints and Tune reports of the whole pack

    def attach(self, job: Job) -> Member:
        """The point and its checkpoint when that belongs to the job's run."""
        point = job.point
        try:
            saved = self.store.load(point.point_id)
        except CheckpointError as e:
            self.restart(point, str(e))
            saved = None
        if saved is not None and saved["meta"]["run_key"] != job.run_key:
            saved = None  # left by an earlier run of the point, which failed: start afresh
        state, meta = (saved["state"], saved["meta"]) if saved else (None, {})
        point_faults = [f for f in self.ctx.faults if f.matches(point.point_id)]
        cfg = point.config.replace(**{"train.device": self.device})
        return Member(point, job.run_key, cfg, state, meta, point_faults)

    def restart(self, point: Point, why: str) -> None:
        """An unreadable checkpoint: its point starts again from step 0, alone (its pack-mates resume from
        their own). The driver is told first, then the file goes, so that an attempt that dies in between
        finds the same state."""
        print(f"rnnsgd: point {point.point_id}: {why}: it starts again from step 0", file=sys.stderr)
        self.out.send(point.point_id, "restart", why)
        try:
            self.store.delete(point.point_id)
        except Exception as e:
            path = self.store.path(point.point_id)
            raise StorageError(f"cannot delete {path}: {type(e).__name__}: {e}") from e

    def train_s(self, mb: Member) -> float:
        """Its pack's training time while it was in it, over all attempts: this attempt's time, less the
        checkpoints and Tune reports of every point of the pack."""
        return mb.meta.get("train_s", 0.0) + (time.perf_counter() - self.t_start) - self.service_s

    def on_eval(self, mb: Member, metrics: dict[str, float], trainer) -> None:
        """Queue the evaluation, checkpoint the point when it is due, tell its end at its last evaluation,
        report to Tune at most every REPORT_S. A storage failure ends the pack's run (Tune retries it)."""
        t0 = time.perf_counter()
        step = int(metrics[STEP])
        self.out.send(mb.point.point_id, "evals", [metrics])
        every_s = self.ctx.checkpoint_every_s
        if every_s == 0 or t0 - mb.last_ckpt >= every_s or trainer.outcome is not None:
            mb.last_ckpt = t0
            meta = {"run_key": mb.run_key, "step": step, "train_s": self.train_s(mb)}
            try:
                self.store.save(mb.point.point_id, meta, trainer.state_dict())
            except StorageError as e:
                raise StorageError(f"at step {step}: {e}") from e
        if trainer.outcome is not None:
            self.end(mb, trainer.outcome, {"rnnsgd.train_s": f"{self.train_s(mb):.3f}"})
        if trainer.outcome is not None or t0 - self.out.reported >= REPORT_S:
            self.out.report(step=step)
        self.service_s += time.perf_counter() - t0
        faults.kill_after_checkpoint(mb.faults, step, fresh=mb.state is None)

    def end(self, mb: Member, outcome: str, tags: dict[str, str], tb: str | None = None) -> None:
        self.out.send(mb.point.point_id, "end", {"outcome": outcome, "tags": tags, "traceback": tb})
        mb.ended = True
        self.out.counts["points_failed" if outcome == "error" else "points_done"] += 1

    def run(self) -> None:
        """Train the pack in runs that fit the trial's memory, then tell the end of every point still open."""
        try:
            self.train()
            total_s = (time.perf_counter() - self.t_start) - self.service_s
        except StorageError:
            raise  # Tune retries the trial from its points' checkpoints (FailureConfig)
        except Exception:  # the pack's own stepping raised: every point still in it FAILED, and no retry
            tb = traceback.format_exc()
            for mb in self.members:
                if not mb.ended:
                    self.end(mb, "error", {}, tb)
            total_s = time.perf_counter() - self.t_start
        self.out.report(step=-1, outcome="done", train_s=total_s)

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
        """Tell a point's end after its pack's run: error when the learner raised (no retry: it would again),
        else its outcome (resumed from a checkpoint taken at its end, only its end was left to tell)."""
        if mb.ended:
            return
        if result.status == "error":
            self.end(mb, "error", {}, result.error)
        else:
            self.end(mb, result.status, {"rnnsgd.train_s": f"{self.train_s(mb):.3f}"})
