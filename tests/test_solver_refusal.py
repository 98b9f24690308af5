"""HiGHS refuses some models outright (a coefficient of 1e15 or more raises ``SolverError``).
Every caller outside the proof paths already tested elsewhere (the refinement, the disjunct and
box MILPs, the walk's region LPs) must then give up on that one solve and go on soundly: the
walk's relaxed start, root cut rounds, the minimum-distortion MILP of ``certify_radius`` and
``optimize``'s MILP and interior-point LP. Each test makes HiGHS refuse and checks the result is
still sound; each fails (with ``SolverError``) without its guard."""

from __future__ import annotations

import numpy as np
import pytest

import gpuopt.milp.highs as highs
from gpuopt.errors import SolverError
from gpuopt.milp.highs import MilpStatus, solve_milp
from gpuopt.milp.walk import WalkConfig, relax_and_walk
from gpuopt.optimize import optimize
from gpuopt.regions import Box
from gpuopt.specs import robustness

from helpers import numpy_forward, random_dense_network
from test_radius import _classified, _true_radius
from test_walk import _model


def _refuse(*args, **kwargs):
    raise SolverError("HiGHS refused the model")


def test_walk_without_its_relaxed_start_keeps_its_walked_point(monkeypatch):
    import gpuopt.milp.walk as walk

    rng, net, lo, hi, A, b, model = _model(3)
    exact = solve_milp(model, time_limit=30, threshold=np.inf)
    assert exact.status is MilpStatus.OPTIMAL
    monkeypatch.setattr(walk, "solve_milp", _refuse)
    res = walk.relax_and_walk(model, net.affine_blocks(), starts=[0.5 * (lo + hi)], config=WalkConfig(restarts=4))
    assert res.x is not None and np.all(res.x >= lo) and np.all(res.x <= hi)
    y, _ = numpy_forward(net, res.x[None])
    assert res.value == pytest.approx(float(np.max(A @ y[0] - b)), abs=1e-12)
    assert res.value >= exact.dual_bound - 1e-7
    assert res.relaxation == -np.inf  # no relaxation value is claimed


def test_root_cuts_stop_at_a_refused_relaxation(monkeypatch):
    import gpuopt.milp.cuts as cuts

    _, net, lo, hi, A, b, model = _model(4)
    monkeypatch.setattr(cuts, "solve_milp", _refuse)
    cut, info = cuts.add_root_cuts(model, net.affine_blocks(), rounds=3)
    assert cut is model and info == {"cuts": 0, "rounds": 0, "lp_bounds": []}


def test_min_distortion_milp_refused_certifies_nothing(monkeypatch):
    from gpuopt.radius import min_distortion_milp

    _, net, x0, label = _classified(41, 3, [6, 5], (0.2, 0.8))
    _, hi_t = _true_radius(net, x0, label, hi=1.0)
    monkeypatch.setattr(highs, "solve_milp", _refuse)
    lower, x = min_distortion_milp(net, x0, robustness(label, 3), min(1.0, 1.5 * hi_t), clip=(0.0, 1.0))
    assert lower == 0.0 and x is None


def test_optimize_without_its_milp_keeps_a_sound_bound(monkeypatch):
    rng = np.random.default_rng(0)
    net = random_dense_network(rng, 2, [8, 6], 3)
    lo = rng.normal(size=2)
    hi = lo + rng.uniform(0.5, 2.0, size=2)
    c = rng.normal(size=3)
    monkeypatch.setattr(highs, "solve_milp", _refuse)
    monkeypatch.setattr(highs, "solve_lp", _refuse)
    # a redundant input row, so that the MILP (not input splitting) is the last stage
    res = optimize(net, Box(lo, hi), c, constraints=(np.ones((1, 2)), [hi.sum()]), timeout=10, seed=0,
                   attack_share=0.05, walk_share=0.05)
    g = [np.linspace(a, b_, 101) for a, b_ in zip(lo, hi)]
    X = np.stack([m.ravel() for m in np.meshgrid(*g)], axis=1)
    y, _ = numpy_forward(net, X)
    assert res.upper_bound >= float((y @ c).max()) - 1e-9  # sound without the MILP
    assert res.x is not None and res.best_value <= res.upper_bound + 1e-9
    assert res.milp["status"] == "refused" and "refused" in res.milp["warnings"][0]


def test_the_walk_still_refuses_a_bad_config():
    """The guard catches HiGHS's refusal only, not the caller's own errors."""
    _, net, lo, hi, A, b, model = _model(5)
    with pytest.raises(Exception, match="WalkConfig"):
        relax_and_walk(model, net.affine_blocks(), config={"restarts": 1})
