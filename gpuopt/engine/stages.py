"""The stage table: each stage reads :class:`~gpuopt.engine.item.ItemState` objects and may decide them.

:data:`STAGES` lists :class:`Stage` rows in order. A *batch* stage works on many items at once
(``run(items) -> outcomes``; bounds and attack put the problems of all items on one network into
one tensor on the device). A *task* stage plans independent CPU tasks per item
(``run(item) -> [TaskSpec]``: one MILP per open disjunct, one input split per open problem); the
task functions (:mod:`gpuopt.engine.tasks`) are plain picklable module-level functions, so they
run inline, in a local process pool, or on a cluster, and ``merge`` folds each result back into
its item, ``finish`` concludes the stage. Adding a stage (LP tightening, an LP walk, activation
splitting) is adding a row.

Two drivers run the table: :func:`run_stages` decides one item in this process (the tasks of a
stage one after the other, stopping at the first decision; answers ``timeout`` when the
deadline passes between stages or tasks, ``unknown`` when every stage has run), and
:func:`gpuopt.engine.orchestrator.run_hybrid` runs many items with the batch stages here and the
task stages in a pool.

The stages, with their soundness arguments in :mod:`gpuopt.verify`'s docstring:

1. ``bounds``: IBP (and the spec tensors of the later stages);
2. ``attack``: batched PGD, before the costlier bounds; a candidate decides ``sat`` only through
   the exact check;
3. ``crown``: CROWN (forward bounds for networks with few inputs), then alpha-CROWN on the spec rows;
4. ``input_split``: input-space branch and bound, for networks with few inputs (sub-boxes it
   cannot close with few unstable ReLUs go to an exact MILP inside the task);
5. ``tail`` and ``relu_split``: for the others, first MILPs of the network's tail after a narrow
   hidden layer over that layer's box (:mod:`gpuopt.milp.tail`) on each open disjunct, then
   activation branch and bound on what they leave; with the refinement on
   (``milp_refine_share`` > 0, or by default on small dense nets), first ``relu_split_probe``
   (activation splitting in a short share of the time) and then ``refine`` (per-neuron proofs,
   by activation splitting on the layers before each neuron or by MILP, ``refine_method``, tighten
   the intermediate bounds of what is left open, :mod:`gpuopt.bounds.milp_refine`), before it;
6. ``walk``: Relax-and-Walk on the weakest open disjuncts, for networks input splitting does not take;
7. ``lp``: LP bound tightening of the unstable neurons, then the LP of each open disjunct (safe
   dual bounds), for the same networks with two or more hidden layers: tighter big-M constants
   for the MILP (activation splitting decides most items faster, so these two come after it);
8. ``milp``: the MILP (``VerifyConfig.formulation``) per open disjunct in HiGHS; a disjunct that
   activation splitting left as a few open domains (its *leaves*) gets one MILP per leaf, over
   the leaf's bounds (its split neurons fixed), and closes when every leaf is proven.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable, Sequence

import numpy as np
import torch

from ..attacks import pgd_attack
from ..bounds import (alpha_crown_bounds, alpha_crown_linear_lower, crown_linear_lower, disjunct_lower_bounds, ibp,
                      intermediate_bounds)
from ..bounds.base import rounding_pad, strict_adjust
from ..bounds.forward import prefers_forward
from ..bounds.interval import interval_bounds
from ..bounds.reach import spec_outputs
from ..bounds.smooth import smooth_disjunct_lower_bounds
from ..check import check_counterexample, parameter_deviation
from ..errors import NetworkTooLargeError, NoLinearFormError
from ..lowering import check_lowering_size
from ..milp.box import BoxProof
from ..milp.highs import proof_thresholds
from ..problem import Problem
from ..specs import OutputSpec
from ..verdict import Status
from .item import ItemState, StageEvent

__all__ = ["STAGES", "Stage", "TaskSpec", "run_stages", "check_point", "finalize"]

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
    # outputs whose bounds overflow float64 (|y| inf or NaN) leave no finite pad: such a row asks
    # for a proof of ``a y > max float``, which no finite bound gives (nothing is proven, nothing
    # crashes; counterexamples are checked against the original problem)
    rhs = [np.where(np.isfinite(b), b, np.finfo(np.float64).max) for b in rhs]
    proof = OutputSpec([(A, b) for (A, _), b in zip(spec.disjuncts, rhs)], spec.n_outputs)
    return replace(problem, spec=proof)


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


# ---------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class TaskSpec:
    """One task of a task stage: ``fn(*args, budget, submitted)`` runs in a worker (or inline);
    ``budget`` is the item's time left at submission and ``submitted`` the ``time.time()`` stamp,
    so a task that waited in a queue knows how much of its budget is gone. ``meta`` tells
    ``merge`` what the result is about (problem index, disjunct)."""

    fn: Callable
    args: tuple
    label: str
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    """A row of the table.

    * ``kind="batch"``: ``run(items) -> list[str]`` works on many items at once (one tensor on the
      device) and returns each item's outcome word (``decided``, ``open``, ``timeout``);
    * ``kind="task"``: ``run(item) -> list[TaskSpec]`` plans independent CPU tasks (one per
      disjunct, problem or subdomain); each result goes to ``merge(item, spec, value)``, which may
      decide the item; once all are merged, ``finish(item) -> str`` concludes the stage;
    * ``kind="item"``: ``run(item) -> str``, a plain per-item function (a custom row).

    ``enabled(config, item)`` says whether the stage applies.
    """

    name: str
    kind: str
    run: Callable
    enabled: Callable
    merge: Callable | None = None
    finish: Callable | None = None


def _as_stage(row) -> Stage:
    return row if isinstance(row, Stage) else Stage(row[0], "item", row[1], row[2])


def network_ref(network):
    """What a task receives to find the network: the object itself for an inline run; a worker
    resolves it through :func:`gpuopt.engine.tasks.resolve_network` (see there)."""
    return getattr(network, "_task_ref", None) or network


# ---------------------------------------------------------------------------------- batch stages
def _groups(items):
    """Items grouped by network (one tensor per group)."""
    groups: dict = {}
    for it in items:
        groups.setdefault(id(it.network), []).append(it)
    return list(groups.values())


def _deadline(items):
    ds = [it.deadline for it in items if it.deadline is not None]
    return min(ds) if ds else None


def bounds_stage(items) -> list[str]:
    """IBP, and the spec tensors every later stage reads; the problems of all items on one
    network are bounded as one batch."""
    return _per_group(items, _ibp_group)


def crown_stage(items) -> list[str]:
    """CROWN (or forward bounds, :func:`~gpuopt.bounds.intermediate_bounds`) on what IBP leaves
    open, then alpha-CROWN on the spec rows; one batch per network."""
    return _per_group(items, _crown_group)


def _per_group(items, fn) -> list[str]:
    outcome = {}
    for group in _groups(items):
        for it, word in zip(group, fn(group)):
            outcome[id(it)] = word
    return [outcome[id(it)] for it in items]


def _conclude(items, disj_lb: torch.Tensor, decided_by: str) -> list[str]:
    """Stores the per-item disjunct bounds; an item with every disjunct proven is ``unsat``."""
    words, offset = [], 0
    for it in items:
        n = len(it.problems)
        K_it = max(p.spec.n_disjuncts for p in it.problems)
        lb = disj_lb[offset:offset + n, :K_it].numpy()
        offset += n
        it.disj_lb = lb if it.disj_lb is None else np.maximum(it.disj_lb, lb)
        it.open = {(i, k) for i, p in enumerate(it.problems) for k in range(p.spec.n_disjuncts)
                   if not it.disj_lb[i, k] > 0}
        it.bounds_method = decided_by
        if not it.open:
            it.decide(Status.UNSAT, decided_by=decided_by,
                      message=f"{decided_by.upper()} bounds prove every disjunct unreachable")
            words.append("decided")
        else:
            words.append("open")
    return words


#: projected Adam steps on the tangent points of a Sigmoid/Tanh chain's relaxation (per spec row),
#: and the share of the items' time left that the relaxation's bounds and steps may take
SMOOTH_OPTIMISE_STEPS = 20
SMOOTH_BOUNDS_SHARE = 0.25


def _ibp_group(items) -> list[str]:
    problems = [p for it in items for p in it.problems]
    net = items[0].network
    lower = torch.as_tensor(np.stack([p.region.lower for p in problems]))
    upper = torch.as_tensor(np.stack([p.region.upper for p in problems]))
    try:  # every stage but the attack works on the network's linear form
        check_lowering_size(net)
    except NoLinearFormError as exc:
        # the attack alone, its points checked layer by layer; a network that is only not
        # piecewise linear first gets interval bounds, layer by layer, which may prove it
        for it in items:
            it.too_large = str(exc)
            it.heavy = isinstance(exc, NetworkTooLargeError)
        if isinstance(exc, NetworkTooLargeError):
            _set_spec(items, problems, lower, upper)
            for it in items:
                it.open = {(i, k) for i, p in enumerate(it.problems) for k in range(p.spec.n_disjuncts)}
            return ["open"] * len(items)
        out_lo, out_hi = interval_bounds(net, lower, upper)
        y_abs = torch.maximum(out_lo.abs(), out_hi.abs()).numpy()
        proof_problems = [proof_problem(p, y_abs[i]) for i, p in enumerate(problems)]
        A_all, b_all, S_all = _set_spec(items, proof_problems, lower, upper)
        lb = disjunct_lower_bounds(out_lo, out_hi, A_all, b_all, S_all)
        if bool((lb > 0).all()):
            return _conclude(items, lb, "interval")
        # a chain of affine layers and ReLU/Sigmoid/Tanh also gets CROWN's linear relaxation, its
        # tangent points optimised per spec row, within a share of the items' time
        ends = [it.deadline for it in items if it.deadline is not None]
        share = None if not ends else time.monotonic() + SMOOTH_BOUNDS_SHARE * max(0.0, min(ends) - time.monotonic())
        relaxed = smooth_disjunct_lower_bounds(net, lower, upper, A_all, b_all, S_all, steps=SMOOTH_OPTIMISE_STEPS,
                                               deadline=share)
        if relaxed is None:
            return _conclude(items, lb, "interval")
        return _conclude(items, torch.fmax(lb, relaxed), "crown")
    bounds = ibp(net, lower, upper)
    # proofs run on specs whose float rows are sound for the exact rows (see OutputSpec.proof_rhs);
    # counterexamples are always checked against the original problems
    y_abs = torch.maximum(bounds.output[0].abs(), bounds.output[1].abs()).numpy()
    dev = parameter_deviation(net, lower.numpy(), upper.numpy())
    proof_problems = [proof_problem(p, y_abs[i], None if dev is None else dev[i]) for i, p in enumerate(problems)]
    A_all, b_all, S_all = _set_spec(items, proof_problems, lower, upper)
    offset = 0
    for it in items:
        it.bounds = bounds.select(slice(offset, offset + len(it.problems)))
        offset += len(it.problems)
    return _conclude(items, disjunct_lower_bounds(bounds.output[0], bounds.output[1], A_all, b_all, S_all), "ibp")


def _set_spec(items, proof_problems, lower, upper):
    """Each item's boxes, proof problems and padded spec tensors (from ``proof_problems``, one per
    problem of the items in order); returns the stacked ``(A, b, strict)`` of all of them."""
    A_all, b_all = stacked_spec(proof_problems)
    S_all = stacked_strict([p for it in items for p in it.problems], b_all.shape)
    offset = 0
    for it in items:
        sl = slice(offset, offset + len(it.problems))
        offset += len(it.problems)
        K_it = max(p.spec.n_disjuncts for p in it.problems)
        M_it = max(A.shape[0] for p in proof_problems[sl] for A, _ in p.spec.disjuncts)
        it.lower, it.upper, it.proof_problems = lower[sl], upper[sl], list(proof_problems[sl])
        it.A, it.b, it.strict = A_all[sl, :K_it, :M_it], b_all[sl, :K_it, :M_it], S_all[sl, :K_it, :M_it]
    return A_all, b_all, S_all


def _lowered(enabled):
    """``enabled``, and the network's linear form was not refused (``too_large``, set by the
    bounds stage)."""
    return lambda c, it: it.too_large is None and enabled(c, it)


#: the share of an item's time left that alpha-CROWN on the intermediate layers may take
ALPHA_INTERMEDIATE_SHARE = 0.15


def _crown_group(items) -> list[str]:
    problems = [p for it in items for p in it.problems]
    net, config = items[0].network, items[0].config
    deadline = _deadline(items)
    left = (lambda: math.inf) if deadline is None else (lambda: deadline - time.monotonic())  # noqa: E731
    lower, upper = torch.cat([it.lower for it in items]), torch.cat([it.upper for it in items])
    A_all, b_all = stacked_spec([p for it in items for p in it.proof_problems])
    S_all = stacked_strict(problems, b_all.shape)
    P = len(problems)
    # the outputs some proof row reads: only they, and the neurons that reach them, need CROWN
    outputs = spec_outputs(A_all)
    bounds = intermediate_bounds(net, lower, upper, deadline=deadline, outputs=outputs)
    K, M = A_all.shape[1:3]
    t_rows = time.monotonic()
    rows, _ = crown_linear_lower(net, lower, upper, A_all.reshape(P, K * M, -1), bounds)
    t_rows = time.monotonic() - t_rows  # alpha-CROWN's first pass costs as much: it must fit
    b_flat = b_all.reshape(P, K * M)
    finite_b = torch.where(torch.isfinite(b_flat), b_flat, torch.zeros_like(b_flat))
    rows = rows - b_flat - rounding_pad(finite_b.abs(), 1)
    disj_lb = strict_adjust(rows.view(P, K, M), S_all).amax(-1)
    disj_lb = torch.maximum(disj_lb, disjunct_lower_bounds(bounds.output[0], bounds.output[1], A_all, b_all, S_all))
    decided_by = "crown"

    def alpha_rows(bounds_):
        """alpha-CROWN's disjunct bounds on ``bounds_``; the stage's verdict word and bounds."""
        rows_ = alpha_crown_linear_lower(net, lower, upper, A_all.reshape(P, K * M, -1), bounds_,
                                         steps=config.alpha_steps, deadline=deadline)
        rows_ = rows_ - b_flat - rounding_pad(finite_b.abs(), 1)
        better = torch.maximum(disj_lb, strict_adjust(rows_.view(P, K, M), S_all).amax(-1))
        return ("alpha-crown" if bool((better > 0).all()) else decided_by), better

    if not bool((disj_lb > 0).all()) and config.alpha_steps > 0 and left() > 2 * t_rows:
        decided_by, disj_lb = alpha_rows(bounds)
    if not bool((disj_lb > 0).all()) and config.alpha_steps > 0 and config.alpha_intermediate \
            and len(bounds.pre_activation) > 1 and left() > 4 * t_rows and not prefers_forward(net) \
            and not all(_splits_inputs(config, it) for it in items):
        # alpha-CROWN on the intermediate layers too, within a share of the time left; the
        # tighter bounds serve the spec rows here and the activation splitting and MILP stages
        # after. (Not where the forward passes were preferred: its backward pass per neuron is what
        # they avoid; on cifar_biasfield's 45,000 ReLUs it spent its whole share in the first
        # layers. Not where input splitting follows, which bounds its root box again and splits
        # it sooner than the slopes pay: on all 186 ACAS Xu instances it decided 38 at the root
        # in 17.8 s, which input splitting decided in 8.6 s more, 9.1 s less in all.)
        stop = time.monotonic() + ALPHA_INTERMEDIATE_SHARE * left()
        bounds = alpha_crown_bounds(net, lower, upper, bounds, steps=config.alpha_steps,
                                    deadline=stop if deadline is None else min(stop, deadline),
                                    step_dtype=config.relu_split.step_dtype, outputs=outputs)
        decided_by, disj_lb = alpha_rows(bounds)
    offset = 0
    for it in items:
        n = len(it.problems)
        it.bounds = bounds.select(slice(offset, offset + n))
        offset += n
    return _conclude(items, disj_lb, decided_by)


#: restarts per attack round on a network too large for its linear form
TOO_LARGE_RESTARTS = 8


def attack_stage(items) -> list[str]:
    """Attack over the open problems of all items on one network, one batch row per (item,
    problem) pair (:func:`~gpuopt.attacks.falsify`): rounds of fresh restarts until every row is
    falsified, ``config.attack.patience`` rounds did not improve the best margin, or the attack
    budget ends: ``config.attack_share`` of the time the items had left (at least 2 s). Every
    candidate is re-checked exactly before it decides an item; the best points and their pools
    of distinct activation patterns stay with the item for the later stages."""
    outcome = {}
    for group in _groups(items):
        config = group[0].config
        deadline = _deadline(group)
        t0 = time.monotonic()
        budget = 0.0 if deadline is None else config.attack_share * max(0.0, deadline - t0)
        # the attack stops at its budget (at least 2 s), so that an expensive network still leaves
        # its bounds and MILP most of the item's time
        stop = None if deadline is None else min(deadline, t0 + max(budget, 2.0))
        if all(it.too_large is not None and not _splits_on_intervals(config, it) for it in group):
            # nothing else can run: all the time, however long the search stalls
            stop = deadline
            config = dataclasses.replace(config, attack=dataclasses.replace(config.attack, patience=None))
        elif deadline is not None and all(it.too_large is not None for it in group):
            # interval splitting follows, whose counterexample search (sub-box centres) is weaker:
            # the attack may take up to SMOOTH_ATTACK_SHARE of the time while it improves
            stop = min(deadline, t0 + max(budget, 2.0, SMOOTH_ATTACK_SHARE * (deadline - t0)))
        elif all(_splits_inputs(config, it) for it in group):
            # input splitting follows, which looks for counterexamples in its sub-boxes itself
            # (centres, corners, PGD in the weakest): one round here (on all 186 ACAS Xu
            # instances, 3 rounds took 20.1 s, one 7.7 s, and the counterexamples found later
            # moved to splitting: 6.3 s less in all)
            config = dataclasses.replace(config, attack=dataclasses.replace(config.attack, rounds=1))
        if any(it.heavy for it in group):
            # a network too large for its linear form takes seconds per step: fewer restarts per
            # round, no output-diversified start steps and one point kept
            config = dataclasses.replace(config, attack=dataclasses.replace(
                config.attack, restarts=min(config.attack.restarts, TOO_LARGE_RESTARTS), odi=0.0, keep=1))
        rows = [(it, i) for it in group if it.verdict is None for i in _open_problems(it)]
        if rows:
            _attack_rows(group[0].network, rows, config, stop)
        for it in group:
            outcome[id(it)] = "decided" if it.verdict is not None else "open"
    return [outcome.get(id(it), "open") for it in items]


def _attack_rows(network, rows, config, deadline) -> None:
    """Attack ``rows`` = ``(item, problem)`` pairs; decides the items it falsifies."""
    lower = torch.cat([it.lower[[i]] for it, i in rows])
    upper = torch.cat([it.upper[[i]] for it, i in rows])
    K = max(it.A.shape[1] for it, _ in rows)
    M = max(it.A.shape[2] for it, _ in rows)
    A = torch.zeros((len(rows), K, M, rows[0][0].A.shape[3]), dtype=torch.float64)
    b = torch.full((len(rows), K, M), math.inf, dtype=torch.float64)
    for r, (it, i) in enumerate(rows):
        k, m = it.A.shape[1:3]
        A[r, :k, :m], b[r, :k, :m] = it.A[i], it.b[i]
        b[r, k:, 0] = -math.inf  # padding disjuncts never win the min

    def confirm(r: int, x: torch.Tensor) -> bool:
        it, i = rows[r]
        if it.verdict is not None:
            return True
        ok, x64, y64, m = check_point(it.problems[i], x.detach().to("cpu", torch.float64).numpy())
        if ok:
            it.best_x[i] = x64
            it.margin_upper = min(it.margin_upper, m)
            it.decide(Status.SAT, counterexample=x64, output=y64, margin_upper=m, decided_by="attack",
                      message=f"attack counterexample, float64 margin {m:.6g}")
        return ok

    cand = pgd_attack(network, lower, upper, A, b, config=config.attack, device=attack_device(config),
                      deadline=deadline, confirm=confirm)
    xs = cand.x.detach().to("cpu", torch.float64).numpy()
    for r, (it, i) in enumerate(rows):
        it.candidates[i] = cand.pools[r]
        if it.verdict is not None:
            continue
        if it.heavy and deadline is not None and time.monotonic() > deadline:
            continue  # checking a point of a network this large takes seconds: not past the deadline
        ok, x64, y64, m = check_point(it.problems[i], xs[r])
        if m < it.margin_upper or i not in it.best_x:
            it.best_x[i] = x64
        it.margin_upper = min(it.margin_upper, m)
        if ok:
            it.decide(Status.SAT, counterexample=x64, output=y64, margin_upper=m, decided_by="attack",
                      message=f"attack counterexample, float64 margin {m:.6g}")
    for it in {id(it): it for it, _ in rows}.values():
        it.stage_notes["attack"] = {"rounds": cand.rounds, "restarts": cand.restarts, "evaluations": cand.evaluations}


# ---------------------------------------------------------------------------------- task stages
def _problem_data(problem: Problem) -> tuple:
    """A Problem without its network: ``(region, spec, inner, near)``, rebuilt by the task."""
    return problem.region, problem.spec, problem.inner, problem.near


def _close(item: ItemState, i: int, k: int, lb: float) -> None:
    """Disjunct ``k`` of problem ``i`` is proven unreachable with certified margin ``>= lb``."""
    item.open.discard((i, k))
    item.disj_lb[i, k] = max(float(item.disj_lb[i, k]), float(lb))


def plan_input_split(item: ItemState) -> list[TaskSpec]:
    """One input-splitting task per open problem; with the MILP stage on, its hard sub-boxes go
    to MILPs that prove as the MILP stage does (thresholds, solver, re-check)."""
    config = item.config
    box_proof = None
    if config.use_milp:
        box_proof = BoxProof(threshold_abs=config.milp_threshold_abs, threshold_rel=config.milp_threshold_rel,
                             solver=config.solver, recheck=config.milp_recheck)
    specs = []
    for i in _open_problems(item):
        ks = sorted(k for (j, k) in item.open if j == i)
        # on few-input wide nets, the crown stage's bounds of the problem's box serve as the root's
        # (a zonotope pass of seconds saved). Not where the root's CROWN is cheap: there the stage's
        # alpha-tightened bounds change the first splits, and on ACAS Xu that cost more boxes (1_1
        # prop_5: 8,079 instead of 2,237) and lost 1_9 prop_7's counterexample (a timeout, 255 boxes before)
        root = None
        if item.bounds is not None and item.bounds.method != "ibp" and prefers_forward(item.network):
            root = item.bounds.select(slice(i, i + 1))
        specs.append(TaskSpec(split_task, (network_ref(item.network), _problem_data(item.problems[i]),
                                           item.proof_problems[i].spec, ks, config.split, box_proof, root),
                              f"input_split p{i}", {"problem": i, "disjuncts": ks}))
    return specs


#: the share of its time the attack may take, while it improves, on a network that is not
#: piecewise linear before interval splitting
SMOOTH_ATTACK_SHARE = 0.3


def _few_inputs(config, item: ItemState) -> bool:
    """Input splitting is on and the network has few enough inputs for it: the splitting stages
    take the item, activation splitting and the stages around it do not."""
    return config.use_input_split and item.network.input_size <= config.split.max_input_dim


def _splits_on_intervals(config, item: ItemState) -> bool:
    """The network is only not piecewise linear (not too large) and has few inputs: input
    splitting on interval bounds applies (:mod:`gpuopt.interval_split`)."""
    return item.too_large is not None and not item.heavy and _few_inputs(config, item)


def _splits_inputs(config, item: ItemState) -> bool:
    """Input splitting on linear bounds (:func:`~gpuopt.bab.input_split`) will take the item if the
    stages before it leave it open."""
    return item.too_large is None and _few_inputs(config, item)


def plan_interval_split(item: ItemState) -> list[TaskSpec]:
    """One interval-splitting task per open problem (proof rows), its results merged as input
    splitting's."""
    specs = []
    for i in _open_problems(item):
        ks = sorted(k for (j, k) in item.open if j == i)
        specs.append(TaskSpec(interval_split_task, (network_ref(item.network), _problem_data(item.problems[i]),
                                                    item.proof_problems[i].spec, ks, item.config.split),
                              f"interval_split p{i}", {"problem": i, "disjuncts": ks}))
    return specs


