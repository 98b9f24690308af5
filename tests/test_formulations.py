"""Every MILP formulation is exact, and none relaxes worse than big-M.

On random tiny dense and conv networks, each formulation of :mod:`gpuopt.milp.encode` must reach
the brute-force minimum over activation patterns (``helpers.brute_force_min_margin``); its LP
relaxation must be at least as tight as big-M's; a completed assignment of any input point must
satisfy its rows; and the L1-ball and linear input constraints must cut the region exactly.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from gpuopt.bounds import ibp
from gpuopt.errors import InvalidInputError
from gpuopt.milp.encode import Formulation, InputConstraints, complete_assignment, encode, partition_sets
from gpuopt.milp.highs import MilpStatus, solve_milp
from gpuopt.network import Conv2d, Dense, Flatten, Network, ReLU

from helpers import (box_points, brute_force_min_margin, numpy_forward, random_dense_network, random_spec,
                     to_alternating_dense)

FORMULATIONS = ["bigm", "split", "partition:1", "partition:2", "partition:3:equal_range", "extended"]


def _inputs(net, lo, hi):
    b = ibp(net, torch.as_tensor(lo[None]), torch.as_tensor(hi[None]))
    pre = [(l[0].numpy(), u[0].numpy()) for l, u in b.pre_activation]
    return net.affine_blocks(), pre, (b.output[0][0].numpy(), b.output[1][0].numpy())


def _case(kind: str, seed: int):
    rng = np.random.default_rng(500 + seed)
    if kind == "dense":
        net = random_dense_network(rng, 3, [5, 4], 2)
    else:  # (1, 4, 4) -> conv 2x2 stride 2 -> (2, 2, 2) -> dense 3 -> 2
        n = lambda *s: rng.normal(size=s)  # noqa: E731
        net = Network([Conv2d(n(2, 1, 2, 2), n(2), (2, 2), (0, 0, 0, 0)), ReLU(), Flatten(), Dense(n(3, 8), n(3)),
                       ReLU(), Dense(n(2, 3), n(2))], (1, 4, 4))
    lo = rng.normal(size=net.input_size)
    hi = lo + rng.uniform(0.2, 1.5, size=net.input_size)
    spec = random_spec(rng, net.output_size, [1, 2])
    return rng, net, lo, hi, spec


def _tol(net, lo, hi, spec):
    y, _ = numpy_forward(net, box_points(np.random.default_rng(0), lo, hi, 50))
    return 1e-6 * max(1.0, max(float(np.abs(y @ A.T - b).max()) for A, b in spec.disjuncts))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_every_formulation_reaches_the_brute_force_minimum(kind, seed):
    rng, net, lo, hi, spec = _case(kind, seed)
    ref = brute_force_min_margin(to_alternating_dense(net), lo, hi, spec, seed=seed)
    blocks, pre, out = _inputs(net, lo, hi)
    tol = _tol(net, lo, hi, spec)
    pts = box_points(rng, lo, hi, 6)
    for k, (A, b) in enumerate(spec.disjuncts):
        relaxations = {}
        for name in FORMULATIONS:
            model = encode(blocks, pre, out, lo, hi, A, b, formulation=name)
            res = solve_milp(model, time_limit=60, threshold=np.inf)
            assert res.status is MilpStatus.OPTIMAL, (name, res.raw_status)
            assert res.objective == pytest.approx(ref.per_disjunct[k], abs=tol), (name, k)
            assert res.dual_bound == pytest.approx(ref.per_disjunct[k], abs=tol), (name, k)
            lp = solve_milp(model.relaxed(), time_limit=60, threshold=np.inf)
            assert lp.status is MilpStatus.OPTIMAL
            relaxations[name] = lp.objective
            for x in pts:  # a completed point satisfies every row and prices the margin
                v = complete_assignment(model, blocks, x)
                act = model.A @ v
                slack = 1e-9 * (1.0 + abs(model.A) @ np.abs(v))
                assert np.all(act >= model.row_lower - slack), (name, np.min(act - model.row_lower))
                assert np.all(act <= model.row_upper + slack), (name, np.max(act - model.row_upper))
                y, _ = numpy_forward(net, x[None])
                assert float(model.c @ v + model.offset) == pytest.approx(float(np.max(A @ y[0] - b)), abs=1e-9)
        # a minimisation: a tighter relaxation has a larger LP optimum; the hull is the tightest
        for name in FORMULATIONS:
            assert relaxations[name] >= relaxations["bigm"] - tol, (name, relaxations)
            assert relaxations[name] <= ref.per_disjunct[k] + tol
        assert relaxations["extended"] >= max(relaxations.values()) - tol, relaxations
        assert relaxations["split"] == pytest.approx(relaxations["bigm"], abs=tol)


def test_extended_relaxation_is_strictly_tighter_on_a_one_neuron_net():
    """h = relu(x1 + x2) over [-1, 1]^2, minimise -h - 0.75 x1 + 0.75 x2. The exact minimum is -2
    (at (1, 1)); big-M's relaxation reaches -2.5 at (1, -1) with h = 1, where the hull of the two
    branches (the extended form) forces h = 0, so its LP optimum is the exact -2."""
    from dataclasses import replace

    net = Network([Dense([[1.0, 1.0]], [0.0]), ReLU(), Dense([[-1.0]], [0.0])], (2,))
    lo, hi = -np.ones(2), np.ones(2)
    blocks, pre, out = _inputs(net, lo, hi)
    lp = {}
    for name in ("bigm", "extended", "partition:2"):
        model = encode(blocks, pre, out, lo, hi, np.array([[1.0]]), np.array([0.0]), formulation=name)
        c = model.c.copy()
        c[model.x_index] = [-0.75, 0.75]
        model = replace(model, c=c)
        lp[name] = solve_milp(model.relaxed(), time_limit=30, threshold=np.inf).objective
        assert solve_milp(model, time_limit=30, threshold=np.inf).objective == pytest.approx(-2.0, abs=1e-7)
    assert lp["bigm"] == pytest.approx(-2.5, abs=1e-7)
    assert lp["extended"] == pytest.approx(-2.0, abs=1e-7)
    assert lp["partition:2"] == pytest.approx(-2.0, abs=1e-7)  # two inputs, two sets: the hull too


@pytest.mark.parametrize("name", FORMULATIONS)
def test_l1_ball_and_linear_rows_cut_the_region(name):
    """min of w^T y over ||x - c||_1 <= eps, 0 <= x <= 1, x_0 + x_1 <= 0.9: the MILP optimum is
    attained at a point inside that set, and no sampled point of the set does better."""
    rng = np.random.default_rng(3)
    net = random_dense_network(rng, 4, [6], 2)
    c = np.array([0.5, 0.2, 0.8, 0.4])
    eps = 0.6
    lo, hi = np.zeros(4), np.ones(4)
    cons = InputConstraints(l1_center=c, l1_eps=eps, G=np.array([[1.0, 1.0, 0.0, 0.0]]), g=np.array([0.9]))
    blocks, pre, out = _inputs(net, lo, hi)
    A, b = np.array([[1.0, -1.0]]), np.array([0.0])
    model = encode(blocks, pre, out, lo, hi, A, b, formulation=name, constraints=cons)
    res = solve_milp(model, time_limit=30, threshold=np.inf)
    assert res.status is MilpStatus.OPTIMAL
    x = res.solution[model.x_index]
    assert cons.contains(x, tol=1e-7) and np.all(x >= -1e-9) and np.all(x <= 1 + 1e-9)
    y, _ = numpy_forward(net, x[None])
    assert float(A[0] @ y[0]) == pytest.approx(res.objective, abs=1e-6)
    # sampled points of the set: directions scaled into the ball, clipped, filtered
    d = rng.laplace(size=(20000, 4))
    pts = np.clip(c + d / np.abs(d).sum(1, keepdims=True) * eps * rng.uniform(0, 1, (20000, 1)) ** 0.25, 0, 1)
    pts = pts[[cons.contains(p) for p in pts]]
    ys, _ = numpy_forward(net, pts)
    assert res.objective <= float((ys @ A[0]).min()) + 1e-7
    v = complete_assignment(model, blocks, pts[0])
    act = model.A @ v
    assert np.all(act >= model.row_lower - 1e-9) and np.all(act <= model.row_upper + 1e-9)


def test_partition_sets_follow_the_strategies():
    w = np.array([5.0, -3.0, 0.1, 0.2, -0.1, 4.0, 0.0, 0.3])
    size = partition_sets(w, 2, "equal_size")
    assert sorted(np.bincount(size)) == [4, 4]
    assert set(w[size == 0]) == {-3.0, -0.1, 0.0, 0.1}  # the smaller half of the sorted weights
    rng = partition_sets(w, 4, "equal_range")
    assert rng.min() >= 0 and rng.max() <= 3
    assert all(w[rng == s].max() <= w[rng == s + 1].min() for s in range(3) if (rng == s).any() and (rng == s + 1).any())
    assert partition_sets(w, 2, "equal_range").tolist() == size.tolist()  # N < 3: equal size
    assert partition_sets(np.array([1.0]), 4, "equal_size").tolist() == [0]
    assert partition_sets(np.zeros(0), 3, "equal_size").size == 0


@pytest.mark.parametrize(
    "text, message",
    [
        ("bigM", "`formulation` must be one of ['bigm', 'extended', 'partition', 'split'], got 'bigM'"),
        ("partition:0", "`partitions` must be an integer >= 1, got 0"),
        ("partition:x", "`partition:N` needs an integer N, got 'x'"),
        ("partition:2:random", "`partitioning` must be one of ['equal_range', 'equal_size'], got 'random'"),
        ("bigm:2", "only `partition` takes options (partition:N[:equal_size|equal_range]), got 'bigm:2'"),
        ("partition:2:equal_size:1", "too many `:` fields in the formulation 'partition:2:equal_size:1'"),
    ],
)
def test_formulation_names_are_validated(text, message):
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        Formulation.parse(text)


def test_input_constraints_are_validated():
    with pytest.raises(InvalidInputError, match=re.escape("`l1_center` and `l1_eps` must be given together")):
        InputConstraints(l1_center=np.zeros(2))
    with pytest.raises(InvalidInputError, match=re.escape("`l1_eps` must be a finite number >= 0, got -1.0")):
        InputConstraints(l1_center=np.zeros(2), l1_eps=-1.0)
    with pytest.raises(InvalidInputError, match=re.escape("`G` has 2 rows but `g` has 1 entries")):
        InputConstraints(G=np.ones((2, 3)), g=np.ones(1))
    net = Network([Dense(np.eye(2), np.zeros(2)), ReLU(), Dense(np.ones((1, 2)), np.zeros(1))], (2,))
    blocks, pre, out = _inputs(net, -np.ones(2), np.ones(2))
    with pytest.raises(InvalidInputError, match=re.escape("`G` must have 2 columns, got 3")):
        encode(blocks, pre, out, -np.ones(2), np.ones(2), [[1.0]], [0.0],
               constraints=InputConstraints(G=np.ones((1, 3)), g=np.ones(1)))
    with pytest.raises(InvalidInputError, match=re.escape("`l1_center` must have 2 entries, got 3")):
        encode(blocks, pre, out, -np.ones(2), np.ones(2), [[1.0]], [0.0],
               constraints=InputConstraints(l1_center=np.zeros(3), l1_eps=1.0))


# ---------------------------------------------------------------------------- ideal cuts
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_root_cuts_keep_the_optimum_and_tighten_the_relaxation(kind, seed):
    from gpuopt.milp.cuts import add_root_cuts

    rng, net, lo, hi, spec = _case(kind, seed)
    ref = brute_force_min_margin(to_alternating_dense(net), lo, hi, spec, seed=seed)
    blocks, pre, out = _inputs(net, lo, hi)
    tol = _tol(net, lo, hi, spec)
    for k, (A, b) in enumerate(spec.disjuncts):
        model = encode(blocks, pre, out, lo, hi, A, b)
        cut, info = add_root_cuts(model, blocks, rounds=4)
        assert cut.A.shape[0] == model.A.shape[0] + info["cuts"]
        lp0 = solve_milp(model.relaxed(), time_limit=30, threshold=np.inf).objective
        lp1 = solve_milp(cut.relaxed(), time_limit=30, threshold=np.inf).objective
        assert lp1 >= lp0 - tol and lp1 <= ref.per_disjunct[k] + tol
        res = solve_milp(cut, time_limit=60, threshold=np.inf)
        assert res.status is MilpStatus.OPTIMAL
        assert res.objective == pytest.approx(ref.per_disjunct[k], abs=tol)
        for x in box_points(rng, lo, hi, 20):  # every point of the network satisfies every cut
            v = complete_assignment(cut, blocks, x)
            act = cut.A @ v
            assert np.all(act <= cut.row_upper + 1e-9 * (1 + abs(cut.A) @ np.abs(v)))


def test_root_cuts_reach_the_hull_of_one_neuron():
    """The big-M relaxation's -2.5 of the one-neuron example rises to the hull's -2 with cuts."""
    from dataclasses import replace

    from gpuopt.milp.cuts import add_root_cuts

    net = Network([Dense([[1.0, 1.0]], [0.0]), ReLU(), Dense([[-1.0]], [0.0])], (2,))
    lo, hi = -np.ones(2), np.ones(2)
    blocks, pre, out = _inputs(net, lo, hi)
    model = encode(blocks, pre, out, lo, hi, np.array([[1.0]]), np.array([0.0]))
    c = model.c.copy()
    c[model.x_index] = [-0.75, 0.75]
    model = replace(model, c=c)
    cut, info = add_root_cuts(model, blocks, rounds=3)
    assert info["cuts"] >= 1 and info["lp_bounds"][0] == pytest.approx(-2.5, abs=1e-7)
    assert solve_milp(cut.relaxed(), time_limit=30, threshold=np.inf).objective == pytest.approx(-2.0, abs=1e-7)


# ---------------------------------------------------------------------------- implication cuts
def _deep_case(seed: int):
    rng = np.random.default_rng(900 + seed)
    net = random_dense_network(rng, 3, [7, 6, 5], 2)
    lo = rng.normal(size=3)
    hi = lo + rng.uniform(0.5, 2.0, size=3)
    return rng, net, lo, hi, random_spec(rng, 2, [1, 2])


@pytest.mark.parametrize("seed", range(6))
def test_implication_cuts_keep_the_brute_force_minimum(seed):
    """With the implication inequalities added, every formulation still reaches the exact
    minimum, the relaxation never loosens, and every input point's pattern satisfies the cuts."""
    from gpuopt.milp.cuts import add_rows, implication_cuts

    rng, net, lo, hi, spec = _deep_case(seed)
    ref = brute_force_min_margin(to_alternating_dense(net), lo, hi, spec, seed=seed)
    blocks, pre, out = _inputs(net, lo, hi)
    tol = _tol(net, lo, hi, spec)
    pts = box_points(rng, lo, hi, 300)
    for k, (A, b) in enumerate(spec.disjuncts):
        for name in FORMULATIONS:
            model = encode(blocks, pre, out, lo, hi, A, b, formulation=name)
            A_cut, upper = implication_cuts(model, blocks)
            for x in pts:
                v = complete_assignment(model, blocks, x)
                assert np.all(A_cut @ v <= upper), (name, x)
            cut = add_rows(model, A_cut, upper)
            res = solve_milp(cut, time_limit=60, threshold=np.inf)
            assert res.status is MilpStatus.OPTIMAL, (name, res.raw_status)
            assert res.objective == pytest.approx(ref.per_disjunct[k], abs=tol), (name, k)
            lp0 = solve_milp(model.relaxed(), time_limit=30, threshold=np.inf).objective
            lp1 = solve_milp(cut.relaxed(), time_limit=30, threshold=np.inf).objective
            assert lp0 - tol <= lp1 <= ref.per_disjunct[k] + tol, (name, lp0, lp1)


