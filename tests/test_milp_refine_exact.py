"""MILP refinement on adversarial nets (from a review): dyadic nets with neurons whose exact range
touches 0, many stable-inactive neurons, a degenerate box, badly scaled weights. Each compares the
refined bounds with exact enumeration (``helpers.brute_force_min_margin``), samples and box corners,
and fails on any bound that cuts off a reachable value, or on any difference between one MILP at a
time and three in threads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpuopt.bounds import ibp, intermediate_bounds
from gpuopt.bounds.milp_refine import milp_refine
from gpuopt.layers import Dense, ReLU
from gpuopt.network import Network
from gpuopt.specs import OutputSpec

from helpers import affine_view_values, brute_force_min_margin


def _net(weights):
    layers = []
    for W, b in weights:
        layers += [Dense(np.array(W, dtype=np.float64), np.array(b, dtype=np.float64)), ReLU()]
    return Network(layers[:-1], (np.asarray(weights[0][0]).shape[1],))


def _pre(net, lo, hi, kind):
    f = ibp if kind == "ibp" else intermediate_bounds
    bd = f(net, torch.tensor(lo)[None], torch.tensor(hi)[None])
    return [(l[0].numpy().astype(np.float64), u[0].numpy().astype(np.float64)) for l, u in bd.pre_activation]


def _exact_layer(net, k, lo, hi):
    """(min, max) of every pre-activation of hidden layer k over the box, by exact enumeration."""
    sub = Network(list(net.layers[:2 * k + 1]), net.input_shape)
    n = sub.output_size
    E = np.eye(n)
    spec = OutputSpec([(E[j:j + 1], np.zeros(1)) for j in range(n)] + [(-E[j:j + 1], np.zeros(1)) for j in range(n)], n)
    m = brute_force_min_margin(sub, lo, hi, spec).per_disjunct
    return m[:n], -m[n:]


def _assert_sound(net, pre, res, lo, hi, tol=1e-9):
    """Every refined bound contains the exact range (and every sampled/corner value); returns how
    many neurons the refinement moved (so a test can require that it binds)."""
    rng = np.random.default_rng(0)
    corners = np.array(np.meshgrid(*zip(lo, hi))).reshape(lo.size, -1).T
    x = np.vstack([corners, lo + (hi - lo) * rng.random((5000, lo.size))])
    moved = 0
    for k, ((l0, u0), (l, u), z) in enumerate(zip(pre, res.pre, affine_view_values(net, x)[0])):
        assert np.all(l >= l0) and np.all(u <= u0)
        assert np.all(z >= l - 1e-12) and np.all(z <= u + 1e-12), k
        changed = (l != l0) | (u != u0)
        moved += int(changed.sum())
        if k >= 1 and changed.any():
            emin, emax = _exact_layer(net, k, lo, hi)
            scale = np.maximum(1.0, np.maximum(np.abs(l0), np.abs(u0)))
            assert np.all(l <= emin + tol * scale), (k, np.flatnonzero(l > emin + tol * scale), l, emin)
            assert np.all(u >= emax - tol * scale), (k, np.flatnonzero(u < emax - tol * scale), u, emax)
    return moved


def _dyadic(seed, boundary):
    """A dyadic 2- or 3-input net (weights and biases small integers over 1, 2 or 4); with
    ``boundary``, layer k>=1 has a neuron relu(t + b - 1/2) - relu(t + b) (max exactly 0) and one
    relu(t + b) - relu(t + b - 1/2) (min exactly 0) that interval bounds leave unstable."""
    rng = np.random.default_rng(seed)
    dims = [int(rng.integers(2, 4)), 6, 6, 5, 1]
    ws = []
    for a, b in zip(dims[:-1], dims[1:]):
        ws.append([rng.integers(-4, 5, size=(b, a)) / 2.0 ** rng.integers(0, 3, size=(b, a)),
                   rng.integers(-4, 5, size=b) / 2.0 ** rng.integers(0, 3, size=b)])
    if boundary:
        for k in range(1, 3):
            Wp, cp = ws[k - 1]
            Wp[1], cp[1] = Wp[0], cp[0] - 0.5
            ws[k][0][0] = 0.0
            ws[k][0][0, :2] = (-1.0, 1.0)
            ws[k][1][0] = 0.0
            ws[k][0][1] = 0.0
            ws[k][0][1, :2] = (1.0, -1.0)
            ws[k][1][1] = 0.0
    lo = rng.integers(-4, 1, size=dims[0]) / 2.0
    hi = lo + rng.integers(1, 5, size=dims[0]) / 2.0
    return _net(ws), lo.astype(float), hi.astype(float)


@pytest.mark.parametrize("seed, kind", [(0, "ibp"), (1, "ibp"), (2, "ibp"), (3, "crown"), (4, "crown"), (5, "ibp")])
def test_dyadic_nets_with_ranges_touching_zero_are_refined_soundly(seed, kind):
    net, lo, hi = _dyadic(seed, boundary=True)
    pre = _pre(net, lo, hi, kind)
    res = milp_refine(net.affine_blocks(), pre, lo, hi, neuron_time=5.0)
    _assert_sound(net, pre, res, lo, hi)


def test_the_dyadic_boundary_tests_bind():
    """Over the seeds above the refinement moves some bound and makes some neuron stable."""
    moved = stab = 0
    for seed in range(6):
        net, lo, hi = _dyadic(seed, boundary=True)
        pre = _pre(net, lo, hi, "ibp")
        res = milp_refine(net.affine_blocks(), pre, lo, hi, neuron_time=5.0)
        moved += sum(int(((a != c) | (b != d)).sum()) for (a, b), (c, d) in zip(pre, res.pre))
        stab += res.stabilised
    assert moved > 0 and stab > 0


def _many_inactive(seed):
    """Negative biases: many stable-inactive neurons in every layer (the live prefix drops them)."""
    rng = np.random.default_rng(100 + seed)
    dims = [3, 9, 9, 7, 1]
    ws = [[rng.normal(size=(b, a)) / np.sqrt(a), 0.5 * rng.normal(size=b) - 0.6] for a, b in zip(dims[:-1], dims[1:])]
    c = rng.normal(size=3)
    return _net(ws), c - 1.0, c + 1.0


@pytest.mark.parametrize("method", ["milp", "split"])
@pytest.mark.parametrize("seed", range(2))
def test_nets_with_many_stable_inactive_neurons_are_refined_soundly(seed, method):
    net, lo, hi = _many_inactive(seed)
    pre = _pre(net, lo, hi, "ibp")
    assert any((u <= 0).any() for _, u in pre[:-1])
    res = milp_refine(net.affine_blocks(), pre, lo, hi, neuron_time=5.0, method=method)
    _assert_sound(net, pre, res, lo, hi)


@pytest.mark.parametrize("method", ["milp", "split"])
@pytest.mark.parametrize("seed", [2])
def test_degenerate_box_is_refined_soundly(seed, method):
    """Some input coordinates fixed (lower == upper)."""
    net, lo, hi = _dyadic(10 + seed, boundary=True)
    hi = hi.copy()
    hi[0] = lo[0]
    pre = _pre(net, lo, hi, "ibp")
    res = milp_refine(net.affine_blocks(), pre, lo, hi, neuron_time=5.0, method=method)
    _assert_sound(net, pre, res, lo, hi)


@pytest.mark.parametrize("method", ["milp", "split"])
@pytest.mark.parametrize("seed", [0, 2])
def test_badly_scaled_weights_are_refined_soundly(seed, method):
    """Weights 1e-4 next to 1e3, some biases 1e3."""
    rng = np.random.default_rng(200 + seed)
    dims = [2, 6, 6, 1]
    ws = []
    for a, b in zip(dims[:-1], dims[1:]):
        W = rng.normal(size=(b, a)) / np.sqrt(a)
        W *= np.where(rng.random((b, a)) < 0.3, 1e-4, 1.0) * np.where(rng.random((b, a)) < 0.2, 1e3, 1.0)
        ws.append([W, 0.5 * rng.normal(size=b) * np.where(rng.random(b) < 0.3, 1e3, 1.0)])
    net = _net(ws)
    c = rng.normal(size=2)
    lo, hi = c - 0.5, c + 0.5
    pre = _pre(net, lo, hi, "ibp")
    res = milp_refine(net.affine_blocks(), pre, lo, hi, neuron_time=5.0, method=method)
    _assert_sound(net, pre, res, lo, hi)


@pytest.mark.parametrize("seed", range(2))
def test_parallel_threads_give_identical_bounds_on_wide_dyadic_layers(seed):
    """Up to 6 unstable neurons per layer solved three at a time: bounds and counts equal parallel=1."""
    net, lo, hi = _dyadic(20 + seed, boundary=True)
    pre = _pre(net, lo, hi, "ibp")
    one = milp_refine(net.affine_blocks(), pre, lo, hi, neuron_time=10.0)
    three = milp_refine(net.affine_blocks(), pre, lo, hi, neuron_time=10.0, parallel=3)
    assert (one.milps, one.stabilised, one.tightened) == (three.milps, three.stabilised, three.tightened)
    for (l1, u1), (l3, u3) in zip(one.pre, three.pre):
        assert np.array_equal(l1, l3) and np.array_equal(u1, u3)
    _assert_sound(net, pre, three, lo, hi)


def test_a_bound_beyond_the_other_sound_bound_is_not_used(monkeypatch):
    """A timed-out MILP whose dual bound puts ``z_j``'s upper bound below its (sound) lower bound can
    only be HiGHS wrong: neither side changes (the bound is not clamped to the other)."""
    import gpuopt.bounds.milp_refine as mr
    from gpuopt.milp.highs import MilpResult, MilpStatus

    net, lo, hi = _dyadic(0, boundary=False)
    pre = _pre(net, lo, hi, "ibp")

    def crossing(model, **kw):
        y = int(np.flatnonzero(model.c)[0])
        sign = model.c[y]
        beyond = -model.col_lower[y] + 1.0 if sign < 0 else model.col_upper[y] + 1.0
        return MilpResult(status=MilpStatus.TIME_LIMIT, raw_status="time limit", objective=np.inf,
                          dual_bound=beyond, solution=None, nodes=0, seconds=0.0)

    monkeypatch.setattr(mr, "solve_milp", crossing)
    res = milp_refine(net.affine_blocks(), pre, lo, hi)
    assert res.milps > 0 and res.stabilised == res.tightened == 0
    for (l0, u0), (l, u) in zip(pre, res.pre):
        assert np.array_equal(l0, l) and np.array_equal(u0, u)
