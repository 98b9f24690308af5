"""Piecewise-linear ONNX operators (and torch modules and functions) imported as exact ReLU graphs:
LeakyRelu, PRelu, Clip (ReLU6), Abs, HardSigmoid, Max and Min (with constants and between data
tensors).

Each is checked against onnxruntime, its affine-block view against the forward pass, CROWN's
bounds against sampled outputs, and ``gpuopt.optimize``'s proven optimum against a dense grid.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from onnx import helper

import gpuopt
from gpuopt.bounds import crown
from gpuopt.errors import InvalidInputError, UnsupportedLayerError
from gpuopt.io.onnx import from_onnx
from gpuopt.network import ReLU

from test_onnx_import import _check_model, _f32, _model, _ort_outputs

pytest.importorskip("onnxruntime", reason="onnxruntime (the `test` extra) is needed to cross-check the importer")


def _gemm(src, w, b, out):
    return helper.make_node("Gemm", [src, w, b], [out], transB=1)


def _case(name, rng, n_in, width):
    """``(nodes, inits)``: x -> Gemm(width) -> op -> Gemm(2) -> y, with the op of ``name``."""
    inits = {"W1": _f32(rng, width, n_in), "b1": _f32(rng, width, scale=0.5),
             "W2": _f32(rng, 2, width), "b2": _f32(rng, 2)}
    head = [_gemm("x", "W1", "b1", "h")]
    if name == "leaky":
        ops = [helper.make_node("LeakyRelu", ["h"], ["a"], alpha=0.1)]
    elif name == "leaky_steep":  # a slope above 1 is still piecewise linear
        ops = [helper.make_node("LeakyRelu", ["h"], ["a"], alpha=2.5)]
    elif name == "prelu":
        inits["s"] = rng.uniform(-0.5, 1.5, width).astype(np.float32)
        ops = [helper.make_node("PRelu", ["h", "s"], ["a"])]
    elif name == "relu6":
        inits["lo"], inits["hi"] = np.array(0.0, np.float32), np.array(0.6, np.float32)
        ops = [helper.make_node("Clip", ["h", "lo", "hi"], ["a"])]
    elif name == "clip_max_only":
        inits["hi"] = np.array(0.3, np.float32)
        ops = [helper.make_node("Clip", ["h", "", "hi"], ["a"])]
    elif name == "clip_min_only":
        inits["lo"] = np.array(-0.2, np.float32)
        ops = [helper.make_node("Clip", ["h", "lo"], ["a"])]
    elif name == "abs":
        ops = [helper.make_node("Abs", ["h"], ["a"])]
    elif name == "hard_sigmoid":
        ops = [helper.make_node("HardSigmoid", ["h"], ["a"], alpha=0.7, beta=0.4)]
    elif name == "max_const":
        inits["c"] = _f32(rng, width, scale=0.3)
        inits["c2"] = np.array(-0.1, np.float32)
        ops = [helper.make_node("Max", ["c", "h", "c2"], ["a"])]
    elif name == "min_const":
        inits["c"] = _f32(rng, width, scale=0.3)
        ops = [helper.make_node("Min", ["h", "c"], ["a"])]
    elif name in ("max_data", "min_data"):
        inits["W3"], inits["b3"] = _f32(rng, width, n_in), _f32(rng, width, scale=0.5)
        inits["W4"], inits["b4"] = _f32(rng, width, n_in), _f32(rng, width, scale=0.5)
        op = "Max" if name == "max_data" else "Min"
        ops = [_gemm("x", "W3", "b3", "h3"), _gemm("x", "W4", "b4", "h4"),
               helper.make_node(op, ["h", "h3", "h4"], ["a"])]
    else:  # pragma: no cover
        raise KeyError(name)
    return head + ops + [_gemm("a", "W2", "b2", "y")], inits


CASES = ["leaky", "leaky_steep", "prelu", "relu6", "clip_max_only", "clip_min_only", "abs", "hard_sigmoid",
         "max_const", "min_const", "max_data", "min_data"]


@pytest.mark.parametrize("name", CASES)
def test_piecewise_ops_match_onnxruntime(name):
    rng = np.random.default_rng(CASES.index(name))
    nodes, inits = _case(name, rng, 5, 7)
    model = _model(nodes, [1, 5], inits)
    net = _check_model(model, n=50, seed=1)  # forward64 and the affine blocks against onnxruntime
    # near the kinks too: wide inputs reach every side of every kink
    x = np.random.default_rng(2).uniform(-3, 3, (50, 5))
    ours, ref = net.forward64(x), _ort_outputs(model, x)
    assert np.abs(ours - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


def test_one_relu_per_element_for_the_one_kink_ops():
    rng = np.random.default_rng(0)
    for name in ("leaky", "prelu", "abs", "max_const", "min_const", "clip_max_only"):
        nodes, inits = _case(name, rng, 3, 4)
        net = from_onnx(_model(nodes, [1, 3], inits))
        assert sum(isinstance(layer, ReLU) for layer in net.layers) == 1, name
    nodes, inits = _case("relu6", rng, 3, 4)
    net = from_onnx(_model(nodes, [1, 3], inits))
    assert sum(isinstance(layer, ReLU) for layer in net.layers) == 2


@pytest.mark.parametrize("name", CASES)
def test_piecewise_ops_bounds_contain_samples_and_optimum_matches_a_grid(name):
    rng = np.random.default_rng(100 + CASES.index(name))
    nodes, inits = _case(name, rng, 2, 6)
    model = _model(nodes, [1, 2], inits)
    net = from_onnx(model)
    lo, hi = np.array([-1.0, -0.5]), np.array([1.0, 1.5])
    g = np.stack(np.meshgrid(np.linspace(lo[0], hi[0], 161), np.linspace(lo[1], hi[1], 161)), -1).reshape(-1, 2)
    y = net.forward64(g)
    b = crown(net, torch.tensor(lo[None]), torch.tensor(hi[None]))
    ly, uy = b.output[0][0].numpy(), b.output[1][0].numpy()
    assert np.all(y >= ly - 1e-9) and np.all(y <= uy + 1e-9)
    res = gpuopt.optimize(net, gpuopt.Box(lo, hi), "Y_0 - Y_1", timeout=20)
    grid_max = float((y[:, 0] - y[:, 1]).max())
    assert res.upper_bound >= grid_max - 1e-9
    assert res.status == "optimal", res
    assert res.best_value >= grid_max - 1e-3 * max(1.0, abs(grid_max))
    # the reported point's value, by onnxruntime
    ort_y = _ort_outputs(model, res.x[None])[0]
    assert abs((ort_y[0] - ort_y[1]) - res.best_value) <= 1e-5 * max(1.0, abs(res.best_value))


def test_clip_attributes_before_opset_11_and_min_above_max():
    rng = np.random.default_rng(3)
    W, b = _f32(rng, 4, 3), _f32(rng, 4)
    nodes = [_gemm("x", "W", "b", "h"), helper.make_node("Clip", ["h"], ["y"], min=-0.25, max=0.5)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 3])],
                              [helper.make_tensor_value_info("y", 1, [1, 4])],
                              initializer=[helper.make_tensor(k, 1, v.shape, v.reshape(-1)) for k, v in
                                           (("W", W), ("b", b))])
    from helpers import onnx_model

    _check_model(onnx_model(graph, opset=10), n=30)  # Clip-6: attributes, up to opset 10
    # min > max: ONNX gives max everywhere
    inits = {"W": W, "b": b, "lo": np.array(0.5, np.float32), "hi": np.array(-0.25, np.float32)}
    net = _check_model(_model([_gemm("x", "W", "b", "h"), helper.make_node("Clip", ["h", "lo", "hi"], ["y"])],
                              [1, 3], inits), n=30)
    assert np.all(net.forward64(np.random.default_rng(0).normal(size=(5, 3)) * 4) == np.float32(-0.25))


def test_piecewise_ops_on_images():
    """Per-channel PRelu slopes, LeakyRelu and a ReLU6 on a conv layer's (C, H, W) output."""
    rng = np.random.default_rng(4)
    inits = {"K": _f32(rng, 3, 2, 3, 3, scale=0.5), "kb": _f32(rng, 3), "s": rng.uniform(-1, 1, (3, 1, 1)).astype(np.float32),
             "lo": np.array(0.0, np.float32), "hi": np.array(0.8, np.float32), "W": _f32(rng, 4, 3 * 4 * 4)}
    nodes = [helper.make_node("Conv", ["x", "K", "kb"], ["c"]),
             helper.make_node("PRelu", ["c", "s"], ["p"]),
             helper.make_node("LeakyRelu", ["p"], ["l"], alpha=0.05),
             helper.make_node("Clip", ["l", "lo", "hi"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "W"], ["y"], transB=1)]
    _check_model(_model(nodes, [1, 2, 6, 6], inits), n=20)


