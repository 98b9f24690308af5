"""Lowering a graph network to steps and to affine blocks.

**Steps.** :func:`network_steps` rewrites a :class:`~gpuopt.network.Network` as a list of
primitive steps in topological order, each ``affine`` (``v = sum_i M_i v_{in_i} + c`` with exact
sparse ``M_i``; see :meth:`gpuopt.layers.LinearMap`) or ``relu`` (``v = max(v_in, 0)``). ``Flatten``
and ``Reshape`` are the identity on flattened samples and add no step. A max-pooling layer becomes a
tree of ReLUs, using ``max(a, b) = b + relu(a - b)`` exactly: its windows are gathered (padding
positions replaced by a copy of a position inside, which changes no maximum), then halved round
by round, so a window of ``K`` positions costs ``ceil(log2 K)`` ReLU layers and ``K - 1`` ReLUs.
The counterexample check evaluates the steps, and the MILP and bound stages see their blocks.

**Blocks.** Give every step a *level*: the input is at level 0, an affine step at the highest
level of its inputs, a ReLU one above its input. :func:`lower` turns the steps into
``A_0, act, A_1, ..., act, A_L`` where the state after ``k`` activations holds every ReLU of level
``k`` and, passed through unchanged (``AffineBlock.passthrough``), every value of a lower level
that a step of level ``>= k`` still reads (a skip connection's carried tensor). Each value is
represented as an affine function of the current state (a sparse matrix and a vector), so affine
steps compose into the block that feeds the next activation, exactly as consecutive affine layers
of a chain always have. The composition rounds in float64; :func:`gpuopt.check.parameter_deviation`
bounds the effect.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .errors import InvalidInputError, NetworkTooLargeError, NotPiecewiseLinearError
from .layers import SMOOTH_TYPES, Conv2d, Dense, ElementwiseAffine, Flatten, MaxPool2d, ReLU, Reshape, pool_windows

__all__ = ["Step", "network_steps", "lower", "lowered_nonzeros", "max_nonzeros", "check_lowering_size"]


@dataclass(frozen=True, eq=False)
class Step:
    """One primitive step (see the module docstring). ``inputs`` are step indices (``-1``: the
    network input); for an affine step ``matrices`` has one CSR matrix per input, ``bias`` the
    vector; ``errors`` is ``None`` or ``(per-input CSR bounds on |M_i - M_i exact| (or None),
    bound on |c - c exact| (or None))``; ``selection`` says composing with the step is exact."""

    kind: str
    inputs: tuple
    size: int
    matrices: tuple = ()
    bias: np.ndarray | None = None
    errors: tuple | None = None
    selection: bool = False
    conv: object = None  # the layers.ConvGeometry of a step that is one convolution


def _error_operator(layer, err, shape):
    """``(M error, c error)`` on flattened samples for a layer's ``param_errors`` pair."""
    if isinstance(layer, Dense):
        fake = Dense(err[0], err[1])
    elif isinstance(layer, Conv2d):
        fake = Conv2d(err[0], err[1], layer.stride, layer.padding, layer.dilation)
    elif isinstance(layer, ElementwiseAffine):
        fake = ElementwiseAffine(err[0], err[1])
    else:  # pragma: no cover - _param_errors_iv accepts only these
        raise TypeError(type(layer).__name__)
    lm = fake.operator(shape)
    return lm.matrices[0], lm.bias


