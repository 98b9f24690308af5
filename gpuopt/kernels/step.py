"""The attack's projected step on a box, fused with best-iterate tracking.

For points ``x``, ``x_prev``, gradients ``g``, best points ``best_x`` and their gradients
``best_g`` (all ``(items, restarts, n)``), step lengths ``t`` ``(items, restarts)``, and per-item
``radius``, ``lower``, ``upper`` ``(items, n)``, :func:`box_step` does, in place and in order:

1. where ``better``: ``best_x = x``, ``best_g = g`` (the last evaluation improved the restart);
2. where ``back``: ``x = x_prev = best_x``, ``g = best_g`` (a halved step restarts from the best);
3. ``z = clamp(x - sign(g) t radius, lower, upper)`` (the steepest L-inf step, projected);
4. without momentum the new point is ``z``; with momentum ``a`` it is
   ``clamp(x_prev (a - 1) + x 2 (1 - a) + z a, lower, upper)`` (APGD's
   ``x + a (z - x) + (1 - a)(x - x_prev)``).

The new point is written into ``g``'s buffer (no momentum) or ``x_prev``'s (momentum) and
returned; the defined results are that point, ``x``, ``best_x`` and ``best_g``; whatever else is
left in ``g`` and ``x_prev`` is scratch (the kernel and the fallback leave different values
there). ``sign(g)`` is ``(g > 0) - (g < 0)``: a NaN gradient does not move its coordinate. The
masks are ``(items, restarts)``, or broadcast to it.

``impl="cupy"`` runs ``cuda_kernels/box_step.cu`` (one pass where the torch fallback makes about
a dozen, measured on an H200 in ``benchmarks/attack_profile.py``); ``impl="torch"`` composes
torch operations. Both round every product and sum on its own in the same order, so they
give the same bits (the sign of a zero aside), on the same device. ``auto`` takes the kernel for
contiguous CUDA tensors when CuPy is installed.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InvalidInputError
from . import disable, kernel_ready, launch, load_kernel

__all__ = ["IMPLEMENTATIONS", "box_step", "momentum_point_", "track_best_"]

IMPLEMENTATIONS = ("auto", "torch", "cupy")


def box_step(x: torch.Tensor, x_prev: torch.Tensor, g: torch.Tensor, t: torch.Tensor, radius: torch.Tensor,
             lower: torch.Tensor, upper: torch.Tensor, *, best_x: torch.Tensor, best_g: torch.Tensor | None = None,
             better: torch.Tensor | None = None, back: torch.Tensor | None = None, momentum: float | None = None,
             impl: str = "auto") -> torch.Tensor:
    """See the module docstring; returns the new points (``g``'s or ``x_prev``'s buffer)."""
    if impl not in IMPLEMENTATIONS:
        raise InvalidInputError(f"`impl` must be one of {', '.join(IMPLEMENTATIONS)}, got {impl!r}")
    if back is not None and best_g is None:
        raise InvalidInputError("`back` needs `best_g`: a restart sent back takes its best point's gradient")
    points = [x, x_prev, g, best_x] + ([best_g] if best_g is not None else [])
    B, R = x.shape[:2]
    better = None if better is None else better.expand(B, R)
    back = None if back is None else back.expand(B, R)
    args = (x, x_prev, g, t, radius, lower, upper, best_x, best_g, better, back, momentum)
    if impl == "auto":
        if _kernel_takes(x, points, (t, radius, lower, upper, better, back)) and \
                kernel_ready("box_step"):
            try:
                return _box_step_cupy(*args)
            except Exception as err:  # noqa: BLE001 - a kernel that fails to build or launch (before it
                # writes anything) leaves the torch fallback, which gives the same bits
                disable("box_step", err)
        impl = "torch"
    if impl == "cupy":
        return _box_step_cupy(*args)
    return _box_step_torch(*args)


def _kernel_takes(x, points, others) -> bool:
    """The kernel's preconditions: float32/float64 contiguous point tensors of one shape on one
    CUDA device, the other tensors on that device too."""
    return (x.is_cuda and x.dtype in (torch.float32, torch.float64)
            and all(p.is_contiguous() and p.shape == x.shape and p.dtype == x.dtype and p.device == x.device
                    for p in points)
            and all(o is None or o.device == x.device for o in others))


def track_best_(x, x_prev, g, best_x, best_g, better, back) -> None:
    """Steps 1 and 2 of :func:`box_step` (any geometry): the best points take the improved
    restarts, and restarts sent ``back`` take their best point and its gradient; in place."""
    if better is not None:
        _take_rows_(best_x, x, better)
        if best_g is not None:
            _take_rows_(best_g, g, better)
    if back is not None:
        _take_rows_(x, best_x, back)
        _take_rows_(x_prev, best_x, back)
        _take_rows_(g, best_g, back)


#: below this many elements a CPU ``where`` costs less than finding and copying the rows
_ROW_COPY_MIN = 1 << 15


def _take_rows_(dst: torch.Tensor, src: torch.Tensor, rows: torch.Tensor) -> None:
    """``dst[rows] = src[rows]`` for a ``(batch, restarts)`` mask ``rows``: a masked select on a
    GPU (no read-back), a copy of the marked rows on a CPU (a broadcast ``where`` there costs
    about 1 ns an element, whatever the mask)."""
    if dst.device.type == "cpu" and dst.numel() >= _ROW_COPY_MIN and dst.is_contiguous() and src.is_contiguous():
        idx = rows.reshape(-1).nonzero().flatten()
        if idx.numel() == rows.numel():  # every row (most restarts improve early on): one plain copy
            dst.copy_(src)
        elif idx.numel():
            n = dst.shape[-1]
            dst.view(-1, n).index_copy_(0, idx, src.reshape(-1, n).index_select(0, idx))
    else:
        torch.where(rows[..., None], src, dst, out=dst)


def momentum_point_(x, x_prev, z, momentum: float) -> torch.Tensor:
    """``x_prev (a - 1) + x 2 (1 - a) + z a`` in ``x_prev``'s buffer (``z``'s is scaled too), each
    product and sum rounded on its own; the caller projects it."""
    a = float(momentum)
    return x_prev.mul_(a - 1).add_(x * (2 * (1 - a))).add_(z.mul_(a))


def _box_step_torch(x, x_prev, g, t, radius, lower, upper, best_x, best_g, better, back, momentum):
    track_best_(x, x_prev, g, best_x, best_g, better, back)
    lo, hi = lower[:, None], upper[:, None]
    s = g.sign_()
    if s.is_cuda:  # torch.sign keeps NaN on some builds; the definition (and the CPU's sign) gives 0
        s.nan_to_num_(nan=0.0)
    z = torch.clamp(s.mul_(t[..., None]).mul_(radius[:, None]).neg_().add_(x), lo, hi, out=g)
    if momentum is None:
        return z
    return torch.clamp(momentum_point_(x, x_prev, z, momentum), lo, hi, out=x_prev)


def _box_step_cupy(x, x_prev, g, t, radius, lower, upper, best_x, best_g, better, back, momentum):
    B, R, n = x.shape
    dt = x.dtype
    points = [x, x_prev, g, best_x] + ([best_g] if best_g is not None else [])
    if not _kernel_takes(x, points, (t, radius, lower, upper, better, back)):
        raise InvalidInputError("`impl='cupy'` needs contiguous float32 or float64 CUDA point tensors of one shape, "
                                "and every other tensor on their device")
    if x.numel() == 0:
        return g if momentum is None else x_prev
    per_restart = t.to(dt).expand(B, R).contiguous()
    per_item = [v.to(dt).expand(B, n).contiguous() for v in (radius, lower, upper)]
    masks = [None if m is None else m.expand(B, R).contiguous().view(torch.uint8) for m in (better, back)]
    scalar = np.float32 if dt == torch.float32 else np.float64
    a = 0.0 if momentum is None else float(momentum)
    kernel = load_kernel("box_step", "box_step_f32" if dt == torch.float32 else "box_step_f64")

    threads = 256
    blocks = int(min((x.numel() + threads - 1) // threads, 65535 * 8))
    null = np.uint64(0)  # "none" for a mask or best_g
    launch(kernel, blocks, threads,
           (x, x_prev, g, best_x, null if best_g is None else best_g, null if masks[0] is None else masks[0],
            null if masks[1] is None else masks[1], per_restart, *per_item,
            np.int64(B), np.int64(R), np.int64(n), np.int32(momentum is not None),
            scalar(a - 1), scalar(2 * (1 - a)), scalar(a)), x.device)
    return g if momentum is None else x_prev
