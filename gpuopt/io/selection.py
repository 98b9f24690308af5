"""Operators that copy, repeat, resample or reduce entries, as chains of exact layers: shared by
the ONNX and torch importers.

* nearest-neighbour resizing of one axis is a ``Gather`` with repeated indices:
  :func:`onnx_resize_axis` gives the source index of each output position exactly and refuses
  an axis where float32 or float64 arithmetic would pick another entry (a tie or a boundary
  that rounding moves); :func:`torch_nearest_indices` computes them as torch does;
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
from fractions import Fraction

import numpy as np

from ..layers import AvgPool2d, Conv2d, ElementwiseAffine, MaxPool2d, Reshape, Transpose

__all__ = ["ONNX_RESIZE_TRANSFORMS", "ONNX_NEAREST_MODES", "onnx_resize_axis", "torch_nearest_indices", "reduce_layers",
           "depth_to_space_layers", "space_to_depth_layers", "pixel_unshuffle_layers", "rowwise_linear_layers"]

ONNX_RESIZE_TRANSFORMS = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn")
ONNX_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple")


def _original(x, n_in: int, n_out: int, scale, transform: str, half):
    """``x_original`` of output positions ``x`` by the ONNX coordinate transform, in the arithmetic
    of the arguments (Fractions, or numpy float32 / float64 arrays)."""
    if transform == "asymmetric":
        return x / scale
    if transform == "tf_half_pixel_for_nn":
        return (x + half) / scale
    if transform == "align_corners":
        return x * (type(half)(n_in - 1) / type(half)(n_out - 1)) if n_out > 1 else x * 0
    if transform == "pytorch_half_pixel" and n_out == 1:
        return x * 0
    return (x + half) / scale - half  # half_pixel, pytorch_half_pixel


def _original_by_reciprocal(x, n_out: int, inv, transform: str, half):
    """:func:`_original` with the division by the scale done as a product by its reciprocal."""
    if transform == "asymmetric":
        return x * inv
    if transform == "tf_half_pixel_for_nn":
        return (x + half) * inv
    if transform == "pytorch_half_pixel" and n_out == 1:
        return x * 0
    return (x + half) * inv - half


def _nearest(orig, nearest: str, downsample: bool, half) -> list[int]:
    """The ONNX ``nearest_mode`` rounding of each ``orig`` (Fractions or a float array); ``simple``
    is onnxruntime's rule for Resize-10 and Upsample: ceil when downsampling, else truncation."""
    if isinstance(orig, list):  # exact
        out = []
        for q in orig:
            fl = math.floor(q)
            if nearest == "floor" or (nearest == "simple" and not downsample):
                out.append(fl if q >= 0 or nearest == "floor" else math.ceil(q))
            elif nearest in ("ceil", "simple"):
                out.append(math.ceil(q))
            elif q - fl == half:
                out.append(fl + 1 if nearest == "round_prefer_ceil" else fl)
            else:
                out.append(math.floor(q + half))
        return out
    fl = np.floor(orig)
    if nearest == "floor":
        idx = fl
    elif nearest == "simple":
        idx = np.ceil(orig) if downsample else np.trunc(orig)
    elif nearest == "ceil":
        idx = np.ceil(orig)
    else:
        tie = orig - fl == half
        idx = np.where(tie, fl + 1 if nearest == "round_prefer_ceil" else fl, np.floor(orig + half))
    return idx.astype(np.int64).tolist()


