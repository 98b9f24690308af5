"""The hybrid of input splitting and the MILP (issue 14): sub-boxes left open with few unstable
ReLUs go to an exact MILP over the box (gpuopt.milp.box.prove_box).

Every test can fail: verdicts are compared with exact enumeration (tests/helpers.py, independent
of gpuopt's bounds and MILP), a spy checks that the MILP path really closed boxes, and a refused
re-check must leave the box open.
"""

from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest
import torch

import gpuopt.milp.recheck as recheck_module
from gpuopt import Box, Problem, VerifyConfig, verify
from gpuopt.bab import SplitConfig, input_split
from gpuopt.bounds import crown
from gpuopt.errors import InvalidInputError
from gpuopt.milp.box import BoxProof, prove_box
from gpuopt.milp.box import reduce_network as bab_free_reduce

from helpers import (brute_force_min_margin, numpy_forward, random_dense_network, shifted_problem, shifted_spec,
                     small_robustness_case)

#: hand every open sub-box to the MILP at once (no age, no time share)
EAGER = dict(batch_size=4, attack_boxes=0, milp_unstable=64, milp_min_age=0, milp_share=1.0)


def _case(seed):
    return small_robustness_case(9100 + seed)


@pytest.mark.parametrize("delta", [0.05, -0.05, 1e-3, -1e-3])
@pytest.mark.parametrize("seed", range(8))
def test_hybrid_agrees_with_brute_force(seed, delta):
    """With every open sub-box handed to the MILP, the verdict matches exact enumeration on
    properties that hold or fail by small margins, and a `sat` point re-checks in float64."""
    net, region, spec = _case(seed)
    box = region.to_box()
    truth = brute_force_min_margin(net, box.lower, box.upper, spec, seed=seed).per_disjunct
    spec = shifted_spec(spec, truth, delta)
    res = input_split(Problem(net, region, spec), deadline=time.monotonic() + 60, config=SplitConfig(**EAGER),
                      milp=BoxProof())
    if delta > 0:
        assert res.status == "unsat", res
        assert 0 < res.margin_lower <= delta * (1 + 1e-6)
    else:
        assert res.status == "sat", res
        y, _ = numpy_forward(net, res.counterexample[None])
        assert spec.margin64(y)[0] <= 0
        assert np.all(res.counterexample >= box.lower) and np.all(res.counterexample <= box.upper)


def test_the_milp_closes_boxes_that_splitting_left_open(monkeypatch):
    """On cases splitting leaves open after its first bound, the MILP closes sub-boxes
    (``milp_boxes``), and without MILP settings it closes none."""
    closed = 0
    for seed in range(8):
        problem, _ = shifted_problem(*_case(seed), seed, 1e-3)
        res = input_split(problem, deadline=time.monotonic() + 60, config=SplitConfig(**EAGER), milp=BoxProof())
        plain = input_split(problem, deadline=time.monotonic() + 60, config=SplitConfig(**EAGER))
        assert res.status == plain.status == "unsat"
        assert plain.milp_boxes == 0 and res.milp_boxes <= res.boxes
        closed += res.milp_boxes
        assert res.boxes <= plain.boxes
    assert closed >= 4


def _open_box_case():
    """A problem and its root box bounds where the property holds by 1e-3 but CROWN cannot
    prove it on the whole box."""
    for seed in range(20):
        net, region, spec = _case(seed)
        box = region.to_box()
        problem, _ = shifted_problem(net, region, spec, seed, 1e-3)
        if input_split(problem, config=SplitConfig(batch_size=1, attack_boxes=0)).boxes == 1:
            continue  # the root's bounds prove it: not the case wanted
        lo, hi = torch.tensor(box.lower)[None], torch.tensor(box.upper)[None]
        return problem, box, crown(net, lo, hi)
    raise AssertionError("no case")


def _prove(problem, box, bnd, proof, *, disjuncts=None):
    pre = [(l[0].numpy(), u[0].numpy()) for l, u in bnd.pre_activation]
    out = (bnd.output[0][0].numpy(), bnd.output[1][0].numpy())
    ks = list(range(problem.spec.n_disjuncts)) if disjuncts is None else disjuncts
    return prove_box(problem, problem.network.affine_blocks(), box.lower, box.upper, pre, out, ks, proof, 30.0)


def test_a_box_proof_needs_the_independent_recheck(monkeypatch):
    """With ``recheck`` on, a MILP proof the re-check does not confirm leaves the box open."""
    problem, box, bnd = _open_box_case()
    res = _prove(problem, box, bnd, BoxProof())
    assert all(res.closed) and 0 < res.lower <= 1e-3 * (1 + 1e-6)
    refused = recheck_module.Recheck(False, -math.inf, 0, "refused by the test")
    monkeypatch.setattr(recheck_module, "recheck_milp", lambda *a, **k: refused)
    res = _prove(problem, box, bnd, BoxProof())
    assert not any(res.closed) and res.lower == math.inf and res.counterexample is None
    res = _prove(problem, box, bnd, BoxProof(recheck=False))
    assert all(res.closed)


