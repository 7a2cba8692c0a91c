"""Every MLflow call of the sweep service: experiment, parent run, child runs, statuses, batched metrics.

One experiment per sweep name, one parent run per sweep (re-opened by every re-run of it), one child run per
grid point. Runs end FINISHED (outcome completed, budget or diverged), KILLED (stopped or orphaned) or FAILED
(with the traceback as an artifact). Only the driver writes MLflow: `SweepTracker` for the sweep, `PointRun`
for each point's run, which it writes from what the point's trial reports (rnnsgd.sweep.recorder).

What the MLflow UI shows is set here too (docs/sweeps.md, "What MLflow holds"): the experiment is tagged as
model training, not GenAI; the parent carries the sweep's description, its axes and base values as params
and the sweep file; the experiment holds a saved view of the runs page (`sweep_view`) with the headline
metrics, the varying keys and the outcome as columns and the headline charts first, on a log step axis,
which `experiment_url` opens; a report adds its files and a results table to the parent (`log_report`).

Metric values are logged as they come, NaN included (a NaN means "not defined here", e.g. perf/steps_per_s
at step 0, or a diverged run). A run holds each step once, over retries and resumes (PointRun.last_step);
readers still dedupe by (run, key, step), keeping the last, for runs logged before that held.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rnnsgd.config import FLAT_KEYS, format_value
from rnnsgd.metrics import GEN_GAP, NRISK, REL_RISK, REL_RISK_TAIL, STEP, TEST_RISK
from rnnsgd.sweep.spec import Point, Sweep, SweepError, sweep_from_dict

ROLE = "rnnsgd.role"  # "parent" | "trial"
DRIVER = "rnnsgd.driver"  # "host:pid" of the driver that last opened the parent
PARENT_ID = "mlflow.parentRunId"
DEFINITION = "sweep.json"  # the parent's artifact: the resolved sweep, read back by `rnnsgd status NAME`
TRACEBACK = "traceback.txt"
FAULT = "rnnsgd.fault"  # on the parent: what stopped the sweep (a full disk, Ray Tune failing), if anything
RUN_KEY = "rnnsgd.run_key"  # on a point's run: the key its checkpoints carry (jobs.Job)
RESTARTED = "rnnsgd.restarted"  # on a FAILED run whose point went on in a new run: why (a corrupt checkpoint)
PARAM_MAX = 500  # MLflow params are strings; the flat config's values are far shorter
NOTE = "mlflow.note.content"  # the UI's description of a run or an experiment
KIND = "mlflow.experimentKind"  # the experiment type the UI's selector writes
TRAINING = "custom_model_development"  # the UI's "Machine learning" kind (not "genai_development")
SWEEP_FILE = "sweep.yaml"  # the parent's artifact: the sweep file as written (sweep.json: as resolved)
CHANGED = "rnnsgd.changed_params"  # on the parent: params a later run of the sweep would have changed
TRAINING_PAGES = "workflowType=machine_learning"  # the UI's query for its model-training pages, not GenAI's
VIEW_ID = "sweep"  # the saved view's id: the URL's viewStateShareKey, and the tag's suffix
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_ID}"  # where the UI keeps a saved view of the runs page
# the metrics a point is read by (docs/metrics.md), first in the saved view's columns and charts, with the
# y scale of their chart: risks are positive and span decades; relative risk and gap are read linearly
HEADLINE = {
    REL_RISK_TAIL: "linear",
    REL_RISK: "linear",
    TEST_RISK: "log",
    NRISK: "log",
    GEN_GAP: "linear",
}

# How a run ends, in the three words for it, mapped here once: the trainer's outcome (rnnsgd.train, or killed
# / error from the sweep) -> MLflow's run status -> the point's state in its sweep. A point is done when it
# has a FINISHED run, else its latest run says; a KILLED run (stopped, orphaned) leaves its point missing.
OUTCOME_STATUS = {
    "completed": "FINISHED",
    "budget": "FINISHED",
    "diverged": "FINISHED",
    "killed": "KILLED",
    "error": "FAILED",
}
STATES = ("done", "failed", "running", "missing")  # a point's states, in the order `rnnsgd status` shows
STATUS_STATE = {"FINISHED": "done", "FAILED": "failed", "RUNNING": "running"}  # any other: missing
STATUS_RANK = {"FINISHED": 0, "RUNNING": 1, "KILLED": 2, "FAILED": 3}  # which of a point's runs counts first


def parent_status(counts: dict[str, int], total: int, fault: str | None) -> str:
    """The parent run's status from its points' states: FINISHED (all done, no fault), KILLED (stopped
    before the end), else FAILED (some failed, or a fault stopped it)."""
    if counts["done"] == total and not fault:
        return "FINISHED"
    return "KILLED" if counts["missing"] and not fault else "FAILED"


def default_tracking_uri(cwd: str | Path | None = None) -> str:
    """sqlite:////<abs cwd>/runs/mlflow.db: absolute, because every trial runs in a folder of its own."""
    return f"sqlite:///{(Path(cwd or os.getcwd()) / 'runs' / 'mlflow.db').resolve()}"


