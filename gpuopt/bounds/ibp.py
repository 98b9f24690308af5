"""Interval bound propagation (IBP).

For an affine map ``y = W x + c`` and ``x`` in ``[l, u]`` with centre ``m = (l + u) / 2`` and
radius ``r = (u - l) / 2``, the exact interval hull is ``W m + c -/+ |W| r``. ReLU is monotone, so
``[relu(l), relu(u)]``. Every affine step is widened by :func:`~gpuopt.bounds.base.rounding_pad`
so the bounds stay sound in the working dtype (float32 on a GPU, float64 on the CPU).
Runs batched on whatever device the inputs are on.

A chain (:attr:`~gpuopt.network.Network.is_chain`) is walked layer by layer; any other network
on its affine blocks (:meth:`~gpuopt.network.Network.affine_blocks`), whose passed-through
coordinates keep their interval.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError
from ..network import Conv2d, Dense, ElementwiseAffine, Flatten, Network, ReLU
from .base import Bounds, center_radius, nan_to_unbounded, rounding_pad

__all__ = ["ibp"]


def _ibp_iv(network: Network, lower, upper):
    lower = network.canonical_input(lower)
    upper = network.canonical_input(upper)
    if lower.shape != upper.shape:
        raise InvalidInputError(f"`lower` and `upper` must have the same shape, got {tuple(lower.shape)} and {tuple(upper.shape)}")
    if lower.dtype != upper.dtype:
        upper = upper.to(lower.dtype)
    if upper.device != lower.device:
        raise InvalidInputError("`lower` and `upper` must be on the same device")
    if torch.isnan(lower).any() or torch.isnan(upper).any():
        raise InvalidInputError("`lower`/`upper` contain NaN")
    if not (torch.isfinite(lower).all() and torch.isfinite(upper).all()):
        raise InvalidInputError("`lower`/`upper` must be finite (an infinite end gives no bound)")
    if (lower > upper).any():
        raise InvalidInputError("`lower` must be <= `upper` everywhere (the box is empty)")
    return lower, upper


@torch.no_grad()
def ibp(network: Network, lower, upper) -> Bounds:
    """IBP bounds of ``network`` over the boxes ``[lower, upper]`` (each ``(batch, *input_shape)``
    or ``(batch, input_size)``), in the dtype and on the device of ``lower``."""
    lo, hi = _ibp_iv(network, lower, upper)
    if not network.is_chain:
        return _ibp_blocks(network, lo, hi)
    params = network._params(lo.device, lo.dtype)
    pre = []
    for layer, p in zip(network.layers, params):
        if isinstance(layer, ReLU):
            pre.append((lo.reshape(lo.shape[0], -1), hi.reshape(hi.shape[0], -1)))
            lo, hi = lo.clamp(min=0), hi.clamp(min=0)
            continue
        if isinstance(layer, Flatten):
            lo, hi = lo.reshape(lo.shape[0], -1), hi.reshape(hi.shape[0], -1)
            continue
        mid, rad = center_radius(lo, hi)
        mag = mid.abs() + rad
        live = (mag != 0).to(mag.dtype)  # products with a zero factor are exact zeros
        if isinstance(layer, Dense):
            w, c = p
            aw = w.abs()
            mid, rad = F.linear(mid, w, c), F.linear(rad, aw)
            nz = 2 * F.linear(live, (w != 0).to(w.dtype), (c != 0).to(c.dtype))  # mid and rad products
            pad = rounding_pad(F.linear(mag, aw, c.abs()), w.shape[1], nz)
        elif isinstance(layer, Conv2d):
            w, c = p
            aw = w.abs()
            pt, pl, pb, pr = layer.padding
            conv = lambda t, ww, cc: F.conv2d(F.pad(t, (pl, pr, pt, pb)), ww, cc,  # noqa: E731
                                              stride=layer.stride, dilation=layer.dilation)
            mid, rad = conv(mid, w, c), conv(rad, aw, None)
            nz = 2 * conv(live, (w != 0).to(w.dtype), (c != 0).to(c.dtype))
            pad = rounding_pad(conv(mag, aw, c.abs()), math.prod(w.shape[1:]), nz)
        elif isinstance(layer, ElementwiseAffine):
            s, t = p
            mid, rad = mid * s + t, rad * s.abs()
            pad = rounding_pad(mag * s.abs() + t.abs(), 1, 2 * live * (s != 0) + (t != 0))
        else:  # pragma: no cover - Network rejects other types
            raise InvalidInputError(f"IBP does not support layer {type(layer).__name__}")
        lo, hi = nan_to_unbounded(mid - rad - pad, mid + rad + pad)
    return Bounds(tuple(pre), (lo.reshape(lo.shape[0], -1), hi.reshape(hi.shape[0], -1)), "ibp")


def _ibp_blocks(network: Network, lo: torch.Tensor, hi: torch.Tensor) -> Bounds:
    """IBP on the affine blocks: ``z = M h + c`` gives ``M m + c -/+ |M| r`` padded for ``n`` terms
    (``n`` the number of columns), then ReLU on the ReLU coordinates."""
    lo, hi = lo.reshape(lo.shape[0], -1), hi.reshape(hi.shape[0], -1)
    pre = []
    ops = network.linear_ops(lo.device, lo.dtype)
    for k, op in enumerate(ops):
        if k:
            l, u = pre[-1]
            keep = ops[k - 1].passthrough
            lo, hi = l.clamp(min=0), u.clamp(min=0)
            if keep is not None:
                lo, hi = torch.where(keep, l, lo), torch.where(keep, u, hi)
        mid, rad = center_radius(lo, hi)
        mag = mid.abs() + rad
        zmid = op.matvec(mid)
        zrad = op.abs_matvec(rad)
        pad = rounding_pad(op.abs_matvec(mag) + op.bias.abs(), op.shape[1] + 1)
        pre.append(nan_to_unbounded(zmid - zrad - pad, zmid + zrad + pad))
    out = pre.pop()
    return Bounds(tuple(pre), out, "ibp")
