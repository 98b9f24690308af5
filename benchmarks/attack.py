"""gpuopt's attack side by side with torchattacks (CPU, one thread; or ``--device cuda``), in three sections.

``falsify``: time to the first *confirmed* counterexample on the VNN-COMP 2022 instances that the
reference labels ``sat``: mnist_fc (all three networks, 18 instances) and acasxu (47), each with
``--budget`` seconds (default 10). Tools (``--variants``):

- ``gpuopt``: :func:`gpuopt.verify.attack_problems` with the default :class:`AttackConfig` (APGD,
  an eighth of the starts at box corners, the uniform ones each the best of 16 draws, half of
  them output-diversified, rounds of 64 restarts until the budget);
- ablations: ``gpuopt-no-odi`` (``odi=0``), ``gpuopt-no-corners`` (``corners=0``),
  ``gpuopt-no-screen`` (``screen=1``: uniform starts not screened) and ``gpuopt-pgd-cosine``
  (``schedule="cosine", step_size=0.5, corners=0, odi=0, screen=1``: plain PGD restarts), which
  show what each addition earns;
- ``torchattacks-pgd`` / ``torchattacks-apgd`` (mnist_fc only: they need a classifier and one
  true label): ``torchattacks.PGD(eps, alpha=eps/4, steps=100, random_start=True)`` and
  ``torchattacks.APGD(norm='Linf', eps, steps=100, n_restarts=1, loss='ce')`` on one image, in a
  loop of fresh restarts (restart ``k`` re-seeds torch's global RNG with ``k``, and APGD's own
  ``seed`` with ``k``) until a restart's point passes the float64 check or the budget ends.

  The mnist_fc property is a robustness property: box = ``[x0 - eps, x0 + eps] ∩ [0, 1]``, unsafe
  = "some class j != label has logit >= logit[label]". The label is the class that appears with
  coefficient +1 in every disjunct (each disjunct must be one row ``y_label - y_j <= 0``, and the
  j must be all other classes, else the instance is skipped with a reason). ``eps`` comes from the
  file name ``prop_<i>_<eps>``; the image is ``lower + eps`` where ``lower > 0`` (not clipped
  below), else ``upper - eps`` where ``upper < 1``, else the midpoint; the script asserts that
  ``[x0 - eps, x0 + eps] ∩ [0, 1]`` gives the box back to 1e-6 (else skips the instance). The
  file's bounds use float32(eps), so torchattacks' points may leave the box by ~1e-9: each point
  is clipped into the box before the check (the largest excursion is recorded as ``outside``).

Every counterexample is re-checked here with :func:`gpuopt.check.check_counterexample` against
the instance's Problems, *and* must lie in the exact input set unclipped (the check clips its
input silently). A gpuopt ``sat`` that fails this is a **false positive** (expected 0). For
torchattacks, ``refuted`` counts restarts whose float32 prediction was wrong but whose point
failed the float64 check (not counted as found). Time to first counterexample: gpuopt's
``Verdict.seconds`` (from the call, network already loaded); torchattacks: from the first restart.
Each tool gets one untimed warm-up call per suite.

``throughput``: restart-steps per second of a fixed-step run with no early stop (an instance
labelled ``unsat``, so no restart can succeed) on ``mnist-net_256x6.onnx`` (mnist_fc) and
oval21's ``cifar_base_kw.onnx``, for each R in ``--restarts-list`` (default 1000 4000) and
``--steps`` S (default 100), best of ``--repeats`` runs (default 2, alternating which tool goes
first, as the machine may be shared): gpuopt ``pgd_attack(..., AttackConfig(restarts=R, steps=S,
rounds=1))`` against ``torchattacks.PGD`` on a batch of R copies for S steps. Both rates are
R*S/seconds (gpuopt also evaluates the start, R*(S+1) = ``Candidates.evaluations``, reported as
``eval_rate``). So that both search the very same set, torchattacks attacks the network composed
with the affine map ``u -> lower + u (upper - lower)`` from ``[0, 1]^n`` onto the box, at
``x0 = 0.5``, ``eps = 0.5`` (oval21's box is in normalised coordinates, where torchattacks'
clamp to [0, 1] would be wrong); the map costs ~2n flops per row.

``api``: per-call time of ``gpuopt.attack(model, x, y, eps=8/255, steps=10, restarts=1,
clip=(0, 1), seed=0)`` (and with ``stop_on_success=False``) against ``torchattacks.PGD(model,
eps=8/255, alpha=2/255, steps=10)`` on a small random CNN (3x32x32 -> 10 classes) and 128 random
images labelled with the model's predictions: the median of ``--api-calls`` calls (default 10)
after 2 warm-up calls, the ratio, and the success rates (misclassified after the attack).

The JSON (``--out``) holds every row (``section, suite, instance, tool, found, seconds,
false_positive, ...``) and a summary per section; it is rewritten after every row, so a crash
keeps what was done. A table is printed at the end.

    python benchmarks/attack.py --budget 10 --sections falsify throughput api
    python benchmarks/attack.py --sections falsify --suites mnist_fc --limit 2 --budget 2   # a quick check
    python benchmarks/attack.py --sections throughput --restarts-list 50 --steps 5

Reads ../shared/benchmarks (relative to the repository); exits 0 with a message if absent.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vnncomp import BENCH, REPO, SUITES, instance_name, instances, reference_labels, reference_side  # noqa: E402

SECTIONS = ("falsify", "throughput", "api")
VARIANTS = ("gpuopt", "gpuopt-no-odi", "gpuopt-no-corners", "gpuopt-no-screen", "gpuopt-pgd-cosine",
            "torchattacks-pgd", "torchattacks-apgd")
#: --suites name -> the vnncomp.py suite holding every shared instance of that benchmark
FALSIFY_SUITES = {"mnist_fc": "mnist_fc_all", "acasxu": "acasxu_all"}
#: throughput networks: name -> (vnncomp.py suite, onnx file name)
THROUGHPUT_NETS = {"mnist_fc": ("mnist_fc_all", "mnist-net_256x6.onnx"), "oval21": ("oval21", "cifar_base_kw.onnx")}


# ----------------------------------------------------------------------------------- helpers
class Logits(torch.nn.Module):
    """A gpuopt Network as a torch classifier: any input shape ``(batch, ...)`` is flattened to
    ``(batch, n)``. With ``lower``/``upper`` the input ``u`` in ``[0, 1]^n`` is first mapped onto
    the box ``lower + u (upper - lower)``."""

    def __init__(self, net, lower=None, upper=None, device="cpu"):
        super().__init__()
        self.net = net
        # torchattacks reads the device from the first parameter
        self.anchor = torch.nn.Parameter(torch.zeros(1, device=device), requires_grad=False)
        self.lo = None if lower is None else torch.as_tensor(lower, dtype=torch.float32, device=device).reshape(1, -1)
        self.scale = None if lower is None else (
            torch.as_tensor(upper, dtype=torch.float32, device=device).reshape(1, -1) - self.lo)

    def forward(self, x):
        x = x.reshape(x.shape[0], -1)
        if self.lo is not None:
            x = self.lo + x * self.scale
        return self.net.forward(x)


def throughput_case(onnx, vnnlib):
    """``(network, lower, upper, A, b, label, why)`` of an instance: the boxes ``(K, n)`` and the
    stacked spec of its problems, and its robustness label (``None`` and why not)."""
    from gpuopt.engine.stages import stacked_spec
    from gpuopt.verify import load_instance

    problems = load_instance(onnx, vnnlib)
    lower = np.stack([p.region.lower for p in problems])
    upper = np.stack([p.region.upper for p in problems])
    A, b = stacked_spec(problems)
    return (problems[0].network, lower, upper, A, b) + robustness_label(problems[0])


def robustness_label(problem) -> tuple[int | None, str]:
    """The true class of a robustness spec (every disjunct one row ``y_label - y_j <= 0``, the j
    all other classes), or ``None`` and why not."""
    n_out = problem.spec.n_outputs
    labels, others = set(), set()
    for A, b in problem.spec.disjuncts:
        if A.shape[0] != 1 or b[0] != 0:
            return None, "a disjunct is not one row y_label - y_j <= 0"
        row = A[0]
        pos, neg = np.flatnonzero(row == 1), np.flatnonzero(row == -1)
        if len(pos) != 1 or len(neg) != 1 or np.count_nonzero(row) != 2:
            return None, "a disjunct is not one row y_label - y_j <= 0"
        labels.add(int(pos[0]))
        others.add(int(neg[0]))
    if len(labels) != 1:
        return None, f"no class is common to every disjunct ({sorted(labels)})"
    label = labels.pop()
    if others != set(range(n_out)) - {label}:
        return None, f"the disjuncts do not cover every class j != {label}"
    return label, ""


def mnist_image(problem, vnnlib: Path) -> tuple[np.ndarray | None, float | None, str]:
    """``(x0, eps, "")`` for an mnist_fc robustness box (see the module docstring), or
    ``(None, None, why)``."""
    m = re.fullmatch(r"prop_\d+_([0-9.]+)", vnnlib.name.removesuffix(".gz").removesuffix(".vnnlib"))
    if not m:
        return None, None, f"no eps in the file name {vnnlib.name}"
    eps = float(m.group(1))
    box = problem.inner if problem.inner is not None else problem.region
    lo, hi = box.lower, box.upper
    x0 = np.where(lo > 0, lo + eps, np.where(hi < 1, hi - eps, (lo + hi) / 2))
    err = max(np.abs(np.maximum(x0 - eps, 0) - lo).max(), np.abs(np.minimum(x0 + eps, 1) - hi).max())
    if not err <= 1e-6:
        return None, None, f"[x0 - eps, x0 + eps] ∩ [0, 1] misses the box by {err:.3g} (eps {eps} from the name)"
    return x0, eps, ""


def confirmed(problems, x) -> tuple[bool, float]:
    """Whether ``x`` (float64, flattened) is a counterexample of some Problem, unclipped, by
    :func:`gpuopt.check.check_counterexample`; and the smallest float64 margin seen."""
    from gpuopt.check import check_counterexample

    x = np.asarray(x, dtype=np.float64).reshape(-1)
    best = np.inf
    for p in problems:
        if p.inner is None:
            continue
        c = check_counterexample(p, x)
        best = min(best, c.margin)
        if c.ok and np.all(p.inner.lower <= x) and np.all(x <= p.inner.upper):
            return True, float(c.margin)
    return False, float(best)


def sync(device) -> None:
    """Waits for the device's queued work, so that a timer read after it counts that work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


