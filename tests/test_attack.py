"""PGD attack: finds reachable counterexamples, stays in the box, reports honest margins, is
deterministic per seed, and never claims success where the bounds prove there is none."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import torch

from gpuopt.attacks import AttackConfig, BoxGeometry, pgd_attack
from gpuopt.bounds import ibp, margin_lower_bound
from gpuopt.errors import InvalidInputError
from gpuopt.network import Dense, Network, ReLU
from gpuopt.specs import OutputSpec, robustness

from helpers import numpy_forward, random_dense_network

FAST = AttackConfig(restarts=16, steps=40, seed=0)


def _easy():
    """``y = (relu(x0) + relu(x1), relu(x0) - relu(x1))`` on ``[-1, 2]^2``; unsafe: ``y1 >= 1.5``."""
    net = Network([Dense(np.eye(2), np.zeros(2)), ReLU(), Dense([[1.0, 1.0], [1.0, -1.0]], [0.0, 0.0])], (2,))
    lo, hi = np.array([-1.0, -1.0]), np.array([2.0, 2.0])
    spec = OutputSpec([(np.array([[0.0, -1.0]]), np.array([-1.5]))], 2)  # -y1 <= -1.5
    return net, lo, hi, spec


def _margin_of(net, x, spec, dtype):
    y = net.forward(x.to(dtype))
    return spec.margin(y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pgd_finds_an_easy_counterexample_inside_the_box(dtype):
    net, lo, hi, spec = _easy()
    A, b = spec.padded()
    cand = pgd_attack(net, lo[None], hi[None], A, b, config=FAST, dtype=dtype)
    assert cand.x.dtype == dtype and cand.margin.dtype == dtype
    assert cand.x.shape == (1, 2) and cand.margin.shape == (1,)
    assert bool(cand.success[0])
    lo_t, hi_t = torch.as_tensor(lo, dtype=dtype), torch.as_tensor(hi, dtype=dtype)
    assert torch.all(cand.x >= lo_t) and torch.all(cand.x <= hi_t)
    torch.testing.assert_close(cand.margin, _margin_of(net, cand.x, spec, dtype))
    assert float(cand.margin[0]) <= 0
    # the float64 re-check agrees (the box ends are float32 numbers, so no clamping is needed)
    y, _ = numpy_forward(net, cand.x.double().numpy())
    assert spec.margin64(y)[0] <= 0
    # patterns are those of the returned point
    _, pat = net.forward(cand.x, return_pattern=True)
    assert len(cand.patterns) == 1 and torch.equal(cand.patterns[0], pat[0])


@pytest.mark.parametrize("seed", range(5))
def test_pgd_batched_items_stay_in_their_boxes_and_margins_are_recomputable(seed):
    rng = np.random.default_rng(seed)
    net = random_dense_network(rng, 3, [8, 8], 3)
    centres = rng.normal(size=(4, 3))
    eps = rng.uniform(0.01, 1.0, size=(4, 1))
    lo, hi = centres - eps, centres + eps
    label = int(np.argmax(net.forward64(centres[:1])[0]))
    spec = robustness(label, 3)
    A, b = spec.padded()
    cand = pgd_attack(net, lo, hi, A, b, config=AttackConfig(restarts=8, steps=20, seed=seed))
    lo32, hi32 = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)
    assert torch.all(cand.x >= lo32) and torch.all(cand.x <= hi32)
    torch.testing.assert_close(cand.margin, _margin_of(net, cand.x, spec, torch.float32))
    assert torch.equal(cand.success, cand.margin <= 0)
    # float64 margin of the returned point is close to the float32 one
    m64 = spec.margin64(net.forward64(cand.x.double().numpy()))
    np.testing.assert_allclose(cand.margin.double().numpy(), m64, rtol=1e-4, atol=1e-5)
    # never worse than the box centre (restart 0 starts there)
    m_centre = spec.margin(net.forward(torch.as_tensor((lo + hi) / 2, dtype=torch.float32)))
    assert torch.all(cand.margin <= m_centre + 1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pgd_never_succeeds_where_ibp_proves_safety(dtype):
    """``y = relu(x0) + relu(-x0) + 1 >= 1`` on ``[-3, 3]``: ``y <= 0.5`` is unreachable."""
    net = Network([Dense([[1.0], [-1.0]], [0.0, 0.0]), ReLU(), Dense([[1.0, 1.0]], [1.0])], (1,))
    lo, hi = np.array([[-3.0]]), np.array([[3.0]])
    spec = OutputSpec([(np.array([[1.0]]), np.array([0.5]))], 1)
    A, b = spec.padded()
    bounds = ibp(net, torch.as_tensor(lo), torch.as_tensor(hi))
    assert float(margin_lower_bound(*bounds.output, A, b)[0]) > 0  # proven
    cand = pgd_attack(net, lo, hi, A, b, config=FAST, dtype=dtype)
    assert not bool(cand.success[0])
    assert float(cand.margin[0]) == pytest.approx(0.5, abs=1e-6)  # the minimum, at x = 0
    assert cand.steps == FAST.steps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pgd_same_seed_same_result(dtype):
    rng = np.random.default_rng(11)
    net = random_dense_network(rng, 4, [10, 10], 3)
    lo = rng.normal(size=(2, 4)) - 0.5
    hi = lo + 1.0
    A, b = robustness(0, 3).padded()
    cfg = AttackConfig(restarts=8, steps=15, seed=123)
    r1 = pgd_attack(net, lo, hi, A, b, config=cfg, dtype=dtype)
    r2 = pgd_attack(net, lo, hi, A, b, config=cfg, dtype=dtype)
    assert torch.equal(r1.x, r2.x) and torch.equal(r1.margin, r2.margin)
    assert torch.equal(r1.success, r2.success) and r1.steps == r2.steps


def test_pgd_zero_steps_and_past_deadline_return_best_start():
    net, lo, hi, spec = _easy()
    A, b = spec.padded()
    for kwargs in (dict(config=AttackConfig(restarts=1, steps=0)),
                   dict(config=AttackConfig(restarts=1, steps=50), deadline=time.monotonic() - 1.0)):
        cand = pgd_attack(net, lo[None], hi[None], A, b, **kwargs)
        assert cand.steps == 0
        torch.testing.assert_close(cand.x, torch.tensor([[0.5, 0.5]]))  # restart 0 is the centre


def test_box_geometry_random_start_and_projection():
    lo = torch.tensor([[0.0, -2.0], [1.0, 1.0]])
    hi = torch.tensor([[1.0, 2.0], [1.0, 3.0]])
    geom = BoxGeometry(lo, hi)
    x = geom.random_start(5, [torch.Generator().manual_seed(i) for i in range(2)])
    assert x.shape == (2, 5, 2)
    assert torch.all(geom.contains(x))
    torch.testing.assert_close(geom.centre(), (lo + hi) / 2)
    far = torch.full((2, 5, 2), 10.0)
    assert torch.all(geom.contains(geom.project(far)))
    assert torch.equal(geom.project(far), hi[:, None].expand(2, 5, 2))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(restarts=0), "`restarts` must be >= 1, got 0"),
        (dict(steps=-1), "`steps` must be >= 0, got -1"),
        (dict(step_size=0.0), "`step_size` must be None or a number in (0, 4], got 0.0"),
        (dict(step_size=4.5), "`step_size` must be None or a number in (0, 4], got 4.5"),
        (dict(schedule="adam"), "`schedule` must be one of apgd, cosine, got 'adam'"),
        (dict(momentum=0), "`momentum` must be a number in (0, 1], got 0"),
        (dict(corners=1.5), "`corners` must be a number in [0, 1], got 1.5"),
        (dict(rounds=0), "`rounds` must be None or an integer >= 1, got 0"),
        (dict(patience=True), "`patience` must be None or an integer >= 1, got True"),
        (dict(keep=0), "`keep` must be >= 1, got 0"),
        (dict(restarts=2.5), "`restarts` must be an integer, got 2.5"),
    ],
)
def test_attack_config_validation(kwargs, message):
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        AttackConfig(**kwargs)


def test_pgd_attack_shape_validation():
    net, lo, hi, spec = _easy()
    A, b = spec.padded()
    with pytest.raises(InvalidInputError, match=re.escape("`lower` and `upper` must have the same shape, got (2, 2) and (1, 2)")):
        pgd_attack(net, np.stack([lo, lo]), hi[None], A, b, config=FAST)
    A3 = torch.zeros((1, 1, 3), dtype=torch.float64)
    with pytest.raises(InvalidInputError, match=re.escape("spec `A` of shape (1, 1, 1, 3) and `b` of shape (1, 1, 1) do not match batch 1 and 2 outputs")):
        pgd_attack(net, lo[None], hi[None], A3, b, config=FAST)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_attack_on_cuda_matches_cpu_semantics():
    """The same attack on CUDA returns points in the box whose margins re-check on the CPU."""
    from gpuopt.specs import robustness

    rng = np.random.default_rng(7)
    net = random_dense_network(rng, 6, [32, 32], 4)
    lo = torch.tensor(rng.uniform(-1, 0, (3, 6)))
    hi = lo + 1.0
    A, b = robustness(0, 4).padded()
    cand = pgd_attack(net, lo, hi, A, b, config=AttackConfig(restarts=256, steps=20), device="cuda")
    assert cand.x.device.type == "cuda"
    x = cand.x.double().cpu()
    assert bool(((x >= lo.float().double()) & (x <= hi.float().double())).all())
    y = net.forward64(x.numpy())
    np.testing.assert_allclose(robustness(0, 4).margin64(y), cand.margin.double().cpu().numpy(), atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_starts_are_drawn_on_the_device_per_item_and_reproducible():
    """On a GPU each item's generator lives there (no host draw and copy); an item's starts do
    not depend on the other items of its batch, and the same seed draws the same starts."""
    from gpuopt.attacks.geometry import BoxGeometry
    from gpuopt.attacks.pgd import generators

    lo = torch.zeros((3, 5), device="cuda")
    geom = BoxGeometry(lo, lo + 1)
    gens = generators(4, [0, 1, 2], "cuda")
    assert all(g.device.type == "cuda" for g in gens)
    x = geom.random_start(7, gens)
    assert x.device.type == "cuda" and x.shape == (3, 7, 5)
    again = geom.random_start(7, generators(4, [0, 1, 2], "cuda"))
    alone = geom.select(torch.tensor([1], device="cuda")).random_start(7, generators(4, [1], "cuda"))
    assert torch.equal(x, again) and torch.equal(x[1:2], alone)
    assert not torch.equal(x[0], x[1])


@pytest.mark.parametrize("seed", range(3))
def test_lagged_stop_check_keeps_results_valid(seed, monkeypatch):
    """The stop check a GPU uses (flags read one check late, without waiting), forced on the CPU:
    items still stop once falsified, every returned point is in its box, its margin recomputes,
    and the lag costs at most STOP_CHECK_EVERY steps over the immediate check."""
    import gpuopt.attacks.pgd as pgd_module

    rng = np.random.default_rng(seed)
    net = random_dense_network(rng, 3, [8, 8], 3)
    centres = rng.normal(size=(5, 3))
    lo, hi = centres - 1.0, centres + 1.0
    label = int(np.argmax(net.forward64(centres[:1])[0]))
    spec = robustness(label, 3)
    A, b = spec.padded()
    cfg = AttackConfig(restarts=8, steps=40, seed=seed, rounds=1)
    now = pgd_attack(net, lo, hi, A, b, config=cfg)
    monkeypatch.setattr(pgd_module, "LAGGED_STOP_CHECK", True)
    late = pgd_attack(net, lo, hi, A, b, config=cfg)
    lo32, hi32 = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)
    assert torch.all(late.x >= lo32) and torch.all(late.x <= hi32)
    torch.testing.assert_close(late.margin, _margin_of(net, late.x, spec, torch.float32))
    assert torch.equal(late.success, now.success)
    assert now.evaluations <= late.evaluations <= now.evaluations + 5 * 8 * pgd_module.STOP_CHECK_EVERY


def test_a_nan_margin_is_never_the_best():
    """A restart that evaluates to NaN somewhere keeps its best finite margin and the point that
    reached it (adversarial review: a NaN used to stick in the best margin while the best point
    moved on)."""
    import math

    from gpuopt.attacks.pgd import descend

    def objective(x, items):
        m = x[..., 0] + 0.0 * x[..., 1]
        return torch.where(x[..., 0] < -0.9, torch.full_like(m, math.nan), m)

    geom = BoxGeometry(torch.tensor([[-1.0, -1.0]]), torch.tensor([[1.0, 1.0]]))
    x0 = torch.tensor([[[0.5, 0.0], [0.95, 0.0]]])
    res = descend(objective, geom, x0, AttackConfig(restarts=2, steps=10, schedule="cosine"),
                  target=torch.tensor([-math.inf]))
    assert torch.isfinite(res.margin).all()
    assert torch.equal(res.margin, objective(res.x, torch.arange(1)))


@pytest.mark.parametrize("bad", ["A", "b"])
def test_pgd_attack_refuses_nan_in_the_spec(bad):
    rng = np.random.default_rng(0)
    net = random_dense_network(rng, 3, [4], 3)
    A, b = robustness(0, 3).padded()
    A, b = torch.as_tensor(A, dtype=torch.float64).clone(), torch.as_tensor(b, dtype=torch.float64).clone()
    (A if bad == "A" else b).view(-1)[0] = float("nan")
    with pytest.raises(InvalidInputError, match="spec `A` must be finite and `b` free of NaN"):
        pgd_attack(net, np.zeros(3), np.ones(3), A, b)
