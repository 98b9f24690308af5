"""Tests of gpuopt.io.onnx.from_onnx against onnxruntime."""

from __future__ import annotations

import re

import numpy as np
import onnx

import pytest
from onnx import TensorProto, helper, numpy_helper

from gpuopt.errors import InvalidInputError, UnsupportedLayerError
from gpuopt.io.onnx import from_onnx
from gpuopt.lowering import lowered_nonzeros
from gpuopt.network import Add, Conv2d, Dense, ElementwiseAffine, Flatten, ReLU
from helpers import affine_view_forward, onnx_model

ort = pytest.importorskip("onnxruntime", reason="onnxruntime (the `test` extra) is needed to cross-check the importer")

RTOL = 1e-5


# ---------------------------------------------------------------------- helpers
def _session(model_or_path):
    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"])


def _ort_outputs(model_or_path, x: np.ndarray) -> np.ndarray:
    """onnxruntime outputs, one sample at a time (batch dims are often fixed to 1), flattened."""
    sess = _session(model_or_path)
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: xi[None].astype(np.float32)})[0].reshape(-1) for xi in x]
    return np.stack(outs).astype(np.float64)


def _assert_close(ours: np.ndarray, ref: np.ndarray, what: str = ""):
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    for k in range(len(ref)):
        tol = RTOL * max(1.0, np.abs(ref[k]).max())
        err = np.abs(ours[k] - ref[k]).max()
        assert err <= tol, f"{what} sample {k}: max abs error {err:.3g} > {tol:.3g}"


