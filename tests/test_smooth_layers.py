"""Networks with sigmoid or tanh layers: they load (ONNX and torch) and match the source model,
but they are not piecewise linear, so they have no exact linear form: ``verify`` runs interval
bounds (layer by layer) and the attack, its counterexamples checked layer by layer with the
layers' Lipschitz constants and the float64 evaluation error, and anything neither decides is
``unknown`` with the reason.
The bound, MILP and optimisation APIs refuse such a network by name."""

from __future__ import annotations

from decimal import Decimal, getcontext
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn as nn
from onnx import helper

import gpuopt
from gpuopt import Box, OutputSpec, verify
from gpuopt.bounds import crown, ibp
from gpuopt.check import _forward_with_error_layers
from gpuopt.errors import NotPiecewiseLinearError
from gpuopt.io.onnx import from_onnx
from gpuopt.network import Dense, Network, ReLU, Sigmoid, Tanh, from_torch

from test_onnx_import import _assert_close, _f32, _model, _ort_outputs


def _onnx_smooth(rng):
    inits = {"W1": _f32(rng, 6, 3), "b1": _f32(rng, 6), "W2": _f32(rng, 5, 6), "b2": _f32(rng, 5),
             "W3": _f32(rng, 2, 5), "b3": _f32(rng, 2)}
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["a"], transB=1), helper.make_node("Tanh", ["a"], ["t"]),
             helper.make_node("Gemm", ["t", "W2", "b2"], ["c"], transB=1), helper.make_node("Sigmoid", ["c"], ["s"]),
             helper.make_node("Relu", ["s"], ["r"]), helper.make_node("Gemm", ["r", "W3", "b3"], ["y"], transB=1)]
    return _model(nodes, [1, 3], inits)


def test_onnx_sigmoid_and_tanh_match_onnxruntime():
    model = _onnx_smooth(np.random.default_rng(0))
    net = from_onnx(model)
    assert [type(layer) for layer in net.layers] == [Dense, Tanh, Dense, Sigmoid, ReLU, Dense]
    x = np.random.default_rng(1).uniform(-4, 4, (50, 3))
    _assert_close(net.forward64(x), _ort_outputs(model, x), "forward64")


def test_torch_sigmoid_and_tanh_modules_and_functions():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(3, 5), nn.Linear(5, 4), nn.Linear(4, 2)
            self.act, self.soft = nn.Tanh(), nn.Softmax(dim=-1)

        def forward(self, x):
            h = self.c(torch.sigmoid(input=self.b(self.act(self.a(x)))).tanh())
            return torch.cat([self.soft(h), torch.softmax(h * 3, dim=1)], dim=1)

    torch.manual_seed(0)
    model = M().double().eval()
    net = from_torch(model, (3,))
    x = torch.rand(40, 3, dtype=torch.float64) * 8 - 4
    with torch.no_grad():
        assert np.abs(net.forward64(x.numpy()) - model(x).numpy()).max() <= 1e-14


def _exact_output(net, x) -> list[Decimal]:
    """The network's output at ``x`` in 60-digit decimal arithmetic (Dense, ReLU, Sigmoid, Tanh)."""
    getcontext().prec = 60
    h = [Decimal(Fraction(float(v)).numerator) / Decimal(Fraction(float(v)).denominator) for v in x]
    for layer in net.layers:
        if isinstance(layer, Dense):
            h = [sum(Decimal(float(w)) * v for w, v in zip(row, h)) + Decimal(float(b))
                 for row, b in zip(layer.weight, layer.bias)]
        elif isinstance(layer, ReLU):
            h = [max(v, Decimal(0)) for v in h]
        elif isinstance(layer, Sigmoid):
            h = [1 / (1 + (-v).exp()) for v in h]
        else:
            h = [((2 * v).exp() - 1) / ((2 * v).exp() + 1) for v in h]
    return h


def test_layerwise_check_bounds_the_exact_output():
    rng = np.random.default_rng(3)
    net = Network([Dense(rng.normal(size=(8, 4)) * 3, rng.normal(size=8)), Sigmoid(),
                   Dense(rng.normal(size=(6, 8)) * 3, rng.normal(size=6)), Tanh(), Dense(rng.normal(size=(2, 6)),
                                                                                     rng.normal(size=2))], (4,))
    worst = 0.0
    for _ in range(30):
        x = rng.uniform(-3, 3, 4)
        y, e = _forward_with_error_layers(net, x)
        exact = _exact_output(net, x)
        err = [abs(Decimal(float(a)) - b) for a, b in zip(y, exact)]
        assert all(d <= Decimal(float(b)) for d, b in zip(err, e)), (err, e)
        worst = max(worst, max(float(d) / float(b) for d, b in zip(err, e)))
    assert worst < 1.0


