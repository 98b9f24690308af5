"""An exact rational reference for the verifier: forward passes, minimum spec margins and a
random case generator, all in ``fractions.Fraction`` arithmetic.

Every float64 weight, bias, box bound and spec coefficient is read exactly (``Fraction(float)``),
so the answers here are the *exact* truth for the network as gpuopt stores it
(``Network.affine_blocks()``), with no rounding anywhere:

* :func:`exact_forward` -- the output for a float64 input;
* :func:`exact_margin` -- ``min_k max_i (A_k y - b_k)_i`` of that output;
* :func:`exact_min_margin` -- the exact minimum of the margin over a box and an exact minimiser.
  Networks with one input use an exact piecewise-linear evaluation (all breakpoints computed
  exactly); others enumerate activation patterns depth first with pruning (every pattern prefix is
  a polyhedron in ``x``; a prefix is kept when a known point realises it or an exact LP finds it
  feasible) and solve, per full pattern and disjunct, the LP ``min t s.t. A_k y(x) - b_k <= t``
  with :func:`lp_minimize`, a dense bounded-variable rational simplex with Bland's rule;
* :func:`make_case` -- the seeded random case generator shared by ``tests/test_exact_reference.py``
  and ``benchmarks/exact_reference.py``.

Nothing here calls gpuopt's bounds, attack or MILP code. Floating point (HiGHS through scipy) is
used only to *propose* points and leaves whose exact checks then decide; it never decides
anything by itself.
"""

from __future__ import annotations

import itertools
import math
import weakref
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Sequence

import numpy as np

__all__ = [
    "RationalNet", "exact_forward", "exact_margin", "exact_rows", "LPResult", "lp_minimize",
    "ExactMin", "exact_min_margin", "pwl_min_margin", "lp_min_margin",
    "Case", "Variant", "make_case", "round_toward", "float_below", "float_above",
    "Outcome", "check_verdict", "run_case", "cheap_config", "TooManyRegions", "default_labels", "summarize",
]

ZERO = Fraction(0)


def _eliminate(row: dict, factor, prow: dict) -> None:
    """``row -= factor * prow`` on sparse rows (dicts), dropping entries that become zero."""
    if not factor:
        return
    for k, v in prow.items():
        nv = row.get(k, ZERO) - factor * v
        if nv:
            row[k] = nv
        else:
            row.pop(k, None)


ONE = Fraction(1)


# ------------------------------------------------------------------------------------ network
def _fr(v) -> Fraction:
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"non-finite number {v!r} cannot be read exactly")
    return Fraction(v)


_RATIONAL_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Network -> RationalNet


@dataclass
class RationalNet:
    """``Network.affine_blocks()`` read exactly: ``layers[l] = (rows, bias)`` with ``rows[i]`` a
    list of ``(column, Fraction)`` (the nonzeros of row ``i``) and ``bias`` a list of Fractions.
    The network is ``z_0 = M_0 x + c_0, h = relu(z_0), ..., y = z_L``."""

    n_in: int
    layers: list

    @staticmethod
    def of(net) -> "RationalNet":
        if isinstance(net, RationalNet):
            return net
        try:
            cached = _RATIONAL_CACHE.get(net)
        except TypeError:  # pragma: no cover - not weak-referenceable
            cached = None
        if cached is not None:
            return cached
        layers = []
        n_in = None
        for blk in net.affine_blocks():
            m = blk.matrix.tocsr()
            if n_in is None:
                n_in = m.shape[1]
            rows = []
            for i in range(m.shape[0]):
                lo, hi = m.indptr[i], m.indptr[i + 1]
                rows.append([(int(j), _fr(v)) for j, v in zip(m.indices[lo:hi], m.data[lo:hi]) if v != 0.0])
            layers.append((rows, [_fr(v) for v in np.asarray(blk.bias).reshape(-1)]))
        rn = RationalNet(n_in, layers)
        try:  # a Network is immutable: remember its exact view (without touching the object)
            _RATIONAL_CACHE[net] = rn
        except TypeError:  # pragma: no cover
            pass
        return rn

    @property
    def n_out(self) -> int:
        return len(self.layers[-1][1])

    @property
    def hidden_widths(self) -> list[int]:
        return [len(b) for _, b in self.layers[:-1]]

    def dense(self, layer: int) -> list[list[Fraction]]:
        rows, bias = self.layers[layer]
        n_prev = self.n_in if layer == 0 else len(self.layers[layer - 1][1])
        out = []
        for r in rows:
            d = [ZERO] * n_prev
            for j, v in r:
                d[j] = v
            out.append(d)
        return out

    def pre_activations(self, x: Sequence[Fraction]) -> tuple[list[list[Fraction]], list[Fraction]]:
        """``([z_0, ..., z_{L-1}], y)`` at the exact point ``x``."""
        h = list(x)
        pre = []
        for li, (rows, bias) in enumerate(self.layers):
            z = [sum((v * h[j] for j, v in r), c) for r, c in zip(rows, bias)]
            if li == len(self.layers) - 1:
                return pre, z
            pre.append(z)
            h = [v if v > 0 else ZERO for v in z]
        raise AssertionError("unreachable")


def _as_fractions(x) -> list[Fraction]:
    if isinstance(x, (list, tuple)) and all(isinstance(v, Fraction) for v in x):
        return list(x)
    return [_fr(v) for v in np.asarray(x, dtype=np.float64).reshape(-1)]


