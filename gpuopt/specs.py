"""Output specifications.

gpuopt states a property by its *unsafe region* in output space, as VNN-COMP does: a union of
polyhedra ``U = OR_k { y : A_k y <= b_k }``. The property holds on an input region ``X`` iff no
``x in X`` has ``f(x) in U``. Its signed **margin** at an output ``y`` is

    margin(y) = min_k max_i ( A_k y - b_k )_i ,

so ``margin(y) <= 0`` iff ``y in U`` (a counterexample), and the property holds iff
``min_{x in X} margin(f(x)) > 0``. Attacks minimise the margin, bounds lower-bound it, and the
MILP computes it exactly.

For batching, :meth:`OutputSpec.padded` gives ``A`` as ``(K, M, n_out)`` and ``b`` as ``(K, M)``
with absent rows padded by ``A = 0, b = +inf`` (their term ``-inf`` never wins the max).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .errors import InvalidInputError

__all__ = ["OutputSpec", "robustness", "targeted"]


@dataclass(frozen=True, eq=False)
class OutputSpec:
    """The unsafe region ``OR_k {y : A_k y <= b_k}``; ``disjuncts`` is a tuple of ``(A_k, b_k)``."""

    disjuncts: tuple
    n_outputs: int

    def __init__(self, disjuncts: Sequence[tuple], n_outputs: int):
        n_outputs = int(n_outputs)
        if n_outputs < 1:
            raise InvalidInputError(f"`n_outputs` must be >= 1, got {n_outputs}")
        canon = []
        for k, pair in enumerate(disjuncts):
            if len(pair) != 2:
                raise InvalidInputError(f"disjunct {k} must be a pair (A, b)")
            A = np.array(pair[0], dtype=np.float64, copy=True)
            b = np.array(pair[1], dtype=np.float64, copy=True).reshape(-1)
            if A.ndim == 1:
                A = A.reshape(1, -1)
            if A.ndim != 2 or A.shape[1] != n_outputs:
                raise InvalidInputError(
                    f"disjunct {k}: `A` must have shape (m, {n_outputs}), got {A.shape}")
            if A.shape[0] != b.shape[0] or A.shape[0] == 0:
                raise InvalidInputError(
                    f"disjunct {k}: `A` has {A.shape[0]} rows but `b` has {b.shape[0]} entries (need >= 1)")
            if not (np.all(np.isfinite(A)) and np.all(np.isfinite(b))):
                raise InvalidInputError(f"disjunct {k}: coefficients must be finite")
            A.setflags(write=False)
            b.setflags(write=False)
            canon.append((A, b))
        if not canon:
            raise InvalidInputError("an OutputSpec needs at least one disjunct")
        object.__setattr__(self, "disjuncts", tuple(canon))
        object.__setattr__(self, "n_outputs", n_outputs)

    @property
    def n_disjuncts(self) -> int:
        return len(self.disjuncts)

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
        """Exact-as-float64 margin of outputs ``y`` (``(batch, n_out)``), computed per disjunct."""
        y = np.asarray(y, dtype=np.float64).reshape(-1, self.n_outputs)
        per = [np.max(y @ A.T - b, axis=1) for A, b in self.disjuncts]
        return np.min(np.stack(per, axis=1), axis=1)


def robustness(label: int, n_classes: int) -> OutputSpec:
    """Unsafe iff some other class scores at least as high: ``OR_{j != label} y_label - y_j <= 0``."""
    label, n_classes = int(label), int(n_classes)
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
    label, target, n_classes = int(label), int(target), int(n_classes)
    for name, v in (("label", label), ("target", target)):
        if not 0 <= v < n_classes:
            raise InvalidInputError(f"`{name}` must be in [0, {n_classes}), got {v}")
    if label == target:
        raise InvalidInputError("`target` must differ from `label`")
    a = np.zeros(n_classes)
    a[label], a[target] = 1.0, -1.0
    return OutputSpec([(a[None], np.zeros(1))], n_classes)
