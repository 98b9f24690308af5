"""Graph networks (residual Add, Concat, pooling, selections, transposed convolutions) against
independent references.

The reference forward pass (``_ref_forward``) is written here with plain numpy over
``network.layers``/``network.inputs``: explicit convolution windows, an explicit scatter for the
transposed convolution, pooling windows listed by hand. It runs in float64 or, on numpy object
arrays of ``Fraction``, exactly. It never calls a layer's ``apply`` or ``operator`` nor
gpuopt's lowering. The MILP and ``verify`` answers are checked against an exhaustive enumeration of
the linear pieces of the network (ReLU signs and max-pool winners, each piece an LP in scipy),
also built on that reference and not on gpuopt's affine-block form.
"""

from __future__ import annotations

import functools
import math
import pickle
import re
from fractions import Fraction

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from gpuopt import Box, OutputSpec, Problem, Status, VerifyConfig, verify
from gpuopt.bounds import alpha_crown_linear_lower, crown, crown_linear_lower, ibp
from gpuopt.check import _exact_forward, _forward_with_error, check_counterexample, parameter_deviation
from gpuopt.errors import InvalidInputError
from gpuopt.milp import encode_bigm
from gpuopt.milp.highs import MilpStatus, solve_milp
from gpuopt.relu_split import ReluSplitConfig
from gpuopt.network import (Add, AvgPool2d, Concat, Conv2d, ConvTranspose2d, Dense, ElementwiseAffine, Flatten,
                            Gather, MaxPool2d, Network, Pad, ReLU, Reshape, Slice, Transpose)

from helpers import affine_view_values, box_points, random_dag_network, random_spec

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


# ============================================================================ reference forward
def _cast(a, exact: bool):
    """``a`` as float64, or as an object array of the Fractions its float64 entries equal."""
    a = np.asarray(a, dtype=np.float64)
    if not exact:
        return a
    out = np.empty(a.shape, dtype=object)
    for idx, v in np.ndenumerate(a):
        out[idx] = Fraction(float(v))
    return out


def _zeros(shape, like):
    if like.dtype == object:
        out = np.empty(shape, dtype=object)
        out.fill(Fraction(0))
        return out
    return np.zeros(shape)


def _pool_taps(shape, kernel, stride, padding, dilation):
    """Per output of a pooling layer (row-major (C, Ho, Wo)), the flattened input indices of its
    window positions inside the image, and the window size ``kh * kw``."""
    c, h, w = shape
    (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = kernel, stride, padding, dilation
    ho = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    taps = []
    for ch in range(c):
        for i in range(ho):
            for j in range(wo):
                win = []
                for a in range(kh):
                    for b in range(kw):
                        r, q = i * sh + a * dh - pt, j * sw + b * dw - pl
                        if 0 <= r < h and 0 <= q < w:
                            win.append((ch * h + r) * w + q)
                taps.append(win)
    return taps, (c, ho, wo)


def _ref_layer(layer, xs, *, bias: bool = True):
    """One layer on batch-first arrays (float64 or object/Fraction); ``bias=False`` drops every
    constant term (biases, shifts, pad values), giving the linear part of an affine layer."""
    exact = xs[0].dtype == object
    P = lambda a: _cast(a, exact)  # noqa: E731
    x = xs[0]
    B = x.shape[0]
    if isinstance(layer, Dense):
        y = x @ P(layer.weight).T
        return y + P(layer.bias)[None] if bias else y
    if isinstance(layer, Conv2d):
        w = P(layer.weight)
        c_out, _, kh, kw = w.shape
        (sh, sw), (dh, dw) = layer.stride, layer.dilation
        pt, pl, pb, pr = layer.padding
        xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=Fraction(0) if exact else 0.0)
        ho = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
        wo = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
        y = _zeros((B, c_out, ho, wo), x)
        for i in range(ho):
            for j in range(wo):
                win = xp[:, :, i * sh: i * sh + dh * (kh - 1) + 1: dh, j * sw: j * sw + dw * (kw - 1) + 1: dw]
                y[:, :, i, j] = np.tensordot(win, w, axes=([1, 2, 3], [1, 2, 3]))
        return y + P(layer.bias)[None, :, None, None] if bias else y
    if isinstance(layer, ConvTranspose2d):
        # input pixel (i, j) adds w[ci, :, a, b] at output (i s + a d - p_top, j s + b d - p_left)
        w = P(layer.weight)
        c_in, c_out, kh, kw = w.shape
        _, h, wd = x.shape[1:]
        (sh, sw), (dh, dw), (oph, opw) = layer.stride, layer.dilation, layer.output_padding
        pt, pl, pb, pr = layer.padding
        ho = (h - 1) * sh - pt - pb + dh * (kh - 1) + 1 + oph
        wo = (wd - 1) * sw - pl - pr + dw * (kw - 1) + 1 + opw
        y = _zeros((B, c_out, ho, wo), x)
        for ci in range(c_in):
            for i in range(h):
                for j in range(wd):
                    for a in range(kh):
                        for b in range(kw):
                            r, q = i * sh + a * dh - pt, j * sw + b * dw - pl
                            if 0 <= r < ho and 0 <= q < wo:
                                y[:, :, r, q] = y[:, :, r, q] + x[:, ci, i, j][:, None] * w[ci, :, a, b][None, :]
        return y + P(layer.bias)[None, :, None, None] if bias else y
    if isinstance(layer, ReLU):
        return np.maximum(x, Fraction(0) if exact else 0.0)
    if isinstance(layer, (Flatten,)):
        return x.reshape(B, -1)
    if isinstance(layer, Reshape):
        return x.reshape(B, *layer.shape)
    if isinstance(layer, ElementwiseAffine):
        y = x * P(layer.scale)[None]
        return y + P(layer.shift)[None] if bias else y
    if isinstance(layer, (MaxPool2d, AvgPool2d)):
        taps, out_shape = _pool_taps(x.shape[1:], layer.kernel, layer.stride, layer.padding, layer.dilation)
        flat = x.reshape(B, -1)
        y = _zeros((B, len(taps)), x)
        for o, win in enumerate(taps):
            if isinstance(layer, MaxPool2d):
                y[:, o] = functools.reduce(np.maximum, [flat[:, t] for t in win])
            else:
                n = layer.kernel[0] * layer.kernel[1] if layer.count_include_pad else len(win)
                s = functools.reduce(lambda a, b: a + b, [flat[:, t] for t in win])
                y[:, o] = s * Fraction(1, n) if exact else s / n
        return y.reshape(B, *out_shape)
    if isinstance(layer, Add):
        return functools.reduce(lambda a, b: a + b, xs)
    if isinstance(layer, Concat):
        return np.concatenate(xs, axis=layer.axis + 1)
    if isinstance(layer, Pad):
        r = len(layer.pads) // 2
        width = [(0, 0)] + [(layer.pads[k], layer.pads[k + r]) for k in range(r)]
        value = (Fraction(layer.value) if exact else layer.value) if bias else (Fraction(0) if exact else 0.0)
        return np.pad(x, width, constant_values=value)
    if isinstance(layer, Slice):
        index = [slice(None)] * x.ndim
        index[layer.axis + 1] = slice(layer.start, layer.stop, layer.step)
        return x[tuple(index)]
    if isinstance(layer, Gather):
        if isinstance(layer.indices, int):
            y = np.take(x, layer.indices, axis=layer.axis + 1)
            return y.reshape(B, 1) if y.ndim == 1 else y
        return np.take(x, list(layer.indices), axis=layer.axis + 1)
    if isinstance(layer, Transpose):
        return np.transpose(x, (0,) + tuple(p + 1 for p in layer.perm))
    raise TypeError(type(layer).__name__)  # pragma: no cover


