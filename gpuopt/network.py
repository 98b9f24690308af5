"""Network IR: a frozen sequence of layers acting on one sample.

Notation, used across gpuopt: a sample ``x`` has the per-sample shape ``network.input_shape``
(for example ``(784,)`` or ``(3, 32, 32)``); batches are batch-first, ``(batch, *input_shape)``.
Weights follow the torch orientation, stated once here:

* ``Dense``: ``y = W x + b`` with ``W`` of shape ``(out, in)``;
* ``Conv2d``: torch's ``conv2d`` (cross-correlation) with weight ``(c_out, c_in, kh, kw)``,
  pads ``(top, left, bottom, right)``, NCHW layout;
* ``Flatten``: row-major (C, H, W) -> C*H*W, as torch and ONNX do;
* ``ElementwiseAffine``: ``y = x * scale + shift`` with ``scale``/``shift`` broadcast to the
  layer's input shape (input normalisation, an unfused BatchNorm);
* ``ReLU``: ``y = max(x, 0)``.

Parameters are stored as read-only float64 numpy arrays; :meth:`Network.forward` casts them to the
dtype and device of its input (float32 on a GPU for search, float64 on the CPU for decisions).
For bound propagation and MILP encoding, :meth:`Network.affine_blocks` rewrites the network as
``A_0, ReLU, A_1, ReLU, ..., A_L`` where every ``A_k(z) = M_k z + c_k`` is one sparse matrix.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from .errors import InvalidInputError, UnsupportedLayerError
from .regions import _real_array

__all__ = [
    "Dense",
    "Conv2d",
    "ReLU",
    "Flatten",
    "ElementwiseAffine",
    "Layer",
    "AffineBlock",
    "LinearOp",
    "Network",
    "from_torch",
]


def _frozen_array(a, name: str, ndim: int | None = None) -> np.ndarray:
    arr = np.array(a, dtype=np.float64, copy=True)
    if ndim is not None and arr.ndim != ndim:
        raise InvalidInputError(f"`{name}` must have {ndim} dimensions, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"`{name}` contains NaN or infinite values")
    arr.setflags(write=False)
    return arr


def _param_errors_iv(param_errors, layers) -> tuple | None:
    """Canonical ``param_errors``: ``None`` unless some entry is a pair with a non-zero error."""
    if param_errors is None:
        return None
    param_errors = tuple(param_errors)
    if len(param_errors) != len(layers):
        raise InvalidInputError(f"`param_errors` must have one entry per layer ({len(layers)}), got {len(param_errors)}")
    out = []
    for i, (layer, pe) in enumerate(zip(layers, param_errors)):
        if pe is None:
            out.append(None)
            continue
        if not isinstance(layer, (Dense, Conv2d, ElementwiseAffine)) or len(pe) != 2:
            raise InvalidInputError(f"`param_errors[{i}]` must be None or a pair for an affine layer")
        first, second = (layer.weight, layer.bias) if not isinstance(layer, ElementwiseAffine) else (layer.scale, layer.shift)
        e1 = np.broadcast_to(np.abs(np.asarray(pe[0], dtype=np.float64)), first.shape).copy()
        e2 = np.broadcast_to(np.abs(np.asarray(pe[1], dtype=np.float64)), second.shape).copy()
        if not (np.all(np.isfinite(e1)) and np.all(np.isfinite(e2))):
            raise InvalidInputError(f"`param_errors[{i}]` must be finite")
        out.append((e1, e2) if (e1.any() or e2.any()) else None)
    return tuple(out) if any(p is not None for p in out) else None


@dataclass(frozen=True, eq=False)
class Dense:
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


@dataclass(frozen=True, eq=False)
class Conv2d:
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


@dataclass(frozen=True, eq=False)
class ReLU:
    """``y = max(x, 0)`` elementwise."""

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return input_shape


@dataclass(frozen=True, eq=False)
class Flatten:
    """Row-major flattening of the per-sample tensor."""

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (math.prod(input_shape),)


@dataclass(frozen=True, eq=False)
class ElementwiseAffine:
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


Layer = Union[Dense, Conv2d, ReLU, Flatten, ElementwiseAffine]
_LAYER_TYPES = (Dense, Conv2d, ReLU, Flatten, ElementwiseAffine)


@dataclass(frozen=True, eq=False)
class AffineBlock:
    """``z -> matrix @ z + bias`` on flattened samples; ``matrix`` is scipy CSR ``(out, in)``."""

    matrix: sp.csr_matrix
    bias: np.ndarray


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


class LinearOp:
    """The matrix ``M`` (shape ``(n_out, n_in)``) of an affine block as torch tensors, stored dense
    or, when at most ``sparse_density`` of it is non-zero (convolutions), as a sparse CSR copy of
    ``M^T``. :meth:`rmatmul` computes ``A @ M`` for batched row vectors ``A`` ``(..., n_out)``."""

    sparse_density = 0.1

    def __init__(self, matrix: sp.csr_matrix, bias: np.ndarray, device, dtype):
        self.shape = matrix.shape
        self.bias = torch.tensor(bias, dtype=dtype, device=device)
        density = matrix.nnz / max(1, matrix.shape[0] * matrix.shape[1])
        if density <= self.sparse_density and matrix.shape[0] * matrix.shape[1] >= 1 << 16:
            mt = matrix.T.tocsr()
            mt.sort_indices()
            self.dense = None
            with warnings.catch_warnings():  # torch flags sparse CSR as beta; scoped, not global
                warnings.simplefilter("ignore", UserWarning)
                self.sparse_t = torch.sparse_csr_tensor(
                    torch.tensor(mt.indptr, dtype=torch.int64), torch.tensor(mt.indices, dtype=torch.int64),
                    torch.tensor(mt.data, dtype=dtype), size=mt.shape, device=device,
                    check_invariants=True)
                am = abs(matrix).tocsr()
                am.sort_indices()
                self.abs_matrix = torch.sparse_csr_tensor(
                    torch.tensor(am.indptr, dtype=torch.int64), torch.tensor(am.indices, dtype=torch.int64),
                    torch.tensor(am.data, dtype=dtype), size=am.shape, device=device,
                    check_invariants=True)
        else:
            self.dense = torch.tensor(matrix.toarray(), dtype=dtype, device=device)
            self.sparse_t = None
            self.abs_matrix = self.dense.abs()

    def abs_matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``|M| v`` for a batch of non-negative vectors ``v`` ``(B, n_in)``; returns ``(B, n_out)``."""
        return (self.abs_matrix @ v.T).T

    def rmatmul(self, A: torch.Tensor) -> torch.Tensor:
        if self.dense is not None:
            return A @ self.dense
        lead = A.shape[:-1]
        flat = A.reshape(-1, A.shape[-1])
        return (self.sparse_t @ flat.T).T.reshape(*lead, self.shape[1])


