"""An exact MILP on one sub-box of an input split: the hybrid's leaf solver.

Input splitting closes a sub-box when CROWN's linear bound of a disjunct is positive there. Where
the property holds by a small margin over a wide region, CROWN's ReLU relaxation stays looser
than that margin until the boxes are tiny, and the search digs without end. A sub-box with few
unstable ReLUs is instead cheap to decide exactly: the big-M MILP over the box, with the box's
own pre-activation bounds, has a binary only per unstable ReLU (stable ones are linear rows).

:func:`prove_box` solves, for each still-open disjunct ``{y : A_k y <= b_k}``,
``min_{x in box} max_i (A_k f(x) - b_k)_i`` and closes the disjunct on the box only when the
result proves it ``> threshold`` (``threshold_abs + threshold_rel * scale``, ``scale`` the
objective's magnitude over the box's output bounds) past HiGHS's tolerance margin
(:meth:`~gpuopt.milp.highs.MilpResult.proves_above`), and, with ``recheck``, only when the
independent safe-bound branch and bound (:func:`~gpuopt.milp.recheck.recheck_milp`) proves it
too; without it, the threshold is at least :func:`~gpuopt.milp.highs.unchecked_floor`
(:func:`~gpuopt.milp.highs.proof_thresholds`). An incumbent is a counterexample only after the
exact check. Anything else leaves the box open, to be split further.

**The reduced model.** On a small box most ReLUs are stable, and the MILP of the whole network
spends its time on them. :func:`reduce_network` composes every stable stretch away: with
``v = (x, the outputs of the unstable ReLUs so far)``, each layer's output is kept as an affine
map ``h_k = P_k v + p_k`` (a stable active ReLU passes its row on, a stable inactive one is 0, an
unstable one becomes a new coordinate of ``v``), so the reduced network has one small layer per
layer with unstable ReLUs: ``v`` passed through, and the unstable pre-activations
``z = (W_k P_{k-1}) v + (W_k p_{k-1} + b_k)``. The composed matrices are rounded, so the reduced
network is not the network: with ``e_k`` bounding ``|P_k v + p_k - h_k(x)|`` over the box,
``|z - z_true| <= |W_k| e_{k-1} + gamma_{n+2} (|W_k| (|P_{k-1}| |v|_max + |p_{k-1}|) + |b_k|)``
(Higham's bound for dot products; an unstable output keeps the error of its pre-activation,
since ReLU is 1-Lipschitz). The reduced MILP gets the box's pre-activation and output bounds
widened by these errors, so every input's reduced point is feasible, and it must prove the
threshold plus ``max_i |A_k|_i e_y``, the most the composed rounding can move the objective.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from ..check import check_counterexample
from ..errors import InvalidInputError, SolverError
from ..network import AffineBlock
from .encode import encode
from .highs import SolverConfig, proof_thresholds, solve_milp
from .safe import gamma

__all__ = ["BoxProof", "BoxOutcome", "prove_box", "reduce_network"]


def _up(a: np.ndarray, n: int) -> np.ndarray:
    """A float result of ``n`` operations on non-negative terms, rounded outwards."""
    return a * (1.0 + 2.0 * gamma(n + 2)) + 1e-300


def reduce_network(blocks, pre, out_bounds, lo, hi):
    """The reduced network of a box (module docstring): ``(blocks, pre-activation bounds, output
    bounds, e_y)``, blocks with passthrough coordinates, bounds widened by the composition
    errors, and ``e_y`` the bound on ``|reduced y - y|`` over the box."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    d = lo.size
    P, p = np.eye(d), np.zeros(d)  # h = P v + p, v = (x, unstable outputs so far)
    err = np.zeros(d)  # |P v + p - h_true| over the box
    v_lo, v_hi = lo.copy(), hi.copy()  # bounds of v
    out_blocks, out_pre = [], []

    def compose(block):
        W = block.matrix.toarray()
        aW = np.abs(W)
        n = W.shape[1] + 2
        vmax = np.maximum(np.abs(v_lo), np.abs(v_hi))
        Z, zc = W @ P, W @ p + block.bias
        e = _up(aW @ err + gamma(n) * (aW @ (np.abs(P) @ vmax + np.abs(p)) + np.abs(block.bias)), n + P.shape[1])
        return Z, zc, e

    for block, (l, u) in zip(blocks[:-1], pre):
        l, u = np.asarray(l, dtype=np.float64), np.asarray(u, dtype=np.float64)
        Z, zc, e = compose(block)
        linear = np.zeros(l.size, dtype=bool) if block.passthrough is None else np.asarray(block.passthrough, bool)
        unstable = np.flatnonzero((l < 0) & (u > 0) & ~linear)
        active = (l >= 0) | linear
        m, k = P.shape[1], unstable.size
        if k:
            mat = np.vstack([np.eye(m), Z[unstable]])
            out_blocks.append(AffineBlock(sp.csr_matrix(mat), np.concatenate([np.zeros(m), zc[unstable]]),
                                          np.concatenate([np.ones(m, dtype=bool), np.zeros(k, dtype=bool)])))
            out_pre.append((np.concatenate([v_lo, l[unstable] - e[unstable]]),
                            np.concatenate([v_hi, u[unstable] + e[unstable]])))
        # the layer's outputs as affine maps of the new v
        P_new = np.zeros((l.size, m + k))
        P_new[active, :m] = Z[active]
        P_new[unstable, m + np.arange(k)] = 1.0
        p = np.where(active, zc, 0.0)
        err = np.where(active, e, 0.0)
        err[unstable] = e[unstable]
        v_lo = np.concatenate([v_lo, np.zeros(k)])
        v_hi = np.concatenate([v_hi, np.maximum(u[unstable] + e[unstable], 0.0)])
        P = P_new
    Y, yc, e_y = compose(blocks[-1])
    out_blocks.append(AffineBlock(sp.csr_matrix(Y), yc))
    ly, uy = (np.asarray(a, dtype=np.float64) for a in out_bounds)
    return out_blocks, out_pre, (ly - e_y, uy + e_y), e_y