def _ref_values(net: Network, x, *, exact: bool = False) -> dict:
    """Every layer's output (batch-first) for the inputs ``x`` (flattened or shaped)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1, *net.input_shape)
    vals = {-1: _cast(x, exact)}
    for i, (layer, ins) in enumerate(zip(net.layers, net.inputs)):
        vals[i] = _ref_layer(layer, [vals[j] for j in ins])
    return vals


def _ref_forward(net: Network, x, *, exact: bool = False) -> np.ndarray:
    y = _ref_values(net, x, exact=exact)[len(net.layers) - 1]
    return y.reshape(y.shape[0], -1)


def _blocks_forward(net: Network, x) -> tuple[np.ndarray, list[np.ndarray]]:
    """``affine_blocks`` evaluated in numpy: the outputs and the pre-activations."""
    pre, y = affine_view_values(net, x)
    return y, pre


def _scale_of(net: Network, x) -> float:
    """The magnitude the float64 rounding of a forward pass is relative to."""
    vals = _ref_values(net, x)
    return max(1.0, max(float(np.abs(v).max()) for v in vals.values()))


# ============================================================================ networks
def _w(rng, *shape, scale=None):
    fan = math.prod(shape[1:]) if len(shape) > 1 else 1
    return rng.normal(size=shape) / math.sqrt(fan) if scale is None else scale * rng.normal(size=shape)


def _dense(rng, n_out, n_in):
    return Dense(_w(rng, n_out, n_in), 0.3 * rng.normal(size=n_out))


def _conv(rng, c_out, c_in, kh, kw, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1)):
    return Conv2d(_w(rng, c_out, c_in, kh, kw), 0.3 * rng.normal(size=c_out), stride, padding, dilation)


def net_dense_residual(rng):
    """Dense -> ReLU -> Dense -> Add(., first Dense) -> ReLU -> Dense (a pre-activation skip)."""
    layers = [_dense(rng, 4, 3), ReLU(), _dense(rng, 4, 4), Add(), ReLU(), _dense(rng, 2, 4)]
    return Network(layers, (3,), inputs=[(-1,), (0,), (1,), (2, 0), (3,), (4,)])


def net_input_residual(rng):
    """Add of a ReLU branch and the raw input, three ways (Add with 3 inputs)."""
    layers = [_dense(rng, 3, 3), ReLU(), _dense(rng, 3, 3), Add(3), ReLU(), _dense(rng, 2, 3)]
    return Network(layers, (3,), inputs=[(-1,), (0,), (1,), (1, -1, 2), (3,), (4,)])


def net_conv_residual(rng):
    """(2, 4, 4): conv -> ReLU -> conv (asymmetric pads) -> Add(., input) -> ReLU -> maxpool."""
    layers = [_conv(rng, 2, 2, 3, 3, padding=(1, 1, 1, 1)), ReLU(),
              _conv(rng, 2, 2, 3, 3, padding=(0, 1, 2, 1)), Add(), ReLU(),
              MaxPool2d((2, 2), (2, 2)), Flatten(), _dense(rng, 3, 8)]
    return Network(layers, (2, 4, 4), inputs=[(-1,), (0,), (1,), (2, -1), (3,), (4,), (5,), (6,)])


def net_concat_features(rng):
    """Two Dense branches of the input, one through a ReLU, concatenated with the input."""
    layers = [_dense(rng, 3, 3), _dense(rng, 2, 3), ReLU(), Concat(0, 3), ReLU(), _dense(rng, 2, 8)]
    return Network(layers, (3,), inputs=[(-1,), (-1,), (0,), (2, 1, -1), (3,), (4,)])


def net_concat_channels(rng):
    """(1, 4, 4): two convolutions and the input concatenated along channels, then AvgPool."""
    layers = [_conv(rng, 2, 1, 3, 3, padding=(1, 1, 1, 1)), _conv(rng, 1, 1, 2, 2, padding=(0, 0, 1, 1)),
              Concat(0, 3), ReLU(), AvgPool2d((2, 2), (2, 2)), Flatten(), _dense(rng, 2, 16)]
    return Network(layers, (1, 4, 4), inputs=[(-1,), (-1,), (0, 1, -1), (2,), (3,), (4,), (5,)])


MAXPOOLS = {  # kernel, stride, padding (top, left, bottom, right), dilation
    "2x2-s1-asym": ((2, 2), (1, 1), (1, 0, 0, 1), (1, 1)),
    "2x2-s2-asym": ((2, 2), (2, 2), (0, 1, 1, 0), (1, 1)),
    "3x3-s1-asym": ((3, 3), (1, 1), (2, 0, 1, 2), (1, 1)),
    "3x3-s2-asym": ((3, 3), (2, 2), (1, 2, 0, 1), (1, 1)),
    "3x2-s21": ((3, 2), (2, 1), (0, 1, 2, 0), (1, 1)),
    "2x2-dil": ((2, 2), (1, 2), (1, 1, 1, 0), (2, 1)),
}


def net_maxpool(rng, name):
    kernel, stride, padding, dilation = MAXPOOLS[name]
    pool = MaxPool2d(kernel, stride, padding, dilation)
    c, ho, wo = pool.output_shape((2, 5, 5))
    # no ReLU right after the pool: relu(max) would hide which value a padding position takes
    layers = [ElementwiseAffine(rng.normal(size=(2, 1, 1)), rng.normal(size=(2, 1, 1))), pool, Flatten(),
              _dense(rng, 4, c * ho * wo), ReLU(), _dense(rng, 2, 4)]
    return Network(layers, (2, 5, 5))


AVGPOOLS = {  # kernel, stride, padding, count_include_pad
    "3x3-s1-pad-incl": ((3, 3), (1, 1), (1, 1, 1, 1), True),
    "3x3-s1-pad-excl": ((3, 3), (1, 1), (1, 1, 1, 1), False),
    "3x3-s2-asym-excl": ((3, 3), (2, 2), (0, 1, 2, 0), False),
    "2x3-s1-asym-incl": ((2, 3), (1, 2), (1, 0, 0, 2), True),
    "2x2-s2-nopad": ((2, 2), (2, 2), (0, 0, 0, 0), False),
}


def net_avgpool(rng, name):
    kernel, stride, padding, incl = AVGPOOLS[name]
    pool = AvgPool2d(kernel, stride, padding, incl)
    c, ho, wo = pool.output_shape((2, 4, 5))
    layers = [_conv(rng, 2, 2, 2, 2, padding=(1, 0, 0, 1)), ReLU(), pool, Flatten(), _dense(rng, 2, c * ho * wo)]
    return Network(layers, (2, 4, 5))


def net_selections(rng):
    """Dense -> Reshape (2, 3, 2) -> Pad (value 0.75) -> Transpose -> Slice (step 2) -> ReLU."""
    pad = Pad((1, 0, 1, 0, 2, 1), 0.75)  # (2, 3, 2) -> (3, 5, 4)
    layers = [_dense(rng, 12, 4), Reshape((2, 3, 2)), pad, Transpose((2, 0, 1)),  # -> (4, 3, 5)
              Slice(2, 1, 5, 2), ReLU(), Flatten(), _dense(rng, 3, 24)]  # -> (4, 3, 2)
    return Network(layers, (4,))


def net_gather(rng):
    """Gathers with a tuple (repeats) and with ints (dropping the axis; down to a (1,) vector)."""
    layers = [_dense(rng, 12, 3), Reshape((3, 4)), Gather(1, (3, 0, 3)), Gather(0, 2),  # (3, 4) -> (3, 3) -> (3,)
              ReLU(), Gather(0, 1), Concat(0), _dense(rng, 2, 4)]
    return Network(layers, (3,), inputs=[(-1,), (0,), (1,), (2,), (3,), (3,), (4, 5), (6,)])


def net_conv_transpose(rng):
    """(2, 3, 3) -> ConvTranspose2d stride 2, asymmetric pads, output_padding -> ReLU -> Dense."""
    ct = ConvTranspose2d(_w(rng, 2, 3, 3, 3), 0.3 * rng.normal(size=3), (2, 2), (1, 0, 1, 2), (1, 1))
    c, ho, wo = ct.output_shape((2, 3, 3))
    layers = [ct, ReLU(), Flatten(), _dense(rng, 2, c * ho * wo)]
    return Network(layers, (2, 3, 3))


def net_conv_transpose_dilated(rng):
    ct = ConvTranspose2d(_w(rng, 1, 2, 2, 3), 0.3 * rng.normal(size=2), (2, 1), (0, 2, 1, 0), (1, 0), (1, 2))
    c, ho, wo = ct.output_shape((1, 3, 4))
    layers = [ct, ReLU(), Flatten(), _dense(rng, 2, c * ho * wo)]
    return Network(layers, (1, 3, 4))


def net_reshape_conv(rng):
    """Flat input -> Dense -> Reshape (1, 4, 4) -> conv -> ReLU -> maxpool (pads) -> Dense."""
    layers = [_dense(rng, 16, 3), Reshape((1, 4, 4)), _conv(rng, 2, 1, 2, 2), ReLU(),
              MaxPool2d((2, 2), (1, 1), (0, 0, 1, 1)), Flatten(), _dense(rng, 2, 18)]
    return Network(layers, (3,))


def net_deep_skip(rng):
    """The input skips three ReLU layers (carried through three activations), a middle value
    skips one, and the same tensor is read twice by one Add."""
    layers = [_dense(rng, 3, 3), ReLU(), _dense(rng, 3, 3), ReLU(), Add(), _dense(rng, 3, 3), ReLU(),
              Add(3), _dense(rng, 2, 3)]
    return Network(layers, (3,), inputs=[(-1,), (0,), (1,), (2,), (3, 3), (4,), (5,), (6, -1, 2), (7,)])


def net_parallel_pools(rng):
    """A 3x3 max-pool (ReLU tree of depth 4) and a 2x2 one (depth 2) added: the shallow tree's
    result waits (passthrough) for the deep one."""
    layers = [MaxPool2d((3, 3), (1, 1), (1, 1, 1, 1)), MaxPool2d((2, 2), (1, 1), (0, 0, 1, 1)), Add(), ReLU(),
              Flatten(), _dense(rng, 2, 16)]
    return Network(layers, (1, 4, 4), inputs=[(-1,), (-1,), (0, 1), (2,), (3,), (4,)])


def net_output_is_add(rng):
    """The last layer is an Add of a ReLU branch and a Dense of the input; an unused branch."""
    layers = [_dense(rng, 2, 3), _dense(rng, 4, 3), ReLU(), _dense(rng, 2, 4), ReLU(), Add()]
    return Network(layers, (3,), inputs=[(-1,), (-1,), (1,), (2,), (3,), (4, 0)])


def net_relu_of_input(rng):
    """ReLU straight on the input, concatenated with the input, trailing ReLU."""
    layers = [ReLU(), Flatten(), Flatten(), Concat(0), _dense(rng, 3, 8), ReLU()]
    return Network(layers, (1, 2, 2), inputs=[(-1,), (0,), (-1,), (1, 2), (3,), (4,)])


def net_selection_only(rng):
    """No ReLU at all: a Transpose and a Slice (one affine block)."""
    layers = [Transpose((1, 0)), Slice(0, 1, 3), Flatten()]
    return Network(layers, (2, 3))


def random_dag(rng, n_layers: int = 8, n_in: int = 3) -> Network:
    """A random DAG of Dense, ReLU, Add and Concat layers on vectors (:func:`helpers.random_dag_network`):
    layers of 1 to 4 units, the last Dense of (mostly) the layer before."""
    return random_dag_network(rng, n_layers, n_in, dense=_dense, any_last=True)


NETS = {
    "dense-residual": net_dense_residual,
    "input-residual": net_input_residual,
    "conv-residual": net_conv_residual,
    "concat-features": net_concat_features,
    "concat-channels": net_concat_channels,
    **{f"maxpool-{k}": functools.partial(net_maxpool, name=k) for k in MAXPOOLS},
    **{f"avgpool-{k}": functools.partial(net_avgpool, name=k) for k in AVGPOOLS},
    "selections": net_selections,
    "gather": net_gather,
    "conv-transpose": net_conv_transpose,
    "conv-transpose-dilated": net_conv_transpose_dilated,
    "reshape-conv": net_reshape_conv,
    "deep-skip": net_deep_skip,
    "parallel-pools": net_parallel_pools,
    "output-is-add": net_output_is_add,
    "relu-of-input": net_relu_of_input,
    "selection-only": net_selection_only,
}


# ============================================================================ 1. forward
@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("kind", list(NETS))
def test_forward_matches_independent_reference(kind, seed):
    rng = np.random.default_rng(seed)
    net = NETS[kind](rng)
    assert not net.is_chain
    x = rng.normal(size=(7, *net.input_shape))
    ref = _ref_forward(net, x)
    scale = _scale_of(net, x)
    ours = net.forward64(x)
    assert ours.shape == ref.shape == (7, net.output_size)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-13 * scale)
    # flattened inputs, and every intermediate shape the network reports
    np.testing.assert_allclose(net.forward64(x.reshape(7, -1)), ref, rtol=0, atol=1e-13 * scale)
    vals = _ref_values(net, x)
    assert net.output_shapes == tuple(vals[i].shape[1:] for i in range(len(net.layers)))
    # the affine-block form evaluated in numpy (ReLU / passthrough) equals the forward pass
    blocks_y, _ = _blocks_forward(net, x)
    np.testing.assert_allclose(blocks_y, ref, rtol=0, atol=1e-11 * scale)
    # n_relus counts the ReLU coordinates of the block form
    blocks = net.affine_blocks()
    n = sum(b.matrix.shape[0] - (0 if b.passthrough is None else int(np.sum(b.passthrough))) for b in blocks[:-1])
    assert net.n_relus == n


@pytest.mark.parametrize("seed", range(30))
def test_random_dag_forward_blocks_bounds_and_error(seed):
    """Random DAGs: the forward pass, the block form, IBP/CROWN containment and the float64 error
    bound of the counterexample check, all against the reference."""
    rng = np.random.default_rng(seed)
    net = random_dag(rng, int(rng.integers(4, 11)))
    lo, hi = _box(rng, net.input_size, batch=1)
    pts = box_points(rng, lo[0], hi[0], 300)
    y = _ref_forward(net, pts)
    scale = _scale_of(net, pts)
    np.testing.assert_allclose(net.forward64(pts), y, rtol=0, atol=1e-13 * scale)
    np.testing.assert_allclose(_blocks_forward(net, pts)[0], y, rtol=0, atol=1e-11 * scale)
    for method in (ibp, crown):
        b = method(net, torch.as_tensor(lo), torch.as_tensor(hi))
        l, u = b.output[0][0].numpy(), b.output[1][0].numpy()
        assert np.all(y >= l - 1e-12 * scale) and np.all(y <= u + 1e-12 * scale), method.__name__
    for x in pts[:3]:
        exact = _ref_forward(net, x[None], exact=True)[0]
        _fraction_ok(*_forward_with_error(net, x), exact)
        assert list(_exact_forward(net, x, 10**7)) == list(exact)


def test_forward_float32_agrees():
    rng = np.random.default_rng(5)
    net = net_conv_residual(rng)
    x = rng.normal(size=(4, *net.input_shape))
    y32 = net.forward(torch.as_tensor(x, dtype=torch.float32))
    assert y32.dtype == torch.float32
    np.testing.assert_allclose(y32.numpy(), _ref_forward(net, x), rtol=1e-4, atol=1e-4)


def test_passthrough_marks_the_skip_connection():
    """A skip of the raw input past one ReLU layer: the first block carries the input unchanged
    (identity rows, passthrough), and the ReLU rows are the first Dense."""
    rng = np.random.default_rng(0)
    d0, d1 = _dense(rng, 3, 3), _dense(rng, 2, 3)
    net = Network([d0, ReLU(), Add(), d1], (3,), inputs=[(-1,), (0,), (1, -1), (2,)])
    blocks = net.affine_blocks()
    assert len(blocks) == 2
    b0 = blocks[0]
    mask = np.asarray(b0.passthrough)
    assert mask.sum() == 3 and (~mask).sum() == 3
    M = b0.matrix.toarray()
    np.testing.assert_array_equal(M[mask], np.eye(3))
    np.testing.assert_array_equal(b0.bias[mask], 0.0)
    np.testing.assert_array_equal(M[~mask], d0.weight)
    np.testing.assert_array_equal(b0.bias[~mask], d0.bias)
    assert net.n_relus == 3
    # a chain has no passthrough
    chain = Network([d0, ReLU(), d1], (3,))
    assert all(b.passthrough is None for b in chain.affine_blocks())


@pytest.mark.parametrize("stride, padding, output_padding, dilation", [
    ((2, 2), (1, 1), (1, 1), (1, 1)),
    ((2, 3), (0, 1), (1, 2), (1, 1)),
    ((1, 2), (1, 0), (0, 1), (2, 1)),
])
def test_conv_transpose_semantics_equal_torch(stride, padding, output_padding, dilation):
    """With symmetric pads (what torch supports), the documented scatter semantics (used by the
    reference) equal torch's conv_transpose2d, and so does the layer."""
    rng = np.random.default_rng(3)
    w, b = rng.normal(size=(2, 3, 3, 2)), rng.normal(size=3)
    ph, pw = padding
    layer = ConvTranspose2d(w, b, stride, (ph, pw, ph, pw), output_padding, dilation)
    x = rng.normal(size=(3, 2, 3, 4))
    want = F.conv_transpose2d(torch.as_tensor(x), torch.as_tensor(w), torch.as_tensor(b), stride=stride,
                              padding=padding, output_padding=output_padding, dilation=dilation).numpy()
    np.testing.assert_allclose(_ref_layer(layer, [x]), want, rtol=0, atol=1e-13)
    assert layer.output_shape((2, 3, 4)) == want.shape[1:]
    net = Network([layer, Flatten()], (2, 3, 4))
    np.testing.assert_allclose(net.forward64(x), want.reshape(3, -1), rtol=0, atol=1e-13)


