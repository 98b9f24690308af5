"""The stage table: each stage reads an :class:`~gpuopt.engine.item.ItemState` and may decide it.

A stage is ``fn(item) -> str`` returning its outcome word; it decides the item by calling
``item.decide(...)``. :data:`STAGES` lists ``(name, fn, enabled)`` in order, and
:func:`run_stages` is the whole orchestration for one item: run each enabled stage until one
decides, answer ``timeout`` when the deadline passes between stages, and ``unknown`` when every
stage has run. Adding a stage (LP tightening, an LP walk, activation splitting) is adding a row.

The stages, with their soundness arguments in :mod:`gpuopt.verify`'s docstring:

1. ``bounds``: IBP, then CROWN, then alpha-CROWN on the spec rows;
2. ``attack``: batched PGD; a candidate decides ``sat`` only through the exact check;
3. ``input_split``: input-space branch and bound, for networks with few inputs;
4. ``milp``: big-M MILP per open disjunct in HiGHS.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from typing import Sequence

import numpy as np
import torch

from ..attack import pgd_attack
from ..bab import input_split
from ..bounds import alpha_crown_linear_lower, crown, crown_linear_lower, disjunct_lower_bounds, ibp
from ..bounds.base import rounding_pad, strict_adjust
from ..check import check_counterexample, parameter_deviation
from ..milp.encode import complete_assignment, encode_bigm
from ..milp.highs import MilpStatus, solve_milp
from ..problem import Problem
from ..specs import OutputSpec
from ..verdict import Status
from .item import ItemState, StageEvent

__all__ = ["STAGES", "run_stages", "check_point"]

log = logging.getLogger("gpuopt")


# ---------------------------------------------------------------------------------- helpers
def check_point(problem: Problem, x) -> tuple[bool, np.ndarray, np.ndarray, float]:
    """Sound re-check (:func:`gpuopt.check.check_counterexample`): clamp ``x`` into the exact
    input set; ``ok`` only when the exact output is provably in the unsafe region."""
    c = check_counterexample(problem, x)
    return c.ok, c.x, c.y, c.margin


def proof_problem(problem: Problem, y_abs_max: np.ndarray, deviation: np.ndarray | None = None) -> Problem:
    """``problem`` with right-hand sides that make float proofs sound for inexact coefficients,
    and for a network whose stored parameters deviate from the source model's by up to
    ``deviation`` at the outputs (:func:`gpuopt.check.parameter_deviation`): a proof of
    ``A y - b' > 0`` for the stored network then holds for the source network with ``b``."""
    spec = problem.spec
    if spec.coefficients_exact and deviation is None:
        return problem
    if deviation is not None:
        y_abs_max = y_abs_max + deviation
    rhs = spec.proof_rhs(y_abs_max)
    if deviation is not None:
        n = spec.n_outputs
        rhs = [np.nextafter(b + (np.abs(A) @ deviation) * (1 + 4 * (n + 2) * np.finfo(float).eps), np.inf)
               for (A, _), b in zip(spec.disjuncts, rhs)]
    proof = OutputSpec([(A, b) for (A, _), b in zip(spec.disjuncts, rhs)], spec.n_outputs)
    return Problem(problem.network, problem.region, proof, inner=problem.inner)


def stacked_strict(problems: Sequence[Problem], shape) -> torch.Tensor:
    """``(P, K, M)`` mask of strict rows (padding rows are not strict)."""
    S = torch.zeros(shape, dtype=torch.bool)
    for i, p in enumerate(problems):
        for k, st in enumerate(p.spec.strict):
            S[i, k, : st.size] = torch.from_numpy(st.copy())
    return S


