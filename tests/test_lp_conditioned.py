"""LP bound tightening conditioned on a disjunct (:func:`gpuopt.bounds.lp.lp_tighten_conditioned`).

The bounds it returns must hold on ``S = {x in box : A f(x) <= b + tau}`` (not on the box):
checked on 20000 samples of ``S`` and against the exact extremes on ``S`` (activation patterns
enumerated, one LP per pattern and objective); they never loosen the input bounds and leave the
layers before the last ``depth`` alone. ``empty`` must come for a disjunct unreachable by a margin,
and never when a point of ``S`` exists (in particular when the minimum margin is in ``(0, tau]``).
A MILP built on the conditioned bounds keeps the exact minimum whenever that minimum is ``<= tau``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from gpuopt.bounds import intermediate_bounds
from gpuopt.bounds.lp import lp_row_bounds, lp_tighten, lp_tighten_conditioned
from gpuopt.errors import InvalidInputError
from gpuopt.milp.encode import encode
from gpuopt.milp.highs import MilpStatus, solve_milp
from gpuopt.specs import OutputSpec

from helpers import affine_view_values, box_points, brute_force_min_margin, dense_weights, random_dense_network

WIDTHS = ([8, 8], [6, 10], [10, 6], [9, 7])


def _case(seed: int, hidden=None, n_out: int = 3, radius: float = 0.7):
    """A random dense ReLU network, a box around a random centre, and its CROWN bounds as numpy."""
    rng = np.random.default_rng(seed)
    hidden = WIDTHS[seed % len(WIDTHS)] if hidden is None else hidden
    net = random_dense_network(rng, 3, hidden, n_out)
    c = rng.normal(size=3)
    lo, hi = c - radius, c + radius
    inter = intermediate_bounds(net, torch.tensor(lo)[None], torch.tensor(hi)[None])
    pre = [(l[0].numpy().copy(), u[0].numpy().copy()) for l, u in inter.pre_activation]
    out = (inter.output[0][0].numpy().copy(), inter.output[1][0].numpy().copy())
    return rng, net, lo, hi, pre, out


def _samples(rng, net, lo, hi, n: int = 20000):
    """``n`` uniform points, the corners and the centre: their pre-activations and outputs."""
    x = box_points(rng, lo, hi, n)
    zs, y = affine_view_values(net, x)
    return x, zs, y


def _tol(bound):
    return 1e-9 * (1.0 + np.abs(bound))


def _assert_contains(res, zs, y, keep, what=""):
    """Every kept point's pre-activations and outputs lie within ``res.pre`` / ``res.out``."""
    for k, ((l, u), z) in enumerate(zip(list(res.pre) + [res.out], list(zs) + [y])):
        z = z[keep]
        below = z < l - _tol(l)
        above = z > u + _tol(u)
        if below.any() or above.any():
            i, j = np.argwhere(below | above)[0]
            raise AssertionError(f"{what} layer {k} neuron {j}: value {z[i, j]!r} outside "
                                 f"[{l[j]!r}, {u[j]!r}] ({int(below.sum() + above.sum())} violations)")


def _assert_never_looser(res, pre, out):
    for (l0, u0), (l, u) in zip(list(pre) + [out], list(res.pre) + [res.out]):
        assert l.shape == l0.shape and u.shape == u0.shape
        assert np.all(l >= l0) and np.all(u <= u0)
        assert np.all(l <= u)


def _disjunct(kind: str, rng, y):
    """``(A, b)``: b at the median of the sampled rows, so ``S`` is a strict, non-empty part of the box."""
    n_out = y.shape[1]
    if kind == "unit":
        A = np.eye(n_out)[[int(np.argmax(np.ptp(y, axis=0)))]]  # the output that varies most
    elif kind == "row":
        A = rng.normal(size=(1, n_out))
    elif kind == "two":
        A = rng.normal(size=(2, n_out))
    elif kind == "band":  # m - tau <= a y <= m + tau: a band around a level set
        a = rng.normal(size=(1, n_out))
        A = np.vstack([a, -a])
        m = float(np.median(y @ a[0]))
        return A, np.array([m, -m])
    else:
        raise ValueError(kind)
    return A, np.median(y @ A.T, axis=0)


