"""rnnsgd.concept and rnnsgd.phi: Phi families, tokens, teachers, labels (eq. 3.1), losses, complexity."""

from __future__ import annotations

import math

import pytest
import torch

from rnnsgd import concept
from rnnsgd.config import LOSSES, TASKS
from rnnsgd.phi import complexity_eps, complexity_s, parse_phi

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = [
    "z^1",
    "z^2",
    "z^3",
    "poly:0:1:0.5",
    "poly:0:0:0:-2",
    "sin",
    "exp",
    "net:z^2",
    "net:sin",
    "net:exp",
    "net:poly:0:1:-1",
]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------- Phi


@pytest.mark.parametrize("spec", FAMILIES)
def test_phi_vanishes_at_zero(spec):
    phi = parse_phi(spec)
    assert phi(torch.zeros(3, dtype=torch.float64)).abs().max().item() == 0.0
    assert phi.net == spec.startswith("net:")


def test_phi_values():
    z = torch.tensor([-1.5, 0.5, 2.0], dtype=torch.float64)
    torch.testing.assert_close(parse_phi("z^3")(z), z**3)
    torch.testing.assert_close(parse_phi("poly:0:1:0.5")(z), z + 0.5 * z**2)
    torch.testing.assert_close(parse_phi("sin")(z), torch.sin(z))
    torch.testing.assert_close(parse_phi("exp")(z), torch.exp(z) - 1)
    torch.testing.assert_close(parse_phi("net:z^2")(z), z**2)


@pytest.mark.parametrize(
    "spec", ["z^0", "z^-1", "z^x", "poly:1:2", "poly:0:0", "poly:0:a", "poly:0:nan", "cos", "net:net:sin", ""]
)
def test_bad_phi_raises(spec):
    with pytest.raises(ValueError):
        parse_phi(spec)


# ---------------------------------------------------------------------------------------------- complexity


@pytest.mark.parametrize("C_star", [1e4, 1.0])
@pytest.mark.parametrize(("R", "eps"), [(math.sqrt(8), 0.1), (2.0, 0.01)])
def test_complexity_of_z2(C_star, R, eps):
    """z^2 has c_2 = 1 only: C_eps = (C* R)^2 (1 + log(1/eps)/2), C_s = C* 3^1.75 R^2."""
    phi = parse_phi("z^2")
    assert complexity_eps(phi, R, eps, C_star) == pytest.approx(
        (C_star * R) ** 2 * (1 + math.log(1 / eps) / 2)
    )
    assert complexity_s(phi, R, C_star) == pytest.approx(C_star * 3**1.75 * R**2)


@pytest.mark.parametrize(
    ("C_star", "R", "eps"), [(1.0, 2.0, 0.01), (1.0, math.sqrt(8), 0.1), (3.0, 1.0, 0.05)]
)
def test_complexity_of_sin(C_star, R, eps):
    """sin: c_i = +-1/i! at odd i. Written out as a truncated sum; its first half is sinh(C* R) exactly."""
    odd = range(1, 121, 2)
    first = sum((C_star * R) ** i / math.factorial(i) for i in odd)
    second = sum((math.sqrt(math.log(1 / eps) / i) * C_star * R) ** i / math.factorial(i) for i in odd)
    assert first == pytest.approx(math.sinh(C_star * R))
    phi = parse_phi("sin")
    assert complexity_eps(phi, R, eps, C_star) == pytest.approx(first + second)
    s = C_star * sum((i + 1) ** 1.75 * R**i / math.factorial(i) for i in odd)
    assert complexity_s(phi, R, C_star) == pytest.approx(s)


def test_complexity_shapes():
    """poly: C ~ L^{k/2}; exp: first half e^{C* R} - 1; C* = 1e4 overflows sin to inf, no error."""
    z3 = parse_phi("z^3")
    ratio = complexity_eps(z3, math.sqrt(16), 0.1) / complexity_eps(z3, math.sqrt(4), 0.1)
    assert ratio == pytest.approx(2**3)
    exp = parse_phi("exp")
    assert complexity_eps(exp, 1.0, 1.0, C_star=1.0) == pytest.approx(math.e - 1)  # log(1/eps) = 0
    assert complexity_eps(parse_phi("sin"), math.sqrt(8), 0.1) == math.inf
    poly = parse_phi("poly:0:1:-0.5")
    assert complexity_s(poly, 2.0, 1.0) == pytest.approx(2**1.75 * 2 + 0.5 * 3**1.75 * 4)


# ---------------------------------------------------------------------------------------------- tokens


def test_tokens_are_unit_with_a_fixed_half():
    x = concept.sample_tokens(100, 6, 4, gen(0))
    assert x.shape == (100, 6, 4) and x.dtype == torch.float64
    torch.testing.assert_close(x[:, 1:5].norm(dim=-1), torch.ones(100, 4, dtype=torch.float64))
    assert torch.equal(x[:, 1:5, 3], torch.full((100, 4), 0.5, dtype=torch.float64))
    assert torch.equal(x[:, 0], torch.zeros(100, 4, dtype=torch.float64))
    assert torch.equal(x[:, 5], torch.zeros(100, 4, dtype=torch.float64))
    assert torch.equal(x, concept.sample_tokens(100, 6, 4, gen(0)))


