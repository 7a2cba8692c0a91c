"""Figures (matplotlib, saved as PNG and SVG): risk over the grid, learning curves, N*(L) and T*(L) with the
fitted laws, learning histories, the near-init quantities against m. Each function takes frames from
load/thresholds/fits and returns a Figure.

Figures are built as `matplotlib.figure.Figure` objects, never through pyplot: no backend is chosen or forced
(a headless cluster node, CI and a notebook behave alike) and no global figure list grows while a report draws
dozens of them. In a notebook a figure that is a cell's value shows inline as a PNG (`PlotFigure._repr_png_`),
whether or not pyplot's inline backend was ever loaded.

Diverged runs (outcome "diverged") are left out of every figure: their risk is not a number or has blown up,
and one of them would set the scale of a whole panel. Titles say how many were left out.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm, Normalize, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from .bootstrap import percentile_ci
from .fits import aggregate_seeds
from .laws import mu_raw

DPI = 110
MAX_COLS = 4  # panels per row: more L values wrap onto further rows instead of shrinking each panel
MAX_PANELS = 12  # a heatmap shows at most this many groups (the tables beside it show all of them)
LEVEL_COLOR = "C3"


class PlotFigure(Figure):
    """A Figure that IPython displays as an image when it is a cell's value.

    pyplot's inline backend registers its PNG display only once pyplot is imported; figures built without
    pyplot would otherwise show as `<Figure size ... with 3 Axes>`."""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
        return buf.getvalue()


def _figure(n_panels: int, width: float, height: float, cols: int = MAX_COLS) -> tuple[Figure, list]:
    """A figure of n_panels axes, at most `cols` per row, each width x height inches."""
    ncols = max(1, min(cols, n_panels))
    nrows = max(1, math.ceil(n_panels / ncols))
    fig = PlotFigure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, list(axes[:n_panels])


def save(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """Write name.png and name.svg; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.svg"]
    for p in paths:
        fig.savefig(p, dpi=DPI, bbox_inches="tight")
    return paths


