"""CROWN for chains with Sigmoid and Tanh layers: linear relaxations of smooth activations.

A chain of affine layers (Dense, Conv2d, ElementwiseAffine, AvgPool2d; Flatten and Reshape are
the identity) and elementwise activations (ReLU, Sigmoid, Tanh) is written as blocks
``z_0 = M_0 x + c_0``, ``h_j = f_j(z_j)``, ``z_{j+1} = M_{j+1} h_j + c_{j+1}``
(:func:`smooth_chain`; a chain ending in an activation gets an identity block after it). Every
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

import numpy as np
import scipy.sparse as sp
import torch

from ..check import SMOOTH_EVAL_ERROR
from ..layers import AvgPool2d, Conv2d, Dense, ElementwiseAffine, Flatten, ReLU, Reshape, Sigmoid, Tanh
from ..network import AffineBlock, BlockChain, Network
from .base import center_radius, strict_adjust
from .crown import _backward, _relaxation, tighten_layer

__all__ = ["SmoothChain", "smooth_chain", "smooth_relaxation", "smooth_disjunct_lower_bounds"]

_AFFINE = (Dense, Conv2d, ElementwiseAffine, AvgPool2d)
_ACTIVATIONS = {ReLU: "relu", Sigmoid: "sigmoid", Tanh: "tanh"}
_U = 2.0 ** -53


class SmoothChain:
    """``blocks`` (a :class:`~gpuopt.network.BlockChain` of plain affine blocks) and
    ``activations`` (``"relu"``, ``"sigmoid"`` or ``"tanh"``, one between consecutive blocks)."""

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
    blocks, activations = [], []
    n = network.input_size
    mat, bias = sp.identity(n, format="csr"), np.zeros(n)
    for i, layer in enumerate(network.layers):
        if isinstance(layer, (Flatten, Reshape)):
            continue
        if isinstance(layer, _AFFINE):
            shape = network.input_shapes(i)[0]
            lm = layer.operator(shape)
            if lm is None or len(lm.matrices) != 1 or lm.matrix_errors is not None:
                return None
            M = lm.matrices[0].tocsr()
            mat, bias = (M @ mat).tocsr(), M @ bias + np.asarray(lm.bias, dtype=np.float64)
            continue
        kind = _ACTIVATIONS.get(type(layer))
        if kind is None:
            return None
        blocks.append(AffineBlock(mat, np.asarray(bias, dtype=np.float64)))
        activations.append(kind)
        n = mat.shape[0]
        mat, bias = sp.identity(n, format="csr"), np.zeros(n)
    blocks.append(AffineBlock(mat, np.asarray(bias, dtype=np.float64)))
    return SmoothChain(blocks, activations)


def _activation(kind: str, z: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(z) if kind == "sigmoid" else torch.tanh(z)


def _derivative(kind: str, f: torch.Tensor) -> torch.Tensor:
    return f * (1 - f) if kind == "sigmoid" else 1 - f * f


def _intercept_pad(slope: torch.Tensor, l: torch.Tensor, u: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """What forming ``value - slope * point`` in float64 can cost, generously."""
    return 16 * _U * (1 + slope.abs() * (l.abs() + u.abs()) + value.abs())


def smooth_relaxation(kind: str, l: torch.Tensor, u: torch.Tensor):
    """``(aL, aU, bU, bL)``: lines with ``aL z + bL <= f(z) <= aU z + bU`` for ``z`` in
    ``[l, u]``, for the exact activation ``kind`` (see the module docstring), each ``(B, n)``, in
    the order :func:`gpuopt.bounds.crown._backward` reads them."""
    E = SMOOTH_EVAL_ERROR
    finite = torch.isfinite(l) & torch.isfinite(u)
    ls, us = torch.where(finite, l, torch.zeros_like(l)), torch.where(finite, u, torch.zeros_like(u))
    fl, fu = _activation(kind, l), _activation(kind, u)  # exact at +-inf (0, +-1)
    # parallel lines (every case): slope lambda <= min f' on [l, u]
    lam = torch.minimum(_derivative(kind, fl), _derivative(kind, fu)) - 4 * E
    lam = torch.where(finite, lam.clamp(min=0), torch.zeros_like(lam))
    aL, aU = lam, lam.clone()
    bL = fl - E - lam * ls - _intercept_pad(lam, ls, us, fl)
    bU = fu + E - lam * us + _intercept_pad(lam, ls, us, fu)
    # chord and tangent where [l, u] lies on one side of the inflection point 0
    width = us - ls
    curved = finite & (width > 0) & ((u <= 0) | (l >= 0))
    w = torch.where(curved, width, torch.ones_like(width))
    chord = (fu - fl) / w
    chord_err = (2 * E + 4 * _U * (fu - fl).abs()) / w + 4 * _U * chord.abs()
    m = (ls + us) / 2
    fm = _activation(kind, m)
    tangent = _derivative(kind, fm)
    tangent_err = 2.01 * E + 4 * _U * tangent
    # the chord through (l, f(l)); the tangent through (m, f(m)), each moved outwards
    chord_shift = E + chord_err * width + _intercept_pad(chord, ls, us, fl)
    tangent_shift = E + tangent_err * width + _intercept_pad(tangent, ls, us, fm)
    convex = curved & (u <= 0)  # chord above, tangent below
    concave = curved & (l >= 0) & ~convex  # chord below, tangent above
    aU = torch.where(convex, chord, torch.where(concave, tangent, aU))
    bU = torch.where(convex, fl - chord * ls + chord_shift,
                     torch.where(concave, fm - tangent * m + tangent_shift, bU))
    aL = torch.where(convex, tangent, torch.where(concave, chord, aL))
    bL = torch.where(convex, fm - tangent * m - tangent_shift,
                     torch.where(concave, fl - chord * ls - chord_shift, bL))
    # across the inflection point: tangents at d >= 0 (above) and d <= 0 (below), each raised
    # (lowered) to pass the far end's value
    mixed = finite & (l < 0) & (u > 0)
    if bool(mixed.any()):
        zero = torch.zeros_like(ls)
        d_up = _tangent_point(kind, ls, zero, us, fl, mixed, upper=True)
        d_lo = _tangent_point(kind, us, zero, ls, fu, mixed, upper=False)
        for d, upper in ((d_up, True), (d_lo, False)):
            fd = _activation(kind, d)
            slope = _derivative(kind, fd)
            shift = E + (2.01 * E + 4 * _U * slope) * width + _intercept_pad(slope, ls, us, fd)
            # each line replaces the parallel one where it is lower (higher) at the midpoint, i.e.
            # on average over [l, u]: for wide intervals the flat lines are the tighter
            if upper:  # above the tangent at d, and through (l, f(l))
                end = fl + E - slope * ls + _intercept_pad(slope, ls, us, fl)
                icpt = torch.maximum(fd - slope * d + shift, end)
                better = mixed & (slope * m + icpt < aU * m + bU)
                aU, bU = torch.where(better, slope, aU), torch.where(better, icpt, bU)
            else:  # below the tangent at d, and through (u, f(u))
                end = fu - E - slope * us - _intercept_pad(slope, ls, us, fu)
                icpt = torch.minimum(fd - slope * d - shift, end)
                better = mixed & (slope * m + icpt > aL * m + bL)
                aL, bL = torch.where(better, slope, aL), torch.where(better, icpt, bL)
    return aL, aU, bU, bL


def _tangent_point(kind: str, point, start, end, f_far, mask, *, upper: bool, steps: int = 40):
    """A tangent point ``d`` between ``start`` (0) and ``end`` for the lines across the inflection
    point, by bisection: for the upper line (``end = u``) the smallest ``d`` whose tangent is at
    least ``f(l)`` at ``point = l``; for the lower one (``end = l``) the ``d`` nearest 0 whose
    tangent is at most ``f(u)`` at ``point = u``; ``end`` where none is. Any ``d`` on the concave
    (convex) side gives a sound upper (lower) line once it is made to pass the far end's value,
    which the caller does; the search only makes the line tight."""
    a = torch.where(mask, start, torch.zeros_like(start))  # not valid
    b = torch.where(mask, end, torch.zeros_like(end))  # valid, or the far end
    for _ in range(steps):
        mid = (a + b) / 2
        fm = _activation(kind, mid)
        gap = fm + _derivative(kind, fm) * (point - mid) - f_far
        ok = gap >= 0 if upper else gap <= 0
        a, b = torch.where(ok, a, mid), torch.where(ok, mid, b)
    return b


def _magnitude(kind: str, l: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """A bound on ``|f(z)|`` for ``z`` in ``[l, u]``."""
    if kind == "relu":
        return u.clamp(min=0)
    return torch.maximum(_activation(kind, l).abs(), _activation(kind, u).abs()) + SMOOTH_EVAL_ERROR


@torch.no_grad()
def smooth_disjunct_lower_bounds(network: Network, lower, upper, A: torch.Tensor, b: torch.Tensor,
                                 strict: torch.Tensor | None = None) -> torch.Tensor | None:
    """Sound lower bounds ``(batch, K)`` on each disjunct margin ``max_i (A_k y - b_k)_i`` over
    the boxes ``[lower, upper]`` (``(batch, n_in)`` float64), as
    :func:`~gpuopt.bounds.base.disjunct_lower_bounds` gives them from an output box, here from
    the linear relaxation of the whole network (module docstring). ``A`` is ``(K, M, n_out)`` or
    ``(batch, K, M, n_out)``, padded rows with ``b = +inf``. None when the network is not a
    :func:`smooth_chain`."""
    sc = smooth_chain(network)
    if sc is None:
        return None
    lo = torch.as_tensor(lower, dtype=torch.float64).reshape(len(lower), -1)
    hi = torch.as_tensor(upper, dtype=torch.float64).reshape(len(upper), -1)
    A, b = torch.as_tensor(A, dtype=lo.dtype), torch.as_tensor(b, dtype=lo.dtype)
    B = lo.shape[0]
    ops = sc.chain.linear_ops(lo.device, lo.dtype)
    x_mid, x_rad = center_radius(lo, hi)
    hmax = {-1: x_mid.abs() + x_rad}
    relax = []
    for k, kind in enumerate(sc.activations):
        n = ops[k].shape[0]
        inf = torch.full((B, n), math.inf, dtype=lo.dtype)
        l, u, _, _ = tighten_layer(k, ops, relax, x_mid, x_rad, sc.n_terms, hmax, -inf, inf,
                                   rows=torch.arange(n))
        relax.append(_relaxation(l, u) if kind == "relu" else smooth_relaxation(kind, l, u))
        hmax[k] = _magnitude(kind, l, u)
    if A.dim() == 3:
        A = A.expand(B, *A.shape)
        b = b.expand(B, *b.shape)
    _, K, M, n_out = A.shape
    rows, _ = _backward(A.reshape(B, K * M, n_out), len(ops) - 1, ops, relax, x_mid, x_rad, sc.n_terms, hmax)
    rows = rows.reshape(B, K, M)
    finite_b = torch.where(torch.isfinite(b), b, torch.zeros_like(b))
    out = rows - b
    out = out - 4 * _U * (rows.abs() + finite_b.abs())
    out = torch.nan_to_num(out, nan=-math.inf, posinf=-math.inf)  # an overflow proves nothing
    return strict_adjust(out, strict).amax(dim=-1)
