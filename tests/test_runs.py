"""Bulk runs (gpuopt.runs, gpuopt.engine.store, `gpuopt run`, `gpuopt report`): results survive
crashes and kills, resumed runs neither lose nor repeat items, worker deaths fail only their item.

Runs use the bundled digits model (gpuopt.demo), exported to ONNX, so no downloads are needed.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from gpuopt.cli import main as cli_main
from gpuopt.demo import load_demo_model
from gpuopt.engine.store import ResultStore, read_records
from gpuopt.errors import InvalidInputError
from gpuopt.runs import RunItem, run_items, verify_dataset
from helpers import onnx_model

REPO = Path(__file__).resolve().parents[1]
EPS = (0.02, 0.05)
SAMPLES = range(30, 42)  # 12 bundled test images; #38 is misclassified by the network


# ----------------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """`gpuopt run` in-process and the task functions set torch to one thread: restore it."""
    import torch

    n = torch.get_num_threads()
    yield
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _export_onnx(net, path: Path) -> None:
    """The demo Network as ONNX: MatMul + Add for the first layer, Gemm for the others, Relu
    between them, float32 weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from gpuopt.network import Dense

    dense = [layer for layer in net.layers if isinstance(layer, Dense)]
    nodes, inits, cur = [], [], "input"
    for k, layer in enumerate(dense):
        w = np.asarray(layer.weight, dtype=np.float32)
        b = np.asarray(layer.bias, dtype=np.float32)
        inits.append(numpy_helper.from_array(b, f"b{k}"))
        if k == 0:
            inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T), f"w{k}"))
            nodes.append(helper.make_node("MatMul", [cur, f"w{k}"], [f"mm{k}"]))
            nodes.append(helper.make_node("Add", [f"mm{k}", f"b{k}"], [f"z{k}"]))
        else:
            inits.append(numpy_helper.from_array(w, f"w{k}"))
            nodes.append(helper.make_node("Gemm", [cur, f"w{k}", f"b{k}"], [f"z{k}"], transB=1))
        cur = f"z{k}"
        if k < len(dense) - 1:
            nodes.append(helper.make_node("Relu", [cur], [f"r{k}"]))
            cur = f"r{k}"
    graph = helper.make_graph(
        nodes, "digits_demo",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, net.input_size])],
        [helper.make_tensor_value_info(cur, TensorProto.FLOAT, [1, net.output_size])], inits)
    model = onnx_model(graph)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _write_vnnlib(path: Path, x: np.ndarray, label: int, eps: float, n_out: int) -> None:
    """Robustness of ``x`` in the eps-ball clipped to [0, 1]; the unsafe region: another class wins."""
    lines = [f"(declare-const X_{i} Real)" for i in range(len(x))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i, v in enumerate(map(float, x)):
        lines.append(f"(assert (>= X_{i} {max(0.0, v - eps)!r}))")
        lines.append(f"(assert (<= X_{i} {min(1.0, v + eps)!r}))")
    alts = " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(n_out) if j != label)
    lines.append(f"(assert (or {alts}))")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def demo():
    net, images, labels = load_demo_model()
    return net, images, labels


@pytest.fixture(scope="module")
def files(tmp_path_factory, demo):
    """``net.onnx`` (the demo model) and ``data.csv`` (12 bundled images, ``label, 64 features``)."""
    net, images, labels = demo
    d = tmp_path_factory.mktemp("runs_files")
    _export_onnx(net, d / "net.onnx")
    idx = np.array(SAMPLES)
    np.savetxt(d / "data.csv", np.column_stack([labels[idx], images[idx]]), delimiter=",", fmt="%.17g")
    return {"dir": d, "onnx": d / "net.onnx", "data": d / "data.csv", "x": images[idx], "y": labels[idx]}


def _reference_status(net, x, label, eps, timeout=10.0) -> str:
    """The verdict of one sample, decided in this process without any executor."""
    from gpuopt.engine.tasks import verify_sample_task
    from gpuopt.verify import VerifyConfig

    if int(net.forward64(x[None]).argmax()) != int(label):
        return "misclassified"
    return verify_sample_task(net, x, int(label), float(eps), (0.0, 1.0), timeout, VerifyConfig(device="cpu"))["status"]


def _same_verdicts(got: dict, ref: dict) -> None:
    """``got`` and ``ref`` (key -> status) agree: the same keys, misclassified exactly, and sat
    vs unsat wherever both are decided."""
    assert set(got) == set(ref)
    for key in ref:
        if "misclassified" in (got[key], ref[key]):
            assert got[key] == ref[key], key
        elif got[key] in ("sat", "unsat") and ref[key] in ("sat", "unsat"):
            assert got[key] == ref[key], key


def _cli(argv, capsys):
    """``gpuopt ARGV`` in this process: ``(exit code, stdout, stderr)``."""
    try:
        code = cli_main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _gpuopt(*args):
    return [sys.executable, "-m", "gpuopt", *map(str, args)]


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True) if path.exists() else []