def merge_input_split(item: ItemState, spec: TaskSpec, value: dict) -> None:
    notes = item.stage_notes.setdefault("input_split", {"boxes": 0, "undecided": False, "milp_boxes": 0})
    notes["boxes"] += value["boxes"]
    notes["milp_boxes"] += value.get("milp_boxes", 0)
    if value["kind"] == "sat":
        item.decide(Status.SAT, counterexample=value["x"], output=value["y"], margin_upper=value["margin"],
                    decided_by="input-split", message=f"input-splitting counterexample after {notes['boxes']} "
                                                      f"boxes, float64 margin {value['margin']:.6g}")
    elif value["kind"] == "timeout":
        weakest = value.get("open_lower", -math.inf)
        item.decide(Status.TIMEOUT, message=f"input splitting timed out after {notes['boxes']} boxes, with "
                                            f"{value.get('closed_fraction', 0.0):.2%} of problem {spec.meta['problem']}'s "
                                            "input volume proven safe"
                                            + (f"; its weakest open bound {weakest:.4g}" if math.isfinite(weakest) else ""))
    elif value["kind"] == "unsat":
        for k in spec.meta["disjuncts"]:
            _close(item, spec.meta["problem"], k, value["lb"])
    else:
        notes["undecided"] = True


def finish_input_split(item: ItemState) -> str:
    notes = item.stage_notes.get("input_split", {"boxes": 0, "undecided": False, "milp_boxes": 0})
    # unsat only from the proofs themselves: every disjunct must have been closed by a result
    if not notes["undecided"] and not item.open:
        by_milp = ""
        if notes["milp_boxes"]:
            how = ("each re-checked independently by safe-bound branch and bound" if item.config.milp_recheck
                   else "resting on HiGHS's tree within its tolerance margin; re-check off")
            by_milp = f", {notes['milp_boxes']} of them closed by MILP ({how})"
        item.decide(Status.UNSAT, margin_lower=min(item.closed_lower_bounds()),
                    decided_by="input-split",
                    message=f"input splitting proved every open disjunct on {notes['boxes']} boxes{by_milp}")
        return "decided"
    return "open"


