"""Which coordinates a backward bound pass can touch, from the blocks' sparsity patterns alone.

Back-substituting rows ``e_R^T`` of block ``k`` gives coefficients ``e_R^T M_k D_{k-1} M_{k-1}
... D_j`` on ``h_j``, with ``D`` the (diagonal) ReLU relaxations. A coordinate of ``h_j`` whose
column has no stored entry in any row the product can reach gets the coefficient exactly zero,
in exact and in floating-point arithmetic (nothing is summed into it). So:

* :func:`receptive`: the coordinates of each layer (and of the input) that rows ``R`` of block
  ``k`` reach. For a convolution these are the rows' receptive fields: a backward pass restricted
  to them computes the same numbers on far narrower matrices (:func:`compacted`).
* :func:`cone`: the neurons of each hidden layer that reach chosen outputs (their cone of
  influence). Only these neurons' bounds enter the bounds of those outputs, so the others may keep
  any sound bounds (IBP's) at no loss there.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ..errors import InvalidInputError

__all__ = ["compacted", "cone", "output_indices", "receptive", "row_support", "spec_outputs"]


def row_support(matrix: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
    """The sorted columns with a stored entry in some row ``rows`` of ``matrix`` (CSR)."""
    rows = np.asarray(rows, dtype=np.int64)
    if not rows.size:
        return np.zeros(0, dtype=np.int64)
    starts, ends = matrix.indptr[rows], matrix.indptr[rows + 1]
    lens = ends - starts
    total = int(lens.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    # the stored positions of all the rows' entries, one run per row
    pos = np.repeat(starts - np.concatenate(([0], np.cumsum(lens)[:-1])), lens) + np.arange(total)
    mark = np.zeros(matrix.shape[1], dtype=bool)
    mark[matrix.indices[pos]] = True
    return np.flatnonzero(mark)


def receptive(matrices, k: int, rows: np.ndarray) -> list[np.ndarray]:
    """``out[j + 1]`` for ``j = -1 .. k - 1``: the coordinates of ``h_j`` (``j = -1``: the input)
    that rows ``rows`` of block ``k`` reach; ``matrices[j]`` is block ``j``'s CSR matrix."""
    out = [None] * (k + 1)
    cur = np.asarray(rows, dtype=np.int64)
    for j in range(k, -1, -1):
        cur = row_support(matrices[j], cur)
        out[j] = cur
    return out


def output_indices(outputs, n_out: int) -> np.ndarray:
    """``outputs`` (a sequence, array or tensor of integer indices) as sorted unique int64
    indices, each in ``[0, n_out)``; anything else is refused by name."""
    arr = np.asarray(outputs.detach().cpu() if isinstance(outputs, torch.Tensor) else outputs)
    if arr.size and (arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer)):
        raise InvalidInputError(f"`outputs` must be integer output indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= n_out):
        raise InvalidInputError(f"`outputs` must lie in [0, {n_out}), got {int(arr.min())}..{int(arr.max())}")
    return np.unique(arr)


def spec_outputs(A: torch.Tensor) -> torch.Tensor | None:
    """The outputs with a nonzero coefficient in some row of the stacked spec ``A`` (``(..., n_out)``),
    or None when that is every output."""
    used = (A != 0).reshape(-1, A.shape[-1]).any(dim=0)
    return None if bool(used.all()) else torch.nonzero(used).flatten()


def cone(matrices, outputs) -> list[np.ndarray] | None:
    """Per hidden layer ``j``, the boolean mask of the neurons that reach the outputs ``outputs``
    (integer indices into the last block's rows, :func:`output_indices`); None when those are all
    the outputs."""
    n_out = matrices[-1].shape[0]
    outputs = output_indices(outputs, n_out)
    if outputs.size >= n_out:
        return None
    reach = receptive(matrices[1:], len(matrices) - 2, outputs)  # (the input's coordinates not needed)
    masks = []
    for j, coords in enumerate(reach):
        mask = np.zeros(matrices[j].shape[0], dtype=bool)
        mask[coords] = True
        masks.append(mask)
    return masks


def compacted(ops, k: int, rows: np.ndarray, reach: list[np.ndarray], relax, hmax, x_mid, x_rad, weights):
    """The backward pass of rows ``rows`` of block ``k`` restricted to the coordinates they reach
    (``reach``, from :func:`receptive`): ``(ops', relax', hmax', x_mid', x_rad')`` where ``ops'[k]``
    holds just those rows (in order), ``ops'[j]`` the rows ``reach[j + 1]`` and columns ``reach[j]``
    of block ``j``, and the per-coordinate tensors their entries at ``reach``; ``weights[j]`` is
    the full block's ``|M_j| hmax[j - 1]`` (computed once per layer's pass). Passing these to
    :func:`gpuopt.bounds.crown._backward` gives the bounds of the full pass: the coordinates left
    out carry coefficients that are exactly zero, and the products kept are summed over fewer
    terms, which the pass's own term counts then describe."""
    dev = ops[k].bias.device
    idx = [torch.as_tensor(r, device=dev) for r in reach]  # idx[j + 1]: layer j's coordinates
    sub_hmax = {j: hmax[j][:, idx[j + 1]] for j in range(-1, k)}
    sub_ops = []
    for j in range(k + 1):
        out_rows = np.asarray(rows, dtype=np.int64) if j == k else reach[j + 1]
        sub_ops.append(ops[j].restrict(out_rows, reach[j], magnitudes=(weights[j], sub_hmax[j - 1])))
    sub_relax = [tuple(t[..., idx[j + 1]] for t in relax[j]) for j in range(k)]
    return sub_ops, sub_relax, sub_hmax, x_mid[:, idx[0]], x_rad[:, idx[0]]
