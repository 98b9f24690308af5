"""The `gpuopt verify` command line: verdict as the last line, the VNN-COMP result file, exit code 2
with a one-line message for every kind of bad input, and known answers on real instances."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gpuopt import from_onnx
from gpuopt.cli import main
from gpuopt.io.vnnlib import load_vnnlib
from helpers import one_torch_thread  # noqa: F401  (autouse fixture)

REPO = Path(__file__).resolve().parents[1]


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
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
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
    if "timeout" not in case:  # argparse's own usage errors print the usage line first
        assert len(err.splitlines()) == 1 and err.startswith("gpuopt: error: ")


def _run(argv) -> int:
    """`main(argv)`, with argparse's SystemExit turned into its exit code."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


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