def test_piecewise_op_errors_name_the_node():
    rng = np.random.default_rng(5)
    W, b = _f32(rng, 4, 3), _f32(rng, 4)
    base = {"W": W, "b": b}
    # a Clip bound that is a vector
    with pytest.raises(InvalidInputError, match=re.escape("node 'clip' (op Clip): min must be a scalar")):
        from_onnx(_model([_gemm("x", "W", "b", "h"), helper.make_node("Clip", ["h", "lo"], ["y"], name="clip")],
                         [1, 3], {**base, "lo": np.zeros(4, np.float32)}))
    # a Clip bound computed from the data
    with pytest.raises(UnsupportedLayerError, match=r"node 'clip' \(op Clip\)"):
        from_onnx(_model([_gemm("x", "W", "b", "h"), _gemm("x", "W", "b", "h2"),
                          helper.make_node("Clip", ["h", "h2"], ["y"], name="clip")], [1, 3], base))
    # Max of data tensors of different shapes (broadcasting)
    with pytest.raises(UnsupportedLayerError, match=r"node 'mx' \(op Max\).*broadcasting"):
        from_onnx(_model([_gemm("x", "W", "b", "h"), _gemm("x", "W1", "b1", "h1"),
                          helper.make_node("Max", ["h", "h1"], ["y"], name="mx")],
                         [1, 3], {**base, "W1": _f32(rng, 1, 3), "b1": _f32(rng, 1)}))
    # a PRelu slope that does not broadcast to the data
    with pytest.raises(UnsupportedLayerError, match=r"node 'pr' \(op PRelu\).*does not broadcast"):
        from_onnx(_model([_gemm("x", "W", "b", "h"), helper.make_node("PRelu", ["h", "s"], ["y"], name="pr")],
                         [1, 3], {**base, "s": np.ones(3, np.float32)}))
    # a non-finite LeakyRelu slope
    with pytest.raises(InvalidInputError, match=r"node 'lk' \(op LeakyRelu\)"):
        from_onnx(_model([_gemm("x", "W", "b", "h"), helper.make_node("LeakyRelu", ["h"], ["y"], name="lk",
                                                                      alpha=float("inf"))], [1, 3], base))


