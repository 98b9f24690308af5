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

__all__ = ["Problem"]


@dataclass(frozen=True, eq=False)
class Problem:
    """``network`` restricted to ``region`` (canonicalised to a Box) with unsafe region ``spec``.

    ``inner`` is the set of float64 points that may be reported as counterexamples: the points of
    the exact input set, when ``region`` is its outward-rounded hull (a VNNLIB bound such as
    ``3 X_0 <= 1``). It defaults to ``region``; ``None`` means no float64 point lies in the exact
    set (so no counterexample can be reported, while proofs over ``region`` stay sound).
    """

    network: Network
    region: Box
    spec: OutputSpec
    inner: Box | None = "region"  # type: ignore[assignment]

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