def resolve_tracking_uri(cli: str | None, from_file: str | None, source: str) -> tuple[str, str]:
    """(uri, where it came from): --tracking-uri, else MLFLOW_TRACKING_URI, else the sweep file, else the
    default."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    for uri, where in (
        (cli, "--tracking-uri"),
        (env, "MLFLOW_TRACKING_URI"),
        (from_file, f"{source}: tracking_uri"),
    ):
        if uri is not None and not uri.strip() and where == "--tracking-uri":
            raise SweepError("--tracking-uri: empty; give a URI, or leave it out for the default")
        if uri and uri.strip():
            return normalize_uri(uri.strip(), where), where
    return default_tracking_uri(), "default tracking URI"


def normalize_uri(uri: str, where: str) -> str:
    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
        if not path:
            raise SweepError(f"{where}: expected sqlite:////absolute/path/mlflow.db, got {uri!r}")
        return f"sqlite:///{os.path.abspath(path)}"  # relative paths would move with each trial's folder
    if scheme in ("", "file"):
        raise SweepError(
            f"{where}: {uri!r} is a file store, which MLflow 3 refuses; "
            "use sqlite:////absolute/path/mlflow.db or a server, http://host:5000"
        )
    return uri


def check_reachable(uri: str, where: str, timeout: float = 5.0) -> None:
    """Fail fast (SweepError) when the store cannot be written or the server does not answer."""
    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        folder = Path(uri[len("sqlite:///") :]).parent
        existing = next(p for p in (folder, *folder.parents) if p.exists())  # created when the store is
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise SweepError(f"{where}: cannot create the store {uri} ({existing} is not a writable folder)")
    elif scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                if r.status != 200:
                    raise SweepError(f"{where}: {uri} answered /health with HTTP {r.status}")
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise SweepError(f"{where}: cannot reach the MLflow server at {uri} ({reason})") from None
    else:
        try:
            _client(uri).search_experiments(max_results=1)
        except Exception as e:
            raise SweepError(f"{where}: cannot use tracking URI {uri} ({type(e).__name__}: {e})") from None


def store_exists(uri: str) -> bool:
    """False for a SQLite store that was never created (reading it must not create it)."""
    return not uri.startswith("sqlite:///") or Path(uri[len("sqlite:///") :]).is_file()


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock on `<database>.lock` beside a SQLite store (a no-op for a server, which serializes
    its own writes). Held by a driver while it creates or migrates the store and while it finds or creates
    its experiment and parent run: two drivers started at once on one sweep would otherwise both create
    them, or race in MLflow's migrations. Best effort: where the lock file cannot be opened (a read-only
    folder), nothing is locked and MLflow's own error says what is wrong."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    try:
        fd = os.open(uri[len("sqlite:///") :] + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


_CLIENTS: dict[str, Any] = {}


def _client(uri: str):
    """One client per URI and process (a reused Ray actor keeps it across trials)."""
    if uri not in _CLIENTS:
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "1")  # no "View run at" per run
        from mlflow import MlflowClient

        _CLIENTS[uri] = MlflowClient(tracking_uri=uri)
    return _CLIENTS[uri]


def _now_ms() -> int:
    return int(time.time() * 1000)


def driver_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive_here(driver: str | None) -> bool:
    """True when `driver` ("host:pid") is a live process on this host other than this one."""
    host, _, pid = (driver or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class ChildRun:
    run_id: str
    point_id: str
    status: str  # RUNNING | SCHEDULED | FINISHED | FAILED | KILLED
    outcome: str | None
    start_time: int
    end_time: int | None
    run_key: str | None  # RUN_KEY (None on a run from before keys)


def point_state(runs: list[ChildRun]) -> tuple[str, ChildRun | None]:
    """A point's state from its runs: done (a FINISHED run), else the latest run's status, else missing."""
    finished = [r for r in runs if STATUS_STATE.get(r.status) == "done"]
    if finished:
        return "done", max(finished, key=lambda r: r.start_time)
    if not runs:
        return "missing", None
    latest = max(runs, key=lambda r: r.start_time)
    return STATUS_STATE.get(latest.status, "missing"), latest


def search_all(client: Any, experiment_id: str, filter_string: str) -> list[Any]:
    """Every active run of the experiment that the filter matches, over MLflow's pages of 1000."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


