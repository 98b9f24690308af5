"""Concurrency of bulk runs: ``gpuopt run`` (a pool of W workers) against one process per instance.

On the 30 VNN-COMP 2022 mnist_fc instances of ``mnist-net_256x2``, in one invocation:

(a) ``python -m gpuopt run CSV --results R.jsonl --workers W``: all instances through the
    worker pool (items side by side, each worker single-threaded);
(b) the same instances one after another, each ``python -m gpuopt verify ONNX VNNLIB --timeout
    T`` in a fresh process (as VNN-COMP runs a tool).

Each instance's timeout is the official one from instances.csv, capped at ``--timeout-cap``.
Both are timed from spawn to exit (Python and torch start-up included). Prints a per-instance
table (verdicts, seconds, agreement), the wall time of each mode, items/s and the speed-up, and
writes JSON.

    python benchmarks/bulk_run.py [--workers 2] [--timeout-cap 60] [--limit N]
                                  [--out benchmarks/results/bulk_run.json]

Timeouts differ slightly between the modes: ``gpuopt run`` counts an item's timeout from the
moment a worker starts it (a worker is killed ``timeout + 5`` s in), ``gpuopt verify`` from the
start of its process. Verdicts "agree" when equal; a sat against an unsat is a ``CONFLICT`` (a
soundness problem: the exit code is then 1); a decided against an undecided verdict is
``differs`` (expected near the time limit). Reads ../shared/benchmarks (relative to the
repository); skips with a message when it is absent. This script imports no gpuopt itself.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO.parent / "shared" / "benchmarks"
CSV_PATH = BENCH / "vnncomp2022" / "mnist_fc" / "instances.csv"
NET = "mnist-net_256x2"
DECIDED = ("sat", "unsat")


def load_instances(limit: int | None, cap: float) -> list[dict]:
    """Rows of the mnist_fc CSV on the 256x2 network, paths resolved relative to the CSV."""
    rows = []
    with open(CSV_PATH, newline="") as fh:
        for row in csv.reader(fh):
            row = [c.strip() for c in row]
            if len(row) < 3 or NET not in row[0]:
                continue
            onnx, vnnlib = (CSV_PATH.parent / row[0]).resolve(), (CSV_PATH.parent / row[1]).resolve()
            rows.append({"name": f"{onnx.stem}/{Path(row[1]).name.removesuffix('.vnnlib')}",
                         "onnx": str(onnx), "vnnlib": str(vnnlib),
                         "timeout": min(float(row[2]), cap), "official_timeout": float(row[2])})
    return rows[:limit] if limit is not None else rows


def run_bulk(rows: list[dict], workers: int, tmp: Path) -> dict:
    """(a): one ``gpuopt run`` over a CSV of the rows (absolute paths, capped timeouts)."""
    csv_path, results = tmp / "instances.csv", tmp / "results.jsonl"
    with open(csv_path, "w", newline="") as fh:
        csv.writer(fh).writerows([r["onnx"], r["vnnlib"], repr(r["timeout"])] for r in rows)
    cmd = [sys.executable, "-m", "gpuopt", "run", str(csv_path), "--results", str(results),
           "--workers", str(workers)]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - t0
    by_key = {}
    if results.exists():
        for line in results.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            by_key[(rec.get("onnx"), rec.get("vnnlib"))] = rec
    per = []
    for r in rows:
        rec = by_key.get((r["onnx"], r["vnnlib"]), {})
        per.append({"status": rec.get("status", "missing"), "seconds": rec.get("seconds"),
                    "decided_by": rec.get("decided_by"), "message": rec.get("message")})
    return {"wall": wall, "exit_code": proc.returncode, "summary": proc.stdout.strip(),
            "stderr_tail": proc.stderr.strip()[-500:] if proc.returncode else "", "items": per}


def run_sequential(rows: list[dict]) -> dict:
    """(b): one ``gpuopt verify`` process per row, one after another."""
    per, t_all = [], time.monotonic()
    for k, r in enumerate(rows):
        cmd = [sys.executable, "-m", "gpuopt", "verify", r["onnx"], r["vnnlib"], "--timeout", repr(r["timeout"])]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        wall = time.monotonic() - t0
        lines = proc.stdout.strip().splitlines()
        verdict = lines[-1].strip() if proc.returncode == 0 and lines else "error"
        per.append({"status": verdict, "seconds": wall, "exit_code": proc.returncode,
                    "stderr_tail": proc.stderr.strip()[-300:] if proc.returncode else ""})
        print(f"  sequential {k + 1}/{len(rows)}: {r['name']} {verdict} {wall:.2f}s", file=sys.stderr, flush=True)
    return {"wall": time.monotonic() - t_all, "items": per}


def agreement(a: str, b: str) -> str:
    if a == b or (a in ("timeout", "unknown") and b in ("timeout", "unknown")):
        return "agree"
    if a in DECIDED and b in DECIDED:
        return "CONFLICT"
    return "differs"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="gpuopt run --workers (default 2)")
    ap.add_argument("--timeout-cap", type=float, default=60.0, help="cap each instance's timeout (s, default 60)")
    ap.add_argument("--limit", type=int, default=None, help="the first N instances only")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "bulk_run.json"), help="JSON output")
    args = ap.parse_args(argv)
    if args.workers < 1 or args.timeout_cap <= 0 or (args.limit is not None and args.limit < 1):
        ap.error("--workers and --limit must be >= 1, --timeout-cap > 0")
    if not CSV_PATH.is_file():
        print(f"skipped: benchmark data not found at {CSV_PATH} (needs ../shared/benchmarks)", file=sys.stderr)
        return 0
    rows = load_instances(args.limit, args.timeout_cap)
    if not rows:
        print(f"skipped: no {NET} instances in {CSV_PATH}", file=sys.stderr)
        return 0
    print(f"{len(rows)} {NET} instances, timeouts capped at {args.timeout_cap:g}s "
          f"(sum {sum(r['timeout'] for r in rows):g}s); {os.cpu_count()} CPUs", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        print(f"(a) gpuopt run --workers {args.workers} ...", file=sys.stderr, flush=True)
        bulk = run_bulk(rows, args.workers, Path(tmp))
    if bulk["exit_code"] != 0:
        print(f"gpuopt run exited {bulk['exit_code']}: {bulk['stderr_tail']}", file=sys.stderr)
    print("(b) one gpuopt verify process per instance ...", file=sys.stderr, flush=True)
    seq = run_sequential(rows)

    table = []
    for r, a, b in zip(rows, bulk["items"], seq["items"]):
        table.append({**r, "bulk": a, "sequential": b, "agreement": agreement(a["status"], b["status"])})
    w = max(len("instance"), *(len(t["name"]) for t in table))
    print(f"\n{'instance':{w}s} {'T':>5s} | {'bulk':>8s} {'s':>7s} | {'sequential':>10s} {'s':>7s} | agreement")
    for t in table:
        a, b = t["bulk"], t["sequential"]
        a_s = f"{a['seconds']:.2f}" if isinstance(a["seconds"], (int, float)) else "-"
        print(f"{t['name']:{w}s} {t['timeout']:5.0f} | {a['status']:>8s} {a_s:>7s} | {b['status']:>10s} "
              f"{b['seconds']:7.2f} | {t['agreement']}")

    n = len(rows)
    speedup = seq["wall"] / bulk["wall"] if bulk["wall"] > 0 else float("nan")
    counts = {k: sum(t["agreement"] == k for t in table) for k in ("agree", "differs", "CONFLICT")}
    print(f"\n(a) gpuopt run, {args.workers} workers: {bulk['wall']:8.2f} s wall, {n / bulk['wall']:.3f} items/s")
    print(f"(b) sequential processes:  {seq['wall']:8.2f} s wall, {n / seq['wall']:.3f} items/s")
    print(f"speed-up of (a) over (b): {speedup:.2f}x; verdicts: {counts['agree']} agree, "
          f"{counts['differs']} differ (decided vs undecided), {counts['CONFLICT']} conflict (sat vs unsat)")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "instances": n, "workers": args.workers, "timeout_cap": args.timeout_cap, "cpus": os.cpu_count(),
        "bulk": {"wall": bulk["wall"], "items_per_s": n / bulk["wall"], "exit_code": bulk["exit_code"],
                 "summary": bulk["summary"]},
        "sequential": {"wall": seq["wall"], "items_per_s": n / seq["wall"]},
        "speedup": speedup, "agreement": counts, "per_instance": table,
    }, indent=1))
    print(f"wrote {out}")
    return 1 if counts["CONFLICT"] or bulk["exit_code"] != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
