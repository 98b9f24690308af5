"""Branch and bound over the input box (input splitting), for networks with few inputs.

The box ``X`` is covered by sub-boxes kept on a stack (depth first, so memory stays bounded).
For a batch of sub-boxes at a time, CROWN lower-bounds every disjunct margin
``max_i (A_k y - b_k)_i``; a disjunct whose bound is ``> 0`` is closed on that sub-box, and a
sub-box with every disjunct closed is done. Once the search has bounded
:attr:`SplitConfig.alpha_after` boxes or seconds (a problem CROWN does not settle quickly), the sub-boxes CROWN
leaves open also get alpha-CROWN on the spec rows (optimised lower slopes, every one sound). Where a
property holds by a small margin across a steep ridge, CROWN's fixed slopes leave boxes open at
any size, while the optimised ones close them: on ACAS Xu 4_2 prop_2 the open sub-boxes had
shrunk to 2^-52 of the box without closing, and with alpha-CROWN the search ends in about 8,000
boxes. A sub-box inherits its parent's bounds, which hold on
it too: CROWN intersects each layer's bounds with them before forming that layer's relaxation, and
neurons they already fix need no backward pass. Several rows in a disjunct are bounded jointly (:func:`_max_of_affine_lower`). For the others,
two points are checked in float64 (the
centre, and the corner minimising the linear lower bound of the weakest disjunct): a point with
``margin <= 0`` is a counterexample. Remaining sub-boxes are halved along the input dimension with
the largest ``|coefficient| * width`` in that linear bound (the "smear" rule) and pushed back.
With a single open disjunct and few inputs, strong branching overrides that choice: each input
dimension's two halves are bounded, and the dimension whose halves leave the least open wins
(:func:`_strong_branch`). It bounds ``2d`` halves per split instead of 2, but on ACAS Xu it cut
the sub-boxes needed about fourfold; with several disjuncts its one-step lookahead on the
weakest disjunct misled it as often as not, so the smear rule stays there.

Given MILP proof settings, the search is a hybrid: a sub-box that stays open with few unstable
ReLUs goes to an exact MILP over that box (:func:`_milp_leaves`), which closes it, finds a
counterexample in it, or leaves it to be split further.

Midpoint splits cover the parent exactly (both halves share the same float midpoint), so
``unsat`` follows when the stack empties: every point of ``X`` lies in a sub-box where each
disjunct was proven unreachable by sound bounds or by a MILP proof. The search is complete for continuous piecewise
linear networks given time, but its cost grows quickly with the input dimension, so the pipeline
uses it only below :attr:`SplitConfig.max_input_dim`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from .attacks import AttackConfig, pgd_attack
from .bounds.base import Bounds, center_radius, disjunct_lower_bounds, rounding_pad
from .bounds.crown import alpha_crown_linear_lower, crown_linear_lower
from .bounds.forward import intermediate_bounds
from .check import check_counterexample
from .errors import InvalidInputError
from .milp.box import BoxProof, prove_box
from .problem import Problem

__all__ = ["SplitConfig", "SplitResult", "input_split"]

#: a batch of sub-boxes is sized (from the last batch's time per box) to take about this long at
#: most, and at most a quarter of the time left
BATCH_SECONDS = 5.0
#: strong branching picks its dimension over the smear rule's when its halves' score beats twice
#: the box's own bound by this share of that bound, and the dimension is not already this many
#: times narrower (relative to the input box) than the relatively widest one
STRONG_GAIN = 0.01
BALANCE = 1 / 32
#: stacked sub-boxes keep their parent's bounds while these copies take at most this many bytes
PRIOR_BYTES = 1 << 29


@dataclass(frozen=True)
class SplitConfig:
    """``max_input_dim``: the pipeline uses input splitting only up to this many inputs;
    ``batch_size``: sub-boxes bounded per step; ``max_boxes``: stack size at which the search
    gives up with ``unknown`` (memory guard); each step runs PGD (``attack_restarts`` x
    ``attack_steps``) in the ``attack_boxes`` sub-boxes with the weakest bounds (0 turns it off);
    ``strong_branching_dims``: with one open disjunct, sub-boxes with at most this many splittable
    dimensions choose their split by strong branching (:func:`_strong_branch`; 0 turns it off).
    When :func:`input_split` is given MILP proof settings, a sub-box left open with at most
    ``milp_unstable`` unstable ReLUs (0 turns it off), after ``milp_min_age`` splits that did not
    close it at that size, goes to an exact MILP of at most ``milp_time_limit`` seconds, while the
    MILPs have used at most ``milp_share`` of the search's time, times the share of their boxes
    they closed (:func:`_milp_leaves`). After ``alpha_after`` boxes, or ``alpha_after_seconds`` of
    search, whichever comes first, the boxes CROWN leaves open get ``alpha_steps`` of alpha-CROWN on
    the spec rows (0 turns it off). (Its passes cost a few spec rows each: on ACAS Xu the boxes come
    by thousands a second and the count binds first; on cifar_biasfield's CNN a box's bounds take
    seconds, the steps on eight boxes 1.5 s, and raised the spec rows' bounds by 0.1 to 0.19.)"""

    max_input_dim: int = 16
    batch_size: int = 256
    max_boxes: int = 1_000_000
    attack_boxes: int = 16
    attack_restarts: int = 16
    attack_steps: int = 20
    strong_branching_dims: int = 8
    milp_unstable: int = 16
    milp_min_age: int = 1
    milp_time_limit: float = 2.0
    milp_share: float = 0.75
    alpha_steps: int = 10
    alpha_after: int = 2048
    alpha_after_seconds: float = 10.0
    seed: int = 0

    def __post_init__(self):
        for name in ("max_input_dim", "batch_size", "max_boxes", "attack_restarts"):
            if int(getattr(self, name)) < 1:
                raise InvalidInputError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        for name in ("milp_unstable", "milp_min_age", "alpha_steps", "alpha_after"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InvalidInputError(f"`{name}` must be an integer >= 0, got {v!r}")
        if not self.alpha_after_seconds >= 0:  # (NaN refused too)
            raise InvalidInputError(f"`alpha_after_seconds` must be >= 0, got {self.alpha_after_seconds!r}")
        if not self.milp_time_limit > 0:
            raise InvalidInputError(f"`milp_time_limit` must be > 0, got {self.milp_time_limit!r}")
        if not 0 <= self.milp_share <= 1:
            raise InvalidInputError(f"`milp_share` must be in [0, 1], got {self.milp_share!r}")


@dataclass(frozen=True, eq=False)
class SplitResult:
    """``status`` in ``{"unsat", "sat", "timeout", "unknown"}``; ``counterexample`` (float64
    input) when ``sat``; ``boxes`` the number of sub-boxes bounded; ``margin_lower`` the smallest
    proven disjunct bound over closed sub-boxes (a certificate strength indicator);
    ``closed_fraction`` the share of the input box's volume (over its non-degenerate dimensions)
    in sub-boxes where every disjunct was proven unreachable: the anytime answer of a search
    that ran out of time (1 when ``unsat``); ``milp_boxes`` the sub-boxes closed by MILP;
    ``open_lower`` a lower bound of every searched disjunct's margin over the whole input box: the
    least of the closed sub-boxes' proven bounds and the open ones' last bounds (a box not yet
    bounded has its parent's), ``-inf`` before the first bounding; the anytime bound of a search
    that ran out of time or boxes (``margin_lower`` when ``unsat``)."""

    status: str
    counterexample: np.ndarray | None
    boxes: int
    margin_lower: float
    closed_fraction: float = 0.0
    milp_boxes: int = 0
    open_lower: float = -math.inf


def _max_of_affine_lower(rows: torch.Tensor, coef: torch.Tensor, rad: torch.Tensor, steps: int = 30):
    """Lower bound of ``max_i r_i(x)`` over a box from per-row affine minorants.

    CROWN gives ``r_i(x) >= f_i(x) = a_i . (x - m) + o_i`` on the box (``m`` its centre,
    ``o_i = rows_i + |a_i| . rad`` so that ``min f_i = rows_i``). For any ``lam`` in the simplex,
    ``max_i r_i >= sum_i lam_i f_i``, whose minimum over the box is
    ``g(lam) = sum_i lam_i o_i - |sum_i lam_i a_i| . rad``. ``g`` is concave; a few exponentiated
    supergradient steps maximise it (every iterate is a valid bound, the best is kept). This is
    much tighter than ``max_i rows_i`` where the rows cross inside the box.

    ``rows`` ``(n, K, M)`` (padded rows ``-inf``), ``coef`` ``(n, K, M, d)``, ``rad`` ``(n, d)``.
    Returns ``(bound (n, K), combined coefficient (n, K, d))``.
    """
    valid = torch.isfinite(rows)
    safe_rows = torch.where(valid, rows, torch.zeros_like(rows))
    mag = (coef.abs() * rad[:, None, None, :]).sum(-1)
    off = safe_rows + mag
    logits = torch.where(valid, torch.zeros_like(rows), torch.full_like(rows, -math.inf))
    best = torch.full(rows.shape[:2], -math.inf, dtype=rows.dtype)
    best_a = coef[:, :, 0].clone()
    for t in range(steps):
        lam = torch.softmax(logits, dim=-1)
        a = (lam[..., None] * coef).sum(-2)
        g = (lam * off).sum(-1) - (a.abs() * rad[:, None, :]).sum(-1)
        abs_sum = (lam * (safe_rows.abs() + 2 * mag)).sum(-1) + (a.abs() * rad[:, None, :]).sum(-1)
        g = g - rounding_pad(abs_sum, rows.shape[-1] + 2 * rad.shape[-1] + 4)
        better = g > best
        best = torch.where(better, g, best)
        best_a = torch.where(better[..., None], a, best_a)
        grad = off - (torch.sign(a)[:, :, None, :] * coef * rad[:, None, None, :]).sum(-1)
        grad = torch.where(valid, grad, torch.zeros_like(grad))
        scale = grad.abs().amax(-1, keepdim=True).clamp(min=1e-300)
        logits = logits + (2.0 / math.sqrt(t + 1)) * grad / scale
        # keep weights away from denormals (they are slow and add nothing to the bound)
        logits = (logits - logits.amax(-1, keepdim=True)).clamp(min=-30.0)
        logits = torch.where(valid, logits, torch.full_like(logits, -math.inf))
    return best, best_a


def _cat_bounds(parts: list, sizes: list) -> Bounds | None:
    """The chunks' bounds as one batch; a chunk without bounds (``None``, ``sizes[i]`` boxes)
    gets infinite ones, which say nothing. ``None`` when no chunk has bounds."""
    like = next((p for p in parts if p is not None), None)
    if like is None:
        return None

    def pair(get_l, get_u):
        lows, ups = [], []
        for p, n in zip(parts, sizes):
            if p is not None:
                lows.append(get_l(p))
                ups.append(get_u(p))
            else:
                t = get_l(like)
                lows.append(torch.full((n, *t.shape[1:]), -math.inf, dtype=t.dtype))
                ups.append(torch.full((n, *t.shape[1:]), math.inf, dtype=t.dtype))
        return torch.cat(lows), torch.cat(ups)

    pre = tuple(pair(lambda p, k=k: p.pre_activation[k][0], lambda p, k=k: p.pre_activation[k][1])
                for k in range(len(like.pre_activation)))
    return Bounds(pre, pair(lambda p: p.output[0], lambda p: p.output[1]), like.method)


class _BoxStack:
    """Sub-boxes waiting to be bounded, as chunks ``(lower, upper, open-disjunct mask, bounds known
    to hold on them or None, their own bounding results or None, age, floor)``; :meth:`pop` takes
    boxes from the top and copies only those. A box's age counts the splits its line had while
    already small enough for the MILP (:func:`_milp_leaves`); its floor is a lower bound of its
    open disjuncts' margins (its parent's weakest open bound; ``-inf`` when none is known)."""

    def __init__(self):
        self._chunks: list = []
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, lo, hi, mask, prior, done=None, age=None, floor=None):
        """``done``: ``(bounds, rows, coefficients, disjunct bounds)`` already computed for these
        boxes (with ``prior``), so that they are not bounded again; ``age`` (default 0) and
        ``floor`` (default ``-inf``) per box."""
        if lo.shape[0]:
            age = torch.zeros(lo.shape[0], dtype=torch.int64) if age is None else age
            floor = torch.full((lo.shape[0],), -math.inf, dtype=torch.float64) if floor is None else floor
            self._chunks.append((lo, hi, mask, None if done is not None else prior, done, age, floor))
            self._size += lo.shape[0]

    def floor(self) -> float:
        """The least floor of the boxes on the stack (``inf`` when it is empty)."""
        return min((float(c[6].min()) for c in self._chunks), default=math.inf)

    def pop(self, n: int) -> list:
        """The top ``n`` boxes, as chunks in the stack's order (the top box last)."""
        taken, count = [], 0
        while count < n:
            chunk = self._chunks.pop()
            rest = chunk[0].shape[0] - (n - count)
            if rest > 0:  # split the chunk: its first ``rest`` boxes stay on the stack
                self._chunks.append(_rows_of(chunk, slice(0, rest)))
                chunk = _rows_of(chunk, slice(rest, None))
            taken.append(chunk)
            count += chunk[0].shape[0]
        self._size -= count
        taken.reverse()
        return taken


def _result_rows(results, index):
    """The boxes ``index`` of bounding results ``(bounds, rows, coefficients, disjunct bounds)``."""
    return (results[0].select(index),) + tuple(t[index] for t in results[1:])


def _rows_of(chunk, index):
    """The boxes ``index`` of a stack chunk."""
    lo, hi, mask, prior, done, age, floor = chunk
    return (lo[index], hi[index], mask[index], None if prior is None else prior.select(index),
            None if done is None else _result_rows(done, index), age[index], floor[index])


def _bound_chunks(chunks, bound_boxes, deadline):
    """The bounding results of popped chunks, in their order: chunks pushed with results keep
    them, the others are bounded together in one call."""
    todo = [c for c in chunks if c[4] is None]
    fresh = None
    if todo:
        fresh = bound_boxes(torch.cat([c[0] for c in todo]), torch.cat([c[1] for c in todo]),
                            _cat_bounds([c[3] for c in todo], [c[0].shape[0] for c in todo]),
                            torch.cat([c[2] for c in todo]), deadline)
        if len(todo) == len(chunks):
            return fresh
    parts, start = [], 0
    for c in chunks:
        if c[4] is not None:
            parts.append(c[4])
        else:
            n = c[0].shape[0]
            parts.append(_result_rows(fresh, slice(start, start + n)))
            start += n
    bnd = _cat_bounds([p[0] for p in parts], [p[1].shape[0] for p in parts])
    return (bnd,) + tuple(torch.cat([p[i] for p in parts]) for i in range(1, 4))


def _strong_branch(bound_boxes, lo, hi, bnd, mask, deadline):
    """For each box, the dimension whose halves leave the least open: every splittable dimension
    is tried, its two halves bounded (with the box's bounds as their prior), and scored by
    ``min(v_left, 0) + min(v_right, 0)`` with ``v`` a half's weakest open disjunct bound (a
    closed half scores 0). Returns ``(dimension (n,), its score (n,), the halves' bounding
    results)``; half ``s`` (0 lower, 1 upper) of dimension ``i`` of box ``j`` is row
    ``(2 i + s) n + j`` of the results."""
    n, d = lo.shape
    halves_lo, halves_hi = [], []
    for i in range(d):
        mid = (lo[:, i] + hi[:, i]) / 2
        upper_end, lower_end = hi.clone(), lo.clone()
        upper_end[:, i] = mid
        lower_end[:, i] = mid
        halves_lo += [lo, lower_end]
        halves_hi += [upper_end, hi]
    prior = _cat_bounds([bnd] * (2 * d), [n] * (2 * d))
    open_ = mask.repeat(2 * d, 1)
    halves = bound_boxes(torch.cat(halves_lo), torch.cat(halves_hi), prior, open_, deadline)
    disj = halves[3]
    v = torch.where(open_, disj, torch.full_like(disj, math.inf)).amin(1).view(d, 2, n)
    total = v[:, 0].clamp(max=0) + v[:, 1].clamp(max=0)
    total = torch.where((hi > lo).T, total, torch.full_like(total, -math.inf))
    best_total, best = total.max(0)
    return best, best_total, halves


def _volume(lo, hi, width0) -> float:
    """The boxes' total share of the input box's volume, over its non-degenerate dimensions
    (``width0`` infinite on the others)."""
    share = torch.where(torch.isfinite(width0), (hi - lo) / width0, torch.ones_like(lo))
    return float(share.prod(dim=1).sum())


def _milp_leaves(problem, kept, lo, hi, bnd, mask, eligible, unstable, milp, config, t_start, spent, deadline):
    """The hybrid's leaves: hand the ``eligible`` open sub-boxes to the exact MILP
    (:func:`gpuopt.milp.box.prove_box`), fewest ``unstable`` ReLUs first, while the MILPs' time
    stays within ``config.milp_share`` of the search's, scaled by the share of the boxes they
    closed (``spent``: ``[seconds, tried, closed]`` so far, updated here). The scaling stops the
    MILPs when they keep failing, e.g. where the margin lies below the MILP's proof threshold:
    on tiny nets with margins of 1e-7 they took the time that splitting needed (7 of 12 decided
    in 2 s, against 11 of 12 without them).

    Where a property holds by a small margin along a ridge (a surface across which the network
    is steep), CROWN's relaxation of a few unstable ReLUs stays looser than the margin however
    small the boxes get, and splitting would have to tile the ridge; the MILP decides such a box
    at once. A box becomes eligible once it has few unstable ReLUs and has been split
    ``config.milp_min_age`` times at that size without closing, so that boxes one more split
    would close do not pay for a MILP. Returns ``(closed boxes, the open-disjunct mask less the
    disjuncts proven, a counterexample or None, the smallest proven bound)``."""
    n = lo.shape[0]
    done = torch.zeros(n, dtype=torch.bool)
    mask = mask.clone()
    lower = math.inf

    def over_budget() -> bool:
        now = time.monotonic()
        share = config.milp_share * (spent[2] + 1) / (spent[1] + 1)
        return spent[0] >= share * (now - t_start) or (deadline is not None and now > deadline)

    order = [int(i) for i in torch.argsort(unstable, stable=True) if eligible[i]]
    if not order or over_budget():
        return done, mask, None, lower
    blocks = problem.network.affine_blocks()
    for i in order:
        if over_budget():
            break
        ks = torch.nonzero(mask[i]).flatten().tolist()
        pre = [(l[i].numpy(), u[i].numpy()) for l, u in bnd.pre_activation]
        res = prove_box(problem, blocks, lo[i].numpy(), hi[i].numpy(), pre,
                        (bnd.output[0][i].numpy(), bnd.output[1][i].numpy()), [kept[k] for k in ks], milp,
                        config.milp_time_limit, deadline)
        if res.counterexample is not None:
            return done, mask, res.counterexample, lower
        for k, c in zip(ks, res.closed):
            if c:
                mask[i, k] = False
        lower = min(lower, res.lower)
        done[i] = not bool(mask[i].any())
        spent[0] += res.seconds
        spent[1] += 1
        spent[2] += int(done[i])
    return done, mask, None, lower


def input_split(problem: Problem, *, deadline: float | None = None, config: SplitConfig = SplitConfig(),
                open_disjuncts=None, milp: BoxProof | None = None, root_bounds: Bounds | None = None) -> SplitResult:
    """Decide ``problem`` by input splitting in float64 on the CPU (see the module docstring).

    ``open_disjuncts``: indices of the disjuncts still to decide (default: all); ``milp``: when
    given, open sub-boxes with few unstable ReLUs go to an exact MILP that proves with these
    settings (:func:`_milp_leaves`); ``root_bounds``: intermediate bounds already known on the
    whole box (batch of one; the bounds stage's), taken for the root as they are instead of
    computed again.
    """
    net = problem.network
    K_all = problem.spec.n_disjuncts
    kept = list(range(K_all)) if open_disjuncts is None else sorted(open_disjuncts)
    if not kept:
        return SplitResult("unsat", None, 0, math.inf, 1.0, open_lower=math.inf)
    A_pad, b_pad = problem.spec.padded(dtype=torch.float64)
    A_pad, b_pad = A_pad[kept], b_pad[kept]
    K, M, n_out = A_pad.shape
    C = A_pad.reshape(K * M, n_out)
    b_flat = b_pad.reshape(K * M)
    finite_b = torch.where(torch.isfinite(b_flat), b_flat, torch.zeros_like(b_flat))

    root = [root_bounds]

    def bound_boxes(lo, hi, prior, mask, deadline):
        """Per box: intermediate bounds, the spec rows' CROWN lower bounds less ``b`` and their
        input coefficients, and each disjunct's lower bound (``> 0``: unreachable there). Once
        ``config.alpha_after`` boxes have been bounded, boxes that CROWN leaves open on a disjunct
        of ``mask`` get alpha-CROWN on the spec rows (``config.alpha_steps``), which keeps the
        better bound per row."""
        n = lo.shape[0]
        if root[0] is not None and n == 1 and prior is None:  # the first call: the root box alone
            bnd, root[0] = root[0], None
        else:
            bnd = intermediate_bounds(net, lo, hi, deadline=deadline, prior=prior)
        rows, coef = crown_linear_lower(net, lo, hi, C, bnd)
        rows = rows - b_flat - rounding_pad(finite_b.abs(), 1)
        disj = rows.view(n, K, M).amax(-1)
        disj = torch.maximum(disj, disjunct_lower_bounds(bnd.output[0], bnd.output[1], A_pad, b_pad))
        if M > 1:
            comb, _ = _max_of_affine_lower(rows.view(n, K, M), coef.view(n, K, M, -1), center_radius(lo, hi)[1])
            disj = torch.maximum(disj, comb)
        if config.alpha_steps and (boxes >= config.alpha_after
                                   or time.monotonic() - t_start >= config.alpha_after_seconds):
            weak = torch.nonzero(((disj <= 0) & mask).any(dim=1)).flatten()
            if weak.numel():
                better = alpha_crown_linear_lower(net, lo[weak], hi[weak], C, bnd.select(weak),
                                                  steps=config.alpha_steps, deadline=deadline)
                better = better - b_flat - rounding_pad(finite_b.abs(), 1)
                # fmax: a NaN from alpha-CROWN keeps CROWN's bound. From here on ``rows`` and
                # ``coef`` no longer belong to one affine minorant: they only rank dimensions
                # and pick a corner below, never bound anything
                rows[weak] = torch.fmax(rows[weak], better)
                disj[weak] = torch.fmax(disj[weak], better.view(-1, K, M).amax(-1))
        return bnd, rows, coef, disj

    attack_cfg = AttackConfig(restarts=config.attack_restarts, steps=config.attack_steps, seed=config.seed, rounds=1)
    width0 = torch.tensor(problem.region.upper - problem.region.lower)
    width0 = torch.where(width0 > 0, width0, torch.full_like(width0, math.inf))  # fixed inputs never split
    stack = _BoxStack()
    stack.push(torch.tensor(problem.region.lower)[None], torch.tensor(problem.region.upper)[None],
               torch.ones((1, K), dtype=torch.bool), None)
    # sub-boxes keep their parent's bounds while the stack's copies fit in PRIOR_BYTES
    bytes_per_box = 16 * (sum(op.shape[0] for op in net.linear_ops("cpu", torch.float64)))
    boxes = 0
    proven = math.inf
    closed_volume = 0.0  # the share of the box's volume in sub-boxes closed for every disjunct
    per_box = 0.0  # seconds per box of the last batch: batches are sized to end well before the deadline
    t_start, milp_spent = time.monotonic(), [0.0, 0, 0]  # MILP seconds, boxes tried, boxes closed
    while len(stack):
        if deadline is not None and time.monotonic() > deadline:
            return SplitResult("timeout", None, boxes, proven, closed_volume, milp_spent[2], min(proven, stack.floor()))
        if len(stack) > config.max_boxes:
            return SplitResult("unknown", None, boxes, proven, closed_volume, milp_spent[2], min(proven, stack.floor()))
        # pop up to batch_size boxes from the top of the stack
        take = min(config.batch_size, len(stack))
        if per_box > 0:
            slack = BATCH_SECONDS if deadline is None else min(BATCH_SECONDS, (deadline - time.monotonic()) / 4)
            take = max(1, min(take, int(slack / per_box)))
        chunks = stack.pop(take)
        lo, hi, mask = (torch.cat([c[i] for c in chunks]) for i in range(3))
        age = torch.cat([c[5] for c in chunks])
        boxes += take

        t_batch = time.monotonic()
        bnd, rows, coef, disj = _bound_chunks(chunks, bound_boxes, deadline)
        closed_now = disj > 0
        if (closed_now & mask).any():
            proven = min(proven, float(disj[closed_now & mask].min()))
        mask = mask & ~closed_now
        alive = mask.any(dim=1)
        if (~alive).any():
            closed_volume += _volume(lo[~alive], hi[~alive], width0)
        if not alive.any():
            continue
        lo, hi, mask, disj, rows, coef, age = (t[alive] for t in (lo, hi, mask, disj, rows, coef, age))
        bnd = bnd.select(alive)
        small = torch.zeros(lo.shape[0], dtype=torch.bool)
        if milp is not None and config.milp_unstable > 0:
            unstable = sum((((l < 0) & (u > 0)).sum(dim=1) for l, u in bnd.pre_activation),
                           torch.zeros(lo.shape[0], dtype=torch.int64))
            small = unstable <= config.milp_unstable
            done, mask, x, lb = _milp_leaves(problem, kept, lo, hi, bnd, mask, small & (age >= config.milp_min_age),
                                             unstable, milp, config, t_start, milp_spent, deadline)
            if x is not None:
                return SplitResult("sat", x, boxes, proven, closed_volume, milp_spent[2])
            proven = min(proven, lb)
            if done.any():
                closed_volume += _volume(lo[done], hi[done], width0)
                live = ~done
                lo, hi, mask, disj, rows, coef, age, small = (t[live] for t in (lo, hi, mask, disj, rows, coef, age, small))
                bnd = bnd.select(live)
                if not live.any():
                    continue
        n = lo.shape[0]

        # weakest open disjunct per box, and within it the row with the best (largest) bound
        dmask = torch.where(mask, disj, torch.full_like(disj, math.inf))
        k_star = dmask.argmin(dim=1)
        rows_k = rows.view(n, K, M)[torch.arange(n), k_star]
        m_star = rows_k.argmax(dim=1)
        r_star = k_star * M + m_star
        a = coef[torch.arange(n), r_star]  # (n, n_in)

        # candidate points: centres, the corners minimising the chosen linear bound, and a short
        # PGD run inside the sub-boxes whose bounds are weakest
        corner = torch.where(a > 0, lo, hi)
        pts = [(lo + hi) / 2, corner]
        if config.attack_boxes > 0:
            weakest = dmask.amin(dim=1).argsort()[: config.attack_boxes]
            cand = pgd_attack(net, lo[weakest], hi[weakest], A_pad, b_pad, config=attack_cfg,
                              dtype=torch.float64, deadline=deadline)
            attack_cfg = replace(attack_cfg, seed=attack_cfg.seed + 1)
            pts.append(cand.x)
        pts = torch.cat(pts).numpy()
        y = net.forward64(pts)
        margins = problem.spec.margin64(y)
        near = np.flatnonzero(margins <= 1e-9 * (1 + np.abs(y).max(axis=1)))
        for i in near[np.argsort(margins[near])][:16]:  # candidates, best first; decided soundly
            c = check_counterexample(problem, pts[i])
            if c.ok:
                return SplitResult("sat", c.x, boxes, proven, closed_volume, milp_spent[2])

        # split the dimension with the largest smear |a_i| * width_i; if that dimension is already
        # far narrower (relative to the original box) than another, the looseness lies in the
        # ReLU relaxations rather than in the linear trend: split the relatively widest instead
        width = hi - lo
        ar = torch.arange(n)
        dim = (a.abs() * width).argmax(dim=1)
        rel = width / width0
        stuck = rel[ar, dim] < 1e-3 * rel.amax(dim=1)
        halves = None
        if K == 1 and config.strong_branching_dims and int((width > 0).sum(1).max()) <= config.strong_branching_dims:
            best, total, halves = _strong_branch(bound_boxes, lo, hi, bnd, mask, deadline)
            parent = dmask.amin(dim=1)
            use = (total - 2 * parent > STRONG_GAIN * parent.abs()) & (rel[ar, best] >= BALANCE * rel.amax(dim=1))
            dim = torch.where(use, best, dim)
            stuck = stuck & ~use
        if stuck.any():
            dim = torch.where(stuck, rel.argmax(dim=1), dim)
        per_box = (time.monotonic() - t_batch) / take  # strong branching's bounding included
        mid = (lo[ar, dim] + hi[ar, dim]) / 2
        if not ((mid > lo[ar, dim]) & (mid < hi[ar, dim])).all():
            # a box too thin to halve in floating point that bounds cannot close
            return SplitResult("unknown", None, boxes, proven, closed_volume, milp_spent[2],
                               min(proven, stack.floor(), float(dmask.amin())))
        lo2, hi1 = lo.clone(), hi.clone()
        hi1[torch.arange(n), dim] = mid
        lo2[torch.arange(n), dim] = mid
        keep = (len(stack) + 2 * n) * bytes_per_box <= PRIOR_BYTES
        if keep and halves is not None:  # both halves were bounded while choosing the dimension
            left, right = (_result_rows(halves, idx) for idx in (2 * dim * n + ar, (2 * dim + 1) * n + ar))
        else:
            left = right = None
        age = torch.where(small, age + 1, torch.zeros_like(age))
        floor = dmask.amin(dim=1)  # the halves' margins are at least their parent's bound
        stack.push(lo, hi1, mask, bnd if keep else None, left, age, floor)
        stack.push(lo2, hi, mask, bnd if keep else None, right, age, floor)
    return SplitResult("unsat", None, boxes, proven, 1.0, milp_spent[2], proven)
