"""Output specifications.

gpuopt states a property by its *unsafe region* in output space, as VNN-COMP does: a union of
polyhedra ``U = OR_k { y : A_k y <= b_k }``. The property holds on an input region ``X`` iff no
``x in X`` has ``f(x) in U``. Its signed **margin** at an output ``y`` is

    margin(y) = min_k max_i ( A_k y - b_k )_i ,

so ``margin(y) <= 0`` iff ``y in U`` (a counterexample), and the property holds iff
``min_{x in X} margin(f(x)) > 0``. Attacks minimise the margin, bounds lower-bound it, and the
MILP computes it exactly.

**Exactness at the boundary.** Coefficients are kept exactly (as :class:`~fractions.Fraction`
when they are not float64 numbers, e.g. a VNNLIB ``0.1``), and a row may be *strict*
(``(A y)_i < b_i``). The float rows used for search and proofs round ``b`` up and record how far
each ``A`` entry was rounded, so that a float proof of ``A y - b > 0`` over the closure of ``U``
is a proof for the exact, possibly strict, region; a counterexample is decided exactly
(:meth:`OutputSpec.exact_unsafe`), strict rows strictly.

For batching, :meth:`OutputSpec.padded` gives ``A`` as ``(K, M, n_out)`` and ``b`` as ``(K, M)``
with absent rows padded by ``A = 0, b = +inf`` (their term ``-inf`` never wins the max).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import numpy as np
import torch

from .errors import InvalidInputError

__all__ = ["OutputSpec", "float_down", "float_up", "robustness", "targeted"]


def _compare_float(q: Fraction) -> tuple[float, int]:
    """The nearest float64 ``f`` to ``q`` and the sign of ``f - q``, in integer arithmetic."""
    f = float(q)
    n, d = f.as_integer_ratio()
    diff = n * q.denominator - q.numerator * d
    return f, (diff > 0) - (diff < 0)


def float_down(q: Fraction, strict: bool = False) -> float:
    """The largest float64 ``<= q`` (``< q`` when ``strict``)."""
    f, sign = _compare_float(q)
    return math.nextafter(f, -math.inf) if sign > 0 or (strict and sign == 0) else f


def float_up(q: Fraction, strict: bool = False) -> float:
    """The smallest float64 ``>= q`` (``> q`` when ``strict``)."""
    f, sign = _compare_float(q)
    return math.nextafter(f, math.inf) if sign < 0 or (strict and sign == 0) else f


def _exact_entries(values, name: str, k: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``values`` as a float64 array and, when some entry is not a float64 already (a
    :class:`~fractions.Fraction`, or an ``int`` beyond 2**53), the exact entries as an object
    array of Fractions."""
    try:
        arr = np.array(values, dtype=object if _has_fraction(values) else np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"disjunct {k}: `{name}` must be a rectangular array of real numbers ({exc})") from None
    if arr.dtype != object:
        return arr, None
    try:
        exact = np.vectorize(Fraction, otypes=[object])(arr) if arr.size else arr
        approx = np.vectorize(float, otypes=[np.float64])(exact) if arr.size else np.zeros(arr.shape)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInputError(f"disjunct {k}: `{name}` must hold real numbers ({exc})") from None
    return approx, exact


_ZEROS: dict[tuple, np.ndarray] = {}


def _read_only_zeros(shape: tuple) -> np.ndarray:
    """A shared read-only float64 array of zeros of ``shape`` (the coefficient error of exact rows)."""
    z = _ZEROS.get(shape)
    if z is None:
        z = np.zeros(shape)
        z.setflags(write=False)
        if len(_ZEROS) < 4096:
            _ZEROS[shape] = z
    return z


def _has_fraction(values) -> bool:
    if isinstance(values, Fraction):
        return True
    if isinstance(values, int) and not isinstance(values, bool):
        return abs(values) > 2 ** 53  # not every such integer is a float64
    if isinstance(values, np.ndarray):
        return values.dtype == object and any(isinstance(v, Fraction) for v in values.flat)
    if isinstance(values, (list, tuple)):
        return any(_has_fraction(v) for v in values)
    return False


