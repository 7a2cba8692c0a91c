"""E0: does the analysis pipeline recover known truths, and from what span of L on? (CPU only, no training.)

Claim C1 (Allen-Zhu & Li 2019, arXiv 1902.01028, Theorem 1: SGD learns the concept class from a number of
samples polynomial in L) is decided by fitting laws to thresholds N*(L). E0 draws per-run learning curves
from a known N*(L) with seed noise and pushes them through the real pipeline (thresholds.threshold, then
fits.select_scaling_law on its rows with the hierarchical bootstrap, as the report does), so that the
verdict's error rates are measured, not assumed.
Generators (natural log throughout):

    power        N* = 4 L^2                  mu = log 4 + 2 log L          (true rate: k = 2)
    exponential  N* = 20 e^(0.15 L)          mu = log 20 + 0.15 L          (true rate: c = 0.15)
    quasi        N* = 2 L^(log L)            mu = log 2 + (log L)^2        (true rate: q = 1, quasi law)

On E1's full grid (L 4..64, N 2^6..2^16, the default design) these prefactors put the middle of the L range
inside the N grid, so that units at the ends are left- and right-censored, as in a real sweep. Other designs
re-center them (center=True): the prefactor is shifted so that N* at the geometric middle of the L grid,
sqrt(L_min L_max), is the geometric middle of the N grid. Only a moves; the rate, which is what the verdict
is about, stays, and units cross inside the N grid in the middle of any L grid and are censored at its ends.
A law whose N* grows by more than the N grid spans over the L grid leaves only a few L with crossings: the
quasi law on the CPU sweep's 256x N grid is seen over about 3x of L at 8x and 16x spans (the span study's
"seen span" column), and what a 3x window of L says is not what the grid's span promises.

Per unit (teacher t, seed s, length L): log N* = mu(L) + u_t + v_(t,L) + sd_seed z, with a teacher effect
u_t ~ N(0, sd_teacher^2) shared across L and a teacher-by-L effect v ~ N(0, sd_cell^2). Its curve on the N
grid is excess(N) = min(r_max, eps (N / N*)^(-alpha)) e^(sd_point z_N): a power-law learning curve that
crosses eps at N*, with independent noise on every point (so it is not monotone and the isotonic
smoothing matters) and a ceiling at r_max (the risk of a predictor that has learned nothing).

Noise (DEFAULT_NOISE): sd_teacher 0.1, sd_cell 0.05, sd_seed 0.25, sd_point 0.1, alpha 0.5, guesses made
before any real sweep; estimate_noise measures them on one. The spread of thresholds that matters is more
than sd_seed: with a factor 2 between N grid points, reading N* off a noisy curve adds about
0.7 sd_point / alpha of noise to log N* (0.14 at the defaults, 0.37 at sd_point 0.25, alpha 0.5).

What counts as the right answer:
    power        verdict "polynomial"
    exponential  verdict "exponential"
    quasi        any verdict but "polynomial". L^(log L) grows faster than every polynomial, so calling it
                 polynomial is the error that matters for claim C1; on a 16x grid it can look exponential,
                 and the verdict vocabulary is polynomial / exponential / inconclusive. Whether the quasi
                 law itself has the lowest AICc is reported separately (p_true_best).
Coverage: the share of replicates whose 95% bootstrap CI for the true law's rate contains the true value.

The verdict rule is fits.VERDICT_RULE. Its super-polynomial check (c or q > 0 at one-sided 1%) is what keeps
L^(log L) from being called polynomial; it also sets how often a true power law is left inconclusive (about
its 1% size per test, more where the teacher effects make the likelihood-ratio test anticonservative).

The span study (span_study) measures the share of right verdicts against the span L_max / L_min of the L grid
and the run seeds per teacher, on the N grid of the CPU sweep (2^3..2^11) with 3 teachers; minimum_span reads
off the smallest span from which on (at every wider span measured, at one number of seeds) every generator
gets >= 95% right verdicts: the span the verdict must require before it says polynomial or exponential.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .fits import select_scaling_law
from .laws import LAWS, mu_raw
from .thresholds import threshold

L_GRID = (4, 6, 8, 12, 16, 24, 32, 48, 64)
N_GRID = tuple(int(2**p) for p in range(6, 17))
STUDY_N_GRID = tuple(int(2**p) for p in range(3, 11))  # the N grid of sweeps/e1.yaml --variant cpu
VERDICT_LAWS = ("power", "exponential", "quasi", "encompassing")  # every law the verdict reads
TARGET = 0.95
DEFAULT_NOISE = {"sd_teacher": 0.1, "sd_cell": 0.05, "sd_seed": 0.25, "sd_point": 0.1, "alpha": 0.5}
UNIT = ("seed.teacher", "seed.run")

TRUTHS = {
    "power": {"params": {"a": np.log(4.0), "k": 2.0}, "rate": "k", "verdict": "polynomial"},
    "exponential": {"params": {"a": np.log(20.0), "c": 0.15}, "rate": "c", "verdict": "exponential"},
    "quasi": {"params": {"a": np.log(2.0), "k": 0.0, "q": 1.0}, "rate": "q", "verdict": "not polynomial"},
}


def learning_curves(
    log_nstar: np.ndarray,
    N: np.ndarray,
    rng: np.random.Generator,
    *,
    eps: float,
    alpha: float,
    r_max: float,
    sd_point: float,
) -> np.ndarray:
    """Excess risk (units, len(N)) of power-law curves crossing eps at N* = exp(log_nstar), with a ceiling
    r_max and log-normal noise on every point: the one curve model that both the synthetic sweeps and the
    noise estimate's calibration use, so that measured noise means the same thing in both."""
    curve = eps * np.exp(-alpha * (np.log(N)[None, :] - log_nstar[:, None]))
    return np.minimum(r_max, curve) * np.exp(sd_point * rng.normal(size=curve.shape))


