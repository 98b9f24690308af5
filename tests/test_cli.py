"""The `gpuopt verify` command line: verdict as the last line, the VNN-COMP result file, exit code 2
with a one-line message for every kind of bad input, and known answers on real instances."""

from __future__ import annotations

import csv
import importlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gpuopt import from_onnx
from gpuopt.cli import main
from gpuopt.errors import GpuoptError
from gpuopt.io.vnnlib import load_vnnlib
from helpers import onnx_model


@pytest.fixture(autouse=True)
def _one_thread_after_each_command():
    """``gpuopt verify`` sets torch's threads for its process (default: every usable CPU); the
    tests here share one process, so each starts again from one thread."""
    yield
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
VERIFY_MODULE = importlib.import_module("gpuopt.verify")  # `gpuopt.verify` is also a function


def _write_tiny_onnx(path: Path, n_in=2, n_out=2):
    """A 2-2-2 ReLU network saved through torch's ONNX-free route: built with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(3, n_in)).astype(np.float32)
    w2 = rng.normal(size=(n_out, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu1"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1, name="fc2"),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n_out])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(np.zeros(3, np.float32), "b1"),
         numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(np.zeros(n_out, np.float32), "b2")],
    )
    onnx.save(onnx_model(graph), path)
    return path


def _write_vnnlib(path: Path, n_in: int, n_out: int, lo: float, hi: float, unsafe: str):
    decl = "".join(f"(declare-const X_{i} Real)\n" for i in range(n_in))
    decl += "".join(f"(declare-const Y_{j} Real)\n" for j in range(n_out))
    box = "".join(f"(assert (>= X_{i} {lo}))\n(assert (<= X_{i} {hi}))\n" for i in range(n_in))
    path.write_text(decl + box + f"(assert {unsafe})\n")
    return path


@pytest.fixture
def tiny(tmp_path):
    return _write_tiny_onnx(tmp_path / "tiny.onnx")


def test_sat_prints_verdict_last_and_writes_checked_counterexample(tiny, tmp_path, capsys):
    # unsafe region y_0 - y_1 <= 1000 is reached everywhere: a counterexample must exist
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(<= (- Y_0 Y_1) 1000)")
    out = tmp_path / "result.txt"
    assert main(["verify", str(tiny), str(spec), "--timeout", "30", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "sat"
    lines = out.read_text().splitlines()
    assert lines[0] == "sat"
    values = dict(re.findall(r"\((X_\d+|Y_\d+) (\S+)\)", out.read_text()))
    x = np.array([float(values["X_0"]), float(values["X_1"])])
    assert np.all((x >= -1) & (x <= 1))
    y = from_onnx(tiny).forward64(x[None])[0]
    np.testing.assert_allclose([float(values["Y_0"]), float(values["Y_1"])], y, rtol=0, atol=0)
    assert y[0] - y[1] <= 1000


def test_unsat_result_file_has_only_the_status(tiny, tmp_path, capsys):
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(>= (- Y_0 Y_1) 1000)")
    out = tmp_path / "result.txt"
    assert main(["verify", str(tiny), str(spec), "--timeout", "30", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "unsat"
    assert out.read_text().strip() == "unsat"


@pytest.mark.parametrize("case, expected", [
    ("missing_onnx", "network file not found"),
    ("missing_vnnlib", "property file not found"),
    ("corrupt_onnx", "is not a valid ONNX model"),
    ("input_size_mismatch", "but the network takes 2 inputs"),
    ("output_size_mismatch", "but the network has 2 outputs"),
    ("malformed_vnnlib", "p.vnnlib:"),
    ("negative_timeout", "--timeout: must be a finite number >= 0"),
    ("nan_timeout", "--timeout: must be a finite number >= 0"),
])
def test_bad_input_exits_2_with_one_line(case, expected, tiny, tmp_path, capsys):
    onnx_path, spec = tiny, _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(<= Y_0 Y_1)")
    extra = []
    if case == "missing_onnx":
        onnx_path = tmp_path / "nope.onnx"
    elif case == "missing_vnnlib":
        spec = tmp_path / "nope.vnnlib"
    elif case == "corrupt_onnx":
        onnx_path = tmp_path / "bad.onnx"
        onnx_path.write_bytes(b"\x08\x07garbage" * 10)
    elif case == "input_size_mismatch":
        spec = _write_vnnlib(tmp_path / "p.vnnlib", 3, 2, -1, 1, "(<= Y_0 Y_1)")
    elif case == "output_size_mismatch":
        spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 3, -1, 1, "(<= Y_0 Y_1)")
    elif case == "malformed_vnnlib":
        spec.write_text(spec.read_text() + "(assert (<= Y_0\n")
    elif case == "negative_timeout":
        extra = ["--timeout", "-1"]
    elif case == "nan_timeout":
        extra = ["--timeout", "nan"]
    code = _run(["verify", str(onnx_path), str(spec), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert expected in err
    assert len(err.splitlines()) == 1 and err.startswith("gpuopt: error: ")


def _run(argv) -> int:
    """`main(argv)`, with argparse's SystemExit turned into its exit code."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.fixture