class SweepTracker:
    """The driver's side: experiment, parent run, the existing children, orphans, the parent's end."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        if uri.startswith("sqlite:///"):
            folder = Path(uri[len("sqlite:///") :]).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise SweepError(f"tracking URI {uri}: cannot create {folder} ({e.strerror})") from None
        # a new SQLite store runs MLflow's migrations here, once (quietly: they log each step at INFO); two
        # processes migrating one new store at once collide ("duplicate column name"), hence the lock
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        with self.lock():
            new_store = uri.startswith("sqlite:///") and not store_exists(uri)
            self.client = _client(uri)
            self.client.search_experiments(max_results=1)
            if new_store:
                self._drop_default_experiment()

    def _drop_default_experiment(self) -> None:
        """Delete the empty "Default" experiment (id 0) that MLflow puts into every new database store, so
        that the store this sweep created lists only sweeps. Deleted, not purged: MLflow re-creates
        experiment 0 when a store starts only where there is none at all, so a deleted one stays deleted
        (`mlflow experiments restore --experiment-id 0` brings it back)."""
        from mlflow.entities import ViewType
        from mlflow.exceptions import MlflowException

        try:
            exp = self.client.get_experiment("0")
        except MlflowException:  # a store without one: nothing to do
            return
        if exp.name != "Default" or exp.lifecycle_stage != "active":
            return
        if not self.client.search_runs(["0"], run_view_type=ViewType.ALL, max_results=1):
            self.client.delete_experiment("0")

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Between processes of this host, for a SQLite store: the creation of the store, and a driver's
        opening of its sweep (store_lock)."""
        return store_lock(self.uri)

    def experiment(self, name: str, create: bool = True) -> str | None:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None and exp.lifecycle_stage == "deleted":
            restore = f"mlflow experiments restore --experiment-id {exp.experiment_id}"
            raise SweepError(
                f"name: MLflow experiment {name!r} was deleted; restore it ({restore}) or rename it"
            )
        if exp is not None:
            return exp.experiment_id
        if not create:
            return None
        location = None
        if self.uri.startswith("sqlite:///"):  # artifacts next to the database, by absolute path
            location = str(Path(self.uri[len("sqlite:///") :]).parent / "mlartifacts" / name)
        return self.client.create_experiment(name, artifact_location=location, tags={KIND: TRAINING})

    def describe_experiment(self, experiment_id: str, sweep: Sweep) -> None:
        """The experiment's description (the sweep's), its kind (model training, unless someone chose
        another in the UI since) and the saved view of its runs page, rewritten for the sweep as it is now."""
        exp = self.client.get_experiment(experiment_id)
        tags = {VIEW_TAG: sweep_view(sweep)}
        if KIND not in exp.tags:
            tags[KIND] = TRAINING
        if sweep.description:
            tags[NOTE] = sweep.description
        for key, value in tags.items():
            self.client.set_experiment_tag(experiment_id, key, value)

    def find_parent(self, experiment_id: str):
        runs = self.client.search_runs(
            [experiment_id],
            f"tags.`{ROLE}` = 'parent'",
            max_results=1,
            order_by=["attributes.start_time ASC"],
        )
        return runs[0] if runs else None

    def open_parent(self, experiment_id: str, sweep: Sweep, tags: dict[str, str]) -> str:
        """Create the sweep's parent run, or re-open it; refuse while a live driver on this host holds it.
        Then describe it: the sweep's description, its axes and base values as params (parent_params), the
        resolved sweep (sweep.json) and the sweep file (sweep.yaml) as artifacts; and the experiment
        (describe_experiment)."""
        name = sweep.name
        parent = self.find_parent(experiment_id)
        if parent is not None:
            holder = parent.data.tags.get(DRIVER)
            if parent.info.status == "RUNNING" and _alive_here(holder):
                raise SweepError(
                    f"name: sweep {name!r} is being run right now by {holder}; wait or stop that driver"
                )
            run_id = parent.info.run_id
            self.client.update_run(run_id, status="RUNNING")
            logged = parent.data.params
        else:
            run_id = self.client.create_run(
                experiment_id, run_name=name, tags={ROLE: "parent", "sweep": name, **tags}
            ).info.run_id
            logged = {}
        from mlflow.entities import Param, RunTag

        # MLflow refuses to change a logged param: a re-run that grew an axis keeps the first values there
        # and names the keys in CHANGED (sweep.json, rewritten below, has the sweep as it is now)
        params = parent_params(sweep)
        changed = sorted(k for k, v in params.items() if k in logged and logged[k] != v)
        run_tags = [RunTag(DRIVER, driver_id()), *(RunTag(k, v) for k, v in tags.items())]
        if sweep.description:
            run_tags.append(RunTag(NOTE, sweep.description))
        if changed:
            run_tags.append(RunTag(CHANGED, ", ".join(changed)[:PARAM_MAX]))
        self.client.log_batch(run_id, tags=run_tags)
        new = [Param(k, v) for k, v in params.items() if k not in logged]
        for i in range(0, len(new), 100):  # MLflow's limit on params and tags per log_batch
            self.client.log_batch(run_id, params=new[i : i + 100])
        if not changed and parent is not None and CHANGED in parent.data.tags:
            self.client.delete_tag(run_id, CHANGED)
        self.client.log_dict(run_id, sweep.definition, DEFINITION)
        source = Path(sweep.source)
        if not sweep.source.startswith("mlflow:") and source.is_file():  # a sweep file, not a stored one
            self.client.log_text(run_id, source.read_text(), SWEEP_FILE)
        self.describe_experiment(experiment_id, sweep)
        return run_id

    def children(self, experiment_id: str, parent_id: str) -> dict[str, list[ChildRun]]:
        """point_id -> its runs under the parent."""
        out: dict[str, list[ChildRun]] = {}
        for r in search_all(self.client, experiment_id, f"tags.`{PARENT_ID}` = '{parent_id}'"):
            pid, info = r.data.tags.get("point_id"), r.info
            if pid:
                tags, start = r.data.tags, info.start_time or 0
                outcome, key = tags.get("outcome"), tags.get(RUN_KEY)
                run = ChildRun(info.run_id, pid, info.status, outcome, start, info.end_time, key)
                out.setdefault(pid, []).append(run)
        return out

    def mark_killed(self, run_id: str, reason: str) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(
            run_id, tags=[RunTag("outcome", "killed"), RunTag("rnnsgd.killed_reason", reason)]
        )
        self.client.set_terminated(run_id, "KILLED")

    def close_parent(
        self, run_id: str, status: str, counts: dict[str, int], fault: str | None = None
    ) -> None:
        """End the parent with the counts; `fault` (what stopped the sweep) becomes its rnnsgd.fault tag,
        which a later clean close removes."""
        from mlflow.entities import Metric, RunTag

        ts = _now_ms()
        tags = [RunTag(f"rnnsgd.{k}", str(v)) for k, v in counts.items()]
        if fault:
            tags.append(RunTag(FAULT, fault[:5000]))
        elif FAULT in self.client.get_run(run_id).data.tags:
            self.client.delete_tag(run_id, FAULT)
        self.client.log_batch(
            run_id, metrics=[Metric(f"sweep/{k}", float(v), ts, 0) for k, v in counts.items()], tags=tags
        )
        self.client.set_terminated(run_id, status)

    def parent_info(self, name: str) -> tuple[str, Any] | None:
        """(experiment_id, parent Run) of the sweep called `name`, or None when MLflow has never seen it."""
        exp_id = self.experiment(name, create=False)
        if exp_id is None:
            return None
        parent = self.find_parent(exp_id)
        return None if parent is None else (exp_id, parent)

    def definition(self, parent_id: str) -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            return json.loads(Path(self.client.download_artifacts(parent_id, DEFINITION, tmp)).read_text())


