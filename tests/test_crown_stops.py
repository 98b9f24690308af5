"""CROWN's substitution stopped and concretised at the hidden layers' boxes (DeepPoly's stops:
``_backward(..., boxes=...)``, used by activation splitting): never above the truth, whatever the
rounding; never below the full substitution; strictly better where a layer's bounds are tight
(LP-tightened); and activation splitting with and without the stops decides like brute force."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from gpuopt import relu_split as relu_split_module
from gpuopt.bounds import crown
from gpuopt.bounds.base import center_radius
from gpuopt.bounds.crown import _backward, _magnitudes, _relaxation, _stop_bound, _term_count, activation_boxes
from gpuopt.bounds.lp import lp_tighten
from gpuopt.problem import Problem
from gpuopt.regions import Box
from gpuopt.relu_split import ReluSplitConfig, relu_split
from gpuopt.specs import OutputSpec

from helpers import brute_force_min_margin, numpy_forward, numpy_margin, random_dense_network, shifted_spec


@pytest.mark.parametrize("seed", range(20))
def test_stop_bound_pad_covers_its_rounding_in_float32(seed):
    """The concretisation alone, in float32 with cancelling magnitudes up to 1e4: the padded value
    is never above the exact minimum of ``A h + const`` over the box (computed in float64 from the
    same float32 numbers, where these sums are exact enough)."""
    rng = np.random.default_rng(seed)
    B, m, n = 3, 4, 50
    scale = 10.0 ** rng.uniform(-3, 4, size=(B, m, n))
    A = torch.tensor(rng.normal(size=(B, m, n)) * scale, dtype=torch.float32)
    const = torch.tensor(rng.normal(size=(B, m)) * 1e4, dtype=torch.float32)
    lo = torch.tensor(rng.uniform(-5, 0, size=(B, n)), dtype=torch.float32)
    hi = lo + torch.tensor(rng.uniform(0, 5, size=(B, n)), dtype=torch.float32)
    hmax = torch.maximum(lo.abs(), hi.abs())
    zeros = torch.zeros((B, m), dtype=torch.float32)
    got = _stop_bound(A, const, lo, hi, hmax, const.abs(), zeros, zeros, n + 8, 0.0, True)
    A64, lo64, hi64 = A.double(), lo.double(), hi.double()
    exact = (A64.clamp(min=0) @ lo64[:, :, None] + A64.clamp(max=0) @ hi64[:, :, None]).squeeze(-1) + const.double()
    assert torch.all(got.double() <= exact), float((got.double() - exact).max())
    # and the pad is a pad, not the whole value: within 1e-3 relative of the truth
    assert torch.all(exact - got.double() <= 1e-3 * (A64.abs() @ hmax.double()[:, :, None]).squeeze(-1) + 1.0)


def test_stop_bound_with_an_infinite_end_is_no_bound():
    A = torch.tensor([[[1.0, -2.0]]], dtype=torch.float64)
    lo = torch.tensor([[-float("inf"), 0.0]], dtype=torch.float64)
    hi = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    got = _stop_bound(A, torch.zeros((1, 1), dtype=torch.float64), lo, hi, None, None, None, None, 10, 0.0, False)
    assert got.item() == -float("inf")
    A = torch.tensor([[[0.0, -2.0]]], dtype=torch.float64)  # the infinite end meets a zero coefficient
    got = _stop_bound(A, torch.zeros((1, 1), dtype=torch.float64), lo, hi, None, None, None, None, 10, 0.0, False)
    assert got.item() == -2.0


def _tight_case(seed: int, widths, n_in_range=(2, 5), radius: float = 0.7, n_out: int = 3):
    """A random dense net, a box, and its intermediate bounds twice: CROWN's (``(1, n_j)``
    tensors) and LP-tightened ones (numpy ``(n_j,)``)."""
    rng = np.random.default_rng(seed)
    n_in = int(rng.integers(*n_in_range))
    net = random_dense_network(rng, n_in, [int(rng.integers(*w)) for w in widths], n_out)
    centre = rng.normal(size=n_in)
    lo, hi = centre - radius, centre + radius
    b = crown(net, torch.as_tensor(lo)[None], torch.as_tensor(hi)[None])
    tight = lp_tighten(net.affine_blocks(), [(l[0].numpy(), u[0].numpy()) for l, u in b.pre_activation], lo, hi).pre
    return rng, net, lo, hi, b, tight


def _rows_bound(net, lo, hi, C, pre, stops: bool):
    """CROWN's lower bounds of the rows ``C f(x)`` over the box with intermediate bounds ``pre``
    (a list of ``(l, u)``, each ``(1, n_j)``), with or without the stops."""
    lo_t, hi_t = torch.as_tensor(lo)[None], torch.as_tensor(hi)[None]
    ops = net.linear_ops("cpu", torch.float64)
    x_mid, x_rad = center_radius(lo_t, hi_t)
    relax = [_relaxation(l, u, op.passthrough) for (l, u), op in zip(pre, ops)]
    hmax = _magnitudes(x_mid, x_rad, pre, ops)
    boxes = activation_boxes([l for l, _ in pre], [u for _, u in pre], ops) if stops else None
    rows, _ = _backward(torch.as_tensor(C)[None], len(ops) - 1, ops, relax, x_mid, x_rad, _term_count(net, lo_t), hmax,
                        boxes=boxes)
    return rows[0].numpy()


def test_stops_are_sound_never_worse_and_pay_on_tight_intermediate_bounds():
    """On random 2- and 3-hidden-layer nets, with CROWN's intermediate bounds and with LP-tightened
    ones: every stopped bound lies below every sampled value and is at least the full
    substitution's; with the tightened bounds some rows gain by more than 1e-6."""
    gains = 0
    for seed in range(12):
        rng, net, lo, hi, b, tight = _tight_case(300 + seed, [(4, 9)] * (2 + seed % 2))
        n_in = lo.size
        C = rng.normal(size=(4, 3))
        pre_crown = [(l, u) for l, u in b.pre_activation]
        pre_lp = [(torch.as_tensor(l)[None], torch.as_tensor(u)[None]) for l, u in tight]
        x = rng.uniform(lo, hi, size=(4000, n_in))
        corners = lo + (hi - lo) * rng.integers(0, 2, size=(200, n_in))
        y, _ = numpy_forward(net, np.vstack([x, corners]))
        sampled = (y @ C.T).min(axis=0)
        for pre in (pre_crown, pre_lp):
            plain = _rows_bound(net, lo, hi, C, pre, stops=False)
            stopped = _rows_bound(net, lo, hi, C, pre, stops=True)
            assert np.all(stopped >= plain), (seed, stopped, plain)
            assert np.all(stopped <= sampled + 1e-9), (seed, stopped, sampled)
            if pre is pre_lp:
                gains += int(np.sum(stopped > plain + 1e-6))
    assert gains > 0


