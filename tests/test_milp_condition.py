"""The MILP task with its bounds conditioned on the disjunct (``milp_task(condition_share=...)``,
:func:`gpuopt.bounds.lp.lp_tighten_conditioned`): its verdicts equal brute-force enumeration on
tiny networks at small margins either side of 0, an unreachable disjunct is proven by the
certified-empty LP alone, a proof never claims more than ``tau``, and ``verify`` with the option
agrees with enumeration end to end."""

from __future__ import annotations

import functools
import time

import numpy as np
import pytest
import torch

from gpuopt.bounds import intermediate_bounds
from gpuopt.check import check_counterexample
from gpuopt.engine import tasks
from gpuopt.engine.stages import _problem_data, network_ref
from gpuopt.errors import InvalidInputError
from gpuopt.milp.highs import SolverConfig, proof_thresholds
from gpuopt.problem import Problem
from gpuopt.regions import Box
from gpuopt.specs import OutputSpec
from gpuopt.verify import VerifyConfig, verify

from helpers import brute_force_min_margin, random_dense_network


@functools.lru_cache(maxsize=None)
def _case(seed: int):
    """A random ``4 -> 7 -> 6 -> 3`` ReLU net, a box, a random output row ``a``, the exact
    ``min a f(x)`` over the box, and sound bounds as numpy."""
    rng = np.random.default_rng(7000 + seed)
    net = random_dense_network(rng, 4, [7, 6], 3)
    centre = rng.normal(size=4)
    lo, hi = centre - 0.8, centre + 0.8
    a = rng.normal(size=3)
    exact = brute_force_min_margin(net, lo, hi, OutputSpec([(a[None], np.zeros(1))], 3), seed=seed)
    b = intermediate_bounds(net, torch.as_tensor(lo[None]), torch.as_tensor(hi[None]))
    pre = [(l[0].numpy().astype(np.float64), u[0].numpy().astype(np.float64)) for l, u in b.pre_activation]
    out = (b.output[0][0].numpy().astype(np.float64), b.output[1][0].numpy().astype(np.float64))
    return net, lo, hi, a, float(exact.per_disjunct[0]), pre, out


def _task(net, lo, hi, a, rhs, pre, out, condition_share, budget=30.0):
    """``milp_task`` on the disjunct ``a y <= rhs`` (bigm, re-check on)."""
    A, b = a[None].astype(np.float64), np.array([rhs], dtype=np.float64)
    problem = Problem(net, Box(lo, hi), OutputSpec([(A, b)], net.output_size))
    config = SolverConfig()
    threshold, unchecked = proof_thresholds(A, b, out[0], out[1], 1e-6, 1e-5, config)
    value = tasks.milp_task(network_ref(net), _problem_data(problem), A, b, pre, out, None, threshold, unchecked, config,
                            "bigm", False, True, condition_share, budget, time.time())
    return value, problem, unchecked


@pytest.fixture(autouse=True)
def no_tails(monkeypatch):
    """No tail MILPs first (:data:`gpuopt.engine.tasks.MILP_TAIL_SHARE`): on these small nets every
    layer is narrow, and a tail's proof would end a disjunct before the conditioning it tests."""
    monkeypatch.setattr(tasks, "MILP_TAIL_SHARE", 0.0)


@pytest.fixture
def conditioning_first(monkeypatch):
    """No MILP run before the conditioning: the conditioned path runs on every disjunct."""
    monkeypatch.setattr(tasks, "MILP_FIRST_SHARE", 0.0)
    monkeypatch.setattr(tasks, "MILP_FIRST_SECONDS", 0.0)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("offset", [-0.05, -1e-3, 1e-3, 0.05])