# ---------------------------------------------------------------------------------------------- teachers


def make(
    task: str,
    L: int = 7,
    d_x: int = 4,
    d: int = 2,
    p: int = 2,
    phi: str = "z^2",
    unit_var: bool = False,
    lags: tuple[int, ...] = (1, 3),
    seed: int = 0,
) -> concept.Teacher:
    phis = (parse_phi(phi),) * (len(lags) if task == "lags" else 1)
    return concept.make_teacher(task, L, d_x, d, p, phis, lags, unit_var, gen(seed))


@pytest.mark.parametrize("task", TASKS)
def test_labels_see_only_earlier_tokens(task):
    """The label at position j (tensor index t) must not change when tokens at positions >= j change."""
    L = 7
    teacher = make(task, L=L)
    x = concept.sample_tokens(64, L, 4, gen(1))
    fresh = concept.sample_tokens(64, L, 4, gen(2))
    y = teacher.labels(x)
    changed_later = False
    for t in range(L):
        x2 = x.clone()
        x2[:, t:] = fresh[:, t:]
        y2 = teacher.labels(x2)
        assert torch.equal(y2[:, : t + 1], y[:, : t + 1]), (
            f"{task}: label at index <= {t} saw a token at >= {t}"
        )
        changed_later |= not torch.equal(y2, y)
    assert changed_later, f"{task}: labels depend on no token at all"


@pytest.mark.parametrize("task", TASKS)
def test_labels_live_on_the_mask(task):
    L = 7
    teacher = make(task, L=L)
    y = teacher.labels(concept.sample_tokens(32, L, 4, gen(1)))
    assert y.shape == (32, L, 2)
    expected_mask = torch.zeros(L, dtype=torch.bool)
    expected_mask[L - 1 if task == "long_range" else 2 :] = True
    assert torch.equal(teacher.mask, expected_mask)
    assert torch.equal(y[:, ~teacher.mask], torch.zeros_like(y[:, ~teacher.mask]))
    assert (y[:, teacher.mask].abs().sum(dim=0) > 0).all()
    if task == "parity":  # a product of signs
        assert set(y[:, teacher.mask].unique().tolist()) == {-1.0, 1.0}


def test_paper_labels_match_eq_3_1_written_out():
    """F*_{j,s} = sum_{i=2}^{j-1} sum_r b*_{i->j,r,s} Phi(<w*_{i->j,r,s}, x*_i>), one sample at a time."""
    L, p, d = 6, 2, 2
    teacher = make("paper", L=L, p=p, d=d, phi="poly:0:1:0.5")
    phi = parse_phi("poly:0:1:0.5")
    x = concept.sample_tokens(3, L, 4, gen(1))
    y = teacher.labels(x)
    for n in range(3):
        for j in range(3, L + 1):  # positions, 1-based
            for s in range(d):
                want = 0.0
                for i in range(2, j):
                    for r in range(p):
                        w, b = teacher.w[j - 1, i - 1, r, s], teacher.b[j - 1, i - 1, r, s]
                        want += b.item() * phi(torch.dot(w, x[n, i - 1])).item()
                assert y[n, j - 1, s].item() == pytest.approx(want, abs=1e-12)


def test_teacher_weights():
    teacher = make("paper", L=6, p=3, d=2)
    w = teacher.w[2:, 1:5]  # pairs that exist
    torch.testing.assert_close(w.norm(dim=-1), torch.ones(w.shape[:-1], dtype=torch.float64))
    assert torch.equal(
        teacher.w[..., -1], torch.zeros(teacher.w.shape[:-1], dtype=torch.float64)
    )  # no bias weight
    b = teacher.b[2:, 1:][torch.ones(4, 5, dtype=torch.bool).tril()]
    assert set(b.unique().tolist()) == {-1.0, 1.0}
    net = make("paper", L=6, phi="net:sin")
    assert net.b.abs().max() <= 1 and len(net.b.unique()) > 10  # Example 3.5: entries in [-1, 1]


def test_long_range_and_lags_read_the_right_token():
    L = 8
    x = concept.sample_tokens(16, L, 4, gen(1))
    fresh = concept.sample_tokens(16, L, 4, gen(2))
    long_range = make("long_range", L=L)
    x2 = x.clone()
    x2[:, 2:] = fresh[:, 2:]  # every token but x*_2
    assert torch.equal(long_range.labels(x2), long_range.labels(x))
    lags = make("lags", L=L, lags=(2,))
    y = lags.labels(x)
    for t in range(3, L):  # y at index t reads the token at t - 2 only
        x3 = x.clone()
        x3[:, [k for k in range(1, L - 1) if k != t - 2]] = fresh[
            :, [k for k in range(1, L - 1) if k != t - 2]
        ]
        assert torch.equal(lags.labels(x3)[:, t], y[:, t])


