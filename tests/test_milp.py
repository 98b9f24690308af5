"""The big-M MILP is exact: its optimum equals a brute-force minimum over activation patterns.

The reference (``helpers.brute_force_min_margin``) enumerates the feasible linear regions of a
tiny network and minimises each disjunct margin on each by an LP in scipy; the MILP is built by
``encode_bigm`` from float64 IBP bounds and solved to optimality (``threshold=inf``).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from gpuopt.bounds import ibp
from gpuopt.errors import InvalidInputError
from gpuopt.milp import complete_assignment, encode_bigm
from gpuopt.milp.highs import MilpStatus, solve_milp
from gpuopt.network import Conv2d, Dense, ElementwiseAffine, Flatten, Network, ReLU

from helpers import (box_points, brute_force_min_margin, numpy_forward, random_dense_network, random_spec,
                     to_alternating_dense)

# (inputs, hidden widths, outputs, rows per disjunct): 2..10 ReLUs in total
ARCHS = {
    "1-2-1": (1, [2], 1, [1]),
    "2-5-2": (2, [5], 2, [1, 1]),
    "3-4-3-2": (3, [4, 3], 2, [2, 1]),
    "2-3-3-3-3": (2, [3, 3, 3], 3, [3, 1, 2]),
    "4-10-3": (4, [10], 3, [1, 3]),
    "1-6-4-2": (1, [6, 4], 2, [2]),
}
SEEDS = range(20)
CASES = [(name, seed) for seed in SEEDS for name in ARCHS if (seed + len(name)) % 2 == 0 or seed < 4]


def _problem(name: str, seed: int):
    n_in, hidden, n_out, rows = ARCHS[name]
    rng = np.random.default_rng(1000 * seed + len(name))
    net = random_dense_network(rng, n_in, hidden, n_out)
    centre = rng.normal(size=n_in)
    radius = rng.uniform(0.05, 1.5, size=n_in)
    lo, hi = centre - radius, centre + radius
    spec = random_spec(rng, n_out, rows)
    return rng, net, lo, hi, spec


def _milp_inputs(net, lo, hi):
    bounds = ibp(net, torch.as_tensor(lo[None]), torch.as_tensor(hi[None]))
    pre = [(l[0].numpy(), u[0].numpy()) for l, u in bounds.pre_activation]
    out = (bounds.output[0][0].numpy(), bounds.output[1][0].numpy())
    return net.affine_blocks(), pre, out


def _scale(net, lo, hi, spec) -> float:
    """Magnitude of the margins involved, for relative tolerances."""
    y, _ = numpy_forward(net, box_points(np.random.default_rng(0), lo, hi, 50))
    per = [np.abs(y @ A.T - b).max() for A, b in spec.disjuncts]
    return max(1.0, float(np.max(per)))


@pytest.mark.parametrize("name, seed", CASES)
def test_bigm_optimum_equals_brute_force(name, seed):
    _, net, lo, hi, spec = _problem(name, seed)
    blocks, pre, out = _milp_inputs(net, lo, hi)
    ref = brute_force_min_margin(net, lo, hi, spec, seed=seed)
    assert ref.n_regions >= 1
    tol = 1e-6 * _scale(net, lo, hi, spec)
    for k, (A, b) in enumerate(spec.disjuncts):
        model = encode_bigm(blocks, pre, out, lo, hi, A, b)
        assert (model.t_index is None) == (A.shape[0] == 1)
        res = solve_milp(model, time_limit=60, threshold=np.inf)
        assert res.status is MilpStatus.OPTIMAL, (res.status, res.raw_status)
        assert res.objective == pytest.approx(ref.per_disjunct[k], abs=tol), f"disjunct {k} objective"
        assert res.dual_bound == pytest.approx(ref.per_disjunct[k], abs=tol), f"disjunct {k} dual bound"
        assert res.dual_bound <= res.objective + tol
        # the incumbent's input is (up to solver tolerances) in the box and realises the objective
        x = res.solution[model.x_index]
        assert np.all(x >= lo - 1e-7) and np.all(x <= hi + 1e-7)
        y, _ = numpy_forward(net, np.clip(x, lo, hi)[None])
        assert float(np.max(A @ y[0] - b)) == pytest.approx(res.objective, abs=tol)


@pytest.mark.parametrize("name, seed", [(n, s) for n in ARCHS for s in range(3)])
def test_complete_assignment_is_feasible_and_prices_the_margin(name, seed):
    rng, net, lo, hi, spec = _problem(name, seed)
    blocks, pre, out = _milp_inputs(net, lo, hi)
    pts = box_points(rng, lo, hi, 25)
    y, _ = numpy_forward(net, pts)
    for k, (A, b) in enumerate(spec.disjuncts):
        model = encode_bigm(blocks, pre, out, lo, hi, A, b)
        for x, yx in zip(pts, y):
            v = complete_assignment(model, blocks, x)
            assert v.shape == (model.n_vars,)
            assert np.all(v >= model.col_lower) and np.all(v <= model.col_upper)
            ints = v[model.integrality]
            assert np.all((ints == 0) | (ints == 1))
            act = model.A @ v
            scale = 1e-9 * (1.0 + abs(model.A) @ np.abs(v))
            assert np.all(act >= model.row_lower - scale), np.min(act - model.row_lower)
            assert np.all(act <= model.row_upper + scale), np.max(act - model.row_upper)
            np.testing.assert_array_equal(v[model.x_index], x)
            objective = float(model.c @ v + model.offset)
            expected = float(np.max(A @ yx - b))
            assert objective == pytest.approx(expected, rel=1e-9, abs=1e-9)


def _structured(kind: str, rng):
    """Networks whose affine-block form needs identity blocks, composition, or a conv matrix."""
    n = lambda *s: rng.normal(size=s)  # noqa: E731
    if kind == "linear":
        return Network([Dense(n(2, 3), n(2))], (3,))
    if kind == "relu-first":
        return Network([ReLU(), Dense(n(3, 2), n(3)), ReLU(), Dense(n(2, 3), n(2))], (2,))
    if kind == "relu-relu":
        return Network([Dense(n(4, 2), n(4)), ReLU(), ReLU(), Dense(n(2, 4), n(2))], (2,))
    if kind == "trailing-relu":
        return Network([Dense(n(3, 2), n(3)), ReLU(), Dense(n(3, 3), n(3)), ReLU()], (2,))
    if kind == "affine-chain":
        return Network([ElementwiseAffine(n(3), n(3)), Dense(n(4, 3), n(4)), Dense(n(3, 4), n(3)), ReLU(),
                        ElementwiseAffine(n(3), n(3)), Dense(n(2, 3), n(2))], (3,))
    if kind == "conv":  # (1, 4, 5) -> conv 2x2, stride 2, pads (0, 1, 1, 0) -> (1, 2, 3)
        return Network([Conv2d(n(1, 1, 2, 2), n(1), (2, 2), (0, 1, 1, 0)), ReLU(), Flatten(),
                        Dense(n(3, 6), n(3)), ReLU(), Dense(n(2, 3), n(2))], (1, 4, 5))
    if kind == "conv-affine":
        return Network([ElementwiseAffine(n(2, 1, 1), n(2, 1, 1)), Conv2d(n(2, 2, 2, 3), n(2), (2, 1), (1, 0, 0, 1)),
                        ReLU(), Flatten(), Dense(n(2, 8), n(2))], (2, 3, 3))
    raise KeyError(kind)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", ["linear", "relu-first", "relu-relu", "trailing-relu", "affine-chain", "conv",
                                  "conv-affine"])
def test_bigm_optimum_equals_brute_force_on_structured_networks(kind, seed):
    rng = np.random.default_rng(seed)
    net = _structured(kind, rng)
    dense = to_alternating_dense(net)
    lo = rng.normal(size=net.input_size)
    hi = lo + rng.uniform(0.1, 1.0, size=net.input_size)
    pts = box_points(rng, lo, hi, 30)
    np.testing.assert_allclose(numpy_forward(dense, pts)[0], numpy_forward(net, pts)[0], rtol=1e-12, atol=1e-12)
    spec = random_spec(rng, net.output_size, [1, 2])
    ref = brute_force_min_margin(dense, lo, hi, spec, seed=seed)
    blocks, pre, out = _milp_inputs(net, lo, hi)
    tol = 1e-6 * _scale(net, lo, hi, spec)
    for k, (A, b) in enumerate(spec.disjuncts):
        model = encode_bigm(blocks, pre, out, lo, hi, A, b)
        res = solve_milp(model, time_limit=60, threshold=np.inf)
        assert res.status is MilpStatus.OPTIMAL, (res.status, res.raw_status)
        assert res.objective == pytest.approx(ref.per_disjunct[k], abs=tol)
        assert res.dual_bound == pytest.approx(ref.per_disjunct[k], abs=tol)
        for x in pts[:5]:  # complete_assignment on these networks too
            v = complete_assignment(model, blocks, x)
            act = model.A @ v
            slack = 1e-9 * (1.0 + abs(model.A) @ np.abs(v))
            assert np.all(act >= model.row_lower - slack) and np.all(act <= model.row_upper + slack)
            y, _ = numpy_forward(net, x[None])
            assert float(model.c @ v + model.offset) == pytest.approx(float(np.max(A @ y[0] - b)), rel=1e-9, abs=1e-9)


def test_complete_assignment_is_a_valid_mip_start():
    """Seeding HiGHS with a completed point never changes the optimum."""
    rng, net, lo, hi, spec = _problem("4-10-3", 7)
    blocks, pre, out = _milp_inputs(net, lo, hi)
    A, b = spec.disjuncts[1]
    model = encode_bigm(blocks, pre, out, lo, hi, A, b)
    plain = solve_milp(model, time_limit=60, threshold=np.inf)
    started = solve_milp(model, time_limit=60, threshold=np.inf,
                         start=complete_assignment(model, blocks, 0.5 * (lo + hi)))
    assert started.status is MilpStatus.OPTIMAL
    assert started.objective == pytest.approx(plain.objective, abs=1e-7)


def test_solve_milp_threshold_stops_on_dual_bound():
    """A disjunct whose minimum is far above the threshold is closed by the dual bound."""
    net = Network([Dense([[1.0], [-1.0]], [0.0, 0.0]), ReLU(), Dense([[1.0, 1.0]], [2.0])], (1,))
    lo, hi = np.array([-1.0]), np.array([1.0])
    blocks, pre, out = _milp_inputs(net, lo, hi)
    model = encode_bigm(blocks, pre, out, lo, hi, np.array([[1.0]]), np.array([0.0]))  # y = |x| + 2
    res = solve_milp(model, time_limit=30, threshold=1e-6)
    assert res.status in (MilpStatus.DUAL_BOUND_REACHED, MilpStatus.OPTIMAL)
    assert res.dual_bound > 1e-6
    assert res.dual_bound <= 2.0 + 1e-7


# ---------------------------------------------------------------------------- validation
def _valid():
    net = Network([Dense(np.eye(2), np.zeros(2)), ReLU(), Dense(np.ones((1, 2)), np.zeros(1))], (2,))
    lo, hi = -np.ones(2), np.ones(2)
    blocks, pre, out = _milp_inputs(net, lo, hi)
    return dict(blocks=blocks, pre_bounds=pre, out_bounds=out, x_lower=lo, x_upper=hi,
                A_spec=np.array([[1.0]]), b_spec=np.array([0.0]))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(pre_bounds=[]), "need 1 pre-activation bound pairs, got 0"),
        (lambda a: a.update(pre_bounds=a["pre_bounds"] * 2), "need 1 pre-activation bound pairs, got 2"),
        (lambda a: a.update(x_lower=np.array([-np.inf, -1.0])),
         "`input` bounds must be finite to build big-M constants"),
        (lambda a: a.update(x_upper=np.array([1.0, np.nan])),
         "`input` bounds must be finite to build big-M constants"),
        (lambda a: a.update(pre_bounds=[(np.array([-1.0, -np.inf]), np.array([1.0, 1.0]))]),
         "`layer 0 pre-activation` bounds must be finite to build big-M constants"),
        (lambda a: a.update(out_bounds=(np.array([0.0]), np.array([np.inf]))),
         "`output` bounds must be finite to build big-M constants"),
        (lambda a: a.update(x_lower=np.zeros(3)), "`input` bounds must have 2 entries, got (3,) and (2,)"),
        (lambda a: a.update(pre_bounds=[(np.zeros(3), np.ones(3))]),
         "`layer 0 pre-activation` bounds must have 2 entries, got (3,) and (3,)"),
        (lambda a: a.update(x_lower=np.array([2.0, 0.0])), "`input` bounds are empty (lower > upper) somewhere"),
        (lambda a: a.update(A_spec=np.array([[1.0, 2.0]])), "spec rows must be (1, 1), got (1, 2)"),
    ],
    ids=["no-pairs", "too-many-pairs", "inf-input", "nan-input", "inf-layer", "inf-output", "input-size",
         "layer-size", "empty-input", "spec-shape"],
)
def test_encode_bigm_input_validation(change, message):
    args = _valid()
    change(args)
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        encode_bigm(args["blocks"], args["pre_bounds"], args["out_bounds"], args["x_lower"], args["x_upper"],
                    args["A_spec"], args["b_spec"])


def _models_and_minima(name, seed):
    """``(blocks, tol, [(disjunct model, true minimum)])`` of a test problem."""
    _, net, lo, hi, spec = _problem(name, seed)
    blocks, pre, out = _milp_inputs(net, lo, hi)
    ref = brute_force_min_margin(net, lo, hi, spec, seed=seed)
    tol = 1e-6 * _scale(net, lo, hi, spec)
    return blocks, tol, [(encode_bigm(blocks, pre, out, lo, hi, A, b), ref.per_disjunct[k])
                         for k, (A, b) in enumerate(spec.disjuncts)]


@pytest.mark.parametrize("name, seed", [(n, s) for n in ARCHS for s in range(4)])
def test_the_objective_cutoff_never_overstates_the_dual_bound(name, seed):
    """With a finite threshold HiGHS prunes at the cutoff and may call an incumbent above it
    optimal (a tiny net: 0.164 reported, true minimum 0.052): the bound returned must stay at or
    below the true minimum, and the sign must still be decided correctly."""
    blocks, tol, cases = _models_and_minima(name, seed)
    for model, true_min in cases:
        hi = model.col_upper[model.x_index]
        res = solve_milp(model, time_limit=60, threshold=1e-5, start=complete_assignment(model, blocks, hi))
        assert res.dual_bound <= true_min + tol, (res.status, res.dual_bound, true_min)
        if true_min > 1e-3:
            assert res.proves_above(1e-5)
        if true_min < -1e-3:
            assert not res.proves_above(1e-5) and res.objective <= 1e-5 + tol


@pytest.mark.parametrize("name, seed", CASES)
def test_safe_branch_and_bound_recheck_agrees_with_brute_force(name, seed):
    """The independent re-check proves ``min > t`` for ``t`` below the true minimum, never for
    ``t`` at or above it, and its bound never exceeds the minimum."""
    from gpuopt.milp.recheck import recheck_milp

    _, tol, cases = _models_and_minima(name, seed)
    for model, true_min in cases:
        below = recheck_milp(model, true_min - 10 * tol - 1e-3 * abs(true_min))
        assert below.proven, below
        assert below.bound <= true_min + tol and below.nodes >= 1
        above = recheck_milp(model, true_min + tol)
        assert not above.proven, above


def _exact_case(name: str, seed: int):
    """``(blocks, lo, hi, spec, pre, out, ref, tol)``: the MILP inputs of ``_problem(name, seed)``
    over IBP's bounds, its brute-force minima and the comparison tolerance."""
    _, net, lo, hi, spec = _problem(name, seed)
    blocks, pre, out = _milp_inputs(net, lo, hi)
    return (blocks, lo, hi, spec, pre, out, brute_force_min_margin(net, lo, hi, spec, seed=seed),
            1e-6 * _scale(net, lo, hi, spec))


