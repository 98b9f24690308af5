"""The one module that talks to HiGHS (``highspy``).

:func:`solve_milp` minimises a :class:`~gpuopt.milp.encode.MilpModel` and stops as soon as the
sign of the optimum is decided:

* the global dual bound exceeds ``threshold`` (> 0): the minimum is positive, the disjunct is
  unreachable;
* an improving solution is accepted by ``accept_solution`` (the caller's float64 re-check of a
  counterexample).

HiGHS model statuses map to :class:`MilpStatus` through one table (``_STATUS_TABLE``) with a
fallback to ``ERROR``. The raw status string, the incumbent, the dual bound and the node count are
always returned, on a time limit too.
"""

from __future__ import annotations

import enum
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import MissingDependencyError
from .encode import MilpModel

__all__ = ["MilpStatus", "MilpResult", "SolverConfig", "solve_milp"]

log = logging.getLogger("gpuopt")


class MilpStatus(enum.Enum):
    OPTIMAL = "optimal"              # solved to HiGHS's gap tolerances
    DUAL_BOUND_REACHED = "dual_bound_reached"  # stopped: dual bound > threshold
    SOLUTION_ACCEPTED = "solution_accepted"    # stopped: a solution passed the caller's check
    INFEASIBLE = "infeasible"
    TIME_LIMIT = "time_limit"
    INTERRUPTED = "interrupted"
    ERROR = "error"


@dataclass(frozen=True)
class SolverConfig:
    """HiGHS settings built per call: ``threads`` (1 inside pool workers), ``seed``
    (HiGHS ``random_seed``), feasibility tolerances, and ``presolve``."""

    threads: int = 1
    seed: int = 0
    mip_feasibility_tolerance: float = 1e-7
    primal_feasibility_tolerance: float = 1e-8
    dual_feasibility_tolerance: float = 1e-8
    presolve: bool = True


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


def solve_milp(model: MilpModel, *, time_limit: float, threshold: float,
               start: np.ndarray | None = None,
               accept_solution: Callable[[np.ndarray], bool] | None = None,
               config: SolverConfig = SolverConfig()) -> MilpResult:
    """Minimise ``model`` for at most ``time_limit`` seconds; see the module docstring."""
    highspy = _highspy()
    t0 = time.monotonic()
    h = highspy.Highs()
    h.silent()
    for name, value in (
        ("output_flag", False),
        ("threads", int(config.threads)),
        ("random_seed", int(config.seed)),
        ("time_limit", max(float(time_limit), 0.01)),
        ("mip_feasibility_tolerance", float(config.mip_feasibility_tolerance)),
        ("primal_feasibility_tolerance", float(config.primal_feasibility_tolerance)),
        ("dual_feasibility_tolerance", float(config.dual_feasibility_tolerance)),
        ("presolve", "on" if config.presolve else "off"),
        ("mip_rel_gap", 0.0),
        ("mip_abs_gap", 0.0),
    ):
        h.setOptionValue(name, value)

    lp = highspy.HighsLp()
    n = model.n_vars
    lp.num_col_ = n
    lp.num_row_ = model.A.shape[0]
    lp.col_cost_ = np.asarray(model.c, dtype=np.float64)
    lp.offset_ = float(model.offset)
    inf = highspy.kHighsInf
    lp.col_lower_ = np.where(np.isfinite(model.col_lower), model.col_lower, -inf)
    lp.col_upper_ = np.where(np.isfinite(model.col_upper), model.col_upper, inf)
    lp.row_lower_ = np.where(np.isfinite(model.row_lower), model.row_lower, -inf)
    lp.row_upper_ = np.where(np.isfinite(model.row_upper), model.row_upper, inf)
    csc = model.A.tocsc()
    csc.sort_indices()
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = csc.indptr.astype(np.int32)
    lp.a_matrix_.index_ = csc.indices.astype(np.int32)
    lp.a_matrix_.value_ = csc.data.astype(np.float64)
    lp.a_matrix_.num_col_ = n
    lp.a_matrix_.num_row_ = model.A.shape[0]
    if model.integrality.any():
        lp.integrality_ = [highspy.HighsVarType.kInteger if b else highspy.HighsVarType.kContinuous
                           for b in model.integrality]
    h.passModel(lp)

    if start is not None:
        sol = highspy.HighsSolution()
        sol.col_value = list(np.asarray(start, dtype=np.float64))
        sol.value_valid = True
        h.setSolution(sol)

    stop = {"why": None, "solution": None, "objective": np.inf}

    def on_interrupt(event):
        if event.data_out.mip_dual_bound > threshold:
            stop["why"] = MilpStatus.DUAL_BOUND_REACHED
            event.interrupt()

    def on_improving(event):
        if accept_solution is None:
            return
        value = float(event.data_out.objective_function_value)
        x = np.array(event.data_out.mip_solution, dtype=np.float64, copy=True)[:n]
        if accept_solution(x):
            stop["why"] = MilpStatus.SOLUTION_ACCEPTED
            stop["solution"], stop["objective"] = x, value
            event.interrupt()

    h.cbMipInterrupt.subscribe(on_interrupt)
    h.cbMipImprovingSolution.subscribe(on_improving)
    h.run()
    raw = h.getModelStatus()
    raw_text = h.modelStatusToString(raw)
    info = h.getInfo()
    status = _status_table(highspy).get(raw, MilpStatus.ERROR)
    if status is MilpStatus.INTERRUPTED and stop["why"] is not None:
        status = stop["why"]
    dual = float(info.mip_dual_bound) if model.integrality.any() else float(info.objective_function_value)
    if not np.isfinite(dual) and status is not MilpStatus.OPTIMAL:
        dual = -np.inf
    solution, objective = stop["solution"], stop["objective"]
    if solution is None and info.primal_solution_status == highspy.kSolutionStatusFeasible:
        solution = np.array(h.getSolution().col_value, dtype=np.float64)
        objective = float(info.objective_function_value)
    if status is MilpStatus.OPTIMAL and not model.integrality.any():
        dual = float(info.objective_function_value)
    nodes = int(getattr(info, "mip_node_count", 0) or 0)
    log.debug("HiGHS: %s (%s), objective %.6g, dual bound %.6g, %d nodes", status.value, raw_text,
              objective, dual, nodes)
    return MilpResult(status=status, raw_status=raw_text, objective=objective, dual_bound=dual,
                      solution=solution, nodes=max(nodes, 0), seconds=time.monotonic() - t0)