def parent_params(sweep: Sweep) -> dict[str, str]:
    """The parent's params: `axis.<key>` for each key whose value differs between points, its values in the
    order they first appear ("8, 64"); `base.<key>` for each other key the sweep sets (in a base, or as an
    axis of one value), its value."""
    if not sweep.points:
        return {}
    varying = sweep.varying_keys()
    named = {k for b in sweep.blocks for k in (*b.base, *(key for a in b.axes for key in a.keys))}
    out = {}
    for key in varying:
        values = list(dict.fromkeys(format_value(p.flat[key]) for p in sweep.points))
        sep = " | " if any("," in v for v in values) else ", "  # a tuple's value is written "1,2"
        text = sep.join(values)
        if len(text) > PARAM_MAX:
            tail = f" ... ({len(values)} values)"
            text = text[: PARAM_MAX - len(tail)] + tail
        out[f"axis.{key}"] = text
    for key in sorted(named - set(varying)):
        out[f"base.{key}"] = format_value(sweep.points[0].flat[key])[:PARAM_MAX]
    return out


def experiment_url(base: str, experiment_id: str) -> str:
    """The experiment's runs page in the MLflow UI served at `base`: as model training (the UI opens GenAI
    pages unless the address or the sidebar's switch says otherwise) and in the sweep's saved view."""
    return (
        f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{TRAINING_PAGES}&viewStateShareKey={VIEW_ID}"
    )


