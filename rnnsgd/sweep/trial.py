"""The function one Ray Tune trial runs: one grid point, from its last checkpoint if it has one, into its run.

    start:  attach to the point's one MLflow run (the interrupted run the driver names, or the run an earlier
            attempt opened, else a new child of the sweep's parent); resume from the point's checkpoint in
            storage when that checkpoint belongs to this run (a Tune retry after the trial's process died, or
            a sweep re-run after an interrupted driver), else start at step 0
    loop:   rnnsgd.train.train(cfg, on_eval, state); on_eval hands the evaluation's metrics to the run (sent
            in batches, tracking.TrialRun), saves the checkpoint (trainer.state_dict() + the run id) and
            reports the step to Tune; a resumed trial first sends what its checkpoint's history holds and
            MLflow lacks
    end:    FINISHED (completed / budget / diverged), FAILED with the traceback (an error in the learner: no
            retry, it would fail again), KILLED (a Tune stop or Ctrl+C: SystemExit inside tune.report)

Checkpoints live by point id in the sweep's storage rather than in Tune's trial folders: a retry, a resumed
sweep and a grown grid all find them the same way, and Tune never snapshots its experiment per checkpoint.

Fault injection, a testing aid (tests/test_sweep_run.py): the driver forwards RNNSGD_FAULT to its trials.
    RNNSGD_FAULT="raise@<point_id prefix>:<step>,kill@<point_id prefix>:<step>"
`raise` raises at the first evaluation at or after <step>; `kill` SIGKILLs the trial's own process there
(after that evaluation's checkpoint and report), on a fresh start only, so that the retry from the checkpoint
gets through. A prefix of `*` matches every point.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rnnsgd.sweep.spec import Point
from rnnsgd.sweep.tracking import TrialRun

CHECKPOINT = "checkpoint.pt"  # torch.save({"meta": {run_id, step, train_s}, "state": trainer.state_dict()})


class TrackingError(RuntimeError):
    """MLflow failed inside a trial: infrastructure, so Tune retries the trial (unlike a learner error)."""


@dataclass(frozen=True)
class Fault:
    kind: str  # raise | kill
    prefix: str  # point_id prefix, or * for all
    step: int

    def matches(self, point_id: str) -> bool:
        return self.prefix == "*" or point_id.startswith(self.prefix)


def parse_faults(spec: str | None) -> list[Fault]:
    """'raise@ab12:100,kill@*:300' -> [Fault('raise', 'ab12', 100), Fault('kill', '*', 300)]."""
    faults = []
    for item in (spec or "").replace(";", ",").split(","):
        if not item.strip():
            continue
        kind, _, rest = item.strip().partition("@")
        prefix, _, step = rest.rpartition(":")
        if kind not in ("raise", "kill") or not prefix or not step.isdigit():
            raise ValueError(f"RNNSGD_FAULT: expected raise|kill@<point_id prefix>:<step>, got {item!r}")
        faults.append(Fault(kind, prefix, int(step)))
    return faults


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

    def save(self, point_id: str, meta: dict[str, Any], state: dict[str, Any]) -> None:
        folder = f"{self.root}/{point_id}"
        self.fs.create_dir(folder, recursive=True)
        with self.fs.open_output_stream(f"{folder}/{CHECKPOINT}.tmp") as f:
            torch.save({"meta": meta, "state": state}, f)
        self.fs.move(f"{folder}/{CHECKPOINT}.tmp", f"{folder}/{CHECKPOINT}")  # a rename: never half a file

    def load(self, point_id: str) -> dict[str, Any] | None:
        try:
            with self.fs.open_input_file(f"{self.root}/{point_id}/{CHECKPOINT}") as f:
                return torch.load(io.BytesIO(f.read()), weights_only=True)
        except FileNotFoundError:
            return None

    def point_ids(self) -> list[str]:
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        return [i.base_name for i in infos if i.type == pafs.FileType.Directory]

    def delete(self, point_id: str) -> None:
        self.fs.delete_dir(f"{self.root}/{point_id}")


def _device(cfg, gpus: list) -> str:
    """cuda when Ray gave this trial a GPU (and set CUDA_VISIBLE_DEVICES), else cpu; an explicit one stays."""
    if cfg.train.device != "auto":
        return cfg.train.device
    return "cuda" if gpus and torch.cuda.is_available() else "cpu"


def run_trial(config: dict[str, Any], ctx: dict[str, Any], jobs: list[dict[str, Any]]) -> None:
    """Tune function trainable: config = {"i": index into jobs}; ctx = the sweep's shared settings."""
    import ray
    from ray import tune

    from rnnsgd.train import train

    job = jobs[config["i"]]  # {"point": Point, "run_id": the run to re-attach to, or None}
    point: Point = job["point"]
    cfg = point.config()
    device = _device(cfg, ray.get_gpu_ids())
    cfg = cfg.replace(**{"train.device": device})
    torch.set_num_threads(max(1, int(ctx["cpu"])))  # its CPU share: more threads only spin on a busy node
    faults = [f for f in parse_faults(ctx.get("fault")) if f.matches(point.point_id)]

    try:  # the point's one run: the interrupted run the driver named, or the one an earlier attempt opened
        run = TrialRun.attach(ctx["tracking_uri"], ctx, point, job.get("run_id"))
    except Exception as e:
        raise TrackingError(f"MLflow at {ctx['tracking_uri']}: {type(e).__name__}: {e}") from e
    store = PointStore(ctx["storage"], ctx["sweep"])
    saved = store.load(point.point_id)
    if saved is not None and saved["meta"].get("run_id") != run.run_id:
        saved = None  # left by an earlier run of the point, which failed: start afresh
    state, meta = (saved["state"], saved["meta"]) if saved else (None, {})
    tags = {"device": device, "rnnsgd.host": socket.gethostname(),
            "rnnsgd.trial_id": tune.get_context().get_trial_id(),
            "rnnsgd.node_id": ray.get_runtime_context().get_node_id(),  # a host may run several nodes
            "rnnsgd.resumed_from_step": str(meta.get("step", 0))}  # fmt: skip
    try:
        run.start(point, tags)
        if state is not None:
            run.relog(state["history"])  # what the killed attempt had not sent
    except Exception as e:
        raise TrackingError(f"MLflow at {ctx['tracking_uri']}: {type(e).__name__}: {e}") from e

    every_s = ctx["checkpoint_every_s"]
    clock = {"service_s": 0.0, "last_ckpt": -float("inf")}
    t_start = time.perf_counter()

    def train_s() -> float:
        """Training time over all attempts: this one's, less on_eval's MLflow, checkpoints and Tune."""
        return meta.get("train_s", 0.0) + (time.perf_counter() - t_start) - clock["service_s"]

    def on_eval(metrics: dict[str, float], trainer) -> None:
        t0 = time.perf_counter()
        step = int(metrics["step"])
        try:
            run.log(metrics, step)
        except Exception as e:
            raise TrackingError(f"MLflow log_batch at step {step}: {type(e).__name__}: {e}") from e
        if every_s == 0 or t0 - clock["last_ckpt"] >= every_s or trainer.outcome is not None:
            clock["last_ckpt"] = t0
            ckpt_meta = {"run_id": run.run_id, "step": step, "train_s": train_s()}
            store.save(point.point_id, ckpt_meta, trainer.state_dict())
        tune.report({"step": step})  # where a Tune stop (Ctrl+C, a scheduler) reaches the trial
        clock["service_s"] += time.perf_counter() - t0
        for fault in faults:
            if step >= fault.step and fault.kind == "raise":
                raise RuntimeError(f"injected fault (RNNSGD_FAULT raise@{fault.prefix}:{fault.step})")
            if step >= fault.step and fault.kind == "kill" and state is None:  # not again on the retry
                os.kill(os.getpid(), signal.SIGKILL)

    ended = False
    try:
        result = train(cfg, on_eval, state)
        run.finish(result.status, tags={"rnnsgd.train_s": f"{train_s():.3f}"})
        ended = True
        tune.report({"step": int(result.metrics["step"]), "outcome": result.status, "train_s": train_s()})
    except TrackingError:
        raise  # Tune retries the trial from its checkpoint (FailureConfig)
    except (SystemExit, KeyboardInterrupt):  # a Tune stop (a scheduler, Ctrl+C on the driver)
        if not ended:
            _quietly(run.finish, "killed", {"rnnsgd.killed_reason": "stopped by Ray Tune"})
        raise
    except Exception:  # the learner raised: FAILED, and no retry (it would fail again)
        tb = traceback.format_exc()
        _quietly(run.finish, "error", {"rnnsgd.error": tb.strip().splitlines()[-1][:500]}, tb)
        tune.report({"step": -1, "outcome": "error", "train_s": train_s()})


def _quietly(fn, *args) -> None:
    """Closing a run on the way out of a failure: report a second failure, do not mask the first."""
    try:
        fn(*args)
    except Exception:
        traceback.print_exc()
