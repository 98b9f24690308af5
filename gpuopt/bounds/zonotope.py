"""Zonotope bounds (DeepZ): every neuron one affine form in the input's and the relaxations' noise symbols.

Forward linear bounds (:mod:`gpuopt.bounds.forward`) keep a lower and an upper linear function of
the input per neuron, and every signed weight mixes the two (``L' = M+ L + M- U``), so on deep
nets the gap between them compounds layer by layer: on VNN-COMP's cifar_biasfield (16 inputs,
a 45,000-ReLU CNN) the output bounds over the property's box are 1e5 wide, where sampled outputs
span about 1.5. A zonotope keeps one form per neuron (Singh et al., "Fast and Effective
Robustness Certification", NeurIPS 2018),

    z  =  c + G e + d,      e in [-1, 1]^m,   |d| <= r,

whose first symbols are the input's (``x = x_mid + diag(x_rad) e_x``) and which gains one symbol
per unstable ReLU, so correlations survive the signed weights. On that box the output bounds are
86 wide (20 and 14 on its two halves, where CROWN's spec rows on these bounds prove one half).

* **Affine block** ``z' = M h + b``: ``c' = M c + b``, ``G' = M G``, ``r' = |M| r``.
* **Concrete bounds**: ``c -/+ (|G| 1 + r)``, intersected with ``prior`` (bounds known to hold,
  e.g. IBP's and the forward bounds); the ReLU below uses the intersection.
* **ReLU** with bounds ``[l, u]``: inactive (``u <= 0``) gives 0, active (or a passed-through
  coordinate) the identity; unstable, ``h = lam z + mu + mu e_new`` with ``lam = u / (u - l)`` and
  ``2 mu >= max((1 - lam) u, -lam l)``. For any ``lam`` in ``[0, 1]`` and ``z`` in ``[l, u]``,
  ``lam z <= relu(z) <= lam z + 2 mu`` (the gap is largest at an end), so ``h`` keeps every value.

Floating point: ``r`` also takes every rounding. With ``s = |c| + |G| 1 + r`` (per neuron), the
computed ``M c + b`` and ``M G`` differ from the exact ones by at most ``gamma (|M| s + |b|)`` summed
over a row's entries, plus what underflow loses, up to ``eta`` (the least subnormal) per product
whatever the magnitudes, so ``r' = |M| r + pad(|M| s + |b|) + eta (n_in + 2)(m + 2)``
(:func:`~gpuopt.bounds.base.rounding_pad` with as many terms as the whole computation has: inputs,
every neuron, a few per layer; ``m`` symbols); the ReLU's scaling adds ``pad(lam s + mu) + eta (m +
2)``, ``mu`` is rounded up, and each concrete bound moves out by ``pad(s)``. (Without the
underflow term, a 12-input net on subnormal inputs had bounds 3% inside its exact range: found by
review.) The starting form holds the input box up to the rounding of its centre and
radius, covered by a pad of ``s`` too.

Memory: a box's form has ``n x m`` entries. When a layer's would exceed ``max_bytes``, the symbols
with the smallest total weight are folded into ``r`` (``r += |G_j|``, a box around them: sound,
looser). Boxes are taken one at a time; past ``deadline`` the boxes and layers not reached keep
``prior`` (the method is then ``"zonotope-partial"``).
"""

from __future__ import annotations

import time

import torch

from ..network import Network
from .base import Bounds, center_radius, rounding_pad
from .crown import _intersect
from .ibp import _ibp_iv, ibp

__all__ = ["zonotope_bounds"]

#: a box's generator matrix is kept under this many bytes, the smallest symbols folded into ``r`` (the
#: products and absolute values take about three times as much at the peak; on cifar_biasfield the
#: largest form, 2,443 symbols over 8,192 neurons, takes 160 MB). Folding is a memory guard, not a
#: speed-up: there, at a cap of 64 MB (512 to 2,048 symbols kept), the spec rows' bounds on eighths
#: of the box fell from about -1 to -100s
MAX_BYTES = 1 << 29


