"""gpuopt: attack and verify trained ReLU networks.

Data flows one way: a model, an input region and an output spec become a :class:`Problem`;
bounds and attacks produce Bounds and Candidates; the MILP stage produces :class:`Verdict`.
"""

from .launch import mark_start

mark_start()  # the command line's first CPU-load sample, before torch loads (see gpuopt.launch)

from .attacks.api import AttackResult, attack  # noqa: E402
from .errors import (GpuoptError, InvalidInputError, MissingDependencyError, NetworkTooLargeError, NoLinearFormError,
                     NotPiecewiseLinearError, SolverError, UnsupportedLayerError)
from .host_memory import keep_freed_memory
from .network import Network, from_torch
from .problem import Problem
from .radius import RadiusResult, certify_radius
from .optimize import OptimizeResult, optimize
from .regions import Box, L1Ball, LinfBall
from .specs import OutputSpec, robustness, targeted
from .verdict import Status, Verdict
from .verify import VerifyConfig, verify, verify_instance, verify_problems

__version__ = "0.1.0"

__all__ = [
    "AttackResult", "attack", "Box", "L1Ball", "OptimizeResult", "optimize", "RadiusResult", "certify_radius", "GpuoptError", "InvalidInputError", "keep_freed_memory", "LinfBall", "MissingDependencyError", "Network", "NetworkTooLargeError",
    "NoLinearFormError", "NotPiecewiseLinearError", "OutputSpec", "Problem", "SolverError", "Status", "UnsupportedLayerError", "Verdict",
    "VerifyConfig", "from_onnx", "from_torch", "load_vnnlib", "robustness", "targeted", "verify",
    "verify_instance", "verify_problems",
]


def __getattr__(name):
    # the file readers import onnx lazily: `import gpuopt` stays light
    if name == "from_onnx":
        from .io.onnx import from_onnx
        return from_onnx
    if name == "load_vnnlib":
        from .io.vnnlib import load_vnnlib
        return load_vnnlib
    raise AttributeError(f"module 'gpuopt' has no attribute {name!r}")
