"""Deciding a counterexample: is this float64 point in the input set, and does it reach the
unsafe region, *exactly*?

The network's exact semantics is its layers evaluated in real arithmetic with the stored float64
parameters read exactly (an ONNX float32 weight is a float64 exactly); the reported input is the
float64 point itself. A point is a counterexample iff it lies in the exact input set (the inner
box of :class:`~gpuopt.problem.Problem`) and its exact output lies in the unsafe region, strict
rows strictly (:meth:`~gpuopt.specs.OutputSpec.exact_unsafe`).

Two steps decide that:

1. **float64 with a proven error bound.** Each affine layer ``z = M h + c`` is computed in float64
   together with a bound ``e_z >= |z - z_exact|``:
   ``e_z = |M| e_h + gamma_{n+2} (|M| |h| + |c|) + eta``, where ``n`` is the row's number of
   terms, ``gamma_k = k u / (1 - k u)`` (Higham, 3.1), ``u = 2^-53`` and ``eta`` covers underflow;
   ReLU is 1-Lipschitz, so ``e`` passes through it. Each spec row ``r = a^T y - b`` gets
   ``e_r = |a| e_y + gamma_{m+2} (|a| |y| + |b|) + eta``. Every error term is itself inflated for
   the rounding of its own computation. If some disjunct has every row ``r + e_r < 0``, the point
   is unsafe; if every disjunct has a row with ``r - e_r > 0``, it is safe.
2. **exact rational arithmetic** for a point in the band between. Every float64 is a dyadic
   rational ``m 2^k``, so each layer is evaluated exactly in Python integers over a common power
   of two. This costs about a microsecond per weight; networks above ``max_exact_weights`` weights
   leave the point undecided (it is then not reported).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import scipy.sparse as sp

from .network import Conv2d, Dense, ElementwiseAffine, Flatten, Network, ReLU, _conv_as_sparse

__all__ = ["PointCheck", "check_counterexample", "layer_operators", "parameter_deviation"]

_U = 2.0 ** -53
_ETA = 2.0 ** -1000  # absorbs underflow: far below any margin the pipeline acts on, far above 2^-1074 * n

#: networks with more weights than this are not evaluated exactly (a point in the band is undecided)
MAX_EXACT_WEIGHTS = 5_000_000


@dataclass(frozen=True, eq=False)
class PointCheck:
    """Outcome of checking one point: ``ok`` (a counterexample, decided soundly), the float64
    input ``x`` that was checked (clipped into the exact input set), its float64 output ``y``,
    the float64 ``margin`` and its error bound ``error``, and ``how`` it was decided
    (``"float"``, ``"exact"``, ``"outside"`` when no float64 point lies in the input set, or
    ``"undecided"`` when the band could not be settled)."""

    ok: bool
    x: np.ndarray
    y: np.ndarray
    margin: float
    error: float
    how: str


def _gamma(n: np.ndarray | int) -> np.ndarray:
    k = np.asarray(n, dtype=np.float64) + 2.0
    return k * _U / (1.0 - k * _U)


def _affine_operator(layer, shape) -> tuple:
    """``(M, c)`` of one affine layer on flattened samples, entries exactly the parameters."""
    if isinstance(layer, Dense):
        return sp.csr_matrix(layer.weight), np.asarray(layer.bias)
    if isinstance(layer, Conv2d):
        out = layer.output_shape(shape)
        return _conv_as_sparse(layer, shape), np.repeat(layer.bias, out[1] * out[2])
    s = np.broadcast_to(layer.scale, shape).reshape(-1)
    return sp.diags(s, format="csr"), np.broadcast_to(layer.shift, shape).reshape(-1).copy()


def layer_operators(network: Network) -> list:
    """The network as a list of ``("affine", M, c, E)`` (``M`` sparse csr, entries exactly the
    layer's parameters; ``E`` is ``None`` or ``(|M - M_exact| bound, |c - c_exact| bound)`` from
    :attr:`~gpuopt.network.Network.param_errors`) and ``("relu",)`` steps, one per layer, not
    composed (cached on the network)."""
    cache = network._param_cache
    if "layer_ops" not in cache:
        ops = []
        errors = network.param_errors or (None,) * len(network.layers)
        for layer, shape, err in zip(network.layers, network.layer_shapes, errors):
            if isinstance(layer, (Dense, Conv2d, ElementwiseAffine)):
                M, c = _affine_operator(layer, shape)
                E = None
                if err is not None:
                    if isinstance(layer, ElementwiseAffine):
                        fake = ElementwiseAffine(err[0], err[1])
                    elif isinstance(layer, Dense):
                        fake = Dense(err[0], err[1])
                    else:
                        fake = Conv2d(err[0], err[1], layer.stride, layer.padding, layer.dilation)
                    E = _affine_operator(fake, shape)
                ops.append(("affine", M, c, E))
            elif isinstance(layer, ReLU):
                ops.append(("relu",))
            elif isinstance(layer, Flatten):
                continue
            else:  # pragma: no cover - the Network constructor refuses other layers
                raise TypeError(type(layer).__name__)
        cache["layer_ops"] = ops
    return cache["layer_ops"]


def _forward_with_error(network: Network, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float64 output of one input and an upper bound on its distance to the exact output."""
    h = x.astype(np.float64)
    e = np.zeros_like(h)
    for op in layer_operators(network):
        if op[0] == "relu":
            h = np.maximum(h, 0.0)
            continue
        _, M, c, E = op
        absM = abs(M)
        n_terms = np.diff(M.indptr)
        z = M @ h + c
        mag = absM @ np.abs(h) + np.abs(c)
        prop = absM @ e
        if E is not None:  # the stored parameters differ from the source model's by at most E
            prop = prop + E[0] @ (np.abs(h) + e) + E[1]
        # each term inflated for the rounding of its own computation
        e = (prop * (1 + _gamma(n_terms)) + _gamma(n_terms) * mag * (1 + 2 * _gamma(n_terms))
             + _ETA * (n_terms + 2))
        h = z
    return h, e


