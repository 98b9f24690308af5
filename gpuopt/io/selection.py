"""Operators that copy, repeat, resample or reduce entries, as chains of exact layers: shared by
the ONNX and torch importers.

* nearest-neighbour resizing of one axis is a ``Gather`` with repeated indices;
  :func:`onnx_nearest_indices` and :func:`torch_nearest_indices` give the source index of each
  output position as onnxruntime and torch compute it (in float32, so ties fall as they do there);
* a reduction over some per-sample axes moves them last (``Transpose``), views the tensor as
  ``(rest, 1, k)`` and pools each row by a ``(1, k)`` window: average pooling for a mean, times
  ``k`` for a sum, max pooling for a max, between two negations for a min (:func:`reduce_layers`);
* depth-to-space and space-to-depth are a reshape, a permutation of five axes and a reshape
  (:func:`depth_to_space_layers`, :func:`space_to_depth_layers`);
* a matrix applied to every row of the last axis (``x @ W`` on ``(..., k)``) is a 1x1
  convolution over the rows viewed as pixels (:func:`rowwise_linear_layers`), whose linear form
  keeps only ``W``'s entries (a block-diagonal dense matrix would hold ``rows^2`` times as many).
"""

from __future__ import annotations

import math

import numpy as np

from ..layers import AvgPool2d, Conv2d, ElementwiseAffine, MaxPool2d, Reshape, Transpose

__all__ = ["ONNX_RESIZE_TRANSFORMS", "onnx_nearest_indices", "torch_nearest_indices", "reduce_layers",
           "depth_to_space_layers", "space_to_depth_layers", "pixel_unshuffle_layers", "rowwise_linear_layers"]

ONNX_RESIZE_TRANSFORMS = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn",
                          "half_pixel_symmetric")


def onnx_nearest_indices(n_in: int, n_out: int, scale, transform: str, nearest: str) -> list[int]:
    """Source index of each of ``n_out`` output positions of an ONNX nearest-neighbour ``Resize``
    of an axis of ``n_in`` entries: the coordinate transform ``x -> x_original``, then the
    rounding ``nearest``, clamped to ``[0, n_in - 1]``, in float32 as onnxruntime computes them
    (``scale`` is a float32)."""
    f = np.float32
    scale = f(scale)
    x = np.arange(n_out, dtype=np.float32)
    half = f(0.5)
    if transform == "asymmetric":
        orig = x / scale
    elif transform == "tf_half_pixel_for_nn":
        orig = (x + half) / scale
    elif transform == "align_corners":
        orig = x * (f(n_in - 1) / f(n_out - 1)) if n_out > 1 else np.zeros(n_out, np.float32)
    elif transform == "pytorch_half_pixel":
        orig = (x + half) / scale - half if n_out > 1 else np.zeros(n_out, np.float32)
    elif transform == "half_pixel_symmetric":
        adjustment = f(n_out) / (scale * f(n_in))
        offset = f(n_in) / f(2) * (f(1) - adjustment)
        orig = offset + (x + half) / scale - half
    elif transform == "half_pixel":
        orig = (x + half) / scale - half
    else:
        raise ValueError(f"unknown coordinate transform {transform!r}")
    floor = np.floor(orig)
    tie = orig - floor == half
    if nearest == "floor":
        idx = floor
    elif nearest == "ceil":
        idx = np.ceil(orig)
    elif nearest == "round_prefer_ceil":
        idx = np.where(tie, floor + 1, np.round(orig))
    elif nearest == "round_prefer_floor":
        idx = np.where(tie, floor, np.round(orig))
    else:
        raise ValueError(f"unknown nearest mode {nearest!r}")
    return np.clip(idx, 0, n_in - 1).astype(np.int64).tolist()


def torch_nearest_indices(n_in: int, n_out: int, scale_factor: float | None, exact: bool) -> list[int]:
    """Source index of each output position of torch's ``interpolate(mode="nearest")`` (or
    ``"nearest-exact"`` when ``exact``): ``floor(x * s)`` (``floor((x + 0.5) * s)``) with the
    float32 ``s = 1 / scale_factor`` when a scale factor is used, else ``n_in / n_out``."""
    f = np.float32
    s = f(1.0 / scale_factor) if scale_factor else f(n_in) / f(n_out)
    x = np.arange(n_out, dtype=np.float32)
    src = np.floor((x + f(0.5)) * s if exact else x * s)
    return np.minimum(src, n_in - 1).astype(np.int64).tolist()