class Report:
    """Rows and per-section summaries, rewritten to ``path`` after every row (atomically)."""

    def __init__(self, path: Path, meta: dict):
        self.path, self.meta, self.rows = path, meta, []
        path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.write()

    def write(self) -> None:
        data = {"meta": self.meta, "summary": summarise(self.rows), "rows": self.rows}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(_finite(data), indent=1, allow_nan=False))
        os.replace(tmp, self.path)


def _finite(v):
    """``v`` with numpy scalars as Python numbers and non-finite floats as strings (strict JSON)."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return "nan" if v != v else ("inf" if v > 0 else "-inf")
    return v


def summarise(rows) -> dict:
    out = {}
    fz = [r for r in rows if r["section"] == "falsify"]
    if fz:
        out["falsify"] = {}
        for suite in dict.fromkeys(r["suite"] for r in fz):
            per = out["falsify"].setdefault(suite, {})
            for tool in dict.fromkeys(r["tool"] for r in fz if r["suite"] == suite):
                rs = [r for r in fz if r["suite"] == suite and r["tool"] == tool]
                run = [r for r in rs if not r.get("skipped")]
                per[tool] = {
                    "instances": len(rs), "run": len(run), "skipped": len(rs) - len(run),
                    "found": sum(bool(r["found"]) for r in run),
                    "median_seconds_found": median(r["seconds"] for r in run if r["found"]),
                    "mean_seconds_found": (statistics.mean([r["seconds"] for r in run if r["found"]])
                                           if any(r["found"] for r in run) else None),
                    "false_positives": sum(bool(r.get("false_positive")) for r in run),
                    "refuted": sum(r.get("refuted", 0) for r in run),
                }
    tp = [r for r in rows if r["section"] == "throughput"]
    if tp:
        out["throughput"] = []
        for net in dict.fromkeys(r["suite"] for r in tp):
            for R in dict.fromkeys(r["restarts"] for r in tp if r["suite"] == net):
                by = {r["tool"]: r for r in tp if r["suite"] == net and r["restarts"] == R}
                g, t = by.get("gpuopt"), by.get("torchattacks-pgd")
                out["throughput"].append({
                    "suite": net, "network": (g or t)["network"], "restarts": R, "steps": (g or t)["steps"],
                    "gpuopt_rate": g and g["rate"], "gpuopt_eval_rate": g and g["eval_rate"],
                    "torchattacks_rate": t and t["rate"],
                    "ratio": g["rate"] / t["rate"] if g and t else None,
                    "gpuopt_early_stop": g and g["early_stop"],
                })
    api = [r for r in rows if r["section"] == "api"]
    if api:
        base = next((r for r in api if r["tool"] == "torchattacks-pgd"), None)
        out["api"] = {r["tool"]: {"median_seconds": r["median_seconds"], "success_rate": r["success_rate"],
                                  "time_ratio_vs_torchattacks": (r["median_seconds"] / base["median_seconds"]
                                                                 if base else None)}
                      for r in api}
    return out


# ------------------------------------------------------------------------------------ falsify
def gpuopt_falsify(problems, budget: float, config, device: str) -> dict:
    from gpuopt.verdict import Status
    from gpuopt.verify import attack_problems

    t0 = time.monotonic()
    v = attack_problems(problems, timeout=budget, attack=config, device=device)
    wall = time.monotonic() - t0
    found = v.status is Status.SAT
    row = {"found": found, "seconds": v.seconds if found else None, "wall": wall, "status": v.status.value,
           "false_positive": False, "detail": v.message}
    row["best_margin"] = v.margin_upper if math.isfinite(v.margin_upper) else None  # float64, at a real point
    if found:
        ok, margin = confirmed(problems, v.counterexample)
        row["false_positive"] = not ok
        row["margin"] = margin
    return row


def torchattacks_falsify(problems, net, x0: np.ndarray, eps: float, label: int, budget: float, which: str,
                         device: str) -> dict:
    import torchattacks

    model = Logits(net, device=device).eval()
    img = torch.as_tensor(x0, dtype=torch.float32, device=device).reshape(1, 1, 1, -1)  # APGD wants 4-d inputs
    y = torch.tensor([label], device=device)
    if which == "torchattacks-pgd":
        atk = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=100, random_start=True)
    else:
        atk = torchattacks.APGD(model, norm="Linf", eps=eps, steps=100, n_restarts=1, loss="ce")
    box = problems[0].inner
    t0 = time.monotonic()
    deadline = t0 + budget
    k = refuted = 0
    outside = 0.0
    found, seconds, margin, best = False, None, None, np.inf
    while True:
        torch.manual_seed(k)
        if which == "torchattacks-apgd":
            atk.seed = k  # APGD re-seeds the global RNG with its own seed on every call
        adv = atk(img, y)
        k += 1
        x = adv.detach().to("cpu", torch.float64).reshape(-1).numpy()
        outside = max(outside, float(np.maximum(box.lower - x, x - box.upper).max()))
        ok, m = confirmed(problems, np.clip(x, box.lower, box.upper))
        best = min(best, m)
        if ok:
            found, seconds, margin = True, time.monotonic() - t0, m
            break
        with torch.no_grad():
            if int(model(adv).argmax(dim=1)[0]) != label:
                refuted += 1
        if time.monotonic() >= deadline:
            break
    return {"found": found, "seconds": seconds, "wall": time.monotonic() - t0, "restarts": k, "refuted": refuted,
            "false_positive": False, "outside": outside, "margin": margin, "best_margin": best}


def run_falsify(args, report: Report) -> None:
    from gpuopt.attacks import AttackConfig
    from gpuopt.verify import attack_problems, load_instance

    configs = {"gpuopt": AttackConfig(),
               "gpuopt-no-odi": AttackConfig(odi=0.0),
               "gpuopt-no-corners": AttackConfig(corners=0.0),
               "gpuopt-no-screen": AttackConfig(screen=1),
               "gpuopt-pgd-cosine": AttackConfig(schedule="cosine", step_size=0.5, corners=0.0, odi=0.0, screen=1)}
    labels = reference_labels()
    for suite in args.suites:
        vsuite = FALSIFY_SUITES[suite]
        todo = [(o, v) for _, o, v, _ in instances([vsuite])
                if reference_side(labels.get((SUITES[vsuite][2], instance_name(o, v)), "?")) == "sat"]
        total = len(todo)
        if args.limit is not None:
            todo = todo[: args.limit]
        print(f"\n== falsify {suite}: {len(todo)} of {total} instances labelled sat, budget {args.budget:g} s",
              flush=True)
        tools = [t for t in args.variants if suite == "mnist_fc" or not t.startswith("torchattacks")]
        warm = set()
        for n, (onnx, vnnlib) in enumerate(todo, 1):
            name = instance_name(onnx, vnnlib)
            problems = load_instance(onnx, vnnlib)
            net = problems[0].network
            x0 = eps = label = None
            why = ""
            if any(t.startswith("torchattacks") for t in tools):
                label, why = robustness_label(problems[0]) if len(problems) == 1 else (None, "several input boxes")
                if label is not None:
                    x0, eps, why = mnist_image(problems[0], vnnlib)
            parts = []
            for tool in tools:
                base = {"section": "falsify", "suite": suite, "instance": name, "tool": tool, "budget": args.budget}
                if tool.startswith("torchattacks") and x0 is None:
                    report.add({**base, "found": False, "seconds": None, "skipped": why, "false_positive": False})
                    parts.append(f"{tool} skipped ({why})")
                    continue
                if tool not in warm:  # one untimed warm-up call per tool and suite
                    if tool.startswith("gpuopt"):
                        attack_problems(problems, timeout=None, attack=AttackConfig(restarts=2, steps=2, rounds=1),
                                        device=args.device)
                    else:
                        torchattacks_falsify(problems, net, x0, eps, label, 0.0, tool, args.device)
                    warm.add(tool)
                if tool.startswith("gpuopt"):
                    row = gpuopt_falsify(problems, args.budget, configs[tool], args.device)
                else:
                    row = torchattacks_falsify(problems, net, x0, eps, label, args.budget, tool, args.device)
                report.add({**base, **row})
                fp = "  FALSE POSITIVE" if row["false_positive"] else ""
                parts.append(f"{tool} " + (f"{row['seconds']:.2f}s" if row["found"] else "--") + fp)
            print(f"[{n}/{len(todo)}] {name:45s} " + " | ".join(parts), flush=True)


# --------------------------------------------------------------------------------- throughput
def run_throughput(args, report: Report) -> None:
    import torchattacks
    from gpuopt.attacks import AttackConfig, pgd_attack

    labels = reference_labels()
    S = args.steps
    for key in args.throughput_nets:
        vsuite, onnx_name = THROUGHPUT_NETS[key]
        pick = next(((o, v) for _, o, v, _ in instances([vsuite]) if o.name == onnx_name
                     and labels.get((SUITES[vsuite][2], instance_name(o, v))) == "unsat"), None)
        if pick is None:
            print(f"throughput {key}: no {onnx_name} instance labelled unsat; skipped")
            continue
        onnx, vnnlib = pick
        name = instance_name(onnx, vnnlib)
        net, lower, upper, A, b, label, why = throughput_case(onnx, vnnlib)
        if label is None:
            print(f"throughput {key}: {name}: {why}; skipped")
            continue
        dev = args.device
        model = Logits(net, lower[0], upper[0], device=dev).eval()
        print(f"\n== throughput {key}: {onnx.name} on {name} (label {label}, n = {net.input_size}), {S} steps",
              flush=True)
        # untimed warm-up of both
        pgd_attack(net, lower, upper, A, b, config=AttackConfig(restarts=8, steps=2, rounds=1), device=dev)
        torchattacks.PGD(model, eps=0.5, alpha=0.125, steps=2)(torch.full((8, net.input_size), 0.5, device=dev),
                                                                 torch.full((8,), label, device=dev))
        sync(dev)
        for R in args.restarts_list:
            base = {"section": "throughput", "suite": key, "instance": name, "network": onnx.name, "restarts": R,
                    "steps": S}
            cfg = AttackConfig(restarts=R, steps=S, rounds=1)
            x = torch.full((R, net.input_size), 0.5, device=dev)
            y = torch.full((R,), label, device=dev)
            atk = torchattacks.PGD(model, eps=0.5, alpha=0.5 / 4, steps=S, random_start=True)
            g_times, t_times = [], []
            for rep in range(args.repeats):  # alternating which goes first; the best of the repeats counts
                for tool in (("gpuopt", "torchattacks") if rep % 2 == 0 else ("torchattacks", "gpuopt")):
                    if tool == "gpuopt":
                        t0 = time.monotonic()
                        cand = pgd_attack(net, lower, upper, A, b, config=cfg, device=dev)
                        sync(dev)
                        g_times.append(time.monotonic() - t0)
                    else:
                        torch.manual_seed(rep)
                        t0 = time.monotonic()
                        atk(x, y)
                        sync(dev)
                        t_times.append(time.monotonic() - t0)
            sec, tsec = min(g_times), min(t_times)
            early = bool(cand.success.any()) or cand.steps < S
            report.add({**base, "tool": "gpuopt", "seconds": sec, "times": g_times, "rate": R * S / sec,
                        "evaluations": cand.evaluations, "eval_rate": cand.evaluations / sec, "early_stop": early,
                        "found": bool(cand.success.any()), "false_positive": False})
            report.add({**base, "tool": "torchattacks-pgd", "seconds": tsec, "times": t_times, "rate": R * S / tsec,
                        "found": False, "false_positive": False})
            note = "  (gpuopt stopped early: rate not comparable)" if early else ""
            print(f"R={R:6d}  gpuopt {sec:8.2f}s {R * S / sec:10.0f} restart-steps/s   torchattacks {tsec:8.2f}s "
                  f"{R * S / tsec:10.0f}/s   ratio {tsec / sec:.2f}  (best of {args.repeats}){note}", flush=True)


# ---------------------------------------------------------------------------------------- api
def small_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10)).eval()


def run_api(args, report: Report) -> None:
    import torchattacks

    import gpuopt

    dev = args.device
    model = small_cnn().to(dev)
    x = torch.rand(128, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(dev)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    eps = 8 / 255
    calls = {
        "gpuopt": lambda: gpuopt.attack(model, x, y, eps=eps, norm="linf", restarts=1, steps=10, clip=(0, 1), seed=0).x,
        "gpuopt-no-stop": lambda: gpuopt.attack(model, x, y, eps=eps, norm="linf", restarts=1, steps=10, clip=(0, 1),
                                                seed=0, stop_on_success=False).x,
        "torchattacks-pgd": lambda: torchattacks.PGD(model, eps=eps, alpha=2 / 255, steps=10)(x, y),
    }
    print(f"\n== api: small CNN, batch {x.shape[0]}, eps 8/255, 10 steps, median of {args.api_calls} calls", flush=True)
    for call in calls.values():
        for _ in range(2):
            call()
    names = list(calls)
    times = {t: [] for t in names}
    rates = {t: [] for t in names}
    linf = {t: 0.0 for t in names}
    for k in range(args.api_calls):  # the tools take turns, rotating which goes first (a shared machine's load)
        for tool in names[k % len(names):] + names[: k % len(names)]:
            torch.manual_seed(k)
            sync(dev)
            t0 = time.perf_counter()
            adv = calls[tool]()
            sync(dev)
            times[tool].append(time.perf_counter() - t0)
            with torch.no_grad():
                linf[tool] = max(linf[tool], float((adv - x).abs().max()))
                rates[tool].append(float((model(adv).argmax(dim=1) != y).float().mean()))
    for tool in names:
        med = statistics.median(times[tool])
        row = {"section": "api", "suite": "small_cnn", "instance": f"batch{x.shape[0]}", "tool": tool,
               "median_seconds": med, "seconds": med, "times": times[tool],
               "success_rate": statistics.mean(rates[tool]), "max_linf": linf[tool], "found": None,
               "false_positive": False}
        report.add(row)
        print(f"{tool:18s} {1e3 * med:8.1f} ms   success {100 * row['success_rate']:5.1f}%   "
              f"max |x_adv - x| {linf[tool]:.5f} (eps {eps:.5f})", flush=True)


# -------------------------------------------------------------------------------------- table
def print_table(summary: dict) -> None:
    fz = summary.get("falsify")
    if fz:
        print("\nfalsify: counterexamples confirmed in float64 (instances labelled sat)")
        print(f"{'suite':9s} {'tool':20s} {'found':>9s} {'skipped':>7s} {'median s':>9s} {'mean s':>8s} "
              f"{'false pos':>9s} {'refuted':>7s}")
        for suite, per in fz.items():
            for tool, s in per.items():
                med = "-" if s["median_seconds_found"] is None else f"{s['median_seconds_found']:.2f}"
                mean = "-" if s["mean_seconds_found"] is None else f"{s['mean_seconds_found']:.2f}"
                print(f"{suite:9s} {tool:20s} {s['found']:>4d}/{s['run']:<4d} {s['skipped']:7d} {med:>9s} {mean:>8s} "
                      f"{s['false_positives']:9d} {s['refuted']:7d}")
    tp = summary.get("throughput")
    if tp:
        print("\nthroughput: restart-steps per second (fixed steps, no early stop)")
        print(f"{'network':22s} {'R':>6s} {'S':>4s} {'gpuopt':>10s} {'torchattacks':>12s} {'ratio':>6s}")
        for r in tp:
            g = "-" if r["gpuopt_rate"] is None else f"{r['gpuopt_rate']:.0f}"
            t = "-" if r["torchattacks_rate"] is None else f"{r['torchattacks_rate']:.0f}"
            ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
            flag = "  (gpuopt stopped early)" if r["gpuopt_early_stop"] else ""
            print(f"{r['network']:22s} {r['restarts']:6d} {r['steps']:4d} {g:>10s} {t:>12s} {ratio:>6s}{flag}")
    api = summary.get("api")
    if api:
        print("\napi: per-call time, small CNN, batch 128, 10 steps")
        print(f"{'tool':18s} {'median ms':>9s} {'success':>8s} {'time / torchattacks':>20s}")
        for tool, s in api.items():
            ratio = "-" if s["time_ratio_vs_torchattacks"] is None else f"{s['time_ratio_vs_torchattacks']:.2f}"
            print(f"{tool:18s} {1e3 * s['median_seconds']:9.1f} {100 * s['success_rate']:7.1f}% {ratio:>20s}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    ap.add_argument("--suites", nargs="+", default=list(FALSIFY_SUITES), choices=list(FALSIFY_SUITES),
                    help="falsify: the benchmarks")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, help="falsify: the tools")
    ap.add_argument("--budget", type=float, default=10.0, help="falsify: seconds per instance and tool")
    ap.add_argument("--limit", type=int, default=None, help="falsify: the first N instances per suite")
    ap.add_argument("--throughput-nets", nargs="+", default=list(THROUGHPUT_NETS), choices=list(THROUGHPUT_NETS))
    ap.add_argument("--restarts-list", nargs="+", type=int, default=[1000, 4000], help="throughput: values of R")
    ap.add_argument("--steps", type=int, default=100, help="throughput: steps S")
    ap.add_argument("--repeats", type=int, default=2,
                    help="throughput: timed runs per tool and R, alternating which goes first; the fastest counts")
    ap.add_argument("--api-calls", type=int, default=10, help="api: timed calls per tool (after 2 warm-up calls)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: where both tools run (default cpu)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "attack.json"))
    args = ap.parse_args(argv)
    from gpuopt.devices import check_device

    args.device = str(check_device(args.device, "--device"))
    if not BENCH.is_dir():
        print(f"benchmark folder not found: {BENCH} (expected ../shared/benchmarks beside the repo); nothing to run")
        return 0
    try:
        import torchattacks
    except ImportError:
        print("torchattacks is not installed (pip install --no-deps torchattacks); nothing to compare against")
        return 0
    torch.set_num_threads(args.threads)
    meta = {"argv": sys.argv[1:], "budget": args.budget, "sections": args.sections, "suites": args.suites,
            "variants": args.variants, "limit": args.limit, "restarts_list": args.restarts_list, "steps": args.steps,
            "repeats": args.repeats, "device": args.device,
            "gpu": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else None,
            "torch": torch.__version__, "torchattacks": torchattacks.__version__, "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    report = Report(Path(args.out), meta)
    if "falsify" in args.sections:
        run_falsify(args, report)
    if "throughput" in args.sections:
        run_throughput(args, report)
    if "api" in args.sections:
        run_api(args, report)
    report.meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    report.write()
    print_table(summarise(report.rows))
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
