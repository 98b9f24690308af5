"""Optimisation over a trained network: ``max_{x in R} c^T f(x) + d`` with an anytime answer.

The region ``R`` is a :class:`~gpuopt.regions.Box`, :class:`~gpuopt.regions.LinfBall` or
:class:`~gpuopt.regions.L1Ball`, optionally cut by linear rows ``G x <= g``. Three stages share
the time budget, each feeding the next:

1. **bounds**: CROWN on the region's box (for an L1 ball intersected with the ball's exact first
   layer and interval arithmetic after it, :mod:`gpuopt.bounds.l1`) gives the pre-activation
   bounds of the MILP, and CROWN then alpha-CROWN on the objective row a first sound upper bound
   ``U`` of the objective;
2. **gradient ascent** (the attack engine, :func:`gpuopt.attacks.search.falsify`, on the GPU when
   there is one): many projected restarts on ``-c^T f(x) + U`` (never below 0, so no restart stops
   early), keeping the best points of distinct activation patterns (skipped when ``G`` is given:
   the geometry cannot project onto it);
3. **Relax-and-Walk** (:mod:`gpuopt.milp.walk`) from those points and the LP relaxation: the last
   step inside a linear region;
4. **input splitting** (:func:`gpuopt.bab.input_split`, networks with at most 16 inputs over a
   box): proves ``c^T f(x) + d < best + tol / 2`` on the whole box, or finds a better point, walks
   from it and tries again;
5. **MILP** (HiGHS, the chosen formulation) seeded with the best point: better points and the
   proven bound.

Every reported value is the float64 forward pass of the network at a point inside the region
(``best_value``); ``upper_bound`` is sound: the least of the CROWN bound, input splitting's (the
least bound of its open sub-boxes, when it runs out of time) and the MILP's dual bound less HiGHS's
tolerance margin (:class:`~gpuopt.milp.highs.MilpResult`), each widened by the
deviation of the MILP's composed float64 weights from the network's
(:func:`gpuopt.check.parameter_deviation`). ``status`` is ``optimal`` when
``upper_bound - best_value <= atol + rtol |best_value|`` (``1e-4`` each by default: HiGHS's
tolerance margin alone is often ``1e-5`` to ``1e-4``), else ``timeout``; the MILP stops as soon as
that holds.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import InvalidInputError, SolverError
from .network import Network
from .regions import Box, L1Ball, LinfBall

__all__ = ["OptimizeResult", "optimize", "optimize_instance", "parse_objective"]

log = logging.getLogger("gpuopt")

#: networks with at most this many inputs (over a box) get the input-splitting stage
SPLIT_MAX_INPUTS = 16


@dataclass(frozen=True, eq=False)
class OptimizeResult:
    """``best_value`` at ``x`` (``-inf``/``None`` when no point was found), ``upper_bound`` (a
    proven bound on the maximum), ``gap = upper_bound - best_value``, ``status`` ``optimal`` or
    ``timeout``, ``seconds``; ``stage_values``: the best value each stage reached;
    ``stage_seconds``; ``milp``: the MILP's raw status, nodes and dual bound (or None)."""

    best_value: float
    upper_bound: float
    gap: float
    x: np.ndarray | None
    status: str
    seconds: float
    stage_values: dict = field(default_factory=dict)
    stage_seconds: dict = field(default_factory=dict)
    milp: dict | None = None

    def to_dict(self) -> dict:
        return {"best_value": self.best_value, "upper_bound": self.upper_bound, "gap": self.gap,
                "x": None if self.x is None else [float(v) for v in self.x], "status": self.status,
                "seconds": self.seconds, "stage_values": self.stage_values, "stage_seconds": self.stage_seconds,
                "milp": self.milp}


_TERM = re.compile(r"\s*([+-]?)\s*(?:([0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?)\s*\*?\s*)?"
                   r"(Y_([0-9]+))?\s*")


