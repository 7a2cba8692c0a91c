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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rnnsgd.config import TrialConfig, format_value, schedule
from rnnsgd.console import plural
from rnnsgd.sweep.diskspace import (
    check_free_space,
    checkpoint_bytes,
    free_bytes,
    full_folders,
    megabytes,
    says_disk_full,
)
from rnnsgd.sweep.faults import parse_faults
from rnnsgd.sweep.localray import connect_ray
from rnnsgd.sweep.spec import Point, Sweep, SweepError
from rnnsgd.sweep.tracking import (
    SweepTracker,
    TrialRun,
    check_reachable,
    experiment_url,
    point_state,
    resolve_tracking_uri,
    store_exists,
)

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
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)  # fmt: skip
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
    biggest = max(sweep.points, key=lambda p: estimate_bytes(p.config(), 1))
    try:
        check_fits(biggest.config(), limit, what)
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
    key, want, have, unit = ("resources.gpu", gpu, have_gpu, "GPU") if gpu > have_gpu else (
        "resources.cpu", cpu, have_cpu, "CPU")  # fmt: skip
    raise SweepError(f"{sweep.source}: {key}: a trial asks for {want:g} {unit} but this machine has {have:g} "
                     "(no cluster is attached: set RAY_ADDRESS to run on one)")  # fmt: skip


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
        cfgs = [p.config() for p in sweep.points]
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
        out.write(f"[{sweep.name}] no node of the cluster has {cpu:g} CPU and {gpu:g} GPU for a trial yet: "
                  "the trials wait until the autoscaler adds one (Ctrl+C to stop)\n")  # fmt: skip
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
    fault = os.environ.get("RNNSGD_FAULT")
    try:
        parse_faults(fault)
    except ValueError as e:
        raise SweepError(str(e)) from None
    storage_where = "--storage" if storage else f"{sweep.source}: storage" if sweep.storage else "storage"
    storage = storage or sweep.storage or default_storage()
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    check_local_resources(sweep)
    check_pack_size(sweep)
    tracker = SweepTracker(uri) if store_exists(uri) else None
    if resume and (tracker is None or tracker.parent_info(sweep.name) is None):
        raise SweepError(f"{sweep.source}: --resume: sweep {sweep.name!r} has never run in {uri}")
    to_run = _to_run(tracker, sweep) if tracker is not None else list(sweep.points)
    if not to_run:  # a finished sweep run again: say so without starting Ray
        out.write(f"[{sweep.name}] all {len(sweep.points)} points are done: nothing to run\n")
        done = _already_done(tracker, sweep)
        done.wall_s = time.perf_counter() - t0
        return done
    new_store = uri[len("sqlite:///") :] if tracker is None and uri.startswith("sqlite:///") else None
    check_free_space(sweep.name, to_run, storage, storage_where, new_store, where)

    def prepare() -> SweepTracker:
        """Beside Ray's start: torch's import (a second; the plan needs it) and MLflow's store (migrations,
        on a new SQLite file)."""
        import torch  # noqa: F401

        return tracker or SweepTracker(uri)

    with ThreadPoolExecutor(1) as pool:
        tracker_future = pool.submit(prepare)
        started_ray = connect_ray()
        try:
            tracker = tracker_future.result()
            concurrency = check_cluster_resources(sweep, out)
            sha = git_sha()
            try:
                with tracker.lock():  # a driver started at the same time then finds this one's parent RUNNING
                    experiment_id = tracker.experiment(sweep.name)
                    tags = {"git_sha": sha, "rnnsgd.source": sweep.source}
                    parent_id = tracker.open_parent(experiment_id, sweep, tags)
            except SweepError as e:  # a deleted experiment, or another live driver on this sweep
                raise SweepError(f"{sweep.source}: {e}") from None
            # ---- from here on runs exist: no more bad input, only outcomes
            ctx = {
                "tracking_uri": uri, "experiment_id": experiment_id, "parent_run_id": parent_id,
                "sweep": sweep.name, "git_sha": sha, "fault": fault, "storage": storage,
                "checkpoint_every_s": sweep.checkpoint_every_s, "cpu": sweep.resources.cpu,
                "gpu": sweep.resources.gpu, "memory_fraction": sweep.pack.memory_fraction,
                "planned_ms": int(time.time() * 1000), "umask": _umask(),
            }  # fmt: skip
            report = _drive(sweep, tracker, ctx, concurrency, out)
        finally:
            if started_ray:
                import ray

                ray.shutdown()
    report.wall_s = time.perf_counter() - t0
    return report


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


