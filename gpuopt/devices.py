"""Validating a device name before any work: ``cpu``, ``cuda`` or ``cuda:N`` for an available N."""

from __future__ import annotations

from .errors import InvalidInputError

__all__ = ["check_device"]


def check_device(value, name: str = "`device`"):
    """``value`` as a :class:`torch.device`, or an :class:`InvalidInputError` naming ``name``."""
    import torch

    expected = "expected cpu, cuda or cuda:N"
    if isinstance(value, torch.device):
        dev = value
    else:
        if not isinstance(value, str):
            raise InvalidInputError(f"{name} must be a device name ({expected}), got {type(value).__name__}")
        try:
            dev = torch.device(value)
        except (RuntimeError, ValueError, TypeError):
            raise InvalidInputError(f"{name} {value!r}: not a device ({expected})") from None
    if dev.type == "cpu" and dev.index in (None, 0):
        return dev
    if dev.type != "cuda":
        raise InvalidInputError(f"{name} {value!r}: unsupported device ({expected})")
    if not torch.cuda.is_available():
        raise InvalidInputError(f"{name} {value!r}: CUDA is not available on this machine")
    count = torch.cuda.device_count()
    if dev.index is not None and not 0 <= dev.index < count:
        raise InvalidInputError(f"{name} {value!r}: there is no CUDA device {dev.index} (this machine has {count}: "
                                f"cuda:0 to cuda:{count - 1})")
    return dev
