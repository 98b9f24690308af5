"""Branch and bound over ReLU activations (activation splitting) with alpha- and beta-CROWN.

Notation as in :mod:`gpuopt.bounds.crown`: ``z_j`` the pre-activations, ``h_j = relu(z_j)``, an
input box ``X``, and one disjunct of the unsafe region, ``{y : C y <= d}`` (rows ``i``). The
disjunct is unreachable on a set ``S`` when ``max_i min_{x in S} (C f(x) - d)_i > 0``.

A *domain* is a set of split decisions ``s_{j,n} in {+1, -1}`` on unstable neurons: the domain
holds the inputs with ``s_{j,n} z_{j,n}(x) >= 0``. The two children of a split partition their
parent's inputs (up to the boundary ``z = 0``, which both contain), so the root box is covered by
the leaves at every moment. On a domain the split neuron's relaxation is exact: ``h = z`` when
active (its bounds become ``[max(l, 0), u]``), ``h = 0`` when inactive (``[l, min(u, 0)]``), and a
domain whose bounds cross (``l > u``) is empty.

Bounding a domain (beta-CROWN, Wang et al., NeurIPS 2021): for any ``beta >= 0``,
``min_{x in domain} g(x) >= min_{x in X} g(x) - sum beta_{j,n} s_{j,n} z_{j,n}(x)``, since the
added terms are ``<= 0`` on the domain. So the CROWN backward pass gets ``-beta s`` added to the
coefficient on each split ``z_j`` (:func:`gpuopt.bounds.crown._backward`), and every ``beta >= 0``
and every lower slope ``alpha in [0, 1]`` gives a sound bound. Both are optimised by projected
Adam ascent on the bound, warm-started from the parent. The steps skip the rounding pads of
:mod:`gpuopt.bounds.crown` (about a sixth of a step; their values only choose): the multipliers
that bound best are evaluated once more with the pads, and that bound (or the starting
multipliers' padded one, if higher) is the domain's. With :data:`STOP_BOXES` (on by default) that
evaluation also stops at the hidden layers' boxes on the way back (after dense blocks): where a
layer has few live neurons or bounds refined by LP/MILP, the bound concretised over its box can
beat the substitution to the input. A domain keeps its stop-free bound too (``plain``), which the
retry rule below reads.
The intermediate bounds start from the root's; each child's split neuron gets its sign's bound,
and the layers after it are re-bounded by CROWN with the child's own relaxation (:func:`_refine`,
as beta-CROWN recomputes the layers after a split), so that one split tightens every later layer;
by default only while that makes neurons stable or children empty often enough
(:class:`_RefineGate`).
A child keeps the larger of its bound and its parent's (its inputs are a subset of the parent's).
A child whose own bound (stop-free) falls below its parent's gets ``retry_steps`` more steps first: otherwise
it carries the parent's bound with worse multipliers, its descendants start from those, and copies
of the weakest bound double at each step without moving it (on mnist-net_256x4 prop_8_0.03 the
retry decides in 13 s what stalled at -0.0827 for the whole 20 s without it).

Branching (BaBSR-like, Bunel et al. 2020): the bound loses ``-min(a_n, 0) (-s_n l_n)`` through the
upper relaxation of an unstable neuron ``n`` (``a`` its coefficient on ``h``, ``s`` the upper
slope); splitting it removes that term, so the neuron with the largest loss is split (ties: the
widest ``|a| (u - l)``). That score sees only the inactive child's gain; ``branching="fsb"``
bounds both children of a few candidates and prefers a split whose weaker child gains
(:func:`_lookahead`).

A domain with no unstable neuron left is affine in ``x``: after ``leaf_steps`` of multiplier
optimisation, one that is still open gets its exact LP (:func:`_exact_leaf`, the disjunct's
margin over the domain in HiGHS): a safe dual bound above 0 closes it, and the LP's minimiser is
checked in float64 as a counterexample.

A plateau (below: the weakest open bound unchanged for a few steps) is of one of two kinds. Its
weakest domain's LP (HiGHS, the same relaxation and bounds) may be empty or well above the bound,
which the domain then only inherits from an ancestor, its own steps falling short; or it may equal
the bound, the relaxation itself being the limit. With ``stall_retry`` (on by default) the first
kind gives the children bounded below their parents :data:`STALL_BOUND_STEPS` steps instead of
``retry_steps``; with ``stall_tighten`` (off) their intermediate bounds are first optimised with
their own split constraints (:func:`_split_tighten`, as alpha-beta-CROWN optimises intermediate
bounds), an empty one being closed.

With ``lp_rescue`` (off by default), a plateau, the weakest open bound unchanged for
:data:`STALL_STEPS` steps, gets LP branch and bound: its domains are searched by their LPs in
HiGHS, warm-started, splitting the neuron the LP's minimiser needs (:mod:`gpuopt.lp_dive`; empty
nodes closed by Farkas certificates, the others by safe dual bounds), and what a dive leaves open
returns to the search as split domains.

When the search stops undecided, a disjunct with at most ``handoff`` open domains gets them back
as *leaves* (:attr:`ReluSplitResult.leaves`): the engine gives each leaf its own MILP, with the
leaf's bounds (its split neurons thereby fixed, no binary) — a disjunct holds iff it holds on
every leaf, the closed domains being proven already.

At each step the domains with the weakest bounds are split, in batches. For every open child the
input point that minimises its linear bound is checked in float64 against the problem: a point in
the unsafe region ends the search as ``sat``. The search ends ``unsat`` when no domain is open,
and otherwise at the deadline or the domain limit with the worst open bound.

Proofs assume float64: the rounding pads of :mod:`gpuopt.bounds.crown` cover the arithmetic, not a
rounding of the weights or rows to a narrower dtype (the pipeline always passes float64).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .bounds.base import Bounds, center_radius, strict_adjust
from .bounds.crown import (CHUNK_ELEMENTS, STEP_DTYPE, STEP_DTYPES, _backward, _magnitudes, _relaxation, _term_count,
                           activation_boxes, adam_ascent, grad_scale, open_rows, row_selectors, step_torch_dtype,
                           tighten_layer)
from .bounds.prune import DeadPruning
from .bounds.reach import spec_outputs
from .check import check_counterexample
from .errors import InvalidInputError
from .network import Network

__all__ = ["ReluSplitConfig", "ReluSplitResult", "relu_split"]

log = logging.getLogger("gpuopt")

#: branching rules of activation splitting (:attr:`ReluSplitConfig.branching`)
BRANCHING = ("babsr", "fsb")
#: the share of a batch's domains that must be proven before they leave its optimisation steps
#: (:func:`_bound`; each departure copies the others' data once)
COMPACT_SHARE = 0.125
#: activation splitting drops the neurons outside the cone of the outputs its disjuncts read, as it
#: drops dead ones (:class:`~gpuopt.bounds.prune.DeadPruning`); nothing changes on dense nets, whose
#: cone is every neuron. A switch for side-by-side runs and tests
CONE_PRUNING = True
#: a domain's bound is also concretised over each hidden layer's box on the way back (DeepPoly's
#: stops, :func:`gpuopt.bounds.crown._backward`'s ``boxes``; after dense blocks only,
#: :func:`_stop_layers`), and so are the later layers' bounds :func:`_refine` recomputes: where a
#: layer's bounds are tight (after the refinement) or few of its neurons are live, that beats the
#: substitution to the input. Only the padded evaluations stop there; the multiplier steps optimise
#: the full substitution (a stop that wins passes no gradient to the layers before it), and a
#: child's retry steps are judged by that stop-free bound (:attr:`_Domains.plain`): the stop gives a
#: parent and its children the same bottleneck value, which hid the children that need them (on
#: mnist-net_256x4 prop_8_0.03 that turned a decision in 12 s into a timeout). With that, on eight
#: mnist_fc searches at 60 s, no worst bound fell and 256x6 prop_7_0.03 rose from -0.152 to -0.097
#: (README, "Stops at the hidden layers' boxes")
STOP_BOXES = True
#: the order domains are split in (:attr:`ReluSplitConfig.selection`)
SELECTION = ("worst", "fair")
#: the share of the memory free when a search starts that its open domains may hold, when
#: :attr:`ReluSplitConfig.max_domains` is ``None`` (:func:`_domain_limit`): the store's buffers
#: have room for up to 1.5 times them, 2.5 times while they grow (old and new), and the rest
#: covers the batch's passes and other processes
DOMAIN_MEMORY_SHARE = 0.25
#: the open-domain limit when the free memory cannot be read
DEFAULT_MAX_DOMAINS = 50_000
#: the LP dives (:attr:`ReluSplitConfig.lp_rescue`): once the weakest open bound has not risen
#: for ``STALL_STEPS`` steps (a plateau), the plateau's domains get LP dives
#: (:func:`gpuopt.lp_dive.lp_dive`) ``DIVE_SECONDS`` at a time, while the dives have taken at most
#: ``LP_SHARE`` of the search's time; meanwhile the steps split only domains above the plateau
STALL_STEPS = 4
DIVE_SECONDS = 2.0
LP_SHARE = 0.5
#: a dive first tightens its domain's intermediate bounds by LP (:func:`gpuopt.bounds.lp.lp_tighten`,
#: 12-26 s a domain of mnist-net_256x4: off, since a 2-s dive cuts it short)
DIVE_TIGHTEN = False
#: on a plateau whose weakest domain's LP (at most ``STALL_LP_SECONDS``) is empty or above its bound
#: by 1% (:attr:`ReluSplitConfig.stall_retry`), the children bounded below their parents get
#: ``STALL_BOUND_STEPS`` steps, with :attr:`ReluSplitConfig.stall_tighten` after their intermediate
#: bounds are optimised with their split constraints (:func:`_split_tighten`,
#: ``STALL_TIGHTEN_STEPS`` steps a chunk of rows), while that has taken at most ``STALL_SHARE`` of
#: the search's time
STALL_TIGHTEN_STEPS = 20
STALL_BOUND_STEPS = 50
STALL_SHARE = 0.5
STALL_LP_SECONDS = 1.0


@dataclass(frozen=True)
class ReluSplitConfig:
    """``batch_size`` domains split per step (twice as many children bounded at once);
    ``steps`` alpha/beta optimisation steps per batch of children (``root_steps`` at the root,
    ``leaf_steps`` on a domain with no unstable neuron left, where the relaxation is exact and
    only the split constraints' multipliers remain to converge: the bound then tends to the LP
    optimum over the domain),
    ``lr_alpha``/``lr_beta`` their Adam step sizes; ``max_domains`` the open-domain limit (a
    memory guard: the search answers ``unknown`` beyond it; ``None``, the default: as many as
    fit in :data:`DOMAIN_MEMORY_SHARE` of the memory free at the start, in a pool worker on the
    CPU at most :data:`DEFAULT_MAX_DOMAINS`, :func:`_domain_limit`);
    ``refine``: re-bound each child's later layers (:func:`_refine`): ``True`` always,
    ``False`` never, ``"auto"`` while it pays (:class:`_RefineGate`); ``handoff``: a disjunct
    left with at most this many open domains when the search stops gets them back as leaves
    for an exact MILP each (0: none);
    ``branching``: ``"babsr"`` splits the neuron with the top intercept score, ``"fsb"`` looks
    ahead at ``candidates`` neurons per score (:func:`_lookahead`) and splits one whose weaker
    child gains; ``retry_steps``: a child whose own bound falls below its parent's gets this many
    more steps, once (0: none); ``selection``: ``"worst"`` splits the weakest domains of all
    disjuncts first, ``"fair"`` goes round the disjuncts (:func:`_fair_order`: each one's weakest
    domain, then each one's second weakest, ...), for many independent disjuncts searched at once;
    ``disjunct_domains``: a disjunct whose domains have had this many splits is given up, its open
    domains dropped and their worst bound kept (:attr:`ReluSplitResult.open_bound`; 0: no limit);
    ``stall_retry``: while the weakest open bound stalls on a plateau (:data:`STALL_STEPS`) whose
    weakest domain's LP shows the bound inherited (empty, or above it), the children bounded below
    their parents get :data:`STALL_BOUND_STEPS` multiplier steps instead of ``retry_steps``;
    ``stall_tighten``: on such a plateau they first get intermediate bounds optimised with their
    split constraints (:func:`_split_tighten`);
    ``lp_rescue``: when the weakest open bound stalls on a plateau, the plateau's domains get
    LP branch and bound in HiGHS (:data:`STALL_STEPS`, :func:`gpuopt.lp_dive.lp_dive`);
    ``step_dtype``: the dtype of the multiplier optimisation steps (one of
    :data:`~gpuopt.bounds.crown.STEP_DTYPES`, float32 by default): a domain's bound is still
    evaluated in the search's dtype, with the rounding pads, at the multipliers the steps found,
    so only the choice of the multipliers is made in the narrower dtype."""

    batch_size: int = 128
    steps: int = 10
    root_steps: int = 40
    leaf_steps: int = 200
    lr_alpha: float = 0.1
    lr_beta: float = 0.05
    max_domains: int | None = None
    refine: bool | str = "auto"
    handoff: int = 32
    branching: str = "babsr"
    candidates: int = 4
    retry_steps: int = 10
    selection: str = "worst"
    disjunct_domains: int = 0
    stall_retry: bool = True
    stall_tighten: bool = False
    lp_rescue: bool = False
    step_dtype: str = STEP_DTYPE

    def __post_init__(self):
        for name in ("batch_size", "max_domains"):
            v = getattr(self, name)
            if name == "max_domains" and v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidInputError(f"`{name}` must be an integer >= 1, got {v!r}")
        if self.branching not in BRANCHING:
            raise InvalidInputError(f"`branching` must be one of {', '.join(BRANCHING)}, got {self.branching!r}")
        if isinstance(self.candidates, bool) or not isinstance(self.candidates, int) or self.candidates < 1:
            raise InvalidInputError(f"`candidates` must be an integer >= 1, got {self.candidates!r}")
        if self.selection not in SELECTION:
            raise InvalidInputError(f"`selection` must be one of {', '.join(SELECTION)}, got {self.selection!r}")
        for name in ("steps", "root_steps", "leaf_steps", "handoff", "retry_steps", "disjunct_domains"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InvalidInputError(f"`{name}` must be an integer >= 0, got {v!r}")
        for name in ("stall_retry", "stall_tighten", "lp_rescue"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidInputError(f"`{name}` must be True or False, got {getattr(self, name)!r}")
        if self.step_dtype not in STEP_DTYPES:
            raise InvalidInputError(f"`step_dtype` must be one of {', '.join(STEP_DTYPES)}, got {self.step_dtype!r}")
        if not (isinstance(self.refine, bool) or self.refine == "auto"):
            raise InvalidInputError(f"`refine` must be True, False or 'auto', got {self.refine!r}")
        for name in ("lr_alpha", "lr_beta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise InvalidInputError(f"`{name}` must be a number > 0, got {v!r}")


@dataclass(frozen=True, eq=False)
class ReluSplitResult:
    """``status`` in ``{"unsat", "sat", "timeout", "unknown"}``: ``unsat`` when every disjunct is
    closed; ``closed`` per disjunct whether all its domains were proven (valid whatever the
    status); ``x``/``y``/``margin``: the float64-checked counterexample when ``sat``; ``domains``
    the number of domains bounded; ``open_domains`` those left open; ``worst_bound`` the lowest
    open bound (``+inf`` when none is open); ``proven_bound`` per disjunct the lowest bound over
    its closed domains (a proof only where ``closed`` says so); ``retried`` the children given
    ``config.retry_steps`` more steps; ``leaves`` per disjunct, when it
    is open with at most ``config.handoff`` domains and the search found no counterexample, its
    open domains as ``(bound, [(lower, upper) per ReLU layer])`` (float64 numpy; a split neuron's
    bounds hold its sign), weakest first, else None: the disjunct holds iff it holds on each;
    ``open_bound`` per disjunct the lowest bound of its open domains, those given up by
    ``config.disjunct_domains`` included (``+inf`` when closed): ``min(open_bound, proven_bound)``
    bounds the disjunct's ``max_i (C f(x) - d)_i`` below on the whole box."""

    status: str
    closed: tuple
    domains: int
    open_domains: int
    worst_bound: float
    proven_bound: tuple
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    margin: float | None = None
    leaves: tuple = ()
    retried: int = 0
    open_bound: tuple = ()


class _Domains:
    """Open domains as stacked tensors: per ReLU layer ``lower``/``upper`` ``(D, n_j)``, ``sign``
    ``(D, n_j)`` int8, ``alpha``/``beta`` ``(D, m, n_j)``; ``bound`` ``(D,)``; ``tag`` ``(D,)`` the
    disjunct; ``scores`` the branching scores of the last bounding and ``widths`` each neuron's
    ``|a| (u - l)`` there (both ``-1`` where a neuron cannot be split); ``plain`` ``(D,)`` the bound
    without the stops (:data:`STOP_BOXES`), kept as ``bound`` is (the best of the domain's and its
    ancestors'): a child's retry steps compare theirs with it."""

    FIELDS = ("lower", "upper", "sign", "alpha", "beta", "scores", "widths")

    def __init__(self, lower, upper, sign, alpha, beta, scores, widths, bound, tag, plain):
        self.lower, self.upper, self.sign, self.alpha, self.beta = lower, upper, sign, alpha, beta
        self.scores, self.widths, self.bound, self.tag, self.plain = scores, widths, bound, tag, plain

    def __len__(self):
        return self.bound.shape[0]

    def take(self, idx):
        return _Domains(*[[t[idx] for t in getattr(self, f)] for f in self.FIELDS], self.bound[idx], self.tag[idx],
                        self.plain[idx])

    @staticmethod
    def cat(parts):
        parts = [p for p in parts if p is not None and len(p)]
        if not parts:
            return None
        L = len(parts[0].lower)
        return _Domains(*[[torch.cat([getattr(p, f)[j] for p in parts]) for j in range(L)] for f in _Domains.FIELDS],
                        torch.cat([p.bound for p in parts]), torch.cat([p.tag for p in parts]),
                        torch.cat([p.plain for p in parts]))


class _DomainStore:
    """The open domains of a search, in buffers with rows to spare. Taking a batch out copies the
    batch and moves at most as many rows (the last rows fill the holes it leaves); adding writes
    into the spare rows, and the buffers grow by half when full (they never shrink). A step then
    copies rows in proportion to its batch; taking the rest out and joining it with the children
    copied every open domain twice a step (with 20,000 open domains of mnist-net_256x4, about
    0.8 GB each time). The rows' order in the buffers is not the order of selection, which sorts
    by bound each step."""

    def __init__(self, domains: _Domains | None):
        self.n = 0
        self._layers = 0
        self._bufs = None  # the fields' per-layer tensors, then bound, tag and plain, each (capacity, ...)
        self.push(domains)

    def __len__(self):
        return self.n

    @staticmethod
    def _flat(d: _Domains) -> list:
        return [t for f in _Domains.FIELDS for t in getattr(d, f)] + [d.bound, d.tag, d.plain]

    def _wrap(self, flat: list) -> _Domains:
        L = self._layers
        return _Domains(*[flat[i * L:(i + 1) * L] for i in range(len(_Domains.FIELDS))], flat[-3], flat[-2], flat[-1])

    def view(self) -> _Domains | None:
        """The open domains as views of the buffers (valid until the next :meth:`push`/:meth:`pop`)."""
        if not self.n:
            return None
        return self._wrap([t[:self.n] for t in self._bufs])

    def push(self, domains: _Domains | None) -> None:
        if domains is None or not len(domains):
            return
        src, k = self._flat(domains), len(domains)
        if self._bufs is None:
            self._layers = len(domains.lower)
            self._bufs = [t.new_empty((max(2 * k, 256),) + tuple(t.shape[1:])) for t in src]
        elif self.n + k > self._bufs[0].shape[0]:
            cap = max(self._bufs[0].shape[0] * 3 // 2, self.n + k)
            grown = [t.new_empty((cap,) + tuple(t.shape[1:])) for t in self._bufs]
            for new, old in zip(grown, self._bufs):
                new[:self.n] = old[:self.n]
            self._bufs = grown
        for buf, t in zip(self._bufs, src):
            buf[self.n:self.n + k] = t
        self.n += k

    def pop(self, idx: torch.Tensor) -> _Domains:
        """The domains at positions ``idx`` (distinct, of :meth:`view`), taken out of the store."""
        n, k = self.n, idx.numel()
        out = self._wrap([t[:n][idx] for t in self._bufs])
        m = n - k
        chosen = torch.zeros(n, dtype=torch.bool, device=idx.device)
        chosen[idx] = True
        holes = torch.nonzero(chosen[:m]).flatten()  # as many as the rows after m not chosen
        if holes.numel():
            movers = torch.nonzero(~chosen[m:]).flatten() + m
            for t in self._bufs:
                t[holes] = t[movers]
        self.n = m
        return out


def _bound(ops, pre_l, pre_u, sign, alpha, beta, C, d, strict, x_mid, x_rad, n_terms, steps, config, deadline,
           step_ops=None, beta_scale=None):
    """alpha/beta-optimised bounds of the rows ``C y - d`` on a batch of domains.

    Returns ``(bound (D,), alpha, beta, scores, widths, coef_x (D, n_in) of the best row, plain (D,))``;
    ``bound`` is the max over rows of the row lower bounds (strictness folded in), the best over the
    steps; ``plain`` the same without the stops (:data:`STOP_BOXES`; equal to ``bound`` without
    them), the substitution's own bound, which the steps optimise.
    ``step_ops``: the blocks in the steps' own dtype (:attr:`ReluSplitConfig.step_dtype`, when it
    is not that of ``ops``) for the optimisation steps, whose values only choose the multipliers;
    the bound returned is evaluated in the dtype of ``ops``, with the rounding pads, at the best
    multipliers found (cast back). ``beta_scale`` ``(D,)``: per domain, a factor on the split
    multipliers' step size (:func:`beta_step_scale`; default 1)."""
    D = pre_l[0].shape[0]
    L = len(ops) - 1
    relax = [_relaxation(l, u, op.passthrough) for l, u, op in zip(pre_l, pre_u, ops)]
    hmax = _magnitudes(x_mid, x_rad, list(zip(pre_l, pre_u)), ops)
    unstable = [_unstable(l, u, op)[:, None, :] for l, u, op in zip(pre_l, pre_u, ops)]
    split = [(sg != 0)[:, None, :] for sg in sign]
    sgn = [sg.to(C.dtype)[:, None, :] for sg in sign]

    boxes = _stop_layers(pre_l, pre_u, ops)
    full = (relax, unstable, split, sgn, C, d, strict, x_mid, x_rad, hmax, boxes)

    def evaluate(alpha_, beta_, record=None, pad=True, ctx=full, ops_=ops, plain=None):
        """The rows at the multipliers ``alpha_``/``beta_`` of the domains whose data ``ctx`` holds;
        ``plain`` (a list) receives the rows before the stops."""
        relax_, unstable_, split_, sgn_, C_, d_, strict_, x_mid_, x_rad_, hmax_, boxes_ = ctx
        rel = [(torch.where(unst, a.clamp(0.0, 1.0), a0[:, None, :]), s, ic)
               for a, unst, (a0, s, ic) in zip(alpha_, unstable_, relax_)]
        terms = [torch.where(sp, -b.clamp(min=0.0) * sg, torch.zeros_like(b)) for b, sp, sg in zip(beta_, split_, sgn_)]
        before = [] if plain is not None else None
        rows, coef = _backward(C_, L, ops_, rel, x_mid_, x_rad_, n_terms, hmax_, split_terms=terms, record=record,
                               pad=pad, boxes=boxes_ if pad else None, plain=before)
        if plain is not None:
            plain.append(strict_adjust(before[0] - d_, strict_))
        return strict_adjust(rows - d_, strict_), coef

    def subset(ctx, idx):
        relax_, unstable_, split_, sgn_, C_, d_, strict_, x_mid_, x_rad_, hmax_, boxes_ = ctx
        return ([tuple(t[idx] for t in r) for r in relax_], [t[idx] for t in unstable_], [t[idx] for t in split_],
                [t[idx] for t in sgn_], C_[idx], d_[idx], strict_[idx], x_mid_[idx], x_rad_[idx],
                {j: h[idx] for j, h in hmax_.items()},
                None if boxes_ is None else [None if bx is None else (bx[0][idx], bx[1][idx]) for bx in boxes_])

    first_plain = []
    with torch.no_grad():
        first, _ = evaluate(alpha, beta, plain=first_plain)  # sound (padded): the multipliers the domain came with
    best_rows = torch.full_like(first, -math.inf)  # the steps' values, unpadded: they only choose
    best_alpha, best_beta = [a.clone() for a in alpha], [b.clone() for b in beta]
    # the steps run on the domains not yet proven: one closed by its starting multipliers (a child
    # often is, by its parent's) leaves out, and when a share of those left are proven by the steps
    # (COMPACT_SHARE), they leave the batch too, whose later steps then cost less
    act = torch.nonzero(~(first.amax(dim=1) > 0)).flatten()
    n_a = len(alpha)
    ctx = full if act.numel() == D else subset(full, act)
    low = step_ops is not None and steps > 0 and act.numel() > 0  # the steps in step_ops' dtype
    step_dtype = step_ops[0].bias.dtype if low else C.dtype
    if low:
        ctx = _cast_context(ctx, step_dtype)
    params = [p[act].detach().to(step_dtype).requires_grad_(True) for p in alpha + beta]  # indexing copies
    # whole: the batch's best are the results themselves, updated in place
    whole = act.numel() == D and not low
    keep = best_alpha + best_beta if whole else [p.detach().clone() for p in params]  # the batch's best multipliers
    top = best_rows if whole else best_rows[act].to(step_dtype)  # and their best rows
    lr_b = config.lr_beta if beta_scale is None else config.lr_beta * beta_scale[act].to(step_dtype)[:, None, None]
    lrs = [config.lr_alpha] * n_a + [lr_b] * len(beta)
    m1 = [torch.zeros_like(p) for p in params]
    m2 = [torch.zeros_like(p) for p in params]

    def write_back():
        if whole:  # the multipliers are in place; the rows are a new tensor each step
            best_rows.copy_(top)
            return
        best_rows[act] = top.to(best_rows.dtype)
        for dst, src in zip(best_alpha + best_beta, keep):
            dst[act] = src.to(dst.dtype)

    last, scale = 0.0, None
    for t in range(1, steps + 1):
        t0 = time.monotonic()
        if act.numel() == 0 or deadline is not None and t0 + last > deadline:
            break
        with torch.enable_grad():
            rows, _ = evaluate(params[:n_a], params[n_a:], pad=False, ctx=ctx, ops_=step_ops if low else ops)
            grads = torch.autograd.grad(rows.amax(dim=1).sum(), params)
        with torch.no_grad():
            if low:  # narrower steps: each domain's gradients scaled (grad_scale), so g * g cannot overflow
                scale = grad_scale(grads, 1) if scale is None else scale
                grads = [g / scale[:, None, None] for g in grads]
            better = rows.amax(dim=1) > top.amax(dim=1)
            top = torch.where(better[:, None], rows.detach(), top)
            for kp, p in zip(keep, params):
                kp.copy_(torch.where(better[:, None, None], p.detach(), kp))
            for p, g, a1, a2, lr in zip(params, grads, m1, m2, lrs):
                a1.mul_(0.9).add_(g, alpha=0.1)
                a2.mul_(0.999).addcmul_(g, g, value=0.001)
                p.add_(lr * (a1 / (1 - 0.9 ** t)) / ((a2 / (1 - 0.999 ** t)).sqrt() + 1e-12))
            for p in params[:n_a]:
                p.clamp_(0.0, 1.0)
            for p in params[n_a:]:
                p.clamp_(min=0.0)
            done = top.amax(dim=1) > 0  # proven by the best step so far (the padded evaluation decides)
            n_done = int(done.sum())
            if n_done and (n_done == done.numel() or n_done >= COMPACT_SHARE * done.numel()) and t < steps:
                write_back()
                whole = False  # from here on the batch keeps copies of its best (indexing copies)
                stay = torch.nonzero(~done).flatten()
                act, ctx, top = act[stay], subset(ctx, stay), top[stay]
                params = [p.detach()[stay].requires_grad_(True) for p in params]
                keep = [k[stay] for k in keep]
                m1, m2 = [a[stay] for a in m1], [a[stay] for a in m2]
                lrs = [lr[stay] if torch.is_tensor(lr) else lr for lr in lrs]
                scale = None if scale is None else scale[stay]
        last = time.monotonic() - t0
    write_back()
    # the branching scores and the input coefficients at the best parameters
    record, best_plain = [], []
    with torch.no_grad():
        rows, coef = evaluate(best_alpha, best_beta, record, plain=best_plain)
    rows = torch.maximum(rows, first)  # both are sound; keep the better per row
    bound, r_best = rows.max(dim=1)
    plain = torch.maximum(best_plain[0], first_plain[0]).amax(dim=1)
    idx = torch.arange(D, device=C.device)
    scores, widths = [], []
    for j, a_h in zip(range(L - 1, -1, -1), record):
        a = a_h[idx, r_best]  # (D, n_j)
        _, s, icpt = relax[j]
        loss = (-a.clamp(max=0)) * icpt
        width = a.abs() * (pre_u[j] - pre_l[j])
        can = unstable[j][:, 0, :] & (sign[j] == 0)
        scores.append(torch.where(can, loss + 1e-6 * width, torch.full_like(loss, -1.0)))
        widths.append(torch.where(can, width, torch.full_like(width, -1.0)))
    scores.reverse()
    widths.reverse()
    return bound, best_alpha, best_beta, scores, widths, coef[idx, r_best], plain


def _stop_layers(pre_l, pre_u, ops):
    """The boxes where the domains' bounds stop (:data:`STOP_BOXES`; ``None`` when off): the
    :func:`~gpuopt.bounds.crown.activation_boxes` of each layer whose block is stored dense, none
    after a sparse block (convolutions, large sparse layers): a stop costs about as much as its
    layer's relaxation step, where a sparse block's backward product is cheap (with stops at every
    layer, oval21's first six searches ran 7-13% slower and won no bound)."""
    if not STOP_BOXES:
        return None
    return [box if op.dense is not None else None for box, op in zip(activation_boxes(pre_l, pre_u, ops), ops)]


def _cast_context(ctx, dtype):
    """:func:`_bound`'s per-domain data with its floating tensors in ``dtype`` (the masks as they are;
    the magnitudes ``hmax``, for the pads only, left out)."""
    def cast(t):
        return t.to(dtype) if t.is_floating_point() else t

    relax_, unstable_, split_, sgn_, C_, d_, strict_, x_mid_, x_rad_, _, boxes_ = ctx
    return ([tuple(cast(t) for t in r) for r in relax_], unstable_, split_, [cast(t) for t in sgn_], cast(C_), cast(d_),
            strict_, cast(x_mid_), cast(x_rad_), {},
            None if boxes_ is None else [None if bx is None else (cast(bx[0]), cast(bx[1])) for bx in boxes_])


#: the least factor :func:`beta_step_scale` gives the split multipliers' step size
BETA_SCALE_FLOOR = 2.0 ** -64


def output_magnitude(network: Network, bounds: Bounds, device, dtype) -> torch.Tensor:
    """``(n_out,)``: a bound on ``|y_j|`` from the last ReLU layer's bounds ``[l, u]``:
    ``|M_L| h_max + |c_L|`` with ``h_max = max(u, 0)`` (``max(|l|, |u|)`` where the activation
    passes the coordinate through), tightened by the output bounds where ``bounds`` has them."""
    ops = network.linear_ops(device, dtype)
    l, u = (torch.as_tensor(t).to(device, dtype).reshape(1, -1) for t in bounds.pre_activation[-1])
    h_max = u.clamp(min=0)
    through = ops[-2].passthrough
    if through is not None:
        h_max = torch.where(through, torch.maximum(l.abs(), u.abs()), h_max)
    mag = (ops[-1].abs_matvec(h_max) + ops[-1].bias.abs()).reshape(-1)
    ly, uy = bounds.output if bounds.output is not None else (None, None)
    if ly is not None and uy is not None:
        y = torch.maximum(torch.as_tensor(ly).abs(), torch.as_tensor(uy).abs()).to(device, dtype).reshape(-1)
        mag = torch.fmin(mag, y)
    return mag


def beta_step_scale(C: torch.Tensor, d: torch.Tensor, y_mag: torch.Tensor) -> torch.Tensor:
    """Per disjunct ``(K,)``, the factor on the split multipliers' Adam step size: the power of two
    nearest the magnitude of its rows' values, ``max_r sum_j |C_rj| y_mag_j`` (``y_mag``: a bound
    on ``|y_j|``, :func:`output_magnitude`), at most 1 (1 where it is 0 or not finite).

    A multiplier ``beta`` is in the units of the spec's rows: scaling the outputs by ``c`` scales
    the optimal multipliers by ``c``, while Adam's steps have the size of the step size whatever
    the gradients' scale. With the factor, a network whose outputs are ``2^-k`` times smaller
    takes the same steps in proportion (the same search, up to the rounding to a power of two):
    a net with outputs scaled by 2^-10 needed 1,579 domains where the unscaled one needed 157.
    Outputs of magnitude 1 and more (classifier logits) keep the step size as configured; the
    factor is at least :data:`BETA_SCALE_FLOOR` (a float32 step size of ``0.05 * 2^-160`` would be
    0, and the multipliers would not move at all)."""
    ones = torch.ones(C.shape[0], dtype=C.dtype, device=C.device)
    real = torch.isfinite(d)  # padding rows have d = inf
    mag = torch.where(real, (C.abs() * y_mag.to(C)).sum(dim=-1), torch.zeros_like(d)).amax(dim=1)
    ok = torch.isfinite(mag) & (mag > 0)
    scale = torch.exp2(torch.round(torch.log2(torch.where(ok, mag, ones))))
    return torch.where(ok, scale.clamp(min=BETA_SCALE_FLOOR, max=1.0), ones)


def relu_split(network: Network, lower, upper, disjuncts, bounds: Bounds, *, problem=None,
               deadline: float | None = None, config: ReluSplitConfig = ReluSplitConfig(),
               stop=None, progress=None) -> ReluSplitResult:
    """Prove every disjunct unreachable on the box ``[lower, upper]`` (``(n_in,)``) by activation
    splitting, or find a counterexample (checked in float64 against ``problem``, whose unsafe
    region contains the disjuncts). ``disjuncts``: ``(C_k (m_k, n_out), d_k (m_k,), strict_k
    (m_k,) bool or None)``; disjunct ``k`` is closed once ``max_i (C_k f(x) - d_k)_i > 0`` is proven
    on all its domains. The domains of all disjuncts share one queue and are bounded together.
    ``bounds``: sound pre-activation bounds on the box (batch 1). ``stop``: a callable asked
    before each step; once it answers true the search ends as at its deadline (another search
    decided the item). ``progress``: a callable asked before each step with a function of no
    arguments that gives, per disjunct, the lowest bound of its domains so far (open, stuck, given
    up or closed; what :attr:`ReluSplitResult.open_bound` and ``proven_bound`` give at the end,
    combined by ``min``: ``min_x (C_k f(x) - d_k)`` over the box is at least it for the rows'
    maximum); once it answers true the search ends as at its deadline. Works in the dtype/device of
    ``lower``."""
    lo = torch.as_tensor(lower).reshape(1, -1)
    hi = torch.as_tensor(upper).reshape(1, -1).to(lo)
    dtype, dev = lo.dtype, lo.device
    for j, (l, u) in enumerate(bounds.pre_activation):
        if not (bool(torch.isfinite(torch.as_tensor(l)).all()) and bool(torch.isfinite(torch.as_tensor(u)).all())):
            raise InvalidInputError(f"the pre-activation bounds of ReLU layer {j} must be finite (a NaN or inf "
                                    "bound proves nothing to split from)")
    if not bounds.pre_activation:  # (found by review: an IndexError deep inside the bound passes)
        raise InvalidInputError("activation splitting needs a network with at least one ReLU layer; this one is "
                                "affine, so CROWN's bound or the LP over the box is already exact")
    K = len(disjuncts)
    M = max(np.asarray(C).reshape(-1, network.output_size).shape[0] for C, _, _ in disjuncts)
    C_all = torch.zeros((K, M, network.output_size), dtype=dtype, device=dev)
    d_all = torch.full((K, M), math.inf, dtype=dtype, device=dev)  # padding rows: -inf, never the max
    s_all = torch.zeros((K, M), dtype=torch.bool, device=dev)
    for k, (C, d, strict) in enumerate(disjuncts):
        C = torch.as_tensor(np.array(C, dtype=np.float64)).reshape(-1, network.output_size)
        m = C.shape[0]
        C_all[k, :m] = C.to(dev, dtype)
        d_all[k, :m] = torch.as_tensor(np.array(d, dtype=np.float64)).to(dev, dtype).reshape(-1)
        if strict is not None:
            s_all[k, :m] = torch.as_tensor(np.array(strict, dtype=bool)).to(dev)
    # the neurons dead on the whole box drop out of every pass (the domains carry the others), and
    # so do those outside the cone of the outputs the disjuncts read, with the other outputs
    used = spec_outputs(C_all) if CONE_PRUNING else None
    prune = DeadPruning(network, [(l.to(dev, dtype), u.to(dev, dtype)) for l, u in bounds.pre_activation],
                        outputs=used if used is not None and used.numel() else None)
    beta_scales = beta_step_scale(C_all, d_all, output_magnitude(network, bounds, dev, dtype))
    if bool((beta_scales < 1).any()):
        log.debug("relu_split: the split multipliers' step size scaled by %s (small outputs)",
                  sorted(set(beta_scales.tolist())))
    if prune.out_keep is not None:
        C_all = C_all[..., prune.out_keep.to(dev)].contiguous()
    ops = prune.ops(dev, dtype)
    step_dtype = step_torch_dtype(config.step_dtype)
    step_ops = prune.ops(dev, step_dtype) if step_dtype != dtype else None  # the steps' blocks in their own dtype
    n_terms = _term_count(network, lo)
    x_mid, x_rad = center_radius(lo, hi)
    tag0 = torch.arange(K, device=dev)
    pre_l = [prune.narrow(l.to(dev, dtype).reshape(1, -1), j).expand(K, -1)
             for j, (l, _) in enumerate(bounds.pre_activation)]
    pre_u = [prune.narrow(u.to(dev, dtype).reshape(1, -1), j).expand(K, -1)
             for j, (_, u) in enumerate(bounds.pre_activation)]
    sign = [torch.zeros_like(l, dtype=torch.int8) for l in pre_l]
    alpha0 = [_relaxation(l, u, op.passthrough)[0][:, None, :].expand(K, M, l.shape[1]).clone()
              for l, u, op in zip(pre_l, pre_u, ops)]
    beta0 = [torch.zeros((K, M, l.shape[1]), dtype=dtype, device=dev) for l in pre_l]
    proven = [math.inf] * K

    def bound_batch(pl, pu, sg, al, be, tag, steps):
        D = tag.shape[0]
        return _bound(ops, pl, pu, sg, al, be, C_all[tag], d_all[tag], s_all[tag], x_mid.expand(D, -1),
                      x_rad.expand(D, -1), n_terms, steps, config, deadline, step_ops=step_ops,
                      beta_scale=beta_scales[tag])

    def try_points(coef_x, bnd):
        """The input points minimising each domain's linear bound, checked in float64."""
        if problem is None or not coef_x.shape[0]:
            return None
        x = torch.where(coef_x >= 0, lo, hi).to("cpu", torch.float64).numpy()
        idx = np.argsort(bnd.to("cpu").numpy())[:16]
        # one batched float64 pass screens out the points clearly safe (the exact check is per point)
        y = network.forward64(x[idx])
        scale = 1.0 + np.abs(y).max(axis=1)
        for i in idx[problem.spec.margin64(y) <= 1e-3 * scale]:
            c = check_counterexample(problem, x[i])
            if c.ok:
                return c
        return None

    def note_closed(bnd, tag, closed):
        for k, v in zip(tag[closed].tolist(), bnd[closed].tolist()):
            proven[k] = min(proven[k], v)

    def result(status, domains, explored, found=None):
        open_bound = dict(given_up)  # disjunct -> its lowest open bound
        if domains is not None:
            for k, v in zip(domains.tag.tolist(), domains.bound.tolist()):
                open_bound[k] = min(open_bound.get(k, math.inf), _nan_low(v))
        closed = tuple(k not in open_bound for k in range(K))
        if status != "sat" and all(closed):
            status = "unsat"
        elif status == "unsat" and not all(closed):
            status = "unknown"  # disjuncts given up
        worst = min(open_bound.values(), default=math.inf)
        n_open = 0 if domains is None else len(domains)
        per = tuple(open_bound.get(k, math.inf) for k in range(K))
        if found is not None:
            return ReluSplitResult("sat", closed, explored, n_open, worst, tuple(proven), found.x, found.y, found.margin,
                                   retried=retried, open_bound=per)
        return ReluSplitResult(status, closed, explored, n_open, worst, tuple(proven),
                               leaves=_leaves(domains, K, config.handoff, prune, dropped=given_up), retried=retried,
                               open_bound=per)

    bound, alpha, beta, scores, widths, coef_x, plain = bound_batch(pre_l, pre_u, sign, alpha0, beta0, tag0,
                                                                    config.root_steps)
    explored = K
    retried = 0  # children given retry_steps
    given_up = {}  # disjunct -> the lowest bound of its domains when dropped (config.disjunct_domains)
    closed = bound > 0
    note_closed(bound, tag0, closed)
    roots = _Domains(pre_l, pre_u, sign, alpha, beta, scores, widths, bound, tag0, plain)
    found = try_points(coef_x[~closed], bound[~closed])
    domains = roots.take(torch.nonzero(~closed).flatten())
    if found is not None:
        return result("sat", domains, explored, found)
    store = _DomainStore(domains)
    domains = None
    stuck = None  # domains with no neuron left to split: open for good (the MILP may decide them)
    gate = _RefineGate(config.refine)
    limit = _domain_limit(roots, config) if config.max_domains is None else config.max_domains
    status = "unsat"
    spent = torch.zeros(K, dtype=torch.long)  # per disjunct, the domains split so far
    weakest = []  # per step, the weakest open bound (the stall test of the LP dives)
    plateau = None  # the weakest bound while it has stalled
    lp_seconds, search_start = 0.0, time.monotonic()
    stall_seconds = 0.0  # spent on the plateau's children (config.stall_retry, config.stall_tighten)
    inherited = False  # the plateau's kind

    def plateau_kind(dom: _Domains) -> bool:
        """Whether the plateau's weakest domain ``dom`` (one) only inherits its bound: its LP is
        empty (a Farkas certificate) or its safe LP bound is above the bound by 1%."""
        k = int(dom.tag[0])
        until = time.monotonic() + STALL_LP_SECONDS
        lp = _domain_lp(network, lo[0], hi[0], [prune.widen(l[0], j, 0) for j, l in enumerate(dom.lower)],
                        [prune.widen(u[0], j, 1) for j, u in enumerate(dom.upper)], disjuncts[k][0], disjuncts[k][1],
                        until if deadline is None else min(until, deadline))
        if lp is None:
            return False
        session, _, value = lp
        b = float(dom.plain[0])  # what the steps reach (without the stops)
        kind = _inherited(value, b, session.infeasible())
        log.debug("relu_split: plateau at %.6g, its weakest domain's LP %.6g: %s", b, value,
                  "inherited" if kind else "the relaxation's")
        return kind

    def dive(parents: _Domains, until: float):
        """The LP dives (:func:`gpuopt.lp_dive.lp_dive`) of ``parents``, weakest first, until
        ``until``. Returns the domains left open (a dive's open nodes as domains with its splits,
        their bounds the LPs'; with a counterexample, every parent not dived yet too), the LPs
        solved, whether a dive closed or split anything, and a counterexample if a dive's LP
        minimiser passed the float64 check."""
        from .bounds.lp import lp_tighten
        from .lp_dive import lp_dive

        left, lps, progress = [], 0, False
        order = torch.argsort(parents.bound).tolist()
        for n, i in enumerate(order):
            dom = parents.take(torch.tensor([i], device=dev))
            if time.monotonic() >= until:
                left.append(dom)
                continue
            k = int(dom.tag[0])
            lower = [prune.widen(l[0], j, 0) for j, l in enumerate(dom.lower)]
            upper = [prune.widen(u[0], j, 1) for j, u in enumerate(dom.upper)]
            if DIVE_TIGHTEN:
                # the domain's own LP bound tightening first (safe bounds, kept by the domain)
                tight = lp_tighten(network.affine_blocks(), [(l.cpu().numpy(), u.cpu().numpy()) for l, u in zip(lower, upper)],
                                   lo[0].cpu().numpy(), hi[0].cpu().numpy(), deadline=until).pre
                lps += 1
                if any(bool(np.any(tl > tu)) for tl, tu in tight):
                    progress = True  # crossing safe bounds: no input reaches the domain
                    continue
                for j, (tl, tu) in enumerate(tight):
                    tl = prune.narrow(torch.as_tensor(tl, dtype=dtype, device=dev), j)
                    tu = prune.narrow(torch.as_tensor(tu, dtype=dtype, device=dev), j)
                    dom.lower[j][0] = torch.maximum(dom.lower[j][0], tl)
                    dom.upper[j][0] = torch.minimum(dom.upper[j][0], tu)
                lower = [prune.widen(l[0], j, 0) for j, l in enumerate(dom.lower)]
                upper = [prune.widen(u[0], j, 1) for j, u in enumerate(dom.upper)]
            model = _leaf_model(network, lo[0], hi[0], lower, upper, disjuncts[k][0], disjuncts[k][1])
            if model is None:
                left.append(dom)
                continue
            res = lp_dive(model, until)
            lps += res.lps
            progress |= res.closed or res.proven < math.inf or any(splits for _, splits in res.open)
            if res.proven < math.inf:
                note_closed(torch.tensor([res.proven], dtype=dtype), dom.tag, torch.ones(1, dtype=torch.bool))
            for x in res.points if problem is not None else ():
                check = check_counterexample(problem, x)
                if check.ok:  # every domain still open stays so: the disjuncts' answers hold
                    rest = parents.take(torch.tensor(order[n + 1:], dtype=torch.long, device=dev))
                    return _Domains.cat(left + [dom, rest]), lps, progress, check
            for b, splits in res.open:
                child = dom.take(torch.zeros(1, dtype=torch.long, device=dev))
                for j, neuron, active in splits:
                    kept = prune.keep[j]
                    p = int(torch.searchsorted(kept, neuron))
                    if p < kept.numel() and int(kept[p]) == neuron:
                        if active:
                            child.lower[j][0, p] = child.lower[j][0, p].clamp(min=0.0)
                        else:
                            child.upper[j][0, p] = child.upper[j][0, p].clamp(max=0.0)
                        child.sign[j][0, p] = 1 if active else -1
                child.bound[0] = max(float(child.bound[0]), b)
                child.plain[0] = max(float(child.plain[0]), b)
                left.append(child)
        return (_Domains.cat(left) if left else None), lps, progress, None
    def lowest() -> tuple:
        """Per disjunct, the lowest bound of its domains so far (``progress``)."""
        low = [min(proven[k], given_up.get(k, math.inf)) for k in range(K)]
        for part in (store.view(), stuck):
            if part is not None:
                for k, v in zip(part.tag.tolist(), part.bound.tolist()):
                    low[k] = min(low[k], _nan_low(v))
        return tuple(low)

    while len(store):
        if (deadline is not None and time.monotonic() > deadline) or (stop is not None and stop()) \
                or (progress is not None and progress(lowest)):
            status = "timeout"
            break
        if len(store) > limit:
            status = "unknown"
            break
        domains = store.view()
        if log.isEnabledFor(logging.DEBUG):
            depth = sum((sg != 0).sum(dim=1) for sg in domains.sign)
            per = " ".join(f"{k}:{int((domains.tag == k).sum())}/{float(domains.bound[domains.tag == k].min()):.4g}"
                           for k in sorted(set(domains.tag.tolist())))
            log.debug("relu_split: %d explored, %d open (depth min %d median %d max %d), worst bound %.4g; "
                      "per disjunct open/worst %s", explored, len(domains), int(depth.min()), int(depth.median()),
                      int(depth.max()), float(domains.bound.min()), per)
        if config.lp_rescue or config.stall_retry or config.stall_tighten:  # the plateau test (a sync a step)
            low = float(domains.bound.min())
            weakest.append(low)
            tol = 1e-9 * max(1.0, abs(low))
            if plateau is not None and low > plateau + tol:
                plateau = None  # the plateau is cleared
            if plateau is None and len(weakest) > STALL_STEPS and low <= weakest[-1 - STALL_STEPS] + tol:
                plateau = low
                if config.stall_retry or config.stall_tighten:
                    t_kind = time.monotonic()
                    inherited = plateau_kind(domains.take(torch.argmin(domains.bound).reshape(1)))
                    stall_seconds += time.monotonic() - t_kind
        if config.lp_rescue and plateau is not None and lp_seconds <= LP_SHARE * (time.monotonic() - search_start):
            # a plateau: its domains are searched by LP dives, within the LPs' share of the time
            t_lp = time.monotonic()
            at = torch.nonzero(domains.bound <= plateau + tol).flatten()[: config.batch_size]
            parents = store.pop(at)
            domains = None
            until = t_lp + DIVE_SECONDS if deadline is None else min(deadline, t_lp + DIVE_SECONDS)
            left, lps, dived, found = dive(parents, until)
            explored += lps
            lp_seconds += time.monotonic() - t_lp
            if found is not None:
                return result("sat", _Domains.cat([store.view(), left, stuck]), explored, found)
            log.debug("relu_split: LP dives from %d domains at %.6g: %d LPs, %d open after them", len(parents),
                      plateau, lps, 0 if left is None else len(left))
            store.push(left)
            if not dived:
                # the dives closed and split nothing (their minimisers are network points the exact
                # check rejects, at a margin of about 0): the steps take over until the next stall
                plateau, weakest = None, []
            continue
        order = _fair_order(domains.bound, domains.tag) if config.selection == "fair" else domains.bound.argsort()
        if config.lp_rescue and plateau is not None:  # out of LP time: the domains above the plateau are split meanwhile
            above = domains.bound[order] > plateau + tol
            if bool(above.any()):
                order = order[above]
        parents = store.pop(order[: config.batch_size])
        domains = None  # the view is stale once the store changes
        spent += torch.bincount(parents.tag.cpu(), minlength=K)
        choice = None
        if config.branching == "fsb":
            choice = _lookahead(ops, parents, C_all, d_all, s_all, x_mid, x_rad, n_terms, config.candidates, deadline)
        live, empty, unsplittable, split_layer = _split(parents, choice)
        if gate.now() and live is not None and len(live):
            rebounded = int((split_layer < len(live.lower) - 1).sum())  # a split in the last layer: nothing after it
            t_refine = time.monotonic()
            n_live = len(live)
            live, gone, stabilised, opened = _refine(ops, live, split_layer, x_mid, x_rad, n_terms, deadline)
            t_refine = time.monotonic() - t_refine
            gate.record(gone + stabilised, rebounded, t_refine)
            log.debug("relu_split: refine %d children (%d rebounded) in %.3f s: %d empty, %d of %d open stabilised",
                      n_live, rebounded, t_refine, gone, stabilised, opened)
            empty += gone
        if unsplittable is not None:  # exact relaxation: converge the split multipliers
            bnd, al, be, sc, wd, cx, plain_b = bound_batch(unsplittable.lower, unsplittable.upper, unsplittable.sign,
                                                      unsplittable.alpha, unsplittable.beta, unsplittable.tag,
                                                      config.leaf_steps)
            closed = bnd > 0
            note_closed(bnd, unsplittable.tag, closed)
            found = try_points(cx[~closed], bnd[~closed])
            if found is None:
                # the network is affine on such a domain: its LP is exact; a safe bound above 0
                # closes it, and the LP's minimiser is checked as a counterexample (with a problem)
                for i in torch.nonzero(~closed).flatten().tolist():
                    if deadline is not None and time.monotonic() > deadline:
                        break
                    k = int(unsplittable.tag[i])
                    kind, value = _exact_leaf(network, lo[0], hi[0],
                                              [prune.widen(l[i], j, 0) for j, l in enumerate(unsplittable.lower)],
                                              [prune.widen(u[i], j, 1) for j, u in enumerate(unsplittable.upper)],
                                              disjuncts[k][0], disjuncts[k][1],
                                              problem, deadline)
                    if kind == "closed":
                        closed[i] = True
                        bnd[i] = max(float(bnd[i]), value)
                        note_closed(bnd[i:i + 1], unsplittable.tag[i:i + 1], torch.ones(1, dtype=torch.bool))
                    elif kind == "sat":
                        found = value
                        break
            unsplittable = _Domains(unsplittable.lower, unsplittable.upper, unsplittable.sign, al, be, sc, wd, bnd,
                                    unsplittable.tag, torch.fmax(plain_b, unsplittable.plain)).take(
                torch.nonzero(~closed).flatten())
            if found is not None:
                return result("sat", _Domains.cat([store.view(), live, stuck, unsplittable]), explored, found)
        stuck = _Domains.cat([stuck, unsplittable])
        explored += int(empty)
        if live is not None and len(live):
            t_bound = time.monotonic()
            bnd, al, be, sc, wd, cx, plain_b = bound_batch(live.lower, live.upper, live.sign, live.alpha, live.beta,
                                                      live.tag, config.steps)
            gate.bounded(len(live), time.monotonic() - t_bound)
            # on a plateau (the weakest bound stalled), within STALL_SHARE of the time
            stalled = ((config.stall_retry or config.stall_tighten) and plateau is not None and inherited
                       and stall_seconds <= STALL_SHARE * (time.monotonic() - search_start))
            # (judged without the stops, whose value a child often shares with its parent: the
            # steps optimise the substitution, and a child that carries worse multipliers hands
            # them on)
            low = torch.nonzero(plain_b < live.plain).flatten() if config.retry_steps or stalled else ()
            if len(low):
                # children bounded below their parent: more steps from where they stopped (their
                # descendants start from these multipliers), keeping the better result per child;
                # on a plateau their intermediate bounds are first optimised with their splits
                # (an empty one is closed) and they get STALL_BOUND_STEPS
                t_stall = time.monotonic()
                sub = live.take(low)
                steps, n_low, n_gone = config.retry_steps, len(low), 0
                if stalled:
                    steps = STALL_BOUND_STEPS
                if stalled and config.stall_tighten:
                    sub, nonempty = _split_tighten(ops, sub, x_mid, x_rad, n_terms, STALL_TIGHTEN_STEPS,
                                                   config.lr_alpha, config.lr_beta, deadline)
                    n_gone = int((~nonempty).sum())
                    bnd[low[~nonempty]] = math.inf  # no input reaches it
                    plain_b[low[~nonempty]] = math.inf
                    low, sub = low[nonempty], sub.take(torch.nonzero(nonempty).flatten())
                    for t, t2 in zip(live.lower + live.upper, sub.lower + sub.upper):
                        t[low] = t2
                if len(low):
                    b2, al2, be2, sc2, wd2, cx2, plain2 = bound_batch(sub.lower, sub.upper, sub.sign,
                                                                   [a[low] for a in al], [b[low] for b in be],
                                                                   sub.tag, steps)
                    better = plain2 > plain_b[low]  # the multipliers that raise the stop-free bound
                    upd = low[better]
                    bnd[low] = torch.fmax(bnd[low], b2)  # (both bounds hold: the larger is kept; a NaN is none)
                    plain_b[upd] = plain2[better]
                    for field, field2 in ((al, al2), (be, be2), (sc, sc2), (wd, wd2)):
                        for t, t2 in zip(field, field2):
                            t[upd] = t2[better]
                    cx[upd] = cx2[better]
                    if stalled:  # the branching scores of the new bounds, whichever bound is kept
                        for field, field2 in ((sc, sc2), (wd, wd2)):
                            for t, t2 in zip(field, field2):
                                t[low] = t2
                retried += n_low
                if stalled:
                    stall_seconds += time.monotonic() - t_stall
                    log.debug("relu_split: plateau at %.6g: %d children below their parents tightened, %d empty, "
                              "%d raised (%.2f s)", plateau, n_low, n_gone,
                              int((bnd[low] > live.bound[low]).sum()) if len(low) else 0, time.monotonic() - t_stall)
            bnd = torch.fmax(bnd, live.bound)  # a child's inputs are its parent's: the parent's bound holds
            plain_b = torch.fmax(plain_b, live.plain)
            explored += len(live)
            closed = bnd > 0
            note_closed(bnd, live.tag, closed)
            found = try_points(cx[~closed], bnd[~closed])
            live = _Domains(live.lower, live.upper, live.sign, al, be, sc, wd, bnd, live.tag, plain_b).take(
                torch.nonzero(~closed).flatten())
            if found is not None:
                return result("sat", _Domains.cat([store.view(), live, stuck]), explored, found)
        store.push(live)
        if config.disjunct_domains:
            over = (spent >= config.disjunct_domains).to(dev)
            hit = _drop_disjuncts(store.view(), over, given_up)
            if hit is not None:
                store.pop(torch.nonzero(hit).flatten())
            hit = _drop_disjuncts(stuck, over, given_up)
            if hit is not None:
                stuck = stuck.take(torch.nonzero(~hit).flatten())
    if stuck is not None and status == "unsat":
        status = "unknown"
    return result(status, _Domains.cat([store.view(), stuck]), explored)


def _domain_limit(roots: _Domains, config: ReluSplitConfig) -> int:
    """The open-domain limit when :attr:`ReluSplitConfig.max_domains` is ``None``: the domains
    whose tensors fill :data:`DOMAIN_MEMORY_SHARE` of the memory free on their device now
    (:data:`DEFAULT_MAX_DOMAINS` where that cannot be read), and at least four batches. In a
    worker of the engine's process pool on the CPU, at most :data:`DEFAULT_MAX_DOMAINS` too: the
    pool runs several searches at once there, each sizing itself from the same free memory. A
    search run in the caller's process (``gpuopt verify``, the refinement) is the only one."""
    from .devices import free_memory, in_pool_worker

    per = sum(t[:1].numel() * t.element_size() for f in _Domains.FIELDS for t in getattr(roots, f))
    per += 2 * roots.bound.element_size() + roots.tag.element_size()
    dev = roots.bound.device
    free = free_memory(dev)
    limit = DEFAULT_MAX_DOMAINS if free is None else int(DOMAIN_MEMORY_SHARE * free / max(per, 1))
    if dev.type == "cpu" and in_pool_worker():
        limit = min(limit, DEFAULT_MAX_DOMAINS)
    return max(limit, 4 * config.batch_size)


def _fair_order(bound: torch.Tensor, tag: torch.Tensor) -> torch.Tensor:
    """Indices of the domains round the disjuncts: every disjunct's weakest domain (rank 0), then
    every one's second weakest (rank 1), and so on; within a rank, the highest bound (nearest to
    closing) first, so that under a deadline the disjuncts nearest to closing close first. Two
    other orders left more sixth-layer neurons of mnist-net_256x6 prop_11_0.05 unstable: going by
    the splits each disjunct has had (those that waited first), 201 of 256 against 129 after 120 s
    of refinement; disjunct by disjunct, nearest to closing first, 256 (the layer was not reached)
    against 98 after 150 s."""
    o = torch.argsort(bound, stable=True)
    t = tag[o]
    by_tag = torch.argsort(t, stable=True)  # positions grouped by disjunct, weakest first within each
    sorted_tags = t[by_tag]
    rank = torch.empty_like(by_tag)
    rank[by_tag] = torch.arange(len(t), device=t.device) - torch.searchsorted(sorted_tags, sorted_tags)
    highest = torch.argsort(-bound[o], stable=True)
    return o[highest[torch.argsort(rank[highest], stable=True)]]


def _nan_low(v: float) -> float:
    """A domain's bound as a lower bound: NaN (an overflow in the bounding) bounds nothing, -inf
    (Python's ``min`` would skip a NaN)."""
    return -math.inf if v != v else v


def _drop_disjuncts(domains: _Domains | None, over: torch.Tensor, given_up: dict) -> torch.Tensor | None:
    """The mask of ``domains`` that belong to the disjuncts marked in ``over`` (None when there are
    none), to be dropped; each such disjunct's lowest bound goes into ``given_up``."""
    if domains is None or not len(domains):
        return None
    hit = over[domains.tag]
    if not bool(hit.any()):
        return None
    for k, v in zip(domains.tag[hit].tolist(), domains.bound[hit].tolist()):
        given_up[k] = min(given_up.get(k, math.inf), _nan_low(v))
    return hit


def _leaves(domains: _Domains | None, K: int, limit: int, prune: DeadPruning, dropped=()) -> tuple:
    """Per disjunct, its open domains as ``(bound, [(lower, upper), ...])`` (every neuron of the
    network, the dropped ones with their root bounds) weakest first when there are at most
    ``limit`` of them, else None (closed disjuncts: an empty tuple; disjuncts in ``dropped``,
    given up with their domains: None)."""
    out = []
    tags = None if domains is None else domains.tag.tolist()
    for k in range(K):
        idx = [] if tags is None else [i for i, t in enumerate(tags) if t == k]
        if k in dropped:
            out.append(None)
            continue
        if not idx or len(idx) > limit:
            out.append(() if not idx else None)
            continue
        idx.sort(key=lambda i: float(domains.bound[i]))
        out.append(tuple((float(domains.bound[i]),
                          [(prune.widen(l[i], j, 0).detach().to("cpu", torch.float64).numpy().copy(),
                            prune.widen(u[i], j, 1).detach().to("cpu", torch.float64).numpy().copy())
                           for j, (l, u) in enumerate(zip(domains.lower, domains.upper))]) for i in idx))
    return tuple(out)


def _leaf_model(network: Network, lo, hi, lower, upper, C, d):
    """The LP relaxation (:func:`gpuopt.milp.encode.encode`, big-M relaxed: the triangle of
    every unstable neuron) of one disjunct ``{y : C y <= d}`` over a domain given by its
    pre-activation bounds over every neuron (a split neuron's bounds hold its sign: ``l >= 0``
    active, ``u <= 0`` inactive), minimising ``max_i (C f(x) - d)_i``; None where it cannot be
    built (a one-layer network, crossing bounds)."""
    from .errors import GpuoptError
    from .milp.encode import encode

    blocks = network.affine_blocks()
    pre = [(np.asarray(l.detach().to("cpu", torch.float64)), np.asarray(u.detach().to("cpu", torch.float64)))
           for l, u in zip(lower, upper)]
    if len(blocks) < 2:
        return None
    h_lo, h_hi = np.maximum(pre[-1][0], 0.0), np.maximum(pre[-1][1], 0.0)
    if blocks[-2].passthrough is not None:  # coordinates the last activation passes through
        pt = np.asarray(blocks[-2].passthrough, dtype=bool)
        h_lo, h_hi = np.where(pt, pre[-1][0], h_lo), np.where(pt, pre[-1][1], h_hi)
    last = blocks[-1]
    # output bounds by interval arithmetic, widened past their rounding (only a relaxation)
    Mp, Mn = last.matrix.maximum(0), last.matrix.minimum(0)
    mid = (Mp @ h_lo + Mn @ h_hi + last.bias, Mp @ h_hi + Mn @ h_lo + last.bias)
    mag = abs(last.matrix) @ np.maximum(np.abs(h_lo), np.abs(h_hi)) + np.abs(last.bias)
    pad = 1e-9 * mag + 1e-300
    out = (mid[0] - pad, mid[1] + pad)
    C = np.atleast_2d(np.asarray(C, dtype=np.float64))
    d = np.asarray(d, dtype=np.float64).reshape(-1)
    try:
        return encode(blocks, pre, out, np.asarray(lo.detach().cpu(), dtype=np.float64),
                      np.asarray(hi.detach().cpu(), dtype=np.float64), C, d).relaxed()
    except GpuoptError:
        return None  # e.g. crossing bounds: leave the domain to the other stages


def _domain_lp(network: Network, lo, hi, lower, upper, C, d, deadline):
    """The LP of one disjunct over a domain (:func:`_leaf_model`) solved once in HiGHS without
    presolve, so that an infeasible one comes with its dual ray (:meth:`LpSession.infeasible`):
    ``(session, model, safe lower bound)``, or None where the model cannot be built."""
    from .bounds.lp import LpSession

    model = _leaf_model(network, lo, hi, lower, upper, C, d)
    if model is None:
        return None
    session = LpSession(model, presolve=False, simplex_scaling=False)
    nz = np.flatnonzero(model.c)
    return session, model, session.minimize(nz, model.c[nz], float(model.offset), deadline=deadline)


def _exact_leaf(network: Network, lo, hi, lower, upper, C, d, problem, deadline):
    """The LP of one disjunct over a domain (:func:`_leaf_model`; exact when no neuron is
    unstable). Returns ``("closed", bound)`` when the safe dual bound is above 0 (``+inf`` when a
    Farkas certificate proves the domain empty), ``("sat", check)`` when the LP's minimiser passes
    the float64 check against ``problem`` (``None``: no check), else ``("open", None)``."""
    lp = _domain_lp(network, lo, hi, lower, upper, C, d, deadline)
    if lp is None:
        return "open", None
    session, model, bound = lp
    if bound > 0:
        return "closed", bound
    if session.infeasible():  # a Farkas certificate: no input reaches the domain
        return "closed", math.inf
    if problem is None:
        return "open", None
    sol = session.h.getSolution()
    if not sol.value_valid:
        return "open", None
    x = np.asarray(sol.col_value, dtype=np.float64)[model.x_index] * session.sc.col_scale[model.x_index]
    check = check_counterexample(problem, x)
    return ("sat", check) if check.ok else ("open", None)


def _relaxed(ops, parents: _Domains, rep: torch.Tensor):
    """The domains ``rep`` of ``parents`` (with repeats) as :func:`_backward` takes them:
    ``(pre, relax, split_terms)``, the lower slopes their multipliers clamped to ``[0, 1]`` on
    unstable neurons, the split terms ``-beta s`` (see :func:`_bound`)."""
    pre = [(l[rep], u[rep]) for l, u in zip(parents.lower, parents.upper)]
    rel, terms = [], []
    for j, ((l, u), op) in enumerate(zip(pre, ops)):
        a0, s, ic = _relaxation(l, u, op.passthrough)
        unst = _unstable(l, u, op)[:, None, :]
        rel.append((torch.where(unst, parents.alpha[j][rep].clamp(0.0, 1.0), a0[:, None, :]), s, ic))
        sg = parents.sign[j][rep]
        terms.append(torch.where((sg != 0)[:, None, :], -parents.beta[j][rep].clamp(min=0.0) * sg.to(l.dtype)[:, None, :],
                                 torch.zeros_like(rel[-1][0])))
    return pre, rel, terms


def _lookahead(ops, parents: _Domains, C, d, strict, x_mid, x_rad, n_terms, k: int, deadline=None) -> torch.Tensor:
    """Filtered smart branching (after De Palma et al., ICLR 2021): per parent, the flat index of
    the neuron to split (``-1``: none left). The candidates are its ``k`` best by the intercept
    score and its ``k`` largest ``|a| (u - l)``. Each candidate's two children are bounded by one
    backward pass with the parent's multipliers and intermediate bounds, the split neuron's
    relaxation made exact (``h = z`` when active, ``h = 0`` when inactive).

    The weaker child decides: a split whose weaker child gains on the parent's bound ranks first,
    by that gain. A split that leaves one child at the parent's bound only cuts the other child
    away, and the search meets the same bound one level deeper (on mnist_fc 256x6 prop_7_0.03 the
    intercept score split last-layer neurons whose active child kept the parent's bound exactly,
    level after level). When no candidate gains, a neuron before the last ReLU layer ranks next,
    as its split also re-bounds the later layers (:func:`_refine`, while that is on), which this
    lookahead does not see; then the rest; within these two tiers, the intercept score's order. A branching choice
    only: any choice keeps the search sound."""
    D, L = len(parents), len(parents.lower)
    dev = parents.bound.device
    flat = torch.cat(parents.scores, dim=1)  # (D, N): intercept score + 1e-6 width, -1 if not splittable
    k = min(k, flat.shape[1])
    choice = torch.full((D,), -1, dtype=torch.long, device=dev)
    if k == 0 or D == 0:
        return choice
    by_score = flat.topk(k, dim=1)
    by_width = torch.cat(parents.widths, dim=1).topk(k, dim=1)
    cand = torch.cat([by_score.indices, by_width.indices], dim=1)
    valid = torch.cat([by_score.values >= 0, by_width.values >= 0], dim=1)
    choice = torch.where(valid[:, 0], cand[:, 0], choice)
    offsets = np.cumsum([0] + [t.shape[1] for t in parents.lower])
    layer = torch.as_tensor(np.searchsorted(offsets, cand.cpu().numpy(), side="right") - 1, device=dev)
    K2 = cand.shape[1]
    M, n_max = C.shape[1], max([x_mid.shape[1]] + [t.shape[1] for t in parents.lower])  # the widest coefficients
    per = max(1, CHUNK_ELEMENTS // max(1, 2 * K2 * M * n_max))
    for a in range(0, D, per):
        if deadline is not None and time.monotonic() > deadline:
            break
        b = min(D, a + per)
        rep = torch.arange(a, b, device=dev).repeat_interleave(2 * K2)
        E = rep.shape[0]
        c_flat = cand[a:b].repeat_interleave(2, dim=1).reshape(-1)
        c_layer = layer[a:b].repeat_interleave(2, dim=1).reshape(-1)
        active = torch.arange(E, device=dev) % 2 == 0
        pre, rel, terms = _relaxed(ops, parents, rep)
        for j, (lo_slope, s, ic) in enumerate(rel):
            rows = torch.nonzero(c_layer == j).flatten()
            if rows.numel():
                col = c_flat[rows] - int(offsets[j])
                on = active[rows].to(s.dtype)
                lo_slope[rows, :, col] = on[:, None]
                s, ic = s.clone(), ic.clone()
                s[rows, col], ic[rows, col] = on, 0.0
                rel[j] = (lo_slope, s, ic)
        xm, xr = x_mid.expand(E, -1), x_rad.expand(E, -1)
        hmax = _magnitudes(xm, xr, pre, ops)
        tag = parents.tag[rep]
        with torch.no_grad():
            rows_lb, _ = _backward(C[tag], L, ops, rel, xm, xr, n_terms, hmax, split_terms=terms)
        kid = strict_adjust(rows_lb - d[tag], strict[tag]).amax(dim=1)
        worse = kid.reshape(b - a, K2, 2).amin(dim=2)
        worse = torch.where(valid[a:b], torch.nan_to_num(worse, nan=-math.inf), torch.full_like(worse, -math.inf))
        # tiers: 2 the weaker child gains (by how much), 1 a neuron before the last ReLU layer
        # (whose split re-bounds the later layers, unseen here), 0 the rest; ties: score order
        parent = parents.bound[a:b, None]
        gain = worse - parent
        tol = torch.where(torch.isfinite(parent), 1e-9 * (1.0 + parent.abs()), torch.zeros_like(parent))
        tier = torch.where(gain > tol, 2, torch.where(layer[a:b] < L - 1, 1, 0))
        tier = torch.where(valid[a:b], tier, -1)
        order = -torch.arange(K2, device=dev, dtype=gain.dtype).expand_as(gain)
        within = torch.where(tier == 2, gain, order)
        within = torch.where(tier == tier.amax(dim=1, keepdim=True), within, torch.full_like(within, -math.inf))
        best = within.argmax(dim=1)
        pick = cand[a:b].gather(1, best[:, None])[:, 0]
        choice[a:b] = torch.where(valid[a:b, 0], pick, choice[a:b])
    return choice


def _split(parents: _Domains, choice: torch.Tensor | None = None):
    """Two children per parent at its highest-scoring neuron (or at ``choice``, a flat neuron
    index per parent, where it is ``>= 0``). Returns ``(live, empty, stuck, split_layer)``:
    the children whose bounds do not cross, the number of empty children (crossing bounds: no
    input lies there), the parents with no unstable neuron left to split (``None`` if none), and
    each live child's split layer."""
    L = len(parents.lower)
    dev = parents.bound.device
    flat = torch.cat(parents.scores, dim=1)  # (D, sum n_j)
    if not flat.shape[1]:  # every neuron pruned as dead: nothing to split anywhere
        return None, 0, parents, None
    best, where = flat.max(dim=1)
    if choice is not None:
        where = torch.where(choice >= 0, choice, where)
    can = best >= 0
    stuck = None if bool(can.all()) else parents.take(torch.nonzero(~can).flatten())
    if not bool(can.any()):
        return None, 0, stuck, None
    parents = parents.take(torch.nonzero(can).flatten())
    where = where[can]
    D = len(parents)
    offsets = np.cumsum([0] + [t.shape[1] for t in parents.lower])
    layer = torch.as_tensor(np.searchsorted(offsets, where.cpu().numpy(), side="right") - 1, device=dev)
    twice = torch.cat([torch.arange(D, device=dev), torch.arange(D, device=dev)])
    kids = parents.take(twice)
    sgn = torch.cat([torch.ones(D, dtype=torch.int8, device=dev), -torch.ones(D, dtype=torch.int8, device=dev)])
    layer2, where2 = torch.cat([layer, layer]), torch.cat([where, where])
    for j in range(L):
        rows = torch.nonzero(layer2 == j).flatten()
        if not rows.numel():
            continue
        col = where2[rows] - int(offsets[j])
        s = sgn[rows]
        lo, up, sg = kids.lower[j].clone(), kids.upper[j].clone(), kids.sign[j].clone()
        lo[rows, col] = torch.where(s > 0, lo[rows, col].clamp(min=0), lo[rows, col])
        up[rows, col] = torch.where(s < 0, up[rows, col].clamp(max=0), up[rows, col])
        sg[rows, col] = s
        kids.lower[j], kids.upper[j], kids.sign[j] = lo, up, sg
    nonempty = _nonempty(kids.lower, kids.upper)
    keep = torch.nonzero(nonempty).flatten()
    return kids.take(keep), int((~nonempty).sum()), stuck, layer2[keep]


def _refine(ops, doms: _Domains, split_layer, x_mid, x_rad, n_terms, deadline=None) -> tuple[_Domains, int, int]:
    """Tighter pre-activation bounds for the ReLU layers after each domain's newest split (layer
    ``split_layer``): CROWN back-substitution with the domain's own relaxation (its split neurons
    exact, its earlier layers' refined bounds; stopping at their boxes, :data:`STOP_BOXES`),
    intersected with the bounds it had. Sound for the same reason as the domain's bound: on the
    domain every relaxation used holds. Past ``deadline`` the rows not reached keep their bounds
    (sound, only looser). Returns the domains
    whose bounds do not cross, the number that cross (empty: no input lies there), the number
    of (domain, neuron) pairs that were unstable and are stable now, and the number of those pairs
    that were unstable before (re-bounded layers only)."""
    L = len(doms.lower)
    stabilised = opened = 0
    lower, upper = list(doms.lower), list(doms.upper)
    for k in range(1, L):
        sel = torch.nonzero(split_layer < k).flatten()
        if not sel.numel():
            continue
        l_k, u_k = lower[k][sel].clone(), upper[k][sel].clone()
        rows = open_rows(l_k, u_k, ops[k])
        if not rows.numel():
            continue
        B = sel.numel()
        pre = [(l[sel], u[sel]) for l, u in zip(lower[:k], upper[:k])]
        relax = [_relaxation(l, u, op.passthrough) for (l, u), op in zip(pre, ops)]
        xm, xr = x_mid.expand(B, -1), x_rad.expand(B, -1)
        hmax = _magnitudes(xm, xr, pre, ops)
        # every domain re-bounds all rows open in any domain (not only its own): a neuron split
        # (so stable) in one domain but open in another is re-bounded too, and that finds many
        # empty domains
        was_open = int(((l_k < 0) & (u_k > 0)).sum())
        boxes = _stop_layers([l for l, _ in pre], [u for _, u in pre], ops)
        l_k, u_k, _, _ = tighten_layer(k, ops, relax, xm, xr, n_terms, hmax, l_k, u_k, rows=rows, deadline=deadline,
                                       boxes=boxes)
        stabilised += was_open - int(((l_k < 0) & (u_k > 0)).sum())
        opened += was_open
        lower[k], upper[k] = lower[k].clone(), upper[k].clone()
        lower[k][sel], upper[k][sel] = l_k, u_k
    doms = _Domains(lower, upper, doms.sign, doms.alpha, doms.beta, doms.scores, doms.widths, doms.bound, doms.tag,
                    doms.plain)
    nonempty = _nonempty(lower, upper)
    return doms.take(torch.nonzero(nonempty).flatten()), int((~nonempty).sum()), stabilised, opened


def _split_tighten(ops, doms: _Domains, x_mid, x_rad, n_terms, steps, lr_alpha, lr_beta,
                   deadline=None) -> tuple[_Domains, torch.Tensor]:
    """Intermediate bounds of each domain optimised with its split constraints (beta-CROWN on the
    hidden layers, as alpha-beta-CROWN's optimised intermediate bounds): for every ReLU layer
    ``k >= 1``, in order, the neurons open in some domain get the best lower bound of ``+z_k`` and
    ``-z_k`` over projected Adam steps on per-row lower slopes ``alpha in [0, 1]`` of the layers
    before ``k`` and per-row multipliers ``beta >= 0`` of the domain's splits there,
    ``min z_k >= min_{x in X} z_k(x) - sum_j beta_j s_j z_j(x)`` over the relaxation (each added
    term is ``<= 0`` on the domain). Sound for any slopes and multipliers, as the domain's own
    bound; the steps skip the rounding pads, and the best multipliers are evaluated once more with
    them (the starting slopes' padded bound is kept where higher). Each layer's new bounds enter the
    relaxations of the layers after it. Past ``deadline`` the rows not reached keep their bounds.
    Returns the domains with their new bounds, and per domain whether they do not cross (where
    they do, no input reaches the domain)."""
    L = len(doms.lower)
    D = len(doms)
    lower, upper = [t.clone() for t in doms.lower], [t.clone() for t in doms.upper]
    xm, xr = x_mid.expand(D, -1), x_rad.expand(D, -1)
    dtype = lower[0].dtype
    for k in range(1, L):
        rows = open_rows(lower[k], upper[k], ops[k])
        if not rows.numel():
            continue
        pre = list(zip(lower[:k], upper[:k]))
        relax = [_relaxation(l, u, op.passthrough) for (l, u), op in zip(pre, ops)]
        hmax = _magnitudes(xm, xr, pre, ops)
        unstable = [_unstable(l, u, op)[:, None, :] for (l, u), op in zip(pre, ops)]
        split = [(sg != 0)[:, None, :] for sg in doms.sign[:k]]
        sgn = [sg.to(dtype)[:, None, :] for sg in doms.sign[:k]]
        width = sum(op.shape[1] for op in ops[: k + 1])
        chunk = max(1, CHUNK_ELEMENTS // (2 * D * width))
        for start in range(0, rows.numel(), chunk):
            if deadline is not None and time.monotonic() > deadline:
                break
            part = rows[start:start + chunk]
            m = part.numel()
            lam = row_selectors(part, ops[k].shape[0], D, lower[0])

            def evaluate(al, be, pad):
                rel = [(torch.where(un, a.clamp(0.0, 1.0), a0[:, None, :]), s, ic)
                       for a, un, (a0, s, ic) in zip(al, unstable, relax)]
                terms = [torch.where(sp, -b.clamp(min=0.0) * sg, torch.zeros_like(b))
                         for b, sp, sg in zip(be, split, sgn)]
                return _backward(lam, k, ops, rel, xm, xr, n_terms, hmax, split_terms=terms, pad=pad)[0]

            params = [a0[:, None, :].expand(D, 2 * m, a0.shape[1]).clone() for a0, _, _ in relax]
            params += [torch.zeros_like(p) for p in params]
            with torch.no_grad():
                first = evaluate(params[:k], params[k:], True)
            best = adam_ascent(lambda ps: evaluate(ps[:k], ps[k:], False), params, [lr_alpha] * k + [lr_beta] * k,
                                [(0.0, 1.0)] * k + [(0.0, None)] * k, steps, deadline)
            with torch.no_grad():
                bound = torch.maximum(first, evaluate(best[:k], best[k:], True))
            bound = torch.nan_to_num(bound, nan=-math.inf, posinf=-math.inf, neginf=-math.inf)  # +inf: an overflow
            lower[k][:, part] = torch.maximum(lower[k][:, part], bound[:, :m])
            upper[k][:, part] = torch.minimum(upper[k][:, part], -bound[:, m:])
    doms = _Domains(lower, upper, doms.sign, doms.alpha, doms.beta, doms.scores, doms.widths, doms.bound, doms.tag,
                    doms.plain)
    return doms, _nonempty(lower, upper)


def _inherited(lp_bound: float, bound: float, empty: bool) -> bool:
    """A plateau's kind from its weakest domain: its bound ``bound`` is only inherited when the
    domain's LP is ``empty`` or its safe bound ``lp_bound`` lies above ``bound`` by 1% (and 1e-6);
    else the relaxation itself holds it there (an LP that gave no bound, ``-inf`` or NaN, says
    nothing, so not inherited)."""
    return bool(empty) or lp_bound > bound + 0.01 * abs(bound) + 1e-6


def _unstable(l, u, op) -> torch.Tensor:
    """``(B, n)``: the neurons whose relaxation has a free lower slope (open, not passed through)."""
    return (l < 0) & (u > 0) & (True if op.passthrough is None else ~op.passthrough)


class _RefineGate:
    """Whether this step re-bounds the children's later layers (:attr:`ReluSplitConfig.refine`).

    With ``"auto"``, a refinement pays through what it changes for the search: children found
    empty, and neurons made stable (each one a split its subtree no longer needs). Its other
    effect, a tighter but still unstable neuron, did not shorten searches measurably. Its price is
    time that bounding more children could have used, so the yield (empty children plus stabilised
    neurons, per re-bounded child) must reach :attr:`MIN_YIELD` times the cost ratio: the seconds
    to refine one child over the seconds to bound one (at least 1). Measured: on mnist_fc's dense
    nets refinement made 2-3 neurons stable per child at a ratio of about 1.4, and decided in 4-11
    s what 30 s did not decide without it (mnist-net_256x4 prop_3_0.05, prop_8_0.03: 1,556
    domains, and 12,492 where a gate turned it off after the first windows); on oval21's conv
    nets it made a few neurons stable per hundred children and no domain empty, and the search
    without it ended with the same tree (cifar_wide_kw img19); on SRI's CIFAR ResNet
    (sri_resnet_a) 0.9-2 per child at a ratio of 8-14, and the search without it bounded 3 times
    the domains in the same time (idx 3612: worst open bound -0.42 after 115 s against -0.77
    after 183 s; idx 9101 unsat in 88 s against 146 s). So the
    steps refine until :attr:`WINDOW` refinements (steps that re-bounded some layer: a split in
    the last ReLU layer leaves nothing to re-bound and says nothing) have been seen, or from
    :attr:`MIN_JUDGED` on where a child costs :attr:`COSTLY_RATIO` times as much to refine as to
    bound (on the ResNet the first eight took 115 s), and go on while those last ones yield
    enough; otherwise one step in :attr:`PROBE_EVERY` refines, and a probe that yields enough on
    its own turns refinement back on. Any choice keeps the search sound: refinement only tightens
    bounds that hold."""

    MIN_YIELD = 0.2
    WINDOW = 8
    MIN_JUDGED = 2
    COSTLY_RATIO = 4.0
    PROBE_EVERY = 32

    def __init__(self, mode):
        self.mode = mode
        self.recent = []  # (gain, re-bounded children, seconds) of the last WINDOW refinements
        self.on = True
        self.skipped = 0  # unrefined steps since the last refined one
        self.bound_seconds, self.bounded_children = 0.0, 0  # every step's bounding so far

    def now(self) -> bool:
        if self.mode is True:
            return True
        if self.mode != "auto":
            return False
        if self.on:
            return True
        self.skipped += 1
        return self.skipped >= self.PROBE_EVERY

    def bounded(self, children: int, seconds: float):
        """A step bounded ``children`` children in ``seconds``."""
        self.bound_seconds += seconds
        self.bounded_children += children

    def cost_ratio(self, rows) -> float:
        """Seconds to refine a child over seconds to bound one, over ``rows`` (at least 1; 1 before
        any bounding was timed)."""
        refined = sum(r[1] for r in rows)
        if not refined or not self.bounded_children or self.bound_seconds <= 0:
            return 1.0
        per_refined = sum(r[2] for r in rows) / refined
        return max(1.0, per_refined / (self.bound_seconds / self.bounded_children))

    def _pays(self, rows) -> bool:
        return sum(r[0] for r in rows) >= self.MIN_YIELD * self.cost_ratio(rows) * sum(r[1] for r in rows)

    def record(self, gain: int, children: int, seconds: float = 0.0):
        """A refined step: ``gain`` empty children plus stabilised neurons over ``children``
        re-bounded children, in ``seconds``."""
        if self.mode != "auto" or children == 0:
            return
        self.skipped = 0
        row = (gain, children, seconds)
        if not self.on:  # a probe
            if self._pays([row]):
                self.on, self.recent = True, [row]
            return
        self.recent = (self.recent + [row])[-self.WINDOW:]
        costly = len(self.recent) >= self.MIN_JUDGED and self.cost_ratio(self.recent) >= self.COSTLY_RATIO
        if len(self.recent) == self.WINDOW or costly:
            self.on = self._pays(self.recent)


def _nonempty(lower, upper) -> torch.Tensor:
    """Per domain, False only where some bound pair provably crosses (``l > u``; a NaN bound
    proves nothing)."""
    crossed = torch.zeros(lower[0].shape[0], dtype=torch.bool, device=lower[0].device)
    for lo, up in zip(lower, upper):
        crossed |= (lo > up).any(dim=1)
    return ~crossed
