"""Zonotope bounds (gpuopt.bounds.zonotope): soundness on chains, graphs and convolutions, the exact
value of the relaxation on a known case, rounding at extreme scales, folding symbols under a
memory cap, deadlines, and the few-input path that uses them."""

from __future__ import annotations

from fractions import Fraction
from itertools import product

import numpy as np
import pytest
import torch

from gpuopt import Box, OutputSpec, verify
from gpuopt.bounds import ibp
from gpuopt.bounds.crown import crown_linear_lower
from gpuopt.bounds.forward import forward_crown, intermediate_bounds, prefers_forward
from gpuopt.bounds.zonotope import zonotope_bounds
from gpuopt.network import Conv2d, Dense, Flatten, Network, ReLU, Reshape
from gpuopt.verdict import Status

from helpers import assert_bounds_contain_samples, box_points, random_dense_network

from test_forward_bounds import _graph_net


def _conv_net(rng):
    """A few-input CNN like cifar_biasfield's: a dense lift to an image, then strided convolutions."""
    return Network([
        Dense(rng.normal(size=(3 * 8 * 8, 4)), rng.normal(size=3 * 8 * 8) * 0.3),
        Reshape((3, 8, 8)),
        Conv2d(rng.normal(size=(6, 3, 3, 3)) / 4, rng.normal(size=6) * 0.2, padding=(1, 1, 1, 1)), ReLU(),
        Conv2d(rng.normal(size=(8, 6, 3, 3)) / 6, rng.normal(size=8) * 0.2, stride=(2, 2), padding=(1, 1, 1, 1)), ReLU(),
        Flatten(),
        Dense(rng.normal(size=(16, 128)) / 10, rng.normal(size=16) * 0.2), ReLU(),
        Dense(rng.normal(size=(3, 16)) / 4, rng.normal(size=3)),
    ], (4,))


def _nets():
    rng = np.random.default_rng(21)
    yield "dense", random_dense_network(rng, 3, [40, 30, 20, 20], 4)
    yield "graph", _graph_net(rng)
    yield "conv", _conv_net(rng)


def _layers(b):
    return list(b.pre_activation) + [b.output]


@pytest.mark.parametrize("name, net", list(_nets()))
@pytest.mark.parametrize("seed", range(3))
def test_zonotope_bounds_contain_sampled_values(name, net, seed):
    rng = np.random.default_rng(seed)
    lo = rng.uniform(-1, 0, (3, net.input_size))
    hi = lo + rng.choice([0.0, 0.05, 0.5], size=lo.shape)  # some degenerate coordinates
    b = zonotope_bounds(net, torch.tensor(lo), torch.tensor(hi))
    assert b.method == "zonotope"
    assert_bounds_contain_samples(net, b, lo, hi, rng, what=name)
    # intersected with IBP's
    b_ibp = ibp(net, torch.tensor(lo), torch.tensor(hi))
    for (zl, zu), (il, iu) in zip(_layers(b), _layers(b_ibp)):
        assert bool((zl >= il).all() and (zu <= iu).all())


def test_the_relaxation_has_its_exact_value():
    """y = relu(x) - relu(-x) - 2 relu(x + 2) + 4 = -x on [-1, 1]. Each unstable ReLU becomes
    0.5 z + 0.25 + 0.25 e (its own symbol) and the third is active, so y = -x + 0.25 e1 - 0.25 e2,
    in [-1.5, 1.5]; IBP gives [-3, 3]. (The forward bounds are exact here, [-1, 1]: the parallel
    lines lose where a ReLU's lower line may be the identity, which is why the pipeline
    intersects the two.)"""
    net = Network([Dense(np.array([[1.0], [-1.0], [1.0]]), np.array([0.0, 0.0, 2.0])), ReLU(),
                   Dense(np.array([[1.0, -1.0, -2.0]]), np.array([4.0]))], (1,))
    lo, hi = torch.tensor([[-1.0]], dtype=torch.float64), torch.tensor([[1.0]], dtype=torch.float64)
    z = zonotope_bounds(net, lo, hi)
    assert float(z.output[0]) == pytest.approx(-1.5, abs=1e-12) and float(z.output[1]) == pytest.approx(1.5, abs=1e-12)
    assert float(z.output[0]) <= -1.5 and float(z.output[1]) >= 1.5  # the pads move outwards only
    assert float(ibp(net, lo, hi).output[0]) == pytest.approx(-3.0, abs=1e-12)
    f = forward_crown(net, lo, hi)
    assert float(f.output[0]) == pytest.approx(-1.0, abs=1e-12)
    both = intermediate_bounds(net, lo, hi)  # one input, widest layer 3: forward is not preferred here
    assert float(both.output[0]) == pytest.approx(-1.0, abs=1e-12)