def stacked_spec(problems: Sequence[Problem]) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded spec tensors ``(P, K, M, n_out)``/``(P, K, M)``; padding disjuncts never win the min."""
    K = max(p.spec.n_disjuncts for p in problems)
    M = max(A.shape[0] for p in problems for A, _ in p.spec.disjuncts)
    n_out = problems[0].spec.n_outputs
    A = torch.zeros((len(problems), K, M, n_out), dtype=torch.float64)
    b = torch.full((len(problems), K, M), math.inf, dtype=torch.float64)
    for i, p in enumerate(problems):
        for k in range(K):
            if k < p.spec.n_disjuncts:
                Ak, bk = p.spec.disjuncts[k]
                A[i, k, : Ak.shape[0]] = torch.tensor(Ak)
                b[i, k, : Ak.shape[0]] = torch.tensor(bk)
            else:
                b[i, k, 0] = -math.inf  # row value +inf: this padding disjunct is never the min
    return A, b


def attack_device(config) -> torch.device:
    if config.device is not None:
        return torch.device(config.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _open_problems(item: ItemState) -> list[int]:
    return sorted({i for i, _ in item.open})


# ---------------------------------------------------------------------------------- stages
def bounds_stage(item: ItemState) -> str:
    """IBP, then CROWN on what IBP leaves open, then alpha-CROWN on the spec rows."""
    net, config, problems = item.network, item.config, item.problems
    item.lower = lower = torch.as_tensor(np.stack([p.region.lower for p in problems]))
    item.upper = upper = torch.as_tensor(np.stack([p.region.upper for p in problems]))
    bounds = ibp(net, lower, upper)
    # proofs run on specs whose float rows are sound for the exact rows (see OutputSpec.proof_rhs);
    # counterexamples are always checked against the original problems
    y_abs = torch.maximum(bounds.output[0].abs(), bounds.output[1].abs()).numpy()
    dev = parameter_deviation(net, lower.numpy(), upper.numpy())
    item.proof_problems = [proof_problem(p, y_abs[i], None if dev is None else dev[i]) for i, p in enumerate(problems)]
    item.A, item.b = A_all, b_all = stacked_spec(item.proof_problems)
    item.strict = S_all = stacked_strict(problems, b_all.shape)
    disj_lb = disjunct_lower_bounds(bounds.output[0], bounds.output[1], A_all, b_all, S_all)
    decided_by = "ibp"
    P = len(problems)
    if not bool((disj_lb > 0).all()) and config.use_crown and item.left() > 0:
        bounds = crown(net, lower, upper, deadline=item.deadline)
        K, M = A_all.shape[1:3]
        t_rows = time.monotonic()
        rows, _ = crown_linear_lower(net, lower, upper, A_all.reshape(P, K * M, -1), bounds)
        t_rows = time.monotonic() - t_rows  # alpha-CROWN's first pass costs as much: it must fit
        b_flat = b_all.reshape(P, K * M)
        finite_b = torch.where(torch.isfinite(b_flat), b_flat, torch.zeros_like(b_flat))
        rows = rows - b_flat - rounding_pad(finite_b.abs(), 1)
        disj_lb = torch.maximum(disj_lb, strict_adjust(rows.view(P, K, M), S_all).amax(-1))
        disj_lb = torch.maximum(disj_lb, disjunct_lower_bounds(bounds.output[0], bounds.output[1], A_all, b_all,
                                                               S_all))
        decided_by = "crown"
        if not bool((disj_lb > 0).all()) and config.alpha_steps > 0 and item.left() > 2 * t_rows:
            rows = alpha_crown_linear_lower(net, lower, upper, A_all.reshape(P, K * M, -1), bounds,
                                            steps=config.alpha_steps, deadline=item.deadline)
            rows = rows - b_flat - rounding_pad(finite_b.abs(), 1)
            alpha_lb = strict_adjust(rows.view(P, K, M), S_all).amax(-1)
            if bool((torch.maximum(disj_lb, alpha_lb) > 0).all()):
                decided_by = "alpha-crown"
            disj_lb = torch.maximum(disj_lb, alpha_lb)
    item.bounds, item.bounds_method = bounds, decided_by
    item.disj_lb = disj_lb = disj_lb.numpy()
    item.open = {(i, k) for i, p in enumerate(problems) for k in range(p.spec.n_disjuncts) if not disj_lb[i, k] > 0}
    if not item.open:
        item.decide(Status.UNSAT, decided_by=decided_by,
                    message=f"{decided_by.upper()} bounds prove every disjunct unreachable")
        return "decided"
    return "open"


def attack_stage(item: ItemState) -> str:
    """Batched PGD over the open problems; the best point of each is checked exactly."""
    config, problems = item.config, item.problems
    open_problems = _open_problems(item)
    cand = pgd_attack(item.network, item.lower[open_problems], item.upper[open_problems], item.A[open_problems],
                      item.b[open_problems], config=config.attack, device=attack_device(config),
                      deadline=item.deadline)
    xs = cand.x.detach().to("cpu", torch.float64).numpy()
    for j, i in enumerate(open_problems):
        ok, x64, y64, m = check_point(problems[i], xs[j])
        item.best_x[i] = x64
        item.margin_upper = min(item.margin_upper, m)
        if ok:
            item.decide(Status.SAT, counterexample=x64, output=y64, margin_upper=m, decided_by="attack",
                        message=f"PGD counterexample, float64 margin {m:.6g}")
            return "decided"
    return "open"


def input_split_stage(item: ItemState) -> str:
    """Input-space branch and bound on each open problem."""
    config, problems = item.config, item.problems
    split_boxes = 0
    split_lb: list[float] = []
    undecided = False
    for i in _open_problems(item):
        ks = [k for (j, k) in item.open if j == i]
        res = input_split(item.proof_problems[i], deadline=item.deadline, config=config.split, open_disjuncts=ks)
        split_boxes += res.boxes
        split_lb.append(res.margin_lower)
        if res.status == "sat":
            ok, x64, y64, m = check_point(problems[i], res.counterexample)
            if ok:
                item.decide(Status.SAT, counterexample=x64, output=y64, margin_upper=m, decided_by="input-split",
                            message=f"input-splitting counterexample after {split_boxes} boxes, float64 margin {m:.6g}")
                return "decided"
            undecided = True
        elif res.status == "timeout":
            item.decide(Status.TIMEOUT, message=f"input splitting timed out after {split_boxes} boxes")
            return "timeout"
        elif res.status == "unknown":
            undecided = True
    if not undecided:
        item.decide(Status.UNSAT, margin_lower=min(item.closed_lower_bounds() + split_lb), decided_by="input-split",
                    message=f"input splitting proved every open disjunct on {split_boxes} boxes")
        return "decided"
    return "open"


def milp_stage(item: ItemState) -> str:
    """Big-M MILP per open disjunct, weakest bound first, seeded with the attack's point."""
    config, problems, bounds = item.config, item.problems, item.bounds
    blocks = item.network.affine_blocks()
    pre = [(l.numpy(), u.numpy()) for l, u in bounds.pre_activation]
    proven_lb = []
    undecided: list[str] = []
    # weakest bound first: the disjunct most likely to hold a counterexample
    for i, k in sorted(item.open, key=lambda ik: item.disj_lb[ik[0], ik[1]]):
        p = problems[i]
        Ak, bk = item.proof_problems[i].spec.disjuncts[k]
        ly, uy = bounds.output[0][i].numpy(), bounds.output[1][i].numpy()
        # the objective's magnitude over the output box sets the scale of HiGHS's tolerances
        scale = max(1.0, float(np.abs(bk).max()), float((np.abs(Ak) @ np.maximum(np.abs(ly), np.abs(uy))).max()))
        threshold = config.milp_threshold_abs + config.milp_threshold_rel * scale
        if not all(np.all(np.isfinite(l[i])) and np.all(np.isfinite(u[i])) for l, u in pre) or \
                not (np.all(np.isfinite(ly)) and np.all(np.isfinite(uy))):
            undecided.append(f"MILP skipped on problem {i} disjunct {k}: the bounds overflow float64, "
                             "so no big-M constants exist")
            continue
        model = encode_bigm(blocks, [(l[i], u[i]) for l, u in pre], (ly, uy), p.region.lower, p.region.upper, Ak, bk)
        start = complete_assignment(model, blocks, item.best_x[i]) if i in item.best_x else None
        found = {}

        def accept(v, p=p, model=model):
            ok, x64, y64, m = check_point(p, v[model.x_index])
            if ok:
                found.update(x=x64, y=y64, m=m)
            return ok

        budget = item.left()
        if budget <= 0:
            item.decide(Status.TIMEOUT)
            return "timeout"
        res = solve_milp(model, time_limit=min(budget, 1e7), threshold=threshold, start=start,
                         accept_solution=accept, config=config.solver, deadline=item.deadline)
        item.milp_nodes += res.nodes
        item.milp_status = res.raw_status
        log.debug("MILP problem %d disjunct %d: %s dual %.6g obj %.6g", i, k, res.status.value,
                  res.dual_bound, res.objective)
        if found:
            item.decide(Status.SAT, counterexample=found["x"], output=found["y"], margin_upper=found["m"],
                        decided_by="milp", message=f"MILP counterexample, float64 margin {found['m']:.6g}")
            return "decided"
        if res.solution is not None:
            ok, x64, y64, m = check_point(p, res.solution[model.x_index])
            item.margin_upper = min(item.margin_upper, m)
            if ok:
                item.decide(Status.SAT, counterexample=x64, output=y64, margin_upper=m, decided_by="milp",
                            message=f"MILP counterexample, float64 margin {m:.6g}")
                return "decided"
        if res.proves_above(threshold):
            proven_lb.append(res.dual_bound - res.proof_margin)
            continue
        note = (f"MILP on problem {i} disjunct {k} ended {res.status.value} ({res.raw_status}) with dual "
                f"bound {res.dual_bound:.6g} (threshold {threshold:.3g} + tolerance margin {res.proof_margin:.3g})")
        if res.warnings:
            note += f"; not a proof: HiGHS warned: {res.warnings[0]}"
        if res.status is MilpStatus.TIME_LIMIT or item.left() <= 0:
            item.decide(Status.TIMEOUT, message=note)
            return "timeout"
        undecided.append(note)  # another disjunct may still hold a counterexample: go on
    if undecided:
        item.decide(Status.UNKNOWN, message="; ".join(undecided))
        return "open"
    item.decide(Status.UNSAT, margin_lower=min(item.closed_lower_bounds() + proven_lb), decided_by="milp",
                message="every open disjunct proven unreachable by MILP")
    return "decided"


#: ``(name, stage, enabled(config, item))`` in the order they run
STAGES = (
    ("bounds", bounds_stage, lambda c, it: True),
    ("attack", attack_stage, lambda c, it: c.use_attack),
    ("input_split", input_split_stage,
     lambda c, it: c.use_input_split and it.network.input_size <= c.split.max_input_dim),
    ("milp", milp_stage, lambda c, it: c.use_milp),
)


def run_stages(item: ItemState, stages=STAGES) -> ItemState:
    """Run the enabled stages in order until one decides ``item``; see the module docstring."""
    for name, stage, enabled in stages:
        if item.verdict is not None:
            break
        if name != "bounds" and item.left() <= 0:
            item.decide(Status.TIMEOUT)
            break
        if not enabled(item.config, item):
            continue
        ts, wall = time.monotonic(), time.time()
        outcome = stage(item)
        item.stage_seconds[name] = time.monotonic() - ts
        item.events.append(StageEvent(name, wall, time.time(), outcome))
    if item.verdict is None:
        item.decide(Status.TIMEOUT if item.left() <= 0 else Status.UNKNOWN)
    item.verdict = replace(item.verdict, stage_seconds=dict(item.stage_seconds),
                           events=tuple(e.to_dict() for e in item.events))
    return item
