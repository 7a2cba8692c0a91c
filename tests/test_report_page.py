"""The report as a page: provenance and links into the MLflow UI, the risk over the grid at the level, figures
inlined, text from the runs kept as text; and figures that show inline in a notebook without pyplot.

Small frames built here, no sweep.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from rnnsgd.analysis import plots, render, report

Y = "test/rel_risk_tail"


def grid_runs() -> pd.DataFrame:
    """Offline runs over L x N with two seeds; one run diverged (its risk blew up)."""
    rows = []
    for L in (4, 8):
        for N in (16, 64, 256):
            for seed in (0, 1):
                risk = min(1.0, 0.05 * L * 64 / N) + 0.01 * seed
                rows.append(
                    {
                        "data.L": L,
                        "data.N": N,
                        "seed.teacher": seed,
                        "seed.run": seed,
                        Y: risk,
                        "status": "FINISHED",
                        "outcome": "budget",
                        "data.online": False,
                        "run_id": f"run{L}x{N}x{seed}",
                    }
                )
    runs = pd.DataFrame(rows).assign(
        **{
            "model.m": 64,
            "data.task": "paper",
            "data.eps_x": 0.5,
            "model.w_var": 2.0,
            "model.activation": "relu",
        }
    )
    runs.loc[0, [Y, "outcome"]] = [7.5e10, "diverged"]
    return runs


def provenance(uri: str = "sqlite:////data/mlflow.db") -> report.Provenance:
    return report.Provenance(
        written="2026-01-02 03:04 UTC",
        code_sha="abc123",
        run_shas=["def456"],
        tracking_uri=uri,
        experiment_id="7",
        parent_run_id="parent0",
        wall_minutes=3.5,
        command="rnnsgd report s",
    )


def test_the_page_has_provenance_links_the_grid_at_the_level_and_its_figures_inlined(tmp_path):
    runs = grid_runs()
    (view,) = report.grid_views(runs)
    assert view.name == "risk_N_L" and view.axes == ("data.N", "data.L")
    figures = {view.name: plots.save(report.draw_grid(runs, view, Y, 0.5), tmp_path / "figures", view.name)}
    evidence = "no run logged lags/r2_<lag>; N*(L) and T*(L) stay as they are"
    claims = [report.Claim("C1", "text", "polynomial", evidence, criterion=report.criterion("N*", Y, 0.5))]
    rep = report.Report("s", runs, report.grid_table(runs), claims, figures, Y, 0.5, provenance())
    md_path, html_path = render.write(rep, tmp_path)
    md, page = md_path.read_text(), html_path.read_text()

    ui = "http://127.0.0.1:5000/#/experiments/7"
    assert "2026-01-02 03:04 UTC" in page and "<code>abc123</code>" in page and "<code>def456</code>" in page
    q = "?workflowType=machine_learning"  # model-training pages, not GenAI's
    assert f'<a href="{ui}/runs/parent0{q}"><code>parent0</code></a>' in page and "3.5 minutes" in page
    assert "mlflow ui --backend-store-uri sqlite:////data/mlflow.db --port 5000" in page
    assert all(f'href="{ui}/runs/{r}{q}"' in page for r in runs["run_id"])  # every run has its link
    # the diverged run is left out of the medians and listed apart, with its link
    assert "(1 diverged runs left out)" in md and "### Diverged runs (1:" in md
    assert "7.5e+10" not in md.split("## Runs")[0]
    # the level in words, the cells at or below it in bold: L = 4 reaches 0.5 at N = 64 (0.2), L = 8 at 256
    assert "the level 0.5 lies halfway from the best constant predictor" in page
    table = md.split("**median test/rel_risk_tail (1 diverged runs left out)**")[1].split("\n\n")[1]
    assert table.splitlines()[2:] == [
        "| 16 | 0.81 | 1.005 |",
        "| 64 | **0.205** | **0.405** |",
        "| 256 | **0.055** | **0.105** |",
    ]
    assert "<strong>0.205</strong>" in page and "<th style" in page  # numbers right-aligned
    # the figure is a file beside the Markdown and inlined in the page, with its caption
    assert "![risk_N_L](figures/risk_N_L.png)" in md and (tmp_path / "figures" / "risk_N_L.png").is_file()
    assert page.count('<img alt="risk_N_L" src="data:image/png;base64,') == 1
    assert "Figure: The median final" in page
    # text from the runs stays text: no tag swallowed, no emphasis between two thresholds' stars
    assert "lags/r2_&lt;lag&gt;" in page and "<lag>" not in page
    assert "N*(L) and T*(L)" in page and "<em>" not in page


def test_links_go_to_the_tracking_server_itself_when_there_is_one():
    p = provenance("https://mlflow.example.org/")
    assert (
        p.run_url("abc")
        == "https://mlflow.example.org/#/experiments/7/runs/abc?workflowType=machine_learning"
    )
    assert p.ui_command() == ""
    rep = report.Report("s", grid_runs(), pd.DataFrame(), [], {}, Y, 0.5, p)
    assert "the MLflow UI of the tracking server (https://mlflow.example.org)" in render.provenance_md(rep)


def test_the_terminal_markdown_has_no_figures():
    runs = grid_runs()
    figures = {"risk_N_L": [Path("figures/risk_N_L.png")]}
    rep = report.Report("s", runs, report.grid_table(runs), [], figures, Y, 0.5, provenance())
    md = render.to_markdown(rep, figures=None)
    assert "median test/rel_risk_tail over N x L" in md and ".png" not in md and "Figure:" not in md


def test_figures_show_inline_without_pyplot_or_a_forced_backend():
    """In a fresh interpreter: no pyplot imported and no backend chosen by drawing a figure and saving it,
    and the figure has the PNG that IPython shows for a cell's value."""
    code = """
import sys
import matplotlib
import pandas as pd
from rnnsgd.analysis import plots
runs = pd.DataFrame([{"data.L": L, "data.N": N, "seed.teacher": s, "seed.run": 0, "y": L / N + s / 100}
                     for L in (4, 8) for N in (16, 64, 256) for s in (0, 1)])
fig = plots.learning_curves(runs, y="y", level=0.05)
png = fig._repr_png_()
assert png.startswith(b"\\x89PNG") and len(png) > 5000, len(png)
assert len(fig.axes) == 2 and fig.axes[0].get_shared_y_axes().get_siblings(fig.axes[0]) == [fig.axes[0]]
assert "matplotlib.pyplot" not in sys.modules
assert matplotlib.rcParams._get_backend_or_none() is None  # nothing forced: a notebook picks its own
"""
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_level_is_drawn_and_labelled_on_every_learning_curve_panel():
    fig = plots.learning_curves(grid_runs(), y=Y, level=0.5)
    for ax in fig.axes:
        assert any(
            np.allclose(line.get_ydata(), 0.5) for line in ax.get_lines() if len(line.get_ydata()) == 2
        )
        assert "level 0.5" in [t.get_text() for t in ax.texts]
    assert "1 diverged runs left out" in fig._suptitle.get_text()