def test_unit_variance_and_teacher_seed():
    teacher = make("paper", L=8, unit_var=True)
    y = teacher.labels(concept.sample_tokens(4096, 8, 4, gen(7)))
    std = y[:, teacher.mask].std(dim=0)
    assert ((std - 1).abs() < 0.1).all(), std
    assert torch.equal(make("paper", seed=3).w, make("paper", seed=3).w)
    assert not torch.equal(make("paper", seed=3).w, make("paper", seed=4).w)


# ------------------------------------------------------------------------------------------------ losses


@pytest.mark.parametrize("name", LOSSES)
def test_loss_gradient_matches_autograd(name):
    gen_ = gen(3)
    z = (1.5 * torch.randn(5, 4, 3, generator=gen_, dtype=torch.float64)).requires_grad_(True)
    y = torch.randn(5, 4, 3, generator=gen_, dtype=torch.float64)
    G, dG = concept.loss_and_grad(name, z, y)
    assert G.shape == (5, 4) and dG.shape == (5, 4, 3)
    (expected,) = torch.autograd.grad(G.sum(), z)
    torch.testing.assert_close(dG, expected)
    # G(y, y) = 0 and G >= 0
    assert concept.loss_and_grad(name, y, y)[0].abs().max().item() < 1e-12
    assert (G >= 0).all()
    if name != "mse":  # 1-Lipschitz in z (l1 and huber per coordinate, i.e. in the l1 norm)
        dual = dG.abs().amax(dim=-1) if name in ("l1", "huber") else dG.norm(dim=-1)
        assert dual.max().item() <= 1 + 1e-12


def test_loss_values():
    z = torch.tensor([[3.0, 0.5]], dtype=torch.float64)
    y = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    assert concept.loss_and_grad("l2", z, y)[0].item() == pytest.approx(math.hypot(3, 0.5))
    assert concept.loss_and_grad("l1", z, y)[0].item() == pytest.approx(3.5)
    assert concept.loss_and_grad("huber", z, y)[0].item() == pytest.approx(2.5 + 0.125)
    assert concept.loss_and_grad("mse", z, y)[0].item() == pytest.approx((9 + 0.25) / 2)
    with pytest.raises(ValueError):
        concept.loss_and_grad("hinge", z, y)
    mask = torch.tensor([False, True, True])
    zz, yy = torch.ones(2, 3, 1, dtype=torch.float64), torch.zeros(2, 3, 1, dtype=torch.float64)
    assert torch.equal(concept.risk("l2", zz, yy, mask), torch.full((2,), 2.0, dtype=torch.float64))


@pytest.mark.parametrize("loss", LOSSES)
def test_constant_baseline_known_answers(loss):
    """The best constant per position on hand-made labels: known minimizers, and no constant does better."""
    mask = torch.tensor([False, True, True])
    if loss == "xent":  # soft labels over d = 2 classes: softmax(c) = the mean of softmax(y)
        y = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [2.0, 0.0]], [[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]])
        c = concept.constant_baseline(loss, y, mask)
        torch.testing.assert_close(torch.softmax(c[1:], -1), torch.softmax(y[:, 1:].double(), -1).mean(0))
    else:
        # position 1: labels 0, 1, 5 (median 1, mean 2); position 2: 0, 0, 0.5 (d = 1)
        y = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 5.0, 0.5]]).unsqueeze(-1)
        c = concept.constant_baseline(loss, y, mask)
        expected = {"mse": [0, 2, 1 / 6], "l1": [0, 1, 0], "l2": [0, 1, 0], "huber": [0, 1, 1 / 6]}[loss]
        torch.testing.assert_close(c[:, 0], torch.tensor(expected, dtype=torch.float64), atol=1e-9, rtol=0)
    best = concept.risk(loss, c.expand(y.shape).double(), y.double(), mask).mean()
    for shift in (1e-3, -1e-3):
        worse = concept.risk(loss, (c + shift).expand(y.shape).double(), y.double(), mask).mean()
        assert worse >= best - 1e-12


def test_geometric_median_of_an_equilateral_triangle_is_its_centre():
    """l2 with d = 2 is the geometric median (Weiszfeld): for an equilateral triangle, its centre."""
    corners = torch.tensor([[0.0, 1.0], [math.sqrt(3) / 2, -0.5], [-math.sqrt(3) / 2, -0.5]]) + 3.0
    y = torch.zeros(3, 3, 2)
    y[:, 2] = corners
    c = concept.constant_baseline("l2", y, torch.tensor([False, False, True]))
    torch.testing.assert_close(c[2], torch.tensor([3.0, 3.0], dtype=torch.float64), atol=1e-6, rtol=0)
