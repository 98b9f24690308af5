"""MILP refinement of intermediate bounds on *graph* networks (residual Add, Concat, sums of
branches, skips of the raw input or of a pre-activation across several ReLU layers, max-pooling
lowered to a ReLU tree): the refinement never crashes, never loosens a bound, leaves the
passthrough (carried) coordinates alone, and every refined bound still contains every reachable
pre-activation value, checked against

* an independent float64 forward pass over ``network.layers`` / ``network.inputs`` (written here,
  not gpuopt's lowering), on samples, box corners and random vertices;
* the exact range of every ReLU input, by enumerating the ReLU sign patterns of the network's own
  layers (one scipy LP per closed region), for the small nets;

and, through ``verify`` with the refinement on by default (auto share), the verdict on a 20-input
graph net agrees with the exact minimum margin (same enumeration) shifted to +-1e-3.

The block form's ReLU coordinates of level ``k + 1`` are matched to the inputs of the network's
ReLU layers of that level (in layer order), and that matching is itself checked on samples, so
the comparisons do not rest on :mod:`gpuopt.lowering` being right.
"""

from __future__ import annotations

import functools
import math
import time

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from gpuopt import LinfBall, Status, VerifyConfig, robustness, verify
from gpuopt.bounds import ibp, intermediate_bounds
from gpuopt.bounds.milp_refine import milp_refine
from gpuopt.network import Add, Concat, Dense, ElementwiseAffine, Flatten, MaxPool2d, Network, ReLU

from helpers import affine_view_values, box_points, random_dag_network, shifted_spec


# ============================================================================ networks
def _dense(rng, n_out, n_in, bias=0.4):
    return Dense(rng.normal(size=(n_out, n_in)) / math.sqrt(n_in), bias * rng.normal(size=n_out))


def net_residual(rng, n=6, w=8):
    """x -> D -> ReLU (r1) -> D -> ReLU -> D -> Add(., r1) -> ReLU -> D -> ReLU -> D: a ReLU output
    carried past one ReLU layer (passthrough) and added to a later pre-activation."""
    layers = [_dense(rng, w, n), ReLU(), _dense(rng, w, w), ReLU(), _dense(rng, w, w), Add(), ReLU(),
              _dense(rng, 6, w), ReLU(), _dense(rng, 3, 6)]
    return Network(layers, (n,), inputs=[(-1,), (0,), (1,), (2,), (3,), (4, 1), (5,), (6,), (7,), (8,)])


def net_branches(rng, n=6, w=6):
    """A ReLU whose input is the sum of a level-0 branch (Dense of x) and a level-1 branch
    (Dense(ReLU(Dense x))); later the raw input skips two ReLU layers into another Add."""
    layers = [_dense(rng, w, n), _dense(rng, w, n), ReLU(), _dense(rng, w, w), Add(), ReLU(),
              _dense(rng, w, w), ReLU(), _dense(rng, n, w), Add(), ReLU(), _dense(rng, 3, n)]
    inputs = [(-1,), (-1,), (1,), (2,), (0, 3), (4,), (5,), (6,), (7,), (8, -1), (9,), (10,)]
    return Network(layers, (n,), inputs=inputs)


def net_concat(rng, n=5, w=5):
    """Concat of a one-ReLU branch, a two-ReLU branch and the raw input -> D -> ReLU -> D."""
    layers = [_dense(rng, w, n), ReLU(), _dense(rng, w, n), ReLU(), _dense(rng, w, w), ReLU(),
              Concat(0, 3), _dense(rng, 8, 2 * w + n), ReLU(), _dense(rng, 3, 8)]
    inputs = [(-1,), (0,), (-1,), (2,), (3,), (4,), (1, 5, -1), (6,), (7,), (8,)]
    return Network(layers, (n,), inputs=inputs)


def net_deep_skip(rng, n=5, w=6):
    """A pre-activation of the input (Dense, level 0, negative values carried) added after three
    ReLU layers, and a ReLU output read twice by one Add(3)."""
    layers = [_dense(rng, w, n), ReLU(), _dense(rng, w, w), ReLU(), _dense(rng, w, w), ReLU(), Add(3),
              _dense(rng, w, w), _dense(rng, w, n, bias=1.0), Add(), ReLU(), _dense(rng, 3, w)]
    inputs = [(-1,), (0,), (1,), (2,), (3,), (4,), (5, 3, 1), (6,), (-1,), (7, 8), (9,), (10,)]
    return Network(layers, (n,), inputs=inputs)