def synthetic_runs(
    law: str,
    rng: np.random.Generator,
    *,
    L: Sequence[float] = L_GRID,
    N: Sequence[int] = N_GRID,
    teachers: int = 3,
    seeds: int = 5,
    seeds_large: int = 10,
    large_from: float = 32,
    center: bool = False,
    eps: float = 0.05,
    alpha: float = DEFAULT_NOISE["alpha"],
    r_max: float = 1.0,
    sd_teacher: float = DEFAULT_NOISE["sd_teacher"],
    sd_cell: float = DEFAULT_NOISE["sd_cell"],
    sd_seed: float = DEFAULT_NOISE["sd_seed"],
    sd_point: float = DEFAULT_NOISE["sd_point"],
) -> pd.DataFrame:
    """Per-run rows (data.L, data.N, seed.teacher, seed.run, test/excess_risk, true_log_nstar) for the
    generator `law` (module docstring); the default design is E1's full grid (5 seeds, 10 at L >= 32,
    3 teachers). center: re-center the generator on this L and N grid (module docstring). eps: the level
    every curve crosses at its N*, so a threshold at level eps reads the true N*."""
    if law not in TRUTHS:
        raise ValueError(f"unknown generator {law!r}; choose from {sorted(TRUTHS)}")
    L = np.asarray(L, dtype=float)
    N = np.asarray(N, dtype=float)
    mu = _true_log_nstar(law, L, N, center)
    u = rng.normal(scale=sd_teacher, size=teachers)
    curve = {"eps": eps, "alpha": alpha, "r_max": r_max, "sd_point": sd_point}
    parts = []
    for i, l in enumerate(L):
        ns = seeds_large if l >= large_from else seeds
        t = np.repeat(np.arange(teachers), ns)  # (units,)
        v = rng.normal(scale=sd_cell, size=teachers)
        log_nstar = mu[i] + u[t] + v[t] + sd_seed * rng.normal(size=len(t))
        risk = learning_curves(log_nstar, N, rng, **curve)
        parts.append(_cell_rows(l, N, t, np.tile(np.arange(ns), teachers), risk, log_nstar))
    return pd.concat(parts, ignore_index=True)


def _true_log_nstar(law: str, L: np.ndarray, N: np.ndarray, center: bool) -> np.ndarray:
    """mu(L) of the generator, shifted when centered so that N* at sqrt(L_min L_max) is the N grid's
    geometric middle (module docstring)."""
    params = TRUTHS[law]["params"]
    mu = mu_raw(law, params, L)
    if center:
        mid = mu_raw(law, params, np.sqrt(L.min() * L.max()))
        mu = mu - mid + (np.log(N.min()) + np.log(N.max())) / 2
    return mu