def exact_forward(net, x) -> list[Fraction]:
    """The network's output at ``x`` (float64 values, or a list of Fractions), exactly."""
    rn = RationalNet.of(net)
    xs = _as_fractions(x)
    if len(xs) != rn.n_in:
        raise ValueError(f"x has {len(xs)} entries, the network takes {rn.n_in}")
    return rn.pre_activations(xs)[1]


def _disjuncts(spec) -> list[tuple[list[list[Fraction]], list[Fraction]]]:
    """``[(A_k, b_k), ...]`` in Fractions from an OutputSpec or a sequence of float pairs."""
    pairs = spec.disjuncts if hasattr(spec, "disjuncts") else spec
    out = []
    for A, b in pairs:
        if isinstance(A, list) and A and isinstance(A[0], list) and isinstance(A[0][0], Fraction):
            out.append((A, list(b)))
            continue
        A = np.asarray(A, dtype=np.float64)
        A = A.reshape(1, -1) if A.ndim == 1 else A
        b = np.asarray(b, dtype=np.float64).reshape(-1)
        out.append(([[_fr(v) for v in row] for row in A], [_fr(v) for v in b]))
    return out


def exact_rows(y: Sequence[Fraction], disjuncts) -> list[list[Fraction]]:
    """``[[(A_k y - b_k)_i for i] for k]`` exactly."""
    return [[sum((a * v for a, v in zip(row, y)), -bi) for row, bi in zip(A, b)] for A, b in _disjuncts(disjuncts)]


def exact_margin(net, x, disjuncts) -> Fraction:
    """``min_k max_i (A_k f(x) - b_k)_i`` exactly; ``<= 0`` means ``f(x)`` is unsafe."""
    return min(max(r) for r in exact_rows(exact_forward(net, x), disjuncts))


# ------------------------------------------------------------------------------------ simplex
@dataclass
class LPResult:
    """``status``: ``"optimal"``, ``"infeasible"`` or ``"unbounded"``; ``x`` the structural
    values (Fractions) and ``value`` the objective at an optimum; ``iterations`` pivots+flips."""

    status: str
    value: Fraction | None = None
    x: list | None = None
    iterations: int = 0


def lp_minimize(c: Sequence, G: Sequence[Sequence], g: Sequence, lb: Sequence, ub: Sequence, *,
                phase_one_only: bool = False, max_iter: int = 100_000) -> LPResult:
    """Exactly ``min c.x s.t. G x <= g, lb <= x <= ub`` (``None`` bounds are infinite).

    A bounded-variable primal simplex on a sparse tableau of Fractions. Each row gets a slack
    ``s >= 0``; rows violated at the starting point (every variable at a finite bound, free ones
    at 0) get an artificial variable instead, and Phase I minimises their sum. Artificials left
    at 0 are then fixed to ``[0, 0]`` and Phase II minimises ``c.x``. Bland's rule (smallest
    eligible index enters; smallest index leaves among ratio ties, the entering variable's own
    bound flip included) prevents cycling. ``phase_one_only`` stops after Phase I (a feasibility
    check; ``value`` is then 0 and ``x`` a feasible point).
    """
    n = len(lb)
    m = len(G)
    c = [Fraction(v) for v in c]
    lbs = [None if v is None else Fraction(v) for v in lb]
    ubs = [None if v is None else Fraction(v) for v in ub]
    for j in range(n):
        if lbs[j] is not None and ubs[j] is not None and lbs[j] > ubs[j]:
            return LPResult("infeasible")
    val = [lbs[j] if lbs[j] is not None else (ubs[j] if ubs[j] is not None else ZERO) for j in range(n)]
    rows: list[dict] = []
    basis: list[int] = []
    art: list[int] = []
    # variables: 0..n-1 structural, n..n+m-1 slacks, then artificials
    for i in range(m):
        Gi = {j: Fraction(v) for j, v in enumerate(G[i]) if v != 0}
        r = Fraction(g[i]) - sum((v * val[j] for j, v in Gi.items()), ZERO)
        s = n + i
        lbs.append(ZERO)
        ubs.append(None)
        if r >= 0:
            Gi[s] = ONE
            rows.append(Gi)
            basis.append(s)
            val.append(r)
        else:
            val.append(ZERO)
            art.append(i)
            rows.append(Gi)
            basis.append(-1)
    n_slack_end = n + m
    for idx, i in enumerate(art):
        a = n_slack_end + idx
        Gi = rows[i]
        r = -sum((v * val[j] for j, v in Gi.items() if j < n), -Fraction(g[i]))  # g_i - G_i v < 0
        row = {j: -v for j, v in Gi.items()}
        row[n + i] = -ONE
        row[a] = ONE
        rows[i] = row
        basis[i] = a
        lbs.append(ZERO)
        ubs.append(None)
        val.append(-r)
    N = len(val)
    is_basic = [False] * N
    for b in basis:
        is_basic[b] = True
    iters = 0

    def reduced_costs(cost: dict) -> dict:
        d = dict(cost)
        for i, b in enumerate(basis):
            cb = cost.get(b)
            if cb:
                for j, v in rows[i].items():
                    d[j] = d.get(j, ZERO) - cb * v
        return {j: v for j, v in d.items() if v != 0 and not is_basic[j]}

    def run(d: dict) -> str:
        nonlocal iters
        while True:
            enter = None
            for j in sorted(d):
                dj = d[j]
                if dj < 0 and (ubs[j] is None or val[j] < ubs[j]):
                    enter, dirn = j, 1
                    break
                if dj > 0 and (lbs[j] is None or val[j] > lbs[j]):
                    enter, dirn = j, -1
                    break
            if enter is None:
                return "optimal"
            iters += 1
            if iters > max_iter:
                raise RuntimeError("rational simplex: iteration limit (cycling?)")
            j = enter
            theta = None
            leave_row = None  # None with a finite theta: the entering variable flips bounds
            leave_var = None
            if lbs[j] is not None and ubs[j] is not None:
                theta, leave_var = ubs[j] - lbs[j], j
            for i, row in enumerate(rows):
                t = row.get(j)
                if not t:
                    continue
                delta = -t * dirn  # change of the basic variable per unit step
                b = basis[i]
                if delta < 0:
                    if lbs[b] is None:
                        continue
                    lim = (val[b] - lbs[b]) / -delta
                else:
                    if ubs[b] is None:
                        continue
                    lim = (ubs[b] - val[b]) / delta
                if theta is None or lim < theta or (lim == theta and b < leave_var):
                    theta, leave_row, leave_var = lim, i, b
            if theta is None:
                return "unbounded"
            if theta:
                val[j] += dirn * theta
                for i, row in enumerate(rows):
                    t = row.get(j)
                    if t:
                        val[basis[i]] -= t * dirn * theta
            if leave_row is None:
                continue  # bound flip
            # pivot: j enters in row leave_row
            prow = rows[leave_row]
            piv = prow[j]
            if piv != 1:
                prow = {k: v / piv for k, v in prow.items()}
                rows[leave_row] = prow
            out = basis[leave_row]
            # snap the leaving variable exactly onto the bound it reached
            val[out] = lbs[out] if (lbs[out] is not None and val[out] == lbs[out]) else \
                (ubs[out] if ubs[out] is not None and val[out] == ubs[out] else val[out])
            basis[leave_row] = j
            is_basic[out] = False
            is_basic[j] = True
            for i, row in enumerate(rows):
                if i != leave_row:
                    _eliminate(row, row.get(j), prow)
            _eliminate(d, d.get(j), prow)
            d.pop(j, None)
            for k in list(d):
                if is_basic[k]:  # pragma: no cover - kept consistent by the elimination above
                    d.pop(k)

    if art:
        cost1 = {n_slack_end + idx: ONE for idx in range(len(art))}
        st = run(reduced_costs(cost1))
        assert st == "optimal"
        if sum((val[n_slack_end + idx] for idx in range(len(art))), ZERO) > 0:
            return LPResult("infeasible", iterations=iters)
        for idx in range(len(art)):
            a = n_slack_end + idx
            lbs[a] = ubs[a] = ZERO
    if phase_one_only:
        return LPResult("optimal", ZERO, val[:n], iters)
    cost = {j: v for j, v in enumerate(c) if v != 0}
    st = run(reduced_costs(cost))
    if st == "unbounded":
        return LPResult("unbounded", iterations=iters)
    x = val[:n]
    return LPResult("optimal", sum((cj * xj for cj, xj in zip(c, x)), ZERO), x, iters)


