"""rnnsgd.packed: a pack of K equals K plain runs (bit for bit on the CPU), failures stay in their model,
checkpoints resume a pack, bad packs are refused before anything is allocated."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from test_train import same, small, without_perf  # one definition of the shared test helpers

import rnnsgd.train
from rnnsgd import concept
from rnnsgd.config import TrialConfig
from rnnsgd.memory import estimate_bytes, eval_chunk, max_pack, pack_bytes
from rnnsgd.metrics import PACK_SIZE
from rnnsgd.model import RNN
from rnnsgd.packed import PACK_FIELDS, PackedTrainer, check_pack, pack_key, train_packed
from rnnsgd.train import Risks, Trainer, evaluate_risks, train

pytestmark = pytest.mark.usefixtures("one_thread")


def alone(cfg: TrialConfig, state=None):
    """train(cfg) and the final shift."""
    box = {}
    result = train(cfg, lambda metrics, trainer: box.__setitem__("W", trainer.W_shift.clone()), state)
    return result, box.get("W")


def packed(cfgs, states=None, **kwargs):
    """train_packed(cfgs) and the final shift of each model."""
    finals: dict[int, torch.Tensor] = {}

    def keep(k: int, metrics: dict[str, float], trainer: Trainer) -> None:
        finals[k] = trainer.W_shift.clone()

    results = train_packed(cfgs, keep, states, **kwargs)
    return results, [finals.get(k) for k in range(len(cfgs))]


def assert_same_run(a, b, W_a=None, W_b=None) -> None:
    assert a.status == b.status
    assert len(a.history) == len(b.history)
    for ha, hb in zip(a.history, b.history, strict=True):
        assert same(without_perf(ha), without_perf(hb)), (ha, hb)
    if W_a is not None or W_b is not None:
        assert torch.equal(W_a, W_b)


# ------------------------------------------------------------------------------------------ equality


def test_pack_equals_separate_runs_bit_for_bit():
    """Seeds, N, eps (so lambda, eta and T), T, teacher, task (long_range's single label mixed with the
    others), Phi, noise, w_var and eps_x may differ within a pack: every metric of every evaluation
    (diagnostics included) and the final W' equal those of the model trained alone."""
    cfgs = [
        small(),
        small(**{"seed.run": 1}),
        small(**{"seed.run": 2, "data.N": 128}),
        small(**{"train.eps": 0.2, "train.T": 450}),
        small(**{"seed.teacher": 3, "data.noise": 0.2}),
        small(**{"data.task": "long_range", "data.phi": "z^3"}),
        small(**{"model.w_var": 1.0, "data.eps_x": 0.8, "train.c_eta": 0.5}),
    ]
    results, finals = packed(cfgs)
    for cfg, result, W in zip(cfgs, results, finals, strict=True):
        expected, W_alone = alone(cfg)
        assert_same_run(result, expected, W, W_alone)
        assert result.metrics[PACK_SIZE] >= 1
    assert len({len(r.history) for r in results}) > 1  # the models kept their own evaluation grids


@pytest.mark.parametrize(
    "flat",
    [
        {"data.online": True},
        {"train.batch": 3},
        {"model.activation": "linear"},
        {"train.loss": "huber"},
        {"train.loss": "xent", "data.d": 2},
        {"data.task": "lags", "data.lags": "1,2", "data.phi": "z^2,sin"},
    ],
)
def test_pack_equals_separate_runs_in_every_mode(flat):
    cfgs = [small(**{**flat, "train.T": 120, "seed.run": s}) for s in range(3)]
    results, finals = packed(cfgs)
    for cfg, result, W in zip(cfgs, results, finals, strict=True):
        expected, W_alone = alone(cfg)
        assert_same_run(result, expected, W, W_alone)


def test_a_width_off_the_alignment_equals_to_rounding():
    """m not a multiple of 16: a model's vectors in the pack are not 64-byte aligned and MKL may round the
    batched products differently from a lone model's: equal to float32 rounding, not bit for bit."""
    cfgs = [small(**{"model.m": 30, "seed.run": s, "train.T": 150}) for s in range(3)]
    results, finals = packed(cfgs)
    for cfg, result, W in zip(cfgs, results, finals, strict=True):
        expected, W_alone = alone(cfg)
        assert result.status == expected.status and len(result.history) == len(expected.history)
        for ha, hb in zip(result.history, expected.history, strict=True):
            for key, value in without_perf(hb).items():
                assert ha[key] == pytest.approx(value, rel=1e-4, abs=1e-6, nan_ok=True), key
        torch.testing.assert_close(W, W_alone, rtol=1e-4, atol=1e-5 * W_alone.abs().max().item())


