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

Where the exact input set holds no float64 point (an input fixed at a decimal such as ``0.1``),
the problem's :class:`~gpuopt.problem.NearBox` gives float64 points that stand for it: step 1
starts from an input error equal to the float hull's width on those coordinates, so that ``e_z``
bounds the distance to the exact output of every exact point within that width, and decides them
all at once (``how="near"``); there is no exact step (those points are not dyadic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .errors import NoLinearFormError
from .lowering import network_steps
from .network import Network

__all__ = ["PointCheck", "check_counterexample", "parameter_deviation"]

_U = 2.0 ** -53
_ETA = 2.0 ** -1000  # absorbs underflow: far below any margin the pipeline acts on, far above 2^-1074 * n

#: networks with more weights than this are not evaluated exactly (a point in the band is undecided)
MAX_EXACT_WEIGHTS = 5_000_000


@dataclass(frozen=True, eq=False)
class PointCheck:
    """Outcome of checking one point: ``ok`` (a counterexample, decided soundly), the float64
    input ``x`` that was checked (clipped into the exact input set), its float64 output ``y``,
    the float64 ``margin`` and its error bound ``error``, and ``how`` it was decided
    (``"float"``, ``"exact"``, ``"near"`` when no float64 point lies in the input set but every
    exact point near ``x`` was decided in float64 (:attr:`~gpuopt.problem.Problem.near`),
    ``"outside"`` when no float64 point lies in the input set, or
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


def _row_terms(step) -> np.ndarray:
    """Terms per output of an affine step: its products plus one addition per input and the bias."""
    return sum(np.diff(M.indptr) for M in step.matrices) + len(step.matrices)


def _forward_with_error(network: Network, x: np.ndarray, e0: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Float64 output of one input and an upper bound on its distance to the exact output, over
    the network's steps (:func:`gpuopt.lowering.network_steps`), or layer by layer
    (:func:`_forward_with_error_layers`) when those would not fit in memory. With ``e0``, the
    exact input may be any point within ``e0`` of ``x`` (per coordinate), and the bound holds for
    the exact output of each (the propagation only asks ``|h - h_exact| <= e_h`` of a layer's
    input)."""
    try:
        steps, out = network_steps(network)
    except NoLinearFormError:
        return _forward_with_error_layers(network, x, e0)
    vals = {-1: (x.astype(np.float64), np.zeros(x.size) if e0 is None else np.asarray(e0, dtype=np.float64).reshape(-1))}
    for s, st in enumerate(steps):
        if st.kind == "relu":
            h, e = vals[st.inputs[0]]
            vals[s] = (np.maximum(h, 0.0), e)
            continue
        n_terms = _row_terms(st)
        g = _gamma(n_terms)
        z = st.bias.copy()
        mag = np.abs(st.bias)
        prop = np.zeros(st.size)
        for k, (M, j) in enumerate(zip(st.matrices, st.inputs)):
            h, e = vals[j]
            absM = abs(M)
            z = z + M @ h
            mag = mag + absM @ np.abs(h)
            prop = prop + absM @ e
            if st.errors is not None and st.errors[0] is not None and st.errors[0][k] is not None:
                # the stored parameters differ from the source model's by at most this
                prop = prop + st.errors[0][k] @ (np.abs(h) + e)
        if st.errors is not None and st.errors[1] is not None:
            prop = prop + st.errors[1]
        # each term inflated for the rounding of its own computation
        e = prop * (1 + g) + g * mag * (1 + 2 * g) + _ETA * (n_terms + 2)
        vals[s] = (z, e)
    return vals[out]


#: a bound on the absolute error of torch's float64 sigmoid and tanh (values in [-1, 1]; the math
#: library's exp and tanh are within a few ulps, 2.2e-16 each, and 1 / (1 + e) adds two roundings)
SMOOTH_EVAL_ERROR = 1e-14


def layer_terms(layer) -> int:
    """The most terms an output of a linear layer sums, its bias included: Dense its inputs,
    ElementwiseAffine 2, Conv2d ``c_in kh kw`` (weight ``(c_out, c_in, kh, kw)``), ConvTranspose2d
    ``c_in kh kw`` (weight ``(c_in, c_out, kh, kw)``: an output sums at most that many taps),
    AvgPool2d its window."""
    from .layers import AvgPool2d, Conv2d, ConvTranspose2d, Dense, ElementwiseAffine

    if isinstance(layer, Dense):
        return layer.weight.shape[1] + 1
    if isinstance(layer, ElementwiseAffine):
        return 2
    if isinstance(layer, Conv2d):
        return int(np.prod(layer.weight.shape[1:])) + 1
    if isinstance(layer, ConvTranspose2d):
        return layer.weight.shape[0] * int(np.prod(layer.weight.shape[2:])) + 1
    if isinstance(layer, AvgPool2d):
        return int(np.prod(layer.kernel)) + 1
    raise TypeError(f"{type(layer).__name__} is not a linear layer")


def _forward_with_error_layers(network: Network, x: np.ndarray, e0: np.ndarray | None = None
                               ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_forward_with_error` layer by layer in float64 torch operations, for networks whose
    step form would not fit in memory. A linear layer ``z = L(h) + c`` (Dense, Conv2d,
    ConvTranspose2d, ElementwiseAffine, AvgPool2d, Add) gets the same bound as a step, with
    ``|L|`` applied through the layer itself on absolute parameters, and ``n`` at least the
    number of terms of any output (all kernel taps, padding included: ``gamma_n`` grows with
    ``n``, so more is sound); any summation order the library picks is within ``gamma_n`` (Higham,
    3.1). Selections (Pad, Slice, Gather, Transpose, Concat, reshapes) move values and errors
    alike; ReLU and max-pooling are 1-Lipschitz in each coordinate's error; sigmoid and tanh are
    1/4- and 1-Lipschitz (and monotone: no further from the value than ``f(h +- e)``, which bounds
    the error where they saturate), softmax 1/2- and log-softmax 2-Lipschitz in the max-norm along
    their axis, and their float64 evaluation is within :data:`SMOOTH_EVAL_ERROR` (softmax: plus
    ``gamma_{n+4}``, its sum of ``n`` exponentials and the division; log-softmax: that, the log's
    ``(1 + log n)`` of it and ``8 u`` of the magnitudes its subtractions round at; this rests on
    the math library's accuracy: torch's float64 exp, log and tanh are within a few ulps)."""
    import torch

    from .layers import (SMOOTH_TYPES, Add, AvgPool2d, Concat, Conv2d, ConvTranspose2d, Dense, ElementwiseAffine,
                         Flatten, Gather, LogSoftmax, MaxPool2d, Pad, ReLU, Reshape, Slice, Softmax, Transpose)

    def tensor(a):
        return torch.tensor(np.asarray(a, dtype=np.float64))

    errors = network.param_errors or (None,) * len(network.layers)
    x0 = tensor(x).reshape(1, *network.input_shape)
    vals = {-1: (x0, torch.zeros_like(x0) if e0 is None else tensor(e0).reshape(x0.shape))}
    with torch.no_grad():
        for i, (layer, ins) in enumerate(zip(network.layers, network.inputs)):
            hs, es = [vals[j][0] for j in ins], [vals[j][1] for j in ins]
            if isinstance(layer, ReLU):
                vals[i] = (hs[0].clamp_min(0.0), es[0])
                continue
            params = tuple(tensor(a) for a in layer.params())
            if isinstance(layer, MaxPool2d):
                vals[i] = (layer.apply(params, hs[0]), layer.apply(params, es[0]))
                continue
            if isinstance(layer, SMOOTH_TYPES):
                # L-Lipschitz: the input's error scaled by L, plus the evaluation's own error (the
                # math library's float64 exp and tanh are within a few ulps of values in [-1, 1]);
                # softmax mixes its axis: the largest error along it, and a sum of n exponentials
                e = es[0]
                eval_error = SMOOTH_EVAL_ERROR
                z = layer.apply(params, hs[0])
                if isinstance(layer, (Softmax, LogSoftmax)):
                    n = hs[0].shape[-1]
                    e = e.amax(dim=-1, keepdim=True).expand_as(e)
                    eval_error = SMOOTH_EVAL_ERROR + float(_gamma(n + 4))
                    if isinstance(layer, LogSoftmax):
                        # x_i - m - log(sum_j exp(x_j - m)): the log turns the sum's relative error
                        # into an absolute one, and the two subtractions round at the magnitudes
                        top = hs[0].abs().amax(dim=-1, keepdim=True)
                        eval_error = eval_error + SMOOTH_EVAL_ERROR * (1 + math.log(n)) + 8 * _U * (
                            hs[0].abs() + top + z.abs() + math.log(n))
                e_out = e * layer.lipschitz + eval_error
                if not isinstance(layer, (Softmax, LogSoftmax)):
                    # monotone: the exact value lies between f(h - e) and f(h + e), each rounded
                    # outwards and evaluated within eval_error (tight where f saturates)
                    inf = torch.full_like(z, math.inf)
                    hi = layer.apply(params, torch.nextafter(hs[0] + e, inf))
                    lo = layer.apply(params, torch.nextafter(hs[0] - e, -inf))
                    e_out = torch.minimum(e_out, torch.nextafter(hi - lo, inf) + 3 * eval_error)
                vals[i] = (z, e_out)
                continue
            if isinstance(layer, (Flatten, Reshape, Transpose, Pad, Slice, Gather, Concat)):
                # a selection: the error moves with the value (padding adds exact entries)
                e = layer.select(es[0]) if isinstance(layer, Pad) else layer.apply(params, *es)
                vals[i] = (layer.apply(params, *hs), e)
                continue
            if not isinstance(layer, (Dense, Conv2d, ConvTranspose2d, ElementwiseAffine, AvgPool2d, Add)):
                z = layer.apply(params, *hs)  # a layer this bound does not know: nothing is decided from it
                vals[i] = (z, torch.full_like(z, math.inf))
                continue
            z = layer.apply(params, *hs)
            if isinstance(layer, (Dense, Conv2d, ConvTranspose2d, ElementwiseAffine)):
                w_abs = params[0].abs()
                mag = layer.apply((w_abs, params[1].abs()), hs[0].abs())  # |L| |h| + |c|
                prop = layer.apply((w_abs, torch.zeros_like(params[1])), es[0])
                if errors[i] is not None:  # the stored parameters differ from the source model's by this
                    prop = prop + layer.apply(tuple(tensor(a) for a in errors[i]), hs[0].abs() + es[0])
                n_terms = layer_terms(layer)
            elif isinstance(layer, AvgPool2d):  # window sums over the window's count (exact semantics)
                mag, prop = layer.apply((), hs[0].abs()), layer.apply((), es[0])
                n_terms = layer_terms(layer)
            else:  # Add
                mag, prop = sum(h.abs() for h in hs), sum(es)
                n_terms = len(hs)
            g = float(_gamma(n_terms))
            e = prop * (1 + g) + g * mag * (1 + 2 * g) + _ETA * (n_terms + 2)
            vals[i] = (z, e)
    y, e = vals[len(network.layers) - 1]
    return y.reshape(-1).numpy(), e.reshape(-1).numpy()


def parameter_deviation(network: Network, lower, upper) -> np.ndarray | None:
    """``(batch, n_out)`` bounds on ``|f_source(x) - f_blocks(x)|`` over each box ``[lower, upper]``:
    ``f_source`` has the parameters of the source model (within the steps' errors: the
    :attr:`~gpuopt.network.Network.param_errors` of the stored ones, and entries such as ``1/9``
    that float64 cannot hold) evaluated step by step, and ``f_blocks`` is
    :meth:`~gpuopt.network.Network.affine_blocks`, whose float64 composition of affine steps rounds
    (CROWN and the MILP use it). ``None`` when both are exact (no inexact parameter, no composed
    step). Per affine step ``e' = sum_i (|M_i| e_i + E_i (|h_i| + e_i)) + E_c``, plus
    ``gamma_n (sum_i |M_i| |h_i| + |c|)`` where the step is composed onto an affine input (a
    selection composes exactly), with ``|h|`` bounded by an absolute-value forward pass; ReLU is
    1-Lipschitz. Every step is inflated for its own rounding."""
    steps, out = network_steps(network)

    def composed(st):
        return st.kind == "affine" and not st.selection and any(j >= 0 and steps[j].kind == "affine" for j in st.inputs)

    if all(st.errors is None for st in steps) and not any(composed(st) for st in steps):
        return None
    mag0 = np.maximum(np.abs(np.asarray(lower, dtype=np.float64)), np.abs(np.asarray(upper, dtype=np.float64)))
    mag0 = mag0.reshape(mag0.shape[0], -1).T  # (n, batch)
    vals = {-1: (mag0, np.zeros_like(mag0))}
    for s, st in enumerate(steps):
        if st.kind == "relu":
            vals[s] = vals[st.inputs[0]]
            continue
        g = _gamma(_row_terms(st))[:, None]
        new_e = 0.0
        mag = np.abs(st.bias)[:, None]
        for k, (M, j) in enumerate(zip(st.matrices, st.inputs)):
            mj, ej = vals[j]
            absM = abs(M)
            new_e = new_e + absM @ ej
            if st.errors is not None and st.errors[0] is not None and st.errors[0][k] is not None:
                new_e = new_e + st.errors[0][k] @ (mj + ej)
            mag = mag + absM @ mj
        if st.errors is not None and st.errors[1] is not None:
            new_e = new_e + st.errors[1][:, None]
        mag = mag * (1 + 2 * g) + _ETA
        if composed(st):  # composing this step onto the previous ones rounds by at most gamma_n of the magnitudes
            new_e = new_e + g * mag
        vals[s] = (mag, new_e * (1 + 2 * g) + _ETA)
    return np.broadcast_to(vals[out][1], vals[out][0].shape).T.copy()


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
    more than ``max_weights`` weights or an inexact parameter."""
    try:
        steps, out = network_steps(network)
    except NoLinearFormError:
        return None
    affine = [st for st in steps if st.kind == "affine"]
    if any(st.errors is not None for st in affine) or sum(M.nnz for st in affine for M in st.matrices) > max_weights:
        return None  # rounded parameters: exact arithmetic on them would not be exact for the source
    vals = {-1: _to_ints(x)}
    for s, st in enumerate(steps):
        if st.kind == "relu":
            h, hk = vals[st.inputs[0]]
            vals[s] = ([v if v > 0 else 0 for v in h], hk)
            continue
        cb, ck = _to_ints(np.asarray(st.bias, dtype=np.float64))
        parts = []
        for M, j in zip(st.matrices, st.inputs):
            data, dk = _to_ints(M.data)
            parts.append((M, data, dk + vals[j][1], vals[j][0]))
        # z = sum_i M_i h_i + c over the exponent base = min over the terms' exponents
        base = min([ck] + [p[2] for p in parts])
        z = [v << (ck - base) for v in cb]
        for M, data, k, h in parts:
            shift = k - base
            indptr, indices = M.indptr, M.indices
            for r in range(M.shape[0]):
                acc = 0
                for t in range(indptr[r], indptr[r + 1]):
                    acc += data[t] * h[indices[t]]
                z[r] += acc << shift
        vals[s] = (z, base)
    h, hk = vals[out]
    scale = Fraction(2) ** hk
    return [v * scale for v in h]


def check_counterexample(problem, x, *, max_exact_weights: int = MAX_EXACT_WEIGHTS) -> PointCheck:
    """Decide soundly whether the float64 point ``x`` (clipped into the problem's exact input set)
    is a counterexample of ``problem``; see the module docstring."""
    box, e0 = problem.inner, None
    x64 = np.asarray(x, dtype=np.float64).reshape(-1)
    if box is None and problem.near is not None:
        # no float64 point in the exact set (an input fixed at a decimal such as 0.1): ``x``
        # clipped into ``near`` stands for the exact points within ``e0`` of it (the float
        # hull's width on the coordinates with no float64 point), decided in float64 alone
        box = problem.near.box
        e0 = np.where(problem.near.hull, np.nextafter(box.upper - box.lower, np.inf), 0.0)
    if box is None:
        return PointCheck(False, x64, np.full(problem.spec.n_outputs, np.nan), np.inf, 0.0, "outside")
    if x64.size != box.size or not np.all(np.isfinite(x64)):
        return PointCheck(False, x64, np.full(problem.spec.n_outputs, np.nan), np.inf, 0.0, "undecided")
    x64 = np.clip(x64, box.lower, box.upper)
    with np.errstate(over="ignore", invalid="ignore"):
        y, ey = _forward_with_error(problem.network, x64, e0)
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
        return PointCheck(True, x64, y, margin, err_at_margin, "float" if e0 is None else "near")
    if safe_all:
        return PointCheck(False, x64, y, margin, err_at_margin, "float" if e0 is None else "near")
    if e0 is not None:  # (the exact points are not dyadic: no exact evaluation of them here)
        return PointCheck(False, x64, y, margin, err_at_margin, "undecided")
    y_exact = _exact_forward(problem.network, x64, max_exact_weights)
    if y_exact is None:
        return PointCheck(False, x64, y, margin, err_at_margin, "undecided")
    unsafe, exact_margin = spec.exact_unsafe(y_exact)
    try:
        margin = float(exact_margin)
    except OverflowError:
        margin = math.inf if exact_margin > 0 else -math.inf
    return PointCheck(bool(unsafe), x64, y, margin, 0.0, "exact")
