"""Tail MILPs (:mod:`gpuopt.milp.tail`): the network after a narrow layer over that layer's box.

On random tiny networks with a 2-neuron layer, the tail's optimum lies between the brute-force
minimum of the tail over the box (it keeps the later layers' bounds, which only cut) and the
network's own brute-force minimum (it relaxes the layers before); ``prove_by_tail`` proves a
threshold just below the tail's optimum and never one just above it; the MILP task reports a tail
proof, re-checks it, and never reads the tail's variables as an input point."""

from __future__ import annotations

import functools
import time

import numpy as np
import pytest
import torch

from gpuopt.bounds import ibp, intermediate_bounds
from gpuopt.engine import tasks
from gpuopt.engine.stages import _problem_data, network_ref
from gpuopt.milp.encode import encode
from gpuopt.milp.highs import MilpStatus, SolverConfig, proof_thresholds, solve_milp
from gpuopt.milp.tail import prove_by_tail, tail_box, tail_layers
from gpuopt.network import AffineBlock, Dense, Network, ReLU
from gpuopt.problem import Problem
from gpuopt.regions import Box
from gpuopt.specs import OutputSpec

from helpers import brute_force_min_margin, random_dense_network

NARROW = 1  # the hidden layer with 2 neurons in _case's nets


@functools.lru_cache(maxsize=None)
def _case(seed: int):
    """A random ``3 -> 6 -> 2 -> 5 -> 2`` ReLU net, a box, a random output row ``a`` (as a
    one-row disjunct ``a y <= 0``), the network's exact ``min a f(x)``, sound bounds (numpy), and
    the exact minimum of the tail after the 2-neuron layer over that layer's box."""
    rng = np.random.default_rng(9100 + seed)
    net = random_dense_network(rng, 3, [6, 2, 5], 2)
    centre = rng.normal(size=3)
    lo, hi = centre - 1.0, centre + 1.0
    a = rng.normal(size=2)
    spec = OutputSpec([(a[None], np.zeros(1))], 2)
    exact = float(brute_force_min_margin(net, lo, hi, spec, seed=seed).per_disjunct[0])
    b = intermediate_bounds(net, torch.as_tensor(lo[None]), torch.as_tensor(hi[None]))
    pre = [(l[0].numpy().astype(np.float64), u[0].numpy().astype(np.float64)) for l, u in b.pre_activation]
    out = (b.output[0][0].numpy().astype(np.float64), b.output[1][0].numpy().astype(np.float64))
    dense = [layer for layer in net.layers if isinstance(layer, Dense)]
    tail_net = Network([dense[2], ReLU(), dense[3]], (2,))
    h_lo, h_hi = tail_box(net.affine_blocks()[NARROW], *pre[NARROW])
    tail_exact = float(brute_force_min_margin(tail_net, h_lo, h_hi, spec, seed=seed).per_disjunct[0])
    return net, lo, hi, a, exact, pre, out, tail_exact


def _tail_optimum(net, a, pre, out) -> float:
    """The tail MILP after the narrow layer, solved to optimality."""
    blocks = net.affine_blocks()
    h_lo, h_hi = tail_box(blocks[NARROW], *pre[NARROW])
    model = encode(blocks[NARROW + 1:], pre[NARROW + 1:], out, h_lo, h_hi, a[None], np.zeros(1))
    res = solve_milp(model, time_limit=30.0, threshold=np.inf)
    assert res.status is MilpStatus.OPTIMAL, res
    return float(res.objective)


@pytest.mark.parametrize("seed", range(8))
def test_tail_optimum_between_tail_and_network_minima(seed):
    net, lo, hi, a, exact, pre, out, tail_exact = _case(seed)
    opt = _tail_optimum(net, a, pre, out)
    assert tail_exact - 1e-6 <= opt <= exact + 1e-6, (tail_exact, opt, exact)


@pytest.mark.parametrize("seed", range(8))
def test_prove_by_tail_proves_below_its_optimum_only(seed):
    """Just below the tail's optimum a tail proves (the one from the narrow layer, or a shorter one
    from a later layer left with at most 2 live neurons, whose optimum is then as high); just
    above, nothing proves, and whatever it proves holds for the network."""
    net, lo, hi, a, exact, pre, out, _ = _case(seed)
    blocks = net.affine_blocks()
    opt = _tail_optimum(net, a, pre, out)
    below = prove_by_tail(blocks, pre, out, a[None], np.zeros(1), threshold=opt - 0.01,
                          deadline=time.monotonic() + 30.0, max_live=2)
    assert below.layer is not None and below.layer >= NARROW, below.tried
    assert below.result.dual_bound > opt - 0.01 and opt - 0.01 < exact
    above = prove_by_tail(blocks, pre, out, a[None], np.zeros(1), threshold=opt + 0.01,
                          deadline=time.monotonic() + 30.0, max_live=2)
    assert above.layer is None and above.result is None and NARROW in [t[0] for t in above.tried], above.tried
    # every layer of these nets has at most 16 live neurons: with the default, the shortest tail
    # runs first; a proof from any of them must hold for the network
    proof = prove_by_tail(blocks, pre, out, a[None], np.zeros(1), threshold=exact + 0.01,
                          deadline=time.monotonic() + 30.0)
    assert proof.layer is None, (proof.tried, exact)