@dataclass(frozen=True)
class BoxProof:
    """How a sub-box's MILP proves: ``threshold_abs``/``threshold_rel``, ``solver`` and
    ``recheck`` as in :class:`~gpuopt.verify.VerifyConfig`."""

    threshold_abs: float = 1e-6
    threshold_rel: float = 1e-5
    solver: SolverConfig = field(default_factory=SolverConfig)
    recheck: bool = True

    def __post_init__(self):
        if not (self.threshold_abs > 0 and self.threshold_rel >= 0):
            raise InvalidInputError("`threshold_abs` must be > 0 and `threshold_rel` >= 0")
        if not isinstance(self.solver, SolverConfig):
            raise InvalidInputError(f"`solver` must be a SolverConfig, got {type(self.solver).__name__}")


@dataclass(frozen=True, eq=False)
class BoxOutcome:
    """``closed``: per given disjunct, whether the MILP proved it unreachable on the box;
    ``lower``: the smallest proven bound (``inf`` when none); ``counterexample``: an exactly
    checked float64 input, or ``None``; ``seconds`` spent."""

    closed: list
    lower: float
    counterexample: np.ndarray | None
    seconds: float


def _finite(pre, out_bounds) -> bool:
    """Whether every pre-activation and output bound is finite (big-M constants exist)."""
    return all(np.all(np.isfinite(a)) for pair in list(pre) + [out_bounds] for a in pair)


