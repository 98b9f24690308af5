"""MILP formulations of ReLU networks side by side: big-M, split, partition (P-split) and extended.

Two suites, each case solved once per formulation in one process (HiGHS, one thread), one JSON
line per solve appended and flushed as it finishes (``--resume`` skips the solves already in the
file), and a table at the end (``--table-only`` prints it from an existing file):

``psplit``
    the instances of the partition-based formulation paper (Tsay, Kronqvist, Thebelt, Misener,
    NeurIPS 2021; ``../shared/benchmarks/psplit/mnist2x50instances.npz``, a 784-50-50-10 MNIST
    net): maximise ``logit[target] - logit[true]`` over the L1 ball of radius ``eps`` around the
    image intersected with ``[0, 1]``. gpuopt minimises ``y_true - y_target`` over the region, so
    the reported optimum is ``max = -min``. Solved to optimality (``threshold = inf``) within
    ``--time-limit``: a record holds the time to optimality, or the gap (incumbent - dual bound)
    at the budget. Pre-activation bounds (``--psplit-bounds``): interval arithmetic over the box
    hull of the ball, ``[max(x0 - eps, 0), min(x0 + eps, 1)]`` as in the paper (``ibp``), or
    CROWN over that box (``crown``).
``vnncomp``
    VNN-COMP 2022 mnist_fc (256x2) and acasxu (props 1-4, nets 1_1..1_9) instances that reach the
    MILP: IBP, then CROWN / alpha-CROWN through gpuopt's own stages, and only the instances where
    some disjunct stays open are kept (``--limit`` caps the kept instances per suite); every open
    disjunct is one case. Each formulation runs to the decision of the sign (gpuopt: threshold
    ``--vnn-threshold`` on the dual bound, or an exactly checked counterexample), plus OMLT's
    big-M (``omlt-bigm``: OMLT's ``ReluBigMFormulation`` built from the same weights, with the same
    pre-activation bounds written into its big-M constants, solved by the same HiGHS through
    Pyomo's appsi interface, with ``objective_bound`` as cutoff and ``objective_target = 0``, as
    it has no callbacks), and, for the formulations in ``--seeded``, a second gpuopt run with a
    MIP start from the attack's best point, and for those in ``--seeded-walk`` a third, with a MIP
    start from Relax-and-Walk's best point (``--walk-seconds`` per disjunct from the attack's point,
    as the pipeline's walk stage runs it; its seconds count in that variant's time to decision).

    python benchmarks/formulations.py --suite psplit --images 1 --eps 1 --time-limit 10
    python benchmarks/formulations.py --suite vnncomp --limit 2 --formulations bigm,extended,omlt-bigm
    python benchmarks/formulations.py --suite vnncomp --formulations bigm,bigm+implication,bigm+ideal,bigm+all
    python benchmarks/formulations.py --table-only --results benchmarks/results/formulations.jsonl

A formulation may carry cut families after a ``+`` (:func:`gpuopt.milp.cuts.cut_kinds`:
``implication``, ``ideal``, ``all``); every record also holds the LP relaxation of the model it
solved (``root_lp``, the root bound before HiGHS's own cuts), which the summaries report.

Every solve also checks its incumbent: the input point it returns is run through the network in
float64 (``x_margin``), and on psplit the optima of the formulations that finished are compared
with big-M's (the table marks any disagreement beyond tolerance, and any dual bound above another
formulation's incumbent).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpuopt.bounds.milp_refine import PROVERS  # noqa: E402  (after the path set-up)

BENCH = REPO.parent / "shared" / "benchmarks"
PSPLIT_FILE = BENCH / "psplit" / "mnist2x50instances.npz"
DEFAULT_RESULTS = REPO / "benchmarks" / "results" / "formulations.jsonl"

ALL_FORMULATIONS = ["bigm", "partition:2", "partition:4:equal_size", "partition:4:equal_range", "extended", "split"]
OMLT = "omlt-bigm"

#: relative tolerance when comparing two formulations' optima (plus 1e-6 absolute)
AGREE_REL = 1e-5


# ------------------------------------------------------------------------------------ helpers
def forward(blocks, x: np.ndarray) -> np.ndarray:
    """The network's output at ``x`` in float64 through its affine blocks."""
    from gpuopt.milp.walk import forward_pattern

    return forward_pattern(blocks, x)[0]


def spec_value(A: np.ndarray, b: np.ndarray, y: np.ndarray) -> float:
    return float(np.max(np.atleast_2d(A) @ y - np.asarray(b).reshape(-1)))


def box_bounds(net, lo: np.ndarray, hi: np.ndarray, method: str):
    """Pre-activation bounds (one numpy pair per ReLU layer) and output bounds over the box, by
    ``ibp``, ``crown`` (CROWN intersected with IBP) or ``alpha`` (CROWN, then alpha-CROWN on the
    intermediate layers)."""
    import torch

    from gpuopt.bounds import alpha_crown_bounds, crown, ibp

    lo_t = torch.tensor(np.asarray(lo, dtype=np.float64)).reshape(1, -1)
    hi_t = torch.tensor(np.asarray(hi, dtype=np.float64)).reshape(1, -1)
    if method == "ibp":
        bounds = ibp(net, lo_t, hi_t)
    else:
        bounds = crown(net, lo_t, hi_t)
        if method == "alpha":
            bounds = alpha_crown_bounds(net, lo_t, hi_t, bounds)
    pre = [(l[0].numpy().copy(), u[0].numpy().copy()) for l, u in bounds.pre_activation]
    out = (bounds.output[0][0].numpy().copy(), bounds.output[1][0].numpy().copy())
    return pre, out


def l1_bounds(blocks, x0: np.ndarray, eps: float, lo: np.ndarray, hi: np.ndarray):
    """Bounds over the L1 ball ``||x - x0||_1 <= eps`` within ``[lo, hi]``: gpuopt's own
    (:func:`gpuopt.bounds.l1.l1_ball_bounds`: the first layer exactly, the rest by intervals)."""
    from gpuopt.bounds.l1 import l1_ball_bounds

    return l1_ball_bounds(blocks, x0, eps, lo, hi)


def n_unstable(pre) -> int:
    return int(sum(np.sum((l < 0) & (u > 0)) for l, u in pre))


