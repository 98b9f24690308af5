"""Forward linear bounds ("forward-mode CROWN"): every neuron bounded by linear functions of the input.

For networks with few inputs and wide layers (a 16-coefficient bias field feeding an image CNN,
input-space branch and bound), a backward CROWN pass per unstable neuron costs (neurons x depth)
matrix products, while carrying linear bounds *forward* costs one product per layer with ``n_in``
columns. Notation as in :mod:`gpuopt.bounds.crown` (blocks ``z_k = M_k h_{k-1} + c_k``). Keep

    L_k x + l_k  <=  z_k  <=  U_k x + u_k        for every x in the box.

An affine block maps them with ``M+ = max(M, 0)``, ``M- = min(M, 0)``:
``L' = M+ L + M- U``, ``l' = M+ l + M- u + c`` (and symmetrically for the upper side). Each block's
bounds are concretised over the box (``L m - |L| r + l``) and intersected with IBP's. At a ReLU
with concrete bounds ``[lo, up]``: inactive gives 0, active (or a passed-through coordinate) the
identity, unstable ``h >= alpha z`` (``alpha = 1`` if ``up >= -lo`` else 0) below and
``h <= s (z - lo)`` above, with ``s >= up / (up - lo)`` (raised past the quotient's rounding by
:func:`~gpuopt.bounds.crown.upper_slope`, so the line stays above the ReLU on ``[lo, up]``); ``s >= 0`` lets it apply to the upper linear bound of ``z``.

Floating point: alongside the bounds, ``A_k`` and ``a_k`` carry the same computation on absolute
values (``A' = |M| A``, ``a' = |M| a + |c|``, plus ``s |lo|`` at a ReLU), which dominates every
intermediate quantity; every concrete bound is widened by
:func:`~gpuopt.bounds.base.rounding_pad` of ``A |x| + a`` with as many terms as the whole
computation has in sequence (inputs, every layer's width, and a few operations per layer).
Underflow loses up to ``eta`` (the least subnormal) per product whatever the magnitudes: that
absolute error, bounded per neuron on its coefficients (``e' = |M| e + eta (n_in + 2)``, times the
slope at a ReLU) and on its constants, adds ``e_coef |x| + e_bias`` (doubled for its own rounding) to
the pad. (Without it, weight products of 1e-322 on inputs of 1e300 gave an empty output interval:
found by review.)
"""

from __future__ import annotations

import time

import torch

from ..network import Network
from .base import Bounds, center_radius, rounding_pad
from .crown import upper_slope
from .ibp import _ibp_iv, ibp

__all__ = ["forward_crown", "prefers_forward", "intermediate_bounds"]

#: boxes are processed in chunks whose coefficient tensors hold at most this many entries
CHUNK_ELEMENTS = 1 << 22


def prefers_forward(network: Network) -> bool:
    """Whether forward bounds are the cheaper way to tighten intermediate bounds: few inputs
    against the widest layer (``32 n_in < max width``)."""
    widths = [op.shape[0] for op in network.linear_ops("cpu", torch.float64)[:-1]]
    return bool(widths) and 32 * network.input_size < max(widths)


def intermediate_bounds(network: Network, lower, upper, *, deadline: float | None = None,
                        prior: Bounds | None = None, outputs=None) -> Bounds:
    """The pre-activation bounds the final spec bound and the MILP build on: CROWN
    (:func:`gpuopt.bounds.crown.crown`), or where forward passes are the cheaper way
    (:func:`prefers_forward`), :func:`forward_crown` tightened by the zonotope
    (:func:`gpuopt.bounds.zonotope.zonotope_bounds`), which keeps the correlations the forward
    bounds lose (on cifar_biasfield's 16-input CNN, output bounds 86 wide instead of 1e5).
    ``prior``: bounds known to hold on these boxes, intersected in. ``outputs`` (indices, default
    all): CROWN bounds only these outputs and the neurons that reach them (see
    :func:`~gpuopt.bounds.crown.crown`); the others keep IBP's bounds."""
    from .crown import _intersect, crown
    from .zonotope import zonotope_bounds

    if prefers_forward(network):
        bounds = forward_crown(network, lower, upper, deadline=deadline)
        if prior is not None:
            bounds = _intersect(bounds, prior)
        return zonotope_bounds(network, lower, upper, prior=bounds, deadline=deadline)
    return crown(network, lower, upper, deadline=deadline, prior=prior, outputs=outputs)


def _signed_parts(op) -> tuple:
    """``(M+, M-)`` of a block as torch matrices (sparse when the block is; cached on the op)."""
    if getattr(op, "_signed", None) is None:
        m = op._matrix
        if op.dense is not None:
            op._signed = (op.dense.clamp(min=0), op.dense.clamp(max=0))
        else:
            op._signed = tuple(op._torch_csr(part, op.bias.dtype, op.bias.device)
                               for part in (m.maximum(0), m.minimum(0)))
    return op._signed


def _batched(M, X: torch.Tensor) -> torch.Tensor:
    """``M @ X_b`` for every ``b`` of ``X`` ``(B, n_in, k)``; returns ``(B, n_out, k)``."""
    B, n_in, k = X.shape
    out = M @ X.permute(1, 0, 2).reshape(n_in, B * k)
    return out.reshape(-1, B, k).permute(1, 0, 2)


