"""The layers of the :class:`~gpuopt.network.Network` IR, each a frozen dataclass acting on one sample.

Notation, used across gpuopt: a sample has a per-sample shape such as ``(784,)`` or ``(3, 32, 32)``;
batches are batch-first, ``(batch, *shape)``. Axes named by a layer (``Concat.axis``,
``Slice.axis``, ``Transpose.perm``, ``Pad.pads``) count the per-sample axes from 0. Weights follow
the torch orientation:

* ``Dense``: ``y = W x + b`` with ``W`` of shape ``(out, in)``;
* ``Conv2d``: torch's ``conv2d`` (cross-correlation) with weight ``(c_out, c_in, kh, kw)``,
  pads ``(top, left, bottom, right)``, NCHW layout;
* ``ConvTranspose2d``: torch's ``conv_transpose2d``, weight ``(c_in, c_out, kh, kw)``;
* ``Flatten`` and ``Reshape``: row-major, as torch and ONNX; on flattened samples both are the
  identity;
* ``ElementwiseAffine``: ``y = x * scale + shift`` with ``scale``/``shift`` broadcast to the
  layer's input shape (input normalisation, an unfused BatchNorm);
* ``ReLU``: ``y = max(x, 0)``; ``MaxPool2d``: ``y_o = max_{i in window(o)} x_i`` over the
  window's positions inside the image (padding never wins);
* ``AvgPool2d``: ``y_o = (1/n_o) sum_{i in window(o)} x_i`` with ``n_o`` the window size, or
  the number of its positions inside the image when ``count_include_pad`` is False;
* ``Add``: the sum of its input tensors (residual connections); ``Concat``: its inputs side by
  side along ``axis``;
* ``Pad``: constant padding; ``Slice``, ``Gather`` and ``Transpose``: selections and
  permutations of entries.

Every layer but ``ReLU`` and ``MaxPool2d`` is affine. :meth:`operator` gives its exact map on
flattened samples, one sparse matrix per input plus a bias vector (:class:`LinearMap`); entries
are exactly the stored parameters, except where the real map has entries that float64 cannot hold
(``1/9`` in a 3x3 average), which are rounded to nearest and bounded in ``matrix_errors``.
Selections (``Reshape``, ``Transpose``, ``Pad``, ``Slice``, ``Gather``, ``Concat``) are built by
running the layer on a tensor of entry indices, so their matrices are exactly what the forward
pass does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from .errors import InvalidInputError

__all__ = [
    "Dense", "Conv2d", "ConvTranspose2d", "ReLU", "Flatten", "Reshape", "ElementwiseAffine", "MaxPool2d",
    "AvgPool2d", "Add", "Concat", "Pad", "Slice", "Gather", "Transpose", "Layer", "LinearMap",
]


def _frozen_array(a, name: str, ndim: int | None = None) -> np.ndarray:
    arr = np.array(a, dtype=np.float64, copy=True)
    if ndim is not None and arr.ndim != ndim:
        raise InvalidInputError(f"`{name}` must have {ndim} dimensions, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"`{name}` contains NaN or infinite values")
    arr.setflags(write=False)
    return arr


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _ints(values, name: str, count: int | None, minimum: int) -> tuple[int, ...]:
    """``values`` as ``count`` (any number if None) Python ints ``>= minimum``, or
    InvalidInputError naming ``name``."""
    what = f"`{name}` must be {'a sequence of' if count is None else count} integers >= {minimum}, got {values!r}"
    try:
        items = tuple(values)
    except TypeError:
        raise InvalidInputError(what) from None
    if (count is not None and len(items) != count) or not all(_is_int(v) for v in items):
        raise InvalidInputError(what)
    out = tuple(int(v) for v in items)
    if min(out, default=minimum) < minimum:
        raise InvalidInputError(what)
    return out


def _check_windows(layer, name: str, shape):
    """Refuses a pooling geometry with a window that holds padding only (its max is undefined,
    its average over the image 0/0)."""
    if not (pool_windows(layer, shape) >= 0).any(axis=1).all():
        raise InvalidInputError(f"{name} padding {layer.padding} leaves a window with no position inside the "
                                f"input {shape}")


def _axis(axis, rank: int, name: str) -> int:
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool) or not 0 <= int(axis) < rank:
        raise InvalidInputError(f"`{name}` must be a per-sample axis in [0, {rank}), got {axis!r}")
    return int(axis)


@dataclass(frozen=True)
class LinearMap:
    """``y = sum_i matrices[i] @ x_i + bias`` on flattened samples (scipy CSR matrices ``(n_out,
    n_i)``). ``matrix_errors`` is ``None`` or one CSR matrix per input bounding ``|entry - exact
    entry|`` where the exact map's entries are not float64 numbers; ``selection`` is True when
    every row reads at most one input entry with coefficient exactly 1 (composing with it is exact)."""

    matrices: tuple
    bias: np.ndarray
    matrix_errors: tuple | None = None
    selection: bool = False
    conv: "ConvGeometry | None" = None


@dataclass(frozen=True, eq=False)
class ConvGeometry:
    """A matrix that is exactly the convolution (no bias, groups=1) with ``weight`` (float64
    ``(c_out, c_in, kh, kw)``), ``stride``, ``padding`` (top, left, bottom, right) and ``dilation``
    on flattened NCHW samples of shape ``in_shape`` (giving ``out_shape``): the bound passes can
    then multiply by it with a convolution instead of a sparse product."""

    weight: np.ndarray
    stride: tuple
    padding: tuple
    dilation: tuple
    in_shape: tuple
    out_shape: tuple


class _LayerBase:
    """Shared defaults: one input, no parameters, affine unless said otherwise."""

    n_inputs = 1  # None: any number >= 1
    linear = True

    def params(self) -> tuple:
        """The numpy arrays the torch forward uses (cast once per dtype/device by the Network)."""
        return ()

    def operator(self, *shapes) -> LinearMap | None:
        """The exact affine map on flattened samples (None for a non-affine layer)."""
        return _selection_operator(self, shapes)

    def select(self, *xs: torch.Tensor) -> torch.Tensor:
        """The layer as a pure selection of input entries, zero where it creates entries."""
        return self.apply((), *xs)


def _selection_operator(layer, shapes) -> LinearMap:
    """The 0/1 matrices of a selection layer: it is run on tensors holding ``1 + global index``
    of every input entry (exact in float64), and each output entry names the input entry it
    copies (0 for a created entry, which gets the layer's fill value as bias)."""
    sizes = [math.prod(s) for s in shapes]
    offsets = np.cumsum([0] + sizes)
    xs = [torch.arange(o + 1, o + n + 1, dtype=torch.float64).reshape(1, *s)
          for o, n, s in zip(offsets, sizes, shapes)]
    with torch.no_grad():
        idx = layer.select(*xs).reshape(-1).round().to(torch.int64).numpy()
    n_out = idx.size
    rows = np.flatnonzero(idx > 0)
    src = idx[rows] - 1
    mats = []
    for k, n in enumerate(sizes):
        keep = (src >= offsets[k]) & (src < offsets[k] + n)
        mats.append(sp.csr_matrix((np.ones(int(keep.sum())), (rows[keep], src[keep] - offsets[k])), shape=(n_out, n)))
    bias = np.zeros(n_out)
    bias[idx == 0] = getattr(layer, "value", 0.0)
    return LinearMap(tuple(mats), bias, None, True)


@dataclass(frozen=True, eq=False)
class Dense(_LayerBase):
    """``y = W x + b``; ``weight`` is ``(out, in)``, ``bias`` is ``(out,)``."""

    weight: np.ndarray
    bias: np.ndarray

    def __post_init__(self):
        w = _frozen_array(self.weight, "Dense.weight", 2)
        b = _frozen_array(self.bias, "Dense.bias", 1)
        if b.shape[0] != w.shape[0]:
            raise InvalidInputError(
                f"`Dense.bias` must have {w.shape[0]} entries to match weight {w.shape}, got {b.shape[0]}"
            )
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "bias", b)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if input_shape != (self.weight.shape[1],):
            raise InvalidInputError(
                f"Dense layer expects input shape ({self.weight.shape[1]},), got {input_shape}"
            )
        return (self.weight.shape[0],)

    def params(self):
        return (self.weight, self.bias)

    def apply(self, p, x):
        return F.linear(x, p[0], p[1])

    def operator(self, shape):
        return LinearMap((sp.csr_matrix(self.weight),), np.asarray(self.bias))


