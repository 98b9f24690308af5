"""``gpuopt.attack``: adversarial examples for any differentiable torch classifier.

For a batch ``x_b`` with labels ``y_b`` the attack minimises the margin over the set
``S_b = {x : ||x - x_b||_p <= eps} ∩ [clip_lo, clip_hi]``:

- untargeted: ``m(x) = z_y(x) - max_{j != y} z_j(x)``; ``m < 0`` means another class's logit is
  strictly above the label's;
- targeted at ``t``: ``m(x) = max_{j != t} z_j(x) - z_t(x)``; ``m < 0`` means the target's logit
  is strictly the highest,

a success is strict: a tie (``m = 0``), where ``argmax`` would break the tie by index, is not one

where ``z`` are the model's logits. It runs ``restarts`` random starts per sample, ``steps`` steps
each, with the loop of :mod:`gpuopt.attacks.pgd` (APGD step-size control by default), and returns
per sample the iterate with the smallest margin. ``success`` is recomputed on the returned points.

The model is used as it is: its mode (train/eval) is not changed, nor its parameters, and it is
not moved; buffers that a forward pass updates (BatchNorm running statistics in train mode) are
restored afterwards. Gradients are taken with respect to the inputs only.
"""

from __future__ import annotations

import math
import numbers
import secrets
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InvalidInputError
from .geometry import BoxGeometry, L1Geometry, L2Geometry
from .pgd import SCHEDULES, AttackConfig, descend

__all__ = ["AttackResult", "NORMS", "attack"]

NORMS = ("linf", "l2", "l1")
LOSSES = ("margin", "ce")


@dataclass(frozen=True, eq=False)
class AttackResult:
    """``x``: the adversarial batch (shape, dtype and device of the input); ``success``: ``(batch,)``
    bool, the model misclassifies ``x`` (or, targeted, classifies it as the target); ``margin``:
    ``(batch,)`` the margin of ``x`` (negative on success). Unpacks as ``x, success``."""

    x: torch.Tensor
    success: torch.Tensor
    margin: torch.Tensor

    def __iter__(self):
        return iter((self.x, self.success))