def test_implication_cuts_tighten_the_relaxation_somewhere():
    """Across the seeded cases the implication rows exist and raise big-M's LP bound on at least
    one disjunct (a test that fails if they never bind)."""
    from gpuopt.milp.cuts import add_rows, implication_cuts

    rows, raised = 0, 0
    for seed in range(12):
        rng, net, lo, hi, spec = _deep_case(seed)
        blocks, pre, out = _inputs(net, lo, hi)
        tol = _tol(net, lo, hi, spec)
        for A, b in spec.disjuncts:
            model = encode(blocks, pre, out, lo, hi, A, b)
            A_cut, upper = implication_cuts(model, blocks)
            rows += upper.size
            lp0 = solve_milp(model.relaxed(), time_limit=30, threshold=np.inf).objective
            lp1 = solve_milp(add_rows(model, A_cut, upper).relaxed(), time_limit=30, threshold=np.inf).objective
            raised += lp1 > lp0 + tol
    assert rows > 0 and raised > 0, (rows, raised)


def test_implication_cuts_on_a_hand_net_and_at_exact_zeros():
    """h1 = relu(x1), h2 = relu(x2) over [-1, 1]^2, then n = relu(h1 + h2 - 0.5) and
    m = relu(0.5 - h1 - h2): n is on only if h1 or h2 is (d_n <= d_1 + d_2), m is on unless one
    of them is (1 - d_m <= d_1 + d_2). Points with exact zeros (x on the kinks) satisfy both."""
    from gpuopt.milp.cuts import implication_cuts

    net = Network([Dense(np.eye(2), np.zeros(2)), ReLU(),
                   Dense([[1.0, 1.0], [-1.0, -1.0]], [-0.5, 0.5]), ReLU(), Dense([[1.0, -1.0]], [0.0])], (2,))
    lo, hi = -np.ones(2), np.ones(2)
    blocks, pre, out = _inputs(net, lo, hi)
    model = encode(blocks, pre, out, lo, hi, np.array([[1.0]]), np.array([0.0]))
    A_cut, upper = implication_cuts(model, blocks)
    d1, d2 = model.layers[0][3]
    dn, dm = model.layers[1][3]
    got = {tuple(np.round(A_cut[i].toarray()[0][[d1, d2, dn, dm]], 12)) + (upper[i],) for i in range(upper.size)}
    assert got == {(-1.0, -1.0, 1.0, 0.0, 0.0), (-1.0, -1.0, 0.0, -1.0, -1.0)}
    grid = np.array([[a, b] for a in (-1.0, -0.5, 0.0, 0.25, 0.5, 1.0) for b in (-1.0, 0.0, 0.25, 0.5, 1.0)])
    for x in grid:
        v = complete_assignment(model, blocks, x)
        assert np.all(A_cut @ v <= upper), x


