"""The names of what a run logs at each evaluation, written once (their meanings: docs/metrics.md).

The trainer and the diagnostics produce these keys; the sweep's MLflow view, the console, the report and the
tests read them. A key that code outside the trainer reads by name has a constant here; the groups below list
the rest. New keys may be added; none is renamed, since stored runs keep the old names.
"""

STEP = "step"  # the evaluation's SGD step: an int, MLflow's step axis
TEST_RISK = "test/risk"
TRAIN_RISK = "train/risk"
REL_RISK = "test/rel_risk"
REL_RISK_TAIL = "test/rel_risk_tail"
NRISK = "test/nrisk"
GEN_GAP = "gen/gap"
STEPS_PER_S = "perf/steps_per_s"
PACK_SIZE = "perf/pack_size"  # only in packed trials: how many models shared the evaluation's steps

# risks a threshold can read, with the words a report uses for them
RISK_WORDS = {
    REL_RISK_TAIL: "tail-averaged baseline-relative excess risk",
    REL_RISK: "baseline-relative excess risk of the last iterate",
    "test/risk_tail": "tail-averaged test risk",
    TEST_RISK: "test risk of the last iterate",
    "test/excess_risk": "absolute excess test risk",
    NRISK: "normalized test risk",
}

# the proof's mechanism (Lemmas 6.1, 7.1 and Appendix F of arXiv 1902.01028), from rnnsgd.diagnostics
MECHANISM = (
    "w/move_fro",
    "w/move_op",
    "w/rel_change",
    "w/spectral_radius",
    "w/spectral_norm",
    "act/flip_frac",
    "h/drift",
    "lin/rel_err",
)

SCHEDULE = ("sched/eta", "sched/lambda", "sched/grad_sq")  # lambda and eta as used, and eta's measurement

# what needs a finite training set: absent in the online regime (data.online), where test/risk is the
# population risk and the gap is 0
OFFLINE_ONLY = (TRAIN_RISK, "train/baseline", GEN_GAP)

# every key of every evaluation (offline; online drops OFFLINE_ONLY), besides STEP, the per-lag
# "lags/r2_<g>" of task lags, "train/sgd_obj" and PACK_SIZE
LOGGED = (
    TRAIN_RISK,
    TEST_RISK,
    "test/excess_risk",
    "test/nrisk",
    "gen/gap",
    "test/risk_iter_avg",
    "opt",
    *MECHANISM,
    STEPS_PER_S,
    "test/baseline",
    "train/baseline",
    "test/risk_tail",
    "test/rel_risk",
    REL_RISK_TAIL,
    *SCHEDULE,
)