def _model(nodes, in_shape, inits=(), *, extra_inputs=(), name="g"):
    """A float32 model with input ``x`` and output ``y``; ``inits`` maps names to arrays."""
    inits = dict(inits)
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)]
        + [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in extra_inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    model = onnx_model(graph)
    return onnx.shape_inference.infer_shapes(model)  # fills in the output type the checker requires


def _f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _check_model(model, n=20, seed=0, affine=True):
    net = from_onnx(model)
    x = np.random.default_rng(seed).uniform(-1, 1, (n,) + net.input_shape)
    ref = _ort_outputs(model, x)
    ours = net.forward64(x)
    _assert_close(ours, ref, "forward64")
    if affine:
        _assert_close(affine_view_forward(net, x), ours, "affine_blocks")
    return net


# ---------------------------------------------------------------------- benchmark networks
FAMILIES = {
    # family: (glob under the benchmarks folder, number of nets, input box (lo, hi))
    "mnist_fc": ("vnncomp2022/mnist_fc/onnx/*.onnx", 3, (0.0, 1.0)),
    "acasxu": ("vnncomp2022/acasxu/onnx/*.onnx", 45, (-0.5, 0.5)),
    "oval21": ("vnncomp2021/oval21/nets/*.onnx", 3, (-2.0, 2.0)),
    # graph networks (residual adds, pooling, reshapes): coverage/
    "sri_resnet_a": ("coverage/vnncomp2022/sri_resnet_a/onnx/*.onnx", 1, (0.0, 1.0)),
    "sri_resnet_b": ("coverage/vnncomp2022/sri_resnet_b/onnx/*.onnx", 1, (0.0, 1.0)),
    "cifar_biasfield": ("coverage/vnncomp2022/cifar_biasfield/onnx/*.onnx", 24, (-0.004, 0.004)),
    "yolo": ("coverage/vnncomp2023/yolo/onnx/*.onnx", 1, (0.0, 1.0)),
}
#: families whose affine-block view is too slow to build for a unit test (TinyYOLO: ~30 s)
NO_AFFINE_CHECK = {"yolo"}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_benchmark_networks_match_onnxruntime(benchmarks_dir, family):
    pattern, count, (lo, hi) = FAMILIES[family]
    paths = sorted(benchmarks_dir.glob(pattern))
    assert len(paths) == count
    rng = np.random.default_rng(1234)
    for i, path in enumerate(paths):
        net = from_onnx(path)
        declared = [d.dim_value for d in onnx.load(path).graph.input[-1].type.tensor_type.shape.dim]
        assert net.input_shape == tuple(declared[1:]), path.name
        x = rng.uniform(lo, hi, (100,) + net.input_shape)
        ref = _ort_outputs(path, x)
        ours = net.forward64(x)
        _assert_close(ours, ref, path.name)
        # flattened inputs (VNNLIB X_i order) give the same result
        _assert_close(net.forward64(x.reshape(100, -1)), ours, path.name + " (flat input)")
        if i == 0 and family not in NO_AFFINE_CHECK:  # the affine view (Conv as a sparse matrix) on one net per family
            _assert_close(affine_view_forward(net, x[:5]), ours[:5], path.name + " affine_blocks")


def test_benchmark_structures(benchmarks_dir):
    mnist = from_onnx(benchmarks_dir / "vnncomp2022/mnist_fc/onnx/mnist-net_256x2.onnx")
    assert mnist.input_shape == (784, 1)
    assert [type(l) for l in mnist.layers] == [Flatten, Dense, ReLU, Dense, ReLU, Dense]
    acas = from_onnx(benchmarks_dir / "vnncomp2022/acasxu/onnx/ACASXU_run2a_1_1_batch_2000.onnx")
    assert acas.input_shape == (1, 1, 5) and acas.output_size == 5
    assert isinstance(acas.layers[0], ElementwiseAffine) and isinstance(acas.layers[1], Flatten)
    assert sum(isinstance(l, Dense) for l in acas.layers) == 7  # each MatMul+Add folded into one Dense
    oval = from_onnx(benchmarks_dir / "vnncomp2021/oval21/nets/cifar_base_kw.onnx")
    assert oval.input_shape == (3, 32, 32) and oval.output_size == 10
    assert isinstance(oval.layers[0], Conv2d) and oval.layers[0].padding == (1, 1, 1, 1)
    # a ModelProto is accepted as well
    proto = onnx.load(benchmarks_dir / "vnncomp2021/oval21/nets/cifar_base_kw.onnx")
    assert [type(l) for l in from_onnx(proto).layers] == [type(l) for l in oval.layers]


# ---------------------------------------------------------------------- hand-built models
def test_gemm_transb0_alpha_beta():
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Gemm", ["x", "B", "C"], ["h"], name="g1", alpha=0.5, beta=2.0, transB=0),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "B2"], ["y"], name="g2", alpha=-1.5, transB=1),
    ]
    model = _model(nodes, [1, 4], {"B": _f32(rng, 4, 6), "C": _f32(rng, 1, 6), "B2": _f32(rng, 3, 6)})
    net = _check_model(model)
    assert [type(l) for l in net.layers] == [Dense, ReLU, Dense]


def test_matmul_add_folds_into_dense():
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["a"]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("MatMul", ["r", "W2"], ["m2"]),
        helper.make_node("Add", ["b2", "m2"], ["y"]),  # constant on the left
    ]
    inits = {"W": _f32(rng, 4, 7), "b": _f32(rng, 7), "W2": _f32(rng, 7, 3), "b2": _f32(rng, 1, 3)}
    net = _check_model(_model(nodes, ["batch", 4], inits))
    assert [type(l) for l in net.layers] == [Dense, ReLU, Dense]
    assert net.input_shape == (4,)


def test_matmul_on_nd_tensor_with_unit_dims():
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Sub", ["x", "mu"], ["s"]),
        helper.make_node("MatMul", ["s", "W"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["a"]),
        helper.make_node("Relu", ["a"], ["y"]),  # output (1, 1, 1, 6): flattened at the end
    ]
    inits = {"mu": _f32(rng, 1, 1, 1, 5), "W": _f32(rng, 5, 6), "b": _f32(rng, 6)}
    net = _check_model(_model(nodes, [1, 1, 1, 5], inits))
    assert net.input_shape == (1, 1, 5)
    assert [type(l) for l in net.layers] == [ElementwiseAffine, Flatten, Dense, ReLU]


