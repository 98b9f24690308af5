"""Adversarial review of commit 92ac30f: a layer's neurons refined in ONE activation-splitting
search (``milp_refine(..., method="split")``, :func:`gpuopt.bounds.milp_refine._split_layer`) and
the ``relu_split`` additions it rests on (``selection="fair"``, ``disjunct_domains``,
``ReluSplitResult.open_bound``).

Ground truth: float64 samples (box points, corners / random vertices) of the block form
(``helpers.affine_view_values``), exact enumeration (``helpers.brute_force_min_margin``) for tiny
nets. Checked here:

* ``relu_split`` with given-up disjuncts: ``min(open_bound, proven_bound)`` below the true minimum,
  a closed disjunct unreachable and with ``open_bound == inf``, an open one never ``+inf``, given-up
  disjuncts never closed and handing on no leaves, ``unsat`` only when all are closed (neuron rows
  on prefix chains; multi-row disjuncts against brute force, dense and conv);
* ``_fair_order`` against a plain-Python reference (ties, empty, one disjunct);
* ``_split_layer`` directly: the side -> bound sign mapping, 0 / 1 unstable neurons, witnessed
  sides, no time left, a tiny ``splits``;
* ``milp_refine(method="split")`` with a tiny split cap (sides given up after one split), more
  sides than ``batch_size``, dyadic nets whose ranges touch 0 exactly, graph and conv nets;
* domains whose CROWN bound is NaN (float64 overflow) must not be skipped by ``open_bound``.
"""

from __future__ import annotations

import functools
import math
import time

import numpy as np
import pytest
import torch

import gpuopt.bounds.milp_refine as mr
from gpuopt.bounds import ibp, intermediate_bounds
from gpuopt.bounds.base import Bounds
from gpuopt.bounds.milp_refine import _split_layer, milp_refine
from gpuopt.relu_split import ReluSplitConfig, _fair_order, relu_split

from helpers import (affine_view_values, box_points, brute_force_min_margin, random_conv_network,
                     random_dense_network, shifted_spec, to_alternating_dense)
from test_milp_refine_exact import _assert_sound, _dyadic, _net
from test_milp_refine_exact import _pre as _pre_exact
from test_milp_refine_graph import NETS, _assert_sound_on_points, _box, _check_matching
from test_milp_refine_graph import _pre as _pre_graph
from test_relu_split import _case as _split_case
from test_relu_split import _run as _split_run


# ============================================================================ helpers
def _pre(net, lo, hi, f=ibp):
    b = f(net, torch.tensor(lo)[None], torch.tensor(hi)[None])
    return [(l[0].numpy().astype(np.float64).copy(), u[0].numpy().astype(np.float64).copy()) for l, u in b.pre_activation]


def _prior(pre, k, l, u):
    before = tuple((torch.tensor(a[None]), torch.tensor(b[None])) for a, b in pre[:k])
    return Bounds(before, (torch.tensor(l[None]), torch.tensor(u[None])), "prior")


def _side_rows(n_out, sides):
    rows = []
    for j, s in sides:
        C = np.zeros((1, n_out))
        C[0, j] = s
        rows.append((C, np.zeros(1), None))
    return rows


def _call_split_layer(net, pre, k, lo, hi, *, order=None, splits=256, left=lambda: 30.0, seen=None):
    """``_split_layer`` on layer ``k`` of ``net`` from ``pre``: ``(sides, stable, l, u)``."""
    l, u = pre[k][0].copy(), pre[k][1].copy()
    order = np.flatnonzero((l < 0) & (u > 0)) if order is None else order
    n, stable = _split_layer(net.prefix(k), order, _prior(pre, k, l, u), torch.tensor(lo), torch.tensor(hi), l, u,
                             splits=splits, left=left, seen=seen)
    return n, stable, l, u


def _assert_inside(net, lo, hi, pre, res, n=6000, seed=0, tol=1e-9):
    x = box_points(np.random.default_rng(seed), lo, hi, n, n_random_vertices=200)
    for k, ((l0, u0), (l, u), z) in enumerate(zip(pre, res.pre, affine_view_values(net, x)[0])):
        assert np.all(l >= l0) and np.all(u <= u0), k
        bad = (z < l - tol) | (z > u + tol)
        assert not bad.any(), (k, np.flatnonzero(bad.any(0)), l, u)


