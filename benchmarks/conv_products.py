"""Convolution blocks multiplied as convolutions against their sparse matrices, in the bound passes.

For the first instance of each convolutional suite in ``../shared/benchmarks`` (oval21's three
nets, sri_resnet_a, cifar_biasfield), the same bounds are computed twice on the instance's input
box, in float64 on the CPU, one torch thread:

* ``conv``: the default (:class:`gpuopt.network.LinearOp`): blocks that are exactly one
  convolution with at least ``conv_min_channels`` output channels multiply by ``conv2d`` /
  ``conv_transpose2d``;
* ``allconv``: every convolution block so (the channel rule off);
* ``sparse``: every block as a sparse CSR product (or a dense one above the sparse density), as
  before.

Timed: CROWN's intermediate and output bounds (:func:`gpuopt.bounds.crown.crown`) and alpha-CROWN
on the spec rows with those bounds (``--alpha-steps``). Reported: each time, the ratio
sparse / conv, and the largest difference between the paths' bounds (rounding only).
Writes one JSON line per net as it goes and a table at the end.

    python benchmarks/conv_products.py [--suites oval21 sri_resnet_a cifar_biasfield]
        [--alpha-steps 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "benchmarks"
SUITES = {
    "oval21": (SHARED / "vnncomp2021" / "oval21", "oval21_instances.csv", 3),
    "sri_resnet_a": (SHARED / "coverage" / "vnncomp2022" / "sri_resnet_a", "instances.csv", 1),
    "cifar_biasfield": (SHARED / "coverage" / "vnncomp2022" / "cifar_biasfield", "instances.csv", 1),
}


def _first_instances(folder: Path, csv: str, n_nets: int) -> list[tuple[Path, Path]]:
    """The first instance of each of the suite's first ``n_nets`` distinct networks."""
    seen, out = set(), []
    for line in (folder / csv).read_text().split():
        onnx, vnnlib = line.split(",")[:2]
        if onnx not in seen and len(seen) < n_nets:
            seen.add(onnx)
            out.append((folder / onnx, folder / vnnlib))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suites", nargs="+", default=list(SUITES), choices=list(SUITES))
    ap.add_argument("--alpha-steps", type=int, default=10)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "conv_products.jsonl"))
    args = ap.parse_args()
    if not SHARED.is_dir():
        print(f"{SHARED} not found: nothing to run", file=sys.stderr)
        return 1
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from gpuopt.bounds import alpha_crown_linear_lower, crown
    from gpuopt.io.onnx import from_onnx
    from gpuopt.io.vnnlib import load_vnnlib
    from gpuopt.network import LinearOp

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    density, channels = LinearOp.conv_density, LinearOp.conv_min_channels
    records = []
    with open(out, "w") as f:
        for suite in args.suites:
            folder, csv, n_nets = SUITES[suite]
            if not (folder / csv).is_file():
                print(f"{folder / csv} not found: {suite} skipped", file=sys.stderr)
                continue
            for onnx, vnnlib in _first_instances(folder, csv, n_nets):
                rec = {"suite": suite, "net": onnx.stem, "prop": vnnlib.name.split(".")[0]}
                bounds = {}
                for path in ("conv", "allconv", "sparse"):
                    LinearOp.conv_density = -1.0 if path == "sparse" else density
                    LinearOp.conv_min_channels = 1 if path == "allconv" else channels
                    net = from_onnx(onnx)  # a fresh network: its cached blocks use this path
                    prop = load_vnnlib(vnnlib, n_inputs=net.input_size, n_outputs=net.output_size)[0]
                    A = np.concatenate([np.atleast_2d(a) for a, _ in prop.spec.disjuncts])
                    lo, hi = torch.tensor(prop.box.lower)[None], torch.tensor(prop.box.upper)[None]
                    ops = net.linear_ops(lo.device, lo.dtype)
                    rec[f"{path}_blocks"] = sum(op.conv is not None for op in ops)
                    t = time.monotonic()
                    b = crown(net, lo, hi)
                    rec[f"{path}_crown_s"] = time.monotonic() - t
                    t = time.monotonic()
                    alpha = alpha_crown_linear_lower(net, lo, hi, torch.tensor(A)[None], b, steps=args.alpha_steps)
                    rec[f"{path}_alpha_s"] = time.monotonic() - t
                    bounds[path] = [t for pair in b.pre_activation + (b.output,) for t in pair] + [alpha]
                LinearOp.conv_density, LinearOp.conv_min_channels = density, channels
                rec["blocks"] = len(ops)
                rec["max_bound_difference"] = max(float((a - c).abs().max()) for path in ("conv", "allconv")
                                                  for a, c in zip(bounds[path], bounds["sparse"]))
                for stage in ("crown", "alpha"):
                    rec[f"{stage}_speedup"] = rec[f"sparse_{stage}_s"] / rec[f"conv_{stage}_s"]
                    rec[f"{stage}_speedup_allconv"] = rec[f"sparse_{stage}_s"] / rec[f"allconv_{stage}_s"]
                records.append(rec)
                f.write(json.dumps(rec) + "\n")
                f.flush()
                print(f"{suite} {onnx.stem}: CROWN {rec['sparse_crown_s']:.2f} s -> {rec['conv_crown_s']:.2f} s "
                      f"(all conv {rec['allconv_crown_s']:.2f} s), alpha {rec['sparse_alpha_s']:.2f} s -> "
                      f"{rec['conv_alpha_s']:.2f} s (all conv {rec['allconv_alpha_s']:.2f} s)", flush=True)
    print()
    print("times in seconds; ratio = sparse / conv; conv blocks: default (all convolution blocks)")
    print(f"{'suite':16} {'net':30} {'conv blocks':>13} {'CROWN sparse':>12} {'conv':>7} {'ratio':>6} "
          f"{'all':>6} {'alpha sparse':>12} {'conv':>7} {'ratio':>6} {'all':>6} {'max diff':>9}")
    for r in records:
        print(f"{r['suite']:16} {r['net'][:30]:30} {r['conv_blocks']:>3} ({r['allconv_blocks']}) of {r['blocks']:<3} "
              f"{r['sparse_crown_s']:>12.2f} {r['conv_crown_s']:>7.2f} {r['crown_speedup']:>6.2f} "
              f"{r['crown_speedup_allconv']:>6.2f} {r['sparse_alpha_s']:>12.2f} {r['conv_alpha_s']:>7.2f} "
              f"{r['alpha_speedup']:>6.2f} {r['alpha_speedup_allconv']:>6.2f} {r['max_bound_difference']:>9.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
