"""ONNX operators that copy, repeat, resample or reduce entries: Split, Tile, Expand, Resize and
Upsample (nearest), ReduceSum/Mean/Max/Min, DepthToSpace, SpaceToDepth, and the constant folding
of ConstantOfShape, Range, Expand, Tile, Slice, Split and friends.

They import as exact selections (``Gather``, ``Slice``, ``Transpose``), average or max pooling of
a ``(rest, 1, k)`` view, or constants. Each case is checked against onnxruntime (forward pass and
affine-block view), CROWN's bounds against sampled outputs, and for small ones the MILP optimum of
``gpuopt.optimize`` against a dense grid.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import gpuopt
from gpuopt.bounds import crown
from gpuopt.errors import InvalidInputError, UnsupportedLayerError
from gpuopt.io.onnx import from_onnx
from gpuopt.io.selection import onnx_resize_axis

from helpers import onnx_model
from test_onnx_import import _assert_close, _f32, _ort_outputs, affine_view_forward

pytest.importorskip("onnxruntime", reason="onnxruntime (the `test` extra) is needed to cross-check the importer")


def _model(nodes, in_shape, inits=(), opset=13, out_shape=None):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in dict(inits).items()])
    return onnx.shape_inference.infer_shapes(onnx_model(graph, opset))


def _i64(*v):
    return np.array(v, dtype=np.int64)


def _conv(src, w, b, out, pads=1):
    return helper.make_node("Conv", [src, w, b], [out], pads=[pads] * 4)


def _head():
    """Flatten ``f`` and a Gemm (weights ``Wo``, ``bo``, sized by each case) to the outputs ``y``."""
    return [helper.make_node("Flatten", ["f"], ["flat"]), helper.make_node("Gemm", ["flat", "Wo", "bo"], ["y"], transB=1)]


def _case(name, rng):
    """``(model, input shape)`` of one case; each runs a small data path through the op."""
    I = {}
    if name in ("split_concat", "split_equal_add", "split18_uneven"):
        I["W1"], I["b1"] = _f32(rng, 8, 3), _f32(rng, 8, scale=0.5)
        nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1)]
        if name == "split_concat":
            I["parts"] = _i64(3, 5)
            nodes += [helper.make_node("Split", ["h", "parts"], ["a", "b"], axis=1),
                      helper.make_node("Relu", ["a"], ["ra"]), helper.make_node("Concat", ["b", "ra"], ["f"], axis=1)]
            width, opset = 8, 13
        elif name == "split_equal_add":
            nodes += [helper.make_node("Split", ["h"], ["a", "b"], axis=-1), helper.make_node("Relu", ["a"], ["ra"]),
                      helper.make_node("Add", ["ra", "b"], ["f"])]
            width, opset = 4, 13
        else:  # opset 18: num_outputs, the last part smaller; the middle output unused
            nodes += [helper.make_node("Split", ["h"], ["a", "unused", "c"], axis=1, num_outputs=3),
                      helper.make_node("Relu", ["a"], ["ra"]), helper.make_node("Concat", ["c", "ra"], ["f"], axis=1)]
            width, opset = 5, 18
        I["Wo"], I["bo"] = _f32(rng, 2, width), _f32(rng, 2)
        return _model(nodes + _head(), [1, 3], I, opset), (3,)
    if name.startswith(("resize", "upsample")):
        I["Wc"], I["bc"] = _f32(rng, 2, 1, 3, 3, scale=0.5), _f32(rng, 2, scale=0.3)
        nodes = [_conv("x", "Wc", "bc", "c"), helper.make_node("Relu", ["c"], ["r"])]
        opset, out_hw = 13, None
        if name == "resize_2x_asymmetric_floor":
            I["roi"], I["sc"] = np.zeros(0, np.float32), np.array([1, 1, 2, 2], np.float32)
            nodes.append(helper.make_node("Resize", ["r", "roi", "sc"], ["u"], mode="nearest",
                                          coordinate_transformation_mode="asymmetric", nearest_mode="floor"))
            out_hw = (6, 6)
        elif name == "resize_sizes_half_pixel":
            I["roi"], I["sc"], I["sz"] = np.zeros(0, np.float32), np.zeros(0, np.float32), _i64(1, 2, 5, 7)
            nodes.append(helper.make_node("Resize", ["r", "roi", "sc", "sz"], ["u"], mode="nearest"))
            out_hw = (5, 7)
        elif name == "resize_align_corners_ceil":
            I["roi"], I["sc"], I["sz"] = np.zeros(0, np.float32), np.zeros(0, np.float32), _i64(1, 2, 7, 4)
            nodes.append(helper.make_node("Resize", ["r", "roi", "sc", "sz"], ["u"], mode="nearest",
                                          coordinate_transformation_mode="align_corners", nearest_mode="ceil"))
            out_hw = (7, 4)
        elif name == "resize_pytorch_half_pixel_prefer_ceil":
            I["roi"], I["sc"] = np.zeros(0, np.float32), np.array([1, 1, 1.5, 2.5], np.float32)
            nodes.append(helper.make_node("Resize", ["r", "roi", "sc"], ["u"], mode="nearest",
                                          coordinate_transformation_mode="pytorch_half_pixel",
                                          nearest_mode="round_prefer_ceil"))
            out_hw = (4, 7)
        elif name == "resize_downsample":
            I["roi"], I["sc"] = np.zeros(0, np.float32), np.array([1, 1, 0.5, 0.7], np.float32)
            nodes.append(helper.make_node("Resize", ["r", "roi", "sc"], ["u"], mode="nearest"))
            out_hw = (1, 2)
        elif name == "upsample_opset9":
            I["sc"] = np.array([1, 1, 2, 3], np.float32)
            nodes.append(helper.make_node("Upsample", ["r", "sc"], ["u"], mode="nearest"))
            opset, out_hw = 9, (6, 9)
        I["Wd"], I["bd"] = _f32(rng, 2, 2, 3, 3, scale=0.4), _f32(rng, 2, scale=0.3)
        nodes += [_conv("u", "Wd", "bd", "f")]
        I["Wo"], I["bo"] = _f32(rng, 3, 2 * out_hw[0] * out_hw[1], scale=0.3), _f32(rng, 3)
        return _model(nodes + _head(), [1, 1, 3, 3], I, opset), (1, 3, 3)
    if name in ("tile", "expand"):
        I["W1"], I["b1"] = _f32(rng, 4, 3), _f32(rng, 4, scale=0.5)
        nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"])]
        if name == "tile":
            I["s"], I["reps"] = _i64(1, 2, 2), _i64(1, 3, 2)
            nodes += [helper.make_node("Reshape", ["r", "s"], ["v"]), helper.make_node("Tile", ["v", "reps"], ["t"])]
            n = 24
        else:
            I["s"], I["shape"] = _i64(1, 4, 1), _i64(1, 4, 3)
            nodes += [helper.make_node("Reshape", ["r", "s"], ["v"]), helper.make_node("Expand", ["v", "shape"], ["t"])]
            n = 12
        I["W2s"] = _f32(rng, 1, 6, 4) if name == "tile" else _f32(rng, 1, 4, 3)
        nodes += [helper.make_node("Mul", ["t", "W2s"], ["m"]), helper.make_node("Relu", ["m"], ["f"])]
        I["Wo"], I["bo"] = _f32(rng, 2, n), _f32(rng, 2)
        return _model(nodes + _head(), [1, 3], I), (3,)
    if name.startswith("reduce"):
        I["Wc"], I["bc"] = _f32(rng, 3, 2, 3, 3, scale=0.5), _f32(rng, 3, scale=0.3)
        nodes = [_conv("x", "Wc", "bc", "c"), helper.make_node("Relu", ["c"], ["r"])]
        op, axes, keep, opset = {"reduce_sum_w_keep": ("ReduceSum", [3], 1, 13),
                                 "reduce_mean_hw": ("ReduceMean", [2, 3], 0, 13),
                                 "reduce_max_c": ("ReduceMax", [1], 1, 13),
                                 "reduce_min_ch": ("ReduceMin", [-3, 2], 0, 13),
                                 "reduce_sum_all18": ("ReduceSum", [1, 2, 3], 1, 18)}[name]
        if op == "ReduceSum" or opset >= 18:
            I["axes"] = _i64(*axes)
            nodes.append(helper.make_node(op, ["r", "axes"], ["f"], keepdims=keep))
        else:
            nodes.append(helper.make_node(op, ["r"], ["f"], axes=axes, keepdims=keep))
        full = np.zeros((1, 3, 4, 5))
        n = np.sum(full, axis=tuple(axes), keepdims=bool(keep)).size
        I["Wo"], I["bo"] = _f32(rng, 2, n), _f32(rng, 2)
        return _model(nodes + _head(), [1, 2, 4, 5], I, opset), (2, 4, 5)
    if name in ("depth_to_space_dcr", "depth_to_space_crd", "space_to_depth"):
        I["Wc"], I["bc"] = _f32(rng, 8, 1, 3, 3, scale=0.5), _f32(rng, 8, scale=0.3)
        nodes = [_conv("x", "Wc", "bc", "c"), helper.make_node("Relu", ["c"], ["r"])]
        if name == "space_to_depth":
            nodes.append(helper.make_node("SpaceToDepth", ["r"], ["f"], blocksize=2))
        else:
            nodes.append(helper.make_node("DepthToSpace", ["r"], ["f"], blocksize=2,
                                          mode="DCR" if name.endswith("dcr") else "CRD"))
        I["Wo"], I["bo"] = _f32(rng, 2, 8 * 4 * 4), _f32(rng, 2)
        return _model(nodes + _head(), [1, 1, 4, 4], I), (1, 4, 4)
    if name == "folded_constants":
        # a bias built in the graph: Range -> Tile -> Expand -> Slice -> Split; a shape from ConstantOfShape
        I["W1"], I["b1"] = _f32(rng, 6, 3), _f32(rng, 6, scale=0.5)
        I["start"], I["limit"], I["delta"] = np.array(0, np.int64), np.array(3, np.int64), np.array(1, np.int64)
        I["reps"], I["eshape"], I["one"] = _i64(2), _i64(2, 6), _i64(1)
        I["ss"], I["se"], I["sa"] = _i64(1), _i64(2), _i64(0)
        I["cs_shape"] = _i64(1)
        nodes = [helper.make_node("Range", ["start", "limit", "delta"], ["rg"]),
                 helper.make_node("Tile", ["rg", "reps"], ["tl"]),
                 helper.make_node("Cast", ["tl"], ["tf"], to=TensorProto.FLOAT),
                 helper.make_node("Expand", ["tf", "eshape"], ["ex"]),
                 helper.make_node("Slice", ["ex", "ss", "se", "sa"], ["sl"]),
                 helper.make_node("Split", ["sl"], ["p1", "p2"], axis=1),
                 helper.make_node("Concat", ["p2", "p1"], ["bias"], axis=1),
                 helper.make_node("ConstantOfShape", ["cs_shape"], ["neg1"],
                                  value=numpy_helper.from_array(np.array([-1], np.int64))),
                 helper.make_node("Concat", ["one", "neg1"], ["shape"], axis=0),
                 helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1),
                 helper.make_node("Add", ["h", "bias"], ["hb"]), helper.make_node("Relu", ["hb"], ["hr"]),
                 helper.make_node("Reshape", ["hr", "shape"], ["f"])]
        I["Wo"], I["bo"] = _f32(rng, 2, 6), _f32(rng, 2)
        return _model(nodes + _head(), [1, 3], I), (3,)
    raise KeyError(name)  # pragma: no cover


CASES = ["split_concat", "split_equal_add", "split18_uneven", "resize_2x_asymmetric_floor", "resize_sizes_half_pixel",
         "resize_align_corners_ceil", "resize_pytorch_half_pixel_prefer_ceil", "resize_downsample", "upsample_opset9",
         "tile", "expand", "reduce_sum_w_keep", "reduce_mean_hw", "reduce_max_c", "reduce_min_ch", "reduce_sum_all18",
         "depth_to_space_dcr", "depth_to_space_crd", "space_to_depth", "folded_constants"]


@pytest.mark.parametrize("name", CASES)
def test_shape_ops_match_onnxruntime_and_bounds_hold(name):
    rng = np.random.default_rng(CASES.index(name))
    model, shape = _case(name, rng)
    net = from_onnx(model)
    assert net.input_shape == shape
    x = np.random.default_rng(1).uniform(-1, 1, (30,) + shape)
    ref = _ort_outputs(model, x)
    ours = net.forward64(x)
    _assert_close(ours, ref, "forward64")
    _assert_close(affine_view_forward(net, x), ours, "affine_blocks")
    lo, hi = np.full(shape, -1.0).reshape(1, -1), np.full(shape, 1.0).reshape(1, -1)
    b = crown(net, torch.tensor(lo), torch.tensor(hi))
    ly, uy = b.output[0][0].numpy(), b.output[1][0].numpy()
    assert np.all(ours >= ly - 1e-9) and np.all(ours <= uy + 1e-9)


@pytest.mark.parametrize("name", ["split_concat", "tile", "expand"])
def test_shape_ops_optimum_matches_a_grid(name):
    rng = np.random.default_rng(50 + CASES.index(name))
    model, shape = _case(name, rng)
    net = from_onnx(model)
    lo, hi = np.array([-1.0, -0.5, 0.2]), np.array([1.0, 1.5, 0.2])
    axes = [np.linspace(lo[k], hi[k], 81 if lo[k] < hi[k] else 1) for k in range(3)]
    g = np.stack(np.meshgrid(*axes), -1).reshape(-1, 3)
    y = net.forward64(g)
    res = gpuopt.optimize(net, gpuopt.Box(lo, hi), "Y_0 - Y_1", timeout=20)
    grid_max = float((y[:, 0] - y[:, 1]).max())
    assert res.status == "optimal", res
    assert res.upper_bound >= grid_max - 1e-9
    assert res.best_value >= grid_max - 1e-3 * max(1.0, abs(grid_max))
    ort_y = _ort_outputs(model, res.x[None])[0]
    assert abs((ort_y[0] - ort_y[1]) - res.best_value) <= 1e-5 * max(1.0, abs(res.best_value))


def test_resize_indices_are_exact_or_refused():
    assert onnx_resize_axis(3, 2.0, None, "asymmetric", "floor") == (6, [0, 0, 1, 1, 2, 2])
    # half_pixel, 2x: x_original = (x + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, ...: nearest rounds
    assert onnx_resize_axis(3, 2.0, None, "half_pixel", "round_prefer_floor") == (6, [0, 0, 1, 1, 2, 2])
    # exact ties (4 -> 2, half_pixel: 0.5 and 2.5) fall by the mode
    assert onnx_resize_axis(4, 0.5, None, "half_pixel", "round_prefer_floor") == (2, [0, 2])
    assert onnx_resize_axis(4, None, 2, "half_pixel", "round_prefer_ceil") == (2, [1, 3])
    assert onnx_resize_axis(4, 0.5, None, "half_pixel", "ceil") == (2, [1, 3])
    assert onnx_resize_axis(3, None, 5, "align_corners", "round_prefer_floor") == (5, [0, 0, 1, 1, 2])
    assert onnx_resize_axis(3, None, 1, "pytorch_half_pixel", "floor") == (1, [0])
    assert onnx_resize_axis(2, None, 5, "tf_half_pixel_for_nn", "floor") == (5, [0, 0, 1, 1, 1])
    # onnxruntime's rule for Resize-10 and Upsample: truncation, ceil when downsampling
    assert onnx_resize_axis(4, 1.75, None, "asymmetric", "simple") == (7, [0, 0, 1, 1, 2, 2, 3])
    assert onnx_resize_axis(6, 0.5, None, "asymmetric", "simple") == (3, [0, 2, 4])
    # 7 -> 2: x_original of position 1 is 3.5 exactly (a tie, rounded up: 4) but 3.4999998 in float32
    with pytest.raises(ValueError, match="reads entry 4 exactly but 3 in float32"):
        onnx_resize_axis(7, None, 2, "asymmetric", "round_prefer_ceil")
    # 10 * 0.7f is 6.99999988 exactly, 7 in float32 arithmetic: the output size itself is ambiguous
    with pytest.raises(ValueError, match=r"output size .* \[6, 7\]"):
        onnx_resize_axis(10, 0.7, None, "half_pixel", "round_prefer_floor")


def _resize_probe(n_in, opset, **attrs):
    """A model that resizes ``x = 0..n_in-1`` along its last axis (outputs are the source indices)."""
    inits = {k: v for k, v in attrs.pop("inits").items()}
    ins = ["x"] + attrs.pop("ins")
    nodes = [helper.make_node("Resize", ins, ["y"], mode="nearest", **attrs)]
    return _model(nodes, [1, 1, 1, n_in], inits, opset, out_shape=None)


def test_resize_10_follows_onnxruntime_and_same_shape_resizes_copy():
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 1, 4)
    m = _resize_probe(4, 10, ins=["sc"], inits={"sc": np.array([1, 1, 1, 1.75], np.float32)})
    assert from_onnx(m).forward64(x).reshape(-1).tolist() == _ort_outputs(m, x).reshape(-1).tolist() \
        == [0, 0, 1, 1, 2, 2, 3]
    # 3 -> 3 (sizes): onnxruntime copies; the transform's own mapping (1, 2, 2) would move entries
    m = _resize_probe(3, 13, ins=["", "", "sz"], inits={"sz": _i64(1, 1, 1, 3)},
                      coordinate_transformation_mode="tf_half_pixel_for_nn", nearest_mode="round_prefer_ceil")
    with pytest.raises(UnsupportedLayerError, match="keeps its 3 entries"):
        from_onnx(m)
    m = _resize_probe(3, 13, ins=["", "", "sz"], inits={"sz": _i64(1, 1, 1, 3)})  # half_pixel: the identity
    assert from_onnx(m).forward64(x[..., :3]).reshape(-1).tolist() == [0, 1, 2]


@pytest.mark.parametrize("nearest", ["ceil", "round_prefer_ceil", "floor", "round_prefer_floor"])
def test_an_axis_kept_at_scale_1_beside_a_resized_one_is_copied_or_refused(nearest):
    """tf_half_pixel_for_nn (opset 11) maps position x of a scale-1 axis to x + 1/2, which ceil
    rounding moves to x + 1: onnxruntime copies such an axis unchanged even while another axis is
    resized, so that rounding is refused there (it read channel 1 for channel 0, a wrong unsat
    found by review); floor rounding gives the identity and imports."""
    x = np.array([1.0, 2.0, 1.0, 2.0], np.float32).reshape(1, 2, 1, 2)
    m = _model([helper.make_node("Resize", ["x", "roi", "sc"], ["y"], mode="nearest", nearest_mode=nearest,
                                 coordinate_transformation_mode="tf_half_pixel_for_nn")],
               [1, 2, 1, 2], {"roi": np.zeros(0, np.float32), "sc": np.array([1, 1, 1, 2], np.float32)}, opset=11)
    if nearest.endswith("ceil"):
        with pytest.raises(UnsupportedLayerError, match="axis 1 keeps its 2 entries"):
            from_onnx(m)
    else:
        got = from_onnx(m).forward64(x).reshape(-1)
        assert got.tolist() == _ort_outputs(m, x).reshape(-1).tolist()
def _resize_model(**attrs):
    rng = np.random.default_rng(0)
    I = {"Wc": _f32(rng, 1, 1, 1, 1), "bc": _f32(rng, 1), "roi": np.zeros(0, np.float32),
         "sc": np.array(attrs.pop("scales", [1, 1, 2, 2]), np.float32), "Wo": _f32(rng, 2, 36), "bo": _f32(rng, 2)}
    nodes = [_conv("x", "Wc", "bc", "c", pads=0), helper.make_node("Resize", ["c", "roi", "sc"], ["f"], **attrs)]
    return _model(nodes + _head(), [1, 1, 3, 3], I, out_shape=[1, 2])


def test_refusals_name_the_node_and_the_reason():
    with pytest.raises(UnsupportedLayerError, match=r"Resize.*mode='linear'"):
        from_onnx(_resize_model(mode="linear"))
    for ctm in ("tf_crop_and_resize", "half_pixel_symmetric"):  # the second: onnxruntime and ONNX differ
        with pytest.raises(UnsupportedLayerError, match=ctm):
            from_onnx(_resize_model(mode="nearest", coordinate_transformation_mode=ctm))
    with pytest.raises(UnsupportedLayerError, match="too large"):
        from_onnx(_resize_model(mode="nearest", scales=[1, 1, 1e9, 1]))
    with pytest.raises(UnsupportedLayerError, match=r"batch axis"):
        from_onnx(_resize_model(mode="nearest", scales=[2, 1, 2, 2]))
    rng = np.random.default_rng(0)
    base = {"W1": _f32(rng, 4, 3), "b1": _f32(rng, 4), "Wo": _f32(rng, 2, 8), "bo": _f32(rng, 2)}
    gemm = helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1)
    with pytest.raises(UnsupportedLayerError, match=r"Tile.*batch axis"):
        from_onnx(_model([gemm, helper.make_node("Tile", ["h", "reps"], ["f"])] + _head(),
                         [1, 3], out_shape=[1, 2], inits=dict(base, reps=_i64(2, 2))))
    with pytest.raises(UnsupportedLayerError, match=r"Expand.*batch axis"):
        from_onnx(_model([gemm, helper.make_node("Expand", ["h", "shape"], ["f"])] + _head(),
                         [1, 3], out_shape=[1, 2], inits=dict(base, shape=_i64(2, 4))))
    with pytest.raises(UnsupportedLayerError, match=r"ReduceSum.*batch axis"):
        from_onnx(_model([gemm, helper.make_node("ReduceSum", ["h", "axes"], ["f"])] + _head(),
                         [1, 3], out_shape=[1, 2], inits=dict(base, axes=_i64(0))))
    with pytest.raises(UnsupportedLayerError, match=r"Tile.*entries per sample"):
        from_onnx(_model([gemm, helper.make_node("Reshape", ["h", "s"], ["v"]),
                          helper.make_node("Tile", ["v", "reps"], ["f"])] + _head(),
                         [1, 3], out_shape=[1, 2], inits=dict(base, s=_i64(1, 4), reps=_i64(1, 10 ** 9))))
    with pytest.raises(UnsupportedLayerError, match=r"ConstantOfShape.*a constant of"):
        from_onnx(_model([helper.make_node("ConstantOfShape", ["cs"], ["c"]), gemm,
                          helper.make_node("Add", ["h", "c"], ["f"])] + _head(),
                         [1, 3], out_shape=[1, 2], inits=dict(base, cs=_i64(10 ** 6, 10 ** 6))))
    # a float Range: ONNX defines start + i delta, onnxruntime adds delta repeatedly; they differ here
    with pytest.raises(UnsupportedLayerError, match="Range"):
        from_onnx(_model([helper.make_node("Range", ["r0", "r1", "rd"], ["c"]), gemm,
                          helper.make_node("Add", ["h", "c"], ["f"])] + _head(), [1, 3], out_shape=[1, 2],
                         inits=dict(base, r0=np.array(0, np.float32), r1=np.array(3, np.float32),
                                    rd=np.array(0.1, np.float32))))
    with pytest.raises(InvalidInputError, match="mode 'dcr'"):
        from_onnx(_model([helper.make_node("Reshape", ["x", "s4"], ["v"]), helper.make_node(
            "DepthToSpace", ["v"], ["f"], blocksize=1, mode="dcr")] + _head(), [1, 3], out_shape=[1, 2],
            inits=dict(base, s4=_i64(1, 3, 1, 1), Wo=_f32(rng, 2, 3))))
    with pytest.raises(InvalidInputError, match=r"Split.*parts \[3, 3\]"):
        from_onnx(_model([gemm, helper.make_node("Split", ["h", "parts"], ["a", "f"], axis=1)] + _head(),
                         [1, 3], out_shape=[1, 2], inits=dict(base, parts=_i64(3, 3))))