# ------------------------------------------------------------------------------ exact minimum
@dataclass
class ExactMin:
    """``value``: the exact minimum over the box of ``min_k max_i (A_k f(x) - b_k)_i``;
    ``argmin``: an exact minimiser (Fractions, inside the box); ``method``: ``"pwl"`` or ``"lp"``;
    ``n_regions``: linear pieces (1-D) or full activation patterns visited; ``n_lps``: exact LPs."""

    value: Fraction
    argmin: list
    method: str
    n_regions: int = 0
    n_lps: int = 0
    n_float_lps: int = 0

    def argmin_floats(self) -> np.ndarray:
        return np.array([float(v) for v in self.argmin])


class TooManyRegions(RuntimeError):
    """The enumeration exceeded ``max_regions`` (the case is too big for the reference)."""


def exact_min_margin(net, lower, upper, disjuncts, *, method: str = "auto",
                     max_regions: int | None = None, float_hints: bool = True) -> ExactMin:
    """Exact ``min_{lower <= x <= upper} min_k max_i (A_k f(x) - b_k)_i`` and a minimiser.

    ``disjuncts``: an OutputSpec or a sequence of ``(A_k, b_k)``. ``method``: ``"pwl"`` (one
    input only: exact piecewise-linear evaluation), ``"lp"`` (activation patterns + exact LPs) or
    ``"auto"`` (``"pwl"`` for one input). ``max_regions`` raises :class:`TooManyRegions` beyond
    that many full patterns. ``float_hints`` lets HiGHS propose feasible points first (each is
    checked exactly; turning it off only makes the search slower).
    """
    rn = RationalNet.of(net)
    lo = _as_fractions(lower)
    hi = _as_fractions(upper)
    if len(lo) != rn.n_in or len(hi) != rn.n_in:
        raise ValueError("box size does not match the network")
    if any(a > b for a, b in zip(lo, hi)):
        raise ValueError("empty box")
    disj = _disjuncts(disjuncts)
    if method == "auto":
        method = "pwl" if rn.n_in == 1 else "lp"
    if method == "pwl":
        return pwl_min_margin(rn, lo, hi, disj, max_regions=None if max_regions is None else 50 * max_regions)
    if method == "lp":
        return lp_min_margin(rn, lo, hi, disj, max_regions=max_regions, float_hints=float_hints)
    raise ValueError(f"unknown method {method!r}")


