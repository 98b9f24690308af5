"""Interval bounds of networks with smooth layers (:mod:`gpuopt.bounds.interval`): sampled and
corner outputs lie inside; the (log-)softmax bounds contain the exact extremes over the logit box
(60-digit arithmetic) and are within rounding of them, overflowing exponents included; on
ReLU networks they agree with IBP; and ``verify`` proves by them what holds by a clear margin,
never what a sampled point violates."""

from __future__ import annotations

from decimal import Decimal, getcontext

import numpy as np
import pytest
import torch

from gpuopt import Box, OutputSpec, Status, verify
from gpuopt.bounds import ibp
from gpuopt.bounds.interval import interval_bounds
from gpuopt.network import (Add, AvgPool2d, Concat, Conv2d, Dense, Flatten, LogSoftmax, MaxPool2d, Network, ReLU,
                            Sigmoid, Softmax, Tanh)

from helpers import box_points, random_dense_network


def _smooth_chain(rng, n_in=3):
    return Network([Dense(rng.normal(size=(7, n_in)) * 2, rng.normal(size=7)), Tanh(),
                    Dense(rng.normal(size=(6, 7)), rng.normal(size=6)), Sigmoid(),
                    Dense(rng.normal(size=(5, 6)) * 3, rng.normal(size=5)), ReLU(),
                    Dense(rng.normal(size=(4, 5)), rng.normal(size=4)), Softmax()], (n_in,))


def _smooth_graph(rng):
    """A conv net with max- and average-pooling, a residual Add and a Concat, Tanh, LogSoftmax."""
    conv = Conv2d(rng.normal(size=(2, 1, 2, 2)), rng.normal(size=2), (1, 1), (0, 0, 0, 0))
    layers = [conv, Tanh(), MaxPool2d((2, 2), (1, 1)), AvgPool2d((2, 2), (1, 1)), Flatten(),
              Dense(rng.normal(size=(8, 8)), rng.normal(size=8)), Sigmoid(), Add(), Concat(0),
              Dense(rng.normal(size=(3, 16)) * 2, rng.normal(size=3)), LogSoftmax()]
    inputs = [(-1,), (0,), (1,), (2,), (3,), (4,), (5,), (4, 6), (7, 4), (8,), (9,)]
    return Network(layers, (1, 5, 5), inputs=inputs)


@pytest.mark.parametrize("kind", ["chain", "graph"])
def test_samples_and_corners_lie_inside(kind):
    rng = np.random.default_rng(0 if kind == "chain" else 1)
    for trial in range(6):
        net = _smooth_chain(rng) if kind == "chain" else _smooth_graph(rng)
        n = net.input_size
        centre = rng.normal(size=n)
        rad = rng.uniform(0.01, 1.0) * np.ones(n)
        lo, hi = interval_bounds(net, torch.tensor((centre - rad)[None]), torch.tensor((centre + rad)[None]))
        lo, hi = lo[0].numpy(), hi[0].numpy()
        x = box_points(rng, centre - rad, centre + rad, 3000, max_corner_dim=8, n_random_vertices=200)
        y = net.forward64(x)
        slack = 1e-13 * (1 + np.abs(y))
        assert np.all(y >= lo - slack) and np.all(y <= hi + slack), (trial, (lo - y).max(), (y - hi).max())
        assert np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))


def _exact_softmax_extremes(l, u, log):
    """``(lower, upper)`` of (log-)softmax over the logit box ``[l, u]`` in 60-digit arithmetic:
    output ``i`` is lowest at ``z_i = l_i``, ``z_j = u_j`` and highest the other way round."""
    getcontext().prec = 60
    L, U = [Decimal(float(v)) for v in l], [Decimal(float(v)) for v in u]
    lows, highs = [], []
    for i in range(len(L)):
        lo_den = L[i].exp() + sum(U[j].exp() for j in range(len(L)) if j != i)
        hi_den = U[i].exp() + sum(L[j].exp() for j in range(len(L)) if j != i)
        if log:
            lows.append(L[i] - lo_den.ln())
            highs.append(U[i] - hi_den.ln())
        else:
            lows.append(L[i].exp() / lo_den)
            highs.append(U[i].exp() / hi_den)
    return lows, highs


