"""The report as text: Markdown (for a terminal, a docs page and the file beside the figures) and a
self-contained HTML page, from a `report.Report`.

The claims, their verdicts and the tables behind them are computed in `rnnsgd.analysis.report` (claims
C1-C6 of arXiv 1902.01028, docs/claims.md); this module only lays them out: the provenance, the metric and
level in words (docs/metrics.md), the verdicts, the risk over the grid, each claim with its evidence and
figures, the runs with their links into the MLflow UI.
"""

from __future__ import annotations

import base64
import html
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import markdown as markdown_lib
import numpy as np
import pandas as pd

from rnnsgd.metrics import RISK_WORDS

from .report import (
    AXES,
    NEAR_INIT,
    Claim,
    Provenance,
    Report,
    classify,
    criterion,
    estimator_noise,
    grid_views,
    risk_tables,
)
from .thresholds import RELATIVE_CAVEAT, is_relative


def _table_md(df: pd.DataFrame, at_most: float | None = None) -> str:
    """A Markdown table; with at_most, numbers at or below it (past the first column) in bold."""
    if df.empty:
        return "(empty)\n"
    cols = list(df.columns)

    def fmt(j: int, v) -> str:
        if not isinstance(v, float | np.floating):
            return str(v)
        text = f"{v:.4g}"
        return f"**{text}**" if at_most is not None and j > 0 and v <= at_most else text

    right = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in cols]
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "".join("---:|" if r else "---|" for r in right)]
    lines += [
        "| " + " | ".join(fmt(j, v) for j, v in enumerate(row)) + " |" for row in df.itertuples(index=False)
    ]
    return "\n".join(lines) + "\n"


def metric_words(y: str) -> str:
    """e.g. "tail-averaged baseline-relative excess risk (test/rel_risk_tail)"."""
    return f"{RISK_WORDS[y]} ({y})" if y in RISK_WORDS else y


def level_words(y: str, level: float) -> str:
    """What the level means on the metric's scale."""
    if is_relative(y):
        where = "halfway" if level == 0.5 else f"{1 - level:.0%} of the way"
        return (
            f"the level {level:g} lies {where} from the best constant predictor (1: nothing learned from the "
            "tokens) down to OPT (0: the teacher's own risk)"
        )
    return f"the level {level:g} is absolute, in the units of {y}"


def caption(name: str, r: Report) -> str:
    """What a figure of the report shows, in words."""
    words, level = metric_words(r.metric), f"the level {r.level:g}"
    if name.startswith("risk_"):
        return (
            f"the median final {words} of each cell over its seeds, one panel per value of the other swept "
            f"axes; blue, framed and in bold at or below {level}, red above it; diverged runs left out."
        )
    if name == "learning_curves":
        return (
            f"Final {words} against N, one panel per L, each with its own y axis: the mean over seeds with "
            f"its 95% CI, each seed in grey, {level} dashed."
        )
    if name.startswith(("c1_scaling", "c3_scaling")):
        what = "N*" if name.startswith("c1") else "T*"
        return (
            f"{what} per seed against L (dots with their brackets; triangles: censored), the median per L "
            "with a 95% bootstrap CI over seeds (black; a bar to the top of the axes: open above, as some "
            "seeds never crossed) and the fitted laws with their dAICc. Left log-log, where a power law is "
            "straight; right log-linear, where an exponential is straight."
        )
    if name == "c3_curves":
        return f"{words} against the SGD step, per L: the median over the online runs, quartiles shaded."
    if name == "c4_mechanism":
        return (
            "The proof's quantities at the end of training against m (log-log): geometric means over the "
            "runs of the cells run at every m, with 95% CIs; the slope fitted within cells of the other axes "
            "(solid) against the predicted one (dotted), both through the centre of the points; dashed: "
            "where a run stops counting as near its init."
        )
    if name == "heatmap_gen_gap":
        return (
            "Median generalization gap (test risk - train risk) over m x N, one panel per value of the other "
            "swept axes; diverged runs left out."
        )
    return ""


def _figure_md(name: str, r: Report, figures: str | None) -> list[str]:
    if figures is None or name not in r.figures:
        return []
    text = caption(name, r)
    return [f"![{name}]({figures}/{name}.png)\n", f"Figure: {text[:1].upper()}{text[1:]}\n"]


def _run_link(r: Report, run_id: str) -> str:
    p = r.provenance
    if p is None or p.experiment_id is None:
        return f"`{run_id}`"
    return f"[`{run_id[:8]}`]({p.run_url(run_id)})"