_SECTION = "rnnsgd-headline"  # fixed ids: a re-run rewrites the view without changing what it shows
# what the saved view holds whatever the sweep: the runs page's settings, the headline charts' section and
# what each chart of it shares
_PAGE = {
    "searchFilter": "",
    "orderByKey": "attributes.start_time",
    "orderByAsc": False,
    "startTime": "ALL",
    "lifecycleFilter": "Active",
    "modelVersionFilter": "All Runs",
    "datasetsFilter": [],
    "runsHiddenMode": "SHOW_ALL",
    "viewMaximized": False,
    "runListHidden": False,
    "groupsExpanded": {},
    "hideEmptyCharts": True,
    "compareRunSections": [
        {
            "uuid": _SECTION,
            "name": "Headline metrics",
            "display": True,
            "isReordered": True,
            "deleted": False,
            "isGenerated": False,
        },
    ],
    "isAccordionReordered": True,
    "chartsSearchFilter": "",
    "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
}
_CHART = {
    "type": "LINE",
    "metricSectionId": _SECTION,
    "deleted": False,
    "isGenerated": False,
    "lineSmoothness": 0,
    "xAxisKey": "step",
    "xAxisScaleType": "log",
    "selectedXAxisMetricKey": "",
    "useGlobalXaxisKey": False,
    "useGlobalLineSmoothing": True,
}