def _maxpool_steps(steps: list, src: int, layer: MaxPool2d, shape) -> int:
    """Appends the ReLU tree of a max-pooling layer reading step ``src``; returns its output step."""
    win = pool_windows(layer, shape)  # (n_out, K), -1 for padding
    n_out, K = win.shape
    n_in = math.prod(shape)
    first_valid = win[np.arange(n_out), np.argmax(win >= 0, axis=1)]
    win = np.where(win >= 0, win, first_valid[:, None])
    # gather: slot (o, j) -> row o*K + j
    rows = np.arange(n_out * K)
    gather = sp.csr_matrix((np.ones(n_out * K), (rows, win.reshape(-1))), shape=(n_out * K, n_in))
    steps.append(Step("affine", (src,), n_out * K, (gather,), np.zeros(n_out * K), None, True))
    cur, width = len(steps) - 1, K
    while width > 1:
        pairs, odd = width // 2, width % 2
        new_width = pairs + odd
        o = np.arange(n_out)[:, None]
        a_cols = (o * width + 2 * np.arange(pairs)[None, :]).reshape(-1)
        b_cols = (o * width + 2 * np.arange(pairs)[None, :] + 1).reshape(-1)
        n_pairs = n_out * pairs
        diff = sp.csr_matrix((np.concatenate([np.ones(n_pairs), -np.ones(n_pairs)]),
                              (np.tile(np.arange(n_pairs), 2), np.concatenate([a_cols, b_cols]))),
                             shape=(n_pairs, n_out * width))
        steps.append(Step("affine", (cur,), n_pairs, (diff,), np.zeros(n_pairs)))
        d = len(steps) - 1
        steps.append(Step("relu", (d,), n_pairs))
        r = len(steps) - 1
        # B: the b of every pair and the odd slot, in the new layout (o, new_width)
        keep_cols = np.concatenate([b_cols.reshape(n_out, pairs),
                                    (o * width + width - 1)[:, :odd]], axis=1).reshape(-1)
        n_new = n_out * new_width
        keep = sp.csr_matrix((np.ones(n_new), (np.arange(n_new), keep_cols)), shape=(n_new, n_out * width))
        steps.append(Step("affine", (cur,), n_new, (keep,), np.zeros(n_new), None, True))
        b = len(steps) - 1
        # new = B + E relu(a - b), E putting pair p of output o at slot (o, p)
        e_rows = (o * new_width + np.arange(pairs)[None, :]).reshape(-1)
        embed = sp.csr_matrix((np.ones(n_pairs), (e_rows, np.arange(n_pairs))), shape=(n_new, n_pairs))
        eye = sp.identity(n_new, format="csr", dtype=np.float64)
        steps.append(Step("affine", (b, r), n_new, (eye, embed), np.zeros(n_new)))
        cur, width = len(steps) - 1, new_width
    return cur


#: the memory one (estimated) nonzero of the linear form costs at the peak of building it and
#: running the pipeline on it (values, indices, a convolution's intermediate index arrays, the
#: copies of CSR/CSC conversions): `gpuopt verify` peaked at 4.8 GB on a 4-layer conv net over
#: 3x112x112 inputs with 7.6e7 estimated nonzeros (63 bytes each), with room to spare here
BYTES_PER_NONZERO = 100


def _memory_bytes() -> int:
    """The machine's physical memory (0 when unknown)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def max_nonzeros() -> int:
    """The most nonzeros a network's linear form may have: half the physical memory at
    :data:`BYTES_PER_NONZERO` each (``GPUOPT_MAX_NONZEROS`` overrides it)."""
    env = os.environ.get("GPUOPT_MAX_NONZEROS")
    if env:
        try:
            return int(float(env))
        except (ValueError, OverflowError):
            raise InvalidInputError(f"GPUOPT_MAX_NONZEROS must be a number of nonzeros, got {env!r}") from None
    mem = _memory_bytes()
    return mem // (2 * BYTES_PER_NONZERO) if mem else 10 ** 9


def layer_nonzeros(layer, shapes) -> int:
    """An estimate of the nonzeros of ``layer``'s matrix on inputs of ``shapes``, from the shapes
    alone (a convolution: one per output and kernel tap; a selection: one per output)."""
    out = math.prod(layer.output_shape(*shapes))
    if isinstance(layer, (Flatten, Reshape, ReLU)):
        return 0
    if isinstance(layer, Dense):
        return int(layer.weight.size)
    if isinstance(layer, Conv2d):
        return out * int(math.prod(layer.weight.shape[1:]))
    if isinstance(layer, MaxPool2d):  # a tree of ReLUs over the gathered windows
        return 3 * out * int(math.prod(layer.kernel))
    weight = getattr(layer, "weight", None)
    if weight is not None:  # a transposed convolution: each input position feeds c_out * kh * kw outputs
        return math.prod(shapes[0]) * int(math.prod(weight.shape[1:]))
    kernel = getattr(layer, "kernel", None)  # average pooling: a tap per output; else a selection or sum
    return out * (int(math.prod(kernel)) if kernel is not None else len(shapes))


def lowered_nonzeros(network) -> int:
    """The estimated nonzeros of the network's linear form (:func:`layer_nonzeros`, summed)."""
    return sum(layer_nonzeros(layer, network.input_shapes(i)) for i, layer in enumerate(network.layers))


