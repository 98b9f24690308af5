"""Task functions that run in pool workers: plain module-level functions of picklable data.

A worker is a fresh spawned process: it imports gpuopt (and torch) on its first task, sets torch
to one thread, and keeps networks it has loaded in a per-process cache, so the next item on the
same network does not read the ONNX file again. Each function returns a JSON-ready record.
"""

from __future__ import annotations

import math
import time

__all__ = ["verify_instance_task", "verify_sample_task", "radius_sample_task", "milp_task", "split_task", "relu_split_task",
           "walk_task", "lp_task", "milp_refine_task",
           "resolve_network", "NetworkRef"]

_NETWORKS: dict = {}  # per worker process: ONNX path or network key -> Network


class NetworkRef:
    """How a task finds its network without the caller pickling it into every task: an ONNX path
    (the worker loads and caches it), or the pickled network with a key (unpickled once per
    worker). Attached to a Network by the orchestrator as ``network._task_ref``."""

    def __init__(self, key: str, onnx_path: str | None = None, payload: bytes | None = None):
        self.key, self.onnx_path, self.payload = key, onnx_path, payload

    def __reduce__(self):
        return (NetworkRef, (self.key, self.onnx_path, self.payload))


def resolve_network(ref):
    """The Network of a task argument: a Network itself (inline runs) or a :class:`NetworkRef`."""
    if not isinstance(ref, NetworkRef):
        return ref
    if ref.key not in _NETWORKS:
        if ref.onnx_path is not None:
            from ..io.onnx import from_onnx

            _NETWORKS[ref.key] = from_onnx(ref.onnx_path)
        else:
            import pickle

            _NETWORKS[ref.key] = pickle.loads(ref.payload)
    return _NETWORKS[ref.key]


#: seconds per matrix entry that encoding a big-M MILP may take (measured ~0.2 us; kept generous)
ENCODE_SECONDS_PER_ENTRY = 1e-6


def _task_deadline(budget: float, submitted: float) -> float:
    """A ``time.monotonic()`` deadline: the item's budget at submission less the time spent queued."""
    return time.monotonic() + budget - max(0.0, time.time() - submitted)


def _problem(net, data):
    from ..problem import Problem

    region, spec, inner, near = data
    return Problem(net, region, spec, inner=inner, near=near)


def split_task(net_ref, problem_data, proof_spec, disjuncts, split_config, box_proof, root_bounds, budget: float,
               submitted: float) -> dict:
    """Input splitting on one problem (:func:`gpuopt.bab.input_split`) over its open ``disjuncts``,
    proofs on ``proof_spec``, hard sub-boxes to MILPs proving with ``box_proof`` (``None``: no
    MILP), the root box on ``root_bounds`` (``None``: computed); a point is reported only after the exact check."""
    start = time.time()
    _setup()
    from ..bab import input_split

    net = resolve_network(net_ref)
    problem = _problem(net, problem_data)
    proof = _problem(net, (problem.region, proof_spec, problem.inner, problem.near))
    res = input_split(proof, deadline=_task_deadline(budget, submitted), config=split_config,
                      open_disjuncts=disjuncts, milp=box_proof, root_bounds=root_bounds)
    return _split_result(problem, res, res.milp_boxes, start)


def _split_result(problem, res, milp_boxes: int, start: float) -> dict:
    """The result of a splitting search (input or interval splitting); a ``sat`` point only after
    the exact check."""
    from ..check import check_counterexample

    out = {"kind": res.status, "boxes": res.boxes, "lb": res.margin_lower, "closed_fraction": res.closed_fraction,
           "open_lower": res.open_lower, "milp_boxes": milp_boxes, "start": start}
    if res.status == "sat":
        c = check_counterexample(problem, res.counterexample)
        if c.ok:
            out.update(x=c.x, y=c.y, margin=c.margin)
        else:
            out["kind"] = "unknown"
    out["end"] = time.time()
    return out


def interval_split_task(net_ref, problem_data, proof_spec, disjuncts, split_config, budget: float,
                        submitted: float) -> dict:
    """Input splitting on interval bounds (:func:`gpuopt.interval_split.interval_split`) on one
    problem of a network that is not piecewise linear, over its open ``disjuncts``; the same
    result fields as :func:`split_task`."""
    start = time.time()
    _setup()
    from ..interval_split import interval_split

    net = resolve_network(net_ref)
    problem = _problem(net, problem_data)
    proof = _problem(net, (problem.region, proof_spec, problem.inner, problem.near))
    res = interval_split(problem, proof, disjuncts, deadline=_task_deadline(budget, submitted),
                         batch_size=split_config.batch_size, max_boxes=split_config.max_boxes)
    return _split_result(problem, res, 0, start)


