"""Command line: ``gpuopt verify``, ``gpuopt demo``. A thin layer over the Python API.

Exit codes: 0 when a verdict was printed (whatever it is), 2 for bad input (missing or malformed
files, unsupported layers, invalid options), 1 for an internal failure. Bad input gives a
one-line message on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from . import __version__
from .errors import GpuoptError, InvalidInputError, UnsupportedLayerError

__all__ = ["main"]


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpuopt", description="Attack and verify trained ReLU networks.")
    p.add_argument("--version", action="version", version=f"gpuopt {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log pipeline details to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("verify", help="decide an ONNX network + VNNLIB property (VNN-COMP style)")
    v.add_argument("onnx", help="network file (.onnx)")
    v.add_argument("vnnlib", help="property file (.vnnlib or .vnnlib.gz); it states the unsafe region")
    v.add_argument("--timeout", type=_nonneg_float, default=None, help="seconds (default: no limit)")
    v.add_argument("--out", default=None, help="write the VNN-COMP result file here")
    v.add_argument("--seed", type=int, default=0, help="random seed of the attack and of HiGHS")
    v.add_argument("--device", default=None, help="attack device, e.g. cpu or cuda (default: cuda if available)")
    v.add_argument("--restarts", type=_positive_int, default=None, help="PGD restarts per input box")
    v.add_argument("--steps", type=_positive_int, default=None, help="PGD steps per restart")
    v.add_argument("--threads", type=_positive_int, default=1,
                   help="CPU threads for torch (default 1: the small batched ops here are latency-bound, "
                        "and extra threads only contend with the MILP)")

    d = sub.add_parser("demo", help="run the bundled demo (no downloads): robustness of a small digits classifier")
    d.add_argument("--images", type=_positive_int, default=20, help="number of bundled test images to use")
    d.add_argument("--timeout", type=_nonneg_float, default=30.0, help="seconds per item")
    return p


def _cmd_verify(args, start_time: float) -> int:
    from dataclasses import replace

    from .attack import AttackConfig
    from .io.vnnlib import write_counterexample
    from .milp.highs import SolverConfig
    from .verify import VerifyConfig, verify_instance

    import torch

    torch.set_num_threads(args.threads)  # the CLI owns its process
    attack = AttackConfig(seed=args.seed)
    if args.restarts is not None:
        attack = replace(attack, restarts=args.restarts)
    if args.steps is not None:
        attack = replace(attack, steps=args.steps)
    if args.device is not None and args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InvalidInputError(f"--device {args.device}: CUDA is not available on this machine")
    config = VerifyConfig(attack=attack, solver=SolverConfig(seed=args.seed), device=args.device)
    verdict = verify_instance(args.onnx, args.vnnlib, timeout=args.timeout, config=config, start_time=start_time)
    if args.out:
        write_counterexample(args.out, verdict.counterexample, verdict.output, verdict.status.value)
    detail = f"decided by {verdict.decided_by}" if verdict.decided_by else "undecided"
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in verdict.stage_seconds.items())
    print(f"# {detail} in {verdict.seconds:.2f}s ({stages}); {verdict.message}")
    print(verdict.status.value)
    return 0


def main(argv=None) -> int:
    start_time = time.monotonic()  # the timeout covers imports and loading too
    args = _parser().parse_args(argv)
    if args.verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger = logging.getLogger("gpuopt")
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        if args.command == "verify":
            return _cmd_verify(args, start_time)
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(n_images=args.images, timeout=args.timeout)
    except (InvalidInputError, UnsupportedLayerError) as exc:
        print(f"gpuopt: error: {exc}", file=sys.stderr)
        return 2
    except GpuoptError as exc:
        print(f"gpuopt: error: {exc}", file=sys.stderr)
        return 1
    return 1  # pragma: no cover - argparse enforces a command


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