# ------------------------------------------------------------------------- 1. sound on S (samples)
@pytest.mark.parametrize("kind", ["unit", "row", "two", "band"])
@pytest.mark.parametrize("seed", range(4))
def test_conditioned_bounds_hold_on_sampled_points_of_S(seed, kind):
    """20000 samples of the box: every one with ``A f(x) <= b + tau`` lies within the conditioned
    bounds of every hidden layer and the outputs, for tau 0 and 0.1 and depth 1 and 2; the band
    ``b < A f(x) <= b + tau`` (the points a version ignoring ``+ tau`` would cut off) is populated."""
    rng, net, lo, hi, pre, out = _case(seed)
    blocks = net.affine_blocks()
    _, zs, y = _samples(rng, net, lo, hi)
    A, b = _disjunct(kind, rng, y)
    rows = y @ A.T
    for tau in (0.0, 0.1):
        keep = np.all(rows <= b + tau, axis=1)
        if kind != "band" or tau > 0:
            assert 0 < keep.sum() < keep.size  # S is a strict, non-empty part of the box
        if tau > 0:
            assert (keep & np.any(rows > b, axis=1)).sum() > 100  # points only the + tau lets in
        for depth in (1, 2):
            res = lp_tighten_conditioned(blocks, pre, out, lo, hi, A, b, tau, depth=depth)
            assert not res.empty  # S is never empty here (for the band at tau = 0: a level set)
            assert res.layers_done == depth + 1 and res.lps > 0
            _assert_contains(res, zs, y, keep, f"{kind} tau={tau} depth={depth}")
            _assert_never_looser(res, pre, out)


def _regions(net, lo, hi, n_samples: int = 2000, seed: int = 0):
    """Every activation pattern of a dense ReLU net with a non-empty closed region in the box:
    ``(maps, G, g)``, ``maps[k] = (P, q)`` the affine map ``x -> P x + q`` of block ``k``'s
    pre-activations (the last: the outputs) on ``{x in box : G x <= g}``. A partial pattern is
    kept if a sample realises it or an LP finds it feasible (the closed regions cover the box)."""
    weights = dense_weights(net)
    n = lo.size
    box = list(zip(lo, hi))
    xs = box_points(np.random.default_rng(seed), lo, hi, n_samples)
    sample_pre, _ = affine_view_values(net, xs)

    def feasible(G, g):
        return linprog(np.zeros(n), A_ub=G, b_ub=g, bounds=box, method="highs").status == 0

    def layer(k, P, q, G, g, maps, mask):
        W, c = weights[k]
        Pz, qz = W @ P, W @ q + c
        if k == len(weights) - 1:
            yield maps + [(Pz, qz)], G, g
            return
        zs = sample_pre[k]

        def neuron(j, G, g, active, mask):
            if j == W.shape[0]:
                D = np.asarray(active, dtype=np.float64)
                yield from layer(k + 1, D[:, None] * Pz, D * qz, G, g, maps + [(Pz, qz)], mask)
                return
            for on in (True, False):
                row, rhs = (-Pz[j], qz[j]) if on else (Pz[j], -qz[j])
                G2, g2 = np.vstack([G, row[None]]), np.r_[g, rhs]
                m2 = mask & ((zs[:, j] >= 0) if on else (zs[:, j] <= 0))
                if m2.any() or feasible(G2, g2):
                    yield from neuron(j + 1, G2, g2, active + [on], m2)

        yield from neuron(0, G, g, [], mask)

    yield from layer(0, np.eye(n), np.zeros(n), np.zeros((0, n)), np.zeros(0), [], np.ones(len(xs), dtype=bool))