def relu_split_task(net_ref, problem_data, disjuncts, pre, config, share: float, budget: float,
                    submitted: float) -> dict:
    """Activation splitting (:func:`gpuopt.relu_split.relu_split`) on one problem over its open
    ``disjuncts`` (``(k, C_k, d_k, strict_k)``, proof rows) with the pre-activation bounds ``pre``
    (numpy ``(lower, upper)`` per ReLU layer), for ``share`` of ``budget``. Returns ``kind``
    (``sat`` with an exactly checked point, ``unsat``, ``timeout``, ``unknown``), the disjuncts
    it closed with their proven bounds, the number of domains, and ``leaves``: per open disjunct
    handed to the MILP, ``(bound proven on its closed domains, leaves)`` (see
    :attr:`gpuopt.relu_split.ReluSplitResult.leaves`)."""
    start = time.time()
    _setup()
    import numpy as np
    import torch

    from ..bounds.base import Bounds
    from ..relu_split import relu_split
    from .beside import current_stop

    net = resolve_network(net_ref)
    problem = _problem(net, problem_data)
    deadline = _task_deadline(budget * share, submitted)
    bounds = Bounds(tuple((torch.as_tensor(l)[None], torch.as_tensor(u)[None]) for l, u in pre), (None, None),
                    "stage")
    box = problem.region
    res = relu_split(net, torch.tensor(np.array(box.lower)), torch.tensor(np.array(box.upper)),
                     [(C, d, strict) for _, C, d, strict in disjuncts], bounds, problem=problem, deadline=deadline,
                     config=config, stop=current_stop())
    closed = {k: res.proven_bound[j] for j, (k, _, _, _) in enumerate(disjuncts) if res.closed[j]}
    leaves = {k: (res.proven_bound[j], res.leaves[j]) for j, (k, _, _, _) in enumerate(disjuncts)
              if j < len(res.leaves) and res.leaves[j]}
    out = {"kind": res.status, "closed": closed, "domains": res.domains, "open_domains": res.open_domains,
           "worst": res.worst_bound, "leaves": leaves, "start": start}
    if res.status == "sat":
        out.update(x=res.x, y=res.y, margin=res.margin)
    out["end"] = time.time()
    return out


def walk_task(net_ref, problem_data, A, b, pre, out_bounds, starts, walk_config, solver_config, share: float,
              budget: float, submitted: float) -> dict:
    """Relax-and-Walk (:func:`gpuopt.milp.walk.relax_and_walk`) on one disjunct ``{y : A y <= b}``
    from the ``starts`` (the attack's best points), for ``share`` of ``budget``. Returns ``kind``
    ``sat`` (an exactly checked point) or ``unknown``, the best point ``x`` with its checked
    ``margin`` (or None), and the walk's counts."""
    start = time.time()
    _setup()
    from ..check import check_counterexample
    from ..milp.encode import encode_bigm
    from ..milp.walk import relax_and_walk

    deadline = _task_deadline(budget * share, submitted)
    net = resolve_network(net_ref)
    problem = _problem(net, problem_data)
    blocks = net.affine_blocks()
    out = {"start": start, "kind": "unknown", "x": None, "margin": None, "lps": 0, "regions": 0, "stopped": "no_time"}
    entries = sum(blk.matrix.nnz for blk in blocks)
    if deadline - time.monotonic() < entries * ENCODE_SECONDS_PER_ENTRY:
        out["end"] = time.time()
        return out
    model = encode_bigm(blocks, pre, out_bounds, problem.region.lower, problem.region.upper, A, b)
    found = {}

    def accept(x):
        if found:
            return True
        c = check_counterexample(problem, x)
        if c.ok:
            found.update(x=c.x, y=c.y, margin=c.margin)
        return c.ok

    res = relax_and_walk(model, blocks, starts=starts, deadline=deadline, config=walk_config, solver=solver_config,
                         accept=accept)
    out.update(lps=res.lps, regions=res.regions, stopped=res.stopped)
    if found:
        out.update(kind="sat", **found)
    elif res.x is not None:
        c = check_counterexample(problem, res.x)
        out.update(x=c.x, margin=c.margin)
    out["end"] = time.time()
    return out