def onnx_resize_axis(n_in: int, scale, size, transform: str, nearest: str) -> tuple[int, list[int]]:
    """Output length and source index of each output position of an ONNX nearest-neighbour
    ``Resize`` (or ``Upsample``) of an axis of ``n_in`` entries, given its float32 ``scale`` or its
    output ``size``: the coordinate transform, then the rounding ``nearest``, clamped to
    ``[0, n_in - 1]``.

    Computed exactly (in rationals, with ``scale = size / n_in`` when a size is given) and in the
    float32 and float64 arithmetic implementations use (onnxruntime, the ONNX reference); where
    they disagree, the network's function depends on rounding, and ``ValueError`` says where.
    """
    half = Fraction(1, 2)
    if size is None:
        s32 = np.float32(scale)
        exact_scale = Fraction(float(s32))
        sizes = {math.floor(n_in * exact_scale), int(np.floor(np.float32(n_in) * s32)),
                 math.floor(float(n_in) * float(s32))}
        if len(sizes) != 1:
            raise ValueError(f"the output size of an axis of {n_in} scaled by {float(s32)!r} is {sorted(sizes)} "
                             "depending on the arithmetic")
        n_out = sizes.pop()
        scales = (s32, np.float64(s32))
    else:
        n_out = int(size)
        exact_scale = Fraction(n_out, n_in)
        scales = (np.float32(n_out) / np.float32(n_in), np.float64(n_out) / np.float64(n_in))
    if n_out < 1:
        return n_out, []
    downsample = exact_scale < 1
    exact = _nearest([_original(Fraction(x), n_in, n_out, exact_scale, transform, half) for x in range(n_out)],
                     nearest, downsample, half)
    for dtype, sc in zip((np.float32, np.float64), scales):
        x = np.arange(n_out, dtype=dtype)
        h = dtype(0.5)
        # the transform as written, and with the division by the scale as a product by its reciprocal
        variants = [_original(x, n_in, n_out, sc, transform, h)]
        if transform != "align_corners":
            variants.append(_original_by_reciprocal(x, n_out, dtype(1) / sc, transform, h))
        for orig in variants:
            got = _nearest(orig, nearest, downsample, h)
            for p, (a, b) in enumerate(zip(exact, got)):
                if min(max(a, 0), n_in - 1) != min(max(b, 0), n_in - 1):
                    raise ValueError(f"output position {p} of an axis resized from {n_in} to {n_out} reads entry "
                                     f"{min(max(a, 0), n_in - 1)} exactly but {min(max(b, 0), n_in - 1)} in "
                                     f"{np.dtype(dtype).name} arithmetic")
    return n_out, [min(max(i, 0), n_in - 1) for i in exact]


def torch_nearest_indices(n_in: int, n_out: int, scale_factor: float | None, exact: bool) -> list[int]:
    """Source index of each output position of torch's ``interpolate(mode="nearest")`` (or
    ``"nearest-exact"`` when ``exact``): ``floor(x s)`` (``floor((x + 1/2) s)``) with ``s = 1 /
    scale_factor`` when a scale factor is used, else ``n_in / n_out``, computed exactly.

    torch computes ``s`` and the products in float32 or float64 (by the tensor's dtype and the
    kernel), and copies or halves the index when ``n_out`` is ``n_in`` or ``2 n_in``; where any of
    these would read another entry, ``ValueError`` says where (the network would depend on which
    kernel runs)."""
    half = Fraction(1, 2)
    s = 1 / Fraction(scale_factor) if scale_factor else Fraction(n_in, n_out)
    exact_idx = [min(math.floor(((x + half) if exact else x) * s), n_in - 1) for x in range(n_out)]
    variants = []
    for dtype in (np.float32, np.float64):
        sd = dtype(1.0 / scale_factor) if scale_factor else dtype(n_in) / dtype(n_out)
        x = np.arange(n_out, dtype=dtype)
        src = np.floor((x + dtype(0.5)) * sd if exact else x * sd)
        variants.append((np.dtype(dtype).name, np.minimum(src, n_in - 1).astype(np.int64).tolist()))
    if n_out == n_in:
        variants.append(("the copy kernel", list(range(n_out))))
    elif n_out == 2 * n_in:
        variants.append(("the halving kernel", [x >> 1 for x in range(n_out)]))
    for how, idx in variants:
        for p, (a, b) in enumerate(zip(exact_idx, idx)):
            if a != b:
                raise ValueError(f"output position {p} of an axis resized from {n_in} to {n_out} reads entry {a} "
                                 f"exactly but {b} by {how}")
    return exact_idx


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
