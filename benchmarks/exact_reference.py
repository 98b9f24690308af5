"""gpuopt's verdicts against the exact rational reference, on many seeded tiny cases.

Runs the generator of ``tests/exact_reference.py`` (tiny ReLU networks with float32 weights
scaled by up to 1e+-6 per layer, dead and duplicated neurons, specs whose offsets sit at, or a
rounding step / 1e-7 / 1e-3 / 0.1 relative from, the exact optimum) for ``--cases`` seeds from
``--seed`` on, verifies every variant and checks each verdict exactly: a ``sat`` needs a point in
the box with exact margin ``<= 0``, an ``unsat`` an exact minimum ``> 0``. Prints a table of
counts per variant (sat/unsat/unknown/timeout/wrong) and the wrong answers, and writes JSON.

    python benchmarks/exact_reference.py --cases 500 --seed 1000 --out results.json [--bab relu|handoff] [--cuts all]
                                                                    [--branching fsb] [--milp-refine 0.5 [--milp-refine-probe 0]]
                                                                    [--few-input-bounds]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from exact_reference import cheap_config, default_labels, make_case, run_case, summarize  # noqa: E402

ALL_LABELS = {"zero", "ulp-", "ulp+", "rel-7", "rel+7", "rel-3", "rel+3", "rel-1", "rel+1"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=200, help="number of generated networks (seeds)")
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--timeout", type=float, default=2.0, help="seconds per verify call")
    ap.add_argument("--variants", choices=["test", "all"], default="all",
                    help="'test': the 4-5 offsets the unit test runs per case; 'all': all 9")
    ap.add_argument("--full-attack", action="store_true",
                    help="use the default VerifyConfig instead of the short attack of the tests")
    ap.add_argument("--out", type=Path, default=None, help="write the outcomes and the summary as JSON")
    ap.add_argument("--bab", choices=["auto", "relu", "handoff"], default="auto",
                    help="relu: input splitting off, so activation splitting (and the MILP) decide the cases; "
                         "handoff: as relu, with activation splitting stopped after a handful of domains, so "
                         "the MILPs on its leaves decide")
    ap.add_argument("--cuts", default=None, metavar="KINDS",
                    help="add these valid inequalities to every MILP (gpuopt.milp.cuts.cut_kinds: all, ideal, "
                         "implication)")
    ap.add_argument("--branching", default=None, metavar="RULE",
                    help="activation splitting's branching rule (gpuopt.relu_split.BRANCHING: babsr, fsb)")
    ap.add_argument("--milp-refine", type=float, default=None, metavar="SHARE",
                    help="refine the intermediate bounds by per-neuron MILPs in this share of the time left "
                         "(gpuopt.bounds.milp_refine; with --bab relu, so that activation splitting runs)")
    ap.add_argument("--milp-refine-probe", type=float, default=None, metavar="SHARE",
                    help="with --milp-refine: activation splitting's share before the refinement (0: none, so that "
                         "the refinement runs on every case splitting has not closed)")
    ap.add_argument("--milp-condition", type=float, default=None, metavar="SHARE",
                    help="condition every MILP's bounds on its disjunct in this share of its time left, with no "
                         "MILP run before it (gpuopt.engine.tasks.milp_task; MILP_FIRST_SHARE and "
                         "MILP_FIRST_SECONDS set to 0 in this process, which runs the tasks inline)")
    ap.add_argument("--few-input-bounds", action="store_true",
                    help="give every network the few-input path's intermediate bounds (forward bounds tightened by "
                         "the zonotope, gpuopt.bounds.zonotope) instead of CROWN's, as on few-input wide nets "
                         "(these cases are too narrow to take it by themselves); the verify calls run in this process")
    ap.add_argument("--milp-beside", choices=("auto", "on", "off"), default="auto",
                    help="the MILPs beside activation splitting (gpuopt.engine.beside); on: started with splitting, "
                         "no delay, on every case that reaches it")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    import torch

    import gpuopt
    from gpuopt import VerifyConfig

    torch.set_num_threads(1)
    config = VerifyConfig(device="cpu") if args.full_attack else cheap_config()
    if args.bab in ("relu", "handoff"):
        config = replace(config, use_input_split=False)
        if args.bab == "handoff":
            from gpuopt.relu_split import ReluSplitConfig

            config = replace(config, relu_split=ReluSplitConfig(max_domains=3, batch_size=2, handoff=64))
    if args.branching is not None:
        # an unknown rule is refused here, before any case
        config = replace(config, relu_split=replace(config.relu_split, branching=args.branching))
    if args.cuts is not None:
        config = replace(config, cuts=args.cuts)  # an unknown family is refused here, before any case
    if args.milp_refine is not None:
        config = replace(config, milp_refine_share=args.milp_refine)  # a share outside [0, 1] is refused here
    if args.milp_refine_probe is not None:
        config = replace(config, milp_refine_probe_share=args.milp_refine_probe)
    if args.milp_condition is not None:
        from gpuopt.engine import tasks

        config = replace(config, milp_condition_share=args.milp_condition)  # a share outside [0, 1] is refused here
        tasks.MILP_FIRST_SHARE = tasks.MILP_FIRST_SECONDS = 0.0
    if args.milp_beside != "auto":
        config = replace(config, milp_beside=args.milp_beside == "on")
        if args.milp_beside == "on":
            from gpuopt.engine import beside

            beside.DELAY_SECONDS = 0.0
    if args.few_input_bounds:
        from gpuopt.bounds import forward
        from gpuopt.engine import stages

        forward.prefers_forward = stages.prefers_forward = lambda network: True
    outcomes, cases_info, ref_seconds = [], [], 0.0
    t0 = time.monotonic()
    for seed in range(args.seed, args.seed + args.cases):
        ts = time.monotonic()
        case = make_case(seed)
        ref_seconds += time.monotonic() - ts
        labels = default_labels(case) if args.variants == "test" else ALL_LABELS
        res = run_case(case, timeout=args.timeout, config=config, labels=labels, catch=True)
        outcomes += res
        cases_info.append({"seed": seed, "m0": str(case.m0), **case.info})
        if not args.quiet:
            line = " ".join(f"{o.label}:{o.status}{'!WRONG' if o.wrong else ''}" for o in res)
            print(f"seed {seed:6d} n_in={case.info['n_in']:2d} hidden={sum(case.info['widths']):3d} {line}",
                  flush=True)
    wall = time.monotonic() - t0
    wrong = [o for o in outcomes if o.wrong]
    print()
    print(summarize(outcomes))
    print(f"\ngpuopt from {Path(gpuopt.__file__).parent}")
    print(f"{len(outcomes)} verify calls on {args.cases} cases in {wall:.1f} s "
          f"(reference {ref_seconds:.1f} s); {len(wrong)} wrong")
    for o in wrong:
        print(f"  WRONG seed {o.seed} variant {o.label}: {o.reason}")
    for o in outcomes:
        if o.status == "error":
            print(f"  ERROR seed {o.seed} variant {o.label}: {o.reason}")
    if args.out is not None:
        counts = {}
        for o in outcomes:
            c = counts.setdefault(o.label, {"truth": o.truth, "sat": 0, "unsat": 0, "unknown": 0, "timeout": 0,
                                            "error": 0, "wrong": 0})
            c[o.status] = c.get(o.status, 0) + 1
            c["wrong"] += int(o.wrong)
        args.out.write_text(json.dumps({
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "gpuopt": str(Path(gpuopt.__file__).parent),
            "wall_seconds": wall, "reference_seconds": ref_seconds,
            "counts": counts, "n_wrong": len(wrong),
            "wrong": [o.as_dict() for o in wrong],
            "outcomes": [o.as_dict() for o in outcomes],
            "cases": cases_info,
        }, indent=1))
        print(f"wrote {args.out}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
