"""Perturbation geometries, kept apart from the attack loop.

Every geometry is a set ``S_b`` per item ``b`` (tensors batch-first, points ``(batch, restarts, n)``):

- :class:`BoxGeometry` (norms ``"linf"`` and ``"box"``): ``S = {x : l <= x <= u}`` with per-feature
  bounds; an L-inf ball clipped to a valid range is such a box, with ``l = max(c - eps, lo)`` and
  ``u = min(c + eps, hi)``. Its radius per feature is ``r = (u - l) / 2``.
- :class:`L2Geometry` and :class:`L1Geometry`: ``S = {x : ||x - c||_p <= eps} ∩ [lo, hi]``.

Each supplies the same four operations, which is all the loop calls:

- ``random_start(restarts, generators)``: starting points in ``S``; one ``torch.Generator`` per
  item, so an item's starts do not depend on the other items of the batch;
- ``descent(x, grad, t)``: the steepest-descent displacement of the first-order model, of length
  ``t`` relative to the radius: ``-t r sign(g)`` (L-inf), ``-t eps g / ||g||_2`` (L2), and for L1
  the top-k coordinates of ``|g|`` that can still move inside the box (``k`` a fixed fraction
  ``sparsity`` of ``n``), scaled to L1 length ``t eps`` (the sparse step of SLIDE / APGD-L1);
- ``project(x)``: a point of ``S``. For the box it is the Euclidean projection (a clamp). For the
  balls it is the ball's projection (scaling for L2, the sort-based simplex projection of Duchi
  et al. 2008 for L1) followed by the clamp. Because the centre lies in the box, the clamp moves
  no coordinate away from it, so the result is in both sets: a feasible retraction, exact when
  the clamp is inactive. The radius used is ``eps (1 - 64 u)`` in the working precision ``u``, so
  that rounding in the norm cannot leave the ball;
- ``contains(x)``: ``(batch, restarts)`` membership, evaluated in the working precision.
"""

from __future__ import annotations

import abc
import math

import torch

from ..kernels.step import box_step, momentum_point_, track_best_

__all__ = ["BoxGeometry", "Geometry", "L1Geometry", "L2Geometry"]


