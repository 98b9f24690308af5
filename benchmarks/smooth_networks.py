"""Verdicts on networks that are not piecewise linear: what interval bounds and interval
splitting decide beyond the attack alone.

Seeded random Tanh/Sigmoid networks (``--inputs`` inputs, two hidden layers of ``--width``),
each with properties "output 0 stays below t" over a box, with ``t`` at the largest value seen on
``--samples`` random points plus an offset (``--offsets``; negative ones are reachable, positive
ones may or may not be). Each property is verified four ways in one run: the attack alone
(:func:`gpuopt.verify.attack_problems`, until the deadline: the behaviour before interval bounds),
interval bounds and splitting without the linear relaxation (:mod:`gpuopt.bounds.smooth` switched
off: the behaviour before it), the bounds without splitting (``use_input_split=False``), and the
default (interval bounds and the relaxation, then splitting). It
prints a table of verdict counts and times and writes JSON; a ``sat`` is re-checked on the
network, and an ``unsat`` where a sampled point reaches the region counts as wrong.

    python benchmarks/smooth_networks.py [--nets 10] [--inputs 3] [--timeout 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpuopt import Box, OutputSpec, verify  # noqa: E402
from gpuopt.bounds import smooth  # noqa: E402
from gpuopt.network import Dense, Network, Sigmoid, Tanh  # noqa: E402
from gpuopt.problem import Problem  # noqa: E402
from gpuopt.verify import VerifyConfig, attack_problems  # noqa: E402


def _network(rng, n_in: int, width: int) -> Network:
    return Network([Dense(rng.normal(size=(width, n_in)) * 1.5, rng.normal(size=width)), Tanh(),
                    Dense(rng.normal(size=(width, width)) / np.sqrt(width) * 2, rng.normal(size=width)), Sigmoid(),
                    Dense(rng.normal(size=(2, width)) * 2, rng.normal(size=2))], (n_in,))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", type=int, default=10)
    ap.add_argument("--inputs", type=int, default=3)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--offsets", type=float, nargs="+", default=[-0.01, 0.02, 0.1])
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/smooth_networks.json")
    args = ap.parse_args(argv)

    modes = {"attack alone": None, "intervals + splitting": VerifyConfig(),
             "bounds": VerifyConfig(use_input_split=False), "bounds + splitting": VerifyConfig()}
    rows = []
    for n in range(args.nets):
        rng = np.random.default_rng(args.seed + n)
        net = _network(rng, args.inputs, args.width)
        lo, hi = -np.ones(args.inputs), np.ones(args.inputs)
        x = rng.uniform(lo, hi, (args.samples, args.inputs))
        top = float(net.forward64(x)[:, 0].max())
        for off in args.offsets:
            t = top + off
            spec = OutputSpec([(np.array([[-1.0, 0.0]]), np.array([-t]))], 2)  # unsafe: y_0 >= t
            for mode, config in modes.items():
                if config is None:  # before interval bounds: the attack until the deadline, no proof
                    t0 = time.monotonic()
                    v = attack_problems([Problem(net, Box(lo, hi), spec)], timeout=args.timeout)
                    status = v.status.value
                else:
                    t0 = time.monotonic()
                    relaxation = smooth.smooth_chain
                    if mode == "intervals + splitting":  # the relaxation off
                        smooth.smooth_chain = lambda network: None
                    try:
                        v = verify(net, Box(lo, hi), spec, timeout=args.timeout, config=config)
                    finally:
                        smooth.smooth_chain = relaxation
                    status = v.status.value
                seconds = time.monotonic() - t0
                wrong = status == "unsat" and off < 0
                if status == "sat":
                    wrong = wrong or not net.forward64(np.asarray(v.counterexample)[None])[0, 0] >= t - 1e-12
                rows.append({"net": n, "offset": off, "mode": mode, "status": status, "seconds": seconds,
                             "decided_by": v.decided_by, "wrong": wrong})
                print(f"net {n} offset {off:+g} {mode:20s} {status:8s} {seconds:6.2f}s", flush=True)
    print()
    print("| mode | offset | sat | unsat | unknown/timeout | wrong | median s |")
    print("|---|---|---|---|---|---|---|")
    for mode in modes:
        for off in args.offsets:
            sel = [r for r in rows if r["mode"] == mode and r["offset"] == off]
            count = {s: sum(r["status"] == s for r in sel) for s in ("sat", "unsat")}
            rest = len(sel) - count["sat"] - count["unsat"]
            med = float(np.median([r["seconds"] for r in sel]))
            print(f"| {mode} | {off:+g} | {count['sat']} | {count['unsat']} | {rest} | "
                  f"{sum(r['wrong'] for r in sel)} | {med:.2f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"\nwritten: {args.out}")
    return 1 if any(r["wrong"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
