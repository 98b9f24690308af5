"""Bulk runs: many items through a process pool into a results file that survives a crash.

An *item* is one VNN-COMP instance (a row ``onnx,vnnlib,timeout`` of an instances CSV) or one
``(sample, eps)`` robustness query of a dataset. Items run as tasks of a
:class:`~gpuopt.engine.LocalExecutor` (spawned workers, one torch and one HiGHS thread each, so
items decide side by side on the cores), each under a hard time limit: a worker still running
``timeout + grace`` seconds after its task started is killed and the item recorded ``timeout``.
A worker that dies fails only its item, which is retried once and then recorded ``error`` with
the cause. Every outcome is appended to a :class:`~gpuopt.engine.store.ResultStore` as soon as it
is known (flushed and fsynced), so ``resume=True`` skips what is on disk and a run killed at any
moment loses at most the items in flight. A bad row (a missing file) is recorded ``error`` and the
run goes on.

Records hold ``key``, the item's description, ``status`` (``sat``, ``unsat``, ``unknown``,
``timeout``, ``error``, ``misclassified``), ``decided_by``, ``seconds``, the margin bracket, stage
timings and, for ``sat``, the counterexample.
"""

from __future__ import annotations

import csv
import logging
import math
import statistics
import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .errors import InvalidInputError, require_file

__all__ = ["RunItem", "read_instances", "run_items", "dataset_items", "summarize", "format_summary",
           "verify_dataset", "load_dataset", "run_description"]

log = logging.getLogger("gpuopt")

#: seconds a worker may run past an item's timeout (spawning, imports, loading) before it is killed
HARD_KILL_GRACE = 5.0


@dataclass(frozen=True)
class RunItem:
    """One unit of a bulk run: ``key`` (unique, stable across resumes), the task function and its
    arguments (picklable), ``timeout`` seconds, and ``info`` copied into the record."""

    key: str
    fn: Callable
    args: tuple
    timeout: float
    info: dict = field(default_factory=dict)
    precomputed: dict | None = None  # a record decided without running (misclassified, bad row)
    build: Callable | None = None  # builds the item's ItemState in this process (hybrid engine)


#: the third cell of a header row an instances CSV may start with
HEADER_TIMEOUTS = ("timeout", "timeout_s", "timeout (s)", "time_limit", "timelimit")


def read_instances(csv_path, *, timeout_scale: float = 1.0, config=None) -> list[RunItem]:
    """Items of a VNN-COMP instances CSV (rows ``onnx,vnnlib,timeout``, paths relative to the CSV
    or absolute; a first row whose timeout cell is a name such as ``timeout`` is a header, and is
    skipped). A row whose files are missing becomes an ``error`` item; a malformed CSV raises."""
    from .engine.tasks import verify_instance_task
    from .verify import VerifyConfig

    path = Path(csv_path)
    require_file(path, "instances")
    if not (math.isfinite(timeout_scale) and timeout_scale > 0):
        raise InvalidInputError(f"`timeout_scale` must be a finite number > 0, got {timeout_scale!r}")
    config = config or VerifyConfig(device="cpu")
    items, seen = [], set()
    with open(path, newline="") as f:
        for line_no, row in enumerate(csv.reader(f), 1):
            row = [c.strip() for c in row]
            if not row or not any(row) or row[0].startswith("#"):
                continue
            if len(row) != 3:
                raise InvalidInputError(f"row must be `onnx,vnnlib,timeout`, got {len(row)} fields",
                                        path=str(path), line=line_no)
            onnx, vnnlib, t = row
            try:
                timeout = float(t) * timeout_scale
            except ValueError:
                if not items and not seen and t.lower() in HEADER_TIMEOUTS:  # a header row
                    continue
                raise InvalidInputError(f"timeout must be a number, got {t!r}", path=str(path), line=line_no) from None
            if not (math.isfinite(timeout) and timeout > 0):
                raise InvalidInputError(f"timeout must be > 0, got {t!r}", path=str(path), line=line_no)
            onnx_p = (path.parent / onnx) if not Path(onnx).is_absolute() else Path(onnx)
            vnn_p = (path.parent / vnnlib) if not Path(vnnlib).is_absolute() else Path(vnnlib)
            key = f"{onnx}::{vnnlib}"
            if key in seen:
                raise InvalidInputError(f"instance {onnx}, {vnnlib} is listed twice", path=str(path), line=line_no)
            seen.add(key)
            info = {"onnx": onnx, "vnnlib": vnnlib, "timeout": timeout}
            missing = [str(p) for p in (onnx_p, vnn_p) if not p.is_file()]
            pre = None
            if missing:
                pre = {"status": "error", "message": f"file not found: {missing[0]}", "seconds": 0.0}
            items.append(RunItem(key, verify_instance_task, (str(onnx_p), str(vnn_p), timeout, config),
                                 timeout, info, pre, partial(_build_instance, str(onnx_p), str(vnn_p), timeout, config)))
    if not items:
        raise InvalidInputError(f"no instances in {path}")
    return items