NETS = {"residual": net_residual, "branches": net_branches, "concat": net_concat, "deep-skip": net_deep_skip}


def net_pool_residual(rng):
    """(1, 4, 4): affine -> 2x2 max-pool (a tree of ReLUs whose carried halves pass through) ->
    D -> ReLU -> D -> Add(., pooled) -> ReLU -> D (not covered by the reference below: checked
    through the block form, whose output is checked against ``forward64``)."""
    layers = [ElementwiseAffine(rng.normal(size=(1, 1, 1)), rng.normal(size=(1, 1, 1))), MaxPool2d((2, 2), (2, 2)),
              Flatten(), _dense(rng, 6, 4), ReLU(), _dense(rng, 4, 6), Add(), ReLU(), _dense(rng, 2, 4)]
    return Network(layers, (1, 4, 4), inputs=[(-1,), (0,), (1,), (2,), (3,), (4,), (5, 2), (6,), (7,)])


def random_dag(rng, n_layers: int, n_in: int, max_w: int = 8) -> Network:
    """A random DAG of Dense, ReLU, Add and Concat on vectors (:func:`helpers.random_dag_network`),
    layers of 2 to ``max_w`` units, dense layers twice as likely as in the graph tests."""
    return random_dag_network(rng, n_layers, n_in, dense=_dense,
                              kinds=("dense", "dense", "relu", "relu", "add", "concat"), min_w=2, max_w=max_w)


# ============================================================================ independent reference
def ref_values(net: Network, x) -> dict:
    """Every layer's output for the inputs ``x`` (batch, n) in plain float64 numpy."""
    vals = {-1: np.asarray(x, dtype=np.float64).reshape(len(x), -1)}
    for i, (layer, ins) in enumerate(zip(net.layers, net.inputs)):
        xs = [vals[j] for j in ins]
        if isinstance(layer, Dense):
            vals[i] = xs[0] @ np.asarray(layer.weight).T + np.asarray(layer.bias)
        elif isinstance(layer, ReLU):
            vals[i] = np.maximum(xs[0], 0.0)
        elif isinstance(layer, Add):
            vals[i] = sum(xs[1:], xs[0])
        elif isinstance(layer, Concat):
            vals[i] = np.concatenate(xs, axis=1)
        else:  # pragma: no cover
            raise TypeError(type(layer).__name__)
    return vals


def relus_by_level(net: Network) -> dict:
    """``{level: [ReLU layer indices]}`` (level: ReLUs on the longest path from the input, the
    ReLU included), for the ReLU layers the block form keeps (read by a layer, or the output)."""
    lv = {-1: 0}
    for i, (layer, ins) in enumerate(zip(net.layers, net.inputs)):
        lv[i] = lv[ins[0]] + 1 if isinstance(layer, ReLU) else max(lv[j] for j in ins)
    out = len(net.layers) - 1
    read = {j for ins in net.inputs for j in ins} | {out}
    by: dict = {}
    for i, layer in enumerate(net.layers):
        if isinstance(layer, ReLU) and i in read and lv[i] <= lv[out]:
            by.setdefault(lv[i], []).append(i)
    return by


def relu_mask(block, n: int) -> np.ndarray:
    return np.ones(n, dtype=bool) if block.passthrough is None else ~np.asarray(block.passthrough, dtype=bool)


def block_relu_inputs(net: Network, vals: dict, k: int) -> np.ndarray:
    """The reference values of block ``k``'s ReLU coordinates: the inputs of the level-``k + 1``
    ReLU layers, concatenated in layer order."""
    return np.concatenate([vals[net.inputs[i][0]] for i in relus_by_level(net)[k + 1]], axis=1)


def _lp(c, G, g, box):
    res = linprog(c, A_ub=G if len(G) else None, b_ub=g if len(g) else None, bounds=box, method="highs",
                  options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10})
    assert res.status in (0, 2), res.message
    return res