def _exact_ranges_on_S(net, lo, hi, A, rhs):
    """``[min, max]`` of every pre-activation and output over ``{x in box : A f(x) <= rhs}``,
    exactly up to LP tolerances (``min = inf`` where ``S`` is empty)."""
    box = list(zip(lo, hi))
    opts = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}
    ranges = None
    for maps, G, g in _regions(net, lo, hi):
        if ranges is None:
            ranges = [[np.full(P.shape[0], np.inf), np.full(P.shape[0], -np.inf)] for P, _ in maps]
        Py, qy = maps[-1]
        G2, g2 = np.vstack([G, A @ Py]), np.r_[g, rhs - A @ qy]
        if linprog(np.zeros(lo.size), A_ub=G2, b_ub=g2, bounds=box, method="highs").status != 0:
            continue  # this region misses S
        for (P, q), (mn, mx) in zip(maps, ranges):
            for j in range(P.shape[0]):
                for sign in (1.0, -1.0):
                    res = linprog(sign * P[j], A_ub=G2, b_ub=g2, bounds=box, method="highs", options=opts)
                    if res.status != 0:
                        continue  # infeasible within tolerances: only a sliver, no extreme to check
                    v = sign * res.fun + q[j]
                    if sign > 0:
                        mn[j] = min(mn[j], v)
                    else:
                        mx[j] = max(mx[j], v)
    return ranges


@pytest.mark.parametrize("seed", range(2))
def test_conditioned_bounds_contain_the_exact_extremes_on_S(seed):
    """Brute force: the exact min and max of every neuron and output over ``S`` (enumerating the
    activation patterns, an LP per pattern and objective) lie within the conditioned bounds."""
    rng, net, lo, hi, pre, out = _case(100 + seed, hidden=[5, 5], n_out=2)
    blocks = net.affine_blocks()
    _, _, y = _samples(rng, net, lo, hi, 4000)
    A = np.eye(2)[[seed % 2]] if seed == 0 else rng.normal(size=(1, 2))
    b = np.quantile(y @ A.T, 0.3, axis=0)
    tau = 0.1
    exact = _exact_ranges_on_S(net, lo, hi, A, b + tau)
    res = lp_tighten_conditioned(blocks, pre, out, lo, hi, A, b, tau, depth=2)
    assert not res.empty
    moved = 0
    for k, ((l, u), (mn, mx), (l0, u0)) in enumerate(zip(list(res.pre) + [res.out], exact, list(pre) + [out])):
        assert np.all(np.isfinite(mn))
        assert np.all(l <= mn + 1e-7 * (1 + np.abs(mn))), (k, l, mn)
        assert np.all(u >= mx - 1e-7 * (1 + np.abs(mx))), (k, u, mx)
        moved += int(np.sum(l > l0) + np.sum(u < u0))
    assert moved > 0


# ------------------------------------------------------------------------- 2. tightening is real
def test_conditioning_tightens_the_constrained_output_beyond_the_plain_lp():
    """``A = e_0``, ``b`` at the 20% quantile of ``y_0``: the conditioned upper bound of ``y_0`` is
    ``b + tau`` (up to the safe bound's slack), far below CROWN's and the unconditioned LP's, and
    hidden neurons tighten too."""
    rng, net, lo, hi, pre, out = _case(3)
    blocks = net.affine_blocks()
    _, zs, y = _samples(rng, net, lo, hi)
    A = np.eye(3)[[0]]
    b = np.quantile(y[:, 0], 0.2, keepdims=True)
    tau = 0.1
    plain_max = -lp_row_bounds(blocks, pre, out, lo, hi, -A, [0.0])[0]  # LP max of y_0 over the box
    assert plain_max > b[0] + tau + 0.2
    res = lp_tighten_conditioned(blocks, pre, out, lo, hi, A, b, tau, depth=2)
    assert not res.empty
    assert res.out[1][0] <= b[0] + tau + 1e-6
    assert res.out[1][0] >= b[0] + tau  # the row's right-hand side is rounded up, never down
    assert res.out[1][0] < min(out[1][0], plain_max) - 0.2
    keep = y[:, 0] <= b[0] + tau
    assert y[keep, 0].max() > b[0] + tau - 0.01  # the sampled maximum on S meets the bound
    # neurons of both hidden layers moved, and stay sound
    for (l0, u0), (l, u) in zip(pre, res.pre):
        assert np.any((l > l0 + 1e-3) | (u < u0 - 1e-3))
    assert res.tightened > 0
    _assert_contains(res, zs, y, keep)