def test_pool_references_equal_torch_on_symmetric_pads():
    """The hand-written pooling windows equal torch's pooling where torch applies (symmetric pads)."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 2, 6, 5))
    xt = torch.as_tensor(x)
    mp = MaxPool2d((3, 2), (2, 1), (1, 1, 1, 1))
    np.testing.assert_array_equal(_ref_layer(mp, [x]), F.max_pool2d(xt, (3, 2), (2, 1), (1, 1)).numpy())
    for incl in (True, False):
        ap = AvgPool2d((3, 3), (1, 2), (1, 1, 1, 1), incl)
        want = F.avg_pool2d(xt, 3, (1, 2), 1, count_include_pad=incl).numpy()
        np.testing.assert_allclose(_ref_layer(ap, [x]), want, rtol=0, atol=1e-14)


# ============================================================================ 2. exact operators
def _operator_cases():
    rng = np.random.default_rng(11)
    n = lambda *s: rng.normal(size=s)  # noqa: E731
    return {
        "dense": (Dense(n(4, 3), n(4)), [(3,)]),
        "conv": (Conv2d(n(2, 3, 3, 2), n(2), (2, 1), (1, 0, 2, 1), (1, 2)), [(3, 5, 6)]),
        "conv-transpose": (ConvTranspose2d(n(2, 3, 3, 3), n(3), (2, 2), (1, 0, 0, 1), (1, 1)), [(2, 3, 4)]),
        "conv-transpose-dil": (ConvTranspose2d(n(1, 2, 2, 3), n(2), (1, 2), (0, 1, 1, 0), (0, 1), (2, 1)),
                               [(1, 3, 3)]),
        "flatten": (Flatten(), [(2, 3, 2)]),
        "reshape": (Reshape((3, 2, 2)), [(12,)]),
        "elementwise": (ElementwiseAffine(n(2, 1, 3), n(1, 3, 1)), [(2, 3, 3)]),
        "avgpool-incl": (AvgPool2d((3, 3), (1, 1), (1, 1, 1, 1), True), [(2, 4, 4)]),
        "avgpool-excl": (AvgPool2d((3, 3), (2, 1), (1, 0, 2, 1), False), [(2, 5, 4)]),
        "avgpool-2x2": (AvgPool2d((2, 2), (2, 2)), [(1, 4, 4)]),
        "add": (Add(3), [(2, 3), (2, 3), (2, 3)]),
        "concat": (Concat(1, 3), [(2, 1, 3), (2, 4, 3), (2, 2, 3)]),
        "pad": (Pad((0, 1, 2, 1, 0, 1), 0.5), [(2, 3, 2)]),
        "slice": (Slice(1, 1, 6, 2), [(2, 7, 2)]),
        "gather-int": (Gather(2, 1), [(2, 3, 4)]),
        "gather-tuple": (Gather(0, (2, 0, 2, 1)), [(3, 2)]),
        "gather-scalar": (Gather(0, 3), [(5,)]),
        "transpose": (Transpose((1, 2, 0)), [(2, 3, 4)]),
    }


SELECTIONS = {"reshape", "flatten", "pad", "slice", "gather-int", "gather-tuple", "gather-scalar", "transpose",
              "concat"}


@pytest.mark.parametrize("name", list(_operator_cases()))
def test_operator_equals_apply(name):
    layer, shapes = _operator_cases()[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    xs = [rng.normal(size=(6, *s)) for s in shapes]
    params = tuple(torch.as_tensor(np.array(p)) for p in layer.params())
    with torch.no_grad():
        want = layer.apply(params, *(torch.as_tensor(x) for x in xs)).numpy().reshape(6, -1)
    lm = layer.operator(*shapes)
    assert len(lm.matrices) == len(shapes)
    got = np.asarray(lm.bias)[None].repeat(6, 0)
    for M, x, s in zip(lm.matrices, xs, shapes):
        assert sp.issparse(M) and M.shape == (want.shape[1], math.prod(s))
        got = got + (M @ x.reshape(6, -1).T).T
    mags = sum(abs(M) @ np.abs(x.reshape(6, -1).T) for M, x in zip(lm.matrices, xs)).T + np.abs(lm.bias)
    if name in SELECTIONS:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_array_less(np.abs(got - want), 1e-14 * mags + 1e-300)
    # the independent reference agrees as well (the layer's own semantics are what it documents)
    np.testing.assert_allclose(_ref_layer(layer, xs).reshape(6, -1), want, rtol=0, atol=1e-13)
    if name in SELECTIONS:
        assert lm.selection
        for M in lm.matrices:
            assert np.all(M.data == 1.0)
        assert np.all(sum(np.diff(M.indptr) for M in lm.matrices) <= 1)
    if name in ("dense", "conv", "conv-transpose", "conv-transpose-dil", "elementwise"):
        # the entries are exactly the stored parameters: every non-zero entry is one of them
        params_set = set(np.asarray(layer.params()[0]).ravel().tolist())
        assert set(lm.matrices[0].data.tolist()) <= params_set
        assert lm.matrix_errors is None


def test_non_affine_layers_have_no_operator():
    assert ReLU().operator((3,)) is None
    assert MaxPool2d((2, 2), (2, 2)).operator((1, 4, 4)) is None


@pytest.mark.parametrize("incl, padding", [(True, (1, 1, 1, 1)), (False, (1, 1, 1, 1)), (False, (0, 2, 2, 0)),
                                           (True, (0, 0, 0, 0))])
def test_avgpool_3x3_matrix_errors_bound_the_true_entries(incl, padding):
    """1/9 (and 1/6, 1/3 where fewer positions count) is not a float64: each stored entry lies
    within its ``matrix_errors`` entry of the true reciprocal; exact reciprocals (1/4, 1/2, 1)
    are stored exactly."""
    layer = AvgPool2d((3, 3), (1, 1), padding, incl)
    shape = (2, 4, 5)
    lm = layer.operator(shape)
    M = lm.matrices[0].tocoo()
    taps, _ = _pool_taps(shape, layer.kernel, layer.stride, layer.padding, (1, 1))
    counts = [9 if incl else len(t) for t in taps]
    assert M.shape == (len(taps), math.prod(shape))
    # the sparsity pattern is exactly the windows' inside positions
    assert sorted(zip(M.row.tolist(), M.col.tolist())) == sorted((o, t) for o, win in enumerate(taps) for t in win)
    inexact = any(Fraction(1, c) != Fraction(1.0 / c) for c in counts)
    assert (lm.matrix_errors is not None) == inexact
    E = None if lm.matrix_errors is None else lm.matrix_errors[0].tocsr()
    for r, c, v in zip(M.row, M.col, M.data):
        true = Fraction(1, counts[r])
        err = 0.0 if E is None else float(E[r, c])
        assert abs(Fraction(float(v)) - true) <= Fraction(err), (r, c, v, err, counts[r])
        assert err <= np.spacing(v)  # not vacuous
        if true == Fraction(float(true)):
            assert Fraction(float(v)) == true
        else:
            assert err > 0
    if E is not None:  # no error entry outside the matrix's pattern
        assert set(zip(*E.nonzero())) <= set(zip(M.row.tolist(), M.col.tolist()))


# ============================================================================ 3. bounds contain samples
BOUND_NETS = ["dense-residual", "input-residual", "conv-residual", "concat-features", "concat-channels",
              "maxpool-2x2-s1-asym", "maxpool-3x3-s2-asym", "reshape-conv", "selections", "gather",
              "conv-transpose", "deep-skip", "parallel-pools", "output-is-add", "relu-of-input", "selection-only"]


def _box(rng, n, batch=2):
    centre = rng.normal(size=(batch, n))
    radius = rng.choice([0.0, 0.05, 0.3, 1.0], size=(batch, n))
    return centre - radius, centre + radius


@SETTINGS
@given(st.sampled_from(BOUND_NETS), st.integers(0, 2**20))
def test_ibp_crown_alpha_crown_contain_samples(kind, seed):
    rng = np.random.default_rng(seed)
    net = NETS[kind](rng)
    lo, hi = _box(rng, net.input_size)
    lo_t, hi_t = torch.as_tensor(lo), torch.as_tensor(hi)
    b_ibp = ibp(net, lo_t, hi_t)
    b_crown = crown(net, lo_t, hi_t)
    assert b_crown.method == "crown"
    C = torch.as_tensor(rng.normal(size=(3, net.output_size)))
    crown_rows, _ = crown_linear_lower(net, lo_t, hi_t, C, b_crown)
    alpha_rows = alpha_crown_linear_lower(net, lo_t, hi_t, C, b_crown, steps=8)
    assert bool((alpha_rows >= crown_rows).all())
    n_blocks = len(net.affine_blocks())
    for bounds in (b_ibp, b_crown):
        assert len(bounds.pre_activation) == n_blocks - 1
    for i in range(lo.shape[0]):
        pts = box_points(rng, lo[i], hi[i], 2000)
        y = _ref_forward(net, pts)
        tol = 1e-12 * _scale_of(net, pts[:50])
        _, pre = _blocks_forward(net, pts)  # the block form's pre-activations (its outputs equal y)
        for bounds in (b_ibp, b_crown):
            l, u = (t[i].numpy() for t in bounds.output)
            assert np.all(y >= l[None] - tol), (bounds.method, np.max(l[None] - y))
            assert np.all(y <= u[None] + tol), (bounds.method, np.max(y - u[None]))
            for (pl, pu), z in zip(bounds.pre_activation, pre):
                assert np.all(z >= pl[i].numpy()[None] - tol) and np.all(z <= pu[i].numpy()[None] + tol), bounds.method
        true_rows = (y @ C.numpy().T).min(axis=0)
        assert np.all(crown_rows[i].numpy() <= true_rows + tol)
        assert np.all(alpha_rows[i].numpy() <= true_rows + tol)
    # CROWN is intersected with IBP: never looser, layer by layer and at the output
    for (cl, cu), (il, iu) in zip(list(b_crown.pre_activation) + [b_crown.output],
                                  list(b_ibp.pre_activation) + [b_ibp.output]):
        assert bool((cl >= il).all() and (cu <= iu).all())


def test_crown_is_tighter_than_ibp_on_average():
    """Over several graph networks and boxes, CROWN's output intervals are narrower than IBP's
    on average (strictly: the back-substitution sees the skip connections' correlations)."""
    ibp_w, crown_w = [], []
    for seed in range(6):
        for kind in ("dense-residual", "conv-residual", "concat-features", "input-residual"):
            rng = np.random.default_rng(100 + seed)
            net = NETS[kind](rng)
            lo, hi = _box(rng, net.input_size)
            lo_t, hi_t = torch.as_tensor(lo), torch.as_tensor(hi)
            bi, bc = ibp(net, lo_t, hi_t), crown(net, lo_t, hi_t)
            ibp_w.append(float((bi.output[1] - bi.output[0]).mean()))
            crown_w.append(float((bc.output[1] - bc.output[0]).mean()))
    ibp_w, crown_w = np.array(ibp_w), np.array(crown_w)
    assert np.all(crown_w <= ibp_w)
    assert crown_w.mean() < 0.9 * ibp_w.mean(), (crown_w.mean(), ibp_w.mean())


def test_degenerate_box_bounds_are_tight_on_a_graph():
    rng = np.random.default_rng(8)
    net = net_conv_residual(rng)
    x = rng.normal(size=(1, net.input_size))
    y = _ref_forward(net, x)
    for method in (ibp, crown):
        b = method(net, torch.as_tensor(x), torch.as_tensor(x))
        l, u = b.output[0].numpy(), b.output[1].numpy()
        tol = 1e-13 * _scale_of(net, x)  # the reference's own rounding
        assert np.all(l <= y + tol) and np.all(y <= u + tol)
        assert np.max(u - l) <= 1e-10 * _scale_of(net, x)


# ============================================================================ 4. MILP vs enumeration
def _lp(c, G, g, bounds):
    return linprog(c, A_ub=G if len(G) else None, b_ub=g if len(g) else None, bounds=bounds, method="highs",
                   options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10})


