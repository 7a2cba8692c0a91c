"""`rnnsgd report SWEEP`: the sweep's grid, figures, fit tables and one plain verdict per claim (C1-C6).

Every verdict comes with its evidence and its uncertainty, or with "insufficient data" and what is missing:
the report never turns a failed fit into a number. Written as Markdown and as a self-contained HTML page
(figures inlined), and logged as artifacts on the sweep's parent run.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import plots
from .fits import select_scaling_law, tost_flat_slope
from .load import load_history, load_runs
from .thresholds import threshold

AXES = (
    "data.L",
    "data.N",
    "model.m",
    "train.eps",
    "data.eps_x",
    "model.w_var",
    "model.activation",
    "data.task",
)
# E4's predicted slopes of the proof quantities against m (spec/PAPER.md §5)
MECHANISM = {"w/move_fro": 0.0, "act/flip_frac": -1 / 3, "lin/rel_err": -1 / 6, "h/drift": None}


@dataclass
class Claim:
    id: str
    text: str
    verdict: str  # a plain word: supported, not supported, polynomial, ..., or "insufficient data"
    evidence: str
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)


@dataclass
class Report:
    sweep: str
    runs: pd.DataFrame
    grid: pd.DataFrame
    claims: list[Claim]
    figures: dict[str, list[Path]]


def _varying(runs: pd.DataFrame, key: str) -> list:
    return sorted(runs[key].unique()) if key in runs else []


def grid_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Each swept axis, its values, and how many runs per value finished or not."""
    rows = []
    for key in AXES:
        for v in _varying(runs, key) if len(_varying(runs, key)) > 1 else []:
            sub = runs[runs[key] == v]
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