# ---- 1-D: exact piecewise-linear evaluation
def _insert_crossings(X: list, V: list[list], pairs) -> tuple[list, list[list]]:
    """Refine the breakpoints ``X`` (values ``V[t][f]`` of functions ``f`` linear between
    consecutive breakpoints) with every point where ``pairs`` (a function ``(t, f) -> value of
    the sign-tested combination``) changes sign strictly inside an interval."""
    nX, nV = [X[0]], [V[0]]
    for t in range(len(X) - 1):
        x0, x1 = X[t], X[t + 1]
        v0, v1 = V[t], V[t + 1]
        cuts = set()
        for a0, a1 in pairs(v0, v1):
            if (a0 < 0 < a1) or (a1 < 0 < a0):
                cuts.add(x0 + (x1 - x0) * (a0 / (a0 - a1)))
        for xc in sorted(cuts):
            lam = (xc - x0) / (x1 - x0)
            nX.append(xc)
            nV.append([p + (q - p) * lam for p, q in zip(v0, v1)])
        nX.append(x1)
        nV.append(v1)
    return nX, nV


def pwl_min_margin(rn: RationalNet, lo: list, hi: list, disj, *, max_regions: int | None = None) -> ExactMin:
    """One-input networks: propagate the values of every neuron at a set of breakpoints that
    makes each one linear between consecutive breakpoints (ReLU sign changes are inserted
    exactly), then minimise the margin, whose kinks (row crossings) are inserted as well."""
    if rn.n_in != 1:
        raise ValueError("pwl_min_margin needs a network with one input")
    X = [lo[0]] if lo[0] == hi[0] else [lo[0], hi[0]]
    V = [[x] for x in X]
    L = len(rn.layers)
    for li, (rows, bias) in enumerate(rn.layers):
        V = [[sum((w * v[j] for j, w in r), cb) for r, cb in zip(rows, bias)] for v in V]
        if li < L - 1:
            if len(X) > 1:
                X, V = _insert_crossings(X, V, lambda v0, v1: zip(v0, v1))
            V = [[z if z > 0 else ZERO for z in v] for v in V]
            if max_regions is not None and len(X) - 1 > max_regions:
                raise TooManyRegions(f"more than {max_regions} linear pieces")
    best, arg = None, None
    for A, b in disj:
        R = [[sum((a * yy for a, yy in zip(row, v)), -bi) for row, bi in zip(A, b)] for v in V]
        Xk = X
        if len(X) > 1 and len(A) > 1:
            def pairs(r0, r1, M=len(A)):
                for i in range(M):
                    for j in range(i + 1, M):
                        yield r0[i] - r0[j], r1[i] - r1[j]
            Xk, R = _insert_crossings(X, R, pairs)
        for x, r in zip(Xk, R):
            m = max(r)
            if best is None or m < best:
                best, arg = m, [x]
    return ExactMin(best, arg, "pwl", n_regions=max(1, len(X) - 1))


# ---- general: activation patterns + exact LPs
def _float_point(G, g, lo, hi, *, objective=None):
    """HiGHS's guess of a point of ``{G x <= g} ∩ box`` (rows normalised; the Chebyshev-like
    slack ``r`` is maximised so the point tends to be interior), or ``None``."""
    from scipy.optimize import linprog

    n = len(lo)
    lo_f = np.array([float(v) for v in lo])
    hi_f = np.array([float(v) for v in hi])
    if not G:
        return None
    Gf = np.array([[float(v) for v in row] for row in G])
    gf = np.array([float(v) for v in g])
    norms = np.abs(Gf).max(axis=1)
    norms[norms == 0] = 1.0
    Gn, gn = Gf / norms[:, None], gf / norms
    width = float(np.max(hi_f - lo_f)) if n else 0.0
    cap = max(width, 1e-300)
    if not (np.all(np.isfinite(Gn)) and np.all(np.isfinite(gn))):
        return None
    # maximise r s.t. Gn x + r <= gn, r <= cap
    A_ub = np.hstack([Gn, np.ones((len(Gn), 1))])
    c = np.zeros(n + 1)
    c[-1] = -1.0
    try:
        res = linprog(c, A_ub=A_ub, b_ub=gn, bounds=list(zip(lo_f, hi_f)) + [(None, cap)], method="highs")
    except ValueError:
        return None
    if res.status != 0 or res.x is None:
        return None
    return np.clip(res.x[:n], lo_f, hi_f)


@dataclass
class _Pool:
    """Exact points in the box with their exact pre-activations and outputs."""

    pts: list = field(default_factory=list)
    pre: list = field(default_factory=list)
    out: list = field(default_factory=list)

    def add(self, rn: RationalNet, x: list) -> int:
        p, y = rn.pre_activations(x)
        self.pts.append(x)
        self.pre.append(p)
        self.out.append(y)
        return len(self.pts) - 1


def _box_samples(lo: list, hi: list, rng: np.random.Generator, n_random: int = 12) -> list[list[Fraction]]:
    n = len(lo)
    pts = [[(a + b) / 2 for a, b in zip(lo, hi)]]
    if n <= 4:
        for bits in itertools.product([0, 1], repeat=n):
            pts.append([hi[i] if bit else lo[i] for i, bit in enumerate(bits)])
    else:
        for _ in range(8):
            bits = rng.random(n) < 0.5
            pts.append([hi[i] if bit else lo[i] for i, bit in enumerate(bits)])
    lo_f = np.array([float(v) for v in lo])
    hi_f = np.array([float(v) for v in hi])
    for _ in range(n_random):
        u = lo_f + (hi_f - lo_f) * rng.random(n)
        pts.append([min(max(_fr(v), a), b) for v, a, b in zip(u, lo, hi)])
    return pts


def _dot(row, x):
    return sum((a * b for a, b in zip(row, x) if a), ZERO)


