"""Figures (matplotlib, saved as PNG and SVG): learning curves, N*(L) with fitted laws, (m x N) heatmaps,
mechanism quantities against m. Each function takes frames from load/thresholds/fits and returns a Figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files: no display needed on clusters or in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .fits import aggregate_seeds  # noqa: E402
from .laws import mu_raw  # noqa: E402


def save(fig: plt.Figure, out_dir: Path, name: str) -> list[Path]:
    """Write name.png and name.svg; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.svg"]
    for p in paths:
        fig.savefig(p, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return paths


def learning_curves(
    runs: pd.DataFrame,
    y: str = "test/excess_risk",
    x: str = "data.N",
    panel: str = "data.L",
    level: float | None = None,
) -> plt.Figure:
    """y against N, one panel per L: the mean over seeds with its 95% CI, each seed faintly behind it."""
    values = sorted(runs[panel].unique())
    fig, axes = plt.subplots(1, len(values), figsize=(3.4 * len(values), 3.0), sharey=True, squeeze=False)
    for ax, v in zip(axes[0], values, strict=True):
        sub = runs[runs[panel] == v]
        agg = aggregate_seeds(sub, x, y)
        for _, seed_runs in sub.groupby(["seed.teacher", "seed.run"]):
            s = seed_runs.sort_values(x)
            ax.plot(s[x], s[y], color="0.8", lw=0.8)
        ax.plot(agg[x], agg["mean"], "o-", color="C0")
        ax.fill_between(agg[x], agg["ci_lo"], agg["ci_hi"], color="C0", alpha=0.2, lw=0)
        if level is not None:
            ax.axhline(level, color="C3", ls="--", lw=1, label=f"threshold {level:g}")
            ax.legend(fontsize=7)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log" if (sub[y] > 0).all() else "linear")
        ax.set_title(f"{panel.split('.')[-1]} = {v}")
        ax.set_xlabel(x.split(".")[-1])
    axes[0][0].set_ylabel(y)
    fig.tight_layout()
    return fig


def threshold_scaling(
    thr: pd.DataFrame, table: pd.DataFrame | None, x: str = "data.L", what: str = "N*"
) -> plt.Figure:
    """N*(L) per seed with its bracket (censored ones as arrows; hollow where the run ran out of steps), on
    log-log and log-linear axes, with the fitted laws of `table` (select_scaling_law's rows) overlaid."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    xs = thr[x].to_numpy(float)
    grid = np.linspace(xs.min(), xs.max() * 1.05, 200)
    for ax, scale in zip(axes, ("log", "linear"), strict=True):
        ok = thr[thr["censor"] == "none"]
        ax.errorbar(
            ok[x],
            ok["x_star"],
            yerr=[ok["x_star"] - ok["lo"], ok["hi"] - ok["x_star"]],
            fmt="o",
            ms=3,
            color="C0",
            alpha=0.7,
            label=f"{what} per seed (bracket)",
        )
        right = thr[thr["censor"] == "right"]
        budget = right["reason"] == "budget" if "reason" in right else np.zeros(len(right), bool)
        ax.plot(right[x][~budget], right["lo"][~budget], "^", color="C3", ms=6, label="never crossed")
        if budget.any():  # ran out of steps still improving: a bound on the budget, not on the samples
            ax.plot(
                right[x][budget], right["lo"][budget], "^", color="C3", mfc="none", ms=6, label="out of steps"
            )
        left = thr[thr["censor"] == "left"]
        ax.plot(left[x], left["hi"], "v", color="C2", ms=6, label="below at smallest (left-censored)")
        if table is not None:
            for i, row in enumerate(table[table["converged"]].itertuples()):
                params = {k: getattr(row, k) for k in ("a", "k", "c", "q", "b", "theta") if hasattr(row, k)}
                ax.plot(
                    grid,
                    np.exp(mu_raw(row.law, params, grid)),
                    color=f"C{4 + i % 6}",
                    lw=1,
                    label=f"{row.law} (dAICc {row.delta_aicc:.1f})",
                )
        ax.set_xscale(scale)
        ax.set_yscale("log")
        ax.set_xlabel(x.split(".")[-1] + (" (log)" if scale == "log" else ""))
        ax.set_ylabel(what)
    axes[1].legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    return fig


def heatmap(
    runs: pd.DataFrame, value: str, rows: str = "model.m", cols: str = "data.N", panel: str = "data.L"
) -> plt.Figure:
    """Seed-mean of `value` on the (m x N) grid, one panel per L."""
    values = sorted(runs[panel].unique())
    fig, axes = plt.subplots(1, len(values), figsize=(3.6 * len(values), 3.0), squeeze=False)
    for ax, v in zip(axes[0], values, strict=True):
        grid = runs[runs[panel] == v].pivot_table(index=rows, columns=cols, values=value, aggfunc="mean")
        im = ax.imshow(grid.to_numpy(float), origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(grid.columns)), [str(c) for c in grid.columns], rotation=45, fontsize=7)
        ax.set_yticks(range(len(grid.index)), [str(r) for r in grid.index], fontsize=7)
        ax.set_xlabel(cols.split(".")[-1])
        ax.set_ylabel(rows.split(".")[-1])
        ax.set_title(f"{value}, {panel.split('.')[-1]} = {v}", fontsize=8)
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def mechanism(runs: pd.DataFrame, slopes: pd.DataFrame, x: str = "model.m") -> plt.Figure:
    """Each proof quantity against m (log-log), seed means with CIs and the fitted slope of `slopes`."""
    keys = list(slopes["metric"])
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.0), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        agg = aggregate_seeds(runs, x, key)
        ax.errorbar(
            agg[x], agg["mean"], yerr=[agg["mean"] - agg["ci_lo"], agg["ci_hi"] - agg["mean"]], fmt="o"
        )
        s = slopes.set_index("metric").loc[key]
        if np.isfinite(s["slope"]):
            g = np.geomspace(agg[x].min(), agg[x].max(), 50)
            ax.plot(
                g,
                np.exp(s["intercept"]) * g ** s["slope"],
                "C1-",
                label=f"slope {s['slope']:.2f} [{s['ci_lo']:.2f}, {s['ci_hi']:.2f}]",
            )
            ax.legend(fontsize=7)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel(x.split(".")[-1])
    fig.tight_layout()
    return fig
