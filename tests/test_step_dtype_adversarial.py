"""Adversarial checks of the float32 multiplier steps (``step_dtype``): soundness holds by
construction (every kept bound is a float64 padded evaluation at multipliers in their valid
ranges), and these tests keep it checked at magnitudes float32 cannot hold, near the boundary, and
with bad names. They also keep the steps scale-free: Adam's second moment ``g * g`` overflowed
float32 once a gradient passed ``sqrt(float32 max) ~ 1.8e19`` (bounds of order 1e19, well inside
float32's range), and the float32 steps then stopped moving, so bounds and verdicts fell behind
float64 steps' (``test_float32_steps_*_scale_free``); each problem's gradients are now divided by
their first step's largest magnitude (:func:`gpuopt.bounds.crown.grad_scale`)."""

from __future__ import annotations

import functools
import time

import numpy as np
import pytest
import torch

from gpuopt.bounds.crown import alpha_crown_bounds, crown
from gpuopt.bounds.milp_refine import alpha_crown_rebound
from gpuopt.errors import InvalidInputError
from gpuopt.network import Dense, Network
from gpuopt.relu_split import ReluSplitConfig, relu_split
from gpuopt.specs import OutputSpec

from helpers import brute_force_min_margin, numpy_forward, random_dense_network, two_disjunct_case


def _first_scaled(net, s):
    """``net`` with its first affine layer times ``s``: for large ``s`` (the later biases then
    negligible) every bound scales by ``s``, and alpha-CROWN's Adam steps are scale-invariant."""
    layers = list(net.layers)
    layers[0] = Dense(layers[0].weight * s, layers[0].bias * s)
    return Network(layers, net.input_shape)


def _last_scaled(net, s):
    layers = list(net.layers)
    layers[-1] = Dense(layers[-1].weight * s, layers[-1].bias * s)
    return Network(layers, net.input_shape)


@functools.lru_cache(maxsize=None)
def _minima(seed, n_hidden):
    net, lo, hi, spec = two_disjunct_case(seed, n_hidden)
    return brute_force_min_margin(net, lo, hi, spec).per_disjunct


def _gain(start, got):
    return sum(float((g[0] - s[0]).sum() + (s[1] - g[1]).sum()) for s, g in zip(start.pre_activation, got.pre_activation))


def _small_case():
    rng = np.random.default_rng(900)
    n_in = int(rng.integers(2, 5))
    net = random_dense_network(rng, n_in, [int(rng.integers(6, 12)) for _ in range(3)], 3)
    lo = rng.normal(size=n_in) - 0.9
    return net, lo, lo + 1.8


# ------------------------------------------------------------------ fails now
@pytest.mark.parametrize("s", [1e20, 1e30])
def test_float32_steps_alpha_crown_is_scale_free(s):
    """At s = 1e15 both dtypes tighten by the same amount (gain / s = 1.596); at 1e20 float32
    steps gain 0.795 and at 1e30 nothing, float64 steps still 1.596 (Adam's ``g*g`` overflows)."""
    net, lo, hi = _small_case()
    lo_t, hi_t = torch.as_tensor(lo)[None], torch.as_tensor(hi)[None]
    n2 = _first_scaled(net, s)
    start = crown(n2, lo_t, hi_t)
    g64 = _gain(start, alpha_crown_bounds(n2, lo_t, hi_t, start, steps=20, step_dtype="float64")) / s
    g32 = _gain(start, alpha_crown_bounds(n2, lo_t, hi_t, start, steps=20, step_dtype="float32")) / s
    assert g64 > 1.0
    assert g32 >= g64 - 1e-3 * (1 + abs(g64)), (g32, g64)


def test_float32_steps_relu_split_verdict_is_scale_free():
    """The outputs times 1e20 (bounds ~1e20, far inside float32's range): float64 steps prove the
    property in 10 domains (0.3 s); float32 steps end ``unknown`` after ~300 domains."""
    s = 1e20
    net, lo, hi, spec = two_disjunct_case(41, 3)
    minima = _minima(41, 3)
    n2 = _last_scaled(net, s)
    rows = [(A, (b + (m - 1e-3)) * s, None) for (A, b), m in zip(spec.disjuncts, minima)]
    lo_t, hi_t = torch.as_tensor(lo), torch.as_tensor(hi)
    status = {}
    for dt in ("float64", "float32"):
        res = relu_split(n2, lo_t, hi_t, rows, crown(n2, lo_t[None], hi_t[None]), deadline=time.monotonic() + 3,
                         config=ReluSplitConfig(step_dtype=dt))
        status[dt] = (res.status, res.domains)
    assert status["float64"][0] == "unsat"
    assert status["float32"][0] == "unsat", status


def test_alpha_crown_rebound_refuses_a_wrong_step_dtype_when_made():
    """milp_refine and alpha_crown_bounds (even with steps=0) refuse an unknown name at once;
    alpha_crown_rebound only when the rebound it returns is first called (never with steps=0)."""
    net, lo, hi = _small_case()
    with pytest.raises(InvalidInputError, match="step dtype"):
        alpha_crown_rebound(net, lo, hi, (np.full(3, -1e9), np.full(3, 1e9)), steps=0, step_dtype="float16")


