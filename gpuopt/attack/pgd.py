"""Projected gradient descent on the spec margin, many restarts per item in one batch.

For items ``b`` with boxes ``[l_b, u_b]`` and unsafe regions ``OR_k {A_k y <= b_k}`` the attack
minimises ``margin(f(x)) = min_k max_i (A_k f(x) - b_k)_i`` (see :mod:`gpuopt.specs`) by
sign-gradient steps scaled by the box width, with a cosine-decaying step size, projecting after
every step. All ``batch x restarts`` points go through the network as one tensor. The best
iterate per item is returned; ``success`` is recomputed on that projected point. A success here
is only a *candidate*: the pipeline re-checks it in float64 before reporting ``sat``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ..errors import InvalidInputError
from ..network import Network
from .geometry import BoxGeometry

__all__ = ["AttackConfig", "Candidates", "pgd_attack"]


@dataclass(frozen=True)
class AttackConfig:
    """PGD settings: ``restarts`` per item, ``steps`` per restart, initial ``step_size`` as a
    fraction of each feature's box width, ``seed`` for the random starts."""

    restarts: int = 64
    steps: int = 100
    step_size: float = 0.25
    seed: int = 0

    def __post_init__(self):
        if int(self.restarts) < 1:
            raise InvalidInputError(f"`restarts` must be >= 1, got {self.restarts}")
        if int(self.steps) < 0:
            raise InvalidInputError(f"`steps` must be >= 0, got {self.steps}")
        if not (0 < float(self.step_size) <= 1):
            raise InvalidInputError(f"`step_size` must be in (0, 1], got {self.step_size}")


@dataclass(frozen=True, eq=False)
class Candidates:
    """Best points found per item: ``x`` ``(batch, n)``, ``margin`` ``(batch,)`` in the attack's
    dtype, ``success`` = ``margin <= 0``, ``patterns`` one bool ``(batch, n_k)`` per ReLU layer,
    ``steps`` the number of steps taken."""

    x: torch.Tensor
    margin: torch.Tensor
    success: torch.Tensor
    patterns: tuple
    steps: int


def _margins(net: Network, x: torch.Tensor, A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(batch, restarts)`` margins of the points ``x`` ``(batch, restarts, n)``."""
    bsz, r, n = x.shape
    y = net.forward(x.reshape(bsz * r, n)).reshape(bsz, r, -1)
    rows = torch.einsum("bkmo,bro->brkm", A, y) - b[:, None]
    return rows.amax(dim=-1).amin(dim=-1)


def pgd_attack(network: Network, lower, upper, A, b, *, config: AttackConfig = AttackConfig(),
               device=None, dtype=torch.float32, deadline: float | None = None) -> Candidates:
    """Run PGD on a batch of items sharing ``network``.

    ``lower``/``upper``: ``(batch, n)`` boxes. ``A``/``b``: the padded spec, ``(K, M, n_out)`` and
    ``(K, M)`` shared by all items, or with a leading batch axis. ``deadline`` is a
    ``time.monotonic()`` value after which the loop stops early and returns the best so far.
    """
    dev = torch.device(device) if device is not None else torch.as_tensor(lower).device
    lo = torch.as_tensor(lower).to(device=dev, dtype=dtype).reshape(-1, network.input_size)
    hi = torch.as_tensor(upper).to(device=dev, dtype=dtype).reshape(-1, network.input_size)
    if lo.shape != hi.shape:
        raise InvalidInputError(f"`lower` and `upper` must have the same shape, got {tuple(lo.shape)} and {tuple(hi.shape)}")
    A = torch.as_tensor(A).to(device=dev, dtype=dtype)
    b = torch.as_tensor(b).to(device=dev, dtype=dtype)
    if A.dim() == 3:
        A, b = A.expand(lo.shape[0], *A.shape), b.expand(lo.shape[0], *b.shape)
    if A.shape[0] != lo.shape[0] or A.shape[-1] != network.output_size:
        raise InvalidInputError(f"spec `A` of shape {tuple(A.shape)} does not match batch {lo.shape[0]} and {network.output_size} outputs")

    geom = BoxGeometry(lo, hi)
    gen = torch.Generator(device="cpu").manual_seed(int(config.seed))
    x = geom.random_start(int(config.restarts), gen)
    best_x = x.clone()
    with torch.no_grad():
        best_m = _margins(network, x, A, b)
    steps_done = 0
    for t in range(int(config.steps)):
        if (best_m.amin(dim=1) <= 0).all() or (deadline is not None and time.monotonic() > deadline):
            break
        alpha = config.step_size * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t / max(1, config.steps))))
        x.requires_grad_(True)
        m = _margins(network, x, A, b)
        (grad,) = torch.autograd.grad(m.sum(), x)
        with torch.no_grad():
            x = geom.project(geom.descent_step(x.detach(), grad, alpha))
            m = _margins(network, x, A, b)
            better = m < best_m
            best_m = torch.where(better, m, best_m)
            best_x = torch.where(better[..., None], x, best_x)
        steps_done = t + 1
    with torch.no_grad():
        idx = best_m.argmin(dim=1)
        xb = best_x[torch.arange(lo.shape[0], device=dev), idx]
        xb = torch.minimum(torch.maximum(xb, lo), hi)
        y, patterns = network.forward(xb, return_pattern=True)
        rows = torch.einsum("bkmo,bo->bkm", A, y) - b
        margin = rows.amax(dim=-1).amin(dim=-1)
    return Candidates(xb, margin, margin <= 0, tuple(patterns), steps_done)
