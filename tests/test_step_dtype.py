"""Multiplier steps in float32 (``step_dtype``, :data:`gpuopt.bounds.crown.STEP_DTYPES`): the steps
of alpha-CROWN and of activation splitting only choose the multipliers, whose bound is evaluated in
float64 with the rounding pads. So with float32 steps every bound still holds at sampled inputs,
comes out in float64, is as tight as float64 steps make it up to a small tolerance, and activation
splitting decides as brute-force enumeration does, a thousandth from the boundary; a wrong name is
refused with a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpuopt import relu_split as rs
from gpuopt.bounds.base import center_radius
from gpuopt.bounds.crown import STEP_DTYPES, _relaxation, _term_count, alpha_crown_bounds, crown, step_torch_dtype
from gpuopt.bounds.milp_refine import milp_refine
from gpuopt.errors import InvalidInputError
from gpuopt.relu_split import ReluSplitConfig

from helpers import brute_force_min_margin, check_relu_split, numpy_forward, random_dense_network, two_disjunct_case


def _case(seed):
    rng = np.random.default_rng(900 + seed)
    n_in = int(rng.integers(2, 5))
    net = random_dense_network(rng, n_in, [int(rng.integers(6, 12)) for _ in range(3)], 3)
    lo = rng.normal(size=n_in) - 0.9
    return rng, net, lo, lo + 1.8


@pytest.mark.parametrize("seed", range(6))
def test_alpha_crown_with_float32_steps_holds_at_sampled_inputs_and_matches_float64(seed):
    rng, net, lo, hi = _case(seed)
    lo_t, hi_t = torch.as_tensor(lo)[None], torch.as_tensor(hi)[None]
    start = crown(net, lo_t, hi_t)
    got = {dt: alpha_crown_bounds(net, lo_t, hi_t, start, steps=20, step_dtype=dt) for dt in STEP_DTYPES}
    _, z = numpy_forward(net, rng.uniform(lo, hi, size=(20000, lo.size)))
    for dt, b in got.items():
        for j, (l, u) in enumerate(b.pre_activation):
            assert l.dtype == torch.float64 and u.dtype == torch.float64
            l, u = l[0].numpy(), u[0].numpy()
            assert np.all(z[j] >= l - 1e-12) and np.all(z[j] <= u + 1e-12), (dt, j)
            # never looser than the bounds it started from
            assert np.all(l >= start.pre_activation[j][0][0].numpy()) and np.all(u <= start.pre_activation[j][1][0].numpy())
    for (l32, u32), (l64, u64) in zip(got["float32"].pre_activation, got["float64"].pre_activation):
        scale = 1.0 + torch.maximum(l64.abs(), u64.abs())
        assert torch.all(l32 >= l64 - 1e-3 * scale) and torch.all(u32 <= u64 + 1e-3 * scale)


def _root_batch(net, lo, hi, C, d):
    """Activation splitting's data for ``len(C)`` root domains (one row each) of ``net`` on the box."""
    lo_t, hi_t = torch.as_tensor(lo)[None], torch.as_tensor(hi)[None]
    pre = crown(net, lo_t, hi_t).pre_activation
    ops = net.linear_ops("cpu", torch.float64)
    D = C.shape[0]
    pre_l = [l.expand(D, -1).clone() for l, _ in pre]
    pre_u = [u.expand(D, -1).clone() for _, u in pre]
    sign = [torch.zeros_like(l, dtype=torch.int8) for l in pre_l]
    alpha = [_relaxation(l, u, op.passthrough)[0][:, None, :].clone() for l, u, op in zip(pre_l, pre_u, ops)]
    beta = [torch.zeros_like(a) for a in alpha]
    x_mid, x_rad = center_radius(lo_t, hi_t)
    Ct = torch.as_tensor(C)[:, None, :]
    dt = torch.as_tensor(d)[:, None]
    return (ops, pre_l, pre_u, sign, alpha, beta, Ct, dt, torch.zeros_like(dt, dtype=torch.bool),
            x_mid.expand(D, -1), x_rad.expand(D, -1), _term_count(net, lo_t))


