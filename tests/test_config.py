"""rnnsgd.config: flat dotted keys, coercion, validation (errors name the key), schedules
(docs/training.md)."""

from __future__ import annotations

import math

import pytest

from rnnsgd.config import FLAT_KEYS, TrialConfig, format_value, schedule


def test_defaults_and_flat_round_trip():
    cfg = TrialConfig()
    flat = cfg.to_flat()
    assert set(flat) == set(FLAT_KEYS)
    assert TrialConfig.from_flat(flat) == cfg
    # the CLI / MLflow form: every value as a string
    assert TrialConfig.from_flat({k: format_value(v) for k, v in flat.items()}) == cfg
    assert cfg.replace(**{"data.N": 1024}).data.N == 1024


def test_strings_are_coerced():
    cfg = TrialConfig.from_flat(
        {
            "model.m": "64",
            "train.eps": "0.05",
            "data.online": "true",
            "data.phi": "sin",
            "data.task": "lags",
            "data.lags": "1,2",
            "data.L": "6",
        }
    )
    assert (cfg.model.m, cfg.train.eps, cfg.data.online, cfg.data.phi, cfg.data.lags) == (
        64,
        0.05,
        True,
        ("sin",),
        (1, 2),
    )
    assert TrialConfig.from_flat({"model.m": 128.0}).model.m == 128
    assert TrialConfig.from_flat({"data.phi": ["z^2"]}).data.phi == ("z^2",)


BAD = [
    ({"model.width": 3}, "model.width"),  # unknown key
    ({"optim.lr": 3}, "optim.lr"),
    ({"m": 3}, "m"),
    ({"model.m": "abc"}, "model.m"),  # wrong types
    ({"model.m": 1.5}, "model.m"),
    ({"model.m": True}, "model.m"),
    ({"data.online": "maybe"}, "data.online"),
    ({"train.eps": "small"}, "train.eps"),
    ({"data.task": 3}, "data.task"),
    ({"data.lags": "1,x"}, "data.lags"),
    ({"model.m": 0}, "model.m"),  # out of range
    ({"model.m": -4}, "model.m"),
    ({"data.L": 2}, "data.L"),
    ({"data.N": 0}, "data.N"),
    ({"train.eps": 0}, "train.eps"),
    ({"train.eps": -0.1}, "train.eps"),
    ({"train.eps": "nan"}, "train.eps"),
    ({"data.eps_x": 0}, "data.eps_x"),
    ({"data.eps_x": 1.01}, "data.eps_x"),
    ({"data.eps_x": -0.5}, "data.eps_x"),
    ({"data.phi": "cos"}, "data.phi"),  # unknown names
    ({"data.task": "copy"}, "data.task"),
    ({"train.loss": "hinge"}, "train.loss"),
    ({"train.schedule": "fast"}, "train.schedule"),
    ({"model.activation": "tanh"}, "model.activation"),
    ({"train.device": "tpu"}, "train.device"),
    ({"data.phi": "z^0"}, "data.phi"),  # Phi(0) != 0
    ({"data.phi": "poly:1:0:2"}, "data.phi"),
    ({"data.phi": "z^2,sin"}, "data.phi"),  # task paper takes one Phi
    ({"data.task": "lags", "data.L": 5, "data.lags": "3"}, "data.lags"),  # lag beyond L - 3
    ({"train.loss": "xent"}, "train.loss"),  # needs d >= 2
    ({"train.c_eta": 0}, "train.c_eta"),
    ({"train.batch": 0}, "train.batch"),
    ({"model.w_var": 0}, "model.w_var"),
    ({3: 1}, "3"),
    ({"train.eps": "inf"}, "train.eps"),  # not finite: every comparison would let it through
    ({"data.noise": "inf"}, "data.noise"),
    ({"model.w_var": float("inf")}, "model.w_var"),
    ({"train.c_lambda": "inf"}, "train.c_lambda"),
    ({"train.T": "1e21"}, "train.T"),  # absurd sizes: capped before anything is allocated
    ({"train.min_steps": 10**13}, "train.min_steps"),
    ({"train.evals_per_decade": 10**9}, "train.evals_per_decade"),
    ({"data.N": 2**1000}, "data.N"),  # beyond int64
]


@pytest.mark.parametrize(("flat", "key"), BAD, ids=[f"{k}-{i}" for i, (_, k) in enumerate(BAD)])
def test_bad_input_names_the_key(flat, key):
    with pytest.raises(ValueError) as info:
        TrialConfig.from_flat(flat)
    assert str(info.value).startswith(key + ":"), str(info.value)
    assert "\n" not in str(info.value)


def test_eps_x_of_one_is_allowed():
    assert TrialConfig.from_flat({"data.eps_x": 1}).data.eps_x == 1.0


def test_practical_schedule():
    """lambda = c_lambda eps / L; eta = c_eta eps / (L grad_sq), so that eta grad_sq (a step's first-order
    loss decrease) is c_eta eps / L; without the measurement there is no eta; T falls with eps (or is
    train.T)."""
    base = {"data.L": 8, "train.eps": 0.05, "train.c_lambda": 2.0, "train.c_eta": 0.5}
    for m in (64, 1024):
        cfg = TrialConfig.from_flat({**base, "model.m": m})
        assert schedule(cfg).eta is None
        s = schedule(cfg, grad_sq=3.0)
        assert s.lam == pytest.approx(2.0 * 0.05 / 8)
        assert s.eta * 3.0 == pytest.approx(0.5 * 0.05 / 8)
        assert s.T == schedule(cfg).T >= 1
    assert schedule(TrialConfig.from_flat({**base, "train.c_T": 1e-6, "train.min_steps": 700})).T == 700
    assert schedule(TrialConfig.from_flat({**base, "train.T": 123})).T == 123
    # T grows as eps shrinks, and with c_T
    loose, tight = (schedule(TrialConfig.from_flat({**base, "train.eps": e})).T for e in (0.1, 0.01))
    assert tight > loose


def test_theory_schedule():
    """rho = 100 L d log m, lambda = eps / (10 L rho), eta = 1 / (eps rho^2 m) (Theorem 1)."""
    cfg = TrialConfig.from_flat(
        {
            "train.schedule": "theory",
            "model.m": 256,
            "data.L": 6,
            "train.eps": 0.1,
            "train.c_lambda": 1,
            "train.c_eta": 1,
        }
    )
    s = schedule(cfg)
    rho = 100 * 6 * 1 * math.log(256)
    assert s.lam == pytest.approx(0.1 / (10 * 6 * rho))
    assert s.eta == pytest.approx(1 / (0.1 * rho**2 * 256))
    assert 1 <= s.T <= 10**12