# ------------------------------------------------------------------ pass now, worth keeping
@pytest.mark.parametrize("scale, where", [(1e39, "weights"), (1e-40, "weights"), (1e39, "box"), (1e20, "both")])
def test_float32_steps_stay_sound_beyond_float32_range(scale, where):
    """Weights or inputs that overflow (1e39) or underflow (1e-40) float32: the float32 steps'
    blocks hold inf or 0, yet every bound is a float64 padded one: finite or not NaN, holds at
    sampled inputs, and never looser than CROWN's."""
    net, lo, hi = _small_case()
    if where in ("weights", "both"):
        net = Network([Dense(L.weight * scale, L.bias * scale) if isinstance(L, Dense) else L for L in net.layers],
                      net.input_shape)
    if where in ("box", "both"):
        lo, hi = lo * scale, hi * scale
    lo_t, hi_t = torch.as_tensor(lo)[None], torch.as_tensor(hi)[None]
    start = crown(net, lo_t, hi_t)
    got = alpha_crown_bounds(net, lo_t, hi_t, start, steps=10, step_dtype="float32")
    _, z = numpy_forward(net, np.random.default_rng(0).uniform(lo, hi, size=(4000, lo.size)))
    for j, ((l, u), (l0, u0)) in enumerate(zip(got.pre_activation, start.pre_activation)):
        assert l.dtype == torch.float64 and not torch.isnan(l).any() and not torch.isnan(u).any()
        assert torch.all(l >= l0) and torch.all(u <= u0)
        zj = z[j][np.isfinite(z[j]).all(axis=1)]
        assert np.all(zj >= l[0].numpy()) and np.all(zj <= u[0].numpy()), j


@pytest.mark.parametrize("dtype, step_dtype", [(torch.float32, "float64"), (torch.float32, "float32"),
                                               (torch.float64, "float32")])
def test_a_float32_search_with_either_step_dtype(dtype, step_dtype):
    """A float32 search (steps then wider, float64) keeps its own dtype and agrees with float64."""
    net, lo, hi, spec = two_disjunct_case(43, 2)
    minima = _minima(43, 2)
    rows = [(A, b + (m - 0.02), None) for (A, b), m in zip(spec.disjuncts, minima)]
    L, H = torch.as_tensor(lo, dtype=dtype), torch.as_tensor(hi, dtype=dtype)
    b = alpha_crown_bounds(net, L[None], H[None], crown(net, L[None], H[None]), steps=5, step_dtype=step_dtype)
    assert all(t.dtype == dtype for p in b.pre_activation for t in p)
    res = relu_split(net, L, H, rows, b, deadline=time.monotonic() + 10, config=ReluSplitConfig(step_dtype=step_dtype))
    assert res.status == "unsat" and all(0 < p <= 0.02 + 1e-5 for p in res.proven_bound), res


@pytest.mark.parametrize("delta, strict", [(1e-9, False), (1e-9, True), (0.0, False)])
def test_float32_and_float64_steps_agree_a_hair_from_the_boundary(delta, strict):
    """Margin 1e-9, strict or not (proven by both), and exactly 0, not strict (reachable: never
    proven; without a problem the search gives no ``sat``, only never ``unsat``)."""
    net, lo, hi, spec = two_disjunct_case(42, 2)
    minima = _minima(42, 2)
    sp = OutputSpec([(A, b + (m - delta)) for (A, b), m in zip(spec.disjuncts, minima)], 2)
    lo_t, hi_t = torch.as_tensor(lo), torch.as_tensor(hi)
    rows = [(A, b, np.full(A.shape[0], strict)) for A, b in sp.disjuncts]
    got = {dt: relu_split(net, lo_t, hi_t, rows, crown(net, lo_t[None], hi_t[None]),
                          deadline=time.monotonic() + 3, config=ReluSplitConfig(step_dtype=dt))
           for dt in ("float32", "float64")}
    assert got["float32"].status == got["float64"].status, got
    assert (got["float32"].status == "unsat") == (delta > 0), got["float32"]


def test_zero_width_box_with_float32_steps():
    net, lo, hi, spec = two_disjunct_case(41, 3)
    x = torch.as_tensor(lo)
    b = alpha_crown_bounds(net, x[None], x[None], crown(net, x[None], x[None]), steps=5, step_dtype="float32")
    _, z = numpy_forward(net, lo[None])
    for (l, u), zj in zip(b.pre_activation, z):
        assert np.all(l[0].numpy() <= zj[0]) and np.all(zj[0] <= u[0].numpy())
    rows = [(A, b_, None) for A, b_ in spec.disjuncts]
    y, _ = numpy_forward(net, lo[None])
    res = relu_split(net, x, x.clone(), rows, b, deadline=time.monotonic() + 1, config=ReluSplitConfig())
    for closed, (A, b_, _) in zip(res.closed, rows):
        assert not closed or float((y @ A.T - b_).max()) > 0


@pytest.mark.parametrize("bad", [torch.float32, None, "Float32", "float16", 32])
def test_wrong_step_dtypes_are_refused_clearly(bad):
    net, lo, hi = _small_case()
    lo_t, hi_t = torch.as_tensor(lo)[None], torch.as_tensor(hi)[None]
    with pytest.raises(InvalidInputError):
        ReluSplitConfig(step_dtype=bad)
    with pytest.raises(InvalidInputError):
        alpha_crown_bounds(net, lo_t, hi_t, crown(net, lo_t, hi_t), steps=0, step_dtype=bad)