def _spy_options(monkeypatch, read) -> list:
    """Every HiGHS instance :func:`solve_milp` builds from now on appends ``read(instance)`` to
    the returned list (the options it was given)."""
    import gpuopt.milp.highs as highs_mod

    seen = []
    make = highs_mod._new_highs

    def spy(*args, **kwargs):
        h = make(*args, **kwargs)
        seen.append(read(h))
        return h

    monkeypatch.setattr(highs_mod, "_new_highs", spy)
    return seen


@pytest.mark.parametrize("name, seed", [(n, s) for n in ARCHS for s in range(2)])
def test_sub_mip_heuristics_off_changes_no_optimum(name, seed, monkeypatch):
    """``SolverConfig(sub_mips=False)`` turns HiGHS's RINS, RENS and root reduced-cost sub-MIPs off
    (read back from the HiGHS instance) and the optimum still equals brute force; the default
    (``None``) keeps them when optimising and drops them for a sign decision (finite threshold)."""
    from gpuopt.milp.highs import SolverConfig

    seen = _spy_options(monkeypatch, lambda h: {o: h.getOptionValue(o)[1] for o in (
        "mip_heuristic_run_rins", "mip_heuristic_run_rens", "mip_heuristic_run_root_reduced_cost")})
    blocks, lo, hi, spec, pre, out, ref, tol = _exact_case(name, seed)
    for k, (A, b) in enumerate(spec.disjuncts):
        model = encode_bigm(blocks, pre, out, lo, hi, A, b)
        res = solve_milp(model, time_limit=60, threshold=np.inf, config=SolverConfig(sub_mips=False))
        assert res.status is MilpStatus.OPTIMAL, (res.status, res.raw_status)
        assert res.objective == pytest.approx(ref.per_disjunct[k], abs=tol)
    assert seen and all(not any(s.values()) for s in seen), seen
    model = encode_bigm(blocks, pre, out, lo, hi, *spec.disjuncts[0])
    seen.clear()
    solve_milp(model, time_limit=60, threshold=np.inf)
    assert seen and all(all(s.values()) for s in seen), seen  # the default keeps them to optimise
    seen.clear()
    res = solve_milp(model, time_limit=60, threshold=ref.per_disjunct[0] - 0.1)
    assert seen and all(not any(s.values()) for s in seen), seen  # ... and drops them for a sign decision
    assert res.proves_above(ref.per_disjunct[0] - 0.1)
    with pytest.raises(InvalidInputError, match="sub_mips"):
        SolverConfig(sub_mips="no")