@pytest.mark.parametrize("log", [False, True])
def test_softmax_bounds_contain_the_exact_extremes_within_rounding(log):
    rng = np.random.default_rng(2)
    layer = LogSoftmax() if log else Softmax()
    for scale in (1.0, 30.0, 400.0, 900.0):  # 900: exponents beyond float64's range
        for _ in range(5):
            n = int(rng.integers(1, 6))
            a, b = rng.normal(size=n) * scale, rng.normal(size=n) * scale * 0.1
            l, u = np.minimum(a, a + b), np.maximum(a, a + b)
            lo, hi = interval_bounds(Network([layer], (n,)), torch.tensor(l[None]), torch.tensor(u[None]))
            ex_lo, ex_hi = _exact_softmax_extremes(l, u, log)
            for i in range(n):
                assert Decimal(float(lo[0, i])) <= ex_lo[i] and Decimal(float(hi[0, i])) >= ex_hi[i], (scale, i)
                for got, want in ((lo[0, i], ex_lo[i]), (hi[0, i], ex_hi[i])):
                    tol = 1e-9 * (1 + abs(float(want))) + (1e-299 if not log else 0.0)
                    assert abs(float(got) - float(want)) <= tol, (scale, i, float(got), float(want))


def test_relu_networks_agree_with_ibp():
    rng = np.random.default_rng(3)
    for _ in range(5):
        net = random_dense_network(rng, 4, [8, 6], 3)
        c = rng.normal(size=4)
        lo_x, hi_x = torch.tensor((c - 0.5)[None]), torch.tensor((c + 0.5)[None])
        lo, hi = interval_bounds(net, lo_x, hi_x)
        ref = ibp(net, lo_x, hi_x).output
        assert torch.allclose(lo, ref[0], rtol=1e-9, atol=1e-12) and torch.allclose(hi, ref[1], rtol=1e-9, atol=1e-12)


def test_verify_proves_by_interval_bounds_only_what_holds():
    """A Sigmoid/Tanh network whose spec holds by a clear margin on a small box is ``unsat`` by
    the interval bounds; a threshold just below the sampled maximum of an output is never
    ``unsat``."""
    rng = np.random.default_rng(4)
    proven = 0
    for seed in range(6):
        net = _smooth_chain(np.random.default_rng(100 + seed))
        net = Network(list(net.layers[:-1]), (3,))  # the logits: no final softmax
        centre = rng.normal(size=3)
        for rad, below in ((0.01, False), (0.5, True)):
            lo_x, hi_x = centre - rad, centre + rad
            x = box_points(rng, lo_x, hi_x, 4000)
            top = float(net.forward64(x)[:, 0].max())
            if below:  # unsafe: y_0 >= top - 1e-3, which a sampled point reaches
                spec = OutputSpec([(np.array([[-1.0, 0, 0, 0]]), np.array([-(top - 1e-3)]))], 4)
                v = verify(net, Box(lo_x, hi_x), spec, timeout=10)
                assert v.status is not Status.UNSAT, seed
            else:  # unsafe: y_0 >= top + 0.5 on a box of radius 0.01
                spec = OutputSpec([(np.array([[-1.0, 0, 0, 0]]), np.array([-(top + 0.5)]))], 4)
                v = verify(net, Box(lo_x, hi_x), spec, timeout=10)
                assert v.status is not Status.SAT, seed
                if v.status is Status.UNSAT:
                    assert v.decided_by in ("interval", "crown")
                    proven += 1
    assert proven >= 5