def enumerate_exact(net: Network, lower, upper, spec=None, *, n_samples: int = 300, seed: int = 0):
    """Exact ``(min, max)`` of every ReLU layer's input coordinates over the box (``{layer: (mn,
    mx)}``) and, with a ``spec``, its exact minimum margin per disjunct, by a depth-first walk of
    the layers: each tensor is an affine function of ``x`` on the current closed region ``G x <= g``,
    each ReLU coordinate is split into ``z >= 0`` / ``z <= 0`` (kept when a sample point or an LP
    says the region is non-empty), and at each visit of a ReLU layer its inputs are minimised and
    maximised over the region. The regions visited at a layer cover the box, so the extremes
    over them are exact (up to the LP tolerances)."""
    lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    n = lower.size
    box = list(zip(lower, upper))
    samples = box_points(np.random.default_rng(seed), lower, upper, n_samples)
    svals = ref_values(net, samples)
    L = len(net.layers)
    ranges = {i: (np.full(svals[i].shape[1], np.inf), np.full(svals[i].shape[1], -np.inf))
              for i, layer in enumerate(net.layers) if isinstance(layer, ReLU)}
    best = None if spec is None else np.full(spec.n_disjuncts, np.inf)

    def leaf(E, G, g):
        for k, (A, b) in enumerate(spec.disjuncts):
            coef, const = A @ E[1:].T, A @ E[0] - b
            if A.shape[0] == 1:
                res = _lp(coef[0], G, g, box)
                if res.status == 0:
                    best[k] = min(best[k], res.fun + const[0])
            else:  # min t s.t. coef_i x - t <= -const_i
                G2 = np.hstack([G, np.zeros((len(G), 1))]) if len(G) else np.zeros((0, n + 1))
                res = _lp(np.r_[np.zeros(n), 1.0], np.vstack([G2, np.hstack([coef, -np.ones((len(coef), 1))])]),
                          np.r_[g, -const], box + [(None, None)])
                if res.status == 0:
                    best[k] = min(best[k], res.fun)

    def walk(i, env, G, g, mask):
        if i == L:
            if spec is not None:
                leaf(env[L - 1], G, g)
            return
        layer, ins = net.layers[i], net.inputs[i]
        Es = [env[j] for j in ins]  # row 0: the constant, rows 1..n: the coefficients of x
        if isinstance(layer, Dense):
            E = Es[0] @ np.asarray(layer.weight).T
            E[0] += np.asarray(layer.bias)
            walk(i + 1, {**env, i: E}, G, g, mask)
        elif isinstance(layer, Add):
            walk(i + 1, {**env, i: sum(Es[1:], Es[0])}, G, g, mask)
        elif isinstance(layer, Concat):
            walk(i + 1, {**env, i: np.concatenate(Es, axis=1)}, G, g, mask)
        else:
            E, Z = Es[0], svals[ins[0]]
            mn, mx = ranges[i]
            for j in range(E.shape[1]):
                lo_res, hi_res = _lp(E[1:, j], G, g, box), _lp(-E[1:, j], G, g, box)
                if lo_res.status == 0:
                    mn[j] = min(mn[j], lo_res.fun + E[0, j])
                    mx[j] = max(mx[j], -hi_res.fun + E[0, j])

            def coord(j, G, g, mask, D):
                if j == E.shape[1]:
                    walk(i + 1, {**env, i: E * np.array(D)[None]}, G, g, mask)
                    return
                for active in (True, False):
                    row, rhs = (-E[1:, j], E[0, j]) if active else (E[1:, j], -E[0, j])
                    G2, g2 = (np.vstack([G, row[None]]) if len(G) else row[None]), np.r_[g, rhs]
                    m2 = mask & ((Z[:, j] >= 0) if active else (Z[:, j] <= 0))
                    if m2.any() or _lp(np.zeros(n), G2, g2, box).status == 0:
                        coord(j + 1, G2, g2, m2, D + [1.0 if active else 0.0])

            coord(0, G, g, mask, [])

    walk(0, {-1: np.vstack([np.zeros((1, n)), np.eye(n)])}, np.zeros((0, n)), np.zeros(0),
         np.ones(len(samples), dtype=bool))
    return ranges, best