def _int_iv(v, name: str, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise InvalidInputError(f"`{name}` must be an integer, got {v!r}")
    if v < low:
        raise InvalidInputError(f"`{name}` must be >= {low}, got {v}")
    return int(v)


def _labels_iv(v, name: str, batch: int, device) -> torch.Tensor:
    if not isinstance(v, torch.Tensor):
        raise InvalidInputError(f"`{name}` must be a torch tensor of class indices, got {type(v).__name__}")
    if v.dtype.is_floating_point or v.dtype.is_complex or v.dtype == torch.bool:
        raise InvalidInputError(f"`{name}` must hold integer class indices, got {v.dtype}")
    if v.shape != (batch,):
        raise InvalidInputError(f"`{name}` must have shape ({batch},) to match `x`, got {tuple(v.shape)}")
    if v.device != device:
        raise InvalidInputError(f"`{name}` is on {v.device} but `x` is on {device}")
    return v.long()


def _clip_iv(clip, x: torch.Tensor):
    """``clip`` as two tensors of ``x``'s shape (``-inf``/``inf`` for None)."""
    inf = torch.full_like(x, math.inf)
    if clip is None:
        return -inf, inf
    if not isinstance(clip, (tuple, list)) or len(clip) != 2:
        raise InvalidInputError("`clip` must be None or a pair (low, high) of numbers or tensors")
    out = []
    for v, side in zip(clip, ("low", "high")):
        if isinstance(v, bool) or not isinstance(v, (numbers.Real, torch.Tensor)):
            raise InvalidInputError(f"`clip` {side} must be a number or a tensor, got {type(v).__name__}")
        t = torch.as_tensor(v, dtype=x.dtype, device=x.device) if not isinstance(v, torch.Tensor) else v
        if t.is_complex() or t.dtype == torch.bool:
            raise InvalidInputError(f"`clip` {side} must be real numbers, got {t.dtype}")
        if t.device != x.device:
            raise InvalidInputError(f"`clip` {side} is on {t.device} but `x` is on {x.device}")
        try:
            t = torch.broadcast_to(t.to(x.dtype), x.shape)
        except RuntimeError:
            raise InvalidInputError(f"`clip` {side} of shape {tuple(t.shape)} does not broadcast to `x`'s shape "
                                    f"{tuple(x.shape)}") from None
        if torch.isnan(t).any():
            raise InvalidInputError(f"`clip` {side} contains NaN")
        out.append(t)
    lo, hi = out
    if (lo > hi).any():
        raise InvalidInputError("`clip` low must be <= high everywhere")
    if ((x < lo) | (x > hi)).any():
        raise InvalidInputError("`x` lies outside `clip`: the clean inputs must be valid inputs")
    return lo, hi


def _model_device(model) -> torch.device | None:
    for t in list(model.parameters()) + list(model.buffers()) if isinstance(model, torch.nn.Module) else []:
        return t.device
    return None


def attack(model, x: torch.Tensor, y: torch.Tensor, *, eps, norm: str = "linf", restarts: int = 1, steps: int = 10,
           targeted: torch.Tensor | None = None, seed: int | None = None, clip=None, step_size: float | None = None,
           schedule: str = "apgd", stop_on_success: bool = True, loss: str = "margin") -> AttackResult:
    """Adversarial examples for ``model`` at ``x`` (batch-first) with labels ``y`` ``(batch,)``.

    ``eps``: the radius (a number >= 0) in the norm ``norm`` (``"linf"``, ``"l2"``, ``"l1"``);
    ``clip``: the valid input range, ``(low, high)`` numbers or tensors that broadcast to ``x``
    (``None``: unbounded); ``targeted``: ``None`` or target classes ``(batch,)``; ``restarts``
    random starts per sample and ``steps`` steps each; ``seed``: for the starts, drawn on ``x``'s
    device (the same seed, the same starts on one kind of device; ``None``: a fresh one; the global
    random state is never used); ``step_size``, ``schedule``: see
    :class:`~gpuopt.attacks.AttackConfig`; ``stop_on_success``: a sample stops within a few
    steps of its first success (looked at every 4 steps, on a GPU read one look later; ``False``:
    all steps run, for the strongest point, e.g. in adversarial training);
    ``loss``: the steps follow the margin's gradient (``"margin"``) or cross-entropy's
    (``"ce"``: raised for the label, lowered for a target), while the margin always decides
    successes and the best point.
    Returns an :class:`AttackResult` (``x_adv, success = attack(...)``).
    """
    if torch.is_inference_mode_enabled():
        raise InvalidInputError("`attack` needs gradients: call it outside torch.inference_mode()")
    if not isinstance(stop_on_success, bool):
        raise InvalidInputError(f"`stop_on_success` must be True or False, got {stop_on_success!r}")
    if not callable(model):
        raise InvalidInputError(f"`model` must be a torch module or a callable, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor):
        raise InvalidInputError(f"`x` must be a torch tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise InvalidInputError(f"`x` must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise InvalidInputError(f"`x` must be a non-empty batch (batch, ...), got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise InvalidInputError("`x` contains NaN or infinite values")
    B = x.shape[0]
    dev = x.device
    mdev = _model_device(model)
    if mdev is not None and mdev != dev:
        raise InvalidInputError(f"`model` is on {mdev} but `x` is on {dev}: move one of them (the model is never moved)")
    y = _labels_iv(y, "y", B, dev)
    if targeted is not None:
        targeted = _labels_iv(targeted, "targeted", B, dev)
    if isinstance(eps, (torch.Tensor, np.ndarray)) and eps.ndim == 0 and not isinstance(eps.tolist(), bool):
        eps = eps.item()  # a 0-d tensor or array holds one number
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps) or eps < 0:
        raise InvalidInputError(f"`eps` must be a finite number >= 0, got {eps!r}")
    if eps > torch.finfo(x.dtype).max:
        raise InvalidInputError(f"`eps` {eps!r} is beyond the range of `x`'s dtype {x.dtype}")
    if norm not in NORMS:
        raise InvalidInputError(f"`norm` must be one of {', '.join(NORMS)}, got {norm!r}")
    if loss not in LOSSES:
        raise InvalidInputError(f"`loss` must be one of {', '.join(LOSSES)}, got {loss!r}")
    if schedule not in SCHEDULES:
        raise InvalidInputError(f"`schedule` must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    restarts = _int_iv(restarts, "restarts", 1)
    steps = _int_iv(steps, "steps", 0)
    if seed is None:
        seed = secrets.randbits(62)
    seed = _int_iv(seed, "seed", 0)
    if seed >= 1 << 62:
        raise InvalidInputError(f"`seed` must be < 2**62, got {seed}")
    config = AttackConfig(restarts=restarts, steps=steps, step_size=step_size, schedule=schedule, seed=0)
    lo, hi = _clip_iv(clip, x)

    shape = x.shape[1:]
    x0 = x.detach().reshape(B, -1)
    lo, hi = lo.reshape(B, -1), hi.reshape(B, -1)
    if norm == "linf":
        geometry = BoxGeometry(torch.maximum(_within(x0, -eps), lo), torch.minimum(_within(x0, eps), hi))
    else:
        # a radius beyond the clip box's diameter in the norm describes the same set
        diameter = torch.linalg.vector_norm((hi.double() - lo.double()), ord=2.0 if norm == "l2" else 1.0, dim=1)
        radius = torch.clamp(diameter, max=float(eps)).to(x.dtype)
        if not bool(torch.isfinite(radius).all()) or float(radius.max()) > torch.finfo(x.dtype).max ** 0.5:
            raise InvalidInputError(f"`eps` {eps!r} is too large for the {norm} norm in {x.dtype} without a finite "
                                    "`clip` (the norms would overflow)")
        geometry = (L2Geometry if norm == "l2" else L1Geometry)(x0, radius, lo, hi)

    buffers = [(b, b.detach().clone()) for b in model.buffers()] if isinstance(model, torch.nn.Module) else []
    # a stochastic model (dropout in train mode) draws from a forked global generator seeded with
    # `seed`: the same seed gives the same result, and the caller's random state is restored
    fork = torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else [])
    fork.__enter__()
    torch.default_generator.manual_seed(seed)
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            torch.cuda.manual_seed(seed)
    try:
        with torch.no_grad():
            z_clean, n_classes = _logits(model, x, B)
        _labels_range(y, "y", n_classes)
        if targeted is not None:
            _labels_range(targeted, "targeted", n_classes)
            if (targeted == y).any():
                raise InvalidInputError("`targeted` equals `y` for some samples: a target must differ from the label")
        goal = targeted if targeted is not None else y
        sign = 1.0 if targeted is None else -1.0

        # -inf at the goal class: max over the other classes is one amax
        away = torch.zeros((B, 1, n_classes), dtype=x.dtype, device=dev).scatter_(-1, goal[:, None, None], -math.inf)
        column = goal[:, None, None]

        def margins(xs: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
            b, r, n = xs.shape
            z = model(xs.reshape(b * r, *shape)).reshape(b, r, -1).to(x.dtype)
            if xs.requires_grad and not z.requires_grad:
                raise InvalidInputError("`model`'s logits do not depend on `x` through autograd (detached, or not "
                                        "differentiable): no gradient to follow")
            col, off = (column, away) if b == B else (column[items], away[items])
            # max, not amax: its backward routes the gradient to one index (cheaper than amax's
            # tie-splitting mask)
            m = z.gather(-1, col.expand(b, r, 1))[..., 0] - (z + off).max(dim=-1).values
            if sign != 1.0:
                m = sign * m
            if loss == "margin":
                return m
            # cross-entropy of the goal class: minimised untargeted as -CE (pushed away from the
            # label), targeted as CE (pulled towards the target)
            ce = torch.logsumexp(z, dim=-1) - z.gather(-1, col.expand(b, r, 1))[..., 0]
            return m, -sign * ce

        # drawn on the model's device (a host draw and copy costs more than a step on a GPU): the
        # same seed gives the same starts on one device, other starts on another
        starts = geometry.random_start(restarts, torch.Generator(device=dev).manual_seed(seed))
        if stop_on_success:
            # m <= -(smallest subnormal) is m < 0: success is strict
            target = torch.full((B,), -torch.finfo(x.dtype).tiny * torch.finfo(x.dtype).eps, dtype=x.dtype, device=dev)
        else:
            target = torch.full((B,), -math.inf, dtype=x.dtype, device=dev)
        res = descend(margins, geometry, starts, config, target=target)
        best = res.margin.argmin(dim=1)
        x_adv = geometry.project(res.x[torch.arange(B, device=dev), best][:, None])[:, 0]
        if stop_on_success:  # a sample the model already gets wrong is its own first success
            wrong = _margin(z_clean[:, None].detach(), goal[:, None], sign)[:, 0] < 0
            x_adv = torch.where(wrong[:, None], x0, x_adv)
        with torch.no_grad():
            z, _ = _logits(model, x_adv.reshape(B, *shape), B)
            margin = _margin(z[:, None], goal[:, None], sign)[:, 0]
    finally:
        fork.__exit__(None, None, None)
        with torch.no_grad():
            for buf, saved in buffers:
                buf.copy_(saved)
    return AttackResult(x_adv.reshape(x.shape).detach(), margin < 0, margin.detach())


def _within(x: torch.Tensor, step: float) -> torch.Tensor:
    """``x + step`` rounded towards ``x``, so that ``|result - x| <= |step|`` holds as computed
    (in ``x``'s dtype)."""
    out = x + step
    for _ in range(2):
        over = (out - x).abs() > abs(step)
        if not bool(over.any()):
            break
        out = torch.where(over, torch.nextafter(out, x), out)
    return out


def _logits(model, x: torch.Tensor, rows: int):
    z = model(x)
    if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[0] != rows or z.shape[1] < 2:
        got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise InvalidInputError(f"`model` must return logits of shape (batch, classes) with at least 2 classes, got {got}")
    if not z.dtype.is_floating_point:
        raise InvalidInputError(f"`model` must return floating-point logits, got {z.dtype}")
    return z.to(x.dtype), z.shape[1]


def _labels_range(v: torch.Tensor, name: str, n_classes: int) -> None:
    if ((v < 0) | (v >= n_classes)).any():
        bad = int(v[(v < 0) | (v >= n_classes)][0])
        raise InvalidInputError(f"`{name}` holds class {bad}, outside the model's {n_classes} classes (0 to {n_classes - 1})")


def _margin(z: torch.Tensor, goal: torch.Tensor, sign: float) -> torch.Tensor:
    """``z_goal - max_{j != goal} z_j``, times ``sign``: ``(b, r)`` for logits ``(b, r, C)``."""
    own = z.gather(-1, goal[..., None].expand(*z.shape[:-1], 1))[..., 0]
    others = z.scatter(-1, goal[..., None].expand(*z.shape[:-1], 1), -math.inf).amax(dim=-1)
    return sign * (own - others)
