"""Exceptions raised by gpuopt.

Every error a user can trigger derives from :class:`GpuoptError`, so callers can catch one type.
A timeout or an unproven property is never an exception: it is a :class:`~gpuopt.verdict.Status`.
"""

from __future__ import annotations


class GpuoptError(Exception):
    """Base class of every gpuopt error."""


class InvalidInputError(GpuoptError, ValueError):
    """A user-supplied input (file, array, option) is malformed or inconsistent.

    ``path`` and ``line`` are set when the problem is located in a file.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f":{line}"
            where += ": "
        super().__init__(where + message)
        self.path = path
        self.line = line


class UnsupportedLayerError(GpuoptError):
    """A model contains an operator or layer gpuopt cannot represent exactly."""

    def __init__(self, message: str, *, node: str | None = None, op_type: str | None = None):
        super().__init__(message)
        self.node = node
        self.op_type = op_type


class NoLinearFormError(GpuoptError):
    """The network has no exact linear form (sparse matrices between ReLUs) that the stages built
    on it can use (bounds, splitting, MILP, the exact counterexample check): it is too large
    (:class:`NetworkTooLargeError`) or not piecewise linear (:class:`NotPiecewiseLinearError`).
    Only the attack runs on it, its counterexamples checked layer by layer."""


class NetworkTooLargeError(NoLinearFormError):
    """The network's exact linear form (sparse matrices of every layer) would not fit in memory,
    so the stages built on it (bounds, splitting, MILP, the exact counterexample check) cannot run."""


class NotPiecewiseLinearError(NoLinearFormError):
    """The network has a layer that is not piecewise linear (sigmoid, tanh, softmax), so it has no exact
    linear form."""


class SolverError(GpuoptError):
    """The LP/MILP solver failed in a way that is not a timeout or an infeasibility."""


class MissingDependencyError(GpuoptError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def require_file(path, what: str) -> None:
    """Raise :class:`InvalidInputError` unless ``path`` names an existing file: ``"{what} file not
    found: path"``, or, for a directory, that it is one."""
    import os

    if os.path.isdir(path):
        raise InvalidInputError(f"{what} file {path}: is a directory, not a file")
    if not os.path.isfile(path):
        raise InvalidInputError(f"{what} file not found: {path}")