def lp_min_margin(rn: RationalNet, lo: list, hi: list, disj, *, max_regions: int | None = None,
                  float_hints: bool = True, seed: int = 0) -> ExactMin:
    """Exact minimum by activation-pattern enumeration (closed regions ``z_j >= 0`` active,
    ``z_j <= 0`` inactive; their union is the box and ``f`` is the pattern's affine map on each)
    and one exact LP per surviving (pattern, disjunct). A pattern whose cheap exact lower bound
    (over the whole box) is not below the best value found so far is skipped."""
    n = rn.n_in
    L = len(rn.layers)
    dense = [rn.dense(l) for l in range(L)]
    biases = [list(rn.layers[l][1]) for l in range(L)]
    rng = np.random.default_rng(seed)
    pool = _Pool()
    for x in _box_samples(lo, hi, rng):
        pool.add(rn, x)
    stats = {"regions": 0, "lps": 0, "flps": 0}

    # exact interval bounds over the box: neurons stable on the whole box need no branching
    zl, zu = [], []
    hl, hu = list(lo), list(hi)
    for l in range(L - 1):
        W, c = dense[l], biases[l]
        lo_l = [sum((w * (hl[j] if w > 0 else hu[j]) for j, w in enumerate(row) if w), cb) for row, cb in zip(W, c)]
        up_l = [sum((w * (hu[j] if w > 0 else hl[j]) for j, w in enumerate(row) if w), cb) for row, cb in zip(W, c)]
        zl.append(lo_l)
        zu.append(up_l)
        hl = [max(v, ZERO) for v in lo_l]
        hu = [max(v, ZERO) for v in up_l]

    best: list = [None, None]  # value, argmin

    def offer(val, x):
        if best[0] is None or val < best[0]:
            best[0], best[1] = val, x

    def margin_of(y):
        return min(max(_dot(row, y) - bi for row, bi in zip(A, b)) for A, b in disj)

    for k in range(len(pool.pts)):
        offer(margin_of(pool.out[k]), pool.pts[k])

    leaves = []  # (lower bound, P, q, G, g)

    def feasible(G, g) -> int | None:
        """Index in the pool of a point of ``{G x <= g} ∩ box``, or ``None`` if it is empty."""
        if float_hints:
            stats["flps"] += 1
            xf = _float_point(G, g, lo, hi)
            if xf is not None:
                x = [min(max(_fr(v), a), b) for v, a, b in zip(xf, lo, hi)]
                if all(_dot(row, x) <= gi for row, gi in zip(G, g)):
                    idx = pool.add(rn, x)
                    offer(margin_of(pool.out[idx]), x)
                    return idx
        stats["lps"] += 1
        res = lp_minimize([ZERO] * n, G, g, lo, hi, phase_one_only=True)
        if res.status != "optimal":
            return None
        idx = pool.add(rn, res.x)
        offer(margin_of(pool.out[idx]), res.x)
        return idx

    def leaf(P, q, G, g):
        stats["regions"] += 1
        if max_regions is not None and stats["regions"] > max_regions:
            raise TooManyRegions(f"more than {max_regions} activation patterns")
        for A, b in disj:
            coef = [[sum((a * P[o][j] for o, a in enumerate(row) if a), ZERO) for j in range(n)] for row in A]
            const = [_dot(row, q) - bi for row, bi in zip(A, b)]
            lbs = [sum((cj * (lo[j] if cj > 0 else hi[j]) for j, cj in enumerate(cr) if cj), cc)
                   for cr, cc in zip(coef, const)]
            leaves.append((max(lbs), coef, const, G, g))

    def layer(l, P, q, G, g, members):
        """``P x + q`` is the input of layer ``l`` on the region ``{G x <= g}``; ``members`` are
        pool points known to lie in it."""
        if l == L - 1:
            W, c = dense[l], biases[l]
            Py = [[_dot(row, [P[o][j] for o in range(len(P))]) for j in range(n)] for row in W]
            qy = [_dot(row, q) + cb for row, cb in zip(W, c)]
            leaf(Py, qy, G, g)
            return
        W, c = dense[l], biases[l]
        Pz = [[sum((w * P[o][j] for o, w in enumerate(row) if w), ZERO) for j in range(n)] for row in W]
        qz = [_dot(row, q) + cb for row, cb in zip(W, c)]
        width = len(W)

        def neuron(j, G, g, members, active):
            if j == width:
                Ph = [Pz[i] if active[i] else [ZERO] * n for i in range(width)]
                qh = [qz[i] if active[i] else ZERO for i in range(width)]
                layer(l + 1, Ph, qh, G, g, members)
                return
            for is_active in (True, False):
                if is_active and zu[l][j] < 0:
                    continue
                if not is_active and zl[l][j] > 0:
                    continue
                if is_active and zl[l][j] >= 0 or not is_active and zu[l][j] <= 0:
                    # stable on the whole box: the constraint holds everywhere, add nothing
                    neuron(j + 1, G, g, members, active + [is_active])
                    continue
                row = [-v for v in Pz[j]] if is_active else list(Pz[j])
                rhs = qz[j] if is_active else -qz[j]
                if not any(row):
                    if rhs >= 0:
                        neuron(j + 1, G, g, members, active + [is_active])
                    continue
                mem = [k for k in members if (pool.pre[k][l][j] >= 0 if is_active else pool.pre[k][l][j] <= 0)]
                G2, g2 = G + [row], g + [rhs]
                if not mem:
                    idx = feasible(G2, g2)
                    if idx is None:
                        continue
                    mem = [idx]
                neuron(j + 1, G2, g2, mem, active + [is_active])

        neuron(0, G, g, members, [])

    eye = [[ONE if i == j else ZERO for j in range(n)] for i in range(n)]
    layer(0, eye, [ZERO] * n, [], [], list(range(len(pool.pts))))

    leaves.sort(key=lambda t: t[0])
    for lb, coef, const, G, g in leaves:
        if best[0] is not None and lb >= best[0]:
            break
        M = len(coef)
        stats["lps"] += 1
        if M == 1:
            res = lp_minimize(coef[0], G, g, lo, hi)
            if res.status == "optimal":
                offer(res.value + const[0], res.x)
        else:  # variables (x, t): min t  s.t.  coef_i x - t <= -const_i
            G2 = [row + [ZERO] for row in G] + [cr + [-ONE] for cr in coef]
            g2 = list(g) + [-cc for cc in const]
            res = lp_minimize([ZERO] * n + [ONE], G2, g2, list(lo) + [None], list(hi) + [None])
            if res.status == "optimal":
                offer(res.value, res.x[:n])
        if res.status == "unbounded":  # pragma: no cover - the box bounds every variable
            raise RuntimeError("unbounded leaf LP")
    return ExactMin(best[0], best[1], "lp", n_regions=stats["regions"], n_lps=stats["lps"],
                    n_float_lps=stats["flps"])