def test_the_zonotope_is_far_tighter_than_forward_bounds_on_a_deep_few_input_net():
    rng = np.random.default_rng(3)
    net = random_dense_network(rng, 2, [60] * 6, 3)
    lo = torch.tensor(rng.uniform(-1, 0, (1, 2)))
    hi = lo + 0.1
    f = forward_crown(net, lo, hi)
    z = zonotope_bounds(net, lo, hi)
    width = lambda b: float((b.output[1] - b.output[0]).sum())  # noqa: E731
    assert width(z) < 0.5 * width(f)


def _exact_out(weights, x):
    h = [Fraction(v) for v in x]
    for k, (W, c) in enumerate(weights):
        h = [sum((Fraction(float(w)) * v for w, v in zip(row, h)), Fraction(0)) + Fraction(float(cc))
             for row, cc in zip(W, c)]
        if k < len(weights) - 1:
            h = [max(v, Fraction(0)) for v in h]
    return h


@pytest.mark.parametrize("scale", [1e-150, 1e-3, 1.0, 1e3, 1e150])
def test_the_bounds_hold_in_exact_arithmetic_at_extreme_scales(scale):
    """Every corner of a box on which the net is linear (all ReLUs active), evaluated in rationals,
    lies inside the bounds: the exact extremes sit at corners, so a missing rounding pad shows."""
    rng = np.random.default_rng(4)
    W1 = rng.uniform(0.1, 0.9, (5, 3)) / 3
    W2 = rng.uniform(0.1, 0.9, (4, 5)) / 7
    W3 = rng.normal(size=(2, 4)) / 11
    weights = [(W1 * scale, np.full(5, 0.1) * scale), (W2, np.full(4, 0.3) * scale), (W3, np.array([0.7, -0.1]) * scale)]
    net = Network([Dense(*weights[0]), ReLU(), Dense(*weights[1]), ReLU(), Dense(*weights[2])], (3,))
    lo, hi = np.array([0.1, 0.2, 0.3]), np.array([0.1 + 1 / 3, 0.7, 0.3 + 1 / 7])
    b = zonotope_bounds(net, torch.tensor(lo[None]), torch.tensor(hi[None]))
    for corner in product(*zip(lo, hi)):
        y = _exact_out(weights, corner)
        for j, v in enumerate(y):
            assert Fraction(float(b.output[0][0, j])) <= v <= Fraction(float(b.output[1][0, j])), (scale, j)


def test_folding_symbols_under_a_small_memory_cap_stays_sound():
    rng = np.random.default_rng(5)
    net = random_dense_network(rng, 3, [50, 50, 50], 3)
    lo = torch.tensor(rng.uniform(-1, 0, (2, 3)))
    hi = lo + 0.6
    full = zonotope_bounds(net, lo, hi)
    tight = zonotope_bounds(net, lo, hi, max_bytes=8 * 50 * 4)  # 4 symbols kept per layer
    assert_bounds_contain_samples(net, tight, lo.numpy(), hi.numpy(), rng, what="folded")
    # the folded zonotope is a box around some symbols: never tighter than the full one on the first layer
    assert bool((tight.pre_activation[1][0] <= full.pre_activation[1][0] + 1e-12).all())
    assert float((tight.output[1] - tight.output[0]).sum()) > float((full.output[1] - full.output[0]).sum())