def plan_relu_split(item: ItemState, *, share: float | None = None, stage: str = "relu_split") -> list[TaskSpec]:
    """One activation-splitting task per open problem, over its open disjuncts (proof rows), in
    ``share`` of the time left (default ``relu_split_share``)."""
    config, bounds = item.config, item.bounds
    share = config.relu_split_share if share is None else share
    specs = []
    for i in _open_problems(item):
        pre = [(l[i].numpy(), u[i].numpy()) for l, u in bounds.pre_activation]
        if not all(np.all(np.isfinite(l)) and np.all(np.isfinite(u)) for l, u in pre):
            continue  # overflowing bounds: nothing sound to split on
        specs.append(TaskSpec(relu_split_task, (network_ref(item.network), _problem_data(item.problems[i]),
                                                _proof_disjuncts(item, i),
                                                pre, config.relu_split, share),
                              f"{stage} p{i}", {"problem": i}))
    return specs


def _proof_disjuncts(item: ItemState, i: int) -> list:
    """Problem ``i``'s open disjuncts as ``(k, C_k, d_k, strict_k)`` (proof rows)."""
    out = []
    for k in sorted(k for (j, k) in item.open if j == i):
        Ak, bk = item.proof_problems[i].spec.disjuncts[k]
        strict = None if item.strict is None else item.strict[i, k, :Ak.shape[0]].numpy()
        out.append((k, Ak, bk, strict))
    return out


