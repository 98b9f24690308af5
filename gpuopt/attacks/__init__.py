"""Attacks: batched searches for counterexamples.

:mod:`~gpuopt.attacks.geometry` holds the perturbation sets, :mod:`~gpuopt.attacks.pgd` the loop,
:mod:`~gpuopt.attacks.search` the spec falsification over rounds of restarts (it returns
:class:`Candidates`), and :mod:`~gpuopt.attacks.api` the training-loop function
:func:`gpuopt.attack` for any differentiable torch model.
"""

from .geometry import BoxGeometry, L1Geometry, L2Geometry
from .pgd import AttackConfig
from .search import CandidatePool, Candidates, falsify, pgd_attack

__all__ = ["AttackConfig", "BoxGeometry", "CandidatePool", "Candidates", "L1Geometry", "L2Geometry", "falsify",
           "pgd_attack"]
