"""Regressions for wrong answers found against exact arithmetic, each built from scratch as a
VNN-COMP instance (an ONNX file written with ``onnx.helper`` and float32 initializers, and VNNLIB
text) and run through :func:`gpuopt.verify_instance`.

Semantics used to state the exact truth: VNNLIB numbers are exact decimals, ONNX weights are read
exactly as the rationals their float32 values are, and the instance is ``sat`` iff some input
satisfying the input constraints *exactly* has an output in the unsafe region *exactly* (strict
comparisons strictly). Where a witness is needed it is also checked with onnxruntime (float32).
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest

import gpuopt
from gpuopt import Status

from exact_reference import exact_forward, exact_min_margin
from helpers import onnx_model

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

F = Fraction


# ----------------------------------------------------------------------------- helpers
def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def _save(path, nodes, inits, n_in, n_out, opset=13):
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, n_in])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, n_out])],
        inits)
    model = onnx_model(graph, opset)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _dec(v) -> str:
    """The exact decimal expansion of a float (VNNLIB reads decimals exactly)."""
    return format(Decimal(float(v)), "f")


def _vnnlib(path, n_in, n_out, box_lines, asserts):
    text = [f"(declare-const X_{i} Real)" for i in range(n_in)]
    text += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    text += box_lines + asserts
    path.write_text("\n".join(text) + "\n")
    return path


def _box(lower, upper):
    return [line for i, (lo, hi) in enumerate(zip(lower, upper))
            for line in (f"(assert (>= X_{i} {_dec(lo)}))", f"(assert (<= X_{i} {_dec(hi)}))")]


def _ort(path, x):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": np.asarray(x, dtype=np.float32).reshape(1, -1)})[0].reshape(-1)


def _status(v) -> str:
    return v.status.value


# ----------------------------------------------------------------------------- a
def test_badly_scaled_milp_is_not_unsat(tmp_path):
    """Input 0 ranges over [0, 1e7] and is normalised by ``(x - 5e6) / 1e5`` (Sub, Div), then a
    Gemm with weight -5e-5 on it: folded, the matrix entry on X_0 is about -5e-10, below HiGHS's
    ``small_matrix_value`` (1e-9), which HiGHS silently drops. 19 more inputs in [0, 1] and 39
    ReLUs compute

        Y = 10 * sum_i |X_i - c_i| + relu(1 - 5e-5 * (X_0 - 5e6) / 1e5)
          = 10 * sum_i |X_i - c_i| + 1.0025 - 5e-10 * X_0.

    Exact truth: SAT. At the witness X_0 = 1e7, X_i = c_i (float32 numbers), Y = 0.9975 <= 0.998
    (margin -5e-4, checked exactly and with onnxruntime). The unsafe set needs X_0 >= 9e6 and
    sum |X_i - c_i| <= 5e-5: a spot PGD does not reach (its steps end far coarser over 19
    coordinates), with more than 16 inputs input splitting is skipped, and a MILP that drops the
    -5e-10 entry sees min Y = 1.0025 > 0.998 and answers (wrongly) unsat.
    """
    n = 20
    rng = np.random.default_rng(1)
    c = np.float32(rng.uniform(0.2, 0.8, size=n - 1))
    mean = np.zeros(n, dtype=np.float32)
    mean[0] = 5e6
    std = np.ones(n, dtype=np.float32)
    std[0] = 1e5
    W1 = np.zeros((2 * (n - 1) + 1, n), dtype=np.float32)
    b1 = np.zeros(2 * (n - 1) + 1, dtype=np.float32)
    for i in range(n - 1):
        W1[2 * i, i + 1], b1[2 * i] = 1.0, -c[i]          # relu(X_i - c_i)
        W1[2 * i + 1, i + 1], b1[2 * i + 1] = -1.0, c[i]  # relu(c_i - X_i)
    W1[-1, 0], b1[-1] = -5e-5, 1.0                        # relu(1 - 5e-5 u_0)
    W2 = np.full((1, W1.shape[0]), 10.0, dtype=np.float32)
    W2[0, -1] = 1.0
    nodes = [
        helper.make_node("Sub", ["X", "mean"], ["u"]),
        helper.make_node("Div", ["u", "std"], ["v"]),
        helper.make_node("Gemm", ["v", "W1", "b1"], ["z"], transB=1),
        helper.make_node("Relu", ["z"], ["h"]),
        helper.make_node("MatMul", ["h", "W2t"], ["Y"]),
    ]
    onnx_path = _save(tmp_path / "scaled.onnx", nodes,
                      [_init("mean", mean[None]), _init("std", std[None]), _init("W1", W1), _init("b1", b1),
                       _init("W2t", W2.T)], n, 1)
    lower = np.r_[0.0, np.zeros(n - 1)]
    upper = np.r_[1e7, np.ones(n - 1)]
    threshold = 0.998
    vnn = _vnnlib(tmp_path / "scaled.vnnlib", n, 1, _box(lower, upper), [f"(assert (<= Y_0 {threshold}))"])

    witness = np.r_[1e7, c.astype(np.float64)]
    y_ort = _ort(onnx_path, witness)
    assert y_ort[0] <= threshold - 4e-4, y_ort  # ONNX (float32) semantics: unsafe
    net = gpuopt.from_onnx(onnx_path)
    # X_0's whole range moves Y by only 5e-10 * 1e7 = 5e-3 (exactly, in the folded network)
    swing = exact_forward(net, np.r_[0.0, witness[1:]])[0] - exact_forward(net, witness)[0]
    assert abs(swing - F(5, 1000)) <= F(1, 10 ** 6), float(swing)
    y_exact = exact_forward(net, witness)
    assert y_exact[0] - F("0.998") <= F(-4, 10_000)  # exact semantics of the folded network: unsafe

    v = gpuopt.verify_instance(onnx_path, vnn, timeout=60)
    print(f"\nbadly scaled MILP: {_status(v)} (decided by {v.decided_by}; {v.message})")
    assert v.status is not Status.UNSAT, f"wrong unsat: the witness {witness.tolist()} reaches Y = {y_ort[0]}"
    if v.status is Status.SAT:
        x = np.asarray(v.counterexample, dtype=np.float64)
        assert np.all(x >= lower) and np.all(x <= upper)
        assert exact_forward(net, x)[0] <= F("0.998")
        assert net.forward64(x[None])[0, 0] <= threshold
        assert _ort(onnx_path, x)[0] <= threshold + 1e-6  # float32 evaluation, to its rounding


# ----------------------------------------------------------------------------- b
def _relu_net(tmp_path):
    nodes = [helper.make_node("Gemm", ["X", "W", "B"], ["z"], transB=1), helper.make_node("Relu", ["z"], ["Y"])]
    return _save(tmp_path / "relu.onnx", nodes, [_init("W", [[1.0]]), _init("B", [0.0])], 1, 1)


def test_strict_output_comparison_is_strict(tmp_path):
    """``Y = relu(X)``, ``X`` in [-1, 1], so ``Y >= 0`` everywhere and ``Y = 0`` on [-1, 0].

    Exact truths: ``Y < 0`` is UNSAT (relu is never negative; reading ``<`` as ``<=`` makes it
    reachable at every ``X <= 0``); ``Y <= 0`` is SAT (any ``X <= 0``); the constant atom
    ``0 < 0`` is false, so its unsafe set is empty: UNSAT; ``Y > Y`` is false for every ``Y``:
    UNSAT; ``0 <= 0`` is true, so every input is unsafe: SAT.
    """
    onnx_path = _relu_net(tmp_path)
    box = ["(assert (>= X_0 -1.0))", "(assert (<= X_0 1.0))"]
    cases = {
        "(assert (< Y_0 0.0))": "unsat",
        "(assert (<= Y_0 0.0))": "sat",
        "(assert (< 0 0))": "unsat",
        "(assert (> Y_0 Y_0))": "unsat",
        "(assert (<= 0 0))": "sat",
    }
    got = {}
    for i, (atom, truth) in enumerate(cases.items()):
        vnn = _vnnlib(tmp_path / f"strict{i}.vnnlib", 1, 1, box, [atom])
        v = gpuopt.verify_instance(onnx_path, vnn, timeout=30)
        got[atom] = _status(v)
        if v.status is Status.SAT:
            x = float(np.asarray(v.counterexample).reshape(-1)[0])
            assert -1.0 <= x <= 1.0
            if atom == "(assert (<= Y_0 0.0))":
                assert max(x, 0.0) <= 0.0
    print("\nstrict comparisons: " + "; ".join(f"{a} -> {s} (exact {cases[a]})" for a, s in got.items()))
    wrong = {a: s for a, s in got.items() if s in ("sat", "unsat") and s != cases[a]}
    undecided = {a: s for a, s in got.items() if s not in ("sat", "unsat")}
    assert not wrong, f"wrong answers: {wrong}"
    assert not undecided, f"trivial instances left undecided: {undecided}"


# ----------------------------------------------------------------------------- c
def _rounding_band_instance(tmp_path):
    """Search seeds for a 2-3-1 float32 network and a float32 point where the float64 forward
    pass lands exactly on ``b = y64`` (float margin 0.0) while the exact output is above it."""
    for seed in range(500):
        rng = np.random.default_rng([seed, 77])
        W1 = np.float32(rng.normal(size=(3, 2)))
        b1 = np.float32(rng.normal(size=3))
        W2 = np.float32(rng.normal(size=(1, 3)))
        b2 = np.float32(rng.normal(size=1))
        x = np.float32(rng.normal(size=2)).astype(np.float64)
        nodes = [helper.make_node("Gemm", ["X", "W1", "b1"], ["z"], transB=1), helper.make_node("Relu", ["z"], ["h"]),
                 helper.make_node("Gemm", ["h", "W2", "b2"], ["Y"], transB=1)]
        path = _save(tmp_path / f"band{seed}.onnx", nodes,
                     [_init("W1", W1), _init("b1", b1), _init("W2", W2), _init("b2", b2)], 2, 1)
        net = gpuopt.from_onnx(path)
        y64 = float(net.forward64(x[None])[0, 0])
        # the same value from a plain numpy evaluation, so the instance does not hinge on one order
        h = np.maximum(W1.astype(np.float64) @ x + b1, 0.0)
        y_np = float((W2.astype(np.float64) @ h + b2)[0])
        y_ex = exact_forward(net, x)[0]
        if y64 == y_np and y_ex > F(y64):
            return path, x, y64, y_ex, net
    pytest.fail("no rounding-band instance found")  # pragma: no cover


def test_margin_in_rounding_band_is_not_sat(tmp_path):
    """The input box is a single float32 point ``x``; the unsafe set is ``Y_0 <= b`` with ``b``
    the float64 forward value at ``x`` (written as its exact decimal).

    Exact truth: UNSAT. The only input is ``x`` and its exact output exceeds ``b`` (by a rounding
    error, ~1e-16 relative), so the exact margin ``y(x) - b`` is > 0; a float64 re-check sees
    margin 0.0 and would (wrongly) accept ``x`` as a counterexample.
    """
    onnx_path, x, b, y_ex, net = _rounding_band_instance(tmp_path)
    vnn = _vnnlib(tmp_path / "band.vnnlib", 2, 1, _box(x, x), [f"(assert (<= Y_0 {_dec(b)}))"])
    ref = exact_min_margin(net, x, x, [(np.ones((1, 1)), np.array([b]))])
    assert ref.value == y_ex - F(b) and ref.value > 0
    v = gpuopt.verify_instance(onnx_path, vnn, timeout=30)
    print(f"\nrounding band: exact margin {float(ref.value):.3e} (relative {float(ref.value / abs(y_ex)):.1e}); "
          f"gpuopt says {_status(v)} ({v.decided_by}: {v.message})")
    assert v.status is not Status.SAT, (
        f"wrong sat: exact margin at the only input is {float(ref.value):.3e} > 0")


# ----------------------------------------------------------------------------- d
@pytest.mark.parametrize("threshold, truth", [
    (math.nextafter(1 / 3, 1.0), "unsat"),
    (1 / 3, "sat"),
], ids=["above-third-unsat", "float-third-sat"])
def test_counterexample_satisfies_exact_input_constraints(tmp_path, threshold, truth):
    """``Y = relu(X)``; inputs ``3 X_0 <= 1`` and ``X_0 >= 0.3``; unsafe ``Y_0 >= t``.

    The exact input set is [3/10, 1/3], and 1/3 is not a float: a reader that widens the bound to
    the float above 1/3 (0.33333333333333337) admits inputs with ``3 X_0 > 1``. With
    ``t = 0.33333333333333337`` the exact truth is UNSAT (max Y = 1/3 < t); with
    ``t = 0.3333333333333333`` (the float below 1/3) it is SAT, and the only float counterexample
    is ``X_0 = 0.3333333333333333`` itself. Either way a counterexample with ``3 X_0 > 1`` is wrong.
    """
    onnx_path = _relu_net(tmp_path)
    vnn = _vnnlib(tmp_path / "third.vnnlib", 1, 1, [], [
        "(assert (<= (* 3 X_0) 1))", "(assert (>= X_0 0.3))", f"(assert (>= Y_0 {_dec(threshold)}))"])
    net = gpuopt.from_onnx(onnx_path)
    # exact answer: min over [3/10, 1/3] of (t - Y) (unsafe iff -Y + t <= 0)
    ref = exact_min_margin(net, [F(3, 10)], [F(1, 3)], [([[F(-1)]], [-F(threshold)])])
    assert (ref.value <= 0) == (truth == "sat")
    v = gpuopt.verify_instance(onnx_path, vnn, timeout=30)
    print(f"\nexact inputs, t = {threshold!r}: exact {truth} (min margin {float(ref.value):.3e}); "
          f"gpuopt says {_status(v)}" + (f" at X_0 = {float(v.counterexample[0])!r}" if v.status is Status.SAT else ""))
    if v.status is Status.SAT:
        x0 = F(float(np.asarray(v.counterexample).reshape(-1)[0]))
        assert 3 * x0 <= 1, f"counterexample X_0 = {float(x0)!r} violates 3*X_0 <= 1 (3*X_0 - 1 = {float(3 * x0 - 1):.3e})"
        assert x0 >= F(3, 10)
        assert max(x0, F(0)) >= F(threshold)
    assert not (truth == "sat" and v.status is Status.UNSAT), "wrong unsat"
    assert not (truth == "unsat" and v.status is Status.SAT), "wrong sat"


# ----------------------------------------------------------------------------- e
def test_dropout_training_mode_is_refused(tmp_path):
    """``Dropout`` with a constant ``training_mode = True`` drops random units at inference time:
    the network is not a function of its input, so no verdict about it can be sound. Exact
    truth: the model must be refused with UnsupportedLayerError (not imported as an identity)."""
    nodes = [
        helper.make_node("Gemm", ["X", "W1", "b1"], ["z"], transB=1),
        helper.make_node("Dropout", ["z", "ratio", "training"], ["d"]),
        helper.make_node("Relu", ["d"], ["h"]),
        helper.make_node("Gemm", ["h", "W2", "b2"], ["Y"], transB=1),
    ]
    training = numpy_helper.from_array(np.array(True), "training")
    path = _save(tmp_path / "dropout.onnx", nodes,
                 [_init("W1", np.eye(2)), _init("b1", [0.0, 0.0]), _init("ratio", np.array(0.5)), training,
                  _init("W2", [[1.0, -1.0]]), _init("b2", [0.0])], 2, 1)
    try:
        net = gpuopt.from_onnx(path)
    except gpuopt.UnsupportedLayerError as err:
        print(f"\ndropout(training_mode=True): refused: {err}")
        return
    pytest.fail(f"Dropout with training_mode=True was imported (as {net!r}) instead of refused")


def test_bounds_that_overflow_float64_prove_nothing_and_crash_nothing(tmp_path):
    """y = x0 on [0, 1] exactly (nine layers of relu(1e38 a - 1e38 b) with a == b, all zero in real
    arithmetic), whose interval and CROWN bounds overflow float64 to inf and NaN. Found by review:
    the padded proof spec got an inf/NaN right-hand side, refused as bad input (exit 2) on a sat
    and an unsat property alike, and `bounds` printed NaN. Now the overflowing rows prove nothing:
    the sat property is found, the unsat one is `unknown`, and `bounds` says -inf / +inf."""
    import json

    from gpuopt.cli import main
    from gpuopt.verify import bound_instance

    inits, nodes = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    nodes.append(helper.make_node("Gemm", ["X", const("W0", [[1e38], [1e38]]), const("b0", [0, 0])], ["z0"],
                                  transB=1))
    nodes.append(helper.make_node("Relu", ["z0"], ["h0"]))
    for i in range(1, 10):
        nodes.append(helper.make_node("Gemm", [f"h{i - 1}", const(f"W{i}", [[1e38, -1e38], [1e38, -1e38]]),
                                               const(f"b{i}", [0, 0])], [f"z{i}"], transB=1))
        nodes.append(helper.make_node("Relu", [f"z{i}"], [f"h{i}"]))
    nodes.append(helper.make_node("Gemm", ["h9", const("Wo", [[1, 1]]), const("bo", [0])], ["s"], transB=1))
    nodes.append(helper.make_node("Add", ["s", "X"], ["Y"]))
    graph = helper.make_graph(nodes, "overflow", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 1])], inits)
    import onnx

    onnx.save(onnx_model(graph), str(tmp_path / "net.onnx"))
    head = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (>= X_0 0))\n(assert (<= X_0 1))\n"
    (tmp_path / "sat.vnnlib").write_text(head + "(assert (>= Y_0 0.5))\n")
    (tmp_path / "unsat.vnnlib").write_text(head + "(assert (<= Y_0 -1))\n")
    net = str(tmp_path / "net.onnx")
    v = gpuopt.verify_instance(net, str(tmp_path / "sat.vnnlib"), timeout=20)
    assert v.status is Status.SAT and v.output[0] >= 0.5
    v = gpuopt.verify_instance(net, str(tmp_path / "unsat.vnnlib"), timeout=10)
    assert v.status in (Status.UNKNOWN, Status.TIMEOUT), v
    for method in ("ibp", "crown"):
        res = bound_instance(net, str(tmp_path / "sat.vnnlib"), method=method)
        (row,) = res["disjuncts"][0]
        assert row["lower"] <= -0.5 and row["upper"] >= 0.5, (method, row)  # Y_0 - 0.5 lies in [-0.5, 0.5]
        assert not (math.isnan(row["lower"]) or math.isnan(row["upper"]))
    assert json.loads(json.dumps(res))["disjuncts"][0][0]["lower"] == -math.inf
    assert main(["verify", net, str(tmp_path / "unsat.vnnlib"), "--timeout", "10"]) == 0
