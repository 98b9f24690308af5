"""Verdicts: the pipeline's frozen result per item.

Status names follow VNN-COMP: ``sat`` means the property is *violated* (a counterexample was
found and re-checked in float64), ``unsat`` means it is *verified* (proven by sound bounds or by
a MILP whose dual bound clears the solver tolerances). ``unknown`` means every stage finished
without a decision, ``timeout`` that the time budget ran out, ``error`` that a stage failed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Status", "Verdict"]


class Status(enum.Enum):
    SAT = "sat"
    UNSAT = "unsat"
    UNKNOWN = "unknown"
    TIMEOUT = "timeout"
    ERROR = "error"

    @property
    def falsified(self) -> bool:
        return self is Status.SAT

    @property
    def verified(self) -> bool:
        return self is Status.UNSAT


@dataclass(frozen=True, eq=False)
class Verdict:
    """Result for one item (a network, an input region and an output spec, or a VNNLIB instance).

    * ``counterexample``/``output``: float64 input (flattened) and output, present iff ``sat``;
    * ``margin_lower``: a certified lower bound on ``min margin`` over the region (``-inf`` if
      none); ``margin_upper``: the smallest margin seen at a real point (``+inf`` if none);
    * ``decided_by``: the stage that decided (``"ibp"``, ``"attack"``, ``"milp"``) or ``None``;
    * ``stage_seconds``: wall-clock time per stage; ``milp_nodes``/``milp_status``: solver
      statistics (``0``/``None`` when no MILP ran); ``message``: a human-readable note;
    * ``events``: one dict per stage that ran (``stage``, wall-clock ``start``/``end``, ``outcome``).
    """

    status: Status
    seconds: float
    counterexample: np.ndarray | None = None
    output: np.ndarray | None = None
    margin_lower: float = -np.inf
    margin_upper: float = np.inf
    decided_by: str | None = None
    stage_seconds: dict = field(default_factory=dict)
    milp_nodes: int = 0
    milp_status: str | None = None
    message: str = ""
    events: tuple = ()

    def to_dict(self) -> dict:
        """JSON-ready dictionary (arrays as lists, infinities as strings)."""
        def num(v):
            return v if np.isfinite(v) else ("inf" if v > 0 else "-inf")
        return {
            "status": self.status.value,
            "seconds": self.seconds,
            "counterexample": None if self.counterexample is None else self.counterexample.tolist(),
            "output": None if self.output is None else self.output.tolist(),
            "margin_lower": num(self.margin_lower),
            "margin_upper": num(self.margin_upper),
            "decided_by": self.decided_by,
            "stage_seconds": dict(self.stage_seconds),
            "milp_nodes": self.milp_nodes,
            "milp_status": self.milp_status,
            "message": self.message,
            "events": [dict(e) for e in self.events],
        }