def parse_objective(text: str, n_outputs: int) -> tuple[np.ndarray, float]:
    """``(c, d)`` of a linear expression such as ``"Y_0 - 2*Y_1 + 0.5"`` over ``n_outputs``."""
    text = str(text).strip()
    if not text:
        raise InvalidInputError("the objective expression is empty")
    c, d, pos, first = np.zeros(n_outputs), 0.0, 0, True
    while pos < len(text):
        m = _TERM.match(text, pos)
        if m is None or m.end() == pos or (not m.group(2) and not m.group(3)) or (not first and not m.group(1)):
            raise InvalidInputError(f"cannot read the objective {text!r} at position {pos}: "
                                    "write terms like `Y_0 - 2*Y_1 + 0.5`")
        sign = -1.0 if m.group(1) == "-" else 1.0
        coef = sign * (float(m.group(2)) if m.group(2) else 1.0)
        if m.group(3):
            k = int(m.group(4))
            if k >= n_outputs:
                raise InvalidInputError(f"the objective names Y_{k}, but the network has {n_outputs} outputs")
            c[k] += coef
        else:
            d += coef
        pos, first = m.end(), False
    if not np.all(np.isfinite(c)) or not math.isfinite(d):
        raise InvalidInputError(f"the objective {text!r} has a coefficient that is not finite")
    return c, d


def _optimize_iv(network, region, objective, offset, constraints, timeout):
    if not isinstance(network, Network):
        raise InvalidInputError(f"`network` must be a gpuopt Network, got {type(network).__name__}")
    if not isinstance(region, (Box, LinfBall, L1Ball)):
        raise InvalidInputError(f"`region` must be a Box, LinfBall or L1Ball, got {type(region).__name__}")
    n = network.input_size
    box = region.to_box()
    if box.size != n:
        raise InvalidInputError(f"`region` must have {n} inputs (the network's), got {box.size}")
    with np.errstate(over="ignore"):
        wide = ~np.isfinite(np.asarray(box.upper) - np.asarray(box.lower))
    if np.any(wide):
        raise InvalidInputError(f"`region` is too wide: the width of input {int(np.flatnonzero(wide)[0])} overflows "
                                "float64")
    if isinstance(offset, bool) or not isinstance(offset, (int, float, np.integer, np.floating)):
        raise InvalidInputError(f"`offset` must be a number, got {type(offset).__name__}")
    if isinstance(objective, str):
        c, d = parse_objective(objective, network.output_size)
        d += float(offset)
    else:
        try:
            c = np.asarray(objective, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise InvalidInputError("`objective` must be a vector of output coefficients or an expression such as "
                                    f"'Y_0 - 2*Y_1', got {type(objective).__name__}") from None
        if c.size != network.output_size:
            raise InvalidInputError(f"`objective` must have one coefficient per output ({network.output_size}), got {c.size}")
        d = float(offset)
    if not (np.all(np.isfinite(c)) and math.isfinite(d)):
        raise InvalidInputError("`objective` and `offset` must be finite")
    G = g = None
    if constraints is not None:
        try:
            G, g = constraints
            G = np.atleast_2d(np.asarray(G, dtype=np.float64))
            g = np.asarray(g, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise InvalidInputError("`constraints` must be a pair (G, g) of numbers meaning G x <= g") from None
        if G.shape != (g.size, n):
            raise InvalidInputError(f"`constraints` G must have shape ({g.size}, {n}), got {G.shape}")
        if not (np.all(np.isfinite(G)) and np.all(np.isfinite(g))):
            raise InvalidInputError("`constraints` must be finite")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float, np.integer, np.floating)) \
            or not timeout > 0 or not math.isfinite(timeout):
        raise InvalidInputError(f"`timeout` must be a finite number of seconds > 0, got {timeout!r}")
    return box, c, d, G, g