@pytest.mark.parametrize("stops", [True, False])
def test_activation_splitting_with_and_without_stops_decides_like_brute_force(stops, monkeypatch):
    """From LP-tightened intermediate bounds (where the stops pay), at margins of +-1e-3 and
    +-0.02 around each disjunct's exact minimum, every child's later layers re-bounded (``refine``,
    which stops there too): closed only when unreachable, with proven bounds
    no higher than the truth; a counterexample only when reachable, confirmed independently."""
    monkeypatch.setattr(relu_split_module, "STOP_BOXES", stops)
    decided = total = 0
    for seed in range(8):
        rng, net, lo, hi, b, tight = _tight_case(900 + seed, [(4, 8)] * 3, n_in_range=(2, 4), radius=0.6, n_out=2)
        spec = OutputSpec([(rng.normal(size=(1, 2)), np.zeros(1)), (rng.normal(size=(2, 2)), np.zeros(2))], 2)
        minima = brute_force_min_margin(net, lo, hi, spec).per_disjunct
        bounds = type(b)(tuple((torch.as_tensor(l)[None], torch.as_tensor(u)[None]) for l, u in tight), b.output, "lp")
        for delta in (0.02, 1e-3, -1e-3, -0.02):
            s = shifted_spec(spec, minima, delta)
            res = relu_split(net, torch.as_tensor(lo), torch.as_tensor(hi), [(A, c, None) for A, c in s.disjuncts],
                             bounds, problem=Problem(net, Box(lo, hi), s), deadline=time.monotonic() + 10,
                             config=ReluSplitConfig(batch_size=4, refine=True))
            total += 1
            for k, closed in enumerate(res.closed):
                if closed:
                    assert delta > 0 and 0 < res.proven_bound[k] <= delta + 1e-9, (seed, delta, k, res.proven_bound)
            if res.status == "unsat":
                assert delta > 0
                decided += 1
            elif res.status == "sat":
                assert delta < 0
                y, _ = numpy_forward(net, res.x[None])
                assert numpy_margin(s, y)[0] <= 0
                decided += 1
    assert decided >= 0.75 * total, (decided, total)


