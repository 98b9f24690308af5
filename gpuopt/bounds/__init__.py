"""Bound propagation: every method returns a :class:`~gpuopt.bounds.base.Bounds`."""

from .base import Bounds, disjunct_lower_bounds, margin_lower_bound
from .crown import alpha_crown_bounds, alpha_crown_linear_lower, crown, crown_linear_lower
from .forward import forward_crown, intermediate_bounds
from .ibp import ibp
from .zonotope import zonotope_bounds

__all__ = ["Bounds", "alpha_crown_bounds", "alpha_crown_linear_lower", "crown", "crown_linear_lower", "disjunct_lower_bounds", "forward_crown",
           "ibp", "intermediate_bounds", "margin_lower_bound", "zonotope_bounds"]