def merge_relu_split(item: ItemState, spec: TaskSpec, value: dict, *, stage: str = "relu_split") -> None:
    notes = item.stage_notes.setdefault(stage, {"domains": 0, "open": [], "leaves": {}})
    notes["domains"] += value["domains"]
    i = spec.meta["problem"]
    for k, lb in value["closed"].items():
        _close(item, i, int(k), lb)
    for k, (proven, leaves) in value.get("leaves", {}).items():
        notes["leaves"][(i, int(k))] = (proven, leaves)
    if value["kind"] == "sat":
        item.decide(Status.SAT, counterexample=value["x"], output=value["y"], margin_upper=value["margin"],
                    decided_by="relu-split", message=f"activation-splitting counterexample after {notes['domains']} "
                                                     f"domains, float64 margin {value['margin']:.6g}")
    elif value["kind"] != "unsat":
        notes["open"].append(f"problem {i}: {value['open_domains']} domains open ({value['kind']}), "
                             f"worst bound {value['worst']:.4g}")


def finish_relu_split(item: ItemState, *, stage: str = "relu_split") -> str:
    notes = item.stage_notes.get(stage, {"domains": 0, "open": []})
    if not item.open:  # every disjunct closed by a proof result
        item.decide(Status.UNSAT, margin_lower=min(item.closed_lower_bounds()), decided_by="relu-split",
                    message=f"activation splitting proved every open disjunct on {notes['domains']} domains")
        return "decided"
    return "open"


def plan_relu_split_probe(item: ItemState) -> list[TaskSpec]:
    """Activation splitting first, in ``milp_refine_probe_share`` of the time left, when the MILP
    refinement is on: what it decides quickly never waits for the refinement. Its open domains and
    leaves are dropped (its notes are its own); activation splitting starts afresh on refined bounds."""
    return plan_relu_split(item, share=item.config.milp_refine_probe_share, stage="relu_split_probe")


def _refine_share(c, it) -> float:
    """The MILP refinement's share of the time for this item's network (:meth:`VerifyConfig.refine_share`)."""
    seconds = None if it.deadline is None else it.deadline - it.t0
    return c.refine_share(it.network.input_size, it.network.n_relus, seconds)