def test_tighten_layer_with_stops_contains_every_sample_and_is_never_looser():
    """A hidden layer's CROWN bounds (:func:`gpuopt.bounds.crown.tighten_layer`, as activation
    splitting re-bounds a domain's later layers) with the earlier layers' LP-tightened boxes as
    stops: inside the bounds without them, around every sampled pre-activation, tighter somewhere."""
    from gpuopt.bounds.crown import tighten_layer

    from helpers import affine_view_values

    gained = 0
    for seed in range(10):
        rng, net, lo, hi, _, tight = _tight_case(500 + seed, [(4, 9)] * 3, n_out=2)
        n_in = lo.size
        pre = [(torch.as_tensor(l)[None], torch.as_tensor(u)[None]) for l, u in tight]
        lo_t, hi_t = torch.as_tensor(lo)[None], torch.as_tensor(hi)[None]
        ops = net.linear_ops("cpu", torch.float64)
        x_mid, x_rad = center_radius(lo_t, hi_t)
        k = len(pre) - 1
        relax = [_relaxation(l, u, op.passthrough) for (l, u), op in zip(pre[:k], ops)]
        hmax = _magnitudes(x_mid, x_rad, pre[:k], ops)
        wide_l, wide_u = pre[k][0] - 5.0, pre[k][1] + 5.0  # room to see either result
        rows = torch.arange(ops[k].shape[0])
        n_terms = _term_count(net, lo_t)
        l0, u0, _, _ = tighten_layer(k, ops, relax, x_mid, x_rad, n_terms, hmax, wide_l, wide_u, rows=rows)
        boxes = activation_boxes([l for l, _ in pre[:k]], [u for _, u in pre[:k]], ops)
        l1, u1, _, _ = tighten_layer(k, ops, relax, x_mid, x_rad, n_terms, hmax, wide_l, wide_u, rows=rows, boxes=boxes)
        assert torch.all(l1 >= l0) and torch.all(u1 <= u0)
        x = np.vstack([rng.uniform(lo, hi, size=(3000, n_in)), lo + (hi - lo) * rng.integers(0, 2, size=(100, n_in))])
        z = affine_view_values(net, x)[0][k]
        assert np.all(z >= l1[0].numpy() - 1e-9) and np.all(z <= u1[0].numpy() + 1e-9), seed
        gained += int((l1 > l0 + 1e-6).sum() + (u1 < u0 - 1e-6).sum())
    assert gained > 0


def test_plain_is_the_substitution_without_the_stops():
    """``_backward(..., plain=...)`` hands back the bound the stops are then maxed into: exactly
    the stop-free substitution's, below the stopped one and, on tightened bounds, strictly below it
    somewhere (so a caller judging by it sees what the multipliers reach)."""
    below = 0
    for seed in range(8):
        rng, net, lo, hi, _, tight = _tight_case(700 + seed, [(4, 9)] * 3)
        pre = [(torch.as_tensor(l)[None], torch.as_tensor(u)[None]) for l, u in tight]
        C = torch.as_tensor(rng.normal(size=(1, 4, 3)))
        lo_t, hi_t = torch.as_tensor(lo)[None], torch.as_tensor(hi)[None]
        ops = net.linear_ops("cpu", torch.float64)
        x_mid, x_rad = center_radius(lo_t, hi_t)
        relax = [_relaxation(l, u, op.passthrough) for (l, u), op in zip(pre, ops)]
        hmax = _magnitudes(x_mid, x_rad, pre, ops)
        boxes = activation_boxes([l for l, _ in pre], [u for _, u in pre], ops)
        n_terms = _term_count(net, lo_t)
        for pad in (True, False):
            plain = []
            stopped, _ = _backward(C, len(ops) - 1, ops, relax, x_mid, x_rad, n_terms, hmax, boxes=boxes, pad=pad,
                                   plain=plain)
            alone, _ = _backward(C, len(ops) - 1, ops, relax, x_mid, x_rad, n_terms, hmax, pad=pad)
            assert torch.equal(plain[0], alone)
            assert torch.all(stopped >= alone)
            below += int((alone < stopped - 1e-6).sum())
    assert below > 0