@dataclass(frozen=True, eq=False)
class Conv2d(_LayerBase):
    """2-D convolution (torch semantics, groups=1); pads are ``(top, left, bottom, right)``."""

    weight: np.ndarray
    bias: np.ndarray
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)

    def __post_init__(self):
        w = _frozen_array(self.weight, "Conv2d.weight", 4)
        b = _frozen_array(self.bias, "Conv2d.bias", 1)
        if b.shape[0] != w.shape[0]:
            raise InvalidInputError(
                f"`Conv2d.bias` must have {w.shape[0]} entries to match weight {w.shape}, got {b.shape[0]}"
            )
        stride = tuple(int(s) for s in self.stride)
        padding = tuple(int(p) for p in self.padding)
        dilation = tuple(int(d) for d in self.dilation)
        if len(stride) != 2 or min(stride) < 1:
            raise InvalidInputError(f"`Conv2d.stride` must be two positive integers, got {self.stride}")
        if len(padding) != 4 or min(padding) < 0:
            raise InvalidInputError(
                f"`Conv2d.padding` must be four non-negative integers (top, left, bottom, right), got {self.padding}"
            )
        if len(dilation) != 2 or min(dilation) < 1:
            raise InvalidInputError(f"`Conv2d.dilation` must be two positive integers, got {self.dilation}")
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "bias", b)
        object.__setattr__(self, "stride", stride)
        object.__setattr__(self, "padding", padding)
        object.__setattr__(self, "dilation", dilation)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        c_out, c_in, kh, kw = self.weight.shape
        if len(input_shape) != 3 or input_shape[0] != c_in:
            raise InvalidInputError(f"Conv2d layer expects input shape ({c_in}, H, W), got {input_shape}")
        _, h, w = input_shape
        pt, pl, pb, pr = self.padding
        ho = (h + pt + pb - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        wo = (w + pl + pr - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        if ho < 1 or wo < 1:
            raise InvalidInputError(f"Conv2d kernel {kh}x{kw} does not fit input {input_shape}")
        return (c_out, ho, wo)

    def params(self):
        return (self.weight, self.bias)

    def apply(self, p, x):
        pt, pl, pb, pr = self.padding
        if pt == pb and pl == pr:
            return F.conv2d(x, p[0], p[1], stride=self.stride, padding=(pt, pl), dilation=self.dilation)
        return F.conv2d(F.pad(x, (pl, pr, pt, pb)), p[0], p[1], stride=self.stride, dilation=self.dilation)

    def operator(self, shape):
        out = self.output_shape(shape)
        geometry = ConvGeometry(self.weight, self.stride, self.padding, self.dilation, tuple(shape), tuple(out))
        return LinearMap((_conv_as_sparse(self, shape),), np.repeat(self.bias, out[1] * out[2]), conv=geometry)


@dataclass(frozen=True, eq=False)
class ReLU(_LayerBase):
    """``y = max(x, 0)`` elementwise."""

    linear = False

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return input_shape

    def apply(self, p, x):
        return torch.relu(x)

    def operator(self, *shapes):
        return None


class _Smooth(_LayerBase):
    """An elementwise (or along-the-last-axis) map that is not piecewise linear: a network with it
    gets the attack alone (:class:`~gpuopt.errors.NotPiecewiseLinearError`); ``lipschitz`` bounds
    how much it moves an input error in the max-norm (the layer-wise check uses it)."""

    linear = False
    lipschitz = 1.0

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return input_shape

    def operator(self, *shapes):
        return None


@dataclass(frozen=True, eq=False)
class Sigmoid(_Smooth):
    """``y = 1 / (1 + exp(-x))`` elementwise; 1/4-Lipschitz."""

    lipschitz = 0.25

    def apply(self, p, x):
        return torch.sigmoid(x)


@dataclass(frozen=True, eq=False)
class Tanh(_Smooth):
    """``y = tanh(x)`` elementwise; 1-Lipschitz."""

    def apply(self, p, x):
        return torch.tanh(x)


@dataclass(frozen=True, eq=False)
class Softmax(_Smooth):
    """``y_i = exp(x_i) / sum_j exp(x_j)`` along the last per-sample axis; 1/2-Lipschitz in the
    max-norm (row ``i`` of its Jacobian sums to ``2 y_i (1 - y_i) <= 1/2`` in absolute value)."""

    lipschitz = 0.5

    def apply(self, p, x):
        return torch.softmax(x, dim=-1)


@dataclass(frozen=True, eq=False)
class LogSoftmax(_Smooth):
    """``y_i = x_i - log sum_j exp(x_j)`` along the last per-sample axis; 2-Lipschitz in the
    max-norm (row ``i`` of its Jacobian is ``e_i - softmax(x)``, of absolute sum ``2 (1 - y_i')``
    with ``y_i'`` the softmax entry)."""

    lipschitz = 2.0

    def apply(self, p, x):
        return torch.log_softmax(x, dim=-1)


#: layers that are not piecewise linear
SMOOTH_TYPES = (Sigmoid, Tanh, Softmax, LogSoftmax)


@dataclass(frozen=True, eq=False)
class Flatten(_LayerBase):
    """Row-major flattening of the per-sample tensor (the identity on flattened samples)."""

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (math.prod(input_shape),)

    def apply(self, p, x):
        return x.reshape(x.shape[0], -1)


@dataclass(frozen=True, eq=False)
class ElementwiseAffine(_LayerBase):
    """``y = x * scale + shift``, ``scale`` and ``shift`` broadcast to the input shape."""

    scale: np.ndarray
    shift: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "scale", _frozen_array(self.scale, "ElementwiseAffine.scale"))
        object.__setattr__(self, "shift", _frozen_array(self.shift, "ElementwiseAffine.shift"))

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        for name, arr in (("scale", self.scale), ("shift", self.shift)):
            try:
                out = np.broadcast_shapes(arr.shape, input_shape)
            except ValueError:
                out = None
            if out != tuple(input_shape):
                raise InvalidInputError(
                    f"ElementwiseAffine.{name} of shape {arr.shape} does not broadcast to input shape {input_shape}"
                )
        return input_shape

    def params(self):
        return (self.scale, self.shift)

    def apply(self, p, x):
        return x * p[0] + p[1]

    def operator(self, shape):
        s = np.broadcast_to(self.scale, shape).reshape(-1)
        return LinearMap((sp.diags(s, format="csr"),), np.broadcast_to(self.shift, shape).reshape(-1).copy())



def _conv_as_sparse(layer: Conv2d, input_shape: tuple[int, int, int]) -> sp.csr_matrix:
    """The convolution (without bias) as a sparse matrix on flattened NCHW samples.

    Built exactly from index bookkeeping: an image holding ``index + 1`` in every pixel is padded
    with zeros and unfolded, which lists for each output location the input index each kernel
    tap reads (0 means padding).
    """
    c_in, h, w = input_shape
    c_out, _, kh, kw = layer.weight.shape
    _, ho, wo = layer.output_shape(input_shape)
    idx = torch.arange(1, c_in * h * w + 1, dtype=torch.float64).reshape(1, c_in, h, w)
    pt, pl, pb, pr = layer.padding
    idx = F.pad(idx, (pl, pr, pt, pb))
    cols = F.unfold(idx, (kh, kw), dilation=layer.dilation, stride=layer.stride)[0]  # (c_in*kh*kw, L)
    cols = cols.round().to(torch.int64).numpy()  # exact small integers
    n_taps, n_loc = cols.shape
    wflat = layer.weight.reshape(c_out, n_taps)  # tap order matches unfold: (c_in, kh, kw)
    rows = (np.arange(c_out)[:, None, None] * n_loc + np.arange(n_loc)[None, None, :])
    rows = np.broadcast_to(rows, (c_out, n_taps, n_loc))
    colb = np.broadcast_to(cols[None], (c_out, n_taps, n_loc))
    vals = np.broadcast_to(wflat[:, :, None], (c_out, n_taps, n_loc))
    keep = (colb > 0) & (vals != 0)
    mat = sp.coo_matrix(
        (vals[keep], (rows[keep], colb[keep] - 1)), shape=(c_out * ho * wo, c_in * h * w)
    )
    return mat.tocsr()




def _pool_params(kernel, stride, padding, dilation, name: str):
    kernel = _ints(kernel, f"{name}.kernel", 2, 1)
    stride = _ints(stride, f"{name}.stride", 2, 1)
    padding = _ints(padding, f"{name}.padding", 4, 0)
    dilation = _ints(dilation, f"{name}.dilation", 2, 1)
    return kernel, stride, padding, dilation


def _pool_output_shape(layer, name: str, shape) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise InvalidInputError(f"{name} expects input shape (C, H, W), got {shape}")
    c, h, w = shape
    (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = layer.kernel, layer.stride, layer.padding, layer.dilation
    ho = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    if ho < 1 or wo < 1:
        raise InvalidInputError(f"{name} kernel {kh}x{kw} does not fit input {shape}")
    return (c, ho, wo)


def pool_windows(layer, shape) -> np.ndarray:
    """``(n_out, kh*kw)`` flattened input indices read by each output of a pooling layer (row-major
    (C, H, W) order on both sides), ``-1`` for a padding position."""
    c, h, w = shape
    idx = torch.arange(1, c * h * w + 1, dtype=torch.float64).reshape(c, 1, h, w)
    pt, pl, pb, pr = layer.padding
    idx = F.pad(idx, (pl, pr, pt, pb))
    cols = F.unfold(idx, layer.kernel, dilation=layer.dilation, stride=layer.stride)  # (c, k, L)
    cols = cols.round().to(torch.int64).numpy() - 1
    return np.ascontiguousarray(cols.transpose(0, 2, 1).reshape(-1, cols.shape[1]))


@dataclass(frozen=True, eq=False)
class MaxPool2d(_LayerBase):
    """2-D max pooling; pads ``(top, left, bottom, right)`` are never selected (as in torch/ONNX)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    linear = False

    def __post_init__(self):
        k, s, p, d = _pool_params(self.kernel, self.stride, self.padding, self.dilation, "MaxPool2d")
        for name, v in (("kernel", k), ("stride", s), ("padding", p), ("dilation", d)):
            object.__setattr__(self, name, v)

    def output_shape(self, shape):
        out = _pool_output_shape(self, "MaxPool2d", shape)
        _check_windows(self, "MaxPool2d", shape)
        return out

    def apply(self, p, x):
        pt, pl, pb, pr = self.padding
        if any(self.padding):
            x = F.pad(x, (pl, pr, pt, pb), value=-math.inf)
        return F.max_pool2d(x, self.kernel, self.stride, dilation=self.dilation)

    def operator(self, *shapes):
        return None


@dataclass(frozen=True, eq=False)
class AvgPool2d(_LayerBase):
    """2-D average pooling; pads ``(top, left, bottom, right)`` are zeros, counted in the divisor
    when ``count_include_pad`` (ONNX's ``count_include_pad=1``, torch's default)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    count_include_pad: bool = True
    dilation = (1, 1)  # not a field: ONNX AveragePool's dilations are not supported

    def __post_init__(self):
        k, s, p, _ = _pool_params(self.kernel, self.stride, self.padding, (1, 1), "AvgPool2d")
        for name, v in (("kernel", k), ("stride", s), ("padding", p)):
            object.__setattr__(self, name, v)
        object.__setattr__(self, "count_include_pad", bool(self.count_include_pad))

    def output_shape(self, shape):
        out = _pool_output_shape(self, "AvgPool2d", shape)
        if not self.count_include_pad:
            _check_windows(self, "AvgPool2d", shape)
        return out

    def _counts(self, shape) -> np.ndarray:
        win = pool_windows(self, shape)
        if self.count_include_pad:
            return np.full(win.shape[0], float(win.shape[1]))
        return (win >= 0).sum(axis=1).astype(np.float64)

    def apply(self, p, x):
        pt, pl, pb, pr = self.padding
        shape = tuple(x.shape[1:])
        s = F.avg_pool2d(F.pad(x, (pl, pr, pt, pb)), self.kernel, self.stride, divisor_override=1)  # window sums
        counts = torch.tensor(self._counts(shape), dtype=x.dtype, device=x.device).reshape(s.shape[1:])
        return s / counts

    def operator(self, shape):
        win = pool_windows(self, shape)
        counts = self._counts(shape)
        recip = 1.0 / counts
        exact = (recip * counts == 1.0) & (np.frexp(counts)[0] == 0.5)  # 1/n is a float64 iff n = 2^k
        rows = np.repeat(np.arange(win.shape[0]), win.shape[1])
        cols = win.reshape(-1)
        keep = cols >= 0
        n_in = math.prod(shape)
        vals = np.repeat(recip, win.shape[1])[keep]
        mat = sp.csr_matrix((vals, (rows[keep], cols[keep])), shape=(win.shape[0], n_in))
        errors = None
        if not exact.all():
            err = np.repeat(np.where(exact, 0.0, np.spacing(recip) / 2), win.shape[1])[keep]
            errors = (sp.csr_matrix((err, (rows[keep], cols[keep])), shape=(win.shape[0], n_in)),)
        return LinearMap((mat,), np.zeros(win.shape[0]), errors)


@dataclass(frozen=True, eq=False)
class ConvTranspose2d(_LayerBase):
    """Transposed 2-D convolution (torch semantics, groups=1): weight ``(c_in, c_out, kh, kw)``;
    input pixel ``(i, j)`` adds ``w[:, :, a, b]`` at output ``(i s_h + a d_h - p_top, j s_w + b d_w -
    p_left)``; the output has ``(H - 1) s_h - p_top - p_bottom + d_h (kh - 1) + 1 + output_padding_h``
    rows (likewise columns)."""

    weight: np.ndarray
    bias: np.ndarray
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    output_padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)

    def __post_init__(self):
        w = _frozen_array(self.weight, "ConvTranspose2d.weight", 4)
        b = _frozen_array(self.bias, "ConvTranspose2d.bias", 1)
        if b.shape[0] != w.shape[1]:
            raise InvalidInputError(f"`ConvTranspose2d.bias` must have {w.shape[1]} entries to match weight {w.shape}")
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "bias", b)
        object.__setattr__(self, "stride", _ints(self.stride, "ConvTranspose2d.stride", 2, 1))
        object.__setattr__(self, "padding", _ints(self.padding, "ConvTranspose2d.padding", 4, 0))
        object.__setattr__(self, "output_padding", _ints(self.output_padding, "ConvTranspose2d.output_padding", 2, 0))
        object.__setattr__(self, "dilation", _ints(self.dilation, "ConvTranspose2d.dilation", 2, 1))

    def output_shape(self, shape):
        c_in, c_out, kh, kw = self.weight.shape
        if len(shape) != 3 or shape[0] != c_in:
            raise InvalidInputError(f"ConvTranspose2d layer expects input shape ({c_in}, H, W), got {shape}")
        pt, pl, pb, pr = self.padding
        ho = (shape[1] - 1) * self.stride[0] - pt - pb + self.dilation[0] * (kh - 1) + 1 + self.output_padding[0]
        wo = (shape[2] - 1) * self.stride[1] - pl - pr + self.dilation[1] * (kw - 1) + 1 + self.output_padding[1]
        if ho < 1 or wo < 1:
            raise InvalidInputError(f"ConvTranspose2d padding {self.padding} leaves no output for input {shape}")
        return (c_out, ho, wo)

    def params(self):
        return (self.weight, self.bias)

    def apply(self, p, x):
        c_out, ho, wo = self.output_shape(tuple(x.shape[1:]))
        full = F.conv_transpose2d(x, p[0], None, stride=self.stride, dilation=self.dilation)
        pt, pl = self.padding[0], self.padding[1]
        extra_h = max(0, pt + ho - full.shape[2])
        extra_w = max(0, pl + wo - full.shape[3])
        if extra_h or extra_w:
            full = F.pad(full, (0, extra_w, 0, extra_h))
        return full[:, :, pt:pt + ho, pl:pl + wo] + p[1].reshape(1, -1, 1, 1)

    def operator(self, shape):
        c_in, c_out, kh, kw = self.weight.shape
        _, h, w = shape
        _, ho, wo = self.output_shape(shape)
        ci, i, j, co, a, b = np.meshgrid(np.arange(c_in), np.arange(h), np.arange(w), np.arange(c_out),
                                         np.arange(kh), np.arange(kw), indexing="ij")
        oi = i * self.stride[0] + a * self.dilation[0] - self.padding[0]
        oj = j * self.stride[1] + b * self.dilation[1] - self.padding[1]
        vals = self.weight[ci, co, a, b]
        keep = (oi >= 0) & (oi < ho) & (oj >= 0) & (oj < wo) & (vals != 0)
        rows = (co * ho + oi) * wo + oj
        cols = (ci * h + i) * w + j
        # each (output, input) pair is reached by one tap at most (a tap index follows from the
        # output position), so building the matrix sums no duplicates: entries are exactly weights
        mat = sp.coo_matrix((vals[keep], (rows[keep], cols[keep])), shape=(c_out * ho * wo, c_in * h * w)).tocsr()
        return LinearMap((mat,), np.repeat(self.bias, ho * wo))


