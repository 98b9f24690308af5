"""Perturbation geometry, kept apart from the attack loop.

:class:`BoxGeometry` is the set ``{x : l <= x <= u}`` with per-feature bounds (an L-inf ball
clipped to a valid range is such a box). It supplies random starts, the steepest-descent step
for the L-inf geometry (``-alpha * (u - l) * sign(g)``, scaled per feature by the box width), the
Euclidean projection (a clamp) and a membership test. Other geometries (L1, L2) will provide the
same four methods.
"""

from __future__ import annotations

import torch

__all__ = ["BoxGeometry"]


class BoxGeometry:
    """Per-item boxes ``lower``/``upper`` of shape ``(batch, n)`` on one device and dtype."""

    def __init__(self, lower: torch.Tensor, upper: torch.Tensor):
        self.lower = lower
        self.upper = upper
        self.width = upper - lower

    def random_start(self, restarts: int, generator: torch.Generator) -> torch.Tensor:
        """``(batch, restarts, n)``: restart 0 is the box centre, the rest uniform in the box."""
        b, n = self.lower.shape
        u = torch.rand((b, restarts, n), generator=generator, dtype=self.lower.dtype,
                       device=generator.device).to(self.lower.device)
        x = self.lower[:, None] + self.width[:, None] * u
        x[:, 0] = self.lower + 0.5 * self.width
        return x

    def descent_step(self, x: torch.Tensor, grad: torch.Tensor, alpha: float) -> torch.Tensor:
        return x - alpha * self.width[:, None] * torch.sign(grad)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.maximum(x, self.lower[:, None]), self.upper[:, None])

    def contains(self, x: torch.Tensor) -> torch.Tensor:
        return ((x >= self.lower[:, None]) & (x <= self.upper[:, None])).all(dim=-1)