# ============================================================================ relu_split: open_bound / given up
CONFIGS = [dict(disjunct_domains=1, batch_size=1, selection="fair"),
           dict(disjunct_domains=3, batch_size=3, selection="fair"),
           dict(disjunct_domains=2, batch_size=2, selection="worst")]


@functools.lru_cache(maxsize=None)
def _neuron_sides(seed):
    """Rows ``-z_j`` / ``+z_j`` of every unstable neuron of a hidden layer, as ``_split_layer``
    builds them, on the prefix chain, with tiny split caps and batch sizes: a closed side is
    unreachable (``open_bound == inf``), an open one has a finite ``open_bound``,
    ``min(open_bound, proven_bound)`` is below the sampled minimum, a given-up side is never closed
    and hands on no leaves, and ``unsat`` only when every side is closed."""
    rng = np.random.default_rng(seed)
    n_in = int(rng.integers(2, 4))
    net = random_dense_network(rng, n_in, [5, 5, 5], 2)
    c = rng.normal(size=n_in)
    lo, hi = c - 0.8, c + 0.8
    pre = _pre(net, lo, hi, ibp if seed % 2 else intermediate_bounds)
    x = box_points(rng, lo, hi, 20000)
    zs = affine_view_values(net, x)[0]
    given_up = closed_seen = 0
    for k in (1, 2):
        l, u = pre[k]
        sides = [(int(j), s) for j in np.flatnonzero((l < 0) & (u > 0)) for s in (-1.0, 1.0)]
        if not sides:
            continue
        rows = _side_rows(net.prefix(k).output_size, sides)
        for cfg in CONFIGS:
            res = relu_split(net.prefix(k), torch.tensor(lo), torch.tensor(hi), rows, _prior(pre, k, l, u),
                             deadline=time.monotonic() + 10, config=ReluSplitConfig(handoff=10 ** 6, **cfg))
            assert len(res.open_bound) == len(rows) == len(res.closed)
            if not all(res.closed):
                assert res.status != "unsat", (k, cfg, res.status)
            for (j, s), closed, ob, pb, leaves in zip(sides, res.closed, res.open_bound, res.proven_bound, res.leaves):
                true_min = float((s * zs[k][:, j]).min())
                assert min(ob, pb) <= true_min + 1e-12, (k, j, s, cfg, ob, pb, true_min)
                if closed:
                    closed_seen += 1
                    assert ob == math.inf and true_min > 0 and pb > 0, (k, j, s, cfg)
                else:
                    assert math.isfinite(ob) and ob <= 0, (k, j, s, cfg, ob)
                    if leaves is None:  # handoff is huge: only a given-up side hands on none
                        given_up += 1
    return given_up, closed_seen


@pytest.mark.parametrize("seed", range(6))
def test_neuron_sides_open_bound_and_closed_are_sound_on_samples(seed):
    _neuron_sides(seed)


def test_the_neuron_side_cases_bind():
    """Over the seeds above both given-up and closed sides occur."""
    given_up = sum(_neuron_sides(seed)[0] for seed in range(6))
    closed = sum(_neuron_sides(seed)[1] for seed in range(6))
    assert given_up > 0 and closed > 0


@pytest.mark.parametrize("conv", [False, True])
def test_multi_row_disjuncts_given_up_agree_with_brute_force(conv):
    """The ``test_relu_split`` cases (1-2 rows per disjunct, dense and conv), exact minimum moved to
    +-1e-3, searched with a split cap of 1 or 2, ``batch_size`` 2 and fair selection: verdicts and
    bounds agree with brute force and given-up disjuncts stay open without leaves."""
    given_up = 0
    for seed in range(8 if not conv else 2):
        net, lo, hi, spec = _split_case(seed, conv)
        minima = brute_force_min_margin(to_alternating_dense(net), lo, hi, spec).per_disjunct
        for delta in (1e-3, -1e-3):
            for cap in (1, 2):
                res = _split_run(net, lo, hi, shifted_spec(spec, minima, delta), deadline_s=10.0,
                                 config=ReluSplitConfig(batch_size=2, selection="fair", disjunct_domains=cap,
                                                        handoff=10 ** 6))
                if res.status == "sat":
                    assert delta < 0
                    continue
                if res.status == "unsat":
                    assert delta > 0 and all(res.closed)
                for k, closed in enumerate(res.closed):
                    assert min(res.open_bound[k], res.proven_bound[k]) <= delta + 1e-9, (seed, delta, cap, k, res)
                    if closed:
                        assert delta > 0 and res.open_bound[k] == math.inf and res.leaves[k] == ()
                    else:
                        assert math.isfinite(res.open_bound[k]), (seed, delta, cap, k, res)
                        given_up += res.leaves[k] is None
    assert given_up > 0