# ------------------------------------------------------------------------- 3. never looser
@pytest.mark.parametrize("seed", range(3))
def test_never_looser_and_earlier_layers_untouched(seed):
    """Three hidden layers, input bounds from CROWN and from the (tighter) plain LP: elementwise
    never looser, never crossing, the layers before the last ``depth`` exactly the input, the
    input arrays not modified; sound on samples."""
    rng, net, lo, hi, pre_crown, out = _case(200 + seed, hidden=[6, 7, 6])
    blocks = net.affine_blocks()
    pre_lp = lp_tighten(blocks, pre_crown, lo, hi).pre
    _, zs, y = _samples(rng, net, lo, hi, 5000)
    A = rng.normal(size=(1, 3))
    b = np.median(y @ A.T, axis=0)
    keep = (y @ A.T <= b + 0.05)[:, 0]
    for pre in (pre_crown, pre_lp):
        saved = [(l.copy(), u.copy()) for l, u in pre] + [(out[0].copy(), out[1].copy())]
        for depth in (0, 1, 2, 3, 7):
            res = lp_tighten_conditioned(blocks, pre, out, lo, hi, A, b, 0.05, depth=depth)
            assert not res.empty
            _assert_never_looser(res, pre, out)
            for k in range(max(len(pre) - depth, 0)):
                assert np.array_equal(res.pre[k][0], pre[k][0]) and np.array_equal(res.pre[k][1], pre[k][1])
            _assert_contains(res, zs, y, keep, f"depth={depth}")
            for (l0, u0), (l, u) in zip(saved, list(pre) + [out]):
                assert np.array_equal(l0, l) and np.array_equal(u0, u)


# ------------------------------------------------------------------------- 4. empty
@pytest.mark.parametrize("seed", range(3))
def test_unreachable_disjunct_is_proven_empty(seed):
    """``b + tau`` below both the exact minimum of ``a f(x)`` (brute force) by 0.5 and the LP
    relaxation's minimum by 0.05 (so the LP with the row is infeasible): ``empty``. The same for a
    self-contradictory pair of rows."""
    rng, net, lo, hi, pre, out = _case(300 + seed, hidden=[6, 6])
    blocks = net.affine_blocks()
    A = rng.normal(size=(1, 3))
    m0 = brute_force_min_margin(net, lo, hi, OutputSpec([(A, [0.0])], 3)).min_margin
    lp_min = lp_row_bounds(blocks, pre, out, lo, hi, A, [0.0])[0]
    assert lp_min <= m0 + 1e-9
    for tau in (0.0, 0.1):
        b = np.array([min(m0 - 0.5, lp_min - 0.05) - tau])
        for depth in (0, 1, 2):
            res = lp_tighten_conditioned(blocks, pre, out, lo, hi, A, b, tau, depth=depth)
            assert res.empty
            _assert_never_looser(res, pre, out)
        # a y <= c + tau and -a y <= -c - 1 + tau: empty for tau < 0.5
        c = float(np.median(affine_view_values(net, box_points(rng, lo, hi, 500))[1] @ A[0]))
        res = lp_tighten_conditioned(blocks, pre, out, lo, hi, np.vstack([A, -A]), [c, -c - 1.0], tau, depth=2)
        assert res.empty