def lp_task(net_ref, problem_data, pre, out_bounds, disjuncts, solver_config, share: float, budget: float,
            submitted: float) -> dict:
    """LP bound tightening (:func:`gpuopt.bounds.lp.lp_tighten`) of one problem's unstable neurons
    in three quarters of ``share`` of ``budget``, then the LP lower bound of each open disjunct
    ``(k, A_k, b_k)`` (proof rows; the largest of its rows' LP minima). Returns the tightened
    ``pre``, the disjuncts whose bound is positive (``closed``: ``{k: bound}``) and counts. Every
    bound is a safe dual bound (:mod:`gpuopt.milp.safe`)."""
    start = time.time()
    _setup()
    import numpy as np

    from ..bounds.lp import lp_row_bounds, lp_tighten

    net = resolve_network(net_ref)
    problem = _problem(net, problem_data)
    blocks = net.affine_blocks()
    t0 = time.monotonic()
    deadline = _task_deadline(budget * share, submitted)
    box = problem.region
    tight = lp_tighten(blocks, pre, box.lower, box.upper, deadline=t0 + 0.75 * max(0.0, deadline - t0),
                       config=solver_config)
    closed = {}
    if disjuncts and time.monotonic() < deadline:  # every open disjunct's rows in one LP session
        A_all = np.concatenate([np.atleast_2d(A) for _, A, _ in disjuncts])
        b_all = np.concatenate([np.asarray(b, dtype=np.float64).reshape(-1) for _, _, b in disjuncts])
        rows = lp_row_bounds(blocks, tight.pre, out_bounds, box.lower, box.upper, A_all, b_all, deadline=deadline,
                             config=solver_config)
        at = 0
        for k, A, _ in disjuncts:
            m = np.atleast_2d(A).shape[0]
            lb = float(np.max(rows[at:at + m]))
            at += m
            if lb > 0:
                closed[k] = lb
    return {"pre": tight.pre, "closed": closed, "lps": tight.lps, "tightened": tight.tightened,
            "stabilised": tight.stabilised, "start": start, "end": time.time()}


def milp_refine_task(net_ref, problem_data, pre, out_bounds, solver_config, neuron_time: float, alpha_steps: int,
                     share: float, method: str, disjuncts, relu_config, budget: float, submitted: float) -> dict:
    """MILP refinement of one problem's intermediate bounds (:func:`gpuopt.bounds.milp_refine.milp_refine`)
    for ``share`` of ``budget``, each neuron's MILP for at most ``neuron_time`` seconds, as many MILPs at
    once as this process has torch threads (1 in a pool worker; ``gpuopt verify --threads``); after each
    layer, the layers after it are re-bounded by CROWN and alpha-CROWN (``alpha_steps``) from the refined
    bounds. ``method``: the per-neuron proofs, ``"milp"`` or ``"split"`` (activation splitting).
    ``disjuncts`` (``(k, C_k, d_k, strict_k)``, proof rows): after each layer, activation splitting
    (``relu_config``) tries them briefly on the bounds so far, and the refinement ends once it
    proves them all (:func:`gpuopt.bounds.milp_refine.property_check`). Returns
    the refined ``pre``, counts, and ``on_tolerances``: whether the bounds may rest on HiGHS's
    tolerances (MILPs were solved; see that module)."""
    start = time.time()
    _setup()
    import torch

    from ..bounds.milp_refine import alpha_crown_rebound, milp_refine, property_check

    net = resolve_network(net_ref)
    problem = _problem(net, problem_data)
    box = problem.region
    deadline = _task_deadline(budget * share, submitted)
    rebound = alpha_crown_rebound(net, box.lower, box.upper, out_bounds, steps=alpha_steps, deadline=deadline,
                                  step_dtype=relu_config.step_dtype)
    enough = None if not disjuncts else property_check(net, box.lower, box.upper,
                                                       [(C, d, strict) for _, C, d, strict in disjuncts],
                                                       config=relu_config, deadline=deadline, output=out_bounds)
    res = milp_refine(net.affine_blocks(), pre, box.lower, box.upper, deadline=deadline, neuron_time=neuron_time,
                      config=solver_config, parallel=torch.get_num_threads(), rebound=rebound, method=method,
                      enough=enough, step_dtype=relu_config.step_dtype)
    return {"pre": res.pre, "milps": res.milps, "stabilised": res.stabilised, "tightened": res.tightened,
            "on_tolerances": res.on_solver_tolerances, "method": method, "ended_early": res.ended_early,
            "lifted": res.lifted,
            "start": start, "end": time.time()}


