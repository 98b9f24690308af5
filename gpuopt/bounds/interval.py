"""Interval bounds of any network, layer by layer, smooth layers included.

IBP (:mod:`gpuopt.bounds.ibp`) works on the network's exact linear form, which a network with
Sigmoid, Tanh, Softmax or LogSoftmax layers does not have. This walk bounds every layer's output
over a batch of input boxes directly:

* affine layers (Dense, Conv2d, ConvTranspose2d, ElementwiseAffine, AvgPool2d, Add): centre
  ``m`` and radius ``r`` give ``L m + c -/+ |L| r``, widened by
  :func:`~gpuopt.bounds.base.rounding_pad` of ``|L| (|m| + r) + |c|`` over the terms of an output,
  and by ``E (|m| + r)`` where the stored parameters lie within ``E`` of the source model's
  (:attr:`~gpuopt.network.Network.param_errors`);
* monotone layers (ReLU, max-pooling, Sigmoid, Tanh) and selections (reshapes, Pad, Slice,
  Gather, Transpose, Concat) map the two ends; Sigmoid and Tanh widen them by
  :data:`~gpuopt.check.SMOOTH_EVAL_ERROR` (their float64 evaluation);
* Softmax and LogSoftmax along the last axis: output ``i`` increases with input ``i`` and
  decreases with the others, so with ``L_i(d) = log(1 + sum_{j != i} exp(d_j))``,
  ``log_softmax_i in [-L_i(u_j - l_i), -L_i(l_j - u_i)]`` and ``softmax_i = exp(-L_i)``. ``L`` is
  evaluated as a log-sum-exp (no overflow) and widened by :func:`_lse_error`.
"""

from __future__ import annotations

import math

import torch

from ..check import SMOOTH_EVAL_ERROR, layer_terms
from ..errors import InvalidInputError
from ..layers import (Add, AvgPool2d, Concat, Conv2d, ConvTranspose2d, Dense, ElementwiseAffine, Flatten, Gather,
                      LogSoftmax, MaxPool2d, Pad, ReLU, Reshape, Sigmoid, Slice, Softmax, Tanh, Transpose)
from ..network import Network
from .base import center_radius, nan_to_unbounded, rounding_pad
from .ibp import _ibp_iv

__all__ = ["interval_bounds"]

#: the (log-)softmax bounds form their pairwise differences in chunks of at most this many entries
CHUNK_ELEMENTS = 1 << 22

_LINEAR = (Dense, Conv2d, ConvTranspose2d, ElementwiseAffine, AvgPool2d)
_MONOTONE = (ReLU, MaxPool2d, Flatten, Reshape, Pad, Slice, Gather, Transpose)


def _lse_error(d_abs_max: torch.Tensor, lse: torch.Tensor, n: int) -> torch.Tensor:
    """A bound on the error of a float64 ``log(1 + sum_j exp(d_j))`` over ``n`` terms computed as
    ``M + log(sum exp(d_j - M))``: the differences round at ``u |d|`` each, the exponentials and
    the log at :data:`SMOOTH_EVAL_ERROR` (relative, a few ulps), the sum at ``gamma_n``, and the
    final addition at ``u |lse|``; doubled."""
    u = 2.0 ** -53
    g = (n + 4) * u / (1 - (n + 4) * u)
    return 2 * (4 * u * d_abs_max + 2 * u * lse.abs() + g + SMOOTH_EVAL_ERROR * (2 + math.log(n)))


