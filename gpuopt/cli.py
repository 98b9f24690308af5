"""Command line: ``gpuopt verify``, ``gpuopt demo``. A thin layer over the Python API.

Exit codes: 0 when a verdict was printed (whatever it is), 2 for bad input (missing or malformed
files, unsupported layers, invalid options, argparse usage errors, an option whose optional
dependency is not installed), 1 for an internal failure,
130 when interrupted (Ctrl-C).
Every error is one line on stderr, ``gpuopt: error: ...`` (an internal failure: ``gpuopt:
internal error: ...``, with the traceback logged under ``-v``), never a traceback. Options are
checked before any work. ``--timeout`` counts from the start of the process
(:func:`process_start_monotonic`).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from pathlib import Path

from . import __version__
from .errors import (GpuoptError, InvalidInputError, MissingDependencyError, NotPiecewiseLinearError, UnsupportedLayerError,
                     require_file)
from .host_memory import keep_freed_memory
from .launch import free_cpus, usable_cpus as _usable_cpus

__all__ = ["main", "process_start_monotonic"]

_IMPORT_MONOTONIC = time.monotonic()  # the fallback start time where /proc is not available
_MAX_START_AGE = 60.0  # seconds; an older process start is not a plausible CLI start-up
_MAX_SEED = 2**32 - 1
_MAX_THREADS = 4 * (os.cpu_count() or 1)  # torch.set_num_threads(100000) crashes the process
_MAX_RESTARTS = 10_000  # the attack holds (items x restarts x inputs) floats several times over
_MAX_STEPS = 1_000_000


def _process_age_seconds() -> float | None:
    """Seconds since this process started, from Linux's ``/proc`` (None where unreadable)."""
    try:
        with open("/proc/self/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
        with open("/proc/uptime", "rb") as fh:
            uptime = float(fh.read().split()[0])
        # field 2 (comm) is parenthesised and may contain spaces: count fields after its ')'
        fields = stat[stat.rindex(")") + 2:].split()
        start_ticks = int(fields[22 - 3])  # field 22: starttime, in clock ticks since boot
        ticks = os.sysconf("SC_CLK_TCK")
        if ticks <= 0:
            return None
        return uptime - start_ticks / ticks
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def process_start_monotonic() -> float:
    """The start of this process as a ``time.monotonic()`` timestamp, so that a timeout covers
    the interpreter's start-up and the imports as well.

    On Linux it is computed from ``/proc/self/stat`` (field 22, ``starttime``, in clock ticks
    since boot), ``/proc/uptime`` and ``time.monotonic()``: the process is ``uptime - starttime /
    SC_CLK_TCK`` seconds old. The result is clamped to ``[now - 60 s, now]`` (clock-tick rounding,
    and processes that ran other work first). Elsewhere it falls back to the time
    ``gpuopt.cli`` was imported.
    """
    now = time.monotonic()
    age = _process_age_seconds()
    start = _IMPORT_MONOTONIC if age is None else now - age
    return min(now, max(now - _MAX_START_AGE, start))


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr, ``gpuopt: error: ...``,
    with exit code 2 (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"gpuopt: error: {' '.join(str(message).split())}\n")


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _share(text: str) -> float:
    """An argparse type: a share of the time, a number in ``[0, 1]``."""
    value = _nonneg_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}")
    return value


