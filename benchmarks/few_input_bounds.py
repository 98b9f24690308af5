"""Intermediate bounds on few-input wide networks: forward linear bounds, the zonotope, and CROWN.

For the first ``--instances`` cifar_biasfield instances in ``../shared/benchmarks`` (16 inputs, a
CNN of 45,000 ReLUs), the property's input box and its halves along the widest input (``--halves``
levels: 1 gives the box and its two halves) are bounded in float64 on the CPU, one torch thread:

* ``forward``: :func:`gpuopt.bounds.forward.forward_crown` (linear bounds carried forward);
* ``zonotope``: :func:`gpuopt.bounds.zonotope.zonotope_bounds` on top of them (what
  :func:`gpuopt.bounds.forward.intermediate_bounds` returns for these nets);
* ``crown`` (``--crown``, the root box only): full backward CROWN, a pass per unstable neuron.

For each: the seconds, the widest output bound, and the least spec row bound that CROWN's
backward pass for the spec rows gets on those intermediate bounds (every disjunct of the
unsafe region is one row here: above 0 proves it unreachable on that box), beside the sampled
output span and the least sampled margin. Writes one JSON line per box as it goes and a table.

    python benchmarks/few_input_bounds.py [--instances 4] [--halves 1] [--crown] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO.parent / "shared" / "benchmarks" / "coverage" / "vnncomp2022" / "cifar_biasfield"


def _boxes(lo, hi, levels: int):
    """The box, then each level's halves of the last level's boxes along the widest input."""
    import torch

    out, level = [("box", lo, hi)], [("box", lo, hi)]
    for _ in range(levels):
        nxt = []
        for name, a, b in level:
            d = int(torch.argmax(b - a))
            m = (a[0, d] + b[0, d]) / 2
            left_hi, right_lo = b.clone(), a.clone()
            left_hi[0, d], right_lo[0, d] = m, m
            nxt += [(name + ".0", a, left_hi), (name + ".1", right_lo, b)]
        out += nxt
        level = nxt
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=4)
    ap.add_argument("--halves", type=int, default=1, help="levels of halving of the box (default 1)")
    ap.add_argument("--crown", action="store_true", help="also full backward CROWN on the root box (minutes each)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "few_input_bounds.jsonl"))
    args = ap.parse_args()
    if not SUITE.is_dir():
        print(f"{SUITE} not found: nothing to run", file=sys.stderr)
        return 1
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO))
    from gpuopt.bounds.crown import crown, crown_linear_lower
    from gpuopt.bounds.forward import forward_crown
    from gpuopt.bounds.zonotope import zonotope_bounds
    from gpuopt.io.onnx import from_onnx
    from gpuopt.io.vnnlib import load_vnnlib

    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    lines = [ln for ln in (SUITE / "instances.csv").read_text().split() if ln.strip()][:args.instances]
    rng = np.random.default_rng(0)
    with out.open("a") as fh:
        for line in lines:
            onnx, vnnlib = line.split(",")[:2]
            net = from_onnx(str(SUITE / onnx))
            prop = load_vnnlib(str(SUITE / vnnlib), n_inputs=net.input_size, n_outputs=net.output_size)[0]
            C = torch.tensor(np.stack([np.asarray(A, dtype=np.float64).reshape(-1) for A, _ in prop.spec.disjuncts]))
            d = torch.tensor([float(np.asarray(b).reshape(-1)[0]) for _, b in prop.spec.disjuncts], dtype=torch.float64)
            lo0 = torch.tensor(np.asarray(prop.box.lower, dtype=np.float64)).reshape(1, -1)
            hi0 = torch.tensor(np.asarray(prop.box.upper, dtype=np.float64)).reshape(1, -1)
            for name, lo, hi in _boxes(lo0, hi0, args.halves):
                x = lo + torch.tensor(rng.random((2000, lo.shape[1]))) * (hi - lo)
                with torch.no_grad():
                    y = net(x.reshape(-1, *net.input_shape)).double().reshape(len(x), -1)
                rec = {"instance": f"{onnx}:{vnnlib}", "box": name, "sampled_span": float((y.max(0).values - y.min(0).values).max()),
                       "sampled_margin": float(((y @ C.T) - d).min())}
                t = time.monotonic()
                fwd = forward_crown(net, lo, hi)
                variants = [("forward", fwd, time.monotonic() - t)]
                t = time.monotonic()
                variants.append(("zonotope", zonotope_bounds(net, lo, hi, prior=fwd), time.monotonic() - t))
                if args.crown and name == "box":
                    t = time.monotonic()
                    variants.append(("crown", crown(net, lo, hi), time.monotonic() - t))
                for vname, b, secs in variants:
                    spec = crown_linear_lower(net, lo, hi, C, b)[0][0] - d
                    rec[vname] = {"seconds": secs, "output_width": float((b.output[1] - b.output[0]).max()),
                                  "spec_lower": float(spec.min())}
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                rows.append(rec)
                print(json.dumps(rec), flush=True)
    names = [v for v in ("forward", "zonotope", "crown") if any(v in r for r in rows)]
    print(f"\n{'instance / box':44s} {'sampled':>16s} | " + " | ".join(f"{n:>28s}" for n in names))
    print(f"{'':44s} {'span, margin':>16s} | " + " | ".join(f"{'s, out width, spec lower':>28s}" for _ in names))
    for r in rows:
        cells = [f"{r[n]['seconds']:6.1f} {r[n]['output_width']:9.3g} {r[n]['spec_lower']:10.4g}" if n in r else f"{'-':>28s}"
                 for n in names]
        print(f"{(r['instance'].split('/')[-1] + ' ' + r['box'])[:44]:44s} {r['sampled_span']:7.3g} {r['sampled_margin']:8.3g} | "
              + " | ".join(f"{c:>28s}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
