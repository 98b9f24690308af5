"""MILP refinement of intermediate bounds: sound on samples, never looser, stabilises exactly the
neurons whose exact range lies on one side of 0 (brute force), and through the pipeline the
verdicts still equal exact enumeration, with the verdict saying what a proof rested on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpuopt import Status, VerifyConfig, verify
from gpuopt.bounds import intermediate_bounds
from gpuopt.bounds.milp_refine import milp_refine
from gpuopt.errors import InvalidInputError
from gpuopt.network import Network
from gpuopt.specs import OutputSpec

from helpers import (affine_view_values, brute_force_min_margin, random_dense_network, shifted_problem,
                     small_robustness_case)


def _case(seed: int):
    rng = np.random.default_rng(seed)
    net = random_dense_network(rng, 3, [8, 8, 6], 2)
    c = rng.normal(size=3)
    lo_x, hi_x = c - 0.7, c + 0.7
    inter = intermediate_bounds(net, torch.tensor(lo_x)[None], torch.tensor(hi_x)[None])
    return rng, net, lo_x, hi_x, [(l[0].numpy(), u[0].numpy()) for l, u in inter.pre_activation]


def assert_sound_on_samples(rng, net, lo_x, hi_x, pre, res):
    """20000 samples and the box corners: every pre-activation inside the refined bounds ``res.pre``,
    which lie inside ``pre``; the unstable counts are those of the bounds."""
    assert res.milps > 0 and res.unstable_before == tuple(int(((l < 0) & (u > 0)).sum()) for l, u in pre)
    x = lo_x + (hi_x - lo_x) * rng.random((20000, 3))
    corners = np.array(np.meshgrid(*zip(lo_x, hi_x))).reshape(3, -1).T
    for (l0, u0), (l, u), z in zip(pre, res.pre, affine_view_values(net, np.vstack([x, corners]))[0]):
        assert np.all(l >= l0) and np.all(u <= u0)
        assert np.all(z >= l - 1e-12) and np.all(z <= u + 1e-12)
    assert res.unstable_after == tuple(int(((l < 0) & (u > 0)).sum()) for l, u in res.pre)


@pytest.mark.parametrize("seed", range(6))
def test_refined_bounds_hold_on_samples_and_never_loosen(seed):
    rng, net, lo_x, hi_x, pre = _case(seed)
    assert_sound_on_samples(rng, net, lo_x, hi_x, pre, milp_refine(net.affine_blocks(), pre, lo_x, hi_x, neuron_time=5.0))


def _exact_range(net: Network, k: int, j: int, lo_x, hi_x) -> tuple[float, float]:
    """``(min z_kj, max z_kj)`` over the box by exact enumeration of the truncated network."""
    sub = Network(list(net.layers[:2 * k + 1]), net.input_shape)
    n = sub.output_size
    e = np.eye(n)[j:j + 1]
    low = brute_force_min_margin(sub, lo_x, hi_x, OutputSpec([(e, np.zeros(1))], n)).per_disjunct[0]
    high = -brute_force_min_margin(sub, lo_x, hi_x, OutputSpec([(-e, np.zeros(1))], n)).per_disjunct[0]
    return low, high


@pytest.mark.parametrize("seed", range(6))
def test_stabilises_exactly_the_neurons_whose_exact_range_is_one_sided(seed):
    """Every neuron left unstable by the interval bounds whose exact range (brute force) stays
    clear of 0 is made stable, on its own side; none whose range crosses 0 is."""
    _, net, lo_x, hi_x, pre = _case(seed)
    res = milp_refine(net.affine_blocks(), pre, lo_x, hi_x, neuron_time=10.0)
    checked = 0
    for k in range(1, len(pre)):
        l0, u0 = pre[k]
        l, u = res.pre[k]
        for j in np.flatnonzero((l0 < 0) & (u0 > 0)):
            low, high = _exact_range(net, k, j, lo_x, hi_x)
            checked += 1
            if high < -1e-4:
                assert u[j] <= 0, (k, j, high)
            elif low > 1e-4:
                assert l[j] >= 0, (k, j, low)
            elif low < -1e-9 and high > 1e-9:
                assert l[j] < 0 < u[j]
            assert l[j] <= low + 1e-9 and u[j] >= high - 1e-9
    assert checked > 0


def test_stabilises_something_somewhere():
    """The test above must bind: over its seeds some neuron that the interval bounds leave
    unstable is exactly one-sided and made stable."""
    made = 0
    for seed in range(6):
        _, net, lo_x, hi_x, pre = _case(seed)
        made += milp_refine(net.affine_blocks(), pre, lo_x, hi_x, neuron_time=10.0).stabilised
    assert made > 0


@pytest.mark.parametrize("seed", [0, 3])
def test_parallel_milps_give_the_same_bounds(seed):
    """A layer's neurons are independent given the layers before it: three MILPs at once in threads
    give the very bounds and counts of one at a time."""
    _, net, lo_x, hi_x, pre = _case(seed)
    one = milp_refine(net.affine_blocks(), pre, lo_x, hi_x, neuron_time=10.0)
    three = milp_refine(net.affine_blocks(), pre, lo_x, hi_x, neuron_time=10.0, parallel=3)
    assert (one.milps, one.stabilised, one.tightened) == (three.milps, three.stabilised, three.tightened)
    for (l1, u1), (l3, u3) in zip(one.pre, three.pre):
        assert np.array_equal(l1, l3) and np.array_equal(u1, u3)


def test_stable_inactive_neurons_leave_the_model():
    """The MILP of a layer-k neuron keeps only the neurons before it that are not stable-inactive,
    with their bounds and the matching columns of the next layer."""
    from gpuopt.bounds.milp_refine import _live_prefix

    _, net, lo_x, hi_x, pre = _case(2)
    blocks = net.affine_blocks()
    k = len(pre) - 1
    prefix, prefix_pre, keep = _live_prefix(blocks, pre, k)
    assert len(prefix) == k and np.array_equal(keep, np.flatnonzero(pre[k - 1][1] > 0))
    assert all(b.matrix.shape[0] < l.size for b, (l, _) in zip(prefix, pre))  # seed 2: some inactive in each
    x = lo_x + (hi_x - lo_x) * np.random.default_rng(0).random((500, 3))
    h = x
    for block, (l, u) in zip(prefix, prefix_pre):
        z = h @ block.matrix.T.toarray() + block.bias
        assert np.all(z >= l - 1e-9) and np.all(z <= u + 1e-9)
        h = np.maximum(z, 0.0)
    z_k = affine_view_values(net, x)[0][k]
    assert np.allclose(h @ blocks[k].matrix[:, keep].T.toarray() + blocks[k].bias, z_k, atol=1e-9)


def test_bad_parallel_count_is_refused():
    _, net, lo_x, hi_x, pre = _case(0)
    with pytest.raises(InvalidInputError, match="parallel"):
        milp_refine(net.affine_blocks(), pre, lo_x, hi_x, parallel=0)


def test_stops_at_the_deadline_with_sound_bounds():
    _, net, lo_x, hi_x, pre = _case(1)
    import time

    res = milp_refine(net.affine_blocks(), pre, lo_x, hi_x, deadline=time.monotonic() - 1.0)
    assert res.milps == 0
    for (l0, u0), (l, u) in zip(pre, res.pre):
        assert np.array_equal(l0, l) and np.array_equal(u0, u)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("delta", [1e-3, -1e-3])
def test_pipeline_with_refinement_agrees_with_brute_force(seed, delta):
    net, region, spec = small_robustness_case(seed)
    problem, _ = shifted_problem(net, region, spec, seed, delta)
    config = VerifyConfig(use_input_split=False, use_attack=False, milp_refine_share=0.5,
                          milp_refine_probe_share=0.1 if seed % 2 else 0.0)
    v = verify(net, problem.region, problem.spec, timeout=60, config=config)
    assert v.status is (Status.UNSAT if delta > 0 else Status.SAT) or v.status in (Status.UNKNOWN, Status.TIMEOUT)


def test_an_unsat_verdict_on_refined_bounds_says_so():
    """A property proven by activation splitting after the MILP refinement moved some bound names
    it, and the solver tolerances it rests on."""
    said = 0
    for seed in range(8):
        net, region, spec = small_robustness_case(seed)
        problem, _ = shifted_problem(net, region, spec, seed, 1e-3)
        config = VerifyConfig(use_input_split=False, use_attack=False, use_crown=False, alpha_steps=0,
                              milp_refine_share=0.5, milp_refine_probe_share=0.0, refine_method="milp")
        v = verify(net, problem.region, problem.spec, timeout=60, config=config)
        if v.status is Status.UNSAT and v.decided_by not in ("ibp", "crown", "alpha-crown"):
            said += "refined by MILP" in v.message and "HiGHS's tolerances" in v.message
    assert said > 0


def _stage_names(v) -> list:
    return [e["stage"] for e in v.events]


def test_the_probe_decides_easy_items_before_any_refinement():
    """With the refinement on, activation splitting runs first for a short share: an item it
    proves never waits for (nor rests on) the refinement."""
    decided = 0
    for seed in range(8):
        net, region, spec = small_robustness_case(seed)
        problem, _ = shifted_problem(net, region, spec, seed, 1e-3)
        config = VerifyConfig(use_input_split=False, use_attack=False, use_crown=False, alpha_steps=0,
                              milp_refine_share=0.5)
        v = verify(net, problem.region, problem.spec, timeout=60, config=config)
        if v.status is Status.UNSAT and v.decided_by == "relu-split" and "relu_split_probe" in v.stage_seconds:
            assert "refine" not in v.stage_seconds and "refined by" not in v.message
            decided += 1
    assert decided > 0


def test_what_the_probe_leaves_open_is_refined_then_split_again():
    """A probe that has no time leaves the item to the refinement and then to activation splitting
    from the start, in that order."""
    net, region, spec = small_robustness_case(0)
    problem, _ = shifted_problem(net, region, spec, 0, 1e-3)
    config = VerifyConfig(use_input_split=False, use_attack=False, use_crown=False, alpha_steps=0,
                          milp_refine_share=0.5, milp_refine_probe_share=1e-12)
    v = verify(net, problem.region, problem.spec, timeout=60, config=config)
    names = _stage_names(v)
    assert names.index("relu_split_probe") < names.index("refine") < names.index("relu_split")


@pytest.mark.parametrize("kwargs", [{"milp_refine_share": -0.1}, {"milp_refine_share": 1.5},
                                    {"milp_refine_share": True}, {"milp_refine_neuron_time": 0},
                                    {"milp_refine_neuron_time": float("inf")}, {"milp_refine_neuron_time": "1"},
                                    {"milp_refine_probe_share": -0.5}, {"milp_refine_probe_share": 2}])
def test_bad_refinement_settings_are_refused(kwargs):
    with pytest.raises(InvalidInputError, match="milp_refine"):
        VerifyConfig(**kwargs)


def test_a_feasibility_tolerance_below_1e_9_is_refused():
    """Found by review: HiGHS reported a wrong optimum (1 where the maximum is 2) on a dyadic net
    at ``mip_feasibility_tolerance`` 5e-10 and below with presolve off, which the refinement (and
    a MILP proof without the re-check) would trust; such settings are refused."""
    from gpuopt.milp.highs import SolverConfig

    for bad in (1e-10, 5e-10):
        with pytest.raises(InvalidInputError, match=r"mip_feasibility_tolerance.*\[1e-09, 1e-3\]"):
            SolverConfig(mip_feasibility_tolerance=bad, presolve=False)
    SolverConfig(mip_feasibility_tolerance=1e-9, primal_feasibility_tolerance=1e-10, presolve=False)


def test_reviewers_dyadic_net_is_refined_soundly_at_the_default_settings():
    """The review's 3-3-3-3-1 net (integer and half-integer weights), from interval bounds: at
    the default settings the refined bounds contain the pre-activations at ``x = (-2, 0, 0)``
    (where layer 1's neuron 1 reaches its maximum 2, which the bad settings bounded by 1) and
    at every corner and sample of the box."""
    from gpuopt.bounds import ibp
    from gpuopt.layers import Dense, ReLU

    weights = [([[1, -0.5, -0.5], [-1, -1, -1], [1, -1, 1]], [1, 1, 1]),
               ([[0.5, 0, 0], [0.5, 1, -1], [-0.5, 0, -1]], [1, -1, -1]),
               ([[-1, -2, 2], [-1, 0, -1], [0, -2, 1]], [-1, 1, 1]),
               ([[0.5, 0.5, -0.5]], [-1])]
    layers = []
    for W, b in weights:
        layers += [Dense(np.array(W, dtype=np.float64), np.array(b, dtype=np.float64)), ReLU()]
    net = Network(layers[:-1], (3,))
    lo_x, hi_x = np.array([-2.0, 0.0, 0.0]), np.array([0.0, 1.0, 2.0])
    bd = ibp(net, torch.tensor(lo_x)[None], torch.tensor(hi_x)[None])
    pre = [(l[0].numpy(), u[0].numpy()) for l, u in bd.pre_activation]
    res = milp_refine(net.affine_blocks(), pre, lo_x, hi_x, neuron_time=5.0)
    rng = np.random.default_rng(0)
    corners = np.array(np.meshgrid(*zip(lo_x, hi_x))).reshape(3, -1).T
    x = np.vstack([[-2.0, 0.0, 0.0], corners, lo_x + (hi_x - lo_x) * rng.random((5000, 3))])
    for (l, u), z in zip(res.pre, affine_view_values(net, x)[0]):
        assert np.all(z >= l - 1e-12) and np.all(z <= u + 1e-12)
    assert res.pre[1][1][1] >= 2.0


def test_a_bound_that_highs_own_point_contradicts_is_not_used(monkeypatch):
    """A timed-out MILP whose dual bound claims more than its own incumbent allows (HiGHS wrong)
    changes nothing: the incumbent's ``z_j``, evaluated in float64, is checked against the bound."""
    import gpuopt.bounds.milp_refine as mr
    from gpuopt.milp.highs import MilpResult, MilpStatus

    _, net, lo_x, hi_x, pre = _case(2)
    centre = (lo_x + hi_x) / 2

    def lying_solver(model, **kw):  # "min sign*z_j >= 50" with the box centre as its point
        v = np.zeros(model.n_vars)
        v[model.x_index] = centre
        return MilpResult(status=MilpStatus.TIME_LIMIT, raw_status="time limit", objective=np.inf, dual_bound=50.0,
                          solution=v, nodes=0, seconds=0.0)

    monkeypatch.setattr(mr, "solve_milp", lying_solver)
    res = milp_refine(net.affine_blocks(), pre, lo_x, hi_x)
    assert res.milps > 0 and res.stabilised == 0 and res.tightened == 0
    for (l0, u0), (l, u) in zip(pre, res.pre):
        assert np.array_equal(l0, l) and np.array_equal(u0, u)


def _wide_case():
    rng = np.random.default_rng(11)
    net = random_dense_network(rng, 3, [30, 30, 30, 30], 2)
    lo_x, hi_x = -np.ones(3), np.ones(3)
    inter = intermediate_bounds(net, torch.tensor(lo_x)[None], torch.tensor(hi_x)[None])
    pre = [(l[0].numpy(), u[0].numpy()) for l, u in inter.pre_activation]
    assert all(int(((l < 0) & (u > 0)).sum()) > 8 for l, u in pre[1:])  # more than one chunk per layer
    return net, lo_x, hi_x, pre


def _fake_solver(shrink: float):
    """A stand-in for HiGHS that times out with a dual bound narrowing ``z_j``'s side by ``shrink``
    (0: a bound that moves nothing)."""
    from gpuopt.milp.highs import MilpResult, MilpStatus

    def solve(model, **kw):
        y = int(np.flatnonzero(model.c)[0])
        sign = model.c[y]
        side = model.col_upper[y] if sign < 0 else -model.col_lower[y]  # max of -sign*z_j today
        dual = -side * (1.0 - shrink) if shrink else -np.inf
        return MilpResult(status=MilpStatus.TIME_LIMIT, raw_status="time limit", objective=np.inf, dual_bound=dual,
                          solution=None, nodes=0, seconds=0.0)
    return solve


def test_a_layer_whose_first_chunk_moves_nothing_is_cut_short(monkeypatch):
    """Nearest-to-stable first: when a chunk of MILPs narrows no bound, the rest of the layer is
    skipped, and two such layers in a row end the refinement (the last layer is not touched)."""
    import gpuopt.bounds.milp_refine as mr

    net, lo_x, hi_x, pre = _wide_case()
    monkeypatch.setattr(mr, "solve_milp", _fake_solver(0.0))
    res = milp_refine(net.affine_blocks(), pre, lo_x, hi_x, witnesses=False)  # the MILP counts of the schedule alone
    assert res.milps == 2 * 2 * mr.STALL_CHUNK and res.passes == 1  # a pass that moved nothing is the last
    assert res.stabilised == res.tightened == 0


def test_layers_that_keep_moving_are_refined_whole_pass_after_pass(monkeypatch):
    """MILPs that run out of time but narrow every bound: each pass takes every neuron, and the
    passes go on (with twice the time per MILP) up to ``MAX_PASSES``."""
    import gpuopt.bounds.milp_refine as mr

    net, lo_x, hi_x, pre = _wide_case()
    fake, limits = _fake_solver(0.5), []

    def recording(model, **kw):
        limits.append(kw["time_limit"])
        return fake(model, **kw)

    monkeypatch.setattr(mr, "solve_milp", recording)
    res = milp_refine(net.affine_blocks(), pre, lo_x, hi_x, neuron_time=0.5, witnesses=False)
    unstable = sum(int(((l < 0) & (u > 0)).sum()) for l, u in pre[1:])
    assert res.passes == mr.MAX_PASSES and res.tightened == unstable
    assert res.milps == len(limits) == 2 * unstable * mr.MAX_PASSES
    assert sorted(set(limits)) == [0.5 * 2 ** p for p in range(mr.MAX_PASSES)]
    for (l0, u0), (l, u) in zip(pre[1:], res.pre[1:]):
        on = (l0 < 0) & (u0 > 0)
        assert np.all(u[on] < u0[on]) and np.all(l[on] > l0[on])


def test_a_deadline_is_shared_across_the_layers(monkeypatch):
    """Each layer gets an even share of the time left: MILPs that would fill the whole budget on
    the first refined layer still leave time for the last one."""
    import time

    import gpuopt.bounds.milp_refine as mr

    net, lo_x, hi_x, pre = _wide_case()
    fake = _fake_solver(0.5)

    def slow(model, **kw):
        time.sleep(0.03)
        return fake(model, **kw)

    monkeypatch.setattr(mr, "solve_milp", slow)
    res = milp_refine(net.affine_blocks(), pre, lo_x, hi_x, deadline=time.monotonic() + 1.2, witnesses=False)
    narrowed = [int(((u < u0) & (l0 < 0) & (u0 > 0)).sum()) for (l0, u0), (l, u) in zip(pre, res.pre)]
    unstable = [int(((l0 < 0) & (u0 > 0)).sum()) for l0, u0 in pre]
    assert narrowed[1] < unstable[1]  # the first refined layer was cut short (2 x 30 ms per neuron)
    assert narrowed[-1] > 0 and res.seconds < 3.0


def test_a_second_pass_retries_only_the_neurons_that_ran_out_of_time(monkeypatch):
    """Neurons whose searches both ended (a point on the other side, here) are settled; one that
    ran out of time is tried again with twice the time, and proven then."""
    import gpuopt.bounds.milp_refine as mr
    from gpuopt.milp.highs import MilpResult, MilpStatus

    net, lo_x, hi_x, pre = _wide_case()
    k = 1
    hard = int(mr._order(*pre[k], None)[0])  # the first neuron of layer 1 needs 2 s
    calls = []

    assert pre[k][1][hard] <= -pre[k][0][hard]  # its inactive side is tried first

    def solver(model, **kw):
        y = int(np.flatnonzero(model.c)[0])
        calls.append(kw["time_limit"])
        if model.col_lower[y] == pre[k][0][hard]:  # the hard neuron (its lower bound never moves here)
            if model.c[y] > 0:  # the active side: out of time, nothing learnt
                return MilpResult(status=MilpStatus.TIME_LIMIT, raw_status="", objective=np.inf,
                                  dual_bound=-np.inf, solution=None, nodes=1, seconds=0.0)
            if kw["time_limit"] >= 2.0:  # proven inactive at last
                return MilpResult(status=MilpStatus.DUAL_BOUND_REACHED, raw_status="", objective=np.inf,
                                  dual_bound=1.0, solution=None, nodes=1, seconds=0.0)
            return MilpResult(status=MilpStatus.TIME_LIMIT, raw_status="", objective=np.inf,
                              dual_bound=-0.5 * model.col_upper[y], solution=None, nodes=1, seconds=0.0)
        return MilpResult(status=MilpStatus.SOLUTION_ACCEPTED, raw_status="", objective=-1.0, dual_bound=-np.inf,
                          solution=None, nodes=1, seconds=0.0)

    monkeypatch.setattr(mr, "solve_milp", solver)
    res = milp_refine(net.affine_blocks(), pre, lo_x, hi_x, neuron_time=1.0, witnesses=False)
    assert res.pre[k][1][hard] <= 0 and res.stabilised == 1
    unstable = sum(int(((l < 0) & (u > 0)).sum()) for l, u in pre[1:])
    assert res.passes == 2 and res.milps == 2 * unstable + 1  # pass 2: only the hard neuron, one side
    assert calls[-1] == 2.0


def test_auto_refines_small_dense_nets_only():
    """``milp_refine_share=None`` (the default) is 0.8 up to 1024 inputs and 2048 ReLUs in items
    of 60 s or more (or without a timeout), and off beyond either or in shorter items; an explicit
    share is kept whatever the network and the time."""
    from gpuopt.verify import AUTO_REFINE_MAX_INPUTS, AUTO_REFINE_MAX_NEURONS, AUTO_REFINE_MIN_SECONDS, AUTO_REFINE_SHARE

    auto = VerifyConfig()
    assert auto.milp_refine_share is None
    assert auto.refine_share(784, 6 * 256) == AUTO_REFINE_SHARE == 0.8
    assert auto.refine_share(AUTO_REFINE_MAX_INPUTS, AUTO_REFINE_MAX_NEURONS) == 0.8
    assert auto.refine_share(AUTO_REFINE_MAX_INPUTS + 1, 100) == 0.0  # cifar-sized input (oval21: 3072)
    assert auto.refine_share(784, AUTO_REFINE_MAX_NEURONS + 1) == 0.0
    assert auto.refine_share(784, 512, 300.0) == auto.refine_share(784, 512, AUTO_REFINE_MIN_SECONDS) == 0.8
    assert auto.refine_share(784, 512, AUTO_REFINE_MIN_SECONDS - 0.5) == 0.0
    # an item's length is deadline - t0, and (t0 + 60) - t0 rounds below 60 at some t0 (CI once
    # skipped the refinement of a 60 s item this way)
    t0 = 487.17822196781714
    assert (t0 + AUTO_REFINE_MIN_SECONDS) - t0 < AUTO_REFINE_MIN_SECONDS
    assert auto.refine_share(784, 512, (t0 + AUTO_REFINE_MIN_SECONDS) - t0) == 0.8
    for share in (0.0, 0.3):
        assert VerifyConfig(milp_refine_share=share).refine_share(784, 512) == share
        assert VerifyConfig(milp_refine_share=share).refine_share(3072, 10_000, 1.0) == share


def test_by_default_a_small_dense_net_that_splitting_leaves_open_is_refined():
    """The default config runs the probe, the refinement and splitting again on a small dense net
    (here the probe gets no time, so the refinement must run), and not with the refinement off,
    nor in an item shorter than AUTO_REFINE_MIN_SECONDS."""
    net, region, spec = small_robustness_case(0)
    problem, _ = shifted_problem(net, region, spec, 0, 1e-3)
    base = dict(use_input_split=False, use_attack=False, use_crown=False, alpha_steps=0, milp_refine_probe_share=1e-12)
    v = verify(net, problem.region, problem.spec, timeout=60, config=VerifyConfig(**base))
    names = _stage_names(v)
    assert names.index("relu_split_probe") < names.index("refine") < names.index("relu_split")
    off = verify(net, problem.region, problem.spec, timeout=60, config=VerifyConfig(milp_refine_share=0.0, **base))
    assert "refine" not in _stage_names(off) and "relu_split_probe" not in _stage_names(off)
    short = verify(net, problem.region, problem.spec, timeout=30, config=VerifyConfig(**base))
    assert "refine" not in _stage_names(short) and "relu_split_probe" not in _stage_names(short)


def test_a_refused_neuron_milp_leaves_its_bounds_and_the_refinement_goes_on(monkeypatch):
    """HiGHS may refuse a model (a coefficient of 1e15 or more): that neuron keeps its bounds, the
    other MILPs still run, and nothing is raised."""
    import gpuopt.bounds.milp_refine as mr
    from gpuopt.errors import SolverError

    _, net, lo_x, hi_x, pre = _case(0)
    real, calls = mr.solve_milp, []

    def refuse_first(*a, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise SolverError("HiGHS refused the model")
        return real(*a, **kw)

    monkeypatch.setattr(mr, "solve_milp", refuse_first)
    res = milp_refine(net.affine_blocks(), pre, lo_x, hi_x, neuron_time=5.0)
    assert len(calls) == res.milps > 1
    rng = np.random.default_rng(0)
    x = lo_x + (hi_x - lo_x) * rng.random((5000, 3))
    for (l0, u0), (l, u), z in zip(pre, res.pre, affine_view_values(net, x)[0]):
        assert np.all(l >= l0) and np.all(u <= u0) and np.all(z >= l - 1e-12) and np.all(z <= u + 1e-12)

    monkeypatch.setattr(mr, "solve_milp", lambda *a, **kw: (_ for _ in ()).throw(SolverError("HiGHS refused the model")))
    none = milp_refine(net.affine_blocks(), pre, lo_x, hi_x, neuron_time=5.0)
    assert none.milps > 0 and none.stabilised == 0
    for (l0, u0), (l, u) in zip(pre, none.pre):
        assert np.array_equal(l0, l) and np.array_equal(u0, u)


def test_a_refused_disjunct_milp_ends_the_item_unknown_not_error(monkeypatch):
    """A disjunct MILP that HiGHS refuses leaves the item ``unknown`` with the reason, not ``error``."""
    import gpuopt.milp.highs as highs
    from gpuopt.errors import SolverError

    def refuse(*a, **kw):
        raise SolverError("HiGHS refused the model")

    monkeypatch.setattr(highs, "solve_milp", refuse)
    net, region, spec = small_robustness_case(1)
    problem, _ = shifted_problem(net, region, spec, 1, 1e-3)
    config = VerifyConfig(use_attack=False, use_crown=False, alpha_steps=0, use_input_split=False,
                          use_relu_split=False, use_walk=False, use_lp=False)
    v = verify(net, problem.region, problem.spec, timeout=30, config=config)
    assert v.status is Status.UNKNOWN and "HiGHS refused the model" in v.message, (v.status, v.message)


# ---------------------------------------------------------------------------- re-bounding the layers after
def _rebound_for(net, lo_x, hi_x, pre, steps=20):
    from gpuopt.bounds.milp_refine import alpha_crown_rebound

    out = intermediate_bounds(net, torch.tensor(lo_x)[None], torch.tensor(hi_x)[None]).output
    return alpha_crown_rebound(net, lo_x, hi_x, (out[0][0].numpy(), out[1][0].numpy()), steps=steps)


@pytest.mark.parametrize("seed", range(6))
def test_refinement_with_rebound_holds_on_samples_and_is_exact_where_it_finishes(seed):
    """With alpha-CROWN re-bounding the layers after each refined one: bounds never loosen, hold on
    samples and corners, and (every MILP finishing) contain each neuron's exact range and stabilise
    exactly the one-sided neurons, as without it."""
    rng, net, lo_x, hi_x, pre = _case(seed)
    res = milp_refine(net.affine_blocks(), pre, lo_x, hi_x, neuron_time=10.0,
                      rebound=_rebound_for(net, lo_x, hi_x, pre))
    x = lo_x + (hi_x - lo_x) * rng.random((20000, 3))
    corners = np.array(np.meshgrid(*zip(lo_x, hi_x))).reshape(3, -1).T
    for (l0, u0), (l, u), z in zip(pre, res.pre, affine_view_values(net, np.vstack([x, corners]))[0]):
        assert np.all(l >= l0) and np.all(u <= u0)
        assert np.all(z >= l - 1e-12) and np.all(z <= u + 1e-12)
    for k in range(1, len(pre)):
        l0, u0 = pre[k]
        l, u = res.pre[k]
        for j in np.flatnonzero((l0 < 0) & (u0 > 0)):
            low, high = _exact_range(net, k, j, lo_x, hi_x)
            assert l[j] <= low + 1e-9 and u[j] >= high - 1e-9
            if high < -1e-4:
                assert u[j] <= 0
            elif low > 1e-4:
                assert l[j] >= 0


def test_rebound_runs_after_each_layer_but_the_last_on_the_refined_bounds(monkeypatch):
    """After each layer whose bounds the MILPs changed (not after the last layer), on the bounds
    refined so far; not after a layer they left as it was."""
    import gpuopt.bounds.milp_refine as mr

    _, net, lo_x, hi_x, pre = _case(2)
    calls = []

    def rebound(pre_now, k):
        calls.append((k, [(l.copy(), u.copy()) for l, u in pre_now]))
        return [(l.copy(), u.copy()) for l, u in pre_now]

    res = milp_refine(net.affine_blocks(), pre, lo_x, hi_x, neuron_time=10.0, rebound=rebound, witnesses=False)
    assert [k for k, _ in calls] == [1]  # layers 1 and 2 refined; nothing after layer 2
    k, seen = calls[0]
    assert np.array_equal(seen[1][0], res.pre[1][0]) and np.array_equal(seen[1][1], res.pre[1][1])
    calls.clear()
    monkeypatch.setattr(mr, "solve_milp", _fake_solver(0.0))  # MILPs that learn nothing
    milp_refine(net.affine_blocks(), pre, lo_x, hi_x, rebound=rebound, witnesses=False)
    assert calls == []


def test_a_rebound_that_stabilises_a_neuron_saves_its_milps_and_a_crossing_one_is_ignored():
    """The re-bound's tighter bounds are kept (a neuron it makes stable gets no MILP); where its
    bounds would cross the refinement's, that neuron keeps its own."""
    _, net, lo_x, hi_x, pre = _case(3)
    exact = [[_exact_range(net, 2, j, lo_x, hi_x) for j in range(pre[2][0].size)]]
    l2, u2 = pre[2]
    open2 = [int(j) for j in np.flatnonzero((l2 < 0) & (u2 > 0))]
    one_sided = [j for j in open2 if exact[0][j][0] > 1e-6 or exact[0][j][1] < -1e-6]
    assert one_sided and len(open2) >= 2, "the case must leave two neurons of layer 2 open, one of them one-sided"
    a = one_sided[0]
    b = next(j for j in open2 if j != a)

    def rebound(pre_now, k):
        out = [(l.copy(), u.copy()) for l, u in pre_now]
        l, u = out[2]
        low, high = exact[0][a]
        l[a], u[a] = low - 1e-9, high + 1e-9  # the exact range: sound
        l[b], u[b] = u2[b] + 1.0, u2[b] + 2.0  # above the upper bound: crosses
        return out

    plain = milp_refine(net.affine_blocks(), pre, lo_x, hi_x, neuron_time=10.0)
    res = milp_refine(net.affine_blocks(), pre, lo_x, hi_x, neuron_time=10.0, rebound=rebound)
    low, high = exact[0][a]
    assert res.pre[2][0][a] >= low - 1e-9 - 1e-12 and res.pre[2][1][a] <= high + 1e-9 + 1e-12
    assert res.pre[2][0][b] <= exact[0][b][0] + 1e-9 and res.pre[2][1][b] >= exact[0][b][1] - 1e-9
    assert res.milps < plain.milps  # a is one-sided: the re-bound settled it, no MILP for it
    assert not (res.pre[2][0][a] < 0 < res.pre[2][1][a])


# ---------------------------------------------------------------------------- witnesses
@pytest.mark.parametrize("seed", range(4))
def test_witnesses_are_real_and_find_most_crossing_neurons(seed):
    """A neuron witnessed below (above) 0 has an exact minimum < 0 (maximum > 0); of the neurons
    whose exact range crosses 0 by 1e-3, the search finds both sides for most."""
    from gpuopt.bounds.milp_refine import _witnesses

    _, net, lo_x, hi_x, pre = _case(seed)
    ops = net.linear_ops("cpu", torch.float64)
    crossing = found = 0
    for k in range(1, len(pre)):
        l, u = pre[k]
        idx = np.flatnonzero((l < 0) & (u > 0))
        below, above = _witnesses(ops, k, idx, lo_x, hi_x, left=lambda: 1.0)
        for j, b, a in zip(idx, below, above):
            low, high = _exact_range(net, k, j, lo_x, hi_x)
            assert not b or low < 0, (k, j, low)
            assert not a or high > 0, (k, j, high)
            if low < -1e-3 and high > 1e-3:
                crossing += 1
                found += bool(b and a)
    assert found >= 0.8 * crossing, (found, crossing)


def test_witnesses_save_milps_and_change_no_stabilisation():
    saved = 0
    for seed in range(4):
        _, net, lo_x, hi_x, pre = _case(seed)
        with_w = milp_refine(net.affine_blocks(), pre, lo_x, hi_x, neuron_time=10.0)
        without = milp_refine(net.affine_blocks(), pre, lo_x, hi_x, neuron_time=10.0, witnesses=False)
        for (l1, u1), (l2, u2) in zip(with_w.pre, without.pre):
            assert np.array_equal((l1 >= 0) | (u1 <= 0), (l2 >= 0) | (u2 <= 0))
        saved += without.milps - with_w.milps
        assert with_w.milps <= without.milps
    assert saved > 0


def test_witness_search_stops_when_no_time_is_left():
    from gpuopt.bounds.milp_refine import _witnesses

    _, net, lo_x, hi_x, pre = _case(0)
    l, u = pre[1]
    idx = np.flatnonzero((l < 0) & (u > 0))
    below, above = _witnesses(net.linear_ops("cpu", torch.float64), 1, idx, lo_x, hi_x, left=lambda: 0.0)
    assert idx.size and not below.any() and not above.any()