def test_a_given_up_disjunct_keeps_the_search_from_unsat_when_the_others_close():
    """Disjunct 0 (``+z`` of an always-positive neuron) closes at the root; disjunct 1 (``-z`` of
    a crossing neuron) cannot and is given up after one split: status ``unknown``, closed
    ``(True, False)``, ``open_bound`` ``(inf, finite <= its true minimum)``, leaves ``((), None)``."""
    # z1 = [relu(x0) + 0.5, relu(x0) - relu(x1)] over [-1, 1]^2
    net = _net([([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0]), ([[1.0, 0.0], [1.0, -1.0]], [0.5, 0.0]), ([[1.0, 1.0]], [0.0])])
    lo, hi = -np.ones(2), np.ones(2)
    pre = _pre(net, lo, hi)
    l, u = pre[1][0].copy(), pre[1][1].copy()
    l[0] = -1.0  # a sound but loose lower bound: neuron 0 looks unstable
    pre[1] = (l, u)
    rows = _side_rows(2, [(0, 1.0), (1, -1.0)])
    for cap in (1, 2):
        res = relu_split(net.prefix(1), torch.tensor(lo), torch.tensor(hi), rows, _prior(pre, 1, l, u),
                         deadline=time.monotonic() + 10,
                         config=ReluSplitConfig(handoff=10 ** 6, selection="fair", disjunct_domains=cap))
        assert res.status == "unknown" and res.closed == (True, False), res
        assert res.open_bound[0] == math.inf and res.open_bound[1] <= -1.0 + 1e-12, res
        assert res.leaves[0] == () and res.leaves[1] is None, res.leaves


# ============================================================================ _fair_order
def _fair_reference(bound, tag):
    b, t = bound.tolist(), tag.tolist()
    rank, count = {}, {}
    for i in sorted(range(len(b)), key=lambda i: b[i]):
        rank[i] = count.get(t[i], 0)
        count[t[i]] = rank[i] + 1
    return sorted(range(len(b)), key=lambda i: (rank[i], -b[i]))


def test_fair_order_matches_a_plain_reference_with_ties():
    rng = np.random.default_rng(0)
    for trial in range(400):
        n, K = int(rng.integers(0, 25)), int(rng.integers(1, 6))
        vals = rng.choice([-3.0, -1.0, -0.5, 0.0], size=n) if trial % 2 else rng.normal(size=n)
        bound, tag = torch.tensor(vals), torch.tensor(rng.integers(0, K, size=n))
        got = _fair_order(bound, tag).tolist()
        assert sorted(got) == list(range(n))
        exp = _fair_reference(bound, tag)
        assert [vals[i] for i in got] == [vals[i] for i in exp], (vals, tag, got, exp)
        for k in set(tag.tolist()):  # each disjunct's domains weakest first
            seq = [vals[i] for i in got if tag[i] == k]
            assert seq == sorted(seq)
    one = _fair_order(torch.tensor([-1.0, -3.0, -2.0]), torch.zeros(3, dtype=torch.long)).tolist()
    assert one == [1, 2, 0]


# ============================================================================ _split_layer directly
def _sign_net():
    """x in [-1, 1]^2, z0 = x; layer 1: a = relu(x0) + 0.5 in [0.5, 1.5], b = -relu(x0) - 0.5 in
    [-1.5, -0.5], c = relu(x0) - relu(x1) (crossing, exactly [-1, 1]), prior bounds [-3, 3]."""
    net = _net([([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0]),
                ([[1.0, 0.0], [-1.0, 0.0], [1.0, -1.0]], [0.5, -0.5, 0.0]),
                ([[1.0, 1.0, 1.0]], [0.0])])
    lo, hi = -np.ones(2), np.ones(2)
    pre = _pre(net, lo, hi)
    pre[1] = (np.full(3, -3.0), np.full(3, 3.0))
    return net, lo, hi, pre


