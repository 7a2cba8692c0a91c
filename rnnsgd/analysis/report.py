"""`rnnsgd report SWEEP`: the sweep's grid, figures, fit tables and one plain verdict per claim (C1-C6).

The claims are those of Allen-Zhu & Li 2019 (arXiv 1902.01028) that the experiments test: samples (C1) and
iterations (C3) polynomial in L and the width entering only through log m (C2), as its main theorem states;
SGD staying near its initialization (C4) and not needing a spectral radius below 1 (C5), as its proof does;
one recurrent unit learning every (i -> j) token pair (C6), as its concept class asks.

Every verdict comes with its evidence, its uncertainty and the threshold it read, in words. Where there is no
answer the report says why in terms of the runs: a task not learned (under-fitting, budget, divergence), a
grid limited by its step budget (an answer about iterations, not samples), a claim this sweep does not target.
Controls (parity, unscaled inputs, another init variance, a linear network) get verdicts of their own against
the main task. The report opens with its provenance (when, from which code, which store and parent run, with
links to the runs in the MLflow UI) and the metric and level in words, then shows the risk over the grid as
tables and heatmaps, learning curves, N*(L) with the fitted laws, and the near-init quantities against m.
This module computes the claims and the report's data (Report); rnnsgd.analysis.render writes it as Markdown
and as a self-contained HTML page, logged as artifacts on the sweep's parent run.
"""

from __future__ import annotations

import datetime
import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlparse

import numpy as np
import pandas as pd

from rnnsgd.metrics import REL_RISK, REL_RISK_TAIL, RISK_WORDS
from rnnsgd.sweep.tracking import TRAINING_PAGES, experiment_url

from . import plots
from .bootstrap import percentile_ci
from .fits import (
    DEFAULT_MIN_SPAN,
    DEFAULT_TOST_BOUND,
    ScalingLawFit,
    ols_coef_ci,
    select_scaling_law,
    tost_flat_slope,
)
from .load import load_history, load_runs
from .thresholds import (
    DEFAULT_LEVEL,
    DEFAULT_METRIC,
    DEFAULT_UNIT,
    censoring_summary,
    threshold,
)

AXES = (
    "data.L",
    "data.N",
    "model.m",
    "train.eps",
    "data.eps_x",
    "model.w_var",
    "model.activation",
    "data.task",
    "data.lags",
)
CLAIMS = ("C1", "C2", "C3", "C4", "C5", "C6")
TEXTS = {
    "C1": "Samples needed grow polynomially in L (N*(L): power law beats exponential).",
    "C2": "Samples needed depend on the width m only through log m (N*(m) flat: TOST on the log-log slope).",
    "C3": "Iterations needed grow polynomially in L (T*(L) in the online regime).",
    "C4": "SGD stays near init: sqrt(m)·||W_t||_F bounded in m; sign-flip fraction and linearization error "
    "fall with m.",
    "C5": "None of this needs spectral radius < 1 (it is ~ sqrt 2 at init).",
    "C6": "One recurrent unit learns a different function for every (i -> j) pair without interference.",
}
# C4's predicted slopes of the proof quantities against m (the paper's proof couples SGD to the network's
# linearization around its random init)
MECHANISM = {"w/move_fro": 0.0, "act/flip_frac": -1 / 3, "lin/rel_err": -1 / 6, "h/drift": None}
FIT_COLUMNS = (
    "law",
    "converged",
    "loglik",
    "aicc",
    "delta_aicc",
    "akaike_weight",
    "bic",
    "p_win",
    "a",
    "k",
    "k_lo",
    "k_hi",
    "c",
    "c_lo",
    "c_hi",
    "theta",
    "extrap_rmse",
    "note",
)

# The main task tests the concept class as the paper sets it up; any run off it on one of these is a control.
MAIN = {
    "data.task": lambda v: v in ("paper", "long_range", "lags"),
    "data.eps_x": lambda v: v < 1,
    "model.w_var": lambda v: v == 2,
    "model.activation": lambda v: v == "relu",
}
NEEDS = {
    "C1": "offline runs at >= 3 values of data.L and >= 2 of data.N",
    "C2": "offline runs at >= 2 values of model.m and >= 2 of data.N",
    "C3": "online runs (data.online=true) at >= 3 values of data.L",
    "C4": ">= 2 values of model.m",
    "C5": ">= 2 values of model.w_var or model.activation",
    "C6": "runs of task lags",
}
# below these, a run counts as near its init (few ReLU sign flips, a network close to its linearization)
NEAR_INIT = {"act/flip_frac": 0.05, "lin/rel_err": 0.1}
BUDGET_SHARE = 0.25  # more budget-censored units than this share of a grid's units: it measures the budget
UNDERFIT = 0.8  # median relative train risk at or above this: train ~ test ~ the best constant
# a control whose median threshold is within this factor of the main task's at every L learned alike
ALIKE_RATIO = 2.0
# the largest drop of a lag's recovery R^2 from alone to together that still counts as no interference
C6_TOL = 0.1


class UnknownMetric(ValueError):
    """The metric asked for is not one the sweep's runs logged."""


@dataclass
class Claim:
    id: str
    text: str
    verdict: str  # a plain word: supported, polynomial, not learned: ..., "insufficient data", "not targeted"
    evidence: str
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    criterion: str = ""  # the threshold the verdict read, in words
    targeted: bool = True


UI_PORT = 5000  # where `mlflow ui` serves a database store when the report's links are followed