def check_lowering_size(network) -> None:
    """Raises :class:`~gpuopt.errors.NotPiecewiseLinearError` when a layer is not piecewise linear,
    and :class:`~gpuopt.errors.NetworkTooLargeError` when the linear form would need more than
    :func:`max_nonzeros` nonzeros."""
    for i, layer in enumerate(network.layers):
        if isinstance(layer, SMOOTH_TYPES):
            raise NotPiecewiseLinearError(
                f"layer {i} ({type(layer).__name__}) is not piecewise linear: the network has no exact linear form, "
                "so CROWN, splitting, MILP and the exact counterexample check cannot run on it (interval bounds and the "
                "attack do)")
    n, limit = lowered_nonzeros(network), max_nonzeros()
    if n > limit:
        raise NetworkTooLargeError(
            f"the network's exact linear form needs about {n:.3g} nonzeros (~{n * BYTES_PER_NONZERO / 2 ** 30:.0f} GiB "
            f"at its peak), more than this machine's limit of {limit:.3g} (half its memory; GPUOPT_MAX_NONZEROS "
            "sets it): bounds, splitting, MILP and the exact counterexample check cannot run on it")


def network_steps(network) -> tuple[tuple[Step, ...], int]:
    """The network's primitive steps and the index of the output step (cached); refused with
    :class:`~gpuopt.errors.NetworkTooLargeError` above :func:`max_nonzeros` (see there)."""
    cache = network._param_cache
    if "steps" in cache:
        return cache["steps"]
    check_lowering_size(network)
    steps: list[Step] = []
    ref: dict[int, int] = {-1: -1}  # layer -> step holding its output
    errors = network.param_errors or (None,) * len(network.layers)
    for i, (layer, ins) in enumerate(zip(network.layers, network.inputs)):
        srcs = tuple(ref[j] for j in ins)
        shapes = network.input_shapes(i)
        size = math.prod(network.output_shapes[i])
        if isinstance(layer, (Flatten, Reshape)):
            ref[i] = srcs[0]
            continue
        if isinstance(layer, ReLU):
            steps.append(Step("relu", srcs, size))
        elif isinstance(layer, MaxPool2d):
            ref[i] = _maxpool_steps(steps, srcs[0], layer, shapes[0])
            continue
        else:
            lm = layer.operator(*shapes)
            errs = None
            if lm.matrix_errors is not None:
                errs = (lm.matrix_errors, None)
            if errors[i] is not None:
                em, ec = _error_operator(layer, errors[i], shapes[0])
                errs = ((em,), ec) if errs is None else ((errs[0][0] + em,), ec)
            steps.append(Step("affine", srcs, size, lm.matrices, np.asarray(lm.bias, dtype=np.float64), errs,
                              lm.selection, lm.conv))
        ref[i] = len(steps) - 1
    out = ref[len(network.layers) - 1]
    cache["steps"] = (tuple(steps), out)
    return cache["steps"]


def _levels(steps) -> list[int]:
    level = []
    lv = lambda j: 0 if j < 0 else level[j]  # noqa: E731
    for st in steps:
        level.append(lv(st.inputs[0]) + 1 if st.kind == "relu" else max(lv(j) for j in st.inputs))
    return level