# ------------------------------------------------------------------------------ floats
def float_below(q: Fraction) -> float:
    """The largest float64 strictly below ``q``."""
    f = float(q)
    return f if Fraction(f) < q else math.nextafter(f, -math.inf)


def float_above(q: Fraction) -> float:
    """The smallest float64 strictly above ``q``."""
    f = float(q)
    return f if Fraction(f) > q else math.nextafter(f, math.inf)


def round_toward(q: Fraction, up: bool) -> float:
    """``q`` rounded to float64 upward (``up``) or downward; exact when representable."""
    f = float(q)
    if Fraction(f) == q:
        return f
    if up:
        return f if Fraction(f) > q else math.nextafter(f, math.inf)
    return f if Fraction(f) < q else math.nextafter(f, -math.inf)


# ------------------------------------------------------------------------------ generator
@dataclass
class Variant:
    """One spec offset of a case: ``b_k`` for every disjunct, the exact sign of the exact minimum
    margin (``truth``: ``"sat"`` iff the minimum is ``<= 0``) and a label (``"zero"``: the
    minimum is exactly 0; ``"ulp-"``/``"ulp+"``: every ``b`` entry one rounding step below/above
    the optimum, so the minimum is a hair above/below 0; ``"rel-7"``/``"rel+7"``: 1e-7 relative
    below/above it; ``"rel-3"``/``"rel+3"``, ``"rel-1"``/``"rel+1"``: 1e-3 and 0.1 relative)."""

    label: str
    b: list
    truth: str
    exact_min: Fraction | None = None  # known exactly only for "zero"


@dataclass
class Case:
    seed: int
    net: object
    lower: np.ndarray
    upper: np.ndarray
    A: list  # per disjunct (m_k, n_out) float64
    b0: list  # per disjunct base offsets
    m0: Fraction  # exact min margin with b = b0
    argmin: list
    variants: list
    info: dict

    def spec(self, variant: Variant):
        from gpuopt.specs import OutputSpec
        return OutputSpec([(A, np.asarray(b, dtype=np.float64)) for A, b in zip(self.A, variant.b)],
                          self.net.output_size)

    def exact_margin_at(self, x, variant: Variant) -> Fraction:
        return exact_margin(self.net, x, [(A, np.asarray(b)) for A, b in zip(self.A, variant.b)])


def _weights(rng, shape, scale, lowprec: bool):
    w = rng.normal(size=shape)
    if lowprec:  # 6 significant bits and a power-of-two scale: float arithmetic is often exact
        return _lowprec_round(w) * 2.0 ** round(math.log2(scale))
    return (w * scale).astype(np.float32).astype(np.float64)


def _f32(a):
    return np.asarray(a, dtype=np.float64).astype(np.float32).astype(np.float64)


def make_network(rng: np.random.Generator, n_in: int, widths: list[int], n_out: int, lower, upper, *,
                 lowprec: bool = False, dead_p: float = 0.12, dup_p: float = 0.15, log_scale: float = 6.0):
    """A ``Dense, ReLU, ..., Dense`` network with float32-representable weights scaled by
    ``10**uniform(-log_scale, log_scale)`` per layer (the running product is kept within 1e+-18),
    biases that put most neurons' kinks inside the box (from the spread of sampled
    pre-activations), some dead neurons (a large negative bias) and duplicated neurons."""
    from gpuopt.network import Dense, Network, ReLU

    layers = []
    lower = np.asarray(lower, dtype=np.float64)
    upper = np.asarray(upper, dtype=np.float64)
    h = lower + (upper - lower) * rng.random((64, n_in))
    h = np.vstack([h, lower[None], upper[None]])
    cum = 0.0
    prev = n_in
    for li, w_out in enumerate(list(widths) + [n_out]):
        s = rng.uniform(-log_scale, log_scale)
        if abs(cum + s) > 18:
            s = -s
        cum += s
        W = _weights(rng, (w_out, prev), 10.0 ** s, lowprec)
        z = h @ W.T
        spread = np.maximum(z.std(axis=0), np.abs(z).mean(axis=0) * 1e-3) + 1e-30
        last = li == len(widths)
        if last:
            bias = _f32(rng.normal(size=w_out) * spread)
        else:
            q = rng.uniform(0.1, 0.9, size=w_out)
            bias = _f32(-np.array([np.quantile(z[:, i], q[i]) for i in range(w_out)]))
            for i in range(w_out):
                u = rng.random()
                if u < dead_p:
                    bias[i] = _f32(-(np.abs(z[:, i]).max() * 4 + spread[i]))[()]
                elif u < dead_p + dup_p and i > 0:
                    src = int(rng.integers(0, i))
                    W[i] = W[src]
                    bias[i] = bias[src]
            if lowprec:
                bias = _lowprec_round(bias)
        layers.append(Dense(W, bias))
        if not last:
            layers.append(ReLU())
            h = np.maximum(h @ W.T + bias, 0.0)
        prev = w_out
    return Network(layers, (n_in,))


