"""VNN-COMP scoreboard. By default the first path's set: VNN-COMP 2022 mnist_fc (256x2) and acasxu
(props 1-4, nets 1_1..1_9); ``--suites mnist_fc_all acasxu_all oval21`` runs every shared instance, and ``--suites
sri_resnet_a sri_resnet_b cifar_biasfield yolo`` the graph networks under coverage/
(``--limit N`` caps each suite at its first N instances; ``--only TEXT ...`` runs the instances whose
name contains one of the texts).

Each instance runs as ``gpuopt verify NET VNNLIB --timeout T`` in its own process (as VNN-COMP
runs a tool), with the official timeout from instances.csv times ``--timeout-scale``. Every result
is appended to a JSONL file as soon as it is decided, so a killed run resumes with ``--resume``.
At the end it prints a table (solved counts, wrong answers against the checked reference labels,
times) and writes a JSON summary.

    python benchmarks/vnncomp.py [--suites ...] [--timeout-scale 1.0] [--max-timeout S]
                                            [--results FILE] [--resume] [--bulk [--workers N]]
                                            [--verify-args "--bab off"] [--in-process] [--shard K/N]

``--in-process`` calls ``gpuopt verify --threads 1`` in this process for each instance in turn,
so that an instance's time leaves out the interpreter's start-up (VNN-COMP subtracts each tool's
start-up overhead); ``--shard K/N`` runs every N-th instance from the K-th, one process per core.

``--bulk`` runs the suite through one ``gpuopt run`` (the hybrid engine: bounds and attacks in
the main process, input splitting and MILPs in N workers) instead of one process per instance;
each instance keeps its own timeout, counted from its admission. For the coverage suites the
table also lists, per tool, what the VNN-COMP scorer recorded on the same instances (their
machines and the official timeouts).

A "wrong" answer is a sat/unsat that contradicts the reference label (a disputed
``conflict_majority_sat`` label counts as sat).

Reads ../shared/benchmarks (relative to the repository); exits with a clear message if absent.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO.parent / "shared" / "benchmarks"

# suite -> (folder, instances.csv name, reference category, instance filter)
SUITES = {
    "mnist_fc": ("vnncomp2022/mnist_fc", "instances.csv", "mnist_fc",
                 lambda onnx, vnnlib: "mnist-net_256x2" in onnx),
    "acasxu": ("vnncomp2022/acasxu", "instances.csv", "acasxu",
               lambda onnx, vnnlib: any(f"_1_{j}_batch" in onnx for j in range(1, 10))
               and Path(vnnlib).stem in {"prop_1", "prop_2", "prop_3", "prop_4"}),
    "mnist_fc_all": ("vnncomp2022/mnist_fc", "instances.csv", "mnist_fc", lambda onnx, vnnlib: True),
    "mnist_fc_256x4": ("vnncomp2022/mnist_fc", "instances.csv", "mnist_fc", lambda onnx, vnnlib: "256x4" in onnx),
    "mnist_fc_256x6": ("vnncomp2022/mnist_fc", "instances.csv", "mnist_fc", lambda onnx, vnnlib: "256x6" in onnx),
    "acasxu_all": ("vnncomp2022/acasxu", "instances.csv", "acasxu", lambda onnx, vnnlib: True),
    "oval21": ("vnncomp2021/oval21", "oval21_instances.csv", "oval21", lambda onnx, vnnlib: True),
    # graph networks (coverage/): residual adds, pooling, reshapes
    "sri_resnet_a": ("coverage/vnncomp2022/sri_resnet_a", "instances.csv", "sri_resnet_a", lambda onnx, vnnlib: True),
    "sri_resnet_b": ("coverage/vnncomp2022/sri_resnet_b", "instances.csv", "sri_resnet_b", lambda onnx, vnnlib: True),
    "cifar_biasfield": ("coverage/vnncomp2022/cifar_biasfield", "instances.csv", "cifar_biasfield",
                        lambda onnx, vnnlib: True),
    "yolo": ("coverage/vnncomp2023/yolo", "instances.csv", "yolo", lambda onnx, vnnlib: True),
}
COVERAGE = ["sri_resnet_a", "sri_resnet_b", "cifar_biasfield", "yolo"]
FIRST_PATH = ["mnist_fc", "acasxu"]


def instances(suites):
    for suite in suites:
        folder, csv_name, _, keep = SUITES[suite]
        base = BENCH / folder
        with open(base / csv_name) as fh:
            for row in csv.reader(fh):
                if len(row) < 3 or not keep(row[0], row[1]):
                    continue
                yield suite, base / row[0].strip(), base / row[1].strip(), float(row[2])


def reference_labels() -> dict:
    """(category, instance) -> label. The shared oval21 instances are VNN-COMP 2021's, so their
    labels come from the 2021 file (where ``conflict_majority_sat`` marks disputed instances)."""
    labels = {}
    for name, only in (("vnncomp2022_labels.csv", ("mnist_fc", "acasxu")), ("vnncomp2021_oval21_labels.csv", ("oval21",)),
                       ("vnncomp2022_more_labels.csv", ("sri_resnet_a", "sri_resnet_b", "cifar_biasfield")),
                       ("vnncomp2023_labels.csv", ("yolo",))):
        with open(BENCH / "reference" / name) as fh:
            for row in csv.DictReader(fh):
                if row["category"] in only:
                    labels[(row["category"], row["instance"])] = row["reference_label"]
    return labels


def instance_name(onnx: Path, vnnlib: Path) -> str:
    """``<net stem>-<spec stem>`` as the reference tables name instances (``.vnnlib.gz`` stripped)."""
    spec = vnnlib.name
    for suffix in (".gz", ".vnnlib"):
        spec = spec[: -len(suffix)] if spec.endswith(suffix) else spec
    return f"{onnx.stem}-{spec}"


def reference_side(label: str) -> str:
    """``sat``/``unsat``/other for a reference label (a disputed ``conflict_majority_sat`` is sat)."""
    return "sat" if label.endswith("sat") and label != "unsat" else label


def open_results(path: Path, resume: bool) -> dict:
    """``(suite, instance) -> record`` of a JSONL results file when resuming; otherwise the file
    is removed (a fresh run). Its folder is created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if resume and path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                done[(rec["suite"], rec["instance"])] = rec
    elif path.exists():
        path.unlink()
    return done