def _refine_share(text: str) -> float | None:
    """An argparse type: ``auto`` (None: :meth:`gpuopt.verify.VerifyConfig.refine_share` decides
    per network) or a share of the time in ``[0, 1]``."""
    if text.strip().lower() == "auto":
        return None
    try:
        return _share(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a number in [0, 1], got {text!r}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def _int_in(low: int, high: int, note: str = ""):
    """An argparse type: an integer in ``[low, high]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer between {low} and {high}{note}, got {text!r}")
        return value

    return parse


_seed = _int_in(0, _MAX_SEED)
_threads = _int_in(1, _MAX_THREADS, " (4 per CPU here)")
_restarts = _int_in(1, _MAX_RESTARTS, " (memory grows with it)")
_steps = _int_in(1, _MAX_STEPS)
_handoff = _int_in(0, 1_000_000, " (open domains per disjunct)")
_split_milp = _int_in(0, 1_000_000, " (unstable ReLUs per sub-box)")


def _check_device(text: str) -> str:
    """``--device``: "cpu", "cuda" or "cuda:N" for an available device N; InvalidInputError otherwise."""
    from .devices import check_device

    check_device(text, "--device")
    return text


def _check_out(path: str, inputs=()) -> None:
    """``--out`` must be writable later, so it is checked now, before the work: not a directory,
    not one of the ``inputs`` (the network, the property), in an existing folder, and writable
    (opened for appending, which changes nothing). A result file left there by an earlier run is
    removed, so that a run that fails leaves no stale verdict behind."""
    if os.path.isdir(path):
        raise InvalidInputError(f"--out {path!r}: is a directory")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InvalidInputError(f"--out {path!r}: folder {parent!r} does not exist")
    for name in inputs:
        if os.path.exists(name) and os.path.exists(path) and os.path.samefile(name, path) \
                or os.path.abspath(name) == os.path.abspath(path):
            raise InvalidInputError(f"--out {path!r}: is an input file of this command; the result would replace it")
    existed = os.path.lexists(path)
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise InvalidInputError(f"--out {path!r}: cannot write the result file: {exc.strerror or exc}") from None
    if not existed:
        os.remove(path)  # just created: the result is written at the end
    elif os.path.isfile(path):  # a stale result (a device such as /dev/null, or a folder, is left as it is)
        if os.path.islink(path):
            open(path, "w", encoding="utf-8").close()  # emptied through the link, which stays
        else:
            try:
                os.remove(path)
            except OSError:  # a folder we may not change: empty the file instead
                open(path, "w", encoding="utf-8").close()


def _parser() -> argparse.ArgumentParser:
    from .milp.highs import IPM_ROOT_MIN_NONZEROS

    p = _Parser(prog="gpuopt", description="Attack and verify trained ReLU networks.")
    p.add_argument("--version", action="version", version=f"gpuopt {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log pipeline details to stderr")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    v = sub.add_parser("verify", help="decide an ONNX network + VNNLIB property (VNN-COMP style)")
    v.add_argument("onnx", help="network file (.onnx)")
    v.add_argument("vnnlib", help="property file (.vnnlib or .vnnlib.gz); it states the unsafe region")
    v.add_argument("--timeout", type=_nonneg_float, default=None, help="seconds (default: no limit)")
    v.add_argument("--out", default=None, help="write the VNN-COMP result file here")
    v.add_argument("--seed", type=_seed, default=0, help=f"random seed of the attack and of HiGHS (0 to {_MAX_SEED})")
    v.add_argument("--device", default=None, help="attack device: cpu, cuda or cuda:N (default: cuda if available)")
    v.add_argument("--restarts", type=_restarts, default=None, help=f"PGD restarts per input box (1 to {_MAX_RESTARTS})")
    v.add_argument("--steps", type=_steps, default=None, help=f"PGD steps per restart (1 to {_MAX_STEPS})")
    v.add_argument("--bab", choices=["auto", "input", "relu", "off"], default="auto",
                   help="branch and bound: auto (default: input splitting up to 16 inputs, activation splitting "
                        "above), input, relu (either always), or off (bounds, attack and MILP only)")
    v.add_argument("--threads", type=_threads, default=None,
                   help=f"CPU threads for torch, 1 to {_MAX_THREADS} (default: the CPUs this process may use; the "
                        "stages run one after the other, so they go to whichever runs)")
    v.add_argument("--formulation", default="bigm", type=_formulation,
                   help="MILP formulation: bigm (default), split, extended, partition[:N[:equal_size|equal_range]]")
    v.add_argument("--cuts", action="store_const", const="all", default=False,
                   help="add valid inequalities to each MILP: root rounds of ideal-formulation cuts and "
                        "implication inequalities between the binaries")
    v.add_argument("--cut-kinds", type=_cuts, default=None, metavar="KINDS",
                   help="add only these valid inequalities (comma-separated: ideal, implication)")
    v.add_argument("--milp-condition", type=_share, default=None, metavar="SHARE",
                   help="a MILP not decided in its first seconds tightens its last layer's and outputs' bounds by LP "
                        "over the points where its disjunct's margin is small, in at most this share of its time "
                        "left, and starts again on them (0 to 1; default 0, off)")
    v.add_argument("--milp-root-lp", choices=("auto", "simplex", "ipm"), default="auto",
                   help="how each MILP's first LP is solved: HiGHS's dual simplex, its interior point method "
                        "(crossed over to a basis), or auto (the default: the interior point method on models with "
                        f"{IPM_ROOT_MIN_NONZEROS:,} matrix entries or more)")
    v.add_argument("--milp-beside", choices=("auto", "on", "off"), default="auto",
                   help="run the MILPs of the open disjuncts in a thread beside activation splitting, which stops "
                        "once they decide: on, off, or auto (the default: when a CPU is free beside torch's "
                        "threads, e.g. --threads 1 on an idle 2-core machine)")
    v.add_argument("--no-walk", action="store_true", help="skip the Relax-and-Walk stage")
    v.add_argument("--no-lp", action="store_true", help="skip the LP stage (LP bound tightening and LP bounds)")
    v.add_argument("--refine", "--milp-refine", dest="milp_refine", type=_refine_share, default=None,
                   metavar="SHARE",
                   help="before activation splitting, refine the intermediate bounds by per-neuron proofs in this "
                        "share of the time left (0 to 1; 0 is off); the default, auto, is 0.8 on networks with at "
                        "most 1024 inputs and 2048 ReLUs, with a timeout of 60 s or more (or none), and off "
                        "otherwise")
    v.add_argument("--refine-method", choices=("split", "milp"), default=None,
                   help="how the refinement proves each neuron's bounds: split (the default; activation splitting "
                        "on the layers before the neuron, in CROWN's padded float64 arithmetic) or milp (a MILP in "
                        "HiGHS, whose bounds rest on its tolerances; the verdict says so)")
    v.add_argument("--handoff", type=_handoff, default=None,
                   help="activation splitting hands a disjunct left with at most N open domains to one MILP per "
                        "domain (default 32; 0: never, the MILP then takes the whole disjunct)")
    v.add_argument("--branching", choices=["babsr", "fsb"], default=None,  # gpuopt.relu_split.BRANCHING
                   help="activation splitting's branching rule: babsr (the top intercept score) or fsb (a one-pass "
                        "lookahead at the top candidates, preferring a split whose weaker child gains; default: "
                        "babsr)")
    v.add_argument("--relu-refine", choices=("auto", "on", "off"), default=None,
                   help="activation splitting re-bounds each child's later layers: on (every step), off, or auto "
                        "(the default: while it makes neurons stable or children empty, at least 0.2 per child)")
    v.add_argument("--lp-dives", choices=("on", "off"), default=None,
                   help="activation splitting searches a plateau (its weakest bound unchanged for a few steps) by "
                        "LP branch and bound in HiGHS, within half of its time (default: off)")
    v.add_argument("--stall-retry", choices=("on", "off"), default=None,
                   help="on a plateau of activation splitting whose weakest domain's LP shows its bound inherited "
                        "(empty, or above it), the children bounded below their parents get 50 multiplier steps "
                        "instead of 10, within half of its time (default: on)")
    v.add_argument("--stall-tighten", choices=("on", "off"), default=None,
                   help="on such a plateau those children first get intermediate bounds optimised with their "
                        "split constraints (default: off)")
    v.add_argument("--step-dtype", choices=("float32", "float64"), default=None,  # gpuopt.bounds.crown.STEP_DTYPES
                   help="the dtype of the multiplier steps of alpha-CROWN and activation splitting (their bounds are "
                        "always evaluated in float64 with rounding pads; default: float32)")
    v.add_argument("--split-milp", type=_split_milp, default=None,
                   help="input splitting hands a sub-box it cannot close, with at most N unstable ReLUs, to an "
                        "exact MILP over the box (default 16; 0: never)")

    a = sub.add_parser("attack", help="the attack alone on an ONNX network + VNNLIB property: sat with a "
                                      "counterexample, or unknown")
    a.add_argument("onnx", help="network file (.onnx)")
    a.add_argument("vnnlib", help="property file (.vnnlib or .vnnlib.gz); it states the unsafe region")
    a.add_argument("--timeout", type=_nonneg_float, default=None,
                   help="seconds; rounds of fresh restarts run until then (default: one round)")
    a.add_argument("--out", default=None, help="write the VNN-COMP result file here")
    a.add_argument("--seed", type=_seed, default=0, help=f"random seed of the starts (0 to {_MAX_SEED})")
    a.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    a.add_argument("--restarts", type=_restarts, default=None, help=f"restarts per round (1 to {_MAX_RESTARTS})")
    a.add_argument("--steps", type=_steps, default=None, help=f"steps per restart (1 to {_MAX_STEPS})")
    a.add_argument("--threads", type=_threads, default=1, help=f"CPU threads for torch, 1 to {_MAX_THREADS}")

    o = sub.add_parser("optimize", help="maximise (or minimise) a linear function of the outputs over a VNNLIB's "
                                        "input region: best point, proven bound, gap")
    o.add_argument("onnx", help="network file (.onnx)")
    o.add_argument("vnnlib", help="region file (.vnnlib or .vnnlib.gz): its input constraints (a box, or several); "
                                  "its output constraints are ignored")
    goal = o.add_mutually_exclusive_group(required=True)
    goal.add_argument("--maximize", metavar="EXPR", help='objective such as "Y_0 - 2*Y_1 + 0.5"')
    goal.add_argument("--minimize", metavar="EXPR", help="objective to minimise")
    o.add_argument("--timeout", type=_positive_float, default=60.0, help="seconds in all (default 60)")
    o.add_argument("--formulation", default="bigm", type=_formulation,
                   help="MILP formulation: bigm (default), split, extended, partition[:N[:equal_size|equal_range]]")
    o.add_argument("--cuts", action="store_const", const="all", default=False,
                   help="add valid inequalities to the MILP (root ideal cuts and implication inequalities)")
    o.add_argument("--cut-kinds", type=_cuts, default=None, metavar="KINDS",
                   help="add only these valid inequalities (comma-separated: ideal, implication)")
    o.add_argument("--seed", type=_seed, default=0, help=f"random seed of the gradient ascent (0 to {_MAX_SEED})")
    o.add_argument("--device", default=None, help="gradient-ascent device: cpu, cuda or cuda:N (default: cuda if available)")
    o.add_argument("--threads", type=_threads, default=1, help=f"CPU threads for torch, 1 to {_MAX_THREADS}")
    o.add_argument("--json", action="store_true", help='print one JSON object {"best_value", "upper_bound" (with '
                                                       '--minimize: "lower_bound"), "gap", "x", "status", "seconds", '
                                                       '"sense"}')

    bd = sub.add_parser("bounds", help="sound bounds of every constraint of a VNNLIB's unsafe region")
    bd.add_argument("onnx", help="network file (.onnx)")
    bd.add_argument("vnnlib", help="property file (.vnnlib or .vnnlib.gz)")
    bd.add_argument("--method", choices=["ibp", "crown", "alpha-crown", "lp"], default="crown",
                    help="bound method (lp: alpha-CROWN, then LP bound tightening and the LP of each row in HiGHS)")
    bd.add_argument("--json", action="store_true", help="print one JSON object instead of a table")

    r = sub.add_parser("run", help="bulk run: a VNN-COMP instances CSV, or a dataset at several eps, into a "
                                   "resumable JSONL results file")
    r.add_argument("instances", nargs="?", default=None, help="instances CSV (rows onnx,vnnlib,timeout)")
    r.add_argument("--results", required=True, help="results file (JSONL, one record per item, appended as decided)")
    r.add_argument("--resume", action="store_true", help="continue an existing results file, skipping what it holds")
    r.add_argument("--workers", type=_positive_int, default=None,
                   help="worker processes (default: cores - 1, at least 1; at most the usable CPUs)")
    r.add_argument("--timeout-scale", type=_positive_float, default=1.0, help="multiply every CSV timeout")
    r.add_argument("--engine", choices=["hybrid", "items"], default="hybrid",
                   help="hybrid (default): bounds and attacks in this process over groups of items, input splitting "
                        "and MILPs in the workers; items: each item whole in a worker")
    r.add_argument("--device", default="cpu",
                   help="device of the batch stages (bounds, attack): cpu, cuda or cuda:N (default cpu)")
    r.add_argument("--model", default=None, help="dataset mode: the network (.onnx)")
    r.add_argument("--data", default=None, help="dataset mode: CSV of `label, features...` rows, or .npz with x, y")
    r.add_argument("--eps", type=_nonneg_float, nargs="+", default=None, help="dataset mode: L-inf radii")
    r.add_argument("--norm", choices=["linf"], default="linf", help="dataset mode: the perturbation norm")
    r.add_argument("--limit", type=_positive_int, default=None, help="dataset mode: the first N samples only")
    r.add_argument("--timeout", type=_positive_float, default=30.0, help="dataset mode: seconds per item")
    r.add_argument("--scale", type=_positive_float, default=None,
                   help="dataset mode: divide the features by this (255 for 0..255 pixels)")
    r.add_argument("--clip", type=float, nargs=2, default=(0.0, 1.0), metavar=("LO", "HI"),
                   help="dataset mode: valid input range (default 0 1)")
    r.add_argument("--refine", "--milp-refine", dest="milp_refine", type=_refine_share, default=None,
                   metavar="SHARE",
                   help="as for verify: refine the intermediate bounds by per-neuron proofs (in a worker, one at a "
                        "time) in this share of each item's time left before activation splitting (0: off; the "
                        "default, auto, is 0.8 on networks with at most 1024 inputs and 2048 ReLUs in items of 60 s "
                        "or more)")
    r.add_argument("--refine-method", choices=("split", "milp"), default=None,
                   help="as for verify: the refinement's per-neuron proofs, activation splitting or MILP")

    ra = sub.add_parser("radius", help="certified robustness radii (L-inf, L1, L2) of a dataset, into a resumable JSONL file")
    ra.add_argument("--model", required=True, help="the network (.onnx)")
    ra.add_argument("--data", required=True, help="CSV of `label, features...` rows, or .npz with x, y")
    ra.add_argument("--results", required=True, help="results file (JSONL, one record per sample)")
    ra.add_argument("--norm", choices=["linf", "l1", "l2"], default="linf",
                    help="the perturbation norm (l1: attack and minimum-distortion MILP, no verifier bisection; "
                         "l2: attack and bound bisection, a bracket)")
    ra.add_argument("--eps-max", type=_positive_float, default=0.5, help="largest radius searched (default 0.5)")
    ra.add_argument("--timeout", type=_positive_float, default=60.0, help="seconds per sample")
    ra.add_argument("--limit", type=_positive_int, default=None, help="the first N samples only")
    ra.add_argument("--scale", type=_positive_float, default=None, help="divide the features by this")
    ra.add_argument("--clip", type=float, nargs=2, default=(0.0, 1.0), metavar=("LO", "HI"),
                    help="valid input range (default 0 1)")
    ra.add_argument("--resume", action="store_true", help="continue an existing results file")
    ra.add_argument("--workers", type=_positive_int, default=None,
                    help="worker processes (default: cores - 1; at most the usable CPUs)")

    rp = sub.add_parser("report", help="summary table of a results file (and PNG plots with the plots extra)")
    rp.add_argument("results", help="results file (JSONL) written by `gpuopt run`")
    rp.add_argument("--plots", default=None, help="write PNG figures to this folder (needs matplotlib)")

    d = sub.add_parser("demo", help="run the bundled demo (no downloads): robustness of a small digits classifier")
    d.add_argument("--images", type=_positive_int, default=20, help="number of bundled test images to use")
    d.add_argument("--timeout", type=_positive_float, default=30.0, help="seconds per item")
    return p


def _formulation(text: str) -> str:
    from .milp.encode import Formulation

    try:
        Formulation.parse(text)
    except InvalidInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _cuts(text: str) -> str:
    from .milp.cuts import cut_kinds

    try:
        cut_kinds(text)
    except InvalidInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _cmd_run(args) -> int:
    from .engine.store import ResultStore
    from .runs import dataset_items, format_summary, load_dataset, read_instances, run_description, run_items, summarize

    from .verify import VerifyConfig

    config = VerifyConfig(device=args.device, milp_refine_share=args.milp_refine,
                          **({} if args.refine_method is None else {"refine_method": args.refine_method}))
    dataset_mode = args.model is not None or args.data is not None or args.eps is not None
    if dataset_mode:
        if args.instances is not None:
            raise InvalidInputError("give either an instances CSV or --model/--data/--eps, not both")
        missing = [o for o, v in (("--model", args.model), ("--data", args.data), ("--eps", args.eps)) if v is None]
        if missing:
            raise InvalidInputError(f"dataset mode needs {', '.join(missing)}")
        if not args.clip[0] <= args.clip[1]:
            raise InvalidInputError(f"--clip {args.clip[0]:g} {args.clip[1]:g}: the lower end exceeds the upper end")
        from .io.onnx import from_onnx

        require_file(args.model, "network")
        net = from_onnx(args.model)
        x, y = load_dataset(args.data, scale=args.scale)
        items = dataset_items(net, x, y, args.eps, timeout=args.timeout, clip=tuple(args.clip),
                              limit=args.limit, model_ref=str(Path(args.model).resolve()), config=config)
        run = run_description("dataset", net, x, y, tuple(args.clip))
    else:
        if args.instances is None:
            raise InvalidInputError("give an instances CSV, or --model, --data and --eps")
        items = read_instances(args.instances, timeout_scale=args.timeout_scale, config=config)
        run = None  # the keys name the files
    import torch

    torch.set_num_threads(1)  # the main process only orchestrates; the workers do the work
    with ResultStore(args.results, resume=args.resume, run=run) as store:
        for _ in run_items(items, store, workers=_pool_workers(args.workers), progress=True, engine=args.engine):
            pass
        print(format_summary(summarize(_requested(store, items))))
    print(f"results: {args.results}")
    return 0


def _requested(store, items) -> list[dict]:
    """The records of ``items`` in ``store`` (a resumed file may hold others, e.g. from a run with a
    larger ``--limit``; the summary is of this request, and says how many it leaves out)."""
    keys = {it.key for it in items}
    records = store.records()
    mine = [r for r in records if r["key"] in keys]
    if len(mine) < len(records):
        print(f"(the summary leaves out {len(records) - len(mine)} records of the results file outside this "
              "request; `gpuopt report` summarises them all)")
    return mine


def _pool_workers(requested: int | None) -> int | None:
    """``--workers``, at most the CPUs this process may use: more workers than cores share them,
    and each item's time limit (wall-clock) then buys only a fraction of a core."""
    cpus = _usable_cpus()
    if requested is not None and requested > cpus:
        print(f"gpuopt: warning: --workers {requested} exceeds the {cpus} usable CPUs; using {cpus}",
              file=sys.stderr)
        return cpus
    return requested


def _cmd_radius(args) -> int:
    from .engine.store import ResultStore
    from .io.onnx import from_onnx
    from .runs import load_dataset, radius_items, run_description, run_items, summarize_radii

    require_file(args.model, "network")
    if not args.clip[0] <= args.clip[1]:
        raise InvalidInputError(f"--clip {args.clip[0]:g} {args.clip[1]:g}: the lower end exceeds the upper end")
    net = from_onnx(args.model)
    x, y = load_dataset(args.data, scale=args.scale)
    items = radius_items(net, x, y, eps_max=args.eps_max, timeout=args.timeout, clip=tuple(args.clip), norm=args.norm,
                         limit=args.limit, model_ref=str(Path(args.model).resolve()))
    run = run_description("radius", net, x, y, tuple(args.clip), eps_max=args.eps_max)
    import torch

    torch.set_num_threads(1)
    with ResultStore(args.results, resume=args.resume, run=run) as store:
        for _ in run_items(items, store, workers=_pool_workers(args.workers), progress=True, engine="items"):
            pass
        print(summarize_radii(_requested(store, items)))
    return 0


def _cmd_report(args) -> int:
    from .engine.store import read_records
    from .runs import format_summary, summarize, summarize_radii

    require_file(args.results, "results")
    records = list(read_records(args.results))
    if not records:
        raise InvalidInputError(f"no records in {args.results}")
    if all(str(r.get("key", "")).startswith(("radius:", "radius-")) for r in records):  # by `gpuopt radius`
        print(summarize_radii(records))
        if args.plots:
            from .plots import plot_radii

            for path in plot_radii(records, args.plots):
                print(f"wrote {path}")
        return 0
    summary = summarize(records)
    print(format_summary(summary))
    if args.plots:
        from .plots import plot_summary

        for path in plot_summary(records, args.plots):
            print(f"wrote {path}")
    return 0


def _cmd_verify(args, start_time: float) -> int:
    from dataclasses import replace

    from .bab import SplitConfig
    from .milp.highs import SolverConfig
    from .verify import VerifyConfig, verify_instance

    import torch

    # the CLI owns its process: by default the CPUs other jobs leave free (see gpuopt.launch)
    threads = args.threads or free_cpus()
    torch.set_num_threads(threads)
    logging.getLogger("gpuopt").debug("torch threads: %d (%d usable CPUs)", threads, _usable_cpus())
    attack = replace(VerifyConfig().attack, seed=args.seed)  # the pipeline's default, new seed
    if args.restarts is not None:
        attack = replace(attack, restarts=args.restarts)
    if args.steps is not None:
        attack = replace(attack, steps=args.steps)
    # HiGHS's random_seed option only takes [0, 2**31 - 1] (and keeps its old value otherwise)
    split = SplitConfig() if args.split_milp is None else SplitConfig(milp_unstable=args.split_milp)
    bab = {"auto": dict(split=split), "input": dict(use_relu_split=False, split=replace(split, max_input_dim=2**62)),
           "relu": dict(use_input_split=False), "off": dict(use_input_split=False, use_relu_split=False)}[args.bab]
    relu = VerifyConfig().relu_split
    if args.handoff is not None:
        relu = replace(relu, handoff=args.handoff)
    if args.branching is not None:
        relu = replace(relu, branching=args.branching)
    if args.relu_refine is not None:
        relu = replace(relu, refine={"auto": "auto", "on": True, "off": False}[args.relu_refine])
    if args.lp_dives is not None:
        relu = replace(relu, lp_rescue=args.lp_dives == "on")
    if args.stall_retry is not None:
        relu = replace(relu, stall_retry=args.stall_retry == "on")
    if args.stall_tighten is not None:
        relu = replace(relu, stall_tighten=args.stall_tighten == "on")
    if args.step_dtype is not None:
        relu = replace(relu, step_dtype=args.step_dtype)
    if relu != VerifyConfig().relu_split:
        bab["relu_split"] = relu
    config = VerifyConfig(attack=attack, solver=SolverConfig(seed=args.seed % 2**31, root_lp=args.milp_root_lp), device=args.device,
                          formulation=args.formulation, cuts=args.cut_kinds or args.cuts, use_walk=not args.no_walk, use_lp=not args.no_lp,
                          milp_refine_share=args.milp_refine, **bab,
                          milp_beside={"auto": None, "on": True, "off": False}[args.milp_beside],
                          **({} if args.refine_method is None else {"refine_method": args.refine_method}),
                          **({} if args.milp_condition is None else {"milp_condition_share": args.milp_condition}))
    from .devices import warm_up
    from .engine.stages import attack_device

    if config.use_attack:
        warm_up(attack_device(config))  # CUDA's start-up overlaps loading and bounding
    verdict = verify_instance(args.onnx, args.vnnlib, timeout=args.timeout, config=config, start_time=start_time)
    detail = f"decided by {verdict.decided_by}" if verdict.decided_by else "undecided"
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in verdict.stage_seconds.items())
    print(f"# {detail} in {verdict.seconds:.2f}s ({stages}); {verdict.message}")
    return _answer(args, verdict)


