"""Concurrency of bulk runs: ``gpuopt run`` (a pool of W workers) against one process per instance.

On the 30 VNN-COMP 2022 mnist_fc instances of ``mnist-net_256x2``, in one invocation:

(a) ``python -m gpuopt run CSV --results R.jsonl --workers W --engine E`` for each engine E in
    ``--engines`` (default both): ``hybrid`` (bounds and attacks in the main process over groups
    of items, input splitting and MILPs in the W workers) and ``items`` (each item whole in a
    worker, items side by side);
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


def run_bulk(rows: list[dict], workers: int, tmp: Path, engine: str) -> dict:
    """(a): one ``gpuopt run`` over a CSV of the rows (absolute paths, capped timeouts)."""
    csv_path, results = tmp / "instances.csv", tmp / f"results_{engine}.jsonl"
    with open(csv_path, "w", newline="") as fh:
        csv.writer(fh).writerows([r["onnx"], r["vnnlib"], repr(r["timeout"])] for r in rows)
    cmd = [sys.executable, "-m", "gpuopt", "run", str(csv_path), "--results", str(results),
           "--workers", str(workers), "--engine", engine]
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
                    "decided_by": rec.get("decided_by"), "message": rec.get("message"),
                    "events": rec.get("events", [])})
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


def overlaps(items: list[dict]) -> dict:
    """How often a batch stage (bounds, attack) of one item ran while a task stage (milp,
    input_split) of another item ran, from the records' stage events (wall-clock stamps)."""
    batch = [(i, e) for i, it in enumerate(items) for e in it["events"] if e["stage"] in ("bounds", "attack")]
    tasks = [(i, e) for i, it in enumerate(items) for e in it["events"] if e["stage"] in ("milp", "input_split")]
    pairs = [(i, j) for i, a in batch for j, b in tasks
             if i != j and a["start"] < b["end"] and b["start"] < a["end"]]
    overlap_s = sum(min(a["end"], b["end"]) - max(a["start"], b["start"]) for i, a in batch for j, b in tasks
                    if i != j and a["start"] < b["end"] and b["start"] < a["end"])
    return {"pairs": len(pairs), "items_with_batch_work_during_other_tasks": len({i for i, _ in pairs}),
            "overlap_seconds": overlap_s}


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
    ap.add_argument("--engines", nargs="+", default=["hybrid", "items"], choices=["hybrid", "items"],
                    help="gpuopt run engines to time (default both)")
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

    bulks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in args.engines:
            print(f"(a) gpuopt run --workers {args.workers} --engine {engine} ...", file=sys.stderr, flush=True)
            bulks[engine] = run_bulk(rows, args.workers, Path(tmp), engine)
            if bulks[engine]["exit_code"] != 0:
                print(f"gpuopt run exited {bulks[engine]['exit_code']}: {bulks[engine]['stderr_tail']}", file=sys.stderr)
    print("(b) one gpuopt verify process per instance ...", file=sys.stderr, flush=True)
    seq = run_sequential(rows)

    table = []
    for k, (r, b) in enumerate(zip(rows, seq["items"])):
        per = {e: bulks[e]["items"][k] for e in args.engines}
        table.append({**r, "bulk": per, "sequential": b,
                      "agreement": {e: agreement(per[e]["status"], b["status"]) for e in args.engines}})
    w = max(len("instance"), *(len(t["name"]) for t in table))
    head = " | ".join(f"{e:>8s} {'s':>7s}" for e in args.engines)
    print(f"\n{'instance':{w}s} {'T':>5s} | {head} | {'sequential':>10s} {'s':>7s} | agreement")
    for t in table:
        cells = []
        for e in args.engines:
            a = t["bulk"][e]
            a_s = f"{a['seconds']:.2f}" if isinstance(a["seconds"], (int, float)) else "-"
            cells.append(f"{a['status']:>8s} {a_s:>7s}")
        b = t["sequential"]
        agree = ", ".join(f"{e}: {t['agreement'][e]}" for e in args.engines)
        print(f"{t['name']:{w}s} {t['timeout']:5.0f} | {' | '.join(cells)} | {b['status']:>10s} "
              f"{b['seconds']:7.2f} | {agree}")

    n = len(rows)
    summary = {}
    for e in args.engines:
        bulk = bulks[e]
        counts = {k: sum(t["agreement"][e] == k for t in table) for k in ("agree", "differs", "CONFLICT")}
        summary[e] = {"wall": bulk["wall"], "items_per_s": n / bulk["wall"], "exit_code": bulk["exit_code"],
                      "speedup": seq["wall"] / bulk["wall"] if bulk["wall"] > 0 else float("nan"),
                      "agreement": counts, "overlap": overlaps(bulk["items"]), "summary": bulk["summary"]}
        print(f"\n(a) gpuopt run --engine {e}, {args.workers} workers: {bulk['wall']:8.2f} s wall, "
              f"{n / bulk['wall']:.3f} items/s, speed-up over (b) {summary[e]['speedup']:.2f}x; verdicts: "
              f"{counts['agree']} agree, {counts['differs']} differ (decided vs undecided), "
              f"{counts['CONFLICT']} conflict (sat vs unsat)")
        ov = summary[e]["overlap"]
        print(f"    stage events: {ov['pairs']} (batch stage of one item, task of another) pairs overlap, "
              f"{ov['overlap_seconds']:.1f} s in all, {ov['items_with_batch_work_during_other_tasks']} items "
              "bounded/attacked while another item's task ran")
    print(f"(b) sequential processes:  {seq['wall']:8.2f} s wall, {n / seq['wall']:.3f} items/s")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "instances": n, "workers": args.workers, "timeout_cap": args.timeout_cap, "cpus": os.cpu_count(),
        "bulk": summary, "sequential": {"wall": seq["wall"], "items_per_s": n / seq["wall"]},
        "per_instance": table,
    }, indent=1))
    print(f"wrote {out}")
    bad = any(v["agreement"]["CONFLICT"] or v["exit_code"] != 0 for v in summary.values())
    return 1 if bad else 0

if __name__ == "__main__":
    sys.exit(main())