def test_implication_cuts_leave_out_a_neuron_a_single_predecessor_cannot_turn_on():
    """n = relu(0.1 h1 + h2 - 0.5): h1 alone (at most 0.1) cannot make n positive, so the cover
    is d_n <= d_2 alone; with the bias at -0.05 h1 alone can, and the cover is d_n <= d_1 + d_2."""
    from gpuopt.milp.cuts import implication_cuts

    for bias, want in ((-0.5, {(0.0, -1.0, 1.0)}), (-0.05, {(-1.0, -1.0, 1.0)})):
        net = Network([Dense(np.eye(2), np.zeros(2)), ReLU(), Dense([[0.1, 1.0]], [bias]), ReLU(),
                       Dense([[1.0]], [0.0])], (2,))
        lo, hi = -np.ones(2), np.ones(2)
        blocks, pre, out = _inputs(net, lo, hi)
        model = encode(blocks, pre, out, lo, hi, np.array([[1.0]]), np.array([0.0]))
        A_cut, upper = implication_cuts(model, blocks)
        cols = list(model.layers[0][3]) + list(model.layers[1][3])
        assert {tuple(A_cut[i].toarray()[0][cols]) for i in range(upper.size)} == want, bias
        assert np.all(upper == 0.0)


def test_cut_kinds_are_parsed_and_bad_ones_refused():
    from gpuopt.milp.cuts import cut_kinds
    from gpuopt.verify import VerifyConfig

    assert cut_kinds(False) == () and cut_kinds("off") == () and cut_kinds(None) == ()
    assert cut_kinds(True) == ("ideal", "implication") == cut_kinds("all")
    assert cut_kinds("implication") == ("implication",)
    assert cut_kinds("implication, ideal") == ("ideal", "implication")
    with pytest.raises(InvalidInputError, match=re.escape("unknown cut kind(s) ['gomory']")):
        cut_kinds("ideal,gomory")
    with pytest.raises(InvalidInputError, match="unknown cut kind"):
        VerifyConfig(cuts="sos")
    with pytest.raises(InvalidInputError, match="`cuts` must be a bool or a string"):
        VerifyConfig(cuts=3)