@pytest.mark.parametrize("stops", [True, False])
def test_bound_returns_the_stop_free_bound_beside_its_own(stops, monkeypatch):
    """:func:`gpuopt.relu_split._bound`'s last value: the domains' bound without the stops, equal
    to the whole bound when they are off and never above it when on; with the same multipliers
    and no steps, it is exactly the bound the stops-off evaluation gives."""
    from gpuopt.relu_split import _bound

    rng, net, lo, hi, _, tight = _tight_case(811, [(4, 9)] * 3)
    ops = net.linear_ops("cpu", torch.float64)
    D = 3
    pre_l = [torch.as_tensor(l)[None].expand(D, -1).clone() for l, _ in tight]
    pre_u = [torch.as_tensor(u)[None].expand(D, -1).clone() for _, u in tight]
    sign = [torch.zeros_like(l, dtype=torch.int8) for l in pre_l]
    alpha = [torch.full((D, 2, l.shape[1]), 0.5, dtype=torch.float64) for l in pre_l]
    beta = [torch.zeros((D, 2, l.shape[1]), dtype=torch.float64) for l in pre_l]
    C = torch.as_tensor(rng.normal(size=(D, 2, 3)))
    d = torch.zeros((D, 2), dtype=torch.float64)
    strict = torch.zeros((D, 2), dtype=torch.bool)
    lo_t, hi_t = torch.as_tensor(lo)[None], torch.as_tensor(hi)[None]
    x_mid, x_rad = center_radius(lo_t, hi_t)
    args = (ops, pre_l, pre_u, sign, alpha, beta, C, d, strict, x_mid.expand(D, -1), x_rad.expand(D, -1),
            _term_count(net, lo_t), 0, ReluSplitConfig(), None)
    monkeypatch.setattr(relu_split_module, "STOP_BOXES", False)
    off = _bound(*args)
    monkeypatch.setattr(relu_split_module, "STOP_BOXES", stops)
    on = _bound(*args)
    assert torch.equal(off[-1], off[0])
    assert torch.equal(on[-1], off[0])
    assert torch.all(on[0] >= on[-1])
    if stops:
        assert bool((on[0] > on[-1] + 1e-6).any())


def _narrow_case(seed: int, narrow: int):
    """A random dense net whose middle hidden layer has ``narrow`` neurons, a box of radius 0.8,
    and 4,200 sampled points' outputs and pre-activations (:func:`helpers.numpy_forward`)."""
    rng = np.random.default_rng(seed)
    n_in = int(rng.integers(2, 5))
    net = random_dense_network(rng, n_in, [int(rng.integers(6, 12)), narrow, int(rng.integers(6, 12))], 3)
    centre = rng.normal(size=n_in)
    lo, hi = centre - 0.8, centre + 0.8
    x = np.vstack([rng.uniform(lo, hi, size=(4000, n_in)), lo + (hi - lo) * rng.integers(0, 2, size=(200, n_in))])
    y, zs = numpy_forward(net, x)
    return rng, net, torch.as_tensor(lo)[None], torch.as_tensor(hi)[None], y, zs


def test_crown_with_stops_contains_every_sample_and_gains_on_narrow_layers():
    """:func:`gpuopt.bounds.crown.crown` with ``stops=True``, on random nets with a narrow layer
    (few live neurons, where a layer's box is tight): every sampled pre-activation and output lies
    inside its bounds, and the stopped bounds are tighter somewhere than the plain ones."""
    from gpuopt.bounds.crown import crown_linear_lower

    tighter = 0
    for seed in range(12):
        rng, net, lo_t, hi_t, y, zs = _narrow_case(1300 + seed, 2)
        plain = crown(net, lo_t, hi_t, stops=False)
        stopped = crown(net, lo_t, hi_t, stops=True)
        for (l, u), z in zip(list(stopped.pre_activation) + [stopped.output], list(zs) + [y]):
            assert np.all(z >= l[0].numpy() - 1e-9) and np.all(z <= u[0].numpy() + 1e-9), seed
        for (l0, u0), (l1, u1) in zip(list(plain.pre_activation) + [plain.output],
                                      list(stopped.pre_activation) + [stopped.output]):
            tighter += int((l1 > l0 + 1e-6).sum() + (u1 < u0 - 1e-6).sum())
        # the spec rows on the same bounds: the stopped rows are the plain ones or higher, exactly
        C = torch.as_tensor(rng.normal(size=(1, 4, 3)))
        r0, _ = crown_linear_lower(net, lo_t, hi_t, C, plain, stops=False)
        r1, _ = crown_linear_lower(net, lo_t, hi_t, C, plain, stops=True)
        assert torch.all(r1 >= r0)
        assert np.all(r1[0].numpy() <= (y @ C[0].numpy().T).min(axis=0) + 1e-9)
    assert tighter > 0


