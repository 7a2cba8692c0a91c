"""Sweep files (rnnsgd.sweep.spec) and the `sweep` / `status` CLI's answers to bad input: every file in
sweeps/ validates and expands; each bad input exits 2 with one line naming the file, the key and the problem,
and creates no runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rnnsgd.cli import main
from rnnsgd.sweep.spec import SweepError, load_sweep, point_id, sweep_from_dict, variants_of

REPO = Path(__file__).resolve().parents[1]
SWEEP_FILES = sorted((REPO / "sweeps").glob("*.yaml"))
BASE = {"model.m": 32, "data.L": 4, "data.n_test": 128, "train.T": 300}


def files_and_variants():
    for path in SWEEP_FILES:
        for variant in variants_of(yaml.safe_load(path.read_text())) or [None]:
            yield pytest.param(path, variant, id=f"{path.stem}-{variant}")


@pytest.mark.parametrize("path,variant", list(files_and_variants()))
def test_every_sweep_file_validates_and_expands(path, variant):
    sweep = load_sweep(path, variant)
    assert sweep.points and len({p.point_id for p in sweep.points}) == len(sweep.points)
    assert sweep.name.startswith(path.stem)
    for p in sweep.points:
        assert p.config.to_flat() == p.flat and point_id(p.flat) == p.point_id


def test_experiment_files_have_smoke_and_full_variants_with_gpu_hours():
    """Each experiment has a CPU variant (E1's is `cpu`, with the Quickstart's smoke.yaml as its miniature)
    and a GPU one, with the cost model's estimate."""
    names = {p.stem for p in SWEEP_FILES}
    assert {"smoke", "e1", "e2", "e3", "e4", "e5", "e6"} <= names
    for stem in ("e1", "e2", "e3", "e4", "e5", "e6"):
        text = (REPO / "sweeps" / f"{stem}.yaml").read_text()
        cpu = "cpu" if stem == "e1" else "smoke"
        assert {cpu, "full"} <= set(variants_of(yaml.safe_load(text))), stem
        assert "GPU-hours" in text, f"{stem}.yaml: the full variant's estimate is missing"


def test_grid_axes_log_ranges_zip_seeds_blocks():
    raw = {
        "name": "t",
        "base": BASE,
        "grid": {"data.N": {"log2": [4, 6]}, "train.eps": {"log10": [-2, -1], "step": 0.5}},
        "zip": [{"data.L": [4, 6], "train.T": [300, 400]}],
        "seeds": {"teacher": [0, 1], "run": 2},
    }
    sweep = sweep_from_dict(raw, "t.yaml")
    assert len(sweep.points) == 3 * 3 * 2 * 2 * 2
    assert sorted({p.flat["data.N"] for p in sweep.points}) == [16, 32, 64]
    assert sorted({p.flat["train.eps"] for p in sweep.points}) == [0.01, 0.0316227766017, 0.1]
    assert {(p.flat["data.L"], p.flat["train.T"]) for p in sweep.points} == {(4, 300), (6, 400)}
    assert list(sweep.points[0].coords) == [
        "data.N",
        "train.eps",
        "data.L",
        "train.T",
        "seed.teacher",
        "seed.run",
    ]

    blocks = {
        "name": "b",
        "base": BASE,
        "grid": {"data.L": [4, 6]},
        "seeds": 2,
        "blocks": [{}, {"grid": {"data.L": [8]}, "seeds": 3}, {"base": {"model.m": 64}}],
    }
    sweep = sweep_from_dict(blocks, "b.yaml")
    assert len(sweep.points) == 4 + 3 + 4
    assert "model.m" in sweep.points[0].coords  # blocks set m apart: it names the points too


def test_point_ids_are_stable_and_shared_by_grown_grids():
    small = sweep_from_dict({"name": "s", "base": BASE, "grid": {"data.N": [16, 32]}}, "s.yaml")
    grown = sweep_from_dict({"name": "s", "base": BASE, "grid": {"data.N": [16, 32, 64]}}, "s.yaml")
    assert {p.point_id for p in small.points} < {p.point_id for p in grown.points}
    # the id is the resolved config's: the same point written differently is the same point
    same = sweep_from_dict({"name": "s", "base": {**BASE, "data.N": "16"}}, "x.yaml")
    assert same.points[0].point_id == small.points[0].point_id
    # and a stored definition expands to the same points
    again = sweep_from_dict(grown.definition, "mlflow:s")
    assert [p.point_id for p in again.points] == [p.point_id for p in grown.points]


