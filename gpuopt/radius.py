"""Certified robustness radii: a bracket ``[lower, upper]`` on the smallest distortion that changes
the decision.

For a network ``f``, an input ``x0`` with label ``c`` and the unsafe set ``U = {y : y_j >= y_c for
some j != c}`` (:func:`gpuopt.specs.robustness`: a tie counts as a change), the radius is
``r* = inf {||x - x0||_inf : x in [clip_lo, clip_hi], f(x) in U}``. :func:`certify_radius`
returns

- ``lower``: an ``eps`` at which the pipeline proved ``unsat`` on the ball ``B(x0, eps)`` (clipped),
  so ``r* >= lower`` (``r* > lower`` in fact, the ball being closed);
- ``upper``: the distance of a counterexample checked in float64 (rounded up), so ``r* <= upper``;
  or ``eps_max`` (``upper_found`` False) when none was found within it.

It bisects between them: the attack first (:func:`gpuopt.attack`, cheap, it moves ``upper``),
then :func:`gpuopt.verify` at the midpoint with a share of the time left (``unsat`` moves
``lower``, ``sat`` moves ``upper`` to the new point's distance, anything else ends the
bisection). ``status`` is ``"exact"`` once ``upper - lower <= rtol * upper + atol``, else
``"bracket"`` (always ``"bracket"`` when no counterexample was found within ``eps_max``). Only the
L-inf norm is certified for now.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .attacks.api import attack
from .errors import InvalidInputError
from .network import Network
from .regions import LinfBall
from .specs import robustness

__all__ = ["RadiusResult", "certify_radius"]

NORMS = ("linf",)


@dataclass(frozen=True, eq=False)
class RadiusResult:
    """``lower`` certified, ``upper`` attained (``upper_found``) or ``eps_max``; ``x_adv`` the
    float64 counterexample at distance ``<= upper`` when found; ``status`` ``"exact"`` or
    ``"bracket"``; ``seconds``; ``verify_calls`` the number of verification calls."""

    lower: float
    upper: float
    upper_found: bool
    status: str
    x_adv: np.ndarray | None
    seconds: float
    verify_calls: int


def _distance_up(x: np.ndarray, x0: np.ndarray) -> float:
    """``||x - x0||_inf`` rounded up (each difference is rounded in float64)."""
    return float(np.nextafter(np.max(np.abs(x - x0)), np.inf))


def certify_radius(network: Network, x, label: int, *, norm: str = "linf", eps_max: float = 1.0,
                   clip=(0.0, 1.0), timeout: float = 60.0, rtol: float = 1e-3, atol: float = 1e-6,
                   config=None, seed: int = 0) -> RadiusResult:
    """The bracket on the L-inf robustness radius of ``network`` at ``x`` (flattened or input
    shaped) for class ``label``, searched in ``[0, eps_max]`` within ``timeout`` seconds; ``clip``
    the valid input range (``None``: unbounded). See the module docstring."""
    from .verify import VerifyConfig, verify

    t0 = time.monotonic()
    if not isinstance(network, Network):
        raise InvalidInputError(f"`network` must be a gpuopt Network (see gpuopt.from_torch), got {type(network).__name__}")
    if norm not in NORMS:
        raise InvalidInputError(f"`norm` must be one of {', '.join(NORMS)} (L1 and L2 radii are not certified yet), "
                                f"got {norm!r}")
    for name, v, low in (("eps_max", eps_max, 0.0), ("timeout", timeout, 0.0), ("rtol", rtol, 0.0), ("atol", atol, 0.0)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < low:
            raise InvalidInputError(f"`{name}` must be a finite number >= {low:g}, got {v!r}")
    x0 = np.asarray(x, dtype=np.float64).reshape(-1)
    if x0.size != network.input_size or not np.all(np.isfinite(x0)):
        raise InvalidInputError(f"`x` must hold {network.input_size} finite numbers, got {x0.size}")
    n_cls = network.output_size
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= int(label) < n_cls:
        raise InvalidInputError(f"`label` must be a class index in [0, {n_cls}), got {label!r}")
    label = int(label)
    lo_clip, hi_clip = (None, None) if clip is None else clip
    config = config if config is not None else VerifyConfig(device="cpu")
    spec = robustness(label, n_cls)
    deadline = t0 + timeout
    calls = 0

    def left() -> float:
        return deadline - time.monotonic()

    # the clean point itself
    y0 = network.forward64(x0[None])[0]
    if np.max(np.delete(y0, label)) >= y0[label]:
        return RadiusResult(0.0, 0.0, True, "exact", x0, time.monotonic() - t0, 0)

    lower, upper, x_adv = 0.0, float(eps_max), None
    # upper: the attack at eps_max, then bisection of eps with the attack (cheap, sound: checked)
    model = lambda v: network.forward(v)  # noqa: E731
    xt = torch.tensor(x0[None])
    yt = torch.tensor([label])
    clip_arg = None if clip is None else (float(lo_clip), float(hi_clip))

    def attack_at(eps: float):
        res = attack(model, xt, yt, eps=eps, restarts=8, steps=50, seed=seed, clip=clip_arg)
        if not bool(res.success[0]):
            return None
        xa = res.x[0].double().numpy()
        y = network.forward64(xa[None])[0]
        return xa if np.max(np.delete(y, label)) >= y[label] else None

    probe = eps_max
    for _ in range(12):
        if left() <= 0:
            break
        xa = attack_at(probe)
        if xa is None:
            break
        x_adv, upper = xa, min(upper, _distance_up(xa, x0))
        probe = upper / 2
    upper_found = x_adv is not None

    # bisection with the verifier between the certified lower and the attained upper
    while left() > 0 and upper - lower > rtol * upper + atol:
        mid = (lower + upper) / 2
        budget = max(0.05, left() / 3)
        region = LinfBall(x0, mid, lo_clip, hi_clip)
        v = verify(network, region, spec, timeout=min(budget, left()), config=config)
        calls += 1
        if v.status.value == "unsat":
            lower = mid
        elif v.status.value == "sat":
            x_adv = np.asarray(v.counterexample, dtype=np.float64)
            upper, upper_found = min(upper, _distance_up(x_adv, x0)), True
        else:
            break
    status = "exact" if upper_found and upper - lower <= rtol * upper + atol else "bracket"
    return RadiusResult(lower, upper, upper_found, status, x_adv, time.monotonic() - t0, calls)