def _affine_expr(layer, Es):
    """An affine layer applied to affine expressions ``E`` (row 0 the constant, rows 1.. the
    coefficients of the inputs)."""
    const = _ref_layer(layer, [E[:1] for E in Es])
    lin = _ref_layer(layer, [E[1:] for E in Es], bias=False)
    return np.concatenate([const, lin])


def enumerate_min_margin(net: Network, lower, upper, spec: OutputSpec, *, n_samples: int = 300, seed: int = 0):
    """Exact ``min_{x in box} max_i (A_k f(x) - b_k)_i`` per disjunct ``k`` by enumerating the
    network's linear pieces on its layers: each ReLU coordinate's sign (``z >= 0`` or ``z <= 0``)
    and each max-pool output's winner (``x_t >= x_s`` over its window's inside positions). The
    closed pieces cover the box and ``f`` is affine on each, so the minimum over the pieces (one
    LP each) is exact. A partial piece is kept when a sample point lies in it or an LP finds it
    non-empty. Returns ``(per-disjunct minima, minimisers, number of pieces)``."""
    lower = np.asarray(lower, dtype=np.float64).reshape(-1)
    upper = np.asarray(upper, dtype=np.float64).reshape(-1)
    n = lower.size
    box = list(zip(lower, upper))
    samples = box_points(np.random.default_rng(seed), lower, upper, n_samples)
    svals = _ref_values(net, samples)
    best = np.full(spec.n_disjuncts, np.inf)
    argmin = [None] * spec.n_disjuncts
    count = [0]
    L = len(net.layers)

    def feasible(G, g):
        return _lp(np.zeros(n), G, g, box).status == 0

    def leaf(env, G, g):
        count[0] += 1
        Ey = env[L - 1].reshape(n + 1, -1)
        for k, (A, b) in enumerate(spec.disjuncts):
            coef, const = A @ Ey[1:].T, A @ Ey[0] - b
            if A.shape[0] == 1:
                res = _lp(coef[0], G, g, box)
                val, x = (None, None) if res.status != 0 else (float(res.fun + const[0]), res.x)
            else:
                G2 = np.hstack([G, np.zeros((len(G), 1))]) if len(G) else np.zeros((0, n + 1))
                res = _lp(np.r_[np.zeros(n), 1.0], np.vstack([G2, np.hstack([coef, -np.ones((len(coef), 1))])]),
                          np.r_[g, -const], box + [(None, None)])
                val, x = (None, None) if res.status != 0 else (float(res.fun), res.x[:n])
            assert res.status in (0, 2), res.message
            if val is not None and val < best[k]:
                best[k], argmin[k] = val, x

    def add(G, g, row, rhs):
        return (np.vstack([G, row[None]]) if len(G) else row[None]), np.r_[g, rhs]

    def walk(i, env, G, g, mask):
        if i == L:
            leaf(env, G, g)
            return
        layer, ins = net.layers[i], net.inputs[i]
        Es = [env[j] for j in ins]
        shape = net.output_shapes[i]
        if isinstance(layer, ReLU):
            E = Es[0].reshape(n + 1, -1)
            S = svals[ins[0]].reshape(len(samples), -1)

            def coord(k, G, g, mask, D):
                if k == E.shape[1]:
                    walk(i + 1, {**env, i: (E * np.array(D)[None]).reshape(n + 1, *shape)}, G, g, mask)
                    return
                for active in (True, False):  # active: -coef x <= const ; inactive: coef x <= -const
                    G2, g2 = add(G, g, -E[1:, k] if active else E[1:, k], E[0, k] if active else -E[0, k])
                    m2 = mask & ((S[:, k] >= 0) if active else (S[:, k] <= 0))
                    if m2.any() or feasible(G2, g2):
                        coord(k + 1, G2, g2, m2, D + [1.0 if active else 0.0])

            coord(0, G, g, mask, [])
        elif isinstance(layer, MaxPool2d):
            E = Es[0].reshape(n + 1, -1)
            S = svals[ins[0]].reshape(len(samples), -1)
            taps, _ = _pool_taps(net.input_shapes(i)[0], layer.kernel, layer.stride, layer.padding, layer.dilation)

            def window(o, G, g, mask, chosen):
                if o == len(taps):
                    walk(i + 1, {**env, i: E[:, chosen].reshape(n + 1, *shape)}, G, g, mask)
                    return
                for t in taps[o]:  # t wins: x_s - x_t <= 0 for the others
                    G2, g2, m2 = G, g, mask
                    for s in taps[o]:
                        if s != t:
                            d = E[:, s] - E[:, t]
                            G2, g2 = add(G2, g2, d[1:], -d[0])
                            m2 = m2 & (S[:, t] >= S[:, s])
                    if m2.any() or feasible(G2, g2):
                        window(o + 1, G2, g2, m2, chosen + [t])

            window(0, G, g, mask, [])
        else:
            walk(i + 1, {**env, i: _affine_expr(layer, Es)}, G, g, mask)

    E0 = np.concatenate([np.zeros((1, n)), np.eye(n)]).reshape(n + 1, *net.input_shape)
    walk(0, {-1: E0}, np.zeros((0, n)), np.zeros(0), np.ones(len(samples), dtype=bool))
    return best, argmin, count[0]


