"""Importing torch models into the :class:`~gpuopt.network.Network` graph by tracing them with
``torch.fx`` (used by :func:`gpuopt.network.from_torch`).

``torch.fx.symbolic_trace`` records the model's forward as a graph of module calls, functions and
tensor methods; each node becomes zero or more layers, and a node that reads several data tensors
(``x + self.block(x)``, ``torch.cat``) a graph layer. Supported:

* modules: Linear (on every row of the last axis of an N-D input: a 1x1 convolution), Conv2d and
  Conv1d (any groups, zero padding), ConvTranspose2d (groups=1),
  ReLU, Sigmoid, Tanh, Softmax and LogSoftmax along the last axis (not piecewise linear: the attack
  alone runs on such a network, unless :mod:`gpuopt.output_order` takes off its final one), LeakyReLU,
  PReLU, ReLU6, Hardtanh, Hardsigmoid (exact ReLU graphs,
  :mod:`gpuopt.io.piecewise`), Flatten, BatchNorm1d/2d (running statistics; folded into the
  Linear/Conv2d that feeds only it, else an elementwise map), MaxPool1d/2d, AvgPool1d/2d,
  AdaptiveAvgPool2d to 1x1, ZeroPad2d/ConstantPad2d, Identity, Dropout, Upsample (nearest),
  PixelShuffle/PixelUnshuffle; containers are traced
  through; a grouped kernel becomes one kernel that is zero between the groups, and a 1-D layer
  on ``(C, L)`` the 2-D one on ``(C, 1, L)``;
* functions and methods: relu, leaky_relu, relu6, hardtanh, hardsigmoid, abs, clamp/clip (constant
  bounds), maximum/minimum (of two data tensors or with a constant), add/sub of two data tensors
  or of a constant, mul/div by a constant, neg, cat, flatten, view/reshape (the batch axis kept,
  as ``x.size(0)``, ``x.shape[0]`` or ``-1``), max_pool2d/avg_pool2d/adaptive_avg_pool2d, pad
  (constant), dropout (identity at inference), contiguous;
* selections, as exact ``Slice``/``Gather``/``Transpose``/pooling layers (:mod:`gpuopt.io.selection`):
  split/chunk (and unpacking their parts), indexing ``x[:, ...]`` with ints, slices (positive
  steps), ``None`` and ``...``, repeat, expand/expand_as, permute/transpose (the batch axis first),
  unsqueeze/squeeze, sum/mean/amax/amin over given per-sample dims, nearest and nearest-exact
  interpolate, pixel_shuffle/pixel_unshuffle.

Anything else raises :class:`~gpuopt.errors.UnsupportedLayerError` naming the node. Control flow
that depends on the data cannot be traced and is refused with the tracer's message.
"""

from __future__ import annotations

import math
import operator

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidInputError, UnsupportedLayerError
from . import piecewise
from .folding import batchnorm_affine, fold_affine, ungroup_kernel
from ..layers import (Add, AvgPool2d, Concat, Conv2d, ConvTranspose2d, Dense, ElementwiseAffine, Flatten, Gather,
                      LogSoftmax, MaxPool2d, Pad, ReLU, Reshape, Sigmoid, Slice, Softmax, Tanh, Transpose)
from .selection import (depth_to_space_layers, pixel_unshuffle_layers, reduce_layers, rowwise_linear_layers,
                        torch_nearest_indices)

__all__ = ["trace_layers"]

_BATCH = object()  # the value of x.size(0) / x.shape[0]