def no_work(monkeypatch):
    """Replaces the pipeline by a recorder: ``calls`` gets the keyword arguments of each call."""
    calls = []

    def fake_verify_instance(onnx_path, vnnlib_path, **kwargs):
        calls.append(kwargs)
        raise GpuoptError("stopped by the test")

    monkeypatch.setattr(VERIFY_MODULE, "verify_instance", fake_verify_instance)
    return calls


def _cuda(monkeypatch, count: int):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


MAX_THREADS = 4 * (os.cpu_count() or 1)


@pytest.mark.parametrize("extra, n_cuda, expected", [
    (["--device", "bogus"], 0, "--device 'bogus': not a device (expected cpu, cuda or cuda:N)"),
    (["--device", ""], 0, "--device '': not a device (expected cpu, cuda or cuda:N)"),
    (["--device", "cuda:-1"], 1, "--device 'cuda:-1': not a device (expected cpu, cuda or cuda:N)"),
    (["--device", "meta"], 0, "--device 'meta': unsupported device (expected cpu, cuda or cuda:N)"),
    (["--device", "cpu:1"], 0, "--device 'cpu:1': unsupported device (expected cpu, cuda or cuda:N)"),
    (["--device", "cuda"], 0, "--device 'cuda': CUDA is not available on this machine"),
    (["--device", "cuda:0"], 0, "--device 'cuda:0': CUDA is not available on this machine"),
    (["--device", "cuda:99"], 1, "--device 'cuda:99': there is no CUDA device 99 (this machine has 1: cuda:0 to cuda:0)"),
    (["--seed", "-1"], 0, "argument --seed: must be an integer between 0 and 4294967295, got '-1'"),
    (["--seed", str(2**32)], 0, "argument --seed: must be an integer between 0 and 4294967295, got '4294967296'"),
    (["--seed", "1.5"], 0, "argument --seed: must be an integer between 0 and 4294967295, got '1.5'"),
    (["--threads", "0"], 0, f"argument --threads: must be an integer between 1 and {MAX_THREADS} (4 per CPU here), got '0'"),
    (["--threads", "100000"], 0,
     f"argument --threads: must be an integer between 1 and {MAX_THREADS} (4 per CPU here), got '100000'"),
    (["--restarts", "1000000000"], 0,
     "argument --restarts: must be an integer between 1 and 10000 (memory grows with it), got '1000000000'"),
    (["--steps", "0"], 0, "argument --steps: must be an integer between 1 and 1000000, got '0'"),
    (["--timeout"], 0, "argument --timeout: expected one argument"),
    (["--timeout", "soon"], 0, "argument --timeout: expected a number, got 'soon'"),
    (["--bogus"], 0, "unrecognized arguments: --bogus"),
    (["extra"], 0, "unrecognized arguments: extra"),
    (["--out", "{tmp}"], 0, "--out '{tmp}': is a directory"),
    (["--out", "{tmp}/no/r.txt"], 0, "--out '{tmp}/no/r.txt': folder '{tmp}/no' does not exist"),
    (["--out", "{tmp}/p.vnnlib"], 0, "--out '{tmp}/p.vnnlib': is an input file of this command; the result would "
                                     "replace it"),
])
def test_bad_options_exit_2_with_one_line_before_any_work(extra, n_cuda, expected, tiny, tmp_path, capsys,
                                                          monkeypatch, no_work):
    _cuda(monkeypatch, n_cuda)
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(<= Y_0 Y_1)")
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    assert _run(["verify", str(tiny), str(spec), *extra]) == 2
    assert capsys.readouterr().err == f"gpuopt: error: {expected.replace('{tmp}', str(tmp_path))}\n"
    assert no_work == []