def test_sub_div_mul_normalisation():
    rng = np.random.default_rng(3)
    mean = rng.uniform(0, 1, (1, 3, 1, 1)).astype(np.float32)
    std = rng.uniform(0.2, 1, (3, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["s"]),
        helper.make_node("Div", ["s", "std"], ["d"]),
        helper.make_node("Mul", ["k", "d"], ["m"]),
        helper.make_node("Sub", ["c", "m"], ["n"]),  # c - x
        helper.make_node("Flatten", ["n"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "W", "b"], ["y"], transB=1),
    ]
    inits = {"mean": mean, "std": std, "k": np.float32(1.7), "c": _f32(rng, 4, 4), "W": _f32(rng, 5, 48),
             "b": _f32(rng, 5)}
    net = _check_model(_model(nodes, [1, 3, 4, 4], inits))
    assert [type(l) for l in net.layers] == [ElementwiseAffine, Flatten, Dense]  # one composed affine map


def _conv_bn_model(rng, bn_after_relu=True):
    c = 4
    bn = lambda p: {f"{p}_g": rng.uniform(0.5, 1.5, c).astype(np.float32), f"{p}_b": _f32(rng, c),
                    f"{p}_m": _f32(rng, c), f"{p}_v": rng.uniform(0.1, 2, c).astype(np.float32)}
    inits = {"W": _f32(rng, c, 2, 3, 3, scale=0.5), "B": _f32(rng, c), **bn("bn1"), **bn("bn2"),
             "G": _f32(rng, 3, c * 3 * 3), "bn3_g": _f32(rng, 3), "bn3_b": _f32(rng, 3), "bn3_m": _f32(rng, 3),
             "bn3_v": rng.uniform(0.1, 2, 3).astype(np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn1_g", "bn1_b", "bn1_m", "bn1_v"], ["b1"], epsilon=1e-3),
        helper.make_node("Relu", ["b1"], ["r"]),
        helper.make_node("BatchNormalization", ["r", "bn2_g", "bn2_b", "bn2_m", "bn2_v"], ["b2"]),
        helper.make_node("Flatten", ["b2"], ["f"]),
        helper.make_node("Gemm", ["f", "G"], ["g"], transB=1),
        helper.make_node("BatchNormalization", ["g", "bn3_g", "bn3_b", "bn3_m", "bn3_v"], ["y"]),
    ]
    return _model(nodes, [1, 2, 6, 6], inits)


def test_batchnorm_folded_and_standalone():
    net = _check_model(_conv_bn_model(np.random.default_rng(4)))
    # BN after Conv and after Gemm fold; BN after ReLU stays an ElementwiseAffine
    assert [type(l) for l in net.layers] == [Conv2d, ReLU, ElementwiseAffine, Flatten, Dense]
    assert net.layers[2].scale.shape == (4, 1, 1)


@pytest.mark.parametrize(
    "attrs",
    [
        dict(pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2]),
        dict(pads=[0, 2, 1, 0], strides=[1, 3]),
        dict(auto_pad="SAME_UPPER", strides=[2, 2]),
        dict(auto_pad="SAME_LOWER", strides=[2, 1]),
        dict(auto_pad="VALID", dilations=[2, 1]),
    ],
)
def test_conv_pads_strides_dilations(attrs):
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", **attrs),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Conv", ["r", "W2"], ["y"], name="conv2", pads=[1, 1, 0, 0]),  # no bias
    ]
    inits = {"W": _f32(rng, 3, 2, 3, 2), "B": _f32(rng, 3), "W2": _f32(rng, 2, 3, 2, 2)}
    net = _check_model(_model(nodes, [1, 2, 7, 8], inits))
    assert [type(l) for l in net.layers] == [Conv2d, ReLU, Conv2d, Flatten]
    if "pads" in attrs:
        assert net.layers[0].padding == tuple(attrs["pads"])