def _check_box_inputs(problem, blocks, lo, hi, pre, out_bounds, disjuncts) -> None:
    """Precise errors for inconsistent arguments of :func:`prove_box` (the pipeline always passes
    consistent ones; a direct caller gets the argument named, not a numpy error)."""
    n_in = blocks[0].matrix.shape[1]
    for name, v in (("lo", lo), ("hi", hi)):
        if np.shape(v) != (n_in,):
            raise InvalidInputError(f"`{name}` must have {n_in} entries (the network's inputs), got shape {np.shape(v)}")
    if len(pre) != len(blocks) - 1:
        raise InvalidInputError(f"`pre` must hold one (lower, upper) pair per hidden layer ({len(blocks) - 1}), "
                                f"got {len(pre)}")
    for k, ((l, u), block) in enumerate(zip(pre, blocks[:-1])):
        if np.shape(l) != (block.matrix.shape[0],) or np.shape(u) != (block.matrix.shape[0],):
            raise InvalidInputError(f"`pre[{k}]` bounds must have {block.matrix.shape[0]} entries, got "
                                    f"{np.shape(l)} and {np.shape(u)}")
    n_out = blocks[-1].matrix.shape[0]
    if len(out_bounds) != 2 or any(np.shape(a) != (n_out,) for a in out_bounds):
        raise InvalidInputError(f"`out_bounds` must be a (lower, upper) pair of {n_out} entries each")
    K = problem.spec.n_disjuncts
    bad = [k for k in disjuncts if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < K]
    if bad:
        raise InvalidInputError(f"`disjuncts` must be indices in 0..{K - 1} of the problem's disjuncts, got {bad}")


def prove_box(problem, blocks, lo, hi, pre, out_bounds, disjuncts, settings: BoxProof, time_limit: float,
              deadline: float | None = None) -> BoxOutcome:
    """Decide the ``disjuncts`` (indices into ``problem.spec.disjuncts``) of ``problem`` on the
    box ``[lo, hi]`` by MILP (module docstring), at most ``time_limit`` seconds per disjunct.
    ``pre``: per hidden layer ``(l, u)`` numpy pre-activation bounds that hold on the box;
    ``out_bounds``: ``(l_y, u_y)``. Stops at the first disjunct it cannot close (the box stays
    open)."""
    t0 = time.monotonic()
    _check_box_inputs(problem, blocks, lo, hi, pre, out_bounds, disjuncts)
    closed = [False] * len(disjuncts)
    lower = math.inf
    if not _finite(pre, out_bounds):
        return BoxOutcome(closed, lower, None, 0.0)  # no big-M constants
    ly, uy = out_bounds
    blocks, pre, out_bounds, e_y = reduce_network(blocks, pre, out_bounds, lo, hi)
    if not _finite(pre, out_bounds):
        return BoxOutcome(closed, lower, None, time.monotonic() - t0)  # the composition overflowed
    for j, k in enumerate(disjuncts):
        left = time_limit if deadline is None else min(time_limit, deadline - time.monotonic())
        if left <= 0:
            break
        Ak, bk = problem.spec.disjuncts[k]
        threshold, unchecked = proof_thresholds(Ak, bk, ly, uy, settings.threshold_abs, settings.threshold_rel,
                                                settings.solver)
        # HiGHS's word alone must clear its feasibility tolerances too; on top, the most the
        # composed rounding can move the objective
        moved = float(_up(np.abs(Ak) @ e_y, Ak.shape[1]).max())
        threshold = (threshold if settings.recheck else unchecked) + moved
        model = encode(blocks, pre, out_bounds, lo, hi, Ak, bk)
        found = {}

        def accept(v):
            c = check_counterexample(problem, v[model.x_index])
            if c.ok:
                found["x"] = c.x
            return c.ok

        try:
            res = solve_milp(model, time_limit=left, threshold=threshold, accept_solution=accept,
                             config=settings.solver, deadline=deadline)
        except SolverError:  # HiGHS refused the model (e.g. a coefficient of 1e15 or more): the box stays open
            break
        if not found and res.solution is not None:
            accept(res.solution)
        if found:
            return BoxOutcome(closed, lower, found["x"], time.monotonic() - t0)
        if not res.proves_above(threshold):
            break
        if settings.recheck:
            from .recheck import recheck_milp

            stop = time.monotonic() + max(0.5, res.seconds)
            if deadline is not None:
                stop = min(stop, deadline)
            if not recheck_milp(model, threshold, deadline=stop, config=settings.solver).proven:
                break
        closed[j] = True
        lower = min(lower, res.dual_bound - res.proof_margin - moved)
    return BoxOutcome(closed, lower, None, time.monotonic() - t0)
