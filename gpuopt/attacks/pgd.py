"""The projected-gradient loop: many restarts per item in one tensor, minimising a margin.

Notation: items ``b``, restarts ``r``, points ``x_{b,r}`` in a perturbation set ``S_b`` (a
:class:`~gpuopt.attacks.geometry.Geometry`), an objective ``m(x)`` (a margin; a point with
``m(x) <= target_b`` is a success, ``target_b <= 0``). The loop only calls the geometry.

Two step-size schedules, both with the step ``t`` relative to the set's radius:

- ``"apgd"`` (Croce & Hein 2020): ``z = P(x_k + d(x_k, g_k, t))``,
  ``x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))`` with momentum ``a`` (no momentum on
  the first step). At the checkpoints ``w_j = ceil(p_j N)``, ``p_0 = 0``, ``p_1 = 0.22``,
  ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, a restart halves ``t`` and goes back to its
  best point when fewer than ``rho = 0.75`` of the steps since the last checkpoint decreased its
  margin, or when neither ``t`` nor its best margin changed over the last interval;
- ``"cosine"``: plain PGD, ``x_{k+1} = P(x_k + d(x_k, g_k, t_k))``, ``t_k`` decaying from
  ``t_0`` to ``0.05 t_0`` along a half cosine.

Every iterate is evaluated (value and gradient in one pass) and the best one per restart is kept.
An item leaves the batch as soon as one of its restarts succeeds, so that the remaining items
run on a smaller tensor; its other restarts stop where they are.
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import InvalidInputError
from .geometry import Geometry

__all__ = ["AttackConfig", "Descent", "checkpoints", "descend", "generators"]

SCHEDULES = ("apgd", "cosine")
#: :func:`descend` looks for items that reached their target every this many steps: each look
#: reads a flag back from the device, which stalls a GPU's queue (the host cannot run ahead)
STOP_CHECK_EVERY = 4
_DEFAULT_STEP = {"apgd": 2.0, "cosine": 0.5}


@dataclass(frozen=True)
class AttackConfig:
    """Attack settings.

    ``restarts`` per item and round, ``steps`` per restart, ``schedule`` one of ``"apgd"`` and
    ``"cosine"``, ``step_size`` the initial step relative to the set's radius (``None``: 2 for
    APGD, 0.5 for cosine), ``momentum`` APGD's ``a``, ``corners`` the fraction of each round's
    restarts started at random vertices of the box, ``odi`` the fraction of the remaining
    (uniform) starts moved by two output-diversified steps first (ODI, Tashiro et al. 2020: steps
    that maximise ``w . f(x)`` for a random ``w`` in ``[-1, 1]^n_out``), ``screen`` the number of
    uniform draws each uniform start is the best of (by the objective), on inputs of at most
    ``screen_max_dim`` dimensions only (in high dimension random draws' margins concentrate: on
    the 18 mnist_fc ``sat`` instances screening found none more, and it cost 9% of a 100-step run
    at 4000 restarts; on ACAS Xu's 5 inputs it doubled the hits on the hardest), ``seed`` for the starts, ``keep`` the number
    of best points kept per item (distinct activation patterns), ``rounds`` the number of fresh
    batches: ``None`` runs new rounds until every item succeeds or the deadline passes (one round
    without a deadline), ``patience`` stops earlier, after that many rounds in a row that did not
    lower the best margin by 1%.
    """

    restarts: int = 64
    steps: int = 100
    schedule: str = "apgd"
    step_size: float | None = None
    momentum: float = 0.75
    corners: float = 0.125
    odi: float = 0.5
    screen: int = 16
    screen_max_dim: int = 64
    seed: int = 0
    keep: int = 8
    rounds: int | None = None
    patience: int | None = None

    def __post_init__(self):
        for name in ("restarts", "steps", "seed", "keep", "screen", "screen_max_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise InvalidInputError(f"`{name}` must be an integer, got {v!r}")
        if self.restarts < 1:
            raise InvalidInputError(f"`restarts` must be >= 1, got {self.restarts}")
        if self.steps < 0:
            raise InvalidInputError(f"`steps` must be >= 0, got {self.steps}")
        if self.keep < 1:
            raise InvalidInputError(f"`keep` must be >= 1, got {self.keep}")
        if self.screen < 1:
            raise InvalidInputError(f"`screen` must be >= 1, got {self.screen}")
        if self.screen_max_dim < 0:
            raise InvalidInputError(f"`screen_max_dim` must be >= 0, got {self.screen_max_dim}")
        if self.schedule not in SCHEDULES:
            raise InvalidInputError(f"`schedule` must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.step_size is not None and (isinstance(self.step_size, bool) or not isinstance(self.step_size, numbers.Real)
                                           or not 0 < self.step_size <= 4):
            raise InvalidInputError(f"`step_size` must be None or a number in (0, 4], got {self.step_size!r}")
        if isinstance(self.momentum, bool) or not isinstance(self.momentum, numbers.Real) or not 0 < self.momentum <= 1:
            raise InvalidInputError(f"`momentum` must be a number in (0, 1], got {self.momentum!r}")
        for name in ("corners", "odi"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 <= v <= 1:
                raise InvalidInputError(f"`{name}` must be a number in [0, 1], got {v!r}")
        for name in ("rounds", "patience"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise InvalidInputError(f"`{name}` must be None or an integer >= 1, got {v!r}")

    @property
    def initial_step(self) -> float:
        return float(self.step_size) if self.step_size is not None else _DEFAULT_STEP[self.schedule]


#: read the stop flags one check late, without waiting for the device (None: on CUDA devices only)
LAGGED_STOP_CHECK: bool | None = None


def checkpoints(steps: int) -> list[int]:
    """APGD's checkpoints ``ceil(p_j steps)`` in ``(0, steps]``."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    # rounded first: 0.41 + 0.16 is 0.5700000000000001 in floats, and its ceiling must not jump
    marks = (math.ceil(round(q * steps, 9)) for q in p[1:])
    return sorted({w for w in marks if 0 < w <= steps})


@dataclass(frozen=True, eq=False)
class Descent:
    """Result of :func:`descend`: ``x`` ``(batch, restarts, n)`` the best iterate of each restart,
    ``margin`` ``(batch, restarts)`` its objective, ``steps`` the steps run (the most of any item),
    ``evaluations`` the number of point evaluations (restart-steps) spent."""

    x: torch.Tensor
    margin: torch.Tensor
    steps: int
    evaluations: int


def generators(seed: int, items, device=None) -> list:
    """One ``torch.Generator`` per item index in ``items`` on ``device`` (CPU by default), seeded
    from ``(seed, item)``: an item's random numbers do not depend on which other items share its
    batch. On a GPU the numbers are drawn there: drawing them on the host and copying them took
    half of a 100-step attack of 16,000 restarts on an H200. (A CUDA generator's numbers differ
    from the CPU's for the same seed: the starts, not the soundness, depend on the device.)"""
    dev = torch.device(device if device is not None else "cpu")
    return [torch.Generator(device=dev).manual_seed((seed * 1_000_003 + int(i)) % (2**63 - 1)) for i in items]


Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _value_and_grad(objective: Objective, x: torch.Tensor, items: torch.Tensor):
    """The margins at ``x`` and the gradient of the objective; an objective may return a pair
    ``(margins, surrogate)``: then the step follows the surrogate's gradient (a smoother loss, such
    as cross-entropy) while the margins decide successes and best points. An objective with a
    ``value_and_grad`` attribute (:func:`~gpuopt.attacks.search.spec_margins` on a plain chain)
    gives both without autograd, where it returns something other than ``None``."""
    manual = getattr(objective, "value_and_grad", None)
    if manual is not None:
        out = manual(x.detach(), items)
        if out is not None:
            return _no_nan(out[0]), out[1]
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = objective(x, items)
        m, surrogate = out if isinstance(out, tuple) else (out, out)
        (g,) = torch.autograd.grad(surrogate, x, grad_outputs=torch.ones_like(surrogate))
    return _no_nan(m.detach()), g


def _no_nan(m: torch.Tensor) -> torch.Tensor:
    """Margins with NaN read as +inf: a point whose margin is NaN is never the best (a NaN best
    margin would stay NaN, ``m < NaN`` being false, while its best point moved on)."""
    return torch.nan_to_num(m, nan=math.inf, posinf=math.inf, neginf=-math.inf)


def descend(objective: Objective, geometry: Geometry, x0: torch.Tensor, config: AttackConfig, *,
            target: torch.Tensor | None = None, deadline: float | None = None) -> Descent:
    """Minimise ``objective(x, items)`` from the starts ``x0`` ``(batch, restarts, n)`` (points of
    ``geometry``). ``objective`` maps the points of the items ``items`` (indices into the batch)
    to ``(len(items), restarts)`` margins (or a pair ``(margins, surrogate)``, see
    :func:`_value_and_grad`). An item stops once a restart reaches ``target`` (0 by default;
    looked at every :data:`STOP_CHECK_EVERY` steps); the loop stops with the best so far before
    a step that would end past ``deadline`` (``time.monotonic()``; the last step's time is the
    estimate)."""
    B, R, _ = x0.shape
    dev = x0.device
    target = torch.zeros(B, dtype=x0.dtype, device=dev) if target is None else target.to(dev, x0.dtype)
    out_x, out_m = x0.clone(), torch.full((B, R), math.inf, dtype=x0.dtype, device=dev)
    items = torch.arange(B, device=dev)
    geom = geometry
    x = geom.project(x0)
    m, g = _value_and_grad(objective, x, items)
    apgd = config.schedule == "apgd"
    # separate buffers: the step updates x_prev, best_x and best_g in place
    best_x, best_m = x.clone(), m
    best_g = g.clone() if apgd else None
    # ``better``: restarts whose last evaluation improved on ``best_m`` but whose point is not yet in
    # ``best_x`` (the next step writes it, in the same pass as the step); ``back``: restarts whose
    # step was halved, which the next step restarts from their best point
    better = back = None
    evaluations = B * R
    a = float(config.momentum)
    t0 = config.initial_step
    t = torch.full((B, R), t0, dtype=x0.dtype, device=dev)
    marks = set(checkpoints(config.steps)) if apgd else set()
    x_prev = x.clone()
    decreased = torch.zeros((B, R), dtype=torch.int64, device=dev)
    last_mark, t_last, best_last = 0, t.clone(), best_m.clone()
    steps_done, step_seconds = 0, 0.0

    def best_points(keep=None) -> torch.Tensor:
        """``best_x`` with the pending ``better`` points, of the items ``keep`` (all by default)."""
        bx = best_x if keep is None else best_x[keep]
        if better is None:
            return bx
        return torch.where(better[..., None] if keep is None else better[keep][..., None],
                           x if keep is None else x[keep], bx)

    def retire(keep: torch.Tensor):
        nonlocal items, geom, x, x_prev, m, g, best_x, best_m, best_g, t, decreased, t_last, best_last, target
        nonlocal better, back
        gone = ~keep
        out_x[items[gone]] = best_points(gone)
        out_m[items[gone]] = best_m[gone]
        items, geom = items[keep], geom.select(keep)
        x, x_prev, m, g = x[keep], x_prev[keep], m[keep], g[keep]
        best_x, best_m = best_x[keep], best_m[keep]
        best_g = None if best_g is None else best_g[keep]
        better = None if better is None else better[keep]
        back = None if back is None else back[keep]
        t, decreased, t_last, best_last, target = t[keep], decreased[keep], t_last[keep], best_last[keep], target[keep]

    stoppable = bool(torch.isfinite(target).any())
    # on a GPU the stop flags are copied to the host without waiting and read at the next check
    # (STOP_CHECK_EVERY steps later): a read-back that waits empties the device's queue, and the
    # host then cannot queue steps ahead (a done item stays done: best_m only decreases)
    lagged = LAGGED_STOP_CHECK if LAGGED_STOP_CHECK is not None else dev.type == "cuda"
    flags = None
    for k in range(config.steps):
        if stoppable and k % STOP_CHECK_EVERY == 0:
            if not lagged:
                done = (best_m <= target[:, None]).any(dim=1)
                if done.any():
                    retire(~done)
            else:
                if flags is not None:
                    host, ready = flags
                    if ready is not None:
                        ready.synchronize()
                    if bool(host.any()):
                        retire(~host.to(dev))
                now = (best_m <= target[:, None]).any(dim=1)
                host, ready = now, None
                if dev.type == "cuda":
                    host = torch.empty(now.shape, dtype=torch.bool, pin_memory=True)
                    host.copy_(now, non_blocking=True)
                    ready = torch.cuda.Event()
                    ready.record(torch.cuda.current_stream(dev))
                flags = (host, ready)
        # a step that would end past the deadline is not started (the last one's time is the
        # estimate: on a large network one step takes seconds)
        if items.numel() == 0 or (deadline is not None and time.monotonic() + step_seconds > deadline):
            break
        step_start = time.monotonic()
        if not apgd:
            t = torch.full_like(t, t0 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * k / max(1, config.steps)))))
        # x + a (z - x) + (1 - a)(x - x_prev) from the second step on (APGD); the new point is in
        # x_prev's buffer then, else in g's
        x_new = geom.tracked_step(x, x_prev, g, t, best_x=best_x, best_g=best_g, better=better, back=back,
                                  momentum=a if apgd and k > 0 else None)
        better = back = None
        x_prev, x = x, x_new
        if k == config.steps - 1:  # the last iterate needs its value only, not a gradient
            with torch.no_grad():
                out = objective(x, items)
                m_new = _no_nan((out[0] if isinstance(out, tuple) else out).detach())
        else:
            m_new, g = _value_and_grad(objective, x, items)
        evaluations += m_new.numel()
        decreased.add_(m_new < m)
        m = m_new
        better = m < best_m
        best_m = torch.minimum(m, best_m)
        steps_done = k + 1
        step_seconds = time.monotonic() - step_start
        if steps_done in marks and steps_done < config.steps:
            few = decreased < 0.75 * (steps_done - last_mark)
            stalled = (t == t_last) & (best_m >= best_last)
            halve = few | stalled
            t_last, best_last = t, best_m
            # halved restarts go back to their best point (its gradient is kept with it): the next
            # step does it (no read-back here: the masked updates cost less than a device sync)
            t = torch.where(halve, t / 2, t)
            back = halve
            m = torch.where(halve, best_m, m)
            decreased.zero_()
            last_mark = steps_done
    if items.numel():
        out_x[items] = best_points()
        out_m[items] = best_m
    return Descent(out_x, out_m, steps_done, evaluations)
