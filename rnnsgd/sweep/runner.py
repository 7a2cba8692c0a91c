"""The driver of a sweep: check everything, join or start Ray, run the points that are not done, close up.

    1. checks (no compute, no runs): tracking URI reachable, Ray reachable, resources the machine can give,
       free space for the checkpoints (torch is imported only where a check needs it, and otherwise beside
       Ray's start: it takes a second)
    2. MLflow: the sweep's experiment and parent run (under a lock beside a SQLite store, so that a second
       driver started at once is refused); runs orphaned by a killed driver are marked KILLED
    3. plan: points with a FINISHED run are skipped; an interrupted point re-attaches to its run and resumes
       from the last checkpoint a previous driver left in storage; the rest start fresh
    4. pack: points of one shape share a trial (rnnsgd.sweep.packing), up to pack.size and the memory budget
    5. one Ray Tune Tuner over the packs (reuse_actors, FailureConfig retries from the points' checkpoints)
    6. close, however 5 ended (Tune raising, a full disk, Ctrl+C): runs left RUNNING become KILLED, the
       parent ends FINISHED / FAILED / KILLED, checkpoints of finished points are deleted, the summary says
       what stopped the sweep if something did, and the `mlflow ui` command is printed

Resuming is by MLflow state and checkpoints rather than Tuner.restore, which cannot add grid points.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from rnnsgd.config import TrialConfig, format_value, schedule
from rnnsgd.console import one_line, plural
from rnnsgd.sweep.diskspace import (
    check_free_space,
    checkpoint_bytes,
    free_bytes,
    full_folders,
    megabytes,
    says_disk_full,
)
from rnnsgd.sweep.faults import Fault, parse_faults
from rnnsgd.sweep.jobs import Job, TrialContext
from rnnsgd.sweep.localray import connect_ray
from rnnsgd.sweep.spec import Point, Sweep, SweepError
from rnnsgd.sweep.tracking import (
    STATUS_STATE,
    SweepRun,
    SweepTracker,
    check_reachable,
    experiment_url,
    parent_status,
    point_state,
    resolve_tracking_uri,
    store_exists,
)

if TYPE_CHECKING:
    from rnnsgd.sweep.recorder import Recorder  # imports Ray Tune: only once the trials are planned

QUIET_LOGGERS = (
    "ray.tune.analysis.experiment_analysis",
    "ray.tune.tune",
    "ray.tune.execution.tune_controller",
)


@dataclass
class SweepReport:
    name: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    total: int
    done: int
    failed: int
    missing: int  # not done and not failed: never run, or stopped (Ctrl+C) before the end
    ran: int  # points this run started
    trials: int  # Ray Tune trials they ran in (packs of same-shape points)
    wall_s: float  # from the call to the end, Ray and MLflow start-up included
    train_s: float  # sum over this run's trials of their time training (not tracking or checkpointing)
    concurrency: int
    fault: str | None = None  # what stopped the sweep other than its points (a full disk, Ray Tune, MLflow)

    @property
    def exit_code(self) -> int:
        if self.fault:
            return 1
        return 0 if self.done == self.total else (130 if self.missing else 1)

    def summary(self) -> str:
        stopped = " (stopped before the end)" if self.missing and not self.fault else ""
        counts = f"{self.done}/{self.total} done, {self.failed} failed, {self.missing} not run"
        fault = f"; stopped by a fault: {self.fault}" if self.fault else ""
        return f"[{self.name}] {counts}{stopped}{fault}"

    def ui_command(self) -> str:
        if self.tracking_uri.startswith("sqlite:"):
            url = experiment_url("http://127.0.0.1:5000", self.experiment_id)
            return f"mlflow ui --backend-store-uri {self.tracking_uri} --port 5000, then open {url}"
        return f"open {experiment_url(self.tracking_uri, self.experiment_id)}"


def default_storage(cwd: str | Path | None = None) -> str:
    return str((Path(cwd or os.getcwd()) / "runs" / "ray").resolve())


def git_sha() -> str:
    """The package's commit, with -dirty when tracked files changed; "unknown" outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        git = ["git", "-C", str(root)]
        sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ---------------------------------------------------------------------------------------------- Ray