def test_tail_layers_order_and_filters():
    net, lo, hi, a, exact, pre, out, _ = _case(0)
    blocks = net.affine_blocks()
    layers = tail_layers(blocks, pre)  # deepest first; none whose tail is the whole model's binaries
    assert layers == sorted(layers, reverse=True) and layers
    whole = sum(int(((l < 0) & (u > 0)).sum()) for l, u in pre)
    for j in layers:
        assert sum(int(((l < 0) & (u > 0)).sum()) for l, u in pre[j + 1:]) < whole
    assert all(int((pre[j][1] > 0).sum()) <= 2 for j in tail_layers(blocks, pre, max_live=2))
    assert tail_layers(blocks, pre, max_live=0) == [j for j in layers if not (pre[j][1] > 0).any()]


def test_tail_box_passes_through_linear_coordinates():
    block = AffineBlock(matrix=None, bias=np.zeros(3), passthrough=np.array([False, True, False]))
    lo, hi = tail_box(block, np.array([-1.0, -2.0, 0.5]), np.array([2.0, -1.0, 1.0]))
    assert lo.tolist() == [0.0, -2.0, 0.5] and hi.tolist() == [2.0, -1.0, 1.0]


def _task(net, lo, hi, a, rhs, pre, out, budget=30.0):
    """``milp_task`` on the disjunct ``a y <= rhs`` (bigm, re-check on, no conditioning)."""
    A, b = a[None].astype(np.float64), np.array([rhs], dtype=np.float64)
    problem = Problem(net, Box(lo, hi), OutputSpec([(A, b)], net.output_size))
    config = SolverConfig()
    threshold, unchecked = proof_thresholds(A, b, out[0], out[1], 1e-6, 1e-5, config)
    return tasks.milp_task(network_ref(net), _problem_data(problem), A, b, pre, out, None, threshold, unchecked,
                           config, "bigm", False, True, 0.0, budget, time.time())


@pytest.mark.parametrize("seed", range(4))
def test_milp_task_reports_and_rechecks_a_tail_proof(seed, monkeypatch):
    net, lo, hi, a, exact, pre, out, _ = _case(seed)
    opt = _tail_optimum(net, a, pre, out)
    value = _task(net, lo, hi, a, opt - 0.05, pre, out)  # the tail clears the threshold
    assert value["kind"] == "proven" and value.get("tail") is not None, value
    assert value["rechecked"] and 0 < value["lb"] <= exact - (opt - 0.05) + 1e-7, value
    monkeypatch.setattr(tasks, "MILP_TAIL_SHARE", 0.0)
    plain = _task(net, lo, hi, a, opt - 0.05, pre, out)
    assert plain["kind"] == "proven" and "tail" not in plain and "tails" not in plain, plain


@pytest.mark.parametrize("seed", range(4))
def test_milp_task_finds_the_counterexample_when_no_tail_proves(seed):
    """A reachable disjunct: the tails try and fail, the whole MILP finds a point that checks."""
    net, lo, hi, a, exact, pre, out, _ = _case(seed)
    value = _task(net, lo, hi, a, exact + 0.05, pre, out)
    assert value["kind"] == "sat" and value.get("tail") is None and value["tails"], value
    assert float(a @ value["y"]) <= exact + 0.05 + 1e-9


def test_verify_names_the_tail_proof():
    """End to end (the MILP alone after interval bounds): a disjunct just below the tail's
    optimum is proven by the tail, and the verdict says so; above the network's minimum it is sat."""
    from gpuopt.verify import VerifyConfig, verify

    config = VerifyConfig(device="cpu", use_attack=False, use_input_split=False, use_relu_split=False,
                          use_crown=False, alpha_steps=0, use_walk=False, use_lp=False)
    net, lo, hi, a, exact, pre, out, _ = _case(0)
    rhs = _tail_optimum(net, a, pre, out) - 0.05
    v = verify(net, Box(lo, hi), OutputSpec([(a[None], np.array([rhs]))], 2), timeout=60, config=config)
    assert v.status.value == "unsat" and v.decided_by == "milp", v
    assert "by the network's tail after a narrow layer" in v.message, v.message
    v = verify(net, Box(lo, hi), OutputSpec([(a[None], np.array([exact + 0.05]))], 2), timeout=60, config=config)
    assert v.status.value == "sat", v