def test_a_passed_deadline_keeps_the_prior_bounds():
    rng = np.random.default_rng(6)
    net = random_dense_network(rng, 2, [20, 20], 2)
    lo = torch.tensor(rng.uniform(-1, 0, (2, 2)))
    prior = forward_crown(net, lo, lo + 0.5)
    b = zonotope_bounds(net, lo, lo + 0.5, prior=prior, deadline=0.0)
    assert b.method == "zonotope-partial"
    for (a, c), (p, q) in zip(_layers(b), _layers(prior)):
        assert torch.equal(a, p) and torch.equal(c, q)


def test_few_input_wide_nets_get_the_zonotope_through_intermediate_bounds():
    rng = np.random.default_rng(7)
    net = random_dense_network(rng, 2, [100, 100, 100], 2)
    assert prefers_forward(net)
    lo = torch.tensor(rng.uniform(-1, 0, (2, 2)))
    b = intermediate_bounds(net, lo, lo + 0.3)
    f = forward_crown(net, lo, lo + 0.3)
    assert b.method == "zonotope"
    for (zl, zu), (fl, fu) in zip(_layers(b), _layers(f)):  # intersected with the forward bounds
        assert bool((zl >= fl).all() and (zu <= fu).all())


def test_verify_proves_at_the_root_what_forward_bounds_leave_open():
    """A deep 3-input net where the bounds stage takes the few-input path: the spec row's CROWN
    bound on the forward bounds alone is -65.9 and on the zonotope's -1.81 (the sampled minimum
    is 0.034), so ``y <= -1.9`` is unreachable and proven by the bounds stage, without splitting."""
    rng = np.random.default_rng(13)
    net = random_dense_network(rng, 3, [100] * 5, 1)
    assert prefers_forward(net)
    box = Box([-0.2] * 3, [0.2] * 3)
    lo, hi = torch.tensor(np.array([box.lower])), torch.tensor(np.array([box.upper]))
    C = torch.ones((1, 1), dtype=torch.float64)
    assert float(crown_linear_lower(net, lo, hi, C, forward_crown(net, lo, hi))[0]) < -10
    assert float(crown_linear_lower(net, lo, hi, C, intermediate_bounds(net, lo, hi))[0]) > -1.9
    y = net.forward64(box_points(rng, box.lower, box.upper, 20000))[:, 0]
    assert y.min() > -1.9
    v = verify(net, box, OutputSpec([([[1.0]], [-1.9])], 1), timeout=60)
    assert v.status is Status.UNSAT and v.decided_by == "crown", v


def _contains(b, lo_exact, hi_exact, what):
    low, up = Fraction(float(b.output[0][0, 0])), Fraction(float(b.output[1][0, 0]))
    assert low <= lo_exact and hi_exact <= up, (what, float(low), float(up), float(lo_exact), float(hi_exact))


def test_underflow_in_the_products_is_covered_on_subnormal_inputs():
    """12 inputs in [1e5, 1.2e5] x eta (the least subnormal), all 400 ReLUs active, output weights
    4.9e-5: each product of the zonotope's and CROWN's passes underflows, losing up to eta apiece,
    and that is 3% of the range. The exact range (rationals) must lie inside every method's bounds
    (the zonotope's excluded both ends before: found by review)."""
    eta = 5e-324
    n_in, width, w2 = 12, 400, 4.9e-05
    net = Network([Dense(np.ones((width, n_in)), np.zeros(width)), ReLU(), Dense(np.full((1, width), w2), np.zeros(1))],
                  (n_in,))
    lo, hi = np.full(n_in, 1e5 * eta), np.full(n_in, 1.2e5 * eta)
    exact = lambda x: Fraction(w2) * width * sum(Fraction(float(v)) for v in x)  # noqa: E731
    tl, th = torch.tensor(lo[None]), torch.tensor(hi[None])
    for name, b in (("zonotope", zonotope_bounds(net, tl, th)), ("intermediate", intermediate_bounds(net, tl, th)),
                    ("forward", forward_crown(net, tl, th))):
        _contains(b, exact(lo), exact(hi), name)
    rows = crown_linear_lower(net, tl, th, torch.tensor([[1.0], [-1.0]]).T.reshape(2, 1), forward_crown(net, tl, th))[0]
    assert Fraction(float(rows[0, 0])) <= exact(lo) and Fraction(float(-rows[0, 1])) >= exact(hi)


