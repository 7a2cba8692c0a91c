"""rnnsgd.train: one-sample SGD against autograd, learning, determinism, resume, outcomes, metrics."""

from __future__ import annotations

import copy
import math
import time

import pytest
import torch

from rnnsgd import concept, memory
from rnnsgd import train as train_module
from rnnsgd.config import LOSSES, TASKS, TrialConfig
from rnnsgd.metrics import LOGGED, OFFLINE_ONLY, STEP
from rnnsgd.model import RNN
from rnnsgd.train import OUTCOMES, Trainer, eval_steps, named_generator, train

pytestmark = pytest.mark.usefixtures("one_thread")


def small(device: str = "cpu", **flat) -> TrialConfig:
    base = {
        "model.m": 32,
        "data.L": 5,
        "data.N": 64,
        "data.n_test": 64,
        "train.T": 300,
        "train.device": device,
        "train.probe": 16,
    }
    return TrialConfig.from_flat({**base, **flat})


def without_perf(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.startswith("perf/")}


def same(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal, NaN == NaN."""
    return a.keys() == b.keys() and all(
        x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a.values(), b.values(), strict=True)
    )


# ------------------------------------------------------------------------------------------ one step


def reference_objective(net: RNN, S: torch.Tensor, x, y, lam: float, loss: str, mask) -> torch.Tensor:
    """(1/b) sum_samples sum_{j in mask} G(lambda F_j(x; W + S), y_j) in float64, plainly, for autograd."""
    W, A, B = (t.double() for t in (net.W, net.A, net.B))
    x, y = x.double(), y.double()
    h, hs = x.new_zeros(x.shape[0], W.shape[0]), []
    for l in range(x.shape[1]):
        h = torch.relu(h @ (W + S).T + x[:, l] @ A.T)
        hs.append(h)
    F = torch.stack(hs, dim=1) @ B.T
    return concept.risk(loss, lam * F, y, mask).mean()


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("task", ["paper", "long_range"])
def test_sgd_step_matches_autograd(device, loss, batch, task):
    """Trainer.sgd(1) = one step W' <- W' - eta grad of the mean objective over the drawn samples."""
    cfg = small(
        device,
        **{
            "train.loss": loss,
            "train.batch": batch,
            "data.task": task,
            "data.d": 2,
            "model.m": 16,
            "data.N": 16,
        },
    )
    trainer = Trainer(cfg)
    S0 = 0.2 * torch.randn(16, 16, generator=torch.Generator().manual_seed(5)) / 4
    trainer.W_shift = S0.to(device).clone()
    g = torch.Generator()
    g.set_state(trainer.sgd_gen.get_state())
    idx = torch.randint(cfg.data.N, (1, batch), generator=g)[0].to(device)  # the samples the step will draw
    obj = trainer.sgd(1)

    S = S0.double().to(device).requires_grad_(True)
    lam, eta = trainer.sched.lam, trainer.sched.eta
    ref = reference_objective(
        trainer.net, S, trainer.train_set.x[idx], trainer.train_set.y[idx], lam, loss, trainer.mask
    )
    (grad,) = torch.autograd.grad(ref, S)
    assert obj == pytest.approx(ref.item(), rel=1e-5)
    step = (trainer.W_shift.double() - S0.double().to(device)).cpu()
    expected = (-eta * grad).cpu()
    assert expected.abs().max() > 0
    torch.testing.assert_close(step, expected, rtol=1e-3, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize("loss", ["l2", "mse"])
@pytest.mark.parametrize("task", ["paper", "long_range"])
def test_mean_grad_sq_is_the_mean_of_per_sample_gradient_norms(loss, task):
    """Trainer.mean_grad_sq (the practical eta's measurement) against autograd, sample by sample."""
    cfg = small(**{"train.loss": loss, "data.task": task, "data.d": 2, "model.m": 16})
    trainer = Trainer(cfg)
    trainer.W_shift = 0.05 * torch.randn(16, 16, generator=torch.Generator().manual_seed(3))
    s, lam = trainer.test, trainer.sched.lam
    expected = 0.0
    for i in range(8):
        S = trainer.W_shift.double().requires_grad_(True)
        (g,) = torch.autograd.grad(
            reference_objective(trainer.net, S, s.x[i : i + 1], s.y[i : i + 1], lam, loss, trainer.mask), S
        )
        expected += (g**2).sum().item() / 8
    got = trainer.mean_grad_sq(train_module.Sample(s.x[:8], s.y[:8], s.f[:8]), lam)
    assert got == pytest.approx(expected, rel=1e-4)


def test_practical_eta_keeps_the_function_space_step_flat_in_width():
    """eta grad_sq = c_eta eps / L by construction; grad_sq grows like lambda^2 m, so eta lambda^2 m (the
    step in function space) barely moves between widths 32 and 512, while eta itself falls ~16x."""
    steps, etas = [], []
    for m in (32, 512):
        trainer = Trainer(small(**{"model.m": m, "data.L": 8}))
        sc = trainer.sched
        tr = trainer.cfg.train
        assert sc.eta * trainer.grad_sq == pytest.approx(tr.c_eta * tr.eps / 8)
        steps.append(sc.eta * sc.lam**2 * m)
        etas.append(sc.eta)
    assert 0.5 < steps[0] / steps[1] < 2 and etas[0] / etas[1] > 8


def test_tail_average_is_the_mean_of_the_iterates_over_its_window():
    """Each evaluation scores (test/risk_tail) the mean of W'_s over s in (tail_from, step], a window that
    covers the last half of the steps and at most one interval between evaluations more."""
    trainer = Trainer(small(**{"train.T": 400}))
    iterates = [trainer.W_shift.clone()]
    for step in trainer.steps[1:]:
        while trainer.step < step:  # one step at a time, keeping every iterate
            trainer.sgd(1)
            trainer.step += 1
            iterates.append(trainer.W_shift.clone())
        metrics = trainer.evaluate(math.nan, math.nan)
        start = trainer.tail_from
        assert step / 2 >= start and (start == 0 or (step - start) / step <= 0.75), (step, start)
        mean = torch.stack(iterates[start + 1 : step + 1]).mean(dim=0)
        assert metrics["test/risk_tail"] == pytest.approx(trainer.objective(trainer.test, mean), rel=1e-5)
    assert trainer.tail_from > 100  # the window moved on


def test_online_sgd_draws_fresh_samples():
    cfg = small(**{"data.online": True})
    trainer = Trainer(cfg)
    assert trainer.train_set is None
    before = trainer.data_gen.get_state()
    trainer.sgd(5)
    assert not torch.equal(before, trainer.data_gen.get_state())
    assert trainer.W_shift.abs().max() > 0


# ------------------------------------------------------------------------------------------ what moves


def test_only_the_shift_changes():
    """A, B and the init W are bit-identical after training; W' moved away from 0."""
    cfg = small()
    fresh = RNN(cfg.model.m, cfg.data.d_x, cfg.data.d, named_generator(cfg.seed.run, "init"))
    seen: list[Trainer] = []
    result = train(cfg, lambda metrics, trainer: seen.append(trainer))
    net = seen[-1].net
    for k in ("W", "A", "B"):
        assert torch.equal(getattr(net, k), getattr(fresh, k)), k
    assert seen[-1].W_shift.abs().max() > 0
    assert result.metrics["w/move_fro"] > 0


# ------------------------------------------------------------------------------------------ learning


def test_learning_with_default_settings(device):
    """The paper's task at L = 4, m = 128, N = 512, Phi = z^2: default schedule, a 4000-step budget: the
    normalized test risk falls well below 1 in well under a minute."""
    cfg = TrialConfig.from_flat(
        {
            "model.m": 128,
            "data.L": 4,
            "data.N": 512,
            "data.phi": "z^2",
            "data.n_test": 512,
            "train.T": 4000,
            "train.device": device,
        }
    )
    t0 = time.perf_counter()
    result = train(cfg)
    elapsed = time.perf_counter() - t0
    first, last = result.history[0], result.metrics
    assert first["test/nrisk"] == pytest.approx(1.0, abs=0.1)  # lambda F ~ 0 at init
    assert last["test/nrisk"] < 0.6, last["test/nrisk"]
    assert last["train/risk"] < 0.6 * first["train/risk"]
    assert elapsed < 60, elapsed


def test_risk_falls_with_N():
    """Same step budget, 2 run seeds: N = 2048 generalizes clearly better than N = 32 (which overfits)."""
    nrisk, gap = {}, {}
    for N in (32, 2048):
        for seed in (0, 1):
            cfg = TrialConfig.from_flat(
                {
                    "model.m": 64,
                    "data.L": 4,
                    "data.N": N,
                    "data.n_test": 512,
                    "train.T": 4000,
                    "train.c_eta": 1.0,
                    "train.evals_per_decade": 1,
                    "train.device": "cpu",
                    "seed.run": seed,
                }
            )
            metrics = train(cfg).metrics
            nrisk[N, seed], gap[N, seed] = metrics["test/nrisk"], metrics["gen/gap"]
    for seed in (0, 1):
        assert nrisk[32, seed] > nrisk[2048, seed], nrisk
        assert gap[32, seed] > gap[2048, seed], gap
    mean = {N: (nrisk[N, 0] + nrisk[N, 1]) / 2 for N in (32, 2048)}
    assert mean[32] - mean[2048] > 0.07, nrisk


@pytest.mark.parametrize(
    ("task", "phi"),
    [
        ("paper", "sin"),
        ("paper", "exp"),
        ("paper", "net:z^2"),
        ("long_range", "z^3"),
        ("lags", "z^2,sin"),
        ("parity", "z^1"),
    ],
)
def test_every_task_trains(task, phi):
    extra = {"data.lags": "1,2"} if task == "lags" else {}
    result = train(small(**{"data.task": task, "data.phi": phi, "train.T": 100, **extra}))
    assert result.status == "budget"
    assert all(math.isfinite(v) for k, v in result.metrics.items() if k != "perf/steps_per_s")
    assert result.metrics["test/risk"] < result.history[0]["test/risk"]


# ------------------------------------------------------------------------------------------ determinism


def test_same_config_same_metrics(device):
    cfg = small(device)
    a, b = train(cfg), train(cfg)
    assert a.status == b.status and len(a.history) == len(b.history)
    for ha, hb in zip(a.history, b.history, strict=True):
        if device == "cpu":
            assert same(without_perf(ha), without_perf(hb))
        else:  # GPU kernels may reorder sums
            assert without_perf(ha).keys() == without_perf(hb).keys()
            for k, v in without_perf(ha).items():
                assert hb[k] == pytest.approx(v, rel=1e-4, abs=1e-6, nan_ok=True), k


def test_run_seed_varies_init_not_teacher():
    t0, t1 = Trainer(small()), Trainer(small(**{"seed.run": 1}))
    assert not torch.equal(t0.net.W, t1.net.W)
    assert not torch.equal(t0.train_set.x, t1.train_set.x)
    assert torch.equal(t0.teacher.w, t1.teacher.w) and torch.equal(t0.teacher.b, t1.teacher.b)
    assert torch.equal(t0.test.x, t1.test.x) and torch.equal(t0.test.y, t1.test.y)
    t2 = Trainer(small(**{"seed.teacher": 1}))
    assert torch.equal(t0.net.W, t2.net.W)
    assert not torch.equal(t0.teacher.w, t2.teacher.w)


# ------------------------------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("online", [False, True])
def test_resume_from_a_checkpoint_is_bit_identical(tmp_path, online):
    cfg = small(**{"train.T": 600, "data.online": online})
    finals: dict[str, torch.Tensor] = {}
    saved: dict = {}

    def keep(tag: str):
        def on_eval(metrics: dict[str, float], trainer: Trainer) -> None:
            if tag == "full" and len(trainer.history) == 12:
                saved["state"] = copy.deepcopy(trainer.state_dict())
            finals[tag] = trainer.W_shift.clone()

        return on_eval

    full = train(cfg, keep("full"))
    assert 0 < saved["state"]["step"] < cfg.train.T
    torch.save(saved["state"], tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    shift_before = state["W_shift"].clone()
    resumed = train(cfg, keep("resumed"), state=state)
    assert resumed.status == full.status
    assert torch.equal(finals["resumed"], finals["full"])
    assert same(without_perf(resumed.metrics), without_perf(full.metrics))
    assert len(resumed.history) == len(full.history)
    for a, b in zip(resumed.history, full.history, strict=True):
        assert same(without_perf(a), without_perf(b))
    assert torch.equal(state["W_shift"], shift_before)  # the caller's checkpoint is not trained in place


# ------------------------------------------------------------------------------------------ outcomes


def test_an_error_in_on_eval_propagates():
    """The caller's on_eval (e.g. its tracking) is not the trainer's to catch."""

    def tracking_down(metrics: dict[str, float], trainer: Trainer) -> None:
        if metrics[STEP] >= 10:
            raise RuntimeError("tracking down")

    with pytest.raises(RuntimeError, match="tracking down"):
        train(small(**{"train.T": 50}), tracking_down)


def test_outcomes():
    plateau = train(
        small(
            **{"data.task": "long_range", "train.plateau_tol": 0.3, "train.min_steps": 100, "train.T": 100000}
        )
    )
    assert plateau.status == "completed" and plateau.metrics["step"] < 100000
    assert plateau.metrics["train/risk"] < 0.9 * plateau.metrics["train/baseline"]  # clear of a stall
    # a stall above the best constant predictor is not a plateau: it runs to its budget
    stall = train(small(**{"train.c_eta": 1e-9, "train.min_steps": 100, "train.T": 3000}))
    assert stall.status == "budget" and stall.metrics["step"] == 3000
    budget = train(small(**{"train.T": 50, "train.min_steps": 1000}))
    assert budget.status == "budget" and budget.metrics["step"] == 50
    for c_eta in (1e6, 1e30):  # blows up, or goes to inf/NaN
        diverged = train(small(**{"train.c_eta": c_eta}))
        assert diverged.status == "diverged", c_eta
        assert set(LOGGED) <= set(diverged.metrics)
    assert {plateau.status, budget.status, diverged.status} == set(OUTCOMES)


@pytest.mark.parametrize("task", ["paper", "long_range"])
@pytest.mark.parametrize("m", [32, 128])
def test_default_schedule_does_not_diverge_at_any_length(task, m):
    """The practical defaults over L = 4 .. 64 (short runs): the measured eta keeps every length stable,
    including those where the width is too small for the recurrence to stay O(1) at init."""
    for L in (4, 8, 16, 32, 64):
        cfg = small(**{"data.task": task, "model.m": m, "data.L": L, "train.T": 500, "train.probe": 4})
        result = train(cfg)
        assert result.status == "budget", (L, result.status)
        assert math.isfinite(result.metrics["test/risk"]) and math.isfinite(result.metrics["sched/eta"])


# ------------------------------------------------------------------------------------------ metrics


@pytest.mark.parametrize("online", [False, True])
def test_every_metric_in_every_evaluation(online):
    history: list[dict[str, float]] = []
    result = train(
        small(**{"data.online": online, "train.T": 100}), lambda metrics, _: history.append(metrics)
    )
    assert history == result.history and len(history) == len(eval_steps(100, 8))
    expected = set(LOGGED) - (set(OFFLINE_ONLY) if online else set())
    for metrics in history:
        assert expected <= set(metrics), expected - set(metrics)
        if online:
            assert not set(OFFLINE_ONLY) & set(metrics)
        assert metrics["test/excess_risk"] == pytest.approx(metrics["test/risk"] - metrics["opt"])
        if not online:
            assert metrics["gen/gap"] == pytest.approx(metrics["test/risk"] - metrics["train/risk"])
    assert math.isnan(history[0]["perf/steps_per_s"]) and history[-1]["perf/steps_per_s"] > 0


def test_risk_scales_opt_and_iterate_average():
    cfg = small(**{"data.noise": 0.3})
    trainer = Trainer(cfg)
    zero = concept.risk("l2", torch.zeros_like(trainer.test.y), trainer.test.y, trainer.mask).mean().item()
    result = trainer.run()
    assert 0 < result.metrics["opt"] < zero  # noise makes OPT > 0; F* beats the zero predictor
    h = result.history
    assert h[0]["test/nrisk"] == pytest.approx(h[0]["test/risk"] / zero, rel=1e-5)
    assert h[0]["test/risk_iter_avg"] == h[0]["test/risk"]
    area = 0.0  # (1/t) sum_{s<t} risk(W_s), trapezoid rule over the evaluation grid
    for prev, cur in zip(h, h[1:], strict=False):
        area += 0.5 * (prev["test/risk"] + cur["test/risk"]) * (cur["step"] - prev["step"])
        assert cur["test/risk_iter_avg"] == pytest.approx(area / cur["step"], rel=1e-9)
    assert train(small()).metrics["opt"] == 0.0  # no noise: F* is exact


def test_objective_in_chunks_of_bounded_memory(monkeypatch):
    """The evaluation's forward pass takes eval_chunk samples at a time: EVAL_BYTES of hidden states (at most
    4096 samples); the objective over chunks is the mean over all samples."""
    cfg = small(**{"data.n_test": 100})
    assert memory.eval_chunk(cfg) == 4096  # small shapes: the cap
    big = TrialConfig.from_flat({**cfg.to_flat(), "model.m": 2048, "data.L": 64})
    assert memory.eval_chunk(big) == 2**27 // (64 * 2048 * 4) == 256
    trainer = Trainer(cfg)
    trainer.W_shift.normal_(0, 0.01, generator=torch.Generator().manual_seed(0))
    whole = trainer.objective(trainer.test)
    row = cfg.data.L * cfg.model.m * 4
    monkeypatch.setattr(memory, "EVAL_BYTES", 7 * row)  # 100 samples in chunks of 7
    assert memory.eval_chunk(cfg) == 7
    assert trainer.objective(trainer.test) == pytest.approx(whole, rel=1e-6)


def test_eval_steps_are_geometric():
    steps = eval_steps(1000, 4)
    assert steps[0] == 0 and steps[-1] == 1000 and steps == sorted(set(steps))
    assert {1, 2, 3, 6, 10, 18, 32, 56, 100, 178, 316, 562} <= set(steps)
    assert eval_steps(1, 8) == [0, 1]


def test_cuda_unavailable_is_a_named_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ValueError, match=r"^train\.device"):
        Trainer(small(**{"train.device": "cuda"}))


def test_every_task_is_known():
    assert set(TASKS) == {"paper", "long_range", "lags", "parity"}
