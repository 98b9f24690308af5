"""Certified robustness radii (``gpuopt.certify_radius``) on real networks, as issue 16 asks.

Three parts, each a JSONL line per image as it is decided (``--resume`` skips those done):

* ``mnist``: mnist-net_256x2 (VNN-COMP mnist_fc) on the first ``--images`` (20) shared MNIST test
  images (pixels / 255, valid range [0, 1]), L-inf, L1 and L2;
* ``psplit``: the partition paper's 784-50-50-10 net, the targeted min-L1 form with margin 1.2
  (the smallest L1 change making ``logit[t] >= 1.2 logit[j]`` for every ``j != t``, towards the
  paper's target labels) for ``--psplit-images`` (10) images;
* ``conv``: oval21's cifar_base_kw, the L-inf radius of ``--conv-images`` (5) images (the centres
  of the shared oval21 properties for that net, labels from the net's own prediction), 120 s each.

Prints exact/bracket counts, the median bracket width and time per image per part.

    python benchmarks/radius.py [--parts mnist psplit conv] [--timeout 60] [--out FILE] [--resume]
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
BENCH = REPO.parent / "shared" / "benchmarks"


def _jobs(args):
    """``(part, key, thunk)`` for every image of the chosen parts; ``thunk()`` returns the record."""
    from gpuopt import certify_radius
    from gpuopt.io.onnx import from_onnx
    from gpuopt.network import Dense, Network, ReLU
    from gpuopt.runs import load_dataset

    if "mnist" in args.parts:
        net = from_onnx(BENCH / "vnncomp2022" / "mnist_fc" / "onnx" / "mnist-net_256x2.onnx")
        x, y = load_dataset(BENCH / "mnist" / "mnist_test_first100.csv", scale=255.0)
        for norm, eps_max in (("linf", 0.1), ("l1", 10.0), ("l2", 3.0)):
            for i in range(args.images):
                yield ("mnist", f"{norm}:{i}", lambda i=i, norm=norm, eps_max=eps_max: certify_radius(
                    net, x[i], int(y[i]), norm=norm, eps_max=eps_max, clip=(0.0, 1.0), timeout=args.timeout))
    if "psplit" in args.parts:
        z = np.load(BENCH / "psplit" / "mnist2x50instances.npz")
        net = Network([Dense(z["w1"], z["b1"]), ReLU(), Dense(z["w2"], z["b2"]), ReLU(), Dense(z["w3"], z["b3"])],
                      (784,))
        for i in range(args.psplit_images):
            label, target = (int(v) for v in z["labels"][i])
            yield ("psplit", f"l1-target:{i}", lambda i=i, label=label, target=target: certify_radius(
                net, z["images"][i], label, norm="l1", eps_max=30.0, clip=(0.0, 1.0), timeout=args.timeout,
                target=target, margin=1.2))
    if "conv" in args.parts:
        from gpuopt.io.vnnlib import load_vnnlib

        base = BENCH / "vnncomp2021" / "oval21"
        net = from_onnx(base / "nets" / "cifar_base_kw.onnx")
        rows = [line.split(",") for line in (base / "oval21_instances.csv").read_text().split()]
        props = [v for o, v, _ in rows if "cifar_base_kw" in o][: args.conv_images]
        for vnn in props:
            box = load_vnnlib(base / vnn, n_inputs=net.input_size, n_outputs=net.output_size)[0].box
            centre = (np.asarray(box.lower) + np.asarray(box.upper)) / 2
            label = int(np.argmax(net.forward64(centre[None])[0]))
            yield ("conv", f"linf:{Path(vnn).stem}", lambda c=centre, label=label: certify_radius(
                net, c, label, norm="linf", eps_max=0.05, clip=None, timeout=args.conv_timeout))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=["mnist", "psplit", "conv"], choices=["mnist", "psplit", "conv"])
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--psplit-images", type=int, default=10)
    ap.add_argument("--conv-images", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per image (mnist, psplit)")
    ap.add_argument("--conv-timeout", type=float, default=120.0)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "radius.jsonl"))
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    if not BENCH.is_dir():
        print(f"{BENCH} not found: nothing to run", file=sys.stderr)
        return 1
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if args.resume and out.exists():
        for line in out.read_text().splitlines():
            rec = json.loads(line)
            done[(rec["part"], rec["key"])] = rec
    with open(out, "a" if args.resume else "w") as f:
        for part, key, run in _jobs(args):
            if (part, key) in done:
                continue
            t0 = time.monotonic()
            r = run()
            rec = {"part": part, "key": key, "status": r.status, "lower": r.lower, "upper": r.upper,
                   "upper_found": r.upper_found, "seconds": time.monotonic() - t0, "verify_calls": r.verify_calls}
            done[(part, key)] = rec
            f.write(json.dumps(rec) + "\n")
            f.flush()
            print(f"{part:7s} {key:22s} {r.status:8s} [{r.lower:.6g}, {r.upper:.6g}] {rec['seconds']:.1f} s", flush=True)
    report(list(done.values()))
    return 0


def report(records) -> None:
    print("\n| part | norm | images | exact | bracket | median radius (upper) | median width | median s | max s |")
    print("|---|---|---|---|---|---|---|---|---|")
    groups: dict = {}
    for r in records:
        groups.setdefault((r["part"], r["key"].split(":")[0]), []).append(r)
    for (part, norm), rs in sorted(groups.items()):
        exact = sum(r["status"] == "exact" for r in rs)
        width = statistics.median(r["upper"] - r["lower"] for r in rs)
        up = statistics.median(r["upper"] for r in rs)
        secs = [r["seconds"] for r in rs]
        print(f"| {part} | {norm} | {len(rs)} | {exact} | {len(rs) - exact} | {up:.4g} | {width:.3g} | "
              f"{statistics.median(secs):.1f} | {max(secs):.1f} |")


if __name__ == "__main__":
    raise SystemExit(main())