def _answer(args, verdict) -> int:
    """Print the verdict, then write ``--out`` (printed first: a file that cannot be written
    after all still leaves the answer on standard output)."""
    from .io.vnnlib import write_counterexample

    print(verdict.status.value, flush=True)
    if args.out:
        try:
            write_counterexample(args.out, verdict.counterexample, verdict.output, verdict.status.value)
        except (OSError, InvalidInputError) as exc:
            text = exc.strerror if isinstance(exc, OSError) and exc.strerror else _one_line(exc)
            raise InvalidInputError(f"--out {args.out!r}: {text}") from None
    return 0


def _cmd_attack(args, start_time: float) -> int:
    from .attacks import AttackConfig
    from .verify import attack_instance

    import torch

    torch.set_num_threads(args.threads)
    attack = AttackConfig(seed=args.seed, **{k: getattr(args, k) for k in ("restarts", "steps")
                                             if getattr(args, k) is not None})
    from .devices import warm_up

    warm_up(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))  # overlaps loading
    verdict = attack_instance(args.onnx, args.vnnlib, timeout=args.timeout, attack=attack, device=args.device,
                              start_time=start_time)
    print(f"# {verdict.seconds:.2f}s; {verdict.message}")
    return _answer(args, verdict)


def _cmd_bounds(args) -> int:
    import json

    from .verify import bound_instance

    res = bound_instance(args.onnx, args.vnnlib, method=args.method)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"# {res['method']} bounds in {res['seconds']:.2f}s; rows lhs - rhs of each disjunct's lhs <= rhs")
    for k, rows in enumerate(res["disjuncts"]):
        for i, r in enumerate(rows):
            print(f"disjunct {k} row {i}: [{r['lower']:.6g}, {r['upper']:.6g}]")
    return 0


