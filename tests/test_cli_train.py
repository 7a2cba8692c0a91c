"""`rnnsgd train`: final metrics as JSON; bad input exits with status 2, one line naming the field, no files;
the schedule first, then progress (one redrawn line with an ETA on a terminal, plain lines piped); one thread
by default; --track logs one MLflow run.

A few cases run the real console script in a subprocess (each pays seconds for importing torch), one of them
under a pseudo-terminal; the full list of bad inputs runs through the same `main` in-process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnnsgd.cli import EXIT_BAD_INPUT, main
from rnnsgd.metrics import LOGGED
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
    assert set(LOGGED) <= set(final), set(LOGGED) - set(final)
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
    assert set(LOGGED) <= named
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


# ---------------------------------------------------------------------------------------------- what it shows

LONGER = [
    "model.m=32",
    "data.L=4",
    "data.N=32",
    "data.n_test=32",
    "train.T=60000",
    "train.evals_per_decade=2",
    "train.device=cpu",
    "train.probe=8",
]  # a few seconds of training: long enough for an estimate of the time left


def test_progress_on_a_terminal_is_one_redrawn_line_with_an_eta(tmp_path):
    """Under a pseudo-terminal: the resolved schedule first, then one line redrawn in place (step/T,
    elapsed, ETA, the test risk), ended by a newline before the final metrics."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))  # 200 columns: no truncation
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        console_script() + ["train", *sets(*LONGER)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=120) == 0
    text = b"".join(chunks).decode()
    lines = text.replace("\r\n", "\n").split("\n")
    assert lines[0].startswith("lambda ") and " eta " in lines[0] and "T 60000 steps" in lines[0], lines[0]
    assert "1 thread" in lines[0]
    redrawn = [ln for ln in lines if "\r\x1b[K" in ln]
    assert len(redrawn) == 1, lines[:5]  # every update on the one line
    frames = redrawn[0].split("\r\x1b[K")[1:]
    assert len(frames) > 5
    assert re.search(r"ETA \d+m\d\ds", redrawn[0]), frames  # an estimate once training has run a while
    assert frames[-1].startswith("step 60000/60000 100%") and "ETA -" in frames[-1]
    assert "test/risk " in frames[-1] and "test/rel_risk_tail " in frames[-1]
    assert any(ln.startswith("outcome: ") for ln in lines)


def test_piped_progress_is_plain_lines_and_steps_are_integers(tmp_path):
    proc = run_cli(["train", *sets(*TINY)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stdout and "\x1b" not in proc.stdout
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("lambda ") and "T 40 steps" in lines[0]
    progress = [ln for ln in lines if ln.startswith("step ")]
    assert progress[0].split()[1] == "0/40" and progress[-1].split()[1] == "40/40"
    assert all("elapsed" in ln and "ETA" in ln for ln in progress)
    assert "  step                   40" in lines  # the final metrics: an integer step
    json_proc = run_cli(["train", "--json", "--quiet", *sets(*TINY)], tmp_path)
    assert type(json.loads(json_proc.stdout)["step"]) is int
    assert json_proc.stderr.strip() == ""  # --quiet: no schedule line, no progress


def test_threads_default_to_one_and_are_restored(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(2)
    try:
        assert main(["train", *sets(*TINY)]) == 0
        assert "cpu, 1 thread\n" in capsys.readouterr().out
        assert torch.get_num_threads() == 2  # the caller's setting is back
        assert main(["train", "--threads", "2", *sets(*TINY)]) == 0
        assert "cpu, 2 threads\n" in capsys.readouterr().out
    finally:
        torch.set_num_threads(1)
    assert main(["train", "--threads", "-1", *sets(*TINY)]) == EXIT_BAD_INPUT
    assert "--threads" in capsys.readouterr().err


def test_track_logs_one_run(tmp_path, monkeypatch, capsys, store):
    """--track: one FINISHED run in the experiment, with the flat config as params, every evaluation's
    metrics at their steps and the outcome; the command says where it is."""
    from mlflow import MlflowClient

    from rnnsgd.config import TrialConfig, format_value

    monkeypatch.chdir(tmp_path)
    uri = store["tracking_uri"]
    args = ["train", "--track", "--tracking-uri", uri, "--experiment", "mine", *sets(*TINY)]
    assert main(args) == 0
    out = capsys.readouterr().out
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("mine")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert f"tracked: run {run.info.run_id} of experiment 'mine'" in out
    cfg = TrialConfig.from_flat(dict(pair.split("=") for pair in TINY))
    assert run.data.params == {k: format_value(v) for k, v in cfg.to_flat().items()}
    assert run.data.tags["outcome"] in OUTCOMES and run.data.tags["rnnsgd.role"] == "train"
    assert set(LOGGED) - {"step"} <= set(run.data.metrics)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "test/risk")]
    assert steps[0] == 0 and steps[-1] == 40 and steps == sorted(steps)
    assert "step" not in run.data.metrics
    # bad input with --track: refused before the store is touched
    assert (
        main(["train", "--track", "--tracking-uri", f"sqlite:///{tmp_path}/new/m.db", "--set", "model.m=0"])
        == EXIT_BAD_INPUT
    )
    assert not (tmp_path / "new").exists()


def test_plain_progress_speaks_between_evaluations():
    """Evaluations thin out geometrically: piped, a line at least every heartbeat_s between them."""
    import io

    from rnnsgd.console import TrainProgress

    out = io.StringIO()
    progress = TrainProgress(1000, out, tty=False, heartbeat_s=0.0)
    progress.evaluation({"step": 0, "test/risk": 0.5})
    progress.steps(500)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("step        0/1000  test/risk   0.5000  elapsed 0m00s  ETA")
    assert lines[1].startswith("step      500/1000  elapsed 0m00s  ETA ")
    quiet = TrainProgress(1000, io.StringIO(), tty=False)  # 30 s by default: nothing new yet
    quiet.evaluation({"step": 0})
    quiet.steps(500)
    assert len(quiet.stream.getvalue().splitlines()) == 1