# ------------------------------------------------------------------------------- ResultStore
def test_store_records_survive_reopen(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultStore(path) as store:
        store.append({"key": "a", "status": "sat", "x": [1.0, 2.0]})
        store.append({"key": "b", "status": "unsat", "margin": float("inf")})
        assert "a" in store and store.keys() == {"a", "b"}
    for line in _lines(path):  # strict JSON (no Infinity), one record per line
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    with ResultStore(path, resume=True) as store:
        assert store.keys() == {"a", "b"}
        assert {r["key"]: r["status"] for r in store.records()} == {"a": "sat", "b": "unsat"}
        store.append({"key": "c", "status": "timeout"})
    assert [r["key"] for r in read_records(path)] == ["a", "b", "c"]
    assert [r["margin"] for r in read_records(path) if r["key"] == "b"] == ["inf"]


def test_store_drops_torn_last_line_and_appends_on_a_clean_line(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultStore(path) as store:
        store.append({"key": "a", "status": "sat"})
        store.append({"key": "b", "status": "unsat"})
    whole = path.read_bytes()
    with open(path, "ab") as f:  # a record cut off by a kill: half a line, no newline
        f.write(b'{"key":"c","status":"uns')
    assert [r["key"] for r in read_records(path)] == ["a", "b"]
    with ResultStore(path, resume=True) as store:
        assert store.keys() == {"a", "b"}
        assert path.read_bytes() == whole  # truncated back to the last complete line
        store.append({"key": "c", "status": "sat"})
    lines = _lines(path)
    assert len(lines) == 3 and all(line.endswith(b"\n") for line in lines)
    assert [json.loads(line)["key"] for line in lines] == ["a", "b", "c"]
    with ResultStore(path, resume=True) as store:
        assert {r["key"]: r["status"] for r in store.records()} == {"a": "sat", "b": "unsat", "c": "sat"}


def test_store_refuses_a_duplicate_key(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultStore(path) as store:
        store.append({"key": "a", "status": "sat"})
        with pytest.raises(InvalidInputError, match="already holds"):
            store.append({"key": "a", "status": "unsat"})
        with pytest.raises(InvalidInputError):
            store.append({"status": "unsat"})  # no key at all
    before = path.read_bytes()
    with ResultStore(path, resume=True) as store:  # a key loaded from disk counts too
        with pytest.raises(InvalidInputError, match="already holds"):
            store.append({"key": "a", "status": "unsat"})
    assert path.read_bytes() == before
    assert [r["status"] for r in read_records(path)] == ["sat"]


def test_store_refuses_an_existing_file_without_resume(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultStore(path) as store:
        store.append({"key": "a", "status": "sat"})
    before = path.read_bytes()
    with pytest.raises(InvalidInputError, match="resume"):
        ResultStore(path)
    assert path.read_bytes() == before
    with pytest.raises(InvalidInputError):
        ResultStore(tmp_path)  # a directory
    with pytest.raises(InvalidInputError):
        ResultStore(tmp_path / "no" / "such" / "r.jsonl")


def test_read_records_skips_garbage_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"key":"a","status":"sat"}\n'
                     b"garbage\n"
                     b"[1, 2, 3]\n"
                     b'{"status":"no key"}\n'
                     b"\xff\xfe not utf-8\n"
                     b"\n"
                     b'{"key":"b","status":"unsat"}\n'
                     b'{"key":"c","sta')
    assert [(r["key"], r["status"]) for r in read_records(path)] == [("a", "sat"), ("b", "unsat")]
    assert list(read_records(tmp_path / "missing.jsonl")) == []
    with ResultStore(path, resume=True) as store:
        assert store.keys() == {"a", "b"}
        store.append({"key": "c", "status": "unknown"})
    assert [r["key"] for r in read_records(path)] == ["a", "b", "c"]


# ------------------------------------------------------------------------ ONNX export (setup)
def test_exported_onnx_matches_the_demo_network(files, demo):
    import gpuopt

    net, images, _ = demo
    imported = gpuopt.from_onnx(files["onnx"])
    assert imported.input_size == 64 and imported.output_size == 10
    np.testing.assert_allclose(imported.forward64(images), net.forward64(images), rtol=0, atol=1e-6)
    try:
        import onnxruntime as ort
    except ImportError:
        return
    sess = ort.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(None, {"input": images[i:i + 1].astype(np.float32)})[0] for i in range(5)])
    np.testing.assert_allclose(got, net.forward64(images[:5]), rtol=0, atol=1e-4)


