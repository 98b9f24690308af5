"""Valid inequalities for the ReLU MILP, separated on the LP relaxation at the root.

**Ideal-formulation cuts** (Anderson, Huchette, Ma, Tjandraatmadja, Vielma, Math. Prog. 2020).
For an unstable neuron ``h = relu(w^T x + b)`` with binary ``d`` (1: active) and inputs in the box
``L <= x <= U`` (the previous layer's column bounds), let ``Lb_i = L_i`` and ``Ub_i = U_i`` where
``w_i >= 0`` and the other way round where ``w_i < 0``. For every subset ``I`` of the inputs,

    h <= sum_{i in I} w_i (x_i - Lb_i (1 - d)) + (b + sum_{i not in I} w_i Ub_i) d

holds on both branches (``d = 0``: ``h = 0`` and ``w^T x + b <= 0``; ``d = 1``: ``h = w^T x + b``),
and together with big-M's rows these describe the convex hull of the neuron over the box. The
most violated one at an LP point ``(x*, h*, d*)`` takes ``i`` into ``I`` exactly when
``w_i (x*_i - Lb_i (1 - d*)) < w_i Ub_i d*`` (linear time per neuron).

:func:`add_root_cuts` repeats: solve the LP relaxation, add each neuron's most violated cut (by
more than ``tol``), for a few rounds. A cut's coefficients are computed in float64; its right-hand
side is widened by a bound on their rounding error, so every added row is valid for the exact
model and a dual bound of the cut model still bounds the original minimum.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import scipy.sparse as sp

from ..network import AffineBlock
from .encode import MilpModel
from .highs import MilpStatus, SolverConfig, solve_milp

__all__ = ["separate_ideal_cuts", "add_rows", "add_root_cuts"]

_U = np.finfo(np.float64).eps


def separate_ideal_cuts(model: MilpModel, blocks: list[AffineBlock], v: np.ndarray, *, tol: float = 1e-6):
    """``(A_cut, upper)``: one row ``A_cut v <= upper`` per unstable neuron whose most violated
    ideal cut is violated at ``v`` by more than ``tol`` (relative to the neuron's scale)."""
    rows_r, rows_c, rows_v, uppers = [], [], [], []
    n_cut = 0
    prev = model.x_index
    for (z, h, unstable, d), block in zip(model.layers, blocks[:-1]):
        if unstable.size:
            W = block.matrix[unstable].tocoo()
            b = block.bias[unstable]
            L, U = model.col_lower[prev], model.col_upper[prev]
            r, c, w = W.row, W.col, W.data
            Lb = np.where(w >= 0, L[c], U[c])
            Ub = np.where(w >= 0, U[c], L[c])
            xs, ds, hs = v[prev][c], v[d][r], v[h[unstable]]
            in_I = w * (xs - Lb * (1 - ds)) < w * Ub * ds
            rhs_at = b * v[d] + np.bincount(r, weights=np.where(in_I, w * (xs - Lb * (1 - ds)), w * Ub * ds),
                                            minlength=unstable.size)
            scale = 1.0 + np.bincount(r, weights=np.abs(w) * np.maximum(np.abs(L[c]), np.abs(U[c])),
                                      minlength=unstable.size) + np.abs(b)
            violated = hs - rhs_at > tol * scale
            if violated.any():
                # the row: h - sum_I w_i x_i - K d <= R, K = b + sum_{not I} w Ub + sum_I w Lb, R = -sum_I w Lb
                K_terms = np.where(in_I, w * Lb, w * Ub)
                K = b + np.bincount(r, weights=K_terms, minlength=unstable.size)
                R = -np.bincount(r, weights=np.where(in_I, w * Lb, 0.0), minlength=unstable.size)
                fan = np.bincount(r, minlength=unstable.size) + 4
                err_K = fan * 2 * _U * (np.bincount(r, weights=np.abs(K_terms), minlength=unstable.size) + np.abs(b))
                err_R = fan * 2 * _U * np.bincount(r, weights=np.where(in_I, np.abs(w * Lb), 0.0),
                                                   minlength=unstable.size)
                vi = np.flatnonzero(violated)
                cut_id = np.full(unstable.size, -1)
                cut_id[vi] = n_cut + np.arange(vi.size)
                sel = in_I & violated[r]
                rows_r += [cut_id[vi], cut_id[r[sel]], cut_id[vi]]
                rows_c += [h[unstable[vi]], prev[c[sel]], d[vi]]
                rows_v += [np.ones(vi.size), -w[sel], -K[vi]]
                uppers.append(np.nextafter(R[vi] + err_K[vi] + err_R[vi], np.inf))
                n_cut += vi.size
        prev = h
    if not n_cut:
        return sp.csr_matrix((0, model.n_vars)), np.zeros(0)
    A = sp.coo_matrix((np.concatenate(rows_v), (np.concatenate(rows_r), np.concatenate(rows_c))),
                      shape=(n_cut, model.n_vars)).tocsr()
    A.sum_duplicates()
    return A, np.concatenate(uppers)


def add_rows(model: MilpModel, A_new: sp.csr_matrix, upper: np.ndarray) -> MilpModel:
    """``model`` with the rows ``A_new v <= upper`` appended."""
    return replace(model, A=sp.vstack([model.A, A_new]).tocsr(),
                   row_lower=np.concatenate([model.row_lower, np.full(upper.size, -np.inf)]),
                   row_upper=np.concatenate([model.row_upper, upper]))


def add_root_cuts(model: MilpModel, blocks: list[AffineBlock], *, rounds: int = 5, deadline: float | None = None,
                  config: SolverConfig = SolverConfig()) -> tuple[MilpModel, dict]:
    """Rounds of LP relaxation and separation (module docstring); returns the strengthened model
    and ``{"cuts", "rounds", "lp_bounds"}`` (the relaxation's value before each round)."""
    added, bounds, done = 0, [], 0
    for _ in range(rounds):
        left = np.inf if deadline is None else deadline - time.monotonic()
        if left <= 0:
            break
        res = solve_milp(model.relaxed(), time_limit=min(left, 1e7), threshold=np.inf, config=config,
                         deadline=deadline)
        if res.status is not MilpStatus.OPTIMAL or res.solution is None:
            break
        bounds.append(res.objective)
        A_new, upper = separate_ideal_cuts(model, blocks, res.solution)
        done += 1
        if not upper.size:
            break
        model = add_rows(model, A_new, upper)
        added += upper.size
    return model, {"cuts": added, "rounds": done, "lp_bounds": bounds}
