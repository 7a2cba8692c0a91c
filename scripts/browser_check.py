#!/usr/bin/env python3
"""Look at a sweep's report and its MLflow experiment in a real browser (headless Chromium), take
screenshots, and check what a person would check by eye.

    .venv/bin/python scripts/browser_check.py --report reports/smoke/report.html --out /tmp/shots
    .venv/bin/python scripts/browser_check.py --mlflow http://127.0.0.1:5000 --experiment smoke --out shots

--report: every <img> of the page has loaded (there is at least one, and each has naturalWidth > 0).
--mlflow/--experiment (a UI that `mlflow ui` or `mlflow server` serves): the experiment's runs page, opened as
the sweep prints it (model training, the sweep's saved view), lists the names of the sweep's point runs; its
chart view shows the headline metrics' section; a point run's page shows metric charts; the parent run's page
shows the sweep's description. Screenshots in --out: report.png, mlflow_runs.png, mlflow_charts.png,
mlflow_run.png, mlflow_parent.png.

Exit status: 0 when every check passes, 1 when one fails (each failure is printed), 2 on bad arguments or
when there is no browser to run: Chromium (Debian's `chromium`, or --chromium / RNNSGD_CHROMIUM) or the
playwright package. Playwright drives the system's Chromium: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

PAGE_TIMEOUT_MS = 90_000  # the UI's first load on a busy machine
VIEWPORT = {"width": 1600, "height": 1000}
HEADLINE_SECTION = "Headline metrics"


def find_chromium(given: str | None = None) -> str | None:
    """The Chromium to drive: `given`, else RNNSGD_CHROMIUM, else the first of Debian's and other usual names
    on PATH; None when there is none."""
    for name in (given, os.environ.get("RNNSGD_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    return None


def browser_missing(given: str | None = None) -> str | None:
    """Why no check can run here, or None when it can."""
    if find_chromium(given) is None:
        return "no Chromium (apt-get install chromium, or name one with RNNSGD_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "no playwright (pip install -e '.[dev]')"
    return None


class Checks:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def expect(self, ok: bool, what: str) -> None:
        print(("ok    " if ok else "FAIL  ") + what)
        if not ok:
            self.failures.append(what)


def check_report(page, report: Path, out: Path, checks: Checks) -> None:
    page.goto(report.resolve().as_uri(), wait_until="load")
    images = page.evaluate(
        "Array.from(document.images).map(i => ({src: i.getAttribute('src') || '', w: i.naturalWidth}))"
    )
    page.screenshot(path=out / "report.png", full_page=True)
    broken = [i["src"][:80] for i in images if i["w"] == 0]
    checks.expect(bool(images), f"report {report}: has images ({len(images)})")
    checks.expect(
        not broken, f"report {report}: every image loaded" + (f" (broken: {broken})" if broken else "")
    )


def _close_assistant(page) -> None:
    """Close the UI's assistant panel: it opens by itself on a first visit and hides a third of the page."""
    close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.count():
        close.first.click()


def _wait_for_texts(page, texts: list[str], timeout_ms: int = PAGE_TIMEOUT_MS) -> bool:
    try:
        page.wait_for_function(
            "texts => texts.every(t => document.body.innerText.includes(t))", arg=texts, timeout=timeout_ms
        )
        return True
    except Exception:  # playwright's TimeoutError: the check below says what was missing
        return False


def _open(page, url: str, texts: list[str]) -> bool:
    """Go to a page of the MLflow UI and wait until it shows every one of texts (False if it does not in
    time), its assistant's pop-up closed so that screenshots show the page."""
    page.goto(url, wait_until="load")
    shown = _wait_for_texts(page, texts)
    _close_assistant(page)
    return shown


def check_mlflow(page, base: str, experiment: str, out: Path, checks: Checks) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=base)  # the UI's server is a tracking server too
    exp = client.get_experiment_by_name(experiment)
    checks.expect(exp is not None, f"MLflow at {base}: experiment {experiment!r} exists")
    if exp is None:
        return
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    points = [r for r in runs if r.data.tags.get("rnnsgd.role") == "trial"]
    parents = [r for r in runs if r.data.tags.get("rnnsgd.role") == "parent"]
    names = sorted({r.info.run_name for r in points})
    checks.expect(bool(names), f"experiment {experiment!r}: has point runs ({len(names)})")
    root = f"{base.rstrip('/')}/#/experiments/{exp.experiment_id}"
    _check_runs_page(page, base, exp.experiment_id, names, out, checks)
    _check_chart_view(page, base, exp.experiment_id, out, checks)
    if points:
        _check_point_run(page, root, points[0], out, checks)
    if parents:
        _check_parent_run(page, root, parents[0], out, checks)


