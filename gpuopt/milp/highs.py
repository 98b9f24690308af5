"""The one module that talks to HiGHS (``highspy``).

:func:`solve_milp` minimises a :class:`~gpuopt.milp.encode.MilpModel` and stops as soon as the
sign of the optimum is decided:

* the global dual bound exceeds ``threshold`` (> 0): the minimum is positive, the disjunct is
  unreachable;
* an improving solution is accepted by ``accept_solution`` (the caller's float64 re-check of a
  counterexample).

**Objective cutoff.** With a finite ``threshold``, HiGHS also gets ``objective_bound = t + pad``
(``t`` the threshold plus the proof margin, in scaled units; ``pad = 1e-6 (1 + |t|)``): it prunes
every node whose LP bound exceeds it, so a disjunct that holds is closed without an incumbent
(mnist_fc 256x2 prop_6_0.03, disjunct 0: 1.2 s instead of more than 20 s). A point with objective
``<= t`` is never cut off (only objective values above the cutoff are, up to HiGHS's comparison
tolerance, far below the pad), and a node bound is a dual bound covered by the proof margin; so
HiGHS's ``infeasible`` under the cutoff means ``min > t + pad / 2`` and is reported as
``DUAL_BOUND_REACHED`` with that bound. Any bound HiGHS reports under the cutoff is capped there:
it prunes at the lesser of the cutoff and its incumbent, and then calls an incumbent above the
cutoff optimal, so a larger value would overstate what was proven.

HiGHS model statuses map to :class:`MilpStatus` through one table (``_STATUS_TABLE``) with a
fallback to ``ERROR``. The raw status string, the incumbent, the dual bound and the node count are
always returned, on a time limit too.

**Numerics: which claims rest on tolerances, and the margin each needs.** Before solving, the
model is rescaled exactly (every factor a power of two, so no rounding is introduced): each
continuous column by its bound magnitude (an input ranging over ``[0, 1e7]`` becomes ``[0, 1.2]``),
then each row by its largest entry, then the objective. An entry still below HiGHS's
``small_matrix_value`` (``1e-9``, which HiGHS would silently drop) is removed *soundly*: its row's
bounds are widened by ``sum |a_ij| max|v_j|`` over the removed entries, a relaxation, so a dual
bound of the relaxed model is a lower bound for the original one. HiGHS solves its LPs to a dual
feasibility tolerance ``tau_d``; a dual solution violating its constraints by ``tau_d`` can
overstate the LP bound by up to ``tau_d (sum_j (u_j - l_j) + sum_i range_i)``, over the columns
and the slacks of the inequality rows (``range_i = sum_j |a_ij| (u_j - l_j)``; an equality row's
dual is free) (Neumaier and Shcherbina 2004: the safe bound subtracts exactly that), in scaled
units; every column is bounded (the epigraph variable too, see :mod:`gpuopt.milp.encode`). :attr:`MilpResult.proof_margin` is that
quantity mapped back to the caller's units, and a dual bound proves ``min > threshold`` only when
it exceeds ``threshold + proof_margin``. Primal and integrality tolerances only enlarge the
feasible set (a relaxation), which keeps dual bounds valid; incumbents they admit are never
trusted as counterexamples (the caller re-checks each point exactly). Any WARNING that HiGHS logs
(a badly scaled model, coefficients it dropped, numerical trouble) is returned in
:attr:`MilpResult.warnings`, and the caller must not base a proof on such a run.
"""

from __future__ import annotations

import enum
import math
import logging
import atexit
import contextlib
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from ..errors import InvalidInputError, MissingDependencyError, SolverError
from .encode import MilpModel

__all__ = ["MilpStatus", "MilpResult", "SolverConfig", "solve_milp", "LpResult", "solve_lp", "unchecked_floor",
           "proof_thresholds", "cancellable", "cancelled"]

log = logging.getLogger("gpuopt")


class MilpStatus(enum.Enum):
    OPTIMAL = "optimal"              # solved to HiGHS's gap tolerances
    DUAL_BOUND_REACHED = "dual_bound_reached"  # stopped: dual bound > threshold
    SOLUTION_ACCEPTED = "solution_accepted"    # stopped: a solution passed the caller's check
    INFEASIBLE = "infeasible"
    TIME_LIMIT = "time_limit"
    INTERRUPTED = "interrupted"
    ERROR = "error"