# ----------------------------------------------------------------------- kill and resume (CLI)
def _group_alive(pgid: int) -> list[int]:
    """Pids of live (not zombie) processes in process group ``pgid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            pids.append(int(entry))
    return pids


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def _start_run(files, results: Path, log: Path, *extra) -> subprocess.Popen:
    cmd = _gpuopt("run", "--model", files["onnx"], "--data", files["data"], "--eps", *EPS,
                  "--timeout", 10, "--workers", 1, "--results", results, *extra)
    with open(log, "ab") as out:  # files, not pipes: nobody reads while the run is going
        return subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _finish(proc: subprocess.Popen, log: Path, limit: float = 120.0) -> str:
    try:
        rc = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        pytest.fail(f"`gpuopt run` did not finish in {limit} s:\n{log.read_text()[-3000:]}")
    text = log.read_text(errors="replace")
    assert rc == 0, text[-3000:]
    return text


def test_kill_and_resume_loses_and_repeats_nothing(tmp_path, files):
    n_items = len(SAMPLES) * len(EPS)
    keys = {f"{i}@{e!r}" for e in EPS for i in range(len(SAMPLES))}

    # the reference: one uninterrupted run
    ref_path = tmp_path / "ref.jsonl"
    text = _finish(_start_run(files, ref_path, tmp_path / "ref.log"), tmp_path / "ref.log")
    assert "robust acc" in text and f"results: {ref_path}" in text
    ref = {r["key"]: r["status"] for r in read_records(ref_path)}
    assert set(ref) == keys and len(_lines(ref_path)) == 1 + n_items  # the run header, then the records
    header = json.loads(_lines(ref_path)[0])["run"]
    assert header["kind"] == "dataset" and header["clip"] == [0.0, 1.0] and len(header["network"]) == 64
    assert "misclassified" in ref.values() and {"sat", "unsat"} <= set(ref.values())

    # killed twice (SIGKILL to the whole process group) at seeded random moments, then resumed.
    # The items take milliseconds once the worker is up, so a moment is "after the k-th record
    # is on disk, plus a few ms": a kill always lands while the run is going, never after it.
    rng = random.Random(1234)
    k1 = rng.randint(3, 8)
    k2 = rng.randint(k1 + 2, 16)
    path, log = tmp_path / "R.jsonl", tmp_path / "run.log"
    seen_at_kill = []
    for round_, target in enumerate((k1, k2)):
        proc = _start_run(files, path, log, *(["--resume"] if round_ else []))
        try:
            deadline = time.monotonic() + 90
            while len(_lines(path)) < 1 + target:
                assert proc.poll() is None, f"the run ended before its kill:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "no progress within 90 s"
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.02))
            alive = proc.poll() is None
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            _kill_group(proc)
        assert alive, "the run finished before it could be killed"
        assert proc.returncode == -signal.SIGKILL
        deadline = time.monotonic() + 10  # the workers went with it
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _group_alive(proc.pid) == []
        seen_at_kill.append(len(list(read_records(path))))
        if round_ == 1:  # a record cut off mid-write, as a kill inside write() would leave
            with open(path, "ab") as f:
                f.write(b'{"key":"0@0.05","status":"un')
    assert 0 < seen_at_kill[0] < n_items and seen_at_kill[0] <= seen_at_kill[1] < n_items

    text = _finish(_start_run(files, path, log, "--resume"), log)
    assert "robust acc" in text

    lines = _lines(path)
    assert all(line.endswith(b"\n") for line in lines)
    assert json.loads(lines[0]) == {"run": header}
    records = [json.loads(line) for line in lines[1:]]  # every line parses: nothing torn is left
    counts = Counter(r["key"] for r in records)
    assert set(counts) == keys and set(counts.values()) == {1}, counts
    assert {(r["sample"], r["eps"]) for r in records} == {(i, e) for i in range(len(SAMPLES)) for e in EPS}
    for r in records:
        assert r["key"] == f"{r['sample']}@{r['eps']!r}"
    _same_verdicts({r["key"]: r["status"] for r in records}, ref)


# ------------------------------------------------------------------------ worker deaths
def test_worker_deaths_fail_only_their_item(tmp_path, demo):
    from gpuopt.verify import VerifyConfig

    from tests._run_tasks import verify_sample_or_die

    net, images, labels = demo
    eps, timeout, config = 0.05, 10.0, VerifyConfig(device="cpu")
    modes = ["exit_first", "none", "kill_first", "always", "exit_first"]
    items = []
    for i, mode in enumerate(modes):
        args = (net, images[i], int(labels[i]), eps, (0.0, 1.0), timeout, config)
        items.append(RunItem(f"s{i}", verify_sample_or_die, (str(tmp_path / f"attempts{i}"), mode, *args),
                             timeout, {"sample": i, "mode": mode}))
    path = tmp_path / "r.jsonl"
    with ResultStore(path) as store:
        got = list(run_items(items, store, workers=2, progress=False))
    assert sorted(r["key"] for r in got) == [f"s{i}" for i in range(len(modes))]
    on_disk = {r["key"]: r for r in read_records(path)}
    assert set(on_disk) == {r["key"] for r in got} and len(_lines(path)) == len(modes)

    for i, mode in enumerate(modes):
        rec = on_disk[f"s{i}"]
        attempts = len((tmp_path / f"attempts{i}").read_text().splitlines())
        if mode == "always":
            assert rec["status"] == "error", rec
            assert "worker died" in rec["message"] and "SIGKILL" in rec["message"], rec["message"]
            assert rec["attempts"] == 2 and attempts == 2
        else:
            expected = _reference_status(net, images[i], labels[i], eps, timeout)
            assert expected in ("sat", "unsat")
            assert rec["status"] == expected, (mode, rec)
            assert attempts == (1 if mode == "none" else 2), mode


# -------------------------------------------------------------- bad rows and bad input (CLI)
def test_bad_row_is_an_error_record_and_the_run_goes_on(tmp_path, files, demo, capsys):
    net, images, labels = demo
    (tmp_path / "props").mkdir()
    cases = [(0, 0.05), (1, 0.02)]
    rows = ["net.onnx,props/missing.vnnlib,10", "missing.onnx,props/p0.vnnlib,10"]
    for k, (i, eps) in enumerate(cases):
        _write_vnnlib(tmp_path / "props" / f"p{k}.vnnlib", images[i], int(labels[i]), eps, 10)
        rows.append(f"net.onnx,props/p{k}.vnnlib,10")
    (tmp_path / "net.onnx").write_bytes(files["onnx"].read_bytes())
    csv_path = tmp_path / "instances.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    results = tmp_path / "R.jsonl"
    proc = subprocess.run(_gpuopt("run", csv_path, "--results", results, "--workers", 1),
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "verified" in proc.stdout and "error" in proc.stdout
    recs = {(r["onnx"], r["vnnlib"]): r for r in read_records(results)}
    assert len(recs) == 4 and len(_lines(results)) == 4
    for onnx, vnnlib, missing in [("net.onnx", "props/missing.vnnlib", "missing.vnnlib"),
                                  ("missing.onnx", "props/p0.vnnlib", "missing.onnx")]:
        r = recs[(onnx, vnnlib)]
        assert r["status"] == "error" and "not found" in r["message"] and missing in r["message"], r
    for k, (i, eps) in enumerate(cases):
        expected = _reference_status(net, images[i], labels[i], eps)
        assert expected in ("sat", "unsat")
        assert recs[("net.onnx", f"props/p{k}.vnnlib")]["status"] == expected

    # `gpuopt report` on the same file
    code, out, err = _cli(["report", results], capsys)
    assert code == 0, err
    head, rule, row = out.splitlines()[:3]
    assert "verified" in head and "falsified" in head and "error" in head
    assert set(rule) <= {"-", "+"}
    cells = [c.strip() for c in row.split("|")]
    counts = Counter(r["status"] for r in recs.values())
    assert cells[:6] == ["4", str(counts["unsat"]), str(counts["sat"]), "0", "0", "2"]


def test_report_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    results = tmp_path / "R.jsonl"
    with ResultStore(results) as store:
        for k, (status, eps) in enumerate([("unsat", 0.01), ("sat", 0.01), ("misclassified", 0.01),
                                           ("unsat", 0.05), ("timeout", 0.05), ("misclassified", 0.05)]):
            store.append({"key": f"{k}", "sample": k % 3, "eps": eps, "status": status, "seconds": 0.1 * k,
                          "decided_by": "crown" if status == "unsat" else None})
    code, out, err = _cli(["report", results, "--plots", tmp_path / "plots"], capsys)
    assert code == 0, err
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    assert pngs, out
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {p}" in out


def test_cli_bad_input_exits_2_with_one_line(tmp_path, files, capsys):
    results = tmp_path / "R.jsonl"
    bad_width = tmp_path / "narrow.csv"
    np.savetxt(bad_width, np.column_stack([files["y"][:3], files["x"][:3, :10]]), delimiter=",")
    cases = [
        (["run", tmp_path / "nope.csv", "--results", results], "instances file not found"),
        (["run", "--model", files["onnx"], "--results", results], "--data"),
        (["run", "--model", files["onnx"], "--data", bad_width, "--eps", "0.1", "--results", results],
         "10 features"),
        (["run", "--model", files["onnx"], "--data", files["data"], "--eps", "-0.1", "--results", results],
         "--eps"),
        (["run", "--model", files["onnx"], "--data", tmp_path / "nope.csv", "--eps", "0.1", "--results", results],
         "not found"),
        (["report", tmp_path / "nope.jsonl"], "not found"),
    ]
    for argv, needle in cases:
        code, out, err = _cli(argv, capsys)
        assert code == 2, (argv, code, err)
        assert err.count("\n") == 1 and err.startswith("gpuopt: error: "), (argv, err)
        assert needle in err, (argv, err)
        assert "Traceback" not in err and not results.exists(), argv


def test_cli_bad_input_exit_code_as_a_program(tmp_path):
    proc = subprocess.run(_gpuopt("run", tmp_path / "nope.csv", "--results", tmp_path / "R.jsonl"),
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("gpuopt: error: ") and "not found" in proc.stderr
    assert proc.stdout == "" and not (tmp_path / "R.jsonl").exists()


# ----------------------------------------------------------------------------- verify_dataset
def test_verify_dataset_one_record_per_sample_and_eps(tmp_path, demo):
    net, images, labels = demo
    x, y = images[:4].copy(), labels[:4].copy()
    pred = net.forward64(x).argmax(axis=1)
    assert np.array_equal(pred, y)
    y[2] = (y[2] + 1) % 10  # a wrong label: the network "misclassifies" sample 2
    eps = [0.02, 0.05]
    results = tmp_path / "vd.jsonl"
    recs = list(verify_dataset(net, x, y, eps=eps, timeout=5, workers=1, results=results, clip=(0, 1)))
    assert len(recs) == len(x) * len(eps)
    assert Counter((r["sample"], r["eps"]) for r in recs) == Counter((i, e) for i in range(4) for e in eps)
    for r in recs:
        if r["sample"] == 2:
            assert r["status"] == "misclassified" and r["predicted"] == int(pred[2]), r
        else:
            assert r["status"] == _reference_status(net, x[r["sample"]], y[r["sample"]], r["eps"]), r
    assert {r["key"] for r in read_records(results)} == {r["key"] for r in recs}
    # resumed: everything is on disk already, so nothing is yielded (and nothing appended)
    before = results.read_bytes()
    assert list(verify_dataset(net, x, y, eps=eps, timeout=5, workers=1, results=results, resume=True,
                               clip=(0, 1))) == []
    assert results.read_bytes() == before
    # without a results file: a temporary one
    again = list(verify_dataset(net, x[2:3], y[2:3], eps=0.1, timeout=5))
    assert [(r["sample"], r["eps"], r["status"]) for r in again] == [(0, 0.1, "misclassified")]


def test_an_empty_clip_range_is_refused_before_any_work(tmp_path, capsys):
    from gpuopt.cli import main

    results = tmp_path / "r.jsonl"
    code = main(["run", "--model", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.csv"), "--eps", "0.1",
                 "--clip", "1", "0", "--results", str(results)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["gpuopt: error: --clip 1 0: the lower end exceeds the upper end"]
    assert not results.exists()


# ------------------------------------------------------------------- what a resume may mix
def test_store_refuses_to_resume_another_runs_file(tmp_path):
    path = tmp_path / "R.jsonl"
    with ResultStore(path, run={"kind": "dataset", "network": "a" * 64, "clip": (0, 1)}) as store:
        store.append({"key": "0@0.1", "status": "unsat"})
    assert json.loads(_lines(path)[0]) == {"run": {"kind": "dataset", "network": "a" * 64, "clip": [0, 1]}}
    assert [r["key"] for r in read_records(path)] == ["0@0.1"]  # the header is not a record
    with ResultStore(path, resume=True, run={"kind": "dataset", "network": "a" * 64, "clip": [0, 1]}) as store:
        assert store.keys() == {"0@0.1"}  # the same run (tuples read back as lists)
    with pytest.raises(InvalidInputError, match=r"holds the records of another run \(network: 'aaa.*' there, "
                                                r"'bbb.*' now\); choose another results file"):
        ResultStore(path, resume=True, run={"kind": "dataset", "network": "b" * 64, "clip": [0, 1]})
    # a run that describes no question (an instances CSV's) may not append to a dataset run's file
    with pytest.raises(InvalidInputError, match="holds the records of a dataset run; choose another results file"):
        ResultStore(path, resume=True)


def _other_onnx(demo, path: Path) -> None:
    """The demo network with its first layer's weights scaled: another network, same shapes."""
    from gpuopt.network import Dense, Network

    net = demo[0]
    layers = list(net.layers)
    k = next(i for i, layer in enumerate(layers) if isinstance(layer, Dense))
    layers[k] = Dense(np.asarray(layers[k].weight) * 1.5, layers[k].bias)
    _export_onnx(Network(layers, net.input_shape), path)


