"""VNNLIB reading time: the bulk reader of plain lines against the general reader alone, side by
side in one run, on the same files, with their results compared.

Files: generated L-inf boxes around random images of 3x32x32, 3x64x64 and 3x224x224 inputs (one
``(assert (<= X_i c))`` per line, numbers as Python prints floats, a 10-class robustness
disjunction), and the shared VNN-COMP files of each suite (the first ``--per-suite`` of each).
Each file is read ``--repeat`` times by each reader; the best time counts. Prints a table and
writes JSON.

    python benchmarks/vnnlib_load.py [--repeat 2] [--per-suite 2] [--out benchmarks/results/vnnlib_load.json]

The shared files are read from ../shared/benchmarks (relative to the repository) when present.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np

from gpuopt.io import vnnlib

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO.parent / "shared" / "benchmarks"
SUITES = {
    "mnist_fc": "vnncomp2022/mnist_fc/vnnlib/*.vnnlib",
    "acasxu": "vnncomp2022/acasxu/vnnlib/*.vnnlib",
    "oval21": "vnncomp2021/oval21/vnnlib/*.vnnlib",
    "sri_resnet_a": "coverage/vnncomp2022/sri_resnet_a/vnnlib/*.vnnlib*",
    "yolo": "coverage/vnncomp2023/yolo/vnnlib/*.vnnlib*",
}


def image_box(n: int, eps: float, seed: int = 0) -> str:
    """An L-inf box of radius ``eps`` around a random image of ``n`` pixels in [0, 1], robustness
    of class 0 against the other 9."""
    x = np.random.default_rng(seed).random(n)
    lines = [f"(declare-const X_{i} Real)" for i in range(n)] + [f"(declare-const Y_{j} Real)" for j in range(10)]
    for i, v in enumerate(x.tolist()):
        lines.append(f"(assert (<= X_{i} {min(1.0, v + eps)!r}))")
        lines.append(f"(assert (>= X_{i} {max(0.0, v - eps)!r}))")
    lines.append("(assert (or " + " ".join(f"(and (>= Y_{j} Y_0))" for j in range(1, 10)) + "))")
    return "\n".join(lines) + "\n"


def general_only(text: str, source: str):
    return text, {}, {}, None, []


def read(text: str, name: str, general: bool):
    saved = vnnlib._plain_lines
    if general:
        vnnlib._plain_lines = general_only
    try:
        t0 = time.perf_counter()
        props = vnnlib.parse_vnnlib(text, source=name)
        return time.perf_counter() - t0, props
    finally:
        vnnlib._plain_lines = saved


def same(a, b) -> bool:
    def key(props):
        return [(p.box.lower.tobytes(), p.box.upper.tobytes(),
                 None if p.inner is None else (p.inner.lower.tobytes(), p.inner.upper.tobytes()),
                 [tuple(np.asarray(m).tolist() for m in p.spec.exact_rows(k)) for k in range(p.spec.n_disjuncts)])
                for p in props]
    return key(a) == key(b)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--per-suite", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "vnnlib_load.json"))
    args = ap.parse_args(argv)
    files = [(f"generated {n} inputs", image_box(n, 2 / 255)) for n in (3 * 32 * 32, 3 * 64 * 64, 3 * 224 * 224)]
    if BENCH.is_dir():
        for suite, pattern in SUITES.items():
            for path in sorted(BENCH.glob(pattern))[:args.per_suite]:
                data = path.read_bytes()
                files.append((f"{suite} {path.name}", (gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).decode()))
    else:
        print(f"(shared benchmarks not found at {BENCH}: generated files only)")
    rows = []
    print(f"{'file':58s} {'MB':>6s} {'general s':>10s} {'bulk s':>8s} {'ratio':>6s} same")
    for name, text in files:
        general = min(read(text, name, True)[0] for _ in range(args.repeat))
        bulk = min(read(text, name, False)[0] for _ in range(args.repeat))
        agree = same(read(text, name, True)[1], read(text, name, False)[1])
        rows.append({"file": name, "mb": len(text) / 1e6, "general_s": general, "bulk_s": bulk, "same": agree})
        print(f"{name[:58]:58s} {len(text) / 1e6:6.2f} {general:10.3f} {bulk:8.3f} {general / bulk:6.2f} {agree}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"repeat": args.repeat, "rows": rows}, indent=1))
    print(f"results: {out}")
    return 0 if all(r["same"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
