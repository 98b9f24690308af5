"""Bound propagation: every method returns a :class:`~gpuopt.bounds.base.Bounds`."""

from .base import Bounds, disjunct_lower_bounds, margin_lower_bound
from .ibp import ibp

__all__ = ["Bounds", "disjunct_lower_bounds", "ibp", "margin_lower_bound"]