#: the least ``mip_feasibility_tolerance`` accepted: an adversarial review found HiGHS 1.16
#: reporting a wrong optimum (1 where the maximum is 2, a dyadic 3-3-3-3 net, presolve off) at
#: 5e-10 and below, and none from 1e-9 up
MIN_MIP_FEASIBILITY_TOLERANCE = 1e-9


#: ``SolverConfig.root_lp``'s values
ROOT_LP_CHOICES = ("auto", "simplex", "ipm")
#: ``root_lp="auto"`` solves the first LP of a MILP with at least this many matrix entries by the
#: interior point method (see :class:`SolverConfig`)
IPM_ROOT_MIN_NONZEROS = 150_000


def root_lp_solver(config: "SolverConfig", nonzeros: int) -> str:
    """HiGHS's ``mip_lp_solver`` for a MILP with ``nonzeros`` matrix entries under ``config``:
    ``"ipm"`` or ``"choose"`` (HiGHS's default, the dual simplex)."""
    if config.root_lp == "ipm" or (config.root_lp == "auto" and nonzeros >= IPM_ROOT_MIN_NONZEROS):
        return "ipm"
    return "choose"


@dataclass(frozen=True)
class SolverConfig:
    """HiGHS settings built per call: ``threads`` (1 inside pool workers), ``seed``
    (HiGHS ``random_seed``), feasibility tolerances, ``presolve``, ``objective_cutoff``
    (pass the threshold to HiGHS as ``objective_bound``; see the module docstring),
    ``feasibility_jump`` (HiGHS's feasibility-jump primal heuristic at the root) and
    ``sub_mips`` (HiGHS's sub-MIP primal heuristics: RINS, RENS and the root reduced-cost one;
    ``None``, the default: off when :func:`solve_milp` has a finite threshold, on when it
    optimises) and ``root_lp`` (how a MILP's first LP is solved: ``"simplex"``, ``"ipm"``, or
    ``"auto"``, the default: HiGHS's interior point method, crossed over to a basis, on models with
    at least :data:`IPM_ROOT_MIN_NONZEROS` matrix entries, the dual simplex on smaller ones; the
    node LPs are always the dual simplex, warm-started). None of these changes what a result
    proves, only how fast HiGHS gets there.

    Why the interior point method at the root of a large model: the dual simplex from a slack basis
    needs tens of thousands of iterations there. On the big-M MILPs over CROWN's bounds
    (``benchmarks/milp_root.py``, one thread) the root LP took 31.7 s by simplex against 10.4 s by
    IPM on mnist-net_256x6 (540k entries), 13.8 against 2.2 s on oval21's cifar_base_kw, 43.1
    against 5.5 s on cifar_deep_kw, and on cifar_wide_kw (866k entries) 117 s of simplex against
    about 1 s; on mnist-net_256x2 and 256x4 (270k and 400k entries, which presolve shrinks) and on
    smaller models the two take the same time, and the 30 mnist_fc 256x2 instances took 139.5 s
    with ``auto`` against 139.4 s with ``simplex``, the same verdicts.

    Why the sub-MIPs are off for a sign decision: below a finite threshold, the only incumbent a
    heuristic can find is a counterexample, and the attack and the walk have already looked for
    one. On mnist-net_256x4 with refined bounds (158 binaries) the root took 48 s, 36 s of it in 13
    sub-MIPs, before its first branching; without them the root took 11.5 s and 1,185 nodes ran in
    60 s (``benchmarks/formulations.py``, variant ``:nosub``)."""

    threads: int = 1
    seed: int = 0
    mip_feasibility_tolerance: float = 1e-7
    primal_feasibility_tolerance: float = 1e-8
    dual_feasibility_tolerance: float = 1e-9
    presolve: bool = True
    objective_cutoff: bool = True
    feasibility_jump: bool = True
    sub_mips: bool | None = None
    root_lp: str = "auto"

    def __post_init__(self):
        if not 1 <= int(self.threads) <= 1024:
            raise InvalidInputError(f"`threads` must be between 1 and 1024, got {self.threads!r}")
        if not 0 <= int(self.seed) <= 2**31 - 1:
            raise InvalidInputError(f"`seed` must be an integer in [0, 2**31 - 1] (HiGHS's random_seed), got {self.seed!r}")
        if self.root_lp not in ROOT_LP_CHOICES:
            raise InvalidInputError(f"`root_lp` must be one of {', '.join(ROOT_LP_CHOICES)}, got {self.root_lp!r}")
        if self.sub_mips is not None and not isinstance(self.sub_mips, bool):
            raise InvalidInputError(f"`sub_mips` must be True, False or None (auto), got {self.sub_mips!r}")
        for name in ("mip_feasibility_tolerance", "primal_feasibility_tolerance", "dual_feasibility_tolerance"):
            v = float(getattr(self, name))
            low = MIN_MIP_FEASIBILITY_TOLERANCE if name == "mip_feasibility_tolerance" else 1e-10
            if not low <= v <= 1e-3:
                raise InvalidInputError(f"`{name}` must be in [{low:g}, 1e-3], got {v!r}")


