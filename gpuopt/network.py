"""Network IR: a frozen graph of layers (:mod:`gpuopt.layers`) acting on one sample.

A network is a list of layers in topological order; layer ``i`` reads the outputs of the layers
``inputs[i]`` (``-1`` is the network input) and the last layer's output is the network's output.
A *chain* (each layer reads the one before) is the common case, and the default when ``inputs``
is not given; residual ``Add`` and ``Concat`` layers read several tensors.

Parameters are stored as read-only float64 numpy arrays; :meth:`Network.forward` casts them to the
dtype and device of its input (float32 on a GPU for search, float64 on the CPU for decisions).
For bound propagation and MILP encoding, :meth:`Network.affine_blocks` rewrites any network as
``A_0, act, A_1, act, ..., A_L`` where every ``A_k(z) = M_k z + c_k`` is one sparse matrix and
``act`` applies ReLU to some coordinates and passes the others through (the values a skip
connection carries past a ReLU layer; see :mod:`gpuopt.lowering`). For a chain no coordinate
passes through.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from .errors import InvalidInputError, UnsupportedLayerError
from .layers import (CHAIN_TYPES, LAYER_TYPES, Add, AvgPool2d, Concat, Conv2d, ConvTranspose2d, Dense,  # noqa: F401
                     ElementwiseAffine, Flatten, Gather, Layer, LogSoftmax, MaxPool2d, Pad, ReLU, Reshape, Sigmoid,
                     Slice, Softmax, Tanh, Transpose)
from .regions import _real_array

__all__ = [
    "Dense", "Conv2d", "ConvTranspose2d", "ReLU", "Flatten", "Reshape", "ElementwiseAffine", "MaxPool2d",
    "AvgPool2d", "Add", "Concat", "Pad", "Slice", "Gather", "Transpose", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Layer",
    "AffineBlock",
    "LinearOp",
    "Network", "BlockChain", "from_torch",
]


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
class AffineBlock:
    """``z -> matrix @ z + bias`` on flattened samples; ``matrix`` is scipy CSR ``(out, in)``.
    ``passthrough`` (a bool vector over the outputs, or None for none) marks the coordinates that
    the next activation passes through unchanged instead of applying ReLU (skip connections in a
    graph network; see :mod:`gpuopt.lowering`). ``conv`` (a :class:`~gpuopt.layers.ConvGeometry`,
    or None) says that ``matrix`` is exactly that convolution."""

    matrix: sp.csr_matrix
    bias: np.ndarray
    passthrough: np.ndarray | None = None
    conv: object = None


class LinearOp:
    """The matrix ``M`` (shape ``(n_out, n_in)``) of an affine block as torch tensors, stored dense
    or, when at most ``sparse_density`` of it is non-zero (convolutions), as a sparse CSR copy of
    ``M^T``. :meth:`rmatmul` computes ``A @ M`` for batched row vectors ``A`` ``(..., n_out)``.

    A large block that is exactly one convolution (``conv``, a
    :class:`~gpuopt.layers.ConvGeometry`) of density at most ``conv_density``, with at least
    ``conv_min_channels`` output channels, is multiplied by that convolution (``M v``) and its
    transpose (``A M``) instead (attribute ``conv`` set), in float64 on the CPU only: torch
    computes those by unfolding and a matrix product, the same sums of the same products in
    another order, so the rounding pads, which hold for any order of summation, still cover
    them. (cuDNN may choose Winograd, FFT or TF32 algorithms, whose errors the pads do not
    cover: on CUDA the block stays sparse.) Its sparse copies are made on first use.
    """

    sparse_density = 0.1
    #: and when it has at least this many entries (smaller ones are cheaper dense)
    sparse_min_entries = 1 << 16
    #: a convolution block is multiplied as a convolution up to this density and from this many
    #: output channels (measured on CPU, 128 rows, 3x3 kernels: ``A M`` 2-5x faster than the
    #: sparse product from 32 channels, 1.2-4x slower below; 2-7x faster than the dense product at
    #: density 0.12, slower at 0.4)
    conv_density = 0.25
    conv_min_channels = 32

    def __init__(self, matrix: sp.csr_matrix, bias: np.ndarray, device, dtype, passthrough=None, conv=None):
        self.shape = matrix.shape
        self.passthrough = None if passthrough is None else torch.tensor(passthrough, dtype=torch.bool, device=device)
        self.bias = (bias.to(device=device, dtype=dtype) if isinstance(bias, torch.Tensor)
                     else torch.tensor(bias, dtype=dtype, device=device))
        self._matrix, self._sparse = matrix, None
        self._sparse_t = self._abs_matrix = None
        self.conv = None
        density = matrix.nnz / max(1, matrix.shape[0] * matrix.shape[1])
        big = matrix.shape[0] * matrix.shape[1] >= max(1, self.sparse_min_entries)  # (an empty block: dense)
        on_cpu = torch.device(device).type == "cpu"
        if (conv is not None and dtype == torch.float64 and on_cpu and big and density <= self.conv_density
                and conv.weight.shape[0] >= self.conv_min_channels):
            self.dense = None
            self.conv = conv
            self._weight = torch.tensor(conv.weight, dtype=dtype, device=device)
            self._abs_weight = self._weight.abs()
        elif big and density <= self.sparse_density:
            self.dense = None
        else:
            self.dense = torch.tensor(matrix.toarray(), dtype=dtype, device=device)
            self._abs_matrix = self.dense.abs()

    def restrict(self, rows: np.ndarray, cols: np.ndarray, magnitudes=None) -> "LinearOp":
        """The block ``M[rows][:, cols]`` with bias ``c[rows]`` (same device and dtype; dense or
        sparse by its own size and density, without the convolution path). Its
        :attr:`abs_col_max` is this block's (an over-estimate, as its pads need). ``magnitudes =
        (full, v)`` with ``full = |M| u`` of this block and ``v = u[:, cols]``: when ``cols`` holds
        every column with an entry in ``rows``, the restricted block's ``|M| v`` is
        ``full[:, rows]``, and :meth:`abs_matvec` of that very tensor ``v`` returns it (so ``|M| u``
        is computed once for all restrictions)."""
        rows = np.asarray(rows, dtype=np.int64)
        pt = None if self.passthrough is None else self.passthrough.cpu().numpy()[rows]
        picked = torch.as_tensor(rows, device=self.bias.device)
        sub = LinearOp(self._matrix[rows][:, np.asarray(cols, dtype=np.int64)], self.bias[picked], self.bias.device,
                       self.bias.dtype, pt)
        sub._abs_col_max = self.abs_col_max
        if magnitudes is not None:
            full, part = magnitudes
            sub._given_abs = (part, full[:, picked])
        return sub

    def scipy_matrix(self, transposed: bool, absolute: bool = False) -> sp.csr_matrix:
        """``M`` (or ``M^T``, or ``|M|``) as a scipy CSR matrix in the block's dtype (cached)."""
        key = "_scipy_abs" if absolute else "_scipy_t" if transposed else "_scipy"
        if getattr(self, key, None) is None:
            m = abs(self._matrix).tocsr() if absolute else (self._matrix.T if transposed else self._matrix).tocsr()
            m = m.astype(torch.empty((), dtype=self.bias.dtype).numpy().dtype, copy=False)
            m.sort_indices()
            setattr(self, key, m)
        return getattr(self, key)

    @property
    def sparse_t(self) -> torch.Tensor | None:
        """``M^T`` as a torch sparse CSR tensor (None for a dense block)."""
        if self._sparse_t is None and self.dense is None:
            self._sparse_t = self._torch_csr(self._matrix.T, self.bias.dtype, self.bias.device)
        return self._sparse_t

    @property
    def abs_col_max(self) -> float:
        """``max_i sum_r |M_ri|``: how much a row vector's largest entry can grow through ``A M``."""
        if getattr(self, "_abs_col_max", None) is None:
            sums = abs(self._matrix).sum(axis=0)
            self._abs_col_max = float(sums.max()) if sums.size else 0.0
        return self._abs_col_max

    @property
    def abs_matrix(self) -> torch.Tensor:
        """``|M|``: dense, or sparse CSR for a sparse block."""
        if self._abs_matrix is None:
            self._abs_matrix = self._torch_csr(abs(self._matrix), self.bias.dtype, self.bias.device)
        return self._abs_matrix

    @staticmethod
    def _torch_csr(matrix, dtype, device) -> torch.Tensor:
        m = sp.csr_matrix(matrix)
        m.sort_indices()
        with warnings.catch_warnings():  # torch flags sparse CSR as beta; scoped, not global
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(
                torch.tensor(m.indptr, dtype=torch.int64), torch.tensor(m.indices, dtype=torch.int64),
                torch.tensor(m.data, dtype=dtype), size=m.shape, device=device, check_invariants=True)

    def sparse(self) -> torch.Tensor:
        """``M`` itself as a torch sparse CSR tensor (made on first use; sparse ops only)."""
        if self._sparse is None:
            self._sparse = self._torch_csr(self._matrix, self.bias.dtype, self.bias.device)
        return self._sparse

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``M v + c`` for a batch of vectors ``v`` ``(B, n_in)``; returns ``(B, n_out)``."""
        return self.linear(v) + self.bias

    def linear(self, v: torch.Tensor) -> torch.Tensor:
        """``M v`` (no bias) for a batch of vectors ``v`` ``(B, n_in)``; returns ``(B, n_out)``."""
        if self.dense is not None:
            return v @ self.dense.T
        if self.conv is not None:
            return self._convolve(v, self._weight)
        if v.device.type == "cpu" and not v.requires_grad:
            return _scipy_rows(self.scipy_matrix(transposed=False), v)
        return (self.sparse() @ v.T).T

    def abs_matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``|M| v`` for a batch of non-negative vectors ``v`` ``(B, n_in)``; returns ``(B, n_out)``,
        row-major (see :class:`_SparseRowProduct`); for a restricted block, the product given
        to :meth:`restrict` when ``v`` is the very tensor it was given for."""
        given = getattr(self, "_given_abs", None)
        if given is not None and given[0] is v:
            return given[1]
        if self.dense is not None:
            out = v @ self.abs_matrix.T
        elif self.conv is not None:
            out = self._convolve(v, self._abs_weight)
        elif v.device.type == "cpu" and not v.requires_grad:
            out = _scipy_rows(self.scipy_matrix(transposed=False, absolute=True), v)
        else:
            out = (self.abs_matrix @ v.T).T.contiguous()
        return out

    def _convolve(self, v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``W * v`` for flattened samples ``v`` ``(B, n_in)`` (the block's geometry): ``(B, n_out)``."""
        g = self.conv
        x = v.reshape(-1, *g.in_shape)
        pt, pl, pb, pr = g.padding
        if (pt, pl) != (pb, pr):
            x, pt, pl = F.pad(x, (pl, pr, pt, pb)), 0, 0
        # (explicit widths: a batch of 0 vectors, e.g. a zonotope with no symbols, reshapes too)
        return F.conv2d(x, weight, None, g.stride, (pt, pl), g.dilation).reshape(v.shape[0], self.shape[0])

    def _convolve_t(self, A: torch.Tensor) -> torch.Tensor:
        """``A M`` for rows ``A`` ``(R, n_out)``: the transposed convolution, whose output covers
        the padded input (``output_padding`` adds the rows and columns that no output reads),
        cropped to the input."""
        g = self.conv
        c_in, h, w = g.in_shape
        pt, pl, pb, pr = g.padding
        kh, kw = g.weight.shape[2:]
        (sh, sw), (dh, dw) = g.stride, g.dilation
        full_h, full_w = h + pt + pb, w + pl + pr
        extra = (full_h - ((g.out_shape[1] - 1) * sh + dh * (kh - 1) + 1),
                 full_w - ((g.out_shape[2] - 1) * sw + dw * (kw - 1) + 1))
        y = A.reshape(-1, *g.out_shape)
        if (pt, pl) == (pb, pr):
            x = F.conv_transpose2d(y, self._weight, None, g.stride, (pt, pl), extra, 1, g.dilation)
        else:
            x = F.conv_transpose2d(y, self._weight, None, g.stride, 0, extra, 1, g.dilation)
            x = x[:, :, pt:pt + h, pl:pl + w]
        return x.reshape(A.shape[0], self.shape[1])

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """``M[idx]`` ``(len(idx), n_in)``, dense (exactly ``e_idx^T M``)."""
        if self.dense is not None:
            return self.dense[idx]
        pick = torch.zeros((idx.numel(), self.shape[0]), dtype=self.bias.dtype, device=self.bias.device)
        pick[torch.arange(idx.numel(), device=pick.device), idx] = 1.0
        return self.rmatmul(pick)

    def rmatmul(self, A: torch.Tensor) -> torch.Tensor:
        if self.dense is not None:
            return A @ self.dense
        lead = A.shape[:-1]
        flat = A.reshape(-1, A.shape[-1])
        if self.conv is not None:
            return self._convolve_t(flat).reshape(*lead, self.shape[1])
        return _SparseRowProduct.apply(flat, self).reshape(*lead, self.shape[1])


class _SparseRowProduct(torch.autograd.Function):
    """``A @ M`` for rows ``A`` ``(R, n_out)`` and a sparse :class:`LinearOp`'s ``M``, with the
    gradient ``G @ M^T = (M G^T)^T`` taken through the op's CSR copy of ``M``. Torch's own gradient
    of a CSR product transposes the CSR matrix at every call (a conversion with a sort). Both
    products come out of the CSR kernel column-major; they are made row-major, since the batched
    matrix-vector products of the bound passes run about 6x slower on column-major rows."""

    @staticmethod
    def forward(ctx, flat: torch.Tensor, op: "LinearOp") -> torch.Tensor:
        ctx.op = op
        if flat.device.type == "cpu":
            return _scipy_rows(op.scipy_matrix(transposed=True), flat)
        return (op.sparse_t @ flat.T).T.contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if grad.device.type == "cpu":
            return _scipy_rows(ctx.op.scipy_matrix(transposed=False), grad), None
        return (ctx.op.sparse() @ grad.T).T.contiguous(), None


#: :func:`_scipy_rows` multiplies at most this many bytes of rows at a time
SCIPY_CHUNK_BYTES = 1 << 20


def _scipy_rows(matrix: sp.csr_matrix, rows: torch.Tensor) -> torch.Tensor:
    """``(matrix @ rows^T)^T`` on the CPU by scipy's CSR kernel, row-major: on one thread 1.2-1.8x
    faster than torch's for 8 to 64 rows of TinyYOLO's blocks (10-30 million entries), the same
    values there. The rows go in chunks of at most :data:`SCIPY_CHUNK_BYTES` (at least 16 rows):
    the kernel walks the matrix once per call and, for each entry ``(i, j)``, adds row ``j`` of
    the operand (one value per row of ``rows``) into row ``i`` of the result, so an operand past
    the caches is fetched from memory entry by entry. On sri_resnet_a's sparse blocks (3k-4k
    columns, 0.1-0.5 million entries), 512-1024 rows went 1.5-5x faster in chunks of 32-64. Each
    value is the same sum in the same order either way (the kernel sums each result entry over
    its matrix row alone)."""
    x = rows.detach().numpy()
    step = max(16, SCIPY_CHUNK_BYTES // max(1, x.itemsize * matrix.shape[1]))
    if x.shape[0] <= step:
        return torch.from_numpy(np.ascontiguousarray((matrix @ x.T).T))
    out = np.empty((x.shape[0], matrix.shape[0]), dtype=np.result_type(matrix.dtype, x.dtype))
    for at in range(0, x.shape[0], step):
        out[at:at + step] = (matrix @ x[at:at + step].T).T
    return torch.from_numpy(out)



class BlockChain:
    """A network given by its affine blocks alone, ``blocks[0], act, blocks[1], ..., act,
    blocks[-1]`` (``act``: ReLU, except on a block's ``passthrough`` coordinates): the view that
    the bounds and activation splitting take of a :class:`Network`. :meth:`Network.prefix` gives
    the sub-network from the input to one hidden layer's pre-activations."""

    def __init__(self, blocks: Sequence[AffineBlock]):
        if not blocks:
            raise InvalidInputError("a block chain needs at least one affine block")
        for i in range(1, len(blocks)):
            if blocks[i].matrix.shape[1] != blocks[i - 1].matrix.shape[0]:
                raise InvalidInputError(f"block {i} takes {blocks[i].matrix.shape[1]} inputs, but block {i - 1} "
                                        f"gives {blocks[i - 1].matrix.shape[0]}")
        self._blocks = tuple(blocks)
        self._ops = {}

    @property
    def input_size(self) -> int:
        return int(self._blocks[0].matrix.shape[1])

    @property
    def output_size(self) -> int:
        return int(self._blocks[-1].matrix.shape[0])

    @property
    def n_relus(self) -> int:
        return sum(int(b.matrix.shape[0]) for b in self._blocks[:-1])

    def affine_blocks(self) -> list[AffineBlock]:
        return list(self._blocks)

    def linear_ops(self, device, dtype) -> list[LinearOp]:
        """The blocks as :class:`LinearOp` on ``device`` in ``dtype`` (cached)."""
        key = (str(device), dtype)
        if key not in self._ops:
            self._ops[key] = [LinearOp(b.matrix, b.bias, device, dtype, b.passthrough, b.conv) for b in self._blocks]
        return self._ops[key]

    def forward64(self, x) -> np.ndarray:
        """The chain in float64 on a batch ``(B, n_in)``; returns ``(B, n_out)``."""
        h = np.array(x, dtype=np.float64).reshape(-1, self.input_size)
        for i, b in enumerate(self._blocks):
            z = (b.matrix @ h.T).T + b.bias
            if i == len(self._blocks) - 1:
                return z
            h = np.maximum(z, 0.0) if b.passthrough is None else np.where(np.asarray(b.passthrough, bool), z,
                                                                            np.maximum(z, 0.0))
        return h


class Network:
    """An immutable feed-forward ReLU network on samples of shape ``input_shape``.

    Build it with ``Network(layers, input_shape)`` (a chain), ``Network(layers, input_shape,
    inputs=...)`` (a graph: ``inputs[i]`` lists the layers whose outputs layer ``i`` reads, ``-1``
    for the network input, each earlier than ``i``), :func:`from_torch`, or
    :func:`gpuopt.io.onnx.from_onnx`. Shapes are checked on construction.
    """

    def __init__(self, layers: Sequence[Layer], input_shape: Sequence[int], *, inputs=None, param_errors=None):
        layers = tuple(layers)
        if not layers:
            raise InvalidInputError("`layers` must contain at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, LAYER_TYPES):
                raise UnsupportedLayerError(
                    f"layer {i} has unsupported type {type(layer).__name__}", op_type=type(layer).__name__
                )
        shape = tuple(int(s) for s in input_shape)
        if not shape or min(shape) < 1:
            raise InvalidInputError(f"`input_shape` must be a non-empty tuple of positive sizes, got {input_shape}")
        self._inputs = _inputs_iv(inputs, layers)
        out_shapes: list[tuple[int, ...]] = []
        for i, (layer, ins) in enumerate(zip(layers, self._inputs)):
            in_shapes = [shape if j < 0 else out_shapes[j] for j in ins]
            try:
                out_shapes.append(tuple(layer.output_shape(*in_shapes)))
            except InvalidInputError as err:
                raise InvalidInputError(f"layer {i} ({type(layer).__name__}): {err}") from None
        if len(out_shapes[-1]) != 1:
            raise InvalidInputError(
                f"the network output must be a vector per sample, got shape {out_shapes[-1]}; add a Flatten"
            )
        self._layers = layers
        self._input_shape = shape
        self._out_shapes = tuple(out_shapes)
        self._chain = all(ins == (i - 1,) for i, ins in enumerate(self._inputs))
        # after its last reader, a layer's output can be freed during the forward pass
        last_use = {}
        for i, ins in enumerate(self._inputs):
            for j in ins:
                last_use[j] = i
        self._free_after = tuple(tuple(j for j in set(ins) if last_use[j] == i) for i, ins in enumerate(self._inputs))
        self._param_cache: dict = {}
        self._param_errors = _param_errors_iv(param_errors, layers)

    # ------------------------------------------------------------------ structure
    @property
    def layers(self) -> tuple[Layer, ...]:
        return self._layers

    @property
    def inputs(self) -> tuple[tuple[int, ...], ...]:
        """Per layer, the layers whose outputs it reads (``-1``: the network input)."""
        return self._inputs

    @property
    def is_chain(self) -> bool:
        """Each layer reads the one before, and all are Dense, Conv2d, ReLU, Flatten or
        ElementwiseAffine: the layer-by-layer fast paths (IBP) apply."""
        return self._chain and all(isinstance(l, CHAIN_TYPES) for l in self._layers)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._input_shape

    @property
    def input_size(self) -> int:
        return math.prod(self._input_shape)

    @property
    def output_size(self) -> int:
        return self._out_shapes[-1][0]

    @property
    def output_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Per-sample output shape of every layer."""
        return self._out_shapes

    def input_shapes(self, i: int) -> tuple[tuple[int, ...], ...]:
        """Per-sample shapes of the tensors layer ``i`` reads."""
        return tuple(self._input_shape if j < 0 else self._out_shapes[j] for j in self._inputs[i])

    @property
    def layer_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Per-sample shapes: entry ``i`` is the (first) input shape of layer ``i``; the last is the output."""
        return tuple(self.input_shapes(i)[0] for i in range(len(self._layers))) + (self._out_shapes[-1],)

    @property
    def n_relus(self) -> int:
        """Number of ReLU units of the affine-block form (MaxPool's comparisons included)."""
        return sum(int(b.matrix.shape[0] if b.passthrough is None else (~b.passthrough).sum())
                   for b in self.affine_blocks()[:-1])

    def __repr__(self) -> str:
        names = ", ".join(type(l).__name__ for l in self._layers)
        kind = "" if self._chain else ", graph"
        return f"Network(input_shape={self.input_shape}, layers=[{names}]{kind})"

    @property
    def param_errors(self) -> tuple | None:
        """Per layer, ``None`` or a pair of arrays bounding how far the stored parameters (weight and
        bias, or scale and shift) lie from the exact ones of the source model, where an importer
        had to round (folding ``Div``, ``Add`` chains or BatchNorm into a neighbouring layer);
        ``None`` when every parameter is exact."""
        return self._param_errors

    def digest(self) -> str:
        """A SHA-256 hex digest of what the network computes: the input shape, the wiring, and each
        layer's type and fields (arrays by dtype, shape and bytes). Equal networks give equal
        digests in any process; a results file records it, so that a resumed run refuses to mix
        the records of another network."""
        import dataclasses
        import hashlib

        h = hashlib.sha256(repr((self._input_shape, self._inputs)).encode())
        for layer in self._layers:
            h.update(type(layer).__name__.encode())
            for f in dataclasses.fields(layer):
                v = getattr(layer, f.name)
                if isinstance(v, np.ndarray):
                    h.update(f"{f.name}:{v.dtype.str}{v.shape}".encode())
                    h.update(np.ascontiguousarray(v).tobytes())
                else:
                    h.update(f"{f.name}={v!r}".encode())
        return h.hexdigest()

    def __getstate__(self):
        return {"layers": self._layers, "input_shape": self.input_shape, "param_errors": self._param_errors,
                "inputs": None if self._chain else self._inputs}

    def __setstate__(self, state):
        self.__init__(state["layers"], state["input_shape"], inputs=state.get("inputs"),
                      param_errors=state.get("param_errors"))

    # ------------------------------------------------------------------ forward
    def _params(self, device: torch.device, dtype: torch.dtype) -> list:
        key = (str(device), dtype)
        if key not in self._param_cache:
            self._param_cache[key] = [tuple(torch.tensor(a, dtype=dtype, device=device) for a in layer.params())
                                      for layer in self._layers]
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
        if self._chain:
            for layer, p in zip(self._layers, params):
                if return_pattern and isinstance(layer, ReLU):
                    patterns.append((h > 0).reshape(h.shape[0], -1))
                h = layer.apply(p, h)
        else:
            values = {-1: h}
            for i, (layer, p, ins) in enumerate(zip(self._layers, params, self._inputs)):
                xs = [values[j] for j in ins]
                if return_pattern and isinstance(layer, ReLU):
                    patterns.append((xs[0] > 0).reshape(h.shape[0], -1))
                values[i] = layer.apply(p, *xs)
                for j in self._free_after[i]:
                    del values[j]
            h = values[len(self._layers) - 1]
        return (h, patterns) if return_pattern else h

    __call__ = forward

    def forward_vjp(self, x):
        """``(y, vjp)``, or ``None`` unless every layer is Dense, ReLU, Flatten or ElementwiseAffine
        in a chain: ``y`` the outputs exactly as :meth:`forward` computes them, and ``vjp(g)`` (``g``
        of ``y``'s shape) the gradient of ``(g * y).sum()`` with respect to ``x``, in the input's
        canonical shape. The backward runs the operations autograd's would (``grad @ W`` for a
        dense layer, ``threshold_backward`` for a ReLU, ``grad * scale`` for an elementwise affine
        one), so the gradient is autograd's bit for bit, without recording a graph: on ACAS Xu's
        small nets the graph's bookkeeping was most of a projected-gradient step's time."""
        if not (self._chain and all(type(layer) in (Dense, ReLU, Flatten, ElementwiseAffine)
                                    for layer in self._layers)):
            return None
        h = self.canonical_input(x)
        params = self._params(h.device, h.dtype)
        saved = []  # per layer: what its backward needs (the input's shape, or a ReLU's output)
        with torch.no_grad():
            for layer, p in zip(self._layers, params):
                shape = h.shape
                h = layer.apply(p, h)
                saved.append(h if isinstance(layer, ReLU) else shape)
        layers = list(zip(self._layers, params, saved))

        def vjp(g: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                for layer, p, keep in reversed(layers):
                    if isinstance(layer, Dense):
                        g = g.mm(p[0])
                    elif isinstance(layer, ReLU):
                        g = torch.ops.aten.threshold_backward(g, keep, 0)
                    elif isinstance(layer, Flatten):
                        g = g.reshape(keep)
                    else:  # ElementwiseAffine: mul's backward, summed back to the input's shape
                        g = g * p[0]
                        if g.shape != keep:
                            g = g.sum_to_size(keep)
            return g

        return h, vjp

    def forward64(self, x) -> np.ndarray:
        """Reference forward pass in float64 on the CPU; returns a numpy array ``(batch, n_out)``."""
        xt = torch.as_tensor(np.array(x, dtype=np.float64))  # a copy: read-only input arrays are fine
        with torch.no_grad():
            return self.forward(xt).numpy()

    # ------------------------------------------------------------------ affine view
    def linear_ops(self, device, dtype) -> list[LinearOp]:
        """:meth:`affine_blocks` as :class:`LinearOp` (dense or sparse) on ``device`` in ``dtype``
        (cached: the network is immutable)."""
        key = ("ops", str(device), dtype)
        if key not in self._param_cache:
            self._param_cache[key] = [LinearOp(b.matrix, b.bias, device, dtype, b.passthrough, b.conv)
                                      for b in self.affine_blocks()]
        return self._param_cache[key]

    def prefix(self, k: int) -> BlockChain:
        """The sub-network from the input to the pre-activations ``z_k`` of ReLU layer ``k``
        (the affine blocks ``0..k``, the activations between them), as a :class:`BlockChain`."""
        blocks = self.affine_blocks()
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < len(blocks) - 1:
            raise InvalidInputError(f"`k` must be a ReLU layer index in [0, {len(blocks) - 2}], got {k!r}")
        return BlockChain(blocks[:int(k) + 1])

    def affine_blocks(self) -> list[AffineBlock]:
        """The network as ``A_0, act, A_1, ..., act, A_L`` on flattened vectors (float64), built
        by :func:`gpuopt.lowering.lower` (cached)."""
        if "blocks" not in self._param_cache:
            from .lowering import lower

            self._param_cache["blocks"] = lower(self)
        return list(self._param_cache["blocks"])


def _inputs_iv(inputs, layers) -> tuple[tuple[int, ...], ...]:
    """Canonical ``inputs``: one tuple of earlier layer indices (or -1) per layer; a chain if None."""
    if inputs is None:
        out = tuple((i - 1,) for i in range(len(layers)))
    else:
        try:
            raw = [tuple(ins) for ins in inputs]
        except TypeError:
            raise InvalidInputError("`inputs` must be one sequence of layer indices per layer") from None
        if any(not isinstance(j, (int, np.integer)) or isinstance(j, (bool, np.bool_)) for ins in raw for j in ins):
            raise InvalidInputError(f"`inputs` must hold integer layer indices, got {inputs!r}")
        out = tuple(tuple(int(j) for j in ins) for ins in raw)
        if len(out) != len(layers):
            raise InvalidInputError(f"`inputs` must have one entry per layer ({len(layers)}), got {len(out)}")
        for i, ins in enumerate(out):
            if not ins or any(not -1 <= j < i for j in ins):
                raise InvalidInputError(f"`inputs[{i}]` must name earlier layers (or -1 for the input), got {ins}")
    for i, (layer, ins) in enumerate(zip(layers, out)):
        want = layer.n_inputs
        if len(ins) != want:
            raise InvalidInputError(f"layer {i} ({type(layer).__name__}) reads {want} tensor(s), `inputs[{i}]` names {len(ins)}")
    return out


# ---------------------------------------------------------------------- torch import
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
    """Convert a torch model into a :class:`Network` by tracing it with ``torch.fx``
    (:mod:`gpuopt.io.fx` lists what is supported: residual blocks, ``torch.cat``, pooling,
    ``view``/``flatten``, BatchNorm folded into the layer it follows). ``mean``/``std`` describe an
    input normalisation ``(x - mean) / std`` that is prepended (broadcast to ``input_shape``).
    The model is read, never modified or moved; the result is checked against the model's own
    forward pass on random inputs, and refused if they differ beyond rounding.

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

    from .io.fx import trace_layers

    layers, inputs, errors = trace_layers(model, shape, layers)
    # after the walk, so that an unsupported module (which model.eval() would not fix) is reported first
    training = _training_submodule(model)
    if training is not None and not allow_training_mode:
        where = "`model`" if training == "" else f"`model` (submodule {training!r})"
        raise InvalidInputError(
            f"{where} is in training mode (BatchNorm uses batch statistics, Dropout is random); call "
            "model.eval() first, or pass allow_training_mode=True to verify the eval-mode network"
        )
    chain = all(ins == (i - 1,) for i, ins in enumerate(inputs))
    param_errors = [errors.get(i) for i in range(len(layers))] if errors else None
    net = Network(layers, shape, inputs=None if chain else inputs, param_errors=param_errors)
    if training is None:
        _check_reproduces(model, net, normalise=layers[0] if mean is not None or std is not None else None)
    return net


def _check_reproduces(model: torch.nn.Module, net: Network, normalise=None):
    """Runs ``model`` (in its own dtype and on its own device) and ``net`` on two random inputs; a
    difference beyond float32 rounding means the trace missed something (data-dependent Python in
    ``forward``), and the conversion is refused."""
    p = next(iter(model.parameters()), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    device = p.device if p is not None else torch.device("cpu")
    x = torch.rand((2, *net.input_shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        x_model = x if normalise is None else normalise.apply(tuple(torch.tensor(a) for a in normalise.params()), x)
        ref = model(x_model.to(device=device, dtype=dtype))
        if not isinstance(ref, torch.Tensor):
            raise UnsupportedLayerError("`model` must return one tensor", op_type="output")
        ref = ref.detach().to("cpu", torch.float64).reshape(2, -1)
        ours = net.forward(x)
    if ref.shape != ours.shape:
        raise UnsupportedLayerError(f"the traced network gives outputs of shape {tuple(ours.shape)}, the model "
                                    f"{tuple(ref.shape)}", op_type="trace")
    tol = 1e-4 * (1.0 + ref.abs().max().item()) if dtype != torch.float64 else 1e-9 * (1.0 + ref.abs().max().item())
    err = (ref - ours).abs().max().item()
    if not err <= tol:
        raise UnsupportedLayerError(f"the traced network does not reproduce `model` (max difference {err:.3g}); its "
                                    "forward may depend on the data in ways tracing cannot see", op_type="trace")