def test_pack_sgd_equals_trainer_sgd():
    """PackedTrainer.sgd (the benchmark's loop) draws and steps as Trainer.sgd does."""
    cfgs = [small(**{"seed.run": s, "data.N": 32 * (s + 1)}) for s in range(4)]
    pack = PackedTrainer(cfgs)
    objectives = pack.sgd(25)
    for cfg, obj, tr in zip(cfgs, objectives, pack.trainers, strict=True):
        plain = Trainer(cfg)
        assert plain.sgd(25) == obj
        assert torch.equal(plain.W_shift, tr.W_shift)


def objective_alone(tr: Trainer, W_shift: torch.Tensor, s) -> float:
    """The objective as one network computes it alone (`RNN.forward`, chunk by chunk): the reference."""
    total, chunk, n = 0.0, eval_chunk(tr.cfg), s.x.shape[0]
    for i in range(0, n, chunk):
        F = tr.net.forward(s.x[i : i + chunk], W_shift)
        total += concept.risk(tr.cfg.train.loss, tr.sched.lam * F, s.y[i : i + chunk], tr.mask).sum().item()
    return total / n


@pytest.mark.parametrize("per_pass", [None, 2, 64])  # None: this device's (rnnsgd.memory.eval_jobs)
def test_batched_evaluation_equals_each_model_alone(monkeypatch, per_pass):
    """The objectives of a pack's models evaluated together (`evaluate_risks`: batched passes over models
    with different teachers, tasks, N and n_test, so train subsets and test sets of several sizes) equal
    those each network computes alone, bit for bit, in passes of any number of objectives (a CPU takes as
    many as fit its cache, CUDA more: rnnsgd.memory.eval_jobs)."""
    if per_pass is not None:
        monkeypatch.setattr(rnnsgd.train, "eval_jobs", lambda cfg, n, cpu: per_pass)
    cfgs = [
        small(),
        small(**{"seed.run": 1, "seed.teacher": 2, "data.noise": 0.2}),
        small(**{"seed.run": 2, "data.N": 40}),  # a train subset smaller than the test set
        small(**{"data.n_test": 96, "data.task": "long_range", "data.phi": "z^3"}),
        small(**{"model.w_var": 1.0, "data.eps_x": 0.8}),
    ]
    pack = PackedTrainer(cfgs)
    pack.sgd(40)
    for tr in pack.trainers:
        tr.advance(40)  # a tail average of 40 steps
    together = evaluate_risks(pack.trainers)
    for tr, risks in zip(pack.trainers, together, strict=True):
        jobs = tr.risk_jobs()
        assert not torch.equal(jobs[0][1], jobs[1][1])  # the tail average is not the last iterate
        assert risks == Risks(*(objective_alone(tr, W_shift, s) for _, W_shift, s in jobs))


@pytest.mark.parametrize("flat", [{}, {"model.m": 30, "data.d": 2}, {"model.activation": "linear"}])
def test_forward_each_equals_rnn_forward(flat):
    """Pack.forward_each gives each network the bits of RNN.forward alone, whatever K (m off the 64-byte
    alignment too: the evaluation's products are not `project`'s), in buffers kept across calls of several
    sizes."""
    cfg = small(**flat)
    gen = torch.Generator().manual_seed(0)
    nets = [RNN(cfg.model.m, 4, cfg.data.d, gen, activation=cfg.model.activation) for _ in range(5)]
    shifts = [0.01 * torch.randn(cfg.model.m, cfg.model.m, generator=gen) for _ in nets]
    x = torch.randn(5, 37, 6, 5, generator=gen)
    work: dict[str, torch.Tensor] = {}
    for n in (37, 20):
        alone = [net.forward(x[k, :n], shifts[k]) for k, net in enumerate(nets)]
        for K in (1, 5, 2):
            W_total = torch.stack([net.W + S for net, S in zip(nets[:K], shifts[:K], strict=True)])
            for k, F in enumerate(RNN.stack(nets[:K]).forward_each(x[:K, :n], W_total, work)):
                assert torch.equal(F, alone[k])


def test_a_pack_evaluates_its_due_models_together(monkeypatch):
    """The models whose evaluation is due at once have their objectives computed in one call (in batched
    passes of `eval_jobs` objectives), and the results still equal the runs alone."""
    sizes, batched = [], rnnsgd.train.evaluate_risks

    def spy(trainers, work=None):
        sizes.append(len(trainers))
        return batched(trainers, work)

    monkeypatch.setattr(rnnsgd.train, "evaluate_risks", spy)
    cfgs = [small(**{"seed.run": s, "train.T": 120}) for s in range(3)]
    results, _ = packed(cfgs)
    assert sizes[0] == 3 and max(sizes) == 3
    for cfg, result in zip(cfgs, results, strict=True):
        assert_same_run(result, alone(cfg)[0])