@pytest.mark.parametrize("style", ["const_1_m1", "const_m1_n", "shape_ops", "symbolic_batch"])
def test_reshape_as_flatten(style):
    rng = np.random.default_rng(6)
    inits = {"W": _f32(rng, 2, 1, 2, 2), "G": _f32(rng, 4, 18)}
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Relu", ["c"], ["r"])]
    in_shape = [1, 1, 4, 4]
    if style == "const_1_m1":
        inits["s"] = np.array([1, -1], dtype=np.int64)
    elif style == "const_m1_n":
        inits["s"] = np.array([-1, 18], dtype=np.int64)
    else:  # x.view(x.size(0), -1) as exported by torch
        if style == "symbolic_batch":
            in_shape = ["N", 1, 4, 4]
        nodes += [
            helper.make_node("Shape", ["r"], ["shp"]),
            helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.int64))),
            helper.make_node("Gather", ["shp", "zero"], ["n"], axis=0),
            helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
            helper.make_node("Constant", [], ["m1"], value_ints=[-1]),
            helper.make_node("Concat", ["n1", "m1"], ["s"], axis=0),
        ]
        inits["ax"] = np.array([0], dtype=np.int64)
    nodes += [helper.make_node("Reshape", ["r", "s"], ["f"]), helper.make_node("Gemm", ["f", "G"], ["y"], transB=1)]
    net = _check_model(_model(nodes, in_shape, inits))
    assert [type(l) for l in net.layers] == [Conv2d, ReLU, Flatten, Dense]
    assert net.input_shape == (1, 4, 4)


def test_identity_dropout_and_dead_nodes_are_ignored():
    rng = np.random.default_rng(7)
    nodes = [
        helper.make_node("Identity", ["x"], ["i"]),
        helper.make_node("Gemm", ["i", "W"], ["g"], transB=1),
        helper.make_node("Erf", ["g"], ["unused"]),  # not on the way to the output (and unsupported)
        helper.make_node("Dropout", ["g"], ["y"]),
    ]
    net = _check_model(_model(nodes, [1, 3], {"W": _f32(rng, 2, 3)}))
    assert [type(l) for l in net.layers] == [Dense]


@pytest.mark.parametrize("training_mode", [None, False])
def test_inference_dropout_matches_onnxruntime(training_mode):
    """Dropout with no training_mode input, or a constant False one, is the identity (opset 13)."""
    rng = np.random.default_rng(11)
    inits = {"W": _f32(rng, 2, 3), "ratio": np.array(0.5, dtype=np.float32)}
    inputs = ["g", "ratio"]
    if training_mode is not None:
        inits["t"] = np.array(training_mode)
        inputs.append("t")
    nodes = [helper.make_node("Gemm", ["x", "W"], ["g"], transB=1), helper.make_node("Dropout", inputs, ["y"])]
    net = _check_model(_model(nodes, [1, 3], inits))
    assert [type(l) for l in net.layers] == [Dense]


def test_input_shape_override():
    rng = np.random.default_rng(8)
    model = _model([helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)], ["N", "F"], {"W": _f32(rng, 2, 3)})
    with pytest.raises(InvalidInputError, match=re.escape("pass `input_shape=`")):
        from_onnx(model)
    net = from_onnx(model, input_shape=(3,))
    assert net.input_shape == (3,)
    x = rng.uniform(-1, 1, (4, 3))
    _assert_close(net.forward64(x), _ort_outputs(model, x))


# ---------------------------------------------------------------------- errors
def test_unsupported_op_names_node_and_type():
    rng = np.random.default_rng(9)
    nodes = [
        helper.make_node("Gemm", ["x", "W"], ["g"], name="n1", transB=1),
        helper.make_node("Relu", ["g"], ["r"], name="n2"),
        helper.make_node("Erf", ["r"], ["y"], name="n3"),
    ]
    with pytest.raises(UnsupportedLayerError, match=re.escape("node 'n3' (op Erf) is not supported")) as info:
        from_onnx(_model(nodes, [1, 3], {"W": _f32(rng, 2, 3)}))
    assert info.value.node == "n3" and info.value.op_type == "Erf"