def test_variants_and_set_overrides():
    raw = {
        "name": "v",
        "base": BASE,
        "grid": {"data.N": [16, 32]},
        "default_variant": "smoke",
        "variants": {
            "smoke": {"seeds": 1},
            "full": {"grid": {"data.N": {"log2": [4, 8]}, "data.L": [4, 8]}, "resources": {"gpu": 0.25}},
        },
    }
    smoke = sweep_from_dict(raw, "v.yaml")
    assert smoke.name == "v-smoke" and len(smoke.points) == 2
    full = sweep_from_dict(raw, "v.yaml", "full")
    assert full.name == "v-full" and len(full.points) == 10 and full.resources.gpu == 0.25
    sets = {"model.m": "64", "data.N": "[8, 16, 32]", "data.L": "5", "concurrency": "3", "resources.cpu": "2"}
    s = sweep_from_dict(raw, "v.yaml", "full", sets)
    assert len(s.points) == 3 and {p.flat["model.m"] for p in s.points} == {64}
    assert {p.flat["data.L"] for p in s.points} == {5} and s.concurrency == 3 and s.resources.cpu == 2


BAD = [  # (YAML that does not parse: HARDENING, whose messages carry the line and column)
    ("- a list", "expected a mapping"),
    ({"name": "x", "gird": {}}, "gird: unknown key"),
    ({"name": "x", "base": {"model.width": 3}}, "base.model.width: unknown TrialConfig key"),
    ({"name": "x", "base": {"model.m": "wide"}}, "base.model.m: expected an integer"),
    ({"name": "x", "grid": {"data.N": []}}, "grid.data.N: empty axis"),
    ({"name": "x", "grid": {"data.N": 64}}, "grid.data.N: expected a list"),
    ({"name": "x", "grid": {"data.N": {"log2": [8, 4]}}}, "grid.data.N: log2: expected [low, high]"),
    ({"name": "x", "grid": {"data.L": [4, 2]}}, "data.L: must be >= 3"),  # the learner's own check
    ({"name": "x", "zip": [{"data.L": [4, 8], "data.N": [16]}]}, "zip[0]: the lists of one zip group"),
    (
        {"name": "x", "resources": {"cpu": 1, "tpu": 1}},
        "resources.tpu: unknown key; did you mean cpu or gpu?",
    ),
    ({"name": "x", "resources": {"gpu": 1.5}}, "resources.gpu: expected a fraction"),
    ({"name": "x", "concurrency": 0}, "concurrency: expected a positive integer"),
    ({"name": "x bad"}, "name: required"),
    ({"name": "x", "variants": {"smoke": {"grid": {"data.N": "many"}}}}, "--variant: pick one of smoke"),
    ({"name": "x", "base": {"train.device": "cuda"}}, "train.device: cuda needs a GPU per trial"),
]