def sweep_view(sweep: Sweep) -> str:
    """The saved view of the experiment's runs page, as the UI's "Save view" writes it (the tag VIEW_TAG):
    a JSON envelope {name, createdAt, state} whose state is the page's state as JSON.

    The point runs are grouped by cell (the varying keys other than seeds; by role where only seeds vary):
    grouped rows are listed flat, where the collapsed parent would hide its children from table and charts
    alike, and the charts draw each cell's average over its seeds with their range. All runs are charted
    (the UI charts the first ten otherwise). Columns, in order: the headline metrics, varying keys, outcome.
    Charts: the headline metrics first, in a section of their own, over the SGD step on a log axis (the
    evaluations are geometric in the step); the UI adds the other metrics' charts after them, by section."""
    charts = [
        {
            **_CHART,
            "uuid": f"rnnsgd-{key}",
            "metricKey": key,
            "selectedMetricKeys": [key],
            "runsCountToCompare": max(10, len(sweep.points)),
            "scaleType": scale,
        }
        for key, scale in HEADLINE.items()
    ]
    varying = sweep.varying_keys()
    columns = [*(f"metrics.`{m}`" for m in HEADLINE), *(f"params.`{k}`" for k in varying), "tags.`outcome`"]
    # the table's own columns, then these in this order, wide enough for a point's name and a risk's digits
    order = ["attributes.`Run Name`", "runDateAndNestInfo", "duration", *columns]
    widths = {order[0]: 300, **{c: 120 for c in columns if c.startswith("metrics.")}}
    cell = [{"mode": "param", "groupByData": k} for k in varying if not k.startswith("seed.")]
    state = {
        **_PAGE,
        "selectedColumns": columns,
        "columnOrder": order,
        "columnWidths": widths,
        "groupBy": {
            "aggregateFunction": "average",
            "groupByKeys": cell or [{"mode": "tag", "groupByData": ROLE}],
        },
        "useGroupedValuesInCharts": bool(cell),
        "compareRunCharts": charts,
    }
    name = f"{sweep.name}: points and headline metrics"
    return json.dumps({"name": name, "createdAt": _now_ms(), "state": json.dumps(state)})


RESULTS = "report/results.json"  # the parent's table of the report's points (MLflow's log_table format)


def results_table(runs):
    """The report's one-row-per-point frame cut to what tells the points apart and how they ended: the
    config keys that vary, outcome and status, the headline metrics (their last values), point and run ids."""
    keys = [k for k in FLAT_KEYS if k in runs and runs[k].astype(str).nunique() > 1]
    tail = [c for c in ("outcome", "status", *HEADLINE, "point_id", "run_id") if c in runs]
    return runs[keys + tail].reset_index(drop=True)


def log_report(uri: str, run_id: str, folder: str | Path, runs) -> None:
    """A report on its sweep's parent run: the folder (report.md, report.html, figures/) under report/, and
    `results_table(runs)` as the table RESULTS, which the UI shows as a table."""
    client = _client(uri)
    client.log_artifacts(run_id, str(folder), "report")
    table = results_table(runs)
    if any(f.path == RESULTS for f in client.list_artifacts(run_id, "report")):
        # log_table appends to an existing table: an earlier report's is replaced, in log_table's format
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(RESULTS).name
            table.to_json(path, orient="split", index=False, date_format="iso")
            client.log_artifact(run_id, str(path), str(Path(RESULTS).parent))
    else:
        client.log_table(run_id, table, RESULTS)


def driver_alive(parent) -> bool:
    """Whether the driver holding this parent run may still run (one on another host is assumed to)."""
    holder = parent.data.tags.get(DRIVER) or ""
    if parent.info.status != "RUNNING":
        return False
    return holder.rpartition(":")[0] != socket.gethostname() or _alive_here(holder)