def test_residual_branch_is_a_graph():
    rng = np.random.default_rng(10)
    nodes = [
        helper.make_node("Gemm", ["x", "W"], ["g"], name="fc", transB=1),
        helper.make_node("Relu", ["g"], ["r"], name="relu"),
        helper.make_node("Add", ["r", "g"], ["y"], name="res"),
    ]
    net = _check_model(_model(nodes, [1, 3], {"W": _f32(rng, 3, 3)}))
    assert [type(l) for l in net.layers] == [Dense, ReLU, Add] and net.inputs == ((-1,), (0,), (1, 0))


def test_elementwise_map_is_not_folded_into_a_shared_layer():
    """``g`` feeds both the ReLU and the Mul: folding the Mul into the Gemm would scale both."""
    rng = np.random.default_rng(13)
    nodes = [
        helper.make_node("Gemm", ["x", "W"], ["g"], transB=1),
        helper.make_node("Identity", ["g"], ["gi"]),
        helper.make_node("Relu", ["gi"], ["r"]),
        helper.make_node("Mul", ["g", "c"], ["m"]),
        helper.make_node("Sub", ["r", "m"], ["y"]),
    ]
    net = _check_model(_model(nodes, [1, 3], {"W": _f32(rng, 4, 3), "c": _f32(rng, 4)}))
    assert sum(isinstance(l, ElementwiseAffine) for l in net.layers) == 2  # the Mul, and Sub's negation


def test_graph_operators_match_onnxruntime():
    rng = np.random.default_rng(14)
    inits = {"W": _f32(rng, 4, 2, 3, 3, scale=0.5), "b": _f32(rng, 4), "Wt": _f32(rng, 4, 2, 2, 2),
             "s": np.array([1, 2, 6, 6], dtype=np.int64), "pads": np.array([0, 0, 1, 0, 0, 0, 0, 2], dtype=np.int64),
             "pv": np.array(0.25, dtype=np.float32), "st": np.array([1], dtype=np.int64),
             "en": np.array([5], dtype=np.int64), "ax": np.array([2], dtype=np.int64), "gi": np.array(1, dtype=np.int64),
             "Wf": _f32(rng, 5, 96)}
    nodes = [
        helper.make_node("Reshape", ["x", "s"], ["img"]),  # flat (72) -> (2, 6, 6)
        helper.make_node("Conv", ["img", "W", "b"], ["c"], pads=[1, 1, 1, 1]),  # (4, 6, 6)
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["mp"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 0, 1, 2]),
        helper.make_node("AveragePool", ["r"], ["ap"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["mp", "ap"], ["sum"]),  # (4, 6, 6) residual of two data tensors
        helper.make_node("Pad", ["sum", "pads", "pv"], ["pd"]),  # (4, 7, 8)
        helper.make_node("Slice", ["pd", "st", "en", "ax"], ["sl"]),  # rows 1..4 -> (4, 4, 8)
        helper.make_node("Transpose", ["sl"], ["tr"], perm=[0, 1, 3, 2]),  # (4, 8, 4)
        helper.make_node("ConvTranspose", ["r", "Wt"], ["ct"], strides=[2, 2], pads=[1, 1, 0, 0]),  # (2, 11, 11)
        helper.make_node("Gather", ["ct", "gi"], ["ga"], axis=1),  # channel 1: (11, 11)
        helper.make_node("Flatten", ["tr"], ["f1"]),
        helper.make_node("Flatten", ["ga"], ["f2"]),
        helper.make_node("Concat", ["f1", "f2"], ["cat"], axis=1),  # 128 + 121
        helper.make_node("Relu", ["cat"], ["y"]),
    ]
    model = _model(nodes, [1, 72], inits)
    net = _check_model(model)
    assert not net.is_chain and net.output_size == 249


