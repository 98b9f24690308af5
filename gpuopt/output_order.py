"""Specs that compare outputs are taken to the logits, before a final Softmax or LogSoftmax.

A network that ends in ``y = g(z)`` with ``g`` not piecewise linear has no exact linear form,
so only the attack runs on it (:class:`~gpuopt.errors.NotPiecewiseLinearError`). But for the
usual classifier properties the final ``g`` changes nothing, and the problem is exactly the same
one on the network without it:

* **LogSoftmax** along groups ``G`` (the last axis): ``y_i = z_i - log sum_{j in G} exp(z_j)``,
  so a row ``a`` whose coefficients sum to exactly 0 over every group has ``a . y = a . z``,
  whatever its right-hand side.
* **Softmax** along ``G``: ``y_i / y_j = exp(z_i - z_j)``, so for ``i, j`` in one group
  ``c (y_i - y_j)`` has the sign of ``c (z_i - z_j)``, and a row ``c y_i - c y_j <= 0`` (or
  ``< 0``) holds exactly when it holds on ``z``.

So when every row of every disjunct is of its kind (or all zero), the unsafe region ``{A y <= b}``
and ``{A z <= b}`` hold at the same inputs, in exact arithmetic, strict rows included: the spec is
kept and the final layer dropped (with any Flatten or Reshape after it, which only keep the
row-major order). Proofs and counterexamples on the reduced problem are proofs and
counterexamples of the original one.

Float evaluation is where the two can part. An output whose logit lies more than about 87 below
its group's largest underflows in float32 (745 in float64), so two such outputs tie at 0 however
far apart their logits are, and a float-evaluated ``y_i <= y_j`` holds where the exact one does
not. A Softmax is therefore taken off only when interval bounds of the logits over the input box
keep every compared output within :data:`SOFTMAX_SPREAD` of its group's largest logit. Both
layers also round ``z_i - max`` or ``z_i - logsumexp`` at the scale of the group's largest logit
(float32: ``2^-24`` of it), so float outputs can tie where logits differ by less than that: the
rounding of any network whose outputs are that large, and decided here in exact arithmetic, as
everywhere. Sigmoid and Tanh saturate in float32 at ``|z|`` of 9 to 17, a region rather than a
boundary, and are not taken off.

The verdict's margins are the logits' for a LogSoftmax (the same numbers); for a Softmax they are
mapped to sound ones on the original outputs (:meth:`OrderReduction.margins`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np
import torch

from .layers import SMOOTH_TYPES, Flatten, LogSoftmax, Reshape, Softmax
from .network import Network

__all__ = ["OrderReduction", "reduce_output_order"]

#: a Softmax comes off only while every compared logit stays within this of its group's largest
#: (float32 ``exp`` stays normal down to -87.3; the margin covers the division by the group's sum)
SOFTMAX_SPREAD = 80.0


@dataclass(frozen=True)
class OrderReduction:
    """The problems on the network without its final ``layer`` (``"Softmax"`` or
    ``"LogSoftmax"``), and the original network (whose output a counterexample reports)."""

    problems: list
    original: Network
    layer: str

    def item_fields(self) -> dict:
        """The :class:`~gpuopt.engine.item.ItemState` fields of an item on the reduced problems."""
        return {"problems": self.problems, "reduction": self}

    @property
    def note(self) -> str:
        what = ("every spec row sums to 0 over the LogSoftmax axis, so it is the same on the logits"
                if self.layer == "LogSoftmax" else
                "every spec row compares two outputs of the Softmax axis, whose order is the logits'; "
                "margins quoted above are the logits'")
        return f"property taken to the logits before the final {self.layer}: {what}"

    def margins(self, lower: float, upper: float, counterexample) -> tuple[float, float]:
        """The verdict's margins on the original outputs from the logits' ones. A LogSoftmax keeps
        them (``a . y = a . z``). Through a Softmax a row ``c (z_i - z_j) = c d`` becomes
        ``c y_j (e^d - 1)``: at most ``c d`` below 0, and above 0 at least ``y_j c d`` with
        ``y_j >= e^-SPREAD / n`` (the spread guard), so a lower bound maps to itself where it is
        ``<= 0`` and to that share of it where it is positive. The upper margin is the float64
        one at the counterexample, or none."""
        if self.layer == "LogSoftmax":
            return lower, upper
        if lower > 0:
            lower = float(np.nextafter(lower * math.exp(-SOFTMAX_SPREAD) / self.original.output_size * (1 - 1e-9), 0))
        if counterexample is None:
            return lower, math.inf
        x = np.asarray(counterexample, dtype=np.float64).reshape(-1)
        y = self.original.forward64(x[None])[0]
        inside = [p for p in self.problems if np.all(x >= p.region.lower) and np.all(x <= p.region.upper)]
        margins = [float(np.max(A @ y - b)) for p in inside for A, b in p.spec.disjuncts]
        return lower, min(margins, default=math.inf)


def final_order_layer(network: Network):
    """The network's final Softmax or LogSoftmax that :func:`reduce_output_order` could take off
    (``None`` when there is none), whatever the spec."""
    found = _final_smooth(network)
    return None if found is None else found[1]


def _final_smooth(network: Network):
    """``(s, layer)``: the last layer that is not a Flatten or Reshape, when it is a Softmax or
    LogSoftmax read only by the chain of reshapes after it; else ``None``."""
    layers, inputs = network.layers, network.inputs
    s = len(layers) - 1
    while s > 0 and isinstance(layers[s], (Flatten, Reshape)) and inputs[s] == (s - 1,):
        s -= 1
    if not isinstance(layers[s], (Softmax, LogSoftmax)) or len(inputs[s]) != 1:
        return None
    readers = [i for i, ins in enumerate(inputs) if s in ins]
    if readers not in ([], [s + 1]):
        return None
    if s == len(layers) - 1 and inputs[s] != (s - 1,):
        return None  # the output is the last layer: without it, the one before would be, not its input
    return s, layers[s]


def _without(network: Network, s: int) -> Network:
    """``network`` without layer ``s`` (one input, same shape in and out): its readers read its
    input. Cached on the network, so that its problems keep sharing one network object."""
    key = ("without_layer", s)
    if key not in network._param_cache:
        network._param_cache[key] = _build_without(network, s)
    return network._param_cache[key]


def _build_without(network: Network, s: int) -> Network:
    src = network.inputs[s][0]
    layers = network.layers[:s] + network.layers[s + 1:]

    def moved(j):
        return src if j == s else (j - 1 if j > s else j)

    inputs = [tuple(moved(j) for j in ins) for i, ins in enumerate(network.inputs) if i != s]
    errors = network.param_errors
    if errors is not None:
        errors = errors[:s] + errors[s + 1:]
    return Network(layers, network.input_shape, inputs=inputs, param_errors=errors)


def _row_kind(row, groups: np.ndarray, log: bool):
    """For an exact row (Fractions): ``None`` when it does not qualify; else the output indices it
    compares (empty for a zero row; every nonzero entry for LogSoftmax)."""
    nz = [i for i, a in enumerate(row) if a != 0]
    if log:
        sums: dict = {}
        for i in nz:
            sums[groups[i]] = sums.get(groups[i], Fraction(0)) + row[i]
        return nz if all(v == 0 for v in sums.values()) else None
    if not nz:
        return nz
    if len(nz) != 2 or row[nz[0]] != -row[nz[1]] or groups[nz[0]] != groups[nz[1]]:
        return None
    return nz


def reduce_output_order(problems) -> OrderReduction | None:
    """The problems on the network without its final Softmax or LogSoftmax, when that is exact
    for every row of every problem's spec (see the module docstring); ``None`` otherwise."""
    problems = list(problems)
    if not problems:
        return None
    network = problems[0].network
    found = _final_smooth(network)
    if found is None:
        return None
    s, layer = found
    log = isinstance(layer, LogSoftmax)
    width = network.output_shapes[s][-1]
    groups = np.arange(network.output_size) // width  # row-major order survives the reshapes after it
    compared = set()
    for p in problems:
        if p.network is not network:
            return None
        for k in range(p.spec.n_disjuncts):
            A, b, _ = p.spec.exact_rows(k)
            for row, rhs in zip(A, b):
                kind = _row_kind(list(row), groups, log)
                if kind is None or (not log and kind and rhs != 0):
                    return None
                compared.update(kind)
    if not any(not isinstance(layer, (Flatten, Reshape)) for layer in network.layers[:s]):
        return None  # nothing before it but reshapes: the logits are the input
    reduced = _without(network, s)
    if any(isinstance(layer, SMOOTH_TYPES) for layer in reduced.layers):
        return None  # still no linear form: nothing gained
    if not log and compared and not _softmax_spread_ok(reduced, problems, sorted(compared), groups):
        return None
    out = [replace(p, network=reduced) for p in problems]
    return OrderReduction(out, network, type(layer).__name__)


def _softmax_spread_ok(reduced: Network, problems, compared, groups) -> bool:
    """Interval bounds of the logits over every problem's box keep each compared output within
    :data:`SOFTMAX_SPREAD` of its group's largest logit (so no float evaluation underflows it)."""
    from .bounds import ibp
    from .errors import NoLinearFormError

    lower = torch.as_tensor(np.stack([p.region.lower for p in problems]))
    upper = torch.as_tensor(np.stack([p.region.upper for p in problems]))
    try:
        lo, hi = (t.numpy() for t in ibp(reduced, lower, upper).output)
    except NoLinearFormError:
        return False
    for i in compared:
        members = groups == groups[i]
        top = hi[:, members].max(axis=1)
        if not np.all(top - lo[:, i] < SOFTMAX_SPREAD):
            return False
    return True