def test_conditioned_milp_agrees_with_enumeration(seed, offset, conditioning_first):
    """``rhs = min + offset``: a negative offset leaves the disjunct unreachable by ``-offset``
    (proven), a positive one reachable (a counterexample that checks in float64)."""
    net, lo, hi, a, m0, pre, out = _case(seed)
    value, problem, tau = _task(net, lo, hi, a, m0 + offset, pre, out, condition_share=0.5)
    assert "conditioned" in value, value
    # a margin at a point HiGHS returned: never below the least margin over the box, -offset
    assert value["margin_upper"] is None or value["margin_upper"] >= -offset - 1e-9, value
    if offset < 0:
        assert value["kind"] == "proven", value
        # the certified bound never claims more than the truth, nor more than tau
        assert value["lb"] <= -offset + 1e-7 and value["lb"] <= tau
        assert value["lb"] > 0
    else:
        assert value["kind"] == "sat", value
        c = check_counterexample(problem, value["x"])
        assert c.ok and c.margin <= 0


@pytest.mark.parametrize("seed", range(3))
def test_unreachable_disjunct_is_proven_by_the_empty_lp(seed, conditioning_first):
    """Far below the LP's minimum, the conditioned LP is infeasible by a certificate: proven
    without a MILP (no nodes), with ``lb = tau``."""
    net, lo, hi, a, m0, pre, out = _case(seed)
    Ap, An = np.maximum(a, 0), np.minimum(a, 0)
    interval_min = float(Ap @ out[0] + An @ out[1])  # below every point's a f(x), so the LP's too
    value, _, tau = _task(net, lo, hi, a, interval_min - 1.0, pre, out, condition_share=1.0)
    assert value["kind"] == "proven", value
    assert value["conditioned"]["empty"] and value["nodes"] == 0 and value["farkas"]
    assert value["lb"] == tau
    assert m0 - (interval_min - 1.0) > tau  # the claim is true


@pytest.mark.parametrize("seed", range(3))
def test_conditioning_off_and_on_decide_alike(seed):
    """With the first MILP run in place (the default), the verdicts are those without conditioning."""
    net, lo, hi, a, m0, pre, out = _case(seed)
    for offset in (-0.02, 0.02):
        values = {share: _task(net, lo, hi, a, m0 + offset, pre, out, condition_share=share)[0] for share in (0.0, 0.5)}
        kinds = {share: v["kind"] for share, v in values.items()}
        assert kinds[0.0] == kinds[0.5] == ("proven" if offset < 0 else "sat"), kinds
        for v in values.values():
            assert v["margin_upper"] is None or v["margin_upper"] >= -offset - 1e-9, v


def test_no_time_left_is_a_timeout_not_a_crash(conditioning_first):
    """With no first run and the budget spent, the task ends ``timeout``."""
    net, lo, hi, a, m0, pre, out = _case(0)
    value, _, _ = _task(net, lo, hi, a, m0 - 0.05, pre, out, condition_share=0.5, budget=1e-9)
    assert value["kind"] == "timeout", value


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("offset", [-0.02, 0.02])
def test_verify_with_conditioning_matches_enumeration(seed, offset):
    """End to end through ``verify`` (only the MILP decides, conditioning on at its largest share)."""
    net, lo, hi, a, m0, _, _ = _case(seed)
    spec = OutputSpec([(a[None], np.array([m0 + offset]))], 3)
    config = VerifyConfig(device="cpu", use_attack=False, use_input_split=False, use_relu_split=False,
                          use_crown=False, alpha_steps=0, use_walk=False, use_lp=False, milp_condition_share=1.0)
    v = verify(net, Box(lo, hi), spec, timeout=60, config=config)
    assert v.status.value == ("unsat" if offset < 0 else "sat"), v


@pytest.mark.parametrize("share", [-0.1, 1.5, float("nan"), True, "half"])
def test_bad_condition_share_is_refused(share):
    with pytest.raises(InvalidInputError, match="milp_condition_share"):
        VerifyConfig(milp_condition_share=share)