def _cell_rows(l, N, teacher, run, risk, log_nstar) -> pd.DataFrame:
    """One row per (unit, N) of one L: a unit's curve `risk` (units, len(N)) laid out as runs."""
    return pd.DataFrame(
        {
            "data.L": l,
            "data.N": np.tile(N, len(teacher)),
            "seed.teacher": np.repeat(teacher, len(N)),
            "seed.run": np.repeat(run, len(N)),
            "test/excess_risk": risk.ravel(),
            "true_log_nstar": np.repeat(log_nstar, len(N)),
        }
    )


def run_validation(
    n_replicates: int = 100,
    seed: int | np.random.Generator = 0,
    laws: Sequence[str] = ("power", "exponential", "quasi"),
    *,
    fit_laws: Sequence[str] = LAWS,
    n_boot: int = 200,
    n_starts: int = 128,
    eps: float = 0.05,
    censoring: str = "interval",
    design: dict | None = None,
) -> tuple[pd.DataFrame, str]:
    """Run E0: n_replicates synthetic sweeps per generator in `laws`, each through select_scaling_law.

    fit_laws: the candidate laws fitted (the pipeline's full set by default; it must include power and
    exponential, and encompassing and quasi for the verdict's super-polynomial guard). n_boot: bootstrap
    replicates per fit (the analysis default is 2000; E0 uses fewer to keep its cost down, which widens the
    Monte Carlo error of P(win) but not the verdict rule). eps: the generator's crossing level, which is
    also the threshold level, given here explicitly (synthetic_runs). design: keyword overrides for
    synthetic_runs (the L and N grids, seeds, center, the noise of estimate_noise). The verdict's own span
    gate is off (min_span=1): E0 measures the rule at every span, and its span study is what sets that gate.

    Returns (summary, text): one row per generator with n, expected verdict, counts of each verdict,
    p_correct (share with the right verdict, module docstring), p_true_best (share where the true law
    has the lowest AICc among the generators), the rate's true value, median estimate, coverage of its
    95% CI and median CI width, the share of censored units and the median observed span (largest over
    smallest L with a crossing unit, which censoring can make much narrower than the grid's); text says
    the same in sentences, with pass/fail against E0's targets (p_correct >= 0.95, coverage within 0.05
    of 0.95). summary.attrs["per_replicate"] holds the replicates' rows.
    """
    rng = np.random.default_rng(seed)
    fit = {"laws": fit_laws, "n_boot": n_boot, "n_starts": n_starts, "censoring": censoring}
    records = []
    for law in laws:
        for rep in range(n_replicates):
            th = threshold(
                synthetic_runs(law, rng, eps=eps, **(design or {})), level=eps, by=("data.L",), unit=UNIT
            )
            records.append({"truth": law, "rep": rep, **_replicate(law, th, fit, rng)})
    per_rep = pd.DataFrame(records)
    summary = pd.DataFrame([_summary_row(law, per_rep[per_rep["truth"] == law]) for law in laws])
    summary.attrs["per_replicate"] = per_rep.to_dict(orient="list")
    return summary, summary_text(summary, n_boot=n_boot)