def test_a_box_milp_reports_an_exactly_checked_counterexample():
    """On a box where the property fails by 1e-3, the MILP returns a point that violates it."""
    for seed in range(8):
        net, region, spec = _case(seed)
        box = region.to_box()
        truth = brute_force_min_margin(net, box.lower, box.upper, spec, seed=seed).per_disjunct
        problem = Problem(net, region, shifted_spec(spec, truth, -1e-3))
        lo, hi = torch.tensor(box.lower)[None], torch.tensor(box.upper)[None]
        res = _prove(problem, box, crown(net, lo, hi), BoxProof())
        assert res.counterexample is not None and not any(res.closed)
        y, _ = numpy_forward(net, res.counterexample[None])
        assert problem.spec.margin64(y)[0] <= 0


def test_a_box_with_overflowing_bounds_is_left_open():
    """No big-M constants exist for infinite bounds: the box stays open, no MILP runs."""
    problem, box, bnd = _open_box_case()
    pre = [(np.full_like(l[0].numpy(), -np.inf), u[0].numpy()) for l, u in bnd.pre_activation]
    res = prove_box(problem, problem.network.affine_blocks(), box.lower, box.upper, pre,
                    (bnd.output[0][0].numpy(), bnd.output[1][0].numpy()), [0], BoxProof(), 30.0)
    assert res.closed == [False] and res.seconds == 0.0


def test_inconsistent_box_milp_arguments_get_a_precise_error():
    """A direct caller of prove_box with a short `pre` list, wrong shapes or a disjunct index out
    of range gets the argument named, not a numpy error."""
    problem, box, bnd = _open_box_case()
    blocks = problem.network.affine_blocks()
    pre = [(l[0].numpy(), u[0].numpy()) for l, u in bnd.pre_activation]
    out = (bnd.output[0][0].numpy(), bnd.output[1][0].numpy())
    K = problem.spec.n_disjuncts
    for args, message in (((box.lower, box.upper, pre[:-1], out, [0]), "`pre` must hold one (lower, upper) pair"),
                          ((box.lower[:-1], box.upper, pre, out, [0]), "`lo` must have"),
                          ((box.lower, box.upper, [(pre[0][0][:-1], pre[0][1])] + pre[1:], out, [0]), "`pre[0]` bounds"),
                          ((box.lower, box.upper, pre, (out[0],), [0]), "`out_bounds` must be"),
                          ((box.lower, box.upper, pre, out, [K]), "`disjuncts` must be indices"),
                          ((box.lower, box.upper, pre, out, [True]), "`disjuncts` must be indices")):
        with pytest.raises(InvalidInputError, match=re.escape(message)):
            prove_box(problem, blocks, *args, BoxProof(), 30.0)


@pytest.mark.parametrize("kwargs, name", [({"milp_unstable": -1}, "milp_unstable"), ({"milp_min_age": 1.5}, "milp_min_age"),
                                          ({"milp_share": 1.5}, "milp_share"), ({"milp_time_limit": 0}, "milp_time_limit")])
def test_bad_hybrid_settings_are_refused(kwargs, name):
    with pytest.raises(InvalidInputError, match=name):
        SplitConfig(**kwargs)


def test_bad_box_proof_settings_are_refused():
    with pytest.raises(InvalidInputError, match="threshold_abs"):
        BoxProof(threshold_abs=0)
    with pytest.raises(InvalidInputError, match="solver"):
        BoxProof(solver="highs")


def test_the_pipeline_says_how_many_boxes_the_milp_closed():
    """Through ``verify``, an input-splitting proof that used MILPs says so, and how they were
    checked; with the MILP stage off, input splitting runs without them."""
    problem, box, _ = _open_box_case()
    split = SplitConfig(**EAGER)
    config = VerifyConfig(device="cpu", use_attack=False, use_crown=False, use_walk=False, use_lp=False, split=split)
    v = verify(problem.network, Box(box.lower, box.upper), problem.spec, timeout=60, config=config)
    assert v.status.value == "unsat" and v.decided_by == "input-split"
    assert "closed by MILP (each re-checked independently" in v.message
    off = VerifyConfig(device="cpu", use_attack=False, use_crown=False, use_walk=False, use_lp=False, split=split,
                       use_milp=False)
    v = verify(problem.network, Box(box.lower, box.upper), problem.spec, timeout=60, config=off)
    assert v.status.value == "unsat" and "MILP" not in v.message


def _blocks_forward(blocks, x):
    """float64 forward of affine blocks (ReLU between them, passthrough coordinates kept)."""
    h = x
    for k, blk in enumerate(blocks):
        z = h @ blk.matrix.toarray().T + blk.bias
        if k == len(blocks) - 1:
            return z
        h = np.maximum(z, 0.0) if blk.passthrough is None else np.where(blk.passthrough, z, np.maximum(z, 0.0))
    return h