# ============================================================================ helpers
def _pre(net, lo, hi, method):
    b = method(net, torch.tensor(lo)[None], torch.tensor(hi)[None])
    return [(l[0].numpy().astype(np.float64), u[0].numpy().astype(np.float64)) for l, u in b.pre_activation]


def _box(rng, n, radius):
    c = rng.normal(size=n)
    return c - radius, c + radius


def _check_matching(net, x):
    """The block form's output equals the reference forward, and its ReLU coordinates of each
    level equal the reference ReLU inputs of that level: returns the block pre-activations."""
    zs, y = affine_view_values(net, x)
    vals = ref_values(net, x)
    scale = max(1.0, max(float(np.abs(v).max()) for v in vals.values()))
    np.testing.assert_allclose(y, vals[len(net.layers) - 1], rtol=0, atol=1e-11 * scale)
    blocks = net.affine_blocks()
    for k, z in enumerate(zs):
        np.testing.assert_allclose(z[:, relu_mask(blocks[k], z.shape[1])], block_relu_inputs(net, vals, k),
                                   rtol=0, atol=1e-11 * scale)
    return zs


def _assert_sound_on_points(net, pre, res, x, zs=None):
    """Never looser than ``pre``, passthrough coordinates untouched, and every block
    pre-activation at the points ``x`` inside the refined bounds (1e-9 slack). Returns how many
    (point, neuron) values were checked."""
    zs = affine_view_values(net, x)[0] if zs is None else zs
    blocks = net.affine_blocks()
    checked = 0
    assert len(res.pre) == len(pre)
    for k, ((l0, u0), (l, u), z) in enumerate(zip(pre, res.pre, zs)):
        assert l.shape == l0.shape and u.shape == u0.shape
        assert np.all(l >= l0) and np.all(u <= u0), k
        through = ~relu_mask(blocks[k], l.size)
        assert np.array_equal(l[through], l0[through]) and np.array_equal(u[through], u0[through]), k
        low, high = z < l - 1e-9, z > u + 1e-9
        assert not low.any() and not high.any(), (k, np.flatnonzero(low.any(0) | high.any(0)))
        checked += z.size
    return checked


# ============================================================================ 1. samples, bigger nets
SAMPLE_CASES = [("residual", dict(n=12, w=10), 0.5), ("residual", dict(n=4, w=12), 0.8),
                ("branches", dict(n=8, w=8), 0.6), ("branches", dict(n=20, w=6), 0.3),
                ("concat", dict(n=10, w=6), 0.5), ("concat", dict(n=4, w=8), 1.0),
                ("deep-skip", dict(n=16, w=8), 0.4), ("deep-skip", dict(n=6, w=10), 0.8)]


METHODS = {"ibp": ibp, "crown": intermediate_bounds}


@functools.lru_cache(maxsize=None)
def _sample_case(case: int, method: str):
    """``(net, lo, hi, pre, refinement)`` of a case (cached: the binding test below reuses it). The
    odd cases run without the witness search, so that the MILPs of truly unstable neurons (which
    the witnesses skip) narrow bounds here too."""
    kind, size, radius = SAMPLE_CASES[case]
    rng = np.random.default_rng(100 + case)
    net = NETS[kind](rng, **size)
    lo, hi = _box(rng, net.input_size, radius)
    pre = _pre(net, lo, hi, METHODS[method])
    return net, lo, hi, pre, milp_refine(net.affine_blocks(), pre, lo, hi, neuron_time=5.0, witnesses=case % 2 == 0)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("case", range(len(SAMPLE_CASES)))
def test_refined_bounds_hold_on_samples_of_graph_nets(case, method):
    net, lo, hi, pre, res = _sample_case(case, method)
    assert not net.is_chain and any(b.passthrough is not None for b in net.affine_blocks()[:-1])
    assert res.milps > 0
    x = box_points(np.random.default_rng(case), lo, hi, 6000, max_corner_dim=8, n_random_vertices=300)
    assert _assert_sound_on_points(net, pre, res, x, _check_matching(net, x)) > 0