@dataclass(frozen=True, eq=False)
class Reshape(_LayerBase):
    """Row-major reshape of the per-sample tensor to ``shape`` (the identity on flattened samples)."""

    shape: tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "shape", _ints(self.shape, "Reshape.shape", None, 1))

    def output_shape(self, shape):
        if math.prod(shape) != math.prod(self.shape):
            raise InvalidInputError(f"Reshape to {self.shape} does not fit input shape {shape}")
        return self.shape

    def apply(self, p, x):
        return x.reshape(x.shape[0], *self.shape)


@dataclass(frozen=True, eq=False)
class Transpose(_LayerBase):
    """Permutes the per-sample axes: output axis ``k`` is input axis ``perm[k]``."""

    perm: tuple[int, ...]

    def __post_init__(self):
        perm = _ints(self.perm, "Transpose.perm", None, 0)
        if sorted(perm) != list(range(len(perm))):
            raise InvalidInputError(f"`Transpose.perm` must be a permutation of 0..{len(perm) - 1}, got {self.perm!r}")
        object.__setattr__(self, "perm", perm)

    def output_shape(self, shape):
        if len(shape) != len(self.perm):
            raise InvalidInputError(f"Transpose perm {self.perm} does not fit input shape {shape}")
        return tuple(shape[p] for p in self.perm)

    def apply(self, p, x):
        return x.permute(0, *(q + 1 for q in self.perm))


