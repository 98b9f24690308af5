"""Soundness and input validation of interval bound propagation and the spec bounds built on it.

Reference values come from ``helpers.numpy_forward`` (an independent float64 numpy pass over
``network.layers``), never from gpuopt's own forward pass.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gpuopt.bounds import disjunct_lower_bounds, ibp, margin_lower_bound
from gpuopt.errors import InvalidInputError
from gpuopt.network import Conv2d, Dense, ElementwiseAffine, Flatten, Network, ReLU
from gpuopt.specs import OutputSpec

from helpers import box_points, numpy_forward, random_conv_network, random_dense_network, random_spec

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------- strategies
@st.composite
def dense_cases(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    n_in = draw(st.integers(1, 4))
    hidden = draw(st.lists(st.integers(2, 10), min_size=1, max_size=3))
    n_out = draw(st.integers(1, 4))
    normalise = draw(st.booleans())
    rng = np.random.default_rng(seed)
    net = random_dense_network(rng, n_in, hidden, n_out)
    if normalise:  # an input normalisation with some negative scales
        net = Network([ElementwiseAffine(rng.normal(size=n_in), rng.normal(size=n_in))] + list(net.layers), (n_in,))
    return rng, net


@st.composite
def conv_cases(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    c_in = draw(st.integers(1, 2))
    h = draw(st.integers(4, 6))
    w = draw(st.integers(4, 6))
    kernel = (draw(st.integers(2, 3)), draw(st.integers(2, 3)))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = tuple(draw(st.integers(0, 1)) for _ in range(4))  # (top, left, bottom, right), often asymmetric
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    c_out = draw(st.integers(1, 3))
    n_hidden = draw(st.sampled_from([0, 5]))
    n_out = draw(st.integers(1, 4))
    normalise = draw(st.booleans())
    assume(h + padding[0] + padding[2] > dilation[0] * (kernel[0] - 1)
           and w + padding[1] + padding[3] > dilation[1] * (kernel[1] - 1))
    rng = np.random.default_rng(seed)
    net = random_conv_network(rng, (c_in, h, w), c_out, kernel, stride, padding, n_hidden, n_out)
    layers = list(net.layers)
    if dilation != (1, 1):
        conv = layers[0]
        layers[0] = Conv2d(conv.weight, conv.bias, conv.stride, conv.padding, dilation)
        flat = layers[0].output_shape((c_in, h, w))
        n_flat = flat[0] * flat[1] * flat[2]
        dense = layers[3]
        layers[3] = Dense(rng.normal(size=(dense.weight.shape[0], n_flat)) / np.sqrt(n_flat), dense.bias)
    if normalise:  # per-channel normalisation with some negative scales
        layers.insert(0, ElementwiseAffine(rng.normal(size=(c_in, 1, 1)), rng.normal(size=(c_in, 1, 1))))
    net = Network(layers, (c_in, h, w))
    return rng, net


def _random_box(rng, n, *, dtype=np.float64):
    centre = rng.normal(size=n)
    radius = rng.choice([0.0, 0.01, 0.3, 1.5], size=n)  # includes degenerate coordinates
    lo, hi = centre - radius, centre + radius
    if dtype == np.float32:  # a box whose ends are float32 numbers, so float32 IBP sees the same box
        lo, hi = lo.astype(np.float32).astype(np.float64), hi.astype(np.float32).astype(np.float64)
    return lo, hi


def _check_contains(bounds, net, pts, what):
    y, pre = numpy_forward(net, pts)
    assert len(bounds.pre_activation) == len(pre)
    for k, ((l, u), z) in enumerate(zip(bounds.pre_activation, pre)):
        l = l.double().numpy()[0]
        u = u.double().numpy()[0]
        assert l.shape == z.shape[1:], (k, l.shape, z.shape)
        assert np.all(z >= l), f"{what}: pre-activation {k} below its IBP lower bound by {np.max(l - z):.3g}"
        assert np.all(z <= u), f"{what}: pre-activation {k} above its IBP upper bound by {np.max(z - u):.3g}"
    lo, hi = (t.double().numpy()[0] for t in bounds.output)
    assert lo.shape == (net.output_size,)
    assert np.all(y >= lo), f"{what}: output below its IBP lower bound by {np.max(lo - y):.3g}"
    assert np.all(y <= hi), f"{what}: output above its IBP upper bound by {np.max(y - hi):.3g}"
    return y


def _ibp_soundness(rng, net, dtype):
    lo, hi = _random_box(rng, net.input_size, dtype=dtype)
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    bounds = ibp(net, torch.as_tensor(lo[None], dtype=tdtype), torch.as_tensor(hi[None], dtype=tdtype))
    for l, u in list(bounds.pre_activation) + [bounds.output]:
        assert l.dtype == tdtype and u.dtype == tdtype
        assert torch.all(l <= u)
    pts = box_points(rng, lo, hi, 200)
    return _check_contains(bounds, net, pts, f"{tdtype} IBP")


# ---------------------------------------------------------------------------- IBP soundness
@SETTINGS
@given(dense_cases(), st.sampled_from([np.float64, np.float32]))
def test_ibp_contains_sampled_preactivations_and_outputs_dense(case, dtype):
    rng, net = case
    _ibp_soundness(rng, net, dtype)


@SETTINGS
@given(conv_cases(), st.sampled_from([np.float64, np.float32]))
def test_ibp_contains_sampled_preactivations_and_outputs_conv(case, dtype):
    rng, net = case
    _ibp_soundness(rng, net, dtype)


def test_ibp_accepts_batched_and_flattened_boxes():
    """A batch of boxes in ``(batch, *input_shape)`` or ``(batch, n)`` form: per-item bounds."""
    rng = np.random.default_rng(3)
    net = random_conv_network(rng, (2, 5, 4), 2, (3, 2), (2, 1), (1, 0, 0, 1), 4, 3)
    boxes = [_random_box(rng, net.input_size) for _ in range(3)]
    lo = np.stack([b[0] for b in boxes])
    hi = np.stack([b[1] for b in boxes])
    flat = ibp(net, torch.as_tensor(lo), torch.as_tensor(hi))
    shaped = ibp(net, torch.as_tensor(lo.reshape(3, 2, 5, 4)), torch.as_tensor(hi.reshape(3, 2, 5, 4)))
    assert flat.batch_size == 3
    for a, b in zip(flat.output, shaped.output):
        assert torch.equal(a, b)
    for i in range(3):
        single = ibp(net, torch.as_tensor(lo[i:i + 1]), torch.as_tensor(hi[i:i + 1]))
        torch.testing.assert_close(single.output[0][0], flat.output[0][i], rtol=1e-12, atol=1e-12)
        pts = box_points(rng, lo[i], hi[i], 100)
        y, _ = numpy_forward(net, pts)
        assert np.all(y >= flat.output[0][i].numpy()) and np.all(y <= flat.output[1][i].numpy())


# ---------------------------------------------------------------------------- spec bounds
@SETTINGS
@given(dense_cases(), st.lists(st.integers(1, 3), min_size=1, max_size=4), st.sampled_from([np.float64, np.float32]))
def test_disjunct_and_margin_lower_bounds_below_true_margins(case, rows, dtype):
    """Padded specs (disjuncts with different row counts) bound each disjunct margin from below."""
    rng, net = case
    spec = random_spec(rng, net.output_size, rows)
    lo, hi = _random_box(rng, net.input_size, dtype=dtype)
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    bounds = ibp(net, torch.as_tensor(lo[None], dtype=tdtype), torch.as_tensor(hi[None], dtype=tdtype))
    A, b = spec.padded(dtype=tdtype)
    assert A.shape == (len(rows), max(rows), net.output_size)
    assert torch.all(torch.isinf(b) == torch.tensor([[i >= m for i in range(max(rows))] for m in rows]))
    dlb = disjunct_lower_bounds(bounds.output[0], bounds.output[1], A, b)
    mlb = margin_lower_bound(bounds.output[0], bounds.output[1], A, b)
    assert dlb.shape == (1, len(rows)) and mlb.shape == (1,)
    assert torch.all(torch.isfinite(dlb))
    # the batched form of the spec gives the same bounds
    dlb_b = disjunct_lower_bounds(bounds.output[0], bounds.output[1], A[None], b[None])
    assert torch.equal(dlb, dlb_b)

    pts = box_points(rng, lo, hi, 200)
    y, _ = numpy_forward(net, pts)
    per = np.stack([np.max(y @ Ak.T - bk, axis=1) for Ak, bk in spec.disjuncts], axis=1)
    dlb64 = dlb.double().numpy()[0]
    assert np.all(per >= dlb64[None]), f"disjunct bound above a true margin by {np.max(dlb64[None] - per):.3g}"
    assert np.all(spec.margin64(y) >= float(mlb[0]))
    assert float(mlb[0]) == pytest.approx(float(dlb64.min()))

    # the bound of an output *box* is attained at a vertex for single-row disjuncts: check the
    # exact minimum over the IBP output box as well (it must not undercut the bound either)
    ol, ou = (t.double().numpy()[0] for t in bounds.output)
    for k, (Ak, bk) in enumerate(spec.disjuncts):
        if Ak.shape[0] == 1:
            exact = float(np.sum(np.where(Ak[0] > 0, Ak[0] * ol, Ak[0] * ou)) - bk[0])
            assert dlb64[k] <= exact
            assert dlb64[k] == pytest.approx(exact, rel=1e-4 if dtype == np.float32 else 1e-12,
                                             abs=1e-4 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_disjunct_bounds_exact_output_box_is_sound_at_the_vertex(dtype):
    """A degenerate output box on a margin of exactly 0 must give a bound <= 0 (rounding-padded)."""
    y = torch.tensor([[0.1, 0.7, -0.3]], dtype=torch.float64)
    spec = OutputSpec([(np.array([[1.0, 1.0, 1.0]]), np.array([0.5]))], 3)  # 0.1 + 0.7 - 0.3 - 0.5 == 0
    A, b = spec.padded(dtype=dtype)
    lb = margin_lower_bound(y.to(dtype), y.to(dtype), A, b)
    assert float(lb[0]) <= float(spec.margin64(y.numpy())[0]) + 0.0
    assert float(lb[0]) <= 0.0 or float(spec.margin64(y.numpy())[0]) > 0


# ---------------------------------------------------------------------------- degenerate boxes
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_ibp_degenerate_box_is_tight(seed, kind):
    rng = np.random.default_rng(seed)
    if kind == "dense":
        net = random_dense_network(rng, 4, [10, 10, 10], 4)
    else:
        net = random_conv_network(rng, (2, 6, 5), 3, (3, 3), (1, 2), (1, 0, 0, 1), 6, 3)
    x = rng.normal(size=net.input_size)
    xt = torch.as_tensor(x[None])
    bounds = ibp(net, xt, xt.clone())
    y, pre = numpy_forward(net, x[None])
    ya, prea = numpy_forward(net, x[None], absolute=True)  # scale of the rounding errors
    depth_scale = np.cumsum([a.max() for a in prea] + [ya.max()])
    for k, ((l, u), z) in enumerate(zip(bounds.pre_activation, pre)):
        l, u = l.numpy()[0], u.numpy()[0]
        assert np.all(l <= z[0]) and np.all(z[0] <= u)
        assert np.max(u - l) <= 1e-12 * max(1.0, depth_scale[k]), (k, np.max(u - l))
    l, u = bounds.output[0].numpy()[0], bounds.output[1].numpy()[0]
    assert np.all(l <= y[0]) and np.all(y[0] <= u)
    assert np.max(u - l) <= 1e-12 * max(1.0, depth_scale[-1]), np.max(u - l)
    np.testing.assert_allclose(0.5 * (l + u), y[0], rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------- validation
def _tiny_net():
    return Network([Dense(np.eye(2), np.zeros(2)), ReLU(), Dense(np.ones((1, 2)), np.zeros(1))], (2,))


@pytest.mark.parametrize(
    "lower, upper, message",
    [
        ([[np.nan, 0.0]], [[1.0, 1.0]], "`lower`/`upper` contain NaN"),
        ([[0.0, 0.0]], [[1.0, np.nan]], "`lower`/`upper` contain NaN"),
        ([[0.0, 2.0]], [[1.0, 1.0]], "`lower` must be <= `upper` everywhere (the box is empty)"),
        ([[0.0, 0.0], [0.0, 0.0]], [[1.0, 1.0]],
         "`lower` and `upper` must have the same shape, got (2, 2) and (1, 2)"),
        ([[0.0, 0.0, 0.0]], [[1.0, 1.0, 1.0]], "`x` must have shape (batch, 2) or (batch, 2), got (1, 3)"),
        ([[-np.inf, 0.0]], [[1.0, 1.0]], "`lower`/`upper` must be finite"),
        ([[0.0, 0.0]], [[1.0, np.inf]], "`lower`/`upper` must be finite"),
    ],
    ids=["nan-lower", "nan-upper", "empty", "batch-mismatch", "size-mismatch", "inf-lower", "inf-upper"],
)
def test_ibp_input_validation(lower, upper, message):
    net = _tiny_net()
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        ibp(net, torch.tensor(lower, dtype=torch.float64), torch.tensor(upper, dtype=torch.float64))


def test_inf_minus_inf_gives_no_bound_rather_than_nan():
    """Weights of 1e308 on a finite box overflow to ``inf - inf`` (found by review: NaN bounds came
    back); IBP and the interval walk must say "unbounded" (-inf, +inf) there, never NaN."""
    from gpuopt.bounds.interval import interval_bounds
    from gpuopt.network import Sigmoid

    box = torch.tensor([[10.0, 10.0]], dtype=torch.float64)
    for net, piecewise_linear in ((Network([Dense([[1e308, -1e308]], [0.0]), ReLU(), Dense([[1.0]], [0.0])], (2,)), True),
                                  (Network([Dense([[1e308, -1e308]], [0.0]), Sigmoid(), Dense([[1.0]], [0.0])], (2,)), False)):
        got = [interval_bounds(net, box, box)]
        if piecewise_linear:
            b = ibp(net, box, box)
            got += [b.output, b.pre_activation[0]]
        for lo, hi in got:
            assert not torch.isnan(lo).any() and not torch.isnan(hi).any(), (lo, hi)
            assert bool((lo <= 0.5).all()) and bool((hi >= 0.5).all())


@pytest.mark.parametrize("seed", range(12))
def test_crown_and_alpha_crown_are_sound_and_ordered(seed):
    """IBP >= CROWN >= alpha-CROWN in looseness on the spec rows, and all below sampled values."""
    from gpuopt.bounds import alpha_crown_linear_lower, crown, crown_linear_lower

    rng = np.random.default_rng(1000 + seed)
    if seed % 3 == 2:
        net = random_conv_network(rng, (1, 5, 5), 2, (3, 3), (1, 1), (1, 1, 1, 1), 6, 3)
    else:
        net = random_dense_network(rng, 3, [8, 8, 6], 3)
    n = net.input_size
    lo = rng.uniform(-1, 0, (2, n))
    hi = lo + rng.uniform(0.1, 1.0, (2, n))
    C = torch.tensor(rng.normal(size=(4, 3)))
    lo_t, hi_t = torch.tensor(lo), torch.tensor(hi)
    b_ibp = ibp(net, lo_t, hi_t)
    ibp_rows = ((C.clamp(min=0) * b_ibp.output[0][:, None]).sum(-1) + (C.clamp(max=0) * b_ibp.output[1][:, None]).sum(-1))
    b_crown = crown(net, lo_t, hi_t)
    crown_rows, _ = crown_linear_lower(net, lo_t, hi_t, C, b_crown)
    alpha_rows = alpha_crown_linear_lower(net, lo_t, hi_t, C, b_crown, steps=15)
    assert bool((alpha_rows >= crown_rows).all())
    # CROWN's intermediate bounds are intersected with IBP's, so each is inside IBP's box
    for (cl, cu), (il, iu) in zip(b_crown.pre_activation, b_ibp.pre_activation):
        assert bool((cl >= il).all() and (cu <= iu).all())
    for i in range(2):
        x = box_points(rng, lo[i], hi[i], n=300)
        y, _ = numpy_forward(net, x)
        true_min = (y @ C.numpy().T).min(axis=0)
        assert np.all(alpha_rows[i].numpy() <= true_min + 1e-12)
        assert np.all(crown_rows[i].numpy() <= true_min + 1e-12)
        assert np.all(ibp_rows[i].numpy() <= true_min + 1e-9)


@pytest.mark.parametrize("conv", [False, True])
def test_selector_head_equals_the_one_hot_rows(conv):
    """:func:`gpuopt.bounds.crown.selector_head` starts the backward pass of the rows ``+-z_k[part]``
    without the one-hot product: the same bounds and coefficients as the rows themselves, for all
    boxes of a batch and per (box, neuron) pair."""
    from gpuopt.bounds.base import center_radius
    from gpuopt.bounds.crown import _backward, _magnitudes, _relaxation, crown, row_selectors, selector_head

    rng = np.random.default_rng(3)
    if conv:
        net = random_conv_network(rng, (1, 4, 4), 2, (2, 2), (1, 1), (0, 0, 0, 0), 6, 3)
        n_in = 16
    else:
        net = random_dense_network(rng, 5, [7, 6, 5], 3)
        n_in = 5
    lo = torch.tensor(rng.normal(size=(3, n_in)))
    hi = lo + 0.5
    b = crown(net, lo, hi)
    ops = net.linear_ops("cpu", torch.float64)
    x_mid, x_rad = center_radius(lo, hi)
    n_terms = n_in + sum(op.shape[0] for op in ops)
    k = len(ops) - 2
    pre = [(l, u) for l, u in b.pre_activation[:k]]
    relax = [_relaxation(l, u, op.passthrough) for (l, u), op in zip(pre, ops)]
    hmax = _magnitudes(x_mid, x_rad, pre, ops)
    part = torch.tensor([0, 2, 3])
    want, want_a = _backward(row_selectors(part, ops[k].shape[0], 3, lo), k, ops, relax, x_mid, x_rad, n_terms, hmax)
    got, got_a = _backward(None, k, ops, relax, x_mid, x_rad, n_terms, hmax, head=selector_head(part, k, ops, hmax, 3))
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(got_a, want_a, rtol=1e-13, atol=1e-13)
    box, neuron = torch.tensor([0, 2, 2, 1]), torch.tensor([1, 0, 3, 4])
    eye = torch.eye(ops[k].shape[0], dtype=torch.float64)
    want, _ = _backward(torch.stack([eye[neuron], -eye[neuron]], dim=1), k, ops, relax, x_mid, x_rad, n_terms, hmax,
                        index=box)
    got, _ = _backward(None, k, ops, relax, x_mid, x_rad, n_terms, hmax, index=box,
                       head=selector_head(neuron, k, ops, hmax, 3, index=box))
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("seed", range(3))
def test_bounds_through_convolutions_equal_those_through_their_sparse_matrices(seed, monkeypatch):
    """CROWN, alpha-CROWN and forward bounds of a network of two convolutions come out the same
    (to rounding) whether its convolution blocks multiply as convolutions or as sparse
    matrices, and contain sampled values."""
    from gpuopt.bounds import alpha_crown_linear_lower, crown, crown_linear_lower
    from gpuopt.bounds.forward import forward_crown
    from gpuopt.network import LinearOp

    rng = np.random.default_rng(70 + seed)
    layers = [Conv2d(rng.normal(size=(3, 2, 3, 3)) / 4, 0.2 * rng.normal(size=3), (1, 1), (1, 0, 1, 1)), ReLU(),
              Conv2d(rng.normal(size=(4, 3, 2, 3)) / 4, 0.2 * rng.normal(size=4), (2, 1), (0, 1, 1, 0), (1, 2)),
              ReLU(), Flatten()]
    hidden = Network(layers, (2, 6, 5))
    n_flat = hidden.output_size
    layers += [Dense(rng.normal(size=(3, n_flat)) / math.sqrt(n_flat), 0.2 * rng.normal(size=3))]
    monkeypatch.setattr(LinearOp, "sparse_min_entries", 0)
    monkeypatch.setattr(LinearOp, "sparse_density", 1.0)
    monkeypatch.setattr(LinearOp, "conv_min_channels", 1)
    results = []
    for conv_density in (1.0, -1.0):  # convolutions, then sparse products
        monkeypatch.setattr(LinearOp, "conv_density", conv_density)
        net = Network(layers, (2, 6, 5))
        ops = net.linear_ops("cpu", torch.float64)
        assert [op.conv is not None for op in ops] == [conv_density > 0] * 2 + [False]
        lo = torch.tensor(rng.uniform(-1, 0, (2, net.input_size))) if not results else results[0][0]
        hi = lo + 0.4
        C = torch.tensor(rng.normal(size=(4, 3))) if not results else results[0][1]
        b = crown(net, lo, hi)
        rows, _ = crown_linear_lower(net, lo, hi, C, b)
        alpha = alpha_crown_linear_lower(net, lo, hi, C, b, steps=5)
        fwd = forward_crown(net, lo, hi)
        results.append((lo, C, b, rows, alpha, fwd))
    (lo, C, b1, r1, a1, f1), (_, _, b2, r2, a2, f2) = results
    for (l1, u1), (l2, u2) in zip(b1.pre_activation + (b1.output,), b2.pre_activation + (b2.output,)):
        torch.testing.assert_close(l1, l2, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(u1, u2, rtol=1e-9, atol=1e-9)
    for (l1, u1), (l2, u2) in zip(f1.pre_activation + (f1.output,), f2.pre_activation + (f2.output,)):
        torch.testing.assert_close(l1, l2, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(u1, u2, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(r1, r2, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(a1, a2, rtol=1e-6, atol=1e-6)
    for i in range(2):
        x = box_points(rng, lo[i].numpy(), lo[i].numpy() + 0.4, n=300)
        y, _ = numpy_forward(net, x)
        true_min = (y @ C.numpy().T).min(axis=0)
        assert np.all(r1[i].numpy() <= true_min + 1e-12) and np.all(a1[i].numpy() <= true_min + 1e-12)
        assert np.all(f1.output[0][i].numpy() <= y.min(axis=0) + 1e-12)
        assert np.all(f1.output[1][i].numpy() >= y.max(axis=0) - 1e-12)