def test_global_average_pool_and_squeeze():
    rng = np.random.default_rng(15)
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),  # (3, 1, 1)
        helper.make_node("Squeeze", ["g", "axes"], ["sq"]),  # (batch, 3)
        helper.make_node("Gemm", ["sq", "Wf"], ["y"], transB=1),
    ]
    inits = {"W": _f32(rng, 3, 1, 2, 2), "axes": np.array([2, 3], dtype=np.int64), "Wf": _f32(rng, 2, 3)}
    _check_model(_model(nodes, [1, 1, 5, 5], inits))


def test_squeeze_without_axes_drops_the_batch_axis_only_at_the_output():
    """ONNX's ``Squeeze()`` removes every unit axis, the batch axis of a batch of one too. As the
    graph's last node that changes nothing per sample; before another node, that node would number
    its axes without the batch axis, which the importer keeps: refused by name (it once took a
    following ``Slice`` on axis 0 as the batch axis and kept all six outputs, and interleaved a
    ``Concat`` wrongly: a wrong sat found by review)."""
    rng = np.random.default_rng(16)
    inits = {"W": _f32(rng, 3, 4), "st": np.array([0], np.int64), "en": np.array([1], np.int64),
             "ax": np.array([0], np.int64)}
    last = [helper.make_node("Gemm", ["x", "W"], ["h"], transB=1), helper.make_node("Squeeze", ["h"], ["y"])]
    net = _check_model(_model(last, [1, 4], inits))  # (1, 3) -> (3,)
    assert net.output_size == 3
    inner = [helper.make_node("Gemm", ["x", "W"], ["h"], transB=1), helper.make_node("Squeeze", ["h"], ["s"]),
             helper.make_node("Slice", ["s", "st", "en", "ax"], ["y"])]  # onnxruntime: the first entry only
    with pytest.raises(UnsupportedLayerError, match=r"Squeeze.*removes axis 0 .* the batch axis"):
        from_onnx(_model(inner, [1, 4], inits))
    named = [helper.make_node("Gemm", ["x", "W"], ["h"], transB=1), helper.make_node("Squeeze", ["h", "ax"], ["s"]),
             helper.make_node("Relu", ["s"], ["y"])]
    with pytest.raises(UnsupportedLayerError, match=r"Squeeze.*removes axis 0"):
        from_onnx(_model(named, [1, 4], inits))


def test_missing_file(tmp_path):
    path = tmp_path / "nope.onnx"
    with pytest.raises(InvalidInputError, match=re.escape(str(path))):
        from_onnx(path)


def test_corrupt_and_truncated_files(tmp_path, benchmarks_dir):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(InvalidInputError, match=re.escape(f"{bad}: file is not a valid ONNX model")):
        from_onnx(bad)
    data = (benchmarks_dir / "vnncomp2022/mnist_fc/onnx/mnist-net_256x2.onnx").read_bytes()
    short = tmp_path / "short.onnx"
    short.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidInputError, match=re.escape("is not a valid ONNX model")):
        from_onnx(short)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(InvalidInputError, match=re.escape("is not a valid ONNX model")):
        from_onnx(str(empty))


def test_two_graph_inputs():
    rng = np.random.default_rng(11)
    nodes = [helper.make_node("Gemm", ["x", "W"], ["g"], transB=1), helper.make_node("Add", ["g", "z"], ["y"])]
    model = _model(nodes, [1, 3], {"W": _f32(rng, 2, 3)}, extra_inputs=[("z", [1, 2])])
    with pytest.raises(InvalidInputError, match=re.escape("exactly one non-initializer input, got 2")):
        from_onnx(model)


def test_reshape_to_an_image_and_back():
    rng = np.random.default_rng(12)
    nodes = [
        helper.make_node("Gemm", ["x", "W"], ["g"], transB=1),
        helper.make_node("Reshape", ["g", "s"], ["y"], name="r"),
    ]
    model = _model(nodes, [1, 3], {"W": _f32(rng, 16, 3), "s": np.array([1, 4, 4], dtype=np.int64)})
    _check_model(model)


