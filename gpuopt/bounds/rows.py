"""Bounds of linear rows of the output: ``lower <= a_i^T f(x) <= upper`` over a box.

For a matrix ``A`` ``(m, n_out)`` and a method:

- ``ibp``: the output box ``[l_y, u_y]`` of :func:`~gpuopt.bounds.ibp.ibp`, then
  ``a^T y >= a+ . l_y + a- . u_y`` (outward-padded for rounding, as in
  :func:`~gpuopt.bounds.base.disjunct_lower_bounds`);
- ``crown``: CROWN's linear lower bound of ``[A; -A] y`` on the intermediate bounds of
  :func:`~gpuopt.bounds.forward.intermediate_bounds` (each row the better of it and IBP's);
- ``alpha-crown``: the same with the lower slopes optimised per row
  (:func:`~gpuopt.bounds.crown.alpha_crown_linear_lower`);
- ``lp``: alpha-CROWN on every layer, then LP bound tightening of the unstable neurons and the
  LP of each row over the triangle relaxation (:mod:`gpuopt.bounds.lp`), safe dual bounds from
  HiGHS; each row keeps the better of it and alpha-CROWN's.

Every bound is sound (float64 with rounding pads). An upper bound is the negated lower bound of
``-a``.

A chain with Sigmoid or Tanh layers (:func:`~gpuopt.bounds.smooth.smooth_chain`) has no exact
linear form: ``ibp`` is then :func:`~gpuopt.bounds.interval.interval_bounds`, ``crown`` the linear
relaxation of :mod:`gpuopt.bounds.smooth` (each row the better of the two); ``alpha-crown`` and
``lp`` are refused by name.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InvalidInputError, NotPiecewiseLinearError
from ..network import Network
from .base import disjunct_lower_bounds
from .interval import interval_bounds
from .smooth import smooth_chain, smooth_disjunct_lower_bounds
from .crown import alpha_crown_bounds, alpha_crown_linear_lower, crown_linear_lower
from .forward import intermediate_bounds
from .ibp import ibp

__all__ = ["ROW_METHODS", "row_bounds"]

ROW_METHODS = ("ibp", "crown", "alpha-crown", "lp")


def row_bounds(network: Network, lower, upper, A, *, method: str = "crown", alpha_steps: int = 20,
               deadline: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lower (m,), upper (m,))`` bounds of ``A f(x)`` over the box ``[lower, upper]``
    (``(n_in,)``), in float64."""
    if method not in ROW_METHODS:
        raise InvalidInputError(f"`method` must be one of {', '.join(ROW_METHODS)}, got {method!r}")
    lo = torch.tensor(np.array(lower, dtype=np.float64)).reshape(1, -1)
    hi = torch.tensor(np.array(upper, dtype=np.float64)).reshape(1, -1)
    A = torch.tensor(np.array(A, dtype=np.float64)).reshape(-1, network.output_size)
    m = A.shape[0]
    both = torch.cat([A, -A])
    if smooth_chain(network) is not None:
        return _smooth_rows(network, lo, hi, both, method, m)
    try:
        out = ibp(network, lo, hi).output
    except NotPiecewiseLinearError as exc:  # e.g. a final Softmax: interval bounds, layer by layer
        if method != "ibp":
            raise NotPiecewiseLinearError(f"{exc}; method {method!r} needs a piecewise linear network (or a chain "
                                          "of affine, ReLU, Sigmoid and Tanh layers): 'ibp' applies") from None
        out = interval_bounds(network, lo, hi)
    # IBP's row bounds: disjunct_lower_bounds with one row per "disjunct" and b = 0
    rows = disjunct_lower_bounds(*out, both[:, None, :], torch.zeros(2 * m, 1, dtype=torch.float64))[0]
    if method != "ibp":
        inter = intermediate_bounds(network, lo, hi, deadline=deadline)
        if method == "crown":
            lin, _ = crown_linear_lower(network, lo, hi, both, inter)
        else:
            if method == "lp" and len(inter.pre_activation) > 1:
                inter = alpha_crown_bounds(network, lo, hi, inter, steps=alpha_steps, deadline=deadline)
            lin = alpha_crown_linear_lower(network, lo, hi, both, inter, steps=alpha_steps, deadline=deadline)
        rows = torch.maximum(rows, lin[0])
        if method == "lp":
            rows = torch.maximum(rows, torch.as_tensor(_lp_rows(network, lo[0].numpy(), hi[0].numpy(), both.numpy(),
                                                                inter, deadline)))
    return rows[:m], -rows[m:]


def _smooth_rows(network: Network, lo, hi, both, method: str, m: int):
    """:func:`row_bounds` of a Sigmoid/Tanh chain (see the module docstring)."""
    if method not in ("ibp", "crown"):
        raise NotPiecewiseLinearError(f"the network has Sigmoid or Tanh layers: method {method!r} needs a piecewise "
                                      "linear network; 'ibp' (interval bounds) and 'crown' (its linear relaxation) "
                                      "apply")
    out = interval_bounds(network, lo, hi)
    zeros = torch.zeros(2 * m, 1, dtype=torch.float64)
    rows = disjunct_lower_bounds(*out, both[:, None, :], zeros)[0]
    if method == "crown":
        rows = torch.fmax(rows, smooth_disjunct_lower_bounds(network, lo, hi, both[:, None, :], zeros)[0])
    return rows[:m], -rows[m:]


def _lp_rows(network: Network, lo: np.ndarray, hi: np.ndarray, A: np.ndarray, inter, deadline) -> np.ndarray:
    """LP lower bounds of the rows of ``A`` after LP tightening of ``inter`` (one sample)."""
    from .lp import lp_row_bounds, lp_tighten

    blocks = network.affine_blocks()
    pre = [(l[0].numpy(), u[0].numpy()) for l, u in inter.pre_activation]
    ly, uy = inter.output[0][0].numpy(), inter.output[1][0].numpy()
    if not all(np.all(np.isfinite(a)) for pair in pre for a in pair) or not (np.all(np.isfinite(ly))
                                                                           and np.all(np.isfinite(uy))):
        return np.full(A.shape[0], -np.inf)  # no finite relaxation to solve
    pre = lp_tighten(blocks, pre, lo, hi, deadline=deadline).pre
    return lp_row_bounds(blocks, pre, (ly, uy), lo, hi, A, np.zeros(A.shape[0]), deadline=deadline)
