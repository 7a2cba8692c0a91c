"""Known-answer tests for the censored fits, model selection and the continuous companions (rnnsgd.analysis
fits, censored, laws, bootstrap, additive; docs/claims.md)."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from rnnsgd.analysis.bootstrap import hierarchical_weights
from rnnsgd.analysis.censored import Obs, _evaluate, loglik_terms
from rnnsgd.analysis.fits import (
    aggregate_seeds,
    fit_additive_power_law,
    fit_learning_curve,
    scaling_observations,
    select_scaling_law,
    tost_flat_slope,
    vuong,
)
from rnnsgd.analysis.laws import LAWS, make_law, mu_raw
from rnnsgd.analysis.thresholds import threshold
from rnnsgd.analysis.validate import L_GRID, synthetic_runs

L = np.array(L_GRID, dtype=float)


def points(law, params, reps=3, sd=0.0, rng=None, x=L, col="data.L"):
    """Point values y* = exp(mu(x) + sd z), reps units per x, teachers 0..2 cycling."""
    xx = np.repeat(x, reps)
    z = rng.normal(size=len(xx)) if sd else 0.0
    return pd.DataFrame(
        {
            col: xx,
            "ystar": np.exp(mu_raw(law, params, xx) + sd * z),
            "seed.teacher": np.tile(np.arange(reps) % 3, len(x)),
        }
    )


# --- the likelihood itself ---


def test_loglik_terms_match_scipy_for_every_censoring_kind():
    law = make_law("power", L[:4])
    theta = np.array([1.0, 2.0, np.log(0.7)])
    mu = 1.0 + 2.0 * np.log(L[:4])
    obs = Obs(
        L[:4],
        np.array([mu[0] + 0.3, -np.inf, mu[2] - 0.2, mu[3] - 0.5]),
        np.array([mu[0] + 0.3, mu[1] + 0.4, np.inf, mu[3] + 0.1]),
    )
    d = stats.norm(0, 0.7)
    want = [d.logpdf(0.3), d.logcdf(0.4), d.logsf(-0.2), np.log(d.cdf(0.1) - d.cdf(-0.5))]
    np.testing.assert_allclose(loglik_terms(law, theta, obs), want, rtol=1e-12)
    # far in the tails the interval term keeps its digits (no log(0))
    far = Obs(L[:1], np.array([mu[0] + 30.0]), np.array([mu[0] + 31.0]))
    s30, s31 = stats.norm.logsf(30 / 0.7), stats.norm.logsf(31 / 0.7)  # both ~ -900
    want = s30 + np.log(-np.expm1(s31 - s30))
    assert loglik_terms(law, theta, far)[0] == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("name", LAWS)
def test_gradient_and_hessian_match_finite_differences(name):
    rng = np.random.default_rng(1)
    x = np.repeat(L, 4)
    y = 1 + 2 * np.log(x) + 0.3 * rng.normal(size=len(x))
    lo, hi = np.floor(2 * y) / 2, np.floor(2 * y) / 2 + 0.5
    lo[:4], hi[-4:] = -np.inf, np.inf
    lo[10:13] = hi[10:13] = y[10:13]  # some exact observations too
    obs = Obs(x, lo, hi)
    law = make_law(name, x)
    th = law.starts(rng, 3, x, obs.pseudo())
    W = rng.integers(0, 3, size=(3, len(x))).astype(float)
    f, G, H = _evaluate(law, th, obs, W)
    h = 1e-6
    for j in range(th.shape[1]):
        e = np.zeros(th.shape[1])
        e[j] = h
        fp, Gp, _ = _evaluate(law, th + e, obs, W)
        fm, Gm, _ = _evaluate(law, th - e, obs, W)
        np.testing.assert_allclose(G[:, j], (fp - fm) / (2 * h), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(H[:, :, j], (Gp - Gm) / (2 * h), rtol=1e-4, atol=1e-4)


# --- recovery ---


@pytest.mark.parametrize(
    "law, params",
    [
        ("power", {"a": 1.0, "k": 2.0}),
        ("exponential", {"a": 3.0, "c": 0.15}),
        ("quasi", {"a": 0.5, "k": 0.3, "q": 1.0}),
        ("encompassing", {"a": 1.0, "k": 1.5, "c": 0.05}),
        ("power_offset", {"a": np.log(3.0), "k": 2.0, "b": np.log(100.0)}),
        ("exp_offset", {"a": np.log(5.0), "c": 0.15, "b": np.log(200.0)}),
        ("boxcox", {"a": 1.0, "k": 2.0, "theta": 0.5}),
    ],
)
def test_noise_free_recovery(law, params):
    t = select_scaling_law(points(law, params), y="ystar", laws=(law,), n_boot=0, holdout=0).table
    r = t.iloc[0]
    assert r["converged"]
    for p, v in params.items():
        assert r[p] == pytest.approx(v, abs=1e-6), p


@pytest.fixture(scope="module")
def noisy():
    """Full pipeline (thresholds from per-run curves, all laws, hierarchical bootstrap) on E0 data."""
    out = {}
    for law in ("power", "exponential"):
        df = synthetic_runs(law, np.random.default_rng(7))
        out[law] = select_scaling_law(df, level=0.05, n_boot=300, seed=3)
    return out


def test_noisy_recovery_within_cis_and_verdicts(noisy):
    p = noisy["power"].table.set_index("law")
    assert p.loc["power", "k_lo"] < 2.0 < p.loc["power", "k_hi"]
    assert noisy["power"].verdict == "polynomial"
    assert noisy["power"].vuong_z > 3
    e = noisy["exponential"].table.set_index("law")
    assert e.loc["exponential", "c_lo"] < 0.15 < e.loc["exponential", "c_hi"]
    assert noisy["exponential"].verdict == "exponential"
    assert noisy["exponential"].vuong_z < -3
    for r in noisy.values():
        t = r.table
        assert t["converged"].all() and (t["boot_ok"] > 0.99).all()
        assert t["p_win"].sum() == pytest.approx(1.0)
        assert t["akaike_weight"].sum() == pytest.approx(1.0)
        assert t["delta_aicc"].min() == 0.0
        assert r.extrap_cutoff == 24.0  # fit L <= 24, predict 32..64 (E1)
        assert t["extrap_nll"].notna().all()


def test_boxcox_theta_near_0_for_power_and_near_1_for_exponential(noisy):
    tp, te = noisy["power"], noisy["exponential"]
    assert abs(tp.boxcox_theta) < 0.2 and tp.boxcox_theta_ci[0] < 0 < tp.boxcox_theta_ci[1]
    assert abs(te.boxcox_theta - 1) < 0.2 and te.boxcox_theta_ci[0] < 1 < te.boxcox_theta_ci[1]
    assert not tp.boxcox_theta_ci[0] < 1 < tp.boxcox_theta_ci[1]
    assert not te.boxcox_theta_ci[0] < 0 < te.boxcox_theta_ci[1]
    # the encompassing model: c = 0 not rejected for power data, clearly rejected for exponential data
    assert tp.lr_c_p > 0.01 and te.lr_c_p < 1e-6


def test_dropping_censored_units_underestimates_the_rate():
    # exponential truth, N grid stopping at 2^13: at L = 48, 64 nearly every seed never crosses
    df = synthetic_runs(
        "exponential", np.random.default_rng(1), N=2.0 ** np.arange(6, 14), sd_seed=0.5, seeds_large=5
    )
    th = threshold(df, level=0.05)
    assert (th["censor"] == "right").sum() >= 20 and (th["censor"] == "left").sum() >= 20
    laws = ("power", "exponential")
    full = select_scaling_law(th, laws=laws, n_boot=300, holdout=0, seed=0).table.set_index("law")
    naive = select_scaling_law(
        th[th["censor"] == "none"], laws=laws, n_boot=300, holdout=0, seed=0, min_span=1
    ).table.set_index("law")
    # censored ML: CI covers the true rate; dropping the failures: biased low, CI misses it
    assert full.loc["exponential", "c_lo"] < 0.15 < full.loc["exponential", "c_hi"]
    assert naive.loc["exponential", "c_hi"] < 0.15
    assert abs(full.loc["exponential", "c"] - 0.15) < abs(naive.loc["exponential", "c"] - 0.15) / 2
    assert full.loc["power", "aicc"] > full.loc["exponential", "aicc"]


def test_exact_mode_uses_interpolated_crossings_and_keeps_censoring():
    df = synthetic_runs("power", np.random.default_rng(2))
    th = threshold(df, level=0.05)
    data = scaling_observations(th, censoring="exact")
    ok = (th["censor"] == "none").to_numpy()
    np.testing.assert_array_equal(data.obs.lo[ok], np.log(th["x_star"].to_numpy()[ok]))
    assert np.array_equal(data.obs.exact, ok) and data.n_left == (th["censor"] == "left").sum()
    r = select_scaling_law(th, censoring="exact", laws=("power", "exponential"), n_boot=100)
    t = r.table.set_index("law")
    assert t.loc["power", "k_lo"] < 2.0 < t.loc["power", "k_hi"]
    assert r.censoring == "exact"
    assert r.thresholds is th  # the rows it was fitted on, for the report's figure


# --- the verdict's honesty ---


def test_bad_input_raises_named_errors():
    rng = np.random.default_rng(0)
    df = synthetic_runs("power", rng, L=(4, 8, 16), seeds=2, seeds_large=2)
    with pytest.raises(ValueError, match="distinct x"):
        select_scaling_law(df[df["data.L"] < 16], level=0.05, n_boot=0)
    with pytest.raises(ValueError, match="uncensored"):
        select_scaling_law(df, level=1e-9, n_boot=0)  # never reached: everything right-censored
    with pytest.raises(ValueError, match="missing columns"):
        select_scaling_law(df.drop(columns="seed.run"), level=0.05, n_boot=0)
    with pytest.raises(ValueError, match="teacher=None"):
        select_scaling_law(points("power", {"a": 1, "k": 2}).drop(columns="seed.teacher"), y="ystar")
    with pytest.raises(ValueError, match="one level"):
        select_scaling_law(df, level=[0.05, 0.1], n_boot=0)
    with pytest.raises(ValueError, match="several levels"):
        select_scaling_law(threshold(df, level=[0.05, 0.1]), n_boot=0)
    with pytest.raises(ValueError, match="> 0"):
        select_scaling_law(df.assign(**{"data.L": df["data.L"] - 8}), level=0.05, n_boot=0)
    with pytest.raises(ValueError, match="unknown law"):
        select_scaling_law(df, level=0.05, laws=("power", "cubic"), n_boot=0)


def test_short_grid_gives_fits_but_no_verdict():
    df = synthetic_runs("power", np.random.default_rng(0), L=(4, 8, 16), seeds=3, seeds_large=3)
    r = select_scaling_law(df, level=0.05, n_boot=50, laws=("power", "exponential", "encompassing"))
    assert r.verdict == "insufficient data" and "spans 4x" in r.verdict_reason
    assert r.table["converged"].all()
    assert select_scaling_law(df, level=0.05, n_boot=0, min_span=4).verdict == "inconclusive"


def test_vuong_known_answer():
    la = np.array([0.0, 0.0, 0.0, 0.0])
    lb = np.array([-1.0, -1.0, -1.0, 1.0])
    m = la - lb  # [1, 1, 1, -1]: sum 2, population sd sqrt(3)/2
    z, p = vuong(la, lb, 2, 2)
    assert z == pytest.approx(2 / (2 * np.sqrt(3) / 2)) and p == pytest.approx(2 * stats.norm.sf(z))
    assert np.std(m) == pytest.approx(np.sqrt(3) / 2)
    z3, _ = vuong(la, lb, 3, 2)  # one more parameter in a: Schwarz correction of log(n)/2
    assert z3 == pytest.approx((2 - 0.5 * np.log(4)) / (2 * np.sqrt(3) / 2))


def test_hierarchical_weights_resample_teachers_then_seeds():
    teacher = np.repeat([0, 1, 2], 8)
    cell = np.tile(np.repeat([4, 8], 4), 3)
    W = hierarchical_weights(teacher, cell, 2000, np.random.default_rng(0))
    assert W.shape == (2000, 24) and (W.sum(axis=1) == 24).all()
    per = W.reshape(2000, 3, 2, 4).sum(axis=3)  # (B, teacher, cell): a teacher's cells move together
    assert (per[:, :, 0] == per[:, :, 1]).all() and set(np.unique(per)) <= {0, 4, 8, 12}
    assert np.mean(per[:, 0, 0] == 0) == pytest.approx((2 / 3) ** 3, abs=0.03)  # teacher 0 not drawn


# --- E2 and seeds ---


def test_tost_flat_and_not_flat():
    rng = np.random.default_rng(0)
    m = 2.0 ** np.arange(6, 13)
    flat = points("power", {"a": 6.0, "k": 0.0}, reps=15, sd=0.1, rng=rng, x=m, col="model.m")
    grow = points("power", {"a": 6.0, "k": 0.5}, reps=15, sd=0.1, rng=rng, x=m, col="model.m")
    r = tost_flat_slope(flat, y="ystar", n_boot=300).iloc[0]
    assert r["flat"] and -0.1 < r["ci_lo"] < 0 < r["ci_hi"] < 0.1 and r["p_tost"] < 0.05
    r = tost_flat_slope(grow, y="ystar", n_boot=300).iloc[0]
    assert not r["flat"] and r["ci_lo"] > 0.4 and r["p_tost"] > 0.5
    both = pd.concat([flat.assign(**{"data.L": 8}), grow.assign(**{"data.L": 32})])
    out = tost_flat_slope(both, y="ystar", by=["data.L"], n_boot=100)
    assert out["data.L"].tolist() == [8, 32] and out["flat"].tolist() == [True, False]


def test_aggregate_seeds_t_interval():
    df = pd.DataFrame({"L": [4, 4, 4, 8], "v": [1.0, 2.0, 3.0, 5.0]})
    out = aggregate_seeds(df, "L", "v").set_index("L")
    half = stats.t.ppf(0.975, 2) * 1.0 / np.sqrt(3)
    assert out.loc[4, "mean"] == 2.0 and out.loc[4, "sd"] == 1.0 and out.loc[4, "n"] == 3
    assert out.loc[4, "ci_lo"] == pytest.approx(2 - half) and out.loc[4, "ci_hi"] == pytest.approx(2 + half)
    assert out.loc[8, "n"] == 1 and np.isnan(out.loc[8, "sd"]) and np.isnan(out.loc[8, "ci_lo"])


# --- the continuous companion (Hoffmann et al. 2022, approach 3) ---


def test_additive_power_law_noise_free():
    N = 2.0 ** np.arange(6, 17)
    df = pd.DataFrame({"N": N, "y": 0.5 + 10.0 * N**-0.7})
    f = fit_additive_power_law(df, "y", ["N"], n_boot=0)
    assert f.converged
    assert pytest.approx(0.5, rel=1e-5) == f.E
    assert f.A["N"] == pytest.approx(10.0, rel=1e-4) and f.alpha["N"] == pytest.approx(0.7, rel=1e-5)
    np.testing.assert_allclose(f.predict(df), df["y"], rtol=1e-6)
    # two features on a grid
    g = pd.DataFrame([(n, l) for n in N[::2] for l in L], columns=["N", "L"])
    g["y"] = 0.2 + 50.0 * g["N"] ** -0.5 + 3.0 * g["L"] ** -1.0
    f = fit_additive_power_law(g, "y", ["N", "L"], n_boot=0, max_starts=24)
    assert f.converged and pytest.approx(0.2, rel=1e-4) == f.E
    for k, a_true, alpha_true in (("N", 50.0, 0.5), ("L", 3.0, 1.0)):
        assert f.A[k] == pytest.approx(a_true, rel=1e-3)
        assert f.alpha[k] == pytest.approx(alpha_true, rel=1e-3)


def test_additive_power_law_noisy_cis_and_learning_curves():
    rng = np.random.default_rng(0)
    N = np.repeat(2.0 ** np.arange(6, 17), 3)
    rows = []
    for L_, a_true, al in ((4, 5.0, 0.5), (16, 20.0, 0.4)):
        risk = 0.3 + a_true * N**-al
        rows.append(
            pd.DataFrame(
                {
                    "data.L": L_,
                    "data.N": N,
                    "opt": 0.3 + 0.001 * rng.normal(size=len(N)),
                    "test/risk": risk * np.exp(0.02 * rng.normal(size=len(N))),
                }
            )
        )
    df = pd.concat(rows, ignore_index=True)
    f = fit_additive_power_law(df[df["data.L"] == 4], "test/risk", ["data.N"], n_boot=50)
    assert f.converged and f.boot_ok == 1.0
    # within ~2.5 sampling sd of the truth (sd measured over fresh data sets: 0.004, 0.44, 0.017)
    for p, v, tol in (("E", 0.3, 0.01), ("A[data.N]", 5.0, 1.1), ("alpha[data.N]", 0.5, 0.04)):
        r = f.ci.loc[p]
        assert abs(r["estimate"] - v) < tol and r["lo"] < r["estimate"] < r["hi"], p
        # the CI's width is of the order of the sampling spread (row-bootstrap of a near-L1 fit on 11 distinct
        # N runs narrow: ~0.75x in a check over fresh data sets)
        assert 0.25 < (r["hi"] - r["lo"]) / (2 * 1.96 * tol / 2.5) < 2.5, p
    lc = fit_learning_curve(df, n_boot=20).set_index("data.L")
    assert lc["converged"].all() and lc.loc[4, "E_fixed"]
    assert lc.loc[4, "E"] == pytest.approx(0.3, abs=0.002)
    assert lc.loc[4, "alpha_N_lo"] < 0.5 < lc.loc[4, "alpha_N_hi"]
    assert lc.loc[16, "alpha_N_lo"] < 0.4 < lc.loc[16, "alpha_N_hi"]
    with pytest.raises(ValueError, match="> 0"):
        fit_additive_power_law(df.assign(y=-1.0), "y", ["data.N"])