@dataclass(frozen=True, eq=False)
class Pad(_LayerBase):
    """Constant padding: ``pads = (begin_0, ..., begin_{r-1}, end_0, ..., end_{r-1})`` entries of
    ``value`` before and after each per-sample axis (ONNX order)."""

    pads: tuple[int, ...]
    value: float = 0.0

    def __post_init__(self):
        pads = _ints(self.pads, "Pad.pads", None, 0)
        if len(pads) % 2 or not pads:
            raise InvalidInputError(f"`Pad.pads` must list a begin and an end per axis, got {self.pads!r}")
        value = float(self.value)
        if not math.isfinite(value):
            raise InvalidInputError(f"`Pad.value` must be finite, got {self.value!r}")
        object.__setattr__(self, "pads", pads)
        object.__setattr__(self, "value", value)

    def output_shape(self, shape):
        r = len(self.pads) // 2
        if len(shape) != r:
            raise InvalidInputError(f"Pad with {r} axes does not fit input shape {shape}")
        return tuple(d + self.pads[k] + self.pads[k + r] for k, d in enumerate(shape))

    def _torch_pads(self):
        r = len(self.pads) // 2
        out = []
        for k in reversed(range(r)):
            out += [self.pads[k], self.pads[k + r]]
        return tuple(out)

    def apply(self, p, x):
        return F.pad(x, self._torch_pads(), value=self.value)

    def select(self, x):
        return F.pad(x, self._torch_pads(), value=0.0)


