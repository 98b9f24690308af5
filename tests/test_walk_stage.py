"""The Relax-and-Walk stage of the pipeline: it decides `sat` only with an exactly checked point,
never on a property that holds, and hands its best point to the MILP."""

from __future__ import annotations

import numpy as np

from gpuopt import Box, OutputSpec, VerifyConfig, verify
from gpuopt.check import check_counterexample
from gpuopt.problem import Problem
from gpuopt.verdict import Status

from helpers import brute_force_min_margin, random_dense_network

ONLY_WALK = dict(use_attack=False, use_input_split=False, use_relu_split=False, use_milp=False, use_crown=False,
                 alpha_steps=0, walk_share=1.0, use_lp=False)


def _case(seed):
    rng = np.random.default_rng(seed)
    net = random_dense_network(rng, 3, [10, 8], 2)
    lo = rng.normal(size=3)
    hi = lo + 1.0
    return net, lo, hi


def test_the_walk_decides_reachable_properties_with_a_checked_point():
    decided = 0
    for seed in range(12):
        net, lo, hi = _case(seed)
        # a threshold between the minimum and the maximum of y0 - y1: reachable by construction
        spec0 = OutputSpec([([[1.0, -1.0]], [0.0])], 2)
        ref = brute_force_min_margin(net, lo, hi, spec0, seed=seed)
        b = ref.min_margin + 0.05 * (1 + abs(ref.min_margin))  # y0 - y1 <= b holds for some x
        spec = OutputSpec([([[1.0, -1.0]], [b])], 2)
        v = verify(net, Box(lo, hi), spec, timeout=20, config=VerifyConfig(**ONLY_WALK))
        assert v.status in (Status.SAT, Status.UNKNOWN)
        if v.status is Status.SAT:
            decided += 1
            assert v.decided_by == "walk" and [e["stage"] for e in v.events] == ["bounds", "walk"]
            assert check_counterexample(Problem(net, Box(lo, hi), spec), v.counterexample).ok
    assert decided >= 10, decided


def test_the_walk_never_claims_a_property_that_holds():
    for seed in range(8):
        net, lo, hi = _case(100 + seed)
        spec0 = OutputSpec([([[1.0, -1.0]], [0.0])], 2)
        ref = brute_force_min_margin(net, lo, hi, spec0, seed=seed)
        b = ref.min_margin - 1e-6 * (1 + abs(ref.min_margin))  # just below the minimum: unreachable
        spec = OutputSpec([([[1.0, -1.0]], [b])], 2)
        v = verify(net, Box(lo, hi), spec, timeout=10, config=VerifyConfig(**ONLY_WALK))
        assert v.status is Status.UNKNOWN, (seed, v.status)


def test_the_walk_point_seeds_the_milp():
    net, lo, hi = _case(3)
    spec = OutputSpec([([[1.0, -1.0]], [-100.0])], 2)  # far below the minimum: holds
    config = VerifyConfig(use_attack=False, use_input_split=False, use_relu_split=False, use_crown=False,
                          alpha_steps=0, use_lp=False)
    v = verify(net, Box(lo, hi), spec, timeout=20, config=config)
    assert v.status is Status.UNSAT
    assert [e["stage"] for e in v.events] == ["bounds", "walk", "milp"] or v.decided_by == "ibp"
