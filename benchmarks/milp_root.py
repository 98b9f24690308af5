"""The MILP's first LP: HiGHS's dual simplex against its interior point method (``root_lp``).

For each instance, the big-M MILP of one disjunct (the one CROWN's bound leaves weakest) over
CROWN's intermediate bounds, as the pipeline's MILP stage builds it when nothing tightened them, is
solved by :func:`gpuopt.milp.highs.solve_milp` once per ``root_lp`` setting, with the same time
limit and the threshold of a sign decision. It reports, per run, the seconds until HiGHS logged its
root LP bound (the second row of its progress table), that bound, the dual bound at the end, the
nodes and the status, with the model's size. Default instances: mnist_fc's three nets at
prop_14_0.05, and one instance of each oval21 net. JSON lines as it goes, then a table.

    python benchmarks/milp_root.py [--settings simplex ipm] [--time-limit 90] [--out FILE]
        [--instances ONNX VNNLIB ...]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "benchmarks"
DEFAULT = [
    ("vnncomp2022/mnist_fc/onnx/mnist-net_256x2.onnx", "vnncomp2022/mnist_fc/vnnlib/prop_14_0.05.vnnlib"),
    ("vnncomp2022/mnist_fc/onnx/mnist-net_256x4.onnx", "vnncomp2022/mnist_fc/vnnlib/prop_14_0.05.vnnlib"),
    ("vnncomp2022/mnist_fc/onnx/mnist-net_256x6.onnx", "vnncomp2022/mnist_fc/vnnlib/prop_14_0.05.vnnlib"),
    ("vnncomp2021/oval21/nets/cifar_base_kw.onnx", "vnncomp2021/oval21/vnnlib/cifar_base_kw-img7779-eps0.04771241830065359.vnnlib"),
    ("vnncomp2021/oval21/nets/cifar_wide_kw.onnx", "vnncomp2021/oval21/vnnlib/cifar_wide_kw-img9214-eps0.011241830065359478.vnnlib"),
    ("vnncomp2021/oval21/nets/cifar_deep_kw.onnx", "vnncomp2021/oval21/vnnlib/cifar_deep_kw-img6430-eps0.025098039215686277.vnnlib"),
]
#: a row of HiGHS's MIP progress table: its last field is the time in seconds, its fifth the bound
PROGRESS = re.compile(r"^\s*[A-Za-z]?\s+\d+\s+\d+\s+\d+\s+[\d.]+%\s+(\S+)\s+.*\s([\d.]+)s\s*$")


def run_one(model, setting: str, time_limit: float, threshold: float) -> dict:
    """``solve_milp`` on ``model`` with ``root_lp=setting``; HiGHS's progress rows read from its log."""
    from gpuopt.milp import highs

    rows = []
    original = highs._new_highs

    def logged(*args, **kwargs):  # the solver's own instance, with a log reader beside its own
        h = original(*args, **kwargs)

        def on_log(event):
            for line in str(getattr(event, "message", "")).splitlines():
                m = PROGRESS.match(line)
                if m:
                    rows.append((float(m.group(2)), float(m.group(1))))
        h.cbLogging.subscribe(on_log)
        return h

    highs._new_highs = logged
    try:
        t = time.monotonic()
        res = highs.solve_milp(model, time_limit=time_limit, threshold=threshold,
                               config=highs.SolverConfig(root_lp=setting), deadline=time.monotonic() + time_limit)
        seconds = time.monotonic() - t
    finally:
        highs._new_highs = original
    root = rows[1] if len(rows) > 1 else (None, None)
    return {"root_seconds": root[0], "root_bound": root[1], "dual_bound": float(res.dual_bound),
            "status": res.status.value, "nodes": int(res.nodes), "seconds": seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="+", default=["simplex", "ipm"], choices=["simplex", "ipm", "auto"])
    ap.add_argument("--time-limit", type=float, default=90.0)
    ap.add_argument("--instances", nargs="+", default=None, help="ONNX VNNLIB pairs (default: six shared instances)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "milp_root.jsonl"))
    args = ap.parse_args()
    if args.instances is not None:
        if len(args.instances) % 2:
            ap.error("--instances takes ONNX VNNLIB pairs")
        cases = [(Path(a), Path(b)) for a, b in zip(args.instances[::2], args.instances[1::2])]
    else:
        if not SHARED.is_dir():
            print(f"{SHARED} not found: nothing to run (pass --instances)", file=sys.stderr)
            return 1
        cases = [(SHARED / a, SHARED / b) for a, b in DEFAULT]
    import torch

    torch.set_num_threads(1)
    from gpuopt.bounds import crown_linear_lower, intermediate_bounds
    from gpuopt.milp.encode import encode
    from gpuopt.verify import load_instance

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records = []
    with open(out, "w") as f:
        for onnx, vnnlib in cases:
            problem = load_instance(onnx, vnnlib)[0]
            net, box = problem.network, problem.region.to_box()
            lo = torch.tensor(np.asarray(box.lower, dtype=np.float64))[None]
            hi = torch.tensor(np.asarray(box.upper, dtype=np.float64))[None]
            inter = intermediate_bounds(net, lo, hi)
            pre = [(l[0].numpy(), u[0].numpy()) for l, u in inter.pre_activation]
            # the disjunct CROWN leaves weakest: the one the MILP stage would be left with
            weakest = []
            for A, b in problem.spec.disjuncts:
                rows = crown_linear_lower(net, lo, hi, torch.tensor(np.atleast_2d(A))[None], inter)[0][0].numpy()
                weakest.append(float(np.max(rows - np.asarray(b, dtype=np.float64).reshape(-1))))
            A, b = problem.spec.disjuncts[int(np.argmin(weakest))]
            model = encode(net.affine_blocks(), pre, (inter.output[0][0].numpy(), inter.output[1][0].numpy()),
                           box.lower, box.upper, A, b)
            base = {"net": onnx.stem, "prop": vnnlib.stem, "disjunct": int(np.argmin(weakest)),
                    "crown": min(weakest), "nonzeros": int(model.A.nnz),
                    "binaries": int(model.integrality.sum()), "rows": int(model.A.shape[0])}
            for setting in args.settings:
                rec = dict(base, setting=setting, **run_one(model, setting, args.time_limit, 0.0))
                records.append(rec)
                f.write(json.dumps(rec) + "\n")
                f.flush()
                print(json.dumps(rec), file=sys.stderr)
    print("\n| net | property | entries | binaries | setting | root LP s | root bound (HiGHS's scaled units) | "
          "dual bound at the end | nodes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in records:
        root = "-" if r["root_seconds"] is None else f"{r['root_seconds']:.1f}"
        bound = "-" if r["root_bound"] is None else f"{r['root_bound']:.4g}"
        print(f"| {r['net']} | {r['prop']} | {r['nonzeros']} | {r['binaries']} | {r['setting']} | {root} | {bound} | "
              f"{r['dual_bound']:.4g} | {r['nodes']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
