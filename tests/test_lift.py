"""Lifting a narrow layer's bounds past their signs (:func:`gpuopt.bounds.milp_refine._lift_layer`,
``milp_refine(..., lift_share=)``) and the witness search it starts from (:func:`_extremes`).
Checked here:

* the witnessed extremes are values the layer takes (inside its exact range, by brute force) and
  near its ends;
* lifted bounds never loosen, contain the exact range of every neuron (dense nets, brute force) and
  every sampled pre-activation (graph nets, pass-through coordinates untouched), and move beyond
  the sign-only refinement somewhere;
* ``milp_refine`` lifts a narrow layer once, only with a finite deadline (an infinite one, what a
  run without a timeout passes, lifts nothing and returns), and its result stays sound; a neuron
  constant on the box closes its sides (the slack's floor) and the search ends early;
* through ``verify`` (the refinement forced on) the verdicts equal brute force on both sides of the
  boundary, and an ``unsat`` on lifted bounds says so;
* a bad ``lift_share`` is refused.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from gpuopt import Status, VerifyConfig, verify
from gpuopt.bounds import ibp, intermediate_bounds, milp_refine as milp_refine_module
from gpuopt.bounds.base import Bounds
from gpuopt.bounds.milp_refine import _extremes, _lift_layer, milp_refine
from gpuopt.errors import InvalidInputError
from gpuopt.network import BlockChain

from helpers import box_points, random_dense_network, shifted_problem, small_robustness_case
from test_milp_refine import _case
from test_milp_refine_exact import _exact_layer
from test_milp_refine_graph import _assert_sound_on_points, _check_matching, _dag_case, _pre


def _lift(net, pre, lo, hi, k, seconds=5.0):
    """Layer ``k`` of ``pre`` lifted (copies), with the witnessed ``(zmin, zmax)``."""
    blocks = net.affine_blocks()
    l, u = (a.copy() for a in pre[k])
    live = np.flatnonzero(u > 0)
    ops = net.linear_ops("cpu", torch.float64)
    zmin, zmax = np.full(l.size, np.inf), np.full(l.size, -np.inf)
    zmin[live], zmax[live] = _extremes(ops, k, live, lo, hi, left=lambda: 1.0, seed=k, starts=8)
    prior = Bounds(tuple((torch.tensor(a[None]), torch.tensor(b[None])) for a, b in pre[:k]),
                   (torch.tensor(l[None]), torch.tensor(u[None])), "prior")
    _lift_layer(BlockChain(blocks[:k + 1]), live, prior, torch.tensor(lo), torch.tensor(hi), l, u, zmin, zmax,
                deadline=time.monotonic() + seconds)
    return l, u, zmin, zmax


@pytest.mark.parametrize("seed", range(4))
def test_extremes_are_values_the_layer_takes_near_its_ends(seed):
    """Every witnessed minimum and maximum lies inside the neuron's exact range (brute force), and
    most lie within 5% of the range of its end."""
    _, net, lo, hi, pre = _case(seed)
    ops = net.linear_ops("cpu", torch.float64)
    near = total = 0
    for k in range(1, len(pre)):
        emin, emax = _exact_layer(net, k, lo, hi)
        idx = np.arange(emin.size)
        zmin, zmax = _extremes(ops, k, idx, lo, hi, left=lambda: 1.0, seed=seed, starts=8)
        width = np.maximum(emax - emin, 1e-12)
        assert np.all(zmin >= emin - 1e-9) and np.all(zmax <= emax + 1e-9), k
        assert np.all(zmin <= zmax)
        near += int(np.sum(zmin - emin <= 0.05 * width) + np.sum(emax - zmax <= 0.05 * width))
        total += 2 * idx.size
    assert near >= 0.8 * total, (near, total)


def test_extremes_without_time_evaluate_nothing():
    _, net, lo, hi, _ = _case(0)
    zmin, zmax = _extremes(net.linear_ops("cpu", torch.float64), 1, np.arange(4), lo, hi, left=lambda: 0.0)
    assert np.all(zmin == np.inf) and np.all(zmax == -np.inf)


@pytest.mark.parametrize("seed", range(6))
def test_lifted_bounds_contain_the_exact_range_and_never_loosen(seed):
    """Each hidden layer ``k >= 1`` lifted from CROWN's bounds: inside the old bounds, around the
    exact range of every neuron (brute force), and no bound passes its witness."""
    _, net, lo, hi, pre = _case(seed)
    for k in range(1, len(pre)):
        l0, u0 = pre[k]
        l, u, zmin, zmax = _lift(net, pre, lo, hi, k)
        emin, emax = _exact_layer(net, k, lo, hi)
        assert np.all(l >= l0) and np.all(u <= u0), k
        assert np.all(l <= emin + 1e-9) and np.all(u >= emax - 1e-9), (k, l - emin, emax - u)
        live = u0 > 0
        assert np.all(l[live] <= zmin[live]) and np.all(u[live] >= zmax[live])


def test_lifting_moves_bounds_past_their_signs():
    """The tests above bind: over their nets at least five bounds move to within 10% of the exact
    range's end: a lower bound raised to above 0, or an upper bound (of a neuron that can be
    positive) lowered."""
    lifted = 0
    for seed in range(6):
        _, net, lo, hi, pre = _case(seed)
        for k in range(1, len(pre)):
            l0, u0 = pre[k]
            l, u, _, _ = _lift(net, pre, lo, hi, k)
            emin, emax = _exact_layer(net, k, lo, hi)
            width = emax - emin
            up = (l > 1e-9) & (l > l0) & (emin - l <= 0.1 * width)
            down = (u < u0) & (emax > 0) & (u - emax <= 0.1 * width)
            lifted += int(up.sum() + down.sum())
    assert lifted >= 5, lifted


def test_lifting_ends_early_once_every_side_is_closed():
    """On a small net every side closes (its leaves' LPs are exact): the search returns long before
    its deadline."""
    _, net, lo, hi, pre = _case(1)
    t = time.monotonic()
    _lift(net, pre, lo, hi, 1, seconds=60.0)
    assert time.monotonic() - t < 30.0


@pytest.mark.parametrize("lift_share", [0.0, 0.25])
def test_milp_refine_with_lifting_stays_sound_and_lifts_only_with_a_deadline(lift_share):
    """``milp_refine`` by splitting with a deadline: sound around the exact ranges; with
    ``lift_share > 0`` some layer ends tighter than without (the nets' layers are all narrow), and
    without a deadline the lifting is off (the result equals ``lift_share=0``'s)."""
    tighter = 0
    for seed in range(3):
        _, net, lo, hi, pre = _case(seed)
        res = milp_refine(net.affine_blocks(), pre, lo, hi, method="split", neuron_time=2.0,
                          deadline=time.monotonic() + 20.0, lift_share=lift_share)
        base = milp_refine(net.affine_blocks(), pre, lo, hi, method="split", neuron_time=2.0,
                           deadline=time.monotonic() + 20.0, lift_share=0.0)
        for k in range(1, len(pre)):
            emin, emax = _exact_layer(net, k, lo, hi)
            l, u = res.pre[k]
            assert np.all(l <= emin + 1e-9) and np.all(u >= emax - 1e-9), (seed, k)
            tighter += int(np.sum(l > base.pre[k][0] + 1e-9) + np.sum(u < base.pre[k][1] - 1e-9))
        free = milp_refine(net.affine_blocks(), pre, lo, hi, method="split", neuron_time=2.0, lift_share=lift_share)
        for (l, u), (lb, ub) in zip(free.pre, milp_refine(net.affine_blocks(), pre, lo, hi, method="split",
                                                         neuron_time=2.0, lift_share=0.0).pre):
            np.testing.assert_array_equal(l, lb)
            np.testing.assert_array_equal(u, ub)
    assert (tighter > 0) == (lift_share > 0), tighter


def test_lifting_on_graph_nets_is_sound_and_leaves_pass_through_coordinates_alone():
    """Random DAGs (skip connections: pass-through coordinates): every block pre-activation at
    2000 points and the box's vertices inside the lifted bounds of every layer, pass-through
    coordinates unchanged."""
    nets = 0
    for seed in range(60):
        rng, net, lo, hi = _dag_case(seed)
        blocks = net.affine_blocks()
        if len(blocks) < 3:
            continue
        pre = _pre(net, lo, hi, ibp if seed % 2 else intermediate_bounds)
        res = milp_refine(blocks, pre, lo, hi, method="split", neuron_time=1.0, deadline=time.monotonic() + 5.0,
                          lift_share=0.5)
        x = box_points(rng, lo, hi, 2000, n_random_vertices=100)
        _assert_sound_on_points(net, pre, res, x, _check_matching(net, x))
        nets += 1
        if nets == 8:
            break
    assert nets == 8


@pytest.mark.parametrize("share", [-0.1, 1.0, 2.0, float("nan"), True, "0.2"])
def test_bad_lift_share_is_refused(share):
    _, net, lo, hi, pre = _case(0)
    with pytest.raises(InvalidInputError, match="lift_share"):
        milp_refine(net.affine_blocks(), pre, lo, hi, method="split", lift_share=share)


def _constant_neuron_net(pairs: int = 8):
    """A 6-input net whose second hidden layer's first neuron is 1 on the whole box (pairs of equal
    ReLUs that cancel), a case the review found: its witnessed spread is 0."""
    from gpuopt.layers import Dense, ReLU
    from gpuopt.network import Network

    rng = np.random.default_rng(0)
    A, c = rng.normal(size=(pairs, 6)), 0.1 * rng.normal(size=pairs)
    W0, b0 = np.repeat(A, 2, axis=0), np.repeat(c, 2)
    sign = rng.choice([-1.0, 1.0], size=pairs)
    W1 = np.zeros((2, 2 * pairs))
    W1[0, 0::2], W1[0, 1::2] = sign, -sign
    W1[1] = rng.normal(size=2 * pairs) / np.sqrt(2 * pairs)
    net = Network([Dense(W0, b0), ReLU(), Dense(W1, np.array([1.0, 0.2])), ReLU(),
                   Dense(rng.normal(size=(2, 2)), np.zeros(2))], (6,))
    lo, hi = -np.ones(6), np.ones(6)
    inter = intermediate_bounds(net, torch.tensor(lo)[None], torch.tensor(hi)[None])
    return net, lo, hi, [(l[0].numpy().copy(), u[0].numpy().copy()) for l, u in inter.pre_activation]


def test_an_infinite_deadline_lifts_nothing_and_returns():
    """What a run without a timeout passes: no lifting (a side that cannot close would search for
    ever); the result equals ``lift_share=0``'s."""
    net, lo, hi, pre = _constant_neuron_net()
    t = time.monotonic()
    res = milp_refine(net.affine_blocks(), pre, lo, hi, method="split", deadline=float("inf"), lift_share=0.5)
    base = milp_refine(net.affine_blocks(), pre, lo, hi, method="split", deadline=float("inf"), lift_share=0.0)
    assert time.monotonic() - t < 120.0
    assert res.lifted == 0
    for (l, u), (lb, ub) in zip(res.pre, base.pre):
        np.testing.assert_array_equal(l, lb)
        np.testing.assert_array_equal(u, ub)


def test_a_constant_neuron_closes_and_the_lifting_ends_early():
    """The neuron equal to 1 on the box (three pairs): the slack's floor lets both sides close, well
    before the deadline (without it neither side could), with bounds around 1 (within the floor's
    1e-5)."""
    net, lo, hi, pre = _constant_neuron_net(3)
    t = time.monotonic()
    l, u, zmin, zmax = _lift(net, pre, lo, hi, 1, seconds=60.0)
    assert time.monotonic() - t < 30.0
    assert zmin[0] == pytest.approx(1.0, abs=1e-12) and zmax[0] == pytest.approx(1.0, abs=1e-12)
    assert 1.0 - 2e-5 <= l[0] <= 1.0 <= u[0] <= 1.0 + 2e-5, (l[0], u[0])


def _forced_refinement(method: str) -> VerifyConfig:
    """The refinement forced on small nets: no input splitting, no attack, no first splitting."""
    return VerifyConfig(device="cpu", use_input_split=False, use_attack=False, milp_refine_share=0.6,
                        milp_refine_probe_share=0.0, refine_method=method)


@pytest.mark.parametrize("seed", range(4))
def test_verify_with_lifting_decides_like_brute_force(seed, monkeypatch):
    """The refinement forced on (every layer of these nets is narrow, so each is lifted): margins
    shifted to +-1e-4 by brute force give ``unsat`` and ``sat``, and never a wrong ``unsat`` at
    -1e-7; the lifting ran (a spy counts the bounds it moved)."""
    moved = []
    real = milp_refine_module._lift_layer

    def spy(chain, live, prior, lo, hi, l, u, *args, **kw):
        l0, u0 = l.copy(), u.copy()
        out = real(chain, live, prior, lo, hi, l, u, *args, **kw)
        moved.append(int(np.sum(l != l0) + np.sum(u != u0)))
        return out

    monkeypatch.setattr(milp_refine_module, "_lift_layer", spy)
    net, region, spec = small_robustness_case(seed)
    config = _forced_refinement("split" if seed % 2 == 0 else "milp")
    for delta, want in ((1e-4, {Status.UNSAT}), (-1e-4, {Status.SAT}), (-1e-7, {Status.SAT, Status.UNKNOWN,
                                                                               Status.TIMEOUT})):
        problem, _ = shifted_problem(net, region, spec, seed, delta)
        v = verify(net, problem.region, problem.spec, timeout=15, config=config)
        assert v.status in want, (seed, delta, v.status, v.message)
    assert moved and sum(moved) > 0, moved


def test_an_unsat_on_lifted_bounds_says_so():
    """Over a few seeds, an ``unsat`` reached after the refinement lifted some bound names the
    lifting in its message."""
    named = 0
    for seed in range(6):
        rng = np.random.default_rng(100 + seed)
        net = random_dense_network(rng, 3, [8, 4, 6], 3)
        from gpuopt import LinfBall, robustness

        centre = rng.normal(size=3)
        label = int(np.argmax(net.forward64(centre[None])[0]))
        problem, _ = shifted_problem(net, LinfBall(centre, 0.5), robustness(label, 3), seed, 1e-3)
        v = verify(net, problem.region, problem.spec, timeout=15, config=_forced_refinement("split"))
        assert v.status is Status.UNSAT, (seed, v.message)
        named += "lifted by activation splitting" in v.message
    assert named > 0


def _lift_checked(net, pre, lo, hi, k, check, seconds=5.0):
    """:func:`_lift` with a ``check``; returns ``(l, u)``."""
    blocks = net.affine_blocks()
    l, u = (a.copy() for a in pre[k])
    live = np.flatnonzero(u > 0)
    zmin, zmax = np.full(l.size, np.inf), np.full(l.size, -np.inf)
    zmin[live], zmax[live] = _extremes(net.linear_ops("cpu", torch.float64), k, live, lo, hi, left=lambda: 1.0,
                                       seed=k, starts=8)
    prior = Bounds(tuple((torch.tensor(a[None]), torch.tensor(b[None])) for a, b in pre[:k]),
                   (torch.tensor(l[None]), torch.tensor(u[None])), "prior")
    _lift_layer(BlockChain(blocks[:k + 1]), live, prior, torch.tensor(lo), torch.tensor(hi), l, u, zmin, zmax,
                deadline=time.monotonic() + seconds, check=check)
    return l, u


def test_a_check_that_says_yes_ends_the_lifting_on_the_bounds_it_was_given(monkeypatch):
    """``check`` is asked only with bounds that moved (and contain the exact range); the first yes
    ends the search, whose bounds are then exactly the ones checked; a check that always says no
    changes nothing about soundness, and is asked at doubling times (a few times in 3 s)."""
    monkeypatch.setattr(milp_refine_module, "LIFT_CHECK_FIRST", 0.05)
    ended = 0
    for seed in range(6):
        _, net, lo, hi, pre = _case(seed)
        for k in range(1, len(pre)):
            emin, emax = _exact_layer(net, k, lo, hi)
            asked = []

            def yes(l_new, u_new, asked=asked):
                assert np.any(l_new != pre[k][0]) or np.any(u_new != pre[k][1])
                assert np.all(l_new <= emin + 1e-9) and np.all(u_new >= emax - 1e-9)
                asked.append((l_new.copy(), u_new.copy()))
                return True

            t = time.monotonic()
            l, u = _lift_checked(net, pre, lo, hi, k, yes, seconds=20.0)
            if asked:
                ended += 1
                assert len(asked) == 1 and time.monotonic() - t < 10.0
                np.testing.assert_array_equal(l, asked[0][0])
                np.testing.assert_array_equal(u, asked[0][1])
            no = []
            l, u = _lift_checked(net, pre, lo, hi, k, lambda a, b: no.append(time.monotonic()) or False, seconds=3.0)
            assert np.all(l <= emin + 1e-9) and np.all(u >= emax - 1e-9), (seed, k)
            assert len(no) <= 8, len(no)  # 0.05, 0.1, 0.2, ... 1.6 s, and then 3.2 s is past the deadline
    assert ended >= 3, ended


def _inside_lifts(monkeypatch) -> list:
    """A one-element list whose item is True while a lift (``_lift_layer``, spied on) runs."""
    real, inside = milp_refine_module._lift_layer, [False]

    def spy(*args, **kw):
        inside[0] = True
        try:
            return real(*args, **kw)
        finally:
            inside[0] = False

    monkeypatch.setattr(milp_refine_module, "_lift_layer", spy)
    return inside


def test_a_lift_whose_bounds_suffice_ends_the_refinement(monkeypatch):
    """``enough`` saying yes to the bounds a lift has reached (a spy says yes only inside the lifting)
    ends the refinement at once (``ended_early``), long before the lifting's share, and the bounds
    it leaves (the lifted layer's and the later layers' re-bound on them) still contain every
    neuron's exact range (brute force) and lie inside the bounds it started from."""
    monkeypatch.setattr(milp_refine_module, "LIFT_CHECK_FIRST", 0.05)
    inside = _inside_lifts(monkeypatch)
    ended = 0
    for seed in range(3):
        _, net, lo, hi, pre = _case(seed)
        loose = np.full(net.output_size, 1e6)  # (sound output bounds)
        rebound = milp_refine_module.alpha_crown_rebound(net, lo, hi, (-loose, loose), steps=5)
        t = time.monotonic()
        res = milp_refine(net.affine_blocks(), pre, lo, hi, method="split", neuron_time=2.0,
                          deadline=time.monotonic() + 60.0, lift_share=0.9, rebound=rebound,
                          enough=lambda pre_: inside[0])
        for k in range(1, len(pre)):
            emin, emax = _exact_layer(net, k, lo, hi)
            l, u = res.pre[k]
            assert np.all(l >= pre[k][0]) and np.all(u <= pre[k][1]), (seed, k)
            assert np.all(l <= emin + 1e-9) and np.all(u >= emax - 1e-9), (seed, k)
        if res.ended_early:
            ended += 1
            assert res.lifted > 0 and time.monotonic() - t < 30.0, (seed, res)
    assert ended >= 2, ended


def test_an_error_in_a_lifts_check_is_raised_as_outside_a_lift(monkeypatch):
    """``enough`` raising a gpuopt error inside a lift's check (the review found it swallowed there,
    the lift's bounds dropped) is raised by ``milp_refine``, as it is when asked after a layer."""
    monkeypatch.setattr(milp_refine_module, "LIFT_CHECK_FIRST", 0.0)
    inside, raised = _inside_lifts(monkeypatch), 0

    def enough(pre_):
        if inside[0]:
            raise InvalidInputError("enough: a bad row")
        return False

    for seed in range(3):
        _, net, lo, hi, pre = _case(seed)
        try:
            milp_refine(net.affine_blocks(), pre, lo, hi, method="split", neuron_time=2.0,
                        deadline=time.monotonic() + 30.0, lift_share=0.9, enough=enough)
        except InvalidInputError as e:
            assert "a bad row" in str(e)
            raised += 1
    assert raised >= 2, raised
