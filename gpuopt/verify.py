"""The verification pipeline: falsify fast, prove exactly.

For a list of Problems sharing one network (a VNNLIB instance may have several input boxes; the
instance is violated iff any Problem is), :func:`verify_problems` runs

1. **bounds** (IBP, then CROWN, then alpha-CROWN on the spec rows; float64 with outward
   rounding pads): a disjunct whose margin
   lower bound is ``> 0`` is unreachable; a Problem whose disjuncts are all unreachable holds;
2. **attack** (batched PGD, float32 on the chosen device): a candidate gives ``sat`` only when
   :func:`gpuopt.check.check_counterexample` proves it: inside the exact input set, and in the
   unsafe region by more than its float64 error bound, or exactly in rational arithmetic;
3. **input splitting** (:mod:`gpuopt.bab`), only for networks with at most
   ``split.max_input_dim`` inputs: branch and bound over sub-boxes with CROWN bounds;
4. **MILP** (big-M in HiGHS with the CROWN bounds, per remaining disjunct, seeded with the
   attack's best point, rescaled exactly; see :mod:`gpuopt.milp.highs`): the disjunct is
   unreachable iff HiGHS's dual bound exceeds ``threshold`` plus the tolerance margin and HiGHS
   logged no numerical warning; an improving solution that passes the exact check gives ``sat``.

``unsat`` is only reported when every open disjunct of every Problem was proven by a sound stage.
The MILP threshold is ``milp_threshold_abs + milp_threshold_rel * scale`` where ``scale`` is the
largest of 1, ``max|b|`` and the objective rows' magnitude over the output bounds: a property that
holds by less than that is reported ``unknown`` rather than guessed.

Proofs run on the outer (outward-rounded) input box and on spec rows whose right-hand sides are
rounded up (:meth:`~gpuopt.specs.OutputSpec.proof_rhs`), strict rows relaxed to non-strict: each
is a superset of the exact unsafe set, so a proof for it is a proof for the exact property.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .attack import AttackConfig, pgd_attack
from .bab import SplitConfig, input_split
from .bounds import alpha_crown_linear_lower, crown, crown_linear_lower, disjunct_lower_bounds, ibp
from .bounds.base import rounding_pad, strict_adjust
from .check import check_counterexample
from .errors import InvalidInputError
from .milp.encode import complete_assignment, encode_bigm
from .milp.highs import MilpStatus, SolverConfig, solve_milp
from .network import Network
from .problem import Problem
from .regions import Box, LinfBall
from .specs import OutputSpec
from .verdict import Status, Verdict

__all__ = ["VerifyConfig", "verify", "verify_problems", "verify_instance"]

log = logging.getLogger("gpuopt")


@dataclass(frozen=True)
class VerifyConfig:
    """Pipeline settings. ``device``: where the attack runs (``None``: CUDA if available, else
    CPU). ``use_crown``/``use_attack``/``use_input_split``/``use_milp`` switch stages off (for
    ablations and tests); ``alpha_steps`` is the alpha-CROWN budget on the spec rows (0: off);
    ``split`` configures input splitting."""

    attack: AttackConfig = field(default_factory=AttackConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    device: str | None = None
    split: SplitConfig = field(default_factory=SplitConfig)
    use_crown: bool = True
    alpha_steps: int = 20
    use_attack: bool = True
    use_input_split: bool = True
    use_milp: bool = True
    milp_threshold_abs: float = 1e-6
    milp_threshold_rel: float = 1e-5

    def __post_init__(self):
        if int(self.alpha_steps) < 0:
            raise InvalidInputError(f"`alpha_steps` must be >= 0, got {self.alpha_steps}")
        if self.milp_threshold_abs <= 0 or self.milp_threshold_rel < 0:
            raise InvalidInputError("`milp_threshold_abs` must be > 0 and `milp_threshold_rel` >= 0")


def _attack_device(config: VerifyConfig) -> torch.device:
    if config.device is not None:
        return torch.device(config.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _check_point(problem: Problem, x) -> tuple[bool, np.ndarray, np.ndarray, float]:
    """Sound re-check (:func:`gpuopt.check.check_counterexample`): clamp ``x`` into the exact
    input set; ``ok`` only when the exact output is provably in the unsafe region."""
    c = check_counterexample(problem, x)
    return c.ok, c.x, c.y, c.margin


def _proof_problem(problem: Problem, y_abs_max: np.ndarray) -> Problem:
    """``problem`` with right-hand sides that make float proofs sound for inexact coefficients."""
    spec = problem.spec
    if spec.coefficients_exact:
        return problem
    rhs = spec.proof_rhs(y_abs_max)
    proof = OutputSpec([(A, b) for (A, _), b in zip(spec.disjuncts, rhs)], spec.n_outputs)
    return Problem(problem.network, problem.region, proof, inner=problem.inner)


def _stacked_strict(problems: Sequence[Problem], shape) -> torch.Tensor:
    """``(P, K, M)`` mask of strict rows (padding rows are not strict)."""
    S = torch.zeros(shape, dtype=torch.bool)
    for i, p in enumerate(problems):
        for k, st in enumerate(p.spec.strict):
            S[i, k, : st.size] = torch.from_numpy(st.copy())
    return S


def _stacked_spec(problems: Sequence[Problem]) -> tuple[torch.Tensor, torch.Tensor]:
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


def verify_problems(problems: Sequence[Problem], *, timeout: float | None = None,
                    config: VerifyConfig = VerifyConfig(), start_time: float | None = None) -> Verdict:
    """Decide the disjunction of ``problems`` (all on one network); see the module docstring.

    ``timeout`` is in seconds from ``start_time`` (default: now); ``None`` means no limit.
    """
    t0 = time.monotonic() if start_time is None else start_time
    if timeout is not None and (not math.isfinite(float(timeout)) or float(timeout) < 0):
        raise InvalidInputError(f"`timeout` must be a finite number >= 0, got {timeout!r}")
    deadline = None if timeout is None else t0 + float(timeout)
    stages: dict[str, float] = {}

    def left() -> float:
        return math.inf if deadline is None else deadline - time.monotonic()

    def verdict(status: Status, **kw) -> Verdict:
        return Verdict(status=status, seconds=time.monotonic() - t0, stage_seconds=stages, **kw)

    problems = list(problems)
    if not problems:
        return verdict(Status.UNSAT, margin_lower=math.inf, decided_by="spec",
                       message="the unsafe region is empty")
    net = problems[0].network
    for p in problems:
        if p.network is not net:
            raise InvalidInputError("all problems must share one network")

    # ---- stage 1: bounds (IBP, then CROWN on what IBP leaves open)
    ts = time.monotonic()
    lower = torch.as_tensor(np.stack([p.region.lower for p in problems]))
    upper = torch.as_tensor(np.stack([p.region.upper for p in problems]))
    bounds = ibp(net, lower, upper)
    # proofs run on specs whose float rows are sound for the exact rows (see OutputSpec.proof_rhs);
    # counterexamples are always checked against the original problems
    y_abs = torch.maximum(bounds.output[0].abs(), bounds.output[1].abs()).numpy()
    proof_problems = [_proof_problem(p, y_abs[i]) for i, p in enumerate(problems)]
    A_all, b_all = _stacked_spec(proof_problems)
    S_all = _stacked_strict(problems, b_all.shape)
    disj_lb = disjunct_lower_bounds(bounds.output[0], bounds.output[1], A_all, b_all, S_all)
    decided_by = "ibp"
    if not bool((disj_lb > 0).all()) and config.use_crown and left() > 0:
        bounds = crown(net, lower, upper, deadline=deadline)
        K, M = A_all.shape[1:3]
        rows, _ = crown_linear_lower(net, lower, upper, A_all.reshape(len(problems), K * M, -1), bounds)
        b_flat = b_all.reshape(len(problems), K * M)
        finite_b = torch.where(torch.isfinite(b_flat), b_flat, torch.zeros_like(b_flat))
        rows = rows - b_flat - rounding_pad(finite_b.abs(), 1)
        disj_lb = torch.maximum(disj_lb, strict_adjust(rows.view(len(problems), K, M), S_all).amax(-1))
        disj_lb = torch.maximum(disj_lb, disjunct_lower_bounds(bounds.output[0], bounds.output[1], A_all, b_all,
                                                               S_all))
        decided_by = "crown"
        if not bool((disj_lb > 0).all()) and config.alpha_steps > 0 and left() > 0:
            rows = alpha_crown_linear_lower(net, lower, upper, A_all.reshape(len(problems), K * M, -1), bounds,
                                            steps=config.alpha_steps, deadline=deadline)
            rows = rows - b_flat - rounding_pad(finite_b.abs(), 1)
            alpha_lb = strict_adjust(rows.view(len(problems), K, M), S_all).amax(-1)
            if bool((torch.maximum(disj_lb, alpha_lb) > 0).all()):
                decided_by = "alpha-crown"
            disj_lb = torch.maximum(disj_lb, alpha_lb)
    disj_lb = disj_lb.numpy()
    open_disjuncts = {(i, k) for i, p in enumerate(problems) for k in range(p.spec.n_disjuncts)
                      if not disj_lb[i, k] > 0}
    margin_lower = float(min(disj_lb[i, k] for i, p in enumerate(problems) for k in range(p.spec.n_disjuncts)))
    stages["bounds"] = time.monotonic() - ts
    if not open_disjuncts:
        return verdict(Status.UNSAT, margin_lower=margin_lower, decided_by=decided_by,
                       message=f"{decided_by.upper()} bounds prove every disjunct unreachable")
    if left() <= 0:
        return verdict(Status.TIMEOUT, margin_lower=margin_lower)

    # ---- stage 2: attack
    margin_upper = math.inf
    best_x: dict[int, np.ndarray] = {}
    open_problems = sorted({i for i, _ in open_disjuncts})
    if config.use_attack:
        ts = time.monotonic()
        dev = _attack_device(config)
        cand = pgd_attack(net, lower[open_problems], upper[open_problems], A_all[open_problems],
                          b_all[open_problems], config=config.attack, device=dev,
                          deadline=None if deadline is None else deadline)
        xs = cand.x.detach().to("cpu", torch.float64).numpy()
        stages["attack"] = time.monotonic() - ts
        for j, i in enumerate(open_problems):
            ok, x64, y64, m = _check_point(problems[i], xs[j])
            best_x[i] = x64
            margin_upper = min(margin_upper, m)
            if ok:
                return verdict(Status.SAT, counterexample=x64, output=y64, margin_lower=margin_lower,
                               margin_upper=m, decided_by="attack",
                               message=f"PGD counterexample, float64 margin {m:.6g}")
    if left() <= 0:
        return verdict(Status.TIMEOUT, margin_lower=margin_lower, margin_upper=margin_upper)

    # ---- stage 3: input splitting, for networks with few inputs
    if config.use_input_split and net.input_size <= config.split.max_input_dim:
        ts = time.monotonic()
        split_boxes = 0
        split_lb: list[float] = []
        undecided = False
        for i in open_problems:
            ks = [k for (j, k) in open_disjuncts if j == i]
            res = input_split(proof_problems[i], deadline=deadline, config=config.split, open_disjuncts=ks)
            split_boxes += res.boxes
            split_lb.append(res.margin_lower)
            if res.status == "sat":
                ok, x64, y64, m = _check_point(problems[i], res.counterexample)
                if ok:
                    stages["input_split"] = time.monotonic() - ts
                    return verdict(Status.SAT, counterexample=x64, output=y64, margin_lower=margin_lower,
                                   margin_upper=m, decided_by="input-split",
                                   message=f"input-splitting counterexample after {split_boxes} boxes, "
                                           f"float64 margin {m:.6g}")
                undecided = True
            elif res.status == "timeout":
                stages["input_split"] = time.monotonic() - ts
                return verdict(Status.TIMEOUT, margin_lower=margin_lower, margin_upper=margin_upper,
                               message=f"input splitting timed out after {split_boxes} boxes")
            elif res.status == "unknown":
                undecided = True
        stages["input_split"] = time.monotonic() - ts
        if not undecided:
            closed = [float(disj_lb[i, k]) for i, p in enumerate(problems) for k in range(p.spec.n_disjuncts)
                      if (i, k) not in open_disjuncts]
            return verdict(Status.UNSAT, margin_lower=min(closed + split_lb), margin_upper=margin_upper,
                           decided_by="input-split",
                           message=f"input splitting proved every open disjunct on {split_boxes} boxes")

    if not config.use_milp:
        return verdict(Status.TIMEOUT if left() <= 0 else Status.UNKNOWN, margin_lower=margin_lower,
                       margin_upper=margin_upper)

    # ---- stage 4: exact MILP per open disjunct
    ts = time.monotonic()
    blocks = net.affine_blocks()
    pre = [(l.numpy(), u.numpy()) for l, u in bounds.pre_activation]
    nodes = 0
    milp_status = None
    proven_lb = []
    undecided: list[str] = []
    # weakest bound first: the disjunct most likely to hold a counterexample
    order = sorted(open_disjuncts, key=lambda ik: (disj_lb[ik[0], ik[1]]))
    for i, k in order:
        p = problems[i]
        Ak, bk = proof_problems[i].spec.disjuncts[k]
        ly, uy = bounds.output[0][i].numpy(), bounds.output[1][i].numpy()
        # the objective's magnitude over the output box sets the scale of HiGHS's tolerances
        scale = max(1.0, float(np.abs(bk).max()), float((np.abs(Ak) @ np.maximum(np.abs(ly), np.abs(uy))).max()))
        threshold = config.milp_threshold_abs + config.milp_threshold_rel * scale
        if not all(np.all(np.isfinite(l[i])) and np.all(np.isfinite(u[i])) for l, u in pre) or \
                not (np.all(np.isfinite(ly)) and np.all(np.isfinite(uy))):
            undecided.append(f"MILP skipped on problem {i} disjunct {k}: the bounds overflow float64, "
                             "so no big-M constants exist")
            continue
        model = encode_bigm(blocks, [(l[i], u[i]) for l, u in pre], (ly, uy),
                            p.region.lower, p.region.upper, Ak, bk)
        start = complete_assignment(model, blocks, best_x[i]) if i in best_x else None
        found = {}

        def accept(v, p=p, model=model):
            ok, x64, y64, m = _check_point(p, v[model.x_index])
            if ok:
                found.update(x=x64, y=y64, m=m)
            return ok

        budget = left()
        if budget <= 0:
            stages["milp"] = time.monotonic() - ts
            return verdict(Status.TIMEOUT, margin_lower=margin_lower, margin_upper=margin_upper,
                           milp_nodes=nodes, milp_status=milp_status)
        res = solve_milp(model, time_limit=min(budget, 1e7), threshold=threshold, start=start,
                         accept_solution=accept, config=config.solver, deadline=deadline)
        nodes += res.nodes
        milp_status = res.raw_status
        log.debug("MILP problem %d disjunct %d: %s dual %.6g obj %.6g", i, k, res.status.value,
                  res.dual_bound, res.objective)
        if found:
            stages["milp"] = time.monotonic() - ts
            return verdict(Status.SAT, counterexample=found["x"], output=found["y"],
                           margin_lower=margin_lower, margin_upper=found["m"], decided_by="milp",
                           milp_nodes=nodes, milp_status=milp_status,
                           message=f"MILP counterexample, float64 margin {found['m']:.6g}")
        if res.solution is not None:
            ok, x64, y64, m = _check_point(p, res.solution[model.x_index])
            margin_upper = min(margin_upper, m)
            if ok:
                stages["milp"] = time.monotonic() - ts
                return verdict(Status.SAT, counterexample=x64, output=y64, margin_lower=margin_lower,
                               margin_upper=m, decided_by="milp", milp_nodes=nodes,
                               milp_status=milp_status, message=f"MILP counterexample, float64 margin {m:.6g}")
        if res.proves_above(threshold):
            proven_lb.append(res.dual_bound - res.proof_margin)
            continue
        note = (f"MILP on problem {i} disjunct {k} ended {res.status.value} ({res.raw_status}) with dual "
                f"bound {res.dual_bound:.6g} (threshold {threshold:.3g} + tolerance margin {res.proof_margin:.3g})")
        if res.warnings:
            note += f"; not a proof: HiGHS warned: {res.warnings[0]}"
        if res.status is MilpStatus.TIME_LIMIT or left() <= 0:
            stages["milp"] = time.monotonic() - ts
            return verdict(Status.TIMEOUT, margin_lower=margin_lower, margin_upper=margin_upper,
                           milp_nodes=nodes, milp_status=milp_status, message=note)
        undecided.append(note)  # another disjunct may still hold a counterexample: go on
    stages["milp"] = time.monotonic() - ts
    if undecided:
        return verdict(Status.UNKNOWN, margin_lower=margin_lower, margin_upper=margin_upper, milp_nodes=nodes,
                       milp_status=milp_status, message="; ".join(undecided))
    closed = [float(disj_lb[i, k]) for i, p in enumerate(problems) for k in range(p.spec.n_disjuncts)
              if (i, k) not in open_disjuncts]
    return verdict(Status.UNSAT, margin_lower=min(closed + proven_lb), margin_upper=margin_upper,
                   decided_by="milp", milp_nodes=nodes, milp_status=milp_status,
                   message="every open disjunct proven unreachable by MILP")


def verify(network: Network, region: Box | LinfBall, spec: OutputSpec, *, timeout: float | None = None,
           config: VerifyConfig = VerifyConfig()) -> Verdict:
    """Decide whether some ``x`` in ``region`` has ``network(x)`` in the unsafe region ``spec``.

    Returns a :class:`~gpuopt.verdict.Verdict`: ``sat`` with a float64-checked counterexample,
    ``unsat`` with a sound proof, or ``unknown``/``timeout``.
    """
    return verify_problems([Problem(network, region, spec)], timeout=timeout, config=config)


def load_instance(onnx_path, vnnlib_path) -> list[Problem]:
    """Read an ONNX network and a VNNLIB property into a list of Problems."""
    from .io.onnx import from_onnx
    from .io.vnnlib import load_vnnlib

    for what, path in (("network", onnx_path), ("property", vnnlib_path)):
        if not Path(path).is_file():
            raise InvalidInputError(f"{what} file not found: {path}")
    net = from_onnx(onnx_path)
    props = load_vnnlib(vnnlib_path, n_inputs=net.input_size, n_outputs=net.output_size)
    return [Problem(net, p.box, p.spec, inner=p.inner) for p in props]


def verify_instance(onnx_path, vnnlib_path, *, timeout: float | None = None,
                    config: VerifyConfig = VerifyConfig(), start_time: float | None = None) -> Verdict:
    """VNN-COMP style: decide the instance ``(onnx_path, vnnlib_path)``; loading counts toward
    the timeout, which runs from ``start_time`` (a ``time.monotonic()`` value; default now)."""
    t0 = time.monotonic() if start_time is None else start_time
    if timeout is not None and (not math.isfinite(float(timeout)) or float(timeout) < 0):
        raise InvalidInputError(f"`timeout` must be a finite number >= 0, got {timeout!r}")
    problems = load_instance(onnx_path, vnnlib_path)
    return verify_problems(problems, timeout=timeout, config=config, start_time=t0)