class Network:
    """An immutable feed-forward ReLU network on samples of shape ``input_shape``.

    Build it with ``Network(layers, input_shape)``, :func:`from_torch`, or
    :func:`gpuopt.io.onnx.from_onnx`. Shapes are checked on construction.
    """

    def __init__(self, layers: Sequence[Layer], input_shape: Sequence[int], *, param_errors=None):
        layers = tuple(layers)
        if not layers:
            raise InvalidInputError("`layers` must contain at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, _LAYER_TYPES):
                raise UnsupportedLayerError(
                    f"layer {i} has unsupported type {type(layer).__name__}", op_type=type(layer).__name__
                )
        shape = tuple(int(s) for s in input_shape)
        if not shape or min(shape) < 1:
            raise InvalidInputError(f"`input_shape` must be a non-empty tuple of positive sizes, got {input_shape}")
        shapes = [shape]
        for layer in layers:
            shapes.append(tuple(layer.output_shape(shapes[-1])))
        if len(shapes[-1]) != 1:
            raise InvalidInputError(
                f"the network output must be a vector per sample, got shape {shapes[-1]}; add a Flatten"
            )
        self._layers = layers
        self._shapes = tuple(shapes)
        self._param_cache: dict = {}
        self._param_errors = _param_errors_iv(param_errors, layers)

    # ------------------------------------------------------------------ structure
    @property
    def layers(self) -> tuple[Layer, ...]:
        return self._layers

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._shapes[0]

    @property
    def input_size(self) -> int:
        return math.prod(self._shapes[0])

    @property
    def output_size(self) -> int:
        return self._shapes[-1][0]

    @property
    def layer_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Per-sample shapes: entry ``i`` is the input shape of layer ``i``; the last is the output."""
        return self._shapes

    @property
    def n_relus(self) -> int:
        return sum(math.prod(self._shapes[i]) for i, l in enumerate(self._layers) if isinstance(l, ReLU))

    def __repr__(self) -> str:
        names = ", ".join(type(l).__name__ for l in self._layers)
        return f"Network(input_shape={self.input_shape}, layers=[{names}])"

    @property
    def param_errors(self) -> tuple | None:
        """Per layer, ``None`` or a pair of arrays bounding how far the stored parameters (weight and
        bias, or scale and shift) lie from the exact ones of the source model, where an importer
        had to round (folding ``Div``, ``Add`` chains or BatchNorm into a neighbouring layer);
        ``None`` when every parameter is exact."""
        return self._param_errors

    def __getstate__(self):
        return {"layers": self._layers, "input_shape": self.input_shape, "param_errors": self._param_errors}

    def __setstate__(self, state):
        self.__init__(state["layers"], state["input_shape"], param_errors=state.get("param_errors"))

    # ------------------------------------------------------------------ forward
    def _params(self, device: torch.device, dtype: torch.dtype) -> list:
        key = (str(device), dtype)
        if key not in self._param_cache:
            params = []
            for layer in self._layers:
                if isinstance(layer, (Dense, Conv2d)):
                    params.append(
                        (
                            torch.tensor(layer.weight, dtype=dtype, device=device),
                            torch.tensor(layer.bias, dtype=dtype, device=device),
                        )
                    )
                elif isinstance(layer, ElementwiseAffine):
                    params.append(
                        (
                            torch.tensor(layer.scale, dtype=dtype, device=device),
                            torch.tensor(layer.shift, dtype=dtype, device=device),
                        )
                    )
                else:
                    params.append(None)
            self._param_cache[key] = params
        return self._param_cache[key]

    def canonical_input(self, x) -> torch.Tensor:
        """``x`` as a float tensor of shape ``(batch, *input_shape)``; flattened inputs are accepted."""
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(np.asarray(x, dtype=np.float64))
        if not torch.is_floating_point(x):
            x = x.to(torch.float64)
        if x.dim() >= 1 and tuple(x.shape[1:]) == self.input_shape:
            return x
        if x.dim() == 2 and x.shape[1] == self.input_size:
            return x.reshape(x.shape[0], *self.input_shape)
        raise InvalidInputError(
            f"`x` must have shape (batch, {', '.join(map(str, self.input_shape))}) "
            f"or (batch, {self.input_size}), got {tuple(x.shape)}"
        )

    def forward(self, x, *, return_pattern: bool = False):
        """Outputs ``(batch, n_out)`` in the dtype/device of ``x``.

        With ``return_pattern=True`` also returns the list of boolean activation patterns
        ``pre-activation > 0``, one ``(batch, n_k)`` tensor per ReLU layer.
        """
        h = self.canonical_input(x)
        params = self._params(h.device, h.dtype)
        patterns = []
        for layer, p in zip(self._layers, params):
            if isinstance(layer, Dense):
                h = F.linear(h, p[0], p[1])
            elif isinstance(layer, Conv2d):
                pt, pl, pb, pr = layer.padding
                if pt == pb and pl == pr:
                    h = F.conv2d(h, p[0], p[1], stride=layer.stride, padding=(pt, pl), dilation=layer.dilation)
                else:
                    h = F.conv2d(F.pad(h, (pl, pr, pt, pb)), p[0], p[1], stride=layer.stride, dilation=layer.dilation)
            elif isinstance(layer, ReLU):
                if return_pattern:
                    patterns.append((h > 0).reshape(h.shape[0], -1))
                h = torch.relu(h)
            elif isinstance(layer, Flatten):
                h = h.reshape(h.shape[0], -1)
            elif isinstance(layer, ElementwiseAffine):
                h = h * p[0] + p[1]
        return (h, patterns) if return_pattern else h

    __call__ = forward

    def forward64(self, x) -> np.ndarray:
        """Reference forward pass in float64 on the CPU; returns a numpy array ``(batch, n_out)``."""
        xt = torch.as_tensor(np.asarray(x, dtype=np.float64))
        with torch.no_grad():
            return self.forward(xt).numpy()

    # ------------------------------------------------------------------ affine view
    def linear_ops(self, device, dtype) -> list[LinearOp]:
        """:meth:`affine_blocks` as :class:`LinearOp` (dense or sparse) on ``device`` in ``dtype``
        (cached: the network is immutable)."""
        key = ("ops", str(device), dtype)
        if key not in self._param_cache:
            self._param_cache[key] = [LinearOp(b.matrix, b.bias, device, dtype) for b in self.affine_blocks()]
        return self._param_cache[key]

    def affine_blocks(self) -> list[AffineBlock]:
        """The network as ``A_0, ReLU, A_1, ..., ReLU, A_L`` on flattened vectors (float64).

        Consecutive affine layers are composed into one sparse matrix; two ReLUs in a row get an
        identity block between them, and a trailing ReLU is followed by an identity block.
        """
        blocks: list[AffineBlock] = []
        n0 = self.input_size
        mat = sp.identity(n0, format="csr", dtype=np.float64)
        bias = np.zeros(n0)
        for i, layer in enumerate(self._layers):
            in_shape = self._shapes[i]
            n_in = math.prod(in_shape)
            if isinstance(layer, ReLU):
                blocks.append(AffineBlock(mat.tocsr(), bias))
                mat = sp.identity(n_in, format="csr", dtype=np.float64)
                bias = np.zeros(n_in)
                continue
            if isinstance(layer, Flatten):
                continue
            if isinstance(layer, Dense):
                lin = sp.csr_matrix(layer.weight)
                b = layer.bias
            elif isinstance(layer, Conv2d):
                lin = _conv_as_sparse(layer, in_shape)
                out_shape = self._shapes[i + 1]
                b = np.repeat(layer.bias, out_shape[1] * out_shape[2])
            elif isinstance(layer, ElementwiseAffine):
                s = np.broadcast_to(layer.scale, in_shape).reshape(-1)
                lin = sp.diags(s, format="csr")
                b = np.broadcast_to(layer.shift, in_shape).reshape(-1).copy()
            else:  # pragma: no cover - guarded in __init__
                raise UnsupportedLayerError(f"layer {i} of type {type(layer).__name__}")
            mat = (lin @ mat).tocsr()
            bias = lin @ bias + b
        blocks.append(AffineBlock(mat.tocsr(), np.asarray(bias, dtype=np.float64)))
        return blocks


# ---------------------------------------------------------------------- torch import
def _fold_batchnorm(prev: Layer | None, bn: torch.nn.Module, shape: tuple[int, ...]):
    """Returns (replacement_for_prev or None, extra_layer or None) for an eval-mode BatchNorm."""
    mean = bn.running_mean.detach().double().numpy()
    var = bn.running_var.detach().double().numpy()
    gamma = bn.weight.detach().double().numpy() if bn.weight is not None else np.ones_like(mean)
    beta = bn.bias.detach().double().numpy() if bn.bias is not None else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + bn.eps)
    shift = beta - mean * scale
    if isinstance(prev, Dense) and len(shape) == 1:
        return Dense(prev.weight * scale[:, None], prev.bias * scale + shift), None
    if isinstance(prev, Conv2d):
        return (
            Conv2d(prev.weight * scale[:, None, None, None], prev.bias * scale + shift,
                   prev.stride, prev.padding, prev.dilation),
            None,
        )
    bshape = (len(scale),) + (1,) * (len(shape) - 1)
    return None, ElementwiseAffine(scale.reshape(bshape), shift.reshape(bshape))


def _input_shape_iv(input_shape) -> tuple[int, ...]:
    """``input_shape`` as a non-empty tuple of positive Python ints, or InvalidInputError."""
    what = f"`input_shape` must be a non-empty sequence of positive integers, got {input_shape!r}"
    if isinstance(input_shape, (str, bytes)) or input_shape is None:
        raise InvalidInputError(what)
    if isinstance(input_shape, (int, np.integer)) and not isinstance(input_shape, (bool, np.bool_)):
        input_shape = (input_shape,)
    try:
        dims = list(input_shape)
    except TypeError:
        raise InvalidInputError(what) from None
    shape = []
    for d in dims:
        if isinstance(d, torch.Tensor) and d.numel() == 1 and not d.is_floating_point() and not d.is_complex():
            d = d.item()
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)):
            raise InvalidInputError(what)
        shape.append(int(d))
    if not shape or min(shape) < 1:
        raise InvalidInputError(what)
    return tuple(shape)


def _training_submodule(model: torch.nn.Module) -> str | None:
    """The name of the first module in training mode (``""`` for ``model`` itself), or None."""
    for name, module in model.named_modules():
        if module.training:
            return name
    return None


def from_torch(model: torch.nn.Module, input_shape: Sequence[int], *, mean=None, std=None,
               allow_training_mode: bool = False) -> Network:
    """Convert an ``nn.Sequential``-style model into a :class:`Network`.

    Supported modules: Linear, Conv2d (groups=1, zero padding), ReLU, Flatten, BatchNorm1d/2d
    (eval statistics, folded into the preceding Linear/Conv2d when there is one), Identity,
    Dropout (identity at inference), and nested Sequential. ``mean``/``std`` describe an input
    normalisation ``(x - mean) / std`` that is prepended (broadcast to ``input_shape``).
    The model is read, never modified or moved.

    The Network is always the eval-mode function of the model. A model (or submodule) in
    training mode computes something else (BatchNorm uses batch statistics, Dropout is random),
    so it is refused with :class:`InvalidInputError` unless ``allow_training_mode=True``; the
    model's mode is never changed.
    """
    if not isinstance(model, torch.nn.Module):
        raise InvalidInputError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    shape = _input_shape_iv(input_shape)
    layers: list[Layer] = []
    if mean is not None or std is not None:
        m = np.zeros(()) if mean is None else _real_array(mean, "mean")
        s = np.ones(()) if std is None else _real_array(std, "std")
        if not (np.all(np.isfinite(m)) and np.all(np.isfinite(s))):
            raise InvalidInputError("`mean` and `std` must be finite")
        if np.any(s == 0):
            raise InvalidInputError("`std` must be non-zero everywhere")
        if m.ndim == 1 and len(shape) == 3:  # per-channel statistics
            m = m.reshape(-1, 1, 1)
        if s.ndim == 1 and len(shape) == 3:
            s = s.reshape(-1, 1, 1)
        layers.append(ElementwiseAffine(1.0 / s, -m / s))

    def current_shape():
        sh = shape
        for l in layers:
            sh = l.output_shape(sh)
        return sh

    def visit(module: torch.nn.Module, name: str):
        nn = torch.nn
        if isinstance(module, nn.Sequential):
            for child_name, child in module.named_children():
                visit(child, f"{name}.{child_name}" if name else child_name)
        elif isinstance(module, nn.Linear):
            b = module.bias.detach().double().numpy() if module.bias is not None else np.zeros(module.out_features)
            if len(current_shape()) != 1:
                layers.append(Flatten())
            layers.append(Dense(module.weight.detach().double().numpy(), b))
        elif isinstance(module, nn.Conv2d):
            if module.groups != 1:
                raise UnsupportedLayerError(f"module {name!r}: Conv2d with groups={module.groups}", node=name, op_type="Conv2d")
            if module.padding_mode != "zeros" or isinstance(module.padding, str):
                raise UnsupportedLayerError(
                    f"module {name!r}: Conv2d padding {module.padding!r} / mode {module.padding_mode!r}",
                    node=name, op_type="Conv2d")
            b = module.bias.detach().double().numpy() if module.bias is not None else np.zeros(module.out_channels)
            ph, pw = module.padding
            layers.append(Conv2d(module.weight.detach().double().numpy(), b, module.stride, (ph, pw, ph, pw), module.dilation))
        elif isinstance(module, nn.ReLU):
            layers.append(ReLU())
        elif isinstance(module, nn.Flatten):
            if module.start_dim != 1 or module.end_dim != -1:
                raise UnsupportedLayerError(f"module {name!r}: Flatten must flatten dims 1..-1", node=name, op_type="Flatten")
            layers.append(Flatten())
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if module.running_mean is None:
                raise UnsupportedLayerError(f"module {name!r}: BatchNorm without running statistics", node=name, op_type=type(module).__name__)
            prev = layers[-1] if layers else None
            replacement, extra = _fold_batchnorm(prev, module, current_shape())
            if replacement is not None:
                layers[-1] = replacement
            else:
                layers.append(extra)
        elif isinstance(module, (nn.Identity, nn.Dropout)):
            pass
        else:
            raise UnsupportedLayerError(
                f"module {name or '<root>'!r} of type {type(module).__name__} is not supported "
                "(supported: Linear, Conv2d, ReLU, Flatten, BatchNorm1d/2d, Identity, Dropout, Sequential)",
                node=name, op_type=type(module).__name__,
            )

    visit(model, "")
    # after the walk, so that an unsupported module (which model.eval() would not fix) is reported first
    training = _training_submodule(model)
    if training is not None and not allow_training_mode:
        where = "`model`" if training == "" else f"`model` (submodule {training!r})"
        raise InvalidInputError(
            f"{where} is in training mode (BatchNorm uses batch statistics, Dropout is random); call "
            "model.eval() first, or pass allow_training_mode=True to verify the eval-mode network"
        )
    return Network(layers, shape)