def finite(v):
    """A float for JSON (``None`` for inf/nan)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


class Results:
    """The JSONL file: one record per solve, appended and flushed at once; ``key`` identifies a solve."""

    def __init__(self, path: Path, resume: bool):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.records: list[dict] = []
        if resume and path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    try:
                        self.records.append(json.loads(line))
                    except json.JSONDecodeError:  # a line cut by a crash: solved again
                        pass
        elif path.exists():
            path.unlink()
        self.done = {r["key"] for r in self.records if "key" in r}
        self._fh = open(path, "a")

    def add(self, rec: dict) -> None:
        self._fh.write(json.dumps(rec) + "\n")
        self._fh.flush()
        self.records.append(rec)
        self.done.add(rec["key"])


def load_records(path: Path) -> list[dict]:
    recs = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return recs


# ------------------------------------------------------------------------------------ gpuopt solves
#: the suffixes a variant may end with (:func:`gpuopt_solve`)
VARIANT_FLAGS = ("cond", "sub", "nosub", "tail")


def variant_flags(form: str) -> tuple[str, set]:
    """``bigm+ideal:cond:nosub`` -> ``("bigm+ideal", {"cond", "nosub"})``."""
    flags = set()
    while form.rpartition(":")[2] in VARIANT_FLAGS:
        form, _, flag = form.rpartition(":")
        flags.add(flag)
    return form, flags


def gpuopt_solve(blocks, pre, out, lo, hi, A, b, formulation: str, *, time_limit: float, threshold: float,
                 constraints=None, start_x=None, accept=None, threads: int = 1, condition_share: float = 0.25) -> dict:
    """Encode with ``formulation`` (``NAME[+CUTS][:cond][:sub|:nosub][:tail]``: a formulation, optionally the
    cut families of :func:`gpuopt.milp.cuts.cut_kinds` added to it, e.g. ``bigm+implication``;
    ``:sub``/``:nosub`` turn HiGHS's sub-MIP heuristics on/off, where the default leaves them off
    for these sign decisions (:attr:`gpuopt.milp.highs.SolverConfig.sub_mips`); ``:tail`` tries the
    tail MILPs after narrow layers first, as the pipeline's MILP task does
    (:data:`gpuopt.engine.tasks.MILP_TAIL_SHARE`; ``tail``: the layer whose box proved it); optionally
    conditioned as the pipeline's MILP task does it: the MILP alone for its first
    :data:`gpuopt.engine.tasks.MILP_FIRST_SHARE` of the time, then, if undecided,
    :func:`gpuopt.bounds.lp.lp_tighten_conditioned` at ``tau = threshold`` in at most
    ``condition_share`` of the time left and the MILP again on its bounds) and solve; the record's
    solver fields, with the LP relaxation's value of the model solved (``root_lp``). ``seconds``
    counts the whole solve, conditioning included; the time limit also covers the first model's
    encoding and cuts (``build_s``). The runs are
    :func:`gpuopt.milp.conditioned.solve_conditioned`'s. A conditioned record's ``dual_bound`` holds
    where the margin is at most ``tau`` (every other point clears ``tau``): it decides the sign,
    but the disjunct's proven bound is ``min(dual_bound - proof_margin, tau)``."""
    from gpuopt.engine.tasks import MILP_FIRST_SECONDS, MILP_FIRST_SHARE, MILP_TAIL_SHARE
    from gpuopt.milp.conditioned import solve_conditioned
    from gpuopt.milp.highs import MilpStatus, SolverConfig, solve_milp

    formulation, flags = variant_flags(formulation)
    conditioned = "cond" in flags
    formulation, _, cuts = formulation.partition("+")
    config = SolverConfig(threads=threads, sub_mips=True if "sub" in flags else False if "nosub" in flags else None)
    accepted = {}

    def accept_x(x):
        ok = accept(x)
        if ok:
            accepted["x"] = np.array(x, dtype=np.float64)
        return ok

    # the time limit counts from here, the first model's encoding included (``build_s``, which
    # ``seconds`` leaves out)
    t_solve = time.monotonic()
    run = solve_conditioned(blocks, pre, out, lo, hi, A, b, threshold=threshold, tau=threshold,
                            deadline=t_solve + time_limit, condition_share=condition_share if conditioned else 0.0,
                            formulation=formulation, cuts=cuts, start_x=start_x,
                            accept=None if accept is None else accept_x, constraints=constraints, config=config,
                            first_share=MILP_FIRST_SHARE, first_seconds=MILP_FIRST_SECONDS,
                            tail_share=MILP_TAIL_SHARE if "tail" in flags else 0.0)
    build_s = run.build_seconds
    res, model, first_model, start, cut_info = run.result, run.model, run.first_model, run.start, run.cuts or {}
    cond_rec, cond = {}, run.conditioning
    if cond is not None:
        cond_rec = {"tau": threshold, "condition_s": cond.seconds, "condition_lps": cond.lps,
                    "condition_tightened": cond.tightened, "condition_stabilised": cond.stabilised,
                    "condition_empty": cond.empty, "first_nodes": run.first.nodes if run.first else 0,
                    "first_dual_bound": finite(run.first.dual_bound) if run.first else None}
    seconds = time.monotonic() - t_solve - build_s
    root = solve_milp(model.relaxed(), time_limit=time_limit, threshold=np.inf, config=config)
    rec = {"status": res.status.value, "raw_status": res.raw_status, "objective": finite(res.objective),
           "dual_bound": finite(res.dual_bound), "nodes": res.nodes, "seconds": seconds, "build_s": build_s,
           "n_vars": model.n_vars, "n_rows": int(model.A.shape[0]), "binaries": model.n_binaries,
           "nnz": int(model.A.nnz), "proof_margin": res.proof_margin, "warnings": list(res.warnings)[:3],
           "root_lp": finite(root.objective) if root.status is MilpStatus.OPTIMAL else None,
           "root_lp_s": root.seconds, "cuts": {k: v for k, v in cut_info.items() if k != "lp_bounds"}, **cond_rec,
           "tail": run.tail, "tails": [list(t) for t in run.tails]}
    if cond_rec.get("condition_empty"):  # no point with margin <= threshold: proven by a Farkas certificate
        rec.update(status="dual_bound_reached", raw_status="conditioned LP infeasible", dual_bound=threshold,
                   proof_margin=0.0, objective=None, empty_proof=True)
    gap = res.objective - res.dual_bound
    rec["gap"] = finite(gap) if np.isfinite(res.objective) and np.isfinite(res.dual_bound) else None
    x = accepted.get("x")
    if x is None and res.solution is not None and not cond_rec.get("condition_empty") and run.tail is None:
        x = res.solution[model.x_index]
    rec["x"] = x
    if start is not None:
        rec["start_objective"] = float(start @ first_model.c + first_model.offset)
    return rec


def check_point(rec: dict, blocks, A, b, lo, hi, l1=None) -> None:
    """Run the incumbent's input through the network in float64: ``x_margin`` (the spec's value
    there, clipped into the box), ``x_box_excess`` and, with an L1 ball ``(c, eps)``,
    ``x_l1_excess`` (how far the raw point leaves the region)."""
    x = rec.pop("x", None)
    if x is None:
        return
    x = np.asarray(x, dtype=np.float64)
    rec["x_box_excess"] = float(max(np.max(lo - x, initial=0.0), np.max(x - hi, initial=0.0), 0.0))
    if l1 is not None:
        c, eps = l1
        rec["x_l1_excess"] = float(max(np.abs(x - c).sum() - eps, 0.0))
    rec["x_margin"] = spec_value(A, b, forward(blocks, np.clip(x, lo, hi)))


