"""LP bounds: safe dual bounds (any dual vector gives a valid bound, the optimal one the optimum),
LP bound tightening (sampled pre-activations stay inside; each neuron meets the exact LP), and
the LP of the same triangle relaxation never below CROWN or alpha-CROWN."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse as sp
import torch

from gpuopt.bounds import alpha_crown_linear_lower, crown_linear_lower, intermediate_bounds
from gpuopt.bounds.lp import lp_row_bounds, lp_tighten
from gpuopt.cli import main
from gpuopt.milp.encode import encode
from gpuopt.milp.safe import safe_lower_bound

from helpers import random_dense_network


def _linprog(c, A, rl, ru, lo, hi):
    """The exact-ish optimum of a small LP through scipy (inequalities and equalities split)."""
    A = sp.csr_matrix(A).toarray()
    eq = rl == ru
    ub_rows, ub_rhs = [], []
    for i in np.flatnonzero(~eq):
        if np.isfinite(ru[i]):
            ub_rows.append(A[i]); ub_rhs.append(ru[i])
        if np.isfinite(rl[i]):
            ub_rows.append(-A[i]); ub_rhs.append(-rl[i])
    res = scipy.optimize.linprog(c, A_ub=np.array(ub_rows) if ub_rows else None, b_ub=ub_rhs or None,
                                 A_eq=A[eq] if eq.any() else None, b_eq=rl[eq] if eq.any() else None,
                                 bounds=list(zip(lo, hi)), method="highs")
    return res


@pytest.mark.parametrize("seed", range(8))
def test_safe_bound_holds_for_any_duals_and_meets_the_optimum(seed):
    rng = np.random.default_rng(seed)
    m, n = int(rng.integers(2, 8)), int(rng.integers(2, 8))
    A = rng.normal(size=(m, n)) * (rng.random((m, n)) < 0.7)
    lo, hi = -rng.random(n), rng.random(n)
    x0 = lo + (hi - lo) * rng.random(n)  # a feasible point: rows around A x0
    rl = np.where(rng.random(m) < 0.3, -np.inf, A @ x0 - rng.random(m))
    ru = np.where(rng.random(m) < 0.3, np.inf, A @ x0 + rng.random(m))
    eq = rng.random(m) < 0.2
    rl[eq] = ru[eq] = (A @ x0)[eq]
    c = rng.normal(size=n)
    res = _linprog(c, A, rl, ru, lo, hi)
    assert res.status == 0
    # the optimal duals: scipy reports marginals of the split rows; rebuild the row duals
    y = np.zeros(m)
    k = 0
    for i in np.flatnonzero(~eq):
        if np.isfinite(ru[i]):
            y[i] += res.ineqlin.marginals[k]; k += 1
        if np.isfinite(rl[i]):
            y[i] -= res.ineqlin.marginals[k]; k += 1
    if eq.any():
        y[eq] = res.eqlin.marginals
    best = safe_lower_bound(c, A, rl, ru, lo, hi, y, offset=0.25)
    assert best <= res.fun + 0.25
    assert best >= res.fun + 0.25 - 1e-7 * (1 + abs(res.fun))
    for _ in range(20):  # any dual vector bounds the minimum from below
        junk = rng.normal(size=m) * rng.choice([1e-3, 1.0, 1e3])
        assert safe_lower_bound(c, A, rl, ru, lo, hi, junk) <= res.fun


def test_safe_bound_at_the_ends_of_the_float_range():
    """Found by review: a product a_ij y_i that underflows took the error allowance with it, and
    an overflow (inf - inf) in A^T y was read as 0 * inf; both overstated the minimum."""
    # min 0 v  s.t.  1e-300 v >= 1e8,  0 <= v <= 1e308 (or unbounded): the minimum is 0
    assert safe_lower_bound([0.0], [[1e-300]], [1e8], [np.inf], [0.0], [1e308], [2e-24]) <= 0
    assert safe_lower_bound([0.0], [[1e-300]], [1e300], [np.inf], [0.0], [np.inf], [1e-24]) <= 0
    # min v0  s.t.  v0 = v1 (rows scaled by 1e300),  v in [-1, 1]^2: the minimum is -1
    A = np.array([[1e300, -1e300], [-1e300, 1e300]])
    for y in ([1e10, 1e10], [1e9, 1e9], [1.0, 1.0]):
        assert safe_lower_bound([1.0, 0.0], A, [0.0, 0.0], [np.inf, np.inf], [-1.0, -1.0], [1.0, 1.0], y) <= -1
    # non-finite coefficients or NaN bounds give no bound at all
    assert safe_lower_bound([1.0], [[np.inf]], [0.0], [1.0], [0.0], [1.0], [1.0]) == -np.inf
    assert safe_lower_bound([1.0], [[1.0]], [0.0], [1.0], [np.nan], [1.0], [0.5]) == -np.inf
    # an exactly zero reduced cost on an unbounded column is still fine: min 0 v over v >= 0 is 0
    assert -1e-12 < safe_lower_bound([0.0, 1.0], [[0.0, 1.0]], [0.0], [np.inf], [0.0, 0.0], [np.inf, 1.0], [1.0]) <= 0


def test_safe_bound_rejects_nonfinite_duals_and_checks_shapes():
    A = np.eye(2)
    assert safe_lower_bound([1, 1], A, [0, 0], [1, 1], [0, 0], [1, 1], [np.nan, 0]) == -np.inf
    with pytest.raises(ValueError, match="shapes disagree"):
        safe_lower_bound([1, 1], A, [0], [1], [0, 0], [1, 1], [0])


def _pre_activations(net, x):
    """Pre-activations of every hidden layer at the points ``x`` (float64)."""
    h = x
    out = []
    blocks = net.affine_blocks()
    for blk in blocks[:-1]:
        z = h @ blk.matrix.T.toarray() + blk.bias
        out.append(z)
        h = np.maximum(z, 0.0)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_lp_tightening_is_sound_and_exact_per_neuron(seed):
    rng = np.random.default_rng(seed)
    net = random_dense_network(rng, 3, [8, 8, 6], 2)
    c = rng.normal(size=3)
    lo_x, hi_x = c - 0.6, c + 0.6
    inter = intermediate_bounds(net, torch.tensor(lo_x)[None], torch.tensor(hi_x)[None])
    pre = [(l[0].numpy(), u[0].numpy()) for l, u in inter.pre_activation]
    res = lp_tighten(net.affine_blocks(), pre, lo_x, hi_x)
    assert res.layers_done == len(pre) - 1 and res.lps > 0
    x = lo_x + (hi_x - lo_x) * rng.random((20000, 3))
    for (l0, u0), (l, u), z in zip(pre, res.pre, _pre_activations(net, x)):
        assert np.all(l >= l0) and np.all(u <= u0)  # never looser
        assert np.all(z >= l - 1e-12) and np.all(z <= u + 1e-12)  # sound on samples
    # each tightened neuron of layer 1 meets the exact LP over the same relaxation (layer 0 fixed)
    blocks = net.affine_blocks()
    l1, u1 = pre[1]
    model = encode(blocks[:2], res.pre[:1], (l1, u1), lo_x, hi_x, np.eye(1, l1.size), [0.0]).relaxed()
    for j in np.flatnonzero((l1 < 0) & (u1 > 0)):
        cost = np.zeros(model.n_vars)
        cost[model.y_index[j]] = 1.0
        exact = _linprog(cost, model.A, model.row_lower, model.row_upper, model.col_lower, model.col_upper).fun
        assert res.pre[1][0][j] <= exact + 1e-9
        assert res.pre[1][0][j] >= exact - 1e-6 * (1 + abs(exact)) or res.pre[1][0][j] == l1[j] and exact <= l1[j] + 1e-6


@pytest.mark.parametrize("seed", range(4))
def test_lp_rows_never_below_crown_or_alpha_crown_on_the_same_relaxation(seed):
    rng = np.random.default_rng(100 + seed)
    net = random_dense_network(rng, 4, [10, 10], 3)
    c = rng.normal(size=4)
    lo_x, hi_x = c - 0.5, c + 0.5
    lo, hi = torch.tensor(lo_x)[None], torch.tensor(hi_x)[None]
    inter = intermediate_bounds(net, lo, hi)
    A = rng.normal(size=(6, 3))
    crown_rows = crown_linear_lower(net, lo, hi, torch.tensor(A)[None], inter)[0][0].numpy()
    alpha_rows = alpha_crown_linear_lower(net, lo, hi, torch.tensor(A)[None], inter, steps=30)[0].numpy()
    pre = [(l[0].numpy(), u[0].numpy()) for l, u in inter.pre_activation]
    out = (inter.output[0][0].numpy(), inter.output[1][0].numpy())
    lp_rows = lp_row_bounds(net.affine_blocks(), pre, out, lo_x, hi_x, A, np.zeros(6))
    tol = 1e-7 * (1 + np.abs(lp_rows))
    assert np.all(crown_rows <= lp_rows + tol)
    assert np.all(alpha_rows <= lp_rows + tol)
    v = net.forward64(lo_x + (hi_x - lo_x) * rng.random((20000, 4))) @ A.T
    assert np.all(lp_rows <= v.min(0))


def test_bounds_command_lp_is_at_least_as_tight_as_alpha_crown(benchmarks_dir, capsys):
    base = benchmarks_dir / "vnncomp2022" / "mnist_fc"
    args = [str(base / "onnx" / "mnist-net_256x2.onnx"), str(base / "vnnlib" / "prop_0_0.05.vnnlib"), "--json"]
    got = {}
    for method in ("alpha-crown", "lp"):
        assert main(["bounds", *args, "--method", method]) == 0
        got[method] = json.loads(capsys.readouterr().out)
    assert got["lp"]["method"] == "lp" and len(got["lp"]["disjuncts"]) == 9
    for a, b in zip(got["alpha-crown"]["disjuncts"], got["lp"]["disjuncts"]):
        assert b[0]["lower"] >= a[0]["lower"] - 1e-9 and b[0]["upper"] <= a[0]["upper"] + 1e-9
        assert b[0]["lower"] <= b[0]["upper"]


def test_huge_neuron_bounds_reach_highs_rescaled():
    """Found by review: big-M rows carry the neuron bounds as coefficients, and HiGHS refuses
    coefficients of 1e15 and more; the LP stage and the MILP re-check pass it the rescaled model."""
    from gpuopt import Box, OutputSpec, VerifyConfig, verify
    from gpuopt.bounds import ibp
    from gpuopt.network import Dense, Network, ReLU

    rng = np.random.default_rng(0)
    k = 1e8
    net = Network([Dense(rng.normal(size=(4, 2)) * k, rng.normal(size=4)), ReLU(),
                   Dense(rng.normal(size=(4, 4)) * k, rng.normal(size=4)), ReLU(),
                   Dense(rng.normal(size=(2, 4)) / k ** 2, np.zeros(2))], (2,))
    lo, hi = -np.ones(2), np.ones(2)
    bd = ibp(net, torch.as_tensor(lo[None]), torch.as_tensor(hi[None]))
    pre = [(l[0].numpy(), u[0].numpy()) for l, u in bd.pre_activation]
    assert max(float(np.abs(u).max()) for _, u in pre) > 1e15
    res = lp_tighten(net.affine_blocks(), pre, lo, hi)
    g = np.stack(np.meshgrid(np.linspace(-1, 1, 201), np.linspace(-1, 1, 201)), -1).reshape(-1, 2)
    for (l, u), z in zip(res.pre, _pre_activations(net, g)):
        assert np.all(z >= l - 1e-6 * np.abs(l)) and np.all(z <= u + 1e-6 * np.abs(u))
    A = np.array([[1.0, -1.0]])
    grid_min = float((net.forward64(g) @ A.T).min())
    ibp_lb = float((A.clip(0) @ bd.output[0][0].numpy() + A.clip(max=0) @ bd.output[1][0].numpy())[0])
    spec = OutputSpec([(A, [ibp_lb + 0.5 * (grid_min - ibp_lb)])], 2)  # holds, IBP cannot tell
    v = verify(net, Box(lo, hi), spec, timeout=30,
               config=VerifyConfig(use_attack=False, use_input_split=False, use_relu_split=False, use_walk=False,
                                   use_crown=False))
    assert v.status.value == "unsat" and v.decided_by in ("lp", "milp"), v


def test_a_session_caps_each_lp_not_its_total_time():
    """HiGHS's time_limit counts an instance's total run time: once a session has run longer than
    the per-LP cap, its next LPs must still be solved (found by review)."""
    import time as _time

    from gpuopt.bounds.lp import LpSession

    rng = np.random.default_rng(3)
    net = random_dense_network(rng, 6, [40, 40], 2)
    lo_x, hi_x = -np.ones(6), np.ones(6)
    inter = intermediate_bounds(net, torch.tensor(lo_x)[None], torch.tensor(hi_x)[None])
    pre = [(l[0].numpy(), u[0].numpy()) for l, u in inter.pre_activation]
    l1, u1 = pre[1]
    model = encode(net.affine_blocks()[:2], pre[:1], (l1, u1), lo_x, hi_x, np.eye(1, l1.size), [0.0]).relaxed()
    session = LpSession(model)
    t0 = _time.monotonic()
    while session.h.getRunTime() < 0.05 and _time.monotonic() - t0 < 20:
        for j in range(l1.size):
            session.minimize([model.y_index[j]], [1.0 if session.lps % 2 else -1.0])
    assert session.h.getRunTime() >= 0.05
    session.lp_time_limit = 0.04  # each LP alone takes far less
    got = [session.minimize([model.y_index[j]], [1.0]) for j in range(5)]
    fresh = [LpSession(model).minimize([model.y_index[j]], [1.0]) for j in range(5)]
    assert np.all(np.isfinite(got)) and got == pytest.approx(fresh, abs=1e-7)
