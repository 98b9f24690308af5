"""Input regions over flattened samples.

A :class:`Box` is ``{x : lower <= x <= upper}`` (per feature, on the flattened sample). An
:class:`LinfBall` is ``{x : ||x - center||_inf <= eps}`` intersected with the optional clip box
``[clip_lower, clip_upper]``; it is exactly a Box, so :meth:`LinfBall.to_box` is lossless.
Regions live on the CPU in float64; the attack's geometry (:mod:`gpuopt.attacks.geometry`)
works on device tensors.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError

__all__ = ["Box", "LinfBall", "L1Ball"]


def _describe(a) -> str:
    if a is None:
        return "None"
    text = repr(a)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(a).__name__} {text}"


_NOTHING = object()


def _real_array(a, name: str, what: str = "an array of real numbers") -> np.ndarray:
    """``a`` as a new float64 array of the same shape; refuses what is not an array of real
    numbers (None, strings, ragged sequences, complex values, arbitrary objects) and NaN."""
    if a is None or isinstance(a, (str, bytes)):
        raise InvalidInputError(f"`{name}` must be {what}, got {_describe(a)}")
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # a torch tensor, on any device
        if a.is_complex():
            raise InvalidInputError(f"`{name}` must be real, got a complex tensor")
        a = a.detach().cpu().double().numpy()
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError):
        raise InvalidInputError(
            f"`{name}` must be an array of real numbers with a regular shape, got a ragged sequence"
        ) from None
    kind = arr.dtype.kind
    if kind == "c":
        raise InvalidInputError(f"`{name}` must be real, got complex values")
    if kind == "O":
        bad = next((v for v in arr.flat if not isinstance(v, numbers.Real)), _NOTHING)
        if bad is not _NOTHING:
            if isinstance(bad, (list, tuple, np.ndarray)):
                raise InvalidInputError(
                    f"`{name}` must be an array of real numbers with a regular shape, got a ragged sequence"
                )
            if isinstance(bad, numbers.Complex):
                raise InvalidInputError(f"`{name}` must be real, got complex values")
            raise InvalidInputError(f"`{name}` must be {what}, got an element of type {type(bad).__name__}")
    elif kind not in "biuf":
        raise InvalidInputError(f"`{name}` must be {what}, got dtype {arr.dtype}")
    try:
        arr = np.array(arr, dtype=np.float64, copy=True)
    except (ValueError, TypeError, OverflowError) as err:
        raise InvalidInputError(f"`{name}` must be {what}: {err}") from None
    if np.any(np.isnan(arr)):
        raise InvalidInputError(f"`{name}` contains NaN")
    return arr


def _vector(a, name: str) -> np.ndarray:
    return _real_array(a, name).reshape(-1)


def _real_scalar(a, name: str) -> float:
    """``a`` as a Python float; refuses strings, None, bools, complex values and arrays of size > 1."""
    if isinstance(a, (bool, np.bool_)):
        raise InvalidInputError(f"`{name}` must be a real number, got {_describe(a)}")
    arr = _real_array(a, name, "a real number")
    if arr.size != 1:
        raise InvalidInputError(f"`{name}` must be a single real number, got an array of shape {arr.shape}")
    return float(arr.reshape(()))


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
            raise InvalidInputError(
                f"the box is empty: lower[{i}] = {float(lo[i])!r} > upper[{i}] = {float(hi[i])!r}"
            )
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


def clip_pair(clip, shape: tuple, n: int):
    """A valid input range ``clip`` (None, or ``(low, high)``: numbers or arrays broadcastable to
    ``shape`` or of ``n`` entries, None for an open end) as ``(low, high)``, each None, a float or a
    flat float64 array of ``n`` entries; ``InvalidInputError`` naming ``clip`` otherwise."""
    if clip is None:
        return None, None

    def refuse(what: str):
        return InvalidInputError("`clip` must be None or a pair (low, high) of numbers or arrays broadcastable to "
                                 f"`x`, low <= high, no NaN: {what}")

    if isinstance(clip, (str, bytes)) or not isinstance(clip, (tuple, list)):
        raise refuse(f"got {type(clip).__name__}")
    if len(clip) != 2:
        raise refuse(f"got a {type(clip).__name__} of {len(clip)} entr{'y' if len(clip) == 1 else 'ies'}")
    out = []
    for v, side in zip(clip, ("low", "high")):
        if v is None:  # unbounded on this side
            out.append(None)
            continue
        try:
            a = np.asarray(v)
            ok = not isinstance(v, (bool, np.bool_)) and a.dtype.kind in "iuf"
        except Exception:  # noqa: BLE001 - a ragged list and the like
            ok = False
        if not ok:
            raise refuse(f"its {side} is a {type(v).__name__}, not real numbers")
        a = a.astype(np.float64)
        nan = np.flatnonzero(np.isnan(a))
        if nan.size:
            raise refuse(f"its {side} holds NaN" + (f" at index {int(nan[0])}" if a.ndim else ""))
        if a.ndim == 0:
            out.append(float(a))
            continue
        try:
            a = np.broadcast_to(a, shape).reshape(-1)
        except ValueError:
            if a.size != n:
                raise refuse(f"its {side} of shape {a.shape} does not broadcast to `x`'s shape {shape}") from None
            a = a.reshape(-1)
        out.append(np.array(a))
    lo, hi = out
    if lo is not None and hi is not None:
        bad = np.flatnonzero(np.broadcast_to(np.asarray(lo) > np.asarray(hi), (n,)))
        if bad.size:
            raise refuse(f"low > high at index {int(bad[0])}")
    return lo, hi


@dataclass(frozen=True, eq=False)
class LinfBall:
    """``{x : ||x - center||_inf <= eps}`` intersected with ``[clip_lower, clip_upper]`` if given."""

    center: np.ndarray
    eps: float
    clip_lower: float | np.ndarray | None = None
    clip_upper: float | np.ndarray | None = None

    def __post_init__(self):
        c = _vector(self.center, "center")
        if c.size == 0:
            raise InvalidInputError("`center` must have at least one entry")
        if not np.all(np.isfinite(c)):
            raise InvalidInputError("`center` must be finite")
        eps = _real_scalar(self.eps, "eps")
        if not np.isfinite(eps) or eps < 0:
            raise InvalidInputError(f"`eps` must be a finite number >= 0, got {self.eps!r}")
        object.__setattr__(self, "center", c)
        object.__setattr__(self, "eps", eps)
        for name in ("clip_lower", "clip_upper"):
            value = getattr(self, name)
            if value is None:
                continue
            clip = _vector(value, name)
            if clip.size == 1:
                clip = float(clip[0])
            elif clip.size != c.size:
                raise InvalidInputError(
                    f"`{name}` must be a scalar or have the center's size {c.size}, got size {clip.size}"
                )
            else:
                clip.setflags(write=False)
            object.__setattr__(self, name, clip)
        if self.clip_lower is not None and self.clip_upper is not None:
            bad = np.flatnonzero(np.broadcast_to(np.asarray(self.clip_lower) > np.asarray(self.clip_upper), c.shape))
            if bad.size:
                raise InvalidInputError(f"`clip_lower` exceeds `clip_upper` (at index {int(bad[0])}): the clip box is empty")
        self.to_box()  # validates the clip box against the ball

    def to_box(self) -> Box:
        """The ball's box, rounded outwards: it contains every point of the exact ball (``center
        - eps`` and ``center + eps`` round in float64), so proofs over it hold for the ball."""
        return self._box(outer=True)

    def inner_box(self) -> Box | None:
        """The float64 points of the exact ball (bounds rounded inwards): where a counterexample
        may lie. ``None`` when no float64 point is in it."""
        try:
            return self._box(outer=False)
        except InvalidInputError:
            return None

    def _box(self, *, outer: bool) -> Box:
        lo = _rounded_sum(self.center, -self.eps, down=outer)
        hi = _rounded_sum(self.center, self.eps, down=not outer)
        if self.clip_lower is not None:
            lo = np.maximum(lo, self.clip_lower)
        if self.clip_upper is not None:
            hi = np.minimum(hi, self.clip_upper)
        if np.any(lo > hi):
            raise InvalidInputError("`clip_lower`/`clip_upper` leave the ball empty (the center lies outside the clip box by more than eps)")
        return Box(lo, hi)


@dataclass(frozen=True, eq=False)
class L1Ball:
    """``{x : ||x - center||_1 <= eps}`` intersected with ``[clip_lower, clip_upper]`` if given
    (scalars or one value per input)."""

    center: np.ndarray
    eps: float
    clip_lower: float | np.ndarray | None = None
    clip_upper: float | np.ndarray | None = None

    def __post_init__(self):
        # the same checks as LinfBall's: a finite centre, eps >= 0, clip bounds of the right size
        probe = LinfBall(self.center, self.eps, self.clip_lower, self.clip_upper)
        for name in ("center", "eps", "clip_lower", "clip_upper"):
            object.__setattr__(self, name, getattr(probe, name))
        if self.clip_lower is not None and np.any(self.center < self.clip_lower) or \
                self.clip_upper is not None and np.any(self.center > self.clip_upper):
            raise InvalidInputError("the L1 ball's `center` must lie inside the clip box")

    @property
    def size(self) -> int:
        return self.center.size

    def to_box(self) -> Box:
        """The box hull of the ball (each coordinate within ``eps`` of the centre), clipped and
        rounded outwards."""
        return LinfBall(self.center, self.eps, self.clip_lower, self.clip_upper).to_box()

    def contains(self, x, *, tol: float = 0.0) -> np.ndarray:
        """Mask of rows of ``x`` (``(batch, n)``) inside the clipped ball up to ``tol``."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, self.size)
        ok = np.abs(x - self.center).sum(axis=1) <= self.eps + tol
        if self.clip_lower is not None:
            ok &= np.all(x >= np.asarray(self.clip_lower) - tol, axis=1)
        if self.clip_upper is not None:
            ok &= np.all(x <= np.asarray(self.clip_upper) + tol, axis=1)
        return ok


def _rounded_sum(a: np.ndarray, b: float, *, down: bool) -> np.ndarray:
    """``a + b`` rounded down (or up) to a float64, exactly: Knuth's TwoSum gives the rounding
    error ``e`` with ``a + b = s + e``, and ``s`` steps one ulp when it lies on the wrong side."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    if down:
        return np.where(e < 0, np.nextafter(s, -np.inf), s)
    return np.where(e > 0, np.nextafter(s, np.inf), s)