def _replicate(law: str, th: pd.DataFrame, fit: dict, rng: np.random.Generator) -> dict:
    """One E0 replicate: the law fits on the thresholds th of generator `law`, scored against its truth."""
    seen = th.loc[th["censor"] == "none", "data.L"]
    observed_span = float(seen.max() / seen.min()) if len(seen) else np.nan
    try:
        r = select_scaling_law(th, "data.L", holdout=0, min_span=1.0, seed=rng, **fit)
    except ValueError as e:  # counted, never hidden: an unusable replicate is a failure
        return {"verdict": f"error: {e}", "correct": False, "observed_span": observed_span}
    truth = TRUTHS[law]
    rate = truth["rate"]
    row = r.table.set_index("law")
    ok = r.verdict != "polynomial" if truth["verdict"] == "not polynomial" else r.verdict == truth["verdict"]
    gen = [g for g in TRUTHS if g in row.index]  # the lowest AICc among the generator laws
    best = row.loc[gen, "aicc"].idxmin() if row.loc[gen, "aicc"].notna().any() else None
    est, lo, hi = (row.loc[law, c] for c in (rate, f"{rate}_lo", f"{rate}_hi"))
    true = truth["params"][rate]
    return {
        "verdict": r.verdict,
        "correct": ok,
        "true_best": best == law,
        "estimate": est,
        "ci_lo": lo,
        "ci_hi": hi,
        "covered": bool(lo <= true <= hi) if np.isfinite(lo) and np.isfinite(hi) else np.nan,
        "p_power_beats_exp": r.p_power_beats_exp,
        "vuong_z": r.vuong_z,
        "superpoly_c_p": r.superpoly_c_p,
        "superpoly_q_p": r.superpoly_q_p,
        "boxcox_theta": r.boxcox_theta,
        "censored": (r.n_left_censored + r.n_right_censored) / r.n_obs,
        "observed_span": observed_span,
    }


def _summary_row(law: str, r: pd.DataFrame) -> dict:
    """run_validation's summary of one generator's replicates r."""
    truth = TRUTHS[law]
    counts = r["verdict"].value_counts()
    return {
        "truth": law,
        "n": len(r),
        "expected": truth["verdict"],
        "polynomial": int(counts.get("polynomial", 0)),
        "exponential": int(counts.get("exponential", 0)),
        "inconclusive": int(counts.get("inconclusive", 0)),
        "errors": int(r["verdict"].astype(str).str.startswith("error").sum()),
        "p_correct": float(r["correct"].mean()),
        "p_true_best": float(r["true_best"].mean()) if "true_best" in r else np.nan,
        "rate": truth["rate"],
        "rate_true": truth["params"][truth["rate"]],
        "rate_median": float(r["estimate"].median()) if "estimate" in r else np.nan,
        "coverage": float(r["covered"].astype(float).mean()) if "covered" in r else np.nan,
        "ci_width_median": float((r["ci_hi"] - r["ci_lo"]).median()) if "ci_lo" in r else np.nan,
        "censored_share": float(r["censored"].mean()) if "censored" in r else np.nan,
        "observed_span_median": float(r["observed_span"].median()),
    }


def summary_text(summary: pd.DataFrame, n_boot: int | None = None) -> str:
    """Plain sentences for E0's summary: per generator the verdicts, the selection rate and the coverage,
    each marked PASS / FAIL against E0's targets (selection >= 95%, coverage 95% +- 5 points)."""
    lines = [
        "E0: the pipeline on synthetic sweeps with a known N*(L)"
        + (f" (bootstrap {n_boot})" if n_boot else "")
    ]
    ok_all = True
    for _, r in summary.iterrows():
        sel_ok = r["p_correct"] >= 0.95
        cov_ok = abs(r["coverage"] - 0.95) <= 0.05 if np.isfinite(r["coverage"]) else False
        ok_all &= sel_ok and cov_ok
        lines.append(
            f"- {r['truth']}: right verdict ({r['expected']}) in {r['p_correct']:.1%} of {r['n']} "
            f"[{'PASS' if sel_ok else 'FAIL'}] (polynomial {r['polynomial']}, "
            f"exponential {r['exponential']}, inconclusive {r['inconclusive']}, errors {r['errors']}); "
            "true law lowest AICc "
            f"{r['p_true_best']:.1%}; {r['rate']} = {r['rate_true']:g}: median estimate "
            f"{r['rate_median']:.4g}, 95% CI covers it in {r['coverage']:.1%} "
            f"[{'PASS' if cov_ok else 'FAIL'}] (median width {r['ci_width_median']:.3g}); "
            f"{r['censored_share']:.0%} of units censored"
        )
    lines.append(
        "E0 " + ("PASSES: verdicts can be trusted at this design." if ok_all else "FAILS at this size.")
    )
    return "\n".join(lines)