# ------------------------------------------------------------------------------------ OMLT
def omlt_model(blocks, pre, out, lo, hi, A, b):
    """OMLT's big-M model of the network (built from the weights: its ONNX reader rejects these
    nets), with gpuopt's pre-activation and output bounds written into the big-M constants and
    variable bounds (OMLT computes its own interval bounds otherwise), and the objective
    ``max_i (A y - b)_i`` (an epigraph variable for several rows). Returns ``(model, inputs)``."""
    import logging

    import pyomo.environ as pyo
    from omlt import OmltBlock

    logging.getLogger("pyomo.core").setLevel(logging.ERROR)  # OMLT initialises variables at 0, outside some bounds
    from omlt.neuralnet import NetworkDefinition, ReluBigMFormulation
    from omlt.neuralnet.layer import DenseLayer, InputLayer

    n0 = blocks[0].matrix.shape[1]
    net = NetworkDefinition(scaled_input_bounds={i: (float(lo[i]), float(hi[i])) for i in range(n0)})
    prev = InputLayer([n0])
    net.add_layer(prev)
    layers = []
    for k, blk in enumerate(blocks):
        if blk.passthrough is not None and np.any(blk.passthrough):
            raise ValueError("OMLT comparison: graph networks (passthrough coordinates) are not supported")
        W = blk.matrix.toarray()
        layer = DenseLayer(prev.output_size, [W.shape[0]], activation="relu" if k < len(blocks) - 1 else "linear",
                           weights=W.T, biases=np.asarray(blk.bias, dtype=np.float64))
        net.add_layer(layer)
        net.add_edge(prev, layer)
        layers.append(layer)
        prev = layer
    m = pyo.ConcreteModel()
    m.nn = OmltBlock()
    m.nn.build_formulation(ReluBigMFormulation(net))
    # the same bounds as gpuopt's models
    for k, layer in enumerate(layers):
        blk = m.nn.layer[id(layer)]
        lk, uk = pre[k] if k < len(pre) else out
        for j, idx in enumerate(layer.output_indexes):
            l, u = float(lk[j]), float(uk[j])
            blk.zhat[idx].setlb(l)
            blk.zhat[idx].setub(u)
            if k < len(pre):
                blk._big_m_lb_relu[idx] = l
                blk._big_m_ub_relu[idx] = u
                blk.z[idx].setlb(max(0.0, l))
                blk.z[idx].setub(max(0.0, u))
            else:
                blk.z[idx].setlb(l)
                blk.z[idx].setub(u)
    out_idx = list(layers[-1].output_indexes)
    ys = [m.nn.outputs[idx] for idx in out_idx]
    A = np.atleast_2d(A)
    b = np.asarray(b, dtype=np.float64).reshape(-1)

    def row(i):
        return sum(float(A[i, j]) * ys[j] for j in np.flatnonzero(A[i])) - float(b[i])

    if A.shape[0] == 1:
        m.obj = pyo.Objective(expr=row(0), sense=pyo.minimize)
    else:
        ly, uy = out
        Ap, An = np.maximum(A, 0), np.minimum(A, 0)
        t_lo = float(np.max(Ap @ ly + An @ uy - b)) - 1e-6
        t_hi = float(np.max(Ap @ uy + An @ ly - b)) + 1e-6
        m.t = pyo.Var(bounds=(t_lo, t_hi))
        m.rows = pyo.Constraint(range(A.shape[0]), rule=lambda mm, i: row(i) <= mm.t)
        m.obj = pyo.Objective(expr=m.t, sense=pyo.minimize)
    inputs = [m.nn.inputs[idx] for idx in (range(n0) if not isinstance(next(iter(m.nn.inputs)), tuple)
                                           else sorted(m.nn.inputs))]
    return m, inputs


def omlt_solve(blocks, pre, out, lo, hi, A, b, *, time_limit: float, cutoff: float | None, target: float | None,
               threads: int = 1) -> dict:
    """Build and solve the OMLT big-M model with HiGHS (appsi), HiGHS's settings as gpuopt's."""
    import pyomo.environ as pyo
    from pyomo.contrib.appsi.solvers import Highs

    t0 = time.monotonic()
    m, inputs = omlt_model(blocks, pre, out, lo, hi, A, b)
    build_s = time.monotonic() - t0
    opt = Highs()
    opt.config.time_limit = float(time_limit)
    opt.config.mip_gap = 0.0
    opt.config.load_solution = False
    options = {"threads": int(threads), "random_seed": 0, "mip_abs_gap": 0.0, "mip_rel_gap": 0.0,
               "mip_feasibility_tolerance": 1e-7, "primal_feasibility_tolerance": 1e-8,
               "dual_feasibility_tolerance": 1e-9}
    if cutoff is not None:
        options["objective_bound"] = float(cutoff)
    if target is not None:
        options["objective_target"] = float(target)
    opt.highs_options = options
    t1 = time.monotonic()
    res = opt.solve(m)
    seconds = time.monotonic() - t1
    h = opt._solver_model
    info = h.getInfo()
    raw = h.modelStatusToString(h.getModelStatus())
    obj = res.best_feasible_objective
    dual = res.best_objective_bound
    rec = {"status": str(res.termination_condition).split(".")[-1], "raw_status": raw,
           "objective": finite(obj), "dual_bound": finite(dual), "nodes": int(info.mip_node_count),
           "seconds": seconds, "build_s": build_s, "n_vars": int(h.getNumCol()), "n_rows": int(h.getNumRow()),
           "binaries": int(sum(1 for v in m.component_data_objects(ctype=pyo.Var) if v.is_binary())),
           "nnz": int(h.getNumNz())}
    rec["gap"] = finite(obj - dual) if obj is not None and dual is not None and np.isfinite(obj) and np.isfinite(dual) \
        else None
    if obj is not None and np.isfinite(obj):
        try:
            res.solution_loader.load_vars()
            rec["x"] = np.array([v.value for v in inputs], dtype=np.float64)
        except Exception as exc:  # noqa: BLE001 - a benchmark records what went wrong
            rec["note"] = f"no solution values: {exc}"
    return rec


# ------------------------------------------------------------------------------------ psplit suite
def psplit_network():
    from gpuopt.layers import Dense, ReLU
    from gpuopt.network import Network

    d = np.load(PSPLIT_FILE)
    f = lambda k: np.asarray(d[k], dtype=np.float64)  # noqa: E731  (float32 -> float64 is exact)
    net = Network([Dense(f("w1"), f("b1")), ReLU(), Dense(f("w2"), f("b2")), ReLU(), Dense(f("w3"), f("b3"))], (784,))
    return net, np.asarray(d["images"], dtype=np.float64), np.asarray(d["labels"]).astype(int)