@dataclass(frozen=True, eq=False)
class OutputSpec:
    """The unsafe region ``OR_k {y : A_k y <= b_k}`` (some rows possibly strict, ``<``).

    ``disjuncts`` is a tuple of float64 pairs ``(A_k, b_k)`` for the float stages: ``A_k`` is the
    nearest float64 of the exact coefficients and ``b_k`` the exact right-hand side **rounded up**,
    so that ``A_k y - b_k > 0`` with exact coefficients proves ``y`` safe (see :meth:`proof_rhs`
    for inexact coefficients). The exact rows, with their strictness, decide counterexamples
    (:meth:`exact_unsafe`).

    Each given disjunct is ``(A, b)`` or ``(A, b, strict)``: ``A`` of shape ``(m, n_outputs)``,
    ``b`` of ``m`` entries (floats, ints or :class:`~fractions.Fraction`, read exactly), ``strict``
    ``m`` booleans (row ``i`` is ``(A y)_i < b_i``; default all ``False``).
    """

    disjuncts: tuple
    n_outputs: int

    def __init__(self, disjuncts: Sequence[tuple], n_outputs: int):
        try:
            n_outputs = operator.index(n_outputs)
        except TypeError:
            raise InvalidInputError(f"`n_outputs` must be an integer, got {n_outputs!r}") from None
        if n_outputs < 1:
            raise InvalidInputError(f"`n_outputs` must be >= 1, got {n_outputs}")
        try:
            items = list(disjuncts)
        except TypeError:
            raise InvalidInputError("`disjuncts` must be a sequence of (A, b) or (A, b, strict) tuples") from None
        canon, exact, strict_all, coef_err = [], [], [], []
        any_exact = False
        for k, pair in enumerate(items):
            if not isinstance(pair, (tuple, list)) or len(pair) not in (2, 3):
                raise InvalidInputError(f"disjunct {k} must be a pair (A, b) or a triple (A, b, strict)")
            A, A_ex = _exact_entries(pair[0], "A", k)
            b, b_ex = _exact_entries(pair[1], "b", k)
            if A.ndim == 1:
                A = A.reshape(1, -1)
                A_ex = None if A_ex is None else A_ex.reshape(1, -1)
            b = b.reshape(-1)
            b_ex = None if b_ex is None else b_ex.reshape(-1)
            if A.ndim != 2 or A.shape[1] != n_outputs:
                raise InvalidInputError(
                    f"disjunct {k}: `A` must have shape (m, {n_outputs}), got {A.shape}")
            if A.shape[0] != b.shape[0] or A.shape[0] == 0:
                raise InvalidInputError(
                    f"disjunct {k}: `A` has {A.shape[0]} rows but `b` has {b.shape[0]} entries (need >= 1)")
            if not (np.all(np.isfinite(A)) and np.all(np.isfinite(b))):
                raise InvalidInputError(f"disjunct {k}: coefficients must be finite")
            if len(pair) == 3:
                strict = np.array(pair[2], dtype=object).reshape(-1)
                if strict.shape != b.shape or not all(isinstance(s, (bool, np.bool_)) for s in strict):
                    raise InvalidInputError(f"disjunct {k}: `strict` must be {b.shape[0]} booleans")
                strict = strict.astype(bool)
            else:
                strict = np.zeros(b.shape, dtype=bool)
            err = np.zeros(A.shape)
            if A_ex is not None:
                any_exact = True
                nz = np.flatnonzero(A_ex != 0)
                err.flat[nz] = [float_up(abs(A_ex.flat[j] - Fraction(A.flat[j]))) for j in nz]
            if b_ex is not None:
                any_exact = True
                b = np.array([float_up(q) for q in b_ex], dtype=np.float64)
                if not np.all(np.isfinite(b)):
                    raise InvalidInputError(f"disjunct {k}: `b` overflows float64")
            for arr in (A, b, strict, err):
                arr.setflags(write=False)
            canon.append((A, b))
            exact.append((A_ex, b_ex))
            strict_all.append(strict)
            coef_err.append(err)
        if not canon:
            raise InvalidInputError("an OutputSpec needs at least one disjunct")
        object.__setattr__(self, "disjuncts", tuple(canon))
        object.__setattr__(self, "n_outputs", n_outputs)
        object.__setattr__(self, "strict", tuple(strict_all))
        object.__setattr__(self, "_exact", tuple(exact) if any_exact else None)
        object.__setattr__(self, "_coef_err", tuple(coef_err))

    @classmethod
    def _from_exact(cls, disjuncts: Sequence[tuple], n_outputs: int) -> "OutputSpec":
        """The spec that ``OutputSpec(disjuncts, n_outputs)`` builds, without its checks and
        copies: a fast path for readers that build many specs (the VNNLIB reader).

        The caller guarantees valid input: ``n_outputs >= 1`` and at least one disjunct, each a
        triple ``(A, b, strict)`` of numpy arrays, ``A`` of shape ``(m, n_outputs)`` with
        ``m >= 1`` and ``b``, ``strict`` of ``m`` entries; ``A`` and ``b`` are float64 (exact
        values) or object arrays of finite :class:`~fractions.Fraction` (``b`` within the float64
        range); ``strict`` is bool. The arrays are kept (made read-only), so callers may share
        them between specs; the rounding rules are those of ``__init__``.
        """
        canon, exact, strict_all, coef_err = [], [], [], []
        any_exact = False
        for A, b, strict in disjuncts:
            A_ex = b_ex = None
            if A.dtype.kind == "O":
                A_ex = A
                A = np.array([float(q) for q in A_ex.flat], dtype=np.float64).reshape(A_ex.shape)
                err = np.zeros(A.shape)
                nz = np.flatnonzero(A_ex != 0)
                err.flat[nz] = [float_up(abs(A_ex.flat[j] - Fraction(A.flat[j]))) for j in nz]
                A_ex.setflags(write=False)
                err.setflags(write=False)
                any_exact = True
            else:
                err = _read_only_zeros(A.shape)
            A.setflags(write=False)
            if b.dtype.kind == "O":
                b_ex = b
                b = np.array([float_up(q) for q in b_ex.tolist()], dtype=np.float64)
                b_ex.setflags(write=False)
                any_exact = True
            b.setflags(write=False)
            strict.setflags(write=False)
            canon.append((A, b))
            exact.append((A_ex, b_ex))
            strict_all.append(strict)
            coef_err.append(err)
        spec = object.__new__(cls)
        object.__setattr__(spec, "disjuncts", tuple(canon))
        object.__setattr__(spec, "n_outputs", n_outputs)
        object.__setattr__(spec, "strict", tuple(strict_all))
        object.__setattr__(spec, "_exact", tuple(exact) if any_exact else None)
        object.__setattr__(spec, "_coef_err", tuple(coef_err))
        return spec

    @property
    def n_disjuncts(self) -> int:
        return len(self.disjuncts)

    @property
    def coefficients_exact(self) -> bool:
        """Whether every ``A_k`` holds its exact coefficients (no rounding to float64)."""
        return not any(e.any() for e in self._coef_err)

    def exact_rows(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Disjunct ``k`` exactly: ``(A, b)`` as object arrays of Fractions, and ``strict``."""
        A, b = self.disjuncts[k]
        A_ex, b_ex = self._exact[k] if self._exact is not None else (None, None)
        to_q = np.vectorize(Fraction, otypes=[object])
        return (to_q(A) if A_ex is None else A_ex), (to_q(b) if b_ex is None else b_ex), self.strict[k]

    def proof_rhs(self, y_abs_max) -> list[np.ndarray]:
        """Right-hand sides ``b'_k >= b_k`` such that ``A_k y - b'_k > 0`` (float ``A_k``) proves
        ``y`` safe for the exact row, for every ``|y| <= y_abs_max``: ``b'_k = b_k +
        |A_k^exact - A_k| |y|_max`` rounded up (``b_k`` itself when the coefficients are exact)."""
        y_abs_max = np.asarray(y_abs_max, dtype=np.float64).reshape(-1)
        out = []
        for (A, b), err in zip(self.disjuncts, self._coef_err):
            if err.any():
                slack = (err @ y_abs_max) * (1 + 4 * self.n_outputs * np.finfo(float).eps)
                out.append(np.nextafter(b + slack, np.inf))
            else:
                out.append(b)
        return out

    def padded(self, *, dtype=torch.float64, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, b)`` padded to ``(K, M, n_out)`` and ``(K, M)``; see the module docstring."""
        K = len(self.disjuncts)
        M = max(A.shape[0] for A, _ in self.disjuncts)
        A = np.zeros((K, M, self.n_outputs))
        b = np.full((K, M), np.inf)
        for k, (Ak, bk) in enumerate(self.disjuncts):
            A[k, : Ak.shape[0]] = Ak
            b[k, : Ak.shape[0]] = bk
        return torch.as_tensor(A, dtype=dtype, device=device), torch.as_tensor(b, dtype=dtype, device=device)

    def margin(self, y: torch.Tensor, padded: tuple | None = None) -> torch.Tensor:
        """``min_k max_i (A_k y - b_k)_i`` for ``y`` of shape ``(..., n_out)``; ``<= 0`` means unsafe."""
        A, b = padded if padded is not None else self.padded(dtype=y.dtype, device=y.device)
        rows = torch.einsum("kmo,...o->...km", A, y) - b
        return rows.amax(dim=-1).amin(dim=-1)

    def margin64(self, y) -> np.ndarray:
        """The float64 margin of outputs ``y`` (``(batch, n_out)``), computed per disjunct. It is
        an approximation: counterexamples are decided by :func:`gpuopt.check.check_counterexample`."""
        y = np.asarray(y, dtype=np.float64).reshape(-1, self.n_outputs)
        per = [np.max(y @ A.T - b, axis=1) for A, b in self.disjuncts]
        return np.min(np.stack(per, axis=1), axis=1)

    def exact_unsafe(self, y) -> tuple[bool, Fraction]:
        """Exact decision for one output ``y`` (Fractions or floats, read exactly): whether ``y``
        lies in the unsafe region (strict rows strictly), and the exact margin
        ``min_k max_i (A_k y - b_k)_i``."""
        y = np.asarray(y, dtype=object).reshape(-1)
        if y.size != self.n_outputs:
            raise InvalidInputError(f"`y` must have {self.n_outputs} entries, got {y.size}")
        unsafe, best = False, None
        for k in range(self.n_disjuncts):
            A_f, b_f = self.disjuncts[k]
            A_ex, b_ex = self._exact[k] if self._exact is not None else (None, None)
            A = A_f if A_ex is None else A_ex
            b = b_f if b_ex is None else b_ex
            strict = self.strict[k]
            rows = []
            for i in range(len(b)):
                nz = np.flatnonzero(A[i] != 0)
                rows.append(sum((Fraction(A[i, j]) * Fraction(y[j]) for j in nz), Fraction(0)) - Fraction(b[i]))
            m = max(rows)
            best = m if best is None else min(best, m)
            if all(r < 0 if s else r <= 0 for r, s in zip(rows, strict)):
                unsafe = True
        return unsafe, best


def _index(value, name: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise InvalidInputError(f"`{name}` must be an integer, got {value!r}") from None


def robustness(label: int, n_classes: int) -> OutputSpec:
    """Unsafe iff some other class scores at least as high: ``OR_{j != label} y_label - y_j <= 0``."""
    label, n_classes = _index(label, "label"), _index(n_classes, "n_classes")
    if n_classes < 2:
        raise InvalidInputError(f"`n_classes` must be >= 2, got {n_classes}")
    if not 0 <= label < n_classes:
        raise InvalidInputError(f"`label` must be in [0, {n_classes}), got {label}")
    disj = []
    for j in range(n_classes):
        if j != label:
            a = np.zeros(n_classes)
            a[label], a[j] = 1.0, -1.0
            disj.append((a[None], np.zeros(1)))
    return OutputSpec(disj, n_classes)


def targeted(label: int, target: int, n_classes: int) -> OutputSpec:
    """Unsafe iff ``y_target >= y_label``."""
    label, target, n_classes = _index(label, "label"), _index(target, "target"), _index(n_classes, "n_classes")
    for name, v in (("label", label), ("target", target)):
        if not 0 <= v < n_classes:
            raise InvalidInputError(f"`{name}` must be in [0, {n_classes}), got {v}")
    if label == target:
        raise InvalidInputError("`target` must differ from `label`")
    a = np.zeros(n_classes)
    a[label], a[target] = 1.0, -1.0
    return OutputSpec([(a[None], np.zeros(1))], n_classes)