def _lowprec_round(a):
    a = np.asarray(a, dtype=np.float64)
    e = np.floor(np.log2(np.abs(a) + 1e-300))
    return np.where(a == 0, 0.0, np.round(a / 2.0 ** (e - 5)) * 2.0 ** (e - 5))


def _make_box(rng, n_in, lowprec: bool):
    centre = rng.normal(size=n_in) * 10.0 ** rng.uniform(-2, 2)
    half = np.abs(centre).max() * 10.0 ** rng.uniform(-4, 0) + 10.0 ** rng.uniform(-3, 0)
    half = half * rng.uniform(0.2, 1.0, size=n_in)
    if lowprec:
        centre, half = _lowprec_round(centre), _lowprec_round(half)
    lower, upper = _f32(centre - half), _f32(centre + half)
    fixed = rng.random(n_in) < (0.1 if n_in > 1 else 0.03)
    upper = np.where(fixed, lower, upper)
    return lower, np.maximum(lower, upper)


def _make_A(rng, n_out, kinds):
    A = []
    for m in kinds:
        if rng.random() < 0.4:
            a = rng.integers(-1, 2, size=(m, n_out)).astype(np.float64)
            a[np.all(a == 0, axis=1), 0] = 1.0
        else:
            a = rng.normal(size=(m, n_out))
            if rng.random() < 0.5:
                a = _lowprec_round(a)
        A.append(a)
    return A


def make_case(seed: int, *, max_regions: int = 400, deep_1d_p: float = 0.3) -> Case:
    """The seeded random case ``seed``: a tiny network (1-20 inputs with at most 14 hidden
    neurons, width 1-3 and depth 1-6; or 1 input with depth up to 30 and width 1-2), a box,
    1-3 disjuncts of 1-3 rows, the exact minimum margin ``m0`` for base offsets ``b0`` (zero or
    random), and offset variants around the optimum (see :class:`Variant`). Networks whose
    pattern enumeration exceeds ``max_regions`` are redrawn (deterministically)."""
    for attempt in range(50):
        rng = np.random.default_rng([seed, attempt, 20240607])
        deep = rng.random() < deep_1d_p
        lowprec = rng.random() < 0.35
        if deep:
            n_in = 1
            depth = int(rng.integers(1, 31))
            widths = [int(rng.integers(1, 3)) for _ in range(depth)]
        else:
            n_in = int(rng.choice([1, 2, 2, 3, 3, 4, 5, 6, 8, 10, 12, 16, 20]))
            depth = int(rng.integers(1, 7))
            widths = [int(rng.integers(1, 4)) for _ in range(depth)]
            while sum(widths) > 14:
                widths.pop()
        n_out = int(rng.integers(1, 4))
        lower, upper = _make_box(rng, n_in, lowprec)
        net = make_network(rng, n_in, widths, n_out, lower, upper, lowprec=lowprec,
                           dead_p=0.02 if deep else 0.12, dup_p=0.05 if deep else 0.15)
        K = int(rng.integers(1, 4))
        A = _make_A(rng, n_out, [int(rng.integers(1, 4)) for _ in range(K)])
        zero_b = rng.random() < 0.5
        if zero_b:
            b0 = [np.zeros(a.shape[0]) for a in A]
        else:
            b0 = []
            y = net.forward64(np.vstack([lower, upper, 0.5 * (lower + upper)]))
            ys = float(np.abs(y).max()) + 1e-300
            for a in A:
                b0.append(_f32(rng.normal(size=a.shape[0]) * ys * 0.1))
        try:
            ref = exact_min_margin(net, lower, upper, list(zip(A, b0)), max_regions=max_regions)
        except TooManyRegions:
            continue
        m0 = ref.value
        variants = _variants(m0, b0, A, net, ref)
        info = {"n_in": n_in, "widths": widths, "n_out": n_out, "K": K, "lowprec": lowprec,
                "deep_1d": deep, "attempt": attempt, "regions": ref.n_regions, "lps": ref.n_lps,
                "method": ref.method}
        return Case(seed, net, lower, upper, A, b0, m0, ref.argmin, variants, info)
    raise RuntimeError(f"seed {seed}: no case small enough for the reference")