@pytest.mark.parametrize("seed", range(4))
def test_reachable_disjunct_is_never_empty_even_at_its_minimum(seed):
    """``x0`` the sampled minimiser of ``a f(x)`` (or of two rows' max): with ``b = A f(x0)``
    (``tau = 0``) or ``b = A f(x0) - tau / 2`` (``tau = 0.1``, ``x0`` in ``S`` only thanks to
    ``tau``), ``S`` is a small region around the minimiser (for ``tau = 0``, no other sample is
    in it); never ``empty``, and ``x0`` (and every other sampled point of ``S``) lies within the
    bounds."""
    rng, net, lo, hi, pre, out = _case(400 + seed)
    blocks = net.affine_blocks()
    _, zs, y = _samples(rng, net, lo, hi)
    A = rng.normal(size=(1 + seed % 2, 3))
    rows = y @ A.T
    i0 = int(np.argmin(np.max(rows, axis=1)))
    for tau in (0.0, 0.1):
        b = rows[i0] - tau / 2
        keep = np.all(rows <= b + tau, axis=1)
        assert keep[i0] and keep.sum() < (5 if tau == 0 else keep.size // 5)
        assert tau == 0 or np.all(rows[i0] > b)  # x0 is in S only thanks to tau
        for depth in (0, 1, 2):
            res = lp_tighten_conditioned(blocks, pre, out, lo, hi, A, b, tau, depth=depth)
            assert not res.empty
            _assert_contains(res, zs, y, keep, f"tau={tau} depth={depth}")


# ------------------------------------------------------------------------- 5. MILP keeps the minimum
def _milp_min(blocks, pre, out, lo, hi, A, b):
    res = solve_milp(encode(blocks, pre, out, lo, hi, A, b), time_limit=60, threshold=np.inf)
    assert res.status is MilpStatus.OPTIMAL, res.raw_status
    return res.objective


@pytest.mark.parametrize("seed", range(3))
def test_milp_on_conditioned_bounds_keeps_the_exact_minimum_within_tau(seed):
    """Single row ``a``; ``m0 = min a f(x)`` over the box by brute-force enumeration. For ``b`` with
    ``m0 - b`` well below 0, at ``tau / 2``, just under ``tau``, and (``tau = 0``) just under 0,
    the minimiser lies in ``S``: not ``empty``, its activations inside the conditioned bounds, and
    the MILP on the conditioned bounds has the MILP optimum on the input bounds, ``m0 - b``."""
    rng, net, lo, hi, pre, out = _case(500 + seed, hidden=[6, 6])
    blocks = net.affine_blocks()
    A = rng.normal(size=(1, 3))
    bf = brute_force_min_margin(net, lo, hi, OutputSpec([(A, [0.0])], 3))
    m0, x_star = bf.min_margin, bf.argmin[0]
    z_star, y_star = affine_view_values(net, x_star[None])
    assert abs(float(A[0] @ y_star[0]) - m0) <= 1e-7
    _, _, y = _samples(rng, net, lo, hi, 2000)
    median = float(np.median(y @ A[0]))
    assert median > m0 + 0.1
    for tau, b in ((0.1, median), (0.1, m0 - 0.05), (0.1, m0 - 0.1 + 1e-6), (0.0, m0 + 1e-3), (0.0, m0 + 1e-6)):
        b = np.array([b])
        plain = _milp_min(blocks, pre, out, lo, hi, A, b)
        assert abs(plain - (m0 - b[0])) <= 1e-6  # brute force and MILP agree
        res = lp_tighten_conditioned(blocks, pre, out, lo, hi, A, b, tau, depth=2)
        assert not res.empty, (tau, b)
        for (l, u), z in zip(list(res.pre) + [res.out], list(z_star) + [y_star]):
            assert np.all(z[0] >= l - 1e-7) and np.all(z[0] <= u + 1e-7), (tau, b)
        cond = _milp_min(blocks, res.pre, res.out, lo, hi, A, b)
        assert abs(cond - plain) <= 1e-6, (tau, b, cond, plain)


# ------------------------------------------------------------------------- 6. bad input
def test_bad_tau_and_depth_raise():
    rng, net, lo, hi, pre, out = _case(0)
    blocks = net.affine_blocks()
    A, b = np.eye(3)[[0]], np.array([0.0])
    for tau in (-0.1, -1e-300, np.nan, np.inf, -np.inf):
        with pytest.raises(InvalidInputError):
            lp_tighten_conditioned(blocks, pre, out, lo, hi, A, b, tau)
    for depth in (-1, -5):
        with pytest.raises(InvalidInputError):
            lp_tighten_conditioned(blocks, pre, out, lo, hi, A, b, 0.1, depth=depth)


# ------------------------------------------------------------------------- 7. deadlines
def test_past_deadline_returns_the_input_bounds():
    rng, net, lo, hi, pre, out = _case(1)
    blocks = net.affine_blocks()
    A, b = np.eye(3)[[0]], np.array([float(out[0][0] - 1.0)])  # even an empty disjunct: no LP, no claim
    res = lp_tighten_conditioned(blocks, pre, out, lo, hi, A, b, 0.1, depth=2, deadline=time.monotonic() - 1.0)
    assert not res.empty and res.lps == 0 and res.layers_done == 0 and res.tightened == 0
    for (l0, u0), (l, u) in zip(list(pre) + [out], list(res.pre) + [res.out]):
        assert np.array_equal(l, l0) and np.array_equal(u, u0)


def _median_row_case():
    """Case 2 with the disjunct ``y_1 <= median`` (tau 0.1): the blocks, box and bounds, 5000
    samples' pre-activations and outputs, the row, and which samples lie in S."""
    rng, net, lo, hi, pre, out = _case(2)
    _, zs, y = _samples(rng, net, lo, hi, 5000)
    A = np.eye(3)[[1]]
    b = np.median(y[:, 1], keepdims=True)
    return net.affine_blocks(), lo, hi, pre, out, zs, y, A, b, y[:, 1] <= b[0] + 0.1


def test_any_deadline_leaves_sound_bounds():
    """Deadlines that cut the pass at various points: whatever came back is sound on S and
    never looser."""
    blocks, lo, hi, pre, out, zs, y, A, b, keep = _median_row_case()
    for budget in (0.0, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2):
        res = lp_tighten_conditioned(blocks, pre, out, lo, hi, A, b, 0.1, depth=2,
                                     deadline=time.monotonic() + budget)
        assert not res.empty
        _assert_never_looser(res, pre, out)
        _assert_contains(res, zs, y, keep, f"budget={budget}")


def test_deadline_stops_the_pass_and_every_partial_state_is_sound(monkeypatch):
    """A fake clock that ticks once per reading of ``time.monotonic`` in :mod:`gpuopt.bounds.lp`:
    with the deadline ``k`` ticks away, at most ``k`` LPs run (one reading precedes each), the pass
    finishes for large ``k``, and every state it stops in is sound on S and never looser."""
    import types

    import gpuopt.bounds.lp as lp_module

    blocks, lo, hi, pre, out, zs, y, A, b, keep = _median_row_case()
    full = lp_tighten_conditioned(blocks, pre, out, lo, hi, A, b, 0.1, depth=2)
    assert full.layers_done == 3 and full.lps > 10
    ticks = iter(range(10**9))
    monkeypatch.setattr(lp_module, "time", types.SimpleNamespace(monotonic=lambda: float(next(ticks))))
    seen = set()
    for k in list(range(0, full.lps, 3)) + [10 * full.lps]:
        ticks = iter(range(10**9))
        res = lp_tighten_conditioned(blocks, pre, out, lo, hi, A, b, 0.1, depth=2, deadline=float(k))
        assert res.lps <= k and not res.empty
        seen.add(res.layers_done)
        _assert_never_looser(res, pre, out)
        _assert_contains(res, zs, y, keep, f"deadline after {k} ticks")
    assert res.layers_done == 3 and res.lps == full.lps
    assert len(seen) >= 3  # stopped in different layers
