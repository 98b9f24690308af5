"""The CUDA kernels against their torch fallbacks: identical results, and the time of each.

``pack_and_hash`` (``cuda_kernels/patterns.cu``, :mod:`gpuopt.kernels.patterns`) on seeded random
activation patterns of several shapes ``(rows, neurons)``: each implementation's median of
``--repeats`` timed calls after one warm-up (the CUDA queue drained before the timer stops), and
whether both return the same packed bytes and hashes. The fallback packs on the device and hashes
on the host, so its time includes the copy back; the kernel's result stays on the device.

``box_step`` (``cuda_kernels/box_step.cu``, :mod:`gpuopt.kernels.step`): the attack's fused
projected step with momentum and best-iterate tracking on seeded points of shapes
``(items, restarts, n)`` (``--step-shapes``), timed the same way on inputs it updates in place,
and checked identical on fresh copies.

Without CUDA and CuPy only the fallback runs (on ``--device``, default ``cuda`` when available).
The JSON (``--out``) holds every row and is rewritten after each.

    python benchmarks/kernels.py --shapes 4096x1024 65536x1536 262144x512 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gpuopt.devices import check_device  # noqa: E402
from gpuopt.kernels import cupy_available  # noqa: E402
from gpuopt.kernels.patterns import pack_and_hash  # noqa: E402
from gpuopt.kernels.step import box_step  # noqa: E402


def shape_arg(text: str) -> tuple[int, int]:
    try:
        rows, neurons = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ROWSxNEURONS, e.g. 4096x1024") from None
    if rows < 0 or neurons < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: rows and neurons must be >= 0")
    return rows, neurons


def step_shape_arg(text: str) -> tuple[int, int, int]:
    try:
        items, restarts, n = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ITEMSxRESTARTSxN, e.g. 1x16000x784") from None
    if min(items, restarts, n) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be >= 0")
    return items, restarts, n


def step_inputs(shape, device) -> dict:
    """Seeded inputs of :func:`box_step`: points in a box, gradients, masks, step lengths."""
    B, R, n = shape
    gen = torch.Generator().manual_seed(B * 7919 + R * 31 + n)
    lower = torch.rand((B, n), generator=gen) - 1
    upper = lower + 2 * torch.rand((B, n), generator=gen)

    def rnd(*size):
        return torch.rand(size, generator=gen)
    c = {"x": lower[:, None] + (upper - lower)[:, None] * rnd(B, R, n), "x_prev": lower[:, None] + rnd(B, R, n),
         "g": rnd(B, R, n) - 0.5, "best_x": lower[:, None] + rnd(B, R, n), "best_g": rnd(B, R, n) - 0.5,
         "t": rnd(B, R), "radius": (upper - lower) / 2, "lower": lower, "upper": upper,
         "better": rnd(B, R) < 0.5, "back": rnd(B, R) < 0.1}
    return {k: v.to(device) for k, v in c.items()}


def run_step(c: dict, impl: str):
    out = box_step(c["x"], c["x_prev"], c["g"], c["t"], c["radius"], c["lower"], c["upper"], best_x=c["best_x"],
                   best_g=c["best_g"], better=c["better"], back=c["back"], momentum=0.75, impl=impl)
    return out, c["x"], c["best_x"], c["best_g"]


def timed(fn, device: torch.device, repeats: int) -> tuple[float, tuple]:
    """The median seconds of ``repeats`` calls of ``fn`` after one warm-up, and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", type=shape_arg, default=[(4096, 1024), (65536, 1536), (262144, 512)])
    ap.add_argument("--step-shapes", nargs="*", type=step_shape_arg, default=[(1, 4000, 784), (1, 16000, 784)])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "kernels.json"))
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    device = check_device(args.device, "--device")
    kernel = device.type == "cuda" and cupy_available()
    meta = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "cupy": kernel, "torch": torch.__version__, "machine": platform.machine(), "repeats": args.repeats,
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    if not kernel:
        print(f"no CUDA kernel on {device} (needs a CUDA device and CuPy): the fallback alone is timed")
    rows_out = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    def record(row: dict, label: str) -> None:
        """Appends ``row``, rewrites the JSON, prints the row's line."""
        rows_out.append(row)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps({"meta": meta, "rows": rows_out}, indent=1))
        os.replace(tmp, out)
        k = f"{1e3 * row['kernel_seconds']:10.3f}" if kernel else f"{'-':>10s}"
        sp = f"{row['speedup']:9.1f}" if kernel and row["speedup"] else f"{'-':>9s}"
        print(f"{label} {1e3 * row['fallback_seconds']:12.3f} {k} {sp} {str(row.get('identical', '-')):>9s}", flush=True)

    print(f"{'rows':>8s} {'neurons':>8s} {'fallback ms':>12s} {'kernel ms':>10s} {'speed-up':>9s} {'identical':>9s}")
    for rows, neurons in args.shapes:
        gen = torch.Generator().manual_seed(rows * 7919 + neurons)
        bits = (torch.rand((rows, neurons), generator=gen) < 0.5).to(device)
        t_fb, (p_fb, h_fb) = timed(lambda: pack_and_hash(bits, impl="torch"), device, args.repeats)
        row = {"kernel": "pack_and_hash", "rows": rows, "neurons": neurons, "fallback_seconds": t_fb}
        if kernel:
            t_k, (p_k, h_k) = timed(lambda: pack_and_hash(bits, impl="cupy"), device, args.repeats)
            same = bool(torch.equal(p_k.cpu(), p_fb.cpu()) and torch.equal(h_k.cpu(), h_fb.cpu()))
            row.update(kernel_seconds=t_k, speedup=t_fb / t_k if t_k > 0 else None, identical=same)
        record(row, f"{rows:8d} {neurons:8d}")
    for shape in args.step_shapes:
        c = step_inputs(shape, device)
        t_fb, _ = timed(lambda: run_step(c, "torch"), device, args.repeats)
        row = {"kernel": "box_step", "shape": list(shape), "fallback_seconds": t_fb}
        if kernel:
            t_k, _ = timed(lambda: run_step(c, "cupy"), device, args.repeats)
            fresh = step_inputs(shape, device)
            a, b = run_step({k: v.clone() for k, v in fresh.items()}, "cupy"), run_step(fresh, "torch")
            same = all(torch.equal(u, v) for u, v in zip(a, b))
            row.update(kernel_seconds=t_k, speedup=t_fb / t_k if t_k > 0 else None, identical=same)
        record(row, f"box_step {'x'.join(map(str, shape)):>17s}")
    print(f"results: {out}")
    return 1 if any(r.get("identical") is False for r in rows_out) else 0


if __name__ == "__main__":
    sys.exit(main())
