"""Refinement of the intermediate bounds: stabilise unstable neurons by per-neuron proofs, exact
MILPs in HiGHS or activation splitting on the layers before the neuron.

Where the LP of the triangle relaxation adds nothing to alpha-CROWN's intermediate bounds (on the
deeper mnist_fc nets OBBT moved none of them), the MILP over the layers before a neuron often
shows it stable: the binaries of the earlier layers are exact. As alpha-beta-CROWN's
``bab-refine`` does, layer ``k >= 1`` is refined after layers ``< k``: for an unstable ``z_k,j``
(``l < 0 < u``) the big-M MILP of :mod:`gpuopt.milp.encode` over blocks ``0..k`` (binaries for the
unstable neurons of layers ``< k``, with their refined bounds) is solved in HiGHS for

* **inactive**: ``min -z_j > f`` proves ``z_j < 0`` everywhere (``u := 0``);
* **active**: ``min z_j > f`` proves ``z_j > 0`` (``l := 0``),

trying first the side nearer its bound (``u <= -l``: inactive). Each MILP holds only what bounds
``z_j``: the neurons of layers ``< k`` that are not stable-inactive (an inactive neuron's output is
0 on the box, so dropping its row ``W x + b <= u`` relaxes the feasible set and keeps every point of
the network: the minimum stays a valid bound) and the one row ``j`` of layer ``k``. HiGHS runs
without presolve and without its feasibility-jump heuristic (:data:`REFINE_SOLVER`). ``f`` is
:func:`~gpuopt.milp.highs.unchecked_floor` at the neuron's scale (``max(1, -l, u)``), and the
MILP's stop test adds HiGHS's dual-tolerance margin (:meth:`~gpuopt.milp.highs.MilpResult.proves_above`).
A search that finds a point on the other side (``z_j`` beyond ``-f`` the wrong way) stops at once;
one that runs out of its ``neuron_time`` keeps HiGHS's dual bound ``D`` as a tighter bound,
``u := min(u, -D + margin + f)`` (or ``l := max(l, D - margin - f)``), when finite and without a
numerical warning, and unless the point HiGHS returned contradicts it (its ``z_j`` evaluated in
float64 lies beyond the bound: then HiGHS is wrong, and neither is used).

**Witnesses first.** Before a layer's MILPs, a batched projected sign-gradient search looks, for
each unstable neuron, for a point of the box with ``z_j < 0`` and one with ``z_j > 0``
(:func:`_witnesses`, evaluated in float64). A side with a witness cannot be proven, so its MILP is
skipped. A neuron with both is truly unstable: no MILP can make it stable, and its MILPs, which
end at the first point HiGHS finds, would only narrow its bounds by their dual bound then; it
gets none. On mnist-net_256x4 about 40% of the second layer's unstable neurons are witnessed on
both sides. After 120 s of refinement on prop_5_0.05 and prop_0_0.05, alpha-CROWN's bound of the
property was -0.383 and -1.808 this way, -0.391 and -1.838 when those neurons came last in their
layer instead, and -0.427 and -1.972 without witnesses. Skipping a MILP never makes a bound unsound.

**Re-bounding the layers after.** When a layer's MILPs are done, ``rebound`` (optional; e.g.
:func:`alpha_crown_rebound`) recomputes the bounds of the layers after it from the refined ones:
their relaxations are only as tight as the bounds of the layers before them, so a neuron the
earlier refinement did not reach may become stable, and the later MILPs get smaller big-M
constants. Each neuron keeps the tighter of its bounds and the re-bound's, unless the two cross
(then the re-bound's is dropped for that neuron).

**Activation splitting instead of the MILP** (``method="split"``, :func:`_split_layer`). The same
question, "is ``z_j < 0`` (``> 0``) on the box?", is a verification problem on the sub-network from
the input to layer ``k`` (:meth:`gpuopt.network.Network.prefix`): the disjunct ``{z : z_j >= 0}``
is unreachable iff the neuron is inactive. Activation splitting (beta-CROWN, :mod:`gpuopt.relu_split`)
answers it with the bounds of the layers before as its root, in CROWN's float64 arithmetic with its
rounding pads; a search cut short still bounds the row on every domain, and its worst open bound
narrows the neuron's. A layer's neuron sides are the disjuncts of one search, bounded together in
batches and taken in turn (``selection="fair"``), each given up after its share of splits. On
mnist-net_256x4 prop_13_0.05, from alpha-CROWN's bounds, MILPs (1 s each) stabilised 0 of 12
fourth-layer neurons in 12.5 s and per-neuron searches 11 in 4.9 s (20 second-layer ones: all by
both, in 4.8 s and 0.8 s); in 60 s the refinement left (37, 61, 18, 128) unstable neurons by MILP
and (37, 41, 1, 1) by per-neuron splitting, in 48 s. Such bounds rest on no solver tolerance
(:attr:`MilpRefinement.on_solver_tolerances`).

**Lifting narrow layers** (``lift_share``, :func:`_lift_layer`). A layer left with at most
:data:`~gpuopt.milp.tail.TAIL_MAX_LIVE` live neurons is one the network factors through; its box
is what a tail MILP starts from, and a stable neuron's box still reaches down to 0. So once per
such layer the least and largest values found at points of the box become the targets of one
activation-splitting search on the sub-network up to it, whose worst bounds lift ``l`` above 0
and lower ``u`` (256x4 prop_6_0.03 and prop_4_0.05: the key lower bound from below 0 to 2.6 and
4.0, after which tails prove every disjunct).

**What it rests on.** Unlike the LP bounds of :mod:`gpuopt.bounds.lp` (safe dual bounds, exact),
these bounds rest on HiGHS's branch-and-bound within its tolerances, covered by the margin and the
floor as for a MILP proof without the independent re-check (:mod:`gpuopt.milp.recheck`). A
verdict that uses them says so. Every intermediate state is a valid set of bounds, so stopping at
the deadline is safe.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from ..errors import GpuoptError, InvalidInputError, SolverError
from ..milp.encode import encode
from ..milp.highs import MilpStatus, SolverConfig, solve_milp, unchecked_floor
from ..milp.tail import TAIL_MAX_LIVE, live_mask
from ..milp.walk import forward_pattern
from ..network import AffineBlock
from .crown import STEP_DTYPE, step_torch_dtype
from .lp import unstable_indices

__all__ = ["MilpRefinement", "REFINE_SOLVER", "alpha_crown_rebound", "milp_refine", "property_check"]

log = logging.getLogger("gpuopt")

#: HiGHS settings the refinement's MILPs override: on mnist-net_256x4 (784 inputs, per-neuron models
#: of 40-50k non-zeros) presolve took 0.25 s of a 0.6 s proof and feasibility jump another tenth; both
#: off, the same proofs took 0.2-0.35 s (the tolerances, margin and floor are unchanged)
REFINE_SOLVER = dict(presolve=False, feasibility_jump=False)

#: a layer's neurons go in chunks of this many (at least ``parallel``), nearest to stable first; when a
#: chunk's MILPs all run out of time and narrow no neuron's bounds by ``STALL_GAIN`` of their width,
#: the rest of the layer is skipped, two such layers in a row end the pass, and a pass that narrows
#: nothing ends the refinement (MILPs that move nothing within their time, as on conv nets with
#: thousands of inputs, cost a chunk per layer rather than the whole share)
STALL_CHUNK = 8
STALL_GAIN = 0.01

#: passes over the neurons whose MILPs ran out of time, each with twice the time per MILP
MAX_PASSES = 4

#: the witness search (:func:`_witnesses`): sign-gradient steps per point (the step, a quarter of
#: the box's width, halves after every third of them) and the most points searched at once
WITNESS_STEPS = 30
WITNESS_BATCH = 512

#: the share of the time left that one re-bound may take (alpha-CROWN's layers not reached keep their bounds)
REBOUND_SHARE = 0.05

#: :func:`milp_refine`'s share of the time for the last hidden layer, refined after the layers before it
#: have had the rest (their passes while any bound moves). Each layer's bounds set the relaxation of
#: every layer after it, so time on the early layers pays twice. On mnist-net_256x6 prop_11_0.05 (one
#: thread), even shares per layer in one pass at a time left (45, 35, 27, 15, 97) unstable neurons in
#: layers 1-5 after 201 s, and activation splitting then timed out at -1.15; 145 s on layers 1-4 and
#: 90 s on layer 5 left (45, 32, 23, 2, 35), on which activation splitting proved the property in 14 s
LAST_LAYER_SHARE = 0.4


@dataclass(frozen=True)
class MilpRefinement:
    """The result of :func:`milp_refine`: ``pre`` (one ``(lower, upper)`` numpy pair per hidden
    layer, never looser than the input), the per-neuron proofs run (``milps``: MILPs, or
    searches with ``method="split"``), the neurons made stable, those whose
    bounds only narrowed, the unstable count per layer before and after, the time taken, and the
    passes made, whether ``enough`` ended it early, and the bounds moved by lifting narrow layers
    (``lifted``; see :func:`milp_refine`)."""

    pre: list
    milps: int
    stabilised: int
    tightened: int
    unstable_before: tuple
    unstable_after: tuple
    seconds: float
    passes: int = 1
    method: str = "milp"
    ended_early: bool = False
    lifted: int = 0

    @property
    def on_solver_tolerances(self) -> bool:
        """Whether the bounds may rest on HiGHS's tolerances: MILPs were solved (activation
        splitting's bounds and the re-bounds are CROWN's padded float64 arithmetic)."""
        return self.method == "milp" and self.milps > 0


def _unstable(pre, blocks) -> tuple:
    """Per layer, the ReLU neurons with ``l < 0 < u`` (a graph net's passthrough coordinates have none)."""
    return tuple(int(unstable_indices(l, u, blk.passthrough).size) for (l, u), blk in zip(pre, blocks))


def _order(l: np.ndarray, u: np.ndarray, passthrough) -> np.ndarray:
    """Unstable neurons, the nearest to stable first (``min(-l, u) / (u - l)`` ascending)."""
    idx = unstable_indices(l, u, passthrough)
    near = np.minimum(-l[idx], u[idx]) / (u[idx] - l[idx])
    return idx[np.argsort(near, kind="stable")]


def _live_prefix(blocks, pre, k: int) -> tuple[list, list, np.ndarray | None]:
    """Blocks ``0..k-1`` and their bounds restricted to the neurons that are not stable-inactive
    (passthrough coordinates always kept), and the kept indices of layer ``k - 1`` (the columns
    layer ``k``'s row keeps)."""
    out_blocks, out_pre, keep_prev = [], [], None
    for i in range(k):
        l, u = pre[i]
        through = blocks[i].passthrough
        keep = np.flatnonzero(live_mask(blocks[i], u))
        m = blocks[i].matrix if keep_prev is None else blocks[i].matrix[:, keep_prev]
        out_blocks.append(AffineBlock(m[keep].tocsr(), np.asarray(blocks[i].bias)[keep],
                                      None if through is None else np.asarray(through, dtype=bool)[keep]))
        out_pre.append((l[keep], u[keep]))
        keep_prev = keep
    return out_blocks, out_pre, keep_prev


def _witnesses(ops, k: int, idx: np.ndarray, x_lower, x_upper, *, left, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(below, above)``, bool over the neurons ``idx`` of layer ``k``: a point of the box was found
    where ``z_kj < 0`` (resp. ``> 0``), by :func:`_extremes`."""
    zmin, zmax = _extremes(ops, k, idx, x_lower, x_upper, left=left, seed=seed)
    return zmin < 0, zmax > 0


def _extremes(ops, k: int, idx: np.ndarray, x_lower, x_upper, *, left, seed: int = 0,
              starts: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(zmin, zmax)`` over the neurons ``idx`` of layer ``k``: the least and the largest ``z_kj``
    found at points of the box (``+inf``/``-inf`` where none was evaluated). ``starts`` points per
    neuron and side, from uniform random starts, descend ``z_kj`` (resp. ``-z_kj``) by projected
    sign-gradient steps (:data:`WITNESS_STEPS`); every final point counts for every neuron it is
    evaluated at (in float64). ``ops``: the blocks as float64 :class:`~gpuopt.network.LinearOp`
    (layers ``0..k`` are used). Chunks start while ``left() > 0``."""
    import torch

    n = idx.size
    zmin, zmax = np.full(n, np.inf), np.full(n, -np.inf)
    if n == 0:
        return zmin, zmax
    ops = ops[:k + 1]
    lo = torch.tensor(np.asarray(x_lower, dtype=np.float64).reshape(1, -1))
    hi = torch.tensor(np.asarray(x_upper, dtype=np.float64).reshape(1, -1))
    gen = torch.Generator().manual_seed(seed)
    reps = max(1, int(starts))
    cols = torch.tensor(np.tile(np.concatenate([idx, idx]), reps), dtype=torch.int64)
    side = torch.cat([torch.ones(n), -torch.ones(n)]).double().repeat(reps)  # +1: descend z_j; -1: descend -z_j
    pick = torch.tensor(idx, dtype=torch.int64)

    def layer_k(x):
        h = x
        for op in ops[:-1]:
            z = op.matvec(h)
            h = torch.relu(z) if op.passthrough is None else torch.where(op.passthrough, z, torch.relu(z))
        return ops[-1].matvec(h)

    for at in range(0, cols.numel(), WITNESS_BATCH):
        if left() <= 0:
            break
        c, sd = cols[at:at + WITNESS_BATCH], side[at:at + WITNESS_BATCH]
        rows = torch.arange(c.numel())
        x = lo + (hi - lo) * torch.rand((c.numel(), lo.shape[1]), generator=gen, dtype=torch.float64)
        step = (hi - lo) / 4
        for it in range(WITNESS_STEPS):
            x.requires_grad_(True)
            with torch.enable_grad():
                (g,) = torch.autograd.grad((sd * layer_k(x)[rows, c]).sum(), x)
            with torch.no_grad():
                x = torch.minimum(torch.maximum(x - step * g.sign(), lo), hi)
            if (it + 1) % max(1, WITNESS_STEPS // 3) == 0:
                step = step / 2
        with torch.no_grad():
            z = layer_k(x)[:, pick].numpy()  # every point at every neuron of idx
        zmin = np.minimum(zmin, z.min(axis=0))
        zmax = np.maximum(zmax, z.max(axis=0))
    return zmin, zmax


def _refine_neuron(blocks, k: int, j: int, prefix, prefix_pre, row_matrix, l, u, x_lower, x_upper, *,
                   config: SolverConfig, neuron_time: float, left, deadline,
                   witnessed: tuple[bool, bool] = (False, False)) -> tuple[int, bool]:
    """Refine ``l[j]``, ``u[j]`` of layer ``k`` in place (the module docstring's two MILPs); returns the
    MILPs solved and whether the neuron is settled: stable, or both searches ended within their time
    (a point on the other side, or the optimum), so that more time would not move it.
    ``witnessed``: points with ``z_j < 0`` and with ``z_j > 0`` are known (:func:`_witnesses`); the
    side such a point contradicts is not searched, and counts as ended."""
    row = AffineBlock(row_matrix[[j]].tocsr(), np.asarray(blocks[k].bias)[[j]])
    model = encode(prefix + [row], prefix_pre, (l[[j]], u[[j]]), x_lower, x_upper, np.eye(1), [0.0])
    floor = unchecked_floor(max(1.0, float(-l[j]), float(u[j])), config)
    y = int(model.y_index[0])
    milps, finished = 0, 0
    for sign in ((-1.0, 1.0) if u[j] <= -l[j] else (1.0, -1.0)):  # -1: min -z_j (inactive); +1: min z_j (active)
        if left() <= 0 or not (l[j] < 0 < u[j]):
            break
        if witnessed[0 if sign > 0 else 1]:  # a point with z_j < 0 (resp. > 0): this side cannot be proven
            finished += 1
            continue
        c = np.zeros(model.n_vars)
        c[y] = sign

        def other_side(x, sign=sign):
            return float(sign * x[y]) < -floor  # a point with z_j on the other side

        milps += 1
        try:
            res = solve_milp(replace(model, c=c, offset=0.0), time_limit=min(neuron_time, max(left(), 0.0)),
                             threshold=floor, accept_solution=other_side, config=config, deadline=deadline)
        except SolverError:  # HiGHS refused the model (e.g. a coefficient of 1e15 or more): no bound from it
            continue
        finished += res.status not in (MilpStatus.TIME_LIMIT, MilpStatus.INTERRUPTED)
        if res.proves_above(floor):
            if sign < 0:
                u[j] = min(u[j], 0.0)
            else:
                l[j] = max(l[j], 0.0)
            return milps, True
        if res.warnings or not np.isfinite(res.dual_bound) or res.status in (MilpStatus.ERROR, MilpStatus.INFEASIBLE):
            continue
        bound = res.dual_bound - res.proof_margin - floor  # min sign*z_j >= bound
        if res.solution is not None:  # z_j at HiGHS's point, clipped to the box (a check, not a proof)
            z_k, _ = forward_pattern(blocks[:k + 1], np.clip(res.solution[model.x_index], x_lower, x_upper))
            if sign * z_k[j] < bound:
                continue  # HiGHS's own point contradicts its bound: trust neither
        value = sign * bound  # the new upper (sign -1) or lower (sign +1) bound of z_j
        if not l[j] <= value <= u[j]:
            continue  # beyond the other bound, which is sound: then HiGHS is wrong, trust neither
        if sign < 0 and value < u[j]:
            u[j] = value
        elif sign > 0 and value > l[j]:
            l[j] = value
        else:
            continue
        if u[j] <= 0 or l[j] >= 0:
            return milps, True
    return milps, finished == 2 or not (l[j] < 0 < u[j])


def _milp_prover(blocks, pre, k: int, x_lower, x_upper, config: SolverConfig):
    """Layer ``k``'s per-neuron prover by MILP (:func:`_refine_neuron`), on the live prefix of the
    layers before it (built once per layer)."""
    prefix, prefix_pre, keep = _live_prefix(blocks, pre, k)
    row_matrix = blocks[k].matrix if keep is None else blocks[k].matrix[:, keep]

    def prove(j, l, u, *, neuron_time, left, deadline, witnessed):
        return _refine_neuron(blocks, k, j, prefix, prefix_pre, row_matrix, l, u, x_lower, x_upper, config=config,
                              neuron_time=neuron_time, left=left, deadline=deadline, witnessed=witnessed)

    return prove


def _split_prover(blocks, pre, k: int, x_lower, x_upper, config: SolverConfig, step_dtype: str = STEP_DTYPE):
    """Layer ``k``'s prover by activation splitting (:func:`_split_layer`) on the sub-network up to
    ``z_k`` (built once per layer): it takes the layer's neurons at once (``prove.batched``), its
    multiplier steps in ``step_dtype``."""
    import torch

    from ..bounds.base import Bounds
    from ..network import BlockChain

    chain = BlockChain(blocks[:k + 1])
    lo = torch.tensor(np.asarray(x_lower, dtype=np.float64).reshape(-1))
    hi = torch.tensor(np.asarray(x_upper, dtype=np.float64).reshape(-1))
    before = tuple((torch.tensor(l[None]), torch.tensor(u[None])) for l, u in pre[:k])

    def prove(order, l, u, *, neuron_time, left, seen):
        prior = Bounds(before, (torch.tensor(l[None]), torch.tensor(u[None])), "prior")
        return _split_layer(chain, order, prior, lo, hi, l, u, splits=max(1, round(neuron_time * SPLITS_PER_SECOND)),
                            left=left, seen=seen, step_dtype=step_dtype)

    prove.batched = True
    return prove


#: activation splitting's settings for a layer's neuron bounds: no leaves handed on, the disjuncts
#: taken in turn (each neuron side its own disjunct)
SPLIT_LAYER_CONFIG = dict(handoff=0, selection="fair")
#: a neuron side's splits per second of ``neuron_time``: the cap after which the side is given up
#: (its worst open bound kept) in that pass. On mnist-net_256x6 prop_11_0.05, searched one at a time
#: with 1 s each, the sides proven took a median 25 domains (90% at most 115, the most 1,587) and
#: those cut off at 1 s had 1,000-2,300
SPLITS_PER_SECOND = 256


def _split_layer(chain, order, prior, lo, hi, l, u, *, splits: int, left, seen=None,
                 step_dtype: str = STEP_DTYPE) -> tuple[int, list]:
    """Refine ``l[j]``, ``u[j]`` (``j`` in ``order``) of the last layer of ``chain`` in place by one
    activation splitting search (:func:`gpuopt.relu_split.relu_split`, beta-CROWN) over all of
    them, as :func:`_refine_neuron` does one neuron by MILP: the disjunct ``{z : z_j >= 0}`` (row
    ``-z_j``) is closed on the box iff ``z_j < 0`` there (``u := 0``), and ``{z : z_j <= 0}`` (row
    ``z_j``) iff ``z_j > 0`` (``l := 0``). Every such side is its own disjunct; the search goes round
    them (``selection="fair"``) and gives a side up after ``splits`` splits. A side not closed still
    has every domain bounded: ``min_x s z_j >= min(open_bound, 0)``, so ``u := min(u, -open_bound)``
    (``l := max(l, open_bound)``). These bounds are CROWN's float64 arithmetic with its rounding
    pads (``prior``: sound bounds of the layers before), not a solver's tolerances. ``seen``:
    ``(below, above)`` masks over the layer, witnesses of ``z_j < 0`` and ``z_j > 0``: a witnessed
    side cannot be proven and is not searched. Returns the sides searched and the neurons of
    ``order`` now stable."""
    from ..relu_split import ReluSplitConfig, relu_split

    sides = []
    for j in (int(j) for j in order):
        if not l[j] < 0 < u[j]:
            continue
        for sign in (-1.0, 1.0):
            if seen is not None and seen[0 if sign > 0 else 1][j]:
                continue
            sides.append((j, sign))

    def stable() -> list:
        return [int(j) for j in order if not (l[j] < 0 < u[j])]

    if not sides or left() <= 0:
        return 0, stable()
    rows = []
    for j, sign in sides:
        C = np.zeros((1, chain.output_size))
        C[0, j] = sign
        rows.append((C, np.zeros(1), None))
    res = relu_split(chain, lo, hi, rows, prior, deadline=time.monotonic() + max(left(), 0.0),
                     config=ReluSplitConfig(**SPLIT_LAYER_CONFIG, disjunct_domains=int(splits), step_dtype=step_dtype))
    for (j, sign), closed, worst in zip(sides, res.closed, res.open_bound):
        if closed:
            value = 0.0
        elif math.isfinite(worst):
            value = sign * min(worst, 0.0)  # the new upper (sign -1) or lower (sign +1) bound of z_j
        else:
            continue
        if not l[j] <= value <= u[j]:
            continue
        if sign < 0:
            u[j] = value
        else:
            l[j] = value
    return len(sides), stable()


#: a layer that has at most :data:`~gpuopt.milp.tail.TAIL_MAX_LIVE` live neurons after its proofs in
#: some pass gets them lifted once (:func:`_lift_layer`), in this share of the phase's time left (0: never)
LIFT_SHARE = 0.4
#: the lifting's search: the weakest domains of all sides first (``"fair"``, the sides in turn, spreads
#: the effort over sides that do not matter: on the refined bounds of mnist-net_256x4 prop_4_0.05,
#: 15 s lifted the third layer's key lower bound from -0.94 to 2.20 by the weakest first, to -0.05
#: in turn; prop_6_0.03: -0.21 to 1.63 against 0.61)
LIFT_CONFIG = dict(handoff=0, selection="worst")
#: the lifting's witness search: points per neuron and side (:func:`_extremes`)
LIFT_STARTS = 8
#: the lifting's targets lie this share of the witnessed spread ``zmax - zmin`` beyond the witnesses,
#: so that a side can close and the search end early once the bound is that near
LIFT_SLACK = 0.01
#: ... of at least this share of the values' magnitude (at least 1): a neuron constant on the box
#: (``zmin == zmax``) can close too
LIFT_SLACK_FLOOR = 1e-3
#: the lifting asks whether its bounds so far suffice (``check``: re-bound the layers after and ask
#: ``enough``) this many seconds in, and then each time its time has doubled, while the checks have
#: taken at most :data:`LIFT_CHECK_SHARE` of its time: its sides almost never close (the targets sit
#: beyond witnessed values), so without a check it runs its whole share (256x4 prop_5_0.05: 49 s
#: lifted z74 to [11.1, 34.8], where 12.5 s, to [9.6, 36.3], already let the tails prove the property)
LIFT_CHECK_FIRST = 2.0
LIFT_CHECK_SHARE = 0.25
#: what a lift returns when ``enough`` said yes during it (:func:`_refine_pass`)
LIFT_ENOUGH = "enough"


def _lift_layer(chain, live, prior, lo, hi, l, u, zmin, zmax, *, deadline: float,
                step_dtype: str = STEP_DTYPE, check=None) -> int:
    """Narrow ``l[j]``, ``u[j]`` (``j`` in ``live``) of the last layer of ``chain`` in place, past
    the sign that :func:`_split_layer` proves: towards the least and largest values ``zmin[j]``,
    ``zmax[j]`` found at points of the box. The network factors through a narrow layer, so the box
    ``[relu(l), relu(u)]`` of its live neurons is what a tail MILP (:mod:`gpuopt.milp.tail`) starts
    from: on mnist-net_256x4 prop_6_0.03 after the refinement the third layer has two live neurons,
    one with ``l = -0.21`` and a witnessed minimum of 5.9, and the tails miss four of the nine
    disjuncts, whose margins fall near ``h = 0``; 15 s of splitting on the layers before lift ``l``
    to 1.6, and the tails then miss one (at -0.014, from -0.31).

    One activation-splitting search (:func:`gpuopt.relu_split.relu_split`, :data:`LIFT_CONFIG`: the
    weakest domains of all sides first, no cap per side) over the sides, with ``s``
    :data:`LIFT_SLACK` of the spread ``zmax[j] - zmin[j]`` (at least :data:`LIFT_SLACK_FLOOR` of
    ``max(1, |zmin[j]|, |zmax[j]|)``):
    ``{z : z_j <= t = zmin[j] - s}`` (row ``z_j``, searched where ``t > max(l[j], 0)``; pass-through
    coordinates are left alone) and ``{z : z_j >= t = zmax[j] + s}`` (row ``-z_j``, where ``t <
    u[j]``). It ends at ``deadline`` or once every side is closed. Every domain is bounded, closed
    or not, so ``min_x z_j >= t + min(open_bound, proven_bound)`` (and symmetrically ``u``), rounded
    outward. A bound that would pass its witness (only a rounding of the float64 evaluation can) is
    not used. These are CROWN's float64 bounds with rounding pads, as :func:`_split_layer`'s.

    ``check(l_new, u_new)``: asked with the bounds the search has reached so far (copies), first
    :data:`LIFT_CHECK_FIRST` seconds in and then each time the search's time has doubled, while
    the checks have taken at most :data:`LIFT_CHECK_SHARE` of it; true ends the search there (its
    bounds are then the ones checked). Returns the sides searched."""
    from ..relu_split import ReluSplitConfig, relu_split

    through = chain.affine_blocks()[-1].passthrough
    sides = []
    for j in (int(j) for j in live):
        if not (np.isfinite(zmin[j]) and np.isfinite(zmax[j])):
            continue
        slack = LIFT_SLACK * max(zmax[j] - zmin[j], LIFT_SLACK_FLOOR * max(1.0, abs(zmin[j]), abs(zmax[j])))
        if through is not None and through[j]:
            continue  # (a pass-through coordinate's bounds are the layer before's business)
        if zmin[j] - slack > max(l[j], 0.0):
            sides.append((j, 1.0, float(zmin[j] - slack), float(zmin[j])))
        if zmax[j] + slack < u[j]:
            sides.append((j, -1.0, float(zmax[j] + slack), float(zmax[j])))
    if not sides or deadline <= time.monotonic():
        return 0
    rows = []
    for j, sign, target, _ in sides:
        C = np.zeros((1, chain.output_size))
        C[0, j] = sign
        rows.append((C, np.array([sign * target]), None))
    def narrow(gains, l, u) -> None:
        """``l``, ``u`` narrowed in place by the sides' lowest bounds ``gains``."""
        for (j, sign, target, seen), gain in zip(sides, gains):  # gain: min_x sign * (z_j - target)
            if not np.isfinite(gain):
                continue
            if sign > 0:
                value = np.nextafter(target + gain, -np.inf)
                if l[j] < value <= seen:
                    l[j] = value
            else:
                value = np.nextafter(target - gain, np.inf)
                if seen <= value < u[j]:
                    u[j] = value

    began = time.monotonic()
    at, checking = began + LIFT_CHECK_FIRST, [0.0]  # the next check; the seconds checks took

    def progress(lowest) -> bool:
        now = time.monotonic()
        nonlocal at
        if check is None or now < at or checking[0] > LIFT_CHECK_SHARE * (now - began):
            return False
        at = began + 2.0 * (now - began)
        l_new, u_new = l.copy(), u.copy()
        narrow(lowest(), l_new, u_new)
        done = bool((np.any(l_new != l) or np.any(u_new != u)) and check(l_new, u_new))
        checking[0] += time.monotonic() - now
        return done

    res = relu_split(chain, lo, hi, rows, prior, deadline=deadline,
                     config=ReluSplitConfig(**LIFT_CONFIG, step_dtype=step_dtype), progress=progress)
    narrow([min(worst, proven) for worst, proven in zip(res.open_bound, res.proven_bound)], l, u)
    return len(sides)


#: the per-neuron provers of the refinement, by name (:func:`milp_refine`'s ``method``)
PROVERS = {"milp": _milp_prover, "split": _split_prover}


def _refine_pass(blocks, pre, layers, x_lower, x_upper, settled, *, config, neuron_time, parallel, pool, left,
                 deadline, rebound=None, witness=None, witness_ops=None, prover=_milp_prover,
                 enough=None, lift=None) -> tuple[int, bool, bool]:
    """One pass over ``layers`` (the neurons not ``settled``, a set of ``(k, j)`` it adds to); returns
    the MILPs solved, whether any bound narrowed by :data:`STALL_GAIN` of its width, and whether
    ``enough(pre)`` (asked after each layer whose bounds changed) said to stop. ``witness``:
    a dict ``k -> (below, above)`` over layer ``k``'s neurons, filled by :func:`_witnesses` on a
    layer's first visit (``witness_ops()`` gives the blocks it searches with); a neuron witnessed on
    both sides is settled without a MILP. ``lift(pre, k, left)``: called after layer ``k``'s proofs
    (before its re-bound), narrows its bounds in place within a share of ``left()`` and returns
    whether it did (:func:`_lift_layer`), or :data:`LIFT_ENOUGH` when ``enough`` already said yes
    on its bounds (the layers after re-bound on them): the pass then stops as after ``enough``."""
    milps, moved, run = 0, False, 0  # run: stalled layers in a row
    for k in layers:
        if left() <= 0:
            break
        l, u = pre[k]

        def todo(kk):
            return [j for j in _order(*pre[kk], blocks[kk].passthrough) if (kk, int(j)) not in settled]

        order = todo(k)
        if witness is not None and order:
            if k not in witness:
                below, above = np.zeros(l.size, dtype=bool), np.zeros(l.size, dtype=bool)
                idx = np.array(order, dtype=np.int64)
                below[idx], above[idx] = _witnesses(witness_ops(), k, idx, x_lower, x_upper, left=left, seed=k)
                witness[k] = (below, above)
            below, above = witness[k]
            both = [j for j in order if below[j] and above[j]]  # truly unstable: settled without a MILP
            settled.update((k, int(j)) for j in both)
            order = [j for j in order if not (below[j] and above[j])]
        if not order:
            lifted = False if lift is None else lift(pre, k, left)
            if lifted == LIFT_ENOUGH:
                return milps, moved, True
            if lifted and left() > 0:
                if rebound is not None and k < len(pre) - 1:
                    _intersect_after(pre, k, rebound(pre, k))
                if enough is not None and left() > 0 and enough(pre):
                    return milps, moved, True
            continue
        # this layer's share: the time left split evenly over the layers still to refine (the
        # time a layer does not use passes on), so the last layers are reached
        layer_end = None if deadline is None else \
            time.monotonic() + left() / sum(1 for kk in layers if kk >= k and todo(kk))

        def layer_left(layer_end=layer_end) -> float:
            return np.inf if layer_end is None else layer_end - time.monotonic()

        prove = prover(blocks, pre, k, x_lower, x_upper, config)
        seen = witness.get(k) if witness is not None else None

        def one(j, l=l, u=u, end=layer_end, layer_left=layer_left, seen=seen, prove=prove):
            return prove(int(j), l, u, neuron_time=neuron_time, left=layer_left, deadline=end,
                         witnessed=(False, False) if seen is None else (bool(seen[0][j]), bool(seen[1][j])))

        chunk, stalled, tried = max(STALL_CHUNK, int(parallel)), False, len(order)
        l_before, u_before = l.copy(), u.copy()
        if getattr(prove, "batched", False):  # the whole layer in one search
            idx = np.array(order)
            width = u[idx] - l[idx]
            n, stable = prove(idx, l, u, neuron_time=neuron_time, left=layer_left, seen=seen)
            milps += n
            settled.update((k, j) for j in stable)
            narrowed = bool(np.any(u[idx] - l[idx] <= (1.0 - STALL_GAIN) * width))
            moved |= narrowed
            stalled = not narrowed
            order = []  # done: the chunks below are for one neuron at a time
        for at in range(0, len(order), chunk):
            part = np.array(order[at:at + chunk])
            width = u[part] - l[part]
            ended = 0
            for j, (n, done) in zip(part, map(one, part) if pool is None else pool.map(one, part)):
                milps += n
                if done:
                    settled.add((k, int(j)))
                    ended += 1
            narrowed = bool(np.any(u[part] - l[part] <= (1.0 - STALL_GAIN) * width))
            moved |= narrowed
            if layer_left() <= 0:
                break
            if not narrowed and not ended:
                stalled = True  # every MILP ran out of time, learning nothing: the neurons after are farther
                break
        if lift is not None and left() > 0 and lift(pre, k, left) == LIFT_ENOUGH:
            return milps, moved, True
        changed = bool(np.any(l != l_before) or np.any(u != u_before))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("refine layer %d: %d neurons to try, %d still unstable, %.1f s left%s", k, tried,
                      int(((l < 0) & (u > 0)).sum()), left(), " (stalled)" if stalled else "")
        if rebound is not None and changed and k < len(pre) - 1 and left() > 0:
            _intersect_after(pre, k, rebound(pre, k))
        if enough is not None and changed and left() > 0 and enough(pre):
            return milps, moved, True
        run = run + 1 if stalled else 0
        if run >= 2:
            break  # two layers in a row (the deeper MILPs are larger still)
    return milps, moved, False


def _intersect_after(pre, k: int, new) -> None:
    """Layers after ``k`` keep, per neuron, the tighter of their bounds and ``new``'s (in place), except
    where the two would cross: an empty interval there means one of them is wrong, and ``new`` is not
    used for that neuron."""
    for kk in range(k + 1, len(pre)):
        l, u = pre[kk]
        l_new, u_new = (np.asarray(a, dtype=np.float64).reshape(-1) for a in new[kk])
        lo, hi = np.fmax(l, l_new), np.fmin(u, u_new)
        ok = lo <= hi
        l[ok], u[ok] = lo[ok], hi[ok]


def milp_refine(blocks, pre, x_lower, x_upper, *, deadline: float | None = None, neuron_time: float = 1.0,
                config: SolverConfig = SolverConfig(), first_layer: int = 1, parallel: int = 1,
                rebound=None, witnesses: bool = True, method: str = "milp", enough=None,
                last_share: float | None = LAST_LAYER_SHARE, step_dtype: str = STEP_DTYPE,
                lift_share: float | None = None) -> MilpRefinement:
    """Refine the bounds ``pre`` of the unstable neurons of layers ``first_layer..`` over the box
    ``[x_lower, x_upper]`` (see the module docstring) by per-neuron proofs, ``method`` ``"milp"``
    (HiGHS, :func:`_refine_neuron`) or ``"split"`` (activation splitting, :func:`_split_layer`),
    each for at most ``neuron_time`` seconds, until ``deadline`` (``time.monotonic()``; within a phase
    of ``last_share`` below, each layer gets an even share of the phase's time left over its layers
    still to refine, nearest-to-stable neurons first). A pass that leaves time goes
    on with another over the neurons whose MILPs ran out of time (up to :data:`MAX_PASSES`, each
    with twice the time per MILP, on the bounds the last one left), while a pass narrows some bound.
    ``parallel`` MILPs of a layer run at once, in threads (HiGHS releases the GIL while it solves; a
    layer's neurons are independent given the layers before it, so the bounds do not depend on it,
    up to where the deadline cuts). ``enough(pre)``: asked after each layer whose bounds changed
    (after the re-bound); True ends the refinement there (``ended_early``), e.g. once the property
    follows from the bounds so far (:func:`property_check`). ``rebound(pre, k)``: bounds of every
    layer that hold on the box, computed from ``pre`` after layer ``k`` was refined (see the module docstring); it is called
    only while time is left and must keep to ``deadline`` itself. ``witnesses``: search for points on
    each side of every unstable neuron first and skip the MILPs they rule out (module docstring).
    Activation splitting takes a layer's neurons in one search (``parallel`` applies to MILPs;
    torch's own threads serve the splitting), its multiplier steps in ``step_dtype``.

    ``last_share`` (with a deadline and two or more layers to refine): the layers before the last
    are refined first, their passes in ``1 - last_share`` of the time left (and what they leave
    unused), and the last hidden layer after them, in the rest (see :data:`LAST_LAYER_SHARE`);
    None: every pass goes over all the layers.

    ``lift_share``: a layer that has at most :data:`~gpuopt.milp.tail.TAIL_MAX_LIVE` live neurons
    after its proofs in some pass has them lifted once, past their signs, towards the values found
    at points of the box (:func:`_lift_layer`, activation splitting; its own witness search, whatever
    ``witnesses`` says), in this share of its phase's time left (0: never; None: :data:`LIFT_SHARE`;
    only with a finite ``deadline``). ``lifted`` in the result counts the bounds it moved."""
    if not 1 <= int(parallel) <= 1024:
        raise InvalidInputError(f"`parallel` must be between 1 and 1024, got {parallel!r}")
    if method not in PROVERS:
        raise InvalidInputError(f"`method` must be one of {', '.join(PROVERS)}, got {method!r}")
    step_torch_dtype(step_dtype)  # a clear error for an unknown name
    prover = PROVERS[method]
    if method != "milp":
        parallel = 1
        prover = partial(prover, step_dtype=step_dtype)
    for k, (l, u) in enumerate(pre):
        if not (np.all(np.isfinite(l)) and np.all(np.isfinite(u))):
            raise InvalidInputError(f"`pre` bounds of layer {k} must be finite (NaN or inf proves nothing to refine from)")
    t0 = time.monotonic()
    config = replace(config, **REFINE_SOLVER)
    start = [(np.array(l, dtype=np.float64).reshape(-1), np.array(u, dtype=np.float64).reshape(-1)) for l, u in pre]
    pre = [(l.copy(), u.copy()) for l, u in start]
    milps, passes, settled, ended_early = 0, 0, set(), False
    witness = {} if witnesses else None
    ops_cache = []

    def witness_ops():  # the blocks in torch, built once, on the first layer that needs them
        if not ops_cache:
            import torch

            from ..network import LinearOp

            ops_cache.extend(LinearOp(b.matrix, b.bias, "cpu", torch.float64, b.passthrough) for b in blocks)
        return ops_cache

    def left() -> float:
        return np.inf if deadline is None else deadline - time.monotonic()

    lift_share = LIFT_SHARE if lift_share is None else lift_share
    if isinstance(lift_share, bool) or not isinstance(lift_share, (int, float)) or not 0.0 <= lift_share < 1.0:
        raise InvalidInputError(f"`lift_share` must be in [0, 1), got {lift_share!r}")
    lifted = set()  # the layers lifted (once each)
    lift_moves = [0]  # the neuron bounds they moved

    def lift(pre_, k: int, phase_left) -> bool:
        l, u = pre_[k]
        live = np.flatnonzero(live_mask(blocks[k], u))
        if lift_share <= 0 or k in lifted or not 0 < live.size <= TAIL_MAX_LIVE or deadline is None \
                or not math.isfinite(deadline) or phase_left() <= 0:
            return False  # (no deadline: a side that cannot close would search for ever)
        lifted.add(k)
        import torch

        from ..network import BlockChain
        from .base import Bounds

        began = time.monotonic()
        end = began + lift_share * max(phase_left(), 0.0)
        zmin, zmax = np.full(l.size, np.inf), np.full(l.size, -np.inf)
        zmin[live], zmax[live] = _extremes(witness_ops(), k, live, x_lower, x_upper, seed=k, starts=LIFT_STARTS,
                                           left=lambda: end - time.monotonic())
        before = (l.copy(), u.copy())
        prior = Bounds(tuple((torch.tensor(a[None]), torch.tensor(b[None])) for a, b in pre_[:k]),
                       (torch.tensor(l[None]), torch.tensor(u[None])), "prior")
        x_lo = torch.tensor(np.asarray(x_lower, dtype=np.float64).reshape(-1))
        x_hi = torch.tensor(np.asarray(x_upper, dtype=np.float64).reshape(-1))
        trials, sufficed, failed = [], [], []  # the checks' bounds; whether one sufficed; an error in one

        def check(l_new, u_new) -> bool:
            """Whether the lifted bounds so far suffice: the layers after re-bound on them, and ``enough``."""
            trial = [(a.copy(), b.copy()) for a, b in pre_]
            trial[k] = (l_new, u_new)
            try:
                if rebound is not None and k < len(trial) - 1 and phase_left() > 0:
                    _intersect_after(trial, k, rebound(trial, k))
                trials.append(trial)
                if phase_left() <= 0 or not enough(trial):
                    return False
            except GpuoptError as e:  # raised after the search, as outside a lift (not taken for a failed search)
                failed.append(e)
                return True
            sufficed.append(True)
            return True

        sides = 0
        try:
            sides = _lift_layer(BlockChain(blocks[:k + 1]), live, prior, x_lo, x_hi, l, u, zmin, zmax, deadline=end,
                                step_dtype=step_dtype, check=None if enough is None else check)
        except GpuoptError as e:  # (a search that cannot start: the bounds stay as they were)
            log.debug("refine: lifting layer %d failed: %s", k, e)
        if failed:
            raise failed[0]
        for trial in trials:  # every check's bounds hold on the box: each layer from k keeps the tighter
            _intersect_after(pre_, k - 1, trial)
        moves = int(np.sum(l != before[0]) + np.sum(u != before[1]))
        lift_moves[0] += moves
        log.debug("refine: layer %d lifted (%d live neurons, %d sides, %d checks) in %.2f s%s: %s", k, live.size,
                  sides, len(trials), time.monotonic() - began, ", enough for the property" if sufficed else "",
                  "; ".join(f"z{j} [{before[0][j]:.4g}, {before[1][j]:.4g}] -> [{l[j]:.4g}, {u[j]:.4g}]" for j in live))
        return LIFT_ENOUGH if sufficed else moves > 0

    if last_share is not None and not 0.0 <= last_share <= 1.0:
        raise InvalidInputError(f"`last_share` must be between 0 and 1 (or None), got {last_share!r}")
    layers = list(range(max(1, first_layer), len(pre)))
    phases = [(layers, deadline)]
    if last_share is not None and deadline is not None and len(layers) >= 2:
        phases = [(layers[:-1], time.monotonic() + (1.0 - last_share) * max(left(), 0.0)), (layers[-1:], deadline)]
    pool = ThreadPoolExecutor(int(parallel)) if parallel > 1 else None
    try:
        for phase_layers, phase_end in phases:
            def phase_left(phase_end=phase_end) -> float:
                return np.inf if phase_end is None else phase_end - time.monotonic()

            done = 0  # this phase's passes
            while done < MAX_PASSES and phase_left() > 0:
                n, moved, stop = _refine_pass(blocks, pre, phase_layers, x_lower, x_upper, settled, config=config,
                                              neuron_time=neuron_time * 2 ** done, parallel=parallel, pool=pool,
                                              left=phase_left, deadline=phase_end, rebound=rebound, witness=witness,
                                              witness_ops=witness_ops, prover=prover, enough=enough, lift=lift)
                milps += n
                done += bool(n)
                if stop:
                    ended_early = True
                    break
                if not n or not moved:
                    break  # nothing left to try, or nothing moved
            passes = max(passes, done)
            if ended_early:
                break
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    was_open = [(l0 < 0) & (u0 > 0) for l0, u0 in start]
    now_open = [(l < 0) & (u > 0) for l, u in pre]
    stabilised = sum(int((w & ~n).sum()) for w, n in zip(was_open, now_open))
    tightened = sum(int((n & ((l > l0) | (u < u0))).sum()) for n, (l0, u0), (l, u) in zip(now_open, start, pre))
    return MilpRefinement(pre=pre, milps=milps, stabilised=stabilised, tightened=tightened,
                          unstable_before=_unstable(start, blocks), unstable_after=_unstable(pre, blocks),
                          seconds=time.monotonic() - t0, passes=passes, method=method, ended_early=ended_early,
                          lifted=lift_moves[0])


#: the property check's limits (:func:`property_check`): at most this many seconds per check, and at
#: most this share of the time left
CHECK_SECONDS = 2.0
CHECK_SHARE = 0.02


def property_check(network, x_lower, x_upper, disjuncts, *, config=None, deadline: float | None = None,
                   output=None):
    """An ``enough`` for :func:`milp_refine`: activation splitting (:func:`gpuopt.relu_split.relu_split`)
    of the property's ``disjuncts`` (proof rows ``(C, d, strict)``) from the bounds so far, for at
    most :data:`CHECK_SECONDS` (and :data:`CHECK_SHARE` of the time left to ``deadline``); True when
    it proves every disjunct. The refinement then ends and the splitting after it starts at once
    (which proves them again on the same bounds): on mnist-net_256x4 the refinement went on for up
    to 200 s after bounds on which splitting proves the property on 9 domains. With ``output`` (sound
    output bounds), where the bounds have a narrow layer, tail MILPs (:mod:`gpuopt.milp.tail`) try
    each disjunct first, in half of the check's time (at threshold 0), and splitting gets the others:
    the pipeline's tail stage then tries them again with its own thresholds, and splitting takes what
    it leaves (256x4 prop_12_0.05: the check's tails proved all nine disjuncts after 150 s of a 200-s
    refinement). A check only ends the refinement; it proves nothing by itself."""
    import torch

    from ..milp.tail import prove_by_tail, tail_layers
    from ..relu_split import ReluSplitConfig, relu_split
    from .base import Bounds

    lo = torch.tensor(np.asarray(x_lower, dtype=np.float64).reshape(-1))
    hi = torch.tensor(np.asarray(x_upper, dtype=np.float64).reshape(-1))
    config = ReluSplitConfig() if config is None else config
    if output is not None and not all(np.all(np.isfinite(np.asarray(a, dtype=np.float64))) for a in output):
        output = None  # overflowing output bounds: no MILP to encode
    blocks = network.affine_blocks() if output is not None else None
    proven, tried = set(), {}  # disjuncts the tails proved; when each was last tried

    def enough(pre) -> bool:
        now = time.monotonic()
        seconds = CHECK_SECONDS if deadline is None else min(CHECK_SECONDS, CHECK_SHARE * max(deadline - now, 0.0))
        if seconds <= 0:
            return False
        if output is not None and len(proven) < len(disjuncts) and tail_layers(blocks, pre):
            # half of the check's time; a disjunct a tail proved stays proven (the bounds only
            # narrow, and a tail over narrower bounds has an optimum at least as high), and the
            # next check starts with those this one did not reach
            tail_end = now + 0.5 * seconds
            for n in sorted(set(range(len(disjuncts))) - proven, key=lambda n: tried.get(n, -1)):
                if time.monotonic() >= tail_end:
                    break
                C, d, _ = disjuncts[n]
                tried[n] = now
                try:
                    if prove_by_tail(blocks, pre, output, C, d, threshold=0.0, deadline=tail_end).layer is not None:
                        proven.add(n)
                except GpuoptError:  # (HiGHS refusing a model, a row it cannot encode): not proven
                    pass
            log.debug("refine: property check's tails have proved %d of %d disjuncts (%.2f s)", len(proven),
                      len(disjuncts), time.monotonic() - now)
        left = [row for n, row in enumerate(disjuncts) if n not in proven]
        if not left:
            return True
        end = now + seconds
        if end - time.monotonic() <= 0:
            return False
        bounds = Bounds(tuple((torch.tensor(l[None]), torch.tensor(u[None])) for l, u in pre), (None, None), "refined")
        res = relu_split(network, lo, hi, left, bounds, deadline=end, config=config)
        log.debug("refine: property check %s in %.2f s on %d domains", res.status, time.monotonic() - now, res.domains)
        return res.status == "unsat"

    return enough


def alpha_crown_rebound(network, x_lower, x_upper, output, *, steps: int = 20, deadline: float | None = None,
                        step_dtype: str = STEP_DTYPE):
    """A ``rebound`` for :func:`milp_refine`: CROWN, then alpha-CROWN with ``steps`` steps on the
    intermediate layers, over the box, from the bounds it is given (their layers' relaxations
    use them); ``output`` the output bounds (a ``(lower, upper)`` pair) they are intersected with. Each
    call takes at most :data:`REBOUND_SHARE` of the time left to ``deadline``."""
    import torch

    from .base import Bounds
    from .crown import alpha_crown_bounds, crown

    step_torch_dtype(step_dtype)  # a clear error for an unknown name, now rather than at the first call
    lo = torch.tensor(np.asarray(x_lower, dtype=np.float64).reshape(1, -1))
    hi = torch.tensor(np.asarray(x_upper, dtype=np.float64).reshape(1, -1))
    out = tuple(torch.tensor(np.asarray(a, dtype=np.float64).reshape(1, -1)) for a in output)

    def rebound(pre, k: int) -> list:
        stop = None if deadline is None else time.monotonic() + REBOUND_SHARE * max(deadline - time.monotonic(), 0.0)
        prior = Bounds(tuple((torch.tensor(l[None]), torch.tensor(u[None])) for l, u in pre), out, "prior")
        bounds = crown(network, lo, hi, prior=prior, deadline=stop)
        if steps > 0:
            bounds = alpha_crown_bounds(network, lo, hi, bounds, steps=steps, deadline=stop, step_dtype=step_dtype)
        return [(l[0].numpy(), u[0].numpy()) for l, u in bounds.pre_activation]

    return rebound
