"""CROWN for chains with Sigmoid and Tanh layers: linear relaxations of smooth activations.

A chain of affine layers (Dense, Conv2d, ElementwiseAffine, AvgPool2d; Flatten and Reshape are
the identity) and elementwise activations (ReLU, Sigmoid, Tanh) is written as blocks
``z_0 = M_0 x + c_0``, ``h_j = f_j(z_j)``, ``z_{j+1} = M_{j+1} h_j + c_{j+1}``
(:func:`smooth_chain`), one block per affine layer: two consecutive ones are joined by the
identity (its relaxation exact) rather than composed, which would round; a chain ending in an
activation gets an identity block after it. Every
activation is bracketed on its pre-activation bounds ``[l, u]`` by two lines,
``aL z + bL <= f(z) <= aU z + bU``, and the backward pass of :func:`gpuopt.bounds.crown._backward`
bounds each layer's neurons in turn and then the spec rows (a coefficient ``a >= 0`` on ``h``
takes the lower line, ``a < 0`` the upper one). For ``f`` = sigmoid or tanh, convex on
``z <= 0`` and concave on ``z >= 0``:

* ``u <= 0``: the chord (above) and the tangent at the midpoint (below);
* ``l >= 0``: the chord (below) and the tangent at the midpoint (above);
* ``l < 0 < u``: above, the tangent at a ``d`` in ``[0, u]``, raised where needed to pass
  ``(l, f(l))``: it is above ``f`` on the concave side, and on ``[l, 0]`` above the chord from
  ``(l, f(l))`` to ``(0, f(0))``, which is above ``f``; ``d`` is the smallest point of ``[0, u]``
  whose tangent already passes ``(l, f(l))`` (bisection; ``u`` if none does). Below,
  symmetrically, the tangent at a ``d`` in ``[l, 0]`` lowered to pass ``(u, f(u))``. Each is
  kept where it is tighter on average over ``[l, u]`` (at the midpoint) than the parallel line
  below; for wide intervals the flat lines are;
* otherwise, and wherever a bound is not finite: the two lines of slope
  ``lambda = min(f'(l), f'(u))``
  through ``(l, f(l))`` (below) and ``(u, f(u))`` (above). ``f'`` decreases in ``|z|``, so
  ``f' >= lambda`` on ``[l, u]`` and ``f(z) - f(l) >= lambda (z - l)``, ``f(u) - f(z) >=
  lambda (u - z)``.

Floating point: ``f`` is evaluated within ``E`` = :data:`~gpuopt.check.SMOOTH_EVAL_ERROR`, so
``f'`` (``s (1 - s)``, ``1 - t^2``) within ``2.01 E`` and a chord's slope within ``(2 E + 4u |f(u)
- f(l)|) / (u - l)``. The slopes are the computed ones; each intercept is moved outwards by what
those errors can cost on ``[l, u]``: ``E`` for the value, the slope's error times ``u - l``, and
``16 u (1 + |slope| (|l| + |u|) + |f|)`` for forming the intercept (``u`` the unit roundoff);
``lambda`` is lowered by ``4 E`` first. The lines then hold for the exact activation. The
backward pass pads its own rounding as in :mod:`gpuopt.bounds.crown`, with ``|h| <= max(|f(l)|,
|f(u)|) + E``.
"""

from __future__ import annotations

import math
import time

import numpy as np
import scipy.sparse as sp
import torch

from ..check import SMOOTH_EVAL_ERROR
from ..errors import InvalidInputError
from ..layers import AvgPool2d, Conv2d, Dense, ElementwiseAffine, Flatten, ReLU, Reshape, Sigmoid, Tanh
from ..network import AffineBlock, BlockChain, Network
from .base import center_radius, strict_adjust
from .crown import _backward, _relaxation, adam_ascent, tighten_layer

__all__ = ["SmoothChain", "smooth_chain", "smooth_relaxation", "smooth_disjunct_lower_bounds"]