def _fold_smallest(Gt: torch.Tensor, r: torch.Tensor, keep: int, n_terms: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the ``keep`` symbols of largest total weight; fold the others into ``r`` as a box."""
    weight = Gt.abs().sum(1)
    order = torch.argsort(weight, descending=True)
    dropped = Gt[order[keep:]].abs().sum(0)
    r = r + dropped + rounding_pad(dropped + r, n_terms)
    return Gt[order[:keep]], r


@torch.no_grad()
def zonotope_bounds(network: Network, lower, upper, *, prior: Bounds | None = None, deadline: float | None = None,
                    max_bytes: int = MAX_BYTES) -> Bounds:
    """Zonotope bounds over boxes ``[lower, upper]`` (``(batch, *input_shape)`` or ``(batch,
    input_size)``), in the dtype/device of ``lower``, intersected with IBP's and with ``prior``
    (bounds known to hold on these boxes). See the module docstring."""
    lo, hi = _ibp_iv(network, lower, upper)
    base = ibp(network, lo, hi)
    if prior is not None:
        base = _intersect(base, prior)
    lo, hi = lo.reshape(lo.shape[0], -1), hi.reshape(hi.shape[0], -1)
    ops = network.linear_ops(lo.device, lo.dtype)
    n_terms = lo.shape[1] + sum(op.shape[0] for op in ops) + 8 * len(ops)
    pre = [[l.clone(), u.clone()] for l, u in base.pre_activation]
    out = [base.output[0].clone(), base.output[1].clone()]
    method = "zonotope"
    for i in range(lo.shape[0]):
        if not _one_box(ops, lo[i], hi[i], pre, out, i, n_terms, deadline, max_bytes):
            method = "zonotope-partial"
            break
    return Bounds(tuple((l, u) for l, u in pre), (out[0], out[1]), method)


def _one_box(ops, lo, hi, pre, out, i: int, n_terms: int, deadline, max_bytes: int) -> bool:
    """Tighten ``pre``/``out`` (row ``i``) with box ``[lo, hi]``'s zonotope, layer by layer; False
    when the deadline cut it short (the layers not reached keep their bounds)."""
    mid, rad = center_radius(lo, hi)
    dtype = lo.dtype
    nz = rad > 0
    Gt = torch.diag(rad)[nz]  # one symbol per input that varies
    c = mid.clone()
    r = rounding_pad(mid.abs() + rad, 2)
    item = torch.finfo(dtype).bits // 8
    eta = torch.finfo(dtype).tiny * torch.finfo(dtype).eps  # the smallest subnormal
    for k, op in enumerate(ops):
        if deadline is not None and time.monotonic() > deadline:
            return False
        s = c.abs() + Gt.abs().sum(0) + r
        m = Gt.shape[0]
        Gt = op.linear(Gt)  # (M G)^T: each symbol's row through the block, without the bias
        c = op.matvec(c[None])[0]
        # each of the m + 1 entries of a neuron's form sums at most n_in + 1 products, each of
        # which may also lose up to eta to underflow (an absolute error, not relative to |M| s)
        r = op.abs_matvec(r[None])[0] + rounding_pad(op.abs_matvec(s[None])[0] + op.bias.abs(), n_terms) \
            + eta * (op.shape[1] + 2) * (m + 2)
        g = Gt.abs().sum(0)
        if not (torch.isfinite(c).all() and torch.isfinite(g).all() and torch.isfinite(r).all()):
            return True  # overflow: this layer and the later ones keep their bounds
        spread = g + r + rounding_pad(c.abs() + g + r, n_terms)
        last = k == len(ops) - 1
        bl, bu = out if last else pre[k]
        low, up = torch.fmax(c - spread, bl[i]), torch.fmin(c + spread, bu[i])
        bl[i], bu[i] = low, up
        if last:
            return True
        # the ReLU
        active = low >= 0
        if op.passthrough is not None:
            active = active | op.passthrough
        unstable = (low < 0) & (up > 0) & ~active
        one, zero = torch.ones_like(c), torch.zeros_like(c)
        lam = torch.where(unstable, up / torch.where(unstable, up - low, one), active.to(dtype))
        gap = torch.maximum((1 - lam) * up, -lam * low)
        mu = torch.where(unstable, gap * (0.5 + 2 * torch.finfo(dtype).eps) + torch.finfo(dtype).tiny, zero)
        s = c.abs() + g + r
        inactive = ~(active | unstable)
        Gt = Gt * lam
        r = torch.where(inactive, zero, lam * r + torch.where(unstable, rounding_pad(lam * s + mu, n_terms)
                                                             + eta * (Gt.shape[0] + 2), zero))
        c = torch.where(inactive, zero, lam * c + mu)
        idx = torch.nonzero(unstable).flatten()
        fresh = torch.zeros((idx.numel(), Gt.shape[1]), dtype=dtype, device=Gt.device)
        fresh[torch.arange(idx.numel(), device=Gt.device), idx] = mu[idx]
        Gt = torch.cat([Gt[Gt.abs().amax(1) > 0], fresh], 0)
        # the next layer's form must fit: fold the smallest symbols in
        keep = max(1, max_bytes // (item * max(ops[k + 1].shape[0], Gt.shape[1])))
        if Gt.shape[0] > keep:
            Gt, r = _fold_smallest(Gt, r, keep, n_terms)
    return True