def test_leaky_slope_rounding_is_kept_in_param_errors():
    """``1 - alpha`` is inexact in float64 for a tiny float32 ``alpha``: its error is recorded."""
    rng = np.random.default_rng(6)
    alpha = float(np.float32(2.0 ** -40 * 1.1))
    nodes = [_gemm("x", "W", "b", "h"), helper.make_node("LeakyRelu", ["h"], ["y"], alpha=alpha)]
    net = from_onnx(_model(nodes, [1, 3], {"W": _f32(rng, 4, 3), "b": _f32(rng, 4)}))
    assert net.param_errors is not None and any(e is not None for e in net.param_errors)
    nodes = [_gemm("x", "W", "b", "h"), helper.make_node("LeakyRelu", ["h"], ["y"], alpha=0.25)]
    net = from_onnx(_model(nodes, [1, 3], {"W": _f32(rng, 4, 3), "b": _f32(rng, 4)}))
    assert net.param_errors is None


@pytest.mark.parametrize("name", ["leaky", "relu6", "max_data"])
def test_verify_instances_with_piecewise_ops_on_both_sides_of_the_optimum(name, tmp_path):
    """Through the files and the whole pipeline: ``Y_0 - Y_1 >= t`` is reachable for ``t`` just
    below the proven maximum and unreachable just above it."""
    import onnx

    rng = np.random.default_rng(200 + CASES.index(name))
    nodes, inits = _case(name, rng, 2, 6)
    model = _model(nodes, [1, 2], inits)
    path = tmp_path / "net.onnx"
    onnx.save(model, path)
    net = from_onnx(path)
    res = gpuopt.optimize(net, gpuopt.Box([-1.0, -1.0], [1.0, 1.0]), "Y_0 - Y_1", timeout=20)
    assert res.status == "optimal"
    for t, want in ((res.best_value - 0.01, "sat"), (res.upper_bound + 0.01, "unsat")):
        spec = tmp_path / f"{want}.vnnlib"
        spec.write_text("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
                        "(declare-const Y_1 Real)\n(assert (>= X_0 -1))\n(assert (<= X_0 1))\n"
                        "(assert (>= X_1 -1))\n(assert (<= X_1 1))\n"
                        f"(assert (>= Y_0 (+ Y_1 {float(t)!r})))\n")
        verdict = gpuopt.verify_instance(path, spec, timeout=30)
        assert verdict.status.value == want, (t, verdict)
        if want == "sat":
            x = np.asarray(verdict.counterexample, dtype=np.float64).reshape(1, -1)
            y = _ort_outputs(model, x)[0]
            assert y[0] - y[1] >= t - 1e-5