def _drive(
    sweep: Sweep, tracker: SweepTracker, ctx: dict[str, Any], concurrency: int, out: TextIO
) -> SweepReport:
    """Plan, tune, close up; the close-up runs however the rest ends (a fault, Ctrl+C, an error), so that no
    run the driver opened stays RUNNING, as far as MLflow can still be written."""
    experiment_id, parent_id = ctx["experiment_id"], ctx["parent_run_id"]
    plan: dict[str, Any] = {"jobs": [], "packs": [], "done_before": 0, "ran": TuneRun()}
    try:
        children = tracker.children(experiment_id, parent_id)
        for runs in children.values():  # no other live driver holds this sweep (open_parent checked): orphans
            for r in runs:
                if r.status == "RUNNING":
                    tracker.mark_killed(r.run_id, "its driver stopped without closing it")
        children = tracker.children(experiment_id, parent_id)

        jobs: list[dict[str, Any]] = []
        for p in sweep.points:
            state, run = point_state(children.get(p.point_id, []))
            if state != "done":
                run_id = run.run_id if run is not None and state != "failed" else None  # failed: a new run
                jobs.append({"point": p, "run_id": run_id})
        total, done_before = len(sweep.points), len(sweep.points) - len(jobs)
        reattached = sum(1 for j in jobs if j["run_id"])
        packs = [[jobs[i] for i in p] for p in pack_points(sweep, [j["point"] for j in jobs], concurrency)]
        plan.update(jobs=jobs, packs=packs, done_before=done_before)
        in_packs = f" in {len(packs)} trial{'s' * (len(packs) > 1)}" if len(packs) != len(jobs) else ""
        each = f"{sweep.resources.cpu:g} CPU {sweep.resources.gpu:g} GPU each"
        out.write(
            f"[{sweep.name}] {plural(total, 'point')}: {done_before} done before, "
            f"{len(jobs)} to run{in_packs}"
            + (f" ({reattached} re-attached to their interrupted runs)" if reattached else "")
            + f"; {plural(concurrency, 'trial')} at a time, {each}\n"
        )
        out.flush()
        if packs:
            _tune(sweep, packs, ctx, concurrency, done_before, out, plan["ran"])
    except KeyboardInterrupt:
        _close(sweep, tracker, ctx, plan, concurrency, out, stopped="the driver was interrupted")
        raise
    except Exception as e:
        _close(sweep, tracker, ctx, plan, concurrency, out, error=f"the driver failed: {_short(e)}")
        raise
    return _close(sweep, tracker, ctx, plan, concurrency, out)


def _short(e: BaseException) -> str:
    """An exception in one line: its type and the first line of its message."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


def _disk_fault(sweep: Sweep, ctx: dict[str, Any], ran: TuneRun) -> str | None:
    """'no space left on device in <folder>' when trials failed or Tune raised and the storage's or the SQLite
    store's filesystem has not even room for a checkpoint left (or their errors say so)."""
    if not ran.errors and not ran.raised:
        return None
    folders = [ctx["storage"]]
    if ctx["tracking_uri"].startswith("sqlite:///"):
        folders.append(str(Path(ctx["tracking_uri"][len("sqlite:///") :]).parent))
    # a failed save removes its partial file: what is left free is less than a whole checkpoint, which
    # holds a few more m x m matrices than the least that checkpoint_bytes counts
    need = max(1 << 20, 4 * max(checkpoint_bytes(p.config()) for p in sweep.points))
    full = full_folders(folders, need)
    if full:
        return "no space left on device in " + ", ".join(f"{f} ({megabytes(free_bytes(f))} free)"
                                                           for f in full)  # fmt: skip
    if any(says_disk_full(t) for t in [*filter(None, ran.errors.values()), ran.raised or ""]):
        return f"no space left on device (in the storage {ctx['storage']} or the MLflow store)"
    return None


