"""Validating a device name before any work: ``cpu``, ``cuda`` or ``cuda:N`` for an available N;
starting a CUDA device's initialisation early, in the background; and the memory a device has free."""

from __future__ import annotations

import logging
import threading

from .errors import InvalidInputError

__all__ = ["check_device", "free_memory", "warm_up"]

log = logging.getLogger("gpuopt")
_warmed: dict = {}  # device name -> the thread that initialised it (one per device and process)
_warm_lock = threading.Lock()


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


def warm_up(device) -> threading.Thread | None:
    """Starts initialising ``device`` (a CUDA context, the first allocation and cuBLAS, together
    about a second or more) in a background thread, once per device and process, so that it
    overlaps the loading and bounding that come before the attack; the first real use then waits
    for it under torch's own lock. Returns the thread (``None`` for the CPU). A failure is only
    logged: the first real use raises it where it belongs."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    dev = torch.device("cuda", dev.index or 0)  # "cuda" and "cuda:0" are one device (torch's default is 0)
    with _warm_lock:
        if str(dev) in _warmed:
            return _warmed[str(dev)]

        def run():
            try:
                a = torch.ones((8, 8), device=dev)
                (a @ a).sum().item()
            except Exception as err:  # noqa: BLE001 - reported by the first real use
                log.debug("warming %s failed: %s", dev, err)

        thread = threading.Thread(target=run, name=f"gpuopt-warm-{dev}", daemon=True)
        _warmed[str(dev)] = thread
        thread.start()
        return thread


#: where the CPU's free memory is read: the kernel's estimate, then the memory cgroup's limit and
#: use (v2, then v1), which bound a container's or a batch job's memory below the machine's
MEMINFO = "/proc/meminfo"
CGROUP_FILES = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


def in_pool_worker() -> bool:
    """Whether this process is a worker of the engine's local process pool, which runs several
    tasks at once beside it (its initializer registers the module ``_gpuopt_worker``; see
    :mod:`gpuopt.engine.executor`)."""
    import sys

    return "_gpuopt_worker" in sys.modules


def free_memory(device) -> int | None:
    """Bytes free on ``device`` now: CUDA's free memory; on the CPU the smaller of the kernel's
    estimate of the memory available without swapping (``MemAvailable``, Linux) and what the
    memory cgroup's limit leaves (limit less use; a container or batch job may get much less
    than the machine has). ``None`` where none of these can be read."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(dev)[0])
        except (RuntimeError, AssertionError):
            return None
    found = []
    try:
        with open(MEMINFO) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)  # reported in kB
                    break
    except (OSError, ValueError, IndexError):
        pass
    for limit_path, use_path in CGROUP_FILES:
        try:
            with open(limit_path) as f:
                limit = f.read().strip()
            with open(use_path) as f:
                use = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:  # "max" (v2) or a huge number (v1): no limit
            found.append(max(0, int(limit) - use))
        break
    return min(found) if found else None