def test_groups_do_not_change_the_results():
    """On a CPU a pack steps in cache-sized groups (rnnsgd.memory.group_size): any grouping, same bits."""
    cfgs = [small(**{"seed.run": s, "train.c_eta": 0.3 + 0.1 * (s % 2)}) for s in range(5)]  # two etas
    runs = []
    for group in (None, 1, 2):
        pack = PackedTrainer(cfgs, group=group)
        pack.sgd(30)
        runs.append(torch.stack([tr.W_shift for tr in pack.trainers]))
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    with pytest.raises(ValueError, match=r"^group: must be >= 1"):
        PackedTrainer(cfgs, group=0)


# ------------------------------------------------------------------------------------------ failures


def test_a_diverging_model_leaves_the_pack_alone():
    """Blow-up (c_eta 1e6) and NaN/Inf (c_eta 1e30) end their own models as diverged; the others finish with
    the results they have alone."""
    cfgs = [small(), small(**{"train.c_eta": 1e6}), small(**{"seed.run": 1}), small(**{"train.c_eta": 1e30})]
    results, finals = packed(cfgs)
    assert [r.status for r in results] == ["budget", "diverged", "budget", "diverged"]
    for k in (0, 2):
        expected, W_alone = alone(cfgs[k])
        assert_same_run(results[k], expected, finals[k], W_alone)
        assert results[k].history[-1][PACK_SIZE] == 2  # the diverged two left early
    for k in (1, 3):
        assert_same_run(results[k], alone(cfgs[k])[0])
        assert not results[k].metrics["train/risk"] <= 100 * results[k].history[0]["train/risk"]  # or NaN


@pytest.mark.parametrize(("where", "calls_expected"), [("evaluate", 1), ("risk_jobs", 2)])
def test_an_error_in_one_model_is_isolated_on_request(monkeypatch, where, calls_expected):
    """isolate_errors: a model whose own evaluation fails leaves the pack with status "error" and the others
    go on; without it the error ends the run. An error in on_eval (the caller's tracking) always
    propagates. Where it fails in the batched pass of the models' objectives (risk_jobs), each model then
    computes its own, so that it is called once more."""
    cfgs = [small(**{"seed.run": s}) for s in range(3)]
    expected = [alone(cfg)[0] for cfg in cfgs]
    real, calls = getattr(Trainer, where), {"n": 0}

    def fail_at_100(trainer: Trainer, *args):
        if trainer.cfg.seed.run == 1 and trainer.step >= 100:
            calls["n"] += 1
            raise RuntimeError("evaluation down")
        return real(trainer, *args)

    monkeypatch.setattr(Trainer, where, fail_at_100)
    results = train_packed(cfgs, isolate_errors=True)
    assert results[1].status == "error" and "evaluation down" in results[1].error
    assert results[1].metrics["step"] < 100 and calls["n"] == calls_expected
    for k in (0, 2):
        assert_same_run(results[k], expected[k])
    with pytest.raises(RuntimeError, match="evaluation down"):
        train_packed(cfgs)
    monkeypatch.undo()

    def tracking_down(k: int, metrics: dict[str, float], trainer: Trainer) -> None:
        if k == 1 and metrics["step"] >= 100:
            raise RuntimeError("tracking down")

    with pytest.raises(RuntimeError, match="tracking down"):
        train_packed(cfgs, tracking_down, isolate_errors=True)


# ------------------------------------------------------------------------------------------ checkpoints


def test_a_pack_resumes_from_checkpoints_bit_for_bit(tmp_path):
    """Each model's state from a mid-run evaluation (each at its own step; one fresh, one already ended)
    resumes the pack: every model ends as in the uninterrupted pack."""
    cfgs = [
        small(**{"train.T": 600}),
        small(**{"seed.run": 1, "train.T": 900}),
        small(**{"seed.run": 2}),
        small(**{"train.c_eta": 1e6}),
    ]
    saved: dict[int, dict] = {}

    def checkpoint(k: int, metrics: dict[str, float], trainer: Trainer) -> None:
        if len(trainer.history) == 10 + 2 * k or trainer.outcome is not None and k not in saved:
            saved[k] = copy.deepcopy(trainer.state_dict())

    full = train_packed(cfgs, checkpoint)
    torch.save(saved, tmp_path / "pack.pt")
    loaded = torch.load(tmp_path / "pack.pt", weights_only=False)
    states = [loaded[0], loaded[1], None, loaded[3]]
    assert loaded[0]["step"] != loaded[1]["step"] and loaded[3]["outcome"] == "diverged"
    before = [s["W_shift"].clone() if s else None for s in states]
    resumed, finals = packed(cfgs, states)
    _, finals_full = packed(cfgs)
    for k in range(4):
        assert_same_run(resumed[k], full[k])
        if k != 3:
            assert torch.equal(finals[k], finals_full[k])
    for s, b in zip(states, before, strict=True):
        if s is not None:
            assert torch.equal(s["W_shift"], b)  # the caller's checkpoint is not trained in place


