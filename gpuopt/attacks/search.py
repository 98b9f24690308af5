"""Falsification of linear output specs: fresh rounds of restarts until the budget ends.

For items ``b`` with sets ``S_b`` and unsafe regions ``OR_k {A_k y <= b_k}`` the attack minimises
the spec margin ``m(x) = min_k max_i (A_k f(x) - b_k)_i`` (:mod:`gpuopt.specs`): ``m(x) <= 0``
puts ``f(x)`` in the unsafe region, and the min over disjuncts lets each restart falsify
whichever disjunct is nearest. Each round runs ``restarts`` starts per open item through
:func:`~gpuopt.attacks.pgd.descend`: round 0 starts at the centre, at ``corners * restarts``
random vertices and uniformly in the set (optionally moved by output-diversified steps); later
rounds draw new vertices and uniform points from new seeds. Rounds continue until every item
succeeds, the deadline passes, ``rounds`` are done, or ``patience`` rounds in a row did not
improve the best margin by 1%.

A success in the working precision is only a candidate. With ``confirm`` (a float64 re-check),
an item whose candidate is refused stays open and aims below a lower target next round.

Batch size follows the memory: a chunk of items runs at a time, sized from the network's widths
and the memory free on the device (a fixed budget on the CPU), halved on CUDA out-of-memory. Each
item draws its starts from its own generator and the loop treats restarts independently, so the
results do not depend on how the items were chunked.

Per item the result keeps the best point, its margin and activation pattern, and a pool of the
best points with distinct activation patterns (bit-packed, see :mod:`gpuopt.kernels.patterns`),
from which the LP walk and the MILP start.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..errors import InvalidInputError
from ..kernels.patterns import distinct_rows, pack_and_hash
from ..network import Network
from .geometry import BoxGeometry, Geometry, uniform_numbers
from .pgd import AttackConfig, descend, generators

__all__ = ["CandidatePool", "Candidates", "falsify", "pgd_attack", "spec_margins"]

log = logging.getLogger("gpuopt")

#: memory budget of one chunk on the CPU, in bytes
CPU_CHUNK_BYTES = 1 << 30
#: the share of the free CUDA memory one chunk may use
CUDA_MEMORY_SHARE = 0.5


@dataclass(frozen=True, eq=False)
class CandidatePool:
    """The best points of one item with distinct activation patterns, best first: ``x`` ``(k, n)``,
    ``margin`` ``(k,)``, ``packed`` ``(k, bytes)`` uint8 patterns, ``hashes`` ``(k,)`` int64."""

    x: torch.Tensor
    margin: torch.Tensor
    packed: torch.Tensor
    hashes: torch.Tensor


@dataclass(frozen=True, eq=False)
class Candidates:
    """Per item ``(batch,)``: ``x`` ``(batch, n)`` the best point, ``margin`` its margin in the
    attack's dtype, ``success``: ``margin <= 0``, or with a ``confirm`` check the items whose
    candidate it confirmed (``x`` is then that candidate), ``patterns`` one
    bool ``(batch, n_k)`` per ReLU layer at ``x``, ``pools`` one :class:`CandidatePool` per item;
    ``steps`` the most steps any restart ran, ``rounds`` the rounds run, ``restarts`` the restarts
    launched in all, ``evaluations`` the restart-steps spent."""

    x: torch.Tensor
    margin: torch.Tensor
    success: torch.Tensor
    patterns: tuple
    pools: tuple
    steps: int
    rounds: int
    restarts: int
    evaluations: int


def spec_margins(network: Network, A: torch.Tensor, b: torch.Tensor):
    """The objective of :func:`descend` for padded specs ``A`` ``(batch, K, M, n_out)``, ``b``
    ``(batch, K, M)`` (padding rows ``b = +inf``, padding disjuncts ``b[k, 0] = -inf``)."""

    _, K, M, n_out = A.shape
    # the spec rows of the last ``items`` and its version (the loop passes one tensor until it
    # retires items; a tensor changed in place has a new version)
    last: dict = {}

    def rows_of(items: torch.Tensor):
        if last.get("items") is not items or last["version"] != items._version:
            # rows as one batched product: (bsz, n_out, K M) and the right-hand sides negated
            At = A[items].reshape(-1, K * M, n_out).transpose(1, 2).contiguous()
            last.update(items=items, version=items._version, At=At, nb=-b[items].reshape(-1, 1, K * M))
        return last["nb"], last["At"]

    def margins(x: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        nb, At = rows_of(items)
        bsz, r, n = x.shape
        y = network.forward(x.reshape(bsz * r, n)).reshape(bsz, r, n_out)
        rows = torch.baddbmm(nb, y, At)  # (bsz, r, K M): A y - b
        if M > 1:
            rows = rows.reshape(bsz, r, K, M).max(dim=-1).values
        return rows.min(dim=-1).values if K > 1 else rows[..., 0]

    def value_and_grad(x: torch.Tensor, items: torch.Tensor):
        """The margins and their gradient with respect to ``x`` without autograd, where the
        network offers :meth:`~gpuopt.network.Network.forward_vjp` (else ``None``): the margin's
        gradient on the outputs is its selected row (the max over a disjunct's rows, the min over
        the disjuncts, as autograd routes it), then the network's backward. The same values and
        gradients as autograd's, bit for bit."""
        bsz, r, n = x.shape
        if not x.is_contiguous():  # autograd's backward of a strided input takes another product
            return None
        fv = network.forward_vjp(x.reshape(bsz * r, n))
        if fv is None:
            return None
        nb, At = rows_of(items)
        y, vjp = fv
        rows = torch.baddbmm(nb, y.reshape(bsz, r, n_out), At)
        if M > 1:
            best = rows.reshape(bsz, r, K, M).max(dim=-1)
            vals, within = best.values, best.indices  # (bsz, r, K)
        else:
            vals, within = rows, None
        if K > 1:
            worst = vals.min(dim=-1)
            m, k = worst.values, worst.indices
        else:
            m, k = vals[..., 0], torch.zeros((bsz, r), dtype=torch.long, device=x.device)
        col = k * M + (within.gather(-1, k[..., None])[..., 0] if within is not None else 0)
        # (bsz, r, n_out), row-major as autograd's one-hot product makes it (a strided view gave
        # the next product other bits where a layer has width 1: found by review), and + 0.0 turns
        # a selected -0.0 into the product's +0.0
        g_y = At.gather(2, col[:, None, :].expand(bsz, n_out, r)).transpose(1, 2).contiguous() + 0.0
        g = vjp(g_y.reshape(bsz * r, n_out))
        return m, g.reshape(bsz, r, n)

    margins.value_and_grad = value_and_grad
    return margins


