"""Where the attack's time goes: gpuopt's ``pgd_attack`` beside ``torchattacks.PGD`` on the same
network, box and batch (as in ``benchmarks/attack.py --sections throughput``), broken down.

For each R in ``--restarts-list``: the wall time of a fixed-step run of each tool (best of
``--repeats``), gpuopt's time per part (starts, descent, candidate pool; each part timed between
device synchronisations, so the parts add up), and then a ``torch.profiler`` table of each tool
over ``--profile-steps`` steps: the operators that take the most device time (CUDA) or CPU time
(CPU), with their call counts. The tables say which operators a fused step would remove.

``--host-overhead`` times both tools per step on a tiny MLP instead, where a step is almost all
host overhead (the launch and dispatch cost that dominates a GPU at few restarts).

    python benchmarks/attack_profile.py --device cuda --restarts-list 4000 16000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack import Logits, sync, throughput_case  # noqa: E402

import gpuopt.attacks.search as search  # noqa: E402
from gpuopt.attacks import AttackConfig, pgd_attack  # noqa: E402

MNIST = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "vnncomp2022" / "mnist_fc"
PARTS = ("_starts", "descend", "_collect", "_pool")


def timed_parts(device):
    """Wraps the attack's parts in timers that synchronise the device; returns the totals dict and
    a function that restores the originals."""
    totals, saved = {}, {}
    for name in PARTS:
        f = saved[name] = getattr(search, name)

        def timed(*a, _f=f, _name=name, **k):
            sync(device)
            t = time.perf_counter()
            r = _f(*a, **k)
            sync(device)
            totals[_name] = totals.get(_name, 0.0) + time.perf_counter() - t
            return r
        setattr(search, name, timed)
    return totals, lambda: [setattr(search, n, f) for n, f in saved.items()]


def profile_table(fn, device, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        fn()
        sync(device)
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def host_overhead(args) -> int:
    """Microseconds per step of both tools on a tiny MLP, median of 7 calls after a warm-up."""
    import statistics

    import torchattacks

    import gpuopt

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = args.device
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval().to(dev)
    x = torch.rand(8, 4, device=dev)
    with torch.no_grad():
        y = model(x).argmax(1)
    pgd = torchattacks.PGD(model, eps=0.1, alpha=0.025, steps=args.steps)
    tools = {"gpuopt": lambda: gpuopt.attack(model, x, y, eps=0.1, steps=args.steps, clip=(0, 1), seed=0,
                                             stop_on_success=False),
             "torchattacks": lambda: pgd(x, y)}
    rows = {}
    for name, call in tools.items():
        call()
        times = []
        for _ in range(7):
            sync(dev)
            t = time.perf_counter()
            call()
            sync(dev)
            times.append(time.perf_counter() - t)
        rows[name] = 1e6 * statistics.median(times) / args.steps
        print(f"{name:14s} {rows[name]:8.1f} us per step ({args.steps} steps, tiny MLP, batch 8, {dev})", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"argv": sys.argv[1:], "host_overhead_us_per_step": rows}, indent=1))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--onnx", default=str(MNIST / "onnx" / "mnist-net_256x6.onnx"))
    ap.add_argument("--vnnlib", default=str(MNIST / "vnnlib" / "prop_0_0.03.vnnlib"))
    ap.add_argument("--restarts-list", type=int, nargs="+", default=[1000, 4000])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--profile-steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="JSON of the timings")
    ap.add_argument("--host-overhead", action="store_true",
                    help="instead: time per step of gpuopt.attack and torchattacks.PGD on a tiny MLP (4-8-3, "
                         "batch 8, --steps steps), where almost all of a step is host overhead")
    args = ap.parse_args(argv)
    if args.host_overhead:
        return host_overhead(args)
    if not Path(args.onnx).is_file():
        print(f"network not found: {args.onnx} (../shared/benchmarks is needed)")
        return 2
    import torchattacks

    torch.set_num_threads(args.threads)
    dev = args.device
    net, lower, upper, A, b, label, why = throughput_case(args.onnx, args.vnnlib)
    if label is None:
        print(f"not a robustness property: {why}")
        return 2
    model = Logits(net, lower[0], upper[0], device=dev).eval()
    pgd_attack(net, lower, upper, A, b, config=AttackConfig(restarts=8, steps=2, rounds=1), device=dev)
    sync(dev)
    rows = []
    for R in args.restarts_list:
        x = torch.full((R, net.input_size), 0.5, device=dev)
        y = torch.full((R,), label, device=dev)

        def ours(steps):
            return pgd_attack(net, lower, upper, A, b, config=AttackConfig(restarts=R, steps=steps, rounds=1),
                              device=dev)

        def theirs(steps):
            return torchattacks.PGD(model, eps=0.5, alpha=0.125, steps=steps, random_start=True)(x, y)

        theirs(2)
        sync(dev)
        best = {"gpuopt": float("inf"), "torchattacks": float("inf")}
        parts = {}
        for _ in range(args.repeats):
            totals, restore = timed_parts(dev)
            t = time.perf_counter()
            ours(args.steps)
            sync(dev)
            sec = time.perf_counter() - t
            restore()
            if sec < best["gpuopt"]:
                best["gpuopt"], parts = sec, dict(totals)
            t = time.perf_counter()
            theirs(args.steps)
            sync(dev)
            best["torchattacks"] = min(best["torchattacks"], time.perf_counter() - t)
        row = {"restarts": R, "steps": args.steps, "device": dev, **{f"{k}_s": v for k, v in best.items()},
               "ratio": best["torchattacks"] / best["gpuopt"], "gpuopt_parts_s": parts}
        rows.append(row)
        print(f"\n== R={R}, {args.steps} steps on {dev}: gpuopt {best['gpuopt']:.3f} s, torchattacks "
              f"{best['torchattacks']:.3f} s (ratio {row['ratio']:.2f}); gpuopt's parts: "
              + ", ".join(f"{k.strip('_')} {v:.3f} s" for k, v in parts.items()), flush=True)
        for name, fn in (("gpuopt", ours), ("torchattacks", theirs)):
            print(f"\n-- {name}, {args.profile_steps} steps, R={R}")
            print(profile_table(lambda: fn(args.profile_steps), dev, args.rows), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"argv": sys.argv[1:], "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