@pytest.mark.parametrize("seed", range(6))
def test_activation_splitting_bound_with_float32_steps_is_float64_sound_and_as_tight(seed):
    rng, net, lo, hi = _case(seed)
    C = rng.normal(size=(5, 3))
    d = 0.1 * rng.normal(size=5)
    args = _root_batch(net, lo, hi, C, d)
    config = ReluSplitConfig()
    out = {}
    for dt in STEP_DTYPES:
        step_ops = None if dt == "float64" else net.linear_ops("cpu", step_torch_dtype(dt))
        bound, alpha, beta, *_ = rs._bound(*args, 30, config, None, step_ops=step_ops)
        assert bound.dtype == torch.float64
        assert all(a.dtype == torch.float64 for a in alpha + beta)
        out[dt] = bound.numpy()
    y, _ = numpy_forward(net, rng.uniform(lo, hi, size=(20000, lo.size)))
    true_min = (y @ C.T - d).min(axis=0)
    for dt, b in out.items():
        assert np.all(b <= true_min + 1e-12), (dt, b, true_min)
    scale = 1.0 + np.abs(out["float64"])
    assert np.all(out["float32"] >= out["float64"] - 1e-3 * scale), out


@pytest.mark.parametrize("seed", range(5))
def test_activation_splitting_with_float32_steps_agrees_with_brute_force(seed):
    net, lo, hi, spec = two_disjunct_case(40 + seed, 3)
    minima = brute_force_min_margin(net, lo, hi, spec).per_disjunct
    for delta in (0.02, 1e-3, -1e-3, -0.02):
        check_relu_split(net, lo, hi, spec, minima, delta, ReluSplitConfig(batch_size=4, step_dtype="float32"))


def test_a_wrong_step_dtype_is_refused_by_name():
    with pytest.raises(InvalidInputError, match="step_dtype"):
        ReluSplitConfig(step_dtype="float16")
    with pytest.raises(InvalidInputError, match="step dtype"):
        step_torch_dtype("bfloat16")
    rng, net, lo, hi = _case(0)
    lo_t, hi_t = torch.as_tensor(lo)[None], torch.as_tensor(hi)[None]
    with pytest.raises(InvalidInputError, match="step dtype"):
        alpha_crown_bounds(net, lo_t, hi_t, crown(net, lo_t, hi_t), steps=2, step_dtype="half")
    pre = [(l[0].numpy(), u[0].numpy()) for l, u in crown(net, lo_t, hi_t).pre_activation]
    with pytest.raises(InvalidInputError, match="step dtype"):
        milp_refine(net.affine_blocks(), pre, lo, hi, method="split", step_dtype="float8")


def test_grad_scale_is_per_problem_and_takes_empty_layers():
    """The largest |g| per problem over every tensor; a layer whose neurons were all pruned (no
    column) adds nothing, and a problem with no gradient at all, or only zeros or non-finite ones,
    gets 1. The CI found the empty layer (a reduction over a zero-size dim) in the refinement."""
    from gpuopt.bounds.crown import grad_scale

    g1 = torch.tensor([[[1.0, -3.0]], [[0.0, 0.0]], [[float("inf"), 1.0]]], dtype=torch.float32)  # (3, 1, 2)
    empty = torch.zeros((3, 1, 0), dtype=torch.float32)
    g2 = torch.tensor([[[2.0]], [[0.0]], [[5.0]]], dtype=torch.float32)
    assert grad_scale([g1, empty, g2], 1).tolist() == [3.0, 1.0, 1.0]
    assert grad_scale([empty], 1).tolist() == [1.0, 1.0, 1.0]
    assert grad_scale([g1, empty], 2).tolist() == [[3.0], [1.0], [1.0]]