#: with conditioning on, the MILP first runs alone for this share of the time left (at least
#: :data:`MILP_FIRST_SECONDS`; both 0: not at all): a disjunct it decides quickly does not wait for
#: the LPs
MILP_FIRST_SHARE = 0.1
MILP_FIRST_SECONDS = 5.0
#: tail MILPs after narrow hidden layers (:mod:`gpuopt.milp.tail`) try to prove the disjunct first,
#: in at most this share of the MILP's time (0: never)
MILP_TAIL_SHARE = 0.1


def milp_task(net_ref, problem_data, A, b, pre, out_bounds, start_x, threshold, unchecked, solver_config, formulation,
              cuts, recheck, condition_share: float, budget: float, submitted: float) -> dict:
    """The MILP (``formulation``, see :mod:`gpuopt.milp.encode`; with ``cuts``, strengthened by
    :func:`gpuopt.milp.cuts.strengthen`) of one disjunct ``{y : A y <= b}`` (proof rows) over the problem's box with
    the given pre-activation and output bounds, seeded with ``start_x``. Returns ``kind``:
    ``sat`` (an exactly checked point), ``proven`` (dual bound clears ``threshold`` and the
    tolerance margin; ``lb`` is the certified bound), ``timeout`` or ``unknown`` (with ``note``).
    With ``recheck``, a proof is re-checked independently (:func:`gpuopt.milp.recheck.recheck_milp`,
    safe dual bounds only) in at most the time HiGHS took: ``rechecked`` says whether it was. A
    proof the re-check did not confirm must clear ``unchecked`` (at least ``threshold``; see
    :func:`gpuopt.milp.highs.unchecked_floor`), else it is ``unknown``.

    ``condition_share`` > 0: when the MILP has not decided in its first
    :data:`MILP_FIRST_SHARE` of the time, the last hidden layer's and the outputs' bounds are
    tightened by LP over the points where the disjunct's margin is at most ``tau = unchecked``
    (:func:`gpuopt.bounds.lp.lp_tighten_conditioned`), in at most that share of the time left, and
    the MILP starts again on them. Every point outside that set clears ``tau``, which is at least
    either threshold, so a proof on the conditioned model proves the disjunct (its ``lb`` is then
    at most ``tau``); an LP with a certified empty set proves it outright, on safe dual bounds
    (``farkas``; ``conditioned``: what the conditioning did). The runs are
    :func:`gpuopt.milp.conditioned.solve_conditioned`'s, tail MILPs first (:data:`MILP_TAIL_SHARE`;
    ``tail``: the layer whose box proved it)."""
    start = time.time()
    _setup()
    from ..check import check_counterexample
    from ..errors import SolverError
    from ..milp.conditioned import solve_conditioned
    from ..milp.highs import MilpStatus

    deadline = _task_deadline(budget, submitted)
    net = resolve_network(net_ref)
    problem = _problem(net, problem_data)
    blocks = net.affine_blocks()
    out = {"start": start, "nodes": 0, "raw_status": None, "margin_upper": None}
    # encoding is not interruptible: it must fit in the time left (about ENCODE_SECONDS_PER_ENTRY
    # per matrix entry, generously)
    entries = sum(blk.matrix.nnz for blk in blocks)
    if deadline - time.monotonic() < entries * ENCODE_SECONDS_PER_ENTRY:
        out.update(kind="timeout", note=f"no time left to encode the MILP ({entries} matrix entries)", end=time.time())
        return out
    found = {}

    def accept(x):
        c = check_counterexample(problem, x)
        if c.ok:
            found.update(x=c.x, y=c.y, margin=c.margin)
        return c.ok

    if deadline - time.monotonic() <= 0:
        out.update(kind="timeout", note="no time left for the MILP", end=time.time())
        return out
    if not recheck:  # HiGHS's word alone: it must clear the floor of its tolerances
        threshold = unchecked
    try:  # (an overflowing spec has no finite tau = unchecked: nothing to condition on)
        run = solve_conditioned(blocks, pre, out_bounds, problem.region.lower, problem.region.upper, A, b,
                                threshold=threshold, tau=float(unchecked), deadline=deadline,
                                condition_share=condition_share, formulation=formulation, cuts=cuts or "",
                                start_x=start_x, accept=accept, config=solver_config, first_share=MILP_FIRST_SHARE,
                                first_seconds=MILP_FIRST_SECONDS, tail_share=MILP_TAIL_SHARE)
    except SolverError as exc:  # e.g. a coefficient of 1e15 or more: the item goes on without this MILP
        out.update(kind="unknown", note=f"no MILP: {exc}", end=time.time())
        return out
    if run.cuts is not None:
        out["cuts"] = run.cuts
    first = run.first
    if run.conditioning is not None:
        cond = run.conditioning
        out["conditioned"] = {"lps": cond.lps, "tightened": cond.tightened, "stabilised": cond.stabilised,
                              "empty": cond.empty, "seconds": cond.seconds}
        if first is not None and first.solution is not None:  # the first run's point bounds the margin from above
            out["margin_upper"] = check_counterexample(problem, first.solution[run.first_model.x_index]).margin
    if run.empty:  # no point has a margin of at most tau: proven on a Farkas certificate
        out.update(kind="proven", lb=run.ceiling, nodes=0 if first is None else first.nodes,
                   raw_status="conditioned LP infeasible", farkas=True, end=time.time())
        return out
    res, model, ceiling = run.result, run.model, run.ceiling
    if res is None:  # no first run, and no time left for the conditioning
        out.update(kind="timeout", note="no time left for the MILP", end=time.time())
        return out
    out.update(nodes=res.nodes, raw_status=res.raw_status)
    if run.tails:
        out["tails"] = [list(t) for t in run.tails]
    if run.tail is not None:
        out["tail"] = run.tail
    if not found and res.solution is not None and run.tail is None:  # (a tail's variables are no input point)
        c = check_counterexample(problem, res.solution[model.x_index])
        if out["margin_upper"] is None or c.margin < out["margin_upper"]:
            out["margin_upper"] = c.margin
        if c.ok:
            found.update(x=c.x, y=c.y, margin=c.margin)
    if found:
        out.update(kind="sat", **found)
    elif res.proves_above(threshold):
        _proof(out, res, model, threshold, unchecked, recheck, deadline, solver_config, ceiling)
    else:
        note = (f"MILP ended {res.status.value} ({res.raw_status}) with dual bound {res.dual_bound:.6g} "
                f"(threshold {threshold:.3g} + tolerance margin {res.proof_margin:.3g})")
        if res.warnings:
            note += f"; not a proof: HiGHS warned: {res.warnings[0]}"
        timed_out = res.status is MilpStatus.TIME_LIMIT or deadline - time.monotonic() <= 0
        out.update(kind="timeout" if timed_out else "unknown", note=note)
    out["end"] = time.time()
    return out