_AFFINE = (Dense, Conv2d, ElementwiseAffine, AvgPool2d)
_ACTIVATIONS = {ReLU: "relu", Sigmoid: "sigmoid", Tanh: "tanh"}
_U = 2.0 ** -53


class SmoothChain:
    """``blocks`` (a :class:`~gpuopt.network.BlockChain` of plain affine blocks, one per affine
    layer) and ``activations`` (``"relu"``, ``"sigmoid"``, ``"tanh"`` or ``"identity"`` between
    two affine layers, one between consecutive blocks)."""

    def __init__(self, blocks: list[AffineBlock], activations: list[str]):
        self.chain = BlockChain(blocks)
        self.activations = tuple(activations)
        self.n_terms = blocks[0].matrix.shape[1] + sum(b.matrix.shape[0] for b in blocks)


def smooth_chain(network: Network) -> SmoothChain | None:
    """The network as a :class:`SmoothChain`, or None where it is not one: a graph, another
    layer type, parameters known only within errors (``param_errors``), or no smooth activation
    at all (the piecewise linear stages handle those). Cached on the network."""
    cache = network._param_cache
    if "smooth_chain" in cache:
        return cache["smooth_chain"]
    chain = None
    reads_previous = all(tuple(ins) == (i - 1,) for i, ins in enumerate(network.inputs))
    if (reads_previous and network.param_errors is None
            and any(isinstance(layer, (Sigmoid, Tanh)) for layer in network.layers)):
        chain = _build_chain(network)
    cache["smooth_chain"] = chain
    return chain


def _build_chain(network: Network) -> SmoothChain | None:
    """Every affine layer its own block (consecutive ones are joined by an exact ``identity``
    activation: composing their matrices would round, and the bounds would then be those of a
    slightly different network); Flatten and Reshape are no step."""
    blocks, activations = [], []
    n = network.input_size
    pending = None  # the affine layer read last, not yet followed by an activation
    for i, layer in enumerate(network.layers):
        if isinstance(layer, (Flatten, Reshape)):
            continue
        if isinstance(layer, _AFFINE):
            lm = layer.operator(network.input_shapes(i)[0])
            if lm is None or len(lm.matrices) != 1 or lm.matrix_errors is not None:
                return None
            if pending is not None:
                blocks.append(pending)
                activations.append("identity")
            pending = AffineBlock(lm.matrices[0].tocsr(), np.asarray(lm.bias, dtype=np.float64))
            n = pending.matrix.shape[0]
            continue
        kind = _ACTIVATIONS.get(type(layer))
        if kind is None:
            return None
        blocks.append(pending if pending is not None else AffineBlock(sp.identity(n, format="csr"), np.zeros(n)))
        activations.append(kind)
        pending = None
    blocks.append(pending if pending is not None else AffineBlock(sp.identity(n, format="csr"), np.zeros(n)))
    return SmoothChain(blocks, activations)