def test_a_resumed_dataset_run_refuses_another_network_data_or_clip(tmp_path, files, demo, capsys):
    """Records are keyed ``sample@eps``: a resume with another network, other data (or scale) or
    another clip box would pass their records off as this run's. The results file's run header
    refuses that; ``--limit`` and the eps list only pick items, so they may change, and the
    summary is of the items asked for."""
    results = tmp_path / "R.jsonl"
    base = ["run", "--model", files["onnx"], "--data", files["data"], "--timeout", 10, "--workers", 1,
            "--results", results]
    code, out, err = _cli([*base, "--eps", 0.02, "--limit", 2], capsys)
    assert code == 0, err
    assert len(list(read_records(results))) == 2
    before = results.read_bytes()
    _other_onnx(demo, tmp_path / "other.onnx")
    for swap, differs in [(("--model", tmp_path / "other.onnx"), "network"), (("--scale", 2), "data"),
                          (("--clip", -1, 2), "clip")]:
        argv = list(base) + ["--eps", 0.02, "--limit", 2, "--resume"]
        if swap[0] in argv:
            argv[argv.index(swap[0]) + 1] = swap[1]
        else:
            argv += list(swap)
        code, out, err = _cli(argv, capsys)
        assert code == 2 and "holds the records of another run" in err and f"({differs}: " in err, (swap, err)
        assert results.read_bytes() == before
    # the same question, fewer samples: nothing runs, and the summary counts the one asked for
    code, out, err = _cli([*base, "--eps", 0.02, "--limit", 1, "--resume"], capsys)
    assert code == 0, err
    assert "(the summary leaves out 1 records" in out
    row = [line for line in out.splitlines() if line.strip().startswith("0.02 |")]
    assert len(row) == 1 and [c.strip() for c in row[0].split("|")][1] == "1", out
    assert results.read_bytes() == before