def test_smooth_layer_error_terms():
    """The two terms of a smooth layer's bound: the float64 evaluation's own error (the exact
    sigmoid of a float input is not a float: without the term the bound would be 0 and wrong),
    and the input's error scaled by the Lipschitz constant."""
    rng = np.random.default_rng(8)
    for layer in (Sigmoid(), Tanh()):
        alone = Network([layer], (64,))
        x = rng.uniform(-5, 5, 64)
        y, e = _forward_with_error_layers(alone, x)
        err = np.array([float(abs(Decimal(float(a)) - b)) for a, b in zip(y, _exact_output(alone, x))])
        assert np.any(err > 0) and np.all(err <= e)
    dense = Dense(rng.normal(size=(3, 400)) * 5, rng.normal(size=3))
    x = rng.uniform(-0.1, 0.1, 400)
    h, e1 = _forward_with_error_layers(Network([dense], (400,)), x)
    assert np.all(e1 > 1e-13)
    getcontext().prec = 60
    exact = {Sigmoid: lambda v: 1 / (1 + (-v).exp()), Tanh: lambda v: ((2 * v).exp() - 1) / ((2 * v).exp() + 1)}
    for layer, lip in ((Sigmoid(), 0.25), (Tanh(), 1.0)):
        y, e2 = _forward_with_error_layers(Network([dense, layer], (400,)), x)
        assert np.all(e2 <= lip * e1 + 1e-14 + 1e-30)
        for sign in (-1, 1):  # the exact input may lie at either end of its error
            f = exact[type(layer)]
            dev = [abs(f(Decimal(float(a)) + sign * Decimal(float(b))) - Decimal(float(c))) for a, b, c in zip(h, e1, y)]
            assert all(d <= Decimal(float(b)) for d, b in zip(dev, e2)), (dev, e2)
    # where it saturates, an enormous input error leaves a tiny output error (monotone bound)
    big = Network([Dense(np.array([[1e300]]), np.zeros(1)), Sigmoid()], (1,))
    assert _forward_with_error_layers(big, np.array([0.3]))[1][0] <= 1e-13


def test_verify_runs_the_attack_alone_and_checks_its_counterexamples():
    rng = np.random.default_rng(5)
    net = Network([Dense(rng.normal(size=(8, 3)), rng.normal(size=8)), Tanh(), Dense(rng.normal(size=(2, 8)),
                                                                                     rng.normal(size=2)),
                   Sigmoid()], (3,))
    lo, hi = -np.ones(3), np.ones(3)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 21)] * 3), -1).reshape(-1, 3)
    y = net.forward64(grid)
    target = float(np.quantile(y[:, 0], 0.99))
    reach = OutputSpec([(np.array([[-1.0, 0.0]]), np.array([-target]))], 2)  # y0 >= target: reachable
    v = verify(net, Box(lo, hi), reach, timeout=20)
    assert v.status.value == "sat" and v.decided_by == "attack"
    assert net.forward64(np.asarray(v.counterexample)[None])[0][0] >= target
    never = OutputSpec([(np.array([[-1.0, 0.0]]), np.array([-1.5]))], 2)  # sigmoid >= 1.5: impossible
    v = verify(net, Box(lo, hi), never, timeout=3)  # interval bounds, layer by layer, prove it
    assert v.status.value == "unsat" and v.decided_by == "interval"  # (the relaxation runs only where needed)
    # y0 >= its sampled 99.99% quantile + 1e-9 over the whole box: the interval bounds are too
    # loose to prove or refute it, and the attack searches until the deadline
    near = OutputSpec([(np.array([[-1.0, 0.0]]), np.array([-(float(y[:, 0].max()) + 1e-9)]))], 2)
    v = verify(net, Box(lo, hi), near, timeout=3)
    if v.status.value != "sat":  # (the sampled maximum need not be the true one)
        assert v.status.value in ("unknown", "timeout") and "not piecewise linear" in v.message
        assert "0 of 1 disjuncts proven" in v.message
        assert set(v.stage_seconds) <= {"bounds", "attack"}


def test_bound_and_optimisation_apis_refuse_by_name():
    net = Network([Dense(np.ones((2, 2)), np.zeros(2)), Sigmoid()], (2,))
    lo, hi = torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
    for fn in (crown, ibp):
        with pytest.raises(NotPiecewiseLinearError, match=r"layer 1 \(Sigmoid\) is not piecewise linear"):
            fn(net, lo, hi)
    with pytest.raises(NotPiecewiseLinearError):
        gpuopt.optimize(net, Box(np.zeros(2), np.ones(2)), "Y_0", timeout=5)
    with pytest.raises(NotPiecewiseLinearError, match="its L-inf radius does not"):  # up front, before any attack
        gpuopt.certify_radius(net, np.zeros(2), 0, norm="l1", timeout=5)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset,axis,shape", [(13, None, [1, 5]), (11, None, [1, 5]), (13, -1, [1, 2, 5]),
                                              (11, 1, [1, 2, 5])])
