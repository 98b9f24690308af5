"""Relax-and-Walk (Tong, Cai, Serra 2024): local search over the linear regions of a ReLU network.

On an activation pattern ``P`` of the unstable neurons (the stable ones are fixed by the bounds
of the MILP model, :mod:`gpuopt.milp.encode`), the network is affine: ``z_k(x) = J_k x + a_k``
with ``J_0 = M_0``, ``J_{k+1} = M_{k+1} D_k J_k`` (``D_k`` the 0/1 diagonal of active neurons),
and the problem restricted to ``P``'s linear region
``R_P = {x in region : J_j x + a_j >= 0 where P_j, <= 0 elsewhere}`` is an LP in ``x`` alone (one
row per unstable neuron, dense, with the model's objective ``max_i (A y(x) - b)_i`` through an
epigraph column when it has several rows). A *walk*:

1. from a point ``x_0``, take its pattern ``P = [z(x_0) > 0]`` and solve ``LP(P)``;
2. at the optimum ``x*``, the neurons with ``z_j(x*) = 0`` are facets of ``R_P`` through ``x*``.
   Flipping any set ``F`` of them gives a region that still contains ``x*`` (both sides agree
   where ``z_j = 0``), so ``LP(P xor F)`` is never worse. Flip the tight rows with a nonzero dual
   (relaxing them lowers the objective), all at once, or else the one with the largest dual;
3. repeat while the objective drops by more than ``rtol``; a pattern already seen is not revisited.

Restarts: from the given start points (the GPU attack's candidates), then from the LP relaxation's
point, then from the best pattern with the ``k = 1, 2, 4, ...`` neurons flipped where the
relaxation's ``d`` disagrees most with it, skipping patterns seen (a flip set seen before is
replaced by ``k`` drawn at random among the ``4k`` most disagreeing). Each region LP starts from the
previous region's basis (same shape: one row per unstable neuron).

The dense ``J_k`` cost ``sum_k n_k n_0`` floats; a network above ``WalkConfig.max_dense`` is not
walked (``stopped = "too_large"``). (The lifted LP with fixed binaries, which stays sparse, was
tried first: on mnist_fc 256x6 HiGHS needed over 10 s for its first LP and stalled on the next,
where this dense LP takes 0.1 s.)

Every point is re-evaluated by a float64 forward pass, and moved into the input region when the
LP's tolerances left it just outside; the walk proves nothing: its values are upper bounds on the
minimum (attained points), its relaxation value only a hint.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse as sp

from ..errors import InvalidInputError, SolverError
from ..network import AffineBlock
from .encode import InputConstraints, MilpModel
from .highs import MilpStatus, SolverConfig, solve_lp, solve_milp

__all__ = ["WalkConfig", "WalkResult", "relax_and_walk", "forward_pattern", "model_value"]

log = logging.getLogger("gpuopt")


@dataclass(frozen=True)
class WalkConfig:
    """``max_lps``: region LPs in all; ``restarts``: walks from flipped patterns after the starts
    and the relaxation; ``rtol``: the relative drop that counts as an improvement;
    ``max_starts``: start points used at most; ``max_dense``: the most entries of the dense
    region maps (``sum_k n_k * n_inputs``) for which a network is walked; ``seed``: the random
    restarts' generator."""

    max_lps: int = 400
    restarts: int = 16
    rtol: float = 1e-9
    max_starts: int = 8
    max_dense: int = 30_000_000
    seed: int = 0

    def __post_init__(self):
        for name in ("max_lps", "restarts", "max_starts", "max_dense", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise InvalidInputError(f"`{name}` must be an integer >= 0, got {v!r}")
        if not (isinstance(self.rtol, (int, float)) and 0 <= self.rtol < 1):
            raise InvalidInputError(f"`rtol` must be a number in [0, 1), got {self.rtol!r}")


@dataclass(frozen=True, eq=False)
class WalkResult:
    """``x``: the best point found (``None`` when none), ``value`` its float64 objective
    ``max_i (A f(x) - b)_i`` (``inf`` when none); ``relaxation``: the LP relaxation's value
    (``-inf`` if not solved; a hint, not a proof); ``lps``: region LPs solved, ``walks`` walks
    started, ``regions`` distinct patterns visited; ``trace``: ``(seconds, value)`` per improvement;
    ``stopped``: ``accepted``, ``deadline``, ``lp_limit``, ``too_large`` or ``done``."""

    x: np.ndarray | None
    value: float
    relaxation: float
    lps: int
    walks: int
    regions: int
    seconds: float
    trace: tuple
    stopped: str


def forward_pattern(blocks: list[AffineBlock], x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(y, z per hidden layer)``: the float64 forward pass of the affine-block network."""
    h = np.asarray(x, dtype=np.float64).reshape(-1)
    zs = []
    for block in blocks[:-1]:
        z = block.matrix @ h + block.bias
        zs.append(z)
        h = np.maximum(z, 0.0) if block.passthrough is None else np.where(block.passthrough, z, np.maximum(z, 0.0))
    return blocks[-1].matrix @ h + blocks[-1].bias, zs


def model_value(model: MilpModel, y: np.ndarray) -> float:
    """The model's objective at outputs ``y``: ``max_i (A y - b)_i``."""
    return float(np.max(model.spec_A @ y - model.spec_b))


class _RegionLP:
    """The LP of one linear region in ``x`` (module docstring), built from the model's bounds."""

    def __init__(self, model: MilpModel, blocks, constraints, solver):
        self.model, self.blocks, self.solver = model, blocks, solver
        self.n0 = model.x_index.size
        self.lower, self.upper = model.col_lower[model.x_index], model.col_upper[model.x_index]
        self.fixed_active, self.unstable = [], []
        for (z, _, unstable, _), block in zip(model.layers, blocks[:-1]):
            l = model.col_lower[z]
            active = l >= 0
            if block.passthrough is not None:
                active = active | np.asarray(block.passthrough, dtype=bool)
            self.fixed_active.append(active)
            self.unstable.append(unstable)
        A = model.spec_A
        extra_c, extra_lo, extra_hi = [], [], []
        self.has_t = A.shape[0] > 1
        if self.has_t:
            t = model.col_lower[model.t_index], model.col_upper[model.t_index]
            extra_lo.append([t[0]])
            extra_hi.append([t[1]])
            extra_c.append([1.0])
        n_extra = 0
        rows = []  # (matrix over [x | t | r], lo, hi) of the input constraints
        self.n_t = int(self.has_t)
        if constraints is not None and constraints.l1_center is not None:
            n = self.n0
            c, eps = constraints.l1_center, float(constraints.l1_eps)
            extra_lo.append(np.zeros(n))
            extra_hi.append(np.full(n, eps))
            extra_c.append(np.zeros(n))
            I = sp.eye(n, format="csr")

            def place(xpart, rpart):
                M = sp.hstack([xpart, sp.csr_matrix((xpart.shape[0], self.n_t)), rpart]) if self.n_t else \
                    sp.hstack([xpart, rpart])
                return M.tocsr()

            rows.append((place(I, -I), np.full(n, -np.inf), c))   # x - r <= c
            rows.append((place(-I, -I), np.full(n, -np.inf), -c))  # -x - r <= -c
            rows.append((place(sp.csr_matrix((1, n)), sp.csr_matrix(np.ones((1, n)))), [-np.inf], [eps]))
            n_extra = n
        if constraints is not None and constraints.G is not None:
            G = sp.csr_matrix(constraints.G)
            rows.append((sp.hstack([G, sp.csr_matrix((G.shape[0], self.n_t + n_extra))]).tocsr(),
                         np.full(G.shape[0], -np.inf), constraints.g))
        self.n_cols = self.n0 + self.n_t + n_extra
        self.col_lower = np.concatenate([self.lower] + [np.asarray(e, dtype=np.float64) for e in extra_lo])
        self.col_upper = np.concatenate([self.upper] + [np.asarray(e, dtype=np.float64) for e in extra_hi])
        self.c_extra = np.concatenate([np.asarray(e, dtype=np.float64) for e in extra_c]) if extra_c else np.zeros(0)
        self.input_rows = rows
        self.basis = None
        # dense weights (numpy BLAS), and the region maps of the last pattern, per layer, so a
        # flip in layer k recomputes only the layers from k on
        self.dense = [b.matrix.toarray() for b in blocks]
        self.cache: list = []  # per hidden layer: (its pattern, J_k, a_k, J_k D_k, a_k D_k)

    def _maps(self, pattern: np.ndarray):
        """Sign rows ``S x + sb`` of the unstable neurons, their pattern, and ``y = Jy x + ay``."""
        pos, J, a = 0, None, None
        rows, rhs, acts = [], [], []
        for k, block in enumerate(self.blocks[:-1]):
            un = self.unstable[k]
            p = pattern[pos:pos + un.size]
            pos += un.size
            if k < len(self.cache) and np.array_equal(self.cache[k][0], p):
                _, Jk, ak, J, a = self.cache[k]
            else:
                del self.cache[k:]
                M = self.dense[k]
                Jk, ak = (M.copy(), block.bias.copy()) if J is None else (M @ J, M @ a + block.bias)
                active = self.fixed_active[k].copy()
                active[un] = p
                J, a = Jk * active[:, None], ak * active
                self.cache.append((p.copy(), Jk, ak, J, a))
            rows.append(Jk[un])
            rhs.append(ak[un])
            acts.append(p)
        M = self.dense[-1]
        Jy, ay = (M.copy(), self.blocks[-1].bias.copy()) if J is None else (M @ J, M @ a + self.blocks[-1].bias)
        S = np.vstack(rows) if rows else np.zeros((0, self.n0))
        return (S, np.concatenate(rhs) if rhs else np.zeros(0), np.concatenate(acts) if acts else np.zeros(0, bool),
                Jy, ay)

    def solve(self, pattern: np.ndarray, time_limit: float):
        """``(status, x, objective, z at x per unstable neuron, row duals per unstable neuron)``."""
        S, sb, act, Jy, ay = self._maps(pattern)
        A, b = self.model.spec_A, self.model.spec_b
        pad = self.n_cols - self.n0
        blocks_ = [sp.csr_matrix(np.hstack([S, np.zeros((S.shape[0], pad))]))]
        lo = [np.where(act, -sb, -np.inf)]
        hi = [np.where(act, np.inf, -sb)]
        c = np.zeros(self.n_cols)
        if self.has_t:  # A (Jy x + ay) - t <= b
            AJ = A @ Jy
            spec = np.zeros((A.shape[0], self.n_cols))
            spec[:, :self.n0] = AJ
            spec[:, self.n0] = -1.0
            blocks_.append(sp.csr_matrix(spec))
            lo.append(np.full(A.shape[0], -np.inf))
            hi.append(b - A @ ay)
            c[self.n0] = 1.0
            const = 0.0
        else:
            c[:self.n0] = A[0] @ Jy
            const = float(A[0] @ ay - b[0])
        for R, rlo, rhi in self.input_rows:
            blocks_.append(R)
            lo.append(np.asarray(rlo, dtype=np.float64))
            hi.append(np.asarray(rhi, dtype=np.float64))
        try:
            res = solve_lp(c, sp.vstack(blocks_).tocsr(), np.concatenate(lo), np.concatenate(hi), self.col_lower,
                           self.col_upper, time_limit=time_limit, basis=self.basis, config=self.solver)
        except SolverError:  # HiGHS refuses the region's LP (a composed coefficient of 1e15 or more):
            self.basis = None  # this walk ends there, as at any LP that does not solve
            return "error", None, np.inf, None, None
        if res.status != "optimal":
            if self.basis is not None and res.status == "error":
                self.basis = None
            return res.status, None, np.inf, None, None
        self.basis = res.basis
        x = res.x[:self.n0]
        n_sign = S.shape[0]
        return "optimal", x, res.objective + const, S @ x + sb, res.row_duals[:n_sign]


class _Walker:
    def __init__(self, model, blocks, constraints, deadline, config, solver, accept):
        self.model, self.blocks = model, blocks
        self.region = _RegionLP(model, blocks, constraints, solver)
        self.lower, self.upper = self.region.lower, self.region.upper
        self.constraints = constraints
        self.deadline, self.config, self.accept, self.solver = deadline, config, accept, solver
        self.d_cols = np.concatenate([layer[3] for layer in model.layers]) if model.layers else np.zeros(0, int)
        z_unstable = np.concatenate([layer[0][layer[2]] for layer in model.layers]) \
            if model.layers else np.zeros(0, int)
        zl, zu = model.col_lower[z_unstable], model.col_upper[z_unstable]
        self.tight_tol = 1e-7 * np.maximum(1.0, np.maximum(np.abs(zl), np.abs(zu)))
        self.seen: set = set()
        self.best_x, self.best_value = None, np.inf
        self.trace: list = []
        self.t0 = time.monotonic()
        self.stopped = None
        self.walks = self.lps = 0

    # ------------------------------------------------------------------ helpers
    def time_left(self) -> float:
        return np.inf if self.deadline is None else self.deadline - time.monotonic()

    def out_of_budget(self) -> bool:
        if self.stopped is not None:
            return True
        if self.time_left() <= 0:
            self.stopped = "deadline"
        elif self.lps >= self.config.max_lps:
            self.stopped = "lp_limit"
        return self.stopped is not None

    def pattern(self, x: np.ndarray) -> np.ndarray:
        _, zs = forward_pattern(self.blocks, x)
        return np.concatenate([z[layer[2]] > 0 for z, layer in zip(zs, self.model.layers)]) \
            if self.model.layers else np.zeros(0, bool)

    def inside(self, x: np.ndarray) -> bool:
        return bool(np.all(x >= self.lower) and np.all(x <= self.upper)) and \
            (self.constraints is None or self.constraints.contains(x))

    def repair(self, x: np.ndarray, anchor: np.ndarray | None) -> np.ndarray | None:
        """``x`` clipped into the box; when the LP's tolerances left it outside the L1 ball or the
        linear rows, moved towards ``anchor`` (a point inside) until it is inside."""
        x = np.clip(x, self.lower, self.upper)
        if self.inside(x):
            return x
        if anchor is None or not self.inside(anchor):
            return None
        lo, hi = 0.0, 1.0  # fraction of the way from anchor to x
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if self.inside(anchor + mid * (x - anchor)):
                lo = mid
            else:
                hi = mid
        return anchor + lo * (x - anchor)

    def offer(self, x: np.ndarray) -> float:
        """Evaluate ``x`` exactly in float64; keep it if it is the best so far."""
        y, _ = forward_pattern(self.blocks, x)
        value = model_value(self.model, y)
        if value < self.best_value:
            self.best_x, self.best_value = x.copy(), value
            self.trace.append((time.monotonic() - self.t0, value))
            if self.accept is not None and self.accept(x):
                self.stopped = "accepted"
        return value

    def solve(self, pattern: np.ndarray):
        self.seen.add(np.packbits(pattern).tobytes())
        self.lps += 1
        return self.region.solve(pattern, max(min(self.time_left(), 1e7), 0.01))

    # ------------------------------------------------------------------ the walk
    def walk(self, pattern: np.ndarray, anchor: np.ndarray | None) -> None:
        """Steps 1-3 of the module docstring from ``pattern``; ``anchor`` a point of its region."""
        self.walks += 1
        status, x_lp, obj, z, duals = self.solve(pattern)
        while status == "optimal" and not self.out_of_budget():
            x = self.repair(x_lp, anchor)
            if x is not None:
                self.offer(x)
                anchor = x
            if self.out_of_budget():
                return
            gain = np.abs(duals)
            cand = np.flatnonzero((np.abs(z) <= self.tight_tol) & (gain > 1e-12))
            if cand.size == 0:
                return  # a local optimum: no facet through x* leads downhill
            moved = False
            tries = [cand] if cand.size == 1 else [cand, cand[np.argsort(-gain[cand])[:1]]]
            for flip in tries:
                new = pattern.copy()
                new[flip] = ~new[flip]
                if np.packbits(new).tobytes() in self.seen or self.out_of_budget():
                    continue
                s2, x2, obj2, z2, d2 = self.solve(new)
                if s2 == "optimal" and obj2 < obj - self.config.rtol * max(1.0, abs(obj)):
                    pattern, status, x_lp, obj, z, duals = new, s2, x2, obj2, z2, d2
                    moved = True
                    break
            if not moved:
                return

    def run(self, starts) -> float:
        model = self.model
        for x0 in starts[: self.config.max_starts]:
            if self.out_of_budget():
                break
            x0 = self.repair(np.asarray(x0, dtype=np.float64).reshape(-1), None)
            if x0 is None:
                continue
            self.offer(x0)
            p = self.pattern(x0)
            if np.packbits(p).tobytes() not in self.seen:
                self.walk(p, x0)
        relaxation = -np.inf
        if self.out_of_budget():
            return relaxation
        # the LP relaxation of the MILP: every binary free in [0, 1]
        try:
            res = solve_milp(model.relaxed(), time_limit=max(min(self.time_left(), 1e7), 0.01), threshold=np.inf,
                             config=self.solver, deadline=self.deadline)
        except SolverError:  # HiGHS refused the relaxation (a coefficient of 1e15 or more): no restarts from it
            return relaxation
        self.lps += 1
        if res.solution is None or res.status is not MilpStatus.OPTIMAL:
            return relaxation
        relaxation = res.objective
        d_rel = res.solution[self.d_cols]
        x_rel = self.repair(res.solution[model.x_index], self.best_x)
        if x_rel is not None and not self.out_of_budget():
            self.offer(x_rel)
            p = self.pattern(x_rel)
            if np.packbits(p).tobytes() not in self.seen:
                self.walk(p, x_rel)
        # restarts: flip where the relaxation disagrees most with the best pattern, k = 1, 2, 4, ...
        # of them; a flip set already seen is replaced by k drawn at random among the 4k most
        # disagreeing (seeded), so a stalled best point does not repeat the same restarts
        rng = np.random.default_rng(self.config.seed)
        k = 1
        for _ in range(self.config.restarts):
            if self.out_of_budget() or self.best_x is None or self.d_cols.size == 0:
                break
            base = self.pattern(self.best_x)
            order = np.argsort(-np.abs(d_rel - base), kind="stable")
            kk = min(k, order.size)
            k = k * 2 if k < order.size else 1
            new = base.copy()
            new[order[:kk]] = ~new[order[:kk]]
            for _ in range(8):
                if np.packbits(new).tobytes() not in self.seen:
                    break
                new = base.copy()
                pick = rng.choice(order[:min(4 * kk, order.size)], size=kk, replace=False)
                new[pick] = ~new[pick]
            else:
                continue
            self.walk(new, None)
        return relaxation


def relax_and_walk(model: MilpModel, blocks: list[AffineBlock], *, starts=(), deadline: float | None = None,
                   constraints: InputConstraints | None = None, config: WalkConfig = WalkConfig(),
                   solver: SolverConfig = SolverConfig(),
                   accept: Callable[[np.ndarray], bool] | None = None) -> WalkResult:
    """Walk the linear regions of ``model`` (see the module docstring) from ``starts`` (input
    points), until ``deadline`` (a ``time.monotonic()`` value), ``config.max_lps`` LPs, or until
    ``accept(x)`` returns True for an improving point; ``constraints`` must be the input
    constraints the model was encoded with (the points are kept inside them)."""
    if not isinstance(config, WalkConfig):
        raise InvalidInputError(f"`config` must be a WalkConfig, got {type(config).__name__}")
    n0 = model.x_index.size
    starts = [np.asarray(s, dtype=np.float64).reshape(-1) for s in starts]
    for s in starts:
        if s.size != n0:
            raise InvalidInputError(f"every start point must have {n0} entries, got {s.size}")
    dense = sum(layer[0].size for layer in model.layers) * n0
    if dense > config.max_dense:
        log.debug("Relax-and-Walk skipped: %d dense region-map entries > max_dense %d", dense, config.max_dense)
        return WalkResult(x=None, value=np.inf, relaxation=-np.inf, lps=0, walks=0, regions=0, seconds=0.0,
                          trace=(), stopped="too_large")
    walker = _Walker(model, blocks, constraints, deadline, config, solver, accept)
    relaxation = walker.run(starts)
    stopped = walker.stopped or ("deadline" if walker.time_left() <= 0 else "done")
    log.debug("Relax-and-Walk: best %.6g after %d LPs, %d walks, %d regions (%s)", walker.best_value,
              walker.lps, walker.walks, len(walker.seen), stopped)
    return WalkResult(x=walker.best_x, value=walker.best_value, relaxation=relaxation, lps=walker.lps,
                      walks=walker.walks, regions=len(walker.seen), seconds=time.monotonic() - walker.t0,
                      trace=tuple(walker.trace), stopped=stopped)
