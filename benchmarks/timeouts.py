"""Do time limits hold? ``gpuopt verify --timeout T`` on the slowest shared instances.

Each run is a fresh process; its wall time is measured from spawn to exit (Python and torch
start-up included, as VNN-COMP measures). A run passes when it ends within ``T + 1`` s with a
verdict on its last line and the result file written.

    python benchmarks/timeouts.py [--limits 3 10 30] [--out benchmarks/results/timeouts.json]

Reads ``../shared/benchmarks``; prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "benchmarks"

INSTANCES = [
    ("vnncomp2022/mnist_fc", "onnx/mnist-net_256x6.onnx", "vnnlib/prop_2_0.05.vnnlib"),
    ("vnncomp2022/mnist_fc", "onnx/mnist-net_256x6.onnx", "vnnlib/prop_6_0.05.vnnlib"),
    ("vnncomp2021/oval21", "nets/cifar_deep_kw.onnx", "vnnlib/cifar_deep_kw-img6430-eps0.025098039215686277.vnnlib"),
    ("vnncomp2021/oval21", "nets/cifar_deep_kw.onnx", "vnnlib/cifar_deep_kw-img7479-eps0.03490196078431373.vnnlib"),
]


def run_one(folder: str, onnx: str, vnnlib: str, limit: float) -> dict:
    base = SHARED / folder
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.txt"
        cmd = [sys.executable, "-m", "gpuopt", "verify", str(base / onnx), str(base / vnnlib),
               "--timeout", str(limit), "--out", str(out)]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.monotonic() - t0
        lines = proc.stdout.strip().splitlines()
        verdict = lines[-1] if lines else ""
        written = out.read_text().splitlines()[0] if out.exists() else None
    ok = wall <= limit + 1.0 and verdict in ("sat", "unsat", "unknown", "timeout") and written == verdict
    return {"instance": f"{Path(onnx).stem}/{Path(vnnlib).stem}", "limit": limit, "wall": round(wall, 3),
            "verdict": verdict, "result_file": written, "exit_code": proc.returncode, "ok": ok,
            "stderr": proc.stderr.strip()[-300:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limits", type=float, nargs="+", default=[3.0, 10.0, 30.0])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "timeouts.json"))
    args = ap.parse_args()
    missing = [f"{f}/{o}" for f, o, v in INSTANCES if not (SHARED / f / o).is_file() or not (SHARED / f / v).is_file()]
    if missing:
        print(f"shared benchmarks missing ({missing[0]}...): nothing to run", file=sys.stderr)
        return 1
    rows = []
    print(f"{'instance':58s} {'T':>5s} {'wall':>7s} {'over':>6s} verdict  ok")
    for limit in args.limits:
        for folder, onnx, vnnlib in INSTANCES:
            r = run_one(folder, onnx, vnnlib, limit)
            rows.append(r)
            print(f"{r['instance'][:58]:58s} {limit:5.0f} {r['wall']:7.2f} {r['wall'] - limit:+6.2f} "
                  f"{r['verdict']:8s} {'yes' if r['ok'] else 'NO'}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    n_ok = sum(r["ok"] for r in rows)
    print(f"{n_ok}/{len(rows)} runs ended within T + 1 s with their verdict written; worst overrun "
          f"{max(r['wall'] - r['limit'] for r in rows):+.2f} s")
    return 0 if n_ok == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
