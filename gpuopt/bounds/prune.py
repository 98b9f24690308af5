"""Dead-neuron pruning: a smaller network that computes the same function on one input box.

A ReLU neuron whose pre-activation upper bound on the box is ``u <= 0`` outputs ``h = relu(z) = 0``
for every input there (a coordinate the activation passes through is never dead). Dropping it
removes a row of the block that computes ``z_j`` and the matching column of the next block: on
the box every later pre-activation is unchanged, so every bound, relaxation and proof computed on
the pruned blocks holds for the network. The products dropped are exactly zero, so the rounding
pads still cover the arithmetic (their term count is the full network's, an over-count).

On the mnist_fc networks at eps 0.03-0.05, 60-98% of a layer's neurons are dead at the root after
alpha-CROWN, and every backward pass of activation splitting shrinks by that share squared.

**Outside the cone.** Given the outputs a property reads (``outputs``), a neuron that reaches none
of them (:func:`gpuopt.bounds.reach.cone`) is dropped too, and the last block keeps just those
outputs (:attr:`DeadPruning.out_keep`: the spec's rows must be narrowed to them). No neuron kept
reads a dropped one (that would put the dropped one in the cone), so every kept pre-activation and
every kept output is computed as in the full network. TinyYOLO's properties read 5 of its 21,125
outputs; its last hidden layer has 576 of about 21,000 neurons in their cone.
"""

from __future__ import annotations

import numpy as np
import torch

from ..network import LinearOp, Network
from .reach import cone, output_indices

__all__ = ["DeadPruning"]


class DeadPruning:
    """The neurons of ``network`` kept on a box with pre-activation bounds ``pre`` (per ReLU
    layer ``(lower, upper)``, each ``(n_j,)`` or ``(B, n_j)``; a neuron is dropped only when it is
    dead in every row). ``keep[j]``: the kept indices of ReLU layer ``j`` (ascending).
    :meth:`ops` gives the pruned blocks, :meth:`narrow` selects the kept neurons of a per-layer
    tensor and :meth:`widen` puts them back among the dropped ones' bounds. With ``outputs``
    (output indices, or None for all), the neurons outside their cone are dropped too, and
    ``out_keep`` holds the outputs kept (None: all); ``pre`` must then be one box's."""

    def __init__(self, network: Network, pre, outputs=None):
        self.network = network
        blocks = network.affine_blocks()
        within = None if outputs is None else cone([b.matrix for b in blocks], outputs)
        self.out_keep = None if within is None else torch.as_tensor(output_indices(outputs, blocks[-1].matrix.shape[0]))
        self.keep, self.dropped_bounds = [], []
        for j, (lo, up) in enumerate(pre):
            lo = torch.as_tensor(lo).reshape(-1, torch.as_tensor(lo).shape[-1])
            up = torch.as_tensor(up).reshape(-1, torch.as_tensor(up).shape[-1])
            dead = (up <= 0).all(dim=0)  # NaN: not provably dead, kept
            if blocks[j].passthrough is not None:
                dead &= ~torch.as_tensor(np.asarray(blocks[j].passthrough, dtype=bool), device=dead.device)
            if within is not None:  # (a dropped neuron's bounds below are then this box's own)
                if lo.shape[0] != 1:
                    raise ValueError("DeadPruning: `outputs` needs the pre-activation bounds of one box")
                dead |= ~torch.as_tensor(within[j], device=dead.device)
            self.keep.append(torch.nonzero(~dead).flatten().cpu())
            # the bounds a dropped neuron gets back (any row's: all have u <= 0 there)
            self.dropped_bounds.append((lo[0].detach().clone(), up[0].detach().clone()))
        self.dropped = sum(int(b.matrix.shape[0]) - k.numel() for b, k in zip(blocks, self.keep))
        self._ops = {}

    def ops(self, device, dtype) -> list[LinearOp]:
        """The network's :class:`LinearOp` blocks without the dropped neurons and outputs (the
        network's own when none is dropped)."""
        if not self.dropped and self.out_keep is None:
            return self.network.linear_ops(device, dtype)
        key = (str(device), dtype)
        if key not in self._ops:
            blocks = self.network.affine_blocks()
            ops = []
            for j, b in enumerate(blocks):
                m = b.matrix.tocsr()
                rows = self.keep[j].numpy() if j < len(self.keep) else \
                    np.arange(m.shape[0]) if self.out_keep is None else self.out_keep.numpy()
                m = m[rows]
                if j > 0:
                    m = m.tocsc()[:, self.keep[j - 1].numpy()].tocsr()
                pt = None if b.passthrough is None else np.asarray(b.passthrough, dtype=bool)[rows]
                ops.append(LinearOp(m, np.asarray(b.bias)[rows], device, dtype, pt))
            self._ops[key] = ops
        return self._ops[key]

    def narrow(self, t: torch.Tensor, j: int) -> torch.Tensor:
        """The kept neurons of layer ``j`` of ``t`` (``(..., n_j)``)."""
        return t if not self.dropped else t[..., self.keep[j].to(t.device)]

    def widen(self, t: torch.Tensor, j: int, side: int, base: torch.Tensor | None = None) -> torch.Tensor:
        """``t`` (``(..., kept_j)``) at the kept neurons of layer ``j`` and, elsewhere, the dropped
        neurons' bounds: ``base`` (``(..., n_j)``, e.g. each batch row's own), else the first
        row's of ``pre`` (``side`` 0: lower, 1: upper)."""
        if not self.dropped:
            return t
        if base is None:
            base = self.dropped_bounds[j][side]
        base = base.to(t.device, t.dtype)
        out = base.expand(*t.shape[:-1], base.shape[-1]).clone()
        out[..., self.keep[j].to(t.device)] = t
        return out