def load_dataset(path, *, scale: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A dataset as ``(x (n, d) float64, y (n,) int64)``: a CSV of rows ``label, features...`` (as
    MNIST's CSVs) or an ``.npz`` with arrays ``x`` and ``y``. ``scale`` divides the features
    (255 for 0..255 pixels)."""
    p = Path(path)
    require_file(p, "dataset")
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            if "x" not in z.files or "y" not in z.files:
                raise InvalidInputError(f"{p}: an .npz dataset needs arrays `x` and `y`, found {z.files}")
            x, y = np.asarray(z["x"], dtype=np.float64), np.asarray(z["y"])
        x = x.reshape(len(x), -1)
    else:
        try:
            data = np.loadtxt(p, delimiter=",", ndmin=2)
        except ValueError as exc:
            raise InvalidInputError(f"{p}: not a numeric CSV of `label, features...` rows ({exc})") from None
        y, x = data[:, 0], data[:, 1:]
    if len(x) != len(y) or len(x) == 0:
        raise InvalidInputError(f"{p}: the dataset is empty or has {len(x)} inputs for {len(y)} labels")
    if not np.all(np.isfinite(x)):
        raise InvalidInputError(f"{p}: the features contain NaN or infinite values")
    if not np.all(y == np.round(y)):
        raise InvalidInputError(f"{p}: labels must be integers")
    if scale is not None:
        if not (math.isfinite(scale) and scale > 0):
            raise InvalidInputError(f"`scale` must be a finite number > 0, got {scale!r}")
        x = x / scale
    return x, y.astype(np.int64)


def _misclassified(network, x, label: int) -> bool:
    """Whether some other class scores at least as high as ``label`` at ``x``, decided soundly (a
    float64 argmax can tie or swap classes whose exact outputs differ by less than its rounding)."""
    from .check import check_counterexample
    from .problem import Problem
    from .regions import Box
    from .specs import robustness

    x = np.asarray(x, dtype=np.float64).reshape(-1)
    return check_counterexample(Problem(network, Box(x, x), robustness(label, network.output_size)), x).ok


def _dataset_iv(network, x, y) -> tuple[np.ndarray, np.ndarray]:
    """``x`` as float64 ``(samples, n_in)`` and ``y`` as labels, checked against the network."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y).reshape(-1)
    if x.shape[1] != network.input_size:
        raise InvalidInputError(f"the dataset has {x.shape[1]} features per sample but the network takes "
                                f"{network.input_size} inputs")
    if np.any((y < 0) | (y >= network.output_size)):
        raise InvalidInputError(f"labels must be in [0, {network.output_size})")
    return x, y


def _clip_pair(clip, x: np.ndarray) -> tuple:
    """``clip`` (:func:`gpuopt.regions.clip_pair`: ``None``, or ``(low, high)`` numbers or
    per-feature arrays) as a pair with ``None`` for an open end; every sample (a row of ``x``) must
    lie in it, or each item's ball would be empty: a dataset in [0, 255] under the clip box [0, 1]
    is refused once, here, rather than recorded as an error per item."""
    from .regions import clip_pair

    lo, hi = clip_pair(clip, (x.shape[1],), x.shape[1])
    if x.size and (lo is not None and np.any(x < lo) or hi is not None and np.any(x > hi)):
        def end(c, inf):
            return inf if c is None else f"{c:g}" if np.ndim(c) == 0 else "per feature"

        raise InvalidInputError(
            f"the samples' features lie in [{x.min():g}, {x.max():g}], outside the clip box "
            f"[{end(lo, '-inf')}, {end(hi, 'inf')}]: scale the data "
            "(--scale, e.g. 255 for 8-bit images) or give the valid input range (--clip)")
    return (lo, hi)


def dataset_items(network, x, y, eps: Sequence[float], *, timeout: float, clip=None,
                  limit: int | None = None, config=None, model_ref=None) -> list[RunItem]:
    """Robustness items ``(sample i, eps)``. A sample the network misclassifies is recorded
    ``misclassified`` once per eps and never attacked. ``clip``: the valid input range, ``(low,
    high)`` (``None``, the default: unbounded). ``model_ref`` (an ONNX path) is what the
    workers load; default: the Network itself is sent."""
    from .engine.tasks import verify_sample_task
    from .verify import VerifyConfig

    x, y = _dataset_iv(network, x, y)
    eps = [float(e) for e in eps]
    if not eps or any(not (math.isfinite(e) and e >= 0) for e in eps):
        raise InvalidInputError(f"`eps` must be finite numbers >= 0, got {eps}")
    if not (math.isfinite(timeout) and timeout > 0):
        raise InvalidInputError(f"`timeout` must be a finite number > 0, got {timeout!r}")
    n = len(x) if limit is None else min(int(limit), len(x))
    clip = _clip_pair(clip, x[:n])
    pred = network.forward64(x[:n]).argmax(axis=1)
    config = config or VerifyConfig(device="cpu")
    ref = model_ref if model_ref is not None else network
    if isinstance(model_ref, str):  # hybrid runs: pool tasks load the network from its file
        _with_task_ref(network, f"onnx:{model_ref}", model_ref)
    items = []
    for e in eps:
        for i in range(n):
            info = {"sample": i, "label": int(y[i]), "eps": e, "timeout": timeout}
            pre = None
            if pred[i] != y[i] and _misclassified(network, x[i], int(y[i])):
                pre = {"status": "misclassified", "predicted": int(pred[i]), "seconds": 0.0}
            items.append(RunItem(f"{i}@{e!r}", verify_sample_task,
                                 (ref, x[i], int(y[i]), e, tuple(clip), timeout, config), timeout, info, pre,
                                 partial(_build_sample, network, x[i], int(y[i]), e, tuple(clip), timeout, config)))
    return items


def radius_items(network, x, y, *, eps_max: float, timeout: float, clip=None, limit: int | None = None,
                 config=None, model_ref=None, norm: str = "linf") -> list[RunItem]:
    """Certified-radius items, one per sample (:func:`gpuopt.radius.certify_radius`, run whole in
    a worker). A misclassified sample is recorded with radius 0 and never attacked."""
    from .engine.tasks import radius_sample_task
    from .verify import VerifyConfig

    x, y = _dataset_iv(network, x, y)
    if not (math.isfinite(eps_max) and eps_max > 0) or not (math.isfinite(timeout) and timeout > 0):
        raise InvalidInputError(f"`eps_max` and `timeout` must be finite numbers > 0, got {eps_max!r} and {timeout!r}")
    n = len(x) if limit is None else min(int(limit), len(x))
    clip = _clip_pair(clip, x[:n])
    pred = network.forward64(x[:n]).argmax(axis=1)
    config = config or VerifyConfig(device="cpu")
    ref = model_ref if model_ref is not None else network
    items = []
    for i in range(n):
        info = {"sample": i, "label": int(y[i]), "eps_max": eps_max, "timeout": timeout, "norm": norm}
        pre = None
        if pred[i] != y[i] and _misclassified(network, x[i], int(y[i])):
            pre = {"status": "misclassified", "predicted": int(pred[i]), "lower": 0.0, "upper": 0.0, "seconds": 0.0}
        key = f"radius:{i}" if norm == "linf" else f"radius-{norm}:{i}"
        items.append(RunItem(key, radius_sample_task, (ref, x[i], int(y[i]), eps_max, tuple(clip), timeout,
                                                                config, norm), timeout, info, pre))
    return items


def run_description(kind: str, network, x, y, clip, **extra) -> dict:
    """What every record of a dataset run answers, for a results file's ``run`` header
    (:class:`~gpuopt.engine.store.ResultStore`): ``kind`` (``"dataset"`` or ``"radius"``), the
    network's :meth:`~gpuopt.network.Network.digest`, a SHA-256 of the samples (as float64, after
    any scaling) and labels, the clip box, and ``extra`` (e.g. ``eps_max``). A resumed run must
    give the same; ``limit`` and the eps list only pick items, so they may change."""
    import hashlib

    from .regions import clip_pair

    x = np.ascontiguousarray(x, dtype=np.float64).reshape(len(x), -1)
    h = hashlib.sha256()
    for a in (x, np.ascontiguousarray(y, dtype=np.int64)):
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())

    def end(c):  # an infinite end is an open one
        if c is None or np.ndim(c) == 0:
            return None if c is None or math.isinf(c) else float(c)
        return [None if math.isinf(v) else float(v) for v in c]

    return {"kind": kind, "network": network.digest(), "data": h.hexdigest(),
            "clip": [end(c) for c in clip_pair(clip, (x.shape[1],), x.shape[1])], **extra}


#: the statuses of :func:`gpuopt.radius.certify_radius`'s results
RADIUS_DONE = ("exact", "bracket", "beyond_eps_max")


def radius_curve(records: Iterable[dict], eps) -> dict:
    """Robust accuracy against ``eps`` from radius records (misclassified samples count as not
    robust): ``certified[i]`` is the fraction of samples whose certified ``lower`` is ``>= eps[i]``
    (``r* >= lower``), ``upper[i]`` the fraction not shown non-robust at ``eps[i]`` (no
    counterexample within it: ``upper > eps[i]``, or none found); ``n`` the samples counted."""
    recs = [r for r in records if r.get("status") in RADIUS_DONE + ("misclassified",)]
    eps = np.asarray(eps, dtype=np.float64).reshape(-1)
    if not recs:
        return {"eps": eps, "certified": np.zeros_like(eps), "upper": np.zeros_like(eps), "n": 0}
    lower = np.array([0.0 if r["status"] == "misclassified" else float(r["lower"]) for r in recs])
    upper = np.array([0.0 if r["status"] == "misclassified" else
                      (float(r["upper"]) if r.get("upper_found", True) else np.inf) for r in recs])
    valid = np.array([r["status"] != "misclassified" for r in recs])
    certified = ((lower[None, :] >= eps[:, None]) & valid[None, :]).mean(axis=1)
    not_broken = ((upper[None, :] > eps[:, None]) & valid[None, :]).mean(axis=1)
    return {"eps": eps, "certified": certified, "upper": not_broken, "n": len(recs)}


def summarize_radii(records: Iterable[dict]) -> str:
    """A readable summary of radius records: counts per status, the median certified lower end,
    and the median upper end and gap over the samples with a counterexample (an ``upper`` without
    one, ``upper_found`` False, is only ``eps_max``, the end of the search)."""
    recs = list(records)
    counts = Counter(r.get("status") for r in recs)
    done = [r for r in recs if r.get("status") in RADIUS_DONE]
    lines = [f"{len(recs)} samples: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))]
    if done:
        found = [r for r in done if r.get("upper_found", True)]
        secs = np.array([r.get("seconds", 0.0) for r in done])
        text = f"median certified lower {np.median([r['lower'] for r in done]):.4g}"
        if found:
            ups = np.array([r["upper"] for r in found])
            text += (f", median upper {np.median(ups):.4g}, median gap "
                     f"{np.median(ups - np.array([r['lower'] for r in found])):.3g}")
            if len(found) < len(done):
                text += f" (of the {len(found)} with a counterexample)"
        else:
            text += ", no counterexample within eps_max"
        lines.append(text + f"; seconds p50 {np.median(secs):.2f}, p90 {np.percentile(secs, 90):.2f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- hybrid items
_MAIN_NETWORKS: dict = {}  # this process: ONNX path -> Network (with its task reference attached)


def _with_task_ref(net, key: str, onnx_path: str | None = None):
    """Attaches how pool tasks find ``net`` (its ONNX file, or its pickle sent once per worker)."""
    import pickle

    from .engine.tasks import NetworkRef

    if getattr(net, "_task_ref", None) is None:
        net._task_ref = NetworkRef(key, onnx_path, None if onnx_path else pickle.dumps(net))
    return net


def _build_instance(onnx_path: str, vnnlib_path: str, timeout: float, config):
    """The ItemState of a VNN-COMP instance; its clock starts here."""
    import time

    from .engine.item import ItemState
    from .io.onnx import from_onnx
    from .io.vnnlib import load_vnnlib
    from .verdict import Status

    t0 = time.monotonic()
    if onnx_path not in _MAIN_NETWORKS:
        _MAIN_NETWORKS[onnx_path] = _with_task_ref(from_onnx(onnx_path), f"onnx:{onnx_path}", onnx_path)
    net = _MAIN_NETWORKS[onnx_path]
    props = load_vnnlib(vnnlib_path, n_inputs=net.input_size, n_outputs=net.output_size)
    problems = [p.problem(net) for p in props]
    item = ItemState(config=config, t0=t0, deadline=t0 + timeout,
                     **_order_reduced(problems, f"onnx:{onnx_path}#logits"))
    if not problems:
        item.decide(Status.UNSAT, margin_lower=math.inf, decided_by="spec", message="the unsafe region is empty")
    return item


def _build_sample(network, x, label: int, eps: float, clip: tuple, timeout: float, config):
    """The ItemState of one L-inf robustness query; its clock starts here."""
    import time

    from .engine.item import ItemState
    from .problem import Problem
    from .regions import LinfBall
    from .specs import robustness

    t0 = time.monotonic()
    net = _with_task_ref(network, f"net:{id(network)}")
    region = LinfBall(x, eps, clip_lower=clip[0], clip_upper=clip[1])
    problem = Problem(net, region, robustness(int(label), net.output_size))
    return ItemState(config=config, t0=t0, deadline=t0 + timeout, **_order_reduced([problem], None))


def _order_reduced(problems, key: str | None) -> dict:
    """The ItemState fields for ``problems``: on the network without its final Softmax or
    LogSoftmax where that is exact (:mod:`gpuopt.output_order`), its task reference attached."""
    from .output_order import reduce_output_order

    reduction = reduce_output_order(problems)
    if reduction is None:
        return {"problems": problems}
    net = reduction.problems[0].network
    _with_task_ref(net, key or f"net:{id(net)}")
    return reduction.item_fields()


def _outcome_record(item: RunItem, outcome) -> dict:
    from .engine import TaskStatus

    rec = {"key": item.key, **item.info}
    if outcome.status is TaskStatus.OK:
        rec.update(outcome.value)
    elif outcome.status is TaskStatus.TIMEOUT:
        rec.update(status="timeout", seconds=outcome.seconds,
                   message=f"killed at the hard limit ({outcome.error})")
    else:
        rec.update(status="error", seconds=outcome.seconds, message=outcome.error or outcome.status.value,
                   attempts=outcome.attempts)
    return rec


ENGINES = ("hybrid", "items")


def run_items(items: Sequence[RunItem], store, *, workers: int | None = None, progress: bool = True,
              executor=None, engine: str = "hybrid") -> Iterator[dict]:
    """Run ``items`` not yet in ``store``; append and yield each record as it is decided.

    ``engine="hybrid"`` (:mod:`gpuopt.engine.orchestrator`): this process runs the batch stages
    (bounds, attack) over groups of items while the pool runs their task stages (input splitting,
    MILPs); ``"items"``: each item runs whole in a pool worker (also used when an item has no
    ``build``, i.e. a custom task function). At most ``2 * workers`` tasks are
    queued at once, so a long run keeps little in flight. A ``KeyboardInterrupt`` cancels what is
    running; what was recorded stays.
    """
    if engine not in ENGINES:
        raise InvalidInputError(f"`engine` must be one of {', '.join(ENGINES)}, got {engine!r}")
    from tqdm import tqdm

    from .engine import LocalExecutor, wait_any

    todo = [it for it in items if it.key not in store]
    counts: Counter = Counter(rec.get("status") for rec in store.records())
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc="items", unit="item",
               file=sys.stderr, disable=not progress, dynamic_ncols=True)

    def record(rec: dict):
        store.append(rec)
        counts[rec["status"]] += 1
        bar.set_postfix({k: v for k, v in sorted(counts.items())}, refresh=False)
        bar.update(1)
        return rec

    pending = [it for it in todo if it.precomputed is None]
    for it in todo:
        if it.precomputed is not None:
            yield record({"key": it.key, **it.info, **it.precomputed})
    own = executor is None
    ex = executor if executor is not None else (LocalExecutor(workers) if pending else None)
    if engine == "hybrid" and pending and all(it.build is not None for it in pending):
        try:
            yield from (record(rec) for rec in _run_hybrid(pending, ex))
        finally:
            bar.close()
            if own:
                ex.close()
        return
    try:
        in_flight: dict = {}
        queue = list(reversed(pending))
        cap = 2 * (ex.n_workers if ex is not None else 1)
        while queue or in_flight:
            while queue and len(in_flight) < cap:
                it = queue.pop()
                in_flight[ex.submit(it.fn, *it.args, timeout=it.timeout + HARD_KILL_GRACE, retries=1)] = it
            for h in wait_any(list(in_flight), timeout=1.0):
                it = in_flight.pop(h)
                yield record(_outcome_record(it, h.result()))
    finally:
        bar.close()
        if own and ex is not None:
            ex.close()


def _run_hybrid(pending: Sequence[RunItem], executor) -> Iterator[dict]:
    from .engine.orchestrator import ItemSource, run_hybrid

    by_key = {it.key: it for it in pending}
    sources = [ItemSource(it.key, it.build) for it in pending]
    for key, state in run_hybrid(sources, executor):
        it = by_key[key]
        rec = {"key": key, **it.info}
        if isinstance(state, BaseException):
            rec.update(status="error", seconds=0.0, message=f"{type(state).__name__}: {state}")
        else:
            rec.update(state.verdict.to_dict())
            rec["seconds"] = state.verdict.seconds
        yield rec


def verify_dataset(model, x, y, *, eps, timeout: float = 30.0, clip=None, limit: int | None = None,
                   results=None, resume: bool = False, workers: int | None = None, config=None,
                   progress: bool = False) -> Iterator[dict]:
    """Robustness of every sample of ``(x, y)`` at each ``eps``; yields one record per item as it
    is decided (see :func:`run_items`). ``model`` is a Network or a supported torch model (for a
    torch model, ``x`` gives the input shape). ``clip``: the valid input range ``(low, high)``
    (``None``: unbounded; give ``(0, 1)`` for images in [0, 1]). ``results``: a JSONL path to record
    into (a temporary file when ``None``; a resumed file must hold this network's, data's and clip
    box's records)."""
    import tempfile

    from .engine.store import ResultStore
    from .network import Network, from_torch

    x = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
    y = np.asarray(y.detach().cpu().numpy() if hasattr(y, "detach") else y)
    if isinstance(model, Network):
        net = model
    else:
        net = from_torch(model, input_shape=x.shape[1:])
    eps = [eps] if np.isscalar(eps) else list(eps)
    x = x.reshape(len(x), -1)
    items = dataset_items(net, x, y, eps, timeout=timeout, clip=clip, limit=limit, config=config)
    run = run_description("dataset", net, x, y, clip)
    tmp = None
    if results is None:
        tmp = tempfile.TemporaryDirectory()
        results = Path(tmp.name) / "results.jsonl"
    try:
        with ResultStore(results, resume=resume, run=run) as store:
            yield from run_items(items, store, workers=workers, progress=progress)
    finally:
        if tmp is not None:
            tmp.cleanup()


# ---------------------------------------------------------------------------------- summaries
STATUSES = ("unsat", "sat", "unknown", "timeout", "error", "misclassified")


def summarize(records: Iterable[dict]) -> dict:
    """Counts by status (per eps for dataset runs), accuracies, time percentiles, decided-by counts."""
    records = list(records)
    groups: dict = {}
    for r in records:
        groups.setdefault(r.get("eps"), []).append(r)
    out = {"n": len(records), "groups": []}
    for eps, rs in groups.items():
        c = Counter(r.get("status") for r in rs)
        times = sorted(float(r["seconds"]) for r in rs if isinstance(r.get("seconds"), (int, float))
                       and r.get("status") not in ("misclassified",))
        g = {"eps": eps, "n": len(rs), "counts": {s: c.get(s, 0) for s in STATUSES},
             "decided_by": dict(Counter(r.get("decided_by") for r in rs if r.get("decided_by"))),
             "seconds": ({"p50": statistics.median(times), "p90": times[math.ceil(0.9 * len(times)) - 1],
                          "max": times[-1], "total": sum(times)} if times else {})}
        if eps is not None:
            g["clean_accuracy"] = 1 - c.get("misclassified", 0) / len(rs)
            g["robust_accuracy_certified"] = c.get("unsat", 0) / len(rs)
            g["robust_accuracy_upper"] = (len(rs) - c.get("misclassified", 0) - c.get("sat", 0)) / len(rs)
        out["groups"].append(g)
    return out


def format_summary(summary: dict) -> str:
    """The summary as a readable table."""
    dataset = any(g["eps"] is not None for g in summary["groups"])
    head = (["eps"] if dataset else []) + ["n", "verified", "falsified", "unknown", "timeout", "error"]
    if dataset:
        head += ["misclass.", "clean acc", "robust acc [cert, upper]"]
    head += ["p50 s", "p90 s", "max s"]
    rows = []
    for g in summary["groups"]:
        c = g["counts"]
        row = ([f"{g['eps']:g}"] if dataset else []) + [str(g["n"]), str(c["unsat"]), str(c["sat"]),
                                                         str(c["unknown"]), str(c["timeout"]), str(c["error"])]
        if dataset:
            row += [str(c["misclassified"]), f"{g['clean_accuracy']:.3f}",
                    f"[{g['robust_accuracy_certified']:.3f}, {g['robust_accuracy_upper']:.3f}]"]
        s = g["seconds"]
        row += [f"{s['p50']:.2f}", f"{s['p90']:.2f}", f"{s['max']:.2f}"] if s else ["-", "-", "-"]
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)] if rows else [len(h) for h in head]
    lines = [" | ".join(h.rjust(w) for h, w in zip(head, widths)), "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    decided = Counter()
    for g in summary["groups"]:
        decided.update(g["decided_by"])
    if decided:
        lines.append("decided by: " + ", ".join(f"{k} {v}" for k, v in decided.most_common()))
    return "\n".join(lines)