@pytest.mark.parametrize("radius", [0.02, 0.3])
@pytest.mark.parametrize("seed", range(6))
def test_the_reduced_network_matches_the_network_on_the_box(seed, radius):
    """On a box, the reduced network has a layer only per layer with unstable ReLUs, its outputs
    lie within ``e_y`` of the network's at sampled points, and its pre-activations inside the
    widened bounds; ``e_y`` is a rounding error, not a looseness."""
    rng = np.random.default_rng(7700 + seed)
    net = random_dense_network(rng, 3, [12, 12, 10], 4)
    blocks = net.affine_blocks()
    centre = rng.normal(size=3)
    lo, hi = centre - radius, centre + radius
    bnd = crown(net, torch.tensor(lo)[None], torch.tensor(hi)[None])
    pre = [(l[0].numpy(), u[0].numpy()) for l, u in bnd.pre_activation]
    out = (bnd.output[0][0].numpy(), bnd.output[1][0].numpy())
    reduced, rpre, (ly, uy), e_y = bab_free_reduce(blocks, pre, out, lo, hi)
    unstable_layers = sum(bool(np.any((l < 0) & (u > 0))) for l, u in pre)
    assert len(reduced) == unstable_layers + 1
    x = lo + (hi - lo) * rng.random((400, 3))
    y_true = _blocks_forward(blocks, x)
    y_red = _blocks_forward(reduced, x)
    assert np.all(np.abs(y_red - y_true) <= e_y)
    assert np.all(e_y <= 1e-12 * (1 + np.abs(y_true).max()))
    assert np.all(ly <= y_red) and np.all(y_red <= uy)
    h = x
    for blk, (l, u) in zip(reduced[:-1], rpre):
        z = h @ blk.matrix.toarray().T + blk.bias
        assert np.all(l <= z) and np.all(z <= u)
        h = np.where(blk.passthrough, z, np.maximum(z, 0.0))


def test_an_unchecked_box_proof_must_clear_the_solvers_tolerances():
    """Found by an adversarial review: on this tiny box HiGHS reports the minimum of disjunct 1 as
    2.8e-13 (optimal, dual tolerance margin 7.7e-15) where the exact minimum is -4e-24. With the
    re-check off and a threshold far below the defaults, the box was closed; a proof on HiGHS's
    word alone must now clear the floor of its feasibility tolerances, and the default
    thresholds already do."""
    from exact_reference import exact_min_margin, make_case

    from gpuopt.milp.highs import SolverConfig, unchecked_floor

    h = lambda xs: np.array([float.fromhex(x) for x in xs])  # noqa: E731
    lo = h(['-0x1.7455f57d7a800p-3', '-0x1.eddbede24b800p-4', '-0x1.0fa716307a800p-4', '-0x1.9ff5d4013c800p-6',
            '0x1.4a55ea0ac2c00p-4', '0x1.7e15c80000000p-9', '-0x1.68f7240000000p-3', '-0x1.a7e43fdbc7800p-5'])
    hi = h(['-0x1.7455f40000000p-3', '-0x1.eddbecc312c00p-4', '-0x1.0fa7120000000p-4', '-0x1.9ff5c60000000p-6',
            '0x1.4a55ec0000000p-4', '0x1.7e15c80000000p-9', '-0x1.68f722cd42800p-3', '-0x1.a7e43c0000000p-5'])
    pre = [(h(['0x1.05abac3cac245p-20', '-0x1.62c274cd37a0ep-39']), h(['0x1.05abef349144bp-20', '0x1.34bdf38d37a0ep-39']))]
    out = (h(['-0x1.6d21638153304p-20']), h(['-0x1.6d20eeab60668p-20']))
    case = make_case(2020, max_regions=300)
    spec = case.spec([v for v in case.variants if v.label == "ulp+"][0])
    assert exact_min_margin(case.net, lo, hi, [spec.disjuncts[1]]).value < 0  # unsafe points in the box
    problem = Problem(case.net, Box(case.lower, case.upper), spec)
    for proof in (BoxProof(threshold_abs=1e-300, threshold_rel=0.0, recheck=False),
                  BoxProof(threshold_abs=1e-300, threshold_rel=0.0), BoxProof(recheck=False)):
        res = prove_box(problem, case.net.affine_blocks(), lo, hi, pre, out, [1], proof, 10.0)
        assert res.closed == [False], proof
    for scale in (1.0, 3.7, 1e6):
        assert unchecked_floor(scale, SolverConfig()) <= 1e-6 + 1e-5 * scale


def test_a_box_milp_highs_refuses_leaves_the_box_open(monkeypatch):
    """HiGHS may refuse a model (a coefficient of 1e15 or more): the box stays open, nothing raises."""
    import gpuopt.milp.box as box_module
    from gpuopt.errors import SolverError

    problem, box, bnd = _open_box_case()
    assert all(_prove(problem, box, bnd, BoxProof()).closed)  # the real solver closes it
    calls = []

    def refuse(*a, **k):
        calls.append(1)
        raise SolverError("HiGHS refused the model")

    monkeypatch.setattr(box_module, "solve_milp", refuse)
    res = _prove(problem, box, bnd, BoxProof())
    assert calls and not any(res.closed) and res.counterexample is None
