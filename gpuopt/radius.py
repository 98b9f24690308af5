"""Certified robustness radii: a bracket ``[lower, upper]`` on the smallest distortion that changes
the decision.

For a network ``f``, an input ``x0`` with label ``c`` and an unsafe set ``U`` the radius is
``r* = inf {||x - x0||_inf : x in [clip_lo, clip_hi], f(x) in U}``, where ``U`` is

- untargeted: ``{y : y_j >= y_c for some j != c}`` (:func:`gpuopt.specs.robustness`: a tie counts
  as a change);
- targeted at ``t`` with ``margin`` ``m`` (default 1; the form of the FF-DNN MIP paper's min-L1
  experiment, ``m = 1.2``): ``{y : y_t >= m y_j for every j != t}``, read literally as these
  linear inequalities on the logits, whatever their signs (with a negative ``y_j`` and ``m > 1``,
  ``m y_j`` is *below* ``y_j``, so the condition is then weaker than ``y_t >= y_j``).

:func:`certify_radius` returns

- ``lower``: an ``eps`` at which the pipeline proved ``unsat`` on the ball ``B(x0, eps)`` (clipped),
  so ``r* > lower``;
- ``upper``: the distance of a counterexample checked in float64 (rounded up), so ``r* <= upper``;
  or ``eps_max`` (``upper_found`` False) when none was found within it: then only the end of the
  search, no bound on ``r*`` and no counterexample's distance;
- ``status``: ``"exact"`` once ``upper - lower <= rtol * upper + atol`` (with a counterexample);
  ``"beyond_eps_max"`` when the whole ball of radius ``eps_max`` is proven safe: ``lower ==
  eps_max`` exactly, ``r* >= eps_max`` and the true radius may be larger (``upper`` is then
  ``eps_max`` with ``upper_found`` False, ``x_adv`` None); else ``"bracket"``.

It bisects between them: the attack first (:func:`gpuopt.attacks.pgd_attack` on the same unsafe
set, cheap, it moves ``upper``); when it finds nothing within ``eps_max``, one proof on the whole
ball of radius ``eps_max`` (:func:`gpuopt.verify` with a third of the time left; for L1 and L2
the ball bounds below), which ends a robust sample's search at once (``"beyond_eps_max"``); then
:func:`gpuopt.verify` at the midpoint with a share of the time left (``unsat`` moves ``lower``,
``sat`` moves ``upper`` to the new point's distance, anything else ends the bisection). With a
gap left, the counterexample is refined inside its own linear region: the
minimum-distortion model below with every binary fixed to its activation pattern, an LP (the
closest unsafe point of that region; it certifies nothing). Then the **minimum-distortion MILP**
(:func:`min_distortion_milp`) closes the bracket where HiGHS does: per disjunct ``k`` of the
unsafe set, ``min r`` s.t. ``|x_i - x0_i| <= r``, ``A_k f(x) <= b_k``, ``x`` in the clipped ball of
radius ``upper`` (where the minimum lies), on CROWN bounds over that ball; ``r* = min_k r_k``. Its
dual bounds (less HiGHS's tolerance margin) raise ``lower`` (``r* >= lower``), and its optimum,
pushed just past the decision boundary along the ray from ``x0`` until the float64 check accepts
it, lowers ``upper``.

For the **L1** norm (``norm="l1"``) the verifier is not used (its regions are boxes): the attack
runs on the L1 ball (:class:`gpuopt.attacks.geometry.L1Geometry`) to find ``upper``, and the
minimum-distortion MILP (``min sum_i s_i``, ``s_i >= |x_i - x0_i|``, ``sum_i s_i <= radius``, on
CROWN bounds over the ball's box intersected with the exact first layer over the ball,
:mod:`gpuopt.bounds.l1`) gives ``lower`` and closes the bracket where HiGHS finishes.

For the **L2** norm (``norm="l2"``) the exact problem is a mixed-integer QP, which HiGHS does not
solve, so the answer is a bracket: ``upper`` from the attack on the L2 ball
(:class:`gpuopt.attacks.geometry.L2Geometry`; then the decision boundary along the segment to
its point, and bisection of ``eps`` with the attack), ``lower`` by bisection of ``eps`` with
:func:`ball_row_bounds`: CROWN over the ball's box ``B_inf(x0, eps)`` (clipped) in which every linear
bound ``a^T x + c`` is also concretised over the L2 ball, ``a^T x0 + c - eps ||a||_2``, and the
larger kept, layer by layer (:func:`gpuopt.bounds.crown.crown` with ``ball``). ``status`` is
``exact`` only where the two ends meet. The same bisection, with the L1 ball's dual norm
(``eps max |a|``), gives L1 radii their first certified lower end, before the MILP.

A chain of affine layers and Sigmoid/Tanh (and ReLU) layers has no exact linear form: its L-inf
radius is bracketed by the attack and the bisection with the verifier alone (whose proofs there
rest on the linear relaxation of :mod:`gpuopt.bounds.smooth` and interval splitting), without the
region LP and the MILP; its L1 and L2 radii are refused.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .attacks import AttackConfig, pgd_attack
from .attacks.geometry import L1Geometry, L2Geometry
from .attacks.search import falsify
from .check import check_counterexample
from .errors import InvalidInputError, SolverError
from .problem import Problem
from .network import Network
from .lowering import check_lowering_size
from .regions import Box, LinfBall, clip_pair
from .specs import OutputSpec, robustness

__all__ = ["RadiusResult", "certify_radius", "min_distortion_milp", "ball_row_bounds"]

NORMS = ("linf", "l1", "l2")


@dataclass(frozen=True, eq=False)
class RadiusResult:
    """``lower`` certified (``r* >= lower``); ``upper`` attained, ``r* <= upper``, when
    ``upper_found``, else ``eps_max``: the end of the search, no bound and no counterexample;
    ``x_adv`` the float64 counterexample at distance ``<= upper`` when found; ``status``
    ``"exact"`` (``upper`` found and within tolerance of ``lower``), ``"beyond_eps_max"`` (the
    ball of radius ``eps_max`` proven safe: ``lower == eps_max``, no counterexample, the true radius
    may be larger) or ``"bracket"``; ``seconds``; ``verify_calls`` the number of verification
    calls (verifier runs for L-inf, ball-bound proofs for L1 and L2)."""

    lower: float
    upper: float
    upper_found: bool
    status: str
    x_adv: np.ndarray | None
    seconds: float
    verify_calls: int


def _distance_up(x: np.ndarray, x0: np.ndarray, norm: str = "linf") -> float:
    """``||x - x0||`` rounded up: each difference and (for L1) the sum are rounded in float64,
    so the sum is widened by ``(n + 2) u`` of itself."""
    d = np.abs(np.asarray(x, dtype=np.float64) - x0)
    d = np.nextafter(d, np.inf)
    if norm == "linf":
        return float(np.max(d))
    if norm == "l2":  # the sum of squares widened by (n + 4) u, its square root by 2 u
        eps = np.finfo(np.float64).eps
        ss = float(np.nextafter(float(np.sum(d * d)) * (1.0 + (d.size + 4) * eps), np.inf))
        return float(np.nextafter(math.sqrt(ss) * (1.0 + 2 * eps), np.inf))
    total = float(np.sum(d))
    return float(np.nextafter(total * (1.0 + (d.size + 2) * np.finfo(np.float64).eps), np.inf))


def certify_radius(network: Network, x, label: int, *, norm: str = "linf", eps_max: float = 1.0,
                   clip=None, timeout: float = 60.0, rtol: float = 1e-3, atol: float = 1e-6,
                   config=None, seed: int = 0, target: int | None = None, margin: float | None = None) -> RadiusResult:
    """The bracket on the ``norm`` robustness radius of ``network`` at ``x`` (flattened or input
    shaped) for class ``label`` (or towards ``target`` with ``margin``), searched in
    ``[0, eps_max]`` within ``timeout`` seconds.

    ``clip`` is the valid input range, ``(low, high)``: numbers or arrays broadcastable to ``x``
    (or of its size), ``low <= high``, no NaN, None for an unbounded side; ``x`` must lie inside
    it. The default ``None`` leaves the inputs unbounded: give the range explicitly where inputs
    have one (``clip=(0, 1)`` for images scaled to [0, 1]), else the radius counts points outside
    it. A final Softmax or LogSoftmax that keeps the compared outputs' order is taken off
    (:mod:`gpuopt.output_order`). ``status`` ``"beyond_eps_max"``: the whole ball of radius
    ``eps_max`` is proven safe, ``lower == eps_max`` (the true radius may be larger). See the
    module docstring."""
    from .bounds.smooth import smooth_chain
    from .errors import NotPiecewiseLinearError
    from .output_order import SOFTMAX_SPREAD, final_order_layer, reduce_output_order
    from .verify import VerifyConfig, verify

    t0 = time.monotonic()
    if not isinstance(network, Network):
        raise InvalidInputError(f"`network` must be a gpuopt Network (see gpuopt.from_torch), got {type(network).__name__}")
    if norm not in NORMS:
        raise InvalidInputError(f"`norm` must be one of {', '.join(NORMS)}, got {norm!r}")
    for name, v, low in (("eps_max", eps_max, 0.0), ("timeout", timeout, 0.0), ("rtol", rtol, 0.0), ("atol", atol, 0.0)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < low:
            raise InvalidInputError(f"`{name}` must be a finite number >= {low:g}, got {v!r}")
    try:
        x_arr = np.asarray(x)
        ok = x_arr.dtype.kind in "biuf"
    except Exception:  # noqa: BLE001 - a ragged list and the like
        ok = False
    if not ok:
        raise InvalidInputError(f"`x` must be an array of {network.input_size} real numbers, got {type(x).__name__}")
    x0 = x_arr.astype(np.float64).reshape(-1)
    if x0.size != network.input_size:
        raise InvalidInputError(f"`x` must hold {network.input_size} numbers (the network's input size), got {x0.size}")
    bad = np.flatnonzero(~np.isfinite(x0))
    if bad.size:
        i = int(bad[0])
        where = i if x_arr.ndim <= 1 else tuple(int(k) for k in np.unravel_index(i, x_arr.shape))
        more = f" (and {bad.size - 1} more)" if bad.size > 1 else ""
        raise InvalidInputError(f"`x` must be finite, but holds {x0[i]} at index {where}{more}")
    n_cls = network.output_size
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= int(label) < n_cls:
        raise InvalidInputError(f"`label` must be a class index in [0, {n_cls}), got {label!r}")
    label = int(label)
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, np.integer))
                               or not 0 <= int(target) < n_cls or int(target) == label):
        raise InvalidInputError(f"`target` must be a class index in [0, {n_cls}) other than `label`, got {target!r}")
    if margin is not None and (target is None or isinstance(margin, bool) or not isinstance(margin, (int, float))
                               or not math.isfinite(margin) or margin <= 0):
        raise InvalidInputError(f"`margin` must be a finite number > 0 and needs a `target`, got {margin!r}")
    lo_clip, hi_clip = clip_pair(clip, x_arr.shape, x0.size)
    for bound, side, outside in ((lo_clip, "below its low", np.less), (hi_clip, "above its high", np.greater)):
        bad = np.flatnonzero(outside(x0, bound)) if bound is not None else ()
        if len(bad):
            raise InvalidInputError(f"`x` lies outside `clip` ({side} end) at index {int(bad[0])}: the clean input "
                                    "must be a valid input")
    config = config if config is not None else VerifyConfig(device="cpu")
    if target is None:
        spec = robustness(label, n_cls)
    else:  # one disjunct: m y_j - y_t <= 0 for every j != t
        m = 1.0 if margin is None else float(margin)
        rows = np.array([m * np.eye(n_cls)[j] - np.eye(n_cls)[int(target)] for j in range(n_cls) if j != int(target)])
        spec = OutputSpec([(rows, np.zeros(len(rows)))], n_cls)
    # a final Softmax or LogSoftmax that keeps the order of the compared outputs over the largest
    # ball comes off (gpuopt.output_order): the radius is the logits' one
    reduction = reduce_output_order([Problem(network, LinfBall(x0, eps_max, lo_clip, hi_clip), spec)])
    if reduction is not None:
        network = reduction.problems[0].network
    smooth = False  # a chain with Sigmoid/Tanh: L-inf bisection with the verifier alone, no MILP
    try:
        check_lowering_size(network)  # the certified side needs the linear form: refused by name
    except NotPiecewiseLinearError as err:
        if smooth_chain(network) is not None:
            if norm != "linf":
                raise NotPiecewiseLinearError(
                    f"{err}; its L1 and L2 radii need that form, its L-inf radius does not (norm='linf')") from None
            smooth = True
        elif final_order_layer(network) is None:
            raise
        else:
            raise NotPiecewiseLinearError(
                f"{err}; its final Softmax or LogSoftmax stays: the spec's rows do not only compare outputs (a "
                "`target` with a `margin` other than 1), or a Softmax's logits may spread by more than "
                f"{SOFTMAX_SPREAD:g} over the ball of radius eps_max (a smaller eps_max may qualify)") from None
    deadline = t0 + timeout
    calls = 0

    def left() -> float:
        return deadline - time.monotonic()

    def ball(eps: float) -> LinfBall:
        return LinfBall(x0, eps, lo_clip, hi_clip)

    # the clean point itself, decided soundly (a float64 tie is not a counterexample by itself)
    if check_counterexample(Problem(network, Box(x0, x0), spec), x0).ok:
        return RadiusResult(0.0, 0.0, True, "exact", x0, time.monotonic() - t0, 0)

    lower, upper, x_adv = 0.0, float(eps_max), None
    A, b = spec.padded()

    def attack_at(eps: float):
        """A float64-checked point of the unsafe set within ``eps``, or None."""
        problem = Problem(network, ball(eps), spec)
        box = problem.region.to_box()
        found = []

        def confirm(_, xa):
            c = check_counterexample(problem, xa.detach().to("cpu", torch.float64).numpy())
            if c.ok and not found:
                found.append(c.x)
            return c.ok

        cfg = AttackConfig(restarts=16, steps=50, rounds=1, seed=seed)
        if norm == "linf":
            pgd_attack(network, box.lower[None], box.upper[None], A, b, dtype=torch.float64, confirm=confirm,
                       config=cfg, deadline=deadline)
        else:  # the L1 or L2 ball within the clip box (the check clamps into its box hull)
            t = lambda v: torch.tensor(np.array(v, dtype=np.float64))[None]  # noqa: E731
            lo_b = np.full(x0.size, -np.inf) if lo_clip is None else np.array(np.broadcast_to(lo_clip, x0.shape))
            hi_b = np.full(x0.size, np.inf) if hi_clip is None else np.array(np.broadcast_to(hi_clip, x0.shape))
            kind = L1Geometry if norm == "l1" else L2Geometry
            geometry = kind(t(x0), torch.tensor([float(eps)], dtype=torch.float64), t(lo_b), t(hi_b))
            falsify(network, geometry, A[None], b[None], config=cfg, deadline=deadline, confirm=confirm)
        return found[0] if found else None

    # upper: the attack at eps_max, then at half the distance found, while it keeps finding
    probe = eps_max
    for _ in range(12):
        if left() <= 0:
            break
        xa = attack_at(probe)
        if xa is None:
            break
        x_adv, upper = xa, min(upper, _distance_up(xa, x0, norm))
        probe = upper / 2
    upper_found = x_adv is not None

    def closer(xa):
        """The point nearest ``x0`` on the segment to ``xa`` that still passes the float64 check
        (bisection of the segment; the decision boundary crosses it somewhere)."""
        problem = Problem(network, ball(_distance_up(xa, x0, norm)), spec)
        lo_t, hi_t, best = 0.0, 1.0, xa
        for _ in range(40):
            t = (lo_t + hi_t) / 2
            c = check_counterexample(problem, x0 + t * (xa - x0))
            if c.ok:
                hi_t, best = t, c.x
            else:
                lo_t = t
        return best

    def prove(eps: float) -> str:
        """:func:`gpuopt.verify` on the ball of radius ``eps`` with a third of the time left: its
        status; a counterexample moves ``upper``."""
        nonlocal x_adv, upper, upper_found, calls
        v = verify(network, ball(eps), spec, timeout=min(max(0.05, left() / 3), left()), config=config)
        calls += 1
        if v.status.value == "sat":
            x_adv = np.asarray(v.counterexample, dtype=np.float64)
            upper, upper_found = min(upper, _distance_up(x_adv, x0)), True
        return v.status.value

    # eps_max itself when the attack found nothing there: one proof on the whole ball (the
    # bisections below only probe points strictly inside their bracket), which ends a sample
    # robust beyond eps_max at once; a failed proof leaves the bisections as they were
    if not upper_found and left() > 0:
        if norm == "linf":
            proven = prove(float(eps_max)) == "unsat"
        else:
            proven = _ball_proves(network, x0, float(eps_max), (lo_clip, hi_clip), spec, config, deadline, norm)
            calls += 1
        if proven:
            lower = float(eps_max)

    if norm != "linf" and x_adv is not None:
        # upper: the boundary along the segment to the attack's point (then, for L2, attack bisection)
        x_adv = closer(x_adv)
        upper = min(upper, _distance_up(x_adv, x0, norm))

    # bisection with the verifier between the certified lower and the attained upper (its
    # regions are boxes: L-inf only)
    while norm == "linf" and left() > 0 and upper - lower > rtol * upper + atol:
        mid = (lower + upper) / 2
        status = prove(mid)
        if status == "unsat":
            lower = mid
        elif status != "sat":
            break
    # L1 and L2: bisection with the ball bounds of ball_row_bounds (a certified lower end)
    search = upper  # the bound bisection's own upper end (a failed proof is no counterexample)
    while norm != "linf" and left() > 0 and search - lower > rtol * search + atol:
        mid = (lower + search) / 2
        if _ball_proves(network, x0, mid, (lo_clip, hi_clip), spec, config, deadline, norm):
            lower = mid
        else:
            search = mid
        calls += 1
    floor = lower  # the attack's bisection between the certified lower end and upper
    while norm == "l2" and upper_found and left() > 0 and upper - floor > rtol * upper + atol:
        mid = (floor + upper) / 2
        xa = attack_at(mid)
        xa = None if xa is None else closer(xa)
        if xa is None or _distance_up(xa, x0, norm) >= upper:  # nothing closer found at mid
            floor = mid
            continue
        x_adv, upper = xa, _distance_up(xa, x0, norm)
    if norm != "l2" and not smooth and upper_found and left() > 0 and upper - lower > rtol * upper + atol:
        # the attack's point refined inside its own linear region (an LP: the binaries fixed)
        _, r_x = min_distortion_milp(network, x0, spec, upper, clip=(lo_clip, hi_clip), deadline=deadline,
                                     norm=norm, region_of=x_adv)
        if r_x is not None and _distance_up(r_x, x0, norm) < upper:
            x_adv, upper = r_x, _distance_up(r_x, x0, norm)
    if norm != "l2" and not smooth and (upper_found or norm == "l1") and left() > 0 and upper - lower > rtol * upper + atol:
        m_lower, m_x = min_distortion_milp(network, x0, spec, upper, clip=(lo_clip, hi_clip), deadline=deadline,
                                           norm=norm)
        lower = max(lower, min(m_lower, upper))
        if m_x is not None and _distance_up(m_x, x0, norm) < upper:
            x_adv, upper, upper_found = m_x, _distance_up(m_x, x0, norm), True
    if upper_found and upper - lower <= rtol * upper + atol:
        status = "exact"
    elif not upper_found and lower >= eps_max:  # the ball of eps_max proven safe (by a proof or the MILP)
        status, lower = "beyond_eps_max", float(eps_max)
    else:
        status = "bracket"
    return RadiusResult(lower, upper, upper_found, status, x_adv, time.monotonic() - t0, calls)


def ball_row_bounds(network: Network, x0: np.ndarray, eps: float, clip, C: np.ndarray, *, norm: str = "l2",
                    alpha_steps: int = 20, deadline: float | None = None) -> np.ndarray:
    """Sound lower bounds of ``C f(x)`` (rows of ``C``) over ``{||x - x0|| <= eps}`` (``norm``
    ``"l2"`` or ``"l1"``) within the clip box ``clip = (lower, upper)`` (``None`` ends:
    unbounded): CROWN on the ball's box with every layer also concretised over the ball
    (``crown(..., ball=...)``); see the module docstring."""
    from .bounds import alpha_crown_linear_lower, crown, crown_linear_lower

    box = LinfBall(x0, eps, *clip).to_box()
    lo, hi = torch.tensor(np.array(box.lower))[None], torch.tensor(np.array(box.upper))[None]
    ball = (torch.tensor(np.array(x0, dtype=np.float64))[None], torch.tensor([float(eps)], dtype=torch.float64), norm)
    Ct = torch.as_tensor(np.asarray(C, dtype=np.float64))[None]
    bnd = crown(network, lo, hi, deadline=deadline, ball=ball)
    rows = crown_linear_lower(network, lo, hi, Ct, bnd, ball=ball)[0][0]
    if alpha_steps > 0:  # alpha-optimised over the box, on the ball's intermediate bounds: also sound
        rows = torch.maximum(rows, alpha_crown_linear_lower(network, lo, hi, Ct, bnd, steps=alpha_steps,
                                                            deadline=deadline)[0])
    return rows.numpy()


def _ball_proves(network: Network, x0, eps: float, clip, spec: OutputSpec, config, deadline, norm: str) -> bool:
    """Whether :func:`ball_row_bounds` proves every disjunct of ``spec`` unreachable in the ball."""
    from .bounds.base import rounding_pad

    from .check import parameter_deviation

    A, b = spec.padded()
    K, M, n_out = A.shape
    A_flat = A.reshape(K * M, n_out).numpy()
    rows = ball_row_bounds(network, x0, eps, clip, A_flat, norm=norm,
                           alpha_steps=getattr(config, "alpha_steps", 20), deadline=deadline)
    b = b.reshape(-1).numpy()
    finite = np.isfinite(b)
    margin = np.where(finite, rows - np.where(finite, b, 0.0), -np.inf)
    margin = margin - rounding_pad(torch.as_tensor(np.where(finite, np.abs(b), 0.0)), 1).numpy()
    # the bounds are the lowered float64 blocks'; the source model may deviate from them
    box = LinfBall(x0, eps, *clip).to_box()
    dev = parameter_deviation(network, np.array(box.lower)[None], np.array(box.upper)[None])
    if dev is not None:
        widen = (np.abs(A_flat) @ dev[0]) * (1 + 4 * (n_out + 2) * np.finfo(np.float64).eps)
        margin = np.nextafter(margin - widen, -np.inf)
    return bool(np.all(margin.reshape(K, M).max(axis=1) > 0))


def min_distortion_milp(network: Network, x0: np.ndarray, spec: OutputSpec, radius: float, *, clip=(None, None),
                        deadline: float | None = None, norm: str = "linf",
                        region_of: np.ndarray | None = None) -> tuple[float, np.ndarray | None]:
    """``(lower, x)``: a certified lower bound on the ``norm`` distance from ``x0`` to the unsafe set
    of ``spec`` within the clipped ball of ``radius`` (``radius`` itself for a disjunct the MILP
    shows unreachable there), and the best float64-checked point found (or None); see the
    module docstring. Disjuncts left unbounded by the deadline give ``lower = 0``.

    With ``region_of`` (a point), every binary is fixed to that point's activation pattern: the
    model is then the LP of the minimum distortion inside its linear region (the refinement of an
    attack's point); ``lower`` is then 0, since one region certifies nothing."""
    from .milp.encode import complete_assignment
    import scipy.sparse as sp
    from dataclasses import replace

    from .bounds.crown import crown
    from .milp.encode import encode
    from .milp.highs import MilpStatus, solve_milp

    region = LinfBall(x0, radius, clip[0], clip[1])  # for L1: the ball's box hull
    problem = Problem(network, region, spec)
    box = region.to_box()
    lo, hi = np.array(box.lower), np.array(box.upper)
    b_ = crown(network, torch.tensor(lo[None]), torch.tensor(hi[None]), deadline=deadline)
    pre = [(l[0].numpy(), u[0].numpy()) for l, u in b_.pre_activation]
    out = (b_.output[0][0].numpy(), b_.output[1][0].numpy())
    if norm == "l1":  # the exact first layer over the ball, intersected
        from .bounds.l1 import l1_ball_bounds

        pre1, out1 = l1_ball_bounds(network.affine_blocks(), x0, radius, lo, hi)
        pre = [(np.maximum(a, a1), np.minimum(c_, c1)) for (a, c_), (a1, c1) in zip(pre, pre1)]
        out = (np.maximum(out[0], out1[0]), np.minimum(out[1], out1[1]))
    if not all(np.all(np.isfinite(a)) for pair in pre + [out] for a in pair):
        return 0.0, None
    blocks = network.affine_blocks()
    n = x0.size
    # the MILP sees the lowered float64 blocks: widen each row by their deviation from the
    # network (a relaxation, so its bounds hold for the network itself)
    from .check import parameter_deviation

    dev = parameter_deviation(network, lo[None], hi[None])
    lowers, best_x, best_d = [], None, math.inf
    for A, b in spec.disjuncts:
        if dev is not None:
            b = np.nextafter(b + np.abs(A) @ dev[0], np.inf)
        left = math.inf if deadline is None else deadline - time.monotonic()
        if left <= 0:
            return 0.0, best_x
        m = encode(blocks, pre, out, lo, hi, A, b)
        # L-inf: one more column r, |x_i - x0_i| <= r, min r; L1: columns s_i >= |x_i - x0_i|,
        # sum_i s_i <= radius (the bounds hold on that ball only), min sum_i s_i; and the
        # disjunct's rows as constraints
        r = m.n_vars
        n_new = 1 if norm == "linf" else n
        s_cols = np.full(n, r) if norm == "linf" else r + np.arange(n)
        i = np.arange(n)
        rows = sp.coo_matrix((np.concatenate([np.ones(n), -np.ones(n), -np.ones(n), -np.ones(n)]),
                              (np.concatenate([i, i, n + i, n + i]),
                               np.concatenate([m.x_index, s_cols, m.x_index, s_cols]))),
                             shape=(2 * n, r + n_new))
        k = A.shape[0]
        Ay = sp.coo_matrix(A)
        spec_rows = sp.coo_matrix((Ay.data, (Ay.row, m.y_index[Ay.col])), shape=(k, r + n_new))
        blocks_ = [sp.hstack([m.A, sp.csr_matrix((m.A.shape[0], n_new))]), rows, spec_rows]
        row_upper = [m.row_upper, x0, -x0, b]
        if norm == "l1":
            blocks_.append(sp.csr_matrix((np.ones(n), (np.zeros(n, dtype=int), s_cols)), shape=(1, r + n_new)))
            row_upper.append([radius])
        A_all = sp.vstack(blocks_).tocsr()
        c = np.zeros(r + n_new)
        c[r:] = 1.0
        model = replace(m, c=c, offset=0.0, A=A_all,
                        row_lower=np.concatenate([m.row_lower, np.full(A_all.shape[0] - m.A.shape[0], -np.inf)]),
                        row_upper=np.concatenate([np.asarray(u_, dtype=np.float64).reshape(-1) for u_ in row_upper]),
                        col_lower=np.concatenate([m.col_lower, np.zeros(n_new)]),
                        col_upper=np.concatenate([m.col_upper, np.full(n_new, radius)]),
                        integrality=np.concatenate([m.integrality, np.zeros(n_new, dtype=bool)]))
        if region_of is not None:  # the binaries at the point's pattern: an LP inside its region
            d = complete_assignment(m, blocks, np.clip(region_of, lo, hi))[m.integrality]
            col_lower, col_upper = model.col_lower.copy(), model.col_upper.copy()
            ints = np.flatnonzero(model.integrality)
            col_lower[ints], col_upper[ints] = d, d
            model = replace(model, col_lower=col_lower, col_upper=col_upper)
        try:
            res = solve_milp(model, time_limit=min(left, 1e7), threshold=np.inf, deadline=deadline)
        except SolverError:  # HiGHS refused the model (a coefficient of 1e15 or more): nothing proven here
            lowers.append(0.0)
            continue
        if region_of is not None:
            lowers.append(0.0)
        elif res.status is MilpStatus.INFEASIBLE:
            # unreachable within the ball, if the verification MILP (minimise the disjunct's margin)
            # proves it through its dual bound and tolerance margin; HiGHS's word alone is not taken
            left = math.inf if deadline is None else deadline - time.monotonic()
            try:
                check = solve_milp(m, time_limit=min(max(left, 0.01), 1e7), threshold=0.0, deadline=deadline) \
                    if left > 0 else None
            except SolverError:
                check = None
            lowers.append(radius if check is not None and check.proves_above(0.0) else 0.0)
        elif res.status in (MilpStatus.OPTIMAL, MilpStatus.TIME_LIMIT) and not res.warnings \
                and np.isfinite(res.dual_bound):
            lowers.append(max(0.0, float(np.nextafter(res.dual_bound - res.proof_margin, -np.inf))))
        else:
            lowers.append(0.0)
        if res.solution is not None:
            x = res.solution[m.x_index]
            for push in (0.0, 1e-12, 1e-9, 1e-7, 1e-5, 1e-3):  # just past the boundary, along the ray
                xp = np.clip(x0 + (x - x0) * (1.0 + push), lo, hi)
                chk = check_counterexample(problem, xp)
                if chk.ok:
                    d = _distance_up(chk.x, x0, norm)
                    if d < best_d:
                        best_x, best_d = chk.x, d
                    break
    return (min(lowers) if lowers else 0.0), best_x