def check_local_resources(sweep: Sweep) -> None:
    """Before anything starts, without a cluster: refuse a trial this machine cannot host, and a point too big
    for its memory."""
    if os.environ.get("RAY_ADDRESS"):
        return  # checked against the cluster's nodes once connected
    ray = sys.modules.get("ray")  # imported by whoever started Ray; otherwise none runs in this process
    if ray is None or not ray.is_initialized():  # a Ray this process joined: its nodes are checked later
        _refuse_unless_fits(sweep, local_nodes(count_gpus=sweep.resources.gpu > 0))
    from rnnsgd.memory import available_memory, device_memory

    if sweep.resources.gpu > 0:  # a GPU share is a scheduling share: one point may use the whole device
        _refuse_big_points(sweep, device_memory("cuda"), "of memory on this machine's GPU")
    else:
        _refuse_big_points(sweep, available_memory(), "of memory available on this machine")


def _refuse_big_points(sweep: Sweep, limit: int, what: str) -> None:
    """SweepError naming the key and the grid point when the biggest point alone needs more than `limit`."""
    from rnnsgd.memory import check_fits, estimate_bytes

    if not sweep.points:
        return
    biggest = max(sweep.points, key=lambda p: estimate_bytes(p.config, 1))
    try:
        check_fits(biggest.config, limit, what)
    except ValueError as e:
        at = f" (at grid point {biggest.label()})" if biggest.coords else ""
        raise SweepError(f"{sweep.source}: {e}{at}") from None


def local_nodes(count_gpus: bool = True) -> list[dict[str, float]]:
    """This machine as one node, in the form of Ray's node resources (GPUs counted by torch: count_gpus=False
    says 0 without importing it)."""
    gpus = 0
    if count_gpus:
        import torch

        gpus = torch.cuda.device_count()
    return [{"CPU": os.cpu_count() or 1, "GPU": gpus}]