@dataclass
class Provenance:
    """Where a report's numbers come from: when it was written, by which code, from which store and runs."""

    written: str  # UTC date and time
    code_sha: str  # the commit of the code that wrote the report (-dirty: with local changes)
    run_shas: list[str]  # the commits the runs were trained at
    tracking_uri: str
    experiment_id: str | None = None
    parent_run_id: str | None = None
    wall_minutes: float | None = None  # the parent run's wall time
    command: str = ""  # the command that wrote the report, where a command did

    def ui_base(self) -> str:
        """The MLflow UI's address: the tracking server itself for http(s), else `mlflow ui` on UI_PORT."""
        if urlparse(self.tracking_uri).scheme in ("http", "https"):
            return self.tracking_uri.rstrip("/")
        return f"http://127.0.0.1:{UI_PORT}"

    def ui_command(self) -> str:
        """What serves the links: nothing for a tracking server, else `mlflow ui` on the store."""
        if urlparse(self.tracking_uri).scheme in ("http", "https"):
            return ""
        return f"mlflow ui --backend-store-uri {self.tracking_uri} --port {UI_PORT}"

    def run_url(self, run_id: str) -> str:
        """A run's page, as model training (MLflow 3.17's UI opens GenAI pages unless the address says so)."""
        experiment = quote(str(self.experiment_id))
        return f"{self.ui_base()}/#/experiments/{experiment}/runs/{quote(run_id)}?{TRAINING_PAGES}"

    def experiment_url(self) -> str:
        return experiment_url(self.ui_base(), quote(str(self.experiment_id)))


def read_provenance(sweep: str, tracking_uri: str | None, runs: pd.DataFrame) -> Provenance:
    """The sweep's experiment and parent run from the store, the code's commit now and the runs' commits."""
    from mlflow.tracking import MlflowClient

    from rnnsgd.sweep.runner import git_sha
    from rnnsgd.sweep.tracking import SweepTracker

    client = MlflowClient(tracking_uri=tracking_uri)
    uri = str(client.tracking_uri)
    found = SweepTracker(uri).parent_info(sweep)
    exp = found[0] if found else getattr(client.get_experiment_by_name(sweep), "experiment_id", None)
    parent = found[1] if found else None
    wall = None
    if parent is not None and parent.info.end_time and parent.info.start_time:
        wall = (parent.info.end_time - parent.info.start_time) / 60000
    shas = sorted(runs["git_sha"].dropna().unique()) if "git_sha" in runs else []
    return Provenance(
        written=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        code_sha=git_sha(),
        run_shas=[str(v) for v in shas],
        tracking_uri=uri,
        experiment_id=None if exp is None else str(exp),
        parent_run_id=None if parent is None else parent.info.run_id,
        wall_minutes=wall,
    )


@dataclass
class Report:
    sweep: str
    runs: pd.DataFrame
    grid: pd.DataFrame
    claims: list[Claim]
    figures: dict[str, list[Path]]
    metric: str = DEFAULT_METRIC
    level: float = DEFAULT_LEVEL
    provenance: Provenance | None = None


def criterion(what: str, y: str, level: float) -> str:
    """The threshold in words, e.g. "N* = smallest N whose tail-averaged baseline-relative excess risk
    (test/rel_risk_tail) is <= 0.5"."""
    words = f"{RISK_WORDS[y]} ({y})" if y in RISK_WORDS else y
    if what == "T*":
        return f"T* = first SGD step at which the {words} is <= {level:g}"
    return f"N* = smallest N whose {words} is <= {level:g}"