def published_scores() -> list[dict]:
    path = BENCH / "reference" / "published_scores.csv"
    if not path.exists():
        return []
    with open(path) as fh:
        return list(csv.DictReader(fh))


def child_env() -> dict:
    """This environment with the repository first on ``PYTHONPATH`` (what was there is kept)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}


def run_in_process(onnx: Path, vnnlib: Path, timeout: float, extra: list | None = None) -> dict:
    """``gpuopt verify --threads 1`` called in this process (the CLI's own code and defaults). Its
    seconds run from the call: loading the files counts, the interpreter's start-up (paid once)
    does not, as VNN-COMP subtracts each tool's measured start-up overhead from its times."""
    import contextlib
    import io

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from gpuopt.cli import main as gpuopt_main

    out = io.StringIO()
    t0 = time.monotonic()
    with contextlib.redirect_stdout(out):
        rc = gpuopt_main(["verify", str(onnx), str(vnnlib), "--timeout", str(timeout), "--threads", "1", *(extra or [])])
    seconds = time.monotonic() - t0
    lines = out.getvalue().strip().splitlines()
    status = lines[-1].strip() if rc == 0 and lines else "error"
    return {"status": status, "seconds": seconds, "detail": lines[-2] if len(lines) >= 2 else f"exit {rc}"}


def shard_of(text: str) -> tuple[int, int]:
    """``K/N`` -> ``(K, N)`` with ``0 <= K < N``."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes K/N, e.g. 0/2, got {text!r}") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"--shard K/N needs 0 <= K < N, got {text!r}")
    return k, n


def run_one(onnx: Path, vnnlib: Path, timeout: float, extra: list | None = None) -> dict:
    cmd = [sys.executable, "-m", "gpuopt", "verify", str(onnx), str(vnnlib), "--timeout", str(timeout), *(extra or [])]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60,
                              env=child_env())
        lines = proc.stdout.strip().splitlines()
        status = lines[-1].strip() if proc.returncode == 0 and lines else "error"
        detail = lines[-2] if len(lines) >= 2 else proc.stderr.strip()[-300:]
    except subprocess.TimeoutExpired:
        status, detail = "timeout", "killed: exceeded timeout + 60 s"
    return {"status": status, "seconds": time.monotonic() - t0, "detail": detail}


def run_bulk(todo, limits, workers, extra: list | None = None, results: Path | None = None) -> tuple[list[dict], float]:
    """All of ``todo`` through one ``gpuopt run``; one result per instance, in order, and the
    run's wall-clock seconds (start-up included). ``results``: where ``gpuopt run`` appends its
    records as items end (kept, so that a run cut short still shows what it decided; replaced
    at the start), else a temporary file."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "instances.csv"
        results = Path(results) if results is not None else Path(tmp) / "results.jsonl"
        results.unlink(missing_ok=True)
        with open(csv_path, "w", newline="") as fh:
            csv.writer(fh).writerows([str(o), str(v), repr(t)] for (_, o, v, _), t in zip(todo, limits))
        cmd = [sys.executable, "-m", "gpuopt", "run", str(csv_path), "--results", str(results)]
        if workers:
            cmd += ["--workers", str(workers)]
        cmd += extra or []
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
        wall = time.monotonic() - t0
        by_key = {}
        for line in results.read_text().splitlines() if results.exists() else []:
            rec = json.loads(line)
            by_key[(rec.get("onnx"), rec.get("vnnlib"))] = rec
    out = []
    for _, o, v, _ in todo:
        rec = by_key.get((str(o), str(v)))
        if rec is None:
            out.append({"status": "error", "seconds": 0.0, "detail": f"gpuopt run exited {proc.returncode}: "
                                                                    f"{proc.stderr.strip()[-300:]}"})
        else:
            out.append({"status": rec["status"], "seconds": float(rec["seconds"]),
                        "detail": f"# {rec.get('decided_by') or 'undecided'}: {rec.get('message', '')}"})
    return out, wall


def tool_counts(category: str, names) -> dict:
    """Per tool, how many of the instances ``names`` the VNN-COMP scorer recorded as verified
    (``h``) and falsified (``v``), from the labels files' ``per_tool`` column."""
    counts: dict = {}
    for fname in ("vnncomp2022_more_labels.csv", "vnncomp2023_labels.csv"):
        path = BENCH / "reference" / fname
        if not path.exists():
            continue
        with open(path) as fh:
            for row in csv.DictReader(fh):
                if row["category"] != category or row["instance"] not in names:
                    continue
                for part in row.get("per_tool", "").split(";"):
                    if "=" not in part:
                        continue
                    tool, what = (x.strip() for x in part.split("=", 1))
                    c = counts.setdefault(tool, {"verified": 0, "falsified": 0, "penalised": 0})
                    if "penalised" in what or "left out" in what:
                        c["penalised"] += 1
                    elif what.endswith("(h)"):
                        c["verified"] += 1
                    elif what.endswith("(v)"):
                        c["falsified"] += 1
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timeout-scale", type=float, default=1.0)
    ap.add_argument("--max-timeout", type=float, default=None, help="cap on the per-instance timeout (seconds)")
    ap.add_argument("--suites", nargs="+", default=FIRST_PATH, choices=list(SUITES))
    ap.add_argument("--limit", type=int, default=None, help="run at most this many instances per suite (a capped run)")
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "first_path.jsonl"))
    ap.add_argument("--resume", action="store_true", help="skip instances already in the results file")
    ap.add_argument("--verify-args", default="", help="extra options for each `gpuopt verify`, e.g. '--bab off'")
    ap.add_argument("--bulk", action="store_true", help="one `gpuopt run` over the suite instead of a process each "
                    "(its own records, appended as items end, go to RESULTS with the suffix .run.jsonl)")
    ap.add_argument("--workers", type=int, default=None, help="--bulk: gpuopt run --workers")
    ap.add_argument("--run-args", default="", help="--bulk: extra options for `gpuopt run`, e.g. '--device cuda'")
    ap.add_argument("--in-process", action="store_true", help="each instance through `gpuopt verify --threads 1` "
                    "called in this process, one after the other (no interpreter start-up per instance)")
    ap.add_argument("--only", nargs="+", default=None, metavar="TEXT",
                    help="run only the instances whose name contains one of these texts")
    ap.add_argument("--shard", type=shard_of, default=(0, 1), metavar="K/N",
                    help="run the instances whose place in the suite is K modulo N (N processes side by side)")
    args = ap.parse_args(argv)
    if not BENCH.is_dir():
        print(f"benchmark folder not found: {BENCH} (expected ../shared/benchmarks beside the repo)")
        return 2
    labels = reference_labels()
    out = Path(args.results)
    done = open_results(out, args.resume)

    records = list(done.values())
    todo, per_suite = [], {}
    for place, (s, o, v, t) in enumerate(instances(args.suites)):
        per_suite[s] = per_suite.get(s, 0) + 1
        if args.limit is not None and per_suite[s] > args.limit or place % args.shard[1] != args.shard[0]:
            continue
        if args.only is not None and not any(text in instance_name(o, v) for text in args.only):
            continue
        if (s, instance_name(o, v)) not in done:
            todo.append((s, o, v, t))
    limits = []
    for suite, onnx, vnnlib, timeout in todo:
        t = timeout * args.timeout_scale
        limits.append(min(t, args.max_timeout) if args.max_timeout is not None else t)
    bulk, wall = (run_bulk(todo, limits, args.workers, args.run_args.split(), out.with_suffix(".run.jsonl"))
                  if args.bulk and todo else (None, None))
    for n, ((suite, onnx, vnnlib, timeout), t) in enumerate(zip(todo, limits), 1):
        name = instance_name(onnx, vnnlib)
        run = run_in_process if args.in_process else run_one
        res = bulk[n - 1] if bulk is not None else run(onnx, vnnlib, t, args.verify_args.split())
        ref = labels.get((SUITES[suite][2], name), "?")
        ref_side = reference_side(ref)
        wrong = res["status"] in ("sat", "unsat") and ref_side in ("sat", "unsat") and res["status"] != ref_side
        rec = {"suite": suite, "instance": name, "timeout": t, "reference": ref, "wrong": wrong, **res}
        records.append(rec)
        with open(out, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        print(f"[{n}/{len(todo)}] {suite:8s} {name:60s} {res['status']:8s} ref={ref:6s} "
              f"{res['seconds']:7.2f}s{'  WRONG' if wrong else ''}", flush=True)

    summary = {}
    print()
    print(f"{'suite':9s} {'n':>3s} {'sat':>4s} {'unsat':>5s} {'unkn':>4s} {'tmout':>5s} {'err':>4s} "
          f"{'wrong':>5s} {'solved':>6s} {'mean s (solved)':>16s} {'median s':>9s} {'total s':>8s}")
    for suite in args.suites:
        rs = [r for r in records if r["suite"] == suite]
        if not rs:
            continue
        count = lambda st: sum(r["status"] == st for r in rs)  # noqa: E731
        solved = [r for r in rs if r["status"] in ("sat", "unsat") and not r["wrong"]]
        st = [r["seconds"] for r in solved]
        row = {
            "instances": len(rs), "sat": count("sat"), "unsat": count("unsat"), "unknown": count("unknown"),
            "timeout": count("timeout"), "error": count("error"), "wrong": sum(r["wrong"] for r in rs),
            "solved": len(solved), "mean_seconds_solved": statistics.mean(st) if st else None,
            "median_seconds_solved": statistics.median(st) if st else None,
            "total_seconds": sum(r["seconds"] for r in rs),
        }
        summary[suite] = row
        print(f"{suite:9s} {row['instances']:3d} {row['sat']:4d} {row['unsat']:5d} {row['unknown']:4d} "
              f"{row['timeout']:5d} {row['error']:4d} {row['wrong']:5d} {row['solved']:6d} "
              f"{(row['mean_seconds_solved'] or 0):16.2f} {(row['median_seconds_solved'] or 0):9.2f} "
              f"{row['total_seconds']:8.1f}")
    published = published_scores()
    for suite in args.suites:
        name = SUITES[suite][2]
        if suite not in summary or not suite.endswith("_all") and suite != "oval21":
            continue  # the published tables cover whole benchmarks, not the first-path subsets
        rows = [r for r in published if r["benchmark"] == name and int(r["instances"]) == summary[suite]["instances"]]
        if rows:
            print(f"\npublished scores, {name} ({summary[suite]['instances']} instances; their machines and timeouts):")
            print(f"  {'gpuopt (this run)':30s} verified {summary[suite]['unsat']:4d}  falsified {summary[suite]['sat']:4d}  "
                  f"wrong {summary[suite]['wrong']}")
            for r in rows:
                print(f"  {r['competition'] + ' ' + r['tool']:30s} verified {int(r['verified_holds']):4d}  "
                      f"falsified {int(r['falsified_violated']):4d}  penalties {r['penalties']}")
    for suite in args.suites:
        if suite not in COVERAGE or suite not in summary:
            continue
        names = {r["instance"] for r in records if r["suite"] == suite}
        tools = tool_counts(SUITES[suite][2], names)
        if tools:
            print(f"\n{suite}, the same {len(names)} instances, as the VNN-COMP scorer recorded each tool "
                  "(their machines, official timeouts):")
            print(f"  {'gpuopt (this run)':22s} verified {summary[suite]['unsat']:3d}  falsified {summary[suite]['sat']:3d}  "
                  f"wrong {summary[suite]['wrong']}")
            for tool, c in sorted(tools.items()):
                print(f"  {tool:22s} verified {c['verified']:3d}  falsified {c['falsified']:3d}  "
                      f"penalised {c['penalised']}")
            summary[suite]["published_same_instances"] = tools
    if wall is not None:
        print(f"\nbulk: one `gpuopt run` over {len(todo)} instances took {wall:.1f} s of wall-clock (start-up "
              "included); an instance's seconds count from its admission, so they overlap")
    summary_path = out.with_suffix(".summary.json")
    summary_path.write_text(json.dumps({"timeout_scale": args.timeout_scale, "bulk_wall_seconds": wall,
                                        "run_args": args.run_args,
                                        "suites": summary}, indent=2))
    print(f"\nresults: {out}\nsummary: {summary_path}")
    return 1 if any(r["wrong"] for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