def test_overflowing_spec_skips_conditioning_instead_of_raising(conditioning_first):
    """A spec whose scale overflows float64 makes the thresholds infinite: no tau to condition on,
    so the task goes on without it (``unknown``/``timeout``), as with conditioning off."""
    net, lo, hi, a, m0, pre, out = _case(0)
    A, b = np.array([[1e300, 1e300, 0.0]]), np.array([-1e300])
    problem = Problem(net, Box(lo, hi), OutputSpec([(A, b)], net.output_size))
    config = SolverConfig()
    # the scale over outputs of 1e10 overflows, as in proof_thresholds on such a spec
    with np.errstate(over="ignore"):
        threshold, unchecked = proof_thresholds(A, b, out[0] * 1e10, out[1] * 1e10, 1e-6, 1e-5, config)
    assert not np.isfinite(unchecked)
    value = tasks.milp_task(network_ref(net), _problem_data(problem), A, b, pre, out, None, threshold, unchecked,
                            config, "bigm", False, True, 0.5, 10.0, time.time())
    assert value["kind"] in ("unknown", "timeout") and "conditioned" not in value, value


def test_verdict_names_the_farkas_proofs(conditioning_first):
    """End to end, a disjunct that interval bounds leave open but whose conditioned LP is empty is
    proven by the certificate alone, and the verdict says so."""
    from gpuopt.bounds import ibp
    from gpuopt.bounds.lp import lp_row_bounds

    for seed in range(6):
        net, lo, hi, a, m0, _, _ = _case(seed)
        b = ibp(net, torch.as_tensor(lo[None]), torch.as_tensor(hi[None]))
        pre = [(l[0].numpy(), u[0].numpy()) for l, u in b.pre_activation]
        out = (b.output[0][0].numpy(), b.output[1][0].numpy())
        Ap, An = np.maximum(a, 0), np.minimum(a, 0)
        interval_min = float(Ap @ out[0] + An @ out[1])
        lp_min = float(lp_row_bounds(net.affine_blocks(), pre, out, lo, hi, a[None], np.zeros(1))[0])
        if lp_min - interval_min > 0.2:  # room between what intervals and the LP prove
            break
    else:
        pytest.fail("no case where the LP proves more than interval bounds")
    rhs = lp_min - 0.1  # the LP (so the conditioned one too) is infeasible below its minimum
    assert interval_min < rhs < m0
    spec = OutputSpec([(a[None], np.array([rhs]))], 3)
    config = VerifyConfig(device="cpu", use_attack=False, use_input_split=False, use_relu_split=False,
                          use_crown=False, alpha_steps=0, use_walk=False, use_lp=False, milp_condition_share=1.0)
    v = verify(net, Box(lo, hi), spec, timeout=60, config=config)
    assert v.status.value == "unsat" and v.decided_by == "milp", v
    assert "1 by a conditioned LP's Farkas certificate" in v.message, v.message


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("formulation,cuts", [("bigm", ""), ("extended", "implication")])
def test_solve_conditioned_directly(seed, formulation, cuts):
    """:func:`gpuopt.milp.conditioned.solve_conditioned` (shared by the MILP task and the
    formulation benchmark), the conditioned run forced: below the minimum it proves the disjunct
    with a bound no higher than ``tau`` or the truth; above it, ``accept`` is called with input
    points (of the input's length) and takes a point whose margin checks in float64."""
    from gpuopt.milp.conditioned import solve_conditioned

    net, lo, hi, a, m0, pre, out = _case(seed)
    blocks = net.affine_blocks()
    tau = 1e-5
    for offset in (-0.03, 0.03):
        A, b = a[None].astype(np.float64), np.array([m0 + offset])
        seen = []

        def accept(x):
            seen.append(np.asarray(x).shape)
            y = net.forward64(np.clip(x, lo, hi)[None])[0]
            return float(A[0] @ y - b[0]) <= 0

        run = solve_conditioned(blocks, pre, out, lo, hi, A, b, threshold=0.0, tau=tau, deadline=time.monotonic() + 30,
                                condition_share=0.5, formulation=formulation, cuts=cuts, accept=accept,
                                first_share=0.0, first_seconds=0.0)
        assert run.first is None and run.conditioning is not None and run.ceiling == tau
        assert (run.cuts is not None) == bool(cuts)
        if offset < 0:
            assert run.empty or run.result.proves_above(0.0)
            if not run.empty:
                assert min(run.result.dual_bound - run.result.proof_margin, run.ceiling) <= -offset + 1e-7
        else:
            assert not run.empty and seen and all(s == (4,) for s in seen)
