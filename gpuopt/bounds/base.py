"""The Bounds result shared by every bound method, and sound spec bounds from output bounds.

Soundness under floating point: a float computation of ``s = sum_j w_j v_j + c`` over ``n``
terms is within ``gamma_n * (sum_j |w_j||v_j| + |c|)`` of the exact value, with
``gamma_n = n u / (1 - n u)`` and ``u`` the unit roundoff (Higham, *Accuracy and Stability of
Numerical Algorithms*, 3.1). :func:`rounding_pad` returns that term with ``n + 4`` terms and
``2u`` (covering the final additions and the computation of the pad itself); every bound that can
prove a property is widened by it.

That model holds for normal numbers only. A product below the normal range (2.2e-308 in float64)
loses up to half the smallest subnormal ``eta`` absolutely (Higham, 2.1: ``fl(x y) = x y (1 +
delta) + eta``), and halving a subnormal interval can lose its last bit. So every pad also adds
``2 eta`` per product that is not exactly zero (a zero factor gives an exact zero: bounds that
are exactly 0, such as a ReLU's, stay exact), and :func:`center_radius` returns a radius that
covers the interval whatever the rounding of its centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Bounds", "center_radius", "rounding_pad", "strict_adjust", "disjunct_lower_bounds", "margin_lower_bound"]


def rounding_pad(abs_sum: torch.Tensor, n_terms: int, nonzero_terms: torch.Tensor | None = None) -> torch.Tensor:
    """Upper bound on the rounding error of an ``n_terms`` dot product whose |terms| sum to
    ``abs_sum``, underflow included: ``nonzero_terms`` counts the products that are not exactly
    zero (default: all ``n_terms``, and the 4 final operations)."""
    fi = torch.finfo(abs_sum.dtype)
    u = fi.eps  # = 2 * unit roundoff
    eta = fi.tiny * fi.eps  # the smallest subnormal
    g = (n_terms + 4) * u
    if nonzero_terms is None:
        under = 2.0 * eta * (n_terms + 4)
    else:
        under = 2.0 * eta * (nonzero_terms + 4.0 * (nonzero_terms > 0))
    return abs_sum * (g / (1.0 - g)) + under


def center_radius(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre ``m`` and radius ``r`` with ``[lo, hi]`` inside ``[m - r, m + r]`` up to the relative
    rounding that the pads cover (halving a subnormal interval can lose its last bit; subtraction
    in the subnormal range is exact, so ``r >= hi - m, m - lo`` there exactly)."""
    mid = (lo + hi) / 2
    rad = torch.maximum((hi - lo) / 2, torch.maximum(hi - mid, mid - lo))
    return mid, rad


def nan_to_unbounded(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[lo, hi]`` with a NaN end (an ``inf - inf`` in the arithmetic) made infinite: ``-inf``
    below, ``+inf`` above. Sound, and unlike NaN it reads as "no bound" everywhere after."""
    return (torch.where(torch.isnan(lo), torch.full_like(lo, -math.inf), lo),
            torch.where(torch.isnan(hi), torch.full_like(hi, math.inf), hi))


@dataclass(frozen=True, eq=False)
class Bounds:
    """Per-ReLU pre-activation bounds and output bounds over a batch of input boxes.

    ``pre_activation[k]`` is ``(lower, upper)``, each ``(batch, n_k)``, for the input of the k-th
    ReLU layer (flattened); ``output`` is ``(lower, upper)``, each ``(batch, n_out)``.
    ``method`` names what produced them. Bounds are sound: every reachable value lies inside.
    """

    pre_activation: tuple
    output: tuple
    method: str

    @property
    def batch_size(self) -> int:
        return self.output[0].shape[0]

    def select(self, index) -> "Bounds":
        """The bounds of the boxes ``index`` (a slice or index tensor) of the batch."""
        return Bounds(tuple((l[index], u[index]) for l, u in self.pre_activation),
                      (self.output[0][index], self.output[1][index]), self.method)


def strict_adjust(rows: torch.Tensor, strict: torch.Tensor | None) -> torch.Tensor:
    """Row lower bounds with strictness folded in: a strict row ``a^T y < b`` is violated as soon
    as ``a^T y - b >= 0``, so a lower bound ``>= 0`` on it already proves the disjunct unreachable.
    Such entries are raised to the smallest positive float, so that ``> 0`` keeps meaning proven."""
    if strict is None or not bool(strict.any()):
        return rows
    tiny = torch.finfo(rows.dtype).tiny * torch.finfo(rows.dtype).eps  # the smallest subnormal
    return torch.where(strict & (rows >= 0), torch.clamp(rows, min=tiny), rows)


def disjunct_lower_bounds(out_lower: torch.Tensor, out_upper: torch.Tensor, A: torch.Tensor,
                          b: torch.Tensor, strict: torch.Tensor | None = None) -> torch.Tensor:
    """Sound lower bounds on each disjunct margin ``max_i (A_k y - b_k)_i`` over the output box.

    ``out_lower``/``out_upper`` are ``(batch, n_out)``; ``A`` is ``(K, M, n_out)`` or
    ``(batch, K, M, n_out)``, ``b`` likewise without the last axis, padded rows having ``b = +inf``.
    Each row's minimum over the box is ``a+ . l + a- . u - b`` (less the rounding pad of exactly
    the terms summed), and a max of row lower bounds lower-bounds the max. ``strict`` (shaped like
    ``b``) marks strict rows (see :func:`strict_adjust`). Returns ``(batch, K)``; disjunct ``k``
    is proven unreachable on an item where its entry is ``> 0``.
    """
    if A.dim() == 3:
        A = A.unsqueeze(0)
        b = b.unsqueeze(0)
    l = out_lower[:, None, None, :]
    u = out_upper[:, None, None, :]
    Ap, An = A.clamp(min=0), A.clamp(max=0)
    rows = (Ap * l).sum(-1) + (An * u).sum(-1) - b
    finite_b = torch.where(torch.isfinite(b), b, torch.zeros_like(b))
    abs_sum = (Ap * l).abs().sum(-1) + (An * u).abs().sum(-1) + finite_b.abs()
    nonzero = ((Ap != 0) & (l != 0)).sum(-1) + ((An != 0) & (u != 0)).sum(-1) + (finite_b != 0)
    rows = rows - rounding_pad(abs_sum, A.shape[-1], nonzero.to(rows.dtype))
    return strict_adjust(rows, strict).amax(dim=-1)


def margin_lower_bound(out_lower: torch.Tensor, out_upper: torch.Tensor, A: torch.Tensor,
                       b: torch.Tensor) -> torch.Tensor:
    """Sound lower bound ``(batch,)`` on ``min_k max_i (A_k y - b_k)_i`` over the output box
    (the minimum over disjuncts of :func:`disjunct_lower_bounds`); ``> 0`` proves the property."""
    return disjunct_lower_bounds(out_lower, out_upper, A, b).amin(dim=-1)