def _check_runs_page(
    page, base: str, experiment_id: str, names: list[str], out: Path, checks: Checks
) -> None:
    """The experiment's page as the sweep prints it: model training, every point run listed."""
    from rnnsgd.sweep.tracking import experiment_url  # the page the sweep tells users to open

    listed = _open(page, experiment_url(base, experiment_id), ["Model training", *names])
    page.wait_for_timeout(500)
    page.screenshot(path=out / "mlflow_runs.png")
    text = page.inner_text("body")
    missing = [n for n in names if n not in text]
    checks.expect(
        listed and not missing,
        f"runs page lists the {len(names)} point runs" + (f" (missing: {missing[:5]})" if missing else ""),
    )
    genai = "Observability" in text or "Model registry" not in text  # the side bar of GenAI pages
    checks.expect(not genai, "runs page opens as model training, not GenAI")


def _check_chart_view(page, base: str, experiment_id: str, out: Path, checks: Checks) -> None:
    from rnnsgd.sweep.tracking import experiment_url

    chart_view = experiment_url(base, experiment_id) + "&compareRunsMode=CHART"
    charted = _open(page, chart_view, [HEADLINE_SECTION, "test/rel_risk_tail", "Step"])
    page.wait_for_timeout(1500)  # the charts draw after their data arrives
    page.screenshot(path=out / "mlflow_charts.png")
    checks.expect(charted, f"chart view shows the {HEADLINE_SECTION!r} section with its charts")


def _check_point_run(page, root: str, run, out: Path, checks: Checks) -> None:
    from rnnsgd.sweep.tracking import TRAINING_PAGES

    drawn = _open(
        page, f"{root}/runs/{run.info.run_id}/model-metrics?{TRAINING_PAGES}", ["Model metrics", "Step"]
    )
    # the run page orders its sections by name (act/, gen/, h/, ...): search for the test metrics
    page.get_by_placeholder("Search metric charts").first.fill("test/")
    drawn = drawn and _wait_for_texts(page, ["rel_risk_tail", "nrisk"], 30_000)
    page.wait_for_timeout(1000)  # the charts draw after their data arrives
    page.screenshot(path=out / "mlflow_run.png")
    checks.expect(drawn, f"run {run.info.run_name!r}: its page draws metric charts")


def _check_parent_run(page, root: str, parent, out: Path, checks: Checks) -> None:
    from rnnsgd.sweep.tracking import TRAINING_PAGES

    note = parent.data.tags.get("mlflow.note.content", "")
    texts = ["Parameters", *([note[:60]] if note else [])]
    described = _open(page, f"{root}/runs/{parent.info.run_id}?{TRAINING_PAGES}", texts)
    page.screenshot(path=out / "mlflow_parent.png", full_page=True)
    checks.expect(described, "parent run's page shows its description and parameters")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", type=Path, help="a report.html to open")
    parser.add_argument("--mlflow", help="the MLflow UI's address, e.g. http://127.0.0.1:5000")
    parser.add_argument("--experiment", help="the sweep's name (its MLflow experiment)")
    parser.add_argument("--out", type=Path, default=Path("reports/browser-check"), help="screenshots folder")
    parser.add_argument("--chromium", help="the browser (default: RNNSGD_CHROMIUM, or chromium on PATH)")
    args = parser.parse_args(argv)
    if not args.report and not args.mlflow:
        parser.error("give --report, --mlflow with --experiment, or both")
    if args.mlflow and not args.experiment:
        parser.error("--mlflow needs --experiment")
    if args.report and not args.report.is_file():
        parser.error(f"--report {args.report}: no such file")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if why := browser_missing(args.chromium):
        print(f"browser_check: {why}", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    checks = Checks()
    # as root (CI, containers) Chromium refuses to start without --no-sandbox; /dev/shm is small in containers
    flags = ["--disable-dev-shm-usage", *(["--no-sandbox"] if os.geteuid() == 0 else [])]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=find_chromium(args.chromium), args=flags)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            if args.report:
                check_report(page, args.report, args.out, checks)
            if args.mlflow:
                check_mlflow(page, args.mlflow, args.experiment, args.out, checks)
        finally:
            browser.close()
    print(f"screenshots: {args.out.resolve()}")
    if checks.failures:
        print(f"{len(checks.failures)} check(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
