"""Bound propagation: every method returns a :class:`~gpuopt.bounds.base.Bounds`."""

from .base import Bounds, disjunct_lower_bounds, margin_lower_bound
from .crown import alpha_crown_linear_lower, crown, crown_linear_lower
from .ibp import ibp

__all__ = ["Bounds", "alpha_crown_linear_lower", "crown", "crown_linear_lower", "disjunct_lower_bounds", "ibp", "margin_lower_bound"]