@dataclass(frozen=True, eq=False)
class Slice(_LayerBase):
    """``x[..., start:stop:step, ...]`` along per-sample ``axis`` (``0 <= start < stop``, ``step >= 1``)."""

    axis: int
    start: int
    stop: int
    step: int = 1

    def __post_init__(self):
        start, stop, step = _ints((self.start, self.stop, self.step), "Slice start/stop/step", 3, 0)
        if step < 1 or stop <= start:
            raise InvalidInputError(f"Slice needs step >= 1 and start < stop, got {self.start}:{self.stop}:{self.step}")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "stop", stop)
        object.__setattr__(self, "step", step)

    def output_shape(self, shape):
        axis = _axis(self.axis, len(shape), "Slice.axis")
        if self.stop > shape[axis]:
            raise InvalidInputError(f"Slice {self.start}:{self.stop} exceeds axis {axis} of size {shape[axis]}")
        out = list(shape)
        out[axis] = len(range(self.start, self.stop, self.step))
        return tuple(out)

    def apply(self, p, x):
        index = [slice(None)] * x.dim()
        index[self.axis + 1] = slice(self.start, self.stop, self.step)
        return x[tuple(index)]


@dataclass(frozen=True, eq=False)
class Gather(_LayerBase):
    """Entries ``indices`` along per-sample ``axis``: an int removes the axis (``x[..., i, ...]``),
    a tuple keeps it (``index_select``)."""

    axis: int
    indices: Union[int, tuple]

    def __post_init__(self):
        if _is_int(self.indices):
            object.__setattr__(self, "indices", int(self.indices))
        else:
            idx = _ints(self.indices, "Gather.indices", None, 0)
            if not idx:
                raise InvalidInputError("`Gather.indices` must not be empty")
            object.__setattr__(self, "indices", idx)

    def output_shape(self, shape):
        axis = _axis(self.axis, len(shape), "Gather.axis")
        idx = (self.indices,) if isinstance(self.indices, int) else self.indices
        if min(idx) < 0 or max(idx) >= shape[axis]:
            raise InvalidInputError(f"Gather indices {self.indices} out of range for axis {axis} of size {shape[axis]}")
        if isinstance(self.indices, int):
            out = shape[:axis] + shape[axis + 1:]
            if not out:
                return (1,)
            return tuple(out)
        return shape[:axis] + (len(self.indices),) + shape[axis + 1:]

    def apply(self, p, x):
        if isinstance(self.indices, int):
            y = x.select(self.axis + 1, self.indices)
            return y.reshape(x.shape[0], 1) if y.dim() == 1 else y
        return x.index_select(self.axis + 1, torch.tensor(self.indices, device=x.device))