def _proof(out: dict, res, model, threshold: float, unchecked: float, recheck: bool, deadline: float,
           solver_config, ceiling: float = math.inf) -> None:
    """``out`` for a run ``res`` of ``model`` that proves ``min > threshold``: ``proven`` with the
    certified bound ``lb``; with ``recheck``, re-checked independently
    (:func:`gpuopt.milp.recheck.recheck_milp`, safe dual bounds only) in at most the time HiGHS took
    (``rechecked``); a proof the re-check did not confirm must clear ``unchecked``, else ``unknown``."""
    out.update(kind="proven", lb=min(res.dual_bound - res.proof_margin, ceiling))
    if recheck:  # the independent re-check, in at most the time HiGHS took (and the time left)
        from ..milp.recheck import recheck_milp

        stop = min(deadline, time.monotonic() + max(0.5, res.seconds))
        check = recheck_milp(model, threshold, deadline=stop, config=solver_config)
        out.update(rechecked=check.proven, recheck_nodes=check.nodes)
    if not out.get("rechecked") and not res.proves_above(unchecked):
        out.update(kind="unknown", note=f"MILP dual bound {res.dual_bound:.6g} clears the threshold "
                                        f"{threshold:.3g} but, not re-checked, not the floor {unchecked:.3g} of "
                                        "HiGHS's feasibility tolerances")