def test_the_sample_tests_bind():
    """Over the cases above the refinement makes neurons stable and narrows others."""
    stabilised = tightened = 0
    for case in range(len(SAMPLE_CASES)):
        for method in METHODS:
            res = _sample_case(case, method)[-1]
            stabilised += res.stabilised
            tightened += res.tightened
    assert stabilised >= 10 and tightened >= 10, (stabilised, tightened)


@pytest.mark.parametrize("seed", range(2))
def test_max_pool_tree_with_a_skip_is_refined_soundly(seed):
    """Max-pooling lowered to ReLUs (``max(a, b) = b + relu(a - b)``, ``b`` carried) and a skip of
    the pooled values: sound on samples of the block form, which equals ``forward64``."""
    rng = np.random.default_rng(300 + seed)
    net = net_pool_residual(rng)
    lo, hi = _box(rng, net.input_size, 0.7)
    pre = _pre(net, lo, hi, ibp)
    res = milp_refine(net.affine_blocks(), pre, lo, hi, neuron_time=5.0)
    assert res.milps > 0
    x = box_points(rng, lo, hi, 4000, n_random_vertices=300)
    zs, y = affine_view_values(net, x)
    np.testing.assert_allclose(y, net.forward64(x.reshape(-1, 1, 4, 4)), rtol=0, atol=1e-10)
    _assert_sound_on_points(net, pre, res, x, zs)


# ============================================================================ 2. random DAGs
def _dag_case(seed):
    rng = np.random.default_rng(seed)
    net = random_dag(rng, int(rng.integers(6, 14)), int(rng.integers(3, 9)))
    n = net.input_size
    c, radius = rng.normal(size=n), rng.choice([0.0, 0.1, 0.5, 1.0, 2.0], size=n)  # some coordinates fixed
    return rng, net, c - radius, c + radius