def milp_residual(rng):
    """x (2) -> Dense 3 -> ReLU -> Dense 3 -> Add(., first Dense) -> ReLU -> Dense 2: 6 ReLUs."""
    layers = [_dense(rng, 3, 2), ReLU(), _dense(rng, 3, 3), Add(), ReLU(), _dense(rng, 2, 3)]
    return Network(layers, (2,), inputs=[(-1,), (0,), (1,), (2, 0), (3,), (4,)])


def milp_maxpool(rng):
    """(1, 2, 4) -> 2x2 maxpool stride 2 (6 ReLUs) -> Dense 2 -> ReLU -> Add(., pooled) -> Dense 2."""
    layers = [ElementwiseAffine(rng.normal(size=(1, 2, 4)), rng.normal(size=(1, 2, 4))),
              MaxPool2d((2, 2), (2, 2)), Flatten(), _dense(rng, 2, 2), ReLU(), Add(), _dense(rng, 2, 2)]
    return Network(layers, (1, 2, 4), inputs=[(-1,), (0,), (1,), (2,), (3,), (4, 2), (5,)])


def milp_maxpool_padded(rng):
    """(1, 2, 3) -> conv 1x1 -> 2x2 maxpool stride 2 with a right pad (window of 2 inside
    positions) -> ReLU -> Concat with the input -> Dense 2."""
    layers = [_conv(rng, 1, 1, 1, 1), MaxPool2d((2, 2), (2, 2), (0, 0, 0, 1)), ReLU(), Flatten(), Flatten(),
              Concat(0), _dense(rng, 2, 8)]
    return Network(layers, (1, 2, 3), inputs=[(-1,), (0,), (1,), (2,), (-1,), (3, 4), (5,)])


