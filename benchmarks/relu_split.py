"""Activation splitting alone: time to decision, domains bounded per second, and the worst open bound.

For each instance of the chosen suites (default: VNN-COMP 2022 mnist_fc 256x4 and 256x6), the
root pre-activation bounds come from CROWN and alpha-CROWN on every layer (20 steps, not timed),
then :func:`gpuopt.relu_split.relu_split` runs with the default configuration for ``--timeout``
seconds on the proof rows of every disjunct. No attack, MILP or refinement runs, so the numbers
are those of the splitting itself. Each result is appended to ``--out`` as it is decided (JSON
lines, with the git revision of the ``gpuopt`` imported), and a ``sat``/``unsat`` against the
reference label is flagged wrong.

An A/B of two revisions: run it once per revision (``PYTHONPATH=<worktree of REV>`` for the
other one), then ``--compare A.jsonl B.jsonl`` prints them side by side: decided counts, time
on the instances both decide, and the ratio of domains per second.

    python benchmarks/relu_split.py [--suites mnist_fc_256x4 ...] [--timeout 60] [--limit N] [--out FILE]
                                    [--device cuda] [--config KEY=VALUE ...] [--stops on|off]
    python benchmarks/relu_split.py --compare A.jsonl B.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from vnncomp import BENCH, SUITES, instance_name, instances, reference_labels, reference_side  # noqa: E402


def revision() -> str:
    """The git revision of the ``gpuopt`` package imported (``+dirty`` with uncommitted changes)."""
    import gpuopt

    root = Path(gpuopt.__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "gpuopt"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def split_config(pairs) -> "object":
    """A :class:`~gpuopt.relu_split.ReluSplitConfig` with ``KEY=VALUE`` overrides (values parsed as
    Python literals: ``steps=20``, ``refine=False``, ``branching='fsb'``)."""
    import ast
    from dataclasses import fields, replace

    from gpuopt.relu_split import ReluSplitConfig

    config = ReluSplitConfig()
    names = {f.name for f in fields(ReluSplitConfig)}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or key not in names:
            raise SystemExit(f"--config expects KEY=VALUE with KEY one of {', '.join(sorted(names))}, got {pair!r}")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass  # a bare word: a string
        config = replace(config, **{key: value})
    return config


def run_one(onnx: Path, vnnlib: Path, timeout: float, config=None, device: str = "cpu") -> dict:
    import numpy as np
    import torch

    from gpuopt.bounds import ibp
    from gpuopt.bounds.crown import alpha_crown_bounds
    from gpuopt.bounds.forward import intermediate_bounds
    from gpuopt.engine.stages import proof_problem
    from gpuopt.relu_split import relu_split
    from gpuopt.verify import load_instance

    problems = load_instance(onnx, vnnlib)
    status, domains, open_domains, worst, seconds = "unsat", 0, 0, math.inf, 0.0
    for p in problems:  # an instance is unsat when every problem is; sat at the first found
        lo = torch.tensor(np.asarray(p.region.lower), dtype=torch.float64, device=device)[None]
        hi = torch.tensor(np.asarray(p.region.upper), dtype=torch.float64, device=device)[None]
        bounds = alpha_crown_bounds(p.network, lo, hi, intermediate_bounds(p.network, lo, hi), steps=20)
        out = ibp(p.network, lo, hi).output
        y_abs = torch.maximum(out[0].abs(), out[1].abs())[0].cpu().numpy()
        proof = proof_problem(p, y_abs)
        disjuncts = [(A, b, strict) for (A, b), strict in zip(proof.spec.disjuncts, p.spec.strict)]
        start = time.monotonic()
        left = timeout - seconds
        res = relu_split(p.network, lo[0], hi[0], disjuncts, bounds, problem=p, deadline=start + left,
                         **({} if config is None else {"config": config}))
        seconds += time.monotonic() - start
        domains += res.domains
        open_domains += res.open_domains
        worst = min(worst, res.worst_bound)
        if res.status == "sat":
            status = "sat"
            break
        if res.status != "unsat":
            status = res.status
            break
    return {"status": status, "seconds": seconds, "domains": domains, "open_domains": open_domains,
            "worst_bound": worst, "domains_per_s": domains / max(seconds, 1e-9)}


def compare(a_path: Path, b_path: Path) -> None:
    def load(path):
        return {r["instance"]: r for r in map(json.loads, Path(path).read_text().split("\n")[:-1])}

    A, B = load(a_path), load(b_path)
    ra, rb = next(iter(A.values()))["rev"], next(iter(B.values()))["rev"]
    common = [k for k in A if k in B]
    print(f"| instance | {ra} | {rb} |\n|---|---|---|")
    for k in common:
        cell = []
        for r in (A[k], B[k]):
            s = f"{r['status']} {r['seconds']:.1f} s, {r['domains']} domains"
            cell.append(s + (f", worst {r['worst_bound']:.4g}" if r["status"] not in ("sat", "unsat") else ""))
        print(f"| {k} | {cell[0]} | {cell[1]} |")
    decided = [sum(r[k]["status"] in ("sat", "unsat") for k in common) for r in (A, B)]
    both = [k for k in common if A[k]["status"] in ("sat", "unsat") and B[k]["status"] in ("sat", "unsat")]
    ratio = [B[k]["domains_per_s"] / A[k]["domains_per_s"] for k in common if A[k]["domains"] > 4]
    print(f"\n{len(common)} instances; decided: {ra} {decided[0]}, {rb} {decided[1]}; "
          f"wrong: {sum(A[k]['wrong'] for k in common)}, {sum(B[k]['wrong'] for k in common)}")
    if both:
        print(f"on the {len(both)} both decide: {sum(A[k]['seconds'] for k in both):.1f} s against "
              f"{sum(B[k]['seconds'] for k in both):.1f} s in total")
    if ratio:
        print(f"domains per second, {rb} / {ra}: median {statistics.median(ratio):.2f}x "
              f"(range {min(ratio):.2f}x-{max(ratio):.2f}x, {len(ratio)} instances with more than 4 domains)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suites", nargs="+", default=["mnist_fc_256x4", "mnist_fc_256x6"], choices=sorted(SUITES))
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds of splitting per instance")
    ap.add_argument("--limit", type=int, default=None, help="at most this many instances per suite")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "relu_split.jsonl"))
    ap.add_argument("--resume", action="store_true", help="skip the instances already in --out")
    ap.add_argument("--match", nargs="+", metavar="TEXT",
                    help="only the instances whose name contains one of these")
    ap.add_argument("--config", nargs="+", metavar="KEY=VALUE",
                    help="ReluSplitConfig overrides, e.g. steps=20 refine=False")
    ap.add_argument("--device", default="cpu", help="torch device of the search, e.g. cuda (default cpu)")
    ap.add_argument("--stops", choices=("on", "off"), default="on",
                    help="the domain bounds' stops at the hidden layers' boxes (gpuopt.relu_split.STOP_BOXES)")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"), help="print two result files side by side")
    args = ap.parse_args(argv)
    if args.compare:
        compare(*args.compare)
        return 0
    if not BENCH.is_dir():
        print(f"benchmark folder not found: {BENCH} (expected ../shared/benchmarks beside the repo)", file=sys.stderr)
        return 1
    import torch

    torch.set_num_threads(1)
    import gpuopt.relu_split

    gpuopt.relu_split.STOP_BOXES = args.stops == "on"
    labels = reference_labels()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if args.resume and out.exists():
        done = {json.loads(line)["instance"] for line in out.read_text().split("\n") if line.strip()}
    rev = revision()
    config = split_config(args.config)
    overrides = {} if not args.config else dict(p.partition("=")[::2] for p in args.config)
    counts: dict = {}
    with open(out, "a" if args.resume else "w") as fh:
        for suite, onnx, vnnlib, _ in instances(args.suites):
            name = instance_name(onnx, vnnlib)
            if args.match and not any(t in name for t in args.match):
                continue
            if args.limit is not None and counts.get(suite, 0) >= args.limit:
                continue
            counts[suite] = counts.get(suite, 0) + 1
            if name in done:
                continue
            ref = reference_side(labels.get((SUITES[suite][2], name), "unknown"))
            rec = {"suite": suite, "instance": name, "rev": rev, "reference": ref, "config": overrides,
                   "stops": args.stops,
                   "device": args.device, **run_one(onnx, vnnlib, args.timeout, config, args.device)}
            rec["wrong"] = rec["status"] in ("sat", "unsat") and ref in ("sat", "unsat") and rec["status"] != ref
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            print(f"{name}: {rec['status']} in {rec['seconds']:.1f} s, {rec['domains']} domains "
                  f"({rec['domains_per_s']:.0f}/s), worst open bound {rec['worst_bound']:.4g}"
                  + (" WRONG" if rec["wrong"] else ""), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