def _np(t) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _single(v) -> int:
    return int(v) if isinstance(v, int) else int(v[0])


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class _Tracer:
    def __init__(self, model, shape, layers):
        self.model = model
        self.layers = list(layers)
        self.inputs = [(i - 1,) for i in range(len(self.layers))]
        self.env: dict = {}
        self.errors: dict = {}  # layer -> (parameter error bounds): see batchnorm
        self.shapes: dict = {}  # layer index -> per-sample shape
        start = len(self.layers) - 1
        self.shapes[-1] = tuple(shape)
        sh = tuple(shape)
        for i, layer in enumerate(self.layers):
            sh = layer.output_shape(sh)
            self.shapes[i] = sh
        self.start = start

    # ------------------------------------------------------------------ helpers
    def unsupported(self, node, what: str) -> UnsupportedLayerError:
        return UnsupportedLayerError(f"node {node.name!r} ({what}) is not supported", node=node.name, op_type=what)

    def add(self, layer, inputs, node) -> int:
        shapes = [self.shapes[j] for j in inputs]
        try:
            out = tuple(layer.output_shape(*shapes))
        except InvalidInputError as err:
            raise UnsupportedLayerError(f"node {node.name!r}: {err}", node=node.name,
                                        op_type=type(layer).__name__) from None
        self.layers.append(layer)
        self.inputs.append(tuple(inputs))
        i = len(self.layers) - 1
        self.shapes[i] = out
        return i

    def data(self, node, value) -> int:
        if not isinstance(value, tuple) or value[0] != "data":
            raise self.unsupported(node, "an operation on a non-tensor or constant argument")
        return value[1]

    def is_data(self, value) -> bool:
        return isinstance(value, tuple) and len(value) == 2 and value[0] == "data"

    def const_map(self, node, ref, c, kind):
        """``x * c`` (kind "mul") or ``x + c`` (kind "add") for a constant ``c``: an ElementwiseAffine."""
        c = self.per_sample_constant(node, ref, c)
        scale, shift = (c, np.zeros(())) if kind == "mul" else (np.ones(()), c)
        return ("data", self.add(ElementwiseAffine(scale, shift), (ref,), node))

    def value(self, arg):
        if isinstance(arg, torch.fx.Node):
            return self.env[arg]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.value(a) for a in arg)
        return arg

    # ------------------------------------------------------------------ run
    def run(self):
        try:
            gm = torch.fx.symbolic_trace(self.model)
        except Exception as err:  # noqa: BLE001 - the tracer raises many kinds
            raise UnsupportedLayerError(f"`model` cannot be traced by torch.fx: {type(err).__name__}: {err}",
                                        op_type="trace") from None
        modules = dict(gm.named_modules())
        users = {n: len(n.users) for n in gm.graph.nodes}
        self.producer: dict = {}  # layer index -> fx node that created it
        placeholders = 0
        out = None
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                placeholders += 1
                if placeholders > 1:
                    if node.args:  # an argument with a default value is not an input
                        self.env[node] = node.args[0]
                        continue
                    raise UnsupportedLayerError(f"`model.forward` takes more than one input ({node.name!r})",
                                                node=node.name, op_type="placeholder")
                self.env[node] = ("data", self.start)
            elif node.op == "get_attr":
                obj = gm
                for part in node.target.split("."):
                    obj = getattr(obj, part)
                self.env[node] = _np(obj) if isinstance(obj, torch.Tensor) else obj
            elif node.op == "call_module":
                self.env[node] = self.module(node, modules[node.target], users)
            elif node.op in ("call_function", "call_method"):
                self.env[node] = self.function(node)
            elif node.op == "output":
                out = self.value(node.args[0])
        if out is None or not self.is_data(out):
            raise UnsupportedLayerError("`model` must return one tensor computed from its input", op_type="output")
        ref = out[1]
        if len(self.shapes[ref]) != 1 or ref != len(self.layers) - 1 or ref < 0:
            ref = self.add(Flatten(), (ref,), node)
        return self.layers, self.inputs, self.errors

    # ------------------------------------------------------------------ modules
    def module(self, node, mod, users):
        nn = torch.nn
        name = node.target
        x = self.data(node, self.value(node.args[0]))
        shape = self.shapes[x]

        def refuse(why=""):
            msg = f"module {name!r} of type {type(mod).__name__} is not supported"
            raise UnsupportedLayerError(msg + (f": {why}" if why else ""), node=name, op_type=type(mod).__name__)

        if isinstance(mod, nn.Linear):
            b = _np(mod.bias) if mod.bias is not None else np.zeros(mod.out_features)
            if len(shape) != 1 and math.prod(shape[:-1]) != 1:  # on every row of the last axis
                i = self.chain(node, x, rowwise_linear_layers(shape, _np(mod.weight), b))
                self.producer[i] = node
                return ("data", i)
            if len(shape) != 1:
                x = self.add(Flatten(), (x,), node)
            i = self.add(Dense(_np(mod.weight), b), (x,), node)
            out_shape = tuple(shape[:-1]) + (mod.out_features,) if len(shape) != 1 else None
            if out_shape is not None:
                i = self.add(Reshape(out_shape), (i,), node)
        elif isinstance(mod, (nn.Conv2d, nn.Conv1d)):
            if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
                refuse(f"padding {mod.padding!r} / mode {mod.padding_mode!r}")
            b = _np(mod.bias) if mod.bias is not None else np.zeros(mod.out_channels)
            w = ungroup_kernel(_np(mod.weight), mod.groups) if mod.groups != 1 else _np(mod.weight)
            if isinstance(mod, nn.Conv1d):  # on (C, L) as a 2-D convolution on (C, 1, L)
                i = self.one_d(node, x, lambda v: self.add(
                    Conv2d(w[:, :, None, :], b, (1,) + tuple(mod.stride), (0, mod.padding[0], 0, mod.padding[0]),
                           (1,) + tuple(mod.dilation)), (v,), node))
            else:
                ph, pw = mod.padding
                i = self.add(Conv2d(w, b, mod.stride, (ph, pw, ph, pw), mod.dilation), (x,), node)
        elif isinstance(mod, (nn.MaxPool1d, nn.AvgPool1d)):
            if mod.ceil_mode or getattr(mod, "return_indices", False):
                refuse("ceil_mode / return_indices")
            k, st, p = (_single(v) for v in (mod.kernel_size, mod.stride or mod.kernel_size, mod.padding))
            if isinstance(mod, nn.MaxPool1d):
                layer = MaxPool2d((1, k), (1, st), (0, p, 0, p), (1, _single(mod.dilation)))
            else:
                layer = AvgPool2d((1, k), (1, st), (0, p, 0, p), mod.count_include_pad)
            i = self.one_d(node, x, lambda v: self.add(layer, (v,), node))
        elif isinstance(mod, nn.ConvTranspose2d):
            if mod.groups != 1 or mod.padding_mode != "zeros":
                refuse(f"groups={mod.groups}, mode {mod.padding_mode!r}")
            b = _np(mod.bias) if mod.bias is not None else np.zeros(mod.out_channels)
            ph, pw = mod.padding
            i = self.add(ConvTranspose2d(_np(mod.weight), b, mod.stride, (ph, pw, ph, pw), mod.output_padding,
                                         mod.dilation), (x,), node)
        elif isinstance(mod, nn.ReLU):
            i = self.add(ReLU(), (x,), node)
        elif isinstance(mod, (nn.Sigmoid, nn.Tanh)):
            i = self.add(Sigmoid() if isinstance(mod, nn.Sigmoid) else Tanh(), (x,), node)
        elif isinstance(mod, (nn.Softmax, nn.LogSoftmax)):
            i = self.softmax(node, x, mod.dim, log=isinstance(mod, nn.LogSoftmax))
        elif isinstance(mod, (nn.LeakyReLU, nn.PReLU, nn.ReLU6, nn.Hardtanh, nn.Hardsigmoid)):
            i = self.piecewise_module(node, mod, x)
        elif isinstance(mod, nn.Flatten):
            if mod.start_dim != 1 or mod.end_dim != -1:
                refuse("Flatten must flatten dims 1..-1")
            i = self.add(Flatten(), (x,), node)
        elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if mod.running_mean is None:
                refuse("BatchNorm without running statistics")
            i = self.batchnorm(node, mod, x, users)
        elif isinstance(mod, nn.MaxPool2d):
            if mod.ceil_mode or mod.return_indices:
                refuse("ceil_mode / return_indices")
            ph, pw = _pair(mod.padding)
            i = self.add(MaxPool2d(_pair(mod.kernel_size), _pair(mod.stride or mod.kernel_size), (ph, pw, ph, pw),
                                   _pair(mod.dilation)), (x,), node)
        elif isinstance(mod, nn.AvgPool2d):
            if mod.ceil_mode or mod.divisor_override is not None:
                refuse("ceil_mode / divisor_override")
            ph, pw = _pair(mod.padding)
            i = self.add(AvgPool2d(_pair(mod.kernel_size), _pair(mod.stride or mod.kernel_size), (ph, pw, ph, pw),
                                   mod.count_include_pad), (x,), node)
        elif isinstance(mod, nn.AdaptiveAvgPool2d):
            i = self.adaptive_avg(node, x, mod.output_size)
        elif isinstance(mod, (nn.ZeroPad2d, nn.ConstantPad2d)):
            left, right, top, bottom = mod.padding
            i = self.add(Pad((0, top, left, 0, bottom, right), float(getattr(mod, "value", 0.0))), (x,), node)
        elif isinstance(mod, (nn.Identity, nn.Dropout)):
            i = x
        elif isinstance(mod, nn.Upsample):
            i = self.resize(node, x, mod.size, mod.scale_factor, mod.mode, mod.recompute_scale_factor,
                            mod.align_corners)
        elif isinstance(mod, (nn.PixelShuffle, nn.PixelUnshuffle)):
            block = mod.upscale_factor if isinstance(mod, nn.PixelShuffle) else mod.downscale_factor
            i = self.pixel_shuffle(node, x, int(block), isinstance(mod, nn.PixelShuffle))
        else:
            refuse("(supported: Linear, Conv2d, Conv1d, ConvTranspose2d, ReLU, Sigmoid, Tanh, Softmax, LogSoftmax, "
                   "LeakyReLU, PReLU, ReLU6, Hardtanh, Hardsigmoid, Flatten, BatchNorm1d/2d, MaxPool1d/2d, AvgPool1d/2d, "
                   "AdaptiveAvgPool2d to 1x1, ZeroPad2d, ConstantPad2d, Identity, Dropout, Upsample (nearest), "
                   "PixelShuffle, PixelUnshuffle, and containers)")
        if i != x:
            self.producer[i] = node
        return ("data", i)

    def one_d(self, node, x, add_2d) -> int:
        """A 2-D layer ``add_2d(ref)`` applied to 1-D data ``(C, L)`` viewed as ``(C, 1, L)``."""
        shape = self.shapes[x]
        if len(shape) != 2:
            raise self.unsupported(node, f"a 1-D layer on data of per-sample shape {shape}")
        i = add_2d(self.add(Reshape((shape[0], 1, shape[1])), (x,), node))
        c, _, length = self.shapes[i]
        return self.add(Reshape((c, length)), (i,), node)

    # ------------------------------------------------------------------ piecewise-linear maps
    def piecewise(self, node, x, terms_const) -> int:
        """Appends a piecewise-linear map as ReLUs (:mod:`gpuopt.io.piecewise`)."""
        terms, const = terms_const
        try:
            return piecewise.add_relu_terms(lambda layer, inputs: self.add(layer, inputs, node), x, terms, const,
                                            record=self._record_errors)
        except ValueError as err:
            raise self.unsupported(node, str(err)) from None

    def piecewise_module(self, node, mod, x) -> int:
        nn = torch.nn
        if isinstance(mod, nn.LeakyReLU):
            return self.piecewise(node, x, piecewise.leaky_terms(np.asarray(float(mod.negative_slope))))
        if isinstance(mod, nn.PReLU):
            w, shape = _np(mod.weight), self.shapes[x]
            if w.size != 1:
                if not shape or shape[0] != w.size:
                    raise self.unsupported(node, f"PReLU with {w.size} slopes on data of shape {shape}")
                w = w.reshape((w.size,) + (1,) * (len(shape) - 1))
            return self.piecewise(node, x, piecewise.leaky_terms(w.reshape(()) if w.size == 1 else w))
        if isinstance(mod, nn.Hardsigmoid):
            return self.piecewise(node, x, _hardsigmoid_terms())
        lo, hi = (0.0, 6.0) if isinstance(mod, nn.ReLU6) else (float(mod.min_val), float(mod.max_val))
        return self.piecewise(node, x, piecewise.clip_terms(np.asarray(lo), np.asarray(hi)))

    def batchnorm(self, node, bn, x, users):
        """Folded into the Conv2d/Linear that feeds only it, else an elementwise map; the
        rounding of the fold is measured and kept (:mod:`gpuopt.io.folding`)."""
        mean, var = _np(bn.running_mean), _np(bn.running_var)
        gamma = _np(bn.weight) if bn.weight is not None else np.ones_like(mean)
        beta = _np(bn.bias) if bn.bias is not None else np.zeros_like(mean)
        scale, shift, es, et = batchnorm_affine(gamma, beta, mean, var, bn.eps)
        prev = self.layers[x] if x >= 0 else None
        src = self.producer.get(x)
        single = src is not None and users.get(src, 0) == 1 and x == len(self.layers) - 1
        if single and isinstance(prev, (Conv2d, Dense)) and (isinstance(prev, Conv2d) or len(self.shapes[x]) == 1):
            col = (slice(None),) + (None,) * (prev.weight.ndim - 1)
            e1, e2 = self.errors.get(x, (0.0, 0.0))
            w, b, f1, f2 = fold_affine(prev.weight, prev.bias, scale[col], scale, shift, e1, e2, es[col], es, et)
            if isinstance(prev, Conv2d):
                self.layers[x] = Conv2d(w, b, prev.stride, prev.padding, prev.dilation)
            else:
                self.layers[x] = Dense(w, b)
            self._record_errors(x, f1, f2)
            return x
        bshape = (len(scale),) + (1,) * (len(self.shapes[x]) - 1)
        i = self.add(ElementwiseAffine(scale.reshape(bshape), shift.reshape(bshape)), (x,), node)
        self._record_errors(i, es.reshape(bshape), et.reshape(bshape))
        return i

    def _record_errors(self, i: int, f1, f2):
        if np.any(f1) or np.any(f2):
            self.errors[i] = (np.abs(f1), np.abs(f2))
        else:
            self.errors.pop(i, None)

    def adaptive_avg(self, node, x, size):
        shape = self.shapes[x]
        size = _pair(size) if size is not None else shape[1:]
        if len(shape) != 3 or any(s is None for s in size) or shape[1] % size[0] or shape[2] % size[1]:
            raise self.unsupported(node, f"adaptive average pooling of {shape} to {size} with unequal windows")
        k = (shape[1] // size[0], shape[2] // size[1])
        return self.add(AvgPool2d(k, k), (x,), node)

    # ------------------------------------------------------------------ functions and methods
    def function(self, node):
        t = node.target
        args = [self.value(a) for a in node.args]
        kwargs = {k: self.value(v) for k, v in node.kwargs.items()}
        name = t if isinstance(t, str) else getattr(t, "__name__", str(t))
        if name in ("size",) and node.op == "call_method":
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            if dim == 0:
                return _BATCH
            if dim is None:
                return ("size", self.data(node, args[0]))
            raise self.unsupported(node, f"size({dim})")
        if t is getattr and args[1] == "shape":
            return ("size", self.data(node, args[0]))
        if t is operator.getitem and isinstance(args[0], tuple) and args[0][0] == "size":
            if args[1] == 0:
                return _BATCH
            raise self.unsupported(node, "a per-sample size used as a value")
        if name in ("relu", "relu_", "sigmoid", "tanh"):
            layer = ReLU() if name.startswith("relu") else Sigmoid() if name == "sigmoid" else Tanh()
            return ("data", self.add(layer, (self.data(node, args[0] if args else kwargs.get("input")),), node))
        if name in ("softmax", "log_softmax") and not kwargs.get("dtype") and not (len(args) > 2 and args[2] is not None):
            x = self.data(node, args[0] if args else kwargs.get("input"))
            return ("data", self.softmax(node, x, args[1] if len(args) > 1 else kwargs.get("dim"),
                                         log=name == "log_softmax"))
        if t in (F.leaky_relu, F.relu6, F.hardtanh, F.hardsigmoid, torch.abs, torch.clamp, torch.clip, torch.maximum,
                 torch.minimum) or (node.op == "call_method" and name in ("abs", "clamp", "clip", "maximum", "minimum")):
            return self.piecewise_function(node, t, name, args, kwargs)
        if name in ("contiguous", "clone", "detach") or (name == "dropout" and not kwargs.get("training", False)
                                                          and not (len(args) > 2 and args[2])):
            return args[0]
        if t in (operator.add, torch.add) or name in ("add", "add_"):
            return self.binary(node, args, kwargs, "add")
        if t in (operator.sub, torch.sub) or name in ("sub",):
            return self.binary(node, args, kwargs, "sub")
        if t in (operator.mul, torch.mul) or name == "mul":
            a, b = args[0], args[1]
            if self.is_data(a) and self.is_data(b):
                raise self.unsupported(node, "a product of two data tensors (not affine)")
            x, c = (a, b) if self.is_data(a) else (b, a)
            return self.const_map(node, self.data(node, x), c, "mul")
        if t in (operator.truediv, torch.div) or name == "div":
            if not self.is_data(args[0]) or self.is_data(args[1]):
                raise self.unsupported(node, "division by data (not affine)")
            c = np.asarray(args[1], dtype=np.float64)
            if np.any(c == 0):
                raise self.unsupported(node, "division by zero")
            return self.const_map(node, self.data(node, args[0]), 1.0 / c, "mul")
        if t in (operator.neg, torch.neg) or name == "neg":
            return self.const_map(node, self.data(node, args[0]), -1.0, "mul")
        if t is torch.cat or name in ("cat", "concat"):
            tensors = args[0]
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            refs = [self.data(node, v) for v in tensors]
            rank = len(self.shapes[refs[0]]) + 1
            dim = dim + rank if dim < 0 else dim
            if dim == 0:
                raise self.unsupported(node, "cat along the batch axis")
            if len(refs) == 1:
                return ("data", refs[0])
            return ("data", self.add(Concat(dim - 1, len(refs)), refs, node))
        if t is torch.flatten or name == "flatten":
            start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0 if t is torch.flatten else 0)
            end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
            if start != 1 or end != -1:
                raise self.unsupported(node, f"flatten({start}, {end}) (only dims 1..-1)")
            return ("data", self.add(Flatten(), (self.data(node, args[0]),), node))
        if name in ("view", "reshape"):
            return self.reshape(node, args)
        if t is F.max_pool2d or t is F.avg_pool2d or t is F.adaptive_avg_pool2d or t is F.pad:
            return self.functional_pool(node, t, args, kwargs)
        try:
            if t is operator.getitem and isinstance(args[0], list):  # one part of a split
                return args[0][args[1]]
            if t is operator.getitem and self.is_data(args[0]):
                return ("data", self.index(node, args[0][1], args[1]))
            return self.selection(node, t, name, args, kwargs)
        except (ValueError, TypeError, IndexError, ZeroDivisionError) as err:  # malformed or data-dependent arguments
            raise self.unsupported(node, f"{node.op} {name} with arguments {node.args!r} ({type(err).__name__}: "
                                         f"{err})") from None

    # ------------------------------------------------------------------ selections
    def per_sample_dim(self, node, ref, dim, what) -> int:
        """The per-sample axis of torch dimension ``dim`` (the batch axis is dimension 0)."""
        rank = len(self.shapes[ref]) + 1
        if not isinstance(dim, int) or not -rank <= dim < rank:
            raise self.unsupported(node, f"{what} along dimension {dim!r}")
        dim = dim + rank if dim < 0 else dim
        if dim == 0:
            raise self.unsupported(node, f"{what} along the batch axis")
        return dim - 1

    def chain(self, node, ref, layers) -> int:
        for layer in layers:
            ref = self.add(layer, (ref,), node)
        return ref

    def select(self, node, ref, axis, indices) -> int:
        """``Gather(axis, indices)`` unless it selects every entry in order."""
        indices = tuple(int(i) for i in indices)
        if indices == tuple(range(self.shapes[ref][axis])):
            return ref
        return self.add(Gather(axis, indices), (ref,), node)

    def selection(self, node, t, name, args, kwargs):
        """Splits, indexing, repeats, broadcasts, permutations, reductions and resampling."""
        method = node.op == "call_method"
        x = args[0] if args else kwargs.get("input")
        if t in (torch.split, torch.chunk) or (method and name in ("split", "chunk")):
            ref = self.data(node, x)
            size = args[1] if len(args) > 1 else kwargs.get("split_size_or_sections", kwargs.get("split_size",
                                                                                          kwargs.get("chunks")))
            axis = self.per_sample_dim(node, ref, args[2] if len(args) > 2 else kwargs.get("dim", 0), name)
            n = self.shapes[ref][axis]
            if name == "chunk" or t is torch.chunk:
                size = -(-n // int(size))
            parts = [size] * (-(-n // size)) if isinstance(size, int) else list(size)
            if isinstance(size, int):
                parts[-1] = n - size * (len(parts) - 1)
            if min(parts) < 1 or sum(parts) != n:
                raise self.unsupported(node, f"{name} of a dimension of size {n} into {parts}")
            out, start = [], 0
            for length in parts:
                ref_k = ref if length == n else self.add(Slice(axis, start, start + length), (ref,), node)
                out.append(("data", ref_k))
                start += length
            return out
        if method and name == "repeat":
            ref = self.data(node, x)
            reps = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
            shape = self.shapes[ref]
            if len(reps) != len(shape) + 1 or reps[0] != 1 or min(reps) < 1:
                raise self.unsupported(node, f"repeat{tuple(reps)} of per-sample shape {shape} (the batch axis "
                                             "must repeat once, and no axis may be added)")
            for a, r in enumerate(reps[1:]):
                if r > 1:
                    ref = self.select(node, ref, a, tuple(range(shape[a])) * r)
            return ("data", ref)
        if method and name in ("expand", "expand_as"):
            ref = self.data(node, x)
            if name == "expand_as":
                other = args[1]
                sizes = [-1] + list(self.shapes[self.data(node, other)]) if self.is_data(other) else list(
                    np.shape(other))
            else:
                sizes = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
            shape = self.shapes[ref]
            if len(sizes) != len(shape) + 1 or not (sizes[0] is _BATCH or sizes[0] == -1):
                raise self.unsupported(node, f"expand to {sizes} from per-sample shape {shape}")
            for a, n in enumerate(sizes[1:]):
                if n != -1 and n != shape[a]:
                    if shape[a] != 1 or not isinstance(n, int) or n < 1:
                        raise self.unsupported(node, f"expand of per-sample shape {shape} to {sizes}")
                    ref = self.select(node, ref, a, (0,) * n)
            return ("data", ref)
        if t in (torch.permute, torch.transpose) or (method and name in ("permute", "transpose")):
            ref = self.data(node, x)
            rank = len(self.shapes[ref]) + 1
            if name == "transpose" or t is torch.transpose:
                dims = list(args[1:3]) + [kwargs[k] for k in ("dim0", "dim1") if k in kwargs]
                if len(dims) != 2 or not all(isinstance(d, int) and -rank <= d < rank for d in dims):
                    raise self.unsupported(node, f"transpose of dimensions {dims} of a rank-{rank} tensor")
                d0, d1 = (d + rank if d < 0 else d for d in dims)
                perm = list(range(rank))
                perm[d0], perm[d1] = perm[d1], perm[d0]
            else:
                dims = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
                perm = [d + rank if d < 0 else d for d in (dims or kwargs.get("dims", ()))]
            if sorted(perm) != list(range(rank)) or perm[0] != 0:
                raise self.unsupported(node, f"{name} {perm} (the batch axis must stay first)")
            if perm == list(range(rank)):
                return ("data", ref)
            return ("data", self.add(Transpose(tuple(p - 1 for p in perm[1:])), (ref,), node))
        if t in (torch.unsqueeze, torch.squeeze) or (method and name in ("unsqueeze", "squeeze")):
            ref = self.data(node, x)
            shape = list(self.shapes[ref])
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            if name == "unsqueeze":
                rank = len(shape) + 2
                dim = dim + rank if dim < 0 else dim
                if not 1 <= dim < rank:
                    raise self.unsupported(node, f"unsqueeze({dim}) before the batch axis")
                shape.insert(dim - 1, 1)
            elif dim is None:
                shape = [d for d in shape if d != 1] or [1]
            else:
                axis = self.per_sample_dim(node, ref, dim, "squeeze")
                if shape[axis] == 1 and len(shape) > 1:
                    shape.pop(axis)
            return ("data", self.add(Reshape(tuple(shape)), (ref,), node))
        if t in (torch.sum, torch.mean, torch.amax, torch.amin) or (method and name in ("sum", "mean", "amax", "amin")):
            ref = self.data(node, x)
            dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis"))
            keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
            if kwargs.get("dtype") is not None:
                raise self.unsupported(node, f"{name} with a dtype")
            if dim is None or (isinstance(dim, (list, tuple)) and not dim):
                raise self.unsupported(node, f"{name} over every dimension (the batch axis too); give dim")
            dims = [dim] if isinstance(dim, int) else list(dim)
            axes = sorted({self.per_sample_dim(node, ref, d, name) for d in dims})
            if len(axes) != len(dims):
                raise self.unsupported(node, f"{name} over the dimensions {dims}, one of them twice")
            shape = self.shapes[ref]
            out = tuple(1 if a in axes else n for a, n in enumerate(shape)) if keepdim else tuple(
                n for a, n in enumerate(shape) if a not in axes)
            kind = {"sum": "sum", "mean": "mean", "amax": "max", "amin": "min"}[name]
            ref = self.chain(node, ref, reduce_layers(shape, axes, kind))
            return ("data", self.add(Reshape(out or (1,)), (ref,), node))
        if t is F.interpolate:
            ref = self.data(node, x)
            names = ("size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias")
            vals = {n: (args[k + 1] if len(args) > k + 1 else kwargs.get(n)) for k, n in enumerate(names)}
            mode = vals["mode"] if len(args) > 3 or "mode" in kwargs else "nearest"
            return ("data", self.resize(node, ref, vals["size"], vals["scale_factor"], mode,
                                        vals["recompute_scale_factor"], vals["align_corners"], vals["antialias"]))
        if t in (F.pixel_shuffle, F.pixel_unshuffle, torch.pixel_shuffle, torch.pixel_unshuffle):
            return ("data", self.pixel_shuffle(node, self.data(node, x), int(args[1] if len(args) > 1 else next(
                iter(kwargs.values()))), "unshuffle" not in name))
        raise self.unsupported(node, f"{node.op} {name}")

    def index(self, node, ref, key) -> int:
        """``x[key]`` with the batch axis kept: ints, slices (positive steps), ``None`` and ``...``."""
        key = list(key) if isinstance(key, tuple) else [key]
        if any(not isinstance(k, (int, slice, type(None), type(Ellipsis))) or isinstance(k, bool) for k in key):
            raise self.unsupported(node, f"indexing with {key!r} (ints, slices, None and ... only)")
        if key.count(Ellipsis) > 1:
            raise self.unsupported(node, "indexing with two ...")
        shape = list(self.shapes[ref])
        if Ellipsis in key:  # ... stands for the dimensions (the batch axis among them) no other entry takes
            k = key.index(Ellipsis)
            fill = len(shape) + 1 - sum(1 for v in key if v is not None and v is not Ellipsis)
            key[k:k + 1] = [slice(None)] * max(fill, 0)
        if not key or key[0] != slice(None):
            raise self.unsupported(node, "indexing that does not keep the batch axis whole (x[:, ...])")
        key = key[1:]
        if sum(1 for v in key if v is not None) > len(shape):
            raise self.unsupported(node, f"indexing {len(key)} dimensions of per-sample shape {tuple(shape)}")
        axis = 0
        for k in key:
            if k is None:
                shape.insert(axis, 1)
                ref = self.add(Reshape(tuple(shape)), (ref,), node)
                axis += 1
            elif isinstance(k, int):
                n = shape[axis]
                if not -n <= k < n:
                    raise self.unsupported(node, f"index {k} out of range for a dimension of size {n}")
                if len(shape) == 1:
                    raise self.unsupported(node, "an index that leaves no per-sample axis")
                ref = self.add(Gather(axis, k + n if k < 0 else k), (ref,), node)
                shape.pop(axis)
            else:
                start, stop, step = k.indices(shape[axis])
                if step < 1:
                    raise self.unsupported(node, f"slice step {step} (only positive steps)")
                if start >= stop:
                    raise self.unsupported(node, f"the empty slice {k}")
                if (start, stop, step) != (0, shape[axis], 1):
                    ref = self.add(Slice(axis, start, stop, step), (ref,), node)
                    shape = list(self.shapes[ref])
                axis += 1
        return ref

    def resize(self, node, ref, size, scale_factor, mode, recompute, align_corners=None, antialias=False) -> int:
        """torch's nearest-neighbour ``interpolate`` (and ``nn.Upsample``) as one ``Gather`` per
        resized axis of ``(C, L)`` or ``(C, H, W)``."""
        shape = self.shapes[ref]
        if mode not in ("nearest", "nearest-exact"):
            raise self.unsupported(node, f"interpolate mode {mode!r} (only nearest and nearest-exact)")
        if align_corners is not None or antialias:
            raise self.unsupported(node, "align_corners or antialias with nearest interpolation")
        if len(shape) not in (2, 3):
            raise self.unsupported(node, f"interpolate of per-sample shape {shape} (expected (C, L) or (C, H, W))")
        spatial = shape[1:]
        k = len(spatial)
        if (size is None) == (scale_factor is None):
            raise self.unsupported(node, "interpolate needs exactly one of size and scale_factor")
        sizes = [size] * k if isinstance(size, int) else list(size) if size is not None else None
        scales = [scale_factor] * k if isinstance(scale_factor, (int, float)) else (
            list(scale_factor) if scale_factor is not None else None)
        if len(sizes or scales) != k:
            raise self.unsupported(node, f"interpolate with {len(sizes or scales)} sizes or scales for {k} axes")
        for a in range(k):
            n_in = spatial[a]
            if sizes is not None:
                n_out, s = int(sizes[a]), None
            else:
                n_out = int(math.floor(n_in * float(scales[a])))
                s = None if recompute else float(scales[a])
            if n_out < 1:
                raise self.unsupported(node, f"interpolate to size {n_out}")
            try:
                idx = torch_nearest_indices(n_in, n_out, s, mode == "nearest-exact")
            except ValueError as err:
                raise self.unsupported(node, f"interpolate: {err}") from None
            ref = self.select(node, ref, a + 1, idx)
        return ref

    def softmax(self, node, ref, dim, log: bool = False) -> int:
        """Softmax (``log``: LogSoftmax) along the last axis (the only one supported)."""
        rank = len(self.shapes[ref]) + 1
        what = "log_softmax" if log else "softmax"
        if not isinstance(dim, int) or (dim + rank if dim < 0 else dim) != rank - 1:
            raise self.unsupported(node, f"{what} along dimension {dim!r} (only the last one)")
        return self.add(LogSoftmax() if log else Softmax(), (ref,), node)

    def pixel_shuffle(self, node, ref, block: int, shuffle: bool) -> int:
        shape = self.shapes[ref]
        if len(shape) != 3 or block < 1 or (shuffle and shape[0] % (block * block)) or (
                not shuffle and (shape[1] % block or shape[2] % block)):
            raise self.unsupported(node, f"pixel_{'shuffle' if shuffle else 'unshuffle'}({block}) of per-sample "
                                         f"shape {shape}")
        layers = depth_to_space_layers(shape, block, "CRD") if shuffle else pixel_unshuffle_layers(shape, block)
        return self.chain(node, ref, layers)

    def piecewise_function(self, node, t, name, args, kwargs):
        if t in (torch.maximum, torch.minimum) or name in ("maximum", "minimum"):
            op = "max" if t is torch.maximum or name == "maximum" else "min"
            a = args[0] if args else kwargs.get("input")
            b = args[1] if len(args) > 1 else kwargs.get("other")
            if self.is_data(a) and self.is_data(b):
                if self.shapes[a[1]] != self.shapes[b[1]]:
                    raise self.unsupported(node, f"{op}imum of data tensors of shapes {self.shapes[a[1]]} and "
                                                 f"{self.shapes[b[1]]}")
                return ("data", piecewise.add_pairwise_extreme(lambda layer, inputs: self.add(layer, inputs, node),
                                                               (a[1], b[1]), op))
            x, c = (a, b) if self.is_data(a) else (b, a)
            c = self.per_sample_constant(node, self.data(node, x), c)
            return ("data", self.piecewise(node, x[1], (piecewise.max_const_terms if op == "max"
                                                         else piecewise.min_const_terms)(c)))
        x = self.data(node, args[0] if args else kwargs.get("input"))
        if t is torch.abs or name == "abs":
            return ("data", self.piecewise(node, x, piecewise.abs_terms()))
        if t is F.hardsigmoid:
            return ("data", self.piecewise(node, x, _hardsigmoid_terms()))
        if t is F.leaky_relu:
            slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
            return ("data", self.piecewise(node, x, piecewise.leaky_terms(np.asarray(float(slope)))))
        if t is F.relu6:
            lo, hi = 0.0, 6.0
        elif t is F.hardtanh:
            lo = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
            hi = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
        else:  # clamp / clip
            lo = args[1] if len(args) > 1 else kwargs.get("min")
            hi = args[2] if len(args) > 2 else kwargs.get("max")
        bounds = []
        for v in (lo, hi):
            if v is not None and (self.is_data(v) or np.asarray(v).size != 1):
                raise self.unsupported(node, f"{name} with a bound that is not a constant number")
            bounds.append(None if v is None else np.asarray(float(np.asarray(v).reshape(()))))
        return ("data", self.piecewise(node, x, piecewise.clip_terms(*bounds)))

    def per_sample_constant(self, node, ref, c) -> np.ndarray:
        """A constant operand without its batch axis, checked to broadcast to the data's shape."""
        shape = self.shapes[ref]
        c = np.asarray(c, dtype=np.float64)
        if c.ndim == len(shape) + 1:
            if c.shape[0] != 1:
                raise self.unsupported(node, "a constant that varies along the batch axis")
            c = c[0]
        try:
            if np.broadcast_shapes(c.shape, shape) != tuple(shape):
                raise ValueError
        except ValueError:
            raise self.unsupported(node, f"a constant of shape {c.shape} on data of shape {shape}") from None
        return c

    def binary(self, node, args, kwargs, kind):
        a, b = args[0], args[1]
        alpha = kwargs.get("alpha", 1)
        if alpha != 1:
            raise self.unsupported(node, f"{kind} with alpha={alpha}")
        if self.is_data(a) and self.is_data(b):
            ra, rb = a[1], b[1]
            if kind == "sub":
                rb = self.add(ElementwiseAffine(-np.ones(()), np.zeros(())), (rb,), node)
            if self.shapes[ra] != self.shapes[rb]:
                raise self.unsupported(node, f"{kind} of data tensors of shapes {self.shapes[ra]} and {self.shapes[rb]}")
            return ("data", self.add(Add(2), (ra, rb), node))
        if self.is_data(a):
            c = np.asarray(b, dtype=np.float64)
            return self.const_map(node, a[1], -c if kind == "sub" else c, "add")
        x = self.data(node, b)
        if kind == "sub":  # c - x
            neg = self.const_map(node, x, -1.0, "mul")[1]
            return self.const_map(node, neg, np.asarray(a, dtype=np.float64), "add")
        return self.const_map(node, x, np.asarray(a, dtype=np.float64), "add")

    def reshape(self, node, args):
        x = self.data(node, args[0])
        dims = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
        if not dims or not (dims[0] is _BATCH or dims[0] == -1 or dims[0] == 1):
            raise self.unsupported(node, "a reshape that does not keep the batch axis first")
        rest = dims[1:]
        if any(not isinstance(d, int) for d in rest):
            raise self.unsupported(node, "a reshape to sizes computed from the data")
        n = math.prod(self.shapes[x])
        if dims[0] == -1 and -1 in rest:
            raise self.unsupported(node, "a reshape with two -1 sizes")
        if -1 in rest:
            known = math.prod(d for d in rest if d != -1)
            if known == 0 or n % known:
                raise self.unsupported(node, f"reshape of {self.shapes[x]} to {rest}")
            rest[rest.index(-1)] = n // known
        if not rest:
            raise self.unsupported(node, "a reshape that removes every per-sample axis")
        if math.prod(rest) != n:
            raise self.unsupported(node, f"reshape of {self.shapes[x]} to {rest}")
        return ("data", self.add(Reshape(tuple(rest)), (x,), node))

    def functional_pool(self, node, t, args, kwargs):
        x = self.data(node, args[0])
        if t is F.pad:
            pad = list(args[1] if len(args) > 1 else kwargs["pad"])
            mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
            value = args[3] if len(args) > 3 else kwargs.get("value", 0.0)
            if mode != "constant":
                raise self.unsupported(node, f"pad mode {mode!r}")
            r = len(self.shapes[x])
            if len(pad) % 2 or len(pad) // 2 > r or min(pad) < 0:
                raise self.unsupported(node, f"pad {pad}")
            begin, end = [0] * r, [0] * r
            for k in range(len(pad) // 2):
                begin[r - 1 - k], end[r - 1 - k] = pad[2 * k], pad[2 * k + 1]
            return ("data", self.add(Pad(tuple(begin + end), float(value or 0.0)), (x,), node))
        if t is F.adaptive_avg_pool2d:
            return ("data", self.adaptive_avg(node, x, args[1] if len(args) > 1 else kwargs["output_size"]))
        names = ("kernel_size", "stride", "padding")
        vals = {n: (args[k + 1] if len(args) > k + 1 else kwargs.get(n)) for k, n in enumerate(names)}
        kernel = _pair(vals["kernel_size"])
        stride = _pair(vals["stride"]) if vals["stride"] else kernel
        ph, pw = _pair(vals["padding"] or 0)
        if kwargs.get("ceil_mode") or (len(args) > 4 and args[4] if t is F.avg_pool2d else False):
            raise self.unsupported(node, "ceil_mode")
        if t is F.max_pool2d:
            dil = _pair(kwargs.get("dilation", args[4] if len(args) > 4 else 1))
            if kwargs.get("return_indices"):
                raise self.unsupported(node, "return_indices")
            return ("data", self.add(MaxPool2d(kernel, stride, (ph, pw, ph, pw), dil), (x,), node))
        include = kwargs.get("count_include_pad", args[5] if len(args) > 5 else True)
        if kwargs.get("divisor_override") is not None:
            raise self.unsupported(node, "divisor_override")
        return ("data", self.add(AvgPool2d(kernel, stride, (ph, pw, ph, pw), include), (x,), node))


def _hardsigmoid_terms():
    """torch's ``hardsigmoid(x) = relu6(x + 3) / 6``: ``r relu(x + 3) - r relu(x - 3)`` with
    ``r = fl(1/6)``, its rounding bounded by one ulp."""
    r = np.asarray(1.0 / 6.0)
    err = np.spacing(r)
    return [piecewise.Term(r, True, b=3.0, scale_err=err), piecewise.Term(-r, True, b=-3.0, scale_err=err)], 0.0


def trace_layers(model: torch.nn.Module, shape: tuple[int, ...], prefix) -> tuple[list, list, dict]:
    """``(layers, inputs, errors)`` of ``model`` traced on samples of ``shape``, after the
    ``prefix`` layers (a chain, e.g. an input normalisation) that its input goes through first;
    ``errors`` maps a layer to the bounds on its rounded parameters (see
    :attr:`~gpuopt.network.Network.param_errors`)."""
    tracer = _Tracer(model, shape, prefix)
    return tracer.run()