def _variants(m0: Fraction, b0: list, A: list, net, ref: ExactMin) -> list[Variant]:
    """Offsets ``b = b0 + delta`` (each entry rounded *away* from the boundary, strictly, so the
    sign of the exact minimum ``m0 - delta`` is known: raising every entry of ``b`` lowers every
    row, so the minimum can only drop, and lowering it can only raise the minimum)."""
    out = []
    b0f = [[Fraction(float(v)) for v in b] for b in b0]
    exact = [[bi + m0 for bi in b] for b in b0f]
    if all(Fraction(float(v)) == v for b in exact for v in b):
        out.append(Variant("zero", [[float(v) for v in b] for b in exact], "sat", Fraction(0)))
    out.append(Variant("ulp-", [[float_below(v) for v in b] for b in exact], "unsat"))
    out.append(Variant("ulp+", [[float_above(v) for v in b] for b in exact], "sat"))
    # the scale relative offsets are measured against: |m0|, or the rows' size at the minimiser
    y = exact_forward(net, ref.argmin)
    rows = [abs(v) for r in exact_rows(y, list(zip(A, [np.zeros(len(b)) for b in b0]))) for v in r]
    scale = max([abs(m0)] + rows + [Fraction(1, 10 ** 300)])
    for tag, rel in (("7", Fraction(1, 10 ** 7)), ("3", Fraction(1, 1000)), ("1", Fraction(1, 10))):
        d = scale * rel
        out.append(Variant("rel-" + tag, [[float_below(v - d) for v in b] for b in exact], "unsat"))
        out.append(Variant("rel+" + tag, [[float_above(v + d) for v in b] for b in exact], "sat"))
    return out


# ------------------------------------------------------------------------------ checking verdicts
@dataclass
class Outcome:
    """One verify call on one variant: ``status`` as reported, ``truth`` the exact answer,
    ``wrong`` with a ``reason`` when the verdict contradicts exact arithmetic."""

    seed: int
    label: str
    truth: str
    status: str
    wrong: bool
    reason: str
    seconds: float
    decided_by: str | None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def check_verdict(case: Case, variant: Variant, verdict) -> tuple[bool, str]:
    """``(wrong, reason)``: a ``sat`` must come with a point inside the box whose *exact* margin
    is ``<= 0``; an ``unsat`` needs an exact minimum ``> 0``."""
    status = verdict.status.value
    if status == "sat":
        x = verdict.counterexample
        if x is None:
            return True, "sat without a counterexample"
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if x.shape != case.lower.shape or not np.all(np.isfinite(x)):
            return True, f"counterexample of shape {x.shape} / not finite"
        if np.any(x < case.lower) or np.any(x > case.upper):
            return True, "counterexample outside the box"
        m = case.exact_margin_at(x, variant)
        if m > 0:
            return True, f"sat, but the counterexample's exact margin is {float(m):.3e} > 0 (truth {variant.truth})"
        return False, ""
    if status == "unsat" and variant.truth == "sat":
        return True, f"unsat, but the exact minimum is <= 0 (variant {variant.label}, m0 = {float(case.m0):.6e})"
    return False, ""


def run_case(case: Case, *, timeout: float, config=None, labels=None, catch: bool = False) -> list[Outcome]:
    """Verify every variant of ``case`` (or those in ``labels``) and check each verdict.
    ``catch``: record an exception from ``verify`` as status ``"error"`` instead of raising."""
    import time

    from gpuopt import Box, VerifyConfig, verify

    config = config if config is not None else VerifyConfig()
    out = []
    for v in case.variants:
        if labels is not None and v.label not in labels:
            continue
        t0 = time.monotonic()
        try:
            verdict = verify(case.net, Box(case.lower, case.upper), case.spec(v), timeout=timeout, config=config)
        except Exception as err:  # noqa: BLE001 - reported, not hidden
            if not catch:
                raise
            out.append(Outcome(case.seed, v.label, v.truth, "error", False, f"{type(err).__name__}: {err}",
                               time.monotonic() - t0, None))
            continue
        dt = time.monotonic() - t0
        wrong, reason = check_verdict(case, v, verdict)
        out.append(Outcome(case.seed, v.label, v.truth, verdict.status.value, wrong, reason, dt,
                           verdict.decided_by))
    return out


def cheap_config():
    """The pipeline with a short attack (8 restarts x 20 steps), for many small cases."""
    from dataclasses import replace

    from gpuopt import VerifyConfig
    from gpuopt.attacks import AttackConfig

    return VerifyConfig(attack=replace(AttackConfig(), restarts=8, steps=20), device="cpu")


def default_labels(case: Case) -> set[str]:
    """The variants the randomized test runs for ``case``: the exact optimum (when ``b`` can
    hold it), one rounding step either side, and one relative offset pair (1e-7, 1e-3 or 0.1 by
    seed)."""
    tag = ("7", "3", "1")[case.seed % 3]
    return {"zero", "ulp-", "ulp+", "rel-" + tag, "rel+" + tag}


def summarize(outcomes: Sequence[Outcome]) -> str:
    """A plain-text table: per variant label, counts of each status and of wrong answers."""
    labels = ["zero", "ulp-", "ulp+", "rel-7", "rel+7", "rel-3", "rel+3", "rel-1", "rel+1"]
    cols = ["sat", "unsat", "unknown", "timeout", "error", "wrong"]
    lines = [f"{'variant':8s} {'truth':6s} " + " ".join(f"{c:>7s}" for c in cols) + f" {'n':>5s} {'secs':>7s}"]
    for lab in labels + ["all"]:
        sel = [o for o in outcomes if lab == "all" or o.label == lab]
        if not sel:
            continue
        row = {c: sum(1 for o in sel if o.status == c) for c in cols[:-1]}
        row["wrong"] = sum(1 for o in sel if o.wrong)
        truth = sel[0].truth if lab != "all" else ""
        secs = sum(o.seconds for o in sel)
        lines.append(f"{lab:8s} {truth:6s} " + " ".join(f"{row[c]:7d}" for c in cols) + f" {len(sel):5d} {secs:7.1f}")
    return "\n".join(lines)