def _cmd_optimize(args, start_time: float) -> int:
    import json

    import torch

    from .optimize import optimize_instance

    torch.set_num_threads(args.threads)
    sense = "max" if args.maximize is not None else "min"
    res = optimize_instance(args.onnx, args.vnnlib, args.maximize if sense == "max" else args.minimize, sense=sense,
                            timeout=max(args.timeout - (time.monotonic() - start_time), 0.01),
                            formulation=args.formulation, seed=args.seed, device=args.device,
                            cuts=args.cut_kinds or args.cuts)
    word = "upper bound" if sense == "max" else "lower bound"
    if args.json:
        d = res.to_dict()
        out = {"best_value": d["best_value"], word.replace(" ", "_"): d["upper_bound"], "gap": d["gap"], "x": d["x"],
               "status": d["status"], "seconds": d["seconds"], "sense": sense}
        print(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}))
        return 0
    print(f"# {res.seconds:.2f}s; stages " + ", ".join(f"{k} {v:.2f}s" for k, v in res.stage_seconds.items()))
    print(f"best value {res.best_value:.10g}")
    print(f"{word} {res.upper_bound:.10g}")
    print(f"gap {res.gap:.6g}")
    print(res.status)
    return 0


def _check_args(args) -> None:
    """Checks of the options that argparse's per-argument types cannot do; before any work."""
    if args.command in ("verify", "run", "attack", "optimize"):
        if args.device is not None:
            _check_device(args.device)
    if args.command in ("verify", "attack"):
        if args.out:
            _check_out(args.out, (args.onnx, args.vnnlib))


