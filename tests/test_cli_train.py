"""`rnnsgd train`: final metrics as JSON; bad input exits with status 2, one line naming the field, no files.

Two cases run the real console script in a subprocess (each pays seconds for importing torch); the full
list of bad inputs runs through the same `main` in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import METRIC_KEYS  # docs/metrics.md's table, written once for the tests

from rnnsgd.cli import EXIT_BAD_INPUT, main
from rnnsgd.train import OUTCOMES

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [
    "model.m=16",
    "data.L=4",
    "data.N=32",
    "data.n_test=32",
    "train.T=40",
    "train.device=cpu",
    "train.probe=8",
]


def sets(*pairs: str) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


def console_script() -> list[str]:
    script = Path(sys.executable).with_name("rnnsgd")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "rnnsgd.cli"]


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        console_script() + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_json_output_of_the_console_script(tmp_path):
    proc = run_cli(["train", "--json", *sets(*TINY)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    final = json.loads(proc.stdout)  # exactly one JSON object on stdout (progress goes to stderr)
    assert isinstance(final, dict)
    assert final["outcome"] in OUTCOMES
    assert set(METRIC_KEYS) <= set(final), set(METRIC_KEYS) - set(final)
    assert final["step"] == 40
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_bad_input_through_the_console_script(tmp_path):
    field = "data.phi"
    proc = run_cli(["train", *sets(*TINY, "data.phi=z^0")], tmp_path)
    assert proc.returncode == EXIT_BAD_INPUT
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0], proc.stderr
    assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == []


BAD = [
    ("model.m=0", "model.m"),
    ("model.m=-3", "model.m"),
    ("model.m=abc", "model.m"),
    ("model.m=2.5", "model.m"),
    ("data.L=2", "data.L"),
    ("data.N=0", "data.N"),
    ("train.eps=0", "train.eps"),
    ("train.eps=-1", "train.eps"),
    ("data.eps_x=0", "data.eps_x"),
    ("data.eps_x=1.5", "data.eps_x"),
    ("data.phi=cos", "data.phi"),
    ("data.phi=z^0", "data.phi"),
    ("data.phi=poly:0.5:1", "data.phi"),
    ("data.task=copy", "data.task"),
    ("train.loss=hinge", "train.loss"),
    ("data.online=maybe", "data.online"),
    ("model.widht=64", "model.widht"),
    ("trian.T=5", "trian.T"),
    ("model.m", "model.m"),  # no '='
]


@pytest.mark.parametrize(("pair", "field"), BAD)
def test_bad_input_exits_2_with_one_line(tmp_path, monkeypatch, capsys, pair, field):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *sets(*TINY, pair)]) == EXIT_BAD_INPUT
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and field in lines[0], err
    assert lines[0].startswith("rnnsgd train: error: ")
    assert list(tmp_path.iterdir()) == []


def test_cuda_on_a_cpu_machine_is_bad_input(tmp_path, monkeypatch, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    monkeypatch.chdir(tmp_path)
    assert main(["train", *sets(*TINY, "train.device=cuda")]) == EXIT_BAD_INPUT
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "train.device" in lines[0]


def test_bad_config_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model.m: [1, 2\n")
    for args, field in (([str(bad)], "bad.yaml"), ([str(tmp_path / "none.yaml")], "none.yaml")):
        assert main(["train", "--config", *args]) == EXIT_BAD_INPUT
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and field in lines[0]
    twice = tmp_path / "twice.yaml"
    twice.write_text("model.m: 8\nmodel.m: 16\n")  # YAML would keep the last silently
    assert main(["train", "--config", str(twice)]) == EXIT_BAD_INPUT
    assert "twice.yaml:2:1: not valid YAML: 'model.m' appears twice" in capsys.readouterr().err
    good = tmp_path / "good.yaml"
    good.write_text("model.m: 0\n")
    assert main(["train", "--config", str(good)]) == EXIT_BAD_INPUT
    assert "model.m" in capsys.readouterr().err


def test_plain_output_lists_the_final_metrics(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--quiet", *sets(*TINY)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split(": ")[0] == "outcome" and out[0].split(": ")[1] in OUTCOMES
    named = {line.split()[0] for line in out[1:]}
    assert set(METRIC_KEYS) <= named
    assert list(tmp_path.iterdir()) == []


def test_sizes_no_machine_holds_are_refused_before_torch_loads(tmp_path):
    """Validation and the memory check need no torch: bad input answers at once and allocates nothing."""
    code = (
        "import sys; from rnnsgd.cli import main; "
        "rc = main(['train', '--set', 'model.m=1000000']); assert rc == 2 and 'torch' not in sys.modules"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("rnnsgd train: error: model.m=1000000: one model of this config needs about")
    assert lines[0].endswith("of memory available on this machine")
    assert list(tmp_path.iterdir()) == []