def run_psplit(args, results: Results, formulations: list[str]) -> None:
    from gpuopt.milp.encode import InputConstraints

    if not PSPLIT_FILE.exists():
        print(f"{PSPLIT_FILE} not found: psplit suite skipped", file=sys.stderr)
        return
    net, images, labels = psplit_network()
    blocks = net.affine_blocks()
    first = args.first_image
    for img in range(first, first + args.images):
        x0 = images[img]
        true, target = int(labels[img][0]), int(labels[img][1])
        A = np.zeros((1, 10))
        A[0, true], A[0, target] = 1.0, -1.0
        b = np.zeros(1)
        for eps in args.eps:
            case = f"img{img}-eps{eps:g}"
            setup = f"{args.psplit_bounds}/{args.psplit_start}"
            todo = [f for f in formulations if f"psplit|{case}|{f}|{setup}" not in results.done]
            if not todo:
                continue
            lo, hi = np.maximum(x0 - eps, 0.0), np.minimum(x0 + eps, 1.0)
            t0 = time.monotonic()
            if args.psplit_bounds == "l1":
                pre, out = l1_bounds(blocks, x0, eps, lo, hi)
            else:
                pre, out = box_bounds(net, lo, hi, args.psplit_bounds)
            bounds_s = time.monotonic() - t0
            cons = InputConstraints(l1_center=x0, l1_eps=float(eps))
            for form in todo:
                base = {"key": f"psplit|{case}|{form}|{setup}", "suite": "psplit", "case": case, "setup": setup,
                        "image": img, "eps": eps, "true": true, "target": target, "formulation": form,
                        "bounds": args.psplit_bounds, "bounds_s": bounds_s, "unstable": n_unstable(pre),
                        "time_limit": args.time_limit, "start": args.psplit_start == "centre"}
                try:
                    if form == OMLT:
                        raise ValueError("omlt-bigm has no L1 ball here (psplit runs gpuopt's formulations only)")
                    rec = gpuopt_solve(blocks, pre, out, lo, hi, A, b, form, time_limit=args.time_limit,
                                       threshold=np.inf, constraints=cons, threads=args.threads,
                                       start_x=x0 if args.psplit_start == "centre" else None)
                    check_point(rec, blocks, A, b, lo, hi, l1=(x0, eps))
                except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                    rec = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
                rec = {**base, **rec}
                if rec.get("objective") is not None:
                    rec["max_adv"] = -rec["objective"]  # the paper's maximum of logit[target] - logit[true]
                results.add(rec)
                print(f"psplit {case:14s} {form:24s} {rec['status']:12s} obj {fmt(rec.get('objective'))} "
                      f"dual {fmt(rec.get('dual_bound'))} {rec.get('seconds', 0):7.2f}s nodes {rec.get('nodes', '-')}",
                      flush=True)


# ------------------------------------------------------------------------------------ vnncomp suite
def prepare_instance(onnx: Path, vnnlib: Path, prep_timeout: float, nets: dict):
    """gpuopt's IBP, CROWN/alpha-CROWN and attack stages on one instance: the ItemState (bounds,
    open disjuncts, best attack points) and the seconds it took."""
    import torch

    from gpuopt.engine.item import ItemState
    from gpuopt.engine.stages import attack_stage, bounds_stage, crown_stage
    from gpuopt.io.onnx import from_onnx
    from gpuopt.io.vnnlib import load_vnnlib
    from gpuopt.problem import Problem
    from gpuopt.verify import VerifyConfig

    torch.set_num_threads(1)
    if str(onnx) not in nets:
        nets[str(onnx)] = from_onnx(str(onnx))
    net = nets[str(onnx)]
    props = load_vnnlib(str(vnnlib), n_inputs=net.input_size, n_outputs=net.output_size)
    problems = [Problem(net, p.box, p.spec, inner=p.inner) for p in props]
    t0 = time.monotonic()
    item = ItemState(problems=problems, config=VerifyConfig(device="cpu"), t0=t0, deadline=t0 + prep_timeout)
    if not problems:
        return item, 0.0, None
    bounds_stage([item])
    crown_by = "ibp"
    if item.verdict is None:
        crown_stage([item])
        crown_by = item.bounds_method
    attack_margin, attack_sat = None, False
    if item.open:
        item.verdict = None  # keep going: the attack only supplies the MIP starts
        attack_stage([item])
        attack_margin = float(item.margin_upper)
        attack_sat = item.verdict is not None and item.verdict.status.value == "sat"
    return item, time.monotonic() - t0, {"bounds_method": crown_by, "attack_margin": finite(attack_margin),
                                         "attack_sat": attack_sat}


def refine_instance(item, seconds: float, method: str) -> dict:
    """gpuopt's refinement stage (:func:`gpuopt.engine.stages.plan_milp_refine`: per-neuron proofs
    by activation splitting or MILP, re-bounding the later layers, ended early once activation
    splitting proves the property on the bounds so far) for ``seconds``, its tighter bounds merged into
    ``item``; what it did, for the prep record."""
    from dataclasses import replace

    from gpuopt.engine.stages import merge_milp_refine, plan_milp_refine

    def unstable() -> int:
        return sum(int(((l < 0) & (u > 0)).sum()) for l, u in item.bounds.pre_activation)

    before, t0 = unstable(), time.monotonic()
    item.config = replace(item.config, milp_refine_share=1.0, refine_method=method)
    ended_early = False
    for spec in plan_milp_refine(item):
        value = spec.fn(*spec.args, seconds, time.time())
        merge_milp_refine(item, spec, value)
        ended_early |= bool(value.get("ended_early"))
    return {"refine_s": time.monotonic() - t0, "refine_method": method, "unstable_before_refine": before,
            "unstable_after_refine": unstable(), "refine_ended_early": ended_early}