def milp_concat(rng):
    """Two ReLU branches (2 + 3 units) and the input concatenated, then Dense -> ReLU (2)."""
    layers = [_dense(rng, 2, 2), ReLU(), _dense(rng, 3, 2), ReLU(), Concat(0, 3), _dense(rng, 2, 7), ReLU(),
              _dense(rng, 2, 2)]
    return Network(layers, (2,), inputs=[(-1,), (0,), (-1,), (2,), (1, 3, -1), (4,), (5,), (6,)])


def milp_deep_skip(rng):
    """The input skips two ReLU layers; a ReLU output is read twice by one Add: 6 ReLUs."""
    layers = [_dense(rng, 2, 2), ReLU(), _dense(rng, 2, 2), ReLU(), Add(), _dense(rng, 2, 2), ReLU(), Add(3),
              _dense(rng, 2, 2)]
    return Network(layers, (2,), inputs=[(-1,), (0,), (1,), (2,), (3, 3), (4,), (5,), (6, -1, 2), (7,)])


MILP_NETS = {"deep-skip": milp_deep_skip, "residual": milp_residual, "maxpool": milp_maxpool,
             "maxpool-padded": milp_maxpool_padded, "concat": milp_concat}


def _milp_case(kind, seed):
    rng = np.random.default_rng(500 + 31 * seed + len(kind))
    net = MILP_NETS[kind](rng)
    centre = rng.normal(size=net.input_size)
    radius = rng.uniform(0.5, 1.5, size=net.input_size)
    return rng, net, centre - radius, centre + radius


def _milp_inputs(net, lo, hi, method):
    b = method(net, torch.as_tensor(lo[None]), torch.as_tensor(hi[None]))
    pre = [(l[0].numpy(), u[0].numpy()) for l, u in b.pre_activation]
    return net.affine_blocks(), pre, (b.output[0][0].numpy(), b.output[1][0].numpy())


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", list(MILP_NETS))
def test_milp_optimum_equals_piece_enumeration(kind, seed):
    rng, net, lo, hi = _milp_case(kind, seed)
    assert 3 <= net.n_relus <= 12, net.n_relus
    spec = random_spec(rng, net.output_size, [1, 2])
    ref, _, n_pieces = enumerate_min_margin(net, lo, hi, spec, seed=seed)
    assert n_pieces >= 1
    pts = box_points(rng, lo, hi, 300)
    y = _ref_forward(net, pts)
    tol = 1e-6 * max(1.0, float(np.abs(y).max()))
    for k, (A, b) in enumerate(spec.disjuncts):
        # sampled margins never undercut the enumerated minimum (the reference is a true minimum)
        assert np.max(y @ A.T - b, axis=1).min() >= ref[k] - tol
        for method in (ibp, crown):
            blocks, pre, out = _milp_inputs(net, lo, hi, method)
            model = encode_bigm(blocks, pre, out, lo, hi, A, b)
            res = solve_milp(model, time_limit=60, threshold=np.inf)
            assert res.status is MilpStatus.OPTIMAL, (res.status, res.raw_status)
            assert res.objective == pytest.approx(ref[k], abs=tol), (k, method.__name__)
            assert res.dual_bound == pytest.approx(ref[k], abs=tol), (k, method.__name__)
            x = np.clip(res.solution[model.x_index], lo, hi)
            yx = _ref_forward(net, x[None])[0]
            assert float(np.max(A @ yx - b)) == pytest.approx(res.objective, abs=tol)


def test_enumeration_finds_maxpool_pieces():
    """The reference is not vacuous: on a max-pool network it visits several winners per window
    and its minimum is attained (a sampled point comes close)."""
    _, net, _, _ = _milp_case("maxpool", 0)
    lo, hi = -np.ones(net.input_size), np.ones(net.input_size)
    spec = OutputSpec([(np.array([[1.0, -1.0]]), np.array([0.0]))], 2)
    best, argmin, n_pieces = enumerate_min_margin(net, lo, hi, spec)
    assert n_pieces >= 8
    y = _ref_forward(net, argmin[0][None])[0]
    assert float(y[0] - y[1]) == pytest.approx(best[0], abs=1e-7)


# ============================================================================ 5. verify end to end
VERIFY_CONFIGS = {
    "default": VerifyConfig(device="cpu"),
    "milp": VerifyConfig(device="cpu", use_attack=False, use_input_split=False, use_relu_split=False, use_crown=False,
                         alpha_steps=0, use_walk=False, use_lp=False),
    # Relax-and-Walk finds the counterexamples (its region LPs run through skips, pools and concats)
    "walk": VerifyConfig(device="cpu", use_attack=False, use_input_split=False, use_relu_split=False, use_crown=False,
                         alpha_steps=0, use_lp=False),
    # the LP stage (tightening and LP bounds through skips, pools and concats), then the MILP
    "lp": VerifyConfig(device="cpu", use_attack=False, use_input_split=False, use_relu_split=False, use_crown=False,
                       alpha_steps=0, use_walk=False),
    # activation splitting with the lookahead rule (candidates among skips, pools and concats)
    "relu-fsb": VerifyConfig(device="cpu", use_attack=False, use_input_split=False, use_walk=False, use_lp=False,
                             relu_split=ReluSplitConfig(branching="fsb", batch_size=4)),
}


@functools.lru_cache(maxsize=None)
def _verify_case(kind: str, seed: int):
    rng, net, lo, hi = _milp_case(kind, 10 + seed)
    a = rng.normal(size=net.output_size)
    spec = OutputSpec([(a[None], np.zeros(1))], net.output_size)
    ref, _, _ = enumerate_min_margin(net, lo, hi, spec, seed=seed)
    return net, lo, hi, a, float(ref[0])


def _check_sat(v, net, box, spec):
    x = v.counterexample
    assert x is not None and x.dtype == np.float64 and x.shape == (net.input_size,)
    assert np.all(x >= box.lower) and np.all(x <= box.upper)
    y = _ref_forward(net, x[None])
    margin = min(float(np.max(A @ y[0] - b)) for A, b in spec.disjuncts)
    assert margin <= 1e-12 * _scale_of(net, x[None]), margin
    np.testing.assert_allclose(v.output, y[0], rtol=0, atol=1e-12 * _scale_of(net, x[None]))


@pytest.mark.parametrize("config", list(VERIFY_CONFIGS))
@pytest.mark.parametrize("answer", ["sat", "unsat"])
@pytest.mark.parametrize("kind", list(MILP_NETS))
def test_verify_on_graph_networks_matches_enumeration(kind, answer, config):
    net, lo, hi, a, true_min = _verify_case(kind, 0)
    delta = 0.25 * max(1.0, abs(true_min))
    # unsafe: a^T y <= b; the minimum margin is true_min - b
    b = true_min - delta if answer == "unsat" else true_min + delta
    spec = OutputSpec([(a[None], np.array([b]))], net.output_size)
    box = Box(lo, hi)
    v = verify(net, box, spec, timeout=60, config=VERIFY_CONFIGS[config])
    assert v.status is (Status.SAT if answer == "sat" else Status.UNSAT), v
    assert v.margin_lower <= true_min - b + 1e-6 and v.margin_upper >= true_min - b - 1e-6, v
    if answer == "sat":
        _check_sat(v, net, box, spec)
        if config in ("milp", "walk"):
            assert v.decided_by == config, v
    else:
        assert v.counterexample is None
        allowed = {"ibp", "milp"} if config in ("milp", "walk") else {"ibp", "lp", "milp"} if config == "lp" else \
            {"ibp", "crown", "alpha-crown", "input-split", "relu-split", "lp", "milp"}
        assert v.decided_by in allowed, v


@pytest.mark.parametrize("config", list(VERIFY_CONFIGS))
def test_verify_two_disjuncts_on_a_graph(config):
    """Two disjuncts, one unreachable by a clear margin, one reachable: sat, through the second."""
    net, lo, hi, a, true_min = _verify_case("concat", 1)
    spec = OutputSpec([(a[None], np.array([true_min - 0.5])), (a[None], np.array([true_min + 0.3]))],
                      net.output_size)
    v = verify(net, Box(lo, hi), spec, timeout=60, config=VERIFY_CONFIGS[config])
    assert v.status is Status.SAT, v
    _check_sat(v, net, Box(lo, hi), spec)


# ============================================================================ 6. counterexample check
def net_exact(rng):
    """Add, Concat, MaxPool (asymmetric pads), Slice, Pad and Transpose; no AvgPool: exact."""
    layers = [_conv(rng, 2, 1, 2, 2, padding=(1, 0, 0, 1)), ReLU(), _conv(rng, 2, 2, 3, 3, padding=(1, 1, 1, 1)),
              Add(), MaxPool2d((2, 2), (2, 1), (1, 0, 0, 1)), Slice(1, 0, 2), Concat(0),  # -> (4, 2, 3)
              Pad((0, 1, 0, 0, 0, 0), -0.25), Transpose((0, 2, 1)), Slice(2, 0, 3, 2), ReLU(), Flatten(),
              _dense(rng, 3, 24)]
    return Network(layers, (1, 3, 3), inputs=[(-1,), (0,), (1,), (2, 0), (3,), (1,), (4, 5), (6,), (7,), (8,),
                                              (9,), (10,), (11,)])