def test_a_dataset_outside_the_clip_box_is_refused_once(tmp_path, files, capsys):
    """Pixels in 0..255 under the default clip box [0, 1] (a forgotten ``--scale 255``) would leave
    every item's ball empty: one error, before any work, that says so."""
    raw = tmp_path / "raw.csv"
    np.savetxt(raw, np.column_stack([files["y"], files["x"] * 255]), delimiter=",", fmt="%.17g")
    results = tmp_path / "R.jsonl"
    code, out, err = _cli(["run", "--model", files["onnx"], "--data", raw, "--eps", 0.02, "--results", results],
                          capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "outside the clip box [0, 1]" in err and "--scale" in err and not results.exists()


def test_an_instances_csv_may_start_with_a_header_row(tmp_path, files, demo):
    from gpuopt.runs import read_instances

    net, images, labels = demo
    _write_vnnlib(tmp_path / "p.vnnlib", images[0], int(labels[0]), 0.02, 10)
    (tmp_path / "net.onnx").write_bytes(files["onnx"].read_bytes())
    (tmp_path / "i.csv").write_text("onnx,vnnlib,timeout\nnet.onnx,p.vnnlib,10\n")
    (item,) = read_instances(tmp_path / "i.csv")
    assert item.key == "net.onnx::p.vnnlib" and item.timeout == 10
    (tmp_path / "j.csv").write_text("net.onnx,p.vnnlib,10\nnet.onnx,p.vnnlib,timeout\n")  # not first: an error
    with pytest.raises(InvalidInputError, match="timeout must be a number, got 'timeout'"):
        read_instances(tmp_path / "j.csv")


def test_workers_beyond_the_cpus_are_capped(capsys):
    from gpuopt.cli import _pool_workers, _usable_cpus

    n = _usable_cpus()
    assert _pool_workers(None) is None and _pool_workers(n) == n
    assert _pool_workers(n + 63) == n
    assert capsys.readouterr().err == f"gpuopt: warning: --workers {n + 63} exceeds the {n} usable CPUs; using {n}\n"


def test_run_description_reads_an_infinite_clip_end_as_an_open_one(demo):
    from gpuopt.runs import run_description

    net, images, labels = demo
    x, y = images[:3], labels[:3]
    open_box = run_description("dataset", net, x, y, None)
    assert open_box["clip"] == [None, None]
    assert run_description("dataset", net, x, y, (-math.inf, math.inf)) == open_box
    assert run_description("dataset", net, x, y, (0, math.inf))["clip"] == [0.0, None]
    assert run_description("dataset", net, x * 2, y, None)["data"] != open_box["data"]


def test_dataset_items_take_a_per_feature_clip_box(demo):
    """``clip`` as per-feature arrays, as LinfBall and certify_radius take it (validated by
    gpuopt.regions.clip_pair); a sample outside its own feature's range is refused."""
    from gpuopt.runs import dataset_items, run_description

    net, images, labels = demo
    x, y = images[:2], labels[:2]
    d = x.shape[1]
    lo, hi = np.zeros(d), np.ones(d)
    items = dataset_items(net, x, y, [0.02], timeout=5, clip=(lo, hi))
    assert len(items) == 2 and np.array_equal(items[0].args[4][1], hi)
    header = run_description("dataset", net, x, y, (lo, hi))
    assert header["clip"] == [[0.0] * d, [1.0] * d]
    tight = hi.copy()
    k = int(np.argmax(x[0]))
    tight[k] = x[0, k] / 2
    with pytest.raises(InvalidInputError, match=r"outside the clip box \[0, per feature\]"):
        dataset_items(net, x, y, [0.02], timeout=5, clip=(0.0, tight))
    with pytest.raises(InvalidInputError, match="`clip` must be None or a pair"):
        dataset_items(net, x, y, [0.02], timeout=5, clip=(0.0,))
