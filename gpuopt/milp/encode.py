"""MILP encodings of a ReLU network over a box, as plain numpy/scipy.sparse arrays.

The network is taken in its affine-block form (:meth:`gpuopt.network.Network.affine_blocks`):
``z_0 = M_0 x + c_0``, ``h_k = relu(z_k)``, ``z_{k+1} = M_{k+1} h_k + c_{k+1}``, ``y = z_L``.
Sound pre-activation bounds ``l_k <= z_k <= u_k`` come from a separate bound pass (a
:class:`~gpuopt.bounds.Bounds`), never from the encoder.

**Big-M** (per neuron, with ``l < 0 < u``; ``d`` binary, ``d = 1`` meaning active)::

    h >= z,   h >= 0,   h <= z - l (1 - d),   h <= u d.

A neuron with ``u <= 0`` is fixed to ``h = 0``; one with ``l >= 0`` to ``h = z`` (no binary), and so
is a coordinate that the block's activation passes through (``AffineBlock.passthrough``, the
carried values of a graph network's skip connections).

The objective, for one disjunct ``{y : A y <= b}`` of the unsafe region, is the disjunct margin
``max_i (A y - b)_i``: with one row it is ``a^T y - b`` directly; with several, an epigraph
variable ``t`` with ``a_i^T y - t <= b_i`` is minimised; ``t`` is bounded by the rows' ranges over
the output bounds (its optimum ``max_i (a_i^T y - b_i)`` always lies inside). The disjunct is unreachable iff the
minimum is ``> 0``.

Variable order: ``x | (z_k, h_k, d_k) for each hidden layer | y | t (if several rows)``.
Everything is float64; the model is picklable and built without per-neuron Python loops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..errors import InvalidInputError
from ..network import AffineBlock

__all__ = ["MilpModel", "encode_bigm", "complete_assignment"]


@dataclass(frozen=True, eq=False)
class MilpModel:
    """``min c^T v + offset`` s.t. ``row_lower <= A v <= row_upper``, ``col_lower <= v <= col_upper``,
    ``v_j`` integer where ``integrality[j]``. ``x_index``/``y_index`` locate inputs and outputs;
    ``layers`` holds per hidden layer the index arrays ``(z, h, d_neurons, d_vars)``."""

    c: np.ndarray
    offset: float
    A: sp.csr_matrix
    row_lower: np.ndarray
    row_upper: np.ndarray
    col_lower: np.ndarray
    col_upper: np.ndarray
    integrality: np.ndarray
    x_index: np.ndarray
    y_index: np.ndarray
    t_index: int | None
    layers: tuple
    spec_A: np.ndarray
    spec_b: np.ndarray

    @property
    def n_vars(self) -> int:
        return self.c.size

    @property
    def n_binaries(self) -> int:
        return int(self.integrality.sum())


def _check_bounds(name: str, l: np.ndarray, u: np.ndarray, n: int):
    if l.shape != (n,) or u.shape != (n,):
        raise InvalidInputError(f"`{name}` bounds must have {n} entries, got {l.shape} and {u.shape}")
    if not (np.all(np.isfinite(l)) and np.all(np.isfinite(u))):
        raise InvalidInputError(f"`{name}` bounds must be finite to build big-M constants")
    if np.any(l > u):
        raise InvalidInputError(f"`{name}` bounds are empty (lower > upper) somewhere")


def encode_bigm(blocks: list[AffineBlock], pre_bounds, out_bounds, x_lower, x_upper,
                A_spec, b_spec) -> MilpModel:
    """Big-M MILP whose optimum is ``min_{x in box} max_i (A_spec f(x) - b_spec)_i``.

    ``pre_bounds``: one ``(l_k, u_k)`` numpy pair per hidden layer (``len(blocks) - 1``);
    ``out_bounds``: ``(l_y, u_y)``; ``x_lower``/``x_upper``: the input box.
    """
    if len(pre_bounds) != len(blocks) - 1:
        raise InvalidInputError(f"need {len(blocks) - 1} pre-activation bound pairs, got {len(pre_bounds)}")
    x_lower = np.asarray(x_lower, dtype=np.float64).reshape(-1)
    x_upper = np.asarray(x_upper, dtype=np.float64).reshape(-1)
    n0 = blocks[0].matrix.shape[1]
    _check_bounds("input", x_lower, x_upper, n0)
    A_spec = np.atleast_2d(np.asarray(A_spec, dtype=np.float64))
    b_spec = np.asarray(b_spec, dtype=np.float64).reshape(-1)

    col_lo, col_hi, integ = [x_lower], [x_upper], [np.zeros(n0, dtype=bool)]
    row_lo, row_hi = [], []
    n_var = n0
    prev_index = np.arange(n0)
    layers = []
    coo_r, coo_c, coo_v = [], [], []
    n_row = 0

    def add_rows(r_local, cols, vals, lo, hi):
        nonlocal n_row
        coo_r.append(np.asarray(r_local) + n_row)
        coo_c.append(np.asarray(cols))
        coo_v.append(np.asarray(vals, dtype=np.float64))
        row_lo.append(np.asarray(lo, dtype=np.float64))
        row_hi.append(np.asarray(hi, dtype=np.float64))
        n_row += len(lo)

    def add_affine(block: AffineBlock, in_index, out_index):
        """Rows ``M in - out = -c``."""
        m = block.matrix.tocoo()
        k = block.matrix.shape[0]
        r = np.concatenate([m.row, np.arange(k)])
        c = np.concatenate([in_index[m.col], out_index])
        v = np.concatenate([m.data, -np.ones(k)])
        add_rows(r, c, v, -block.bias, -block.bias)

    for k, block in enumerate(blocks[:-1]):
        l, u = (np.asarray(a, dtype=np.float64).reshape(-1) for a in pre_bounds[k])
        nk = block.matrix.shape[0]
        _check_bounds(f"layer {k} pre-activation", l, u, nk)
        z = np.arange(n_var, n_var + nk)
        h = np.arange(n_var + nk, n_var + 2 * nk)
        linear = np.zeros(nk, dtype=bool) if block.passthrough is None else np.asarray(block.passthrough, dtype=bool)
        unstable = np.flatnonzero((l < 0) & (u > 0) & ~linear)
        d = np.arange(n_var + 2 * nk, n_var + 2 * nk + unstable.size)
        n_var += 2 * nk + unstable.size
        col_lo += [l, np.where(linear, l, np.maximum(l, 0.0)), np.zeros(unstable.size)]
        col_hi += [u, np.where(linear, u, np.maximum(u, 0.0)), np.ones(unstable.size)]
        integ += [np.zeros(2 * nk, dtype=bool), np.ones(unstable.size, dtype=bool)]
        add_affine(block, prev_index, z)
        active = np.flatnonzero((l >= 0) | linear)
        if active.size:  # h - z = 0
            i = np.arange(active.size)
            add_rows(np.concatenate([i, i]), np.concatenate([h[active], z[active]]),
                     np.concatenate([np.ones(active.size), -np.ones(active.size)]),
                     np.zeros(active.size), np.zeros(active.size))
        if unstable.size:
            m = unstable.size
            i = np.arange(m)
            lu, uu = l[unstable], u[unstable]
            zu, hu = z[unstable], h[unstable]
            # z - h <= 0
            add_rows(np.concatenate([i, i]), np.concatenate([zu, hu]),
                     np.concatenate([np.ones(m), -np.ones(m)]), np.full(m, -np.inf), np.zeros(m))
            # h - z - l d <= -l
            add_rows(np.concatenate([i, i, i]), np.concatenate([hu, zu, d]),
                     np.concatenate([np.ones(m), -np.ones(m), -lu]), np.full(m, -np.inf), -lu)
            # h - u d <= 0
            add_rows(np.concatenate([i, i]), np.concatenate([hu, d]),
                     np.concatenate([np.ones(m), -uu]), np.full(m, -np.inf), np.zeros(m))
        layers.append((z, h, unstable, d))
        prev_index = h

    ly, uy = (np.asarray(a, dtype=np.float64).reshape(-1) for a in out_bounds)
    n_out = blocks[-1].matrix.shape[0]
    _check_bounds("output", ly, uy, n_out)
    if A_spec.shape[1] != n_out or A_spec.shape[0] != b_spec.size:
        raise InvalidInputError(f"spec rows must be ({b_spec.size}, {n_out}), got {A_spec.shape}")
    y = np.arange(n_var, n_var + n_out)
    n_var += n_out
    col_lo.append(ly)
    col_hi.append(uy)
    integ.append(np.zeros(n_out, dtype=bool))
    add_affine(blocks[-1], prev_index, y)

    c = np.zeros(n_var)
    t_index = None
    if A_spec.shape[0] == 1:
        c[y] = A_spec[0]
        offset = -float(b_spec[0])
    else:
        t_index = n_var
        n_var += 1
        c = np.append(c, 1.0)
        # t = max_i (a_i y - b_i) at the optimum, so t may be bounded by the rows' ranges over the
        # output box (widened outwards): every y keeps a feasible t, and the model is bounded
        Ap, An = np.maximum(A_spec, 0), np.minimum(A_spec, 0)
        t_lo = Ap @ ly + An @ uy - b_spec
        t_hi = Ap @ uy + An @ ly - b_spec
        slack = 1e-9 * (np.abs(A_spec) @ np.maximum(np.abs(ly), np.abs(uy)) + np.abs(b_spec)) + 1e-300
        col_lo.append(np.array([float(np.max(t_lo - slack))]))
        col_hi.append(np.array([float(np.max(t_hi + slack))]))
        integ.append(np.zeros(1, dtype=bool))
        m = A_spec.shape[0]
        nz_r, nz_c = np.nonzero(A_spec)
        add_rows(np.concatenate([nz_r, np.arange(m)]), np.concatenate([y[nz_c], np.full(m, t_index)]),
                 np.concatenate([A_spec[nz_r, nz_c], -np.ones(m)]), np.full(m, -np.inf), b_spec)
        offset = 0.0

    A = sp.coo_matrix((np.concatenate(coo_v), (np.concatenate(coo_r), np.concatenate(coo_c))),
                      shape=(n_row, n_var)).tocsr()
    return MilpModel(c=c, offset=offset, A=A, row_lower=np.concatenate(row_lo), row_upper=np.concatenate(row_hi),
                     col_lower=np.concatenate(col_lo), col_upper=np.concatenate(col_hi),
                     integrality=np.concatenate(integ), x_index=np.arange(n0), y_index=y,
                     t_index=t_index, layers=tuple(layers), spec_A=A_spec, spec_b=b_spec)


def complete_assignment(model: MilpModel, blocks: list[AffineBlock], x: np.ndarray) -> np.ndarray:
    """A full variable vector for the input point ``x`` (a MIP start): forward pass in float64,
    binaries from the activation signs, values clipped into the column bounds."""
    v = np.zeros(model.n_vars)
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    v[model.x_index] = x
    h = x
    for (z_idx, h_idx, unstable, d_idx), block in zip(model.layers, blocks[:-1]):
        z = block.matrix @ h + block.bias
        h = np.maximum(z, 0.0) if block.passthrough is None else np.where(block.passthrough, z, np.maximum(z, 0.0))
        v[z_idx] = z
        v[h_idx] = h
        v[d_idx] = (z[unstable] > 0).astype(np.float64)
    y = blocks[-1].matrix @ h + blocks[-1].bias
    v[model.y_index] = y
    if model.t_index is not None:
        v[model.t_index] = float(np.max(model.spec_A @ y - model.spec_b))
    v = np.minimum(np.maximum(v, model.col_lower), model.col_upper)
    return v
