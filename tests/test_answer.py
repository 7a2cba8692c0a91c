"""The product's answer, end to end: the README's Quickstart sweep, run for real, gives a decided C1.

sweeps/smoke.yaml as a user runs it (long_range at m = 256, L = 3..24, N = 8..1024, three teachers, and a
parity control): real training on a real local Ray, tracked in a real MLflow store, read back by the report.
"""

from __future__ import annotations

import io
import os

import pytest

from rnnsgd.analysis import render, report
from rnnsgd.sweep.runner import run_sweep
from rnnsgd.sweep.spec import load_sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow


def test_quickstart_sweep_answers_c1_and_its_control_fails_as_predicted(ray_local, store, tmp_path):
    sweep = load_sweep(os.path.join(REPO, "sweeps", "smoke.yaml"), None, {})
    result = run_sweep(sweep, out=io.StringIO(), **store)
    assert result.exit_code == 0 and result.done == len(sweep.points), result.summary()

    rep = report.build(sweep.name, store["tracking_uri"], tmp_path, n_boot=500)
    c1 = next(c for c in rep.claims if c.id == "C1")
    assert c1.targeted and c1.verdict in ("polynomial", "exponential"), (c1.verdict, c1.evidence)
    assert "Control data.task=parity: as predicted" in c1.evidence, c1.evidence
    assert "crossings" in c1.evidence and "test/rel_risk_tail" in c1.criterion
    # the runs learned: at the largest N every main unit is well below the best constant predictor
    main = rep.runs[(rep.runs["data.task"] == "long_range") & (rep.runs["data.N"] == 1024)]
    assert (main["test/rel_risk_tail"] < 0.5).all(), main[["data.L", "seed.teacher", "test/rel_risk_tail"]]
    assert [c.id for c in rep.claims if c.targeted] == ["C1"]

    page = render.write_findings(rep, tmp_path / "findings.md", ["made by the test"])
    text = page.read_text()
    assert "made by the test" in text and f"## C1: {c1.verdict}" in text and "## Scale and caveats" in text
    for line in text.splitlines():  # every figure the page shows is beside it
        if line.startswith("!["):
            assert (tmp_path / line[line.index("(") + 1 : line.rindex(")")]).is_file(), line