def tail_task(net_ref, A, b, pre, out_bounds, threshold, unchecked, solver_config, formulation, recheck,
              share: float, budget: float, submitted: float) -> dict:
    """Tail MILPs alone (:func:`gpuopt.milp.tail.prove_by_tail`) on one disjunct ``{y : A y <= b}``,
    in ``share`` of the budget: ``kind`` ``proven`` (``lb``, ``tail``: the layer whose box proved
    it; re-checked as :func:`milp_task` does), ``unknown`` (a proof that did not clear the floor)
    or ``open`` (no tail proved; ``tails``: what was tried)."""
    start = time.time()
    _setup()
    from ..errors import SolverError
    from ..milp.tail import prove_by_tail

    deadline = _task_deadline(budget * share, submitted)
    blocks = resolve_network(net_ref).affine_blocks()
    out = {"start": start, "nodes": 0, "kind": "open"}
    if not recheck:  # HiGHS's word alone: it must clear the floor of its tolerances
        threshold = unchecked
    try:
        proof = prove_by_tail(blocks, pre, out_bounds, A, b, threshold=threshold, deadline=deadline,
                              formulation=formulation, config=solver_config)
    except SolverError as exc:
        out.update(note=f"no tail MILP: {exc}", end=time.time())
        return out
    out["tails"] = [list(t) for t in proof.tried]
    if proof.layer is not None:
        out.update(tail=proof.layer, nodes=proof.result.nodes)
        _proof(out, proof.result, proof.model, threshold, unchecked, recheck, max(deadline, time.monotonic() + 0.5),
               solver_config)
    out["end"] = time.time()
    return out


def _setup():
    """One torch thread in a pool worker (the workers share the cores); a task run inline keeps
    the caller's thread count (``gpuopt verify --threads``): nothing else runs beside it."""
    import torch

    from ..devices import in_pool_worker

    if in_pool_worker() and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def _network(onnx_path: str):
    from ..io.onnx import from_onnx

    if onnx_path not in _NETWORKS:
        _NETWORKS[onnx_path] = from_onnx(onnx_path)
    return _NETWORKS[onnx_path]


def _record(verdict, t0: float) -> dict:
    rec = verdict.to_dict()
    rec["seconds"] = time.monotonic() - t0
    return rec


def verify_instance_task(onnx_path: str, vnnlib_path: str, timeout: float, config) -> dict:
    """Decide one VNN-COMP instance; ``timeout`` counts from the start of the task, loading included."""
    t0 = time.monotonic()
    _setup()
    from ..io.vnnlib import load_vnnlib
    from ..verify import verify_problems

    net = _network(onnx_path)
    props = load_vnnlib(vnnlib_path, n_inputs=net.input_size, n_outputs=net.output_size)
    problems = [p.problem(net) for p in props]
    verdict = verify_problems(problems, timeout=timeout, config=config, start_time=t0)
    return _record(verdict, t0)


def radius_sample_task(network, x, label: int, eps_max: float, clip: tuple, timeout: float, config,
                       norm: str = "linf") -> dict:
    """The certified radius bracket (``norm``) of one sample (:func:`gpuopt.radius.certify_radius`)."""
    t0 = time.monotonic()
    _setup()
    from ..radius import certify_radius

    net = _network(network) if isinstance(network, str) else network
    r = certify_radius(net, x, int(label), eps_max=eps_max, clip=clip, timeout=timeout, config=config, norm=norm)
    return {"norm": norm, "status": r.status, "lower": r.lower, "upper": r.upper, "upper_found": r.upper_found,
            "verify_calls": r.verify_calls, "seconds": time.monotonic() - t0,
            "counterexample": None if r.x_adv is None else r.x_adv.tolist()}


def verify_sample_task(network, x, label: int, eps: float, clip: tuple, timeout: float, config) -> dict:
    """L-inf robustness of one sample: is every point within ``eps`` of ``x`` (and inside
    ``clip``) classified as ``label``? ``network`` is a Network, or an ONNX path."""
    t0 = time.monotonic()
    _setup()
    from ..regions import LinfBall
    from ..specs import robustness
    from ..verify import verify

    net = _network(network) if isinstance(network, str) else network
    region = LinfBall(x, eps, clip_lower=clip[0], clip_upper=clip[1])
    verdict = verify(net, region, robustness(int(label), net.output_size), timeout=timeout, config=config)
    return _record(verdict, t0)