def test_split_layer_maps_each_side_to_the_right_bound():
    """``a >= 0.5`` on the box: its lower bound goes to >= 0 (side +z) and its upper stays >= 1.5;
    ``b <= -0.5``: upper bound to <= 0, lower stays <= -1.5; ``c`` (exact range [-1, 1]) may be
    narrowed but stays unstable and contains [-1, 1]."""
    net, lo, hi, pre = _sign_net()
    n, stable, l, u = _call_split_layer(net, pre, 1, lo, hi)
    assert n == 6
    assert l[0] >= 0 and u[0] >= 1.5 - 1e-12, (l, u)
    assert u[1] <= 0 and l[1] <= -1.5 + 1e-12, (l, u)
    assert l[2] <= -1.0 + 1e-12 and u[2] >= 1.0 - 1e-12, (l, u)
    assert sorted(stable) == [0, 1]
    _assert_inside(net, lo, hi, pre, type("R", (), {"pre": [pre[0], (l, u)]})())


def test_split_layer_with_one_unstable_neuron_and_with_none():
    net, lo, hi, pre = _sign_net()
    n, stable, l, u = _call_split_layer(net, pre, 1, lo, hi, order=np.array([0]))
    assert n == 2 and stable == [0] and l[0] >= 0 and u[0] >= 1.5 - 1e-12
    assert np.array_equal(l[1:], pre[1][0][1:]) and np.array_equal(u[1:], pre[1][1][1:])
    for order in (np.array([], dtype=np.int64), []):
        n, stable, l, u = _call_split_layer(net, pre, 1, lo, hi, order=order)
        assert (n, stable) == (0, []) and np.array_equal(l, pre[1][0]) and np.array_equal(u, pre[1][1])


def test_split_layer_skips_witnessed_sides():
    """``seen = (below, above)``: a neuron witnessed on both sides gets no side; one witnessed
    below (z < 0 seen) only its ``-z`` side (prove z < 0), which cannot move its lower bound."""
    net, lo, hi, pre = _sign_net()
    below, above = np.zeros(3, dtype=bool), np.zeros(3, dtype=bool)
    below[2] = above[2] = True
    n, _, l, u = _call_split_layer(net, pre, 1, lo, hi, seen=(below, above))
    assert n == 4 and l[2] == -3.0 and u[2] == 3.0
    below[:], above[:] = False, False
    below[0] = True  # a (false) witness of a < 0: the side proving a > 0 is not searched
    n, stable, l, u = _call_split_layer(net, pre, 1, lo, hi, seen=(below, above))
    assert n == 5 and l[0] == -3.0 and 0 not in stable


def test_split_layer_with_no_time_left_searches_nothing_and_says_so():
    """``left() <= 0``: bounds untouched and no side searched -- the count returned (``milps`` of
    the refinement, and ``passes += bool(n)``) must be 0, not the number of sides. (Fails at
    92ac30f: ``return len(sides), stable`` counts the sides even when the search was skipped.)"""
    net, lo, hi, pre = _sign_net()
    n, stable, l, u = _call_split_layer(net, pre, 1, lo, hi, left=lambda: -1.0)
    assert np.array_equal(l, pre[1][0]) and np.array_equal(u, pre[1][1]) and stable == []
    assert n == 0, n


@pytest.mark.parametrize("splits", [1, 2])
def test_split_layer_with_a_tiny_cap_is_sound(splits):
    rng = np.random.default_rng(7)
    net = random_dense_network(rng, 3, [10, 10], 2)
    c = rng.normal(size=3)
    lo, hi = c - 1.0, c + 1.0
    pre = _pre(net, lo, hi)
    n, _, l, u = _call_split_layer(net, pre, 1, lo, hi, splits=splits)
    assert n > 0
    _assert_inside(net, lo, hi, pre, type("R", (), {"pre": [pre[0], (l, u)]})(), n=20000)