def _options_iv(formulation, attack_share, walk_share, rtol, atol, cuts=False) -> None:
    from .milp.cuts import cut_kinds
    from .milp.encode import Formulation

    cut_kinds(cuts)
    if not isinstance(formulation, str):
        raise InvalidInputError(f"`formulation` must be a name such as 'bigm' or 'partition:2', got {formulation!r}")
    Formulation.parse(formulation)
    for name, v in (("attack_share", attack_share), ("walk_share", walk_share)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise InvalidInputError(f"`{name}` must be a number in [0, 1], got {v!r}")
    for name, v in (("rtol", rtol), ("atol", atol)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise InvalidInputError(f"`{name}` must be a finite number >= 0, got {v!r}")


def _inner_iv(inner, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bounds of ``inner`` (default: ``lo, hi``), checked to lie inside ``[lo, hi]``."""
    if inner is None:
        return lo, hi
    if not isinstance(inner, Box):
        raise InvalidInputError(f"`inner` must be a Box, got {type(inner).__name__}")
    ilo, ihi = np.array(inner.lower, dtype=np.float64), np.array(inner.upper, dtype=np.float64)
    if ilo.shape != lo.shape:
        raise InvalidInputError(f"`inner` must have {lo.size} inputs (the region's), got {ilo.size}")
    if np.any(ilo < lo) or np.any(ihi > hi):
        raise InvalidInputError("`inner` must lie inside the region's box")
    return ilo, ihi


def _interior_point(lo: np.ndarray, hi: np.ndarray, cons) -> np.ndarray | None:
    """A point of the box, the L1 ball and ``G x <= g`` with the largest common slack ``t`` (an
    LP: ``G x + t |G_i| <= g``, ``sum |x - c| + t <= eps``), or None when the set is empty."""
    import scipy.sparse as sp

    from .milp.highs import solve_lp

    n = lo.size
    n_r = n if cons.l1_center is not None else 0
    cols = n + n_r + 1  # x | r | t
    rows, rlo, rhi = [], [], []
    if n_r:
        I = sp.eye(n, format="csr")
        z = sp.csr_matrix((n, 1))
        rows += [sp.hstack([I, -I, z]), sp.hstack([-I, -I, z]),
                 sp.hstack([sp.csr_matrix((1, n)), sp.csr_matrix(np.ones((1, n))), sp.csr_matrix([[1.0]])])]
        rhi += [cons.l1_center, -cons.l1_center, [cons.l1_eps]]
    if cons.G is not None:
        norms = np.linalg.norm(cons.G, axis=1)[:, None]
        rows.append(sp.hstack([sp.csr_matrix(cons.G), sp.csr_matrix((cons.G.shape[0], n_r)), sp.csr_matrix(norms)]))
        rhi.append(cons.g)
    A = sp.vstack(rows).tocsr()
    rhi = np.concatenate([np.asarray(r, dtype=np.float64).reshape(-1) for r in rhi])
    rlo = np.full(rhi.size, -np.inf)
    c = np.zeros(cols)
    c[-1] = -1.0
    col_lo = np.concatenate([lo, np.zeros(n_r), [0.0]])
    col_hi = np.concatenate([hi, np.full(n_r, np.inf), [1.0]])
    try:
        res = solve_lp(c, A, rlo, rhi, col_lo, col_hi, time_limit=10.0)
    except SolverError:  # HiGHS refused the LP (a coefficient of 1e15 or more): no interior point from it
        return None
    if res.status != "optimal":
        return None
    return np.clip(res.x[:n], lo, hi)  # slack 0 still gives a point of a set without interior


def optimize(network: Network, region, objective, *, offset: float = 0.0, constraints=None, timeout: float = 60.0,
             formulation: str = "bigm", seed: int = 0, device=None, attack_share: float = 0.15,
             walk_share: float = 0.25, rtol: float = 1e-4, atol: float = 1e-4, config=None,
             cuts: bool | str = False, inner: Box | None = None) -> OptimizeResult:
    """Maximise ``objective . f(x) + offset`` over ``region`` (and ``G x <= g`` for
    ``constraints=(G, g)``) within ``timeout`` seconds; ``objective`` is a coefficient vector over
    the outputs or an expression such as ``"Y_0 - 2*Y_1"``; ``cuts`` adds valid inequalities to
    the MILP (:func:`gpuopt.milp.cuts.cut_kinds`); ``inner``: a box inside the region's box that
    every reported point must lie in (a VNNLIB region's float64 points, where the region's box is
    rounded outwards), while the bounds hold on the whole region."""
    from .attacks.geometry import BoxGeometry, L1Geometry
    from .attacks.pgd import AttackConfig
    from .attacks.search import falsify
    from .bounds.crown import crown
    from .check import parameter_deviation
    from .devices import check_device
    from .milp.encode import InputConstraints, complete_assignment, encode
    from .milp.highs import MilpStatus, SolverConfig, solve_milp
    from .milp.walk import WalkConfig, relax_and_walk

    t0 = time.monotonic()
    deadline = t0 + float(timeout) if timeout is not None else None
    box, c, d, G, g = _optimize_iv(network, region, objective, offset, constraints, timeout)
    _options_iv(formulation, attack_share, walk_share, rtol, atol, cuts)
    lo, hi = np.array(box.lower), np.array(box.upper)
    plo, phi = _inner_iv(inner, lo, hi)  # where reported points lie
    stage_seconds, stage_values = {}, {}
    cons = None
    if isinstance(region, L1Ball) or G is not None:
        l1 = isinstance(region, L1Ball)
        cons = InputConstraints(l1_center=region.center if l1 else None, l1_eps=region.eps if l1 else None, G=G, g=g)

    def inside(x) -> bool:
        return bool(np.all(x >= plo) and np.all(x <= phi)) and (cons is None or cons.contains(x))

    # an interior point: points that solver tolerances left just outside are pulled towards it
    # (with linear rows, the point of largest slack: a centre on a row's boundary would pull every
    # point that tolerances leave 1 ulp outside back to the centre)
    anchor = np.clip(region.center if not isinstance(region, Box) else box.center, plo, phi)
    if G is not None or (cons is not None and not inside(anchor)):
        deep = _interior_point(plo, phi, cons)
        if deep is not None and inside(deep):
            anchor = deep
        elif not inside(anchor):
            raise InvalidInputError("the region is empty: no float64 point satisfies the box, the ball and the "
                                    "linear constraints (or the set is too thin to hold one)")

    def pulled_inside(x) -> np.ndarray:
        x = np.clip(x, plo, phi)
        if inside(x):
            return x
        a, b_ = 0.0, 1.0  # the largest fraction of the way from the anchor to x that stays inside
        for _ in range(60):
            m = 0.5 * (a + b_)
            a, b_ = (m, b_) if inside(anchor + m * (x - anchor)) else (a, m)
        return anchor + a * (x - anchor)

    def value(x) -> float:
        y = network.forward64(np.asarray(x, dtype=np.float64)[None])[0]
        return float(c @ y + d)

    best = {"x": None, "value": -math.inf}

    def offer(x, stage):
        if x is None:
            return
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(x)):  # a float32 stage overflowed on a huge region: no point
            return
        x = pulled_inside(x)
        v = value(x)
        if not math.isfinite(v):
            raise InvalidInputError(f"the objective's value at a point of the region is {v} in float64: scale the "
                                    "objective (or the network) down")
        stage_values[stage] = max(stage_values.get(stage, -math.inf), v)
        if v > best["value"]:
            best.update(x=x.copy(), value=v)

    # 1. bounds
    t = time.monotonic()
    bounds = crown(network, torch.tensor(lo[None]), torch.tensor(hi[None]), deadline=deadline)
    pre = [(l[0].numpy(), u[0].numpy()) for l, u in bounds.pre_activation]
    ly, uy = bounds.output[0][0].numpy(), bounds.output[1][0].numpy()
    if isinstance(region, L1Ball):  # the exact first layer over the ball, intersected with CROWN's
        from .bounds.l1 import l1_ball_bounds

        pre_l1, (ly1, uy1) = l1_ball_bounds(network.affine_blocks(), region.center, region.eps, lo, hi)
        pre = [(np.maximum(a, a1), np.minimum(b_, b1)) for (a, b_), (a1, b1) in zip(pre, pre_l1)]
        ly, uy = np.maximum(ly, ly1), np.minimum(uy, uy1)
    dev = parameter_deviation(network, lo[None], hi[None])
    dev_c = 0.0 if dev is None else float(np.abs(c) @ dev[0])
    terms = np.maximum(c * ly, c * uy)
    upper = float(terms.sum() + d)
    upper = math.inf if math.isnan(upper) else upper  # inf - inf in an overflowing network: no bound
    upper = upper + 1e-12 * (float(np.abs(terms).sum()) + abs(d)) + dev_c
    # the objective row itself by CROWN, then alpha-CROWN (both sound in float64, and far
    # tighter than the output box when the objective combines outputs)
    from .bounds.crown import alpha_crown_linear_lower, crown_linear_lower

    lo_t, hi_t = torch.tensor(lo[None]), torch.tensor(hi[None])
    C = torch.tensor(-c, dtype=torch.float64).reshape(1, 1, -1)
    row, _ = crown_linear_lower(network, lo_t, hi_t, C, bounds)
    rows = [float(row[0, 0])]
    if deadline - time.monotonic() > 0:
        stop = time.monotonic() + 0.05 * (deadline - time.monotonic())
        rows.append(float(alpha_crown_linear_lower(network, lo_t, hi_t, C, bounds, steps=20, deadline=stop)[0, 0]))
    best_row = max(rows)  # min of -c^T y >= best_row, so max of c^T y + d <= -best_row + d
    if math.isfinite(best_row):
        upper = min(upper, -best_row + d + 4 * np.finfo(np.float64).eps * (abs(best_row) + abs(d)) + dev_c)
    stage_seconds["bounds"] = time.monotonic() - t
    offer(anchor, "start")

    def done() -> bool:
        return best["value"] > -math.inf and upper - best["value"] <= atol + rtol * abs(best["value"])

    def left() -> float:
        return deadline - time.monotonic()

    # 2. gradient ascent
    starts = []
    if G is None and not done() and left() > 0:
        t = time.monotonic()
        dev_t = check_device(device) if device is not None else \
            torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float32
        lo_t, hi_t = torch.tensor(lo[None], dtype=dtype, device=dev_t), torch.tensor(hi[None], dtype=dtype, device=dev_t)
        if isinstance(region, L1Ball):
            geometry = L1Geometry(torch.tensor(region.center[None], dtype=dtype, device=dev_t),
                                  torch.tensor([region.eps], dtype=dtype, device=dev_t), lo_t, hi_t)
        else:
            geometry = BoxGeometry(lo_t, hi_t)
        A = torch.tensor(-c, dtype=dtype).reshape(1, 1, 1, -1)
        b = torch.tensor([-(upper - d)], dtype=dtype).reshape(1, 1, 1)
        cfg = config if config is not None else AttackConfig(seed=seed, patience=3)
        cand = falsify(network, geometry, A, b, config=cfg,
                       deadline=time.monotonic() + attack_share * left(), confirm=lambda i, x: False)
        offer(cand.x[0].detach().cpu().double().numpy(), "attack")
        pool = cand.pools[0]
        starts = [p.detach().cpu().double().numpy() for p in pool.x] if pool is not None and len(pool.x) else []
        for s in starts:
            offer(s, "attack")
        stage_seconds["attack"] = time.monotonic() - t

    # the MILP model (the walk solves its region LPs from it too)
    blocks = network.affine_blocks()
    model = None
    milp_info = None
    if not done() and left() > 0:
        try:
            model = encode(blocks, pre, (ly, uy), lo, hi, -c[None], np.array([0.0]), formulation=formulation,
                           constraints=cons)
        except InvalidInputError as exc:  # bounds that overflow float64: no big-M model, no walk, no MILP
            milp_info = {"status": "refused", "raw_status": str(exc), "nodes": 0, "dual_bound": None,
                         "warnings": [str(exc)]}

    def walk(walk_starts) -> None:
        """Relax-and-Walk from ``walk_starts`` in ``walk_share`` of the time left."""
        t = time.monotonic()
        res = relax_and_walk(model, blocks, starts=walk_starts, constraints=cons,
                             deadline=time.monotonic() + walk_share * left(), config=WalkConfig())
        offer(res.x, "walk")
        stage_seconds["walk"] = stage_seconds.get("walk", 0.0) + time.monotonic() - t

    # 3. Relax-and-Walk (before input splitting: the walk reaches the top of a point's linear
    # regions in a few LPs, where input splitting, which cannot end before the time does on most
    # networks, would only climb by its counterexamples)
    if model is not None and not done() and left() > 0:
        walk(([best["x"]] if best["x"] is not None else []) + starts)
    # few inputs: input splitting proves c^T f(x) + d < best + tol/2, or finds a better point
    # (then again from it); for such networks it closes what the MILP cannot (ACAS Xu)
    if network.input_size <= SPLIT_MAX_INPUTS and G is None and not isinstance(region, L1Ball):
        from .bab import SplitConfig, input_split
        from .problem import Problem
        from .specs import OutputSpec

        t = time.monotonic()
        while not done() and left() > 0 and best["x"] is not None:
            v = best["value"]
            target = v + 0.5 * (atol + rtol * abs(v))
            spec = OutputSpec([(-c[None], np.array([-(target - d)]))], network.output_size)
            res = input_split(Problem(network, Box(lo, hi), spec), deadline=deadline, config=SplitConfig(seed=seed))
            if res.status == "unsat":  # c^T f(x) + d < target everywhere on the box
                upper = min(upper, target + 4 * np.finfo(np.float64).eps * (abs(target) + abs(d)) + dev_c)
                break
            if res.status != "sat":
                # out of time or boxes: the margin target - d - c^T f(x) is at least open_lower
                # on the whole box, so c^T f(x) + d <= target - open_lower
                m = res.open_lower
                if math.isfinite(m):
                    upper = min(upper, target - m + 4 * np.finfo(np.float64).eps * (abs(target) + abs(d) + abs(m))
                                + dev_c)
                break
            offer(res.counterexample, "input_split")
            if best["value"] <= v:  # no progress in float64: leave it to the MILP
                break
            if model is not None and not done() and left() > 0:  # the top of the new point's regions
                walk([best["x"]])
        stage_seconds["input_split"] = time.monotonic() - t

    # 4. MILP
    if model is not None and not done() and left() > 0:
        t = time.monotonic()
        if cuts:  # after the walk, whose region LPs need no cuts; ideal rounds in a tenth of the time left
            from .milp.cuts import strengthen

            model, _ = strengthen(model, blocks, cuts, deadline=time.monotonic() + 0.1 * left(), config=SolverConfig())
            stage_seconds["cuts"] = time.monotonic() - t
        start = complete_assignment(model, blocks, best["x"]) if best["x"] is not None else None
        # stop once the proven bound is within the tolerance of the best value (min = -max + d)
        tol = atol + rtol * abs(best["value"]) if best["x"] is not None else 0.0
        threshold = -(best["value"] - d) - tol + dev_c if best["x"] is not None else np.inf
        try:
            # (an optimisation: its sub-MIP heuristics find better points, so they stay on whatever the threshold)
            res = solve_milp(model, time_limit=max(left(), 0.01), threshold=threshold, start=start,
                             config=SolverConfig(sub_mips=True), deadline=deadline)
        except SolverError as exc:  # HiGHS refused the model (a coefficient of 1e15 or more): no MILP bound
            res, milp_info = None, {"status": "refused", "raw_status": str(exc), "nodes": 0, "dual_bound": None,
                                    "warnings": [str(exc)]}
        if res is not None:
            if res.solution is not None:
                offer(res.solution[model.x_index], "milp")
            if res.status in (MilpStatus.OPTIMAL, MilpStatus.TIME_LIMIT, MilpStatus.INTERRUPTED,
                              MilpStatus.DUAL_BOUND_REACHED) and not res.warnings \
                    and np.isfinite(res.dual_bound):
                # max c^T y + d = -(min -c^T y) + d <= -(dual - margin) + d, widened by the deviation
                upper = min(upper, -(res.dual_bound - res.proof_margin) + d + dev_c
                            + 4 * np.finfo(np.float64).eps * (abs(res.dual_bound) + res.proof_margin + abs(d)))
            milp_info = {"status": res.status.value, "raw_status": res.raw_status, "nodes": res.nodes,
                         "dual_bound": res.dual_bound, "warnings": list(res.warnings)}
        stage_seconds["milp"] = time.monotonic() - t
    upper = float(upper)
    gap = upper - best["value"]
    return OptimizeResult(best_value=best["value"], upper_bound=upper, gap=gap, x=best["x"],
                          status="optimal" if done() else "timeout", seconds=time.monotonic() - t0,
                          stage_values=stage_values, stage_seconds=stage_seconds, milp=milp_info)


def optimize_instance(onnx_path: str, vnnlib_path: str, objective: str, *, sense: str = "max", timeout: float = 60.0,
                      **options) -> OptimizeResult:
    """:func:`optimize` over the input region of a VNNLIB file (its output constraints are
    ignored); a file with several input boxes is optimised over their union, each box getting an
    equal share of the time left. ``sense="min"`` minimises: the result's ``best_value`` is then
    the least value found and ``upper_bound`` the proven *lower* bound (``gap = best - bound``).
    The bounds hold on each box rounded outwards; reported points lie in its float64 points
    (strict bounds excluded). A term that a constant atom makes false (``(<= 1 0)``) holds no
    point and is dropped with its box; a file left with none is refused."""
    from .io.onnx import from_onnx
    from .io.vnnlib import load_vnnlib

    if sense not in ("max", "min"):
        raise InvalidInputError(f"`sense` must be 'max' or 'min', got {sense!r}")
    t0 = time.monotonic()
    net = from_onnx(onnx_path)
    c, d = parse_objective(objective, net.output_size)
    if sense == "min":
        c, d = -c, -d
    props = load_vnnlib(vnnlib_path, n_inputs=net.input_size, n_outputs=net.output_size)
    if not props:
        raise InvalidInputError("the file describes no input region: every term of its formula holds a constantly "
                                "false atom", path=str(vnnlib_path))
    boxes, seen = [], set()
    for p in props:
        key = (p.box.lower.tobytes(), p.box.upper.tobytes())
        if key not in seen:
            seen.add(key)
            boxes.append((p.box, p.inner))
    results = []
    for k, (box, inner) in enumerate(boxes):
        left = timeout - (time.monotonic() - t0)
        if left <= 0:
            break
        r = optimize(net, box, c, offset=d, timeout=left / (len(boxes) - k), inner=inner, **options)
        if inner is None:  # no float64 point in the exact box: its bound counts, no point of it does
            r = dataclasses.replace(r, best_value=-math.inf, x=None, gap=math.inf, status="timeout")
        results.append(r)
    found = [r for r in results if r.x is not None]
    best = max(found, key=lambda r: r.best_value) if found else None
    upper = max(r.upper_bound for r in results) if len(results) == len(boxes) else math.inf
    value = best.best_value if best is not None else -math.inf
    status = "optimal" if results and len(results) == len(boxes) and all(r.status == "optimal" for r in results) \
        and upper - value <= max(r.gap for r in results) else "timeout"
    seconds = time.monotonic() - t0
    stage_seconds = {}
    for r in results:
        for key, v in r.stage_seconds.items():
            stage_seconds[key] = stage_seconds.get(key, 0.0) + v
    sign = 1.0 if sense == "max" else -1.0
    return OptimizeResult(best_value=sign * value + 0.0, upper_bound=sign * upper + 0.0, gap=upper - value,
                          x=None if best is None else best.x, status=status, seconds=seconds,
                          stage_values={k: sign * v + 0.0 for k, v in (best.stage_values if best else {}).items()},
                          stage_seconds=stage_seconds, milp=best.milp if best else None)