@pytest.mark.parametrize("argv, expected", [
    ([], "the following arguments are required: command"),
    (["bogus"], "argument command: invalid choice: 'bogus'"),
    (["--bogus", "demo"], "unrecognized arguments: --bogus"),
    (["verify"], "the following arguments are required: onnx, vnnlib"),
    (["verify", "a.onnx"], "the following arguments are required: vnnlib"),
    (["demo", "--images", "0"], "argument --images: must be >= 1, got '0'"),
    (["demo", "--timeout", "-1"], "argument --timeout: must be a finite number > 0, got '-1'"),
    (["demo", "--timeout", "0"], "argument --timeout: must be a finite number > 0, got '0'"),
    (["run", "x.csv", "--results", "r.jsonl", "--timeout-scale", "-2"],
     "argument --timeout-scale: must be a finite number > 0, got '-2'"),
])
def test_usage_errors_are_one_line(argv, expected, capsys):
    assert _run(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gpuopt: error: {expected}") and err.count("\n") == 1


@pytest.mark.parametrize("device, n_cuda", [("cpu", 0), ("cpu:0", 0), ("cuda", 1), ("cuda:0", 1), ("cuda:1", 2)])
def test_valid_devices_reach_the_pipeline(device, n_cuda, tiny, tmp_path, monkeypatch, no_work):
    _cuda(monkeypatch, n_cuda)
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(<= Y_0 Y_1)")
    assert _run(["verify", str(tiny), str(spec), "--device", device, "--seed", str(2**32 - 1)]) == 1
    config = no_work[0]["config"]
    assert config.device == device
    assert config.attack.seed == 2**32 - 1 and config.solver.seed == (2**32 - 1) % 2**31  # HiGHS's range


@pytest.mark.parametrize("exc, code, expected", [
    (PermissionError(13, "Permission denied", "net.onnx"), 2, "gpuopt: error: net.onnx: Permission denied"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), 2,
     "gpuopt: error: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
    (RuntimeError("boom\nsecond line"), 1,
     "gpuopt: internal error: RuntimeError: boom second line (run with -v for the traceback)"),
])
def test_unexpected_exceptions_are_one_line(exc, code, expected, tiny, tmp_path, capsys, monkeypatch):
    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(VERIFY_MODULE, "verify_instance", fail)
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(<= Y_0 Y_1)")
    assert _run(["verify", str(tiny), str(spec)]) == code
    assert capsys.readouterr().err == expected + "\n"


# ---------------------------------------------------------------------- timeout start
def test_process_start_is_before_the_first_statement():
    """In a fresh interpreter the start is before its first statement, not at the import of
    gpuopt.cli one second later (the fallback)."""
    code = ("import time; t = time.monotonic(); time.sleep(1.0)\n"
            "from gpuopt.cli import process_start_monotonic as p\n"
            "print(t, p(), time.monotonic())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first, start, now = map(float, proc.stdout.split())
    assert first - 30 < start < first + 0.05  # /proc has 10 ms resolution
    assert start <= now - 1.0


@pytest.mark.parametrize("age, expected", [
    (None, -1.5),  # /proc unreadable: the import time of gpuopt.cli (here set to 1.5 s ago)
    (2.0, -2.0),
    (1e9, -60.0),  # implausibly old: clamped to 60 s ago
    (-5.0, 0.0),  # in the future: clamped to now
])
def test_process_start_is_clamped_and_has_a_fallback(age, expected, monkeypatch):
    import gpuopt.cli as cli

    before = time.monotonic()
    monkeypatch.setattr(cli, "_IMPORT_MONOTONIC", before - 1.5)
    monkeypatch.setattr(cli, "_process_age_seconds", lambda: age)
    start = cli.process_start_monotonic()
    after = time.monotonic()
    if age is None:
        assert start == before - 1.5
    else:
        assert before + expected - 1e-6 <= start <= after + expected + 1e-6


def test_process_age_is_read_from_proc():
    import gpuopt.cli as cli

    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc here")
    age = cli._process_age_seconds()
    assert age is not None and 0 <= age < time.monotonic() + 1
    now = time.monotonic()
    assert now - 60 <= cli.process_start_monotonic() <= time.monotonic()


def test_timeout_counts_from_process_start_when_run_as_a_program(tiny, tmp_path, monkeypatch, no_work):
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(<= Y_0 Y_1)")
    monkeypatch.setattr(sys, "argv", ["gpuopt", "verify", str(tiny), str(spec), "--timeout", "5"])
    entered = time.monotonic()
    assert main() == 1
    assert entered - 60 <= no_work[0]["start_time"] < entered
    entered = time.monotonic()
    assert main(sys.argv[1:]) == 1  # called from Python: from the call
    assert no_work[1]["start_time"] >= entered


def test_console_entry_point_runs_as_a_process(tiny, tmp_path):
    """`python -m gpuopt` as a separate process: stdout ends with the verdict, bad input exits 2."""
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(>= (- Y_0 Y_1) 1000)")
    env_cmd = [sys.executable, "-m", "gpuopt", "verify", str(tiny), str(spec), "--timeout", "20"]
    proc = subprocess.run(env_cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "unsat"
    assert "Running HiGHS" not in proc.stdout
    bad = subprocess.run(env_cmd[:4] + [str(tmp_path / "missing.onnx"), str(spec)], capture_output=True,
                         text=True, cwd=REPO, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def _reference_labels(benchmarks_dir: Path) -> dict:
    with open(benchmarks_dir / "reference" / "vnncomp2022_labels.csv") as fh:
        return {row["instance"]: row["reference_label"] for row in csv.DictReader(fh)}


# fast real instances (each decided in a few seconds here), covering every stage that can decide
KNOWN = [
    ("mnist_fc", "mnist-net_256x2", "prop_1_0.03"),   # sat (attack)
    ("mnist_fc", "mnist-net_256x2", "prop_0_0.03"),   # unsat (MILP)
    ("acasxu", "ACASXU_run2a_1_1_batch_2000", "prop_1"),  # unsat (input splitting)
    ("acasxu", "ACASXU_run2a_1_7_batch_2000", "prop_3"),  # sat
    ("acasxu", "ACASXU_run2a_1_4_batch_2000", "prop_2"),  # sat (narrow counterexample)
]


@pytest.mark.parametrize("suite, net, prop", KNOWN)
def test_known_answers_match_reference(benchmarks_dir, suite, net, prop, tmp_path, capsys):
    base = benchmarks_dir / "vnncomp2022" / suite
    ref = _reference_labels(benchmarks_dir)[f"{net}-{prop}"]
    out = tmp_path / "r.txt"
    assert main(["verify", str(base / "onnx" / f"{net}.onnx"), str(base / "vnnlib" / f"{prop}.vnnlib"),
                 "--timeout", "100", "--out", str(out)]) == 0
    status = capsys.readouterr().out.strip().splitlines()[-1]
    assert status == ref
    if status == "sat":  # independent re-check of the written counterexample
        text = out.read_text()
        net_ir = from_onnx(base / "onnx" / f"{net}.onnx")
        x = np.array([float(v) for v in re.findall(r"\(X_\d+ (\S+)\)", text)])
        (box, spec), = load_vnnlib(base / "vnnlib" / f"{prop}.vnnlib")
        assert np.all((x >= box.lower) & (x <= box.upper))
        assert spec.margin64(net_ir.forward64(x[None]))[0] <= 0


def test_networks_match_onnxruntime_inside_vnnlib_boxes(benchmarks_dir):
    """Every benchmark network against onnxruntime on 100 points drawn inside the box of a VNNLIB
    instance that uses it (1e-5 relative)."""
    ort = pytest.importorskip("onnxruntime")
    seen = set()
    rng = np.random.default_rng(0)
    for csv_path in sorted(benchmarks_dir.glob("vnncomp20*/*/*instances.csv")):
        with open(csv_path) as fh:
            for row in csv.reader(fh):
                if len(row) < 2 or (csv_path, row[0].strip()) in seen:
                    continue
                seen.add((csv_path, row[0].strip()))
                onnx_path, vnnlib_path = csv_path.parent / row[0].strip(), csv_path.parent / row[1].strip()
                net = from_onnx(onnx_path)
                box, _ = load_vnnlib(vnnlib_path, n_inputs=net.input_size)[0]
                x = box.lower + (box.upper - box.lower) * rng.random((100, box.size))
                ours = net.forward64(x)
                sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
                name = sess.get_inputs()[0].name
                shape = [1, *net.input_shape]
                ref = np.stack([sess.run(None, {name: xi.reshape(shape).astype(np.float32)})[0].reshape(-1)
                                for xi in x])
                # onnxruntime runs in float32: compare against our forward on the same float32 inputs
                ours32 = net.forward64(x.astype(np.float32).astype(np.float64))
                scale = max(1.0, float(np.abs(ref).max()))
                assert np.abs(ours32 - ref).max() <= 1e-5 * scale, onnx_path.name
                assert np.isfinite(ours).all()
    every_net = {str(p.relative_to(benchmarks_dir)) for p in benchmarks_dir.glob("vnncomp20*/*/**/*.onnx")}
    covered = {str((c.parent / o).relative_to(benchmarks_dir)) for c, o in seen}
    assert covered == every_net


# ------------------------------------------------------------------------------ gpuopt attack
def test_attack_command_finds_and_writes_a_checked_counterexample(tiny, tmp_path, capsys):
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(<= (- Y_0 Y_1) 1000)")
    out = tmp_path / "result.txt"
    assert main(["attack", str(tiny), str(spec), "--timeout", "20", "--restarts", "8", "--steps", "10",
                 "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "sat"
    values = dict(re.findall(r"\((X_\d+|Y_\d+) (\S+)\)", out.read_text()))
    x = np.array([float(values["X_0"]), float(values["X_1"])])
    assert out.read_text().splitlines()[0] == "sat" and np.all((x >= -1) & (x <= 1))
    y = from_onnx(tiny).forward64(x[None])[0]
    assert y[0] - y[1] <= 1000


def test_attack_command_says_unknown_where_no_counterexample_exists(tiny, tmp_path, capsys):
    """An attack proves nothing: an unreachable region gives ``unknown`` after the time, never ``unsat``."""
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(>= (- Y_0 Y_1) 1000)")
    out = tmp_path / "result.txt"
    t0 = time.monotonic()
    assert main(["attack", str(tiny), str(spec), "--timeout", "1.5", "--restarts", "4", "--steps", "5",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.strip().splitlines()[-1] == "unknown"
    assert time.monotonic() - t0 >= 1.0  # rounds continued until the time was up
    assert re.search(r"in (\d+) rounds", text) and int(re.search(r"in (\d+) rounds", text).group(1)) > 1
    assert out.read_text().strip() == "unknown"


@pytest.mark.parametrize("extra, expected", [
    (["--restarts", "0"], "--restarts: must be an integer between 1 and"),
    (["--timeout", "-1"], "--timeout: must be a finite number >= 0"),
    (["--device", "bogus"], "--device 'bogus': not a device"),
])
def test_attack_command_bad_options_are_one_line(extra, expected, tiny, tmp_path, capsys):
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(<= Y_0 0)")
    try:
        code = main(["attack", str(tiny), str(spec), *extra])
    except SystemExit as exc:  # argparse's own errors exit from inside parse_args
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]


def test_attack_command_on_a_benchmark_instance(benchmarks_dir, tmp_path, capsys):
    base = benchmarks_dir / "vnncomp2022" / "mnist_fc"
    ref = _reference_labels(benchmarks_dir)["mnist-net_256x2-prop_1_0.03"]
    assert ref == "sat"
    out = tmp_path / "r.txt"
    assert main(["attack", str(base / "onnx" / "mnist-net_256x2.onnx"), str(base / "vnnlib" / "prop_1_0.03.vnnlib"),
                 "--timeout", "30", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "sat"
    x = np.array([float(v) for v in re.findall(r"\(X_\d+ (\S+)\)", out.read_text())])
    (box, spec), = load_vnnlib(base / "vnnlib" / "prop_1_0.03.vnnlib")
    assert np.all((x >= box.lower) & (x <= box.upper))
    assert spec.margin64(from_onnx(base / "onnx" / "mnist-net_256x2.onnx").forward64(x[None]))[0] <= 0


def test_attack_command_stops_at_the_first_counterexample_of_several_boxes(tiny, tmp_path, capsys):
    """A VNNLIB with two input boxes, only one of which reaches the unsafe region: ``sat`` comes
    as soon as it is confirmed, not at the timeout (adversarial review)."""
    spec = tmp_path / "two.vnnlib"
    spec.write_text("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
                    "(declare-const Y_1 Real)\n"
                    "(assert (or (and (>= X_0 -1) (<= X_0 1) (>= X_1 -1) (<= X_1 1) (>= (- Y_0 Y_1) 1000))\n"
                    "            (and (>= X_0 -1) (<= X_0 1) (>= X_1 -1) (<= X_1 1) (<= (- Y_0 Y_1) 1000))))\n")
    t0 = time.monotonic()
    assert main(["attack", str(tiny), str(spec), "--timeout", "30"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "sat"
    assert time.monotonic() - t0 < 15


@pytest.mark.parametrize("bab", ["auto", "input", "relu", "off"])
def test_bab_choices_decide_the_tiny_network(bab, tiny, tmp_path, capsys):
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(>= (- Y_0 Y_1) 1000)")
    assert main(["verify", str(tiny), str(spec), "--timeout", "30", "--bab", bab]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "unsat"


@pytest.mark.parametrize("option, bad", [("--bab", "beta"), ("--cut-kinds", "gomory"), ("--branching", "sb"),
                                         ("--relu-refine", "maybe")])
def test_choice_options_reject_an_unknown_choice(option, bad, tiny, tmp_path, capsys):
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(<= Y_0 0)")
    try:
        code = main(["verify", str(tiny), str(spec), option, bad])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and option in err[0] and bad in err[0]


@pytest.mark.parametrize("handoff", ["0", "8"])
def test_handoff_option_decides_the_tiny_network(handoff, tiny, tmp_path, capsys):
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(>= (- Y_0 Y_1) 1000)")
    assert main(["verify", str(tiny), str(spec), "--timeout", "30", "--bab", "relu", "--handoff", handoff]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "unsat"


@pytest.mark.parametrize("option", ["--handoff", "--split-milp"])
@pytest.mark.parametrize("bad", ["-1", "x", "1.5"])
def test_hybrid_options_reject_bad_values(option, bad, tiny, tmp_path, capsys):
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(<= Y_0 0)")
    try:
        code = main(["verify", str(tiny), str(spec), option, bad])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and option in err[0] and "between 0 and" in err[0]


def _capture_config(monkeypatch) -> dict:
    """Record the VerifyConfig the CLI passes to ``verify_instance`` (which still runs) in the
    returned dict's ``config``."""
    import importlib

    verify_module = importlib.import_module("gpuopt.verify")  # the package's `verify` is the function
    real, seen = verify_module.verify_instance, {}

    def fake_verify_instance(onnx, vnnlib, *, timeout, config, start_time):
        seen["config"] = config
        return real(onnx, vnnlib, timeout=timeout, config=config, start_time=start_time)

    monkeypatch.setattr(verify_module, "verify_instance", fake_verify_instance)
    return seen


@pytest.mark.parametrize("bab, n", [("auto", "0"), ("input", "24"), ("auto", None)])
def test_split_milp_option_reaches_input_splitting(bab, n, tiny, tmp_path, monkeypatch):
    """``--split-milp N`` sets how many unstable ReLUs a sub-box may have to go to the MILP
    (default 16), with ``--bab input`` too."""
    seen = _capture_config(monkeypatch)
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(>= (- Y_0 Y_1) 1000)")
    args = ["verify", str(tiny), str(spec), "--timeout", "30", "--bab", bab] + ([] if n is None else ["--split-milp", n])
    assert main(args) == 0
    split = seen["config"].split
    assert split.milp_unstable == (16 if n is None else int(n))
    assert (split.max_input_dim > 16) == (bab == "input")


@pytest.mark.all_cpus
def test_verify_uses_the_free_cpus_by_default_and_threads_overrides_it(tiny, tmp_path, monkeypatch):
    import gpuopt.cli

    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(>= (- Y_0 Y_1) 1000)")
    monkeypatch.setattr(gpuopt.cli, "free_cpus", lambda: 3)  # what gpuopt.launch measured
    assert main(["verify", str(tiny), str(spec), "--timeout", "30"]) == 0
    assert torch.get_num_threads() == 3
    assert main(["verify", str(tiny), str(spec), "--timeout", "30", "--threads", "1"]) == 0
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("extra, want", [([], False), (["--cuts"], "all"), (["--cut-kinds", "implication"], "implication"),
                                         (["--cuts", "--cut-kinds", "ideal"], "ideal")])
def test_cut_options_reach_the_config(extra, want, tiny, tmp_path, monkeypatch):
    """``--cuts`` adds every family of valid inequalities; ``--cut-kinds`` picks some."""
    seen = _capture_config(monkeypatch)
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(>= (- Y_0 Y_1) 1000)")
    assert main(["verify", str(tiny), str(spec), "--timeout", "30", "--bab", "off"] + extra) == 0
    assert seen["config"].cuts == want


@pytest.mark.parametrize("extra, want", [([], None), (["--branching", "fsb"], "fsb"), (["--branching", "babsr"], "babsr"),
                                         (["--branching", "fsb", "--handoff", "4"], "fsb")])
def test_branching_option_reaches_activation_splitting(extra, want, tiny, tmp_path, monkeypatch):
    """``--branching`` picks activation splitting's rule; ``--handoff`` beside it is kept; the
    CLI's choices are the module's."""
    from gpuopt.relu_split import BRANCHING, ReluSplitConfig

    seen = _capture_config(monkeypatch)
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(>= (- Y_0 Y_1) 1000)")
    assert main(["verify", str(tiny), str(spec), "--timeout", "30", "--bab", "relu"] + extra) == 0
    relu = seen["config"].relu_split
    assert relu.branching == (want or ReluSplitConfig().branching)
    assert relu.handoff == (4 if "--handoff" in extra else ReluSplitConfig().handoff)
    from gpuopt.cli import _parser

    verify_parser = _parser()._subparsers._group_actions[0].choices["verify"]
    assert tuple(next(a.choices for a in verify_parser._actions if "--branching" in a.option_strings)) == BRANCHING


@pytest.mark.parametrize("extra, want", [([], "auto"), (["--relu-refine", "on"], True), (["--relu-refine", "off"], False),
                                         (["--relu-refine", "auto", "--branching", "fsb"], "auto")])
def test_relu_refine_option_reaches_activation_splitting(extra, want, tiny, tmp_path, monkeypatch):
    seen = _capture_config(monkeypatch)
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(>= (- Y_0 Y_1) 1000)")
    assert main(["verify", str(tiny), str(spec), "--timeout", "30", "--bab", "relu"] + extra) == 0
    relu = seen["config"].relu_split
    assert relu.refine is want if isinstance(want, bool) else relu.refine == want
    assert relu.branching == ("fsb" if "fsb" in extra else "babsr")


@pytest.mark.parametrize("extra, want", [([], False), (["--lp-dives", "on"], True), (["--lp-dives", "off"], False)])
def test_lp_dives_option_reaches_activation_splitting(extra, want, tiny, tmp_path, monkeypatch):
    seen = _capture_config(monkeypatch)
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(>= (- Y_0 Y_1) 1000)")
    assert main(["verify", str(tiny), str(spec), "--timeout", "30", "--bab", "relu"] + extra) == 0
    assert seen["config"].relu_split.lp_rescue is want


@pytest.mark.parametrize("extra, retry, tighten", [([], True, False), (["--stall-tighten", "on"], True, True),
                                                  (["--stall-tighten", "off"], True, False),
                                                  (["--stall-retry", "off"], False, False)])
def test_stall_options_reach_activation_splitting(extra, retry, tighten, tiny, tmp_path, monkeypatch):
    seen = _capture_config(monkeypatch)
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(>= (- Y_0 Y_1) 1000)")
    assert main(["verify", str(tiny), str(spec), "--timeout", "30", "--bab", "relu"] + extra) == 0
    assert seen["config"].relu_split.stall_retry is retry
    assert seen["config"].relu_split.stall_tighten is tighten


@pytest.mark.parametrize("extra, want", [([], None), (["--milp-refine", "0.4"], 0.4), (["--milp-refine", "0"], 0.0),
                                         (["--milp-refine", "AUTO"], None), (["--refine", "0.3"], 0.3)])
def test_milp_refine_option_reaches_the_config(extra, want, tiny, tmp_path, monkeypatch):
    seen = _capture_config(monkeypatch)
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(>= (- Y_0 Y_1) 1000)")
    assert main(["verify", str(tiny), str(spec), "--timeout", "30", "--bab", "relu"] + extra) == 0
    assert seen["config"].milp_refine_share == want


@pytest.mark.parametrize("extra, want", [([], None), (["--milp-refine", "0.5"], 0.5), (["--milp-refine", "auto"], None)])
def test_run_milp_refine_option_reaches_every_item(extra, want, tiny, tmp_path, monkeypatch):
    """``gpuopt run --milp-refine`` sets the share in the config every item of the CSV gets."""
    import gpuopt.runs as runs

    seen = []
    real = runs.read_instances

    def capture(*a, **kw):
        seen.append(kw["config"])
        return real(*a, **kw)

    monkeypatch.setattr(runs, "read_instances", capture)
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(>= (- Y_0 Y_1) 1000)")
    csv = tmp_path / "instances.csv"
    csv.write_text(f"{tiny},{spec},10\n")
    assert main(["run", str(csv), "--results", str(tmp_path / "r.jsonl"), "--workers", "1"] + extra) == 0
    assert len(seen) == 1 and seen[0].milp_refine_share == want


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan", "half", "autoo", ""])
@pytest.mark.parametrize("option", ["--milp-refine", "--milp-condition"])
def test_share_options_refuse_a_share_outside_0_1(option, value, tiny, tmp_path, capsys):
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(>= (- Y_0 Y_1) 1000)")
    with pytest.raises(SystemExit) as exc:
        main(["verify", str(tiny), str(spec), option, value])
    assert exc.value.code == 2
    assert option in capsys.readouterr().err


@pytest.mark.parametrize("extra, want", [([], "float32"), (["--step-dtype", "float64"], "float64"),
                                         (["--step-dtype", "float32"], "float32")])
def test_step_dtype_option_reaches_activation_splitting(extra, want, tiny, tmp_path, monkeypatch):
    seen = _capture_config(monkeypatch)
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(>= (- Y_0 Y_1) 1000)")
    assert main(["verify", str(tiny), str(spec), "--timeout", "30", "--bab", "relu"] + extra) == 0
    assert seen["config"].relu_split.step_dtype == want


def test_a_wrong_step_dtype_is_refused_by_the_cli(tiny, tmp_path, capsys):
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(>= (- Y_0 Y_1) 1000)")
    with pytest.raises(SystemExit):
        main(["verify", str(tiny), str(spec), "--step-dtype", "float16"])
    assert "--step-dtype" in capsys.readouterr().err


@pytest.mark.parametrize("extra, want", [([], 0.0), (["--milp-condition", "0.3"], 0.3), (["--milp-condition", "0"], 0.0)])
def test_milp_condition_option_reaches_the_config(extra, want, tiny, tmp_path, monkeypatch):
    seen = _capture_config(monkeypatch)
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(>= (- Y_0 Y_1) 1000)")
    assert main(["verify", str(tiny), str(spec), "--timeout", "30"] + extra) == 0
    assert seen["config"].milp_condition_share == want


@pytest.mark.parametrize("extra, want", [([], "auto"), (["--milp-root-lp", "ipm"], "ipm"),
                                         (["--milp-root-lp", "simplex"], "simplex")])
def test_milp_root_lp_option_reaches_the_solver_config(extra, want, tiny, tmp_path, monkeypatch):
    seen = _capture_config(monkeypatch)
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(>= (- Y_0 Y_1) 1000)")
    assert main(["verify", str(tiny), str(spec), "--timeout", "30"] + extra) == 0
    assert seen["config"].solver.root_lp == want



def test_out_is_checked_before_the_work_and_a_stale_file_removed(tiny, tmp_path, capsys, monkeypatch, no_work):
    """``--out`` that cannot be written is refused before any work (not after the run, losing the
    verdict); an input file is never overwritten; a result file left by an earlier run is removed
    first, so that a run failing on bad input leaves no stale verdict."""
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(<= Y_0 Y_1)")
    before = spec.read_bytes()
    assert _run(["verify", str(tiny), str(spec), "--out", str(spec)]) == 2
    assert spec.read_bytes() == before and "is an input file" in capsys.readouterr().err
    if Path("/proc").is_dir():  # a folder nobody may create files in, root included
        assert _run(["verify", str(tiny), str(spec), "--out", "/proc/gpuopt-result.txt"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("gpuopt: error: --out '/proc/gpuopt-result.txt': cannot write the result file")
    assert no_work == []


def test_a_stale_result_file_is_removed_before_the_work(tiny, tmp_path, capsys):
    out = tmp_path / "result.txt"
    out.write_text("unsat\n")  # stale, from an earlier run
    assert _run(["verify", str(tiny), str(tmp_path / "missing.vnnlib"), "--out", str(out)]) == 2
    assert "property file not found" in capsys.readouterr().err and not out.exists()


def test_a_directory_given_as_a_file_is_named_so(tiny, tmp_path, capsys):
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(<= Y_0 Y_1)")
    assert _run(["verify", str(tmp_path), str(spec)]) == 2
    assert capsys.readouterr().err == f"gpuopt: error: network file {tmp_path}: is a directory, not a file\n"
    assert _run(["verify", str(tiny), str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"gpuopt: error: property file {tmp_path}: is a directory, not a file\n"


def test_ctrl_c_is_one_line_and_exit_130(tiny, tmp_path, capsys, monkeypatch):
    import gpuopt.cli as cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_verify", interrupted)
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(<= Y_0 Y_1)")
    assert _run(["verify", str(tiny), str(spec)]) == 130
    assert capsys.readouterr().err == "gpuopt: interrupted\n"


def test_a_missing_optional_dependency_exits_2(tmp_path, capsys, monkeypatch):
    from gpuopt.engine.store import ResultStore

    results = tmp_path / "R.jsonl"
    with ResultStore(results) as store:
        store.append({"key": "0", "sample": 0, "eps": 0.1, "status": "unsat", "seconds": 0.1})
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    assert _run(["report", str(results), "--plots", str(tmp_path / "plots")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpuopt: error: plots need matplotlib") and err.count("\n") == 1


def test_out_never_removes_a_device_or_a_link(tiny, tmp_path, capsys):
    """``--out /dev/null`` (or ``/dev/stdout``) must stay a device, and a link stays a link (the
    result goes through it): found by review, the stale-file removal deleted whatever was there."""
    spec = _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(>= (- Y_0 Y_1) 1000)")
    target, link = tmp_path / "target.txt", tmp_path / "link.txt"
    target.write_text("stale\n")
    link.symlink_to(target)
    assert main(["verify", str(tiny), str(spec), "--timeout", "30", "--out", str(link)]) == 0
    assert link.is_symlink() and target.read_text().splitlines()[0] == capsys.readouterr().out.split()[-1]
    if Path("/dev/null").exists():
        assert main(["verify", str(tiny), str(spec), "--timeout", "30", "--out", "/dev/null"]) == 0
        assert Path("/dev/null").is_char_device()