def _refinement_applies(c, it) -> bool:
    """The MILP refinement's condition: on (for this network), activation splitting takes the
    network, 2+ hidden layers."""
    return c.use_relu_split and not _few_inputs(c, it) and len(it.bounds.pre_activation) > 1 and _refine_share(c, it) > 0


def _milp_bounds(item: ItemState, i: int):
    """``(pre, (ly, uy))`` of problem ``i`` as numpy arrays, or None when a bound overflows."""
    bounds = item.bounds
    pre = [(l[i].numpy(), u[i].numpy()) for l, u in bounds.pre_activation]
    ly, uy = bounds.output[0][i].numpy(), bounds.output[1][i].numpy()
    if not all(np.all(np.isfinite(l)) and np.all(np.isfinite(u)) for l, u in pre) or \
            not (np.all(np.isfinite(ly)) and np.all(np.isfinite(uy))):
        return None
    return pre, (ly, uy)


#: disjuncts walked per item: a counterexample is most likely where the bound is weakest, and a
#: walk needs seconds (its first region LP on a 784-256x4 net takes about 0.2 s)
WALK_DISJUNCTS = 3


def plan_walk(item: ItemState) -> list[TaskSpec]:
    """One Relax-and-Walk task for each of the :data:`WALK_DISJUNCTS` open disjuncts with the
    weakest bounds, from the attack's best point and its pool of distinct patterns; the tasks
    share ``walk_share`` of the time left."""
    config = item.config
    keys = sorted(item.open, key=lambda ik: item.disj_lb[ik[0], ik[1]])[:WALK_DISJUNCTS]
    specs = []
    for i, k in keys:
        mb = _milp_bounds(item, i)
        if mb is None:
            continue
        starts = [item.best_x[i]] if i in item.best_x else []
        pool = item.candidates.get(i)
        if pool is not None and len(pool.x):
            starts += list(pool.x.detach().to("cpu", torch.float64).numpy())
        Ak, bk = item.problems[i].spec.disjuncts[k]
        specs.append(TaskSpec(walk_task, (network_ref(item.network), _problem_data(item.problems[i]), Ak, bk, mb[0],
                                          mb[1], starts, config.walk, config.solver, config.walk_share / len(keys)),
                              f"walk p{i} d{k}", {"problem": i, "disjunct": k}))
    return specs


def merge_walk(item: ItemState, spec: TaskSpec, value: dict) -> None:
    notes = item.stage_notes.setdefault("walk", {"lps": 0, "regions": 0})
    notes["lps"] += value["lps"]
    notes["regions"] += value["regions"]
    i = spec.meta["problem"]
    if value["kind"] == "sat":
        item.decide(Status.SAT, counterexample=value["x"], output=value["y"], margin_upper=value["margin"],
                    decided_by="walk", message=f"Relax-and-Walk counterexample after {notes['lps']} LPs, float64 "
                                               f"margin {value['margin']:.6g}")
    elif value["x"] is not None and value["margin"] < item.margin_upper:
        item.best_x[i] = value["x"]  # the MILP's start
        item.margin_upper = value["margin"]


def finish_walk(item: ItemState) -> str:
    return "open"


def _tighten_pre(item: ItemState, i: int, pre_new) -> None:
    """Problem ``i`` keeps, per neuron, the tighter of its pre-activation bounds and ``pre_new``."""
    pre = []
    for (l, u), (l_new, u_new) in zip(item.bounds.pre_activation, pre_new):
        l, u = l.clone(), u.clone()  # the stage's tensors may be views shared with other items
        l[i] = torch.maximum(l[i], torch.as_tensor(l_new, dtype=l.dtype))
        u[i] = torch.minimum(u[i], torch.as_tensor(u_new, dtype=u.dtype))
        pre.append((l, u))
    item.bounds = replace(item.bounds, pre_activation=tuple(pre))


def plan_milp_refine(item: ItemState) -> list[TaskSpec]:
    """One MILP-refinement task per open problem (:func:`gpuopt.engine.tasks.milp_refine_task`);
    the tasks share the refinement's share of the time left (:func:`_refine_share`)."""
    config = item.config
    share = _refine_share(config, item)
    problems = _open_problems(item)
    specs = []
    for i in problems:
        mb = _milp_bounds(item, i)
        if mb is None:
            continue
        specs.append(TaskSpec(milp_refine_task, (network_ref(item.network), _problem_data(item.problems[i]), mb[0],
                                                 mb[1], config.solver, config.milp_refine_neuron_time,
                                                 config.alpha_steps, share / len(problems), config.refine_method,
                                                 _proof_disjuncts(item, i), config.relu_split),
                              f"refine p{i}", {"problem": i}))
    return specs


def _merge_tightening(item: ItemState, spec: TaskSpec, value: dict, stage: str, counts: tuple) -> None:
    """Add a bound-tightening task's ``counts`` to the stage's notes and keep its tighter ``pre``."""
    notes = item.stage_notes.setdefault(stage, dict.fromkeys(counts, 0))
    for key in counts:
        notes[key] += value[key]
    _tighten_pre(item, spec.meta["problem"], value["pre"])


def merge_milp_refine(item: ItemState, spec: TaskSpec, value: dict) -> None:
    _merge_tightening(item, spec, value, "refine", ("milps", "stabilised", "tightened", "lifted"))
    notes = item.stage_notes["refine"]
    notes["on_tolerances"] = bool(notes.get("on_tolerances")) or bool(value.get("on_tolerances", True))


def finish_milp_refine(item: ItemState) -> str:
    return "open"


#: the note an ``unsat`` verdict gets when it may rest on MILP-refined intermediate bounds
REFINED_NOTE = ("; on intermediate bounds refined by MILP ({stabilised} neurons made stable, {tightened} more "
                "narrowed), which rest on HiGHS's tolerances within its margin")
#: the note when the refinement solved no MILP (activation splitting on each layer's neurons: CROWN's
#: padded arithmetic)
#: appended to an ``unsat`` verdict some of whose disjuncts the tail stage proved, when a later
#: stage decided it
TAIL_NOTE = ("; {proven} disjuncts proven before activation splitting by MILPs of the network's tail after "
             "a narrow layer ({rechecked} of them re-checked independently; the others rest on HiGHS's tree "
             "within its tolerance margin)")
#: the note when the refinement lifted a narrow layer's bounds past their signs (activation
#: splitting: CROWN's padded arithmetic)
LIFTED_NOTE = "; with {lifted} bounds of narrow layers lifted by activation splitting on the layers before"
#: a ``sat`` whose exact input set holds no float64 point (:class:`~gpuopt.problem.NearBox`)
NEAR_NOTE = ("; the exact input set holds no float64 point (an input fixed at a decimal float64 cannot hold): "
             "the point given is the nearest, and every exact point within its float hull is proven unsafe")
SPLIT_REFINED_NOTE = ("; on intermediate bounds refined by activation splitting ({stabilised} neurons made "
                      "stable, {tightened} more narrowed)")


def plan_lp(item: ItemState) -> list[TaskSpec]:
    """One LP task per open problem: LP bound tightening, then the LP bound of each open
    disjunct (proof rows); the tasks share ``lp_share`` of the time left."""
    config = item.config
    handed = _handed_leaves(item)  # their leaves carry tighter bounds already
    problems = [i for i in _open_problems(item) if any((i, k) not in handed for (j, k) in item.open if j == i)]
    specs = []
    for i in problems:
        mb = _milp_bounds(item, i)
        if mb is None:
            continue
        disjuncts = [(k, *item.proof_problems[i].spec.disjuncts[k])
                     for k in sorted(k for (j, k) in item.open if j == i and (i, k) not in handed)]
        specs.append(TaskSpec(lp_task, (network_ref(item.network), _problem_data(item.problems[i]), mb[0], mb[1],
                                        disjuncts, config.solver, config.lp_share / len(problems)),
                              f"lp p{i}", {"problem": i}))
    return specs


