"""A Problem joins a network, an input region and an output spec.

The property of a Problem holds iff ``margin(f(x)) > 0`` for every ``x`` in ``region``
(see :mod:`gpuopt.specs`). A VNNLIB file may describe several Problems (one per input box);
the instance is violated iff any of them is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError
from .network import Network
from .regions import Box, LinfBall
from .specs import OutputSpec

__all__ = ["NearBox", "Problem"]


@dataclass(frozen=True, eq=False)
class NearBox:
    """Where an exact input set holds no float64 point (an input fixed at a decimal such as
    ``0.1``): ``box`` has, per coordinate, the float64 points of the exact set where there are
    some, and the float hull of the exact set where there are none (``hull``, a bool mask; the
    exact values lie within the hull's width of any float64 point in it). A point of ``box``
    stands for the exact points within that width of it (:func:`gpuopt.check.check_counterexample`
    decides them all at once, in float64)."""

    box: Box
    hull: np.ndarray

    def __post_init__(self):
        hull = np.asarray(self.hull, dtype=bool).reshape(-1)
        if not isinstance(self.box, Box) or hull.size != self.box.size:
            raise InvalidInputError("a NearBox needs a Box and a mask of its size")
        object.__setattr__(self, "hull", hull)


@dataclass(frozen=True, eq=False)
class Problem:
    """``network`` restricted to ``region`` (canonicalised to a Box) with unsafe region ``spec``.

    ``inner`` is the set of float64 points that may be reported as counterexamples: the points of
    the exact input set, when ``region`` is its outward-rounded hull (a VNNLIB bound such as
    ``3 X_0 <= 1``). It defaults to ``region``; ``None`` means no float64 point lies in the exact
    set (so no counterexample can be reported, while proofs over ``region`` stay sound), unless
    ``near`` (:class:`NearBox`, only with ``inner`` None) says which float64 points stand for the
    exact points next to them: a counterexample is then reported as such a point, every exact
    point within its hull's width proven unsafe.
    """

    network: Network
    region: Box
    spec: OutputSpec
    inner: Box | None = "region"  # type: ignore[assignment]
    near: NearBox | None = None

    def __post_init__(self):
        if not isinstance(self.network, Network):
            raise InvalidInputError(f"`network` must be a gpuopt Network, got {type(self.network).__name__}")
        if not isinstance(self.region, (Box, LinfBall)):
            raise InvalidInputError(f"`region` must be a Box or LinfBall, got {type(self.region).__name__}")
        box = self.region.to_box()
        if box.size != self.network.input_size:
            raise InvalidInputError(
                f"the input region has {box.size} variables but the network takes {self.network.input_size} inputs "
                f"(shape {self.network.input_shape})")
        if not isinstance(self.spec, OutputSpec):
            raise InvalidInputError(f"`spec` must be an OutputSpec, got {type(self.spec).__name__}")
        if self.spec.n_outputs != self.network.output_size:
            raise InvalidInputError(
                f"the spec constrains {self.spec.n_outputs} outputs but the network has {self.network.output_size}")
        ball = self.region if isinstance(self.region, LinfBall) else None
        object.__setattr__(self, "region", box)
        if isinstance(self.inner, str) and self.inner == "region":
            # a ball's box is rounded outwards; its counterexamples must lie in the exact ball
            object.__setattr__(self, "inner", box if ball is None else ball.inner_box())
        elif self.inner is not None:
            inner = self.inner.to_box() if isinstance(self.inner, (Box, LinfBall)) else None
            if inner is None:
                raise InvalidInputError(f"`inner` must be a Box or None, got {type(self.inner).__name__}")
            if inner.size != box.size or np.any(inner.lower < box.lower) or np.any(inner.upper > box.upper):
                raise InvalidInputError("`inner` must lie inside `region`")
            object.__setattr__(self, "inner", inner)
        if self.near is not None:
            if not isinstance(self.near, NearBox):
                raise InvalidInputError(f"`near` must be a NearBox or None, got {type(self.near).__name__}")
            if self.inner is not None:
                raise InvalidInputError("`near` applies only where `inner` is None (no float64 point in the exact set)")
            near = self.near.box
            if near.size != box.size or np.any(near.lower < box.lower) or np.any(near.upper > box.upper):
                raise InvalidInputError("`near` must lie inside `region`")
