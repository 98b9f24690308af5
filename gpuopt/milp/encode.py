"""MILP encodings of a ReLU network over an input region, as plain numpy/scipy.sparse arrays.

The network is taken in its affine-block form (:meth:`gpuopt.network.Network.affine_blocks`):
``z_0 = M_0 x + c_0``, ``h_k = relu(z_k)``, ``z_{k+1} = M_{k+1} h_k + c_{k+1}``, ``y = z_L``
(weights ``(out, in)``: a row of ``M_k`` is one neuron's incoming weights ``w``). Sound
pre-activation bounds ``l_k <= z_k <= u_k`` come from a separate bound pass (a
:class:`~gpuopt.bounds.Bounds`), never from the encoder. A neuron with ``u <= 0`` is fixed to
``h = 0``; one with ``l >= 0`` to ``h = z`` (no binary), and so is a coordinate that the block's
activation passes through (``AffineBlock.passthrough``, the carried values of a graph network's
skip connections; a max-pooling layer arrives already lowered to an exact tree of ReLUs, see
:mod:`gpuopt.lowering`). Every unstable neuron (``l < 0 < u``) gets one binary ``d`` (``d = 1``:
active) and the constraints of the chosen :class:`Formulation` (the table :data:`FORMULATIONS`):

``bigm``
    ``h >= z,  h >= 0,  h <= z - l (1 - d),  h <= u d``.
``split``
    the split-variable form ``z = h - s``, ``h, s >= 0``, ``h <= u d``, ``s <= -l (1 - d)``
    (``s = max(-z, 0)``; one of ``h, s`` is zero, linked by the binary). Its LP relaxation is
    big-M's; HiGHS has no SOS1 constraints, so the binary is the link.
``partition`` (P-split; Tsay, Kronqvist, Thebelt, Misener, NeurIPS 2021)
    the incoming terms ``w_i h_i`` are split into sets ``S_1..S_N``; ``s_n = sum_{i in S_n} w_i h_i``
    lies in ``[L_n, U_n]`` by interval arithmetic over the previous layer's column bounds (rounded
    outwards). With a variable ``a_n`` per set (its share of ``w^T h`` on the active side):
    ``h = sum_n a_n + b d``,  ``d L_n <= a_n <= d U_n``,  ``(1 - d) L_n <= s_n - a_n <= (1 - d) U_n``;
    ``h >= z`` and ``h >= 0`` complete it, and the big-M rows are kept too, so its relaxation is
    never weaker than big-M's with the (tighter) bound-pass constants. Sets: ``equal_size``
    (weights sorted, cut into ``N`` runs of equal length) or ``equal_range`` (``N - 2`` bins of
    equal width between the 5% and 95% weight quantiles, the outliers in the two end bins).
``extended``
    P-split with one set per incoming weight: the convex hull of the neuron's two branches over
    the box of its inputs (the disjunctive, Balas form), ``N`` = fan-in extra columns per neuron.

The objective, for one disjunct ``{y : A y <= b}`` of the unsafe region, is the disjunct margin
``max_i (A y - b)_i``: with one row it is ``a^T y - b`` directly; with several, an epigraph
variable ``t`` with ``a_i^T y - t <= b_i`` is minimised; ``t`` is bounded by the rows' ranges over
the output bounds (its optimum ``max_i (a_i^T y - b_i)`` always lies inside). The disjunct is
unreachable iff the minimum is ``> 0``.

The input set is the box ``[x_lower, x_upper]``, optionally intersected with the L1 ball
``||x - c||_1 <= eps`` (columns ``r_i >= |x_i - c_i|``, one row ``sum_i r_i <= eps``) and with
linear constraints ``G x <= g`` (:class:`InputConstraints`).

Variable order: ``x | (z_k, h_k, d_k) per hidden layer | y | t (if several rows) | extra columns``
(the L1 radii and each formulation's auxiliaries, after the fixed prefix). Everything is float64;
the model is picklable and built without per-neuron Python loops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from ..errors import InvalidInputError
from ..network import AffineBlock

__all__ = ["MilpModel", "Formulation", "InputConstraints", "FORMULATIONS", "encode", "encode_bigm",
           "complete_assignment", "partition_sets"]

_EPS = np.finfo(np.float64).eps


@dataclass(frozen=True)
class Formulation:
    """Which ReLU encoding :func:`encode` builds (see the module docstring): ``name`` in
    :data:`FORMULATIONS`; for ``partition``, ``partitions`` (``N >= 1``) and ``partitioning``."""

    name: str = "bigm"
    partitions: int = 2
    partitioning: Literal["equal_size", "equal_range"] = "equal_size"

    def __post_init__(self):
        if self.name not in FORMULATIONS:
            raise InvalidInputError(f"`formulation` must be one of {sorted(FORMULATIONS)}, got {self.name!r}")
        if isinstance(self.partitions, bool) or not isinstance(self.partitions, (int, np.integer)) \
                or self.partitions < 1:
            raise InvalidInputError(f"`partitions` must be an integer >= 1, got {self.partitions!r}")
        if self.partitioning not in ("equal_size", "equal_range"):
            raise InvalidInputError("`partitioning` must be one of ['equal_range', 'equal_size'], "
                                    f"got {self.partitioning!r}")

    @classmethod
    def parse(cls, text: str) -> "Formulation":
        """``bigm``, ``split``, ``extended``, ``partition``, ``partition:N`` or
        ``partition:N:equal_range`` (the CLI's spelling)."""
        parts = str(text).strip().split(":")
        if parts[0] != "partition" and len(parts) > 1:
            raise InvalidInputError(f"only `partition` takes options (partition:N[:equal_size|equal_range]), got {text!r}")
        kw = {}
        if len(parts) > 1:
            try:
                kw["partitions"] = int(parts[1])
            except ValueError:
                raise InvalidInputError(f"`partition:N` needs an integer N, got {parts[1]!r}") from None
        if len(parts) > 2:
            kw["partitioning"] = parts[2]
        if len(parts) > 3:
            raise InvalidInputError(f"too many `:` fields in the formulation {text!r}")
        return cls(parts[0], **kw)


@dataclass(frozen=True, eq=False)
class InputConstraints:
    """Extra constraints on the input beyond its box: the L1 ball ``||x - l1_center||_1 <= l1_eps``
    (both ``None``: none) and the rows ``G x <= g`` (both ``None``: none)."""

    l1_center: np.ndarray | None = None
    l1_eps: float | None = None
    G: np.ndarray | None = None
    g: np.ndarray | None = None

    def __post_init__(self):
        if (self.l1_center is None) != (self.l1_eps is None):
            raise InvalidInputError("`l1_center` and `l1_eps` must be given together")
        if self.l1_eps is not None and not (np.isfinite(self.l1_eps) and self.l1_eps >= 0):
            raise InvalidInputError(f"`l1_eps` must be a finite number >= 0, got {self.l1_eps!r}")
        if (self.G is None) != (self.g is None):
            raise InvalidInputError("`G` and `g` must be given together")
        if self.G is not None:
            G, g = np.atleast_2d(np.asarray(self.G, dtype=np.float64)), np.asarray(self.g, dtype=np.float64).reshape(-1)
            if G.shape[0] != g.size:
                raise InvalidInputError(f"`G` has {G.shape[0]} rows but `g` has {g.size} entries")
            if not (np.all(np.isfinite(G)) and np.all(np.isfinite(g))):
                raise InvalidInputError("`G` and `g` must be finite")
            object.__setattr__(self, "G", G)
            object.__setattr__(self, "g", g)
        if self.l1_center is not None:
            c = np.asarray(self.l1_center, dtype=np.float64).reshape(-1)
            if not np.all(np.isfinite(c)):
                raise InvalidInputError("`l1_center` must be finite")
            object.__setattr__(self, "l1_center", c)

    def check(self, n: int) -> None:
        if self.l1_center is not None and self.l1_center.size != n:
            raise InvalidInputError(f"`l1_center` must have {n} entries, got {self.l1_center.size}")
        if self.G is not None and self.G.shape[1] != n:
            raise InvalidInputError(f"`G` must have {n} columns, got {self.G.shape[1]}")

    def contains(self, x: np.ndarray, *, tol: float = 0.0) -> bool:
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if self.l1_center is not None and np.abs(x - self.l1_center).sum() > self.l1_eps + tol:
            return False
        return self.G is None or bool(np.all(self.G @ x <= self.g + tol))


@dataclass(frozen=True, eq=False)
class MilpModel:
    """``min c^T v + offset`` s.t. ``row_lower <= A v <= row_upper``, ``col_lower <= v <= col_upper``,
    ``v_j`` integer where ``integrality[j]``. ``x_index``/``y_index`` locate inputs and outputs;
    ``layers`` holds per hidden layer the index arrays ``(z, h, d_neurons, d_vars)``;
    ``l1_index`` the L1 radius columns (or None); ``formulation`` the encoding's name."""

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
    formulation: str = "bigm"
    l1_index: np.ndarray | None = None
    l1_center: np.ndarray | None = None
    aux: tuple = ()  # per hidden layer with unstable neurons: the formulation's auxiliary columns

    @property
    def n_vars(self) -> int:
        return self.c.size

    @property
    def n_binaries(self) -> int:
        return int(self.integrality.sum())

    def relaxed(self) -> "MilpModel":
        """The LP relaxation (no integrality)."""
        from dataclasses import replace

        return replace(self, integrality=np.zeros_like(self.integrality))


def _check_bounds(name: str, l: np.ndarray, u: np.ndarray, n: int):
    if l.shape != (n,) or u.shape != (n,):
        raise InvalidInputError(f"`{name}` bounds must have {n} entries, got {l.shape} and {u.shape}")
    if not (np.all(np.isfinite(l)) and np.all(np.isfinite(u))):
        raise InvalidInputError(f"`{name}` bounds must be finite to build big-M constants")
    if np.any(l > u):
        raise InvalidInputError(f"`{name}` bounds are empty (lower > upper) somewhere")


def partition_sets(w: np.ndarray, n_sets: int, strategy: str) -> np.ndarray:
    """The set index (``0..N-1``) of each weight of ``w`` (see the module docstring)."""
    n = w.size
    label = np.zeros(n, dtype=np.int64)
    if n == 0:
        return label
    if strategy == "equal_range" and n_sets >= 3:
        lo_q, hi_q = np.quantile(w, [0.05, 0.95])
        inner = np.linspace(lo_q, hi_q, n_sets - 1)  # N - 2 bins of equal width between the quantiles
        label = np.searchsorted(inner, w, side="right")  # 0: below lo_q; N-1: above hi_q
        return np.minimum(label, n_sets - 1)
    order = np.argsort(w, kind="stable")
    for s, chunk in enumerate(np.array_split(order, min(n_sets, n))):
        label[chunk] = s
    return label


class _Builder:
    """Columns and rows accumulated as COO triplets."""

    def __init__(self):
        self.col_lo, self.col_hi, self.integ = [], [], []
        self.n_var = 0
        self.r, self.c, self.v, self.row_lo, self.row_hi = [], [], [], [], []
        self.n_row = 0

    def columns(self, lo, hi, integer: bool = False) -> np.ndarray:
        lo, hi = np.asarray(lo, dtype=np.float64).reshape(-1), np.asarray(hi, dtype=np.float64).reshape(-1)
        idx = np.arange(self.n_var, self.n_var + lo.size)
        self.n_var += lo.size
        self.col_lo.append(lo)
        self.col_hi.append(hi)
        self.integ.append(np.full(lo.size, integer, dtype=bool))
        return idx

    def rows(self, r_local, cols, vals, lo, hi) -> None:
        lo = np.asarray(lo, dtype=np.float64).reshape(-1)
        hi = np.asarray(hi, dtype=np.float64).reshape(-1)
        self.r.append(np.asarray(r_local, dtype=np.int64) + self.n_row)
        self.c.append(np.asarray(cols, dtype=np.int64))
        self.v.append(np.asarray(vals, dtype=np.float64))
        self.row_lo.append(lo)
        self.row_hi.append(hi)
        self.n_row += lo.size

    def bounds_of(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = np.concatenate(self.col_lo), np.concatenate(self.col_hi)
        return lo[idx], hi[idx]

    def affine(self, block: AffineBlock, in_index, out_index) -> None:
        """Rows ``M in - out = -c``."""
        m = block.matrix.tocoo()
        k = block.matrix.shape[0]
        self.rows(np.concatenate([m.row, np.arange(k)]), np.concatenate([in_index[m.col], out_index]),
                  np.concatenate([m.data, -np.ones(k)]), -block.bias, -block.bias)

    def matrix(self) -> sp.csr_matrix:
        return sp.coo_matrix((np.concatenate(self.v), (np.concatenate(self.r), np.concatenate(self.c))),
                             shape=(self.n_row, self.n_var)).tocsr()


def _bigm_rows(B: _Builder, zu, hu, d, lu, uu) -> None:
    """``z - h <= 0``, ``h - z - l d <= -l``, ``h - u d <= 0``."""
    m = zu.size
    i = np.arange(m)
    B.rows(np.concatenate([i, i]), np.concatenate([zu, hu]), np.concatenate([np.ones(m), -np.ones(m)]),
           np.full(m, -np.inf), np.zeros(m))
    B.rows(np.concatenate([i, i, i]), np.concatenate([hu, zu, d]), np.concatenate([np.ones(m), -np.ones(m), -lu]),
           np.full(m, -np.inf), -lu)
    B.rows(np.concatenate([i, i]), np.concatenate([hu, d]), np.concatenate([np.ones(m), -uu]),
           np.full(m, -np.inf), np.zeros(m))


def _relu_bigm(B: _Builder, ctx) -> tuple:
    _bigm_rows(B, ctx["z"], ctx["h"], ctx["d"], ctx["l"], ctx["u"])
    return ("bigm",)


def _relu_split(B: _Builder, ctx) -> tuple:
    """``z - h + s = 0``, ``h - u d <= 0``, ``s - l d <= -l`` with ``0 <= s <= -l``."""
    zu, hu, d, lu, uu = ctx["z"], ctx["h"], ctx["d"], ctx["l"], ctx["u"]
    m = zu.size
    i = np.arange(m)
    s = B.columns(np.zeros(m), -lu)
    B.rows(np.concatenate([i, i, i]), np.concatenate([zu, hu, s]), np.concatenate([np.ones(m), -np.ones(m), np.ones(m)]),
           np.zeros(m), np.zeros(m))
    B.rows(np.concatenate([i, i]), np.concatenate([hu, d]), np.concatenate([np.ones(m), -uu]),
           np.full(m, -np.inf), np.zeros(m))
    B.rows(np.concatenate([i, i]), np.concatenate([s, d]), np.concatenate([np.ones(m), -lu]),
           np.full(m, -np.inf), -lu)
    return ("split", s)


def _relu_partition(B: _Builder, ctx, *, singletons: bool = False) -> tuple:
    """P-split rows (module docstring) for the unstable neurons of one layer, plus big-M's."""
    zu, hu, d, lu, uu = ctx["z"], ctx["h"], ctx["d"], ctx["l"], ctx["u"]
    _bigm_rows(B, zu, hu, d, lu, uu)
    W = ctx["block"].matrix[ctx["unstable"]].tocoo()  # the unstable neurons' incoming weights
    bias = ctx["block"].bias[ctx["unstable"]]
    prev = ctx["prev"]
    plo, phi = B.bounds_of(prev)
    m = zu.size
    form = ctx["formulation"]
    # set label of every nonzero: per neuron row, in the order of the COO entries
    order = np.lexsort((W.col, W.row))
    rows, cols, vals = W.row[order], W.col[order], W.data[order]
    if singletons:
        label = np.arange(rows.size) - np.searchsorted(rows, rows, side="left")
    else:
        label = np.empty(rows.size, dtype=np.int64)
        starts = np.searchsorted(rows, np.arange(m + 1), side="left")
        for j in range(m):  # one argsort per neuron (a fan-in's worth of work each)
            a, e = starts[j], starts[j + 1]
            label[a:e] = partition_sets(vals[a:e], form.partitions, form.partitioning)
    # (neuron, set) pairs that occur, numbered consecutively
    key = rows * (label.max(initial=0) + 1) + label
    uniq, set_of = np.unique(key, return_inverse=True)
    n_sets = uniq.size
    neuron_of_set = uniq // (label.max(initial=0) + 1)
    # interval bounds of s_n = sum_{i in S_n} w_i h_i, widened by the rounding of the sums
    t_lo = np.minimum(vals * plo[cols], vals * phi[cols])
    t_hi = np.maximum(vals * plo[cols], vals * phi[cols])
    L = np.bincount(set_of, weights=t_lo, minlength=n_sets)
    U = np.bincount(set_of, weights=t_hi, minlength=n_sets)
    size = np.bincount(set_of, minlength=n_sets)
    mag = np.bincount(set_of, weights=np.maximum(np.abs(t_lo), np.abs(t_hi)), minlength=n_sets)
    slack = (size + 2) * 2 * _EPS * mag + 1e-300
    L, U = L - slack, U + slack
    a = B.columns(np.minimum(L, 0.0), np.maximum(U, 0.0))
    k = np.arange(n_sets)
    dn = d[neuron_of_set]
    # h - sum_n a_n - b d = 0
    B.rows(np.concatenate([np.arange(m), neuron_of_set, np.arange(m)]), np.concatenate([hu, a, d]),
           np.concatenate([np.ones(m), -np.ones(n_sets), -bias]), np.zeros(m), np.zeros(m))
    # a_n - L_n d >= 0 and a_n - U_n d <= 0
    B.rows(np.concatenate([k, k]), np.concatenate([a, dn]), np.concatenate([np.ones(n_sets), -L]),
           np.zeros(n_sets), np.full(n_sets, np.inf))
    B.rows(np.concatenate([k, k]), np.concatenate([a, dn]), np.concatenate([np.ones(n_sets), -U]),
           np.full(n_sets, -np.inf), np.zeros(n_sets))
    # L_n <= s_n - a_n + L_n d  and  s_n - a_n + U_n d <= U_n
    sets_rows = np.concatenate([set_of, k, k])
    sets_cols = np.concatenate([prev[cols], a, dn])
    B.rows(sets_rows, sets_cols, np.concatenate([vals, -np.ones(n_sets), L]), L, np.full(n_sets, np.inf))
    B.rows(sets_rows, sets_cols, np.concatenate([vals, -np.ones(n_sets), U]), np.full(n_sets, -np.inf), U)
    # s_n = S h_prev: the MIP start's values of the sets' sums
    S = sp.csr_matrix((vals, (set_of, cols)), shape=(n_sets, prev.size))
    return ("partition", neuron_of_set, a, S)


def _relu_extended(B: _Builder, ctx) -> tuple:
    return _relu_partition(B, ctx, singletons=True)


#: formulation name -> encoder of one layer's unstable neurons
FORMULATIONS = {"bigm": _relu_bigm, "split": _relu_split, "partition": _relu_partition, "extended": _relu_extended}


def encode(blocks: list[AffineBlock], pre_bounds, out_bounds, x_lower, x_upper, A_spec, b_spec, *,
           formulation: Formulation | str = "bigm", constraints: InputConstraints | None = None) -> MilpModel:
    """MILP whose optimum is ``min_{x in region} max_i (A_spec f(x) - b_spec)_i``.

    ``pre_bounds``: one ``(l_k, u_k)`` numpy pair per hidden layer (``len(blocks) - 1``);
    ``out_bounds``: ``(l_y, u_y)``; ``x_lower``/``x_upper``: the input box; ``constraints``: an
    optional L1 ball and linear rows on the input; ``formulation``: see the module docstring.
    """
    if isinstance(formulation, str):
        formulation = Formulation.parse(formulation)
    if not isinstance(formulation, Formulation):
        raise InvalidInputError(f"`formulation` must be a Formulation or its name, got {type(formulation).__name__}")
    if len(pre_bounds) != len(blocks) - 1:
        raise InvalidInputError(f"need {len(blocks) - 1} pre-activation bound pairs, got {len(pre_bounds)}")
    x_lower = np.asarray(x_lower, dtype=np.float64).reshape(-1)
    x_upper = np.asarray(x_upper, dtype=np.float64).reshape(-1)
    n0 = blocks[0].matrix.shape[1]
    _check_bounds("input", x_lower, x_upper, n0)
    A_spec = np.atleast_2d(np.asarray(A_spec, dtype=np.float64))
    b_spec = np.asarray(b_spec, dtype=np.float64).reshape(-1)
    if A_spec.size == 0 or b_spec.size == 0:
        raise InvalidInputError("the spec needs at least one row")
    if not (np.all(np.isfinite(A_spec)) and np.all(np.isfinite(b_spec))):
        raise InvalidInputError("the spec rows must be finite")
    if constraints is not None:
        constraints.check(n0)

    B = _Builder()
    x = B.columns(x_lower, x_upper)
    prev_index = x
    layers, deferred = [], []
    for k, block in enumerate(blocks[:-1]):
        l, u = (np.asarray(a, dtype=np.float64).reshape(-1) for a in pre_bounds[k])
        nk = block.matrix.shape[0]
        _check_bounds(f"layer {k} pre-activation", l, u, nk)
        linear = np.zeros(nk, dtype=bool) if block.passthrough is None else np.asarray(block.passthrough, dtype=bool)
        unstable = np.flatnonzero((l < 0) & (u > 0) & ~linear)
        z = B.columns(l, u)
        h = B.columns(np.where(linear, l, np.maximum(l, 0.0)), np.where(linear, u, np.maximum(u, 0.0)))
        d = B.columns(np.zeros(unstable.size), np.ones(unstable.size), integer=True)
        B.affine(block, prev_index, z)
        active = np.flatnonzero((l >= 0) | linear)
        if active.size:  # h - z = 0
            i = np.arange(active.size)
            B.rows(np.concatenate([i, i]), np.concatenate([h[active], z[active]]),
                   np.concatenate([np.ones(active.size), -np.ones(active.size)]), np.zeros(active.size),
                   np.zeros(active.size))
        if unstable.size:
            deferred.append(dict(z=z[unstable], h=h[unstable], d=d, l=l[unstable], u=u[unstable], block=block,
                                 unstable=unstable, prev=prev_index, formulation=formulation, layer=k))
        layers.append((z, h, unstable, d))
        prev_index = h

    ly, uy = (np.asarray(a, dtype=np.float64).reshape(-1) for a in out_bounds)
    n_out = blocks[-1].matrix.shape[0]
    _check_bounds("output", ly, uy, n_out)
    if A_spec.shape[1] != n_out or A_spec.shape[0] != b_spec.size:
        raise InvalidInputError(f"spec rows must be ({b_spec.size}, {n_out}), got {A_spec.shape}")
    y = B.columns(ly, uy)
    B.affine(blocks[-1], prev_index, y)

    t_index = None
    if A_spec.shape[0] == 1:
        offset = -float(b_spec[0])
    else:
        # t = max_i (a_i y - b_i) at the optimum, so t may be bounded by the rows' ranges over the
        # output box (widened outwards): every y keeps a feasible t, and the model is bounded
        Ap, An = np.maximum(A_spec, 0), np.minimum(A_spec, 0)
        t_lo = Ap @ ly + An @ uy - b_spec
        t_hi = Ap @ uy + An @ ly - b_spec
        slack = 1e-9 * (np.abs(A_spec) @ np.maximum(np.abs(ly), np.abs(uy)) + np.abs(b_spec)) + 1e-300
        t_index = int(B.columns([np.max(t_lo - slack)], [np.max(t_hi + slack)])[0])
        m = A_spec.shape[0]
        nz_r, nz_c = np.nonzero(A_spec)
        B.rows(np.concatenate([nz_r, np.arange(m)]), np.concatenate([y[nz_c], np.full(m, t_index)]),
               np.concatenate([A_spec[nz_r, nz_c], -np.ones(m)]), np.full(m, -np.inf), b_spec)
        offset = 0.0

    l1_index = None
    if constraints is not None and constraints.l1_center is not None:
        # r_i >= x_i - c_i, r_i >= c_i - x_i, sum r <= eps
        cen, eps = constraints.l1_center, float(constraints.l1_eps)
        width = np.maximum(np.abs(x_upper - cen), np.abs(x_lower - cen))
        l1_index = B.columns(np.zeros(n0), np.minimum(width, eps))
        i = np.arange(n0)
        B.rows(np.concatenate([i, i]), np.concatenate([l1_index, x]), np.concatenate([np.ones(n0), -np.ones(n0)]),
               -cen, np.full(n0, np.inf))
        B.rows(np.concatenate([i, i]), np.concatenate([l1_index, x]), np.concatenate([np.ones(n0), np.ones(n0)]),
               cen, np.full(n0, np.inf))
        B.rows(np.zeros(n0), l1_index, np.ones(n0), [-np.inf], [eps])
    if constraints is not None and constraints.G is not None:
        G = sp.coo_matrix(constraints.G)
        B.rows(G.row, x[G.col], G.data, np.full(G.shape[0], -np.inf), constraints.g)

    aux = tuple(FORMULATIONS[formulation.name](B, ctx) for ctx in deferred)
    c = np.zeros(B.n_var)
    if t_index is None:
        c[y] = A_spec[0]
    else:
        c[t_index] = 1.0
    return MilpModel(c=c, offset=offset, A=B.matrix(), row_lower=np.concatenate(B.row_lo),
                     row_upper=np.concatenate(B.row_hi), col_lower=np.concatenate(B.col_lo),
                     col_upper=np.concatenate(B.col_hi), integrality=np.concatenate(B.integ), x_index=x,
                     y_index=y, t_index=t_index, layers=tuple(layers), spec_A=A_spec, spec_b=b_spec,
                     formulation=formulation.name, l1_index=l1_index,
                     l1_center=None if l1_index is None else constraints.l1_center, aux=aux)


def encode_bigm(blocks: list[AffineBlock], pre_bounds, out_bounds, x_lower, x_upper, A_spec, b_spec) -> MilpModel:
    """:func:`encode` with the big-M formulation over a box."""
    return encode(blocks, pre_bounds, out_bounds, x_lower, x_upper, A_spec, b_spec, formulation="bigm")


def complete_assignment(model: MilpModel, blocks: list[AffineBlock], x: np.ndarray) -> np.ndarray:
    """A full variable vector for the input point ``x`` (a MIP start): forward pass in float64,
    binaries from the activation signs, each formulation's auxiliaries from their definitions,
    values clipped into the column bounds."""
    v = np.zeros(model.n_vars)
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    v[model.x_index] = x
    h = x
    aux = iter(model.aux)
    for (z_idx, h_idx, unstable, d_idx), block in zip(model.layers, blocks[:-1]):
        z = block.matrix @ h + block.bias
        h_prev = h
        h = np.maximum(z, 0.0) if block.passthrough is None else np.where(block.passthrough, z, np.maximum(z, 0.0))
        v[z_idx] = z
        v[h_idx] = h
        active = z[unstable] > 0
        v[d_idx] = active.astype(np.float64)
        if not unstable.size:
            continue
        extra = next(aux)
        if extra[0] == "partition":  # a_n = s_n on the active side, 0 on the inactive one
            _, neuron_of_set, a_idx, S = extra
            v[a_idx] = (S @ h_prev) * active[neuron_of_set]
        elif extra[0] == "split":  # s = max(-z, 0)
            v[extra[1]] = np.maximum(-z[unstable], 0.0)
    y = blocks[-1].matrix @ h + blocks[-1].bias
    v[model.y_index] = y
    if model.t_index is not None:
        v[model.t_index] = float(np.max(model.spec_A @ y - model.spec_b))
    if model.l1_index is not None:
        v[model.l1_index] = np.abs(x - model.l1_center)
    return np.minimum(np.maximum(v, model.col_lower), model.col_upper)