def test_implication_covers_are_not_shrunk_by_an_earlier_neurons_large_sum():
    """Regression (adversarial review): each neuron's running sum was a difference of one
    cumulative sum over the whole layer, so a huge earlier neuron (1e14 h_a) rounded a later
    neuron's small contribution (0.006 h_b) away and dropped h_b from its cover: the cut
    d_n1 <= d_c was violated at x = (0, 1, -1) (z_n1 = 0.003 > 0, h_c = 0), and the MILP's
    optimum rose from -13 to -10. At a ratio of 2048 the same happened on both sides."""
    from fractions import Fraction

    from gpuopt.milp.cuts import add_rows, implication_cuts

    W1 = np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, -1]])
    W2 = np.array([[1e14, 0, 0, 0], [0, 0.006, 1.0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    net = Network([Dense(W1, np.zeros(4)), ReLU(), Dense(W2, [-1.0, -0.003, 0, 0]), ReLU(),
                   Dense([[0.0, -1000.0, 2000.0, -10.0]], [0.0])], (3,))
    lo, hi = -np.ones(3), np.ones(3)
    x = np.array([0.0, 1.0, -1.0])
    blocks, pre, out = _inputs(net, lo, hi)
    for name in FORMULATIONS:
        model = encode(blocks, pre, out, lo, hi, np.array([[1.0]]), np.array([0.0]), formulation=name)
        A_cut, upper = implication_cuts(model, blocks)
        assert np.all(A_cut @ complete_assignment(model, blocks, x) <= upper), name
        res = solve_milp(add_rows(model, A_cut, upper), time_limit=30, threshold=np.inf)
        assert res.objective == pytest.approx(-13.0, abs=1e-6), name
    w_b, b = 0.5 + 3e-14, -(0.5 + 1e-14)
    assert Fraction(w_b) + Fraction(b) > 0  # h_b alone turns the second neuron on (off, mirrored)
    for side in (1.0, -1.0):
        net = Network([Dense(np.eye(3), np.zeros(3)), ReLU(), Dense(side * np.array([[2048.0, 0, 0], [0, w_b, 1.0]]),
                                                                    side * np.array([-1.0, b])), ReLU(),
                       Dense([[0.0, 1.0]], [0.0])], (3,))
        blocks, pre, out = _inputs(net, lo, hi)
        model = encode(blocks, pre, out, lo, hi, np.array([[1.0]]), np.array([0.0]))
        A_cut, upper = implication_cuts(model, blocks)
        assert upper.size and np.all(A_cut @ complete_assignment(model, blocks, x) <= upper), side