# ---------------------------------------------------------------------- the same maps from torch models
class _TorchPiecewise(torch.nn.Module):
    """Every piecewise-linear module and function the torch importer maps to ReLUs."""

    def __init__(self, n_in, width):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        nn = torch.nn
        self.l1, self.l2, self.l3 = nn.Linear(n_in, width), nn.Linear(n_in, width), nn.Linear(width, 2)
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.8)
        self.acts = nn.ModuleList([nn.LeakyReLU(0.1), nn.PReLU(width), nn.ReLU6(), nn.Hardtanh(-0.4, 0.7),
                                   nn.Hardsigmoid()])
        with torch.no_grad():
            self.acts[1].weight.copy_(torch.linspace(-0.5, 1.5, width))

    def forward(self, x):
        h, k = self.l1(x) * 3, self.l2(x) * 3
        a = self.acts[0](h) + self.acts[1](k) + self.acts[2](h) - self.acts[3](k) + self.acts[4](h)
        a = a + F.leaky_relu(k, 0.3) + F.relu6(h) - F.hardtanh(k, -0.2, 0.3) + F.hardsigmoid(k)
        a = a + torch.abs(h) - k.abs() + torch.clamp(h, -0.5, 0.5) + k.clamp(min=0.1) + h.clip(max=0.2)
        a = a + torch.maximum(h, k) - torch.minimum(h, k) + torch.maximum(h, torch.tensor(0.25))
        return self.l3(a)


F = torch.nn.functional


def test_torch_piecewise_modules_and_functions():
    model = _TorchPiecewise(2, 5).eval()
    net = gpuopt.from_torch(model, (2,))  # from_torch itself checks the forward on random inputs
    x = torch.rand(400, 2, dtype=torch.float64) * 8 - 4  # every side of every kink
    with torch.no_grad():
        ref = model.double()(x).numpy()
    assert np.abs(net.forward64(x.numpy()) - ref).max() <= 1e-9 * max(1.0, np.abs(ref).max())
    from helpers import affine_view_forward

    assert np.abs(affine_view_forward(net, x.numpy()) - ref).max() <= 1e-9 * max(1.0, np.abs(ref).max())
    # the proven optimum against a dense grid
    lo, hi = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    g = np.stack(np.meshgrid(np.linspace(-1, 1, 161), np.linspace(-1, 1, 161)), -1).reshape(-1, 2)
    with torch.no_grad():
        yg = model(torch.tensor(g)).numpy()
    res = gpuopt.optimize(net, gpuopt.Box(lo, hi), "Y_0 - Y_1", timeout=30)
    grid_max = float((yg[:, 0] - yg[:, 1]).max())
    assert res.upper_bound >= grid_max - 1e-9 and res.status == "optimal"
    assert res.best_value >= grid_max - 1e-3 * max(1.0, abs(grid_max))


def test_torch_piecewise_errors_name_the_node():
    class DataBound(torch.nn.Module):
        def forward(self, x):
            return torch.clamp(x, x * 0.5)

    class Broadcast(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 1)

        def forward(self, x):
            return torch.maximum(x, self.lin(x))

    with pytest.raises(UnsupportedLayerError, match=r"node 'clamp'"):
        gpuopt.from_torch(DataBound(), (3,))
    with pytest.raises(UnsupportedLayerError, match=r"node 'maximum'"):
        gpuopt.from_torch(Broadcast(), (3,))
    with pytest.raises(UnsupportedLayerError, match=r"PReLU with 4 slopes on data of shape \(3,\)"):
        gpuopt.from_torch(torch.nn.Sequential(torch.nn.PReLU(4)), (3,))