def run_vnncomp(args, results: Results, formulations: list[str]) -> None:
    from vnncomp import SUITES, instance_name, instances, reference_labels, reference_side

    from gpuopt.check import check_counterexample
    from gpuopt.problem import Problem
    from gpuopt.specs import OutputSpec

    if not BENCH.is_dir():
        print(f"{BENCH} not found: vnncomp suite skipped", file=sys.stderr)
        return
    labels = reference_labels()
    nets: dict = {}
    prep = {r["instance_key"]: r for r in results.records if r.get("kind") == "prep"}
    variants = [(f, False) for f in formulations] + [(f, True) for f in args.seeded if f != OMLT] + \
        [(f, WALK) for f in args.seeded_walk if f != OMLT]
    for suite in args.vnn_suites:
        kept = sum(1 for r in prep.values() if r["suite"] == suite and r["open"]
                   and (args.keep_attack_sat or not r.get("attack_sat")))  # as counted when they were prepared
        for _, onnx, vnnlib, _timeout in instances([suite]):
            name = instance_name(onnx, vnnlib)
            if args.match and not re.search(args.match, name):
                continue
            tag = f"-refine{args.vnn_refine:g}" if args.vnn_refine > 0 else ""
            ikey = f"{suite}|{name}{tag}"
            p = prep.get(ikey)
            if p is not None and not p["open"]:
                continue
            if p is not None and not args.keep_attack_sat and p.get("attack_sat"):
                continue
            if p is None and args.limit is not None and kept >= args.limit:
                break
            if p is not None and all(f"vnncomp|{name}{tag}-p{i}-d{k}|{f}|{start_tag(s)}" in results.done
                                     for i, k in p["open"] for f, s in variants):
                continue  # every solve of this instance is in the file: no need to prepare (or refine) it again
            item, prep_s, info = prepare_instance(onnx, vnnlib, args.prep_timeout, nets)
            # a resumed instance is refined again: the refinement runs to a deadline, so its bounds
            # may differ from those its prep record describes (the solves in the file keep theirs)
            if args.vnn_refine > 0 and item.open and not (info or {}).get("attack_sat"):
                info = {**(info or {}), **refine_instance(item, args.vnn_refine, args.refine_method)}
            open_pairs = sorted(item.open) if p is None else [tuple(ik) for ik in p["open"]]
            if p is None:
                p = {"key": f"prep|{ikey}", "kind": "prep", "instance_key": ikey, "suite": suite, "instance": name,
                     "instance_label": name + tag,
                     "reference": reference_side(labels.get((SUITES[suite][2], name), "?")), "prep_s": prep_s,
                     "open": [list(map(int, ik)) for ik in open_pairs],
                     "disjuncts": int(sum(pr.spec.n_disjuncts for pr in item.problems)), **(info or {})}
                results.add(p)
                prep[ikey] = p
                refined = "" if "refine_s" not in p else \
                    (f", refined in {p['refine_s']:.1f}s: unstable {p['unstable_before_refine']} -> "
                     f"{p['unstable_after_refine']}")
                print(f"vnncomp {name}: {len(open_pairs)} open disjunct(s) after {p.get('bounds_method')} "
                      f"({prep_s:.1f}s){refined}, attack margin {fmt(p.get('attack_margin'))}, "
                      f"reference {p['reference']}", flush=True)
                if not open_pairs or (p["attack_sat"] and not args.keep_attack_sat):
                    continue
                kept += 1
            blocks = item.network.affine_blocks()
            spent = {v: 0.0 for v in variants}  # per variant: this instance's solve seconds so far
            ended = {}  # per variant: why its remaining disjuncts are not solved (the instance is settled)
            for i, k in open_pairs:
                case = f"{name}{tag}-p{i}-d{k}"
                problem = item.problems[i]
                # counterexamples are checked against disjunct k alone (exactly): a point that only
                # falsifies another disjunct does not decide this one
                A_ex, b_ex, strict = problem.spec.exact_rows(k)
                disj = Problem(problem.network, problem.region, OutputSpec([(A_ex, b_ex, strict)], problem.spec.n_outputs),
                               inner=problem.inner)
                A, b = item.proof_problems[i].spec.disjuncts[k]
                A, b = np.asarray(A, dtype=np.float64), np.asarray(b, dtype=np.float64)
                pre = [(l[i].numpy().copy(), u[i].numpy().copy()) for l, u in item.bounds.pre_activation]
                out = (item.bounds.output[0][i].numpy().copy(), item.bounds.output[1][i].numpy().copy())
                lo, hi = problem.region.lower, problem.region.upper
                start_x = item.best_x.get(i)
                walked = None  # Relax-and-Walk's result on this disjunct, once a variant needs it
                for form, seeded in variants:
                    key = f"vnncomp|{case}|{form}|{start_tag(seeded)}"
                    if key in results.done:
                        continue
                    if seeded and start_x is None:
                        continue
                    walk_s = 0.0
                    if seeded == WALK and (form, seeded) not in ended:  # (a settled instance skips it)
                        if walked is None:
                            walked = walk_start(disj, pre, out, A, b, start_x, args.walk_seconds)
                        walk_s = walked["walk_s"]
                    limit = args.time_limit
                    if args.instance_limit is not None:
                        limit = min(limit, args.instance_limit - spent[(form, seeded)] - walk_s)
                    base = {"key": key, "suite": "vnncomp", "vnn_suite": suite, "instance": name + tag, "case": case,
                            "problem": i, "disjunct": k, "reference": p["reference"], "formulation": form,
                            "start": seeded, "time_limit": limit, "threshold": args.vnn_threshold,
                            "unstable": n_unstable(pre), "bounds": p.get("bounds_method"),
                            "refine_s": p.get("refine_s"), "walk_s": walk_s,
                            **({} if walked is None or seeded != WALK else
                               {k: v for k, v in walked.items() if k != "x"})}
                    why = ended.get((form, seeded)) or ("instance budget spent" if limit <= 0 else None)
                    if why is not None:
                        results.add({**base, "status": "skipped", "decision": "skipped", "why": why, "seconds": 0.0,
                                     "nodes": 0, "build_s": 0.0})
                        continue
                    try:
                        if form == OMLT:
                            rec = omlt_solve(blocks, pre, out, lo, hi, A, b, time_limit=limit,
                                             cutoff=args.vnn_threshold, target=0.0, threads=args.threads)
                        else:
                            rec = gpuopt_solve(blocks, pre, out, lo, hi, A, b, form, time_limit=limit,
                                               threshold=args.vnn_threshold,
                                               start_x=(walked["x"] if seeded == WALK else start_x) if seeded else None,
                                               accept=lambda x, pr=disj: check_counterexample(pr, x).ok,
                                               threads=args.threads, condition_share=args.condition_share)
                        x = rec.get("x")
                        rec["counterexample"] = None if x is None else bool(check_counterexample(disj, x).ok)
                        rec["instance_counterexample"] = None if x is None else bool(check_counterexample(problem, x).ok)
                        check_point(rec, blocks, A, b, lo, hi)
                        rec["decision"] = decision(rec, args.vnn_threshold, omlt=form == OMLT)
                    except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                        rec = {"status": "error", "error": f"{type(exc).__name__}: {exc}", "decision": "error"}
                    rec = {**base, **rec}
                    results.add(rec)
                    spent[(form, seeded)] += rec.get("seconds", 0.0) + rec.get("build_s", 0.0) + walk_s
                    if rec["decision"] == "sat":
                        ended[(form, seeded)] = "the instance is sat"
                    elif rec["decision"] != "unsat" and args.instance_limit is not None:
                        ended[(form, seeded)] = "an earlier disjunct stayed open"
                    print(f"vnncomp {case:48s} {form:24s} {start_tag(seeded):5s} {rec['decision']:8s} "
                          f"{rec.get('seconds', 0):7.2f}s nodes {rec.get('nodes', '-')} obj {fmt(rec.get('objective'))} "
                          f"dual {fmt(rec.get('dual_bound'))}" + (f" (walk {walk_s:.2f}s)" if walk_s else ""), flush=True)


