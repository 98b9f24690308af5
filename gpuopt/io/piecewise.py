"""Piecewise-linear activations as exact graphs of ReLUs, shared by the ONNX and torch importers.

Each activation is a sum ``y = sum_k s_k v_k + c`` over terms ``v_k`` that are either the input
``x`` or ``relu(a_k x + b_k)``, every coefficient a per-element array:

* leaky ReLU / PReLU with slope ``a``: ``a x + (1 - a) relu(x)`` for ``a <= 1`` and
  ``x + (1 - a) relu(-x)`` for ``a > 1`` (one ReLU per element; each form adds no large terms
  that cancel on its side of the kink);
* ``|x| = 2 relu(x) - x``;
* ``clip(x, lo, hi) = x + relu(lo - x) - relu(x - hi)`` (``hi`` when ``lo > hi``, as ONNX and
  ``min(max(x, lo), hi)`` give); with one side only ``x + relu(lo - x)`` or ``x - relu(x - hi)``
  (never ``lo + relu(x - lo)``: with float32's lowest number as ``lo``, a converter's way of
  writing "no lower bound", that form cancels to 0);
* hard sigmoid ``max(0, min(1, a x + b)) = relu(a x + b) - relu(a x + b - 1)``;
* ``max(x, c) = x + relu(c - x)``, ``min(x, c) = x - relu(x - c)``;
* between two data tensors ``max(p, q) = q + relu(p - q)``, ``min(p, q) = p - relu(p - q)``.

These are identities of real numbers, so every stage (bounds, attack, MILP) treats the result as
a ReLU network. A coefficient computed here (``1 - a``, ``b - 1``) is rounded at most once in
float64; TwoSum gives its exact error, which the importers keep in
:attr:`~gpuopt.network.Network.param_errors` like any rounded parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..layers import Add, ElementwiseAffine, ReLU
from .folding import two_sum

__all__ = ["Term", "leaky_terms", "abs_terms", "clip_terms", "hard_sigmoid_terms", "max_const_terms",
           "min_const_terms", "add_relu_terms", "add_pairwise_extreme"]


@dataclass(frozen=True)
class Term:
    """``scale * x`` (``inner=False``) or ``scale * relu(a * x + b)``; ``*_err`` bound how far a
    coefficient is from its exact value."""

    scale: object = 1.0
    inner: bool = False
    a: object = 1.0
    b: object = 0.0
    scale_err: object = 0.0
    b_err: object = 0.0


def leaky_terms(alpha) -> tuple[list[Term], object]:
    alpha = np.asarray(alpha, dtype=np.float64)
    if _is(alpha, 0):
        return [Term(1.0, True)], 0.0
    with np.errstate(invalid="ignore"):  # a non-finite slope is refused by add_relu_terms
        beta, err = two_sum(np.ones_like(alpha), -alpha)
        steep = alpha > 1  # x + (1 - a) relu(-x) there, a x + (1 - a) relu(x) elsewhere
    if not np.any(steep):
        return [Term(alpha), Term(beta, True, scale_err=err)], 0.0
    return [Term(np.where(steep, 1.0, alpha)), Term(beta, True, a=np.where(steep, -1.0, 1.0), scale_err=err)], 0.0


def abs_terms() -> tuple[list[Term], object]:
    return [Term(-1.0), Term(2.0, True)], 0.0


def clip_terms(lo, hi) -> tuple[list[Term], object]:
    """``lo`` or ``hi`` may be None (that side open); neither: the identity."""
    if lo is not None and hi is not None:
        lo = np.minimum(lo, hi)
        return [Term(1.0), Term(1.0, True, a=-1.0, b=lo), Term(-1.0, True, b=-hi)], 0.0
    if lo is not None:
        return [Term(1.0), Term(1.0, True, a=-1.0, b=lo)], 0.0
    if hi is not None:
        return [Term(1.0), Term(-1.0, True, b=-hi)], 0.0
    return [Term(1.0)], 0.0


def hard_sigmoid_terms(alpha, beta) -> tuple[list[Term], object]:
    with np.errstate(invalid="ignore"):
        b1, err = two_sum(np.asarray(beta, dtype=np.float64), -np.ones_like(np.asarray(beta, dtype=np.float64)))
    return [Term(1.0, True, a=alpha, b=beta), Term(-1.0, True, a=alpha, b=b1, b_err=err)], 0.0


def max_const_terms(c) -> tuple[list[Term], object]:
    return [Term(1.0), Term(1.0, True, a=-1.0, b=np.asarray(c, dtype=np.float64))], 0.0


def min_const_terms(c) -> tuple[list[Term], object]:
    return [Term(1.0), Term(-1.0, True, b=-np.asarray(c, dtype=np.float64))], 0.0


def _is(value, number) -> bool:
    return bool(np.all(np.asarray(value) == number))


def add_relu_terms(add, src: int, terms, const=0.0, *, convert=None, record=None) -> int:
    """Appends ``sum_k terms[k] + const`` on layer ``src`` through ``add(layer, inputs) -> index``
    and returns the output layer's index. ``convert`` maps a per-element coefficient to the
    layer's tensor shape; ``record(index, scale_err, shift_err)`` keeps a rounded coefficient's
    error bounds (both arrays of the coefficients' shapes)."""
    convert = convert or (lambda v: np.asarray(v, dtype=np.float64))

    def affine(ref, scale, shift, scale_err=0.0, shift_err=0.0) -> int:
        s, t = convert(np.asarray(scale, dtype=np.float64)), convert(np.asarray(shift, dtype=np.float64))
        if not (np.all(np.isfinite(s)) and np.all(np.isfinite(t))):
            raise ValueError("a coefficient is NaN or infinite")
        i = add(ElementwiseAffine(s, t), (ref,))
        es = convert(np.broadcast_to(np.abs(np.asarray(scale_err, dtype=np.float64)), np.shape(scale)))
        et = convert(np.broadcast_to(np.abs(np.asarray(shift_err, dtype=np.float64)), np.shape(shift)))
        if record is not None and (np.any(es) or np.any(et)):
            record(i, es, et)
        return i

    refs = []
    for k, term in enumerate(terms):
        ref = src
        if term.inner:
            if not (_is(term.a, 1) and _is(term.b, 0)) or np.any(term.b_err):
                ref = affine(src, term.a, term.b, 0.0, term.b_err)
            ref = add(ReLU(), (ref,))
        shift = const if k == 0 else 0.0
        if len(terms) > 1 and _is(term.scale, 1) and _is(shift, 0) and not np.any(term.scale_err):
            refs.append(ref)  # the term as it is: no identity layer
        else:
            refs.append(affine(ref, term.scale, shift, term.scale_err))
    return refs[0] if len(refs) == 1 else add(Add(len(refs)), tuple(refs))


def add_pairwise_extreme(add, refs, op: str) -> int:
    """``max`` (``op="max"``) or ``min`` of the layers ``refs`` (one shape), folded left to right
    as ``q + relu(p - q)`` or ``p - relu(p - q)``; returns the output layer's index."""
    if op not in ("max", "min"):
        raise ValueError(f"op must be 'max' or 'min', got {op!r}")
    acc = refs[0]
    for q in refs[1:]:
        neg_q = add(ElementwiseAffine(-np.ones(()), np.zeros(())), (q,))
        r = add(ReLU(), (add(Add(2), (acc, neg_q)),))
        if op == "max":
            acc = add(Add(2), (q, r))
        else:
            acc = add(Add(2), (acc, add(ElementwiseAffine(-np.ones(()), np.zeros(())), (r,))))
    return acc