def provenance_md(r: Report) -> str:
    """The provenance as a Markdown list: when, by what command and code, from which store, experiment and
    parent run (linked into the MLflow UI), and what serves the links."""
    p = r.provenance
    if p is None:
        return ""
    statuses = (
        ", ".join(f"{k} {n}" for k, n in r.runs["status"].value_counts().items())
        if "status" in r.runs
        else ""
    )
    by = f" by `{p.command}`" if p.command else ""
    exp = (
        f"experiment `{r.sweep}`"
        if p.experiment_id is None
        else (f"experiment [`{r.sweep}` (id {p.experiment_id})]({p.experiment_url()})")
    )
    lines = [
        f"- Written {p.written}{by}, code at commit `{p.code_sha}`.",
        f"- Runs: {len(r.runs)} grid points of sweep `{r.sweep}` ({statuses}), trained at commit "
        f"{', '.join(f'`{v}`' for v in p.run_shas) or 'unknown'}.",
        f"- Tracking store `{p.tracking_uri}`, {exp}.",
    ]
    if p.parent_run_id:
        lines.append(_parent_line(p))
    cmd = p.ui_command()
    lines.append(
        f"- Links open in the MLflow UI once `{cmd}` serves the store ({p.ui_base()})."
        if cmd
        else f"- Links open in the MLflow UI of the tracking server ({p.ui_base()})."
    )
    return "\n".join(lines) + "\n"


def _parent_line(p: Provenance) -> str:
    """The sweep's parent run, linked, with its wall time."""
    wall = (
        ""
        if p.wall_minutes is None
        else (
            f", {p.wall_minutes:.1f} minutes of wall time (Ray start and MLflow included; a resumed "
            "sweep adds its pauses)"
        )
    )
    return f"- Parent run [`{p.parent_run_id}`]({p.run_url(p.parent_run_id)}){wall}."


def runs_md(r: Report, rows: pd.DataFrame) -> str:
    """One line per run: the swept axes, seeds, status, outcome, the metric, and a link to the run."""
    if rows.empty:
        return "(none)\n"
    cols = [k for k in AXES if k in r.runs and r.runs[k].map(str).nunique() > 1]
    cols += [k for k in ("seed.teacher", "seed.run", "status", "outcome", r.metric) if k in rows]
    t = rows[cols].copy()
    t["run"] = [_run_link(r, v) for v in rows["run_id"]] if "run_id" in rows else ""
    return _table_md(t)


def scale_and_caveats(runs: pd.DataFrame) -> list[str]:
    """What the verdicts rest on (tasks, widths, lengths, samples, seeds, outcomes) and how far the runs are
    from the regime of the paper's proof, measured on the main task's finished runs (from the columns the
    frame has)."""
    need = {"status", "outcome", "data.task", "model.m", "data.L", "data.N", "seed.teacher", "seed.run"}
    done = runs[runs["status"] == "FINISHED"] if need <= set(runs.columns) else runs.iloc[:0]
    if done.empty:
        return []
    main = done[classify(done) == "main"]
    span = {k: f"{done[k].min():g}..{done[k].max():g}" for k in ("model.m", "data.L", "data.N")}
    lines = [
        f"- Tasks: {', '.join(sorted(done['data.task'].unique()))}; width m = {span['model.m']}; "
        f"L = {span['data.L']}; N = {span['data.N']}; "
        f"{len(done[['seed.teacher', 'seed.run']].drop_duplicates())} teacher/run seed pairs.",
        "- Outcomes: "
        + ", ".join(f"{k} {n}" for k, n in done["outcome"].value_counts().items())
        + " (budget: the step budget ended the run, learned or not; completed: a plateau below the constant "
        "baseline).",
    ]
    near = {k: main[k].median() for k in ("act/flip_frac", "lin/rel_err", "w/move_fro") if k in main}
    if near:
        lines.append(_regime_line(near))
    return lines


def _regime_line(near: dict[str, float]) -> str:
    """The main task's median proof quantities at the end of training against the near-init regime of the
    proof of arXiv 1902.01028 (few ReLU sign flips, a network close to its linearization; C4 in
    docs/claims.md)."""
    outside = (
        near.get("act/flip_frac", 0) > NEAR_INIT["act/flip_frac"]
        or near.get("lin/rel_err", 0) > NEAR_INIT["lin/rel_err"]
    )
    return (
        "- Distance from the proof's regime (median over the main task's runs at their end): "
        + ", ".join(f"{k} {v:.3g}" for k, v in near.items())
        + ". The proof keeps sign flips and the linearization error small, shrinking with m"
        + (
            "; here they are not small, so these runs test the claims beyond the regime the proof covers "
            "(C4 asks whether they shrink with m)."
            if outside
            else f" (here both are below {NEAR_INIT}: near init)."
        )
    )


