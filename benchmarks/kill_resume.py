"""Kill and resume at full size: a dataset run killed with SIGKILL twice, then resumed.

On ``mnist-net_256x2`` (VNN-COMP 2022 mnist_fc) and the 100 shared MNIST test images at eps 0.03:

1. one uninterrupted ``gpuopt run --model NET --data CSV --scale 255 --eps 0.03`` (the reference);
2. the same run killed with SIGKILL (the whole process group: main process and workers) at two
   seeded random moments, each time resumed with ``--resume``, then run to the end.

Checks that the final JSONL holds every image exactly once, every line parses (a torn last
line is repaired on resume), and the verdicts equal the reference's wherever both are decided
(``sat``/``unsat``/``misclassified``; a timeout near the limit may differ). Prints the counts,
the moments of the kills, and the wall times; writes JSON.

    python benchmarks/kill_resume.py [--timeout 10] [--workers 1] [--seed 1] [--limit 100]
                                     [--out benchmarks/results/kill_resume.json]

Reads ../shared/benchmarks (relative to the repository); skips with a message when absent.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO.parent / "shared" / "benchmarks"
NET = BENCH / "vnncomp2022" / "mnist_fc" / "onnx" / "mnist-net_256x2.onnx"
DATA = BENCH / "mnist" / "mnist_test_first100.csv"
DECIDED = ("sat", "unsat", "misclassified")


def _cmd(results: Path, args, *extra) -> list[str]:
    return [sys.executable, "-m", "gpuopt", "run", "--model", str(NET), "--data", str(DATA), "--scale", "255",
            "--eps", "0.03", "--timeout", str(args.timeout), "--limit", str(args.limit), "--workers",
            str(args.workers), "--results", str(results), *extra]


def _start(results: Path, log: Path, args, *extra) -> subprocess.Popen:
    return subprocess.Popen(_cmd(results, args, *extra), cwd=REPO, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _records(path: Path) -> list[dict]:
    out = []
    if path.exists():
        for line in path.read_bytes().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per image (default 10)")
    ap.add_argument("--workers", type=int, default=1, help="gpuopt run --workers (default 1)")
    ap.add_argument("--limit", type=int, default=100, help="the first N images (default 100)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the kill moments")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "kill_resume.json"))
    args = ap.parse_args(argv)
    if not (NET.is_file() and DATA.is_file()):
        print(f"skipped: {NET} or {DATA} not found (needs ../shared/benchmarks)", file=sys.stderr)
        return 0
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.monotonic()
        subprocess.run(_cmd(tmp / "ref.jsonl", args), cwd=REPO, capture_output=True, check=True)
        ref_wall = time.monotonic() - t0
        ref = {r["key"]: r["status"] for r in _records(tmp / "ref.jsonl")}
        print(f"reference run: {len(ref)} records in {ref_wall:.1f} s: {dict(Counter(ref.values()))}", flush=True)

        path, log = tmp / "run.jsonl", tmp / "run.log"
        kills = []
        t0 = time.monotonic()
        for round_ in range(2):
            proc = _start(path, log, args, *(["--resume"] if round_ else []))
            # a random moment while the run is going: after a random number of new records
            target = len(_records(path)) + rng.randint(1, max(1, args.limit // 4))
            while len(_records(path)) < target and proc.poll() is None:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.5))
            alive = proc.poll() is None
            if alive:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills.append({"round": round_, "records_on_disk": len(_records(path)), "killed": alive})
            print(f"kill {round_ + 1}: {'killed' if alive else 'the run had ended'} with "
                  f"{kills[-1]['records_on_disk']} records on disk", flush=True)
        proc = _start(path, log, args, "--resume")
        proc.wait()
        resumed_wall = time.monotonic() - t0
        lines = path.read_bytes().splitlines()
        records = [json.loads(line) for line in lines]  # raises if a torn line was left
        counts = Counter(r["key"] for r in records)

    got = {r["key"]: r["status"] for r in records}
    once = set(counts.values()) == {1} and set(counts) == set(ref)
    conflicts = [k for k in ref if ref[k] in DECIDED and got.get(k) in DECIDED and ref[k] != got[k]]
    differs = [k for k in ref if got.get(k) != ref[k] and k not in conflicts]
    print(f"killed and resumed run: {len(records)} records in {resumed_wall:.1f} s (kills included)")
    print(f"every image exactly once: {once}; verdict conflicts: {len(conflicts)}; "
          f"decided vs undecided differences: {len(differs)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"timeout": args.timeout, "workers": args.workers, "limit": args.limit,
                               "reference": dict(Counter(ref.values())), "reference_wall": ref_wall,
                               "final": dict(Counter(got.values())), "kills": kills, "exactly_once": once,
                               "conflicts": conflicts, "differs": differs}, indent=1))
    print(f"wrote {out}")
    return 0 if once and not conflicts else 1


if __name__ == "__main__":
    sys.exit(main())