def reduce_layers(shape: tuple, axes, kind: str) -> list:
    """Layers that reduce the per-sample tensor of ``shape`` over ``axes`` by ``kind`` (``"sum"``,
    ``"mean"``, ``"max"``, ``"min"``), ending in shape ``(rest, 1, 1)`` (the kept entries in
    row-major order); an empty list when the reduced axes hold one entry each."""
    red = sorted(set(axes))
    keep = [a for a in range(len(shape)) if a not in red]
    k = math.prod(shape[a] for a in red)
    if k == 1:
        return []
    rest = math.prod(shape[a] for a in keep)
    layers = [] if keep + red == list(range(len(shape))) else [Transpose(tuple(keep + red))]
    layers.append(Reshape((rest, 1, k)))
    if kind == "min":
        layers.append(ElementwiseAffine(-np.ones(()), np.zeros(())))
    layers.append(MaxPool2d((1, k), (1, k)) if kind in ("max", "min") else AvgPool2d((1, k), (1, k)))
    if kind in ("min", "sum"):
        layers.append(ElementwiseAffine(np.array(-1.0 if kind == "min" else float(k)), np.zeros(())))
    return layers


def depth_to_space_layers(shape: tuple, block: int, mode: str) -> list:
    """ONNX ``DepthToSpace`` (``mode`` ``"DCR"`` or ``"CRD"``; torch's ``pixel_shuffle`` is CRD) on
    ``(C, H, W)``: ``(C / b^2, H b, W b)``."""
    c, h, w = shape
    if mode == "DCR":
        view, perm = (block, block, c // (block * block), h, w), (2, 3, 0, 4, 1)
    else:
        view, perm = (c // (block * block), block, block, h, w), (0, 3, 1, 4, 2)
    return [Reshape(view), Transpose(perm), Reshape((c // (block * block), h * block, w * block))]


def space_to_depth_layers(shape: tuple, block: int) -> list:
    """ONNX ``SpaceToDepth`` on ``(C, H, W)``: ``(C b^2, H / b, W / b)``, channel ``(i b + j) C + c``
    holding ``x[c, y b + i, x b + j]`` (torch's ``pixel_unshuffle`` orders them ``(c, i, j)``:
    :func:`pixel_unshuffle_layers`)."""
    c, h, w = shape
    return [Reshape((c, h // block, block, w // block, block)), Transpose((2, 4, 0, 1, 3)),
            Reshape((c * block * block, h // block, w // block))]


def pixel_unshuffle_layers(shape: tuple, block: int) -> list:
    """torch's ``pixel_unshuffle`` on ``(C, H, W)``: channel ``c b^2 + i b + j`` holds
    ``x[c, y b + i, x b + j]``."""
    c, h, w = shape
    return [Reshape((c, h // block, block, w // block, block)), Transpose((0, 2, 4, 1, 3)),
            Reshape((c * block * block, h // block, w // block))]


def rowwise_linear_layers(shape: tuple, weight: np.ndarray, bias: np.ndarray) -> list:
    """``x -> x @ weight.T + bias`` on every row of the last axis of the per-sample ``shape``
    ``(..., k)`` (``weight`` of shape ``(m, k)``), giving ``(..., m)``: the rows as the ``R``
    pixels of a ``(k, 1, R)`` image, a 1x1 convolution to ``m`` channels, and back."""
    k = shape[-1]
    rows = math.prod(shape[:-1])
    m = weight.shape[0]
    return [Reshape((rows, k)), Transpose((1, 0)), Reshape((k, 1, rows)),
            Conv2d(np.asarray(weight, dtype=np.float64)[:, :, None, None], np.asarray(bias, dtype=np.float64)),
            Reshape((m, rows)), Transpose((1, 0)), Reshape(tuple(shape[:-1]) + (m,))]