@dataclass(frozen=True, eq=False)
class Add(_LayerBase):
    """The sum of ``n_inputs`` tensors of one shape (a residual connection)."""

    n_inputs: int = 2

    def __post_init__(self):
        if not _is_int(self.n_inputs) or self.n_inputs < 2:
            raise InvalidInputError(f"`Add.n_inputs` must be an integer >= 2, got {self.n_inputs!r}")
        object.__setattr__(self, "n_inputs", int(self.n_inputs))

    def output_shape(self, *shapes):
        if any(tuple(s) != tuple(shapes[0]) for s in shapes):
            raise InvalidInputError(f"Add needs inputs of one shape, got {', '.join(map(str, shapes))}")
        return tuple(shapes[0])

    def apply(self, p, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out

    def operator(self, *shapes):
        n = math.prod(shapes[0])
        eye = sp.identity(n, format="csr", dtype=np.float64)
        return LinearMap(tuple(eye for _ in shapes), np.zeros(n))


@dataclass(frozen=True, eq=False)
class Concat(_LayerBase):
    """Its inputs side by side along per-sample ``axis`` (every other axis equal)."""

    axis: int
    n_inputs: int = 2

    def __post_init__(self):
        if not _is_int(self.n_inputs) or self.n_inputs < 1:
            raise InvalidInputError(f"`Concat.n_inputs` must be an integer >= 1, got {self.n_inputs!r}")
        object.__setattr__(self, "n_inputs", int(self.n_inputs))

    def output_shape(self, *shapes):
        axis = _axis(self.axis, len(shapes[0]), "Concat.axis")
        rest = [tuple(s[:axis]) + tuple(s[axis + 1:]) for s in shapes]
        if any(len(s) != len(shapes[0]) for s in shapes) or any(r != rest[0] for r in rest):
            raise InvalidInputError(f"Concat along axis {axis} needs matching other axes, got {', '.join(map(str, shapes))}")
        out = list(shapes[0])
        out[axis] = sum(s[axis] for s in shapes)
        return tuple(out)

    def apply(self, p, *xs):
        return torch.cat(xs, dim=self.axis + 1)


Layer = Union[Dense, Conv2d, ConvTranspose2d, ReLU, Flatten, Reshape, ElementwiseAffine, MaxPool2d, AvgPool2d,
              Add, Concat, Pad, Slice, Gather, Transpose]
LAYER_TYPES = (Dense, Conv2d, ConvTranspose2d, ReLU, Flatten, Reshape, ElementwiseAffine, MaxPool2d, AvgPool2d,
               Add, Concat, Pad, Slice, Gather, Transpose, Sigmoid, Tanh, Softmax, LogSoftmax)
#: the layer types of the original chains, for which IBP walks the layers (every other network is
#: bounded on its affine blocks)
CHAIN_TYPES = (Dense, Conv2d, ReLU, Flatten, ElementwiseAffine)