def test_alpha_crown_with_stops_is_sound_and_never_below_without():
    """alpha-CROWN's rows and intermediate bounds with the stops in their padded evaluations:
    inside every sample, and (the same steps, the stops only added at the end) never looser."""
    from gpuopt.bounds.crown import alpha_crown_bounds, alpha_crown_linear_lower

    for seed in range(6):
        rng, net, lo_t, hi_t, y, zs = _narrow_case(1400 + seed, 3)
        b = crown(net, lo_t, hi_t, stops=False)
        C = torch.as_tensor(rng.normal(size=(1, 4, 3)))
        r0 = alpha_crown_linear_lower(net, lo_t, hi_t, C, b, steps=10, stops=False)
        r1 = alpha_crown_linear_lower(net, lo_t, hi_t, C, b, steps=10, stops=True)
        assert torch.all(r1 >= r0)
        assert np.all(r1[0].numpy() <= (y @ C[0].numpy().T).min(axis=0) + 1e-9)
        a0 = alpha_crown_bounds(net, lo_t, hi_t, b, steps=10, stops=False, step_dtype="float64")
        a1 = alpha_crown_bounds(net, lo_t, hi_t, b, steps=10, stops=True, step_dtype="float64")
        for (l, u), z in zip(a1.pre_activation, zs):
            assert np.all(z >= l[0].numpy() - 1e-9) and np.all(z <= u[0].numpy() + 1e-9), seed
        # layer 1 sees the same earlier bounds either way: there the stopped ones are never looser
        (l0, u0), (l1, u1) = a0.pre_activation[1], a1.pre_activation[1]
        assert torch.all(l1 >= l0) and torch.all(u1 <= u0)


def test_stops_skip_sparse_blocks_and_split_mixed_nets_like_brute_force(monkeypatch):
    """A conv net whose first block is stored sparse and the next dense: the stops apply after the
    dense block only (``None`` after the sparse one, through the steps' dtype cast and the
    batch's compaction), and activation splitting with them decides like brute force."""
    from gpuopt.network import LinearOp
    from gpuopt.relu_split import _stop_layers

    from helpers import random_conv_network, to_alternating_dense

    monkeypatch.setattr(relu_split_module, "STOP_BOXES", True)
    monkeypatch.setattr(LinearOp, "sparse_density", 1.0)
    monkeypatch.setattr(LinearOp, "sparse_min_entries", 50)
    decided = total = 0
    for seed in range(4):
        rng = np.random.default_rng(1500 + seed)
        net = random_conv_network(rng, (1, 3, 3), 2, (2, 2), (1, 1), (0, 0, 0, 0), 4, 2)
        ops = net.linear_ops("cpu", torch.float64)
        assert ops[0].dense is None and ops[1].dense is not None
        lo, hi = rng.normal(size=9) - 0.6, None
        hi = lo + 1.2
        b = crown(net, torch.as_tensor(lo)[None], torch.as_tensor(hi)[None])
        boxes = _stop_layers([l for l, _ in b.pre_activation], [u for _, u in b.pre_activation], ops)
        assert boxes[0] is None and boxes[1] is not None
        spec = OutputSpec([(rng.normal(size=(1, 2)), np.zeros(1)), (rng.normal(size=(2, 2)), np.zeros(2))], 2)
        minima = brute_force_min_margin(to_alternating_dense(net), lo, hi, spec).per_disjunct
        for delta in (0.02, -0.02):
            s = shifted_spec(spec, minima, delta)
            res = relu_split(net, torch.as_tensor(lo), torch.as_tensor(hi), [(A, c, None) for A, c in s.disjuncts],
                             b, problem=Problem(net, Box(lo, hi), s), deadline=time.monotonic() + 10,
                             config=ReluSplitConfig(batch_size=4))
            total += 1
            assert res.status != ("sat" if delta > 0 else "unsat"), (seed, delta)
            if res.status == "sat":
                y, _ = numpy_forward(net, res.x[None])
                assert numpy_margin(s, y)[0] <= 0
            decided += res.status in ("sat", "unsat")
    assert decided >= 0.75 * total, (decided, total)
