"""Attacks: batched searches for counterexamples; they return :class:`Candidates`."""

from .geometry import BoxGeometry
from .pgd import AttackConfig, Candidates, pgd_attack

__all__ = ["AttackConfig", "BoxGeometry", "Candidates", "pgd_attack"]
