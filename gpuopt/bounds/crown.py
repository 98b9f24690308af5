"""CROWN: backward linear relaxation bounds (Zhang et al., NeurIPS 2018).

Notation: the network in affine-block form ``z_0 = M_0 x + c_0``, ``h_j = relu(z_j)``,
``z_{j+1} = M_{j+1} h_j + c_{j+1}``, ``y = z_L`` (:meth:`gpuopt.network.Network.affine_blocks`).
To lower-bound ``Lam z_k`` over the box ``x in [l_x, u_x]`` we walk backwards. At a ReLU with
pre-activation bounds ``[l, u]``:

* inactive (``u <= 0``): ``h = 0``; active (``l >= 0``): ``h = z``;
* unstable: ``alpha z <= h <= s (z - l)`` with ``s = u / (u - l)`` and the adaptive lower slope
  ``alpha = 1 if u >= -l else 0``.

A coefficient ``a >= 0`` on ``h`` takes the lower relaxation, ``a < 0`` the upper one, so
``a h >= a (alpha or s) z + [a < 0] a (-s l)``. At the input, ``A x >= A m - |A| r`` with
``m``/``r`` the box centre and radius. Upper bounds are lower bounds of ``-Lam z_k``.

In a graph network's blocks some coordinates pass through the activation unchanged (skip
connections): their relaxation is the identity, exact, and their bounds stay IBP's.

Intermediate bounds are computed layer by layer (each from the bounds of the layers before) and
intersected with IBP's. Safety margin: every bound is widened by
:func:`~gpuopt.bounds.base.rounding_pad` of the absolute magnitudes involved, counting all
neurons and inputs as terms; in float64 this is about ``1e-12`` relative.

All tensors are batch-first; the matrices are the network's affine blocks as dense tensors in
the working dtype and device (:meth:`Network.linear_ops`: dense, or sparse for convolutions).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..errors import InvalidInputError
from ..network import Network
from .base import Bounds, center_radius, rounding_pad
from .ibp import _ibp_iv, ibp
from .prune import DeadPruning
from .reach import compacted, cone, output_indices, receptive, spec_outputs

__all__ = ["alpha_crown_bounds", "alpha_crown_linear_lower", "crown", "crown_linear_lower"]

#: a backward pass handles at most this many coefficients (rows x batch x layer width) at once
CHUNK_ELEMENTS = 1 << 22
#: a chunk of rows runs on just the coordinates it reaches when those are at most this share of the
#: layers' widths (summed over the layers before it and the input)
COMPACT_SHARE = 0.5
#: a compacted chunk (:func:`tighten_layer`) handles at most this many coefficients: smaller than
#: :data:`CHUNK_ELEMENTS`, since its rows' union of reached coordinates grows with their number (on
#: VNN-COMP's TinyYOLO, one thread: 1,000,000 took the first four layers in 52 s against 4,194,304's
#: 126 s and 16,777,216's 223 s)
COMPACT_CHUNK_ELEMENTS = 1 << 20
#: a batch of boxes is bounded per (box, open neuron) pair when the pairs number less than this
#: share of (boxes x neurons open in any box)
PAIR_SHARE = 0.75
#: :func:`crown`'s default for ``stops`` on a single box (a batch of boxes, as input splitting
#: bounds, never stops by default): each layer's backward passes also stop at the earlier layers'
#: boxes (DeepPoly's concretisation, :func:`_backward`'s ``boxes``). Off: on mnist-net_256x4 it
#: made CROWN's last hidden layer far tighter where a narrow layer precedes, but alpha-CROWN proved
#: the same rows either way; on all 186 ACAS Xu instances the stops (in every box) took 378 s of
#: wall-clock against 228 s, and their changed box order lost a counterexample (at the root box
#: only, too)
CROWN_STOPS = False


def upper_slope(u: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    """A slope ``>= u / denom`` for ``denom = fl(u - l)``: the upper line ``s (z - l)`` stays above
    the ReLU on ``[l, u]`` for any ``s >= u / (u - l)``. The two roundings make the quotient at
    most about ``2 eps`` short, so it is raised by ``4 eps`` relative (the line's intercept is
    in the rounding pads either way)."""
    q = u / denom
    return q + 4 * torch.finfo(q.dtype).eps * q


def _relaxation(l: torch.Tensor, u: torch.Tensor, passthrough: torch.Tensor | None = None):
    """Slopes ``(lower_slope, upper_slope, upper_intercept)`` of the ReLU relaxation, each (B, n);
    coordinates that the activation passes through (``passthrough``) are exact: slopes 1, intercept 0."""
    active = l >= 0
    if passthrough is not None:
        active = active | passthrough
    unstable = (l < 0) & (u > 0) & ~active
    denom = torch.where(unstable, u - l, torch.ones_like(u))
    s = torch.where(unstable, upper_slope(u, denom), active.to(u.dtype))
    alpha = torch.where(unstable, (u >= -l).to(u.dtype), active.to(u.dtype))
    intercept = torch.where(unstable, -s * l, torch.zeros_like(u))
    return alpha, s, intercept


def _open_mask(l: torch.Tensor, u: torch.Tensor, op) -> torch.Tensor:
    """``(B, n)``: the sign is open (``l < 0 < u``) and the activation does not pass the
    coordinate through (no relaxation there)."""
    open_ = (l < 0) & (u > 0)
    if op.passthrough is not None:
        open_ = open_ & ~op.passthrough
    return open_


def open_rows(l: torch.Tensor, u: torch.Tensor, op) -> torch.Tensor:
    """The neurons of a layer with bounds ``l``/``u`` ``(B, n)`` whose sign is open in some batch
    element (:func:`_open_mask`)."""
    return torch.nonzero(_open_mask(l, u, op).any(dim=0)).flatten()


def row_selectors(part: torch.Tensor, n: int, B: int, like: torch.Tensor) -> torch.Tensor:
    """``lam`` ``(B, 2m, n)`` selecting ``+z`` then ``-z`` of the ``m`` neurons ``part``: a lower
    bound of ``lam @ z`` gives their lower bounds, then minus their upper bounds."""
    m = part.numel()
    pick = torch.zeros((m, n), dtype=like.dtype, device=like.device)
    pick[torch.arange(m, device=like.device), part] = 1.0
    return torch.cat([pick, -pick]).expand(B, 2 * m, n)


def selector_head(part: torch.Tensor, k: int, ops, hmax, B: int, index: torch.Tensor | None = None):
    """The start of :func:`_backward` for the rows ``+z_k[part]`` then ``-z_k[part]``
    (:func:`row_selectors`) without multiplying by the one-hot rows: ``(A, const, abs_acc)``,
    the coefficients on ``h_{k-1}`` ``(B, 2m, n_{k-1})``, the constant and the magnitude sum, exactly
    what the one-hot product gives. With ``index`` (``(P,)``, pairs mode), row block ``b`` is
    neuron ``part[b]`` of box ``index[b]`` and ``B`` is ignored: ``(P, 2, n_{k-1})``."""
    M = ops[k].rows(part)
    c = ops[k].bias[part]
    mv = ops[k].abs_matvec(hmax[k - 1])  # (boxes, n_k)
    if index is None:
        m = part.numel()
        A = torch.cat([M, -M]).expand(B, 2 * m, M.shape[1])
        const = torch.cat([c, -c]).expand(B, 2 * m)
        acc = c.abs() + mv[:, part]
        return A, const, torch.cat([acc, acc], dim=1)
    A = torch.stack([M, -M], dim=1)
    const = torch.stack([c, -c], dim=1)
    acc = c.abs() + mv[index, part]
    return A, const, torch.stack([acc, acc], dim=1)


def _backward(lam: torch.Tensor | None, k: int, ops, relax, x_mid, x_rad, n_terms: int, hmax, *, split_terms=None,
              record: list | None = None, ball=None, index: torch.Tensor | None = None, head=None,
              pad: bool = True, boxes=None, plain: list | None = None):
    """Sound lower bound of ``lam @ z_k`` (lam: (B, m, n_k)) and the input coefficients (B, m, n_0).

    ``ops`` are the network's :class:`~gpuopt.network.LinearOp` blocks; ``hmax[j]`` bounds
    ``|h_j|`` (``relu(u_j)``; ``hmax[-1]`` is ``|x|``'s bound), so that ``|coef| @ |M_j| @ hmax``
    bounds the magnitude of the products whose rounding the pad must cover, even where the
    back-substituted coefficients cancel.

    ``relax[j]`` is ``(lower slope, upper slope, upper intercept)`` (the ReLU's lower line passes
    through 0), or with a fourth entry, the lower line's intercept; each ``(B, n_j)``, or
    ``(B, m, n_j)`` for one line per row.

    ``split_terms[j]`` (optional, ``(B, m, n_j)``) is added to the coefficient on ``z_j``: the
    beta-CROWN term ``-beta s`` of split constraints ``s z_j >= 0`` (see
    :mod:`gpuopt.relu_split`); it is zero off the split neurons. ``record``, when given, receives
    the coefficient on each ``h_j`` (before the ReLU relaxation), last layer first.

    ``ball = (x0 (B, n_0), eps (B,), norm)`` with ``norm`` ``"l2"`` or ``"l1"``: the input set is
    the box intersected with the ball ``||x - x0|| <= eps``; the bound is then the larger of the
    box's and the ball's concretisation, ``A x0 - eps ||A||_* + const`` with the dual norm
    (``||A||_2``, or ``max |A|`` for L1), each less its rounding pad.

    ``index`` (optional, ``(B,)``): row block ``b`` of ``lam`` belongs to box ``index[b]`` of the
    per-box tensors (``relax``, ``x_mid``, ``x_rad``, ``hmax``, ``ball``), which are gathered
    layer by layer; this lets each box carry only its own rows.

    ``head`` (optional, replaces ``lam``): ``(A, const, abs_acc)`` already through block ``k``
    (:func:`selector_head`).

    ``pad=False`` skips the magnitudes and the rounding pads: the value is then the relaxation's
    bound as rounded, *not* a sound bound, for optimisation steps only (their gradient is the
    same); the multipliers found are evaluated once more with the pads.

    ``boxes`` (optional, one entry per layer ``j < k``, each ``None`` or ``(lo_j, hi_j)`` ``(B,
    n_j)`` bounds on ``h_j``, :func:`activation_boxes`): the substitution is also stopped at each
    such layer, as DeepPoly does, and concretised there: while passing through layer ``j`` the
    bound reads ``lam z_k >= A h_j + const`` for every input, so ``min over [lo_j, hi_j]`` of it is
    a lower bound too, less its rounding pad (the magnitudes so far plus ``|A| hmax_j``). The
    largest of these and the input's bound is returned. It pays where a layer's bounds are much
    tighter than the relaxation before it can tell (after a refinement), or where few of its
    neurons are live. The input coefficients returned are still the full substitution's.
    ``plain`` (a list, optional) receives the bound before the stops: the substitution's alone.
    """
    def pick(t):
        return t if index is None else t[index]

    # underflow loses up to eta per product whatever the magnitudes, an absolute error the relative
    # pads miss: ``under`` bounds it on every entry of A (it grows through the slopes and by
    # |M_j|'s largest column sum), ``lost`` its effect on the bound (through the constants and
    # finally |x|). (Without it, weight products of 1e-322 on inputs of 1e300 gave an empty output
    # interval: found by review.) Both are 0-dim tensors, one bound for every box and row: the
    # slopes' and intercepts' largest magnitudes over all boxes bound each box's (per-row tensors
    # cost 13% of ACAS Xu's input splitting, for terms of order 1e-323)
    eta = torch.finfo(ops[k].bias.dtype).tiny * torch.finfo(ops[k].bias.dtype).eps
    if head is not None:
        A, const, abs_acc = head
        under = const.new_zeros(())  # the selected rows of M_k are exact
    else:
        c = ops[k].bias
        const = lam @ c
        abs_acc = None
        if pad:
            abs_acc = (lam.abs() @ (c.abs() + pick(ops[k].abs_matvec(hmax[k - 1])))[:, :, None]).squeeze(-1)
        A = ops[k].rmatmul(lam)
        under = const.new_full((), eta * (ops[k].shape[0] + 2))
    lost = const.new_full((), eta * (ops[k].shape[0] + 2))
    stops = []  # the bounds concretised at a layer's box (boxes)
    for j in range(k - 1, -1, -1):
        if boxes is not None and boxes[j] is not None:
            stops.append(_stop_bound(A, const, pick(boxes[j][0]), pick(boxes[j][1]), pick(hmax[j]) if pad else None,
                                     abs_acc, lost, under, n_terms, eta, pad))
        alpha, s, icpt, *low = (pick(t) for t in relax[j])
        if record is not None:
            record.append(A)
        neg, pos = A.clamp(max=0), A.clamp(min=0)
        extra = _row_dot(neg, icpt)
        extra_abs = None
        if low:  # a lower line with an intercept (smooth activations, gpuopt.bounds.smooth)
            extra = extra + _row_dot(pos, low[0])
            if pad:
                extra_abs = _row_dot(neg.abs(), icpt.abs()) + _row_dot(pos, low[0].abs())
        lower_slope = alpha if alpha.dim() == 3 else alpha[:, None, :]  # per-row slopes (alpha-CROWN)
        coef = _relaxed_coefficients(A, pos, neg, lower_slope, s if s.dim() == 3 else s[:, None, :])
        if split_terms is not None and split_terms[j] is not None:
            coef = coef + split_terms[j]
        cj = ops[j].bias
        const = const + extra + coef @ cj
        if pad:
            weight = cj.abs() + pick(ops[j].abs_matvec(hmax[j - 1]))  # (boxes, n_j): |c_j| + |M_j| hmax_{j-1}
            abs_acc = abs_acc + (extra.abs() if extra_abs is None else extra_abs) + (
                coef.abs() @ weight[:, :, None]).squeeze(-1)
            # (tensors throughout: no device sync per layer), over all boxes of relax[j] (not picked)
            slope_max, icpt_sum = _underflow_factors(relax[j])
            under_coef = under * slope_max.clamp(min=1.0) + eta
            lost = lost + under * icpt_sum + under_coef * cj.abs().sum() + 2 * eta * (ops[j].shape[0] + 2)
            under = under_coef * ops[j].abs_col_max + eta * (ops[j].shape[0] + 2)
        A = ops[j].rmatmul(coef)
    x_mid, x_rad = pick(x_mid), pick(x_rad)
    if not pad:
        if ball is not None:
            raise ValueError("pad=False is for box inputs only")
        lower = ((A @ x_mid[:, :, None]) - (A.abs() @ x_rad[:, :, None])).squeeze(-1) + const
        if plain is not None:
            plain.append(lower)
        for stop in stops:
            lower = torch.maximum(lower, stop)
        return lower, A
    Aabs = A.abs()
    # one pass over |A| for the radius term and the magnitude: columns x_rad, |x_mid| + x_rad
    spread = (Aabs @ torch.stack([x_rad, x_mid.abs() + x_rad], dim=-1))
    lower = (A @ x_mid[:, :, None]).squeeze(-1) - spread[..., 0] + const
    mag = spread[..., 1] + abs_acc
    n0 = A.shape[-1]
    lost = lost + eta * (n0 + 2)
    lower = lower - rounding_pad(mag, n_terms) - 2 * (lost + under * (x_mid.abs() + x_rad).sum(-1)[:, None])
    if ball is not None:
        x0, eps, norm = pick(ball[0]), pick(ball[1]), ball[2]
        dual = torch.linalg.vector_norm(A, dim=-1) if norm == "l2" else A.abs().amax(dim=-1)
        reach = eps[:, None] * dual
        ball = (A @ x0[:, :, None]).squeeze(-1) - reach + const
        mag_b = (Aabs @ x0.abs()[:, :, None]).squeeze(-1) + reach + abs_acc
        lost_b = lost + under * (x0.abs().sum(-1) + n0 * eps)[:, None]
        lower = torch.maximum(lower, ball - rounding_pad(mag_b, n_terms + 2 * n0 + 8) - 2 * lost_b)
    if plain is not None:
        plain.append(lower)
    for stop in stops:
        lower = torch.maximum(lower, stop)
    return lower, A


def _relaxed_coefficients(A: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, lower_slope: torch.Tensor,
                          upper_slope_: torch.Tensor) -> torch.Tensor:
    """``A * where(A >= 0, lower_slope, upper_slope_)``, given ``pos = A.clamp(min=0)`` and ``neg =
    A.clamp(max=0)``. Without gradients, and with one dtype and ``pos``'s shape throughout, it is
    formed in place in ``pos`` (which the caller no longer needs) as ``pos * lower + neg * upper``:
    one of the two is 0 in each entry, so that is the product bit for bit (up to the sign of a zero)
    for finite slopes. CPU ``torch.where`` took 40% of :func:`_backward`'s time on ACAS Xu, and the
    in-place form halves the rest. With gradients (alpha- and beta-CROWN's steps) the product is
    kept as it is: at ``A == 0`` the clamps would pass the gradient ``lower + upper``, not a
    subgradient (found by review: looser alpha-CROWN bounds on sparse and convolutional nets)."""
    if torch.is_grad_enabled() or lower_slope.dtype != pos.dtype or upper_slope_.dtype != pos.dtype \
            or not (_broadcasts_into(lower_slope.shape, pos.shape) and _broadcasts_into(upper_slope_.shape, pos.shape)):
        return A * torch.where(A >= 0, lower_slope, upper_slope_)
    return pos.mul_(lower_slope).addcmul_(neg, upper_slope_)


def _broadcasts_into(shape, target) -> bool:
    """A tensor of ``shape`` broadcasts to ``target`` without enlarging it (so an in-place update of
    a ``target``-shaped tensor by it is defined). Plain tuple checks: ``torch.broadcast_shapes``
    cost 100 us a call, once per layer of every backward pass."""
    if len(shape) > len(target):
        return False
    return all(s == 1 or s == t for s, t in zip(reversed(shape), reversed(target)))


def _underflow_factors(relax_j) -> tuple:
    """0-dim tensors: the largest slope magnitude of a layer's relaxation ``relax_j`` (see
    :func:`_backward`) and the largest sum of its intercepts' magnitudes, over all its boxes (and
    rows)."""
    alpha, s, icpt, *low = relax_j
    slope_max = torch.stack([t.abs().amax() if t.numel() else t.new_zeros(()) for t in (alpha, s)]).amax()
    icpt_sum = icpt.new_zeros(())
    for t in [icpt] + low:
        if t.numel():
            icpt_sum = icpt_sum + t.abs().sum(-1).amax()
    return slope_max, icpt_sum


def _stop_bound(A, const, lo, hi, hmax, abs_acc, lost, under, n_terms: int, eta: float, pad: bool):
    """``min A h + const`` over the box ``lo <= h <= hi`` (``(B, n)``; ``A`` ``(B, m, n)``), less the
    rounding pad of everything summed so far when ``pad`` (as the input's concretisation in
    :func:`_backward`: ``A mid - |A| rad``, the box's centre and radius as
    :func:`~gpuopt.bounds.base.center_radius` rounds them, the pad from the magnitudes
    ``|A| max(hmax, |mid| + rad)`` plus ``abs_acc`` so far, ``lost``/``under`` the underflow terms,
    ``hmax >= |h|``). A nonzero coefficient on a coordinate with an infinite (or NaN) end gives
    ``-inf``, no bound (of either sign: one product over ``|A|`` finds them). Three passes over
    ``A``-sized data: ``|A|`` and two batched products."""
    finite = torch.isfinite(lo) & torch.isfinite(hi)
    mid, rad = center_radius(torch.where(finite, lo, torch.zeros_like(lo)), torch.where(finite, hi, torch.zeros_like(hi)))
    Aabs = A.abs()
    cols = [rad, (~finite).to(A.dtype)]
    if pad:
        cols.append(torch.maximum(hmax, mid.abs() + rad))
    spread = Aabs @ torch.stack(cols, dim=-1)  # (B, m, 2 or 3)
    value = (A @ mid[:, :, None]).squeeze(-1) - spread[..., 0] + const
    if pad:
        weight = cols[2]
        value = value - rounding_pad(spread[..., 2] + abs_acc, n_terms) - 2 * (
            lost + eta * (A.shape[-1] + 2) + under * weight.sum(-1)[:, None])
    unbounded = spread[..., 1] > 0
    return torch.where(unbounded | torch.isnan(value), torch.full_like(value, -math.inf), value)


def activation_boxes(pre_l, pre_u, ops) -> list:
    """Per hidden layer, bounds ``(lo_j, hi_j)`` on ``h_j`` from the pre-activation bounds:
    ``[relu(l), relu(u)]``, or ``[l, u]`` on the coordinates the activation passes through
    (:func:`_backward`'s ``boxes``)."""
    out = []
    for l, u, op in zip(pre_l, pre_u, ops):
        lo, hi = l.clamp(min=0), u.clamp(min=0)
        if op.passthrough is not None:
            lo, hi = torch.where(op.passthrough, l, lo), torch.where(op.passthrough, u, hi)
        out.append((lo, hi))
    return out


def _stop_boxes(pre, ops, stops: bool | None):
    """:func:`activation_boxes` of the pre-activation bounds ``pre`` (a list of ``(l, u)``, each
    ``(B, n_j)``) when ``stops`` asks for them (``None``: :data:`CROWN_STOPS` for one box, never for
    a batch), else ``None``."""
    if not pre:
        return None
    if not (CROWN_STOPS and pre[0][0].shape[0] == 1 if stops is None else stops):
        return None
    return activation_boxes([p[0] for p in pre], [p[1] for p in pre], ops)


def _row_dot(A: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``(B, m)``: each row of ``A`` ``(B, m, n)`` times ``v``, one vector per box ``(B, n)`` or
    one per row ``(B, m, n)`` (per-row relaxations)."""
    if v.dim() == 3:
        return (A * v).sum(-1)
    return (A @ v[:, :, None]).squeeze(-1)


def tighten_layer(k: int, ops, relax, x_mid, x_rad, n_terms: int, hmax, l: torch.Tensor, u: torch.Tensor, *,
                  rows: torch.Tensor | None = None, deadline: float | None = None, last: float = 0.0, ball=None,
                  within: torch.Tensor | None = None, boxes=None):
    """CROWN bounds of layer ``k``'s neurons (relaxations ``relax`` of the layers before it),
    intersected with ``l``/``u`` ``(B, n_k)``; returns ``(l, u, finished, last)`` (new tensors).

    ``rows``: the neurons to bound in every box. By default those open in some box (and, with
    ``within``, a boolean mask ``(n_k,)``, among those only the ones it marks), and then,
    when the boxes' own open neurons are fewer than :data:`PAIR_SHARE` of those rows times ``B``,
    each box bounds only its own, one ``(box, neuron)`` pair per row block of :func:`_backward`
    (the neurons stable in a box then keep their bounds there). Rows
    run in chunks of :data:`CHUNK_ELEMENTS`; a chunk starts only if, by the last chunk's time, it
    ends before ``deadline``, and the rows not reached keep their bounds (``finished`` False). A
    NaN bound (an overflow, ``inf * 0``) or a lower bound of ``+inf`` (an overflow too) carries no
    information and changes nothing.

    On sparse blocks (convolutions) a chunk's rows, ordered so that neighbours reach neighbouring
    coordinates, run on just the coordinates they reach (:func:`gpuopt.bounds.reach.compacted`)
    where those are at most :data:`COMPACT_SHARE` of the layers' widths: the same bounds on far
    narrower matrices.

    ``boxes``: bounds on the earlier layers' activations, where :func:`_backward` also stops (on
    the full blocks only: a compacted chunk substitutes to the input)."""
    B = l.shape[0]
    il, iu = l, u
    l, u = l.clone(), u.clone()
    width = max(op.shape[1] for op in ops[: k + 1])
    pairs = None
    if rows is None:
        open_ = _open_mask(il, iu, ops[k])
        if within is not None:
            open_ = open_ & within.to(open_.device)
        rows = torch.nonzero(open_.any(dim=0)).flatten()
        if B > 1 and int(open_.sum()) < PAIR_SHARE * B * rows.numel():
            pairs = torch.nonzero(open_, as_tuple=True)
    if pairs is not None:
        chunk, total = max(1, CHUNK_ELEMENTS // (2 * width)), pairs[0].numel()
    else:
        chunk, total = max(1, CHUNK_ELEMENTS // (2 * B * width)), rows.numel()
    full_chunk = chunk
    compact = ball is None and total > 0 and any(op.dense is None for op in ops[: k + 1])
    if compact:
        # neighbouring rows first (those whose first and last entries sit at the same columns),
        # so that a chunk's rows reach overlapping coordinates
        r_all = (pairs[1] if pairs is not None else rows).cpu().numpy()
        M = ops[k]._matrix
        first = final = np.full(r_all.shape, -1)
        if M.nnz:
            filled = np.diff(M.indptr)[r_all] > 0
            first = np.where(filled, M.indices[np.minimum(M.indptr[r_all], M.nnz - 1)], -1)
            final = np.where(filled, M.indices[np.maximum(M.indptr[r_all + 1] - 1, 0)], -1)
        order = np.lexsort((r_all, final, first))
        matrices = [op._matrix for op in ops[: k + 1]]
        full = sum(op.shape[1] for op in ops[: k + 1])
        weights = None  # |M_j| hmax[j - 1] of the full blocks, once for all compacted chunks
        if pairs is not None:
            perm = torch.as_tensor(order, device=pairs[0].device)
            pairs = (pairs[0][perm], pairs[1][perm])
            r_all = r_all[order]
        else:
            rows = rows[torch.as_tensor(order, device=rows.device)]
            r_all = r_all[order]
    start = 0
    while start < total:
        t0 = time.monotonic()
        if deadline is not None and t0 + last > deadline:
            return l, u, False, last
        sel = slice(start, start + chunk)
        sub = None
        next_chunk = chunk
        if compact:
            reach = receptive(matrices, k, r_all[sel])
            wide = max(max(len(r) for r in reach), 1)
            fit = max(1, COMPACT_CHUNK_ELEMENTS // (2 * (1 if pairs is not None else B) * wide))
            if sum(len(r) for r in reach) > COMPACT_SHARE * full:
                # the rows reach most of the layers (rows of neighbouring neurons reach about as
                # much): the rest of the layer runs on the full blocks
                compact = False
                next_chunk = full_chunk
            elif chunk > 2 * fit:  # the chunk's rows reach too much at once: fewer of them
                chunk = fit
                continue
            else:
                if weights is None:
                    weights = [ops[j].abs_matvec(hmax[j - 1]) for j in range(k + 1)]
                sub = compacted(ops, k, r_all[sel], reach, relax, hmax, x_mid, x_rad, weights)
                next_chunk = min(fit, 2 * chunk)
        if pairs is not None:
            b, r = pairs[0][sel], pairs[1][sel]
            if sub is None:
                bound, _ = _backward(None, k, ops, relax, x_mid, x_rad, n_terms, hmax, ball=ball, index=b,
                                     head=selector_head(r, k, ops, hmax, B, index=b), boxes=boxes)
            else:
                s_ops, s_relax, s_hmax, s_mid, s_rad = sub
                bound, _ = _backward(None, k, s_ops, s_relax, s_mid, s_rad, n_terms, s_hmax, index=b,
                                     head=selector_head(torch.arange(r.numel(), device=r.device), k, s_ops, s_hmax,
                                                        B, index=b))
            bound = torch.nan_to_num(bound, nan=-math.inf, posinf=-math.inf, neginf=-math.inf)  # +inf: an overflow
            l[b, r] = torch.maximum(bound[:, 0], il[b, r])
            u[b, r] = torch.minimum(-bound[:, 1], iu[b, r])
        else:
            part = rows[sel]
            m = part.numel()
            if sub is None:
                bound, _ = _backward(None, k, ops, relax, x_mid, x_rad, n_terms, hmax, ball=ball,
                                     head=selector_head(part, k, ops, hmax, B), boxes=boxes)
            else:
                s_ops, s_relax, s_hmax, s_mid, s_rad = sub
                bound, _ = _backward(None, k, s_ops, s_relax, s_mid, s_rad, n_terms, s_hmax,
                                     head=selector_head(torch.arange(m, device=part.device), k, s_ops, s_hmax, B))
            bound = torch.nan_to_num(bound, nan=-math.inf, posinf=-math.inf, neginf=-math.inf)  # +inf: an overflow
            l[:, part] = torch.maximum(bound[:, :m], il[:, part])
            u[:, part] = torch.minimum(-bound[:, m:], iu[:, part])
        start = min(total, sel.stop)
        chunk = next_chunk
        last = time.monotonic() - t0
    return l, u, True, last


def _intersect(bounds: Bounds, prior: Bounds) -> Bounds:
    """Both bounds hold, so does their intersection (NaN in ``prior`` carries no information)."""
    def cap(b, p):
        return (torch.fmax(b[0], p[0]), torch.fmin(b[1], p[1]))
    return Bounds(tuple(cap(b, p) for b, p in zip(bounds.pre_activation, prior.pre_activation)),
                  cap(bounds.output, prior.output), bounds.method)


def _magnitudes(x_mid, x_rad, pre, ops) -> dict:
    """``hmax[j] = relu(u_j)`` per hidden layer (``max(|l_j|, |u_j|)`` where the activation passes
    the coordinate through) and ``hmax[-1] = |x_mid| + x_rad``."""
    hmax = {-1: x_mid.abs() + x_rad}
    for j, (l, u) in enumerate(pre):
        hmax[j] = u.clamp(min=0)
        if ops[j].passthrough is not None:
            hmax[j] = torch.where(ops[j].passthrough, torch.maximum(l.abs(), u.abs()), hmax[j])
    return hmax


def _term_count(network: Network, lo: torch.Tensor) -> int:
    """The rounding pads' term count: every input and every neuron of the full network (also
    when the passes run on pruned blocks, :mod:`gpuopt.bounds.prune`, an over-count there)."""
    return lo.shape[1] + sum(b.matrix.shape[0] for b in network.affine_blocks())


def _prepare(network: Network, lower, upper):
    lo, hi = _ibp_iv(network, lower, upper)
    base = ibp(network, lo, hi)
    lo = lo.reshape(lo.shape[0], -1)
    hi = hi.reshape(hi.shape[0], -1)
    ops = network.linear_ops(lo.device, lo.dtype)
    n_terms = _term_count(network, lo)
    return lo, hi, base, ops, n_terms


@torch.no_grad()
def crown(network: Network, lower, upper, *, deadline: float | None = None, ball=None,
          prior: Bounds | None = None, outputs=None, stops: bool | None = None) -> Bounds:
    """CROWN bounds (intersected with IBP) over boxes ``[lower, upper]`` of shape
    ``(batch, *input_shape)`` or ``(batch, input_size)``, in the dtype/device of ``lower``.

    A backward pass runs per layer for the neurons IBP leaves unstable (cost grows with depth
    squared).
    ``deadline`` (a ``time.monotonic()`` value): once passed, the remaining layers (and the rows
    of the current layer not yet bounded, which run in chunks of :data:`CHUNK_ELEMENTS`) keep
    their IBP bounds, which are sound but looser (the method is then ``"crown-partial"``).
    ``ball = (x0, eps, norm)`` (tensors ``(batch, n)`` and ``(batch,)``, ``"l2"`` or ``"l1"``):
    bounds over the box intersected with the ball ``||x - x0|| <= eps`` (see :func:`_backward`),
    from the first layer on.
    ``prior``: bounds already known to hold on these boxes (e.g. a parent box's, in input
    splitting); every layer's bounds are intersected with them before its relaxation is formed,
    so neurons the prior already fixes need no backward pass.
    ``outputs`` (indices, default all): the outputs whose bounds are wanted. Only they, and the
    hidden neurons that reach them (:func:`gpuopt.bounds.reach.cone`), get backward passes; the
    others keep their IBP (or ``prior``) bounds, sound and, for those outputs, no loss.
    ``stops`` (default :data:`CROWN_STOPS`): each layer's backward passes also stop at every earlier
    layer's box and keep the best (:func:`_backward`'s ``boxes``); never looser.
    """
    lo, hi, base, ops, n_terms = _prepare(network, lower, upper)
    within = None if outputs is None else cone([op._matrix for op in ops], outputs)
    out_rows = None if within is None else torch.as_tensor(output_indices(outputs, ops[-1].shape[0]),
                                                           device=lo.device)
    if prior is not None:
        base = _intersect(base, prior)
    x_mid, x_rad = center_radius(lo, hi)
    L = len(ops)
    if L == 1 and ball is None:  # purely affine: the IBP interval of one affine map is exact
        return Bounds((), base.output, "crown")
    if ball is None:
        pre = [base.pre_activation[0]]  # first affine layer: the interval is already exact
        relax = [_relaxation(*pre[0], ops[0].passthrough)]
    else:  # over the ball, the first layer's interval is not exact: bound it too
        pre, relax = [], []
        ball = (ball[0].reshape(lo.shape).to(lo), ball[1].reshape(-1).to(lo), ball[2])
    method = "crown"
    last = 0.0  # the time of the last backward chunk: one more must fit before the deadline
    for k in range(0 if ball is not None else 1, L):
        il, iu = base.pre_activation[k] if k < L - 1 else base.output
        l, u = il, iu
        if deadline is not None and time.monotonic() + last > deadline:
            method = "crown-partial"
        else:
            # only neurons whose sign IBP leaves open need the backward pass (all outputs do)
            rows = None
            if k == L - 1:
                rows = torch.arange(il.shape[1], device=lo.device) if out_rows is None else out_rows
            hmax = _magnitudes(x_mid, x_rad, pre, ops)
            boxes = _stop_boxes(pre, ops, stops)
            l, u, finished, last = tighten_layer(
                k, ops, relax, x_mid, x_rad, n_terms, hmax, il, iu, rows=rows, deadline=deadline, last=last,
                ball=ball, within=None if within is None or k == L - 1 else torch.as_tensor(within[k], device=lo.device),
                boxes=boxes)
            if not finished:
                method = "crown-partial"
        if k < L - 1:
            pre.append((l, u))
            relax.append(_relaxation(l, u, ops[k].passthrough))
        else:
            out = (l, u)
    return Bounds(tuple(pre), out, method)


@torch.no_grad()
def crown_linear_lower(network: Network, lower, upper, C: torch.Tensor, bounds: Bounds, *, ball=None,
                       stops: bool | None = None):
    """Lower bounds of ``C y`` over the boxes using the pre-activation ``bounds``; ``stops``
    (default :data:`CROWN_STOPS`) as in :func:`crown`.

    ``C`` is ``(batch, m, n_out)`` (or ``(m, n_out)``, shared). Returns ``(lower (batch, m),
    A (batch, m, n_in))`` where ``A`` is the linear coefficient on the input of the bound
    (used by input splitting to rank dimensions and to pick a candidate corner).
    """
    lo, hi = _ibp_iv(network, lower, upper)
    lo = lo.reshape(lo.shape[0], -1)
    hi = hi.reshape(hi.shape[0], -1)
    ops = network.linear_ops(lo.device, lo.dtype)
    n_terms = _term_count(network, lo)
    if C.dim() == 2:
        C = C.expand(lo.shape[0], *C.shape)
    relax = [_relaxation(l, u, op.passthrough) for (l, u), op in zip(bounds.pre_activation, ops)]
    x_mid, x_rad = center_radius(lo, hi)
    if ball is not None:
        ball = (ball[0].reshape(lo.shape).to(lo), ball[1].reshape(-1).to(lo), ball[2])
    return _backward(C.to(lo.dtype), len(ops) - 1, ops, relax, x_mid, x_rad, n_terms,
                     _magnitudes(x_mid, x_rad, bounds.pre_activation, ops), ball=ball,
                     boxes=_stop_boxes(bounds.pre_activation, ops, stops))


def alpha_crown_linear_lower(network: Network, lower, upper, C: torch.Tensor, bounds: Bounds, *,
                             steps: int = 20, lr: float = 0.25, deadline: float | None = None,
                             stops: bool | None = None) -> torch.Tensor:
    """alpha-CROWN for the rows of ``C y`` (Xu et al., ICLR 2021), intermediate bounds fixed.

    Any lower slope ``alpha in [0, 1]`` of an unstable ReLU gives a valid relaxation, so the
    bound of :func:`crown_linear_lower` is maximised over one ``alpha`` per (item, row, neuron)
    by projected Adam steps. The steps' values are taken without the rounding pads (they only
    choose); the best slopes per row are bounded once more with the pads, and the larger of that
    and the starting point's bound is returned, ``(batch, m)``, never worse than CROWN's adaptive choice (the starting point; the passes drop the
    neurons dead in every box, so CROWN's own rows are kept where rounding leaves them higher). Stops early at
    ``deadline``. ``stops`` (default :data:`CROWN_STOPS`): the padded evaluations also stop at the
    hidden layers' boxes, as in :func:`crown` (the steps optimise the full substitution).
    """
    lo, hi = _ibp_iv(network, lower, upper)
    lo = lo.reshape(lo.shape[0], -1).detach()
    hi = hi.reshape(hi.shape[0], -1).detach()
    B = lo.shape[0]
    # neurons dead in every box drop out; for one box, so do those outside the cone of the
    # outputs the rows read (with the other outputs)
    used = spec_outputs(C) if B == 1 else None
    prune = DeadPruning(network, bounds.pre_activation, outputs=used if used is not None and used.numel() else None)
    ops = prune.ops(lo.device, lo.dtype)
    n_terms = _term_count(network, lo)
    if C.dim() == 2:
        C = C.expand(B, *C.shape)
    C_kept = C if prune.out_keep is None else C[..., prune.out_keep.to(C.device)]
    x_mid, x_rad = center_radius(lo, hi)
    pre = [(prune.narrow(l.detach(), j), prune.narrow(u.detach(), j)) for j, (l, u) in enumerate(bounds.pre_activation)]
    rows = _optimised_rows(C_kept.to(lo.dtype), len(ops) - 1, ops, pre, x_mid, x_rad, n_terms, steps, lr, deadline,
                           stops=stops)
    if not prune.dropped:
        return rows
    # the pruned passes round differently from CROWN's own: keep CROWN's rows where they are higher,
    # so that the result is never below crown_linear_lower's, exactly
    return torch.maximum(rows, crown_linear_lower(network, lower, upper, C, bounds, stops=stops)[0])


#: the dtypes the multiplier (slope) steps of alpha-CROWN and activation splitting may run in, and
#: the default: the steps' values only choose the multipliers, whose bound is then evaluated in the
#: bounds' own dtype with the rounding pads, so a narrower dtype costs no soundness. On a 2-core
#: CPU (one thread, mnist_fc 256x4 and 256x6) activation splitting with float32 steps did the same
#: work 1.31x faster (1.1x to 1.9x per instance); GPUs, whose float64 rate is a half to a
#: sixty-fourth of float32's, should gain more. Used by :func:`alpha_crown_bounds` (the spec rows'
#: :func:`alpha_crown_linear_lower` keeps float64 steps)
STEP_DTYPES = ("float32", "float64")
STEP_DTYPE = "float32"


def step_torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a step dtype's name (one of :data:`STEP_DTYPES`)."""
    if name not in STEP_DTYPES:
        raise InvalidInputError(f"the step dtype must be one of {', '.join(STEP_DTYPES)}, got {name!r}")
    return getattr(torch, name)


def grad_scale(grads, lead: int) -> torch.Tensor:
    """Per problem (the first ``lead`` dims of every tensor of ``grads``), the largest ``|g|`` over
    all of them; 1 where that is 0 or not finite. Adam's steps do not change when a problem's
    gradients are divided by a constant (its epsilon aside), and divided by this scale, taken at
    the first step, their squares cannot overflow a narrow dtype: in float32 ``g * g`` is ``inf``
    beyond 1.8e19, and the steps then stop (found with the first layer's weights scaled by 1e20)."""
    parts = [g.abs().flatten(lead).amax(dim=-1) for g in grads if g.flatten(lead).shape[-1]]  # layers all pruned: none
    if not parts:
        return torch.ones(grads[0].shape[:lead], dtype=grads[0].dtype, device=grads[0].device)
    s = torch.stack(parts).amax(dim=0)
    return torch.where((s > 0) & torch.isfinite(s), s, torch.ones_like(s))


def adam_ascent(value, params, lrs, boxes, steps, deadline=None, scale_lead: int | None = None) -> list:
    """Projected Adam ascent on ``value(params).sum()`` (each entry of ``value``'s ``(B, m)`` its
    own objective) from ``params``; ``boxes`` the ``(low, high)`` projection of each parameter
    (``None``: unbounded). ``scale_lead``: divide the gradients by :func:`grad_scale` over their
    first ``scale_lead`` dims, taken at the first step (for steps in a narrow dtype). Returns, per
    entry, the parameters of its best step (copies)."""
    params = [p.detach().clone().requires_grad_(True) for p in params]
    keep = [p.detach().clone() for p in params]
    best = None
    m1 = [torch.zeros_like(p) for p in params]
    m2 = [torch.zeros_like(p) for p in params]
    last, scale = 0.0, None  # the time of the last step: one more must fit before the deadline
    for t in range(1, steps + 1):
        t0 = time.monotonic()
        if deadline is not None and t0 + last > deadline:
            break
        with torch.enable_grad():
            v = value(params)
            grads = torch.autograd.grad(v.sum(), params)
        with torch.no_grad():
            if scale_lead is not None:
                scale = grad_scale(grads, scale_lead) if scale is None else scale
                grads = [g / scale.reshape(*scale.shape, *(1,) * (g.dim() - scale_lead)) for g in grads]
            v = v.detach()
            better = torch.ones_like(v, dtype=torch.bool) if best is None else v > best
            best = v if best is None else torch.where(better, v, best)
            for kp, p in zip(keep, params):
                kp.copy_(torch.where(better[..., None], p, kp))
            for p, g, a1, a2, lr, (low, high) in zip(params, grads, m1, m2, lrs, boxes):
                a1.mul_(0.9).add_(g, alpha=0.1)
                a2.mul_(0.999).addcmul_(g, g, value=0.001)
                p.add_(lr * (a1 / (1 - 0.9 ** t)) / ((a2 / (1 - 0.999 ** t)).sqrt() + 1e-12))
                p.clamp_(min=low, max=high)
        last = time.monotonic() - t0
    return keep


def _optimised_rows(lam, k, ops, pre, x_mid, x_rad, n_terms, steps, lr, deadline, step_ops=None, stops=None):
    """The best lower bound of ``lam @ z_k`` ``(B, m)`` over projected Adam steps on one lower
    slope per (item, row, unstable neuron) of the layers before ``k``, from CROWN's adaptive
    slopes; ``pre`` the pre-activation bounds of those layers. ``step_ops``: the blocks in the
    dtype the steps run in (:data:`STEP_DTYPE`; None: that of ``ops``); the bound is evaluated
    in ``ops``' dtype, with the rounding pads, at the slopes they found; with ``stops`` (default
    :data:`CROWN_STOPS`) these padded evaluations also stop at the earlier layers' boxes."""
    B, m = lam.shape[:2]
    boxes = _stop_boxes(pre[:k], ops, stops)
    relax = [_relaxation(l, u, op.passthrough) for (l, u), op in zip(pre[:k], ops)]
    hmax = _magnitudes(x_mid, x_rad, pre[:k], ops)
    unstable = [((l < 0) & (u > 0) & (True if op.passthrough is None else ~op.passthrough))[:, None, :]
                for (l, u), op in zip(pre[:k], ops)]
    with torch.no_grad():
        first, _ = _backward(lam, k, ops, relax, x_mid, x_rad, n_terms, hmax, boxes=boxes)
    if not relax or steps <= 0:
        return first
    # the steps run without the rounding pads, in step_ops' dtype (their values only choose the best
    # slopes per row); the best slopes are bounded once more with the pads, in ops' dtype, at the end
    final, final_ops = (relax, lam, x_mid, x_rad), ops
    step_dtype = lam.dtype if step_ops is None else step_ops[0].bias.dtype
    low = step_dtype != lam.dtype  # the steps in another dtype
    if low:
        ops = step_ops
        relax = [tuple(t.to(step_dtype) for t in r) for r in relax]
        lam, x_mid, x_rad = lam.to(step_dtype), x_mid.to(step_dtype), x_rad.to(step_dtype)
    params = [a[:, None, :].expand(B, m, a.shape[1]).clone() for a, _, _ in relax]

    def value(params_):
        rel = [(torch.where(unst, p.clamp(0.0, 1.0), a[:, None, :]), s, icpt)
               for p, unst, (a, s, icpt) in zip(params_, unstable, relax)]
        return _backward(lam, k, ops, rel, x_mid, x_rad, n_terms, hmax, pad=False)[0]

    # ascent on the bound, each slope projected onto [0, 1]; in another dtype, each row's
    # gradients scaled (grad_scale)
    keep = adam_ascent(value, params, [lr] * len(params), [(0.0, 1.0)] * len(params), steps, deadline,
                       scale_lead=2 if low else None)
    relax, lam, x_mid, x_rad = final
    ops = final_ops
    with torch.no_grad():
        rel = [(torch.where(unst, p.to(a.dtype).clamp(0.0, 1.0), a[:, None, :]), s, icpt)
               for p, unst, (a, s, icpt) in zip(keep, unstable, relax)]
        bound, _ = _backward(lam, k, ops, rel, x_mid, x_rad, n_terms, hmax, boxes=boxes)
    return torch.maximum(first, bound)  # both sound


def alpha_crown_bounds(network: Network, lower, upper, bounds: Bounds, *, steps: int = 20, lr: float = 0.25,
                       deadline: float | None = None, step_dtype: str = STEP_DTYPE, outputs=None,
                       stops: bool | None = None) -> Bounds:
    """Intermediate bounds tightened by alpha-CROWN, layer by layer: for each ReLU layer ``k``
    (from the first hidden one on), the lower and upper bounds of its unstable neurons are
    optimised over per-neuron lower slopes of the layers before it (which already carry their
    tightened bounds), and intersected with ``bounds``. Each bound is sound whatever the slopes;
    the output bounds are kept. Layers not reached by ``deadline`` keep their bounds. The slope
    steps run in ``step_dtype`` (one of :data:`STEP_DTYPES`), the bounds in the dtype of ``lower``.
    ``outputs`` (indices, default all): only the neurons that reach these outputs are tightened
    (:func:`gpuopt.bounds.reach.cone`). ``stops`` as in :func:`_optimised_rows`."""
    lo, hi = _ibp_iv(network, lower, upper)
    lo = lo.reshape(lo.shape[0], -1).detach()
    hi = hi.reshape(hi.shape[0], -1).detach()
    # neurons dead in every box drop out; for one box, so do those outside the cone of ``outputs``
    # (a batch of boxes keeps them and skips their rows)
    one_box = outputs is not None and lo.shape[0] == 1
    within = None if outputs is None or one_box else cone([b.matrix for b in network.affine_blocks()], outputs)
    prune = DeadPruning(network, bounds.pre_activation, outputs=outputs if one_box else None)
    ops = prune.ops(lo.device, lo.dtype)
    step_ops = prune.ops(lo.device, step_torch_dtype(step_dtype))
    n_terms = _term_count(network, lo)
    x_mid, x_rad = center_radius(lo, hi)
    pre = [(prune.narrow(l.detach(), j).clone(), prune.narrow(u.detach(), j).clone())
           for j, (l, u) in enumerate(bounds.pre_activation)]
    B = lo.shape[0]
    for k in range(1, len(pre)):
        if deadline is not None and time.monotonic() > deadline:
            break
        l, u = pre[k]
        rows = open_rows(l, u, ops[k])
        if within is not None:
            mask = torch.as_tensor(within[k][prune.keep[k].numpy()] if prune.dropped else within[k],
                                   device=rows.device)
            rows = rows[mask[rows]]
        if not rows.numel():
            continue
        width = max(op.shape[1] for op in ops[: k + 1])
        chunk = max(1, CHUNK_ELEMENTS // (4 * B * width))
        for start in range(0, rows.numel(), chunk):
            if deadline is not None and time.monotonic() > deadline:
                break  # (each chunk's first and last passes ignore the deadline: on TinyYOLO,
                #          chunks past it overran a 300 s item by 15 s)
            part = rows[start:start + chunk]
            n = part.numel()
            lam = row_selectors(part, ops[k].shape[0], B, lo)
            bound = _optimised_rows(lam, k, ops, pre, x_mid, x_rad, n_terms, steps, lr, deadline, step_ops,
                                    stops=stops)
            l[:, part] = torch.maximum(l[:, part], bound[:, :n])
            u[:, part] = torch.minimum(u[:, part], -bound[:, n:])
    pre = [(prune.widen(l, j, 0, l0.detach()), prune.widen(u, j, 1, u0.detach()))
           for j, ((l, u), (l0, u0)) in enumerate(zip(pre, bounds.pre_activation))]
    return Bounds(tuple(pre), bounds.output, bounds.method + "+alpha")