def test_nan_weight_names_node():
    w = np.ones((2, 3), dtype=np.float32)
    w[1, 2] = np.nan
    model = _model([helper.make_node("Gemm", ["x", "W"], ["y"], name="fc", transB=1)], [1, 3], {"W": w})
    with pytest.raises(InvalidInputError, match=re.escape("node 'fc' (op Gemm)")):
        from_onnx(model)


def test_grouped_and_one_dimensional_convolutions_and_pooling():
    """Grouped (and depthwise) convolutions become one convolution whose kernel is zero between
    the groups; 1-D convolutions and pooling of ``(C, L)`` the 2-D ones of ``(C, 1, L)``."""
    import torch

    from gpuopt.bounds import crown

    rng = np.random.default_rng(13)
    conv = _model([helper.make_node("Conv", ["x", "W"], ["y"], name="gc", group=2)], [1, 2, 4, 4],
                  {"W": _f32(rng, 4, 1, 3, 3)})
    w = _check_model(conv).layers[0].weight
    assert np.all(w[:2, 1] == 0) and np.all(w[2:, 0] == 0)
    depthwise = _model([helper.make_node("Conv", ["x", "K", "b"], ["c"], group=6), helper.make_node("Relu", ["c"], ["r"]),
                        helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("Gemm", ["f", "W"], ["y"], transB=1)],
                       [1, 6, 6, 6], {"K": _f32(rng, 6, 1, 3, 3), "b": _f32(rng, 6), "W": _f32(rng, 2, 6 * 4 * 4)})
    _check_model(depthwise)
    inits = {"K1": _f32(rng, 4, 3, 3), "b1": _f32(rng, 4), "K2": _f32(rng, 6, 2, 2), "W": _f32(rng, 5, 6)}
    nodes = [helper.make_node("Conv", ["x", "K1", "b1"], ["c1"], strides=[2], pads=[1, 2]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2], strides=[1]),
             helper.make_node("Conv", ["p1", "K2"], ["c2"], group=2, auto_pad="SAME_UPPER"),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("AveragePool", ["r2"], ["a2"], kernel_shape=[2], strides=[2]),
             helper.make_node("GlobalAveragePool", ["a2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "W"], ["y"], transB=1)]
    net = _check_model(_model(nodes, [1, 3, 20], inits), n=30)
    lo, hi = np.full((1, 60), -0.5), np.full((1, 60), 0.5)
    b = crown(net, torch.tensor(lo), torch.tensor(hi))
    y = net.forward64(np.random.default_rng(1).uniform(-0.5, 0.5, (500, 60)))
    assert np.all(y >= b.output[0].numpy() - 1e-9) and np.all(y <= b.output[1].numpy() + 1e-9)
    bad = _model([helper.make_node("Conv", ["x", "W"], ["y"], name="gc", group=3)], [1, 4, 4, 4],
                 {"W": _f32(rng, 3, 2, 3, 3)})
    with pytest.raises(InvalidInputError, match=re.escape("node 'gc' (op Conv): weight (3, 2, 3, 3) with group=3")):
        from_onnx(bad)


def test_matmul_on_the_last_axis_is_row_wise():
    rng = np.random.default_rng(13)
    mm = _model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [1, 2, 3], {"W": _f32(rng, 3, 4)})
    assert sum(isinstance(l, Conv2d) for l in _check_model(mm).layers) == 1  # a 1x1 convolution over the rows
    # 300 rows: a block-diagonal dense weight would hold 300^2 x 200 entries; the convolution holds 200
    big = _model([helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
                  helper.make_node("Relu", ["a"], ["y"])], [1, 300, 20], {"W": _f32(rng, 20, 10), "b": _f32(rng, 10)})
    net = _check_model(big, n=4)
    assert lowered_nonzeros(net) < 10 * 300 * 20 * 3


def test_low_precision_cast_on_the_data_path_is_unsupported():
    """A cast to float16 rounds the data: dropping it would silently change the network."""
    w = numpy_helper.from_array(np.eye(2, dtype=np.float32), "w")
    nodes = [helper.make_node("Cast", ["x"], ["c"], to=TensorProto.FLOAT16, name="to_half"),
             helper.make_node("Cast", ["c"], ["c2"], to=TensorProto.FLOAT, name="back"),
             helper.make_node("MatMul", ["c2", "w"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [w])
    model = onnx_model(graph)
    with pytest.raises(UnsupportedLayerError, match=re.escape("node 'to_half' (op Cast) is not supported")):
        from_onnx(model)


@pytest.mark.parametrize("shape", [[5], [12, 8]])
def test_inputs_without_a_batch_axis_are_one_sample(shape):
    """Rank 1, or a leading dimension fixed above 1: the whole tensor is one sample."""
    rng = np.random.default_rng(16)
    if len(shape) == 1:
        nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
                 helper.make_node("Relu", ["a"], ["r"]), helper.make_node("MatMul", ["r", "W2"], ["y"])]
        inits = {"W": _f32(rng, 5, 4), "b": _f32(rng, 4), "W2": _f32(rng, 4, 3)}
    else:  # a row-wise MatMul (a 1x1 convolution), then axes that count from 0 without a batch
        nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Relu", ["m"], ["r"]),
                 helper.make_node("Transpose", ["r"], ["t"], perm=[1, 0]),
                 helper.make_node("Slice", ["t", "st", "en", "ax"], ["sl"]),
                 helper.make_node("Reshape", ["sl", "s"], ["f"]), helper.make_node("Gather", ["f", "gi"], ["y"], axis=0)]
        inits = {"W": _f32(rng, 8, 3), "st": np.array([1], dtype=np.int64), "en": np.array([3], dtype=np.int64),
                 "ax": np.array([0], dtype=np.int64), "s": np.array([1, -1], dtype=np.int64),
                 "gi": np.array(0, dtype=np.int64)}
    model = _model(nodes, shape, inits)
    net = from_onnx(model)
    assert net.input_shape == tuple(shape)
    x = rng.uniform(-1, 1, (10, *shape))
    sess = _session(model)
    ref = np.stack([sess.run(None, {"x": xi.astype(np.float32)})[0].reshape(-1) for xi in x]).astype(np.float64)
    _assert_close(net.forward64(x), ref, "no batch axis")


def test_constant_subgraph_arithmetic_is_the_models_own_float32_arithmetic():
    """``W / 3 * s - 0.1`` on float32 constants (a weight computed in the graph): each step is the
    IEEE float32 operation ONNX Runtime performs, so the imported weight is exactly that float32
    value (computing it in float64 would differ in the last bits, a model that is not the file's)."""
    rng = np.random.default_rng(5)
    W0, s = _f32(rng, 6, 4), np.float32(0.7)
    nodes = [
        helper.make_node("Div", ["W0", "three"], ["w1"]),
        helper.make_node("Mul", ["w1", "s"], ["w2"]),
        helper.make_node("Sub", ["w2", "tenth"], ["W"]),
        helper.make_node("MatMul", ["x", "W"], ["y"]),
    ]
    inits = {"W0": W0, "three": np.float32(3.0), "s": s, "tenth": np.float32(0.1)}
    model = _model(nodes, ["batch", 6], inits)
    net = _check_model(model)
    want = ((W0 / np.float32(3.0)) * s - np.float32(0.1)).astype(np.float32)
    assert want.dtype == np.float32
    assert np.array_equal(net.layers[0].weight, want.T.astype(np.float64))
    as64 = (W0.astype(np.float64) / 3.0) * np.float64(s) - np.float64(np.float32(0.1))
    assert not np.array_equal(want.astype(np.float64), as64)  # the test tells the two apart
    assert not net.param_errors  # no rounding of ours to track: the values are the model's