# ---------------------------------------------------------------------- review findings
def test_clip_and_max_with_float32_lowest_as_the_missing_bound():
    """Converters write "no lower bound" as float32's lowest number: ``lo + relu(x - lo)`` would
    cancel to 0 there; the importer's forms add no such term."""
    lowest = np.float32(np.finfo(np.float32).min)
    rng = np.random.default_rng(8)
    inits = {"W": _f32(rng, 4, 3), "b": _f32(rng, 4), "lo": np.array(lowest), "hi": np.array(0.6, np.float32)}
    for nodes in ([_gemm("x", "W", "b", "h"), helper.make_node("Clip", ["h", "lo", "hi"], ["y"])],
                  [_gemm("x", "W", "b", "h"), helper.make_node("Max", ["h", "lo"], ["y"])]):
        net = _check_model(_model(nodes, [1, 3], inits), n=30)
        lo, hi = -np.ones((1, 3)), np.ones((1, 3))
        b = crown(net, torch.tensor(lo), torch.tensor(hi))
        y = net.forward64(np.random.default_rng(0).uniform(-1, 1, (500, 3)))
        assert np.all(np.isfinite(b.output[0].numpy())) and np.all(np.isfinite(b.output[1].numpy()))
        assert np.all(y >= b.output[0].numpy() - 1e-9) and np.all(y <= b.output[1].numpy() + 1e-9)
    nodes = [_gemm("x", "W", "b", "h"), helper.make_node("Clip", ["h"], ["y"], min=float(lowest), max=0.6)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 3])],
                              [helper.make_tensor_value_info("y", 1, [1, 4])],
                              initializer=[helper.make_tensor(k, 1, inits[k].shape, inits[k].reshape(-1))
                                           for k in ("W", "b")])
    from helpers import onnx_model

    _check_model(onnx_model(graph, opset=10), n=30)


def test_steep_leaky_slopes_stay_exact_and_tight():
    """A slope above 1 uses ``x + (1 - a) relu(-x)``: on x > 0 it is x exactly, so CROWN's bounds
    of a positive input stay those of x."""
    for alpha in (1e4, 1e8, 1e20):
        nodes = [helper.make_node("LeakyRelu", ["x"], ["y"], alpha=alpha)]
        model = _model(nodes, [1, 2])
        net = _check_model(model, n=30)
        for dtype in (torch.float64, torch.float32):  # float32: the GPU stages' working precision
            b = crown(net, torch.tensor([[0.5, -1.0]], dtype=dtype), torch.tensor([[1.0, -0.5]], dtype=dtype))
            assert b.output[0][0, 0] >= 0.5 - 1e-5 and b.output[1][0, 0] <= 1.0 + 1e-5
        with torch.no_grad():
            y32 = net(torch.tensor([[0.75, -0.75]], dtype=torch.float32)).numpy()
        assert y32[0, 0] == np.float32(0.75) and y32[0, 1] == pytest.approx(-0.75 * np.float32(alpha), rel=1e-6)


def test_malformed_pads_and_inputs_without_a_batch_axis_are_refused():
    rng = np.random.default_rng(9)
    def explicit(nodes, in_shape, out_shape, inits=()):  # shape inference cannot type these outputs
        from helpers import onnx_model

        return onnx_model(helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("x", 1, in_shape)], [helper.make_tensor_value_info("y", 1, out_shape)],
            initializer=[helper.make_tensor(k, 1, v.shape, v.reshape(-1)) for k, v in dict(inits).items()]))

    conv1d = explicit([helper.make_node("Conv", ["x", "K"], ["y"], name="cv", pads=[1, 1, 1, 1])], [1, 2, 8],
                      [1, 3, 8], {"K": _f32(rng, 3, 2, 3)})
    with pytest.raises(InvalidInputError, match=re.escape("node 'cv' (op Conv): pads [1, 1, 1, 1] must have 2")):
        from_onnx(conv1d)
    pool = explicit([helper.make_node("MaxPool", ["x"], ["y"], name="mp", kernel_shape=[2, 2], pads=[1, 1])],
                    [1, 2, 4, 4], [1, 2, 4, 4])
    with pytest.raises(InvalidInputError, match=re.escape("node 'mp' (op MaxPool): pads [1, 1] must have 4")):
        from_onnx(pool)
    # a leading dimension fixed above 1 is no batch axis, but GlobalAveragePool reads it as one
    gap = _model([helper.make_node("GlobalAveragePool", ["x"], ["y"], name="gap")], [2, 3, 7])
    with pytest.raises(UnsupportedLayerError, match=r"node 'gap' \(op GlobalAveragePool\).*no batch axis"):
        from_onnx(gap)


def test_torch_keyword_only_calls():
    class KeywordOnly(torch.nn.Module):
        def forward(self, x):
            return torch.maximum(input=x, other=x * 0.5) + torch.clamp(input=x, min=0.1)

    model = KeywordOnly().eval()
    net = gpuopt.from_torch(model, (3,))
    x = torch.randn(20, 3, dtype=torch.float64)
    with torch.no_grad():
        assert np.abs(net.forward64(x.numpy()) - model(x).numpy()).max() <= 1e-12