#: the ``start`` of a variant seeded by Relax-and-Walk (False: cold, True: the attack's point)
WALK = "walk"


def start_tag(start) -> str:
    return WALK if start == WALK else ("start" if start else "cold")


def start_label(start) -> str:
    return "+walk" if start == WALK else ("+start" if start else "")


def walk_start(disj, pre, out, A, b, start_x, seconds: float) -> dict:
    """The pipeline's walk task (:func:`gpuopt.engine.tasks.walk_task`, Relax-and-Walk) on the
    disjunct problem ``disj`` (``{y : A y <= b}``, proof rows) from the attack's point ``start_x``
    for ``seconds``: its best point ``x`` (``start_x`` when it found none), that point's checked
    float64 margin, and what it did."""
    from gpuopt.engine.tasks import walk_task
    from gpuopt.milp.highs import SolverConfig
    from gpuopt.milp.walk import WalkConfig

    t0 = time.monotonic()
    res = walk_task(disj.network, (disj.region, disj.spec, disj.inner), A, b, pre, out, [start_x], WalkConfig(),
                    SolverConfig(), 1.0, seconds, time.time())
    return {"x": start_x if res["x"] is None else res["x"], "walk_s": time.monotonic() - t0,
            "walk_kind": res["kind"], "walk_margin": finite(res["margin"]), "walk_lps": res["lps"],
            "walk_regions": res["regions"], "walk_stopped": res["stopped"]}


def decision(rec: dict, threshold: float, omlt: bool = False) -> str:
    """``sat`` (an exactly checked counterexample of the disjunct), ``unsat`` (gpuopt: the dual
    bound clears the threshold and HiGHS's tolerance margin; OMLT: HiGHS ended with nothing below
    the cutoff), ``timeout`` or ``unknown``."""
    if rec.get("counterexample"):
        return "sat"
    if rec.get("empty_proof"):  # a conditioned LP infeasible by a checked Farkas certificate
        return "unsat"
    status, raw = rec["status"], str(rec.get("raw_status", ""))
    dual, obj = rec.get("dual_bound"), rec.get("objective")
    if not omlt:
        if status in ("dual_bound_reached", "optimal") and dual is not None \
                and dual > threshold + (rec.get("proof_margin") or 0.0):
            return "unsat"
        return "timeout" if status == "time_limit" else "unknown"
    # OMLT through appsi: the cutoff (objective_bound) prunes every node above the threshold, so an
    # infeasible end, or an optimal one whose incumbent lies above the cutoff, means min > threshold
    if status == "infeasible" or raw == "Infeasible":
        return "unsat"
    if status == "optimal" and obj is not None and obj > threshold:
        return "unsat"
    if "time" in status.lower() or "time" in raw.lower():
        return "timeout"
    return "unknown"


# ------------------------------------------------------------------------------------ table
def fmt(v, spec: str = ".4g") -> str:
    return "-" if v is None else format(v, spec)


def shifted_geomean(xs, shift: float = 1.0) -> float:
    return math.exp(sum(math.log(x + shift) for x in xs) / len(xs)) - shift if xs else float("nan")


def label(form: str) -> str:
    """A short column name: ``partition:4:equal_range`` -> ``part4-range``,
    ``bigm+implication`` -> ``bigm+impl``."""
    form, flags = variant_flags(form)
    tail = "".join(f":{f}" for f in VARIANT_FLAGS if f in flags)
    form, plus, cuts = form.partition("+")
    cuts = plus + cuts.replace("implication", "impl")
    parts = form.split(":")
    if parts[0] != "partition":
        return form + cuts + tail
    n = parts[1] if len(parts) > 1 else "2"
    kind = parts[2] if len(parts) > 2 else "equal_size"
    return f"part{n}-{kind.replace('equal_', '')}{cuts}{tail}"


def psplit_cell(r: dict) -> str:
    if r["status"] == "error":
        return "error"
    if r["status"] == "optimal":
        return f"{r['seconds']:.1f}s n{r['nodes']}"
    return f"gap {fmt(r.get('gap'), '.3g')} n{r['nodes']}"


def psplit_findings(recs: list[dict]) -> list[str]:
    """Disagreements between formulations on one case: optima that differ from big-M's beyond
    tolerance, a dual bound above another incumbent, incumbents whose input point does not give
    the reported objective."""
    out = []
    by_case: dict = {}
    for r in recs:
        by_case.setdefault((r["case"], r.get("setup")), []).append(r)
    for (case, bnd), rs in sorted(by_case.items()):
        opt = {r["formulation"]: r["objective"] for r in rs if r["status"] == "optimal" and r.get("objective") is not None}
        ref = opt.get("bigm")
        if ref is not None:
            for f, v in opt.items():
                if abs(v - ref) > 1e-6 + AGREE_REL * abs(ref):
                    out.append(f"{case} [{bnd}]: {f} optimum {v:.9g} differs from bigm's {ref:.9g} "
                               f"(diff {v - ref:.3g})")
        inc = [(r["objective"], r["formulation"]) for r in rs if r.get("objective") is not None]
        for r in rs:
            d = r.get("dual_bound")
            for v, f in inc:
                if d is not None and d > v + 1e-6 + AGREE_REL * abs(v):
                    out.append(f"{case} [{bnd}]: {r['formulation']} dual bound {d:.9g} exceeds {f}'s incumbent {v:.9g}")
        for r in rs:
            xm, ob = r.get("x_margin"), r.get("objective")
            if xm is not None and ob is not None and abs(xm - ob) > 1e-5 * (1 + abs(ob)):
                out.append(f"{case} [{bnd}]: {r['formulation']} incumbent objective {ob:.9g} but its input gives "
                           f"{xm:.9g} (box excess {r.get('x_box_excess', 0):.2g}, L1 excess {r.get('x_l1_excess', 0):.2g})")
    return out