# ------------------------------------------------------------------------------------------ bad packs


def test_bad_packs_are_refused_with_the_reason():
    cfg = small()
    with pytest.raises(ValueError, match=r"^pack size K = 0"):
        train_packed([])
    shapes = [
        ({"model.m": 64}, "model.m"),
        ({"data.L": 6}, "data.L"),
        ({"train.loss": "l1"}, "train.loss"),
        ({"data.online": True}, "data.online"),
        ({"train.batch": 2}, "train.batch"),
    ]
    for flat, field in shapes:
        with pytest.raises(ValueError, match=rf"^{field}: the models of a pack share it"):
            train_packed([cfg, cfg.replace(**flat)])
    for fraction in (0, -0.5, 1.5, math.nan):
        with pytest.raises(ValueError, match=r"^memory_fraction: must be in \(0, 1\]"):
            train_packed([cfg], memory_fraction=fraction)
    with pytest.raises(ValueError, match=r"^budget_bytes"):
        train_packed([cfg], budget_bytes=0)
    two, three = estimate_bytes(cfg, 2), estimate_bytes(cfg, 3)
    with pytest.raises(ValueError, match=r"^pack size K = 3: needs about .* over the budget.* at most 2 "):
        train_packed([cfg] * 3, budget_bytes=(two + three) // 2)
    with pytest.raises(ValueError, match=r"^K: a pack holds at least one model"):
        estimate_bytes(cfg, 0)
    with pytest.raises(ValueError, match=r"^states: 1 states for a pack of 2"):
        train_packed([cfg, cfg], states=[None])
    check_pack([cfg, cfg.replace(**{"train.device": "auto"})] if not torch.cuda.is_available() else [cfg])


def test_memory_estimate_and_max_pack():
    cfg = small()
    sizes = [estimate_bytes(cfg, K) for K in (1, 2, 4, 16)]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]
    assert estimate_bytes(small(**{"model.m": 256}), 4) > estimate_bytes(cfg, 4)
    assert pack_bytes([cfg, small(**{"data.N": 4096})]) > pack_bytes([cfg, cfg])
    for K in (1, 5, 37):
        assert max_pack(cfg, estimate_bytes(cfg, K)) == K
    assert max_pack(cfg, estimate_bytes(cfg, 1) - 1) == 0
    # the estimate covers at least what the pack's tensors take
    pack = PackedTrainer([cfg] * 4)
    held = sum(t.numel() * t.element_size() for t in (pack.W, pack.A, pack.B, pack.S, pack.X, pack.Y))
    assert estimate_bytes(cfg, 4) > held


def test_pack_key_names_the_shape_fields():
    cfg = small()
    assert dict(pack_key(cfg)).keys() == set(PACK_FIELDS)
    for flat in ({"seed.run": 3}, {"data.N": 999}, {"train.eps": 0.3}, {"data.task": "parity"}):
        assert pack_key(cfg.replace(**flat)) == pack_key(cfg)
    assert pack_key(cfg.replace(**{"model.m": 64})) != pack_key(cfg)


# ------------------------------------------------------------------------------------------ devices


def test_pack_on_the_device(device):
    """On the CPU bit for bit (above); on CUDA batched kernels may round differently: to tolerance, and the
    memory estimate covers the peak that the pack allocates."""
    cfgs = [small(device, **{"seed.run": s, "train.T": 200}) for s in range(3)]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
    results, finals = packed(cfgs)
    if device == "cuda":
        assert torch.cuda.max_memory_allocated() - start <= pack_bytes(cfgs)
    for cfg, result, W in zip(cfgs, results, finals, strict=True):
        expected, W_alone = alone(cfg)
        assert result.status == expected.status and len(result.history) == len(expected.history)
        if device == "cpu":
            assert_same_run(result, expected, W, W_alone)
            continue
        for ha, hb in zip(result.history, expected.history, strict=True):
            for key, value in without_perf(hb).items():
                assert ha[key] == pytest.approx(value, rel=1e-3, abs=1e-5, nan_ok=True), key
        torch.testing.assert_close(W, W_alone, rtol=1e-3, atol=1e-3 * W_alone.abs().max().item())
