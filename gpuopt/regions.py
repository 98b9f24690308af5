"""Input regions over flattened samples.

A :class:`Box` is ``{x : lower <= x <= upper}`` (per feature, on the flattened sample). An
:class:`LinfBall` is ``{x : ||x - center||_inf <= eps}`` intersected with the optional clip box
``[clip_lower, clip_upper]``; it is exactly a Box, so :meth:`LinfBall.to_box` is lossless.
Regions live on the CPU in float64; the attack's geometry (:mod:`gpuopt.attack.geometry`)
works on device tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError

__all__ = ["Box", "LinfBall"]


def _vector(a, name: str) -> np.ndarray:
    arr = np.array(a, dtype=np.float64, copy=True).reshape(-1)
    if np.any(np.isnan(arr)):
        raise InvalidInputError(f"`{name}` contains NaN")
    return arr


@dataclass(frozen=True, eq=False)
class Box:
    """``{x : lower <= x <= upper}`` with finite float64 bounds of equal length."""

    lower: np.ndarray
    upper: np.ndarray

    def __post_init__(self):
        lo = _vector(self.lower, "lower")
        hi = _vector(self.upper, "upper")
        if lo.shape != hi.shape:
            raise InvalidInputError(f"`lower` and `upper` must have the same size, got {lo.size} and {hi.size}")
        if lo.size == 0:
            raise InvalidInputError("a Box must have at least one dimension")
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            raise InvalidInputError("Box bounds must be finite")
        bad = np.flatnonzero(lo > hi)
        if bad.size:
            i = int(bad[0])
            raise InvalidInputError(f"the box is empty: lower[{i}] = {lo[i]!r} > upper[{i}] = {hi[i]!r}")
        lo.setflags(write=False)
        hi.setflags(write=False)
        object.__setattr__(self, "lower", lo)
        object.__setattr__(self, "upper", hi)

    @property
    def size(self) -> int:
        return self.lower.size

    @property
    def center(self) -> np.ndarray:
        return 0.5 * (self.lower + self.upper)

    def to_box(self) -> "Box":
        return self

    def contains(self, x, *, tol: float = 0.0) -> np.ndarray:
        """Mask of rows of ``x`` (``(batch, n)``, float64) that lie in the box up to ``tol``."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, self.size)
        return np.all((x >= self.lower - tol) & (x <= self.upper + tol), axis=1)


@dataclass(frozen=True, eq=False)
class LinfBall:
    """``{x : ||x - center||_inf <= eps}`` intersected with ``[clip_lower, clip_upper]`` if given."""

    center: np.ndarray
    eps: float
    clip_lower: float | np.ndarray | None = None
    clip_upper: float | np.ndarray | None = None

    def __post_init__(self):
        c = _vector(self.center, "center")
        if not np.all(np.isfinite(c)):
            raise InvalidInputError("`center` must be finite")
        eps = float(self.eps)
        if not np.isfinite(eps) or eps < 0:
            raise InvalidInputError(f"`eps` must be a finite number >= 0, got {self.eps!r}")
        object.__setattr__(self, "center", c)
        object.__setattr__(self, "eps", eps)
        self.to_box()  # validates the clip box against the ball

    def to_box(self) -> Box:
        lo = self.center - self.eps
        hi = self.center + self.eps
        if self.clip_lower is not None:
            lo = np.maximum(lo, np.broadcast_to(np.asarray(self.clip_lower, dtype=np.float64).reshape(-1), lo.shape))
        if self.clip_upper is not None:
            hi = np.minimum(hi, np.broadcast_to(np.asarray(self.clip_upper, dtype=np.float64).reshape(-1), hi.shape))
        if np.any(lo > hi):
            raise InvalidInputError("`clip_lower`/`clip_upper` leave the ball empty (the center lies outside the clip box by more than eps)")
        return Box(lo, hi)