def test_coefficient_underflow_times_huge_inputs_is_covered():
    """Twelve tents of height 1e-28 at x = 1.37e300, weights 1e-161 in both layers: the input
    coefficients are products of 1e-322 (subnormal, 1.2% short), and times x ~ 1e300 that error is
    5e4 times the outputs. CROWN and the forward bounds gave an empty interval on a sub-box where
    every ReLU is stable (found by review); every method must contain the exact outputs."""
    from gpuopt.bounds import crown

    a, k, p, d = 1e-161, 12, 1.3712345e300, 1e294
    W = np.full((3 * k, 1), a)
    bias = np.repeat([-a * (p - d), -a * p, -a * (p + d)], k)
    V = np.array([[a, -2 * a, a]]).repeat(k, axis=1)
    net = Network([Dense(W, bias), ReLU(), Dense(V, np.zeros(1))], (1,))

    def exact(x):
        x = Fraction(float(x))
        return sum(Fraction(float(V[0, i])) * max(Fraction(float(W[i, 0])) * x + Fraction(float(bias[i])), Fraction(0))
                   for i in range(3 * k))

    lo, hi = p - 0.8 * d, p - 0.7 * d  # every ReLU stable: y is affine on the box
    tl, th = torch.tensor([[lo]], dtype=torch.float64), torch.tensor([[hi]], dtype=torch.float64)
    ys = sorted([exact(lo), exact(hi)])
    for name, b in (("crown", crown(net, tl, th)), ("forward", forward_crown(net, tl, th)),
                    ("zonotope", zonotope_bounds(net, tl, th)), ("intermediate", intermediate_bounds(net, tl, th))):
        _contains(b, ys[0], ys[1], name)


@pytest.mark.parametrize("bias0, lo, hi", [(-100.0, [0.0, 0.0], [0.2, 0.2]), (0.5, [0.3, 0.3], [0.3, 0.3])])
def test_a_convolution_reached_with_no_symbols_left(bias0, lo, hi):
    """A convolution block on torch's conv2d route (32 output channels, 65,536 entries) met by a
    zonotope with no symbols (a point box, or every ReLU before it inactive): found by review to
    crash in a reshape of 0 rows; the bounds must hold."""
    rng = np.random.default_rng(0)
    net = Network([Dense(rng.normal(size=(64, 2)), np.full(64, bias0)), Reshape((1, 8, 8)), ReLU(),
                   Conv2d(rng.normal(size=(32, 1, 3, 3)) / 3, rng.normal(size=32) * 0.1, padding=(1, 1, 1, 1)), ReLU(),
                   Flatten(), Dense(rng.normal(size=(2, 2048)) / 40, np.zeros(2))], (2,))
    assert any(op.conv is not None for op in net.linear_ops("cpu", torch.float64))
    L, H = torch.tensor([lo], dtype=torch.float64), torch.tensor([hi], dtype=torch.float64)
    x = box_points(np.random.default_rng(1), np.array(lo), np.array(hi), 64)
    y = net.forward64(x)
    for b in (zonotope_bounds(net, L, H), intermediate_bounds(net, L, H)):
        low, up = (t[0].numpy() for t in b.output)
        assert np.all(y >= low) and np.all(y <= up)
    # a point box whose threshold IBP cannot separate from the output: decided by a later stage, soundly
    if lo == hi:
        y0 = float(y[0, 0] - y[0, 1])
        v = verify(net, Box(np.array(lo), np.array(hi)), OutputSpec([(np.array([[1.0, -1.0]]), np.array([y0 + 1e-15]))], 2),
                   timeout=20)
        assert v.status is Status.SAT
