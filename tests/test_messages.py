"""What the CLI says when something is off: "did you mean" for unknown names, a subcommand's own usage for
`--set KEY VALUE`, plurals, and Ray's token notice dropped for the sweep's own local Ray. One line, exit 2."""

from __future__ import annotations

import logging

import pytest
from sweep_testlib import write_sweep

from rnnsgd.cli import EXIT_BAD_INPUT, main
from rnnsgd.config import TrialConfig, did_you_mean
from rnnsgd.sweep.spec import SweepError, load_sweep


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("model.widht", "did you mean model.m or model.w_var?"),
        ("trian.T", "did you mean train.T?"),  # only the nearly closest
        ("data.n", "did you mean data.N?"),  # case first
        ("L", "did you mean data.L?"),  # a bare field name
        ("seed.runs", "did you mean seed.run?"),
    ],
)
def test_unknown_config_keys_suggest_the_close_ones(key, hint):
    with pytest.raises(ValueError) as e:
        TrialConfig.from_flat({key: 1})
    assert str(e.value) == f"{key}: unknown key; {hint}"


def test_an_unknown_key_with_nothing_close_lists_the_keys():
    with pytest.raises(ValueError, match=r"^zzz: unknown key \(known: model.m, model.w_var, .*seed.run\)$"):
        TrialConfig.from_flat({"zzz": 1})
    assert did_you_mean("zzz", ["a", "b"]) is None


def test_the_cli_says_did_you_mean_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--set", "model.widht=64"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err == "rnnsgd train: error: model.widht: unknown key; did you mean model.m or model.w_var?\n"


def test_sweep_files_suggest_too(tmp_path):
    cases = [
        ({"concurency": 2}, "concurency: unknown key; did you mean concurrency?"),
        ({"base": {"data.NN": 8}}, "base.data.NN: unknown TrialConfig key; did you mean data.N?"),
        ({"resources": {"cpus": 1}}, "resources.cpus: unknown key; did you mean cpu?"),
        ({"seeds": {"runs": 2}}, "seeds.runs: unknown seed stream; did you mean run?"),
    ]
    for fields, message in cases:
        path = write_sweep(tmp_path, "s", **fields)
        with pytest.raises(SweepError) as e:
            load_sweep(path)
        assert str(e.value) == f"{path}: {message}"
    path = write_sweep(tmp_path, "v", variants={"smoke": {}, "full": {}})
    with pytest.raises(SweepError, match="--variant smok: unknown variant; did you mean smoke"):
        load_sweep(path, "smok")
    with pytest.raises(SweepError, match="--set concurency: unknown key; did you mean concurrency"):
        load_sweep(path, "smoke", {"concurency": "2"})


def test_set_with_a_space_shows_the_subcommands_usage(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["train", "--set", "model.m", "128"])
    assert e.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("usage: rnnsgd train ")
    assert err.strip().splitlines()[-1] == (
        "rnnsgd train: error: unrecognized arguments: 128 "
        "(--set takes KEY=VALUE as one word: --set model.m=128)"
    )
    with pytest.raises(SystemExit):
        main(["sweep", "x.yaml", "--set", "model.m", "128"])
    assert capsys.readouterr().err.startswith("usage: rnnsgd sweep ")


def test_the_sweep_progress_line_counts_in_words(monkeypatch):
    pytest.importorskip("ray")
    from rnnsgd.sweep.progress import Progress

    progress = Progress("s", 3, 0, ["a"], [3], stream=open("/dev/null", "w"))  # noqa: SIM115
    progress.running = {"t1"}
    assert "1 trial running" in progress.line()
    progress.running = {"t1", "t2"}
    assert "2 trials running" in progress.line()


def test_rays_token_notice_is_dropped_for_the_local_ray_only():
    from rnnsgd.sweep import localray

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord(localray.TOKEN_LOGGER, logging.WARNING, __file__, 1, message, None, None)

    assert not localray._quiet_token_notice(record(localray.TOKEN_NOTICE + ". Set RAY_AUTH_MODE=disabled"))
    missing = "Token authentication is enabled but no token was found"  # an error: it still shows
    assert localray._quiet_token_notice(record(missing))
    assert localray._quiet_token_notice not in logging.getLogger(localray.TOKEN_LOGGER).filters