def merge_lp(item: ItemState, spec: TaskSpec, value: dict) -> None:
    _merge_tightening(item, spec, value, "lp", ("lps", "tightened", "stabilised"))
    i = spec.meta["problem"]
    for k, lb in value["closed"].items():
        _close(item, i, int(k), lb)


def finish_lp(item: ItemState) -> str:
    if not item.open:
        notes = item.stage_notes.get("lp", {"lps": 0})
        item.decide(Status.UNSAT, margin_lower=min(item.closed_lower_bounds()), decided_by="lp",
                    message=f"LP bounds proved every open disjunct ({notes['lps']} LPs)")
        return "decided"
    return "open"


def _handed_leaves(item: ItemState) -> dict:
    """``{(i, k): (bound proven on the closed domains, leaves)}``: the open disjuncts that
    activation splitting handed to the MILP as a few open domains (leaves)."""
    leaves = item.stage_notes.get("relu_split", {}).get("leaves", {})
    return {ik: v for ik, v in leaves.items() if ik in item.open}


def _in_region(network, x, pre) -> bool:
    """Whether the float64 pre-activations of ``x`` (affine blocks, ReLU between) lie within
    ``pre`` (a heuristic: it only picks MILP starts)."""
    blocks = network.affine_blocks()
    h = np.asarray(x, dtype=np.float64).reshape(-1)
    for blk, (l, u) in zip(blocks, pre):
        z = blk.matrix @ h + blk.bias
        if np.any(z < l) or np.any(z > u):
            return False
        h = np.maximum(z, 0.0) if blk.passthrough is None else np.where(blk.passthrough, z, np.maximum(z, 0.0))
    return True


#: the tail stage's share of the time left, split evenly over its tasks (0: no tail stage)
TAIL_STAGE_SHARE = 0.1


def plan_tail(item: ItemState) -> list[TaskSpec]:
    """Before activation splitting: tail MILPs (:mod:`gpuopt.milp.tail`) on each open disjunct
    whose bounds have a narrow hidden layer, the tasks sharing :data:`TAIL_STAGE_SHARE` of the time
    left. A disjunct a tail proves needs no domains: on mnist-net_256x4 prop_9_0.05, after the
    refinement, the 45-binary tail after the third hidden layer (4 live neurons) proves 8 of the 9
    disjuncts, and splitting then proves the ninth in 9 s, where it ran out of time on all nine."""
    from ..milp.tail import tail_layers

    if TAIL_STAGE_SHARE <= 0:
        return []
    config = item.config
    blocks = item.network.affine_blocks()
    cases = []
    for i, k in sorted(item.open):
        mb = _milp_bounds(item, i)
        if mb is not None and tail_layers(blocks, mb[0]):
            cases.append((i, k, mb))
    specs = []
    for i, k, (pre, (ly, uy)) in cases:
        Ak, bk = item.proof_problems[i].spec.disjuncts[k]
        threshold, unchecked = proof_thresholds(Ak, bk, ly, uy, config.milp_threshold_abs, config.milp_threshold_rel,
                                                config.solver)
        specs.append(TaskSpec(tail_task, (network_ref(item.network), Ak, bk, pre, (ly, uy), threshold, unchecked,
                                          config.solver, config.formulation, config.milp_recheck,
                                          TAIL_STAGE_SHARE / len(cases)),
                              f"tail p{i} d{k}", {"problem": i, "disjunct": k}))
    return specs


def merge_tail(item: ItemState, spec: TaskSpec, value: dict) -> None:
    notes = item.stage_notes.setdefault("tail", {"proven": 0, "rechecked": 0})
    item.milp_nodes += value["nodes"]
    if value["kind"] == "proven":
        _close(item, spec.meta["problem"], spec.meta["disjunct"], value["lb"])
        notes["proven"] += 1
        notes["rechecked"] += bool(value.get("rechecked"))


def finish_tail(item: ItemState) -> str:
    if item.open:
        return "open"
    notes = item.stage_notes.setdefault("tail", {"proven": 0, "rechecked": 0})
    notes["decided"] = True  # (its message names the tails; finalize adds no note)
    how = (f"{notes['rechecked']} of {notes['proven']} proofs re-checked independently by safe-bound branch and "
           "bound; the others rest on HiGHS's tree within its tolerance margin" if item.config.milp_recheck else
           "the proofs rest on HiGHS's tree within its tolerance margin; re-check off")
    item.decide(Status.UNSAT, margin_lower=min(item.closed_lower_bounds()), decided_by="milp",
                message=f"every open disjunct proven unreachable by MILP, {notes['proven']} by the network's tail "
                        f"after a narrow layer, over that layer's box ({how})")
    return "decided"


def plan_milp(item: ItemState) -> list[TaskSpec]:
    """One MILP task per open disjunct, weakest bound first, seeded with the best point; a
    disjunct that activation splitting left as a few leaves gets one MILP per leaf instead, over
    the leaf's bounds intersected with the item's (its split neurons stable: no binary), weakest
    leaf first. A disjunct closes when every one of its tasks proves."""
    specs = []
    notes = item.stage_notes.setdefault("milp", {"undecided": [], "leaves_left": {}, "leaf_lb": {}})
    handed = _handed_leaves(item)
    # weakest bound first: the disjunct most likely to hold a counterexample
    for i, k in sorted(item.open, key=lambda ik: item.disj_lb[ik[0], ik[1]]):
        mb = _milp_bounds(item, i)
        if mb is None:
            notes["undecided"].append(f"MILP skipped on problem {i} disjunct {k}: the bounds overflow float64, "
                                      "so no big-M constants exist")
            continue
        pre, (ly, uy) = mb
        regions = [(None, pre)]
        if (i, k) in handed:
            proven, leaves = handed[(i, k)]
            regions = [(n, [(np.maximum(l, lr), np.minimum(u, ur)) for (l, u), (lr, ur) in zip(pre, leaf)])
                       for n, (_, leaf) in enumerate(leaves)]
            # both bound sets hold on the leaf's inputs, so crossing bounds mean it has none
            # (a NaN bound proves nothing)
            regions = [(n, r) for n, r in regions if not any(np.any(l > u) for l, u in r)]
            if not regions:
                _close(item, i, k, proven)
                continue
            notes["leaves_left"][(i, k)] = len(regions)
            notes["leaf_lb"][(i, k)] = proven
        start = item.best_x.get(i)
        for n, region in regions:
            # a leaf's MILP starts from the best point only if that lies in the leaf (HiGHS warns
            # on an infeasible start, and a warning withholds the proof)
            seed = start if n is None or start is None or _in_region(item.network, start, region) else None
            specs.append(_milp_spec(item, i, k, region, (ly, uy), seed, n))
    return specs


def _milp_spec(item: ItemState, i: int, k: int, region, out_bounds, seed, leaf) -> TaskSpec:
    """The MILP task of problem ``i``'s disjunct ``k`` over ``region`` (pre-activation bounds;
    ``leaf``: the index of activation splitting's leaf it covers, or None), from ``seed``, with
    its proof thresholds over ``out_bounds``."""
    config = item.config
    Ak, bk = item.proof_problems[i].spec.disjuncts[k]
    threshold, unchecked = proof_thresholds(Ak, bk, *out_bounds, config.milp_threshold_abs, config.milp_threshold_rel,
                                            config.solver)
    label = f"milp p{i} d{k}" + ("" if leaf is None else f" leaf {leaf}")
    return TaskSpec(milp_task, (network_ref(item.network), _problem_data(item.problems[i]), Ak, bk, region, out_bounds,
                                seed, threshold, unchecked, config.solver, config.formulation, config.cuts,
                                config.milp_recheck, config.milp_condition_share),
                    label, {"problem": i, "disjunct": k, "leaf": leaf})


