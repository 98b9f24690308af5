"""Two checkouts of gpuopt side by side on the same VNN-COMP instances, interleaved.

For each instance, ``python -m gpuopt verify`` runs once from this checkout and once from
``--other`` (another checkout's root, e.g. a ``git worktree`` of an earlier commit), alternating
which goes first, so that both see the same machine load. Prints per-suite verdict counts, the
instances whose verdicts differ, wrong answers against the reference labels, and the time ratio;
writes every run to JSONL as it is decided (``--resume`` continues).

    git worktree add /tmp/base HEAD~1
    python benchmarks/side_by_side.py --other /tmp/base [--suites mnist_fc acasxu] [--max-timeout S]
    python benchmarks/side_by_side.py --other-args=--no-lp --suites mnist_fc_256x4   # one option on/off
    python benchmarks/side_by_side.py --other-args="--handoff 0" --suites mnist_fc_all --only "256x[46].*0.05"
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vnncomp import (BENCH, REPO, SUITES, FIRST_PATH, instances, open_results, reference_labels,  # noqa: E402
                     reference_side)


def run(root: Path, onnx: Path, vnnlib: Path, timeout: float, extra: str = "") -> tuple[str, float]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "gpuopt", "verify", str(onnx), str(vnnlib), "--timeout",
                           str(timeout), *extra.split()], cwd=root, capture_output=True, text=True)
    wall = time.monotonic() - t0
    lines = proc.stdout.strip().splitlines()
    return (lines[-1] if proc.returncode == 0 and lines else f"error({proc.returncode})"), wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--other", default=str(REPO), help="root of the other checkout (default: this one, to compare "
                    "options with --this-args/--other-args)")
    ap.add_argument("--this-args", default="", help="extra `gpuopt verify` options for this side")
    ap.add_argument("--other-args", default="", help="extra `gpuopt verify` options for the other side, e.g. '--no-lp'")
    ap.add_argument("--suites", nargs="+", default=FIRST_PATH, choices=list(SUITES))
    ap.add_argument("--max-timeout", type=float, default=None)
    ap.add_argument("--only", default=None, help="run only the instances whose name matches this regular expression")
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "side_by_side.jsonl"))
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    if not BENCH.is_dir():
        print(f"{BENCH} not found: nothing to run", file=sys.stderr)
        return 1
    other = Path(args.other).resolve()
    labels = reference_labels()
    out = Path(args.results)
    done = open_results(out, args.resume)
    with open(out, "a") as f:
        for n, (suite, onnx, vnnlib, timeout) in enumerate(instances(args.suites)):
            name = f"{onnx.stem}-{vnnlib.stem}"
            if (suite, name) in done or (args.only is not None and not re.search(args.only, name)):
                continue
            if args.max_timeout is not None:
                timeout = min(timeout, args.max_timeout)
            order = [("this", REPO, args.this_args), ("other", other, args.other_args)]
            if n % 2:
                order.reverse()
            ref = reference_side(labels.get((SUITES[suite][2], name), "?"))
            rec = {"suite": suite, "instance": name, "reference": ref, "timeout": timeout}
            for who, root, extra in order:
                rec[who], rec[f"{who}_s"] = run(root, onnx, vnnlib, timeout, extra)
            f.write(json.dumps(rec) + "\n")
            f.flush()
            done[(suite, name)] = rec
            print(f"{suite:9s} {name:45s} this {rec['this']:8s} {rec['this_s']:7.2f}s   other {rec['other']:8s} "
                  f"{rec['other_s']:7.2f}s   ref {rec['reference']}", flush=True)
    recs = list(done.values())
    print()
    print("suite       n  | this: sat unsat other wrong | other: sat unsat other wrong | differ | median s this/other")
    for suite in args.suites:
        rs = [r for r in recs if r["suite"] == suite]
        if not rs:
            continue
        row = [suite, str(len(rs))]
        for who in ("this", "other"):
            c = [r[who] for r in rs]
            wrong = sum(r[who] in ("sat", "unsat") and r["reference"] in ("sat", "unsat") and r[who] != r["reference"]
                        for r in rs)
            row += [str(c.count("sat")), str(c.count("unsat")), str(len(c) - c.count("sat") - c.count("unsat")),
                    str(wrong)]
        differ = [r["instance"] for r in rs if r["this"] != r["other"]]
        med_this = statistics.median(r["this_s"] for r in rs)
        med_other = statistics.median(r["other_s"] for r in rs)
        print(f"{row[0]:10s} {row[1]:>3s}  | {row[2]:>9s} {row[3]:>5s} {row[4]:>5s} {row[5]:>5s} | {row[6]:>10s} "
              f"{row[7]:>5s} {row[8]:>5s} {row[9]:>5s} | {len(differ):6d} | {med_this:.2f}/{med_other:.2f} "
              f"= {med_this / med_other:.2f}")
        for name in differ:
            r = next(r for r in rs if r["instance"] == name)
            print(f"   differs: {name}: this {r['this']} ({r['this_s']:.1f}s), other {r['other']} "
                  f"({r['other_s']:.1f}s), reference {r['reference']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