@pytest.mark.parametrize("content,message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_sweep_files_exit_2_with_one_line_and_create_nothing(
    tmp_path, capsys, monkeypatch, content, message
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = tmp_path / "bad.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump({"base": BASE, **content}))
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{path}: " in err and message in err, err
    assert not (tmp_path / "runs").exists()  # no store, no runs


def test_a_value_the_learner_rejects_names_the_grid_point(tmp_path):
    with pytest.raises(SweepError, match=r"^b\.yaml: data\.phi: .*\(at grid point data\.task=lags"):
        sweep_from_dict(
            {
                "name": "b",
                "base": {**BASE, "data.L": 8, "data.phi": "z^2,z^3"},
                "grid": {"data.task": ["lags", "paper"]},
            },
            "b.yaml",
        )


def test_bad_set_and_variant_on_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump({"name": "ok", "base": BASE}))
    for argv, message in [
        (["--set", "model.m=-1"], "model.m: must be a positive integer"),
        (["--set", "colour=red"], "--set colour: unknown key"),
        (["--set", "nokey"], "--set 'nokey': expected key=value"),
        (["--variant", "smoke"], "--variant: this file defines no variants"),
    ]:
        assert main(["sweep", str(path), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
    assert not (tmp_path / "runs").exists()


def test_unreachable_tracking_uri_exits_2_before_anything_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump({"name": "ok", "base": BASE}))
    assert main(["sweep", str(path), "--tracking-uri", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        "--tracking-uri: cannot reach the MLflow server at http://127.0.0.1:9" in err and err.count("\n") == 0
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert main(["status", str(path)]) == 2
    assert "MLFLOW_TRACKING_URI: cannot reach" in capsys.readouterr().err
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    (tmp_path / "a_file").write_text("")
    uri = f"sqlite:///{tmp_path}/a_file/mlflow.db"  # a folder that cannot be created
    path.write_text(yaml.safe_dump({"name": "ok", "base": BASE, "tracking_uri": uri}))
    assert main(["sweep", str(path)]) == 2
    assert f"{path}: tracking_uri: cannot create the store {uri}" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_resources_this_machine_cannot_give_exit_2(tmp_path):
    """In a fresh process with no cluster attached (no RAY_ADDRESS): refused before Ray or MLflow start."""
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump({"name": "gpu", "base": BASE, "resources": {"cpu": 1, "gpu": 64}}))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    for res, message in [
        ({"gpu": 64}, "resources.gpu: a trial asks for 64 GPU"),
        ({"cpu": 4096}, "resources.cpu: a trial asks for 4096 CPU"),
    ]:
        path.write_text(yaml.safe_dump({"name": "res", "base": BASE, "resources": res}))
        proc = subprocess.run(
            [sys.executable, "-m", "rnnsgd.cli", "sweep", str(path)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        err = proc.stderr.strip()
        assert err.count("\n") == 0 and f"{path}: {message}" in err and "RAY_ADDRESS" in err, err
    assert not (tmp_path / "runs").exists()


def test_status_of_a_sweep_that_never_ran_and_of_an_unknown_name(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = tmp_path / "fresh.yaml"
    path.write_text(yaml.safe_dump({"name": "fresh", "base": BASE, "grid": {"data.N": [16, 32]}}))
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert "never run" in out and "missing 2" in out
    assert main(["status", "no-such-sweep"]) == 2
    assert "no-such-sweep: no such sweep file, and no sweep of that name" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "mlflow.db").exists()


HARDENING = [  # (file content, extra CLI arguments, the one line's tail after "rnnsgd sweep: error: ")
    ("name: a\nname: b\nbase: {model.m: 32}\n", [], "bad.yaml:2:1: not valid YAML: 'name' appears twice"),
    (
        "name: a\ngrid:\n  data.L: [4]\n  data.L: [8]\n",
        [],
        "bad.yaml:4:3: not valid YAML: 'data.L' appears twice",
    ),
    ("name: a\ngrid: [\n", [], "bad.yaml:3:1: not valid YAML: expected the node content"),
    ('name: "nl\\n"\n', [], "bad.yaml: name: required"),  # `$` would match before the newline
    (
        "name: a\ngrid:\n  data.N: {range: [1, 1000]}\n  data.L: {range: [3, 1002]}\n",
        [],
        "bad.yaml: grid: 1,000,000 points (1000 x 1000); a sweep holds at most 100,000",
    ),
    ("name: a\ngrid:\n  data.N: {log2: [0, 1000]}\n", [], "bad.yaml: data.N: must be below 2^63"),
    (
        "name: a\ngrid:\n  model.m: [32, 1000000]\n",
        ["--dry-run"],
        "bad.yaml: model.m=1000000: one model of this config needs about 155 TiB, more than the",
    ),
    ("name: a\nbase: {model.m: 1000000}\n", [], "bad.yaml: model.m=1000000: one model of this config needs"),
    ("name: a\nbase: {train.eps: .inf}\n", [], "bad.yaml: train.eps: must be finite, got inf"),
    ("name: a\n", ["--set", "tracking_uri="], "--set tracking_uri: empty value"),
    ("name: a\n", ["--tracking-uri="], "--tracking-uri: empty"),
]


@pytest.mark.parametrize("content,args,message", HARDENING, ids=[m[:24] for *_, m in HARDENING])
def test_absurd_input_exits_2_with_one_line_and_starts_nothing(
    tmp_path, capsys, monkeypatch, content, args, message
):
    """Duplicate keys, sizes no machine holds, inf and empty values: refused before Ray or MLflow start."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "bad.yaml").write_text(content)
    assert main(["sweep", "bad.yaml", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"rnnsgd sweep: error: {message}"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # no store, no runs, no checkpoints


def test_a_folder_or_an_unreadable_file_is_named(tmp_path, capsys, monkeypatch):
    import socket

    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder.yaml").mkdir()
    with socket.socket(socket.AF_UNIX) as sock:  # open() refuses a socket even for root (chmod 000 does not)
        sock.bind(str(tmp_path / "sock.yaml"))
        for name, message in [
            ("folder.yaml", "folder.yaml: is a folder, not a YAML file"),
            ("sock.yaml", "sock.yaml: cannot read it (No such device or address)"),
        ]:
            for argv in (["sweep", name], ["train", "--config", name]):
                assert main(argv) == 2
                err = capsys.readouterr().err.strip()
                assert err.count("\n") == 0 and err.endswith(message), err