def parameter_deviation(network: Network, lower, upper) -> np.ndarray | None:
    """``(batch, n_out)`` bounds on ``|f_source(x) - f_blocks(x)|`` over each box ``[lower, upper]``:
    ``f_source`` has the parameters of the source model (within
    :attr:`~gpuopt.network.Network.param_errors` of the stored ones) evaluated layer by layer, and
    ``f_blocks`` is :meth:`~gpuopt.network.Network.affine_blocks`, whose float64 composition of
    consecutive affine layers rounds (CROWN and the MILP use it). ``None`` when both are exact
    (no rounded parameter, no composed block). Per affine layer ``e' = |M| e + E_M (|h| + e) + E_c``,
    plus ``gamma_n |L_j| ... |L_1| |h|`` for each composition step, with ``|h|`` bounded by an
    absolute-value forward pass; ReLU is 1-Lipschitz. Every step is inflated for its own rounding."""
    ops = layer_operators(network)
    composed = any(a[0] == "affine" and b[0] == "affine" for a, b in zip(ops, ops[1:]))
    if network.param_errors is None and not composed:
        return None
    mag = np.maximum(np.abs(np.asarray(lower, dtype=np.float64)), np.abs(np.asarray(upper, dtype=np.float64)))
    mag = mag.reshape(mag.shape[0], -1).T  # (n, batch)
    e = np.zeros_like(mag)
    in_block = False  # whether an affine layer precedes this one in its block (a composition step)
    for op in ops:
        if op[0] == "relu":
            in_block = False
            continue
        _, M, c, E = op
        absM = abs(M)
        g = _gamma(np.diff(M.indptr))[:, None]
        new_e = absM @ e
        if E is not None:
            new_e = new_e + E[0] @ (mag + e) + E[1][:, None]
        mag = (absM @ mag + np.abs(c)[:, None]) * (1 + 2 * g) + _ETA
        if in_block:  # composing this layer onto the previous ones rounds by at most gamma_n of the magnitudes
            new_e = new_e + g * mag
        e = new_e * (1 + 2 * g) + _ETA
        in_block = True
    return e.T


def _to_ints(v: np.ndarray) -> tuple[list[int], int]:
    """Float64 vector ``v`` as integers ``m`` and an exponent ``k`` with ``v = m 2^k`` exactly."""
    mant, expo = np.frexp(v)
    m = (mant * 2.0 ** 53).astype(np.int64)  # exact: a float64 mantissa has 53 bits
    k = expo.astype(np.int64) - 53
    nz = m != 0
    if not nz.any():
        return [0] * v.size, 0
    base = int(k[nz].min())
    return [int(mi) << int(ki - base) if mi else 0 for mi, ki in zip(m.tolist(), k.tolist())], base