@pytest.mark.parametrize("formulation", ["bigm", "extended", "partition:2"])
def test_recheck_branches_deepest_first_and_agrees_with_brute_force_in_every_formulation(formulation):
    """Each binary's depth is its hidden layer (the layer's ``d`` columns); the re-check, which
    branches on the deepest fractional binary, proves ``min > t`` below the true minimum and never
    at it, whatever the formulation's own columns."""
    from gpuopt.milp.encode import encode
    from gpuopt.milp.recheck import _binary_depth, recheck_milp

    seen = set()
    for seed in range(3):
        _, net, lo, hi, spec = _problem("2-3-3-3-3", seed)
        blocks, pre, out = _milp_inputs(net, lo, hi)
        ref = brute_force_min_margin(net, lo, hi, spec, seed=seed)
        tol = 1e-6 * _scale(net, lo, hi, spec)
        for k, (A, b) in enumerate(spec.disjuncts):
            model = encode(blocks, pre, out, lo, hi, A, b, formulation=formulation)
            binaries = np.flatnonzero(model.integrality)
            depth = _binary_depth(model, binaries)
            for i, layer in enumerate(model.layers, start=1):
                d_cols = np.asarray(layer[3], dtype=np.int64).reshape(-1)
                assert set(depth[np.isin(binaries, d_cols)]) <= {i}
            seen |= set(depth.tolist())
            true_min = ref.per_disjunct[k]
            assert recheck_milp(model, true_min - 10 * tol - 1e-3 * abs(true_min)).proven
            assert not recheck_milp(model, true_min + tol).proven
    assert {1, 2, 3} <= seen  # binaries of every hidden layer were met