def _beside_applies(c, it) -> bool:
    """MILPs beside activation splitting (:mod:`gpuopt.engine.beside`): the MILP stage on, and
    ``milp_beside`` on, or auto with a CPU to spare; never in a pool worker."""
    from ..devices import in_pool_worker
    from .beside import spare_cpus

    if not c.use_milp or c.milp_beside is False or in_pool_worker():
        return False
    return c.milp_beside is True or spare_cpus() >= 1


def plan_milp_beside(item: ItemState) -> list[TaskSpec]:
    """The MILP stage's task for each open disjunct, weakest bound first, over the item's bounds
    as they stand when activation splitting begins (no leaves yet), seeded with the best point."""
    specs = []
    for i, k in sorted(item.open, key=lambda ik: item.disj_lb[ik[0], ik[1]]):
        mb = _milp_bounds(item, i)
        if mb is not None:
            specs.append(_milp_spec(item, i, k, mb[0], mb[1], item.best_x.get(i), None))
    return specs


def merge_beside(item: ItemState, results) -> int:
    """Fold the MILPs run beside activation splitting into ``item`` as the MILP stage's
    (:func:`merge_milp`), proofs and counterexamples only (a MILP cancelled or out of time proves
    nothing, and the item has time left); then, when no disjunct is left open, decide ``unsat``.
    Returns how many disjuncts they closed."""
    closed = 0
    item.stage_notes.setdefault("milp", {"undecided": [], "leaves_left": {}, "leaf_lb": {}})  # as plan_milp's
    for spec, value in results:
        if item.verdict is not None:
            break
        ik = (spec.meta["problem"], spec.meta["disjunct"])
        if value["kind"] == "sat" or (value["kind"] == "proven" and ik in item.open):
            merge_milp(item, spec, value)
            closed += value["kind"] == "proven"
    if item.verdict is None and closed and not item.open:
        item.decide(Status.UNSAT, margin_lower=min(item.closed_lower_bounds()), decided_by="milp",
                    message=f"every open disjunct proven unreachable, {closed} of them by MILP beside activation "
                            f"splitting ({_milp_how(item)})")
    return closed


def merge_milp(item: ItemState, spec: TaskSpec, value: dict) -> None:
    notes = item.stage_notes.setdefault("milp", {"undecided": []})
    item.milp_nodes += value["nodes"]
    item.milp_status = value["raw_status"]
    if value.get("margin_upper") is not None:
        item.margin_upper = min(item.margin_upper, value["margin_upper"])
    if value["kind"] == "sat":
        item.decide(Status.SAT, counterexample=value["x"], output=value["y"], margin_upper=value["margin"],
                    decided_by="milp", message=f"MILP counterexample, float64 margin {value['margin']:.6g}")
    elif value["kind"] == "proven":
        ik = (spec.meta["problem"], spec.meta["disjunct"])
        if spec.meta.get("leaf") is None:
            _close(item, *ik, value["lb"])
        else:  # a leaf: the disjunct closes with its last leaf
            notes["leaves_left"][ik] -= 1
            notes["leaf_lb"][ik] = min(notes["leaf_lb"][ik], value["lb"])
            notes["leaves_proven"] = notes.get("leaves_proven", 0) + 1
            if notes["leaves_left"][ik] == 0:
                _close(item, *ik, notes["leaf_lb"][ik])
        notes["proven"] = notes.get("proven", 0) + 1
        notes["rechecked"] = notes.get("rechecked", 0) + bool(value.get("rechecked"))
        notes["farkas"] = notes.get("farkas", 0) + bool(value.get("farkas"))
        notes["tail"] = notes.get("tail", 0) + (value.get("tail") is not None)
    elif value["kind"] == "timeout":
        item.decide(Status.TIMEOUT, message=value["note"] + _split_progress(item))
    else:  # another disjunct may still hold a counterexample: go on
        notes["undecided"].append(value["note"])


def _split_progress(item: ItemState) -> str:
    """What activation splitting left open and how many of its leaves the MILPs proved (for a
    verdict without a decision)."""
    left_open = item.stage_notes.get("relu_split", {}).get("open", [])
    out = f"; activation splitting left {'; '.join(left_open)}" if left_open else ""
    milp = item.stage_notes.get("milp", {})
    if milp.get("leaves_left"):
        total = sum(len(v[1]) for v in item.stage_notes["relu_split"]["leaves"].values())
        out += f"; {milp.get('leaves_proven', 0)} of its {total} leaves proven by MILP"
    return out


def _milp_how(item: ItemState) -> str:
    """What the MILP proofs so far rest on (re-checked, Farkas certificates, HiGHS's tree)."""
    notes = item.stage_notes.get("milp", {})
    proven, rechecked, farkas = notes.get("proven", 0), notes.get("rechecked", 0), notes.get("farkas", 0)
    # a conditioned LP's Farkas certificate rests on safe bounds alone, as the re-check does
    by_lp = f", {farkas} by a conditioned LP's Farkas certificate on safe bounds" if farkas else ""
    if item.config.milp_recheck:
        return (f"{rechecked} of {proven} proofs re-checked independently by safe-bound branch and bound{by_lp}; the "
                "others rest on HiGHS's tree within its tolerance margin")
    return (f"{farkas} of {proven} proofs by a conditioned LP's Farkas certificate on safe bounds, the others"
            if farkas else "the proofs") + " rest on HiGHS's tree within its tolerance margin; re-check off"


def finish_milp(item: ItemState) -> str:
    notes = item.stage_notes.get("milp", {"undecided": []})
    if notes["undecided"] or item.open:  # unsat only when every open disjunct was closed by a proof
        unproven = [f"problem {i} disjunct {k} not proven" for i, k in sorted(item.open)]
        item.decide(Status.UNKNOWN, message="; ".join(notes["undecided"] or unproven) + _split_progress(item))
        return "open"
    how = _milp_how(item)
    leaves, tails = notes.get("leaves_proven", 0), notes.get("tail", 0)
    on = f", {leaves} of them on leaves activation splitting left" if leaves else ""
    on += f", {tails} by the network's tail after a narrow layer, over that layer's box" if tails else ""
    item.decide(Status.UNSAT, margin_lower=min(item.closed_lower_bounds()), decided_by="milp",
                message=f"every open disjunct proven unreachable by MILP{on} ({how})")
    return "decided"