@torch.no_grad()
def forward_crown(network: Network, lower, upper, *, deadline: float | None = None) -> Bounds:
    """Forward linear bounds (intersected with IBP) over boxes ``[lower, upper]``
    (``(batch, *input_shape)`` or ``(batch, input_size)``), in the dtype/device of ``lower``.
    Past ``deadline`` (a ``time.monotonic()`` value) the remaining boxes keep IBP's bounds (the
    method is then ``"forward-partial"``)."""
    lo, hi = _ibp_iv(network, lower, upper)
    base = ibp(network, lo, hi)
    lo, hi = lo.reshape(lo.shape[0], -1), hi.reshape(hi.shape[0], -1)
    ops = network.linear_ops(lo.device, lo.dtype)
    n0 = lo.shape[1]
    width = max(op.shape[0] for op in ops)
    chunk = max(1, CHUNK_ELEMENTS // (width * (n0 + 1)))
    pre = [[l.clone(), u.clone()] for l, u in base.pre_activation]
    out = [base.output[0].clone(), base.output[1].clone()]
    method = "forward"
    for start in range(0, lo.shape[0], chunk):
        if deadline is not None and time.monotonic() > deadline:
            method = "forward-partial"
            break
        sl = slice(start, start + chunk)
        bounds = _forward_chunk(ops, lo[sl], hi[sl], [(l[sl], u[sl]) for l, u in pre], (out[0][sl], out[1][sl]))
        for k, (l, u) in enumerate(bounds[:-1]):
            pre[k][0][sl], pre[k][1][sl] = l, u
        out[0][sl], out[1][sl] = bounds[-1]
    return Bounds(tuple((l, u) for l, u in pre), (out[0], out[1]), method)


def _forward_chunk(ops, lo, hi, ibp_pre, ibp_out) -> list:
    B, n0 = lo.shape
    dtype, device = lo.dtype, lo.device
    x_mid, x_rad = center_radius(lo, hi)
    x_mag = x_mid.abs() + x_rad
    n_terms = n0 + sum(op.shape[0] for op in ops) + 8 * len(ops)
    eye = torch.eye(n0, dtype=dtype, device=device).expand(B, n0, n0)
    # h (the input of the next block): L x + l <= h <= U x + u; A, a: absolute-value companions
    L = U = A = eye
    l = u = a = torch.zeros((B, n0), dtype=dtype, device=device)
    # underflow: every product may lose up to eta whatever its magnitude, an absolute error that
    # the relative pads miss; e_coef bounds it on each coefficient of a neuron's rows, e_bias on
    # its constants (both grow through |M|), and a concrete bound moves out by e_coef |x| + e_bias
    eta = torch.finfo(dtype).tiny * torch.finfo(dtype).eps
    e_coef = e_bias = torch.zeros((B, n0), dtype=dtype, device=device)
    x_sum = x_mag.sum(dim=1, keepdim=True)
    results = []
    for k, op in enumerate(ops):
        # the bias vectors ride along as an extra column, lower and upper side by side: [L l | U u]
        pos, neg = _signed_parts(op)
        X = torch.cat([L, l[..., None], U, u[..., None]], -1)
        P, N = _batched(pos, X), _batched(neg, X)
        c = n0 + 1
        Lz = P[..., :c] + N[..., c:]  # M+ [L l] + M- [U u]
        Uz = P[..., c:] + N[..., :c]
        Az = _batched(op.abs_matrix, torch.cat([A, a[..., None]], -1))
        Lz, lz = Lz[..., :-1], Lz[..., -1] + op.bias
        Uz, uz = Uz[..., :-1], Uz[..., -1] + op.bias
        Az, az = Az[..., :-1], Az[..., -1] + op.bias.abs()
        fresh = eta * (op.shape[1] + 2)
        e_coef = op.abs_matvec(e_coef) + fresh
        e_bias = op.abs_matvec(e_bias) + fresh
        pad = rounding_pad((Az @ x_mag[:, :, None]).squeeze(-1) + az, n_terms) + 2 * (e_coef * x_sum + e_bias)
        low = (Lz @ x_mid[:, :, None]).squeeze(-1) - (Lz.abs() @ x_rad[:, :, None]).squeeze(-1) + lz - pad
        up = (Uz @ x_mid[:, :, None]).squeeze(-1) + (Uz.abs() @ x_rad[:, :, None]).squeeze(-1) + uz + pad
        il, iu = ibp_pre[k] if k < len(ops) - 1 else ibp_out
        low, up = torch.maximum(low, il), torch.minimum(up, iu)
        results.append((low, up))
        if k == len(ops) - 1:
            break
        # the activation
        keep = op.passthrough
        active = low >= 0
        if keep is not None:
            active = active | keep
        unstable = (low < 0) & (up > 0) & ~active
        denom = torch.where(unstable, up - low, torch.ones_like(up))
        s = torch.where(unstable, upper_slope(up, denom), active.to(dtype))
        alpha = torch.where(unstable, (up >= -low).to(dtype), active.to(dtype))
        icpt = torch.where(unstable, -s * low, torch.zeros_like(up))
        L, l = Lz * alpha[..., None], lz * alpha
        U, u = Uz * s[..., None], uz * s + icpt
        A, a = Az * torch.maximum(s, alpha)[..., None], az * torch.maximum(s, alpha) + icpt.abs()
        e_coef = e_coef * torch.maximum(s, alpha) + eta
        e_bias = e_bias * torch.maximum(s, alpha) + 2 * eta  # (and the intercept's product)
    return results