@pytest.mark.parametrize("name, seed", [(n, s) for n in ARCHS for s in range(2)])
def test_root_lp_by_interior_point_changes_no_optimum(name, seed, monkeypatch):
    """``SolverConfig(root_lp="ipm")`` hands HiGHS ``mip_lp_solver=ipm`` (read back from the
    instance) and the optimum and the dual bound still equal brute force; ``"auto"`` picks it only
    from :data:`IPM_ROOT_MIN_NONZEROS` matrix entries up (these models are far smaller), and a
    value outside the three is refused by name."""
    from gpuopt.milp.highs import IPM_ROOT_MIN_NONZEROS, SolverConfig, root_lp_solver

    seen = _spy_options(monkeypatch, lambda h: h.getOptionValue("mip_lp_solver")[1])
    blocks, lo, hi, spec, pre, out, ref, tol = _exact_case(name, seed)
    for k, (A, b) in enumerate(spec.disjuncts):
        model = encode_bigm(blocks, pre, out, lo, hi, A, b)
        res = solve_milp(model, time_limit=60, threshold=np.inf, config=SolverConfig(root_lp="ipm"))
        assert res.status is MilpStatus.OPTIMAL, (res.status, res.raw_status)
        assert res.objective == pytest.approx(ref.per_disjunct[k], abs=tol)
        assert res.dual_bound == pytest.approx(ref.per_disjunct[k], abs=tol)
        below = solve_milp(model, time_limit=60, threshold=ref.per_disjunct[k] - 0.1 * tol - 1e-3,
                           config=SolverConfig(root_lp="ipm"))
        assert below.proves_above(ref.per_disjunct[k] - 0.1 * tol - 1e-3)
        above = solve_milp(model, time_limit=60, threshold=ref.per_disjunct[k] + tol + 1e-3,
                           config=SolverConfig(root_lp="ipm"))
        assert not above.proves_above(ref.per_disjunct[k] + tol + 1e-3)
    assert seen and set(seen) == {"ipm"}, seen
    seen.clear()
    solve_milp(encode_bigm(blocks, pre, out, lo, hi, *spec.disjuncts[0]), time_limit=60, threshold=np.inf)
    assert seen == ["choose"]  # auto: a small model keeps the dual simplex
    assert root_lp_solver(SolverConfig(), IPM_ROOT_MIN_NONZEROS) == "ipm"
    assert root_lp_solver(SolverConfig(), IPM_ROOT_MIN_NONZEROS - 1) == "choose"
    assert root_lp_solver(SolverConfig(root_lp="simplex"), 10 * IPM_ROOT_MIN_NONZEROS) == "choose"
    assert root_lp_solver(SolverConfig(root_lp="ipm"), 1) == "ipm"
    with pytest.raises(InvalidInputError, match="root_lp"):
        SolverConfig(root_lp="barrier")
