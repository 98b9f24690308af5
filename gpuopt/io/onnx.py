"""Importing ReLU networks from ONNX into the :class:`~gpuopt.network.Network` graph IR.

The graph must have one non-initializer input and one output. Nodes that do not contribute to the
graph output are ignored. The per-sample input shape is the declared input shape without its
leading batch dimension (unit dimensions are kept), so flattened VNNLIB ``X_i`` indices are the
row-major indices of the ONNX input. An input of rank 1, or whose leading dimension is fixed above
1 (``[12, 8]``), has no batch axis: the whole tensor is one sample.

Nodes may branch: ``Add``/``Sub``/``Sum`` of data tensors of one shape (residual connections) and
``Concat`` of data tensors become graph layers; ``MaxPool``, ``AveragePool``,
``GlobalAveragePool``, ``Pad`` (constant), ``Transpose`` (batch axis kept), ``Slice`` (positive
steps), ``Gather`` (a constant scalar or list of indices), ``ConvTranspose`` (``group=1``),
``Squeeze``/``Unsqueeze`` and any ``Reshape`` that keeps the batch axis are supported on the data.
An elementwise map is folded into the layer that produced its input only when that layer's output
is read by nothing else (looking through Identity-like nodes).

Mapping of the supported operators (default domain only):

* ``Gemm`` (``transA=0``, any ``alpha``/``beta``/``transB``) -> ``Dense``;
* ``MatMul`` ``x @ W`` with a constant 2-D ``W`` of shape ``(in, out)`` -> ``Dense(W.T)``; on an
  N-D tensor, on every row of the last axis: a 1x1 ``Conv2d`` over the rows (see
  :func:`~gpuopt.io.selection.rowwise_linear_layers`);
* ``Conv`` (2-D or 1-D, any strides/dilations, explicit pads or ``auto_pad``) -> ``Conv2d``: a
  grouped (or depthwise) kernel becomes one kernel that is zero between the groups, and a 1-D
  convolution of ``(C, L)`` the 2-D one of ``(C, 1, L)`` (so do 1-D ``MaxPool``/``AveragePool``/
  ``GlobalAveragePool``);
* ``Relu`` -> ``ReLU``; ``Sigmoid``, ``Tanh``, ``Softmax`` and ``LogSoftmax`` (along the last axis) ->
  ``Sigmoid``, ``Tanh``, ``Softmax``, ``LogSoftmax`` (not piecewise linear: such a network gets the
  attack alone, see :class:`~gpuopt.errors.NotPiecewiseLinearError`, unless
  :mod:`gpuopt.output_order` takes off its final one);
* ``Flatten`` (batch kept on axis 0) and ``Reshape`` to ``(batch, -1)``-like shapes -> ``Flatten``;
  a ``Reshape`` that only adds or removes unit dimensions is a no-op, any other is refused;
* ``Add``/``Sub``/``Mul``/``Div`` with one constant operand (``x / c`` but not ``c / x``),
  ``Neg`` and inference ``BatchNormalization`` -> an elementwise affine map ``x * s + t``, folded
  into the preceding ``Dense`` (any ``s``, ``t``), ``Conv2d`` (per-channel ``s``, ``t``) or
  ``ElementwiseAffine`` when the previous layer produced the current tensor, otherwise appended
  as an ``ElementwiseAffine`` (so ``MatMul`` + ``Add`` becomes one ``Dense``);
* ``Identity``, inference ``Dropout`` and a float ``Cast`` -> nothing;
* entries copied, repeated or resampled -> exact selections (``Slice``, ``Gather`` with repeated
  indices, ``Transpose``): ``Split`` (one ``Slice`` per used output; the ``split`` attribute or
  input, equal parts, or opset 18's ``num_outputs``), ``Tile`` and ``Expand`` (not along the
  batch axis), nearest-neighbour ``Resize`` (every coordinate transform but
  ``tf_crop_and_resize``, every ``nearest_mode``; the source indices computed in float32 as
  onnxruntime does) and ``Upsample``, ``DepthToSpace`` (DCR, CRD) and ``SpaceToDepth``;
* ``ReduceSum``/``ReduceMean``/``ReduceMax``/``ReduceMin`` over per-sample axes -> the reduced
  axes moved last, a ``(rest, 1, k)`` view, and ``(1, k)`` average pooling (times ``k`` for a
  sum) or max pooling (between two negations for a min);
* piecewise-linear operators -> exact graphs of ReLUs, affine maps and ``Add`` (every stage then
  treats them as it treats ReLU networks; the forms are in :mod:`gpuopt.io.piecewise`):
  ``LeakyRelu`` and ``PRelu`` (constant slopes ``a``) as ``a x + (1 - a) relu(x)`` (or
  ``x + (1 - a) relu(-x)`` for ``a > 1``); ``Abs`` as ``2 relu(x) - x``; ``Clip`` with constant
  bounds (``ReLU6``) as ``x + relu(lo - x) - relu(x - hi)``; ``HardSigmoid`` as
  ``relu(a x + b) - relu(a x + b - 1)``; ``Max``/``Min`` with constants as ``x + relu(c - x)`` and
  ``x - relu(x - c)``, and between data tensors of one shape as ``q + relu(p - q)`` and
  ``p - relu(p - q)``. A coefficient such as ``1 - a`` that float64 cannot hold exactly is
  rounded once, and its error is kept in ``param_errors`` like a fold's.

Only operators that are fixed functions of their inputs are imported. ``Dropout`` is the identity
only in inference mode: with no ``training_mode`` input or a constant False one (opset >= 12), or
with ``is_test=1`` (opsets 1-6, whose default is training). A ``Dropout`` whose ``training_mode``
is True, is not a constant, or is a graph input (which can be overridden at run time), and the
random operators (``RandomNormal``, ``RandomUniform``, their ``*Like`` forms, ``Bernoulli``,
``Multinomial``) raise :class:`~gpuopt.errors.UnsupportedLayerError` wherever they feed the
output, even on constants.

Constants are initializers and ``Constant`` nodes; ``Shape``, ``Gather``, ``Unsqueeze``,
``Squeeze``, ``Concat``, ``Cast``, ``Reshape``, ``Identity``, ``ConstantOfShape``, ``Range``,
``Expand``, ``Tile``, ``Slice``, ``Split``, ``Transpose``, ``Where``, comparisons and arithmetic
on constants are evaluated (so ``x.view(x.size(0), -1)`` exports work; ``Shape`` reports a batch of 1). Weights are
converted to float64. Folding an elementwise map into the previous layer can round (``Div`` by
3, a bias plus a shift, BatchNorm's ``gamma / sqrt(var + eps)``, Gemm's alpha and beta): each
rounding is measured exactly (TwoProduct, TwoSum) and kept, with the errors it propagates, in
:attr:`~gpuopt.network.Network.param_errors`; exact folds record nothing. Arithmetic on
constants (a weight computed in the graph) runs in the constants' own dtype, the same correctly
rounded IEEE operations ONNX Runtime performs, so those values are the model's exactly and carry
no error of ours. A non-flat output is flattened row-major. Anything else raises
:class:`~gpuopt.errors.UnsupportedLayerError` naming the node and its op type; unreadable or
malformed models raise :class:`~gpuopt.errors.InvalidInputError`.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InvalidInputError, UnsupportedLayerError
from . import piecewise
from .selection import (ONNX_NEAREST_MODES, ONNX_RESIZE_TRANSFORMS, depth_to_space_layers, onnx_resize_axis,
                        reduce_layers, rowwise_linear_layers, space_to_depth_layers)
from .folding import batchnorm_affine, fold_affine, two_prod, ungroup_kernel
from ..network import (Add, AvgPool2d, Concat, Conv2d, ConvTranspose2d, Dense, ElementwiseAffine, Flatten, Gather,
                       LogSoftmax, MaxPool2d, Network, Pad, ReLU, Reshape, Sigmoid, Slice, Softmax, Tanh, Transpose,
                       _input_shape_iv)

__all__ = ["from_onnx"]

#: the most entries a per-sample tensor (or a folded constant) may have: 2^27, 1 GiB of float64
MAX_TENSOR_ENTRIES = 1 << 27


def _load(path_or_model):
    """Returns ``(ModelProto, path or None)``; every failure becomes :class:`InvalidInputError`."""
    import onnx

    if isinstance(path_or_model, onnx.ModelProto):
        model, path = path_or_model, None
    elif isinstance(path_or_model, (str, Path)):
        path = str(path_or_model)
        if not Path(path).is_file():
            raise InvalidInputError("ONNX file not found", path=path)
        try:
            model = onnx.load(path)
        except Exception as err:  # protobuf DecodeError, missing external data, ...
            raise InvalidInputError(f"file is not a valid ONNX model: {err}", path=path) from None
    else:
        raise InvalidInputError(
            f"`path_or_model` must be a path or an onnx.ModelProto, got {type(path_or_model).__name__}"
        )
    try:
        onnx.checker.check_model(model)
    except Exception as err:
        what = "file" if path is not None else "model"
        raise InvalidInputError(f"{what} is not a valid ONNX model: {err}", path=path) from None
    return model, path


class _Importer:
    """Walks the graph once, keeping the constants and the current data tensor."""

    _FLOAT_TYPES = (1, 10, 11, 16)  # FLOAT, FLOAT16, DOUBLE, BFLOAT16
    # operators whose output is drawn at random: not a function of their inputs
    _RANDOM_OPS = frozenset(
        ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial")
    )

    def __init__(self, model, path: str | None, input_shape):
        self.model = model
        self.path = path
        self.graph = model.graph
        self.opset = next(
            (int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None
        )
        self.consts: dict[str, np.ndarray] = {}
        self.data: dict[str, tuple[int, ...]] = {}  # data tensor -> ONNX per-sample shape
        self.layers: list = []
        self.inputs: list = []  # per layer, the layers it reads (-1: the network input)
        self.cur = -1  # the layer holding the data tensor being read (-1: the network input)
        self.layer_tensor: dict = {}  # layer -> the ONNX tensor holding its output (for fold checks)
        self.batched = True  # whether ONNX tensors carry a leading batch axis (see _read_io)
        self.errors: dict = {}  # layer index -> (error of weight/scale, error of bias/shift): see _affine
        self._read_io(input_shape)

    # ------------------------------------------------------------------ helpers
    def _invalid(self, message: str) -> InvalidInputError:
        return InvalidInputError(message, path=self.path)

    def _unsupported(self, label: str, op: str, why: str = "") -> UnsupportedLayerError:
        msg = f"node {label!r} (op {op}) is not supported"
        if why:
            msg += f": {why}"
        return UnsupportedLayerError(msg, node=label, op_type=op)

    def _read_io(self, input_shape):
        from onnx import numpy_helper

        for init in self.graph.initializer:
            try:
                self.consts[init.name] = numpy_helper.to_array(init)
            except Exception as err:
                raise self._invalid(f"cannot read initializer {init.name!r}: {err}") from None
        inputs = [i for i in self.graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise self._invalid(
                f"the graph must have exactly one non-initializer input, got {len(inputs)} "
                f"({', '.join(repr(i.name) for i in inputs)})"
            )
        if len(self.graph.output) != 1:
            raise self._invalid(f"the graph must have exactly one output, got {len(self.graph.output)}")
        inp = inputs[0]
        self.input_name = inp.name
        self.output_name = self.graph.output[0].name
        ttype = inp.type.tensor_type
        if inp.type.HasField("tensor_type") and ttype.elem_type not in self._FLOAT_TYPES + (0,):
            raise self._invalid(f"input {inp.name!r} must be a floating-point tensor (elem_type {ttype.elem_type})")

        declared = None  # per-sample dims, None for unknown entries
        if ttype.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in ttype.shape.dim]
            if not dims:
                raise self._invalid(f"input {inp.name!r} is a scalar; at least one input dimension is required")
            # a rank-1 input, or one whose leading dimension is fixed above 1 (``[12, 8]``), has no
            # batch axis: the whole tensor is one sample
            if len(dims) == 1 or (dims[0] is not None and dims[0] > 1):
                self.batched = False
                declared = tuple(dims)
            else:
                declared = tuple(dims[1:])

        if input_shape is not None:
            nshape = _input_shape_iv(input_shape)
            if declared is None:
                oshape = nshape
            elif None not in declared:
                oshape = tuple(declared)
                if math.prod(oshape) != math.prod(nshape):
                    raise InvalidInputError(
                        f"`input_shape` {nshape} does not have the {math.prod(oshape)} entries of the "
                        f"declared per-sample input shape {oshape}"
                    )
            else:
                if len(declared) != len(nshape) or any(d is not None and d != n for d, n in zip(declared, nshape)):
                    raise InvalidInputError(
                        f"`input_shape` {nshape} does not match the declared per-sample input shape "
                        f"{tuple('?' if d is None else d for d in declared)}"
                    )
                oshape = nshape
        else:
            if declared is None or None in declared:
                shown = "unknown" if declared is None else tuple("?" if d is None else d for d in declared)
                raise self._invalid(
                    f"the per-sample shape of input {inp.name!r} is {shown}; pass `input_shape=`"
                )
            oshape = nshape = tuple(declared)
        self.input_shape = nshape  # the Network's input shape
        self.nshape = nshape  # current per-sample shape in the Network
        self.oshape = oshape  # current per-sample shape in ONNX (same row-major data)
        self.current = inp.name
        self.data[inp.name] = (-1, nshape, oshape)

    # ------------------------------------------------------------------ graph walk
    def run(self) -> Network:
        nodes = list(self.graph.node)
        producer = {}
        for i, node in enumerate(nodes):
            for out in node.output:
                if out:
                    producer[out] = i
        needed = set()
        stack = [self.output_name]
        seen = set()
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in producer and producer[name] not in needed:
                needed.add(producer[name])
                stack.extend(n for n in nodes[producer[name]].input if n)
        self._count_uses([nodes[i] for i in sorted(needed)])
        for i, node in enumerate(nodes):
            if i in needed:
                self._visit(node, node.name or f"<unnamed node #{i}>")

        if self.output_name in self.consts:
            raise self._invalid(f"the graph output {self.output_name!r} does not depend on the input")
        self.cur, self.nshape, self.oshape = self.data[self.output_name]
        if len(self.nshape) != 1 or self.cur < 0 or self.cur != len(self.layers) - 1:
            self._add(Flatten())  # the output layer must come last (and be a vector)
        errors = [self.errors.get(i) for i in range(len(self.layers))] if self.errors else None
        chain = all(ins == (i - 1,) for i, ins in enumerate(self.inputs))
        try:
            return Network(self.layers, self.input_shape, inputs=None if chain else self.inputs, param_errors=errors)
        except InvalidInputError as err:
            raise self._invalid(f"inconsistent network: {err}") from None

    def _visit(self, node, label: str):
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            raise self._unsupported(label, op, f"operator domain {node.domain!r}")
        attrs = self._attrs(node)
        self._check_deterministic(node, label, op, attrs)
        ins = list(node.input)
        data_ins = [n for n in ins if n and n not in self.consts]
        for n in data_ins:
            if n not in self.data:
                raise self._invalid(f"node {label!r} (op {op}) reads undefined tensor {n!r}")

        if op == "Constant":
            self.consts[node.output[0]] = self._constant_value(node, label, attrs)
            return
        if op == "Shape" and data_ins:
            full = np.array(self._full_shape(self.data[data_ins[0]][2]), dtype=np.int64)
            self.consts[node.output[0]] = full[attrs.get("start", 0): attrs.get("end", len(full))]
            return
        if not data_ins:
            value = self._fold_constant(node, label, op, attrs)
            if op == "Split":
                if len(value) != len(node.output):
                    raise self._invalid(f"node {label!r} (op Split): {len(value)} parts for {len(node.output)} outputs")
                self.consts.update((out, v) for out, v in zip(node.output, value) if out)
            else:
                self.consts[node.output[0]] = value
            return
        if len(data_ins) > 1 or op in ("Sum", "Concat"):
            handler = getattr(self, f"_multi_{op}", None)
            if handler is None:
                raise self._unsupported(label, op, f"{len(data_ins)} non-constant inputs (only Add, Sub, Sum, "
                                                   "Concat, Max and Min combine data tensors)")
            handler(node, label, attrs, data_ins)
        else:
            handler = getattr(self, f"_op_{op}", None)
            if handler is None:
                raise self._unsupported(label, op)
            self.current = data_ins[0]
            self.cur, self.nshape, self.oshape = self.data[data_ins[0]]
            before = self.cur
            if handler(node, label, attrs):
                return  # the handler registered its outputs itself (Split)
            if self.cur != before or (self.cur >= 0 and self.layer_tensor.get(self.cur) == data_ins[0]
                                      and self._uses(data_ins[0]) == 1):
                self.layer_tensor[self.cur] = node.output[0]  # the layer's output is now this tensor
        out = node.output[0]
        self.data[out] = (self.cur, self.nshape, self.oshape)
        self.current = out

    def _check_deterministic(self, node, label: str, op: str, attrs: dict):
        """Refuses nodes whose output is random (see the module docstring)."""
        if op in self._RANDOM_OPS:
            raise self._unsupported(label, op, "its output is random, not a fixed function of its inputs")
        if op != "Dropout":
            return
        why = "the output is random in training mode; export the model in inference mode (model.eval())"
        if self.opset is not None and self.opset < 7:
            if not int(attrs.get("is_test", 0)):
                raise self._unsupported(label, op, f"is_test=0 (training mode) in opset {self.opset}: {why}")
            return
        name = node.input[2] if len(node.input) > 2 else ""
        if not name:
            return
        graph_inputs = {i.name for i in self.graph.input}
        if name not in self.consts:
            raise self._unsupported(label, op, f"training_mode input {name!r} is not a constant: {why}")
        if name in graph_inputs:
            raise self._unsupported(
                label, op, f"training_mode input {name!r} is a graph input (its initializer can be "
                f"overridden at run time): {why}"
            )
        value = np.asarray(self.consts[name])
        if value.size != 1:
            raise self._invalid(
                f"node {label!r} (op Dropout): training_mode must be a scalar, got shape {value.shape}"
            )
        if bool(value.reshape(())):
            raise self._unsupported(label, op, f"training_mode is True: {why}")

    @staticmethod
    def _attrs(node) -> dict:
        from onnx import helper

        out = {}
        for a in node.attribute:
            v = helper.get_attribute_value(a)
            if isinstance(v, bytes):
                v = v.decode("utf-8", "replace")
            out[a.name] = v
        return out

    def _const(self, node, label: str, index: int, *, required: bool = True):
        """The constant input ``index`` (None when absent and not required)."""
        name = node.input[index] if index < len(node.input) else ""
        if not name:
            if required:
                raise self._invalid(f"node {label!r} (op {node.op_type}) lacks input #{index}")
            return None
        if name not in self.consts:
            raise self._unsupported(label, node.op_type, f"input #{index} ({name!r}) must be a constant")
        return self.consts[name]

    def _weight(self, node, label: str, index: int, *, required: bool = True):
        """A constant input as a finite float64 array."""
        arr = self._const(node, label, index, required=required)
        if arr is None:
            return None
        try:
            arr = np.asarray(arr, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise self._invalid(f"node {label!r} (op {node.op_type}): input #{index} is not numeric: {err}") from None
        if not np.all(np.isfinite(arr)):
            raise self._invalid(
                f"node {label!r} (op {node.op_type}): input {node.input[index]!r} contains NaN or infinite values"
            )
        return arr

    def _append(self, layer_factory, label: str, op: str):
        try:
            layer = layer_factory()
        except InvalidInputError as err:
            raise self._invalid(f"node {label!r} (op {op}): {err}") from None
        return layer

    # ------------------------------------------------------------------ constants
    def _constant_value(self, node, label: str, attrs: dict) -> np.ndarray:
        from onnx import numpy_helper

        if "value" in attrs:
            try:
                return numpy_helper.to_array(attrs["value"])
            except Exception as err:
                raise self._invalid(f"node {label!r} (op Constant): cannot read value: {err}") from None
        for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                           ("value_int", np.int64), ("value_ints", np.int64)):
            if key in attrs:
                return np.array(attrs[key], dtype=dtype)
        raise self._unsupported(label, "Constant", f"attributes {sorted(attrs)}")

    def _fold_constant(self, node, label: str, op: str, attrs: dict) -> np.ndarray:
        """Evaluates a node whose inputs are all constants."""
        from onnx import helper, numpy_helper

        vals = [self.consts[n] if n else None for n in node.input]
        try:
            if op in ("Identity", "Dropout"):
                return vals[0]
            if op == "Shape":
                full = np.array(vals[0].shape, dtype=np.int64)
                return full[attrs.get("start", 0): attrs.get("end", len(full))]
            if op == "Gather":
                return np.take(vals[0], vals[1].astype(np.int64), axis=attrs.get("axis", 0))
            if op in ("Unsqueeze", "Squeeze"):
                axes = attrs.get("axes")
                if axes is None and len(vals) > 1 and vals[1] is not None:
                    axes = [int(a) for a in np.asarray(vals[1]).reshape(-1)]
                x = vals[0]
                if op == "Squeeze":
                    return np.squeeze(x) if axes is None else np.squeeze(x, axis=tuple(int(a) for a in axes))
                rank = x.ndim + len(axes)
                for a in sorted(int(a) % rank for a in axes):
                    x = np.expand_dims(x, a)
                return x
            if op == "Concat":
                return np.concatenate([v for v in vals if v is not None], axis=attrs["axis"])
            if op == "Cast":
                return vals[0].astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
            if op == "Reshape":
                target = self._resolve_reshape(vals[0].shape, vals[1], attrs.get("allowzero", 0))
                return vals[0].reshape(target)
            if op in ("Add", "Sub", "Mul", "Div"):
                a, b = vals[0], vals[1]
                if op == "Add":
                    return a + b
                if op == "Sub":
                    return a - b
                if op == "Mul":
                    return a * b
                if np.issubdtype(np.result_type(a, b), np.integer):  # exactly, truncated towards zero
                    q = np.floor_divide(a, b)
                    return np.where((np.remainder(a, b) != 0) & ((a < 0) != (b < 0)), q + 1, q).astype(
                        np.result_type(a, b))
                return a / b
            if op == "Neg":
                return -vals[0]
            if op == "ConstantOfShape":
                fill = attrs.get("value")
                fill = np.zeros(1, np.float32) if fill is None else numpy_helper.to_array(fill).reshape(-1)
                shape = [int(v) for v in vals[0].reshape(-1)]
                self._check_const_entries(math.prod(shape), label, op)
                return np.full(shape, fill[0], dtype=fill.dtype)
            if op == "Range":
                return self._fold_range(vals[0].reshape(()), vals[1].reshape(()), vals[2].reshape(()), label)
            if op == "Expand":
                shape = np.broadcast_shapes(vals[0].shape, tuple(int(v) for v in vals[1].reshape(-1)))
                self._check_const_entries(math.prod(shape), label, op)
                return np.broadcast_to(vals[0], shape).copy()
            if op == "Tile":
                reps = [int(v) for v in vals[1].reshape(-1)]
                self._check_const_entries(vals[0].size * math.prod(reps), label, op)
                return np.tile(vals[0], reps)
            if op == "Transpose":
                return np.transpose(vals[0], attrs.get("perm"))
            if op in ("Equal", "Less", "Greater"):
                return {"Equal": np.equal, "Less": np.less, "Greater": np.greater}[op](vals[0], vals[1])
            if op == "Not":
                return np.logical_not(vals[0])
            if op == "Where":
                return np.where(vals[0], vals[1], vals[2])
            if op in ("Max", "Min") and all(v is not None for v in vals):
                return functools.reduce(np.maximum if op == "Max" else np.minimum, vals)
            if op == "Slice" and (self.opset is None or self.opset >= 10):
                x = vals[0]
                starts, ends = (vals[k].reshape(-1).tolist() for k in (1, 2))
                axes = vals[3].reshape(-1).tolist() if len(vals) > 3 and vals[3] is not None else range(len(starts))
                steps = vals[4].reshape(-1).tolist() if len(vals) > 4 and vals[4] is not None else [1] * len(starts)
                index = [slice(None)] * x.ndim
                for a, b, e, st in zip(axes, starts, ends, steps):
                    index[int(a)] = slice(int(b), int(e), int(st))
                return x[tuple(index)]
            if op == "Split":
                x, axis = vals[0], int(attrs.get("axis", 0))
                parts = attrs.get("split")
                if parts is None and len(vals) > 1 and vals[1] is not None:
                    parts = vals[1].reshape(-1).tolist()
                if parts is None:
                    n = int(attrs.get("num_outputs", len(node.output)))
                    if "num_outputs" not in attrs and x.shape[axis] % n:
                        raise ValueError(f"axis {axis} of size {x.shape[axis]} does not split into {n} equal parts")
                    chunk = -(-x.shape[axis] // n)
                    parts = [min(chunk, x.shape[axis] - k * chunk) for k in range(n)]
                return np.split(x, np.cumsum([int(v) for v in parts])[:-1], axis=axis)
        except (ValueError, IndexError, KeyError, TypeError) as err:
            raise self._invalid(f"node {label!r} (op {op}) cannot be evaluated on its constant inputs: {err}") from None
        raise self._unsupported(label, op, "constant folding of this op")

    def _check_const_entries(self, n: int, label: str, op: str):
        if n > MAX_TENSOR_ENTRIES:
            raise self._unsupported(label, op, f"a constant of {n} entries (at most {MAX_TENSOR_ENTRIES})")

    def _fold_range(self, start, limit, delta, label: str) -> np.ndarray:
        """ONNX ``Range``: ``start + i delta`` by its definition; onnxruntime adds ``delta`` once per
        entry instead, which rounds differently in floating point: a float range the two disagree on
        is refused."""
        if delta == 0:
            raise ValueError("delta is 0")
        n = max(int(np.ceil((limit - start) / delta)), 0)
        self._check_const_entries(n, label, "Range")
        dtype = np.result_type(start, limit, delta)
        out = (start + np.arange(n, dtype=dtype) * delta).astype(dtype)
        if np.issubdtype(dtype, np.floating):
            acc, added = dtype.type(start), np.empty(n, dtype)
            for i in range(n):
                added[i] = acc
                acc = dtype.type(acc + delta)
            if not np.array_equal(out, added):
                raise self._unsupported(label, "Range", "a floating-point range whose entries depend on how it is "
                                                        "computed (start + i delta, or repeated additions)")
        return out

    @staticmethod
    def _resolve_reshape(in_shape: Sequence[int], target, allowzero: int) -> tuple[int, ...]:
        target = [int(t) for t in np.asarray(target).reshape(-1)]
        out = []
        for i, t in enumerate(target):
            if t == 0 and not allowzero:
                if i >= len(in_shape):
                    raise ValueError(f"Reshape target {target} copies dimension {i} of a rank-{len(in_shape)} tensor")
                out.append(int(in_shape[i]))
            else:
                out.append(t)
        total = math.prod(in_shape)
        if out.count(-1) > 1:
            raise ValueError(f"Reshape target {target} has more than one -1")
        if -1 in out:
            rest = math.prod(d for d in out if d != -1)
            if rest == 0 or total % rest:
                raise ValueError(f"cannot reshape {tuple(in_shape)} to {target}")
            out[out.index(-1)] = total // rest
        if math.prod(out) != total or min(out, default=0) < 0:
            raise ValueError(f"cannot reshape {tuple(in_shape)} to {target}")
        return tuple(out)

    # ------------------------------------------------------------------ graph helpers
    #: ops that pass their data input on unchanged (or reshaped): a layer read through them is
    #: still read once
    _ALIAS_OPS = frozenset(("Identity", "Dropout", "Cast", "Flatten", "Reshape", "Squeeze", "Unsqueeze"))

    def _count_uses(self, nodes):
        """How many layers read each tensor, looking through alias ops (see :meth:`_uses`)."""
        consumers: dict = {}
        for node in nodes:
            for name in set(n for n in node.input if n):
                consumers.setdefault(name, []).append(node)
        memo: dict = {}

        def uses(name):
            if name not in memo:
                memo[name] = int(name == self.output_name) + sum(
                    uses(n.output[0]) if n.op_type in self._ALIAS_OPS and n.output else 1
                    for n in consumers.get(name, ()))
            return memo[name]

        self._uses_memo = memo
        self._uses_fn = uses

    def _uses(self, name: str) -> int:
        return self._uses_fn(name)

    def _foldable(self) -> bool:
        """Whether an elementwise map on the current tensor may be folded into the layer that
        produced it: that layer's output is read by this node only."""
        return self.cur >= 0 and self.layer_tensor.get(self.cur) == self.current and self._uses(self.current) == 1

    def _add(self, layer, inputs=None) -> int:
        """Appends ``layer`` reading ``inputs`` (default: the current layer); it becomes current."""
        self.layers.append(layer)
        self.inputs.append(tuple(inputs) if inputs is not None else (self.cur,))
        self.cur = len(self.layers) - 1
        return self.cur

    def _materialize(self, label: str = "", op: str = ""):
        """Makes the Network tensor's shape the ONNX one (a Reshape layer; free in every stage)."""
        if tuple(self.nshape) != tuple(self.oshape):
            self._add(self._append(lambda: Reshape(tuple(self.oshape)), label, op))
            self.nshape = tuple(self.oshape)

    def _data_operand(self, name: str, label: str, op: str) -> int:
        """The layer holding data tensor ``name`` in its ONNX shape (a Reshape added if needed)."""
        ref, nshape, oshape = self.data[name]
        if tuple(nshape) != tuple(oshape):
            self.cur = ref
            ref = self._add(self._append(lambda: Reshape(tuple(oshape)), label, op))
        return ref

    # ------------------------------------------------------------------ shape helpers
    def _ensure_flat(self):
        """Appends a Flatten layer if the Network tensor is not 1-D yet."""
        if len(self.nshape) != 1:
            self._add(Flatten())
            self.nshape = (math.prod(self.nshape),)

    def _per_sample_const(self, c: np.ndarray, label: str, op: str) -> np.ndarray:
        """Drops the batch axis of a constant broadcast against ``(batch, *oshape)``."""
        c = np.asarray(c, dtype=np.float64)
        rank = len(self.oshape)
        if not self.batched and c.ndim > rank:  # no batch axis: the constant is per-sample already
            raise self._unsupported(label, op, f"constant of shape {c.shape} would change the rank of the data")
        if c.ndim > rank + 1:
            raise self._unsupported(label, op, f"constant of shape {c.shape} would change the rank of the data")
        if c.ndim == rank + 1 and self.batched:
            if c.shape[0] != 1:
                raise self._unsupported(label, op, f"constant of shape {c.shape} varies along the batch axis")
            c = c.reshape(c.shape[1:])
        try:
            ok = np.broadcast_shapes(c.shape, self.oshape) == tuple(self.oshape)
        except ValueError:
            ok = False
        if not ok:
            raise self._unsupported(
                label, op, f"constant of shape {c.shape} does not broadcast to the per-sample shape {self.oshape}"
            )
        return c

    def _to_nshape(self, c: np.ndarray) -> np.ndarray:
        """A constant broadcastable to ``oshape`` re-expressed for the Network tensor ``nshape``."""
        if c.size == 1:
            return c.reshape(())
        if tuple(self.nshape) == tuple(self.oshape):
            return c
        return np.broadcast_to(c, self.oshape).reshape(self.nshape)

    def _fold(self, index: int, p1, p2, s1, s2, t, es1, es2, et) -> tuple:
        """``(p1 * s1, p2 * s2 + t)`` (``s1`` is ``s2`` broadcast to ``p1``) with their rounding
        measured exactly (:func:`gpuopt.io.folding.fold_affine`) on top of the errors already on
        ``p1, p2`` (``self.errors[index]``); an exact fold adds none."""
        e1, e2 = self.errors.get(index, (0.0, 0.0))
        q1, n2, f1, f2 = fold_affine(p1, p2, s1, s2, t, e1, e2, es1, es2, et)
        if np.any(f1) or np.any(f2):
            self.errors[index] = (f1, f2)
        else:
            self.errors.pop(index, None)
        return q1, n2

    def _affine(self, scale: np.ndarray, shift: np.ndarray, label: str, op: str, scale_err=0.0, shift_err=0.0):
        """Applies ``x * scale + shift`` (per-sample arrays broadcastable to ``oshape``);
        ``scale_err``/``shift_err`` bound how far ``scale``/``shift`` are from the exact values."""
        if not (np.all(np.isfinite(scale)) and np.all(np.isfinite(shift))):
            raise self._invalid(f"node {label!r} (op {op}): the elementwise map has NaN or infinite coefficients")
        s = self._to_nshape(np.asarray(scale, dtype=np.float64))
        t = self._to_nshape(np.asarray(shift, dtype=np.float64))
        es = self._to_nshape(np.broadcast_to(np.asarray(scale_err, dtype=np.float64), np.shape(scale)))
        et = self._to_nshape(np.broadcast_to(np.asarray(shift_err, dtype=np.float64), np.shape(shift)))
        i = self.cur
        last = self.layers[i] if self._foldable() else None
        if isinstance(last, Dense):
            n = self.nshape[0]
            sv, tv = np.broadcast_to(s, (n,)), np.broadcast_to(t, (n,))
            esv, etv = np.broadcast_to(es, (n,)), np.broadcast_to(et, (n,))
            w, b = self._fold(i, last.weight, last.bias, sv[:, None], sv, tv, esv[:, None], esv, etv)
            self.layers[i] = self._append(lambda: Dense(w, b), label, op)
            return
        if isinstance(last, Conv2d):
            sf, tf = np.broadcast_to(s, self.nshape), np.broadcast_to(t, self.nshape)
            sc, tc = sf[:, :1, :1], tf[:, :1, :1]
            esf, etf = np.broadcast_to(es, self.nshape), np.broadcast_to(et, self.nshape)
            if (np.array_equal(sf, np.broadcast_to(sc, self.nshape)) and np.array_equal(tf, np.broadcast_to(tc, self.nshape))
                    and np.array_equal(esf, np.broadcast_to(esf[:, :1, :1], self.nshape))
                    and np.array_equal(etf, np.broadcast_to(etf[:, :1, :1], self.nshape))):
                sv, tv = sc.reshape(-1), tc.reshape(-1)
                esv, etv = esf[:, :1, :1].reshape(-1), etf[:, :1, :1].reshape(-1)
                w, b = self._fold(i, last.weight, last.bias, sv[:, None, None, None], sv, tv,
                                  esv[:, None, None, None], esv, etv)
                self.layers[i] = self._append(lambda: Conv2d(w, b, last.stride, last.padding, last.dilation),
                                               label, op)
                return
        if isinstance(last, ElementwiseAffine):
            sc_, sh_ = self._fold(i, last.scale, last.shift, s, s, t, es, es, et)
            self.layers[i] = self._append(lambda: ElementwiseAffine(sc_, sh_), label, op)
            return
        self._add(self._append(lambda: ElementwiseAffine(s, t), label, op))
        if np.any(es) or np.any(et):
            self.errors[len(self.layers) - 1] = (np.abs(es), np.abs(et))

    # ------------------------------------------------------------------ data-path ops
    def _op_Identity(self, node, label, attrs):
        pass

    def _op_Dropout(self, node, label, attrs):
        pass

    def _op_Cast(self, node, label, attrs):
        # only a cast between float32 and float64 is value-preserving enough to drop; a cast to
        # float16/bfloat16 rounds the data and would silently change the network's function
        if attrs.get("to") not in (1, 11):
            raise self._unsupported(label, "Cast", f"cast of the data to type {attrs.get('to')} "
                                                   "(only float32/float64 casts are supported)")

    def _op_Relu(self, node, label, attrs):
        self._add(ReLU())

    def _op_Sigmoid(self, node, label, attrs):
        self._add(Sigmoid())

    def _op_Tanh(self, node, label, attrs):
        self._add(Tanh())

    def _op_Softmax(self, node, label, attrs, kind=Softmax):
        off = int(self.batched)
        rank = len(self.oshape) + off
        legacy = self.opset is not None and self.opset < 13  # before 13: over the axes from `axis` on, flattened
        axis = int(attrs.get("axis", 1 if legacy else -1))
        axis = axis + rank if axis < 0 else axis
        whole = legacy and axis == off and len(self.oshape) > 1
        op = kind.__name__
        if axis != rank - 1 and not whole:
            raise self._unsupported(label, op, f"along axis {attrs.get('axis')} of a rank-{rank} tensor "
                                               "(only along the last axis)")
        self._materialize(label, op)
        if whole:  # over every per-sample entry
            self._add(Flatten())
            self._add(kind())
            self._add(Reshape(tuple(self.oshape)))
            return
        self._add(kind())

    def _op_LogSoftmax(self, node, label, attrs):
        self._op_Softmax(node, label, attrs, kind=LogSoftmax)

    def _op_Flatten(self, node, label, attrs):
        rank = len(self.oshape) + 1
        axis = int(attrs.get("axis", 1))
        axis = axis + rank - 1 + self.batched if axis < 0 else axis
        if not 0 <= axis <= rank:
            raise self._invalid(f"node {label!r} (op Flatten): axis {attrs.get('axis')} out of range")
        if not self.batched:  # one sample: the result is the 2-D view (prod before axis, prod after)
            self.oshape = (math.prod(self.oshape[:axis]), math.prod(self.oshape[axis:]))
            return
        # axis 0 gives (1, batch*n): a flatten of the single sample; axis k >= 2 keeps the batch
        # separate only when the per-sample axes before k all have size 1.
        if axis >= 2 and math.prod(self.oshape[: axis - 1]) != 1:
            raise self._unsupported(label, "Flatten", f"axis={axis} on per-sample shape {self.oshape} mixes samples")
        if axis == rank:  # output (batch*n, 1)
            raise self._unsupported(label, "Flatten", f"axis={axis} moves the features into the batch axis")
        self.oshape = (math.prod(self.oshape),)
        self._ensure_flat()

    def _op_Reshape(self, node, label, attrs):
        target = self._const(node, label, 1)
        if not self.batched:
            try:
                out = self._resolve_reshape(tuple(self.oshape), target, attrs.get("allowzero", 0))
            except ValueError as err:
                raise self._invalid(f"node {label!r} (op Reshape): {err}") from None
            self.oshape = tuple(out) or (1,)
            return
        try:
            out = self._resolve_reshape((1,) + tuple(self.oshape), target, attrs.get("allowzero", 0))
        except ValueError as err:
            raise self._invalid(f"node {label!r} (op Reshape): {err}") from None
        if len(out) < 2 or out[0] != 1:
            raise self._unsupported(
                label, "Reshape", f"target shape {tuple(out)} does not keep the batch axis (input {(1,) + tuple(self.oshape)})"
            )
        rest = tuple(out[1:])
        self.oshape = rest  # the row-major data is unchanged: layers that need the shape materialise it
        if len(rest) == 1:
            self._ensure_flat()

    def _dense(self, weight: np.ndarray, bias: np.ndarray, label: str, op: str):
        self._ensure_flat()
        self._add(self._append(lambda: Dense(weight, bias), label, op))
        self.nshape = (weight.shape[0],)

    def _op_Gemm(self, node, label, attrs):
        if node.input[0] != self.current:
            raise self._unsupported(label, "Gemm", "the data must be the first operand A")
        if int(attrs.get("transA", 0)):
            raise self._unsupported(label, "Gemm", "transA=1 (transposes the batch axis)")
        if len(self.oshape) != 1 and (self.batched or len(self.oshape) != 2 or self.oshape[0] != 1):
            raise self._unsupported(label, "Gemm", f"input must be 2-D (batch, features), per-sample shape is {self.oshape}")
        b = self._weight(node, label, 1)
        if b.ndim != 2:
            raise self._invalid(f"node {label!r} (op Gemm): B must be 2-D, got shape {b.shape}")
        w = (b if int(attrs.get("transB", 0)) else b.T) * float(attrs.get("alpha", 1.0))  # (out, in)
        if w.shape[1] != self.oshape[-1]:
            raise self._invalid(f"node {label!r} (op Gemm): B of shape {b.shape} does not fit {self.oshape[-1]} inputs")
        n_out = w.shape[0]
        c = self._weight(node, label, 2, required=False)
        if c is None:
            bias = np.zeros(n_out)
        else:
            if c.ndim == 2:
                if c.shape[0] != 1:
                    raise self._unsupported(label, "Gemm", f"C of shape {c.shape} varies along the batch axis")
                c = c[0]
            try:
                bias = np.broadcast_to(c, (n_out,)) * float(attrs.get("beta", 1.0))
            except ValueError:
                raise self._invalid(f"node {label!r} (op Gemm): C of shape {c.shape} does not broadcast to ({n_out},)") from None
        _, ew = two_prod(b if int(attrs.get("transB", 0)) else b.T, float(attrs.get("alpha", 1.0)))
        eb = 0.0 if c is None else two_prod(np.broadcast_to(c, (n_out,)), float(attrs.get("beta", 1.0)))[1]
        self._dense(w, bias, label, "Gemm")
        if np.any(ew) or np.any(eb):  # alpha or beta scaling rounded
            self.errors[len(self.layers) - 1] = (np.abs(ew), np.abs(np.broadcast_to(eb, (n_out,))))
        self.oshape = (n_out,) if self.batched else (1, n_out)

    def _op_MatMul(self, node, label, attrs):
        if node.input[0] != self.current:
            raise self._unsupported(label, "MatMul", "the data must be the left operand (x @ W)")
        w = self._weight(node, label, 1)
        if w.ndim != 2:
            raise self._unsupported(label, "MatMul", f"the constant operand must be 2-D, got shape {w.shape}")
        if self.oshape[-1] != w.shape[0]:
            raise self._invalid(
                f"node {label!r} (op MatMul): W of shape {w.shape} does not fit per-sample shape {self.oshape}"
            )
        if math.prod(self.oshape[:-1]) != 1:  # x @ W on every row of the last axis: a 1x1 convolution
            self._apply_layers(rowwise_linear_layers(tuple(self.oshape), w.T, np.zeros(w.shape[1])), label, "MatMul")
            return
        self._dense(w.T, np.zeros(w.shape[1]), label, "MatMul")
        self.oshape = tuple(self.oshape[:-1]) + (w.shape[1],)

    def _op_Conv(self, node, label, attrs):
        if node.input[0] != self.current:
            raise self._unsupported(label, "Conv", "the data must be the first input")
        self._batch_first(label, "Conv")
        w = self._weight(node, label, 1)
        if w.ndim not in (3, 4):
            raise self._unsupported(label, "Conv", f"only 1-D and 2-D convolutions are supported (weight shape {w.shape})")
        group = int(attrs.get("group", 1))
        if len(self.oshape) != w.ndim - 1 or group < 1 or self.oshape[0] != w.shape[1] * group or w.shape[0] % group:
            raise self._invalid(f"node {label!r} (op Conv): weight {w.shape} with group={group} does not fit "
                                f"per-sample shape {self.oshape}")
        if "kernel_shape" in attrs and tuple(attrs["kernel_shape"]) != tuple(w.shape[2:]):
            raise self._invalid(f"node {label!r} (op Conv): kernel_shape {attrs['kernel_shape']} != weight {w.shape}")
        b = self._weight(node, label, 2, required=False)
        if b is None:
            b = np.zeros(w.shape[0])
        if group > 1:  # one convolution whose kernel is zero between the groups (exact)
            w = ungroup_kernel(w, group)
        one_d = w.ndim == 3
        if one_d:  # (O, C, K) on (C, L): a 2-D convolution of (O, C, 1, K) on (C, 1, L)
            w, attrs = w[:, :, None, :], self._attrs_as_2d(attrs, label, "Conv")
        self._image_view(label, "Conv")
        kh, kw = w.shape[2:]
        strides = tuple(int(s) for s in attrs.get("strides", (1, 1)))
        dil = tuple(int(d) for d in attrs.get("dilations", (1, 1)))
        auto_pad = attrs.get("auto_pad", "NOTSET")
        if auto_pad in ("NOTSET", ""):
            pads = tuple(int(p) for p in attrs.get("pads", (0, 0, 0, 0)))
        elif auto_pad == "VALID":
            pads = (0, 0, 0, 0)
        elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            begin, end = [], []
            for size, k, s, d in zip(self.nshape[1:], (kh, kw), strides, dil):
                out = -(-size // s)
                total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
                small, big = total // 2, total - total // 2
                begin.append(small if auto_pad == "SAME_UPPER" else big)
                end.append(big if auto_pad == "SAME_UPPER" else small)
            pads = (begin[0], begin[1], end[0], end[1])
        else:
            raise self._unsupported(label, "Conv", f"auto_pad={auto_pad!r}")
        layer = self._append(lambda: Conv2d(w, b, strides, pads, dil), label, "Conv")
        try:
            out_shape = layer.output_shape(tuple(self.nshape))
        except InvalidInputError as err:
            raise self._invalid(f"node {label!r} (op Conv): {err}") from None
        self._add(layer)
        self.nshape = out_shape
        self.oshape = (out_shape[0], out_shape[2]) if one_d else out_shape

    def _attrs_as_2d(self, attrs: dict, label: str, op: str) -> dict:
        """The attributes of a 1-D convolution or pooling over ``L`` as those of its 2-D form over
        ``(1, L)``."""
        out = dict(attrs)
        for key, size in (("kernel_shape", 1), ("strides", 1), ("dilations", 1), ("pads", 2)):
            if key in attrs and len(attrs[key]) != size:
                raise self._invalid(f"node {label!r} (op {op}): {key} {list(attrs[key])} must have {size} "
                                    f"entr{'y' if size == 1 else 'ies'} for 1-D data")
        for key in ("kernel_shape", "strides", "dilations"):
            if key in attrs:
                out[key] = (1,) + tuple(int(v) for v in attrs[key])
        if "pads" in attrs:
            begin, end = (int(v) for v in attrs["pads"])
            out["pads"] = (0, begin, 0, end)
        return out

    def _batch_first(self, label: str, op: str):
        """Convolutions, pooling and batch normalisation read ONNX axis 0 as the batch and axis 1
        as the channels: refused on an input without a batch axis (its axis 0 is a feature axis)."""
        if not self.batched:
            raise self._unsupported(label, op, "the input has no batch axis (its leading dimension is fixed "
                                               "above 1 or it has rank 1), but this op reads axis 0 as the batch")

    def _image_view(self, label, op):
        """Makes the Network tensor ``(C, H, W)``: the ONNX shape, or ``(C, 1, L)`` for 1-D data
        ``(C, L)`` (a Reshape layer where needed; free in every stage)."""
        if len(self.oshape) == 2:
            want = (self.oshape[0], 1, self.oshape[1])
            if tuple(self.nshape) != want:
                self._add(self._append(lambda: Reshape(want), label, op))
                self.nshape = want
        else:
            self._materialize(label, op)

    def _binary(self, node, label, op):
        """Returns ``(constant, data_is_left)`` for a binary op with one constant operand."""
        if len(node.input) != 2:
            raise self._invalid(f"node {label!r} (op {op}) must have two inputs")
        left = node.input[0] == self.current
        c = self._weight(node, label, 1 if left else 0)
        return self._per_sample_const(c, label, op), left

    def _op_Add(self, node, label, attrs):
        c, _ = self._binary(node, label, "Add")
        self._affine(np.ones(()), c, label, "Add")

    def _op_Sub(self, node, label, attrs):
        c, left = self._binary(node, label, "Sub")
        if left:
            self._affine(np.ones(()), -c, label, "Sub")
        else:
            self._affine(-np.ones(()), c, label, "Sub")

    def _op_Mul(self, node, label, attrs):
        c, _ = self._binary(node, label, "Mul")
        self._affine(c, np.zeros(()), label, "Mul")

    def _op_Div(self, node, label, attrs):
        c, left = self._binary(node, label, "Div")
        if not left:
            raise self._unsupported(label, "Div", "division by the data (c / x) is not affine")
        if np.any(c == 0):
            raise self._invalid(f"node {label!r} (op Div): division by zero")
        r = 1.0 / c
        q, e = two_prod(r, c)  # r c = q + e exactly: r is exact iff q == 1 and e == 0
        exact = (q == 1.0) & (e == 0.0)
        self._affine(r, np.zeros(()), label, "Div", scale_err=np.where(exact, 0.0, np.spacing(np.abs(r))))

    def _op_Neg(self, node, label, attrs):
        self._affine(-np.ones(()), np.zeros(()), label, "Neg")

    # ------------------------------------------------------------------ piecewise-linear ops as ReLUs
    def _piecewise(self, label: str, op: str, terms_const):
        """Appends a piecewise-linear map of the current tensor (:mod:`gpuopt.io.piecewise`)."""
        terms, const = terms_const

        def record(i, es, et):
            self.errors[i] = (es, et)

        try:
            self.cur = piecewise.add_relu_terms(self._add, self.cur, terms, const, convert=self._to_nshape,
                                                record=record)
        except ValueError as err:
            raise self._invalid(f"node {label!r} (op {op}): {err}") from None

    def _data_first(self, node, label, op):
        if node.input[0] != self.current:
            raise self._unsupported(label, op, "the data must be the first input")

    def _op_Clip(self, node, label, attrs):
        self._data_first(node, label, "Clip")
        if self.opset is not None and self.opset < 11:
            lo, hi = (None if attrs.get(k) is None else np.asarray(float(attrs[k])) for k in ("min", "max"))
        else:
            lo = self._weight(node, label, 1, required=False)
            hi = self._weight(node, label, 2, required=False)
        for name, v in (("min", lo), ("max", hi)):
            if v is not None and v.size != 1:
                raise self._invalid(f"node {label!r} (op Clip): {name} must be a scalar, got shape {v.shape}")
        self._piecewise(label, "Clip", piecewise.clip_terms(None if lo is None else lo.reshape(()),
                                                            None if hi is None else hi.reshape(())))

    def _op_LeakyRelu(self, node, label, attrs):
        self._piecewise(label, "LeakyRelu", piecewise.leaky_terms(np.asarray(float(attrs.get("alpha", 0.01)))))

    def _op_PRelu(self, node, label, attrs):
        self._data_first(node, label, "PRelu")
        if len(node.input) != 2:
            raise self._invalid(f"node {label!r} (op PRelu) must have two inputs")
        slope = self._per_sample_const(self._weight(node, label, 1), label, "PRelu")
        self._piecewise(label, "PRelu", piecewise.leaky_terms(slope))

    def _op_Abs(self, node, label, attrs):
        self._piecewise(label, "Abs", piecewise.abs_terms())

    def _op_HardSigmoid(self, node, label, attrs):
        alpha, beta = (np.asarray(float(attrs.get(k, v))) for k, v in (("alpha", 0.2), ("beta", 0.5)))
        self._piecewise(label, "HardSigmoid", piecewise.hard_sigmoid_terms(alpha, beta))

    def _extreme_const(self, node, label, op):
        """The elementwise max (``Max``) or min (``Min``) of a node's constant operands, or None."""
        consts = [self._per_sample_const(self._weight(node, label, i), label, op)
                  for i, n in enumerate(node.input) if n and n in self.consts]
        if not consts:
            return None
        reduce = np.maximum if op == "Max" else np.minimum
        out = consts[0]
        for c in consts[1:]:
            out = reduce(out, c)
        return out

    def _max_min_const(self, node, label, op):
        c = self._extreme_const(node, label, op)
        if c is not None:
            self._piecewise(label, op, (piecewise.max_const_terms if op == "Max" else piecewise.min_const_terms)(c))

    def _op_Max(self, node, label, attrs):
        self._max_min_const(node, label, "Max")

    def _op_Min(self, node, label, attrs):
        self._max_min_const(node, label, "Min")

    def _multi_extreme(self, node, label, op, data_ins):
        """The data operands (of one shape) folded pairwise, then the constant ones."""
        shapes = {tuple(self.data[n][2]) for n in data_ins}
        if len(shapes) != 1:
            raise self._unsupported(label, op, f"data tensors of shapes {', '.join(map(str, sorted(shapes)))} "
                                               "(broadcasting two data tensors)")
        shape = shapes.pop()
        refs = [self._data_operand(n, label, op) for n in data_ins]
        self.cur = piecewise.add_pairwise_extreme(self._add, refs, op.lower())
        self.oshape = self.nshape = shape
        self._max_min_const(node, label, op)
        self.current = node.output[0]
        self.layer_tensor[self.cur] = node.output[0]

    def _multi_Max(self, node, label, attrs, data_ins):
        self._multi_extreme(node, label, "Max", data_ins)

    def _multi_Min(self, node, label, attrs, data_ins):
        self._multi_extreme(node, label, "Min", data_ins)

    def _op_BatchNormalization(self, node, label, attrs):
        if node.input[0] != self.current:
            raise self._unsupported(label, "BatchNormalization", "the data must be the first input")
        self._batch_first(label, "BatchNormalization")
        if int(attrs.get("training_mode", 0)):
            raise self._unsupported(label, "BatchNormalization", "training_mode=1")
        if int(attrs.get("spatial", 1)) != 1:
            raise self._unsupported(label, "BatchNormalization", "spatial=0")
        gamma, beta, mean, var = (self._weight(node, label, i) for i in (1, 2, 3, 4))
        eps = float(attrs.get("epsilon", 1e-5))
        n_ch = self.oshape[0]
        for name, arr in (("scale", gamma), ("B", beta), ("mean", mean), ("var", var)):
            if arr.shape != (n_ch,):
                raise self._invalid(
                    f"node {label!r} (op BatchNormalization): {name} has shape {arr.shape}, expected ({n_ch},)"
                )
        scale, shift, es, et = batchnorm_affine(gamma, beta, mean, var, eps)
        bshape = (n_ch,) + (1,) * (len(self.oshape) - 1)
        self._affine(scale.reshape(bshape), shift.reshape(bshape), label, "BatchNormalization",
                     scale_err=es.reshape(bshape), shift_err=et.reshape(bshape))


    # ------------------------------------------------------------------ graph and shape ops

    def _pool(self, label, op, attrs, make):
        """A 2-D pooling layer ``make(kernel, strides, pads, dilations)``; 1-D pooling of ``(C, L)``
        as 2-D pooling of ``(C, 1, L)``."""
        self._batch_first(label, op)
        one_d = len(self.oshape) == 2
        if one_d:
            attrs = self._attrs_as_2d(attrs, label, op)
        self._image_view(label, op)
        layer = make(*_pool_geometry(self, label, op, attrs, self.nshape))
        try:
            out_shape = tuple(layer.output_shape(tuple(self.nshape)))
        except InvalidInputError as err:
            raise self._invalid(f"node {label!r} (op {op}): {err}") from None
        self._add(layer)
        self.nshape = out_shape
        self.oshape = (out_shape[0], out_shape[2]) if one_d else out_shape

    def _op_MaxPool(self, node, label, attrs):
        if len(node.output) > 1 and node.output[1]:
            raise self._unsupported(label, "MaxPool", "the Indices output")
        self._pool(label, "MaxPool", attrs,
                   lambda k, st, pads, dil: self._append(lambda: MaxPool2d(k, st, pads, dil), label, "MaxPool"))

    def _op_AveragePool(self, node, label, attrs):
        include = bool(int(attrs.get("count_include_pad", 0)))

        def make(k, st, pads, dil):
            if dil != (1, 1):
                raise self._unsupported(label, "AveragePool", f"dilations {dil}")
            return self._append(lambda: AvgPool2d(k, st, pads, include), label, "AveragePool")

        self._pool(label, "AveragePool", attrs, make)

    def _op_GlobalAveragePool(self, node, label, attrs):
        if len(self.oshape) not in (2, 3):
            raise self._unsupported(label, "GlobalAveragePool", f"per-sample shape {self.oshape} is not (C, H, W) "
                                                                "or (C, L)")
        self._pool(label, "GlobalAveragePool", {"kernel_shape": tuple(self.oshape[1:])},
                   lambda k, st, pads, dil: self._append(lambda: AvgPool2d(k, (1, 1)), label, "GlobalAveragePool"))


    def _shaped_layer(self, layer, label, op):
        """Appends a layer that acts on the ONNX shape, which becomes its output shape."""
        try:
            out_shape = layer.output_shape(tuple(self.oshape))
        except InvalidInputError as err:
            raise self._invalid(f"node {label!r} (op {op}): {err}") from None
        self._add(layer)
        self.oshape = self.nshape = tuple(out_shape)


    def _axis_of(self, axis: int, label: str, op: str, rank: int | None = None) -> int:
        """The per-sample axis of ONNX ``axis`` (batch-first, negative from the end)."""
        off = int(self.batched)
        rank = len(self.oshape) + off if rank is None else rank
        a = int(axis) + rank if int(axis) < 0 else int(axis)
        if not 0 <= a < rank:
            raise self._invalid(f"node {label!r} (op {op}): axis {axis} out of range for rank {rank}")
        if a == 0 and off:
            raise self._unsupported(label, op, "it acts on the batch axis")
        return a - off

    def _full_shape(self, oshape) -> tuple:
        """The ONNX shape of a tensor of per-sample shape ``oshape`` (a batch of one)."""
        return ((1,) if self.batched else ()) + tuple(oshape)


    def _op_Pad(self, node, label, attrs):
        off = int(self.batched)  # ONNX axis of the first per-sample axis
        mode = attrs.get("mode", "constant")
        if mode != "constant":
            raise self._unsupported(label, "Pad", f"mode={mode!r} (only constant padding is supported)")
        if self.opset is not None and self.opset < 11:
            pads, value = list(attrs.get("pads", ())), float(attrs.get("value", 0.0))
        else:
            pads = [int(v) for v in np.asarray(self._const(node, label, 1)).reshape(-1)]
            c = self._weight(node, label, 2, required=False)
            value = 0.0 if c is None or c.size == 0 else float(c.reshape(-1)[0])
            if len(node.input) > 3 and node.input[3]:
                axes = [int(a) for a in np.asarray(self._const(node, label, 3)).reshape(-1)]
                rank = len(self.oshape) + off
                full = [0] * (2 * rank)
                for k, a in enumerate(axes):
                    a = a + rank if a < 0 else a
                    full[a], full[a + rank] = pads[k], pads[k + len(axes)]
                pads = full
        rank = len(self.oshape) + off
        if len(pads) != 2 * rank:
            raise self._invalid(f"node {label!r} (op Pad): {len(pads)} pads for a rank-{rank} tensor")
        if off and (pads[0] or pads[rank]):
            raise self._unsupported(label, "Pad", "padding along the batch axis")
        if min(pads) < 0:
            raise self._unsupported(label, "Pad", f"negative pads {pads} (cropping)")
        self._materialize(label, "Pad")
        per_sample = tuple(pads[off:rank]) + tuple(pads[rank + off:])
        layer = self._append(lambda: Pad(per_sample, value), label, "Pad")
        self._shaped_layer(layer, label, "Pad")


    def _op_Transpose(self, node, label, attrs):
        off = int(self.batched)  # ONNX axis of the first per-sample axis
        rank = len(self.oshape) + off
        perm = [int(p) for p in attrs.get("perm", range(rank - 1, -1, -1))]
        if sorted(perm) != list(range(rank)):
            raise self._invalid(f"node {label!r} (op Transpose): perm {perm} is not a permutation of 0..{rank - 1}")
        if off and perm[0] != 0:
            raise self._unsupported(label, "Transpose", f"perm {perm} moves the batch axis")
        self._materialize(label, "Transpose")
        layer = self._append(lambda: Transpose(tuple(p - off for p in perm[off:])), label, "Transpose")
        self._shaped_layer(layer, label, "Transpose")


    def _op_Slice(self, node, label, attrs):
        off = int(self.batched)  # ONNX axis of the first per-sample axis
        if self.opset is not None and self.opset < 10:
            starts, ends = list(attrs.get("starts", ())), list(attrs.get("ends", ()))
            axes = list(attrs.get("axes", range(len(starts))))
            steps = [1] * len(starts)
        else:
            starts = [int(v) for v in np.asarray(self._const(node, label, 1)).reshape(-1)]
            ends = [int(v) for v in np.asarray(self._const(node, label, 2)).reshape(-1)]
            a = self._const(node, label, 3, required=False)
            axes = list(range(len(starts))) if a is None else [int(v) for v in np.asarray(a).reshape(-1)]
            st = self._const(node, label, 4, required=False)
            steps = [1] * len(starts) if st is None else [int(v) for v in np.asarray(st).reshape(-1)]
        if not (len(starts) == len(ends) == len(axes) == len(steps)):
            raise self._invalid(f"node {label!r} (op Slice): starts/ends/axes/steps differ in length")
        self._materialize(label, "Slice")
        rank = len(self.oshape) + off
        for start, end, axis, step in zip(starts, ends, axes, steps):
            a = axis + rank if axis < 0 else axis
            if not 0 <= a < rank:
                raise self._invalid(f"node {label!r} (op Slice): axis {axis} out of range")
            size = 1 if a < off else self.oshape[a - off]
            if step < 1:
                raise self._unsupported(label, "Slice", f"step {step} (only positive steps are supported)")
            lo = max(0, min(size, start + size if start < 0 else start))
            hi = max(0, min(size, end + size if end < 0 else end))
            if a < off:
                if (lo, hi) != (0, 1):
                    raise self._unsupported(label, "Slice", "slicing the batch axis")
                continue
            if hi <= lo:
                raise self._unsupported(label, "Slice", f"the slice {start}:{end} of axis {axis} is empty")
            if (lo, hi, step) == (0, size, 1):
                continue
            layer = self._append(lambda: Slice(a - off, lo, hi, step), label, "Slice")
            self._shaped_layer(layer, label, "Slice")


    def _op_Gather(self, node, label, attrs):
        idx = np.asarray(self._const(node, label, 1))
        if not np.issubdtype(idx.dtype, np.integer):
            raise self._invalid(f"node {label!r} (op Gather): indices must be integers")
        axis = self._axis_of(attrs.get("axis", 0), label, "Gather")
        if idx.ndim > 1:
            raise self._unsupported(label, "Gather", f"indices of rank {idx.ndim} (only a scalar or a list)")
        size = self.oshape[axis]
        flat = [int(i) + size if int(i) < 0 else int(i) for i in idx.reshape(-1)]
        if any(not 0 <= i < size for i in flat):
            raise self._invalid(f"node {label!r} (op Gather): index out of range for axis of size {size}")
        self._materialize(label, "Gather")
        if idx.ndim == 0 and len(self.oshape) == 1:
            raise self._unsupported(label, "Gather", "a scalar index on a vector leaves no per-sample axis")
        indices = flat[0] if idx.ndim == 0 else tuple(flat)
        layer = self._append(lambda: Gather(axis, indices), label, "Gather")
        self._shaped_layer(layer, label, "Gather")


    def _op_Squeeze(self, node, label, attrs):
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = [int(a) for a in np.asarray(self._const(node, label, 1)).reshape(-1)]
        off = int(self.batched)
        full = self._full_shape(self.oshape)
        rank = len(full)
        if axes is None:  # every unit axis, in ONNX the batch axis (of a batch of one) too
            axes = [a for a in range(rank) if full[a] == 1]
        axes = {int(a) + rank if int(a) < 0 else int(a) for a in axes}
        if any(not 0 <= a < rank or full[a] != 1 for a in axes):
            raise self._unsupported(label, "Squeeze", f"axes {sorted(axes)} of shape {full}")
        if off and 0 in axes and node.output[0] != self.output_name:
            # the nodes after it would number their axes without the batch axis, which every
            # tensor here keeps: only the graph's output may drop it
            raise self._unsupported(label, "Squeeze", f"it removes axis 0 of shape {full}, the batch axis, before "
                                                      "the graph's output (squeeze named axes instead, e.g. x.squeeze(-1))")
        out = tuple(d for a, d in enumerate(full) if a >= off and a not in axes)
        self.oshape = out or (1,)


    def _op_Unsqueeze(self, node, label, attrs):
        axes = attrs.get("axes")
        if axes is None:
            axes = [int(a) for a in np.asarray(self._const(node, label, 1)).reshape(-1)]
        off = int(self.batched)
        rank = len(self.oshape) + off + len(axes)
        axes = sorted(int(a) + rank if int(a) < 0 else int(a) for a in axes)
        if off and 0 in axes:
            raise self._unsupported(label, "Unsqueeze", "a new axis before the batch axis")
        full = list(self._full_shape(self.oshape))
        for a in axes:
            full.insert(a, 1)
        self.oshape = tuple(full[off:])


    def _select_along(self, axis: int, indices, label: str, op: str):
        """Appends ``Gather(axis, indices)`` on the ONNX-shaped tensor (nothing when it selects
        every entry in order): the exact form of repeating, broadcasting and resampling."""
        indices = tuple(int(i) for i in indices)
        if indices == tuple(range(self.oshape[axis])):
            return
        self._materialize(label, op)
        layer = self._append(lambda: Gather(axis, indices), label, op)
        self._shaped_layer(layer, label, op)

    def _op_Split(self, node, label, attrs):
        off = int(self.batched)
        axis = self._axis_of(attrs.get("axis", 0), label, "Split")
        size = self.oshape[axis]
        outs = list(node.output)
        parts = attrs.get("split")
        if parts is None and len(node.input) > 1 and node.input[1]:
            parts = self._const(node, label, 1)
        if parts is not None:
            parts = [int(v) for v in np.asarray(parts).reshape(-1)]
        else:
            n = int(attrs.get("num_outputs", len(outs)))
            if n != len(outs) or n < 1:
                raise self._invalid(f"node {label!r} (op Split): num_outputs {n} but {len(outs)} outputs")
            if "num_outputs" not in attrs and size % n:
                raise self._invalid(f"node {label!r} (op Split): axis {axis + off} of size {size} does not split "
                                    f"into {n} equal parts")
            chunk = -(-size // n)  # opset 18: the last part may be smaller
            parts = [min(chunk, size - k * chunk) for k in range(n)]
        if len(parts) != len(outs) or min(parts) < 0 or sum(parts) != size:
            raise self._invalid(f"node {label!r} (op Split): parts {parts} do not split axis {axis + off} of size "
                                f"{size} into {len(outs)} outputs")
        source = (self.cur, self.nshape, self.oshape)
        start = 0
        for out, length in zip(outs, parts):
            lo, start = start, start + length
            if not out or not self._uses(out):
                continue
            if length == 0:
                raise self._unsupported(label, "Split", f"output {out!r} is empty")
            self.cur, self.nshape, self.oshape = source
            if length < size:
                self._materialize(label, "Split")
                self._shaped_layer(self._append(lambda: Slice(axis, lo, lo + length, 1), label, "Split"), label,
                                   "Split")
                self.layer_tensor[self.cur] = out
            self.data[out] = (self.cur, self.nshape, self.oshape)
        return True

    def _op_Tile(self, node, label, attrs):
        off = int(self.batched)
        reps = [int(v) for v in np.asarray(self._const(node, label, 1)).reshape(-1)]
        if len(reps) != len(self.oshape) + off:
            raise self._invalid(f"node {label!r} (op Tile): {len(reps)} repeats for a rank-{len(self.oshape) + off} "
                                "tensor")
        if min(reps) < 1:
            raise self._unsupported(label, "Tile", f"repeats {reps} (an empty output)")
        if off and reps[0] != 1:
            raise self._unsupported(label, "Tile", "repeating the batch axis")
        self._check_entries(math.prod(self.oshape) * math.prod(reps[off:]), label, "Tile")
        for a, r in enumerate(reps[off:]):
            if r > 1:
                self._select_along(a, tuple(range(self.oshape[a])) * r, label, "Tile")

    def _op_Expand(self, node, label, attrs):
        off = int(self.batched)
        shape = [int(v) for v in np.asarray(self._const(node, label, 1)).reshape(-1)]
        full = self._full_shape(self.oshape)
        try:
            target = np.broadcast_shapes(full, tuple(shape))
        except ValueError:
            raise self._invalid(f"node {label!r} (op Expand): shape {shape} does not broadcast with {full}") from None
        if len(target) > len(full):
            if off:
                raise self._unsupported(label, "Expand", f"shape {shape} adds axes before the batch axis")
            self.oshape = (1,) * (len(target) - len(full)) + tuple(self.oshape)
        if off and target[0] != 1:
            raise self._unsupported(label, "Expand", "broadcasting along the batch axis")
        self._check_entries(math.prod(target[off:]), label, "Expand")
        for a, n in enumerate(target[off:]):
            if n != self.oshape[a]:
                self._select_along(a, (0,) * n, label, "Expand")

    def _op_Resize(self, node, label, attrs):
        if self.opset is not None and self.opset < 11:  # Resize-10: onnxruntime's asymmetric, simple rounding
            attrs = dict(attrs, coordinate_transformation_mode="asymmetric", nearest_mode="simple")
        self._resize(node, label, "Resize", attrs)

    def _op_Upsample(self, node, label, attrs):
        # Upsample (opsets 7-9): output[i] = input[floor(i / scale)] per axis (scales >= 1)
        self._resize(node, label, "Upsample", dict(attrs, coordinate_transformation_mode="asymmetric",
                                                   nearest_mode="simple"))

    def _resize(self, node, label, op, attrs):
        """Nearest-neighbour resizing as one ``Gather`` per resized axis, the source indices exact
        (:func:`~gpuopt.io.selection.onnx_resize_axis`); an axis whose indices rounding could move
        is refused, and so is an axis kept at its own length whose entries the transform would move
        (onnxruntime copies it unchanged)."""
        off = int(self.batched)
        mode = attrs.get("mode", "nearest")
        if mode != "nearest":
            raise self._unsupported(label, op, f"mode={mode!r} (only nearest-neighbour resizing is supported)")
        ctm = attrs.get("coordinate_transformation_mode", "half_pixel")
        nearest = attrs.get("nearest_mode", "round_prefer_floor")
        if ctm not in ONNX_RESIZE_TRANSFORMS:
            raise self._unsupported(label, op, f"coordinate_transformation_mode={ctm!r}")
        if nearest not in ONNX_NEAREST_MODES:
            raise self._unsupported(label, op, f"nearest_mode={nearest!r}")
        if attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise self._unsupported(label, op, f"keep_aspect_ratio_policy={attrs['keep_aspect_ratio_policy']!r}")
        full = self._full_shape(self.oshape)
        rank = len(full)
        axes = [int(a) + rank if int(a) < 0 else int(a) for a in attrs.get("axes", range(rank))]
        if op == "Upsample" or (self.opset is not None and self.opset < 11):
            scales = attrs.get("scales")
            if scales is None:
                scales = self._const(node, label, 1)
            sizes = None
        else:
            scales = self._const(node, label, 2, required=False)
            sizes = self._const(node, label, 3, required=False)
            if scales is not None and np.asarray(scales).size == 0:
                scales = None
        if (scales is None) == (sizes is None or np.asarray(sizes).size == 0):
            raise self._invalid(f"node {label!r} (op {op}): give exactly one of scales and sizes")
        given = np.asarray(scales if scales is not None else sizes).reshape(-1)
        if len(given) != len(axes) or sorted(set(axes)) != sorted(axes) or not all(0 <= a < rank for a in axes):
            raise self._invalid(f"node {label!r} (op {op}): {len(given)} scales or sizes for axes {axes} of a "
                                f"rank-{rank} tensor")
        plan, out_shape = [], list(full)
        for a, g in zip(axes, given.tolist()):
            n_in = full[a]
            if scales is not None and not (math.isfinite(g) and g > 0 and (op != "Upsample" or g >= 1)):
                least = ">= 1" if op == "Upsample" else "positive"
                raise self._invalid(f"node {label!r} (op {op}): scale {g} must be {least}")
            if scales is not None and n_in * g > MAX_TENSOR_ENTRIES or sizes is not None and g > MAX_TENSOR_ENTRIES:
                raise self._unsupported(label, op, f"axis {a} of {n_in} entries resized by {g}: too large")
            try:
                n_out, idx = onnx_resize_axis(n_in, g if scales is not None else None,
                                              None if scales is not None else int(g), ctm, nearest)
            except ValueError as err:
                raise self._unsupported(label, op, f"axis {a}: {err}") from None
            if n_out < 1:
                raise self._unsupported(label, op, f"axis {a} resized to {n_out}")
            out_shape[a] = n_out
            if a < off:
                if n_out != n_in:
                    raise self._unsupported(label, op, "resizing the batch axis")
                continue
            if n_out == n_in and idx != list(range(n_in)):
                # (tf_half_pixel_for_nn with ceil rounding at scale 1): onnxruntime copies such an
                # axis unchanged, also when others are resized, where the ONNX formula moves it
                raise self._unsupported(label, op, f"axis {a} keeps its {n_in} entries but the coordinate transform "
                                                   "would move them (onnxruntime copies such an axis unchanged)")
            plan.append((a - off, idx))
        if tuple(out_shape) == tuple(full):  # every axis keeps its entries: onnxruntime copies the input
            return
        self._check_entries(math.prod(out_shape[off:]), label, op)
        for a, idx in plan:
            self._select_along(a, idx, label, op)

    def _check_entries(self, n: int, label: str, op: str):
        """Refuses a per-sample tensor of more than ``MAX_TENSOR_ENTRIES`` entries."""
        if n > MAX_TENSOR_ENTRIES:
            raise self._unsupported(label, op, f"its output has {n} entries per sample (at most {MAX_TENSOR_ENTRIES})")

    def _reduce(self, node, label, op, attrs, kind):
        """``Reduce{Sum,Mean,Max,Min}`` over per-sample axes: the reduced axes moved last, the
        tensor viewed as ``(rest, 1, k)`` and pooled by a ``(1, k)`` window (average, times ``k``
        for a sum; max, negated on both sides for a min)."""
        off = int(self.batched)
        rank = len(self.oshape) + off
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = [int(v) for v in np.asarray(self._const(node, label, 1)).reshape(-1)]
        if not axes:
            if int(attrs.get("noop_with_empty_axes", 0)):
                return
            axes = range(rank)
        axes = sorted({int(a) + rank if int(a) < 0 else int(a) for a in axes})
        if not all(0 <= a < rank for a in axes):
            raise self._invalid(f"node {label!r} (op {op}): axes {axes} out of range for rank {rank}")
        if off and 0 in axes:
            raise self._unsupported(label, op, "it reduces the batch axis")
        red = [a - off for a in axes]
        keep = [a for a in range(len(self.oshape)) if a not in red]
        keepdims = int(attrs.get("keepdims", 1))
        out = tuple(1 if a in red else d for a, d in enumerate(self.oshape)) if keepdims else \
            tuple(self.oshape[a] for a in keep)
        self._apply_layers(reduce_layers(tuple(self.oshape), red, kind), label, op)
        self.oshape = out or (1,)

    def _op_ReduceSum(self, node, label, attrs):
        self._reduce(node, label, "ReduceSum", attrs, "sum")

    def _op_ReduceMean(self, node, label, attrs):
        self._reduce(node, label, "ReduceMean", attrs, "mean")

    def _op_ReduceMax(self, node, label, attrs):
        self._reduce(node, label, "ReduceMax", attrs, "max")

    def _op_ReduceMin(self, node, label, attrs):
        self._reduce(node, label, "ReduceMin", attrs, "min")

    def _op_DepthToSpace(self, node, label, attrs):
        self._batch_first(label, "DepthToSpace")
        if len(self.oshape) != 3:
            raise self._unsupported(label, "DepthToSpace", f"per-sample shape {self.oshape} is not (C, H, W)")
        b = int(attrs.get("blocksize", 0))
        c, h, w = self.oshape
        if b < 1 or c % (b * b):
            raise self._invalid(f"node {label!r} (op DepthToSpace): blocksize {b} does not divide {c} channels")
        if attrs.get("mode", "DCR") not in ("DCR", "CRD"):
            raise self._invalid(f"node {label!r} (op DepthToSpace): mode {attrs['mode']!r} is not DCR or CRD")
        self._apply_layers(depth_to_space_layers((c, h, w), b, attrs.get("mode", "DCR")), label, "DepthToSpace")

    def _op_SpaceToDepth(self, node, label, attrs):
        self._batch_first(label, "SpaceToDepth")
        if len(self.oshape) != 3:
            raise self._unsupported(label, "SpaceToDepth", f"per-sample shape {self.oshape} is not (C, H, W)")
        b = int(attrs.get("blocksize", 0))
        c, h, w = self.oshape
        if b < 1 or h % b or w % b:
            raise self._invalid(f"node {label!r} (op SpaceToDepth): blocksize {b} does not divide {h}x{w}")
        self._apply_layers(space_to_depth_layers((c, h, w), b), label, "SpaceToDepth")

    def _apply_layers(self, layers, label, op):
        """Appends a chain of layers on the ONNX-shaped tensor; the last one's shape is the new one."""
        self._materialize(label, op)
        for layer in layers:
            self._shaped_layer(self._append(lambda: layer, label, op), label, op)

    def _op_ConvTranspose(self, node, label, attrs):
        if node.input[0] != self.current:
            raise self._unsupported(label, "ConvTranspose", "the data must be the first input")
        self._batch_first(label, "ConvTranspose")
        w = self._weight(node, label, 1)
        if w.ndim != 4:
            raise self._unsupported(label, "ConvTranspose", f"only 2-D transposed convolutions (weight shape {w.shape})")
        if int(attrs.get("group", 1)) != 1:
            raise self._unsupported(label, "ConvTranspose", f"group={attrs.get('group')}")
        if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
            raise self._unsupported(label, "ConvTranspose", f"auto_pad={attrs.get('auto_pad')!r}")
        self._materialize(label, "ConvTranspose")
        b = self._weight(node, label, 2, required=False)
        if b is None:
            b = np.zeros(w.shape[1])
        strides = tuple(int(v) for v in attrs.get("strides", (1, 1)))
        dil = tuple(int(v) for v in attrs.get("dilations", (1, 1)))
        pads = tuple(int(v) for v in attrs.get("pads", (0, 0, 0, 0)))
        outpad = tuple(int(v) for v in attrs.get("output_padding", (0, 0)))
        layer = self._append(lambda: ConvTranspose2d(w, b, strides, pads, outpad, dil), label, "ConvTranspose")
        if "output_shape" in attrs:
            want = tuple(int(v) for v in attrs["output_shape"])[-2:]
            got = layer.output_shape(tuple(self.oshape))[1:]
            if want != got:
                raise self._unsupported(label, "ConvTranspose", f"output_shape {want} (pads give {got})")
        self._shaped_layer(layer, label, "ConvTranspose")


    def _combine(self, node, label, op, data_ins, layer_factory, negate_second=False):
        """Appends a layer reading several data tensors, each in its ONNX shape."""
        shapes = [self.data[n][2] for n in data_ins]
        refs = []
        for k, name in enumerate(data_ins):
            ref = self._data_operand(name, label, op)
            if negate_second and k == 1:
                self.cur = ref
                ref = self._add(ElementwiseAffine(-np.ones(()), np.zeros(())))
            refs.append(ref)
        layer = self._append(lambda: layer_factory(len(refs)), label, op)
        try:
            out_shape = layer.output_shape(*[tuple(sh) for sh in shapes])
        except InvalidInputError as err:
            raise self._unsupported(label, op, str(err)) from None
        self._add(layer, refs)
        self.oshape = self.nshape = tuple(out_shape)
        self.current = node.output[0]
        self.layer_tensor[self.cur] = node.output[0]


    def _multi_Add(self, node, label, attrs, data_ins):
        if len(node.input) != 2 or len(data_ins) != 2:
            raise self._invalid(f"node {label!r} (op Add) must have two inputs")
        if tuple(self.data[data_ins[0]][2]) != tuple(self.data[data_ins[1]][2]):
            raise self._unsupported(label, "Add", f"data tensors of shapes {self.data[data_ins[0]][2]} and "
                                                  f"{self.data[data_ins[1]][2]} (broadcasting two data tensors)")
        self._combine(node, label, "Add", list(node.input), lambda n: Add(n))


    def _multi_Sum(self, node, label, attrs, data_ins):
        if len(data_ins) != len([n for n in node.input if n]):
            raise self._unsupported(label, "Sum", "a constant operand")
        if len(data_ins) == 1:
            raise self._unsupported(label, "Sum", "a single operand")
        self._combine(node, label, "Sum", data_ins, lambda n: Add(n))


    def _multi_Sub(self, node, label, attrs, data_ins):
        if len(node.input) != 2 or len(data_ins) != 2:
            raise self._invalid(f"node {label!r} (op Sub) must have two inputs")
        if tuple(self.data[data_ins[0]][2]) != tuple(self.data[data_ins[1]][2]):
            raise self._unsupported(label, "Sub", "data tensors of different shapes")
        self._combine(node, label, "Sub", list(node.input), lambda n: Add(n), negate_second=True)


    def _multi_Concat(self, node, label, attrs, data_ins):
        if len(data_ins) != len([n for n in node.input if n]):
            raise self._unsupported(label, "Concat", "constant operands among data tensors")
        rank = len(self.data[data_ins[0]][2]) + int(self.batched)
        self.oshape = self.data[data_ins[0]][2]
        axis = self._axis_of(attrs.get("axis", 1), label, "Concat", rank)
        if len(data_ins) == 1:
            self.current = data_ins[0]
            self.cur, self.nshape, self.oshape = self.data[data_ins[0]]
            return
        self._combine(node, label, "Concat", data_ins, lambda n: Concat(axis, n))


def from_onnx(path_or_model, *, input_shape=None) -> Network:
    """Reads a sequential ReLU network from an ONNX file or ``onnx.ModelProto``.

    ``input_shape`` overrides the per-sample input shape (the declared input shape without its
    batch axis); it must have the same number of entries, or match the known dimensions when
    the declared shape has symbolic ones. See the module docstring for the supported operators.
    """
    model, path = _load(path_or_model)
    return _Importer(model, path, input_shape).run()


def _pool_geometry(imp, label: str, op: str, attrs: dict, shape) -> tuple:
    """``(kernel, strides, pads (top, left, bottom, right), dilations)`` of a 2-D pooling node."""
    if len(shape) != 3:
        raise imp._unsupported(label, op, f"only 2-D pooling of (C, H, W) data is supported, per-sample shape {shape}")
    kernel = tuple(int(k) for k in attrs.get("kernel_shape", ()))
    if len(kernel) != 2:
        raise imp._unsupported(label, op, f"kernel_shape {kernel} (only 2-D kernels are supported)")
    strides = tuple(int(v) for v in attrs.get("strides", (1, 1)))
    dil = tuple(int(v) for v in attrs.get("dilations", (1, 1)))
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        p = tuple(int(v) for v in attrs.get("pads", (0, 0, 0, 0)))
        if len(p) != 4:
            raise imp._invalid(f"node {label!r} (op {op}): pads {list(p)} must have 4 entries for 2-D pooling")
        pads = (p[0], p[1], p[2], p[3])
    elif auto_pad == "VALID":
        pads = (0, 0, 0, 0)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, st, d in zip(shape[1:], kernel, strides, dil):
            total = max(0, (-(-size // st) - 1) * st + (k - 1) * d + 1 - size)
            small, big = total // 2, total - total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else big)
            end.append(big if auto_pad == "SAME_UPPER" else small)
        pads = (begin[0], begin[1], end[0], end[1])
    else:
        raise imp._unsupported(label, op, f"auto_pad={auto_pad!r}")
    if int(attrs.get("ceil_mode", 0)):
        # ceil_mode only matters when a partial window would be added at the end
        for size, k, st, d, pb, pe in zip(shape[1:], kernel, strides, dil, pads[:2], pads[2:]):
            span = size + pb + pe - d * (k - 1) - 1
            if span % st:
                raise imp._unsupported(label, op, "ceil_mode=1 with a partial last window")
    return kernel, strides, pads, dil

