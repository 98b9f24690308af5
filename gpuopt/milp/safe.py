"""Safe LP bounds from any dual vector (Neumaier and Shcherbina 2004), independent of the solver.

For the LP ``min c^T v + offset`` s.t. ``rl <= A v <= ru``, ``l <= v <= u`` (every column bounded),
every vector ``y`` gives a lower bound by weak duality, exactly::

    c^T v = y^T A v + r^T v,   r = c - A^T y,
    y^T A v >= sum_i (y_i rl_i if y_i > 0 else y_i ru_i),
    r^T v   >= sum_j min(r_j l_j, r_j u_j).

A component of ``y`` whose sign needs an infinite row bound is set to 0 first. The bound holds
for *every* ``y`` (optimal, suboptimal, from a solver stopped early, or wrong), so a solver's
tolerances never enter it: only the float64 evaluation does, and that is bounded a priori. With
``u = 2^-53`` and ``gamma_k = k u / (1 - k u)``:

* ``r`` is computed with error ``|r^_j - r_j| <= gamma_{k+2} (|c_j| + (|A|^T |y|)_j) = delta_j``
  (``k`` the most non-zeros in a column); the column term is then taken at the worst ``r`` in
  ``[r^_j - delta_j, r^_j + delta_j]``;
* the ``N`` terms (rows and columns) are summed with error at most ``gamma_{N+4} sum |t_i|``
  (products, the ``r^ +- delta`` roundings and the sum included), which is subtracted.

This is the independent re-check of a bound that HiGHS claims (issue 11): the caller passes the
duals HiGHS returned and gets a bound that rests on nothing but this arithmetic.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["safe_lower_bound", "SafeBounder", "gamma"]

_U = 2.0 ** -53


def gamma(k) -> float:
    """``k u / (1 - k u)``: the relative error bound of ``k`` float64 operations in a row."""
    ku = float(k) * _U
    if ku >= 0.5:
        return np.inf
    return ku / (1.0 - ku)


class SafeBounder:
    """:func:`safe_lower_bound` for many objectives on one constraint set (the matrix work cached)."""

    def __init__(self, A, row_lower, row_upper, col_lower, col_upper):
        self.A = sp.csc_matrix(A, dtype=np.float64)
        self.At = self.A.T.tocsr()
        self.absAt = abs(self.At)
        self.rl = np.asarray(row_lower, dtype=np.float64).reshape(-1)
        self.ru = np.asarray(row_upper, dtype=np.float64).reshape(-1)
        self.lo = np.asarray(col_lower, dtype=np.float64).reshape(-1)
        self.hi = np.asarray(col_upper, dtype=np.float64).reshape(-1)
        if self.A.shape != (self.rl.size, self.lo.size) or self.ru.shape != self.rl.shape \
                or self.hi.shape != self.lo.shape:
            raise ValueError(f"shapes disagree: A {self.A.shape}, rows {self.rl.shape}/{self.ru.shape}, "
                             f"columns {self.lo.shape}/{self.hi.shape}")
        self.k = int(np.diff(self.A.indptr).max(initial=0))
        # non-finite coefficients or NaN bounds: no bound is computed from them
        self.usable = bool(np.all(np.isfinite(self.A.data)) and not np.isnan(self.rl).any()
                           and not np.isnan(self.ru).any() and not np.isnan(self.lo).any()
                           and not np.isnan(self.hi).any())

    def bound(self, c, row_dual, offset: float = 0.0, col_lower=None, col_upper=None) -> float:
        """The safe lower bound of ``min c^T v + offset`` from ``row_dual`` (over the column
        bounds given here, e.g. a branch-and-bound node's, else the constructor's)."""
        c = np.asarray(c, dtype=np.float64).reshape(-1)
        y = np.array(row_dual, dtype=np.float64).reshape(-1)
        if y.shape != self.rl.shape or c.shape != self.lo.shape:
            raise ValueError(f"expected {self.lo.size} costs and {self.rl.size} duals, got {c.size} and {y.size}")
        if not (self.usable and np.all(np.isfinite(y)) and np.all(np.isfinite(c)) and np.isfinite(offset)):
            return -np.inf
        rl, ru = self.rl, self.ru
        lo = self.lo if col_lower is None else np.asarray(col_lower, dtype=np.float64).reshape(-1)
        hi = self.hi if col_upper is None else np.asarray(col_upper, dtype=np.float64).reshape(-1)
        if lo.shape != self.lo.shape or hi.shape != self.hi.shape:
            raise ValueError(f"expected {self.lo.size} column bounds, got {lo.size} and {hi.size}")
        if np.isnan(lo).any() or np.isnan(hi).any():
            return -np.inf
        # a sign that needs an infinite row bound contributes nothing: drop it
        y[(y > 0) & ~np.isfinite(rl)] = 0.0
        y[(y < 0) & ~np.isfinite(ru)] = 0.0
        with np.errstate(invalid="ignore", over="ignore"):
            row_terms = np.where(y > 0, y * rl, np.where(y < 0, y * ru, 0.0))
            r = c - self.At @ y
            delta = gamma(self.k + 2) * (np.abs(c) + self.absAt @ np.abs(y))
            # a product a_ij y_i may underflow to 0 (and delta with it): every column with a
            # non-zero term gets a floor far above the underflow error (k terms of 2^-1075)
            live = (c != 0) | ((self.absAt @ (y != 0).astype(np.float64)) > 0)
            delta = delta * (1 + 4 * _U) + np.where(live, 1e-300, 0.0)
            r_lo, r_hi = r - delta, r + delta
            # the worst r in [r_lo, r_hi] at the worst v_j in [l_j, u_j]; only an exactly zero
            # reduced cost times an infinite bound counts as 0 (any other NaN: no bound)
            cands = np.stack([np.where(rf == 0, 0.0, rf * bd) for rf in (r_lo, r_hi) for bd in (lo, hi)])
            if np.isnan(cands).any():
                return -np.inf
            col_terms = cands.min(axis=0)
            terms = np.concatenate([row_terms, col_terms])
            if not np.all(np.isfinite(terms)):
                return -np.inf
            total = float(np.sum(terms))
            err = gamma(terms.size + 4) * float(np.sum(np.abs(terms))) * (1 + 4 * _U) + 1e-300
        if not (np.isfinite(total) and np.isfinite(err)):
            return -np.inf
        bound = np.nextafter(total - err, -np.inf)
        if offset:
            s = bound + float(offset)
            bound = np.nextafter(s - _U * abs(s), -np.inf)
        return float(bound)


def safe_lower_bound(c, A, row_lower, row_upper, col_lower, col_upper, row_dual, offset: float = 0.0) -> float:
    """A lower bound on ``min c^T v + offset`` over ``{rl <= A v <= ru, l <= v <= u}``, valid for
    any ``row_dual`` (see the module docstring); ``-inf`` when ``row_dual`` gives none (a column
    with an infinite bound and a non-zero reduced cost, or non-finite input). If the LP is
    infeasible, every value is a lower bound, so the result is still valid."""
    return SafeBounder(A, row_lower, row_upper, col_lower, col_upper).bound(c, row_dual, offset)