#: the stages in the order they run
STAGES = (
    Stage("bounds", "batch", bounds_stage, lambda c, it: True),
    Stage("attack", "batch", attack_stage, lambda c, it: c.use_attack),
    Stage("crown", "batch", crown_stage, _lowered(lambda c, it: c.use_crown)),
    Stage("input_split", "task", plan_input_split,
          _lowered(_few_inputs),
          merge_input_split, finish_input_split),
    Stage("interval_split", "task", plan_interval_split, _splits_on_intervals, merge_input_split, finish_input_split),
    Stage("relu_split_probe", "task", plan_relu_split_probe,
          _lowered(lambda c, it: _refinement_applies(c, it) and c.milp_refine_probe_share > 0),
          partial(merge_relu_split, stage="relu_split_probe"), partial(finish_relu_split, stage="relu_split_probe")),
    Stage("refine", "task", plan_milp_refine, _lowered(_refinement_applies), merge_milp_refine, finish_milp_refine),
    Stage("tail", "task", plan_tail,
          _lowered(lambda c, it: c.use_milp and c.use_relu_split and not _few_inputs(c, it)
                   and len(it.bounds.pre_activation) > 0), merge_tail, finish_tail),
    Stage("relu_split", "task", plan_relu_split,
          _lowered(lambda c, it: c.use_relu_split and not _few_inputs(c, it) and len(it.bounds.pre_activation) > 0),
          merge_relu_split, finish_relu_split),
    Stage("walk", "task", plan_walk,
          _lowered(lambda c, it: c.use_walk and not _few_inputs(c, it) and len(it.bounds.pre_activation) > 0),
          merge_walk, finish_walk),
    Stage("lp", "task", plan_lp,
          _lowered(lambda c, it: c.use_lp and not _few_inputs(c, it) and len(it.bounds.pre_activation) > 1),
          merge_lp, finish_lp),
    Stage("milp", "task", plan_milp, _lowered(lambda c, it: c.use_milp), merge_milp, finish_milp),
)


# ---------------------------------------------------------------------------------- one item, inline
def record_event(item: ItemState, name: str, start_wall: float, end_wall: float, outcome: str,
                 seconds: float) -> None:
    item.stage_seconds[name] = item.stage_seconds.get(name, 0.0) + seconds
    item.events.append(StageEvent(name, start_wall, end_wall, outcome))


def finalize(item: ItemState) -> ItemState:
    """Ends the item: ``timeout``/``unknown`` if undecided, stage timings and events attached."""
    if item.verdict is None:
        # the anytime answer: what the splitting stages left open
        closed = sum(1 for i, p in enumerate(item.problems) for k in range(p.spec.n_disjuncts) if (i, k) not in item.open)
        total = sum(p.spec.n_disjuncts for p in item.problems)
        note = "no bounds computed" if item.disj_lb is None else f"{closed} of {total} disjuncts proven"
        if item.too_large is not None:
            note += f": {item.too_large}"
        note += _split_progress(item)
        item.decide(Status.TIMEOUT if item.left() <= 0 else Status.UNKNOWN, message=note)
    refined = item.stage_notes.get("refine", {})
    message = item.verdict.message
    if item.verdict.status is Status.UNSAT and item.verdict.decided_by not in ("ibp", "crown", "alpha-crown"):
        if refined.get("stabilised") or refined.get("tightened"):
            note = REFINED_NOTE if refined.get("on_tolerances", True) else SPLIT_REFINED_NOTE
            message += note.format(stabilised=refined["stabilised"], tightened=refined["tightened"])
        if refined.get("lifted"):
            message += LIFTED_NOTE.format(lifted=refined["lifted"])
    x = item.verdict.counterexample
    if item.verdict.status is Status.SAT and x is not None and not any(
            p.inner is not None and np.all((p.inner.lower <= np.ravel(x)) & (np.ravel(x) <= p.inner.upper))
            for p in item.problems):
        message += NEAR_NOTE  # (a point of no problem's exact set: a near one)
    tails = item.stage_notes.get("tail", {})
    if item.verdict.status is Status.UNSAT and tails.get("proven") and not tails.get("decided"):
        message += TAIL_NOTE.format(proven=tails["proven"], rechecked=tails["rechecked"])
    item.verdict = replace(item.verdict, message=message, stage_seconds=dict(item.stage_seconds),
                           events=tuple(e.to_dict() for e in item.events))
    return item


def run_stages(item: ItemState, stages=STAGES) -> ItemState:
    """Run the enabled stages on one item, in order and in this process, until one decides it; a
    task stage runs its tasks one after the other and stops at the first decision. Answers
    ``timeout`` when the deadline passes between stages or tasks, ``unknown`` when every stage ran.
    MILPs beside activation splitting (:mod:`gpuopt.engine.beside`) start with it and run on
    through the stages after it; their results are merged between stages, and they are stopped
    (a proof's re-check cut short) when the MILP stage begins or the item is decided."""
    beside = None
    try:
        for stage in map(_as_stage, stages):
            if beside is not None:  # what the MILPs beside have decided meanwhile
                _merge_beside_so_far(item, beside, stop=stage.name == "milp")
                if stage.name == "milp":
                    beside = None
            if item.verdict is not None:
                break
            if stage.name != "bounds" and item.left() <= 0:
                item.decide(Status.TIMEOUT, message=item.too_large or "")
                break
            if not stage.enabled(item.config, item):
                continue
            ts, wall = time.monotonic(), time.time()
            if stage.kind == "batch":
                outcome = stage.run([item])[0]
            elif stage.kind == "item":
                outcome = stage.run(item)
            else:
                outcome = None
                if stage.name == "relu_split" and beside is None and _beside_applies(item.config, item):
                    from .beside import DELAY_SECONDS, BesideMilps

                    specs = plan_milp_beside(item)
                    delay = min(DELAY_SECONDS, 0.1 * item.left())
                    beside = (BesideMilps(specs, item.left, delay, complete=len(specs) == len(item.open)).start()
                              if specs else None)
                timed_out = False
                with running(beside if stage.name == "relu_split" else None):  # splitting stops once they decide
                    for spec in stage.run(item):
                        if item.verdict is not None:
                            break
                        if item.left() <= 0:
                            timed_out = True
                            break
                        stage.merge(item, spec, spec.fn(*spec.args, item.left(), time.time()))
                if beside is not None:  # their proofs hold whatever the clock says (an error of theirs waits
                    _merge_beside_so_far(item, beside, stop=False, raise_error=False)  # for the stage's finish)
                if timed_out:
                    item.decide(Status.TIMEOUT)
                if item.verdict is None:
                    outcome = stage.finish(item)
                outcome = outcome if item.verdict is None else ("timeout" if item.verdict.status is Status.TIMEOUT
                                                                else "decided")
            record_event(item, stage.name, wall, time.time(), outcome, time.monotonic() - ts)
    finally:
        if beside is not None:  # (an exception on its way out is not replaced by one of theirs)
            _merge_beside_so_far(item, beside, stop=True, wait=1.0, raise_error=False)
    return finalize(item)


def _merge_beside_so_far(item: ItemState, beside, *, stop: bool, wait: float | None = None,
                         raise_error: bool = True) -> None:
    """Merge the MILPs beside activation splitting that finished since the last merge; with
    ``stop``, first cancel what still runs and wait for it (up to ``wait`` seconds, by default
    the item's time left: a HiGHS run stops at its next callback, a model being encoded takes
    its seconds), then record their event. An error of theirs is raised while the item is open
    (and ``raise_error``); once it is decided it is logged, and the verdict stands (found by
    review: a MemoryError of the MILP thread discarded splitting's ``unsat``)."""
    if stop:
        beside.stop(max(0.0, min(item.left(), 3600.0)) if wait is None else wait)
    error = beside.error
    if error is not None and (item.verdict is not None or raise_error or stop):
        beside.error = None
        if raise_error and item.verdict is None:
            raise error
        log.warning("the MILPs beside activation splitting failed (%s: %s); the verdict stands on the other stages",
                    type(error).__name__, error)
    results = list(beside.results)
    merge_beside(item, results[beside.merged:])
    beside.merged = len(results)
    if stop:
        decided = item.verdict is not None and item.verdict.decided_by == "milp"
        record_event(item, "milp_beside", beside.started_wall, time.time(), "decided" if decided else "open",
                     time.monotonic() - beside.started)


# (the task functions import this module's helpers lazily)
from .beside import running  # noqa: E402
from .tasks import (interval_split_task, lp_task, milp_refine_task, milp_task, relu_split_task, tail_task,  # noqa: E402
                    split_task, walk_task)