def _close(
    sweep: Sweep,
    tracker: SweepTracker,
    ctx: dict[str, Any],
    plan: dict[str, Any],
    concurrency: int,
    out: TextIO,
    stopped: str | None = None,
    error: str | None = None,
) -> SweepReport:
    """Close up: points whose trials Tune gave up on end FAILED, runs left RUNNING end KILLED (with the
    reason: `stopped`, an interruption, or the fault), the parent ends FINISHED / FAILED (some failed, or a
    fault) / KILLED (stopped), done points drop their checkpoints. Never raises: what it cannot write in
    MLflow, the report's fault says."""
    experiment_id, parent_id, total = ctx["experiment_id"], ctx["parent_run_id"], len(sweep.points)
    ran: TuneRun = plan["ran"]
    faults = [_disk_fault(sweep, ctx, ran), error]
    if ran.raised and not stopped:  # Ctrl+C may surface from fit() as an error of its own
        faults.append(f"Ray Tune failed: {ran.raised}")
    fault = "; ".join(f for f in faults if f) or None
    unwritten: list[str] = []  # MLflow writes that failed

    def write(fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:
            unwritten.append(_short(e))

    if fault:  # room for MLflow's own writes, if the store shares the full disk: Tune's folder is not needed
        with contextlib.suppress(Exception):
            prune(ctx["storage"], sweep.name)
    for i, text in ran.errors.items():  # retries spent: its process kept dying, or MLflow or storage failed
        why = text or f"its trial failed after {sweep.max_failures} retries ({fault or 'no error kept'})"
        for job in plan["packs"][i]:
            write(_fail_point, tracker, ctx, job["point"], why)

    counts = {"done": plan["done_before"], "failed": 0, "missing": total - plan["done_before"]}
    keep: set[str] | None = None  # the checkpoints a re-run resumes from (None: unknown, keep them all)
    try:
        children = tracker.children(experiment_id, parent_id)
    except Exception as e:
        unwritten.append(_short(e))
    else:
        counts, keep = {"done": 0, "failed": 0, "missing": 0}, set()
        reason = f"the sweep stopped: {fault}" if fault else stopped or "its trial stopped without closing it"
        for p in sweep.points:
            state, run = point_state(children.get(p.point_id, []))
            if state == "running":
                write(tracker.mark_killed, run.run_id, reason)
                state = "missing"
            counts[state] += 1
            if state == "missing":
                keep.add(p.point_id)
    if counts["done"] == total and not fault:
        status = "FINISHED"
    else:
        status = "KILLED" if counts["missing"] and not fault else "FAILED"
    write(tracker.close_parent, parent_id, status, {**counts, "total": total}, fault)
    if keep is not None:
        try:
            prune(ctx["storage"], sweep.name, keep)
        except OSError as e:
            out.write(f"[{sweep.name}] could not prune old checkpoints in {ctx['storage']}: {e}\n")
    if unwritten:
        n = len(unwritten)
        fault = (f"{fault}; " if fault else "") + (
            f"{n} write{'s' * (n > 1)} to MLflow at {ctx['tracking_uri']} failed ({unwritten[0]}): runs "
            "it could not close stay RUNNING until the next run of this sweep marks them KILLED"
        )
    return SweepReport(
        name=sweep.name, tracking_uri=ctx["tracking_uri"], experiment_id=experiment_id,
        parent_run_id=parent_id, total=total, done=counts["done"], failed=counts["failed"],
        missing=counts["missing"], ran=len(plan["jobs"]), trials=len(plan["packs"]), wall_s=0.0,
        train_s=ran.train_s, concurrency=concurrency, fault=fault,
    )  # fmt: skip


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
    return SweepReport(
        name=sweep.name, tracking_uri=tracker.uri, experiment_id=experiment_id,
        parent_run_id=parent.info.run_id, total=len(sweep.points), done=len(sweep.points), failed=0,
        missing=0, ran=0, trials=0, wall_s=0.0, train_s=0.0, concurrency=0,
    )  # fmt: skip


def pack_points(sweep: Sweep, points: list[Point], slots: int) -> list[list[int]]:
    """Indices into points, grouped into the trials that will train them (packing.plan), costliest first."""
    from rnnsgd.sweep.packing import plan

    cfgs = [p.config() for p in points]
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


def _fail_point(tracker: SweepTracker, ctx: dict[str, Any], point: Point, error: str) -> None:
    """A point whose trial Tune gave up on (its retries are spent): its run, or a new one if the trial died
    before opening it, ends FAILED with Tune's error as the traceback. Raises what MLflow raises (MLflow
    itself may be what failed)."""
    runs = tracker.children(ctx["experiment_id"], ctx["parent_run_id"]).get(point.point_id, [])
    state, run = point_state(runs)
    if state in ("done", "failed"):
        return
    trial_run = TrialRun.attach(ctx["tracking_uri"], ctx, point, run.run_id if run else None)
    if trial_run is None:  # ended by an attempt of its trial
        return
    trial_run.start(point, {"rnnsgd.error": error.strip().splitlines()[-1][:500]})
    trial_run.finish("error", traceback=error)


def pack_label(pack: list[dict[str, Any]]) -> str:
    """A pack's name in progress lines: its one point's label, or what its points share and how many."""
    if len(pack) == 1:
        return pack[0]["point"].label()
    coords = [j["point"].coords for j in pack]
    shared = {k: v for k, v in coords[0].items() if all(c.get(k) == v for c in coords)}
    what = " ".join(f"{k.rpartition('.')[2]}={format_value(v)}" for k, v in shared.items())
    return f"{what} ({len(pack)} points)".strip()


def _tune(
    sweep: Sweep,
    packs: list[list[dict]],
    ctx: dict,
    concurrency: int,
    done_before: int,
    out: TextIO,
    ran: TuneRun,
) -> None:
    """One Tuner, one trial per pack, the costliest first; SIGTERM stops it as gracefully as Ctrl+C. `ran`
    gets what a callback sees, and what fit() raises, which it keeps from the caller (fit() builds its
    results from the trials' files, and a full disk leaves them empty: EOFError); Ctrl+C still raises."""
    from ray import tune

    from rnnsgd.sweep.progress import Progress
    from rnnsgd.sweep.trial import run_trial

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)

    class _Outcomes(tune.Callback):
        def __init__(self, ran: TuneRun) -> None:
            self.ran = ran

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.ran.train_s += float((trial.last_result or {}).get("train_s", 0.0))

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            try:  # Tune has just written it to the trial's folder, if it could
                error = trial.get_pickled_error() or trial.get_error()
            except Exception:
                error = None
            self.ran.errors[trial.config["i"]] = str(error) if error else None

    progress = Progress(sweep.name, len(sweep.points), done_before, [pack_label(p) for p in packs],
                        [len(p) for p in packs], stream=out)  # fmt: skip
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, ctx=ctx, packs=packs),
        {"cpu": sweep.resources.cpu, "gpu": sweep.resources.gpu},
    )

    def name(trial) -> str:  # the first point's id, and how many more share the trial
        pack = packs[trial.config["i"]]
        return pack[0]["point"].point_id + (f"+{len(pack) - 1}" if len(pack) > 1 else "")

    tuner = tune.Tuner(
        trainable,
        param_space={"i": tune.grid_search(list(range(len(packs))))},  # plan() put the costliest first
        tune_config=tune.TuneConfig(
            reuse_actors=True,
            max_concurrent_trials=concurrency,
            trial_name_creator=name,
            trial_dirname_creator=lambda t: f"{name(t)}_{t.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}",
            storage_path=f"{ctx['storage'].rstrip('/')}/{sweep.name}/tune",
            verbose=0,
            callbacks=[progress, _Outcomes(ran)],
            failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
        ),
    )
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    try:
        tuner.fit()
    except Exception as e:
        ran.raised = _short(e)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        progress.close()