def print_psplit(recs: list[dict]) -> None:
    recs = [r for r in recs if r.get("suite") == "psplit"]
    if not recs:
        return
    forms = [f for f in ALL_FORMULATIONS if any(r["formulation"] == f for r in recs)]
    forms += sorted({r["formulation"] for r in recs} - set(forms))
    cases = sorted({(r.get("setup"), r["image"], r["eps"]) for r in recs})
    print("\npsplit: time to optimality (s, nodes) or gap = incumbent - dual bound at the time limit; "
          "max = the optimum of logit[target] - logit[true] (*: no formulation proved it: the best incumbent, a lower "
          "bound on the maximum)")
    width = 18
    head = f"{'bounds/start':12s} {'img':>3s} {'eps':>4s} {'unst':>4s} {'max':>9s} | " + " | ".join(f"{label(f)[:width]:>{width}s}" for f in forms)
    print(head)
    print("-" * len(head))
    for bnd, img, eps in cases:
        rs = {r["formulation"]: r for r in recs if (r.get("setup"), r["image"], r["eps"]) == (bnd, img, eps)}
        proven = [r["objective"] for r in rs.values() if r["status"] == "optimal" and r.get("objective") is not None]
        objs = [r["objective"] for r in rs.values() if r.get("objective") is not None]
        best = rs["bigm"]["objective"] if "bigm" in rs and rs["bigm"]["status"] == "optimal" else \
            (proven[0] if proven else (min(objs) if objs else None))
        mark = " " if proven else "*"
        unst = next(iter(rs.values())).get("unstable", "-")
        cells = [psplit_cell(rs[f]) if f in rs else "" for f in forms]
        print(f"{bnd or '-':12s} {img:3d} {eps:4g} {unst!s:>4s} {fmt(None if best is None else -best, '9.4f'):>9s}{mark}| "
              + " | ".join(f"{c:>{width}s}" for c in cells))
    print("-" * len(head))
    print(f"{'summary':>14s}:  solved / cases, shifted geo. mean time (timeouts at the limit), mean gap of the unsolved, "
          "mean build s, binaries, rows")
    for f in forms:
        rs = [r for r in recs if r["formulation"] == f and r["status"] != "error"]
        if not rs:
            continue
        solved = [r for r in rs if r["status"] == "optimal"]
        times = [r["seconds"] if r["status"] == "optimal" else r.get("time_limit", r["seconds"]) for r in rs]
        gaps = [r["gap"] for r in rs if r["status"] != "optimal" and r.get("gap") is not None]
        print(f"{label(f):>14s}: {len(solved):3d}/{len(rs):<3d} sgm {shifted_geomean(times):7.2f}s   gap "
              f"{fmt(statistics.mean(gaps) if gaps else None, '.3g'):>8s}   build {statistics.mean(r['build_s'] for r in rs):5.2f}s"
              f"   bin {statistics.mean(r['binaries'] for r in rs):6.0f}   rows {statistics.mean(r['n_rows'] for r in rs):7.0f}"
              f"   root LP median {fmt(_median_root(rs), '.4g')}")
    errors = [r for r in recs if r["status"] == "error"]
    for r in errors:
        print(f"   error: {r['case']} {r['formulation']}: {r.get('error')}")
    findings = psplit_findings(recs)
    print("\npsplit consistency: " + ("every finished formulation agrees with big-M" if not findings else
                                      f"{len(findings)} finding(s)"))
    for line in findings:
        print("   !! " + line)


def _median_root(rs: list[dict]):
    """The median LP relaxation value of the models solved (records without one left out)."""
    roots = [r["root_lp"] for r in rs if r.get("root_lp") is not None]
    return statistics.median(roots) if roots else None


def print_vnncomp(recs: list[dict]) -> None:
    prep = [r for r in recs if r.get("kind") == "prep"]
    recs = [r for r in recs if r.get("suite") == "vnncomp"]
    if not prep and not recs:
        return
    print(f"\nvnncomp: {len(prep)} instance(s) prepared, {sum(1 for p in prep if p['open'])} with open disjuncts "
          "after CROWN/alpha-CROWN; time to decision (s, nodes), +start = MIP start from the attack's best point, "
          "+walk = from Relax-and-Walk's (its seconds included)")
    variants = []
    for r in recs:
        v = (r["formulation"], r["start"])
        if v not in variants:
            variants.append(v)
    order = {f: i for i, f in enumerate(ALL_FORMULATIONS + [OMLT])}
    variants.sort(key=lambda v: (order.get(v[0], 99), {False: 0, True: 1, WALK: 2}[v[1]]))
    names = [label(f) + start_label(s) for f, s in variants]
    width = 18
    head = f"{'case':52s} {'inst':5s} | " + " | ".join(f"{n[:width]:>{width}s}" for n in names)
    print(head)
    print("-" * len(head))
    for case in sorted({r["case"] for r in recs}):
        rs = {(r["formulation"], r["start"]): r for r in recs if r["case"] == case}
        ref = next(iter(rs.values()))["reference"]
        cells = []
        for v in variants:
            r = rs.get(v)
            if r is None:
                cells.append("")
            elif r["decision"] in ("error", "skipped"):
                cells.append(r["decision"])
            else:
                cells.append(f"{r['decision'][:5]} {r['seconds'] + r.get('walk_s', 0.0):.1f}s n{r['nodes']}")
        print(f"{case[:52]:52s} {ref:5s} | " + " | ".join(f"{c:>{width}s}" for c in cells))
    print("-" * len(head))
    for (f, s), n in zip(variants, names):
        rs = [r for r in recs if (r["formulation"], r["start"]) == (f, s) and r["decision"] not in ("error", "skipped")]
        if not rs:
            continue
        dec = [r for r in rs if r["decision"] in ("sat", "unsat")]
        times = [(r["seconds"] if r in dec else r.get("time_limit", r["seconds"])) + r.get("walk_s", 0.0) for r in rs]
        print(f"{n:>16s}: decided {len(dec):3d}/{len(rs):<3d} sgm {shifted_geomean(times):7.2f}s   "
              f"build {statistics.mean(r['build_s'] for r in rs):5.2f}s   nodes median "
              f"{statistics.median(r['nodes'] for r in rs):.0f}   root LP median {fmt(_median_root(rs), '.4g')}")
    print_vnncomp_instances(recs, prep, variants, names)
    # decisions that contradict each other or the reference label
    for case in sorted({r["case"] for r in recs}):
        rs = [r for r in recs if r["case"] == case and r["decision"] in ("sat", "unsat")]
        if len({r["decision"] for r in rs}) > 1:
            print(f"   !! {case}: decisions differ: " + ", ".join(f"{r['formulation']}{start_label(r['start'])}="
                                                            f"{r['decision']}" for r in rs))
        for r in rs:
            if r["decision"] == "sat" and r["reference"] == "unsat":
                print(f"   !! {case}: {r['formulation']} says sat against the reference unsat")
    for r in recs:
        if r["decision"] == "error":
            print(f"   error: {r['case']} {r['formulation']}: {r.get('error')}")


def instance_decision(rs: list[dict]) -> tuple[str, float]:
    """One instance's decision by one formulation from its disjuncts' records: ``sat`` when one is
    sat, ``unsat`` when every one is unsat, ``open`` otherwise; and the seconds spent (solves and
    model building)."""
    seconds = sum(r.get("seconds", 0.0) + r.get("build_s", 0.0) + r.get("walk_s", 0.0) for r in rs)
    decisions = {r["decision"] for r in rs}
    if "sat" in decisions:
        return "sat", seconds
    return ("unsat" if decisions == {"unsat"} else "open"), seconds