def test_interval_splitting_decides_smooth_networks_with_few_inputs():
    """Two inputs, Tanh and Sigmoid layers: ``y_0 >= t`` with ``t`` just below the largest value on
    a dense grid is never proven and is falsified; with ``t`` clearly above it, input splitting on
    interval bounds proves it, where the bounds of the whole box do not."""
    proven = falsified = 0
    for seed in range(6):
        rng = np.random.default_rng(200 + seed)
        net = Network([Dense(rng.normal(size=(8, 2)) * 2, rng.normal(size=8)), Tanh(),
                       Dense(rng.normal(size=(6, 8)), rng.normal(size=6)), Sigmoid(),
                       Dense(rng.normal(size=(2, 6)) * 2, rng.normal(size=2))], (2,))
        lo, hi = -np.ones(2), np.ones(2)
        g = np.linspace(-1, 1, 401)
        grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
        top = float(net.forward64(grid)[:, 0].max())
        whole = interval_bounds(net, torch.tensor(lo[None]), torch.tensor(hi[None]))[1][0, 0]
        for t in (top - 1e-3, top + 0.05):
            spec = OutputSpec([(np.array([[-1.0, 0.0]]), np.array([-t]))], 2)
            v = verify(net, Box(lo, hi), spec, timeout=20)
            if t < top:
                assert v.status is not Status.UNSAT, seed
                if v.status is Status.SAT:
                    assert net.forward64(np.asarray(v.counterexample)[None])[0, 0] >= t - 1e-12
                    falsified += 1
            elif v.status is Status.UNSAT:
                assert v.decided_by in ("interval", "input-split"), v.decided_by
                proven += v.decided_by == "input-split" and float(whole) >= t
    assert proven >= 3 and falsified >= 5, (proven, falsified)


def test_softmax_lower_bound_below_the_normal_range():
    """``softmax_0`` of logits ``(0, 745)`` is about 2.8e-324, which float64 ``exp`` rounds up to
    the smallest subnormal: the lower bound needs an absolute pad, else a row ``100 y_0 <=
    3e-322`` (reached at ``z_1 = 745``) is wrongly proven unreachable."""
    getcontext().prec = 80
    lo, hi = interval_bounds(Network([Softmax()], (2,)), torch.tensor([[0.0, 744.5]]), torch.tensor([[0.0, 745.0]]))
    exact = 1 / (1 + Decimal(745).exp())
    assert Decimal(float(lo[0, 0])) <= exact <= Decimal(float(hi[0, 0]))
    net = Network([Dense(np.eye(2), np.zeros(2)), Softmax()], (2,))
    spec = OutputSpec([(np.array([[100.0, 0.0]]), np.array([3e-322]))], 2)
    v = verify(net, Box(np.array([0.0, 744.5]), np.array([0.0, 745.0])), spec, timeout=5)
    assert v.status is not Status.UNSAT


def test_softmax_bounds_in_chunks_are_the_same(monkeypatch):
    import gpuopt.bounds.interval as iv

    rng = np.random.default_rng(5)
    l = torch.tensor(rng.normal(size=(3, 2, 40)) * 5)
    u = l + torch.tensor(rng.uniform(0, 2, size=(3, 2, 40)))
    net = Network([LogSoftmax(), Flatten()], (2, 40))
    whole = interval_bounds(net, l, u)
    monkeypatch.setattr(iv, "CHUNK_ELEMENTS", 100)  # one or two outputs at a time
    chunked = interval_bounds(net, l, u)
    assert all(torch.equal(a, b) for a, b in zip(whole, chunked))


def test_closed_share_of_a_box_with_a_fixed_input():
    """A fixed input (lower == upper) has no share of the volume: a search cut short still
    reports the share it closed."""
    import time as _time

    from gpuopt.interval_split import interval_split
    from gpuopt.problem import Problem

    net = Network([Dense(np.array([[1.0, 1.0], [1.0, 1.0]]), np.array([0.0, -0.01])), Tanh(),
                   Dense(np.array([[1.0, -1.0]]), np.zeros(1))], (2,))
    spec = OutputSpec([(np.array([[-1.0]]), [-0.0099999167])], 1)  # just above the maximum 2 tanh(0.005)
    p = Problem(net, Box([-3.0, 0.0], [3.0, 0.0]), spec)
    r = interval_split(p, p, [0], deadline=_time.monotonic() + 1.0)
    assert r.status in ("timeout", "unsat") and r.closed_fraction > 0.05
