"""CROWN and alpha-CROWN against the exact LP of the same triangle relaxation, and LP tightening.

For each mnist_fc instance (default: the 30 on mnist-net_256x2) and each spec row ``a^T y - b``:

* ``crown``: CROWN's lower bound on the intermediate bounds of
  :func:`gpuopt.bounds.intermediate_bounds` (CROWN and IBP per neuron);
* ``alpha``: alpha-CROWN on the same intermediate bounds (``--alpha-steps``);
* ``lp``: the LP of the same triangle relaxation (same intermediate bounds) in HiGHS, as a safe
  dual bound: the best any linear-relaxation bound on these intermediate bounds can give;
* ``lp+obbt``: alpha-CROWN on every layer, LP tightening of the unstable neurons, then the LP
  (``gpuopt bounds --method lp``).

Reports the distance ``lp - crown`` and ``lp - alpha`` (median and largest), the share of it that
alpha-CROWN closes, disjuncts proven by each, and times. Writes JSON lines as it goes.

    python benchmarks/lp_bounds.py [--nets 256x2] [--limit N] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO.parent / "shared" / "benchmarks" / "vnncomp2022" / "mnist_fc"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=["256x2"])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--alpha-steps", type=int, default=20)
    ap.add_argument("--no-obbt", action="store_true", help="skip the lp+obbt column (slow on deep nets)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "lp_bounds.jsonl"))
    args = ap.parse_args()
    if not BENCH.is_dir():
        print(f"{BENCH} not found: nothing to run", file=sys.stderr)
        return 1
    import torch

    torch.set_num_threads(1)
    from gpuopt.bounds import alpha_crown_linear_lower, crown_linear_lower, intermediate_bounds
    from gpuopt.bounds.lp import lp_row_bounds
    from gpuopt.bounds.rows import row_bounds
    from gpuopt.io.onnx import from_onnx
    from gpuopt.io.vnnlib import load_vnnlib

    rows_csv = [line.split(",") for line in (BENCH / "instances.csv").read_text().split()]
    cases = [(o, v) for o, v, _ in rows_csv if any(f"_{n}." in o for n in args.nets)][: args.limit]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records = []
    with open(out, "w") as f:
        for onnx, vnnlib in cases:
            net = from_onnx(BENCH / onnx)
            prop = load_vnnlib(BENCH / vnnlib, n_inputs=net.input_size, n_outputs=net.output_size)[0]
            A = np.concatenate([np.atleast_2d(a) for a, _ in prop.spec.disjuncts])
            b = np.concatenate([np.asarray(bb, dtype=np.float64).reshape(-1) for _, bb in prop.spec.disjuncts])
            lo, hi = torch.tensor(prop.box.lower)[None], torch.tensor(prop.box.upper)[None]
            times = {}
            t = time.monotonic()
            inter = intermediate_bounds(net, lo, hi)
            crown = crown_linear_lower(net, lo, hi, torch.tensor(A)[None], inter)[0][0].numpy()
            times["crown"] = time.monotonic() - t
            t = time.monotonic()
            alpha = alpha_crown_linear_lower(net, lo, hi, torch.tensor(A)[None], inter, steps=args.alpha_steps)[0].numpy()
            times["alpha"] = time.monotonic() - t
            t = time.monotonic()
            pre = [(l[0].numpy(), u[0].numpy()) for l, u in inter.pre_activation]
            lp = lp_row_bounds(net.affine_blocks(), pre, (inter.output[0][0].numpy(), inter.output[1][0].numpy()),
                               prop.box.lower, prop.box.upper, A, np.zeros(A.shape[0]))
            times["lp"] = time.monotonic() - t
            rec = {"net": Path(onnx).stem, "prop": Path(vnnlib).stem, "crown": (crown - b).tolist(),
                   "alpha": (alpha - b).tolist(), "lp": (lp - b).tolist()}
            if not args.no_obbt:
                t = time.monotonic()
                full = row_bounds(net, prop.box.lower, prop.box.upper, A, method="lp",
                                  alpha_steps=args.alpha_steps)[0].numpy()
                times["lp+obbt"] = time.monotonic() - t
                rec["lp+obbt"] = (full - b).tolist()
            rec["seconds"] = times
            records.append(rec)
            f.write(json.dumps(rec) + "\n")
            f.flush()
            print(f"{rec['net']} {rec['prop']}: " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()), flush=True)
    report(records)
    return 0


def report(records) -> None:
    d_crown = [lp - c for r in records for c, lp in zip(r["crown"], r["lp"])]
    d_alpha = [lp - a for r in records for a, lp in zip(r["alpha"], r["lp"])]
    closed = [(a - c) / (lp - c) for r in records for c, a, lp in zip(r["crown"], r["alpha"], r["lp"]) if lp - c > 1e-9]
    print(f"\n{len(records)} instances, {len(d_crown)} spec rows")
    print(f"CROWN <= LP on every row: {all(d >= -1e-7 for d in d_crown)}; alpha <= LP: {all(d >= -1e-7 for d in d_alpha)}")
    print("| distance to the LP | median | largest |\n|---|---|---|")
    print(f"| lp - crown | {statistics.median(d_crown):.4f} | {max(d_crown):.4f} |")
    print(f"| lp - alpha | {statistics.median(d_alpha):.4f} | {max(d_alpha):.4f} |")
    if closed:
        print(f"alpha-CROWN closes a median {statistics.median(closed):.1%} of CROWN's distance to the LP "
              f"(smallest {min(closed):.1%})")
    methods = [m for m in ("crown", "alpha", "lp", "lp+obbt") if m in records[0]]
    print("\n| method | disjuncts proven | instances proven | total s |\n|---|---|---|---|")
    for m in methods:
        rows = sum(sum(v > 0 for v in r[m]) for r in records)
        inst = sum(all(v > 0 for v in r[m]) for r in records)
        secs = sum(r["seconds"][m] for r in records)
        print(f"| {m} | {rows} | {inst} | {secs:.1f} |")


if __name__ == "__main__":
    raise SystemExit(main())
