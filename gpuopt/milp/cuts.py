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

**Activation implication inequalities** (after Serra and Ramalingam's linear-region counting
MILPs, with stable neurons and partial covers folded in). For an unstable neuron ``j`` of a
later layer, ``z_j = b_j + sum_i w_ji h_i``, let ``P`` be its unstable predecessors (with a binary)
with ``w_ji > 0``. With every one of them off (``h_i = 0``), ``z_j <= S_j = b_j + sum_{i not in P}
max(w_ji L_i, w_ji U_i)`` over the previous layer's column bounds. If ``S_j`` plus the largest
contributions ``w_ji U_i`` of a subset ``R`` of ``P`` (taken smallest first) is still ``<= 0``,
then ``j`` is off unless some neuron of ``P - R`` is on:

    d_j <= sum_{i in P - R} d_i.

Symmetrically, with ``Q`` the unstable predecessors with ``w_ji < 0`` and ``T_j = b_j +
sum_{i not in Q} min(w_ji L_i, w_ji U_i)``, if ``T_j`` plus the most negative contributions of a
subset ``R`` of ``Q`` is still ``> 0``, then ``j`` is on unless some neuron of ``Q - R`` is:

    1 - d_j <= sum_{i in Q - R} d_i.

Both hold at the activation pattern of every input (``d = [z > 0]``, which satisfies every
formulation's rows), so they cut off only binaries that disagree with the network: the MILP's
optimum is unchanged. The sums are compared with their float rounding error bound added against
the cut, so a cut is only added when the exact sums allow it. They depend on the bounds alone,
not on an LP point, so :func:`implication_cuts` builds them once, before solving.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import scipy.sparse as sp

from ..errors import InvalidInputError, SolverError
from ..network import AffineBlock
from .encode import MilpModel
from .highs import MilpStatus, SolverConfig, solve_milp

__all__ = ["separate_ideal_cuts", "implication_cuts", "add_rows", "add_root_cuts", "strengthen", "CUT_KINDS",
           "cut_kinds"]

#: the valid inequality families ``--cuts`` may name (``all``: both)
CUT_KINDS = ("ideal", "implication")

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


def _implications(r, w_con, in_set, base, err, n_rows, sign):
    """Per row (neuron) ``j``: the covering set of one implication direction (module docstring).
    ``w_con``: each entry's extreme contribution (``>= 0`` for the ``P`` side, ``sign = 1``;
    ``<= 0`` for the ``Q`` side, ``sign = -1``); ``in_set``: whether the entry is in ``P``/``Q``;
    ``base``: ``S_j`` (or ``T_j``); ``err``: a bound on the rounding error of any partial sum.
    Returns ``(valid rows, entries kept in the cover)``: an entry is dropped into ``R`` while the
    running sum of the smallest contributions keeps ``sign * (base + sum) + err <= 0`` (for
    ``Q``: ``base + sum - err > 0``)."""
    idx = np.flatnonzero(in_set)
    rr, cc = r[idx], sign * w_con[idx]  # cc >= 0: magnitudes of the contributions
    order = np.lexsort((cc, rr))
    idx, rr, cc = idx[order], rr[order], cc[order]
    # each row's running sum on its own (a zero-padded row per neuron): a difference of one
    # cumulative sum over the whole layer would carry the rounding of every earlier row's total
    start = np.searchsorted(rr, np.arange(n_rows), side="left")
    pos = np.arange(rr.size) - start[rr]
    table = np.zeros((n_rows, int(pos.max(initial=-1)) + 1))
    table[rr, pos] = cc
    run = np.cumsum(table, axis=1)[rr, pos]  # inclusive running sum within the row
    if sign > 0:
        valid_base = base + err <= 0
        drop = base[rr] + run + err[rr] <= 0
    else:
        valid_base = base - err > 0
        drop = base[rr] - run - err[rr] > 0
    keep = idx[~drop]
    has_cover = np.bincount(r[keep], minlength=n_rows) > 0
    return valid_base & has_cover, keep


def implication_cuts(model: MilpModel, blocks: list[AffineBlock]) -> tuple[sp.csr_matrix, np.ndarray]:
    """``(A_cut, upper)``: the activation implication inequalities (module docstring) of every
    unstable neuron whose predecessors include unstable ones, as rows ``A_cut v <= upper``."""
    rows_r, rows_c, rows_v, uppers = [], [], [], []
    n_cut = 0
    prev, prev_bin = model.x_index, None  # prev_bin: the previous layer's binary per neuron (-1: none)
    for (z, h, unstable, d), block in zip(model.layers, blocks[:-1]):
        if unstable.size and prev_bin is not None and (prev_bin >= 0).any():
            W = block.matrix[unstable].tocsr()
            W.sum_duplicates()  # one entry (and one +-1 cut coefficient) per predecessor
            W = W.tocoo()
            b = block.bias[unstable]
            L, U = model.col_lower[prev], model.col_upper[prev]
            r, c, w = W.row, W.col, W.data
            m = unstable.size
            hi_t = np.maximum(w * L[c], w * U[c])
            lo_t = np.minimum(w * L[c], w * U[c])
            binary = prev_bin[c] >= 0
            fan = np.bincount(r, minlength=m) + 4
            err = fan * 2 * _U * (np.bincount(r, weights=np.maximum(np.abs(hi_t), np.abs(lo_t)), minlength=m)
                                  + np.abs(b)) + 1e-300
            # P side: the largest contributions (w > 0 predecessors off); Q side: the smallest
            for sign, in_set, con in ((1, binary & (w > 0), hi_t), (-1, binary & (w < 0), lo_t)):
                base = b + np.bincount(r, weights=np.where(in_set, 0.0, con), minlength=m)
                ok, keep = _implications(r, con, in_set, base, err, m, sign)
                keep = keep[ok[r[keep]]]
                rows = np.flatnonzero(ok)
                if not rows.size:
                    continue
                cut_id = np.full(m, -1)
                cut_id[rows] = n_cut + np.arange(rows.size)
                # P side: d_j - sum d_i <= 0; Q side: -d_j - sum d_i <= -1
                rows_r += [cut_id[rows], cut_id[r[keep]]]
                rows_c += [d[rows], prev_bin[c[keep]]]
                rows_v += [np.full(rows.size, float(sign)), -np.ones(keep.size)]
                uppers.append(np.zeros(rows.size) if sign > 0 else -np.ones(rows.size))
                n_cut += rows.size
        prev = h
        prev_bin = np.full(h.size, -1)
        prev_bin[unstable] = d
    if not n_cut:
        return sp.csr_matrix((0, model.n_vars)), np.zeros(0)
    A = sp.coo_matrix((np.concatenate(rows_v), (np.concatenate(rows_r), np.concatenate(rows_c))),
                      shape=(n_cut, model.n_vars)).tocsr()
    return A, np.concatenate(uppers)


def cut_kinds(value) -> tuple[str, ...]:
    """The cut families ``value`` names: ``False``/``None``/``"off"``: none; ``True``/``"all"``:
    every one of :data:`CUT_KINDS`; else a comma-separated subset of them."""
    if value is None or value is False or value == "off" or value == "":
        return ()
    if value is True or value == "all":
        return CUT_KINDS
    if not isinstance(value, str):
        raise InvalidInputError(f"`cuts` must be a bool or a string of {list(CUT_KINDS)}, got {value!r}")
    kinds = tuple(k.strip() for k in value.split(","))
    bad = [k for k in kinds if k not in CUT_KINDS]
    if bad:
        raise InvalidInputError(f"unknown cut kind(s) {bad}: choose from {list(CUT_KINDS)}, 'all' or 'off'")
    return tuple(k for k in CUT_KINDS if k in kinds)


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
        try:
            res = solve_milp(model.relaxed(), time_limit=min(left, 1e7), threshold=np.inf, config=config,
                             deadline=deadline)
        except SolverError:  # HiGHS refused the relaxation (a coefficient of 1e15 or more): no more cuts
            break
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


def strengthen(model: MilpModel, blocks: list[AffineBlock], kinds, *, deadline: float | None = None,
               config: SolverConfig = SolverConfig()) -> tuple[MilpModel, dict]:
    """``model`` with the cut families ``kinds`` (see :func:`cut_kinds`) added: the implication
    inequalities once, then root rounds of ideal cuts until ``deadline``. Returns the model and
    ``{"implication": rows added, "cuts": ideal cuts added, "rounds", "lp_bounds"}``."""
    kinds = cut_kinds(kinds)
    info: dict = {}
    if "implication" in kinds:
        A_new, upper = implication_cuts(model, blocks)
        if upper.size:
            model = add_rows(model, A_new, upper)
        info["implication"] = int(upper.size)
    if "ideal" in kinds:
        model, ideal = add_root_cuts(model, blocks, deadline=deadline, config=config)
        info.update(ideal)
    return model, info