def span_grid(span: float, l_min: float = 4) -> tuple[float, ...]:
    """The L grid of a design spanning `span`x: the sweeps' steps l_min {1, 1.5} 2^j (4, 6, 8, 12, 16, ...)
    below l_min span, then l_min span itself, so that the grid spans exactly `span`."""
    if not span >= 2:
        raise ValueError(f"span must be >= 2 (a fit needs >= 3 values of L), got {span}")
    top = float(l_min * span)
    steps = {l_min * f * 2**j for j in range(int(np.log2(span)) + 1) for f in (1.0, 1.5)}
    return (*sorted(s for s in steps if s < top * (1 - 1e-9)), top)


def span_design(span: float, seeds: int, noise: dict | None = None, teachers: int = 3) -> dict:
    """synthetic_runs keywords for one cell of the span study: span_grid(span), the CPU sweep's N grid,
    `teachers` teachers with `seeds` run seeds each at every L, the generator re-centered on these grids,
    and DEFAULT_NOISE with `noise` (e.g. estimate_noise's result) over it."""
    return {
        "L": span_grid(span),
        "N": STUDY_N_GRID,
        "teachers": teachers,
        "seeds": seeds,
        "seeds_large": seeds,
        "center": True,
        **DEFAULT_NOISE,
        **(noise or {}),
    }


def span_study(
    spans: Sequence[float] = (4, 8, 16),
    seeds: Sequence[int] = (1, 3, 5),
    n_replicates: int = 40,
    seed: int = 0,
    *,
    noise: dict | None = None,
    laws: Sequence[str] = tuple(TRUTHS),
    teachers: int = 3,
    n_boot: int = 200,
    n_starts: int = 16,
) -> pd.DataFrame:
    """E0 against the span of L and the run seeds per teacher: run_validation on span_design(span, s, noise)
    for every span x seeds, n_replicates synthetic sweeps per generator in each.

    Only VERDICT_LAWS are fitted (the other laws do not change the verdict) and all four are linear in
    their parameters, with one maximum, so n_starts=16 finds it (benchmarks/README.md has what a study costs).

    Returns one row per (span, seeds, generator): span, seeds, then run_validation's summary columns (n,
    p_correct, coverage, the verdict counts, errors, censored_share, ...); attrs hold the noise used, the
    teachers and n_boot.
    """
    cells = list(itertools.product(spans, seeds))
    streams = np.random.SeedSequence(seed).spawn(len(cells))
    parts = []
    for (span, s), stream in zip(cells, streams, strict=True):
        summary, _ = run_validation(
            n_replicates,
            np.random.default_rng(stream),
            laws,
            fit_laws=VERDICT_LAWS,
            n_boot=n_boot,
            n_starts=n_starts,
            design=span_design(span, s, noise, teachers),
        )
        summary.attrs = {}  # its per-replicate rows: the study keeps the summaries only
        parts.append(summary.assign(span=float(span), seeds=int(s)))
    table = pd.concat(parts, ignore_index=True)
    table = table[["span", "seeds", *(c for c in table.columns if c not in ("span", "seeds"))]]
    table.attrs = {"noise": {**DEFAULT_NOISE, **(noise or {})}, "teachers": teachers, "n_boot": n_boot}
    return table


def minimum_span(
    table: pd.DataFrame, target: float = TARGET, laws: Sequence[str] | None = None
) -> tuple[float, int] | None:
    """(span, seeds): the smallest span S such that, at `seeds` run seeds per teacher (the fewest that
    manage it), every span >= S of span_study's table gives every generator (or those in `laws`) >= target
    right verdicts, so that a gate "span >= S" holds at every span measured; None when no span does."""
    rows = table if laws is None else table[table["truth"].isin(laws)]
    reached = rows.groupby(["seeds", "span"])["p_correct"].min() >= target
    found = []
    for seeds, by_span in reached.groupby(level="seeds"):
        from_here = by_span.droplevel("seeds").sort_index()[::-1].cummin()[::-1]  # this span and all wider
        if from_here.any():
            found.append((float(from_here[from_here].index.min()), int(seeds)))
    return min(found) if found else None  # by span, then seeds