class Geometry(abc.ABC):
    """Base of the perturbation sets; subclasses implement the operations the loop calls."""

    lower: torch.Tensor
    upper: torch.Tensor

    @abc.abstractmethod
    def random_start(self, restarts: int, generators: list) -> torch.Tensor:
        """``(batch, restarts, n)`` points of the set."""

    @abc.abstractmethod
    def descent(self, x: torch.Tensor, grad: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The steepest-descent displacement of relative length ``t``."""

    @abc.abstractmethod
    def project(self, x: torch.Tensor) -> torch.Tensor:
        """A point of the set for each row of ``x``."""

    @abc.abstractmethod
    def contains(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, restarts)`` membership in the working precision."""

    @abc.abstractmethod
    def centre(self) -> torch.Tensor:
        """``(batch, n)``: the centre of each item's set."""

    @abc.abstractmethod
    def select(self, index: torch.Tensor) -> "Geometry":
        """The same geometry restricted to the items ``index``."""

    def step(self, x: torch.Tensor, grad: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``project(x + descent(x, grad, t))``; a geometry may fuse it, and may reuse ``grad``'s
        buffer (the caller must not read ``grad`` afterwards)."""
        return self.project(x + self.descent(x, grad, t))

    def project_(self, x: torch.Tensor) -> torch.Tensor:
        """``project(x)``, in ``x``'s buffer where the geometry can (the result is returned)."""
        return self.project(x)

    def tracked_step(self, x, x_prev, g, t, *, best_x, best_g=None, better=None, back=None, momentum=None):
        """One step of the loop with the best-iterate bookkeeping before it, as
        :func:`gpuopt.kernels.step.box_step` defines it for any geometry: ``best_x``/``best_g``
        take the restarts marked ``better``; restarts marked ``back`` restart from their best;
        then ``z = step(x, g, t)``, and with momentum ``a`` the new point is
        ``project(x + a (z - x) + (1 - a)(x - x_prev))``. Buffers are reused: the caller must not
        read ``g`` or ``x_prev`` afterwards."""
        track_best_(x, x_prev, g, best_x, best_g, better, back)
        z = self.step(x, g, t)
        return z if momentum is None else self.project_(momentum_point_(x, x_prev, z, momentum))

    def hull(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lower, upper)`` ``(batch, n)``: a finite box holding the set where the set is bounded
        (the starts' vertices are drawn from it)."""
        return self.lower, self.upper

    # shared helpers
    def clamp(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, self.lower[:, None], self.upper[:, None])

    def in_box(self, x: torch.Tensor) -> torch.Tensor:
        return ((x >= self.lower[:, None]) & (x <= self.upper[:, None])).all(dim=-1)

    def _uniform(self, restarts: int, generators) -> torch.Tensor:
        """``(batch, restarts, n)`` uniform numbers in [0, 1): each item from its own generator
        (a list), or all from one ``torch.Generator``; drawn on the generators' device (see
        :func:`gpuopt.attacks.pgd.generators`), then moved to the geometry's."""
        return uniform_numbers(generators, self.lower.shape[0], restarts, self.lower.shape[1],
                               self.lower.dtype).to(self.lower.device)


def uniform_numbers(generators, batch: int, rows: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """``(batch, rows, n)`` uniform numbers in [0, 1) on the device of ``generators``: one
    ``torch.Generator`` for all, or a list of ``batch``, one per item (written in place into one
    buffer: no copy)."""
    if isinstance(generators, torch.Generator):
        return torch.rand((batch, rows, n), generator=generators, dtype=dtype, device=generators.device)
    if len(generators) != batch:
        raise ValueError(f"{len(generators)} generators for {batch} items")
    u = torch.empty((batch, rows, n), dtype=dtype, device=generators[0].device if batch else "cpu")
    for i, g in enumerate(generators):
        u[i].uniform_(generator=g)
    return u


def _shrunk(eps: torch.Tensor) -> torch.Tensor:
    """The radius the projections aim at: ``eps`` less a relative ``64 u``, so that the norm
    computed in the working precision stays ``<= eps``."""
    return eps * (1 - 64 * torch.finfo(eps.dtype).eps)


class BoxGeometry(Geometry):
    """``{x : lower <= x <= upper}``, per item; ``lower``/``upper`` ``(batch, n)``."""

    norm = "linf"

    def __init__(self, lower: torch.Tensor, upper: torch.Tensor):
        self.lower = lower
        self.upper = upper
        self.radius = (upper - lower) / 2

    def random_start(self, restarts: int, generators: list) -> torch.Tensor:
        return self.lower[:, None] + 2 * self.radius[:, None] * self._uniform(restarts, generators)

    def corners(self, restarts: int, generators: list) -> torch.Tensor:
        """``(batch, restarts, n)`` random vertices of the box."""
        u = self._uniform(restarts, generators)
        return torch.where(u < 0.5, self.lower[:, None], self.upper[:, None])

    def centre(self) -> torch.Tensor:
        return self.lower + self.radius

    def descent(self, x, grad, t):
        return -t[..., None] * self.radius[:, None] * torch.sign(grad)

    def tracked_step(self, x, x_prev, g, t, *, best_x, best_g=None, better=None, back=None, momentum=None):
        # the whole step fused: one pass on a GPU (cuda_kernels/box_step.cu), the same bits from
        # torch elsewhere, in place (the generic step and project_ are not needed here)
        return box_step(x, x_prev, g, t, self.radius, self.lower, self.upper, best_x=best_x, best_g=best_g,
                        better=better, back=back, momentum=momentum)

    def project(self, x):
        return self.clamp(x)

    def contains(self, x):
        return self.in_box(x)

    def select(self, index):
        return BoxGeometry(self.lower[index], self.upper[index])


class _BallGeometry(Geometry):
    """``{x : ||x - centre||_p <= eps} ∩ [lower, upper]``; ``centre`` ``(batch, n)`` inside the
    box, ``eps`` ``(batch,)``."""

    p: float

    def __init__(self, centre: torch.Tensor, eps: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor):
        self.c = centre
        self.eps = eps
        self.lower = lower
        self.upper = upper

    def select(self, index):
        return type(self)(self.c[index], self.eps[index], self.lower[index], self.upper[index])

    def centre(self) -> torch.Tensor:
        return self.c

    def hull(self):
        """The clip box intersected with the ball's box ``centre +- eps`` (finite even where the
        clip box is not)."""
        r = self.eps[:, None]
        return torch.maximum(self.lower, self.c - r), torch.minimum(self.upper, self.c + r)

    def contains(self, x):
        d = torch.linalg.vector_norm(x - self.c[:, None], ord=self.p, dim=-1)
        return (d <= self.eps[:, None]) & self.in_box(x)

    def _settle(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (already clamped) with every point whose distance, as computed, exceeds ``eps``
        pulled halfway to the centre, up to four times, then onto the centre: ``c + d`` rounds at
        the scale of ``|c|``, which for a small ``eps`` can undo the radius' margin."""
        c = self.c[:, None]
        for _ in range(4):
            out = torch.linalg.vector_norm(x - c, ord=self.p, dim=-1, keepdim=True) > self.eps[:, None, None]
            if not bool(out.any()):
                return x
            x = torch.where(out, c + (x - c) / 2, x)
        out = torch.linalg.vector_norm(x - c, ord=self.p, dim=-1, keepdim=True) > self.eps[:, None, None]
        return torch.where(out, c.expand_as(x), x)


class L2Geometry(_BallGeometry):
    norm = "l2"
    p = 2.0

    def random_start(self, restarts, generators):
        # a uniform direction (normalised Gaussian) at a radius eps * U^(1/n): uniform in the ball
        n = self.c.shape[1]
        u = self._uniform(restarts, generators)
        g = torch.sqrt(-2 * torch.log1p(-u)) * torch.cos(2 * math.pi * self._uniform(restarts, generators))
        d = g / torch.linalg.vector_norm(g, dim=-1, keepdim=True).clamp_min(torch.finfo(g.dtype).tiny)
        r = self._uniform(restarts, generators)[..., :1] ** (1.0 / n)
        return self.project(self.c[:, None] + d * r * self.eps[:, None, None])

    def descent(self, x, grad, t):
        norm = torch.linalg.vector_norm(grad, dim=-1, keepdim=True).clamp_min(torch.finfo(grad.dtype).tiny)
        return -(t * self.eps[:, None])[..., None] * grad / norm

    def project(self, x):
        d = x - self.c[:, None]
        norm = torch.linalg.vector_norm(d, dim=-1, keepdim=True)
        target = _shrunk(self.eps)[:, None, None]
        scale = torch.where(norm > target, target / norm.clamp_min(torch.finfo(d.dtype).tiny), torch.ones_like(norm))
        return self._settle(self.clamp(self.c[:, None] + d * scale))


class L1Geometry(_BallGeometry):
    norm = "l1"
    p = 1.0

    def __init__(self, centre, eps, lower, upper, sparsity: float = 0.05):
        super().__init__(centre, eps, lower, upper)
        self.sparsity = sparsity

    def select(self, index):
        return L1Geometry(self.c[index], self.eps[index], self.lower[index], self.upper[index], self.sparsity)

    def random_start(self, restarts, generators):
        # Laplace-distributed directions, normalised, at a radius eps * U^(1/n)
        n = self.c.shape[1]
        u = self._uniform(restarts, generators)
        lap = -torch.sign(u - 0.5) * torch.log1p(-2 * (u - 0.5).abs().clamp_max(0.5 - 1e-7))
        d = lap / lap.abs().sum(dim=-1, keepdim=True).clamp_min(torch.finfo(u.dtype).tiny)
        r = self._uniform(restarts, generators)[..., :1] ** (1.0 / n)
        return self.project(self.c[:, None] + d * r * self.eps[:, None, None])

    def descent(self, x, grad, t):
        # only coordinates that can still move against the gradient inside the box count
        stuck = ((grad > 0) & (x <= self.lower[:, None])) | ((grad < 0) & (x >= self.upper[:, None]))
        n = grad.shape[-1]
        k = max(1, int(math.ceil(self.sparsity * n)))
        mag = torch.where(stuck, torch.zeros_like(grad), grad.abs())
        top = mag.topk(k, dim=-1)
        step = torch.zeros_like(grad).scatter(-1, top.indices, -torch.sign(grad.gather(-1, top.indices)))
        return (t * self.eps[:, None])[..., None] * step / k

    def project(self, x):
        d = x - self.c[:, None]
        return self._settle(self.clamp(self.c[:, None] + _project_l1(d, _shrunk(self.eps))))


def _project_l1(d: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of the rows of ``d`` ``(batch, restarts, n)`` onto the L1 balls of
    radius ``eps`` ``(batch,)``: ``sign(d) max(|d| - theta, 0)`` with the threshold ``theta`` of the
    sort-based simplex projection (Duchi et al. 2008); rows already inside are unchanged."""
    a = d.abs()
    e = eps[:, None, None].expand(*d.shape[:-1], 1)
    inside = a.sum(dim=-1, keepdim=True) <= e
    s, _ = a.sort(dim=-1, descending=True)
    cs = s.cumsum(dim=-1)
    j = torch.arange(1, d.shape[-1] + 1, device=d.device, dtype=d.dtype)
    ok = s * j > cs - e
    rho = ok.to(torch.int64).cumsum(dim=-1).argmax(dim=-1, keepdim=True)  # last index where ok holds
    theta = ((cs.gather(-1, rho) - e) / (rho + 1).to(d.dtype)).clamp_min(0)
    out = torch.sign(d) * (a - theta).clamp_min(0)
    return torch.where(inside, d, out)