def _fraction_ok(y, e, exact):
    for yi, ei, qi in zip(y, e, exact):
        assert ei >= 0
        assert abs(Fraction(float(yi)) - qi) <= Fraction(float(ei)), (yi, ei, float(qi))


@pytest.mark.parametrize("seed", range(4))
def test_forward_with_error_contains_the_exact_output(seed):
    rng = np.random.default_rng(seed)
    net = net_exact(rng)
    for x in rng.normal(size=(3, net.input_size)) * np.array([1.0, 1e-8, 1e3])[:, None]:
        exact = _ref_forward(net, x[None], exact=True)[0]
        y, e = _forward_with_error(net, x)
        assert y.shape == e.shape == (net.output_size,)
        _fraction_ok(y, e, exact)
        # the bound is a float64 rounding bound, not a vacuous one
        assert np.all(e <= 1e-12 * _scale_of(net, x[None]))
        ex = _exact_forward(net, x, 10**7)
        assert ex is not None and list(ex) == list(exact)


def test_forward_with_error_and_exact_forward_on_cancellations():
    """A residual Add that cancels exactly (y = relu(x) - relu(x) + tiny) and a max-pool tie."""
    x = np.array([0.1, 0.1, 0.3, 1e-20])
    layers = [Dense(np.eye(4), np.zeros(4)), ReLU(), Dense(-np.eye(4), np.full(4, 2.0 ** -70)), Add(),
              Reshape((1, 2, 2)), MaxPool2d((2, 1), (1, 1)), Flatten(), Dense(np.array([[1.0, 1.0]]), np.zeros(1))]
    net = Network(layers, (4,), inputs=[(-1,), (0,), (1,), (2, 1), (3,), (4,), (5,), (6,)])
    exact = _ref_forward(net, x[None], exact=True)[0]
    assert exact[0] == 2 * Fraction(2) ** -70
    y, e = _forward_with_error(net, x)
    _fraction_ok(y, e, exact)
    assert list(_exact_forward(net, x, 10**7)) == list(exact)
    # the counterexample check decides a threshold at the exact value exactly
    for b, unsafe in ((float(exact[0]), True), (np.nextafter(float(exact[0]), -1.0), False)):
        prob = Problem(net, Box(x, x), OutputSpec([(np.array([[1.0]]), np.array([b]))], 1))
        pc = check_counterexample(prob, x)
        assert pc.ok is unsafe, (b, pc)


@pytest.mark.parametrize("seed", range(3))
def test_check_counterexample_at_the_boundary_of_a_graph_network(seed):
    """Thresholds one float64 step either side of the exact output: decided correctly (exactly)."""
    rng = np.random.default_rng(40 + seed)
    net = net_exact(rng)
    x = rng.normal(size=net.input_size)
    y0 = _ref_forward(net, x[None], exact=True)[0][0]
    up = float(y0)  # the smallest float64 >= y0, and the one below it
    up = up if Fraction(up) >= y0 else float(np.nextafter(up, np.inf))
    down = float(np.nextafter(up, -np.inf))
    assert Fraction(down) < y0 <= Fraction(up)
    A = np.zeros((1, net.output_size))
    A[0, 0] = 1.0
    for b, unsafe in ((up, True), (down, False)):
        prob = Problem(net, Box(x, x), OutputSpec([(A, np.array([b]))], net.output_size))
        pc = check_counterexample(prob, x)
        assert pc.ok is unsafe and pc.how in ("float", "exact"), (b, pc)


@pytest.mark.parametrize("kind", ["avgpool-3x3-s1-pad-incl", "avgpool-3x3-s2-asym-excl", "concat-channels"])
def test_forward_with_error_covers_inexact_average_pooling(kind):
    """With 1/9 (1/6, ...) not float64 numbers, the error bound still contains the output of the
    true average (computed with exact reciprocals), and the exact path declines."""
    rng = np.random.default_rng(9)
    net = NETS[kind](rng)
    for x in rng.normal(size=(3, net.input_size)):
        exact = _ref_forward(net, x[None], exact=True)[0]
        y, e = _forward_with_error(net, x)
        _fraction_ok(y, e, exact)
    inexact = any(isinstance(l, AvgPool2d) and l.operator(net.input_shapes(i)[0]).matrix_errors is not None
                  for i, l in enumerate(net.layers))
    assert (_exact_forward(net, x, 10**7) is None) == inexact


@pytest.mark.parametrize("kind", ["avgpool-3x3-s1-pad-incl", "avgpool-2x3-s1-asym-incl", "dense-residual",
                                  "conv-residual", "selections", "maxpool-3x3-s1-asym", "parallel-pools", "deep-skip",
                                  "concat-channels", "conv-transpose", "gather"])
def test_parameter_deviation_covers_the_block_form(kind):
    """The affine blocks, read exactly, differ from the exact network by at most
    ``parameter_deviation`` over the box."""
    rng = np.random.default_rng(21)
    net = NETS[kind](rng)
    lo, hi = _box(rng, net.input_size, batch=1)
    dev = parameter_deviation(net, lo, hi)
    blocks = net.affine_blocks()
    for x in box_points(rng, lo[0], hi[0], 3, n_random_vertices=2):
        exact = _ref_forward(net, x[None], exact=True)[0]
        h = [Fraction(float(v)) for v in x]
        for k, blk in enumerate(blocks):
            M = blk.matrix.tocsr()
            z = []
            for r in range(M.shape[0]):
                acc = Fraction(float(blk.bias[r]))
                for t in range(M.indptr[r], M.indptr[r + 1]):
                    acc += Fraction(float(M.data[t])) * h[M.indices[t]]
                z.append(acc)
            if k < len(blocks) - 1:
                keep = np.zeros(len(z), dtype=bool) if blk.passthrough is None else np.asarray(blk.passthrough)
                h = [v if keep[r] or v > 0 else Fraction(0) for r, v in enumerate(z)]
        diff = [abs(a - b) for a, b in zip(z, exact)]
        if dev is None:
            assert all(d == 0 for d in diff), [float(d) for d in diff]
        else:
            assert all(d <= Fraction(float(dv)) for d, dv in zip(diff, dev[0])), ([float(d) for d in diff], dev)


# ============================================================================ 7. pickle
@pytest.mark.parametrize("kind", ["conv-residual", "concat-features", "gather", "selections", "conv-transpose",
                                  "avgpool-3x3-s1-pad-excl"])
def test_pickle_round_trip(kind):
    rng = np.random.default_rng(2)
    net = NETS[kind](rng)
    x = rng.normal(size=(5, net.input_size))
    y = net.forward64(x)
    net.affine_blocks()  # a populated cache must not break pickling
    clone = pickle.loads(pickle.dumps(net))
    assert clone is not net
    assert clone.inputs == net.inputs and not clone.is_chain
    assert clone.input_shape == net.input_shape and clone.output_shapes == net.output_shapes
    assert [type(l) for l in clone.layers] == [type(l) for l in net.layers]
    np.testing.assert_array_equal(clone.forward64(x), y)
    for a, b in zip(clone.affine_blocks(), net.affine_blocks()):
        assert (a.matrix != b.matrix).nnz == 0
        np.testing.assert_array_equal(a.bias, b.bias)
        assert (a.passthrough is None) == (b.passthrough is None)
        if a.passthrough is not None:
            np.testing.assert_array_equal(a.passthrough, b.passthrough)


# ============================================================================ 8. bad input
def _d(n_out, n_in):
    return Dense(np.ones((n_out, n_in)), np.zeros(n_out))