# ============================================================================ milp_refine(method="split")
@pytest.mark.parametrize("seed", range(3))
def test_refinement_with_sides_given_up_after_one_split_is_sound(seed):
    """``neuron_time`` 0.004 s: ``splits = 1``, every side given up at once; no witnesses, so the
    crossing neurons' open bounds narrow bounds."""
    rng = np.random.default_rng(seed)
    net = random_dense_network(rng, 3, [8, 8, 8], 2)
    c = rng.normal(size=3)
    lo, hi = c - 0.8, c + 0.8
    pre = _pre(net, lo, hi, ibp if seed % 2 else intermediate_bounds)
    res = milp_refine(net.affine_blocks(), pre, lo, hi, method="split", neuron_time=0.004, witnesses=False)
    assert res.milps > 0
    _assert_inside(net, lo, hi, pre, res, n=20000, seed=seed)


def test_more_sides_than_batch_size_is_sound(monkeypatch):
    """A 24-wide layer with ``batch_size`` 4 (48 sides): fair rounds over many batches."""
    monkeypatch.setattr(mr, "SPLIT_LAYER_CONFIG", dict(mr.SPLIT_LAYER_CONFIG, batch_size=4))
    rng = np.random.default_rng(11)
    net = random_dense_network(rng, 4, [16, 24], 2, bias_scale=0.1)
    c = rng.normal(size=4)
    lo, hi = c - 0.6, c + 0.6
    pre = _pre(net, lo, hi)
    assert int(((pre[1][0] < 0) & (pre[1][1] > 0)).sum()) * 2 > 4
    res = milp_refine(net.affine_blocks(), pre, lo, hi, method="split", neuron_time=0.02, witnesses=False,
                      deadline=time.monotonic() + 4)
    assert res.milps > 4
    _assert_inside(net, lo, hi, pre, res, n=20000)


@pytest.mark.parametrize("seed, kind", [(0, "ibp"), (3, "crown")])
def test_dyadic_nets_touching_zero_with_a_tiny_cap(seed, kind):
    net, lo, hi = _dyadic(seed, boundary=True)
    pre = _pre_exact(net, lo, hi, kind)
    res = milp_refine(net.affine_blocks(), pre, lo, hi, method="split", neuron_time=0.004, witnesses=False)
    _assert_sound(net, pre, res, lo, hi)


@pytest.mark.parametrize("kind", ["residual", "deep-skip", "concat"])
def test_graph_nets_with_a_tiny_cap(kind):
    rng = np.random.default_rng(5)
    net = NETS[kind](rng)
    lo, hi = _box(rng, net.input_size, 0.7)
    pre = _pre_graph(net, lo, hi, ibp)
    res = milp_refine(net.affine_blocks(), pre, lo, hi, method="split", neuron_time=0.004, witnesses=False)
    x = box_points(rng, lo, hi, 5000, n_random_vertices=200)
    assert _assert_sound_on_points(net, pre, res, x, _check_matching(net, x)) > 0


def test_conv_net_with_a_tiny_cap():
    rng = np.random.default_rng(1)
    net = random_conv_network(rng, (1, 5, 5), 3, (3, 3), (1, 1), (1, 1, 1, 1), 12, 3)
    c = rng.normal(size=25)
    lo, hi = c - 0.5, c + 0.5
    pre = _pre(net, lo, hi)
    res = milp_refine(net.affine_blocks(), pre, lo, hi, method="split", neuron_time=0.01, witnesses=False)
    _assert_inside(net, lo, hi, pre, res, n=5000)


def test_a_past_deadline_leaves_the_bounds_and_counts_nothing():
    rng = np.random.default_rng(2)
    net = random_dense_network(rng, 3, [8, 8], 2)
    lo, hi = -np.ones(3), np.ones(3)
    pre = _pre(net, lo, hi)
    res = milp_refine(net.affine_blocks(), pre, lo, hi, method="split", deadline=time.monotonic() - 1.0)
    assert res.milps == 0 and res.passes == 0
    for (a, b), (c, d) in zip(pre, res.pre):
        assert np.array_equal(a, c) and np.array_equal(b, d)