def span_text(table: pd.DataFrame, target: float = TARGET) -> str:
    """span_study's table as text: the design and noise, one line per cell, the minimum span over every
    generator, and per generator, since one that leaves the N grid (the seen span column) can hold the
    minimum back at every span: a limit of the N grid, which no span of L lifts."""
    noise = ", ".join(f"{k} {v:.3g}" for k, v in table.attrs["noise"].items())
    lines = [
        f"E0 by span of L: right verdicts on N = {STUDY_N_GRID[0]}..{STUDY_N_GRID[-1]}, "
        f"{table.attrs['teachers']} teachers, bootstrap {table.attrs['n_boot']}; noise: {noise}",
        f"{'span':>5} {'seeds':>5}  {'generator':<12}{'n':>4} {'p_correct':>9} {'coverage':>8}  "
        f"{'poly':>4} {'exp':>4} {'inconc':>6} {'errors':>6} {'censored':>8} {'seen span':>9}",
    ]
    for _, r in table.iterrows():
        lines.append(
            f"{r['span']:>4g}x {r['seeds']:>5}  {r['truth']:<12}{r['n']:>4} {r['p_correct']:>9.3f} "
            f"{r['coverage']:>8.3f}  {r['polynomial']:>4} {r['exponential']:>4} {r['inconclusive']:>6} "
            f"{r['errors']:>6} {r['censored_share']:>8.2f} {r['observed_span_median']:>8.3g}x"
        )

    def said(found: tuple[float, int] | None) -> str:
        return f"{found[0]:g}x (at {found[1]} seeds)" if found else "none"

    by_law = ", ".join(f"{g} {said(minimum_span(table, target, (g,)))}" for g in table["truth"].unique())
    lines.append(f"by generator: {by_law}")
    found = minimum_span(table, target)
    lines.append(
        f"minimum span reaching {target:.0%} correct: {said(found)}"
        if found
        else f"none of the spans reached {target:.0%}"
    )
    return "\n".join(lines)


def estimate_noise(runs: pd.DataFrame, metric: str, level: float, seed: int = 0) -> dict:
    """The noise of a real sweep in the generator's terms (module docstring), for span_design.

    runs: one group of a sweep (one task, width and eps), a row per run with data.L, data.N, seed.teacher,
    seed.run and `metric` (as load.load_runs returns); level: the threshold (the sweep's eps).
    alpha and sd_point come from the learning curves near their crossing (_local_fits); sd_teacher, sd_cell
    and sd_seed from the spread of the thresholds log N* (_threshold_spread) after taking out the noise that
    reading N* off a noisy curve adds, which is simulated with the measured alpha and sd_point on this N
    grid (_reading_var): the generator adds that reading noise itself, so leaving it in would count it twice.
    However alpha and sd_point split it, the generator then reproduces the total spread of log N* within
    an L, which is what the fits see.
    Returns {sd_teacher, sd_cell, sd_seed, sd_point, alpha}.
    """
    th = threshold(runs, curve_x="data.N", y=metric, level=level, by=("data.L",), unit=UNIT)
    alpha, sd_point = _local_fits(runs, metric, th)
    var_read = _reading_var(np.unique(runs["data.N"]), level, alpha, sd_point, np.random.default_rng(seed))
    return {**_threshold_spread(th, var_read), "sd_point": sd_point, "alpha": alpha}


def _local_fits(runs: pd.DataFrame, metric: str, th: pd.DataFrame, window: float = np.log(8)) -> tuple:
    """(alpha, sd_point) from a least-squares line of log risk on log N per crossing unit, over its points
    within a factor e^window (8) of its N*: minus the median slope, and the pooled residual sd. Near the
    crossing is where the slope turns risk noise into N* noise; curves that bend inside the window make
    sd_point an upper bound. Points with risk <= 0 (an excess risk can dip below 0) have no log: left out."""
    keys = ["data.L", *UNIT]
    crossed = th.loc[th["censor"] == "none", [*keys, "x_star"]]
    d = runs[[*keys, "data.N", metric]].merge(crossed, on=keys)
    y = d[metric].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = d.assign(x=np.log(d["data.N"].astype(float)), y=np.log(y))
    d = d[np.isfinite(d["y"]) & (np.abs(d["x"] - np.log(d["x_star"])) <= window)]
    g = d.groupby(keys)
    d = d.assign(xc=d["x"] - g["x"].transform("mean"), yc=d["y"] - g["y"].transform("mean"))
    s = d.assign(xx=d["xc"] ** 2, xy=d["xc"] * d["yc"], yy=d["yc"] ** 2).groupby(keys)[["xx", "xy", "yy"]]
    sums, n = s.sum(), s.size()
    ok = (n >= 3) & (sums["xx"] > 0)
    if not ok.any():
        raise ValueError(f"estimate_noise: no unit has >= 3 points of {metric!r} > 0 near its crossing")
    sums, n = sums[ok], n[ok]
    slope = sums["xy"] / sums["xx"]
    rss = sums["yy"] - slope * sums["xy"]
    return float(-slope.median()), float(np.sqrt(rss.sum() / (n - 2).sum()))


