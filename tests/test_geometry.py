"""Perturbation geometries: every projected point lies in the set, the L1 projection is the
Euclidean one (against an LP-free reference), steps have the promised length, and random starts
are feasible and reproducible."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpuopt.attacks.geometry import BoxGeometry, L1Geometry, L2Geometry, _project_l1
from gpuopt.attacks.pgd import checkpoints



def _ball(kind, rng, batch=3, n=7, dtype=torch.float64, clip=(0.0, 1.0)):
    c = torch.tensor(rng.uniform(0.2, 0.8, (batch, n)), dtype=dtype)
    eps = torch.tensor(rng.uniform(0.05, 1.5, batch), dtype=dtype)
    lo = torch.full_like(c, clip[0])
    hi = torch.full_like(c, clip[1])
    return {"l2": L2Geometry, "l1": L1Geometry}[kind](c, eps, lo, hi)


def _gens(batch, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(batch)]


def _l1_projection_reference(v: np.ndarray, eps: float) -> np.ndarray:
    """Euclidean projection onto the L1 ball by bisection on the threshold (float64)."""
    if np.abs(v).sum() <= eps:
        return v.copy()
    lo, hi = 0.0, np.abs(v).max()
    for _ in range(200):
        mid = (lo + hi) / 2
        if np.maximum(np.abs(v) - mid, 0).sum() > eps:
            lo = mid
        else:
            hi = mid
    return np.sign(v) * np.maximum(np.abs(v) - hi, 0)


@pytest.mark.parametrize("seed", range(6))
def test_l1_projection_matches_bisection_reference(seed):
    rng = np.random.default_rng(seed)
    d = torch.tensor(rng.normal(size=(2, 5, 9)) * rng.uniform(0.1, 3))
    eps = torch.tensor(rng.uniform(0.1, 2.0, 2))
    p = _project_l1(d, eps)
    for b in range(2):
        for r in range(5):
            ref = _l1_projection_reference(d[b, r].numpy(), float(eps[b]))
            np.testing.assert_allclose(p[b, r].numpy(), ref, atol=1e-9)


def test_l1_projection_keeps_inside_points_and_handles_ties():
    d = torch.tensor([[[0.1, -0.2, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]])
    p = _project_l1(d, torch.tensor([0.5]))
    assert torch.equal(p[0, 0], d[0, 0])
    torch.testing.assert_close(p[0, 1], torch.full((3,), 0.5 / 3))
    assert torch.equal(p[0, 2], d[0, 2])


@pytest.mark.parametrize("kind", ["l2", "l1"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ball_projection_and_starts_are_inside(kind, dtype):
    rng = np.random.default_rng(1)
    g = _ball(kind, rng, dtype=dtype)
    far = torch.tensor(rng.normal(size=(3, 50, 7)) * 5, dtype=dtype)
    assert torch.all(g.contains(g.project(far)))
    x = g.random_start(50, _gens(3))
    assert x.shape == (3, 50, 7) and torch.all(g.contains(x))
    assert torch.equal(x, g.random_start(50, _gens(3)))  # same generators, same starts
    assert not torch.equal(x, g.random_start(50, _gens(3, seed=10)))
    # a point already inside is left alone by the projection (clamp and ball inactive)
    inside = g.c[:, None] + 0.0 * far
    assert torch.equal(g.project(inside), inside)


def test_l2_projection_is_the_scaling_when_the_clamp_is_inactive():
    g = L2Geometry(torch.zeros(1, 3, dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64),
                   torch.full((1, 3), -10.0, dtype=torch.float64), torch.full((1, 3), 10.0, dtype=torch.float64))
    p = g.project(torch.tensor([[[3.0, 4.0, 0.0]]], dtype=torch.float64))
    torch.testing.assert_close(p, torch.tensor([[[1.2, 1.6, 0.0]]], dtype=torch.float64), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["linf", "l2", "l1"])
def test_descent_steps_have_the_promised_length_and_direction(kind):
    rng = np.random.default_rng(2)
    batch, n = 2, 40
    if kind == "linf":
        lo = torch.tensor(rng.uniform(-1, 0, (batch, n)))
        g = BoxGeometry(lo, lo + torch.tensor(rng.uniform(0.1, 1, (batch, n))))
    else:
        g = _ball(kind, rng, batch=batch, n=n, clip=(-10.0, 10.0))
    x = g.project(g.centre()[:, None].expand(batch, 4, n).clone())
    grad = torch.tensor(rng.normal(size=(batch, 4, n)))
    t = torch.full((batch, 4), 0.5, dtype=torch.float64)
    d = g.descent(x, grad, t)
    assert torch.all((d * grad).sum(-1) < 0)  # a descent direction
    if kind == "linf":
        torch.testing.assert_close(d.abs(), 0.5 * g.radius[:, None].expand_as(d))
    elif kind == "l2":
        torch.testing.assert_close(d.norm(dim=-1), 0.5 * g.eps[:, None].expand(batch, 4))
    else:
        torch.testing.assert_close(d.abs().sum(-1), 0.5 * g.eps[:, None].expand(batch, 4))
        assert int((d != 0).sum(-1).max()) == int(np.ceil(g.sparsity * n))


def test_l1_step_skips_coordinates_stuck_at_the_box():
    c = torch.tensor([[0.0, 0.5]], dtype=torch.float64)
    g = L1Geometry(c, torch.tensor([1.0], dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64),
                   torch.ones(1, 2, dtype=torch.float64), sparsity=0.5)
    # coordinate 0 sits at its lower bound and the descent would push it lower: it must not be picked
    d = g.descent(c[:, None], torch.tensor([[[10.0, 1.0]]], dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64))
    torch.testing.assert_close(d, torch.tensor([[[0.0, -1.0]]], dtype=torch.float64))


def test_box_corners_are_vertices():
    lo = torch.tensor([[0.0, -2.0, 5.0]])
    hi = torch.tensor([[1.0, 2.0, 5.0]])
    v = BoxGeometry(lo, hi).corners(20, _gens(1))
    assert torch.all((v == lo[:, None]) | (v == hi[:, None]))


def test_apgd_checkpoints():
    # p_j: 0.22, 0.41 (0.22 + 0.19), 0.57 (0.41 + 0.16), 0.70, 0.80, 0.87, 0.93, 0.99, 1.05
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(0) == []
    assert checkpoints(1) == [1]