def to_markdown(
    r: Report, figures: str | None = "figures", preface: Sequence[str] = (), runs_list: bool = False
) -> str:
    """The provenance, the metric and level in words, then the claims the sweep targets, each verdict with the
    threshold it read (the others in one line), the grid and its risk, the figures with their captions.
    figures: the folder of the figures, relative to the Markdown (None: no figures, e.g. on a terminal);
    preface: paragraphs after the title; runs_list: every run with its link (diverged runs are always
    listed apart)."""
    targeted = [c for c in r.claims if c.targeted]
    parts = [
        *_opening_md(r, preface),
        *_verdicts_md(r, targeted),
        *_grid_md(r, figures),
        *_overview_figures_md(r, figures),
        *_claims_md(r, targeted, figures),
        *_noise_md(r),
        *_caveats_md(r),
        *_runs_sections_md(r, runs_list),
    ]
    return "\n".join(parts)


def _opening_md(r: Report, preface: Sequence[str]) -> list[str]:
    """The title, the preface, the provenance (or the runs' count by status), what the verdicts read."""
    statuses = ", ".join(f"{k} {n}" for k, n in r.runs["status"].value_counts().items())
    prov = provenance_md(r)
    return [
        f"# rnnsgd report: sweep `{r.sweep}`\n",
        *(f"{p}\n" for p in preface),
        *(["## Provenance\n", prov] if prov else [f"{len(r.runs)} grid points ({statuses}).\n"]),
        "## What the verdicts read\n",
        f"The metric is the {metric_words(r.metric)}; {level_words(r.metric, r.level)}.\n",
        f"Thresholds: {criterion('N*', r.metric, r.level)}; {criterion('T*', r.metric, r.level)}.\n",
        f"{RELATIVE_CAVEAT}\n" if is_relative(r.metric) else "",
    ]


def _verdicts_md(r: Report, targeted: list[Claim]) -> list[str]:
    """One row per targeted claim with the threshold it read; the untargeted ones in one line."""
    others = [c for c in r.claims if not c.targeted]
    return [
        "## Verdicts\n",
        _table_md(
            pd.DataFrame([{"claim": c.id, "verdict": c.verdict, "read as": c.criterion} for c in targeted])
        ),
        "Not targeted by this sweep: " + ", ".join(f"{c.id} ({c.evidence})" for c in others) + ".\n"
        if others
        else "",
    ]


def _grid_md(r: Report, figures: str | None) -> list[str]:
    """The grid, then the median risk over each view of it: its heatmap and one table per group of runs."""
    parts = ["## Grid\n", _table_md(r.grid)]
    views = grid_views(r.runs)
    if views:
        parts += [
            "## Risk over the grid\n",
            f"The median final {metric_words(r.metric)} over the seeds of each grid point; values at or "
            f"below the level {r.level:g} in bold. Diverged runs are left out of the medians (see Runs).\n",
        ]
    for view in views:
        parts += [f"### {view.title(r.metric)}\n", *_figure_md(view.name, r, figures)]
        parts += _risk_tables_md(r, view.runs(r.runs), view.axes)
    if not views:  # a grid of another shape: its two most varied axes
        parts += _risk_tables_md(r, r.runs, None)
    return parts


def _risk_tables_md(r: Report, runs: pd.DataFrame, axes: Sequence[str] | None) -> list[str]:
    parts = []
    for title, t in risk_tables(runs, r.metric, axes):
        parts += [f"**{title}**\n", _table_md(t, at_most=r.level)]
    return parts


def _overview_figures_md(r: Report, figures: str | None) -> list[str]:
    """The figures of the whole grid that belong to no claim: the generalization gap, the learning curves."""
    parts = []
    if "heatmap_gen_gap" in r.figures and figures is not None:
        parts += ["### Generalization gap over m x N\n", *_figure_md("heatmap_gen_gap", r, figures)]
    if "learning_curves" in r.figures and figures is not None:
        parts += ["## Learning curves\n", *_figure_md("learning_curves", r, figures)]
    return parts