def check_metric(runs: pd.DataFrame, y: str) -> None:
    """Raise UnknownMetric, with the close matches, when no run logged y."""
    known = sorted(c for c in runs.columns if "/" in c and pd.api.types.is_numeric_dtype(runs[c]))
    if y not in known:
        close = difflib.get_close_matches(y, known, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UnknownMetric(f"{y}: unknown metric; {hint}(known: {', '.join(known)})")


def _varying(runs: pd.DataFrame, key: str) -> list:
    return sorted(runs[key].unique()) if key in runs else []


def targets(runs: pd.DataFrame) -> dict[str, str]:
    """Per claim, "" when the sweep's grid targets it, else what a sweep needs to target it."""

    def n(df: pd.DataFrame, key: str) -> int:
        return df[key].nunique() if key in df else 0

    online = runs["data.online"].astype(bool)
    off, on = runs[~online], runs[online]
    task = runs["data.task"] if "data.task" in runs else pd.Series(dtype=object)
    ok = {
        "C1": n(off, "data.L") >= 3 and n(off, "data.N") >= 2,
        "C2": n(off, "model.m") >= 2 and n(off, "data.N") >= 2,
        "C3": n(on, "data.L") >= 3,
        "C4": n(runs, "model.m") >= 2,
        "C5": n(runs, "model.w_var") >= 2 or n(runs, "model.activation") >= 2,
        "C6": bool((task == "lags").any()),
    }
    return {c: "" if ok[c] else f"needs {NEEDS[c]}" for c in CLAIMS}


def grid_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Each swept axis, its values, and how many runs per value finished or not."""
    rows = []
    for key in AXES:
        for v in _varying(runs, key) if len(_varying(runs, key)) > 1 else []:
            sub = runs[[w == v for w in runs[key]]]  # not runs[key] == v: data.lags values are tuples
            rows.append(
                {
                    "axis": key,
                    "value": v,
                    "runs": len(sub),
                    "finished": int((sub["status"] == "FINISHED").sum()),
                    "outcomes": ", ".join(f"{k} {n}" for k, n in sub["outcome"].value_counts().items()),
                }
            )
    return pd.DataFrame(rows)


# the grid views of the risk: (rows, columns) of offline runs per claim's axes (C1: N x L, C2: N x m,
# C5: N x init variance or activation), and of online runs (C3: L x m, or L alone)
OFFLINE_VIEWS = (
    ("data.N", "data.L"),
    ("data.N", "model.m"),
    ("data.N", "model.w_var"),
    ("data.N", "model.activation"),
)
ONLINE_VIEWS = (("data.L", "model.m"), ("data.L",))


@dataclass
class GridView:
    """The median risk over two axes of the grid (or one), of the offline or the online runs."""

    name: str  # its figure's name
    online: bool
    axes: tuple[str, ...]

    def title(self, y: str) -> str:
        over = " x ".join(a.split(".")[-1] for a in self.axes)
        return f"median {y} over {over} ({'online' if self.online else 'offline'} runs)"

    def runs(self, runs: pd.DataFrame) -> pd.DataFrame:
        online = runs["data.online"].astype(bool) if "data.online" in runs else False
        return runs[online] if self.online else runs[~online]


def grid_views(runs: pd.DataFrame) -> list[GridView]:
    """The views of the risk over the grid that the finished runs have: each of its axes swept."""
    need = {"status", "data.online"}
    if not need <= set(runs.columns):
        return []
    done = runs[runs["status"] == "FINISHED"]
    views = []
    for online, candidates in ((False, OFFLINE_VIEWS), (True, ONLINE_VIEWS)):
        sub = GridView("", online, ()).runs(done)
        for axes in candidates:
            if all(a in sub and sub[a].nunique() > 1 for a in axes):
                name = "risk_" + "_".join(a.split(".")[-1] for a in axes) + ("_online" if online else "")
                views.append(GridView(name, online, axes))
                if online:
                    break  # L x m, else L alone
    return views


def risk_tables(
    runs: pd.DataFrame, y: str, axes: Sequence[str] | None = None
) -> list[tuple[str, pd.DataFrame]]:
    """The median final y over the grid, one table per group of runs (task, control, other fixed axes):
    rows and columns are `axes` (by default the two most varied of L, N, m, w_var); diverged runs (their risk
    is not a number) are left out of the medians and counted in the title."""
    done = runs[runs["status"] == "FINISHED"] if "status" in runs else runs
    if y not in done or done.empty:
        return []
    if axes is None:
        axes = sorted(
            (
                k
                for k in ("data.N", "data.L", "model.m", "model.w_var")
                if k in done and done[k].nunique() > 1
            ),
            key=lambda k: -done[k].nunique(),
        )[:2]
    axes = list(axes)
    if not axes:
        return []
    tables = []
    for label, sub in _groups(done, keep=tuple(axes)):
        ok = sub[sub["outcome"] != "diverged"] if "outcome" in sub else sub
        t = ok.pivot_table(index=axes[0], columns=axes[1:] or None, values=y, aggfunc="median")
        t = t.to_frame(y) if isinstance(t, pd.Series) else t
        t.columns = [f"{axes[1]}={c}" for c in t.columns] if len(axes) > 1 else t.columns
        diverged = len(sub) - len(ok)
        title = f"median {y}" + (f", {label}" if label else "")
        title += f" ({diverged} diverged runs left out)" if diverged else ""
        tables.append((title, t.reset_index()))
    return tables


ESTIMATORS = {REL_RISK_TAIL: "tail average of W'", REL_RISK: "last iterate"}


def estimator_noise(runs: pd.DataFrame) -> pd.DataFrame:
    """How much each risk estimate jumps between neighbouring N on one curve (one unit at one L, the main
    task): the median of abs(log(y_N' / y_N)) over neighbouring grid points, and the share of those steps
    where the risk goes up although N grew, over the points where the network has learned something
    (y < 0.9)."""
    done = runs[(runs["status"] == "FINISHED") & (runs["outcome"] != "diverged")]
    done = done[classify(done) == "main"]
    rows = []
    for y, what in ESTIMATORS.items():
        if y not in done or done["data.N"].nunique() < 2:
            continue
        steps = []
        for _, curve in done.groupby(["data.L", "model.m", *DEFAULT_UNIT]):
            v = curve.sort_values("data.N")[y].to_numpy(float)
            pair = np.isfinite(v[:-1]) & np.isfinite(v[1:]) & (v[:-1] < 0.9) & (v[1:] < 0.9)
            steps.append(np.diff(np.log(np.clip(v, 1e-12, None)))[pair])
        d = np.concatenate(steps) if steps else np.array([])
        rows.append(
            {
                "estimate": f"{what} ({y})",
                "neighbour pairs": len(d),
                "median abs log ratio": float(np.median(np.abs(d))) if len(d) else math.nan,
                "90% abs log ratio": float(np.quantile(np.abs(d), 0.9)) if len(d) else math.nan,
                "share going up": float(np.mean(d > 0)) if len(d) else math.nan,
            }
        )
    return pd.DataFrame(rows)


def classify(runs: pd.DataFrame) -> pd.Series:
    """Per run: "main" when it tests the class as the paper sets it (a task of the class, scaled inputs
    eps_x < 1, init variance 2, ReLU), else the control it is, named by what differs ("data.task=parity")."""
    off = [(k, ~runs[k].map(ok).astype(bool)) for k, ok in MAIN.items() if k in runs]
    labels = [", ".join(f"{k}={runs.at[i, k]}" for k, bad in off if bad[i]) for i in runs.index]
    return pd.Series([lab or "main" for lab in labels], index=runs.index, dtype=object)


def _groups(runs: pd.DataFrame, keep: tuple[str, ...]) -> list[tuple[str, pd.DataFrame]]:
    """Split runs by every swept axis outside `keep` (thresholds are per curve, one value per other axis)."""
    return plots.split_by(runs, [k for k in AXES if k not in keep and k in runs and runs[k].nunique() > 1])


@dataclass
class GroupFit:
    """One group's thresholds (None where none exist) and law fits (None where no fit exists: then thr
    stands alone; else it is fit.thresholds); error says why not."""

    runs: pd.DataFrame
    thr: pd.DataFrame | None
    fit: ScalingLawFit | None
    error: str


def fit_group(
    runs: pd.DataFrame, curve_x: str, y: str, level: float, n_boot: int, min_span: float
) -> GroupFit:
    """Thresholds per unit along curve_x at each L, then the scaling laws of the thresholds in L."""
    try:
        thr = threshold(runs, curve_x=curve_x, y=y, level=level, by=("data.L",), unit=DEFAULT_UNIT)
    except ValueError as e:
        return GroupFit(runs, None, None, str(e))
    try:
        fit = select_scaling_law(thr, x="data.L", n_boot=n_boot, min_span=min_span)
    except ValueError as e:
        return GroupFit(runs, thr, None, str(e))
    return GroupFit(runs, fit.thresholds, fit, "")


def _relative_risk(runs: pd.DataFrame) -> tuple[pd.Series, str] | None:
    """The final baseline-relative risk on the training set (offline), else on the test set; None if neither
    was logged."""
    if {"train/risk", "train/baseline", "opt"} <= set(runs.columns):
        rel = (runs["train/risk"] - runs["opt"]) / (runs["train/baseline"] - runs["opt"])
        if rel.notna().any():
            return rel, "train"
    if REL_RISK in runs:
        return runs[REL_RISK], "test"
    return None


def diagnose(runs: pd.DataFrame) -> tuple[str, str]:
    """(verdict, why) for a task learned at no grid point: divergence, budget or under-fitting, from the runs'
    outcomes and final risks. An unlearned task is an answer about the setup, not "insufficient data"."""
    outcome = runs["outcome"] if "outcome" in runs else pd.Series("", index=runs.index)
    share = outcome.value_counts(normalize=True)
    if share.get("diverged", 0) > 0.5:
        return (
            "not learned: divergence",
            f"{share['diverged']:.0%} of its runs diverged (lower the step size)",
        )
    if share.get("budget", 0) > 0.5:
        return "not learned: budget", (
            f"{share['budget']:.0%} of its runs ran out of steps while still improving (raise the step "
            "budget): the answer would be about iterations, not samples"
        )
    rel = _relative_risk(runs[outcome != "diverged"])
    if rel is None or rel[0].notna().sum() == 0:
        return "not learned", "no relative train or test risk was logged to say why"
    med, where = float(rel[0].median()), rel[1]
    if med >= UNDERFIT:
        return "not learned: under-fitting", (
            f"median final {where} relative risk {med:.2f} >= {UNDERFIT:g}: train ~ test ~ the best constant "
            "predictor (the network fits no better than a constant: more steps or width, not more samples)"
        )
    if where == "train":
        why = f"median final train relative risk {med:.2f}: it fits its training set but does not generalize"
    else:
        why = f"median final test relative risk {med:.2f}: it learned part of the task, not down to the level"
    return "not learned", why


def _reason_counts(thr: pd.DataFrame) -> str:
    c = thr["censor"].value_counts()
    r = thr.loc[thr["censor"] == "right", "reason"].value_counts()
    why = ", ".join(f"{k} {n}" for k, n in r.items())
    return (
        f"{c.get('none', 0)} crossings, {c.get('left', 0)} left- and {c.get('right', 0)} right-censored"
        + (f" ({why})" if why else "")
    )


def budget_limited(thr: pd.DataFrame) -> bool:
    """The step budget, not the samples, decides the thresholds: most units of some L ran out of steps, or
    more than BUDGET_SHARE of all units did. A few budget-censored units are kept in the likelihood as
    right-censored instead, which pulls the fit toward faster growth: against a polynomial verdict."""
    budget = int((thr["reason"] == "budget").sum())
    flagged = bool(censoring_summary(thr, by=("data.L",))["budget_limited"].any())
    return flagged or budget > BUDGET_SHARE * len(thr)


def main_verdict(g: GroupFit, what: str) -> tuple[str, str, list[tuple[str, pd.DataFrame]]]:
    """(verdict, evidence, tables) of the main task: its diagnosis if it learned nowhere, "undecided:
    budget-limited" if an N* grid ran out of steps, else the law the fits select."""
    if g.thr is None:
        return "insufficient data", g.error, []
    thr = g.thr
    counts = _reason_counts(thr)
    censoring = ("censoring by L", censoring_summary(thr, by=("data.L",)))
    if (thr["censor"] == "right").all():
        verdict, why = diagnose(g.runs)
        return verdict, f"{what} reached by no unit at any L ({counts}): {why}.", [censoring]
    # for T* a run out of steps is the answer's own right-censoring (T* > T); for N* it is a confound
    if what == "N*" and budget_limited(thr):
        cells = censoring[1].loc[censoring[1]["budget_limited"], "data.L"].tolist()
        why = f"{counts}. Units ran out of steps while still improving" + (
            f" (most of the units at L = {', '.join(f'{v:g}' for v in cells)})" if cells else ""
        )
        fix = "raise the step budget (train.T or train.c_T) there and rerun"
        return (
            "undecided: budget-limited",
            f"{why}: the answer would be about iterations, not samples; {fix}.",
            [censoring],
        )
    counts += ", all kept in the likelihood"
    if g.fit is None:
        return "insufficient data", f"{counts}. {g.error}", [censoring]
    cols = [c for c in FIT_COLUMNS if c in g.fit.table]
    return (
        g.fit.verdict,
        f"{counts}. {g.fit.verdict_reason}",
        [
            (f"{what} fits", g.fit.table[cols]),
            censoring,
        ],
    )


def _median_threshold(thr: pd.DataFrame) -> pd.Series:
    """Median threshold per L, a censored unit at its bracket's end (+inf when never reached)."""
    point = np.where(
        thr["censor"] == "none", thr["x_star"], np.where(thr["censor"] == "left", thr["hi"], np.inf)
    )
    return pd.Series(point, index=thr.index).groupby(thr["data.L"]).agg(lambda v: float(np.median(v)))


def _power_k(fit: ScalingLawFit | None) -> tuple[float, float, float] | None:
    """The power law's exponent k with its bootstrap CI, when it converged and has one."""
    if fit is None:
        return None
    table = fit.table
    row = table[(table["law"] == "power") & table["converged"]]
    if row.empty or not np.isfinite(row[["k", "k_lo", "k_hi"]].to_numpy(float)).all():
        return None
    return float(row["k"].iloc[0]), float(row["k_lo"].iloc[0]), float(row["k_hi"].iloc[0])


def control_verdict(main: GroupFit, control: GroupFit, grid: str = "N") -> tuple[str, str, pd.DataFrame]:
    """(verdict, line, table) for a control against the main task; table: median threshold of each per
    common L and their ratio. The prediction is that a control is harder: "as predicted" when it is learned
    at no point of the grid, when its power-law k lies above the main task's (disjoint CIs), or when it is
    not learned at the largest common L where the main task is; "NOT as predicted" when its k lies below, or
    its median threshold is within a factor ALIKE_RATIO of the main task's at every common L; else
    "inconclusive"."""
    if control.thr is None:
        return "inconclusive", f"no thresholds: {control.error}", pd.DataFrame()
    if (control.thr["censor"] == "right").all():
        return "as predicted", f"control not learned at any {grid}", pd.DataFrame()
    if main.thr is None:
        return "inconclusive", "the main task has no thresholds to compare with", pd.DataFrame()
    m, c = _median_threshold(main.thr), _median_threshold(control.thr)
    common = m.index.intersection(c.index)
    table = pd.DataFrame({"data.L": common, "main": m[common].to_numpy(), "control": c[common].to_numpy()})
    with np.errstate(divide="ignore", invalid="ignore"):
        table["ratio"] = table["control"] / table["main"]
    ratios = "median ratio control/main per L: " + ", ".join(
        f"{L:g}: {r:.3g}" for L, r in zip(table["data.L"], table["ratio"], strict=True)
    )
    km, kc = _power_k(main.fit), _power_k(control.fit)
    slopes = ""
    if km and kc:
        slopes = f" (k {kc[0]:.2g} [{kc[1]:.2g}, {kc[2]:.2g}] vs {km[0]:.2g} [{km[1]:.2g}, {km[2]:.2g}])"
    last = table.iloc[-1] if len(table) else None
    alike = len(table) > 0 and table["ratio"].between(1 / ALIKE_RATIO, ALIKE_RATIO).all()
    if km and kc and kc[1] > km[2]:
        verdict, line = "as predicted", f"control's threshold grows faster than the main task's{slopes}"
    elif last is not None and np.isinf(last["control"]) and np.isfinite(last["main"]):
        verdict, line = (
            "as predicted",
            f"control not learned at L = {last['data.L']:g} where the main task is",
        )
    elif km and kc and kc[2] < km[1]:
        verdict, line = "NOT as predicted", f"control's threshold grows slower than the main task's{slopes}"
    elif alike:
        verdict, line = "NOT as predicted", f"control learned like the main task{slopes}"
    else:
        verdict, line = (
            "inconclusive",
            f"control learned on part of the grid, neither clearly harder nor alike{slopes}",
        )
    return verdict, f"{line}; {ratios}", table


def _scaling_claim(
    cid: str,
    groups: list[tuple[str, pd.DataFrame]],
    curve_x: str,
    y: str,
    level: float,
    n_boot: int,
    min_span: float,
    figures: dict,
    out: Path,
    what: str,
) -> Claim:
    """C1 and C3: thresholds and law fits per group; the verdict is the main task's, each control gets a
    line of its own (control_verdict), other main groups are listed with theirs."""
    grid = "N" if what == "N*" else "step"
    crit = criterion(what, y, level)
    kinds = [classify(sub.iloc[:1]).iloc[0] for _, sub in groups]
    mains = [i for i, k in enumerate(kinds) if k == "main"]
    if not mains:
        why = f"only controls in this sweep ({', '.join(kinds)}): no main task to test"
        return Claim(cid, TEXTS[cid], "insufficient data", why, criterion=crit)
    fitted = [fit_group(sub, curve_x, y, level, n_boot, min_span) for _, sub in groups]
    i = mains[0]
    main = fitted[i]
    verdict, evidence, tables = main_verdict(main, what)
    lines, names = [], []
    for j, ((label, _), g) in enumerate(zip(groups, fitted, strict=True)):
        if g.thr is not None and out is not None:
            name = f"{cid.lower()}_scaling" + ("" if j == i else f"_{j}")
            title = f"{label or 'main task'}: {crit}"
            table = g.fit.table if g.fit is not None else None
            fig = plots.threshold_scaling(g.thr, table, x="data.L", what=what, title=title)
            figures[name] = plots.save(fig, out, name)
            names.append(name)
        if j == i:
            continue
        if kinds[j] == "main":
            lines.append(f"Main task {label}: {main_verdict(g, what)[0]}.")
            continue
        cv, line, table = control_verdict(main, g, grid)
        who = label if label == kinds[j] else f"{label} ({kinds[j]})"
        lines.append(f"Control {who}: {cv}: {line}.")
        if len(table):
            tables.append((f"control {label}: median {what} against the main task's", table))
    where = f"Main task{' ' + groups[i][0] if groups[i][0] else ''}: "
    evidence = where + evidence.strip() + ("" if evidence.strip().endswith(".") else ".")
    return Claim(cid, TEXTS[cid], verdict, "\n\n".join([evidence, *lines]), tables, names, crit)


def claim_c1(runs, y, level, n_boot, figures, out, min_span: float = DEFAULT_MIN_SPAN) -> Claim:
    """N*(L) at the sweep's largest width, offline (thresholds along N, laws in L)."""
    if len(_varying(runs, "data.L")) < 3 or len(_varying(runs, "data.N")) < 2:
        return Claim("C1", TEXTS["C1"], "insufficient data", "needs >= 3 values of data.L and >= 2 of data.N")
    offline = runs[~runs["data.online"]]
    widest = offline[offline["model.m"] == offline["model.m"].max()]  # E1 reads N*(L) at its largest width
    groups = _groups(widest, keep=("data.L", "data.N", "model.m"))
    claim = _scaling_claim("C1", groups, "data.N", y, level, n_boot, min_span, figures, out, "N*")
    claim.evidence = f"At m = {widest['model.m'].iloc[0]}. {claim.evidence}"
    return claim


def claim_c2(runs, y, level, n_boot) -> Claim:
    crit = criterion("N*", y, level)
    if len(_varying(runs, "model.m")) < 2 or len(_varying(runs, "data.N")) < 2:
        return Claim(
            "C2", TEXTS["C2"], "insufficient data", "needs >= 2 values of model.m and >= 2 of data.N"
        )
    rows, problems = [], []
    # crossings enter as their interpolated N*: over a few widths most units cross in one bracket of the 2x N
    # grid, where the interval likelihood has no scale (sigma -> 0) and its bootstrap CI collapses to a point
    for label, sub in _groups(runs[~runs["data.online"]], keep=("data.N", "model.m")):
        try:
            fit = tost_flat_slope(
                sub, x="model.m", y=y, level=level, bound=DEFAULT_TOST_BOUND, n_boot=n_boot, censoring="exact"
            )
            rows.append(fit.assign(group=label))
        except ValueError as e:
            problems.append(f"{label}: {e}")
    if not rows:
        return Claim("C2", TEXTS["C2"], "insufficient data", " ".join(problems), criterion=crit)
    t = pd.concat(rows, ignore_index=True)
    ev = "; ".join(
        f"{r.group}: slope {r.slope:.3f}, 90% CI [{r.ci_lo:.3f}, {r.ci_hi:.3f}]" for r in t.itertuples()
    )
    if t["flat"].all():
        verdict = "supported"
    elif ((t["ci_lo"] > t["bound"]) | (t["ci_hi"] < -t["bound"])).any():
        verdict = "not supported"  # some slope lies clearly outside the band
    else:
        verdict = "inconclusive"
    skipped = f" Not fitted: {' '.join(problems)}" if problems else ""
    bound = f"{t['bound'].iloc[0]:g}"
    evidence = f"{ev} (flat iff the 90% CI lies in +-{bound}; N* interpolated in its bracket).{skipped}"
    return Claim("C2", TEXTS["C2"], verdict, evidence, [("slope of log N* on log m", t)], criterion=crit)


def claim_c3(runs, hist, y, level, n_boot, figures, out, min_span: float = DEFAULT_MIN_SPAN) -> Claim:
    """T*(L) online: thresholds along each run's own history (the step), laws in L."""
    online = runs[runs["data.online"]]
    if len(_varying(online, "data.L")) < 3:
        return Claim("C3", TEXTS["C3"], "insufficient data", f"needs {NEEDS['C3']}")
    keep = [
        "run_id",
        "data.L",
        *DEFAULT_UNIT,
        *(k for k in (*AXES, "outcome") if k in online and k != "data.L"),
    ]
    h = hist[(hist["metric"] == y) & (hist["step"] > 0)].merge(online[keep], on="run_id")
    h = h.rename(columns={"value": y})
    claim = _scaling_claim(
        "C3", _groups(h, keep=("data.L", "data.N")), "step", y, level, n_boot, min_span, figures, out, "T*"
    )
    if out is not None and not h.empty:
        hue = next((k for k in ("model.m", "data.task") if k in h and h[k].nunique() > 1), None)
        title = f"{y} during training, online runs: median over runs, quartile band"
        figures["c3_curves"] = plots.save(plots.history(h, y, level, hue=hue, title=title), out, "c3_curves")
        claim.figures.append("c3_curves")
    return claim


def mechanism_slopes(runs: pd.DataFrame) -> pd.DataFrame:
    """Slope of log(quantity) on log m within cells of the other axes (OLS, cell fixed effects), 95% CI."""
    cells = [k for k in AXES if k != "model.m" and k in runs and runs[k].nunique() > 1]
    runs = runs[runs["outcome"] != "diverged"]  # a blown-up run says nothing about staying near init
    rows = []
    for key, predicted in MECHANISM.items():
        d = runs[np.isfinite(runs[key]) & (runs[key] > 0)] if key in runs else runs.iloc[:0]
        row = {
            "metric": key,
            "predicted": predicted,
            "slope": math.nan,
            "intercept": math.nan,
            "ci_lo": math.nan,
            "ci_hi": math.nan,
            "n": len(d),
        }
        if d["model.m"].nunique() >= 2 and len(d) > 3:
            cell = d[cells].astype(str).agg("|".join, axis=1) if cells else pd.Series("", index=d.index)
            X = np.column_stack([np.log(d["model.m"].to_numpy(float)), pd.get_dummies(cell).to_numpy(float)])
            yv = np.log(d[key].to_numpy(float))
            fit = ols_coef_ci(X, yv)
            if fit is not None:
                slope, lo, hi = fit
                row.update(slope=slope, intercept=float(np.mean(yv - slope * X[:, 0])), ci_lo=lo, ci_hi=hi)
        rows.append(row)
    return pd.DataFrame(rows)


def claim_c4(runs, figures, out) -> Claim:
    text = TEXTS["C4"]
    if len(_varying(runs, "model.m")) < 2:
        return Claim("C4", text, "insufficient data", "needs >= 2 values of model.m")
    s = mechanism_slopes(runs)
    if s["slope"].isna().any():
        return Claim(
            "C4", text, "insufficient data", "too few runs per m for a slope with a CI", [("slopes", s)]
        )
    if out is not None:
        fig = plots.mechanism(runs, s, near=NEAR_INIT, cells=other_axes(runs, ("model.m",)))
        figures["c4_mechanism"] = plots.save(fig, out, "c4_mechanism")
    by = s.set_index("metric")
    bounded = by.loc["w/move_fro", "ci_hi"] <= 0.1  # no growth beyond a 0.1 power of m
    falling = by.loc["act/flip_frac", "ci_hi"] < 0 and by.loc["lin/rel_err", "ci_hi"] < 0
    ev = "; ".join(
        f"{r.metric}: slope {r.slope:.3f} [{r.ci_lo:.3f}, {r.ci_hi:.3f}] (predicted "
        f"{'-' if r.predicted is None else f'{r.predicted:.2f}'})"
        for r in s.itertuples()
    )
    # contradicted only where a CI clearly excludes the predicted direction; wide CIs stay inconclusive
    grows = (
        by.loc["w/move_fro", "ci_lo"] > 0.1
        or by.loc["act/flip_frac", "ci_lo"] > 0
        or by.loc["lin/rel_err", "ci_lo"] > 0
    )
    verdict = "supported" if bounded and falling else "not supported" if grows else "inconclusive"
    crit = (
        "supported = the 95% CI of the slope on log m lies below 0.1 for w/move_fro and below 0 for "
        "act/flip_frac and lin/rel_err (final values, diverged runs left out)"
    )
    figs = ["c4_mechanism"] if out is not None else []
    return Claim("C4", text, verdict, ev, [("slopes", s)], figs, criterion=crit)


def claim_c5(runs) -> Claim:
    """Runs that learned (DEFAULT_METRIC <= DEFAULT_LEVEL, ReLU at the paper's init variance 2): their
    spectral radius. Diverged runs are left out of every median: a blown-up W says nothing about learning."""
    words = RISK_WORDS[DEFAULT_METRIC]
    crit = f"learned = {words} ({DEFAULT_METRIC}) <= {DEFAULT_LEVEL:g}, for ReLU at model.w_var = 2"
    if "w/spectral_radius" not in runs or runs["w/spectral_radius"].isna().all():
        return Claim(
            "C5", TEXTS["C5"], "insufficient data", "no run logged w/spectral_radius", criterion=crit
        )
    if DEFAULT_METRIC not in runs:
        return Claim(
            "C5", TEXTS["C5"], "insufficient data", f"no run logged {DEFAULT_METRIC}", criterion=crit
        )
    diverged = runs["outcome"] == "diverged" if "outcome" in runs else pd.Series(False, index=runs.index)
    ok = runs[~diverged]
    learned = ok[
        (ok[DEFAULT_METRIC] <= DEFAULT_LEVEL) & (ok["model.activation"] == "relu") & (ok["model.w_var"] == 2)
    ]
    if learned.empty:
        why = "no ReLU run at model.w_var = 2 learned (nothing to explain)"
        return Claim("C5", TEXTS["C5"], "insufficient data", why, criterion=crit)
    keys = ["model.w_var", "model.activation"]
    g = ok.groupby(keys)
    t = g[[DEFAULT_METRIC, "w/spectral_radius"]].median().add_suffix(" (median)")
    t.insert(0, "runs", g.size())
    t.insert(1, "diverged", diverged.groupby([runs[k] for k in keys]).sum().reindex(t.index, fill_value=0))
    rad = learned["w/spectral_radius"]
    verdict = "supported" if (rad > 1).mean() >= 0.95 else "not supported"
    evidence = (
        f"{len(learned)} ReLU runs at model.w_var = 2 learned, with spectral radius of W + W' from "
        f"{rad.min():.2f} to {rad.max():.2f} (median {rad.median():.2f}); {(rad > 1).mean():.0%} of them "
        f"above 1 ({int(diverged.sum())} diverged runs left out)."
    )
    table = ("by init variance (diverged runs left out of the medians)", t.reset_index())
    return Claim("C5", TEXTS["C5"], verdict, evidence, [table], criterion=crit)


def lag_recovery(runs: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per lag g and cell (data.N, and any other swept axis): median recovery R^2 (lags/r2_<g>) of the runs
    that learn lag g alone (data.lags == (g,)) and of those that learn all lags together, their seed counts,
    and the drop alone - together with a 95% bootstrap CI (seeds resampled within each arm)."""
    rng = np.random.default_rng(seed)
    lag = runs[runs["data.task"] == "lags"]
    lags = lag["data.lags"].map(tuple)
    every = tuple(sorted(set().union(*lags)))
    cells = [
        "data.N",
        *(
            k
            for k in AXES
            if k not in ("data.N", "data.lags", "data.task") and k in lag and lag[k].nunique() > 1
        ),
    ]
    together = dict(list(lag[[tuple(sorted(t)) == every for t in lags]].groupby(cells)))
    rows = []
    for g in every:
        col = f"lags/r2_{g}"
        if col not in lag:
            continue
        for key, a in lag[[t == (g,) for t in lags]].groupby(cells):
            if key not in together:
                continue
            av, tv = a[col].to_numpy(float), together[key][col].to_numpy(float)
            av, tv = av[np.isfinite(av)], tv[np.isfinite(tv)]
            if not (len(av) and len(tv)):
                continue
            drop = float(np.median(av) - np.median(tv))
            lo = hi = drop
            if n_boot > 0:
                ba = np.median(rng.choice(av, (n_boot, len(av))), axis=1)
                bt = np.median(rng.choice(tv, (n_boot, len(tv))), axis=1)
                lo, hi = (float(v) for v in percentile_ci(ba - bt))
            arms = {"alone": float(np.median(av)), "together": float(np.median(tv))}
            counts = {"n_alone": len(av), "n_together": len(tv)}
            cell = dict(zip(cells, key, strict=True))
            rows.append({"lag": g, **cell, **arms, **counts, "drop": drop, "drop_lo": lo, "drop_hi": hi})
    cols = ["lag", *cells, "alone", "together", "n_alone", "n_together", "drop", "drop_lo", "drop_hi"]
    return pd.DataFrame(rows, columns=cols)


def claim_c6(runs, n_boot: int = 2000) -> Claim:
    """Each lag's recovery R^2 learned alone against learned together with the others (lag_recovery), read
    at the largest N with both: no interference when together stays within C6_TOL of alone for every lag."""
    crit = f"no interference = for every lag, median R^2 together >= alone - {C6_TOL:g} at the largest N"
    lag = runs[runs["data.task"] == "lags"] if "data.task" in runs else runs.iloc[:0]
    r2 = [c for c in runs.columns if c.startswith("lags/r2_")]
    if lag.empty or not r2 or lag[r2].isna().all().all():
        why = "no runs of task lags" if lag.empty else "no run logged lags/r2_<lag>"
        return Claim("C6", TEXTS["C6"], "insufficient data", why, criterion=crit)
    t = lag_recovery(lag, n_boot)
    every = sorted(set().union(*lag["data.lags"].map(tuple)))
    if t.empty:
        why = f"no N has runs of a lag alone and of all lags {every} together to compare"
        return Claim("C6", TEXTS["C6"], "inconclusive", why, criterion=crit)
    last = t[t["data.N"] == t.groupby("lag")["data.N"].transform("max")]
    ev = "; ".join(
        f"lag {r['lag']} at N = {r['data.N']}: alone {r['alone']:.2f}, together {r['together']:.2f}, "
        f"drop {r['drop']:.2f} [{r['drop_lo']:.2f}, {r['drop_hi']:.2f}] ({r['n_alone']} vs "
        f"{r['n_together']} seeds)"
        for r in last.to_dict("records")
    )
    untested = sorted(set(every) - set(last["lag"]))
    if (last["drop_lo"] > C6_TOL).any():
        verdict = "not supported"  # some lag clearly drops when learned with the others
    elif not untested and (last["drop_hi"] <= C6_TOL).all():
        verdict = "supported"
    else:
        verdict = "inconclusive"
    missing = f" Lags never learned alone: {untested}." if untested else ""
    evidence = f"{ev} (95% bootstrap CIs over seeds).{missing}"
    return Claim(
        "C6", TEXTS["C6"], verdict, evidence, [("recovery R^2 alone vs together", t)], criterion=crit
    )


def other_axes(runs: pd.DataFrame, keep: Sequence[str]) -> list[str]:
    """The swept axes outside `keep`: a figure's panels."""
    return [k for k in AXES if k not in keep and k in runs and runs[k].map(str).nunique() > 1]


def draw_grid(runs: pd.DataFrame, view: GridView, y: str, level: float):
    """The heatmap of one grid view: one panel per value of the other swept axes."""
    sub = view.runs(runs[runs["status"] == "FINISHED"])
    rows, cols = (view.axes[0], view.axes[1]) if len(view.axes) > 1 else (None, view.axes[0])
    title = f"{view.title(y)}: blue at or below the level {level:g}, red above"
    return plots.heatmap(
        sub, y, rows=rows, cols=cols, panel=other_axes(sub, view.axes), level=level, title=title
    )


def build(
    sweep: str,
    tracking_uri: str | None,
    out: Path | None,
    y: str = DEFAULT_METRIC,
    level: float = DEFAULT_LEVEL,
    n_boot: int = 2000,
    min_span: float = DEFAULT_MIN_SPAN,
) -> Report:
    """Load the sweep from MLflow and evaluate the claims its grid targets; figures go to out/figures (none
    are drawn when out is None). Raises UnknownMetric when no run logged y."""
    runs = load_runs(sweep, tracking_uri)
    prov = read_provenance(sweep, tracking_uri, runs)
    done = runs[runs["status"] == "FINISHED"]
    figs: dict[str, list[Path]] = {}
    fig_dir = None if out is None else out / "figures"
    if done.empty:
        claims = [Claim(c, TEXTS[c], "insufficient data", "no FINISHED runs") for c in CLAIMS]
        return Report(sweep, runs, grid_table(runs), claims, figs, y, level, prov)
    check_metric(runs, y)
    need = targets(done)
    if fig_dir is not None:
        for view in grid_views(done):
            figs[view.name] = plots.save(draw_grid(done, view, y, level), fig_dir, view.name)
        offline = done[~done["data.online"]]
        main = offline[(classify(offline) == "main") & (offline["model.m"] == offline["model.m"].max())]
        if len(_varying(main, "data.L")) and len(_varying(main, "data.N")) > 1:
            hue = "data.task" if main["data.task"].nunique() > 1 else None
            title = f"{y} against N at m = {main['model.m'].iloc[0]}, main task: mean over seeds, 95% CI"
            fig = plots.learning_curves(main, y=y, level=level, hue=hue, title=title)
            figs["learning_curves"] = plots.save(fig, fig_dir, "learning_curves")
        if len(_varying(offline, "model.m")) > 1 and len(_varying(offline, "data.N")) > 1:
            panel = other_axes(offline, ("model.m", "data.N"))
            fig = plots.heatmap(offline, "gen/gap", panel=panel, title="median gen/gap (test - train risk)")
            figs["heatmap_gen_gap"] = plots.save(fig, fig_dir, "heatmap_gen_gap")
    online = done[done["data.online"]]
    make = {  # only the claims the grid targets are evaluated (C3 loads histories)
        "C1": lambda: claim_c1(done, y, level, n_boot, figs, fig_dir, min_span),
        "C2": lambda: claim_c2(done, y, level, n_boot),
        "C3": lambda: claim_c3(
            done, load_history(online, tracking_uri, [y]), y, level, n_boot, figs, fig_dir, min_span
        ),
        "C4": lambda: claim_c4(done, figs, fig_dir),
        "C5": lambda: claim_c5(done),
        "C6": lambda: claim_c6(done, n_boot),
    }
    claims = [
        make[c]() if not need[c] else Claim(c, TEXTS[c], "not targeted", need[c], targeted=False)
        for c in CLAIMS
    ]
    return Report(sweep, runs, grid_table(runs), claims, figs, y, level, prov)
