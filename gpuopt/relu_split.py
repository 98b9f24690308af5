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
Adam ascent on the bound, warm-started from the parent; the best bound seen per domain is kept.
The intermediate bounds are the root's, tightened by the domain's own splits.

Branching (BaBSR-like, Bunel et al. 2020): the bound loses ``-min(a_n, 0) (-s_n l_n)`` through the
upper relaxation of an unstable neuron ``n`` (``a`` its coefficient on ``h``, ``s`` the upper
slope); splitting it removes that term, so the neuron with the largest loss is split (ties: the
widest ``|a| (u - l)``).

At each step the domains with the weakest bounds are split, in batches. For every open child the
input point that minimises its linear bound is checked in float64 against the problem: a point in
the unsafe region ends the search as ``sat``. The search ends ``unsat`` when no domain is open,
and otherwise at the deadline or the domain limit with the worst open bound.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .bounds.base import Bounds, center_radius, strict_adjust
from .bounds.crown import _backward, _magnitudes, _relaxation
from .check import check_counterexample
from .errors import InvalidInputError
from .network import Network

__all__ = ["ReluSplitConfig", "ReluSplitResult", "relu_split"]


@dataclass(frozen=True)
class ReluSplitConfig:
    """``batch_size`` domains split per step (twice as many children bounded at once);
    ``steps`` alpha/beta optimisation steps per batch of children (``root_steps`` at the root),
    ``lr_alpha``/``lr_beta`` their Adam step sizes; ``max_domains`` the open-domain limit (a
    memory guard: the search answers ``unknown`` beyond it)."""

    batch_size: int = 128
    steps: int = 10
    root_steps: int = 40
    lr_alpha: float = 0.1
    lr_beta: float = 0.05
    max_domains: int = 50_000

    def __post_init__(self):
        for name in ("batch_size", "max_domains"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidInputError(f"`{name}` must be an integer >= 1, got {v!r}")
        for name in ("steps", "root_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InvalidInputError(f"`{name}` must be an integer >= 0, got {v!r}")
        for name in ("lr_alpha", "lr_beta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise InvalidInputError(f"`{name}` must be a number > 0, got {v!r}")


@dataclass(frozen=True, eq=False)
class ReluSplitResult:
    """``status`` in ``{"unsat", "sat", "timeout", "unknown"}``; ``x``/``y``/``margin``: the
    float64-checked counterexample when ``sat``; ``domains`` the number of domains bounded;
    ``open_domains`` those left open; ``worst_bound`` the lowest open bound (``+inf`` when none is
    open) and ``proven_bound`` the lowest bound over the closed domains."""

    status: str
    domains: int
    open_domains: int
    worst_bound: float
    proven_bound: float
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    margin: float | None = None


class _Domains:
    """Open domains as stacked tensors: per ReLU layer ``lower``/``upper`` ``(D, n_j)``, ``sign``
    ``(D, n_j)`` int8, ``alpha``/``beta`` ``(D, m, n_j)``; ``bound`` ``(D,)``; ``row`` the row whose
    bound is best, per domain; ``score`` the branching scores of the last bounding."""

    def __init__(self, lower, upper, sign, alpha, beta, bound, scores):
        self.lower, self.upper, self.sign, self.alpha, self.beta = lower, upper, sign, alpha, beta
        self.bound, self.scores = bound, scores

    def __len__(self):
        return self.bound.shape[0]

    def take(self, idx):
        return _Domains([t[idx] for t in self.lower], [t[idx] for t in self.upper], [t[idx] for t in self.sign],
                        [t[idx] for t in self.alpha], [t[idx] for t in self.beta], self.bound[idx],
                        [t[idx] for t in self.scores])

    @staticmethod
    def cat(parts):
        parts = [p for p in parts if len(p)]
        if not parts:
            return None
        L = len(parts[0].lower)
        return _Domains(*[[torch.cat([getattr(p, f)[j] for p in parts]) for j in range(L)]
                          for f in ("lower", "upper", "sign", "alpha", "beta")],
                        torch.cat([p.bound for p in parts]),
                        [torch.cat([p.scores[j] for p in parts]) for j in range(L)])


def _bound(ops, pre_l, pre_u, sign, alpha, beta, C, d, strict, x_mid, x_rad, n_terms, steps, config, deadline):
    """alpha/beta-optimised bounds of the rows ``C y - d`` on a batch of domains.

    Returns ``(bound (D,), alpha, beta, scores, coef_x (D, n_in) of the best row)``; ``bound`` is
    the max over rows of the row lower bounds (strictness folded in), the best over the steps."""
    D = pre_l[0].shape[0]
    L = len(ops) - 1
    relax = [_relaxation(l, u, op.passthrough) for l, u, op in zip(pre_l, pre_u, ops)]
    hmax = _magnitudes(x_mid, x_rad, list(zip(pre_l, pre_u)), ops)
    unstable = [((l < 0) & (u > 0) & (True if op.passthrough is None else ~op.passthrough))[:, None, :]
                for l, u, op in zip(pre_l, pre_u, ops)]
    split = [(sg != 0)[:, None, :] for sg in sign]
    sgn = [sg.to(C.dtype)[:, None, :] for sg in sign]

    def evaluate(alpha_, beta_, record=None):
        rel = [(torch.where(unst, a.clamp(0.0, 1.0), a0[:, None, :]), s, ic)
               for a, unst, (a0, s, ic) in zip(alpha_, unstable, relax)]
        terms = [torch.where(sp, -b.clamp(min=0.0) * sg, torch.zeros_like(b)) for b, sp, sg in zip(beta_, split, sgn)]
        rows, coef = _backward(C, L, ops, rel, x_mid, x_rad, n_terms, hmax, split_terms=terms, record=record)
        return strict_adjust(rows - d, strict), coef

    alpha = [a.clone() for a in alpha]
    beta = [b.clone() for b in beta]
    with torch.no_grad():
        rows, coef = evaluate(alpha, beta)
    best_rows = rows
    best_alpha, best_beta = [a.clone() for a in alpha], [b.clone() for b in beta]
    params = [p.requires_grad_(True) for p in alpha + beta]
    lrs = [config.lr_alpha] * len(alpha) + [config.lr_beta] * len(beta)
    m1 = [torch.zeros_like(p) for p in params]
    m2 = [torch.zeros_like(p) for p in params]
    last = 0.0
    for t in range(1, steps + 1):
        t0 = time.monotonic()
        if deadline is not None and t0 + last > deadline:
            break
        with torch.enable_grad():
            rows, _ = evaluate(params[:len(alpha)], params[len(alpha):])
            grads = torch.autograd.grad(rows.amax(dim=1).sum(), params)
        with torch.no_grad():
            better = rows.amax(dim=1) > best_rows.amax(dim=1)
            best_rows = torch.where(better[:, None], rows.detach(), best_rows)
            for keep, p in zip(best_alpha + best_beta, params):
                keep.copy_(torch.where(better[:, None, None], p.detach(), keep))
            for p, g, a1, a2, lr in zip(params, grads, m1, m2, lrs):
                a1.mul_(0.9).add_(g, alpha=0.1)
                a2.mul_(0.999).addcmul_(g, g, value=0.001)
                p.add_(lr * (a1 / (1 - 0.9 ** t)) / ((a2 / (1 - 0.999 ** t)).sqrt() + 1e-12))
            for p in params[:len(alpha)]:
                p.clamp_(0.0, 1.0)
            for p in params[len(alpha):]:
                p.clamp_(min=0.0)
        last = time.monotonic() - t0
    # the branching scores and the input coefficients at the best parameters
    record = []
    with torch.no_grad():
        rows, coef = evaluate(best_alpha, best_beta, record)
    rows = torch.maximum(rows, best_rows)  # both are sound; keep the better per row
    bound, r_best = rows.max(dim=1)
    idx = torch.arange(D, device=C.device)
    scores = []
    for j, a_h in zip(range(L - 1, -1, -1), record):
        a = a_h[idx, r_best]  # (D, n_j)
        _, s, icpt = relax[j]
        loss = (-a.clamp(max=0)) * icpt
        width = a.abs() * (pre_u[j] - pre_l[j])
        score = loss + 1e-6 * width
        score = torch.where(unstable[j][:, 0, :] & (sign[j] == 0), score, torch.full_like(score, -1.0))
        scores.append(score)
    scores.reverse()
    return bound, best_alpha, best_beta, scores, coef[idx, r_best]


def relu_split(network: Network, lower, upper, C, d, bounds: Bounds, *, strict=None, problem=None,
               deadline: float | None = None, config: ReluSplitConfig = ReluSplitConfig()) -> ReluSplitResult:
    """Prove ``max_i (C f(x) - d)_i > 0`` on the box ``[lower, upper]`` (``(n_in,)``) by activation
    splitting, or find ``x`` with ``C f(x) <= d`` (checked in float64 against ``problem``, a
    :class:`~gpuopt.problem.Problem` whose unsafe region contains this disjunct). ``C`` is
    ``(m, n_out)``, ``d`` ``(m,)``, ``strict`` marks strict rows; ``bounds`` are sound
    pre-activation bounds on the box (batch 1). Works in the dtype/device of ``lower``."""
    lo = torch.as_tensor(lower).reshape(1, -1)
    hi = torch.as_tensor(upper).reshape(1, -1).to(lo)
    dtype, dev = lo.dtype, lo.device
    C = torch.as_tensor(np.array(C, dtype=np.float64)).to(dev, dtype).reshape(1, -1, network.output_size)
    d = torch.as_tensor(np.array(d, dtype=np.float64)).to(dev, dtype).reshape(1, -1)
    strict = None if strict is None else torch.as_tensor(strict, dtype=torch.bool, device=dev).reshape(1, -1)
    m = C.shape[1]
    ops = network.linear_ops(dev, dtype)
    n_terms = lo.shape[1] + sum(op.shape[0] for op in ops)
    x_mid, x_rad = center_radius(lo, hi)
    pre_l = [l.to(dev, dtype).reshape(1, -1) for l, _ in bounds.pre_activation]
    pre_u = [u.to(dev, dtype).reshape(1, -1) for _, u in bounds.pre_activation]
    sign = [torch.zeros_like(l, dtype=torch.int8) for l in pre_l]
    alpha0 = [_relaxation(l, u, op.passthrough)[0][:, None, :].expand(1, m, l.shape[1]).clone()
              for l, u, op in zip(pre_l, pre_u, ops)]
    beta0 = [torch.zeros((1, m, l.shape[1]), dtype=dtype, device=dev) for l in pre_l]

    def expand(t, D):
        return t.expand(D, *t.shape[1:])

    def bound_batch(pl, pu, sg, al, be, steps):
        D = pl[0].shape[0] if pl else 1
        return _bound(ops, pl, pu, sg, al, be, expand(C, D), expand(d, D), None if strict is None else expand(strict, D),
                      expand(x_mid, D), expand(x_rad, D), n_terms, steps, config, deadline)

    def try_points(coef_x, bnd):
        """The input points minimising each domain's linear bound, checked in float64."""
        if problem is None:
            return None
        x = torch.where(coef_x >= 0, lo, hi).to("cpu", torch.float64).numpy()
        order = np.argsort(bnd.to("cpu").numpy())[:16]
        for i in order:
            c = check_counterexample(problem, x[i])
            if c.ok:
                return c
        return None

    bound, alpha, beta, scores, coef_x = bound_batch(pre_l, pre_u, sign, alpha0, beta0, config.root_steps)
    explored = 1
    proven = math.inf
    if float(bound[0]) > 0:
        return ReluSplitResult("unsat", 1, 0, math.inf, float(bound[0]))
    found = try_points(coef_x, bound)
    if found is not None:
        return ReluSplitResult("sat", 1, 1, float(bound[0]), math.inf, found.x, found.y, found.margin)
    domains = _Domains(pre_l, pre_u, sign, alpha, beta, bound, scores)
    status = "unsat"
    while domains is not None and len(domains):
        if deadline is not None and time.monotonic() > deadline:
            status = "timeout"
            break
        if len(domains) > config.max_domains:
            status = "unknown"
            break
        order = domains.bound.argsort()
        pick = order[: config.batch_size]
        rest = domains.take(order[config.batch_size:])
        parents = domains.take(pick)
        children = _split(parents)
        if children is None:  # no unstable neuron left to split: the relaxation is exact there
            status = "unknown"
            domains = _Domains.cat([parents, rest])
            break
        live, empty = children
        explored += int(empty.sum()) if empty is not None else 0
        if len(live):
            bnd, al, be, sc, cx = bound_batch(live.lower, live.upper, live.sign, live.alpha, live.beta, config.steps)
            explored += len(live)
            closed = bnd > 0
            if bool(closed.any()):
                proven = min(proven, float(bnd[closed].min()))
            found = try_points(cx[~closed], bnd[~closed])
            if found is not None:
                return ReluSplitResult("sat", explored, len(rest) + int((~closed).sum()), float(bnd.min()), proven,
                                       found.x, found.y, found.margin)
            live = _Domains(live.lower, live.upper, live.sign, al, be, bnd, sc).take(torch.nonzero(~closed).flatten())
        domains = _Domains.cat([rest, live])
    if domains is None or not len(domains):
        return ReluSplitResult("unsat", explored, 0, math.inf, proven)
    return ReluSplitResult(status, explored, len(domains), float(domains.bound.min()), proven)


def _split(parents: _Domains):
    """Two children per parent at its highest-scoring neuron; returns ``(live, empty_mask)``
    with the children whose bounds do not cross, or ``None`` when no parent has a neuron left."""
    L = len(parents.lower)
    dev = parents.bound.device
    flat = torch.cat(parents.scores, dim=1)  # (D, sum n_j)
    best, where = flat.max(dim=1)
    if not bool((best >= 0).any()):
        return None
    keep = best >= 0
    parents = parents.take(torch.nonzero(keep).flatten())
    where = where[keep]
    D = len(parents)
    offsets = np.cumsum([0] + [t.shape[1] for t in parents.lower])
    layer = torch.as_tensor(np.searchsorted(offsets, where.cpu().numpy(), side="right") - 1, device=dev)
    twice = torch.cat([torch.arange(D, device=dev), torch.arange(D, device=dev)])
    kids = parents.take(twice)
    sgn = torch.cat([torch.ones(D, dtype=torch.int8, device=dev), -torch.ones(D, dtype=torch.int8, device=dev)])
    for j in range(L):
        rows = torch.nonzero(torch.cat([layer, layer]) == j).flatten()
        if not rows.numel():
            continue
        col = torch.cat([where, where])[rows] - int(offsets[j])
        s = sgn[rows]
        lo, up = kids.lower[j].clone(), kids.upper[j].clone()
        lo[rows, col] = torch.where(s > 0, lo[rows, col].clamp(min=0), lo[rows, col])
        up[rows, col] = torch.where(s < 0, up[rows, col].clamp(max=0), up[rows, col])
        sg = kids.sign[j].clone()
        sg[rows, col] = s
        kids.lower[j], kids.upper[j], kids.sign[j] = lo, up, sg
    nonempty = torch.ones(2 * D, dtype=torch.bool, device=dev)
    for lo, up in zip(kids.lower, kids.upper):
        nonempty &= (lo <= up).all(dim=1)
    return kids.take(torch.nonzero(nonempty).flatten()), ~nonempty