def _claims_md(r: Report, targeted: list[Claim], figures: str | None) -> list[str]:
    """A section per targeted claim: its verdict, text, threshold, evidence, tables and figures."""
    parts = []
    for c in targeted:
        parts += [f"## {c.id}: {c.verdict}\n", f"{c.text}\n" if c.text else ""]
        parts += [f"Read as: {c.criterion}.\n" if c.criterion else "", f"{c.evidence}\n"]
        for title, t in c.tables:
            parts += [f"**{title}**\n", _table_md(t)]
        for f in c.figures:
            parts += _figure_md(f, r, figures)
    return parts


def _noise_md(r: Report) -> list[str]:
    """How noisy the tail-averaged and the last-iterate risk are (estimator_noise), where both were logged."""
    noise = estimator_noise(r.runs) if {"status", "outcome", "data.N"} <= set(r.runs.columns) else None
    if noise is None or len(noise) != 2:
        return []
    return [
        "## The risk estimate: tail average against last iterate\n",
        "Between neighbouring N on one curve the risk should only fall; how much each estimate jumps "
        "instead (main task, points below 0.9):\n",
        _table_md(noise),
    ]


def _caveats_md(r: Report) -> list[str]:
    caveats = scale_and_caveats(r.runs)
    return ["## Scale and caveats\n", "\n".join(caveats) + "\n"] if caveats else []


def _runs_sections_md(r: Report, runs_list: bool) -> list[str]:
    """The diverged runs (always) and every run (with runs_list), each with its link."""
    diverged = r.runs[r.runs["outcome"] == "diverged"] if "outcome" in r.runs else r.runs.iloc[:0]
    parts = []
    if len(diverged) or runs_list:
        parts += ["## Runs\n"]
    if len(diverged):
        parts += [
            f"### Diverged runs ({len(diverged)}: left out of every median and figure)\n",
            runs_md(r, diverged),
        ]
    if runs_list:
        parts += [f"### All {len(r.runs)} runs\n", runs_md(r, r.runs)]
    return parts


# "N*", "T*(L)": an asterisk right after a letter or a bracket is the threshold's name, never emphasis
_STAR = re.compile(r"(?<=[A-Za-z0-9)\]])\*(?!\*)")
_IMG = re.compile(r'<img alt="([^"]*)" src="([^":]+)"\s*/?>')  # a relative src: a figure's file
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222;
       line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: 12px; margin: .5em 0 1.2em; }
td, th { border: 1px solid #ccc; padding: 2px 6px; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; border: 1px solid #eee; }
code { background: #f3f3f3; padding: 0 .2em; font-size: 90%; }
"""


def to_html(text: str, out: Path, title: str = "rnnsgd report") -> str:
    """A self-contained page from the report's Markdown (the `markdown` package, its tables extension), with
    raw HTML in the text escaped (an evidence line may hold "<lag>") and each figure inlined as a data URI
    read from its file under out."""
    md = markdown_lib.Markdown(extensions=["tables", "sane_lists"], output_format="html")
    md.preprocessors.deregister("html_block")  # text from the runs is text, never markup
    md.inlinePatterns.deregister("html")
    body = md.convert(_STAR.sub(r"\\*", text))

    def inline(m: re.Match) -> str:
        data = base64.b64encode((out / html.unescape(m[2])).read_bytes()).decode()
        return f'<img alt="{m[1]}" src="data:image/png;base64,{data}">'

    body = _IMG.sub(inline, body)
    return (
        f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def write(r: Report, out: Path) -> tuple[Path, Path]:
    """report.md (figures linked from out/figures) and report.html (self-contained), every run listed."""
    out.mkdir(parents=True, exist_ok=True)
    md = to_markdown(r, runs_list=True)
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(md)
    html_path.write_text(to_html(md, out, f"rnnsgd report: {r.sweep}"))
    return md_path, html_path


def write_findings(r: Report, path: Path, preface: Sequence[str]) -> Path:
    """The report as a page of the docs (e.g. docs/findings.md): its figures (PNG) in the folder named after
    the page, beside it, linked relatively; preface (how it was made and how to reproduce it) after the
    title."""
    folder = path.parent / path.stem
    folder.mkdir(parents=True, exist_ok=True)
    for files in r.figures.values():
        for f in files:
            if f.suffix == ".png":
                shutil.copyfile(f, folder / f.name)
    path.write_text(to_markdown(r, figures=path.stem, preface=preface))
    return path