def _in_chunk(objective, chunk: torch.Tensor):
    """``objective`` on the items ``chunk[items]``; the same ``items`` tensor (unchanged) maps to the
    same index tensor, so that the objective's per-items rows are gathered once per retirement, not per step."""
    last: dict = {}

    def mapped(items: torch.Tensor) -> torch.Tensor:
        if last.get("items") is not items or last["version"] != items._version:
            last.update(items=items, version=items._version, mapped=chunk[items])
        return last["mapped"]

    def local(x: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return objective(x, mapped(items))

    inner = getattr(objective, "value_and_grad", None)
    if inner is not None:
        local.value_and_grad = lambda x, items: inner(x, mapped(items))
    return local


def _row_bytes(network: Network, dtype: torch.dtype) -> int:
    """Bytes one restart needs: every layer's values kept for the backward pass (twice, for the
    gradient), plus the loop's per-restart state (about eight copies of the input)."""
    size = torch.finfo(dtype).bits // 8
    widths = sum(math.prod(s) for s in network.output_shapes)
    return size * (3 * widths + 8 * network.input_size) + 64


def _chunk_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(CUDA_MEMORY_SHARE * free)
    return CPU_CHUNK_BYTES


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def _starts(network: Network, objective, geometry: Geometry, config: AttackConfig, generators: list,
            first_round: bool, deadline: float | None = None) -> torch.Tensor:
    """``(batch, restarts, n)`` starts: the centre (first round), ``corners`` random vertices of
    the box, then uniform points of the set (each the best of ``screen`` draws by the objective
    ``objective(x) -> (batch, restarts)`` when the input has at most ``screen_max_dim``
    dimensions; the draws stop at ``deadline``), of which an ``odi`` share takes two
    output-diversified steps."""
    R = config.restarts
    x = geometry.random_start(R, generators)
    if config.screen > 1 and x.shape[-1] <= config.screen_max_dim:
        with torch.no_grad():
            m = objective(x)
            for _ in range(config.screen - 1):
                if deadline is not None and time.monotonic() > deadline:
                    break
                other = geometry.random_start(R, generators)
                m_other = objective(other)
                better = m_other < m
                x = torch.where(better[..., None], other, x)
                m = torch.minimum(m, m_other)
    lo_c = 0
    if first_round:
        x[:, 0] = geometry.centre()
        lo_c = 1
    hi_c = min(R, lo_c + int(round(config.corners * R)))
    if hi_c > lo_c:
        box = BoxGeometry(*geometry.hull())  # a ball's vertices: finite with an unbounded clip box
        x[:, lo_c:hi_c] = geometry.project(box.corners(hi_c - lo_c, generators))
    n_odi = min(R - hi_c, int(round(config.odi * (R - hi_c))))
    if n_odi > 0:
        x[:, hi_c:hi_c + n_odi] = _diversify(network, geometry, x[:, hi_c:hi_c + n_odi], generators)
    return x


def _diversify(network: Network, geometry: Geometry, x: torch.Tensor, generators: list, steps: int = 2):
    """ODI: ``steps`` steps of relative length 1 that maximise ``w . f(x)``, one random ``w`` in
    ``[-1, 1]^n_out`` per restart."""
    b, r, n = x.shape
    w = (2 * uniform_numbers(generators, b, r, network.output_size, x.dtype) - 1).to(x.device)
    t = torch.ones((b, r), dtype=x.dtype, device=x.device)
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            y = network.forward(x.reshape(b * r, n)).reshape(b, r, -1)
            (g,) = torch.autograd.grad(-(w * y).sum(), x)
        x = geometry.project(x.detach() + geometry.descent(x.detach(), g, t))
    return x


def falsify(network: Network, geometry: Geometry, A: torch.Tensor, b: torch.Tensor, *,
            config: AttackConfig = AttackConfig(), deadline: float | None = None,
            confirm: Callable[[int, torch.Tensor], bool] | None = None, stop_at_first: bool = False,
            chunk_bytes: int | None = None) -> Candidates:
    """Search the sets of ``geometry`` (batch ``B``, on the device and dtype of its tensors) for
    points whose outputs lie in the unsafe regions ``A``, ``b`` (``(B, K, M, n_out)``,
    ``(B, K, M)``). ``confirm(item, x)`` re-checks a candidate (``x`` ``(n,)``) and returns
    whether it stands; with it, ``success`` marks the confirmed items only. ``stop_at_first``
    ends the search at the first success (the items form one disjunction). ``chunk_bytes``
    overrides the memory budget of one chunk."""
    dev, dtype = geometry.lower.device, geometry.lower.dtype
    B, n = geometry.lower.shape
    A, b = A.to(dev, dtype), b.to(dev, dtype)
    objective = spec_margins(network, A, b)
    R = int(config.restarts)
    best_x = geometry.project(geometry.centre()[:, None])[:, 0].clone()
    best_m = torch.full((B,), math.inf, dtype=dtype, device=dev)
    success = torch.zeros(B, dtype=torch.bool, device=dev)
    target = torch.zeros(B, dtype=dtype, device=dev)
    pool_x, pool_m = [[] for _ in range(B)], [[] for _ in range(B)]
    budget = chunk_bytes if chunk_bytes is not None else _chunk_budget(dev)
    per_item = _row_bytes(network, dtype) * R
    # None: no limit on the number of rounds (one round when there is no deadline either)
    max_rounds = config.rounds if config.rounds is not None else (1 if deadline is None else None)
    rounds = steps = evaluations = launched = 0
    step_seconds = 0.0
    since_better, record = 0, math.inf
    while max_rounds is None or rounds < max_rounds:
        open_items = torch.nonzero(~success).flatten()
        # a round that could not take a step before the deadline is not started
        if open_items.numel() == 0 or (stop_at_first and bool(success.any())) or \
                (deadline is not None and time.monotonic() + 2 * step_seconds > deadline):
            break
        round_seed = config.seed + 7919 * rounds
        size = max(1, budget // max(per_item, 1))
        start = 0
        while start < open_items.numel() and not (stop_at_first and bool(success.any())):
            chunk = open_items[start:start + size]
            gens = generators(round_seed, chunk.tolist(), dev)
            sub = geometry.select(chunk)
            try:
                local = _in_chunk(objective, chunk)
                x0 = _starts(network, lambda x: local(x, torch.arange(x.shape[0], device=dev)), sub, config, gens,
                             rounds == 0, deadline)
                t_chunk = time.monotonic()
                res = descend(local, sub, x0, config, target=target[chunk], deadline=deadline)
                step_seconds = (time.monotonic() - t_chunk) / (res.steps + 1)  # the start's evaluation and the steps
            except RuntimeError as err:
                if not _is_oom(err) or size == 1:
                    raise
                size = max(1, size // 2)
                budget = size * per_item
                log.info("attack: out of memory; chunks of %d items from now on", size)
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            steps = max(steps, res.steps)
            evaluations += res.evaluations
            launched += R * chunk.numel()
            _collect(chunk, res.x, res.margin, pool_x, pool_m, config.keep)
            m_best, r_best = res.margin.min(dim=1)
            x_pick = res.x[torch.arange(chunk.numel(), device=dev), r_best]
            better = m_best < best_m[chunk]
            best_m[chunk] = torch.where(better, m_best, best_m[chunk])
            best_x[chunk] = torch.where(better[:, None], x_pick, best_x[chunk])
            for j, item in enumerate(chunk.tolist()):
                if bool(m_best[j] <= target[item]):
                    if confirm is None or confirm(item, x_pick[j]):
                        success[item] = True
                        best_x[item], best_m[item] = x_pick[j], m_best[j]
                    else:  # refused in float64: aim lower next round
                        scale = 1e-5 * (1 + float(m_best[j].abs()))
                        target[item] = 2 * target[item] - scale
            start += chunk.numel()
        rounds += 1
        low = float(best_m[~success].min()) if (~success).any() else -math.inf
        if not math.isfinite(record) or low < record - 0.01 * max(abs(record), 1e-12):
            since_better, record = 0, low
        else:
            since_better += 1
        if config.patience is not None and since_better >= config.patience:
            break
    with torch.no_grad():
        y, patterns = network.forward(best_x, return_pattern=True)
        rows = torch.einsum("bkmo,bo->bkm", A, y) - b
        margin = rows.amax(dim=-1).amin(dim=-1)
    pools = tuple(_pool(network, pool_x[i], pool_m[i], config.keep, dev, dtype, n) for i in range(B))
    if confirm is None:
        # the margin recomputed at the returned point decides (the descent's batched value may
        # round to the other side of 0 in float32)
        success = margin <= 0
    return Candidates(best_x, margin, success, tuple(patterns), pools, steps, rounds, launched, evaluations)


def _collect(chunk, xs, ms, pool_x, pool_m, keep: int) -> None:
    """Keep the ``4 keep`` best restarts per item over all rounds so far (the pool's distinct
    patterns come from them)."""
    k = min(4 * keep, ms.shape[1])
    top = ms.topk(k, dim=1, largest=False)
    for j, item in enumerate(chunk.tolist()):
        x = torch.cat(pool_x[item] + [xs[j, top.indices[j]]])
        m = torch.cat(pool_m[item] + [top.values[j]])
        best = m.topk(min(4 * keep, m.numel()), largest=False).indices.sort().values
        pool_x[item], pool_m[item] = [x[best]], [m[best]]


def _pool(network, xs, ms, keep, dev, dtype, n) -> CandidatePool:
    if not xs:
        empty = torch.zeros((0, n), dtype=dtype, device=dev)
        return CandidatePool(empty, torch.zeros(0, dtype=dtype, device=dev),
                             torch.zeros((0, 0), dtype=torch.uint8, device=dev), torch.zeros(0, dtype=torch.int64, device=dev))
    x, m = torch.cat(xs), torch.cat(ms)
    order = m.argsort()
    x, m = x[order], m[order]
    with torch.no_grad():
        _, patterns = network.forward(x, return_pattern=True)
    bits = torch.cat(patterns, dim=1) if patterns else torch.zeros((x.shape[0], 0), dtype=torch.bool, device=dev)
    packed, hashes = pack_and_hash(bits)
    first = distinct_rows(packed, hashes)[:keep]
    return CandidatePool(x[first], m[first], packed[first], hashes[first])


def pgd_attack(network: Network, lower, upper, A, b, *, config: AttackConfig = AttackConfig(), device=None,
               dtype=torch.float32, deadline: float | None = None, confirm=None,
               stop_at_first: bool = False) -> Candidates:
    """:func:`falsify` over boxes ``lower``/``upper`` ``(batch, n)`` (or ``(n,)`` for one box);
    ``A``/``b`` the padded spec, ``(K, M, n_out)`` and ``(K, M)`` shared by all items, or with a
    leading batch axis. Boxes beyond float32's range are searched in float64."""
    if not isinstance(config, AttackConfig):
        raise InvalidInputError(f"`config` must be an AttackConfig, got {type(config).__name__}")
    def as64(v):  # Python and numpy values are read as float64 (a list would become float32)
        return v.detach().to(torch.float64) if isinstance(v, torch.Tensor) else torch.as_tensor(np.array(v, np.float64))

    dev = torch.device(device) if device is not None else (lower.device if isinstance(lower, torch.Tensor) else torch.device("cpu"))
    lo = as64(lower).to(dev)
    hi = as64(upper).to(dev)
    n = network.input_size
    for name, t in (("lower", lo), ("upper", hi)):
        if t.dim() == 1:
            t = t[None]
        if t.dim() != 2 or t.shape[1] != n or t.shape[0] == 0:
            raise InvalidInputError(f"`{name}` must have shape (batch, {n}) or ({n},) with batch >= 1, "
                                    f"got {tuple(torch.as_tensor(lower if name == 'lower' else upper).shape)}")
    lo, hi = lo.reshape(-1, n), hi.reshape(-1, n)
    if lo.shape != hi.shape:
        raise InvalidInputError(f"`lower` and `upper` must have the same shape, got {tuple(lo.shape)} and {tuple(hi.shape)}")
    if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise InvalidInputError("`lower` and `upper` must be finite")
    if bool((lo > hi).any()):
        raise InvalidInputError("`lower` must be <= `upper` everywhere: the box is empty")
    if dtype == torch.float32 and float(torch.maximum(lo.abs(), hi.abs()).max()) > 1e30:
        dtype = torch.float64  # float32 would overflow inside the network
    lo, hi = lo.to(dtype), hi.to(dtype)
    A = torch.as_tensor(A).to(device=dev, dtype=dtype)
    b = torch.as_tensor(b).to(device=dev, dtype=dtype)
    if A.dim() == 3:
        A, b = A.expand(lo.shape[0], *A.shape), b.expand(lo.shape[0], *b.shape)
    if A.dim() != 4 or A.shape[0] != lo.shape[0] or A.shape[-1] != network.output_size or b.shape != A.shape[:3]:
        raise InvalidInputError(f"spec `A` of shape {tuple(A.shape)} and `b` of shape {tuple(b.shape)} do not match "
                                f"batch {lo.shape[0]} and {network.output_size} outputs")
    if not bool(torch.isfinite(A).all()) or bool(torch.isnan(b).any()):
        raise InvalidInputError("spec `A` must be finite and `b` free of NaN (`b` may hold +inf for a padding row "
                                "and -inf for a padding disjunct)")
    return falsify(network, BoxGeometry(lo, hi), A, b, config=config, deadline=deadline, confirm=confirm,
                   stop_at_first=stop_at_first)