def main(argv=None) -> int:
    """Runs the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    Run as a program (``argv`` None), ``--timeout`` counts from the start of the process
    (:func:`process_start_monotonic`), so it covers the interpreter's start-up and the imports;
    called with an explicit ``argv`` (from Python), it counts from the call.
    """
    start_time = process_start_monotonic() if argv is None else time.monotonic()
    return _run(argv, start_time)


def entry() -> None:
    """The ``gpuopt`` program (console script and ``python -m gpuopt``): :func:`main`, then exit at
    once. The verdict is printed and the result file closed by then; interpreter teardown with torch
    loaded takes about 0.6 s, and a HiGHS run abandoned at the deadline (its presolve ignores time
    limits) would be waited for at exit, so both are skipped."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run(argv, start_time: float) -> int:
    args = _parser().parse_args(argv)
    keep_freed_memory()  # the command line owns its process (see gpuopt.host_memory)
    if args.verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger = logging.getLogger("gpuopt")
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        _check_args(args)
        if args.command == "verify":
            return _cmd_verify(args, start_time)
        if args.command == "attack":
            return _cmd_attack(args, start_time)
        if args.command == "bounds":
            return _cmd_bounds(args)
        if args.command == "optimize":
            return _cmd_optimize(args, start_time)
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "report":
            return _cmd_report(args)
        if args.command == "radius":
            return _cmd_radius(args)
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(n_images=args.images, timeout=args.timeout)
    except KeyboardInterrupt:  # Ctrl-C: what a bulk run recorded stays in its results file
        print("gpuopt: interrupted", file=sys.stderr)
        return 130
    except (InvalidInputError, UnsupportedLayerError, MissingDependencyError, NotPiecewiseLinearError) as exc:
        print(f"gpuopt: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except GpuoptError as exc:
        print(f"gpuopt: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except (OSError, UnicodeDecodeError) as exc:  # an unreadable input file that slipped through
        if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
            text = f"{exc.filename}: {exc.strerror}"
        else:
            text = _one_line(exc)
        print(f"gpuopt: error: {text}", file=sys.stderr)
        return 2
    except Exception as exc:  # an internal failure: one line, the traceback only with -v
        if args.verbose:
            logging.getLogger("gpuopt").exception("internal error")
        print(f"gpuopt: internal error: {type(exc).__name__}: {_one_line(exc)} (run with -v for the traceback)",
              file=sys.stderr)
        return 1
    return 1  # pragma: no cover - argparse enforces a command


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


if __name__ == "__main__":  # pragma: no cover
    entry()