# ============================================================================ spent counting
def test_disjunct_domains_one_gives_up_no_disjunct_before_its_first_split():
    """``disjunct_domains``: "a disjunct whose domains have had this many splits is given up" --
    with 1, each of three never-closing disjuncts should get its one split. With ``batch_size`` 1
    only one disjunct is split in the first round; ``spent`` starts at 1 (the root), so the other
    two are given up having had no split at all (explored = 3 roots + 2 children). Minor (with
    ``milp_refine`` this needs ``neuron_time`` < 1/512 s), but ``splits=1`` then means "0 or 1"."""
    net, lo, hi, pre = _sign_net()
    l, u = pre[1]
    rows = _side_rows(3, [(2, 1.0), (2, -1.0), (0, -1.0)])  # c > 0, c < 0, a < 0: none provable
    res = relu_split(net.prefix(1), torch.tensor(lo), torch.tensor(hi), rows, _prior(pre, 1, l, u),
                     deadline=time.monotonic() + 10,
                     config=ReluSplitConfig(handoff=0, batch_size=1, selection="fair", disjunct_domains=1))
    assert not any(res.closed) and res.status != "unsat"
    assert res.domains >= 3 + 2 * 3, res  # every disjunct split once: 3 roots and 6 children


# ============================================================================ NaN domain bounds
def _overflow_case():
    """x0 in [-1e-300, 1e-300], x1 in [-1, 1]; z0 = (1e200 x0, x1); z1 = 1e200 relu(z0_0) +
    relu(z0_1) - 0.5, whose true maximum is 1e100 + 0.5 (at x = (1e-300, 1)). The pre-activation
    bounds below are finite and sound; CROWN's coefficient on x0 overflows (1e400), and the
    domains where z0_0 is active get NaN bounds."""
    net = _net([([[1e200, 0.0], [0.0, 1.0]], [0.0, 0.0]), ([[1e200, 1.0]], [-0.5]), ([[1.0]], [0.0])])
    lo, hi = np.array([-1e-300, -1.0]), np.array([1e-300, 1.0])
    pre = [(np.array([-1e-100, -1.0]), np.array([1e-100, 1.0])), (np.array([-1.0]), np.array([1e100 + 1.0]))]
    top = np.array([[1e-300, 1.0]])
    assert affine_view_values(net, top)[0][1][0, 0] == 1e100 + 0.5
    return net, lo, hi, pre, top


def test_nan_domain_bounds_are_not_skipped_by_open_bound():
    """Row ``-z1`` (true minimum -(1e100 + 0.5)): a search left open must not report an
    ``open_bound`` / ``worst_bound`` above that. At 92ac30f ``result`` and ``_drop_disjuncts`` take
    Python's ``min`` over the domain bounds, which drops NaN (``min(inf, nan) == inf``,
    ``min(-0.5, nan) == -0.5``): open_bound -0.5. (Before, ``worst_bound`` was
    ``domains.bound.min()``, NaN, which ``_split_neuron`` refused as not finite.)"""
    net, lo, hi, pre, _ = _overflow_case()
    for cap in (0, 2):
        res = relu_split(net.prefix(1), torch.tensor(lo), torch.tensor(hi), _side_rows(1, [(0, -1.0)]),
                         _prior(pre, 1, *pre[1]), deadline=time.monotonic() + 3,
                         config=ReluSplitConfig(handoff=0, selection="fair", disjunct_domains=cap))
        assert not res.closed[0]
        ob = res.open_bound[0]
        assert math.isnan(ob) or ob <= -1e100, (cap, res)
        assert math.isnan(res.worst_bound) or res.worst_bound <= -1e100, (cap, res)


@pytest.mark.parametrize("witnesses", [False, True])
def test_split_refinement_keeps_a_value_hidden_behind_nan_domains(witnesses):
    """Through ``milp_refine(method="split")``: z1 = 1e100 + 0.5 is reached, so its upper bound must
    stay above it. At 92ac30f it becomes 0.5 (the MILP method and the code before keep 1e100 + 1)."""
    net, lo, hi, pre, top = _overflow_case()
    res = milp_refine(net.affine_blocks(), [(a.copy(), b.copy()) for a, b in pre], lo, hi, method="split",
                      neuron_time=0.05, witnesses=witnesses)
    z = affine_view_values(net, top)[0][1][0, 0]
    assert res.pre[1][0][0] <= z <= res.pre[1][1][0], (res.pre[1], z)