def without_diverged(runs: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """(the runs that did not diverge, how many did)."""
    if "outcome" not in runs:
        return runs, 0
    bad = runs["outcome"] == "diverged"
    return runs[~bad], int(bad.sum())


def _left_out(n: int) -> str:
    return f" ({n} diverged runs left out)" if n else ""


def _short(key: str) -> str:
    return key.split(".")[-1]


def _plain(ax, which: str = "y", ticks: Sequence[float] | None = None) -> None:
    """Plain numbers (0.3, 24) on a log axis instead of 3 x 10^-1, minor ticks labelled at 2 and 5 where
    the axis spans at most two decades (3 too within one, all within half of one); ticks: the major ticks
    go there instead."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.tick_params(axis=which, which="both", labelsize=7)
    if ticks is not None:
        axis.set_ticks(list(ticks))
        axis.set_minor_formatter(NullFormatter())
        return

    def minor(v: float, _) -> str:
        lo, hi = sorted(axis.get_view_interval())
        span = math.log10(hi / lo) if lo > 0 else math.inf
        digit = round(v / 10 ** math.floor(math.log10(v)), 6) if v > 0 else 0
        keep = range(1, 10) if span <= 0.5 else (2, 3, 5) if span <= 1 else (2, 5) if span <= 2 else ()
        return f"{v:g}" if digit in keep else ""

    axis.set_minor_formatter(FuncFormatter(minor))


def _draw_level(ax, level: float | None) -> None:
    """The level as a dashed line with its value written on it (not only in a legend)."""
    if level is None:
        return
    _labelled_line(ax, level, f"level {level:g}", fontsize=7)


def _labelled_line(ax, y: float, text: str, fontsize: float) -> None:
    """A dashed horizontal line at y with text written on it at the right end."""
    ax.axhline(y, color=LEVEL_COLOR, ls="--", lw=1)
    ax.annotate(
        text,
        xy=(0.99, y),
        xycoords=("axes fraction", "data"),
        ha="right",
        va="bottom",
        color=LEVEL_COLOR,
        fontsize=fontsize,
    )


def learning_curves(
    runs: pd.DataFrame,
    y: str = "test/excess_risk",
    x: str = "data.N",
    panel: str = "data.L",
    level: float | None = None,
    hue: str | None = None,
    title: str | None = None,
) -> Figure:
    """y against N, one panel per L, each panel with its own y axis (a shared one flattens the short
    sequences, whose risks are far lower): the mean over seeds with its 95% CI, each seed faintly behind it,
    the level as a dashed line; hue: one mean curve per value of that column (e.g. data.task)."""
    runs, diverged = without_diverged(runs)
    runs = runs[np.isfinite(runs[y].astype(float))]
    fig, axes, panels, hues = _panel_axes(runs, panel, hue)
    for ax, v, sub in panels:
        for i, h in enumerate(hues):
            part = sub if h is None else sub[sub[hue] == h]
            if part.empty:
                continue
            for _, seed_runs in part.groupby(["seed.teacher", "seed.run"]):
                s = seed_runs.sort_values(x)
                ax.plot(s[x], s[y], color="0.82", lw=0.7)
            agg = aggregate_seeds(part, x, y)
            label = None if h is None else f"{_short(hue)} = {h}"
            ax.plot(agg[x], agg["mean"], "o-", color=f"C{i}", ms=3, label=label)
            ax.fill_between(agg[x], agg["ci_lo"], agg["ci_hi"], color=f"C{i}", alpha=0.2, lw=0)
        _draw_level(ax, level)
        ax.set_xscale("log", base=2)
        _plain(ax, "x", sorted(sub[x].unique()) if sub[x].nunique() <= 8 else None)
        _finish_panel(ax, sub[y], f"{_short(panel)} = {v}", _short(x), hues != [None])
    default = f"{y} against {_short(x)}: mean over seeds, 95% CI"
    return _finish_figure(fig, axes, y, (title or default) + _left_out(diverged))


def _panel_axes(frame: pd.DataFrame, panel: str, hue: str | None):
    """A figure with one panel per value of `panel`: (figure, its axes, [(axes, value, the value's rows)],
    the values of hue to draw a curve each for, or [None] for one curve)."""
    values = sorted(frame[panel].unique())
    fig, axes = _figure(len(values), 3.0, 2.6)
    hues = sorted(frame[hue].unique()) if hue and hue in frame and frame[hue].nunique() > 1 else [None]
    return fig, axes, [(ax, v, frame[frame[panel] == v]) for ax, v in zip(axes, values, strict=True)], hues


def _finish_panel(ax, values: pd.Series, title: str, xlabel: str, legend: bool) -> None:
    """A panel's y axis (log where every value is positive), title, x label, ticks and legend."""
    if (values > 0).all():
        ax.set_yscale("log")
        _plain(ax, "y")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.tick_params(which="both", labelsize=7)
    if legend:
        ax.legend(fontsize=6)


def _finish_figure(fig: Figure, axes, y: str, title: str) -> Figure:
    if axes:
        axes[0].set_ylabel(y, fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig


def _median_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Median and 95% percentile-bootstrap CI of values that may hold +inf (a threshold never reached)."""
    med = float(np.median(values))
    if len(values) < 2:
        return med, math.nan, math.nan
    boot = np.median(np.random.default_rng(seed).choice(values, (n_boot, len(values))), axis=1)
    lo, hi = percentile_ci(boot)
    return med, float(lo), float(hi)


def threshold_scaling(
    thr: pd.DataFrame,
    table: pd.DataFrame | None,
    x: str = "data.L",
    what: str = "N*",
    title: str | None = None,
) -> Figure:
    """N*(L) per seed with its bracket (censored ones as triangles; hollow where the run ran out of steps),
    the median over seeds per L with a 95% bootstrap CI (a censored seed at its bracket's end, +inf when
    never reached: an open CI is drawn to the top of the axes), on log-log and log-linear axes, with the
    fitted laws of `table` (select_scaling_law's rows) overlaid."""
    fig, axes = _figure(2, 4.6, 3.4)
    xs = thr[x].to_numpy(float)
    grid = np.linspace(xs.min(), xs.max() * 1.05, 200)
    med = _threshold_medians(thr, x)
    top = float(np.nanmax(thr[["lo", "hi", "x_star"]].replace(np.inf, np.nan).to_numpy(float))) * 1.5
    for ax, scale in zip(axes, ("log", "linear"), strict=True):
        _draw_thresholds(ax, thr, x, what)
        _draw_threshold_medians(ax, med, x, what, top)
        if table is not None:
            _draw_laws(ax, table, grid)
        _scaling_axes(ax, scale, sorted(set(xs)), x, what)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=6, loc="outside lower center", ncols=min(5, len(labels)))
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def _threshold_medians(thr: pd.DataFrame, x: str) -> pd.DataFrame:
    """Per value of x the median threshold over seeds with its 95% bootstrap CI, a censored seed at its
    bracket's end (+inf when never reached)."""
    xs = thr[x].to_numpy(float)
    point = np.where(
        thr["censor"] == "none", thr["x_star"], np.where(thr["censor"] == "left", thr["hi"], np.inf)
    )
    return pd.DataFrame(
        [(L, *_median_ci(point[(xs == L)])) for L in sorted(set(xs))], columns=[x, "median", "lo", "hi"]
    )


def _draw_thresholds(ax, thr: pd.DataFrame, x: str, what: str) -> None:
    """Each seed's threshold with its bracket; the censored ones as triangles at their bracket's end."""
    ok = thr[thr["censor"] == "none"]
    yerr = [ok["x_star"] - ok["lo"], ok["hi"] - ok["x_star"]]
    label = f"{what} per seed (bracket)"
    ax.errorbar(ok[x], ok["x_star"], yerr=yerr, fmt="o", ms=3, color="C0", alpha=0.5, label=label)
    right = thr[thr["censor"] == "right"]
    budget = right["reason"] == "budget" if "reason" in right else np.zeros(len(right), bool)
    if (~budget).any():
        ax.plot(right[x][~budget], right["lo"][~budget], "^", color="C3", ms=6, label="never crossed")
    if budget.any():  # ran out of steps still improving: a bound on the budget, not on the samples
        ax.plot(
            right[x][budget], right["lo"][budget], "^", color="C3", mfc="none", ms=6, label="out of steps"
        )
    left = thr[thr["censor"] == "left"]
    if len(left):
        ax.plot(left[x], left["hi"], "v", color="C2", ms=6, label="below at smallest (left-censored)")


def _draw_threshold_medians(ax, med: pd.DataFrame, x: str, what: str, top: float) -> None:
    """The medians with their CIs; an open end (a seed never crossed) drawn to `top`."""
    shown = med[np.isfinite(med["median"])]
    lo = shown["lo"].where(np.isfinite(shown["lo"]), shown["median"])
    hi = shown["hi"].where(np.isfinite(shown["hi"]), top)
    yerr = [shown["median"] - lo, hi - shown["median"]]
    label = f"median {what}, 95% CI"
    ax.errorbar(shown[x], shown["median"], yerr=yerr, fmt="D", ms=5, color="black", capsize=3, label=label)


def _draw_laws(ax, table: pd.DataFrame, grid: np.ndarray) -> None:
    """The converged laws of select_scaling_law's table as curves over grid, each with its dAICc."""
    for i, row in enumerate(table[table["converged"]].itertuples()):
        params = {k: getattr(row, k) for k in ("a", "k", "c", "q", "b", "theta") if hasattr(row, k)}
        label = f"{row.law} (dAICc {row.delta_aicc:.1f})"
        ax.plot(grid, np.exp(mu_raw(row.law, params, grid)), color=f"C{4 + i % 6}", lw=1, label=label)


def _scaling_axes(ax, scale: str, xs: list[float], x: str, what: str) -> None:
    """Log y; x log (ticks at the grid's values: a power law is straight) or linear (an exponential is)."""
    ax.set_xscale(scale)
    ax.set_yscale("log")
    _plain(ax, "y")
    if scale == "log":
        _plain(ax, "x", xs)
    ax.set_xlabel(_short(x) + (" (log)" if scale == "log" else ""))
    ax.set_ylabel(what)
    straight = (
        "log-log: a power law is straight" if scale == "log" else "log-linear: an exponential is straight"
    )
    ax.set_title(straight, fontsize=8)


def _panels(runs: pd.DataFrame, panel: str | Sequence[str] | None) -> list[tuple[str, pd.DataFrame]]:
    keys = [panel] if isinstance(panel, str) else list(panel or [])
    return split_by(runs, [k for k in keys if k in runs], lambda k, v: f"{_short(k)} = {v}")


def split_by(
    runs: pd.DataFrame, keys: Sequence[str], label=lambda k, v: f"{k}={v}"
) -> list[tuple[str, pd.DataFrame]]:
    """(label, rows) per combination of the keys' values, in sorted order, the label joining label(key, value)
    with commas; [("", runs)] without keys."""
    if not keys:
        return [("", runs)]
    out = []
    for key, sub in runs.groupby(list(keys), sort=True):
        values = key if isinstance(key, tuple) else (key,)
        out.append((", ".join(label(k, v) for k, v in zip(keys, values, strict=True)), sub))
    return out


def heatmap(
    runs: pd.DataFrame,
    value: str,
    rows: str | None = "model.m",
    cols: str = "data.N",
    panel: str | Sequence[str] | None = "data.L",
    level: float | None = None,
    title: str | None = None,
) -> Figure:
    """Median of `value` over the seeds on the (rows x cols) grid, one panel per value of `panel` (one column
    or several), every panel on one colour scale with its numbers written in the cells. With a level the
    scale is centred on it: blue at or below the level (learned), red above, and the cells at or below it
    framed."""
    runs, diverged = without_diverged(runs)
    groups = _panels(runs, panel)
    dropped = max(0, len(groups) - MAX_PANELS)
    groups = groups[:MAX_PANELS]
    grids = [_median_grid(sub, value, rows, cols) for _, sub in groups]
    norm, cmap = _color_scale(grids, level)
    ncol = max((g.shape[1] for g in grids), default=1)
    fig, axes = _figure(len(groups), max(2.6, 0.45 * ncol + 1.2), 2.8 if rows else 1.3, cols=3)
    im = None
    for ax, (label, _), g in zip(axes, groups, grids, strict=True):
        im = _draw_cells(ax, g.to_numpy(float), cmap, norm, level)
        _label_cells(ax, g, rows, cols, label)
    if im is not None:
        bar = fig.colorbar(im, ax=axes, shrink=0.9)
        if level is not None:
            bar.ax.axhline(level, color="black", lw=1)
        bar.ax.tick_params(which="both", labelsize=7)
    more = f"; {dropped} more panels in the tables" if dropped else ""
    fig.suptitle((title or f"median {value}") + _left_out(diverged) + more, fontsize=9)
    return fig


def _median_grid(runs: pd.DataFrame, value: str, rows: str | None, cols: str) -> pd.DataFrame:
    """The median of value per (rows, cols) cell; one row over cols alone when rows is None."""
    if rows is None:
        return runs.groupby(cols)[value].median().to_frame().T
    return runs.pivot_table(index=rows, columns=cols, values=value, aggfunc="median")


def _color_scale(grids: list[pd.DataFrame], level: float | None):
    """(norm, colormap) shared by every panel: diverging around the level where there is one, else
    sequential, on a log scale where the values span more than a factor of 30."""
    finite = np.concatenate([g.to_numpy(float).ravel() for g in grids]) if grids else np.array([])
    finite = finite[np.isfinite(finite)]
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    if level is not None:
        return TwoSlopeNorm(vcenter=level, vmin=min(lo, level * 0.99), vmax=max(hi, level * 1.01)), "RdBu_r"
    if lo > 0 and hi / lo > 30:
        return LogNorm(lo, hi), "viridis"
    return Normalize(lo, hi), "viridis"


def _draw_cells(ax, v: np.ndarray, cmap: str, norm, level: float | None):
    """The grid as an image with each value written in its cell (bold and framed at or below the level)."""
    im = ax.imshow(v, origin="lower", aspect="auto", cmap=cmap, norm=norm)
    for (i, j), val in np.ndenumerate(v):
        if not np.isfinite(val):
            continue
        below = level is not None and val <= level
        r, g, b, _ = im.cmap(norm(val))
        ink = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"  # legible on the cell
        weight = "bold" if below else "normal"
        ax.text(j, i, f"{val:.2g}", ha="center", va="center", fontsize=6.5, color=ink, fontweight=weight)
        if below:
            ax.add_patch(_frame(i, j, ink))
    return im


def _label_cells(ax, g: pd.DataFrame, rows: str | None, cols: str, title: str) -> None:
    """A heatmap panel's ticks at the grid's values, its axis labels and title."""
    ax.set_xticks(range(len(g.columns)), [str(c) for c in g.columns], rotation=45, fontsize=7)
    ax.set_xlabel(_short(cols), fontsize=8)
    if rows is None:
        ax.set_yticks([])
    else:
        ax.set_yticks(range(len(g.index)), [str(r) for r in g.index], fontsize=7)
        ax.set_ylabel(_short(rows), fontsize=8)
    ax.set_title(title, fontsize=8)


def _frame(i: int, j: int, color: str):
    from matplotlib.patches import Rectangle

    return Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec=color, lw=1.2)


def history(
    hist: pd.DataFrame,
    y: str,
    level: float | None = None,
    panel: str = "data.L",
    hue: str | None = None,
    title: str | None = None,
) -> Figure:
    """y against the SGD step from the runs' histories (load_history's frame merged with the runs' columns,
    the value in column y), one panel per L with its own y axis: the median over runs per step with the band
    between their quartiles, one curve per value of hue (e.g. data.N), the level dashed."""
    bad = hist["outcome"] == "diverged" if "outcome" in hist else pd.Series(False, index=hist.index)
    diverged = hist.loc[bad, "run_id"].nunique() if "run_id" in hist else int(bad.sum())  # runs, not rows
    hist = hist[~bad]
    hist = hist[(hist["step"] > 0) & np.isfinite(hist[y].astype(float))]
    fig, axes, panels, hues = _panel_axes(hist, panel, hue)
    for ax, v, sub in panels:
        for i, h in enumerate(hues):
            part = sub if h is None else sub[sub[hue] == h]
            q = part.groupby("step")[y].quantile([0.25, 0.5, 0.75]).unstack()
            if q.empty:
                continue
            label = None if h is None else f"{_short(hue)} = {h}"
            ax.plot(q.index, q[0.5], color=f"C{i % 10}", lw=1.2, label=label)
            ax.fill_between(q.index, q[0.25], q[0.75], color=f"C{i % 10}", alpha=0.15, lw=0)
        _draw_level(ax, level)
        ax.set_xscale("log")
        _finish_panel(ax, sub[y], f"{_short(panel)} = {v}", "SGD step", hues != [None])
    default = f"{y} during training: median over runs, quartile band"
    return _finish_figure(fig, axes, y, (title or default) + _left_out(diverged))


def mechanism(
    runs: pd.DataFrame,
    slopes: pd.DataFrame,
    x: str = "model.m",
    near: dict[str, float] | None = None,
    title: str | None = None,
    cells: Sequence[str] = (),
) -> Figure:
    """Each proof quantity against m (log-log): the geometric mean over runs per m with its 95% CI (means
    of the logs, as the slopes are fitted on them), the fitted slope of `slopes` (solid) and the predicted
    one (dotted, where `slopes` has one), both through the centre of the points, and, for the quantities in
    `near`, the value below which a run counts as near its init (dashed). cells: the other swept axes the
    slopes were fitted within; only the cells run at every m are drawn, so that each m averages the same
    cells (a control run at one width alone would otherwise tilt the means against the fitted slope)."""
    runs, diverged = without_diverged(runs)
    runs = _cells_at_every(runs, x, [c for c in cells if c in runs])
    keys = list(slopes["metric"])
    fig, axes = _figure(len(keys), 3.0, 2.7)
    for ax, key in zip(axes, keys, strict=True):
        agg = _geometric_means(runs, key, x)
        yerr = [agg["mean"] - agg["ci_lo"], agg["ci_hi"] - agg["mean"]]
        ax.errorbar(agg[x], agg["mean"], yerr=yerr, fmt="o", ms=4)
        _draw_slopes(ax, agg, slopes.set_index("metric").loc[key], x)
        if near and key in near:
            _labelled_line(ax, near[key], f"near init below {near[key]:g}", fontsize=6)
        _mechanism_axes(ax, agg, key, x)
    default = f"near-init quantities against {_short(x)}: geometric means, 95% CI, log-log slopes"
    fig.suptitle((title or default) + _left_out(diverged), fontsize=9)
    return fig


def _cells_at_every(runs: pd.DataFrame, x: str, cells: list[str]) -> pd.DataFrame:
    """The runs of the cells (combinations of the cells' values) run at every value of x."""
    if not (cells and len(runs)):
        return runs
    key = runs[cells].astype(str).agg("|".join, axis=1)
    widths = runs.groupby(key)[x].nunique()
    return runs[key.map(widths).eq(runs[x].nunique()).to_numpy()]


def _geometric_means(runs: pd.DataFrame, key: str, x: str) -> pd.DataFrame:
    """Per value of x the geometric mean of key over runs with its 95% CI (empty where no run logged key)."""
    if key in runs:
        v = runs[key].astype(float)
        agg = aggregate_seeds(runs[[x]].assign(log=np.log(v.where(v > 0))), x, "log")
        agg[["mean", "ci_lo", "ci_hi"]] = np.exp(agg[["mean", "ci_lo", "ci_hi"]].astype(float))
    else:
        agg = pd.DataFrame(columns=[x, "mean", "ci_lo", "ci_hi"])
    return agg[np.isfinite(agg["mean"].astype(float))]


def _draw_slopes(ax, agg: pd.DataFrame, s: pd.Series, x: str) -> None:
    """The fitted slope (solid) and the predicted one (dotted), through the geometric centre of the points."""
    if not (np.isfinite(s["slope"]) and len(agg)):
        return
    g = np.geomspace(agg[x].min(), agg[x].max(), 50)
    lx = np.log(agg[x].to_numpy(float))
    centre_x, centre_y = np.exp(lx.mean()), np.exp(np.log(agg["mean"].to_numpy(float)).mean())
    label = f"fit {s['slope']:.2f} [{s['ci_lo']:.2f}, {s['ci_hi']:.2f}]"
    ax.plot(g, centre_y * (g / centre_x) ** s["slope"], "C1-", label=label)
    predicted = s.get("predicted")
    if predicted is not None and np.isfinite(predicted):
        label = f"predicted {predicted:.2f}"
        ax.plot(g, centre_y * (g / centre_x) ** predicted, "k:", lw=1, label=label)


def _mechanism_axes(ax, agg: pd.DataFrame, key: str, x: str) -> None:
    """Log-log axes with ticks at the widths, the quantity as title, a legend where there are lines."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    _plain(ax, "x", sorted(agg[x].unique()) if len(agg) else None)
    _plain(ax, "y")
    ax.set_title(key, fontsize=9)
    ax.set_xlabel(_short(x))
    ax.tick_params(which="both", labelsize=7)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)