#: a MILP proof without the independent re-check must clear this many feasibility tolerances,
#: times the objective's scale (see :func:`unchecked_floor`)
UNCHECKED_TOLERANCES = 100.0


def unchecked_floor(scale: float, config: "SolverConfig") -> float:
    """The least threshold a MILP proof may rest on when the independent re-check
    (:mod:`gpuopt.milp.recheck`) did not confirm it: ``UNCHECKED_TOLERANCES`` times the larger
    feasibility tolerance, times ``scale`` (the objective's magnitude). :attr:`MilpResult.proof_margin`
    covers HiGHS's dual tolerance only; its presolve and node LPs also work to the primal and
    integrality tolerances, and an adversarial review found HiGHS's reported bound that far off:
    4.5e-9 claimed where the minimum over a small box is exactly 0, and 2.8e-13 where it is
    -4e-24, both under thresholds far below the defaults (which clear this floor)."""
    return UNCHECKED_TOLERANCES * max(config.primal_feasibility_tolerance, config.mip_feasibility_tolerance) * scale


def proof_thresholds(A, b, out_lower, out_upper, threshold_abs: float, threshold_rel: float,
                     config: "SolverConfig") -> tuple[float, float]:
    """``(threshold, unchecked)`` for the MILP of the disjunct ``{y : A y <= b}`` over the output
    box ``[out_lower, out_upper]``: ``threshold_abs + threshold_rel * scale``, with ``scale`` the
    objective's magnitude over the box (at least 1), which sets the scale of HiGHS's tolerances;
    and the least value a proof the independent re-check did not confirm must clear (at least
    the threshold, see :func:`unchecked_floor`)."""
    A, b = np.asarray(A, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mag = np.maximum(np.abs(out_lower), np.abs(out_upper))
    scale = max(1.0, float(np.abs(b).max()), float((np.abs(A) @ mag).max()))
    threshold = threshold_abs + threshold_rel * scale
    return threshold, max(threshold, unchecked_floor(scale, config))


@dataclass(frozen=True, eq=False)
class MilpResult:
    """Outcome of one MILP solve. ``objective`` is the incumbent value (``inf`` when none),
    ``dual_bound`` the proven lower bound on the minimum (``-inf`` when none), ``solution`` the
    incumbent's variable vector or ``None``; ``raw_status`` is HiGHS's own status text."""

    status: MilpStatus
    raw_status: str
    objective: float
    dual_bound: float
    solution: np.ndarray | None
    nodes: int
    seconds: float
    proof_margin: float = 0.0
    warnings: tuple = ()

    def proves_above(self, threshold: float) -> bool:
        """Whether this run proves ``min > threshold`` soundly: a finished search whose dual bound
        exceeds ``threshold + proof_margin``, with no numerical warning from HiGHS."""
        return (self.status in (MilpStatus.DUAL_BOUND_REACHED, MilpStatus.OPTIMAL)
                and not self.warnings and self.dual_bound > threshold + self.proof_margin)


_BANNER_SILENCED = False


def _highspy():
    """Import highspy; the first ``Highs()`` of a process prints a banner on the C-level stdout,
    which would pollute the CLI's output, so that one is built with fd 1 sent to /dev/null."""
    global _BANNER_SILENCED
    try:
        import highspy
    except ImportError as exc:  # pragma: no cover - highspy is a core dependency
        raise MissingDependencyError("highspy is required for MILP solving: pip install highspy") from exc
    if not _BANNER_SILENCED:
        sys.stdout.flush()
        saved = os.dup(1)
        try:
            with open(os.devnull, "w") as devnull:
                os.dup2(devnull.fileno(), 1)
                highspy.Highs()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        _BANNER_SILENCED = True
    return highspy


def _status_table(highspy) -> dict:
    S = highspy.HighsModelStatus
    return {
        S.kOptimal: MilpStatus.OPTIMAL,
        S.kInfeasible: MilpStatus.INFEASIBLE,
        S.kTimeLimit: MilpStatus.TIME_LIMIT,
        S.kInterrupt: MilpStatus.INTERRUPTED,
        S.kSolutionLimit: MilpStatus.INTERRUPTED,
        S.kIterationLimit: MilpStatus.INTERRUPTED,
        S.kObjectiveBound: MilpStatus.INTERRUPTED,
        S.kObjectiveTarget: MilpStatus.INTERRUPTED,
    }


#: warnings that do not affect a dual bound: values that are small relative to others in a row or
#: column only make the tolerances relatively coarser, a relaxation (see the module docstring)
#: and the note that a model passed with an all-continuous integrality vector is an LP
_BENIGN_WARNING = re.compile(r"excessively small (bounds|costs)|consider scaling the|"
                             r"no semi-integer/integer variables in model with non-empty integrality", re.IGNORECASE)
_DEADLINE_GRACE = 0.2  # seconds past the deadline before a HiGHS run still in progress is abandoned
_ABANDONED: list = []  # (Highs, thread) pairs whose run() outlived its deadline


def _abandon(h, thread: threading.Thread) -> None:
    """Keep an overrunning HiGHS run alive (its callbacks interrupt it at their next call), and
    wait for it at interpreter exit: a thread inside HiGHS while Python finalises aborts the process."""
    if not _ABANDONED:
        atexit.register(_join_abandoned)
    _ABANDONED.append((h, thread))


_CANCEL: dict = {}  # thread ident -> threading.Event: that thread's HiGHS runs stop once it is set


@contextlib.contextmanager
def cancellable(event: threading.Event):
    """Within this block, every :func:`solve_milp` (and :func:`gpuopt.milp.recheck.recheck_milp`)
    run by the calling thread stops, as at its deadline, once ``event`` is set: a MILP run beside
    another search (:mod:`gpuopt.engine.beside`) ends when that search has decided the item."""
    ident = threading.get_ident()
    _CANCEL[ident] = event
    try:
        yield event
    finally:
        _CANCEL.pop(ident, None)


def cancelled() -> bool:
    """Whether the calling thread's runs were cancelled (:func:`cancellable`)."""
    event = _CANCEL.get(threading.get_ident())
    return event is not None and event.is_set()


def abandoned_runs() -> int:
    """How many HiGHS runs outlived their deadline and are still running (a CLI may ``os._exit``)."""
    return sum(t.is_alive() for _, t in _ABANDONED)


def _join_abandoned() -> None:
    for _, thread in _ABANDONED:
        thread.join()


_SMALL_MATRIX_VALUE = 1e-9  # HiGHS's default cut-off below which it drops matrix entries


def _pow2(m: np.ndarray) -> np.ndarray:
    """Powers of two near ``m`` (1 where ``m`` is 0 or not finite): exact scale factors."""
    m = np.asarray(m, dtype=np.float64)
    ok = np.isfinite(m) & (m > 0)
    out = np.ones_like(m)
    out[ok] = np.exp2(np.round(np.log2(m[ok])))
    return out


@dataclass(frozen=True, eq=False)
class _Scaled:
    """``v = col_scale * v'``; rows divided by ``row_scale``; objective divided by ``cost_scale``."""

    A: object  # scipy.sparse.csc_matrix
    c: np.ndarray
    col_lower: np.ndarray
    col_upper: np.ndarray
    row_lower: np.ndarray
    row_upper: np.ndarray
    col_scale: np.ndarray
    cost_scale: float
    dropped: int
    row_scale: np.ndarray | None = None


def _scale(model: MilpModel) -> _Scaled:
    """Exact power-of-two scaling and the sound removal of tiny entries (see the module docstring).

    Scale factors stay within ``2^-1000 .. 2^1000`` (their reciprocals are finite), and a column or
    row whose scaled entries, cost or bounds would overflow keeps the factor 1: every factor is exact."""
    import scipy.sparse as sp

    lo, hi = model.col_lower, model.col_upper
    mag = np.maximum(np.abs(np.where(np.isfinite(lo), lo, 0)), np.abs(np.where(np.isfinite(hi), hi, 0)))
    col_scale = np.where(model.integrality | ~(np.isfinite(lo) & np.isfinite(hi)), 1.0, _pow2(mag))
    col_scale = np.clip(col_scale, 2.0 ** -1000, 2.0 ** 1000)
    A0 = model.A.tocsr()
    with np.errstate(over="ignore", invalid="ignore"):
        A = (A0 @ sp.diags(col_scale)).tocsr()
        bad_cols = np.unique(np.concatenate([A.indices[~np.isfinite(A.data)],
                                             np.flatnonzero(~np.isfinite(model.c * col_scale))]))
        if bad_cols.size:
            col_scale[bad_cols] = 1.0
            A = (A0 @ sp.diags(col_scale)).tocsr()
        row_max = np.zeros(A.shape[0])
        nonempty = np.diff(A.indptr) > 0  # reduceat would read past the data for trailing empty rows
        if nonempty.any():
            row_max[nonempty] = np.maximum.reduceat(np.abs(A.data), A.indptr[:-1][nonempty])
        row_scale = np.clip(_pow2(row_max), 2.0 ** -1000, 2.0 ** 1000)
        bounds = np.concatenate([model.row_lower, model.row_upper]).reshape(2, -1)
        scaled = bounds / row_scale
        bad_rows = np.any(np.isfinite(bounds) & ~np.isfinite(scaled), axis=0)
        row_scale[bad_rows] = 1.0
    A = (sp.diags(1.0 / row_scale) @ A).tocsr()
    row_lower = model.row_lower / row_scale
    row_upper = model.row_upper / row_scale
    col_lower, col_upper = lo / col_scale, hi / col_scale
    tiny = (np.abs(A.data) < _SMALL_MATRIX_VALUE) & (A.data != 0)
    dropped = int(tiny.sum())
    if dropped:
        rows = np.repeat(np.arange(A.shape[0]), np.diff(A.indptr))[tiny]
        cols = A.indices[tiny]
        vmax = np.maximum(np.abs(col_lower[cols]), np.abs(col_upper[cols]))
        slack = np.bincount(rows, weights=np.abs(A.data[tiny]) * vmax, minlength=A.shape[0])
        slack = slack * (1 + 1e-12) + np.where(slack > 0, 1e-300, 0.0)
        widened = slack > 0  # rounded outwards: the widened row must contain the exact one
        row_lower = np.where(widened, np.nextafter(row_lower - slack, -np.inf), row_lower)
        row_upper = np.where(widened, np.nextafter(row_upper + slack, np.inf), row_upper)
        A.data[tiny] = 0.0
        A.eliminate_zeros()
    with np.errstate(over="ignore", invalid="ignore"):
        c = model.c * col_scale
    if not np.all(np.isfinite(c)):  # a cost that is not finite itself: HiGHS would report a bound of it
        raise SolverError("the objective has a coefficient that is not finite: no solver bound")
    cost_scale = float(_pow2(np.abs(c).max()) if c.size and np.abs(c).max() > 0 else 1.0)
    return _Scaled(A=A.tocsc(), c=c / cost_scale, col_lower=col_lower, col_upper=col_upper,
                   row_lower=row_lower, row_upper=row_upper, col_scale=col_scale, cost_scale=cost_scale,
                   dropped=dropped, row_scale=row_scale)


def _new_highs(highspy, model: MilpModel, sc: "_Scaled", config: SolverConfig, time_limit: float,
               warnings_seen: list, *, integer: bool):
    """A silent Highs instance holding the scaled ``model`` (integrality kept when ``integer``),
    with the options of ``config``; HiGHS's WARNING log lines are appended to ``warnings_seen``."""
    h = highspy.Highs()
    h.silent()
    for name, value in (
        ("output_flag", True),
        ("log_to_console", False),
        ("threads", int(config.threads)),
        ("random_seed", int(config.seed)),
        ("time_limit", max(float(time_limit), 0.01)),
        ("mip_feasibility_tolerance", float(config.mip_feasibility_tolerance)),
        ("primal_feasibility_tolerance", float(config.primal_feasibility_tolerance)),
        ("dual_feasibility_tolerance", float(config.dual_feasibility_tolerance)),
        ("presolve", "on" if config.presolve else "off"),
        ("mip_heuristic_run_feasibility_jump", bool(config.feasibility_jump)),
        ("mip_heuristic_run_rins", config.sub_mips is not False),
        ("mip_heuristic_run_rens", config.sub_mips is not False),
        ("mip_heuristic_run_root_reduced_cost", config.sub_mips is not False),
        ("mip_rel_gap", 0.0),
        ("mip_abs_gap", 0.0),
    ):
        if h.setOptionValue(name, value) != highspy.HighsStatus.kOk:
            raise SolverError(f"HiGHS refused the option {name} = {value!r}")

    def on_log(event):
        msg = str(getattr(event, "message", "")).strip()
        if msg.upper().startswith("WARNING") and not _BENIGN_WARNING.search(msg):
            warnings_seen.append(msg)

    if integer and h.setOptionValue("mip_lp_solver", root_lp_solver(config, sc.A.nnz)) != highspy.HighsStatus.kOk:
        raise SolverError("HiGHS refused the option mip_lp_solver")
    h.cbLogging.subscribe(on_log)
    _pass_model(h, highspy, sc.c, sc.col_lower, sc.col_upper, sc.row_lower, sc.row_upper, sc.A,
                model.integrality if integer else None)
    return h


def _pass_model(h, highspy, c, col_lower, col_upper, row_lower, row_upper, A, integrality=None) -> None:
    """Hand ``min c^T v`` s.t. ``row_lower <= A v <= row_upper``, the column bounds and
    ``integrality`` (bool per column, or None) to ``h`` as numpy buffers (the array overload of
    ``passModel``: assigning a ``HighsLp``'s vectors converts element by element)."""
    import scipy.sparse as sp

    csc = sp.csc_matrix(A, dtype=np.float64)
    csc.sort_indices()
    inf = highspy.kHighsInf

    def finite(a, fill):
        a = np.asarray(a, dtype=np.float64)
        return np.where(np.isfinite(a), a, fill)

    n_col, n_row = csc.shape[1], csc.shape[0]
    integ = np.zeros(n_col, dtype=np.int32) if integrality is None else np.asarray(integrality, dtype=np.int32)
    status = h.passModel(n_col, n_row, int(csc.nnz), 1, 1, 0.0, np.asarray(c, dtype=np.float64),
                         finite(col_lower, -inf), finite(col_upper, inf), finite(row_lower, -inf),
                         finite(row_upper, inf), csc.indptr.astype(np.int32), csc.indices.astype(np.int32),
                         np.ascontiguousarray(csc.data), integ)
    if status == highspy.HighsStatus.kError:
        raise SolverError("HiGHS refused the model")


def solve_milp(model: MilpModel, *, time_limit: float, threshold: float,
               start: np.ndarray | None = None,
               accept_solution: Callable[[np.ndarray], bool] | None = None,
               config: SolverConfig = SolverConfig(), deadline: float | None = None) -> MilpResult:
    """Minimise ``model`` for at most ``time_limit`` seconds (and not past ``deadline``, a
    ``time.monotonic()`` value, checked in HiGHS's callbacks); see the module docstring."""
    highspy = _highspy()
    t0 = time.monotonic()
    if cancelled():  # (found by review: each call after a cancel started a HiGHS run it then abandoned)
        return MilpResult(status=MilpStatus.TIME_LIMIT, raw_status="cancelled before it began", objective=np.inf,
                          dual_bound=-np.inf, solution=None, nodes=0, seconds=0.0)
    sc = _scale(model)
    # the Neumaier-Shcherbina correction for dual infeasibilities up to tau_d: on every column, and
    # on the slack of every inequality row (an equality row's dual is free), each times its range
    finite = np.isfinite(sc.col_lower) & np.isfinite(sc.col_upper)
    width = np.where(finite, sc.col_upper - sc.col_lower, np.inf)
    inequality = sc.row_lower != sc.row_upper
    row_range = abs(sc.A) @ np.where(finite, width, 0.0)
    unbounded_rows = (abs(sc.A) @ (~finite).astype(np.float64)) > 0
    total = width.sum() + np.where(inequality, np.where(unbounded_rows, np.inf, row_range), 0.0).sum()
    proof_margin = float(config.dual_feasibility_tolerance * total * sc.cost_scale * (1 + 1e-9))
    warnings_seen: list[str] = []
    if config.sub_mips is None:  # a sign decision (finite threshold) runs without them
        config = replace(config, sub_mips=not np.isfinite(threshold))
    h = _new_highs(highspy, model, sc, config, time_limit, warnings_seen, integer=True)
    n = model.n_vars

    def unscale_obj(v: float) -> float:
        return v * sc.cost_scale + float(model.offset)

    if start is not None:
        sol = highspy.HighsSolution()
        sol.col_value = list(np.asarray(start, dtype=np.float64) / sc.col_scale)
        sol.value_valid = True
        h.setSolution(sol)

    stop = {"why": None, "solution": None, "objective": np.inf}
    # stop once the dual bound clears the threshold by the proof margin (in scaled units)
    scaled_threshold = (threshold + proof_margin - float(model.offset)) / sc.cost_scale
    cancel = _CANCEL.get(threading.get_ident())  # the caller's cancellation (the callbacks run in HiGHS's thread)

    def out_of_time() -> bool:
        return (deadline is not None and time.monotonic() > deadline) or (cancel is not None and cancel.is_set())

    def on_interrupt(event):
        if event.data_out.mip_dual_bound > scaled_threshold:
            stop["why"] = MilpStatus.DUAL_BOUND_REACHED
            stop["dual"] = max(stop.get("dual", -np.inf), float(event.data_out.mip_dual_bound))
            event.interrupt()
        elif out_of_time():
            stop["why"] = MilpStatus.TIME_LIMIT
            event.interrupt()

    def on_improving(event):
        if accept_solution is None:
            return
        x = np.array(event.data_out.mip_solution, dtype=np.float64, copy=True)[:n] * sc.col_scale
        if accept_solution(x):
            stop["why"] = MilpStatus.SOLUTION_ACCEPTED
            stop["solution"], stop["objective"] = x, unscale_obj(float(event.data_out.objective_function_value))
            event.interrupt()

    def on_lp_interrupt(event):
        # the root LP and the node LPs: HiGHS checks its own time limit too rarely on big models
        if out_of_time():
            stop["why"] = MilpStatus.TIME_LIMIT
            event.interrupt()

    # the objective cutoff (module docstring): HiGHS prunes every node whose bound clears it
    cutoff_pad = 1e-6 * (1.0 + abs(scaled_threshold)) if np.isfinite(scaled_threshold) else np.inf
    use_cutoff = config.objective_cutoff and bool(model.integrality.any()) and np.isfinite(cutoff_pad)
    if use_cutoff and h.setOptionValue("objective_bound", scaled_threshold + cutoff_pad) != highspy.HighsStatus.kOk:
        raise SolverError("HiGHS refused the option objective_bound")
    h.cbMipInterrupt.subscribe(on_interrupt)
    h.cbSimplexInterrupt.subscribe(on_lp_interrupt)
    h.cbIpmInterrupt.subscribe(on_lp_interrupt)
    h.cbMipImprovingSolution.subscribe(on_improving)
    # HiGHS checks neither its time limit nor any callback during MIP presolve (15 s on a 540k
    # nonzero model): run it in a thread (HiGHS releases the GIL) and stop waiting at the deadline.
    # An abandoned run keeps its thread until HiGHS reaches a callback, which then interrupts it.
    # (a run without a deadline, e.g. verify without a timeout, may pass inf: thread joins take no inf)
    hard_stop = None if deadline is None or not math.isfinite(deadline) else deadline + _DEADLINE_GRACE
    runner = threading.Thread(target=h.run, name="gpuopt-highs", daemon=True)
    runner.start()
    if cancel is None:
        runner.join(None if hard_stop is None else max(hard_stop - time.monotonic(), 0.0))
    else:  # a cancelled run is abandoned at once (its presolve reaches no callback)
        while runner.is_alive() and not cancel.is_set() and (hard_stop is None or time.monotonic() < hard_stop):
            runner.join(0.05 if hard_stop is None else max(min(0.05, hard_stop - time.monotonic()), 0.0))
    if runner.is_alive():
        _abandon(h, runner)
        solution, objective = stop["solution"], stop["objective"]
        status = MilpStatus.SOLUTION_ACCEPTED if solution is not None else MilpStatus.TIME_LIMIT
        why = "cancelled" if cancel is not None and cancel.is_set() else "the deadline"
        log.debug("HiGHS did not return by %s (presolve ignores time limits); abandoned", why)
        return MilpResult(status=status, raw_status=f"abandoned at {why}", objective=objective,
                          dual_bound=-np.inf, solution=solution, nodes=0, seconds=time.monotonic() - t0,
                          proof_margin=proof_margin, warnings=tuple(warnings_seen))
    raw = h.getModelStatus()
    raw_text = h.modelStatusToString(raw)
    info = h.getInfo()
    status = _status_table(highspy).get(raw, MilpStatus.ERROR)
    if status is MilpStatus.INTERRUPTED and stop["why"] is not None:
        status = stop["why"]
    integer = model.integrality.any()
    dual = float(info.mip_dual_bound) if integer else float(info.objective_function_value)
    if use_cutoff and status is MilpStatus.INFEASIBLE:
        # every node was pruned by the cutoff: the minimum is at least the cutoff, less HiGHS's
        # comparison tolerance (far below half the pad)
        status, dual = MilpStatus.DUAL_BOUND_REACHED, scaled_threshold + 0.5 * cutoff_pad
    if status is MilpStatus.DUAL_BOUND_REACHED:
        # the global bound the callback saw, or HiGHS's final one; after pruning every node HiGHS
        # may report an infinite bound, which under the cutoff means at least the cutoff
        finite = [v for v in (dual, stop.get("dual", -np.inf)) if np.isfinite(v)]
        dual = max(finite) if finite else (scaled_threshold + 0.5 * cutoff_pad if use_cutoff else -np.inf)
    if use_cutoff and np.isfinite(dual):
        # under the cutoff HiGHS's bound means no more than "at least the cutoff": it prunes at
        # min(cutoff, incumbent) and may then report its incumbent, above the cutoff, as optimal
        # (a tiny net: reported 0.164 where the true minimum is 0.052)
        dual = min(dual, scaled_threshold + 0.5 * cutoff_pad)
    if not integer and status is not MilpStatus.OPTIMAL:
        dual = -np.inf  # an LP stopped early: its current value bounds nothing
    if not np.isfinite(dual) and status is not MilpStatus.OPTIMAL:
        dual = -np.inf
    elif np.isfinite(dual):
        dual = unscale_obj(dual)
    solution, objective = stop["solution"], stop["objective"]
    if solution is None and info.primal_solution_status == highspy.kSolutionStatusFeasible:
        solution = np.array(h.getSolution().col_value, dtype=np.float64) * sc.col_scale
        objective = unscale_obj(float(info.objective_function_value))
    if status is MilpStatus.OPTIMAL and not integer:
        dual = unscale_obj(float(info.objective_function_value))
    nodes = int(getattr(info, "mip_node_count", 0) or 0)
    log.debug("HiGHS: %s (%s), objective %.6g, dual bound %.6g, %d nodes, proof margin %.3g, %d entries "
              "dropped soundly, %d warnings", status.value, raw_text, objective, dual, nodes, proof_margin,
              sc.dropped, len(warnings_seen))
    return MilpResult(status=status, raw_status=raw_text, objective=objective, dual_bound=dual,
                      solution=solution, nodes=max(nodes, 0), seconds=time.monotonic() - t0,
                      proof_margin=proof_margin, warnings=tuple(warnings_seen))


@dataclass(frozen=True, eq=False)
class LpResult:
    """One LP: ``status`` ``optimal``, ``infeasible``, ``time_limit`` or ``error``; ``x``, the row
    duals and the final basis (a warm start for an LP of the same shape) only when optimal."""

    status: str
    x: np.ndarray | None
    objective: float
    row_duals: np.ndarray | None
    basis: object = None


def solve_lp(c, A, row_lower, row_upper, col_lower, col_upper, *, time_limit: float, basis=None,
             config: SolverConfig = SolverConfig()) -> LpResult:
    """``min c^T x`` s.t. ``row_lower <= A x <= row_upper``, ``col_lower <= x <= col_upper``
    (``A`` any scipy.sparse or dense matrix; infinities allowed in the row bounds), started from
    ``basis`` when given. A heuristic solve: its points are re-checked by the caller, never proofs."""
    highspy = _highspy()
    h = highspy.Highs()
    h.silent()
    for name, value in (("threads", int(config.threads)), ("random_seed", int(config.seed)),
                        ("time_limit", max(float(time_limit), 0.01)), ("presolve", "off" if basis is not None else "on")):
        h.setOptionValue(name, value)
    _pass_model(h, highspy, c, col_lower, col_upper, row_lower, row_upper, A)
    if basis is not None:
        h.setBasis(basis)
    h.run()
    raw = h.getModelStatus()
    S = highspy.HighsModelStatus
    if raw == S.kOptimal:
        sol = h.getSolution()
        return LpResult("optimal", np.array(sol.col_value, dtype=np.float64), float(h.getInfo().objective_function_value),
                        np.array(sol.row_dual, dtype=np.float64), h.getBasis())
    status = {S.kInfeasible: "infeasible", S.kTimeLimit: "time_limit"}.get(raw, "error")
    return LpResult(status, None, np.inf, None)
