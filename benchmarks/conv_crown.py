"""CROWN on convolutional networks: receptive-field compaction and the spec's cone, side by side.

For the first ``--instances`` instances of each suite in ``--suites`` (default ``yolo``; also
``sri_resnet_a``, ``sri_resnet_b``, ``oval21``), in float64 on the CPU, one torch thread, each
variant of :func:`gpuopt.bounds.crown.crown` runs on the property's box with a ``--seconds``
deadline:

* ``full``: every neuron and output, no compaction (``COMPACT_SHARE = -1``: the old passes);
* ``compact``: every neuron and output, chunks on the coordinates they reach;
* ``cone``: compaction, and only the outputs the spec reads and the neurons that reach them (what
  the crown stage runs).

For each: the seconds per hidden layer (until the deadline), whether it finished, and the least
disjunct bound of CROWN's backward pass for the spec rows on those bounds (a disjunct's bound is
its best row's: above 0 proves it unreachable; ``row_lower`` in the JSON has every row). Writes one JSON line per (instance, variant) as it goes, then a table.

    python benchmarks/conv_crown.py [--suites yolo] [--instances 1] [--seconds 300]
                                    [--variants full compact cone] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "benchmarks"
#: suite -> (folder, its instance list)
SUITES = {
    "yolo": (SHARED / "coverage" / "vnncomp2023" / "yolo", "instances.csv"),
    "sri_resnet_a": (SHARED / "coverage" / "vnncomp2022" / "sri_resnet_a", "instances.csv"),
    "sri_resnet_b": (SHARED / "coverage" / "vnncomp2022" / "sri_resnet_b", "instances.csv"),
    "oval21": (SHARED / "vnncomp2021" / "oval21", "oval21_instances.csv"),
}


def _run(net, lo, hi, C, d, sizes, variant: str, seconds: float) -> dict:
    import torch

    crown_mod = sys.modules["gpuopt.bounds.crown"]
    share = crown_mod.COMPACT_SHARE
    layers = []
    real = crown_mod.tighten_layer

    def timed(k, *args, **kwargs):
        t = time.monotonic()
        out = real(k, *args, **kwargs)
        layers.append({"layer": k, "seconds": round(time.monotonic() - t, 3), "finished": bool(out[2])})
        return out

    crown_mod.tighten_layer = timed
    if variant == "full":
        crown_mod.COMPACT_SHARE = -1.0
    try:
        outputs = torch.nonzero((C != 0).any(dim=0)).flatten() if variant == "cone" else None
        t = time.monotonic()
        bounds = crown_mod.crown(net, lo, hi, deadline=time.monotonic() + seconds, outputs=outputs)
        secs = time.monotonic() - t
    finally:
        crown_mod.tighten_layer = real
        crown_mod.COMPACT_SHARE = share
    rows = (crown_mod.crown_linear_lower(net, lo, hi, C, bounds)[0][0] - d).tolist()
    # a disjunct (a conjunction of rows) is unreachable when one of its rows' lower bounds is > 0
    disjuncts, at = [], 0
    for n in sizes:
        disjuncts.append(max(rows[at:at + n]))
        at += n
    return {"variant": variant, "seconds": round(secs, 2), "method": bounds.method, "layers": layers,
            "row_lower": rows, "spec_lower": min(disjuncts)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suites", nargs="+", default=["yolo"], choices=sorted(SUITES))
    ap.add_argument("--instances", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=300.0, help="deadline of each crown call")
    ap.add_argument("--variants", nargs="+", default=["full", "compact", "cone"], choices=["full", "compact", "cone"])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "conv_crown.jsonl"))
    args = ap.parse_args()
    missing = [s for s in args.suites if not SUITES[s][0].is_dir()]
    if missing:
        print(f"{', '.join(str(SUITES[s][0]) for s in missing)} not found: nothing to run", file=sys.stderr)
        return 1
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO))
    from gpuopt.io.onnx import from_onnx
    from gpuopt.io.vnnlib import load_vnnlib

    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with out.open("a") as fh:
        for suite in args.suites:
            folder, listing = SUITES[suite]
            lines = [ln for ln in (folder / listing).read_text().split() if ln.strip()][:args.instances]
            for line in lines:
                onnx, vnnlib = line.split(",")[:2]
                net = from_onnx(str(folder / onnx))
                prop = load_vnnlib(str(folder / vnnlib), n_inputs=net.input_size, n_outputs=net.output_size)[0]
                C = torch.tensor(np.concatenate([np.asarray(A, dtype=np.float64).reshape(-1, net.output_size)
                                                 for A, _ in prop.spec.disjuncts]))
                d = torch.tensor(np.concatenate([np.asarray(b, dtype=np.float64).reshape(-1)
                                                 for _, b in prop.spec.disjuncts]))
                sizes = [np.asarray(b).size for _, b in prop.spec.disjuncts]
                lo = torch.tensor(np.asarray(prop.box.lower, dtype=np.float64)).reshape(1, -1)
                hi = torch.tensor(np.asarray(prop.box.upper, dtype=np.float64)).reshape(1, -1)
                net.linear_ops("cpu", torch.float64)  # the lowering, once, outside the timings
                for variant in args.variants:
                    rec = {"suite": suite, "instance": f"{onnx}:{vnnlib}",
                           **_run(net, lo, hi, C, d, sizes, variant, args.seconds)}
                    fh.write(json.dumps(rec) + "\n")
                    fh.flush()
                    rows.append(rec)
                    print(json.dumps(rec), flush=True)
    print(f"\n{'instance':48s} {'variant':8s} {'seconds':>8s} {'layers done':>11s} {'spec bound':>12s}")
    for r in rows:
        done = sum(layer["finished"] for layer in r["layers"])
        print(f"{r['instance'].split('/')[-1][:48]:48s} {r['variant']:8s} {r['seconds']:8.1f} "
              f"{done:5d} of {len(r['layers']):<3d} {r['spec_lower']:12.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