def test_onnx_softmax_matches_onnxruntime(opset, axis, shape, op):
    from helpers import onnx_model
    import onnx
    from onnx import TensorProto, numpy_helper

    rng = np.random.default_rng(9)
    n = shape[-1]
    attrs = {} if axis is None else {"axis": axis}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node(op, ["h"], ["s"], **attrs),
             helper.make_node("Flatten", ["s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(_f32(rng, n, n) * 3, "W")])
    model = onnx.shape_inference.infer_shapes(onnx_model(graph, opset))
    net = from_onnx(model)
    assert any(type(layer).__name__ == op for layer in net.layers)
    x = rng.uniform(-2, 2, (20,) + tuple(shape[1:]))
    _assert_close(net.forward64(x), _ort_outputs(model, x), "forward64")


def test_softmax_check_bound_and_verify():
    rng = np.random.default_rng(10)
    from gpuopt.network import Softmax
    net = Network([Dense(rng.normal(size=(4, 3)) * 4, rng.normal(size=4)), Softmax()], (3,))
    for _ in range(20):
        x = rng.uniform(-2, 2, 3)
        y, e = _forward_with_error_layers(net, x)
        getcontext().prec = 60
        z = [sum(Decimal(float(w)) * Decimal(float(v)) for w, v in zip(row, x)) + Decimal(float(b))
             for row, b in zip(net.layers[0].weight, net.layers[0].bias)]
        ex = [v.exp() for v in z]
        exact = [v / sum(ex) for v in ex]
        assert all(abs(Decimal(float(a)) - b) <= Decimal(float(c)) for a, b, c in zip(y, exact, e))
    # the largest probability of class 0 on the box is reachable: verify finds a point
    grid = rng.uniform(-1, 1, (4000, 3))
    top = float(net.forward64(grid)[:, 0].max())
    v = verify(net, Box(-np.ones(3), np.ones(3)), OutputSpec([(np.array([[-1.0, 0, 0, 0]]), np.array([-top]))], 4),
               timeout=20)
    assert v.status.value == "sat" and net.forward64(np.asarray(v.counterexample)[None])[0][0] >= top


def test_bounds_command_on_a_net_ending_in_softmax(tmp_path, capsys):
    """`gpuopt bounds --method ibp` takes a ReLU net ending in Softmax (interval bounds layer by
    layer; found by review: it failed with exit 1), its bounds hold the sampled values; a method
    that needs a linear form says that 'ibp' applies, and exits 2."""
    import json

    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from gpuopt.cli import main
    from helpers import onnx_model

    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.normal(size=(2, 6)).astype(np.float32), "W1"),
             numpy_helper.from_array(rng.normal(size=(6, 3)).astype(np.float32), "W2")]
    nodes = [helper.make_node("MatMul", ["X", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("MatMul", ["a", "W2"], ["z"]), helper.make_node("Softmax", ["z"], ["Y"], axis=-1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 3])], inits)
    onnx.save(onnx_model(graph), str(tmp_path / "n.onnx"))
    spec = tmp_path / "p.vnnlib"
    spec.write_text("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
                    "(declare-const Y_1 Real)\n(declare-const Y_2 Real)\n(assert (>= X_0 -1))\n(assert (<= X_0 1))\n"
                    "(assert (>= X_1 0))\n(assert (<= X_1 0.5))\n(assert (<= Y_0 Y_1))\n")
    assert main(["bounds", str(tmp_path / "n.onnx"), str(spec), "--method", "ibp", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["disjuncts"][0]
    session = ort.InferenceSession(str(tmp_path / "n.onnx"), providers=["CPUExecutionProvider"])
    xs = np.column_stack([rng.uniform(-1, 1, 400), rng.uniform(0, 0.5, 400)]).astype(np.float32)
    ys = np.concatenate([session.run(None, {"X": x[None]})[0] for x in xs]).astype(np.float64)
    values = ys[:, 0] - ys[:, 1]
    assert row["lower"] - 1e-6 <= values.min() and values.max() <= row["upper"] + 1e-6
    assert -1 <= row["lower"] < row["upper"] <= 1  # softmax outputs lie in [0, 1]
    assert main(["bounds", str(tmp_path / "n.onnx"), str(spec), "--method", "crown", "--json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpuopt: error: ") and "'ibp' applies" in err and err.count("\n") == 1
