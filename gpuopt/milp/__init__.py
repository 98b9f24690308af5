"""Exact MILP certification: encoders (pure numpy/scipy) and the one HiGHS wrapper."""

from .encode import MilpModel, encode_bigm, complete_assignment

__all__ = ["MilpModel", "encode_bigm", "complete_assignment"]
