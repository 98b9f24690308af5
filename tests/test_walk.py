"""Relax-and-Walk: every point it returns is attained and inside the region, it never beats the
exact MILP minimum, and on small networks it reaches it."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import torch

from gpuopt.bounds import ibp
from gpuopt.errors import InvalidInputError
from gpuopt.milp.encode import InputConstraints, encode
from gpuopt.milp.highs import MilpStatus, solve_milp
from gpuopt.milp.walk import WalkConfig, forward_pattern, relax_and_walk
from gpuopt.network import Dense, Network, ReLU

from helpers import numpy_forward, random_dense_network, random_spec


def _model(seed, n_in=3, hidden=(8, 6), rows=1, constraints=None, formulation="bigm"):
    rng = np.random.default_rng(seed)
    net = random_dense_network(rng, n_in, list(hidden), 3)
    lo = rng.normal(size=n_in)
    hi = lo + rng.uniform(0.5, 1.5, size=n_in)
    spec = random_spec(rng, 3, [rows])
    A, b = spec.disjuncts[0]
    bd = ibp(net, torch.as_tensor(lo[None]), torch.as_tensor(hi[None]))
    pre = [(l[0].numpy(), u[0].numpy()) for l, u in bd.pre_activation]
    out = (bd.output[0][0].numpy(), bd.output[1][0].numpy())
    model = encode(net.affine_blocks(), pre, out, lo, hi, A, b, formulation=formulation, constraints=constraints)
    return rng, net, lo, hi, A, b, model


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("seed", range(10))
def test_walk_value_is_attained_and_never_below_the_exact_minimum(seed, rows):
    rng, net, lo, hi, A, b, model = _model(seed, rows=rows)
    exact = solve_milp(model, time_limit=30, threshold=np.inf)
    assert exact.status is MilpStatus.OPTIMAL
    res = relax_and_walk(model, net.affine_blocks(), starts=[rng.uniform(lo, hi)])
    assert res.x is not None and np.all(res.x >= lo) and np.all(res.x <= hi)
    y, _ = numpy_forward(net, res.x[None])
    assert res.value == pytest.approx(float(np.max(A @ y[0] - b)), abs=1e-12)
    assert res.value >= exact.dual_bound - 1e-7
    assert res.relaxation <= exact.objective + 1e-7
    assert res.lps >= 1 and res.regions >= 1 and res.stopped == "done"
    assert [v for _, v in res.trace] == sorted((v for _, v in res.trace), reverse=True)


def test_walk_reaches_the_optimum_on_most_small_networks():
    hits = 0
    for seed in range(20):
        rng, net, lo, hi, A, b, model = _model(100 + seed)
        exact = solve_milp(model, time_limit=30, threshold=np.inf).objective
        res = relax_and_walk(model, net.affine_blocks(), starts=[0.5 * (lo + hi)])
        hits += res.value <= exact + 1e-6 * max(1.0, abs(exact))
    assert hits >= 15, hits


def test_one_walk_crosses_regions_downhill():
    """y = |x| - relu(x - 1) on [-2, 3], minimise -y (exact: -2 at x = -2). From x = 0.5 the
    region [0, 1] has its optimum -1 at x = 1, and the next region [1, 3] is flat there, so no
    downhill facet is left: the relaxation and the restarts must carry the search across 0."""
    net = Network([Dense([[1.0], [-1.0], [1.0]], [0.0, 0.0, -1.0]), ReLU(), Dense([[-1.0, -1.0, 1.0]], [0.0])], (1,))
    lo, hi = np.array([-2.0]), np.array([3.0])
    bd = ibp(net, torch.as_tensor(lo[None]), torch.as_tensor(hi[None]))
    pre = [(l[0].numpy(), u[0].numpy()) for l, u in bd.pre_activation]
    out = (bd.output[0][0].numpy(), bd.output[1][0].numpy())
    model = encode(net.affine_blocks(), pre, out, lo, hi, np.array([[1.0]]), np.array([0.0]))
    res = relax_and_walk(model, net.affine_blocks(), starts=[np.array([0.5])])
    assert res.value == pytest.approx(-2.0, abs=1e-9)
    assert res.x == pytest.approx([-2.0], abs=1e-9)


def test_walk_stays_inside_an_l1_ball_and_linear_rows():
    c = np.array([0.3, 0.6, 0.5])
    cons = InputConstraints(l1_center=c, l1_eps=0.4, G=np.array([[1.0, -1.0, 0.0]]), g=np.array([0.0]))
    for seed in range(5):
        rng, net, lo, hi, A, b, model = _model(seed, constraints=None)
        lo, hi = np.zeros(3), np.ones(3)
        bd = ibp(net, torch.as_tensor(lo[None]), torch.as_tensor(hi[None]))
        pre = [(l[0].numpy(), u[0].numpy()) for l, u in bd.pre_activation]
        out = (bd.output[0][0].numpy(), bd.output[1][0].numpy())
        model = encode(net.affine_blocks(), pre, out, lo, hi, A, b, constraints=cons)
        exact = solve_milp(model, time_limit=30, threshold=np.inf)
        res = relax_and_walk(model, net.affine_blocks(), starts=[c], constraints=cons)
        assert cons.contains(res.x) and np.all(res.x >= 0) and np.all(res.x <= 1)
        assert res.value >= exact.dual_bound - 1e-7
        y, _ = forward_pattern(net.affine_blocks(), res.x)
        assert res.value == pytest.approx(float(np.max(A @ y - b)), abs=1e-12)


def test_accept_stops_the_walk_and_limits_hold():
    rng, net, lo, hi, A, b, model = _model(4, hidden=(20, 20))
    seen = []

    def accept(x):
        seen.append(x)
        return True

    res = relax_and_walk(model, net.affine_blocks(), starts=[lo], accept=accept)
    assert res.stopped == "accepted" and len(seen) == 1 and res.x is not None
    res = relax_and_walk(model, net.affine_blocks(), starts=[lo], config=WalkConfig(max_lps=1))
    assert res.stopped == "lp_limit" and res.lps == 1
    res = relax_and_walk(model, net.affine_blocks(), starts=[lo], deadline=time.monotonic() - 1)
    assert res.stopped == "deadline" and res.lps == 0
    res = relax_and_walk(model, net.affine_blocks(), starts=[lo], config=WalkConfig(max_dense=10))
    assert res.stopped == "too_large" and res.x is None and res.value == np.inf


def test_walk_works_on_every_formulation():
    for name in ("split", "partition:2", "extended"):
        rng, net, lo, hi, A, b, model = _model(7, formulation=name)
        exact = solve_milp(model, time_limit=30, threshold=np.inf)
        res = relax_and_walk(model, net.affine_blocks(), starts=[lo])
        assert exact.dual_bound - 1e-7 <= res.value < np.inf


def test_walk_arguments_are_validated():
    rng, net, lo, hi, A, b, model = _model(0)
    with pytest.raises(InvalidInputError, match=re.escape("every start point must have 3 entries, got 2")):
        relax_and_walk(model, net.affine_blocks(), starts=[np.zeros(2)])
    with pytest.raises(InvalidInputError, match=re.escape("`max_lps` must be an integer >= 0, got -1")):
        WalkConfig(max_lps=-1)
    with pytest.raises(InvalidInputError, match=re.escape("`config` must be a WalkConfig, got dict")):
        relax_and_walk(model, net.affine_blocks(), config={})