def _activation(kind: str, z: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(z) if kind == "sigmoid" else torch.tanh(z)


def _derivative(kind: str, f: torch.Tensor) -> torch.Tensor:
    return f * (1 - f) if kind == "sigmoid" else 1 - f * f


def _intercept_pad(slope: torch.Tensor, l: torch.Tensor, u: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """What forming ``value - slope * point`` in float64 can cost, generously."""
    return 16 * _U * (1 + slope.abs() * l.abs() + slope.abs() * u.abs() + value.abs())


def smooth_relaxation(kind: str, l: torch.Tensor, u: torch.Tensor):
    """``(aL, aU, bU, bL)``: lines with ``aL z + bL <= f(z) <= aU z + bU`` for ``z`` in
    ``[l, u]``, for the exact activation ``kind`` (see the module docstring), each ``(B, n)``, in
    the order :func:`gpuopt.bounds.crown._backward` reads them: tangents at the midpoint of a
    convex or concave interval, at the bisected points across the inflection point (each line
    kept where it beats the parallel one at the midpoint)."""
    mixed, m, d_up, d_lo = _default_points(kind, l, u)
    aL, aU, bU, bL = relaxation_at(kind, l, u, d_up, d_lo)
    if bool(mixed.any()):  # where the parallel lines are tighter at the midpoint, they stay
        pL, pU, qU, qL = relaxation_at(kind, l, u, d_up, d_lo, parallel=True)
        up = mixed & (pU * m + qU < aU * m + bU)
        lo = mixed & (pL * m + qL > aL * m + bL)
        aU, bU = torch.where(up, pU, aU), torch.where(up, qU, bU)
        aL, bL = torch.where(lo, pL, aL), torch.where(lo, qL, bL)
    return aL, aU, bU, bL


def _default_points(kind: str, l: torch.Tensor, u: torch.Tensor):
    """``(mixed, midpoint, d_up, d_lo)``: where ``[l, u]`` crosses the inflection point, its
    midpoint, and :func:`smooth_relaxation`'s tangent points (0 where a bound is not finite)."""
    finite = torch.isfinite(l) & torch.isfinite(u)
    ls, us = torch.where(finite, l, torch.zeros_like(l)), torch.where(finite, u, torch.zeros_like(u))
    mixed = finite & (l < 0) & (u > 0)
    m = ls / 2 + us / 2  # in [l, u], and no overflow
    d_up, d_lo = m, m
    if bool(mixed.any()):
        zero = torch.zeros_like(ls)
        fl, fu = _activation(kind, l), _activation(kind, u)
        d_up = torch.where(mixed, _tangent_point(kind, ls, zero, us, fl, mixed, upper=True), m)
        d_lo = torch.where(mixed, _tangent_point(kind, us, zero, ls, fu, mixed, upper=False), m)
    return mixed, m, d_up, d_lo


def relaxation_at(kind: str, l: torch.Tensor, u: torch.Tensor, d_up: torch.Tensor, d_lo: torch.Tensor, *,
                  parallel: bool = False):
    """The lines of :func:`smooth_relaxation` with the tangent points given: ``d_up`` (the upper
    line's, in ``[l, u]`` on a concave interval, ``[0, u]`` across the inflection point) and
    ``d_lo`` (the lower one's, ``[l, u]`` convex, ``[l, 0]`` across); any such points give sound
    lines (module docstring). ``l``/``u`` broadcast against the points (e.g. ``(B, 1, n)``
    against per-row points ``(B, m, n)``, for optimised lines). ``parallel``: the parallel lines
    everywhere instead."""
    E = SMOOTH_EVAL_ERROR
    shape = torch.broadcast_shapes(l.shape, d_up.shape)
    l, u, d_up, d_lo = (t.expand(shape) for t in (l, u, d_up, d_lo))
    finite = torch.isfinite(l) & torch.isfinite(u)
    ls, us = torch.where(finite, l, torch.zeros_like(l)), torch.where(finite, u, torch.zeros_like(u))
    fl, fu = _activation(kind, l), _activation(kind, u)  # exact at +-inf (0, +-1)
    # parallel lines (every case): slope lambda <= min f' on [l, u]
    lam = torch.minimum(_derivative(kind, fl), _derivative(kind, fu)) - 4 * E
    lam = torch.where(finite, lam.clamp(min=0), torch.zeros_like(lam))
    aL, aU = lam, lam
    bL = fl - E - lam * ls - _intercept_pad(lam, ls, us, fl)
    bU = fu + E - lam * us + _intercept_pad(lam, ls, us, fu)
    if parallel:
        return aL, aU, bU, bL
    width = us - ls
    d_up = torch.where(finite, d_up, torch.zeros_like(d_up))
    d_lo = torch.where(finite, d_lo, torch.zeros_like(d_lo))

    def tangent(d):  # (slope, intercept, shift): the tangent at d, and how far to move it outwards
        fd = _activation(kind, d)
        slope = _derivative(kind, fd)
        shift = E + (2.01 * E + 4 * _U * slope) * width + _intercept_pad(slope, ls, us, fd)
        return slope, fd - slope * d, shift

    # chord and tangent where [l, u] lies on one side of the inflection point 0
    # (a subnormal width would overflow the chord's error bound: the parallel lines are as good there)
    curved = finite & (width > 1e-200) & ((u <= 0) | (l >= 0))
    w = torch.where(curved, width, torch.ones_like(width))
    chord = (fu - fl) / w
    chord_err = (2 * E + 4 * _U * (fu - fl).abs()) / w + 4 * _U * chord.abs()
    chord_shift = E + chord_err * width + _intercept_pad(chord, ls, us, fl)  # the chord through (l, f(l))
    tu, iu, su = tangent(d_up)
    tl, il, sl = tangent(d_lo)
    convex = curved & (u <= 0)  # chord above, tangent below
    concave = curved & (l >= 0) & ~convex  # chord below, tangent above
    aU = torch.where(convex, chord, torch.where(concave, tu, aU))
    bU = torch.where(convex, fl - chord * ls + chord_shift, torch.where(concave, iu + su, bU))
    aL = torch.where(convex, tl, torch.where(concave, chord, aL))
    bL = torch.where(convex, il - sl, torch.where(concave, fl - chord * ls - chord_shift, bL))
    # across the inflection point: the tangents at d_up >= 0 (above) and d_lo <= 0 (below), raised
    # (lowered) to pass the far end's value
    mixed = finite & (l < 0) & (u > 0)
    up = torch.maximum(iu + su, fl + E - tu * ls + _intercept_pad(tu, ls, us, fl))
    lo = torch.minimum(il - sl, fu - E - tl * us - _intercept_pad(tl, ls, us, fu))
    aU, bU = torch.where(mixed, tu, aU), torch.where(mixed, up, bU)
    aL, bL = torch.where(mixed, tl, aL), torch.where(mixed, lo, bL)
    return aL, aU, bU, bL


def _tangent_point(kind: str, point, start, end, f_far, mask, *, upper: bool, steps: int = 40):
    """A tangent point ``d`` between ``start`` (0) and ``end`` for the lines across the inflection
    point, by bisection: for the upper line (``end = u``) the smallest ``d`` whose tangent is at
    least ``f(l)`` at ``point = l``; for the lower one (``end = l``) the ``d`` nearest 0 whose
    tangent is at most ``f(u)`` at ``point = u``; ``end`` where none is. Any ``d`` on the concave
    (convex) side gives a sound upper (lower) line once it is made to pass the far end's value,
    which the caller does; the search only makes the line tight."""
    out = torch.zeros_like(start)
    point, f_far = point[mask], f_far[mask]  # only where it is needed
    a, b = start[mask], end[mask]  # a: not valid; b: valid, or the far end
    for _ in range(steps):
        mid = (a + b) / 2
        fm = _activation(kind, mid)
        gap = fm + _derivative(kind, fm) * (point - mid) - f_far
        ok = gap >= 0 if upper else gap <= 0
        a, b = torch.where(ok, a, mid), torch.where(ok, mid, b)
    out[mask] = b
    return out


def _magnitude(kind: str, l: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """A bound on ``|f(z)|`` for ``z`` in ``[l, u]``."""
    if kind == "relu":
        return u.clamp(min=0)
    if kind == "identity":
        return torch.maximum(l.abs(), u.abs())
    return torch.maximum(_activation(kind, l).abs(), _activation(kind, u).abs()) + SMOOTH_EVAL_ERROR


@torch.no_grad()
def smooth_disjunct_lower_bounds(network: Network, lower, upper, A: torch.Tensor, b: torch.Tensor,
                                 strict: torch.Tensor | None = None, *, steps: int = 0, lr: float = 0.1,
                                 deadline: float | None = None) -> torch.Tensor | None:
    """Sound lower bounds ``(batch, K)`` on each disjunct margin ``max_i (A_k y - b_k)_i`` over
    the boxes ``[lower, upper]`` (``(batch, n_in)`` float64), as
    :func:`~gpuopt.bounds.base.disjunct_lower_bounds` gives them from an output box, here from
    the linear relaxation of the whole network (module docstring). ``A`` is ``(K, M, n_out)`` or
    ``(batch, K, M, n_out)``, padded rows with ``b = +inf``. None when the network is not a
    :func:`smooth_chain`.

    ``steps > 0``: the spec rows' relaxations are then optimised as alpha-CROWN optimises ReLU
    slopes: one pair of tangent points per (box, row, neuron) of every Sigmoid/Tanh layer, moved
    by projected Adam steps (``lr``) within the ranges where any point gives sound lines
    (:func:`relaxation_at`), from :func:`smooth_relaxation`'s; each row keeps the better of the
    two bounds, both evaluated with the rounding pads.

    ``deadline`` (a ``time.monotonic()`` value): once it has passed while the neurons are being
    bounded, the rows get ``-inf`` (nothing proven) at once; no step is taken after it."""
    sc = smooth_chain(network)
    if sc is None:
        return None
    lo = torch.as_tensor(lower, dtype=torch.float64).reshape(len(lower), -1)
    hi = torch.as_tensor(upper, dtype=torch.float64).reshape(len(upper), -1)
    A, b = torch.as_tensor(A, dtype=lo.dtype), torch.as_tensor(b, dtype=lo.dtype)
    _bounds_iv(lower, upper, lo, hi, A, b)
    if lo.shape[1] != network.input_size or A.shape[-1] != network.output_size or (
            A.dim() == 4 and A.shape[0] != lo.shape[0]):
        raise InvalidInputError(f"the boxes must have {network.input_size} inputs, `A` {network.output_size} "
                                f"columns and, if batched, one entry per box; got {tuple(lo.shape)} and {tuple(A.shape)}")
    B = lo.shape[0]
    ops = sc.chain.linear_ops(lo.device, lo.dtype)
    x_mid, x_rad = center_radius(lo, hi)
    hmax = {-1: x_mid.abs() + x_rad}
    if A.dim() == 3:
        A = A.expand(B, *A.shape)
        b = b.expand(B, *b.shape)
    _, K, M, n_out = A.shape
    nothing = torch.full((B, K), -math.inf, dtype=lo.dtype)  # what a cut-short pass proves
    relax, pre = [], []
    last = 0.0  # the time of the last chunk: the next one starts only if as long a one fits
    for k, kind in enumerate(sc.activations):
        n = ops[k].shape[0]
        inf = torch.full((B, n), math.inf, dtype=lo.dtype)
        l, u, finished, last = tighten_layer(k, ops, relax, x_mid, x_rad, sc.n_terms, hmax, -inf, inf,
                                             rows=torch.arange(n), deadline=deadline, last=last)
        if not finished or (deadline is not None and time.monotonic() > deadline):
            return nothing  # past the deadline: the rest would bound the rows on flat lines
        if kind == "identity":  # exact: slopes 1, intercepts 0
            relax.append((torch.ones_like(l), torch.ones_like(l), torch.zeros_like(l)))
        else:
            relax.append(_relaxation(l, u) if kind == "relu" else smooth_relaxation(kind, l, u))
        pre.append((l, u))
        hmax[k] = _magnitude(kind, l, u)
    if deadline is not None and time.monotonic() > deadline:
        return nothing
    lam = A.reshape(B, K * M, n_out)
    rows, _ = _backward(lam, len(ops) - 1, ops, relax, x_mid, x_rad, sc.n_terms, hmax)
    if steps > 0:
        opt = _optimised_rows(sc, lam, ops, relax, pre, x_mid, x_rad, hmax, steps, lr, deadline)
        rows = torch.fmax(rows, opt)
    rows = rows.reshape(B, K, M)
    finite_b = torch.where(torch.isfinite(b), b, torch.zeros_like(b))
    out = rows - b
    out = out - 4 * _U * (rows.abs() + finite_b.abs())
    out = torch.nan_to_num(out, nan=-math.inf, posinf=-math.inf)  # an overflow proves nothing
    return strict_adjust(out, strict).amax(dim=-1)


def _bounds_iv(lower, upper, lo, hi, A, b) -> None:
    if not (getattr(lower, "ndim", 0) == 2 and tuple(getattr(upper, "shape", ())) == tuple(lower.shape)):
        raise InvalidInputError("`lower` and `upper` must be (batch, n_in) arrays of one shape")
    if bool((lo > hi).any()):
        raise InvalidInputError("`lower` must not exceed `upper`: an empty box")
    if A.dim() not in (3, 4) or tuple(b.shape) != tuple(A.shape[:-1]):
        raise InvalidInputError("`A` must be (K, M, n_out) or (batch, K, M, n_out) and `b` its shape without n_out")


def _optimised_rows(sc: SmoothChain, lam, ops, relax, pre, x_mid, x_rad, hmax, steps: int, lr: float,
                    deadline: float | None) -> torch.Tensor:
    """Lower bounds of ``lam @ y`` ``(B, R)`` with per-row tangent points, optimised (see
    :func:`smooth_disjunct_lower_bounds`); the tangent points are parametrised by ``t`` in
    ``[0, 1]``: ``l + t (u - l)`` on a convex or concave interval, ``t u`` (above) and ``t l``
    (below) across the inflection point."""
    B, R = lam.shape[:2]
    L = len(ops) - 1
    smooth = [j for j, kind in enumerate(sc.activations) if kind in ("sigmoid", "tanh")]
    if not smooth:
        return torch.full((B, R), -math.inf, dtype=lam.dtype)
    geo, params = {}, []
    for j in smooth:
        l, u = pre[j]
        mixed, _, d_up, d_lo = _default_points(sc.activations[j], l, u)
        finite = torch.isfinite(l) & torch.isfinite(u)
        ls, us = torch.where(finite, l, torch.zeros_like(l)), torch.where(finite, u, torch.zeros_like(u))
        width = torch.where(us > ls, us - ls, torch.ones_like(us))
        t_up = torch.where(mixed, d_up / torch.where(mixed, us, torch.ones_like(us)), (d_up - ls) / width)
        t_lo = torch.where(mixed, d_lo / torch.where(mixed, ls, -torch.ones_like(ls)), (d_lo - ls) / width)
        geo[j] = (l[:, None, :], u[:, None, :], ls[:, None, :], us[:, None, :], mixed[:, None, :])
        for t in (t_up, t_lo):
            params.append(t.clamp(0.0, 1.0)[:, None, :].expand(B, R, t.shape[1]).clone())

    def lines(ps):
        rel = list(relax)
        for i, j in enumerate(smooth):
            l, u, ls, us, mixed = geo[j]
            t_up, t_lo = ps[2 * i].clamp(0.0, 1.0), ps[2 * i + 1].clamp(0.0, 1.0)
            d_up = torch.where(mixed, t_up * us, ls + t_up * (us - ls))
            d_lo = torch.where(mixed, t_lo * ls, ls + t_lo * (us - ls))
            rel[j] = relaxation_at(sc.activations[j], l, u, d_up, d_lo)
        return rel

    if deadline is not None and time.monotonic() > deadline:  # no step: nothing to evaluate
        return torch.full((B, R), -math.inf, dtype=lam.dtype)
    keep = adam_ascent(lambda ps: _backward(lam, L, ops, lines(ps), x_mid, x_rad, sc.n_terms, hmax, pad=False)[0],
                       params, [lr] * len(params), [(0.0, 1.0)] * len(params), steps, deadline)
    bound, _ = _backward(lam, L, ops, lines(keep), x_mid, x_rad, sc.n_terms, hmax)
    return torch.nan_to_num(bound, nan=-math.inf, posinf=-math.inf, neginf=-math.inf)
