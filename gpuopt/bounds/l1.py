"""Pre-activation bounds over an L1 ball intersected with a box.

For ``X = {x : ||x - c||_1 <= eps, lo <= x <= hi}`` (``c`` inside the box) the first affine
layer's range is exact: ``max_x w^T x = w^T c + max_d w^T d`` over ``sum |d_i| <= eps`` and
``lo - c <= d <= hi - c`` is a fractional knapsack. Coordinate ``i`` gains ``|w_i|`` per unit
moved towards ``sign(w_i)`` and can move ``cap_i`` (``hi_i - c_i`` or ``c_i - lo_i``); filling the
budget ``eps`` in decreasing order of ``|w_i|`` is optimal (the minimum is the same for ``-w``).
The box hull of ``X`` (each coordinate within ``eps`` of ``c``) would give ``sum_i |w_i| cap_i``,
up to ``n`` times more. Later layers follow by interval arithmetic on ``relu`` of these bounds.
Every bound is widened by a bound on its float64 rounding error, so it holds for the exact sums.
"""

from __future__ import annotations

import numpy as np

from ..network import AffineBlock

__all__ = ["l1_ball_bounds", "knapsack_range"]

_U = np.finfo(np.float64).eps  # 2 u: a generous unit for the error terms below


def knapsack_range(W: np.ndarray, center: np.ndarray, eps: float, lower: np.ndarray, upper: np.ndarray):
    """``(min, max)`` of each row of ``W @ x`` over ``X`` (module docstring), rounded outwards."""
    W = np.asarray(W, dtype=np.float64)
    base = W @ center
    base_err = (W.shape[1] + 2) * _U * (np.abs(W) @ np.abs(center))
    out = []
    for sign in (1.0, -1.0):
        w = sign * W
        cap = np.where(w > 0, upper - center, center - lower)  # how far each coordinate may move
        cap = np.maximum(cap, 0.0)
        gain = np.abs(w)
        order = np.argsort(-gain, axis=1, kind="stable")
        g = np.take_along_axis(gain, order, axis=1)
        c = np.take_along_axis(cap, order, axis=1)
        before = np.cumsum(c, axis=1) - c  # budget used by the better coordinates
        amount = np.clip(eps - before, 0.0, c)
        gained = np.sum(g * amount, axis=1)
        # the sums round (n u each), and so do the budgets left (each ``amount`` is off by at most
        # the rounding of ``before``, (n + 2) u (eps + sum cap)): a generous bound on both
        n = W.shape[1] + 4
        err = n * 4 * _U * gained + n * n * 4 * _U * g[:, :1].ravel() * (eps + c.sum(axis=1)) + 1e-300
        out.append(gained + err)
    hi = base + out[0] + base_err
    lo = base - out[1] - base_err
    return np.nextafter(lo, -np.inf), np.nextafter(hi, np.inf)


def _interval(block: AffineBlock, lo: np.ndarray, hi: np.ndarray):
    """``M [lo, hi] + b`` by midpoint and radius, rounded outwards."""
    M = block.matrix
    mid, rad = 0.5 * (lo + hi), 0.5 * (hi - lo)
    absM = abs(M)
    zc = M @ mid + block.bias
    zr = absM @ rad
    n = M.shape[1]
    err = (n + 4) * 2 * _U * (absM @ (np.abs(mid) + rad) + np.abs(block.bias)) + (n + 4) * _U * zr
    return np.nextafter(zc - zr - err, -np.inf), np.nextafter(zc + zr + err, np.inf)


def l1_ball_bounds(blocks: list[AffineBlock], center, eps: float, lower, upper):
    """``(pre, out)``: ``(l_k, u_k)`` per hidden layer and the output bounds over ``X``."""
    center = np.asarray(center, dtype=np.float64).reshape(-1)
    lower = np.asarray(lower, dtype=np.float64).reshape(-1)
    upper = np.asarray(upper, dtype=np.float64).reshape(-1)
    first = blocks[0]
    lo, hi = knapsack_range(first.matrix.toarray(), center, float(eps), lower, upper)
    bias = first.bias
    lo = np.nextafter(lo + bias - 2 * _U * np.abs(lo + bias), -np.inf)
    hi = np.nextafter(hi + bias + 2 * _U * np.abs(hi + bias), np.inf)
    bounds = [(lo, hi)]
    for k, block in enumerate(blocks[1:]):
        prev = blocks[k]
        if prev.passthrough is None:
            hl, hh = np.maximum(lo, 0.0), np.maximum(hi, 0.0)
        else:
            hl = np.where(prev.passthrough, lo, np.maximum(lo, 0.0))
            hh = np.where(prev.passthrough, hi, np.maximum(hi, 0.0))
        lo, hi = _interval(block, hl, hh)
        bounds.append((lo, hi))
    return bounds[:-1], bounds[-1]
