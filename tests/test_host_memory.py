"""gpuopt.host_memory: glibc keeps freed blocks of a few MB in the heap once it is applied.

Each check runs in a fresh interpreter: the settings are process-wide and applied once."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        return False


needs_glibc = pytest.mark.skipif(not _glibc(), reason="mallopt settings exist on glibc only")

# mallinfo2 (glibc >= 2.33): hblkhd is the bytes held in mmap'd blocks right now (its growth
# over one malloc is that block's share). A block of
# 4 MiB is above glibc's default mmap threshold (128 KiB, raised only by earlier frees), so it is
# mmap'd unless keep_freed_memory raised the threshold.
_PROBE = textwrap.dedent("""
    import ctypes, json, sys
    sys.path.insert(0, {root!r})
    {setup}
    class Info(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")]
    libc = ctypes.CDLL("libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        print(json.dumps({{"skip": True}}))
        raise SystemExit
    libc.mallinfo2.restype = Info
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    base = libc.mallinfo2().hblkhd
    p = libc.malloc(4 << 20)
    held = libc.mallinfo2().hblkhd - base
    libc.free(p)
    print(json.dumps({{"applied": applied, "mmapped": held}}))
""")


def _probe(setup: str, env_extra: dict | None = None) -> dict:
    import json

    env = dict(os.environ)
    env.pop("GPUOPT_KEEP_FREED_MEMORY", None)
    env.update(env_extra or {})
    code = _PROBE.format(root=str(ROOT), setup=setup)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result.get("skip"):
        pytest.skip("glibc without mallinfo2")
    return result


_APPLY = ("import runpy; applied = runpy.run_path({path!r})['keep_freed_memory']()"
          .format(path=str(ROOT / "gpuopt" / "host_memory.py")))


@needs_glibc
def test_blocks_of_megabytes_come_from_the_heap_once_applied():
    before = _probe("applied = None")
    after = _probe(_APPLY)
    assert before["mmapped"] >= 4 << 20  # glibc's default: a fresh mapping
    assert after["applied"] is True
    assert after["mmapped"] == 0


@needs_glibc
@pytest.mark.parametrize("value", ["0", "off", "False"])
def test_the_environment_variable_turns_it_off(value):
    result = _probe(_APPLY, {"GPUOPT_KEEP_FREED_MEMORY": value})
    assert result["applied"] is False
    assert result["mmapped"] >= 4 << 20


def test_applied_once_and_idempotent():
    from gpuopt.host_memory import keep_freed_memory

    first = keep_freed_memory()
    assert keep_freed_memory() is first
    assert first is _glibc() or os.environ.get("GPUOPT_KEEP_FREED_MEMORY") == "0"


@needs_glibc
def test_pool_workers_apply_it_without_importing_gpuopt():
    """The pool's worker initializer runs host_memory.py as a file: gpuopt and torch stay
    unimported, the settings take effect, and a missing file does not break the worker."""
    from gpuopt.engine import executor

    def setup(path):
        init = {"RUNNER_SOURCE": executor._RUNNER_SOURCE, "HOST_MEMORY": str(path)}
        return (f"exec({executor._WORKER_INIT!r}, {init!r})\n"
                "applied = '_gpuopt_worker' in sys.modules and not any(\n"
                "    m.split('.')[0] in ('gpuopt', 'torch') for m in sys.modules)")

    result = _probe(setup(ROOT / "gpuopt" / "host_memory.py"))
    assert result["applied"] is True and result["mmapped"] == 0
    broken = _probe(setup(ROOT / "gpuopt" / "no_such_file.py"))
    assert broken["applied"] is True and broken["mmapped"] >= 4 << 20
