"""Folding elementwise maps into a neighbouring layer, with the rounding measured exactly.

Importers fold ``x * s + t`` (input normalisation, BatchNorm, ``Div``/``Add`` by constants) into
the layer before it: ``W' = W s``, ``b' = b s + t``. Each product and sum rounds in float64; the
error is taken exactly with TwoProduct (Dekker, with Veltkamp's split) and TwoSum (Knuth), so an
exact fold records nothing, and the bounds returned cover the errors already on ``W, b, s, t``.
The importers keep them in :attr:`~gpuopt.network.Network.param_errors`, which the counterexample
check and the proofs widen by.
"""

from __future__ import annotations

import numpy as np

__all__ = ["two_prod", "two_sum", "fold_affine", "batchnorm_affine", "ungroup_kernel"]

_U = 2.0 ** -53  # unit roundoff of float64


def two_prod(a, b) -> tuple[np.ndarray, np.ndarray]:
    """``(p, e)`` with ``p = fl(a b)`` and ``a b = p + e`` exactly (Dekker's product with
    Veltkamp's split; exact barring overflow and underflow, where ``e`` is then padded by a
    subnormal-scale term)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    p = a * b
    with np.errstate(over="ignore", invalid="ignore"):
        split = 134217729.0  # 2^27 + 1
        ca, cb = split * a, split * b
        ah, bh = ca - (ca - a), cb - (cb - b)
        al, bl = a - ah, b - bh
        e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    bad = ~np.isfinite(e)
    e = np.where(bad, np.abs(p) * 4 * _U, e) + np.where(p != 0, 2.0 ** -1070, 0.0) * (np.abs(p) < 2.0 ** -960)
    return p, e


def two_sum(a, b) -> tuple[np.ndarray, np.ndarray]:
    """``(s, e)`` with ``s = fl(a + b)`` and ``a + b = s + e`` exactly (Knuth's TwoSum)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


def fold_affine(p1, p2, s1, s2, t, e1=0.0, e2=0.0, es1=0.0, es2=0.0, et=0.0) -> tuple:
    """``(p1 s1, p2 s2 + t)`` rounded to float64, and bounds ``(f1, f2)`` on their distance to the
    exact values of the source model, given bounds ``e1, e2`` on the errors already in ``p1, p2``
    and ``es1, es2, et`` on those of ``s1, s2, t`` (``s1`` is ``s2`` broadcast to ``p1``)."""
    q1, r1 = two_prod(p1, s1)
    q2, r2 = two_prod(p2, s2)
    n2, r3 = two_sum(q2, t)
    grow = 1 + 8 * _U
    f1 = (np.abs(e1) * np.abs(s1) + np.abs(p1) * es1 + np.abs(r1)) * grow
    f2 = (np.abs(e2) * np.abs(s2) + np.abs(p2) * es2 + np.abs(r2) + np.abs(r3) + et) * grow
    return q1, n2, f1, f2


def batchnorm_affine(gamma, beta, mean, var, eps: float) -> tuple:
    """Inference BatchNorm as ``x * scale + shift`` with ``scale = gamma / sqrt(var + eps)`` and
    ``shift = beta - mean * scale``, and bounds ``(es, et)`` on their rounding (a few operations,
    bounded by ulps of the results)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = gamma / np.sqrt(var + eps)
    shift = beta - mean * scale
    es = 4 * np.spacing(np.abs(scale))
    et = (np.abs(mean) * es + 2 * np.spacing(np.abs(mean * scale)) + 2 * np.spacing(np.abs(shift))) * (1 + 8 * _U)
    return scale, shift, es, et


def ungroup_kernel(w: np.ndarray, group: int) -> np.ndarray:
    """The kernel of a grouped convolution as one ungrouped kernel: output channel ``o`` of group
    ``g`` reads input channels ``g C/group .. (g + 1) C/group - 1`` with ``w[o]``, and zeros
    elsewhere."""
    c_out, c_per = w.shape[:2]
    full = np.zeros((c_out, c_per * group) + w.shape[2:])
    o_per = c_out // group
    for g in range(group):
        full[g * o_per:(g + 1) * o_per, g * c_per:(g + 1) * c_per] = w[g * o_per:(g + 1) * o_per]
    return full