def _reading_var(N: np.ndarray, level: float, alpha: float, sd_point: float, rng, n: int = 4000) -> float:
    """Variance of log x_star - log N* when N* (log-uniform over the N grid) is read off the generator's
    curves with this alpha and sd_point by thresholds.threshold: the share of the thresholds' spread that
    is point noise, not seed noise."""
    log_nstar = rng.uniform(np.log(N.min()), np.log(N.max()), size=n)
    risk = learning_curves(log_nstar, N, rng, eps=level, alpha=alpha, r_max=np.inf, sd_point=sd_point)
    df = pd.DataFrame({"data.N": np.tile(N, n), "unit": np.repeat(np.arange(n), len(N)), "y": risk.ravel()})
    th = threshold(df, curve_x="data.N", y="y", level=level, by=(), unit=("unit",))
    ok = (th["censor"] == "none").to_numpy()
    return float(np.var(np.log(th["x_star"].to_numpy()[ok]) - log_nstar[th["unit"].to_numpy()[ok]]))


def _threshold_spread(th: pd.DataFrame, var_read: float) -> dict:
    """sd_teacher, sd_cell, sd_seed by the moments of a two-way (teacher x L) layout of log N*.

    Only L values where every unit crossed the level count: dropping the censored units of an L would cut
    off a tail of its N* and shrink the spread. With cell means m_(t,L) over n seeds (harmonic mean over
    cells), the within-cell variance s2_w estimates sd_seed^2 + var_read, the interaction mean square
    sd_cell^2 + s2_w / n and the teacher mean square (K values of L) K sd_teacher^2 + sd_cell^2 + s2_w / n;
    negative differences are set to 0. With one seed per teacher (the CPU sweep) s2_w does not exist and
    the seed and teacher-by-L terms cannot be told apart: both are independent per unit, and all of it is
    put in sd_seed (so designs with more seeds are simulated as averaging it down).
    """
    full = th.groupby("data.L")["censor"].transform(lambda c: bool((c == "none").all()))
    d = th[full.astype(bool)].assign(y=lambda f: np.log(f["x_star"].astype(float)))
    cells = d.groupby(["seed.teacher", "data.L"])["y"].agg(["mean", "var", "count"])
    m = cells["mean"].unstack("data.L").dropna(axis=1)
    T, K = m.shape
    if T < 2 or K < 2:
        raise ValueError(
            "estimate_noise: need >= 2 teachers at >= 2 values of L where every unit crossed the level, "
            f"got {T} teachers at {K} (L where every unit crossed: {sorted(d['data.L'].unique())})"
        )
    cells = cells[cells.index.get_level_values("data.L").isin(m.columns)]
    mv = m.to_numpy()
    resid = mv - mv.mean(axis=1, keepdims=True) - mv.mean(axis=0, keepdims=True) + mv.mean()
    ms_resid = float((resid**2).sum() / ((T - 1) * (K - 1)))
    ms_teacher = float(K * mv.mean(axis=1).var(ddof=1))
    n_h = float(len(cells) / (1.0 / cells["count"]).sum())
    df_w = int((cells["count"] - 1).sum())
    if df_w > 0:
        s2_w = float((cells["var"].fillna(0.0) * (cells["count"] - 1)).sum() / df_w)
        var_cell, var_seed = ms_resid - s2_w / n_h, s2_w - var_read
    else:
        var_cell, var_seed = 0.0, ms_resid - var_read
    return {
        "sd_teacher": float(np.sqrt(max(0.0, (ms_teacher - ms_resid) / K))),
        "sd_cell": float(np.sqrt(max(0.0, var_cell))),
        "sd_seed": float(np.sqrt(max(0.0, var_seed))),
    }
