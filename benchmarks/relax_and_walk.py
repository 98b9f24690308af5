"""Relax-and-Walk on random ReLU networks: local search vs gradient ascent vs HiGHS vs the hybrid.

The experiment of Tong, Cai and Serra (CPAIOR 2024, "Optimization over trained neural networks:
taking a relaxing walk"): maximise the single output of a seeded random ReLU network over the box
``[-1, 1]^n``. A family is ``(n_in, depth, width)``: ``depth`` hidden layers of ``width`` ReLUs,
He-initialised weights ``N(0, 2 / fan_in)``, biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, one
output; the weights come from ``numpy.random.default_rng((seed, n_in, depth, width))``.

Each method gets the same wall-clock budget per instance (``--budget`` seconds); what it needs
prepared (CROWN bounds, the MILP model) is built outside the budget and reported as ``setup``:

``walk``        :func:`gpuopt.milp.walk.relax_and_walk` from the box centre (then its own LP
                relaxation point and flip restarts), on the big-M model;
``ppga``        perturbed projected gradient ascent (after Tong, Zhu, Serra and Burer 2025): a
                batch of random starts, projected Adam (or sign) steps, and a Gaussian kick from
                its best point for every iterate that stalls; written here, in torch;
``ppga+walk``   half the budget PPGA, then the walk from the best distinct PPGA points;
``milp-bigm``   HiGHS on the big-M model (incumbent and dual bound);
``milp-bigm+impl`` the same with the implication inequalities (:mod:`gpuopt.milp.cuts`) added
                inside the budget;
``milp-psplit`` HiGHS on the P-split model (``partition:2``);
``optimize``    :func:`gpuopt.optimize` with ``timeout=budget`` (it builds its own bounds and model
                inside the budget): gradient ascent, walk, then HiGHS;
``optimize+cuts`` the same with ``cuts="all"`` (implication and ideal cuts in its MILP).

Every value is the float64 forward pass (``Network.forward64``) at the returned point, and a point
outside the box is flagged (``in_box: false``) and never counts as a win. Upper bounds: the MILPs'
dual bounds (``upper_bound`` = ``-(dual_bound)``, and ``upper_bound_sound`` less HiGHS's proof
margin) and ``optimize``'s sound bound; a value above the least sound bound of its instance is
printed as a VIOLATION.

    python benchmarks/relax_and_walk.py --inputs 10 --depths 1 --widths 100 --seeds 1 --budget 3
    python benchmarks/relax_and_walk.py --families 100x3x100,100x1x500 --seeds 2 --budget 10 --resume
    python benchmarks/relax_and_walk.py --table-only

Results are JSON lines (one per instance and method, flushed as each finishes) in
``benchmarks/results/relax_and_walk.jsonl``; ``--resume`` skips the records already there.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gpuopt import Box, Network, optimize  # noqa: E402
from gpuopt.bounds.crown import crown  # noqa: E402
from gpuopt.layers import Dense, ReLU  # noqa: E402
from gpuopt.milp.encode import encode  # noqa: E402
from gpuopt.milp.highs import MilpStatus, abandoned_runs, solve_milp  # noqa: E402
from gpuopt.milp.walk import WalkConfig, relax_and_walk  # noqa: E402

METHODS = ("walk", "ppga", "ppga+walk", "milp-bigm", "milp-bigm+impl", "milp-psplit", "optimize", "optimize+cuts")
DEFAULT_OUT = REPO / "benchmarks" / "results" / "relax_and_walk.jsonl"
TOL = 1e-6  # relative/absolute tolerance for ties and bound checks


# ---------------------------------------------------------------------------- instances
def random_network(n_in: int, depth: int, width: int, seed: int) -> Network:
    """The seeded random ReLU network of a family (module docstring)."""
    rng = np.random.default_rng((seed, n_in, depth, width))
    layers, fan_in = [], n_in
    for k, out in enumerate([width] * depth + [1]):
        W = rng.normal(0.0, math.sqrt(2.0 / fan_in), size=(out, fan_in))
        b = rng.uniform(-1.0, 1.0, size=out) / math.sqrt(fan_in)
        layers.append(Dense(W, b))
        if k < depth:
            layers.append(ReLU())
        fan_in = out
    return Network(layers, (n_in,))


class Instance:
    """One network with its box and, built on demand and timed, its bounds and MILP models."""

    def __init__(self, n_in: int, depth: int, width: int, seed: int):
        self.family = (n_in, depth, width)
        self.seed = seed
        t = time.monotonic()
        self.net = random_network(n_in, depth, width, seed)
        self.lo, self.hi = -np.ones(n_in), np.ones(n_in)
        self.blocks = self.net.affine_blocks()
        self.setup = {"network": time.monotonic() - t}
        self._bounds = None
        self._models: dict = {}

    def value(self, x) -> float:
        return float(self.net.forward64(np.asarray(x, dtype=np.float64).reshape(1, -1))[0, 0])

    def in_box(self, x) -> bool:
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        return bool(x.size == self.lo.size and np.all(x >= self.lo) and np.all(x <= self.hi))

    def bounds(self):
        if self._bounds is None:
            t = time.monotonic()
            b = crown(self.net, torch.tensor(self.lo[None]), torch.tensor(self.hi[None]))
            pre = [(l[0].numpy(), u[0].numpy()) for l, u in b.pre_activation]
            out = (b.output[0][0].numpy(), b.output[1][0].numpy())
            self._bounds = (pre, out)
            self.setup["crown"] = time.monotonic() - t
            self.crown_upper = float(out[1][0])
            self.unstable = int(sum(int(np.sum((l < 0) & (u > 0))) for l, u in pre))
        return self._bounds

    def model(self, formulation: str):
        if formulation not in self._models:
            pre, out = self.bounds()
            t = time.monotonic()
            # maximise y_0 = minimise -y_0: A_spec = -e_0, b_spec = 0
            self._models[formulation] = encode(self.blocks, pre, out, self.lo, self.hi, np.array([[-1.0]]),
                                               np.array([0.0]), formulation=formulation)
            self.setup[f"encode_{formulation}"] = time.monotonic() - t
        return self._models[formulation]


# ---------------------------------------------------------------------------- PPGA
def ppga(inst: Instance, deadline: float, *, seed: int, batch: int = 256, step: str = "adam",
         patience: int = 20, keep: int = 0):
    """Perturbed projected gradient ascent on ``y_0`` until ``deadline``.

    ``batch`` iterates start uniformly in the box; each takes projected Adam (or sign) steps of
    its own step size (a fraction of the box's half-width, log-uniform in ``[1e-3, 0.1]``, the
    first batch spread over that range). An iterate that has not beaten its own best value for
    ``patience`` steps is kicked: a Gaussian of random scale (log-uniform in ``[1e-3, 0.3]`` of the
    half-width) around its own best point (or, one time in four, the batch's best), clamped into
    the box, with a fresh step size and Adam state. The best point is tracked in float64.

    Returns ``(best_x, best_value, info, starts)``; ``starts`` (when ``keep > 0``): up to ``keep``
    best iterate points of distinct activation patterns, best first."""
    net = inst.net
    gen = torch.Generator().manual_seed(int(seed))
    dt = torch.float32
    lo = torch.tensor(inst.lo, dtype=dt)[None]
    hi = torch.tensor(inst.hi, dtype=dt)[None]
    half = (hi - lo) / 2
    n = lo.shape[1]

    def log_uniform(k, a, b):
        return torch.exp(math.log(a) + (math.log(b) - math.log(a)) * torch.rand(k, 1, generator=gen, dtype=dt))

    x = lo + (hi - lo) * torch.rand(batch, n, generator=gen, dtype=dt)
    lr = log_uniform(batch, 1e-3, 0.1)
    m, v = torch.zeros_like(x), torch.zeros_like(x)
    t_adam = torch.zeros(batch, 1, dtype=dt)
    own_v = torch.full((batch,), -math.inf, dtype=dt)
    own_x = x.clone()
    stall = torch.zeros(batch, dtype=torch.long)
    best = {"x": None, "v": -math.inf, "v32": -math.inf}
    iters = kicks = 0
    b1, b2, eps = 0.9, 0.999, 1e-12

    def consider(points: torch.Tensor):
        for p in points:
            p64 = p.detach().double().numpy()
            val = inst.value(p64)
            if val > best["v"]:
                best.update(x=p64.copy(), v=val)

    while time.monotonic() < deadline:
        x.requires_grad_(True)
        val = net(x)[:, 0]
        (grad,) = torch.autograd.grad(val.sum(), x)
        x, val = x.detach(), val.detach()
        iters += 1
        better = val > own_v
        own_v = torch.where(better, val, own_v)
        own_x[better] = x[better]
        stall = torch.where(better, torch.zeros_like(stall), stall + 1)
        top = float(val.max())
        if top > best["v32"]:  # confirm the leaders in float64
            best["v32"] = top
            consider(x[torch.topk(val, min(4, batch)).indices])
        if step == "sign":
            d = torch.sign(grad)
        else:
            t_adam += 1
            m.mul_(b1).add_((1 - b1) * grad)
            v.mul_(b2).add_((1 - b2) * grad * grad)
            d = (m / (1 - b1 ** t_adam)) / ((v / (1 - b2 ** t_adam)).sqrt() + eps)
        x = torch.minimum(torch.maximum(x + lr * half * d, lo), hi)
        kick = stall >= patience
        k = int(kick.sum())
        if k:
            kicks += k
            centre = own_x[kick].clone()
            if best["x"] is not None:
                use_best = torch.rand(k, generator=gen) < 0.25
                centre[use_best] = torch.tensor(best["x"], dtype=dt)
            sigma = log_uniform(k, 1e-3, 0.3) * half
            x[kick] = torch.minimum(torch.maximum(centre + sigma * torch.randn(k, n, generator=gen, dtype=dt), lo), hi)
            lr[kick] = log_uniform(k, 1e-3, 0.1)
            m[kick], v[kick], t_adam[kick] = 0.0, 0.0, 0.0
            stall[kick] = 0
    starts = []
    if keep > 0:
        order = torch.argsort(own_v, descending=True)
        with torch.no_grad():
            _, pats = net(own_x[order], return_pattern=True)
        pat = torch.cat(pats, dim=1) if pats else torch.zeros(batch, 0, dtype=torch.bool)
        seen = set()
        if best["x"] is not None:
            starts.append(best["x"])
            with torch.no_grad():
                _, bp = net(torch.tensor(best["x"], dtype=dt)[None], return_pattern=True)
            seen.add(torch.cat(bp, dim=1)[0].numpy().tobytes() if bp else b"")
        for i in range(batch):
            key = pat[i].numpy().tobytes()
            if key in seen:
                continue
            seen.add(key)
            starts.append(own_x[order[i]].double().numpy())
            if len(starts) >= keep:
                break
    return best["x"], best["v"], {"iterations": iters, "kicks": kicks, "batch": batch, "step": step}, starts


# ---------------------------------------------------------------------------- methods
def walk_config(args) -> WalkConfig:
    return WalkConfig(max_lps=args.walk_max_lps, restarts=args.walk_restarts)


def run_walk(inst: Instance, budget: float, args) -> dict:
    model = inst.model("bigm")
    t0 = time.monotonic()
    res = relax_and_walk(model, inst.blocks, starts=[(inst.lo + inst.hi) / 2], deadline=t0 + budget,
                         config=walk_config(args))
    seconds = time.monotonic() - t0
    return {"x": res.x, "seconds": seconds, "lps": res.lps, "walks": res.walks, "regions": res.regions,
            "stopped": res.stopped, "walk_value": -res.value, "relaxation_bound": -res.relaxation,
            "setup_used": ["crown", "encode_bigm"]}


def run_ppga(inst: Instance, budget: float, args) -> dict:
    t0 = time.monotonic()
    x, v, info, _ = ppga(inst, t0 + budget, seed=inst.seed, batch=args.ppga_batch, step=args.ppga_step)
    return {"x": x, "seconds": time.monotonic() - t0, "ppga": info, "setup_used": []}


def run_ppga_walk(inst: Instance, budget: float, args) -> dict:
    model = inst.model("bigm")
    t0 = time.monotonic()
    x, v, info, starts = ppga(inst, t0 + budget / 2, seed=inst.seed, batch=args.ppga_batch, step=args.ppga_step,
                              keep=walk_config(args).max_starts)
    t1 = time.monotonic()
    res = relax_and_walk(model, inst.blocks, starts=starts, deadline=t0 + budget, config=walk_config(args))
    seconds = time.monotonic() - t0
    best_x = x
    if res.x is not None and (x is None or inst.value(res.x) > v):
        best_x = res.x
    return {"x": best_x, "seconds": seconds, "ppga": info, "ppga_value": v, "ppga_seconds": t1 - t0,
            "walk_value": -res.value, "walk_seconds": res.seconds, "lps": res.lps, "walks": res.walks,
            "regions": res.regions, "stopped": res.stopped, "starts": len(starts),
            "setup_used": ["crown", "encode_bigm"]}


def run_milp(inst: Instance, budget: float, args, formulation: str, cuts=False) -> dict:
    model = inst.model(formulation)
    t0 = time.monotonic()
    if cuts:  # built inside the budget
        from gpuopt.milp.cuts import strengthen

        model, _ = strengthen(model, inst.blocks, cuts, deadline=t0 + 0.1 * budget)
    res = solve_milp(model, time_limit=budget, threshold=np.inf, deadline=t0 + budget)
    seconds = time.monotonic() - t0
    x = None if res.solution is None else res.solution[model.x_index]
    ok = res.status in (MilpStatus.OPTIMAL, MilpStatus.TIME_LIMIT, MilpStatus.INTERRUPTED) and not res.warnings \
        and np.isfinite(res.dual_bound)
    return {"x": x, "seconds": seconds, "milp_status": res.status.value, "raw_status": res.raw_status,
            "nodes": res.nodes, "milp_objective": -res.objective if np.isfinite(res.objective) else None,
            "upper_bound": -res.dual_bound if np.isfinite(res.dual_bound) else None,
            "upper_bound_sound": -(res.dual_bound - res.proof_margin) if ok else None,
            "proof_margin": res.proof_margin, "warnings": list(res.warnings), "binaries": model.n_binaries,
            "setup_used": ["crown", f"encode_{formulation}"]}


def run_optimize(inst: Instance, budget: float, args, cuts=False) -> dict:
    t0 = time.monotonic()
    res = optimize(inst.net, Box(inst.lo, inst.hi), np.array([1.0]), timeout=budget, seed=inst.seed,
                   formulation="bigm", cuts=cuts)
    seconds = time.monotonic() - t0
    return {"x": res.x, "seconds": seconds, "reported_value": res.best_value,
            "upper_bound": res.upper_bound if math.isfinite(res.upper_bound) else None,
            "upper_bound_sound": res.upper_bound if math.isfinite(res.upper_bound) else None,
            "status": res.status, "stage_values": res.stage_values, "stage_seconds": res.stage_seconds,
            "milp": res.milp, "setup_used": []}


RUNNERS = {
    "walk": run_walk,
    "ppga": run_ppga,
    "ppga+walk": run_ppga_walk,
    "milp-bigm": lambda i, b, a: run_milp(i, b, a, "bigm"),
    "milp-bigm+impl": lambda i, b, a: run_milp(i, b, a, "bigm", cuts="implication"),
    "milp-psplit": lambda i, b, a: run_milp(i, b, a, "partition:2"),
    "optimize": run_optimize,
    "optimize+cuts": lambda i, b, a: run_optimize(i, b, a, cuts="all"),
}


# ---------------------------------------------------------------------------- records
def key_of(rec: dict) -> tuple:
    return (rec["n_in"], rec["depth"], rec["width"], rec["seed"], rec["method"], float(rec["budget"]))


def load(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                print(f"skipping a broken line in {path}: {line[:80]}", file=sys.stderr)
    return out


def finite_or_none(v):
    return float(v) if v is not None and math.isfinite(float(v)) else None


def make_record(inst: Instance, method: str, budget: float, out: dict) -> dict:
    x = out.pop("x")
    n_in, depth, width = inst.family
    rec = {"n_in": n_in, "depth": depth, "width": width, "seed": inst.seed, "method": method,
           "budget": budget}
    if x is None:
        rec.update(value=None, in_box=None)
    else:
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        rec.update(value=inst.value(x), in_box=inst.in_box(x),
                   box_violation=float(max(np.max(inst.lo - x), np.max(x - inst.hi), 0.0)))
    used = out.pop("setup_used")
    rec["setup"] = {k: round(inst.setup[k], 4) for k in ["network"] + used if k in inst.setup}
    if used:
        rec["crown_upper"] = inst.crown_upper
        rec["unstable"] = inst.unstable
    for k, v in out.items():
        if isinstance(v, float):
            v = finite_or_none(v)
        rec[k] = v
    return rec


def run(args) -> None:
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = {key_of(r) for r in load(path)} if args.resume else set()
    if not args.resume and path.exists() and not args.append:
        path.unlink()
    methods = args.methods
    torch.set_num_threads(args.threads)
    # seed-major: a run cut short has every family's first instances
    for seed in range(args.seed0, args.seed0 + args.seeds):
        for fam in args.family_list:
            todo = [m for m in methods if (*fam, seed, m, float(args.budget)) not in done]
            if not todo:
                continue
            inst = Instance(*fam, seed)
            for method in todo:
                t = time.monotonic()
                try:
                    out = RUNNERS[method](inst, args.budget, args)
                    rec = make_record(inst, method, args.budget, out)
                except Exception as err:  # keep going: record the crash
                    rec = {"n_in": fam[0], "depth": fam[1], "width": fam[2], "seed": seed, "method": method,
                           "budget": args.budget, "value": None, "in_box": None, "error": repr(err),
                           "traceback": traceback.format_exc()[-2000:]}
                rec["wall"] = round(time.monotonic() - t, 3)
                # a HiGHS run abandoned at its deadline (presolve ignores time limits) keeps a core
                # busy until its next callback: let it finish before the next method is timed
                t = time.monotonic()
                while abandoned_runs():
                    time.sleep(0.05)
                if time.monotonic() - t > 0.01:
                    rec["abandoned_wait"] = round(time.monotonic() - t, 3)
                with path.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                    f.flush()
                v = rec.get("value")
                ub = rec.get("upper_bound")
                print(f"{fam[0]:>5}x{fam[1]}x{fam[2]:<4} seed {seed}  {method:<12} "
                      f"value {'-' if v is None else f'{v:.6g}':>12}  "
                      f"ub {'-' if ub is None else f'{ub:.6g}':>12}  {rec.get('seconds', rec['wall']):6.2f}s"
                      + (f"  lps {rec['lps']}" if "lps" in rec else "")
                      + (f"  (HiGHS overran by {rec['abandoned_wait']:.1f}s)" if "abandoned_wait" in rec else "")
                      + (f"  ERROR {rec['error']}" if "error" in rec else ""), flush=True)


# ---------------------------------------------------------------------------- table
def fmt(v, width=10, prec=5):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-".rjust(width)
    return f"{v:.{prec}g}".rjust(width)


def table(records: list[dict]) -> str:
    latest = {}
    for r in records:
        latest[key_of(r)] = r  # the last record of a key wins
    inst = defaultdict(dict)
    for (n, d, w, s, m, b), r in latest.items():
        inst[(n, d, w, b, s)][m] = r
    lines, violations, oddities = [], [], []
    fams = defaultdict(list)
    for (n, d, w, b, s), recs in sorted(inst.items()):
        fams[(n, d, w, b)].append((s, recs))
    tot_wins, tot_n = defaultdict(int), defaultdict(int)
    for (n, d, w, b), group in fams.items():
        methods = [m for m in METHODS if any(m in recs for _, recs in group)]
        stats = {m: defaultdict(list) for m in methods}
        cmp_counts = defaultdict(lambda: [0, 0])
        for s, recs in group:
            def valid(m):
                r = recs.get(m)
                return r["value"] if r is not None and r.get("value") is not None and r.get("in_box") else None
            vals = {m: valid(m) for m in recs}
            got = [v for v in vals.values() if v is not None]
            top = max(got) if got else None
            sound = [r.get("upper_bound_sound") for r in recs.values() if r.get("upper_bound_sound") is not None]
            crown_u = [r["crown_upper"] for r in recs.values() if r.get("crown_upper") is not None]
            ub = min(sound + crown_u) if sound or crown_u else None
            for m, r in recs.items():
                if m not in stats:
                    continue
                st = stats[m]
                v = vals.get(m)
                if r.get("error"):
                    oddities.append(f"{n}x{d}x{w} seed {s} {m}: crashed: {r['error']}")
                elif r.get("value") is not None and not r.get("in_box"):
                    oddities.append(f"{n}x{d}x{w} seed {s} {m}: point outside the box by {r.get('box_violation')}")
                if v is not None:
                    st["value"].append(v)
                    tot_n[m] += 1
                    if top is not None and v >= top - TOL * max(1.0, abs(top)):
                        st["wins"].append(1)
                        tot_wins[m] += 1
                    if ub is not None and v > ub + TOL * max(1.0, abs(ub)):
                        which = ", ".join(f"{k}: {q['upper_bound_sound']!r}" for k, q in recs.items()
                                          if q.get("upper_bound_sound") is not None)
                        violations.append(f"{n}x{d}x{w} seed {s} budget {b}: {m} value {v!r} > least sound upper "
                                          f"bound {ub!r} ({which}; crown {crown_u[:1]})")
                else:
                    st["missing"].append(1)
                st["seconds"].append(r.get("seconds", r.get("wall", math.nan)))
                if r.get("lps") is not None:
                    st["lps"].append(r["lps"])
                if r.get("upper_bound") is not None:
                    st["ub"].append(r["upper_bound"])
                if m == "optimize" and r.get("reported_value") is not None and v is not None \
                        and abs(r["reported_value"] - v) > TOL * max(1.0, abs(v)):
                    oddities.append(f"{n}x{d}x{w} seed {s} optimize: reported {r['reported_value']!r} but the "
                                    f"point evaluates to {v!r}")
                if m.startswith("milp") and r.get("milp_objective") is not None and v is not None \
                        and abs(r["milp_objective"] - v) > 1e-4 * max(1.0, abs(v)):
                    oddities.append(f"{n}x{d}x{w} seed {s} {m}: HiGHS objective {r['milp_objective']!r} vs the "
                                    f"float64 forward {v!r} at its point")
            hyb = vals.get("optimize")
            for other in ("milp-bigm", "milp-psplit", "ppga", "ppga+walk", "walk"):
                ov = vals.get(other)
                if other in recs and hyb is not None:
                    cmp_counts[other][1] += 1
                    if ov is None or hyb >= ov - TOL * max(1.0, abs(ov)):
                        cmp_counts[other][0] += 1
        nseeds = len(group)
        lines.append(f"\nfamily n_in={n} depth={d} width={w}  budget {b:g} s  ({nseeds} instance"
                     f"{'s' if nseeds != 1 else ''})")
        lines.append(f"  {'method':<12}{'mean best':>12}{'wins':>6}{'mean UB':>12}{'mean s':>8}{'mean LPs':>10}"
                     f"{'no value':>9}")
        for m in methods:
            st = stats[m]
            mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
            partial = "*" if st["missing"] and st["value"] else " "
            lines.append(f"  {m:<12}{fmt(mean(st['value']), 11, 6)}{partial}{len(st['wins']):>6}{fmt(mean(st['ub']), 12, 6)}"
                         f"{fmt(mean(st['seconds']), 8, 3)}{fmt(mean(st['lps']), 10, 4)}{len(st['missing']):>9}")
        if cmp_counts:
            lines.append("  optimize >= " + ", ".join(f"{k}: {c[0]}/{c[1]}" for k, c in cmp_counts.items()))
    lines.append("\n(* mean over the instances where the method returned a point; a missing HiGHS incumbent counts as "
                 "optimize >= it; UB: the method's own upper bound, -(dual bound) for HiGHS)")
    lines.append("\nall families: wins (value within 1e-6 of the instance's best) / instances with a value")
    lines.append("  " + ", ".join(f"{m}: {tot_wins[m]}/{tot_n[m]}" for m in METHODS if tot_n[m]))
    if violations:
        lines.append("\nVIOLATIONS (a value above a proven upper bound):")
        lines.extend("  " + v for v in violations)
    else:
        lines.append("\nno value exceeds its instance's least sound upper bound (MILP dual bounds, optimize, CROWN)")
    if oddities:
        lines.append("\noddities:")
        lines.extend("  " + o for o in oddities)
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main
def ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--inputs", default="10,100,1000", help="input sizes (comma-separated)")
    ap.add_argument("--depths", default="1,2,3", help="numbers of hidden layers")
    ap.add_argument("--widths", default="100,500", help="hidden layer widths")
    ap.add_argument("--families", default=None,
                    help="explicit families NxDxW, comma-separated (replaces --inputs/--depths/--widths)")
    ap.add_argument("--seeds", type=int, default=2, help="instances per family")
    ap.add_argument("--seed0", type=int, default=0, help="first seed")
    ap.add_argument("--budget", type=float, default=10.0, help="wall-clock seconds per method per instance")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="JSON-lines results file")
    ap.add_argument("--resume", action="store_true", help="keep the file, skip the records already in it")
    ap.add_argument("--append", action="store_true", help="keep the file but rerun everything")
    ap.add_argument("--table-only", action="store_true", help="print the table of --out and exit")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (HiGHS runs single-threaded)")
    ap.add_argument("--ppga-batch", type=int, default=256)
    ap.add_argument("--ppga-step", choices=("adam", "sign"), default="adam")
    ap.add_argument("--walk-max-lps", type=int, default=1_000_000, help="WalkConfig.max_lps (default: budget-bound)")
    ap.add_argument("--walk-restarts", type=int, default=64, help="WalkConfig.restarts")
    args = ap.parse_args(argv)
    if args.table_only:
        recs = load(Path(args.out))
        if not recs:
            print(f"no records in {args.out}", file=sys.stderr)
            return 1
        print(table(recs))
        return 0
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in RUNNERS]
    if bad:
        ap.error(f"unknown methods {bad}; choose from {list(METHODS)}")
    if args.families:
        try:
            args.family_list = [tuple(int(p) for p in f.lower().split("x")) for f in args.families.split(",") if f]
            assert all(len(f) == 3 for f in args.family_list)
        except (ValueError, AssertionError):
            ap.error("--families takes NxDxW items, e.g. 100x2x100,1000x1x500")
    else:
        args.family_list = [(n, d, w) for n in ints(args.inputs) for d in ints(args.depths) for w in ints(args.widths)]
    if not args.budget > 0:
        ap.error("--budget must be > 0")
    run(args)
    print(table([r for r in load(Path(args.out))]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