def test_random_dags_are_refined_soundly():
    """60 random DAGs with 2+ hidden levels, bounds by IBP or CROWN, one or two MILPs at once."""
    nets, milps, changed = refine_random_dags(60, lambda net, pre, lo, hi, seed: milp_refine(
        net.affine_blocks(), pre, lo, hi, neuron_time=2.0, parallel=1 + seed % 3 // 2))
    assert nets == 60 and milps > 100 and changed > 10, (nets, milps, changed)


def refine_random_dags(count: int, refine) -> tuple[int, int, int]:
    """The first ``count`` random DAGs with 2+ hidden levels (bounds by IBP or CROWN, in turn),
    each refined by ``refine(net, pre, lo, hi, seed)`` and checked sound on points; returns the
    nets, the proofs run and the neurons moved (stabilised or narrowed)."""
    nets = proofs = changed = 0
    for seed in range(200):
        rng, net, lo, hi = _dag_case(seed)
        if len(net.affine_blocks()) < 3:
            continue
        pre = _pre(net, lo, hi, ibp if seed % 2 else intermediate_bounds)
        res = refine(net, pre, lo, hi, seed)
        x = box_points(rng, lo, hi, 2000, n_random_vertices=100)
        _assert_sound_on_points(net, pre, res, x, _check_matching(net, x))
        nets += 1
        proofs += res.milps
        changed += res.stabilised + res.tightened
        if nets == count:
            break
    return nets, proofs, changed


# ============================================================================ 3. exact ranges
EXACT_CASES = [("branches", 0), ("branches", 1), ("concat", 0), ("concat", 1), ("deep-skip", 0), ("deep-skip", 1),
               ("residual", 1)]


def _exact_case(kind, seed):
    rng = np.random.default_rng(seed)
    size = dict(n=4, w=4) if kind == "residual" else dict(n=4, w=5 if kind != "concat" else 4)
    net = NETS[kind](rng, **size)
    lo, hi = _box(rng, net.input_size, 0.6)
    return net, lo, hi


@pytest.mark.parametrize("kind, seed", EXACT_CASES)
def test_refined_bounds_contain_the_exact_ranges(kind, seed):
    """Every refined bound of a ReLU coordinate contains its exact range over the box (the
    enumeration); every coordinate whose exact range lies clearly on one side of 0 is made stable
    on that side, and one whose range clearly crosses 0 stays unstable."""
    net, lo, hi = _exact_case(kind, seed)
    pre = _pre(net, lo, hi, ibp)
    assert_contains_exact_ranges(net, lo, hi, pre, milp_refine(net.affine_blocks(), pre, lo, hi, neuron_time=10.0),
                                 seed)


def assert_contains_exact_ranges(net, lo, hi, pre, res, seed, clear=1e-6):
    """Every refined bound of a ReLU coordinate contains its exact range over the box (the
    enumeration, and samples); from layer 1 on, one whose exact range lies ``clear`` on one side of
    0 is stable on that side, and one whose range crosses 0 by 1e-6 stays unstable."""
    blocks = net.affine_blocks()
    ranges, _ = enumerate_exact(net, lo, hi)
    by = relus_by_level(net)
    x = box_points(np.random.default_rng(seed), lo, hi, 2000)
    _assert_sound_on_points(net, pre, res, x, _check_matching(net, x))
    checked = 0
    for k in range(len(pre)):
        keep = relu_mask(blocks[k], pre[k][0].size)
        mn = np.concatenate([ranges[i][0] for i in by[k + 1]])
        mx = np.concatenate([ranges[i][1] for i in by[k + 1]])
        (l0, u0), (l, u) = pre[k], res.pre[k]
        l0, u0, l, u = l0[keep], u0[keep], l[keep], u[keep]
        assert mn.shape == l.shape and np.all(np.isfinite(mn)) and np.all(np.isfinite(mx))
        tol = 1e-9 * np.maximum(1.0, np.maximum(np.abs(l0), np.abs(u0)))
        assert np.all(l <= mn + tol), (k, l, mn)
        assert np.all(u >= mx - tol), (k, u, mx)
        if k >= 1:  # the layers the refinement works on
            assert np.all(u[mx < -clear] <= 0), (k, u, mx)
            assert np.all(l[mn > clear] >= 0), (k, l, mn)
            crosses = (mn < -1e-6) & (mx > 1e-6)
            assert np.all((l[crosses] < 0) & (u[crosses] > 0))
        checked += l.size
    assert checked == net.n_relus


def test_the_exact_range_tests_bind():
    """Over those cases some coordinate left unstable by IBP is exactly one-sided and made stable."""
    stabilised = 0
    for kind, seed in EXACT_CASES:
        net, lo, hi = _exact_case(kind, seed)
        stabilised += milp_refine(net.affine_blocks(), _pre(net, lo, hi, ibp), lo, hi, neuron_time=10.0).stabilised
    assert stabilised >= 5, stabilised


# ============================================================================ 4. threads, deadline
def test_parallel_milps_give_the_same_bounds_on_a_graph_net():
    rng = np.random.default_rng(7)
    net = net_deep_skip(rng, n=8, w=8)
    lo, hi = _box(rng, net.input_size, 0.6)
    pre = _pre(net, lo, hi, ibp)
    one = milp_refine(net.affine_blocks(), pre, lo, hi, neuron_time=10.0)
    three = milp_refine(net.affine_blocks(), pre, lo, hi, neuron_time=10.0, parallel=3)
    assert one.milps > 0
    assert (one.milps, one.stabilised, one.tightened) == (three.milps, three.stabilised, three.tightened)
    for (l1, u1), (l3, u3) in zip(one.pre, three.pre):
        assert np.array_equal(l1, l3) and np.array_equal(u1, u3)


@pytest.mark.parametrize("seconds", [0.02, 0.1])
def test_a_deadline_mid_refinement_leaves_sound_bounds(seconds):
    """Cut off part-way (some layers refined, others not, MILPs interrupted): still sound."""
    rng = np.random.default_rng(11)
    net = net_residual(rng, n=12, w=12)
    lo, hi = _box(rng, net.input_size, 0.8)
    pre = _pre(net, lo, hi, ibp)
    res = milp_refine(net.affine_blocks(), pre, lo, hi, deadline=time.monotonic() + seconds, neuron_time=0.05,
                      parallel=2)
    assert res.seconds < seconds + 5.0
    x = box_points(rng, lo, hi, 5000, n_random_vertices=300)
    _assert_sound_on_points(net, pre, res, x, _check_matching(net, x))


# ============================================================================ 5. through verify
def net_pipeline(rng, n=20, w=8):
    """20 inputs: D -> ReLU (r1) -> D -> ReLU -> D, plus a Dense of the raw input (carried two
    ReLU layers) and r1, all added -> ReLU -> D (3 classes)."""
    layers = [_dense(rng, w, n), ReLU(), _dense(rng, w, w), ReLU(), _dense(rng, w, w), _dense(rng, w, n), Add(3),
              ReLU(), _dense(rng, 3, w)]
    return Network(layers, (n,), inputs=[(-1,), (0,), (1,), (2,), (3,), (-1,), (4, 5, 1), (6,), (7,)])


def _pipeline_case(seed):
    rng = np.random.default_rng(seed)
    net = net_pipeline(rng)
    centre = rng.normal(size=net.input_size)
    label = int(np.argmax(net.forward64(centre[None])[0]))
    region = LinfBall(centre, 0.15)
    spec = robustness(label, 3)
    box = region.to_box()
    _, minima = enumerate_exact(net, box.lower, box.upper, spec, seed=seed)
    assert np.all(np.isfinite(minima))
    return net, region, spec, minima


PIPELINE_SEEDS = (0, 2)


@pytest.mark.parametrize("seed", PIPELINE_SEEDS)
def test_verify_with_default_refinement_on_a_graph_net_agrees_with_enumeration(seed):
    """Robustness specs shifted so that the exact minimum margin is +1e-3 (holds: never sat) or
    -1e-3 (violated: never unsat, and sat only with a real counterexample in the ball). The
    refinement is on by default (auto share: 20 inputs, timeout 61 s); with a probe that has no
    time, whatever the probe leaves open goes to ``milp_refine`` and then to activation splitting."""
    net, region, spec, minima = _pipeline_case(seed)
    assert net.input_size > 16 and not net.is_chain
    assert VerifyConfig().refine_share(net.input_size, net.n_relus, 61.0) > 0
    box = region.to_box()
    config = VerifyConfig(use_attack=False, use_input_split=False, milp_refine_probe_share=1e-12)
    refined = decided = 0
    for delta in (1e-3, -1e-3):
        shifted = shifted_spec(spec, minima, delta)
        v = verify(net, region, shifted, timeout=61, config=config)
        names = [e["stage"] for e in v.events]
        if delta > 0:
            assert v.status is not Status.SAT, v
        else:
            assert v.status is not Status.UNSAT, v
        if v.status is Status.SAT:
            x = v.counterexample
            assert x is not None and np.all(x >= box.lower) and np.all(x <= box.upper)
            y = ref_values(net, x[None])[len(net.layers) - 1][0]
            margin = min(float(np.max(A @ y - b)) for A, b in shifted.disjuncts)
            assert margin <= 1e-12, margin
            assert margin >= delta - 1e-6  # no point beats the exact minimum
        decided += v.status in (Status.SAT, Status.UNSAT)
        if "relu_split_probe" in names and names[-1] != "relu_split_probe":  # the probe left it open
            at = names.index("relu_split_probe")
            assert names[at + 1] == "refine", names
            assert "relu_split" in names[at + 2:], names
            refined += 1
    assert decided == 2
    assert refined >= 1  # the +1e-3 case is not decided by the probe that has no time


def test_unstable_counts_leave_out_carried_coordinates():
    """``unstable_before``/``unstable_after`` count ReLU neurons only: a carried (passthrough)
    coordinate with ``l < 0 < u`` is not an unstable neuron."""
    net, lo, hi, pre, res = _sample_case(0, next(iter(METHODS)))
    blocks = net.affine_blocks()
    carried_open = 0
    for k, ((l0, u0), (l, u)) in enumerate(zip(pre, res.pre)):
        mask = relu_mask(blocks[k], l0.shape[0])
        carried_open += int(((l0 < 0) & (u0 > 0) & ~mask).sum())
        assert res.unstable_before[k] == int(((l0 < 0) & (u0 > 0) & mask).sum())
        assert res.unstable_after[k] == int(((l < 0) & (u > 0) & mask).sum())
    assert carried_open > 0  # the case has such coordinates, so the counts above differ from a plain count