def print_vnncomp_instances(recs: list[dict], prep: list[dict], variants: list, names: list[str]) -> None:
    """Per instance (all its open disjuncts): decided or not by each formulation, and the time."""
    instances = sorted({r["instance"] for r in recs})
    if not instances:
        return
    refine = {p.get("instance_label", p["instance"]): p for p in prep}
    print("\nper instance (its open disjuncts in turn; time = solves and model building"
          + ("; refinement before them, as noted" if any("refine_s" in p for p in prep) else "") + ")")
    width = 18
    head = f"{'instance':44s} {'refined':>16s} | " + " | ".join(f"{n[:width]:>{width}s}" for n in names)
    print(head)
    print("-" * len(head))
    tally = {v: [0, 0, []] for v in variants}
    for inst in instances:
        p = refine.get(inst, {})
        note = "" if "refine_s" not in p else \
            f"{p['refine_s']:.0f}s {p['unstable_before_refine']}->{p['unstable_after_refine']}"
        cells = []
        for v in variants:
            rs = [r for r in recs if r["instance"] == inst and (r["formulation"], r["start"]) == v]
            if not rs:
                cells.append("")
                continue
            dec, seconds = instance_decision(rs)
            tally[v][1] += 1
            if dec != "open":
                tally[v][0] += 1
                tally[v][2].append(seconds)
            cells.append(f"{dec} {seconds:.1f}s")
        print(f"{inst[:44]:44s} {note:>16s} | " + " | ".join(f"{c:>{width}s}" for c in cells))
    print("-" * len(head))
    for v, n in zip(variants, names):
        done, total, times = tally[v]
        if total:
            med = f", median {statistics.median(times):.1f}s" if times else ""
            print(f"{n:>16s}: {done}/{total} instances decided{med}")


def print_table(recs: list[dict]) -> None:
    print_psplit(recs)
    print_vnncomp(recs)


# ------------------------------------------------------------------------------------ main
def parse_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--suite", choices=["psplit", "vnncomp", "all"], default="psplit")
    ap.add_argument("--formulations", default=",".join(ALL_FORMULATIONS),
                    help=f"comma-separated: bigm, split, extended, partition:N[:equal_size|equal_range], {OMLT} "
                         f"(vnncomp only); default {','.join(ALL_FORMULATIONS)} (vnncomp adds {OMLT})")
    ap.add_argument("--time-limit", type=float, default=60.0, help="seconds per solve (default 60)")
    ap.add_argument("--threads", type=int, default=1, help="HiGHS threads (default 1)")
    ap.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    ap.add_argument("--resume", action="store_true", help="keep the results file and skip the solves in it")
    ap.add_argument("--table-only", action="store_true", help="print the table of --results and exit")
    g = ap.add_argument_group("psplit")
    g.add_argument("--images", type=int, default=3, help="number of images (default 3)")
    g.add_argument("--first-image", type=int, default=0)
    g.add_argument("--eps", type=lambda s: [float(v) for v in parse_list(s)], default=[1.0, 5.0, 10.0],
                   help="comma-separated L1 radii (default 1,5,10)")
    g.add_argument("--psplit-bounds", choices=["ibp", "crown", "alpha", "l1"], default="ibp",
                   help="pre-activation bounds: over the ball's box hull, ibp (the paper's interval arithmetic, "
                        "default), crown, alpha (CROWN then alpha-CROWN); l1: the first layer exactly over the "
                        "ball within the box, the later layers by interval arithmetic")
    g.add_argument("--psplit-start", choices=["none", "centre"], default="centre",
                   help="MIP start of every psplit solve: the image itself (centre, default) or none")
    g = ap.add_argument_group("vnncomp")
    g.add_argument("--vnn-suites", nargs="+", default=["mnist_fc", "acasxu"],
                   help="suites of benchmarks/vnncomp.py (default mnist_fc acasxu: the first-path sets)")
    g.add_argument("--limit", type=int, default=3, help="instances kept (reaching the MILP) per suite (default 3)")
    g.add_argument("--prep-timeout", type=float, default=30.0,
                   help="seconds for the bound and attack stages of one instance (default 30)")
    g.add_argument("--vnn-threshold", type=float, default=1e-6, help="decide unsat at dual bound > this (default 1e-6)")
    g.add_argument("--match", default=None, help="only instances whose name matches this regular expression")
    g.add_argument("--keep-attack-sat", action="store_true",
                   help="also solve instances that the attack falsifies (by default they are left out: in gpuopt's "
                        "pipeline they never reach the MILP)")
    g.add_argument("--vnn-refine", type=float, default=0.0, metavar="SECONDS",
                   help="before the MILPs, refine the intermediate bounds for this long with gpuopt's refinement "
                        "stage (per-neuron proofs, ended once activation splitting proves the property on the "
                        "bounds so far); every formulation, OMLT too, gets the refined bounds (default 0: off)")
    g.add_argument("--refine-method", choices=sorted(PROVERS), default="split",
                   help="the refinement's per-neuron proofs (default split)")
    g.add_argument("--instance-limit", type=float, default=None, metavar="SECONDS",
                   help="the open disjuncts of one instance share this many seconds per formulation (model "
                        "building included); once one stays open, or is sat, the instance is settled for that "
                        "formulation and its other disjuncts are skipped (default: none, each disjunct gets "
                        "--time-limit)")
    g.add_argument("--seeded-walk", type=parse_list, default=[],
                   help="formulations also run with a MIP start from Relax-and-Walk's best point (default none)")
    g.add_argument("--walk-seconds", type=float, default=5.0,
                   help="Relax-and-Walk's seconds per disjunct for --seeded-walk (default 5)")
    g.add_argument("--condition-share", type=float, default=0.25, metavar="SHARE",
                   help="for the NAME:cond variants: the share of the time left that conditioning may take (default 0.25)")
    g.add_argument("--seeded", type=parse_list, default=["bigm"],
                   help="formulations also run with a MIP start from the attack's best point (default bigm; '' none)")
    args = ap.parse_args(argv)

    if args.table_only:
        if not args.results.exists():
            print(f"{args.results} not found", file=sys.stderr)
            return 1
        print_table(load_records(args.results))
        return 0
    formulations = parse_list(args.formulations)
    from gpuopt.milp.cuts import cut_kinds
    from gpuopt.milp.encode import Formulation

    for f in formulations + list(args.seeded) + list(args.seeded_walk):
        if f != OMLT:
            name, _, cuts = variant_flags(f)[0].partition("+")
            Formulation.parse(name)  # a precise error before any work
            cut_kinds(cuts)
    results = Results(args.results, args.resume)
    t0 = time.monotonic()
    if args.suite in ("psplit", "all"):
        run_psplit(args, results, [f for f in formulations if f != OMLT])
    if args.suite in ("vnncomp", "all"):
        vnn_forms = formulations if (args.formulations != ",".join(ALL_FORMULATIONS) or OMLT in formulations) \
            else formulations + [OMLT]
        run_vnncomp(args, results, vnn_forms)
    print(f"\n{len(results.records)} record(s) in {args.results} ({time.monotonic() - t0:.0f} s this run)")
    print_table(results.records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
