"""A Problem joins a network, an input region and an output spec.

The property of a Problem holds iff ``margin(f(x)) > 0`` for every ``x`` in ``region``
(see :mod:`gpuopt.specs`). A VNNLIB file may describe several Problems (one per input box);
the instance is violated iff any of them is.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidInputError
from .network import Network
from .regions import Box, LinfBall
from .specs import OutputSpec

__all__ = ["Problem"]


@dataclass(frozen=True, eq=False)
class Problem:
    """``network`` restricted to ``region`` (canonicalised to a Box) with unsafe region ``spec``."""

    network: Network
    region: Box
    spec: OutputSpec

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
        object.__setattr__(self, "region", box)