def lower(network) -> list:
    """The affine blocks ``A_0, ..., A_L`` of ``network`` (see the module docstring)."""
    from .network import AffineBlock

    steps, out = network_steps(network)
    level = _levels(steps)
    lv = lambda j: 0 if j < 0 else level[j]  # noqa: E731
    size = lambda j: network.input_size if j < 0 else steps[j].size  # noqa: E731
    # the last level at which each value is read (a ReLU reads its input at the input's level)
    last_read = {out: lv(out)}
    for s, st in enumerate(steps):
        for j in st.inputs:
            at = lv(j) if st.kind == "relu" else level[s]
            last_read[j] = max(last_read.get(j, -1), at)
    n_levels = lv(out)
    by_level: list[list[int]] = [[] for _ in range(n_levels + 1)]
    for s in range(len(steps)):
        if level[s] <= n_levels and s in last_read:
            by_level[level[s]].append(s)

    # the steps whose composed value is exactly their own convolution of the whole current state
    # (a chain's convolution layer), so that the block they feed keeps the convolution's geometry
    conv_of: dict = {}

    def compose(s: int, expr: dict):
        st = steps[s]
        if st.conv is not None and len(st.inputs) == 1:
            X = expr[st.inputs[0]][0]
            if (isinstance(X, _Selection) and X.n_state == X.columns.size
                    and np.array_equal(X.columns, np.arange(X.n_state))):
                conv_of[s] = st.conv
        mat, bias = None, st.bias.copy()
        for M, j in zip(st.matrices, st.inputs):
            Xj, cj = expr[j]
            if isinstance(Xj, _Selection):  # M @ X for X selecting state columns: re-index M's columns
                part = sp.csr_matrix((M.data, Xj.columns[M.indices], M.indptr), shape=(M.shape[0], Xj.n_state))
            else:
                part = (M @ Xj).tocsr()
                bias = bias + M @ cj
            mat = part if mat is None else (mat + part).tocsr()
        return mat, bias

    n0 = network.input_size
    expr = {-1: (_Selection(np.arange(n0), n0), None)}
    for s in by_level[0]:
        if steps[s].kind == "affine":
            expr[s] = compose(s, expr)
    blocks = []
    for k in range(n_levels):
        relus = [s for s in by_level[k + 1] if steps[s].kind == "relu"]
        carry = [j for j in sorted(expr) if lv(j) <= k and last_read.get(j, -1) >= k + 1]
        parts = [expr[steps[s].inputs[0]] for s in relus] + [expr[j] for j in carry]
        mat = sp.vstack([p[0].matrix() if isinstance(p[0], _Selection) else p[0] for p in parts], format="csr")
        bias = np.concatenate([np.zeros(p[0].columns.size) if isinstance(p[0], _Selection) else p[1] for p in parts])
        mask = np.concatenate([np.zeros(steps[s].size, dtype=bool) for s in relus]
                              + [np.ones(size(j), dtype=bool) for j in carry])
        conv = conv_of.get(steps[relus[0]].inputs[0]) if len(relus) == 1 and not carry else None
        blocks.append(AffineBlock(mat, bias, mask if mask.any() else None, conv))
        n_state = mask.size
        new_expr, offset = {}, 0
        for j in relus + carry:
            n = size(j)
            new_expr[j] = (_Selection(np.arange(offset, offset + n), n_state), None)
            offset += n
        expr = new_expr
        for s in by_level[k + 1]:
            if steps[s].kind == "affine":
                expr[s] = compose(s, expr)
    mat, bias = expr[out]
    if isinstance(mat, _Selection):
        mat, bias = mat.matrix(), np.zeros(mat.columns.size)
    blocks.append(AffineBlock(mat.tocsr(), np.asarray(bias, dtype=np.float64), None, conv_of.get(out)))
    return blocks


@dataclass(frozen=True, eq=False)
class _Selection:
    """The value ``state[columns]`` (no bias): a value read straight from the current state."""

    columns: np.ndarray
    n_state: int

    def matrix(self) -> sp.csr_matrix:
        n = self.columns.size
        return sp.csr_matrix((np.ones(n), self.columns, np.arange(n + 1)), shape=(n, self.n_state))
