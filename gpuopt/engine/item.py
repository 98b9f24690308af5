"""The state of one item as it moves through the stages.

An item is the disjunction of Problems on one network (one VNNLIB instance, or one sample x spec).
Stages read and update its state; the first one that decides it sets ``verdict``, and later stages
skip it. ``events`` logs each stage that ran (wall-clock start and end, outcome), so that a bulk
run's records show what ran when.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..verdict import Status, Verdict

__all__ = ["ItemState", "StageEvent"]


@dataclass(frozen=True)
class StageEvent:
    """One stage's run on an item: ``start``/``end`` are ``time.time()`` stamps (comparable across
    processes), ``outcome`` a short word (``decided``, ``open``, ``timeout``, ``skipped``)."""

    stage: str
    start: float
    end: float
    outcome: str

    def to_dict(self) -> dict:
        return {"stage": self.stage, "start": self.start, "end": self.end, "outcome": self.outcome}


@dataclass(eq=False)
class ItemState:
    """Mutable per-item state (see the module docstring).

    * ``problems``: the original Problems (counterexamples are checked against these);
      ``proof_problems``: the same with right-hand sides that make float proofs sound;
    * ``A``, ``b``, ``strict``: the stacked, padded spec tensors of ``proof_problems``;
    * ``bounds``: the tightest :class:`~gpuopt.bounds.Bounds` so far; ``disj_lb``: ``(P, K)``
      certified lower bounds per disjunct; ``open``: the (problem, disjunct) pairs not yet proven;
    * ``best_x``: per problem, the best candidate point (a MIP start); ``margin_upper``: the
      smallest exact-checked margin seen; ``candidates``: per problem, the attack's
      :class:`~gpuopt.attacks.CandidatePool` (best points with distinct activation patterns);
    * ``stage_seconds``, ``events``: timings; ``milp_nodes``, ``milp_status``: solver statistics;
      ``stage_notes``: per task stage, what its merged results left (proven bounds, open notes);
    * ``too_large``: why the network's linear form was refused
      (:class:`~gpuopt.errors.NoLinearFormError`: too large, or not piecewise linear): the attack
      runs, and only interval bounds and interval splitting where it is not piecewise linear
      (:mod:`gpuopt.interval_split`); ``heavy`` when it was refused for its size (the attack then
      runs fewer restarts per round, and nothing else).
    * ``reduction``: where ``problems`` are the caller's on the network without its final Softmax
      or LogSoftmax, the :class:`~gpuopt.output_order.OrderReduction` (its note joins the
      verdict's message, its margins replace the logits', and a counterexample reports the
      original network's output); ``None`` otherwise.
    """

    problems: list
    config: object
    t0: float
    deadline: float | None
    proof_problems: list = field(default_factory=list)
    A: object = None
    b: object = None
    strict: object = None
    lower: object = None
    upper: object = None
    bounds: object = None
    bounds_method: str = "ibp"
    disj_lb: np.ndarray | None = None
    open: set = field(default_factory=set)
    best_x: dict = field(default_factory=dict)
    candidates: dict = field(default_factory=dict)
    margin_upper: float = math.inf
    stage_seconds: dict = field(default_factory=dict)
    events: list = field(default_factory=list)
    milp_nodes: int = 0
    milp_status: str | None = None
    stage_notes: dict = field(default_factory=dict)
    verdict: Verdict | None = None
    too_large: str | None = None
    heavy: bool = False
    reduction: object = None

    @property
    def network(self):
        return self.problems[0].network

    def left(self) -> float:
        """Seconds until the deadline (``inf`` without one)."""
        return math.inf if self.deadline is None else self.deadline - time.monotonic()

    @property
    def margin_lower(self) -> float:
        """The certified lower bound on the item's margin (min over disjuncts)."""
        if self.disj_lb is None:
            return -math.inf
        return float(min(self.disj_lb[i, k] for i, p in enumerate(self.problems) for k in range(p.spec.n_disjuncts)))

    def closed_lower_bounds(self) -> list[float]:
        """Lower bounds of the disjuncts the bounds stage closed."""
        return [float(self.disj_lb[i, k]) for i, p in enumerate(self.problems) for k in range(p.spec.n_disjuncts)
                if (i, k) not in self.open]

    def decide(self, status: Status, **kw) -> None:
        """Set the verdict (once); fields not given come from the state."""
        if self.verdict is not None:
            return
        kw.setdefault("margin_lower", self.margin_lower)
        kw.setdefault("margin_upper", self.margin_upper)
        kw.setdefault("milp_nodes", self.milp_nodes)
        kw.setdefault("milp_status", self.milp_status)
        if self.reduction is not None:
            x = kw.get("counterexample")
            if x is not None:
                kw["output"] = self.reduction.original.forward64(np.asarray(x, dtype=np.float64)[None])[0]
            kw["margin_lower"], kw["margin_upper"] = self.reduction.margins(kw["margin_lower"], kw["margin_upper"], x)
            kw["message"] = "; ".join(m for m in (kw.get("message", ""), self.reduction.note) if m)
        self.verdict = Verdict(status=status, seconds=time.monotonic() - self.t0,
                               stage_seconds=dict(self.stage_seconds), **kw)