def test_tail_stage_closes_disjuncts_before_splitting(monkeypatch):
    """The tail stage (before activation splitting) proves a disjunct just below the tail's optimum,
    and the item ends there with the tail named; a reachable one goes on and ends sat."""
    from gpuopt.engine import stages
    from gpuopt.verify import VerifyConfig, verify

    calls = []
    original = stages.tail_task

    def spy(*args):
        value = original(*args)
        calls.append(value)
        return value

    monkeypatch.setattr(stages, "tail_task", spy)
    config = VerifyConfig(device="cpu", use_attack=False, use_input_split=False, use_crown=False, alpha_steps=0,
                          use_walk=False, use_lp=False, milp_refine_share=0.0)  # (no refinement, no probe)
    net, lo, hi, a, exact, _, _, _ = _case(1)
    b = ibp(net, torch.as_tensor(lo[None]), torch.as_tensor(hi[None]))  # the bounds the pipeline has here
    pre = [(l[0].numpy(), u[0].numpy()) for l, u in b.pre_activation]
    rhs = _tail_optimum(net, a, pre, (b.output[0][0].numpy(), b.output[1][0].numpy())) - 0.05
    v = verify(net, Box(lo, hi), OutputSpec([(a[None], np.array([rhs]))], 2), timeout=60, config=config)
    assert v.status.value == "unsat" and v.decided_by == "milp", v
    assert calls and calls[0]["kind"] == "proven" and calls[0]["rechecked"], calls
    assert "tail" in [e["stage"] for e in v.events] and "relu_split" not in [e["stage"] for e in v.events], v.events
    assert "by the network's tail after a narrow layer" in v.message, v.message
    calls.clear()
    v = verify(net, Box(lo, hi), OutputSpec([(a[None], np.array([exact + 0.05]))], 2), timeout=60, config=config)
    assert v.status.value == "sat" and calls and calls[0]["kind"] == "open", (v, calls)


def test_refinement_property_check_tries_tails_first(monkeypatch):
    """The refinement's check (``property_check(output=...)``) ends it once tails prove every
    disjunct, without splitting; a reachable disjunct keeps it going."""
    import gpuopt.relu_split as relu_split_module
    from gpuopt.bounds.milp_refine import property_check

    net, lo, hi, a, exact, pre, out, _ = _case(2)
    opt = _tail_optimum(net, a, pre, out)

    def no_split(*args, **kwargs):
        raise AssertionError("splitting ran although the tails proved every disjunct")

    with monkeypatch.context() as m:
        m.setattr(relu_split_module, "relu_split", no_split)
        check = property_check(net, lo, hi, [(a[None], np.array([opt - 0.05]), None)], output=out)
        assert check(pre) is True
    reachable = property_check(net, lo, hi, [(a[None], np.array([exact + 0.05]), None)], output=out)
    assert reachable(pre) is False
    # overflowing output bounds: no tails, splitting alone
    check = property_check(net, lo, hi, [(a[None], np.array([exact + 0.05]), None)], output=(out[0] * np.inf, out[1]))
    assert check(pre) is False
    # a tail HiGHS refuses is not proven, and the check goes on to splitting (it once raised)
    import gpuopt.milp.tail as tail_module
    from gpuopt.errors import SolverError

    def refused(*args, **kwargs):
        raise SolverError("refused")

    monkeypatch.setattr(tail_module, "prove_by_tail", refused)
    check = property_check(net, lo, hi, [(a[None], np.array([opt - 0.05]), None)], output=out)
    assert check(pre) is True  # splitting proves it


def test_no_timeout_and_a_later_stage_naming_the_tails():
    """Without a timeout (the CLI's default) the tail stage runs (an infinite deadline once crashed
    HiGHS's thread join); when splitting decides after the tails proved some disjuncts, the
    verdict says so."""
    from gpuopt.verify import VerifyConfig, verify

    config = VerifyConfig(device="cpu", use_attack=False, use_input_split=False, use_crown=False, alpha_steps=0,
                          use_walk=False, use_lp=False, milp_refine_share=0.0)
    net, lo, hi, a, exact, _, _, _ = _case(1)
    b = ibp(net, torch.as_tensor(lo[None]), torch.as_tensor(hi[None]))
    pre = [(l[0].numpy(), u[0].numpy()) for l, u in b.pre_activation]
    opt = _tail_optimum(net, a, pre, (b.output[0][0].numpy(), b.output[1][0].numpy()))
    # disjunct 0 the tail proves; disjunct 1 (a row the tail cannot reach: above its optimum, below
    # the network's minimum) is left to splitting
    rhs0, rhs1 = opt - 0.05, (opt + exact) / 2 if exact - opt > 0.02 else None
    disjuncts = [(a[None], np.array([rhs0]))] + ([] if rhs1 is None else [(a[None], np.array([rhs1]))])
    v = verify(net, Box(lo, hi), OutputSpec(disjuncts, 2), timeout=None, config=config)
    assert v.status.value == "unsat", v
    if rhs1 is None:
        assert "by the network's tail" in v.message, v.message
    else:
        assert v.decided_by == "relu-split" and "proven before activation splitting by MILPs" in v.message, v