@pytest.mark.parametrize("build, message", [
    (lambda: Network([_d(2, 2), ReLU(), _d(2, 2)], (2,), inputs=[(-1,), (2,), (1,)]),
     "`inputs[1]` must name earlier layers (or -1 for the input), got (2,)"),
    (lambda: Network([_d(2, 2), ReLU()], (2,), inputs=[(-1,), (1,)]),
     "`inputs[1]` must name earlier layers (or -1 for the input), got (1,)"),
    (lambda: Network([_d(2, 2), ReLU()], (2,), inputs=[(-2,), (0,)]),
     "`inputs[0]` must name earlier layers (or -1 for the input), got (-2,)"),
    (lambda: Network([_d(2, 2), Add(), _d(1, 2)], (2,), inputs=[(-1,), (0,), (1,)]),
     "layer 1 (Add) reads 2 tensor(s), `inputs[1]` names 1"),
    (lambda: Network([_d(2, 2), Add(3), _d(1, 2)], (2,), inputs=[(-1,), (0, -1), (1,)]),
     "layer 1 (Add) reads 3 tensor(s), `inputs[1]` names 2"),
    (lambda: Network([_d(2, 2)], (2,), inputs=[(-1,), (0,)]),
     "`inputs` must have one entry per layer (1), got 2"),
    (lambda: Network([_d(3, 2), Add(), _d(1, 3)], (2,), inputs=[(-1,), (0, -1), (1,)]),
     "layer 1 (Add): Add needs inputs of one shape, got (3,), (2,)"),
    (lambda: Network([Reshape((1, 2, 3)), _conv(np.random.default_rng(0), 2, 1, 1, 1), Concat(0), Flatten()], (6,),
                     inputs=[(-1,), (0,), (1, -1), (2,)]),
     "layer 2 (Concat): Concat along axis 0 needs matching other axes, got (2, 2, 3), (6,)"),
    (lambda: Network([Reshape((1, 2, 3)), Reshape((1, 3, 2)), Concat(0), Flatten()], (6,),
                     inputs=[(-1,), (-1,), (0, 1), (2,)]),
     "layer 2 (Concat): Concat along axis 0 needs matching other axes, got (1, 2, 3), (1, 3, 2)"),
    (lambda: Network([Concat(1), Flatten()], (4,), inputs=[(-1, -1), (0,)]),
     "layer 0 (Concat): `Concat.axis` must be a per-sample axis in [0, 1), got 1"),
    (lambda: Network([Slice(0, 2, 5), _d(1, 3)], (4,)), "layer 0 (Slice): Slice 2:5 exceeds axis 0 of size 4"),
    (lambda: Network([Reshape((2, 2)), Slice(2, 0, 1), Flatten()], (4,)),
     "layer 1 (Slice): `Slice.axis` must be a per-sample axis in [0, 2), got 2"),
    (lambda: Network([Gather(0, 4), _d(1, 1)], (4,)),
     "layer 0 (Gather): Gather indices 4 out of range for axis 0 of size 4"),
    (lambda: Network([Reshape((2, 3)), Gather(1, (0, 3)), Flatten()], (6,)),
     "layer 1 (Gather): Gather indices (0, 3) out of range for axis 1 of size 3"),
    (lambda: Network([Gather(0, -1), _d(1, 1)], (4,)),
     "layer 0 (Gather): Gather indices -1 out of range for axis 0 of size 4"),
    (lambda: Network([Reshape((2, 3)), Transpose((1, 0, 2)), Flatten()], (6,)),
     "layer 1 (Transpose): Transpose perm (1, 0, 2) does not fit input shape (2, 3)"),
    (lambda: Network([Reshape((1, 2, 3)), Pad((1, 1, 1, 1)), Flatten()], (6,)),
     "layer 1 (Pad): Pad with 2 axes does not fit input shape (1, 2, 3)"),
    (lambda: Network([Reshape((1, 2, 3)), MaxPool2d((3, 3), (1, 1)), Flatten()], (6,)),
     "layer 1 (MaxPool2d): MaxPool2d kernel 3x3 does not fit input (1, 2, 3)"),
], ids=["later-layer", "itself", "below-minus-one", "add-one-input", "add3-two-inputs", "inputs-length",
        "add-shapes", "concat-rank", "concat-other-axes", "concat-axis", "slice-range", "slice-axis", "gather-int",
        "gather-tuple", "gather-negative", "transpose-rank", "pad-rank", "maxpool-fit"])
def test_network_rejects_bad_graphs(build, message):
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        build()


@pytest.mark.parametrize("build, message", [
    (lambda: Transpose((0, 0, 1)), "`Transpose.perm` must be a permutation of 0..2, got (0, 0, 1)"),
    (lambda: Transpose((1, 2)), "`Transpose.perm` must be a permutation of 0..1, got (1, 2)"),
    (lambda: Pad((1, -1, 0, 0)), "`Pad.pads` must be a sequence of integers >= 0, got (1, -1, 0, 0)"),
    (lambda: Pad((1, 0, 0)), "`Pad.pads` must list a begin and an end per axis, got (1, 0, 0)"),
    (lambda: Pad((1, 1), float("nan")), "`Pad.value` must be finite, got nan"),
    (lambda: Network([MaxPool2d((2, 2), (1, 1), (2, 0, 0, 0)), Flatten()], (1, 3, 3)),
     "layer 0 (MaxPool2d): MaxPool2d padding (2, 0, 0, 0) leaves a window with no position inside the input (1, 3, 3)"),
    (lambda: Network([MaxPool2d((3, 2), (1, 1), (0, 0, 0, 2)), Flatten()], (1, 3, 3)),
     "layer 0 (MaxPool2d): MaxPool2d padding (0, 0, 0, 2) leaves a window with no position inside the input (1, 3, 3)"),
    (lambda: MaxPool2d((2, 2), (0, 1)), "`MaxPool2d.stride` must be 2 integers >= 1, got (0, 1)"),
    (lambda: AvgPool2d((2, 2), (1, 1), (0, 0, -1, 0)),
     "`AvgPool2d.padding` must be 4 integers >= 0, got (0, 0, -1, 0)"),
    (lambda: Slice(0, 3, 3), "Slice needs step >= 1 and start < stop, got 3:3:1"),
    (lambda: Slice(0, 0, 3, 0), "Slice needs step >= 1 and start < stop, got 0:3:0"),
    (lambda: Gather(0, ()), "`Gather.indices` must not be empty"),
    (lambda: Add(1), "`Add.n_inputs` must be an integer >= 2, got 1"),
    (lambda: Concat(0, 0), "`Concat.n_inputs` must be an integer >= 1, got 0"),
    (lambda: ConvTranspose2d(np.ones((1, 2, 2, 2)), np.ones(3)),
     "`ConvTranspose2d.bias` must have 2 entries to match weight (1, 2, 2, 2)"),
], ids=["transpose-repeat", "transpose-range", "pad-negative", "pad-odd", "pad-nan", "maxpool-pad-top",
        "maxpool-pad-right", "maxpool-stride", "avgpool-pad", "slice-empty", "slice-step", "gather-empty", "add-one",
        "concat-zero", "convT-bias"])
def test_layers_reject_bad_parameters(build, message):
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        build()


def test_maxpool_rejects_windows_of_padding_only_with_dilation():
    """Kernel 2 with dilation 2 reads rows -3 and -1 of its first window when the top pad is 3:
    no position inside the image; the pad must be refused as for a plain kernel."""
    with pytest.raises(InvalidInputError, match=re.escape("leaves a window with no position inside the input")):
        Network([MaxPool2d((2, 2), (1, 1), (3, 0, 0, 0), (2, 2)), Flatten()], (1, 4, 4))


def test_avgpool_window_of_padding_only_is_rejected_or_consistent():
    """Kernel 2x2, top pad 2: the first output row's windows read rows -2 and -1 only. Either the
    layer is refused, or forward and operator agree on a finite value."""
    try:
        net = Network([AvgPool2d((2, 2), (1, 1), (2, 0, 0, 0), False), Flatten()], (1, 3, 3))
    except InvalidInputError:
        return
    x = np.random.default_rng(0).normal(size=(2, 9))
    y = net.forward64(x)
    assert np.all(np.isfinite(y)), y
    np.testing.assert_allclose(_blocks_forward(net, x)[0], y, rtol=0, atol=1e-14)


@pytest.mark.parametrize("build", [lambda: Gather(0, 1.5), lambda: Transpose(3), lambda: Pad(2), lambda: Reshape(4)],
                         ids=["gather-float", "transpose-int", "pad-int", "reshape-int"])
def test_layers_reject_non_sequences_with_invalid_input(build):
    with pytest.raises(InvalidInputError):
        build()


def test_add_accepts_a_numpy_integer_count():
    assert Add(np.int64(3)).n_inputs == 3


@pytest.mark.parametrize("config", list(VERIFY_CONFIGS))
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_margin_zero_behind_an_inexact_average_is_never_unsat(config, sign):
    """y = mean of nine ones = 1 exactly, but fl(1/9) * 9 != 1: with unsafe ``y <= 1`` (or
    ``y >= 1``) the exact margin is 0 at the only point, so the answer must not be unsat."""
    net = Network([AvgPool2d((3, 3), (1, 1)), Flatten(), ReLU(), Dense([[1.0]], [0.0])], (1, 3, 3))
    assert _ref_forward(net, np.ones((1, 9)), exact=True)[0][0] == 1
    spec = OutputSpec([(np.array([[sign]]), np.array([sign]))], 1)
    v = verify(net, Box(np.ones(9), np.ones(9)), spec, timeout=20, config=VERIFY_CONFIGS[config])
    assert v.status is not Status.UNSAT, v
    if v.status is Status.SAT:
        _check_sat(v, net, Box(np.ones(9), np.ones(9)), spec)


def test_network_rejects_non_integer_layer_indices():
    with pytest.raises(InvalidInputError, match=re.escape("`inputs` must hold integer layer indices")):
        Network([Dense(np.ones((2, 2)), np.zeros(2)), ReLU()], (2,), inputs=[(-1,), (0.5,)])
    with pytest.raises(InvalidInputError, match=re.escape("`inputs` must hold integer layer indices")):
        Network([Dense(np.ones((2, 2)), np.zeros(2)), ReLU()], (2,), inputs=[(-1,), (True,)])