def _exact_forward(network: Network, x: np.ndarray, max_weights: int) -> list[Fraction] | None:
    """The exact output (Fractions) of the float64 input ``x``, or ``None`` when the network has
    more than ``max_weights`` weights."""
    ops = layer_operators(network)
    if network.param_errors is not None or sum(op[1].nnz for op in ops if op[0] == "affine") > max_weights:
        return None  # rounded parameters: exact arithmetic on them would not be exact for the source
    h, hk = _to_ints(x)
    for op in ops:
        if op[0] == "relu":
            h = [v if v > 0 else 0 for v in h]
            continue
        _, M, c, _ = op
        data, dk = _to_ints(M.data)
        cb, ck = _to_ints(np.asarray(c, dtype=np.float64))
        # z = M h + c over the exponent base = min(dk + hk, ck)
        base = min(dk + hk, ck)
        sh_p, sh_c = dk + hk - base, ck - base
        indptr, indices = M.indptr, M.indices
        z = []
        for r in range(M.shape[0]):
            s = 0
            for j in range(indptr[r], indptr[r + 1]):
                s += data[j] * h[indices[j]]
            z.append((s << sh_p) + (cb[r] << sh_c))
        h, hk = z, base
    scale = Fraction(2) ** hk
    return [v * scale for v in h]


def check_counterexample(problem, x, *, max_exact_weights: int = MAX_EXACT_WEIGHTS) -> PointCheck:
    """Decide soundly whether the float64 point ``x`` (clipped into the problem's exact input set)
    is a counterexample of ``problem``; see the module docstring."""
    box = problem.inner
    x64 = np.asarray(x, dtype=np.float64).reshape(-1)
    if box is None:
        return PointCheck(False, x64, np.full(problem.spec.n_outputs, np.nan), np.inf, 0.0, "outside")
    if x64.size != box.size or not np.all(np.isfinite(x64)):
        return PointCheck(False, x64, np.full(problem.spec.n_outputs, np.nan), np.inf, 0.0, "undecided")
    x64 = np.clip(x64, box.lower, box.upper)
    with np.errstate(over="ignore", invalid="ignore"):
        y, ey = _forward_with_error(problem.network, x64)
    spec = problem.spec
    safe_all, unsafe_any = True, False
    margin, err_at_margin = np.inf, 0.0
    overflow = not (np.all(np.isfinite(y)) and np.all(np.isfinite(ey)))
    if overflow:
        safe_all = False  # float64 overflowed: only exact arithmetic can decide
    for k, (A, b) in enumerate(() if overflow else spec.disjuncts):
        absA = np.abs(A)
        m = A.shape[1]
        r = A @ y - b
        er = (absA @ ey) * (1 + _gamma(m)) + _gamma(m) * (absA @ np.abs(y) + np.abs(b)) * (1 + 2 * _gamma(m)) \
            + _ETA * (m + 2)
        # rows with inexact (rounded) coefficients or right-hand sides add their rounding
        er = er + spec._coef_err[k] @ np.abs(y) * (1 + 4 * _gamma(m)) + np.spacing(np.abs(b))
        worst = int(np.argmax(r))
        if r[worst] < margin:
            margin, err_at_margin = float(r[worst]), float(er[worst])
        if np.all(r + er < 0):
            unsafe_any = True
        if not np.any(r - er > 0):
            safe_all = False
    if unsafe_any:
        return PointCheck(True, x64, y, margin, err_at_margin, "float")
    if safe_all:
        return PointCheck(False, x64, y, margin, err_at_margin, "float")
    y_exact = _exact_forward(problem.network, x64, max_exact_weights)
    if y_exact is None:
        return PointCheck(False, x64, y, margin, err_at_margin, "undecided")
    unsafe, exact_margin = spec.exact_unsafe(y_exact)
    try:
        margin = float(exact_margin)
    except OverflowError:
        margin = math.inf if exact_margin > 0 else -math.inf
    return PointCheck(bool(unsafe), x64, y, margin, 0.0, "exact")