@dataclass(frozen=True)
class SweepRun:
    """Where one driver's run of a sweep lives in MLflow: its points' runs are children of parent_run_id."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    sweep: str
    git_sha: str


class PointRun:
    """A point's run, written by the driver from what its trial reports (rnnsgd.sweep.recorder): created, or
    re-opened, when the trial first reports; metrics buffered and sent in one request when `due` (FLUSH_S
    after the oldest unsent one) and at the end; ended once.

    last_step is the last step the run holds or has buffered: an evaluation at a step not past it is dropped,
    so that what a resumed trial sends again (its checkpoint's history) is logged once. Buffering costs
    nothing on a kill: what was not sent is in the points' checkpoints, and is sent again on resume.
    """

    FLUSH_S = 5.0
    MAX_BATCH = 1000  # MLflow's limit on metrics per log_batch

    def __init__(self, uri: str, run_id: str, last_step: int) -> None:
        self.client = _client(uri)
        self.run_id = run_id
        self.last_step = last_step
        self.buffer: list[list[Any]] = []  # one list of Metric per evaluation
        self.since = 0.0  # monotonic() of the oldest evaluation in the buffer

    @classmethod
    def create(cls, where: SweepRun, point: Point, run_key: str) -> PointRun:
        """A new run of the point under the sweep's parent, with the flat config as params."""
        tags = {
            PARENT_ID: where.parent_run_id,
            ROLE: "trial",
            "sweep": where.sweep,
            "point_id": point.point_id,
            "seed": str(point.flat["seed.run"]),
            "git_sha": where.git_sha,
            RUN_KEY: run_key,
        }
        client = _client(where.tracking_uri)
        run = client.create_run(where.experiment_id, run_name=point.label(), tags=tags)
        client.log_batch(run.info.run_id, params=config_params(point.flat))
        return cls(where.tracking_uri, run.info.run_id, last_step=-1)

    @classmethod
    def reopen(cls, uri: str, run_id: str, point: Point, run_key: str) -> PointRun:
        """An interrupted run, RUNNING again, with the key its point's checkpoints now carry and the params
        (again: the same values, in case the driver that created it died before it logged them)."""
        from mlflow.entities import RunTag

        client = _client(uri)
        client.update_run(run_id, status="RUNNING")
        client.log_batch(run_id, params=config_params(point.flat), tags=[RunTag(RUN_KEY, run_key)])
        history = client.get_metric_history(run_id, TEST_RISK)
        return cls(uri, run_id, last_step=max((m.step for m in history), default=-1))

    def tag(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log(self, evaluations: list[dict[str, float]]) -> None:
        """Buffer the evaluations at a step past last_step (their metrics, all but "step"); send the buffer
        when it is due."""
        from mlflow.entities import Metric

        ts = _now_ms()
        for metrics in evaluations:
            step = int(metrics[STEP])
            if step <= self.last_step:
                continue
            if not self.buffer:
                self.since = time.monotonic()
            self.buffer.append([Metric(k, float(v), ts, step) for k, v in metrics.items() if k != STEP])
            self.last_step = step
        if self.due():
            self.flush()

    def due(self) -> bool:
        return bool(self.buffer) and time.monotonic() - self.since >= self.FLUSH_S

    def flush(self, tags: list[Any] = ()) -> None:
        """Send the buffer in as few requests as fit, never splitting an evaluation across two."""
        chunk: list[Any] = []
        for evaluation in self.buffer:
            if chunk and len(chunk) + len(evaluation) > self.MAX_BATCH:
                self.client.log_batch(self.run_id, metrics=chunk)
                chunk = []
            chunk.extend(evaluation)
        if chunk or tags:
            self.client.log_batch(self.run_id, metrics=chunk, tags=list(tags))
        self.buffer.clear()

    def finish(self, outcome: str, tags: dict[str, str] | None = None, traceback: str | None = None) -> None:
        """Send what is buffered, then end the run: FINISHED / KILLED / FAILED from the outcome; a traceback
        becomes an artifact."""
        from mlflow.entities import RunTag

        if traceback is not None:
            with contextlib.suppress(Exception):  # the status matters more than the artifact
                self.client.log_text(self.run_id, traceback, TRACEBACK)
        self.flush(tags=[RunTag("outcome", outcome), *(RunTag(k, v) for k, v in (tags or {}).items())])
        self.client.set_terminated(self.run_id, OUTCOME_STATUS[outcome])


def config_params(flat: dict[str, Any]) -> list[Any]:
    """A run's params: its flat config, each value as the CLI writes it (format_value)."""
    from mlflow.entities import Param

    return [Param(k, format_value(v)[:PARAM_MAX]) for k, v in flat.items()]


def error_tag(text: str) -> str:
    """The rnnsgd.error tag of a failed run: the last line of its traceback (the exception), cut to fit."""
    return text.strip().splitlines()[-1][:500]


def stored_sweep(name: str, tracking_uri: str | None = None, sets: dict[str, str] | None = None) -> Sweep:
    """The sweep called `name` as its parent run stored it (for `status NAME`, `sweep --resume NAME`)."""
    uri, where = resolve_tracking_uri(tracking_uri, None, name)
    check_reachable(uri, where)
    found = SweepTracker(uri).parent_info(name) if store_exists(uri) else None
    if found is None:
        raise SweepError(f"{name}: no such sweep file, and no sweep of that name in {uri}")
    return sweep_from_dict(SweepTracker(uri).definition(found[1].info.run_id), f"mlflow:{name}", None, sets)