def trial_slots(sweep: Sweep, nodes: list[dict[str, float]]) -> int:
    """How many of the sweep's trials the nodes run at once (at most its concurrency; at least 1)."""
    cpu, gpu = sweep.resources.cpu, sweep.resources.gpu
    slots = sum(min(n.get("CPU", 0) // cpu, n.get("GPU", 0) // gpu if gpu else float("inf")) for n in nodes)
    return int(min(slots, sweep.concurrency or slots)) or 1


def _refuse_unless_fits(sweep: Sweep, nodes: list[dict[str, float]]) -> None:
    cpu, gpu = sweep.resources.cpu, sweep.resources.gpu
    if any(n.get("CPU", 0) >= cpu and n.get("GPU", 0) >= gpu for n in nodes):
        return
    have_cpu = max((n.get("CPU", 0) for n in nodes), default=0)
    have_gpu = max((n.get("GPU", 0) for n in nodes), default=0)
    if gpu > have_gpu:
        key, want, have, unit = "resources.gpu", gpu, have_gpu, "GPU"
    else:
        key, want, have, unit = "resources.cpu", cpu, have_cpu, "CPU"
    raise SweepError(
        f"{sweep.source}: {key}: a trial asks for {want:g} {unit} but this machine has {have:g} "
        "(no cluster is attached: set RAY_ADDRESS to run on one)"
    )


def local_budget(sweep: Sweep) -> int | None:
    """The memory a trial's pack may use when the trials run on this machine; None on a cluster (each trial
    checks its own node)."""
    if os.environ.get("RAY_ADDRESS"):
        return None
    import torch

    from rnnsgd.sweep.packing import trial_budget

    cuda = sweep.resources.gpu > 0 and torch.cuda.is_available()
    return trial_budget(torch.device("cuda" if cuda else "cpu"), sweep.pack, sweep.resources)


def check_pack_size(sweep: Sweep) -> None:
    """Before anything starts: refuse a pack.size whose packs cannot fit this machine's trials."""
    if sweep.pack.size in (None, 1):
        return  # auto shrinks packs to fit, and a point alone always runs
    from rnnsgd.sweep.packing import plan

    budget = local_budget(sweep)
    if budget is not None:
        cfgs = [p.config for p in sweep.points]
        try:
            plan(cfgs, [1.0] * len(cfgs), sweep.pack, 1, budget)
        except SweepError as e:
            raise SweepError(f"{sweep.source}: {e}") from None


def check_cluster_resources(sweep: Sweep, out: TextIO) -> int:
    """Once connected: on a cluster (RAY_ADDRESS), say when trials must wait for the autoscaler to add a node
    that fits; on a local Ray, refuse. Returns how many trials can run at once."""
    import ray

    cpu, gpu = sweep.resources.cpu, sweep.resources.gpu
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    fits = [n for n in nodes if n.get("CPU", 0) >= cpu and n.get("GPU", 0) >= gpu]
    if fits and gpu == 0 and os.environ.get("RAY_ADDRESS"):  # Ray's count of a node's memory for tasks (a
        # GPU's memory each trial checks on its node; a local Ray's nodes were checked before it started)
        _refuse_big_points(sweep, int(max(n.get("memory", 0) for n in fits)), "of memory on the largest node")
    if not fits:
        if not os.environ.get("RAY_ADDRESS"):
            _refuse_unless_fits(sweep, nodes)
        out.write(
            f"[{sweep.name}] no node of the cluster has {cpu:g} CPU and {gpu:g} GPU for a trial yet: "
            "the trials wait until the autoscaler adds one (Ctrl+C to stop)\n"
        )
        return sweep.concurrency or 1
    return trial_slots(sweep, fits)


# ---------------------------------------------------------------------------------------------- driver


def run_sweep(
    sweep: Sweep,
    tracking_uri: str | None = None,
    storage: str | None = None,
    resume: bool = False,
    out: TextIO | None = None,
) -> SweepReport:
    """Run the sweep's points that have no FINISHED run. Bad input raises SweepError before any run exists."""
    out = out or sys.stderr
    t0 = time.perf_counter()
    uri, where = resolve_tracking_uri(tracking_uri, sweep.tracking_uri, sweep.source)
    check_reachable(uri, where)
    try:
        faults = tuple(parse_faults(os.environ.get("RNNSGD_FAULT")))
    except ValueError as e:
        raise SweepError(str(e)) from None
    storage, storage_where = _storage(sweep, storage)
    check_local_resources(sweep)
    check_pack_size(sweep)
    tracker = SweepTracker(uri) if store_exists(uri) else None
    if resume and (tracker is None or tracker.parent_info(sweep.name) is None):
        raise SweepError(f"{sweep.source}: --resume: sweep {sweep.name!r} has never run in {uri}")
    to_run = _to_run(tracker, sweep) if tracker is not None else list(sweep.points)
    if not to_run:  # a finished sweep run again: say so without starting Ray
        out.write(f"[{sweep.name}] all {len(sweep.points)} points are done: nothing to run\n")
        report = _already_done(tracker, sweep)
    else:
        new_store = uri[len("sqlite:///") :] if tracker is None and uri.startswith("sqlite:///") else None
        check_free_space(sweep.name, to_run, storage, storage_where, new_store, where)
        report = _with_ray(sweep, tracker, uri, storage, faults, out)
    report.wall_s = time.perf_counter() - t0
    return report


def _storage(sweep: Sweep, storage: str | None) -> tuple[str, str]:
    """(the checkpoints' storage, absolute where a path, and where it came from): --storage, else the sweep
    file's, else the default."""
    where = "--storage" if storage else f"{sweep.source}: storage" if sweep.storage else "storage"
    storage = storage or sweep.storage or default_storage()
    return (storage if "://" in storage else str(Path(storage).resolve())), where


def _with_ray(
    sweep: Sweep,
    tracker: SweepTracker | None,
    uri: str,
    storage: str,
    faults: tuple[Fault, ...],
    out: TextIO,
) -> SweepReport:
    """Join or start Ray, open the sweep in MLflow (beside Ray's start: torch's import, a second the plan
    needs, and MLflow's store, migrations on a new SQLite file), then drive the trials."""

    def prepare() -> SweepTracker:
        import torch  # noqa: F401

        return tracker or SweepTracker(uri)

    with ThreadPoolExecutor(1) as pool:
        tracker_future = pool.submit(prepare)
        started_ray = connect_ray()
        try:
            opened = tracker_future.result()
            concurrency = check_cluster_resources(sweep, out)
            where = _open_sweep(sweep, opened)
            # ---- from here on runs exist: no more bad input, only outcomes
            return _drive(sweep, opened, where, _trial_context(sweep, storage, faults), concurrency, out)
        finally:
            if started_ray:
                import ray

                ray.shutdown()


def _open_sweep(sweep: Sweep, tracker: SweepTracker) -> SweepRun:
    """The sweep's experiment and parent run (under the store's lock: a driver started at the same time then
    finds this one's parent RUNNING)."""
    sha = git_sha()
    try:
        with tracker.lock():
            experiment_id = tracker.experiment(sweep.name)
            tags = {"git_sha": sha, "rnnsgd.source": sweep.source}
            parent_id = tracker.open_parent(experiment_id, sweep, tags)
    except SweepError as e:  # a deleted experiment, or another live driver on this sweep
        raise SweepError(f"{sweep.source}: {e}") from None
    return SweepRun(tracker.uri, experiment_id, parent_id, sweep.name, sha)


def _trial_context(sweep: Sweep, storage: str, faults: tuple[Fault, ...]) -> TrialContext:
    """What the sweep's trials share."""
    return TrialContext(
        sweep=sweep.name,
        faults=faults,
        storage=storage,
        checkpoint_every_s=sweep.checkpoint_every_s,
        resources=sweep.resources,
        pack=sweep.pack,
        umask=_umask(),
    )


def _umask() -> int:
    """This process's umask, which the trials take on (workers on a cluster's nodes inherit another)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


@dataclass
class TuneRun:
    """What one Tuner did, as its callback saw it (never read back from Tune's files, which a full disk may
    have left empty): the trials' training time, the packs whose trials failed after their retries (with
    Tune's error text, or None where Tune could not record it), and what fit() raised, if it did."""

    train_s: float = 0.0
    errors: dict[int, str | None] = field(default_factory=dict)
    raised: str | None = None


@dataclass
class Plan:
    """What the driver set out to run: the points' jobs, grouped into packs (one trial each), and how many
    points were done before; `ran` fills in as the Tuner runs."""

    jobs: list[Job] = field(default_factory=list)
    packs: list[list[Job]] = field(default_factory=list)
    done_before: int = 0
    ran: TuneRun = field(default_factory=TuneRun)
    recorder: Recorder | None = None  # writes the points' runs from what their trials report


def _drive(
    sweep: Sweep, tracker: SweepTracker, where: SweepRun, ctx: TrialContext, concurrency: int, out: TextIO
) -> SweepReport:
    """Plan, tune, close up; the close-up runs however the rest ends (a fault, Ctrl+C, an error), so that no
    run the driver opened stays RUNNING, as far as MLflow can still be written."""
    plan = Plan()
    try:
        _plan(sweep, tracker, where, concurrency, plan)
        _say_plan(sweep, plan, concurrency, out)
        if plan.packs:
            _tune(sweep, plan, ctx, concurrency, out)
    except KeyboardInterrupt:
        _close(sweep, tracker, where, ctx, plan, concurrency, out, stopped="the driver was interrupted")
        raise
    except Exception as e:
        _close(sweep, tracker, where, ctx, plan, concurrency, out, error=f"the driver failed: {one_line(e)}")
        raise
    return _close(sweep, tracker, where, ctx, plan, concurrency, out)


def _plan(sweep: Sweep, tracker: SweepTracker, where: SweepRun, concurrency: int, plan: Plan) -> None:
    """Mark the orphans (runs left RUNNING by a killed driver: no other live driver holds this sweep,
    open_parent checked) KILLED, then plan the points that are not done: an interrupted one re-attaches
    to its run, a failed one gets a new run. Fills `plan` as it goes: the close-up reads what it got to."""
    children = tracker.children(where.experiment_id, where.parent_run_id)
    for runs in children.values():
        for r in runs:
            if STATUS_STATE.get(r.status) == "running":
                tracker.mark_killed(r.run_id, "its driver stopped without closing it")
    children = tracker.children(where.experiment_id, where.parent_run_id)
    for p in sweep.points:
        state, run = point_state(children.get(p.point_id, []))
        if state == "done":
            continue
        if run is not None and state != "failed":  # interrupted: it goes on in its run, from its checkpoint
            plan.jobs.append(Job(p, run.run_key or uuid.uuid4().hex, run.run_id))
        else:
            plan.jobs.append(Job(p, uuid.uuid4().hex))
    plan.done_before = len(sweep.points) - len(plan.jobs)
    from rnnsgd.sweep.recorder import Recorder

    plan.recorder = Recorder(where, plan.jobs)
    indices = pack_points(sweep, [j.point for j in plan.jobs], concurrency)
    plan.packs = [[plan.jobs[i] for i in pack] for pack in indices]


def _say_plan(sweep: Sweep, plan: Plan, concurrency: int, out: TextIO) -> None:
    jobs, packs = plan.jobs, plan.packs
    reattached = sum(1 for j in jobs if j.run_id)
    in_packs = f" in {len(packs)} trial{'s' * (len(packs) > 1)}" if len(packs) != len(jobs) else ""
    each = f"{sweep.resources.cpu:g} CPU {sweep.resources.gpu:g} GPU each"
    out.write(
        f"[{sweep.name}] {plural(len(sweep.points), 'point')}: {plan.done_before} done before, "
        f"{len(jobs)} to run{in_packs}"
        + (f" ({reattached} re-attached to their interrupted runs)" if reattached else "")
        + f"; {plural(concurrency, 'trial')} at a time, {each}\n"
    )
    out.flush()


def _disk_fault(sweep: Sweep, ctx: TrialContext, uri: str, ran: TuneRun) -> str | None:
    """'no space left on device in <folder>' when trials failed or Tune raised and the storage's or the SQLite
    store's filesystem has not even room for a checkpoint left (or their errors say so)."""
    if not ran.errors and not ran.raised:
        return None
    folders = [ctx.storage]
    if uri.startswith("sqlite:///"):
        folders.append(str(Path(uri[len("sqlite:///") :]).parent))
    # a failed save removes its partial file: what is left free is less than a whole checkpoint, which
    # holds a few more m x m matrices than the least that checkpoint_bytes counts
    need = max(1 << 20, 4 * max(checkpoint_bytes(p.config) for p in sweep.points))
    full = full_folders(folders, need)
    if full:
        return "no space left on device in " + ", ".join(
            f"{f} ({megabytes(free_bytes(f))} free)" for f in full
        )
    if any(says_disk_full(t) for t in [*filter(None, ran.errors.values()), ran.raised or ""]):
        return f"no space left on device (in the storage {ctx.storage} or the MLflow store)"
    return None


class _Writes:
    """MLflow writes on the way out: each one tried, the failures kept (`failed`) for the report's fault."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def __call__(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:
            self.failed.append(one_line(e))

    def fault(self, uri: str, known: bool) -> str | None:
        """What failed, with the first error unless it is `known` (MLflow had failed before the close-up)."""
        if not self.failed:
            return None
        n = len(self.failed)
        why = "" if known else f" ({self.failed[0]})"
        return (
            f"{n} write{'s' * (n > 1)} to MLflow at {uri} failed{why}: runs it could not close stay RUNNING "
            "until the next run of this sweep marks them KILLED"
        )


def _close(
    sweep: Sweep,
    tracker: SweepTracker,
    where: SweepRun,
    ctx: TrialContext,
    plan: Plan,
    concurrency: int,
    out: TextIO,
    stopped: str | None = None,
    error: str | None = None,
) -> SweepReport:
    """Close up: what the trials reported is all sent, points whose trials Tune gave up on end FAILED, runs
    left RUNNING end KILLED (with the reason: `stopped`, an interruption, or the fault), the parent ends as
    its points' states say (tracking.parent_status), done points drop their checkpoints. Never raises: what
    it cannot write in MLflow, the report's fault says."""
    total, ran, recorder = len(sweep.points), plan.ran, plan.recorder
    tracking = recorder.error if recorder else None  # MLflow failed while the trials ran: what Tune raised
    tune_failed = f"Ray Tune failed: {ran.raised}" if ran.raised and not (stopped or tracking) else None
    fault = _join(_disk_fault(sweep, ctx, where.tracking_uri, ran), error, tracking, tune_failed)
    write = _Writes()
    if fault:  # room for MLflow's own writes, if the store shares the full disk: Tune's folder is not needed
        with contextlib.suppress(Exception):
            prune(ctx.storage, sweep.name)
    for i, text in ran.errors.items():  # retries spent: its process kept dying, or its storage failed
        why = text or f"its trial failed after {sweep.max_failures} retries ({fault or 'no error kept'})"
        for job in plan.packs[i]:
            write(recorder.fail, job, why)
    if recorder is not None:
        write(recorder.close)
    reason = f"the sweep stopped: {fault}" if fault else stopped or "its trial stopped without closing it"
    counts, keep = _settle(sweep, tracker, where, plan, reason, write)
    status = parent_status(counts, total, fault)
    write(tracker.close_parent, where.parent_run_id, status, {**counts, "total": total}, fault)
    if keep is not None:
        try:
            prune(ctx.storage, sweep.name, keep)
        except OSError as e:
            out.write(f"[{sweep.name}] could not prune old checkpoints in {ctx.storage}: {e}\n")
    fault = _join(fault, write.fault(where.tracking_uri, known=tracking is not None))
    return SweepReport(
        name=sweep.name,
        tracking_uri=where.tracking_uri,
        experiment_id=where.experiment_id,
        parent_run_id=where.parent_run_id,
        total=total,
        ran=len(plan.jobs),
        trials=len(plan.packs),
        wall_s=0.0,
        train_s=ran.train_s,
        concurrency=concurrency,
        fault=fault,
        **counts,
    )


def _join(*faults: str | None) -> str | None:
    """The faults that happened, as one line; None when none did."""
    return "; ".join(f for f in faults if f) or None


def _settle(
    sweep: Sweep, tracker: SweepTracker, where: SweepRun, plan: Plan, reason: str, write: _Writes
) -> tuple[dict[str, int], set[str] | None]:
    """(points done, failed, missing; the points whose checkpoints a re-run resumes from): runs left running
    are marked KILLED for `reason`, their points missing. When MLflow cannot be read: what the plan knew,
    and None (keep every checkpoint)."""
    try:
        children = tracker.children(where.experiment_id, where.parent_run_id)
    except Exception as e:
        write.failed.append(one_line(e))
        missing = len(sweep.points) - plan.done_before
        return {"done": plan.done_before, "failed": 0, "missing": missing}, None
    counts, keep = {"done": 0, "failed": 0, "missing": 0}, set()
    for p in sweep.points:
        state, run = point_state(children.get(p.point_id, []))
        if state == "running":
            write(tracker.mark_killed, run.run_id, reason)
            state = "missing"
        counts[state] += 1
        if state == "missing":
            keep.add(p.point_id)
    return counts, keep


def _to_run(tracker: SweepTracker, sweep: Sweep) -> list[Point]:
    """The sweep's points without a FINISHED run in the store."""
    found = tracker.parent_info(sweep.name)
    if found is None:
        return list(sweep.points)
    experiment_id, parent = found
    children = tracker.children(experiment_id, parent.info.run_id)
    return [p for p in sweep.points if point_state(children.get(p.point_id, []))[0] != "done"]


def _already_done(tracker: SweepTracker, sweep: Sweep) -> SweepReport | None:
    """The report of a sweep whose every point has a FINISHED run, else None."""
    found = tracker.parent_info(sweep.name)
    if found is None or _to_run(tracker, sweep):
        return None
    experiment_id, parent = found
    n = len(sweep.points)
    return SweepReport(
        name=sweep.name,
        tracking_uri=tracker.uri,
        experiment_id=experiment_id,
        parent_run_id=parent.info.run_id,
        total=n,
        done=n,
        failed=0,
        missing=0,
        ran=0,
        trials=0,
        wall_s=0.0,
        train_s=0.0,
        concurrency=0,
    )


def pack_points(sweep: Sweep, points: list[Point], slots: int) -> list[list[int]]:
    """Indices into points, grouped into the trials that will train them (packing.plan), costliest first."""
    from rnnsgd.sweep.packing import plan

    cfgs = [p.config for p in points]
    return plan(cfgs, [cost(c) for c in cfgs], sweep.pack, slots, local_budget(sweep))


def cost(cfg: TrialConfig) -> float:
    """A rough relative cost of a point, steps x L x (m^2 + a per-step constant): the longest points start
    first, so that fewer cores sit idle while the last ones finish."""
    return schedule(cfg).T * cfg.data.L * (cfg.model.m**2 + 128**2) * cfg.train.batch


def prune(storage: str, sweep_name: str, keep: set[str] | None = None) -> None:
    """Delete what no re-run needs: Tune's own folders (resuming goes by MLflow and the points' checkpoints,
    never by Tuner.restore), half-written checkpoints, and with `keep` the checkpoints of every point not in
    it."""
    from rnnsgd.sweep.trial import PointStore

    store = PointStore(storage, sweep_name)
    store.fs.delete_dir_contents(store.root.rpartition("/")[0] + "/tune", missing_dir_ok=True)
    for point_id in store.point_ids():
        if keep is not None and point_id not in keep:
            store.delete(point_id)
        else:
            with contextlib.suppress(FileNotFoundError):
                store.fs.delete_file(store.path(point_id) + ".tmp")


def pack_label(pack: list[Job]) -> str:
    """A pack's name in progress lines: its one point's label, or what its points share and how many."""
    if len(pack) == 1:
        return pack[0].point.label()
    coords = [j.point.coords for j in pack]
    shared = {k: v for k, v in coords[0].items() if all(c.get(k) == v for c in coords)}
    what = " ".join(f"{k.rpartition('.')[2]}={format_value(v)}" for k, v in shared.items())
    return f"{what} ({len(pack)} points)".strip()


def pack_name(pack: list[Job]) -> str:
    """A pack's trial name: its first point's id, and how many more share the trial."""
    return pack[0].point.point_id + (f"+{len(pack) - 1}" if len(pack) > 1 else "")


def _tune(sweep: Sweep, plan: Plan, ctx: TrialContext, concurrency: int, out: TextIO) -> None:
    """One Tuner, one trial per pack, the costliest first; SIGTERM stops it as gracefully as Ctrl+C.
    plan.ran gets what a callback sees, and what fit() raises, which it keeps from the caller (fit() builds
    its results from the trials' files, and a full disk leaves them empty: EOFError); Ctrl+C still raises."""
    from rnnsgd.sweep.progress import Outcomes, Progress

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    packs = plan.packs
    labels, sizes = [pack_label(p) for p in packs], [len(p) for p in packs]
    progress = Progress(sweep.name, len(sweep.points), plan.done_before, labels, sizes, stream=out)
    tuner = _tuner(sweep, packs, ctx, concurrency, [plan.recorder, progress, Outcomes(plan.ran)])
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    try:
        tuner.fit()
    except Exception as e:
        plan.ran.raised = one_line(e)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        progress.close()


def _tuner(sweep: Sweep, packs: list[list[Job]], ctx: TrialContext, concurrency: int, callbacks: list):
    """The Tuner: trial i trains packs[i] (packing.plan put the costliest first), retried from its points'
    checkpoints up to max_failures times; Tune's files under <storage>/<sweep>/tune."""
    from ray import tune

    from rnnsgd.sweep.trial import run_trial

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, ctx=ctx, packs=packs),
        {"cpu": sweep.resources.cpu, "gpu": sweep.resources.gpu},
    )

    def name(trial) -> str:
        return pack_name(packs[trial.config["i"]])

    return tune.Tuner(
        trainable,
        param_space={"i": tune.grid_search(list(range(len(packs))))},
        tune_config=tune.TuneConfig(
            reuse_actors=True,
            max_concurrent_trials=concurrency,
            trial_name_creator=name,
            trial_dirname_creator=lambda t: f"{name(t)}_{t.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}",
            storage_path=f"{ctx.storage.rstrip('/')}/{sweep.name}/tune",
            verbose=0,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
        ),
    )