def _softmax_bounds(lo: torch.Tensor, hi: torch.Tensor, log: bool):
    """``(lower, upper)`` of (log-)softmax along the last axis over ``[lo, hi]``; the ``n x n``
    differences are formed for a chunk of outputs at a time (at most :data:`CHUNK_ELEMENTS`)."""
    n = lo.shape[-1]
    shape = lo.shape
    lo, hi = lo.reshape(-1, n), hi.reshape(-1, n)
    bad = ~(torch.isfinite(lo).all(dim=-1, keepdim=True) & torch.isfinite(hi).all(dim=-1, keepdim=True))
    lo_f = torch.nan_to_num(lo, nan=0.0, posinf=0.0, neginf=0.0)
    hi_f = torch.nan_to_num(hi, nan=0.0, posinf=0.0, neginf=0.0)
    rows = max(1, CHUNK_ELEMENTS // max(1, lo.shape[0] * n))
    lows, highs = [], []
    for i0 in range(0, n, rows):
        out = torch.arange(i0, min(n, i0 + rows), device=lo.device)
        own = out[:, None] == torch.arange(n, device=lo.device)[None, :]  # (r, n): term i of output i
        zero = torch.zeros(lo.shape[0], out.numel(), 1, dtype=lo.dtype, device=lo.device)

        def lse(d):  # d[b, i, j]: the exponent of term j for output i; output i's own term is exp(0)
            d = d.masked_fill(own, 0.0)
            val = torch.logsumexp(torch.cat([zero, d.masked_fill(own, -math.inf)], dim=-1), dim=-1)
            return val, _lse_error(d.abs().amax(dim=-1), val, n)

        big, e_big = lse(hi_f[:, None, :] - lo_f[:, out, None])  # u_j - l_i: the lower end's L
        small, e_small = lse(lo_f[:, None, :] - hi_f[:, out, None])  # l_j - u_i: the upper end's L
        lows.append(-(big + e_big))
        highs.append(-(small - e_small))
    low, high = torch.cat(lows, dim=-1), torch.cat(highs, dim=-1)
    if log:
        low = torch.where(bad, torch.full_like(low, -math.inf), low)
        high = torch.where(bad, torch.zeros_like(high), torch.minimum(high, torch.zeros_like(high)))
    else:
        # exp is within a few ulps relative, and below the normal range within half a subnormal
        # absolutely: both covered by the absolute 1e-300
        low = torch.clamp(torch.exp(low) * (1 - SMOOTH_EVAL_ERROR) - 1e-300, min=0.0)
        high = torch.clamp(torch.exp(high) * (1 + SMOOTH_EVAL_ERROR) + 1e-300, max=1.0)
        low, high = torch.where(bad, torch.zeros_like(low), low), torch.where(bad, torch.ones_like(high), high)
    return low.reshape(shape), high.reshape(shape)


def _linear_bounds(layer, params, errors, lo, hi):
    mid, rad = center_radius(lo, hi)
    mag = mid.abs() + rad
    w_abs = params[0].abs() if params else None
    if isinstance(layer, AvgPool2d):
        m, r, s = layer.apply((), mid), layer.apply((), rad), layer.apply((), mag)
    else:
        m = layer.apply(params, mid)
        r = layer.apply((w_abs, torch.zeros_like(params[1])), rad)
        s = layer.apply((w_abs, params[1].abs()), mag)
    pad = rounding_pad(s, layer_terms(layer))
    if errors is not None:
        pad = pad + layer.apply(errors, mag) * (1 + 1e-12)
    return nan_to_unbounded(m - r - pad, m + r + pad)


@torch.no_grad()
def interval_bounds(network: Network, lower, upper) -> tuple[torch.Tensor, torch.Tensor]:
    """Sound ``(lower, upper)`` of ``network``'s output, each ``(batch, n_out)``, over the boxes
    ``[lower, upper]`` (each ``(batch, *input_shape)`` or ``(batch, input_size)``), in float64 on
    the CPU; see the module docstring."""
    lo, hi = _ibp_iv(network, lower, upper)
    lo, hi = lo.to("cpu", torch.float64), hi.to("cpu", torch.float64)
    params = network._params(torch.device("cpu"), torch.float64)
    errors = network.param_errors or (None,) * len(network.layers)
    vals = {-1: (lo, hi)}
    for i, (layer, ins) in enumerate(zip(network.layers, network.inputs)):
        los, his = [vals[j][0] for j in ins], [vals[j][1] for j in ins]
        p = params[i]
        if isinstance(layer, _LINEAR):
            err = None if errors[i] is None else tuple(torch.tensor(a, dtype=torch.float64) for a in errors[i])
            out = _linear_bounds(layer, p, err, los[0], his[0])
        elif isinstance(layer, Add):
            mids, rads = zip(*(center_radius(a, b) for a, b in zip(los, his)))
            m, r = sum(mids), sum(rads)
            pad = rounding_pad(sum(a.abs() for a in mids) + r, len(ins))
            out = (m - r - pad, m + r + pad)
        elif isinstance(layer, _MONOTONE + (Concat,)):
            out = (layer.apply(p, *los), layer.apply(p, *his))
        elif isinstance(layer, (Sigmoid, Tanh)):
            out = (layer.apply(p, los[0]) - SMOOTH_EVAL_ERROR, layer.apply(p, his[0]) + SMOOTH_EVAL_ERROR)
        elif isinstance(layer, (Softmax, LogSoftmax)):
            out = _softmax_bounds(los[0], his[0], isinstance(layer, LogSoftmax))
        else:  # pragma: no cover - every layer type is handled above
            raise InvalidInputError(f"interval bounds do not support layer {type(layer).__name__}")
        vals[i] = out
        for j in network._free_after[i]:
            vals.pop(j, None)
    lo, hi = vals[len(network.layers) - 1]
    return lo.reshape(lo.shape[0], -1), hi.reshape(hi.shape[0], -1)