def _fit_claim(
    cid: str,
    text: str,
    runs: pd.DataFrame,
    x: str,
    y: str,
    level: float,
    curve_x: str,
    n_boot: int,
    figures: dict,
    out: Path,
    what: str,
) -> Claim:
    """C1 and C3: threshold per seed, fit the laws, plot, and state the verdict or what is missing."""
    try:
        table = select_scaling_law(runs, x=x, y=y, level=level, curve_x=curve_x, n_boot=n_boot)
    except ValueError as e:
        return Claim(cid, text, "insufficient data", str(e))
    thr = threshold(runs, x=curve_x, y=y, level=level, by=(x,), unit=("seed.teacher", "seed.run"))
    name = f"{cid.lower()}_scaling"
    figures[name] = plots.save(plots.threshold_scaling(thr, table, x=x, what=what), out, name)
    a = table.attrs
    evidence = (
        f"{what} at level {level:g} of {y}: {int((thr['censor'] == 'none').sum())} crossings, "
        f"{int((thr['censor'] == 'left').sum())} left- and {int((thr['censor'] == 'right').sum())} "
        f"right-censored (kept in the likelihood). {a.get('verdict_reason', '')}"
    )
    cols = [
        c
        for c in (
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
        if c in table
    ]
    return Claim(
        cid, text, a.get("verdict", "inconclusive"), evidence, [(f"{what} fits", table[cols])], [name]
    )


def _groups(runs: pd.DataFrame, keep: tuple[str, ...]) -> list[tuple[str, pd.DataFrame]]:
    """Split runs by every swept axis outside `keep` (thresholds are per curve, one value per other axis)."""
    others = [k for k in AXES if k not in keep and k in runs and runs[k].nunique() > 1]
    if not others:
        return [("", runs)]
    out = []
    for key, sub in runs.groupby(others, sort=True):
        values = key if isinstance(key, tuple) else (key,)
        out.append((", ".join(f"{k}={v}" for k, v in zip(others, values, strict=True)), sub))
    return out


def _main_group(groups: list[tuple[str, pd.DataFrame]]) -> int:
    """The group that tests the class itself (task `paper`, scaled inputs); the others are controls."""
    for i, (_, sub) in enumerate(groups):
        if (sub["data.task"] == "paper").all() and (sub["data.eps_x"] < 1).all():
            return i
    return 0


def claim_c1(runs, y, level, n_boot, figures, out) -> Claim:
    text = "Samples needed grow polynomially in L (N*(L): power law beats exponential)."
    if len(_varying(runs, "data.L")) < 3 or len(_varying(runs, "data.N")) < 2:
        return Claim(
            "C1", text, "insufficient data", "needs >= 3 values of data.L and >= 2 of data.N in the sweep"
        )
    offline = runs[~runs["data.online"]]
    widest = offline[offline["model.m"] == offline["model.m"].max()]  # E1 reads N*(L) at its largest width
    width = f"At m = {widest['model.m'].iloc[0]}"
    groups = _groups(widest, keep=("data.L", "data.N", "model.m"))
    claims = []
    for i, (_, sub) in enumerate(groups):
        cid = "C1" if len(groups) == 1 else f"C1_{i}"
        claims.append(_fit_claim(cid, text, sub, "data.L", y, level, "data.N", n_boot, figures, out, "N*"))
    if len(groups) == 1:
        claims[0].evidence = f"{width}: {claims[0].evidence}"
        return claims[0]
    main = _main_group(groups)
    every = "; ".join(f"{label}: {c.verdict}" for (label, _), c in zip(groups, claims, strict=True))
    tables = [
        (f"{t} ({label})", df) for (label, _), c in zip(groups, claims, strict=True) for t, df in c.tables
    ]
    evidence = f"{width}, {groups[main][0]}: {claims[main].evidence} Every group: {every}."
    return Claim("C1", text, claims[main].verdict, evidence, tables, [f for c in claims for f in c.figures])


def claim_c2(runs, y, level, n_boot) -> Claim:
    text = "Samples needed depend on the width m only through log m (N*(m) flat: TOST on the log-log slope)."
    if len(_varying(runs, "model.m")) < 2 or len(_varying(runs, "data.N")) < 2:
        return Claim("C2", text, "insufficient data", "needs >= 2 values of model.m and >= 2 of data.N")
    rows, problems = [], []
    for label, sub in _groups(runs[~runs["data.online"]], keep=("data.N", "model.m")):
        try:
            rows.append(
                tost_flat_slope(sub, x="model.m", y=y, level=level, n_boot=n_boot).assign(group=label)
            )
        except ValueError as e:
            problems.append(f"{label}: {e}")
    if not rows:
        return Claim("C2", text, "insufficient data", " ".join(problems))
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
    evidence = f"{ev} (flat iff the 90% CI lies in +-0.1).{skipped}"
    return Claim("C2", text, verdict, evidence, [("slope of log N* on log m", t)])


def claim_c3(runs, hist, y, level, n_boot, figures, out) -> Claim:
    text = "Iterations needed grow polynomially in L (T*(L) in the online regime)."
    online = runs[runs["data.online"]]
    if len(_varying(online, "data.L")) < 3:
        return Claim(
            "C3", text, "insufficient data", "needs online runs (data.online=true) at >= 3 values of data.L"
        )
    h = hist[hist["metric"] == y].merge(online[["run_id", "data.L", "seed.teacher", "seed.run"]], on="run_id")
    h = h[h["step"] > 0].rename(columns={"value": y})
    return _fit_claim("C3", text, h, "data.L", y, level, "step", n_boot, figures, out, "T*")


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
            beta, *_ = np.linalg.lstsq(X, yv, rcond=None)
            dof = len(yv) - np.linalg.matrix_rank(X)
            if dof > 0:
                from scipy import stats

                s2 = float(np.sum((yv - X @ beta) ** 2)) / dof
                se = math.sqrt(s2 * np.linalg.pinv(X.T @ X)[0, 0])
                half = stats.t.ppf(0.975, dof) * se
                row.update(
                    slope=beta[0],
                    intercept=float(np.mean(yv - beta[0] * X[:, 0])),
                    ci_lo=beta[0] - half,
                    ci_hi=beta[0] + half,
                )
        rows.append(row)
    return pd.DataFrame(rows)


def claim_c4(runs, figures, out) -> Claim:
    text = (
        "SGD stays near init: sqrt(m)·||W_t||_F bounded in m; sign-flip fraction and linearization error "
        "fall with m."
    )
    if len(_varying(runs, "model.m")) < 2:
        return Claim("C4", text, "insufficient data", "needs >= 2 values of model.m")
    s = mechanism_slopes(runs)
    if s["slope"].isna().any():
        return Claim(
            "C4", text, "insufficient data", "too few runs per m for a slope with a CI", [("slopes", s)]
        )
    figures["c4_mechanism"] = plots.save(plots.mechanism(runs, s), out, "c4_mechanism")
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
    return Claim("C4", text, verdict, ev, [("slopes", s)], ["c4_mechanism"])


def claim_c5(runs) -> Claim:
    text = "None of this needs spectral radius < 1 (it is ~ sqrt 2 at init)."
    if "w/spectral_radius" not in runs or runs["w/spectral_radius"].isna().all():
        return Claim("C5", text, "insufficient data", "no run logged w/spectral_radius")
    learned = runs[(runs["test/nrisk"] <= 0.5) & (runs["model.activation"] == "relu")]
    if learned.empty:
        return Claim(
            "C5",
            text,
            "insufficient data",
            "no ReLU run reached test/nrisk <= 0.5 (nothing learned to explain)",
        )
    rad = learned["w/spectral_radius"]
    t = (
        runs.groupby(["model.w_var", "model.activation"])
        .agg(
            runs=("run_id", "size"),
            nrisk_median=("test/nrisk", "median"),
            spectral_radius_median=("w/spectral_radius", "median"),
        )
        .reset_index()
    )
    verdict = "supported" if (rad > 1).mean() >= 0.95 else "not supported"
    return Claim(
        "C5",
        text,
        verdict,
        f"{len(learned)} ReLU runs reached test/nrisk <= 0.5 with spectral radius of "
        f"W + W' from {rad.min():.2f} to {rad.max():.2f} (median {rad.median():.2f}); "
        f"{(rad > 1).mean():.0%} of them above 1.",
        [("by init variance", t)],
    )


def claim_c6(runs) -> Claim:
    text = "One recurrent unit learns a different function for every (i -> j) pair without interference."
    return Claim(
        "C6",
        text,
        "insufficient data",
        "per-pair recovery R^2 and per-lag errors are not logged by the trainer yet (task `lags`, E6)",
    )


def build(
    sweep: str,
    tracking_uri: str | None,
    out: Path,
    y: str = "test/excess_risk",
    level: float | None = None,
    n_boot: int = 2000,
) -> Report:
    """Load the sweep from MLflow and evaluate every claim; figures go to out/figures."""
    runs = load_runs(sweep, tracking_uri)
    done = runs[runs["status"] == "FINISHED"]
    figs: dict[str, list[Path]] = {}
    fig_dir = out / "figures"
    if level is None:
        eps = done["train.eps"].unique() if len(done) else []
        level = float(eps[0]) if len(eps) == 1 else None
    claims: list[Claim] = []
    if done.empty or y not in done:
        why = "no FINISHED runs" if done.empty else f"no run logged {y}"
        claims = [Claim(c, "", "insufficient data", why) for c in ("C1", "C2", "C3", "C4", "C5", "C6")]
    elif level is None:
        why = "the sweep varies train.eps: pass --level to choose the threshold"
        claims = [Claim(c, "", "insufficient data", why) for c in ("C1", "C2", "C3")]
        claims += [claim_c4(done, figs, fig_dir), claim_c5(done), claim_c6(done)]
    else:
        if len(_varying(done, "data.L")) and len(_varying(done, "data.N")) > 1:
            figs["learning_curves"] = plots.save(
                plots.learning_curves(done, y=y, level=level), fig_dir, "learning_curves"
            )
        if len(_varying(done, "model.m")) > 1 and len(_varying(done, "data.N")) > 1:
            for v in ("test/risk", "gen/gap"):
                name = "heatmap_" + v.replace("/", "_")
                figs[name] = plots.save(plots.heatmap(done, v), fig_dir, name)
        hist = (
            load_history(done[done["data.online"]], tracking_uri, [y]) if done["data.online"].any() else None
        )
        claims = [
            claim_c1(done, y, level, n_boot, figs, fig_dir),
            claim_c2(done, y, level, n_boot),
            claim_c3(done, hist, y, level, n_boot, figs, fig_dir)
            if hist is not None
            else Claim(
                "C3",
                "Iterations needed grow polynomially in L.",
                "insufficient data",
                "no online runs in the sweep",
            ),
            claim_c4(done, figs, fig_dir),
            claim_c5(done),
            claim_c6(done),
        ]
    return Report(sweep, runs, grid_table(runs), claims, figs)


def _table_md(df: pd.DataFrame) -> str:
    if df.empty:
        return "(empty)\n"
    cols = list(df.columns)
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float | np.floating) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def to_markdown(r: Report) -> str:
    statuses = ", ".join(f"{k} {n}" for k, n in r.runs["status"].value_counts().items())
    parts = [
        f"# rnnsgd report: sweep `{r.sweep}`\n",
        f"{len(r.runs)} grid points ({statuses}).\n",
        "## Verdicts\n",
        _table_md(pd.DataFrame([{"claim": c.id, "verdict": c.verdict} for c in r.claims])),
        "## Grid\n",
        _table_md(r.grid),
    ]
    for c in r.claims:
        parts += [f"## {c.id}: {c.verdict}\n", f"{c.text}\n" if c.text else "", f"{c.evidence}\n"]
        for title, t in c.tables:
            parts += [f"**{title}**\n", _table_md(t)]
        parts += [f"![{f}](figures/{f}.png)\n" for f in c.figures]
    if "learning_curves" in r.figures:
        parts += ["## Learning curves\n", "![learning curves](figures/learning_curves.png)\n"]
    parts += [f"![{n}](figures/{n}.png)\n" for n in r.figures if n.startswith("heatmap")]
    return "\n".join(parts)


def to_html(markdown: str, out: Path) -> str:
    """A self-contained page: the Markdown's tables and headings, figures inlined as data URIs."""
    body, table = [], []

    def flush() -> None:
        if table:
            rows = [
                [html.escape(c.strip()) for c in line.strip("|").split("|")]
                for line in table
                if "---|" not in line
            ]
            head = "".join(f"<th>{c}</th>" for c in rows[0])
            rest = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows[1:])
            body.append(f"<table><tr>{head}</tr>{rest}</table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("!["):
            path = out / line[line.index("(") + 1 : line.rindex(")")]
            data = base64.b64encode(path.read_bytes()).decode()
            body.append(f'<img src="data:image/png;base64,{data}" style="max-width:100%">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.strip():
            body.append(f"<p>{html.escape(line).replace('**', '')}</p>")
    flush()
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
        "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
    )
    return (
        f"<!doctype html><meta charset='utf-8'><title>rnnsgd report</title><style>{style}</style>"
        + "".join(body)
    )


def write(r: Report, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    md = to_markdown(r)
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(md)
    html_path.write_text(to_html(md, out))
    return md_path, html_path
