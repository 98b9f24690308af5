"""Bad input to the Python API gets a precise gpuopt error, never a raw numpy/torch exception or
a silently different network: non-deterministic ONNX operators, torch models in training mode,
and malformed regions and shapes."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from gpuopt import Box, LinfBall
from gpuopt.errors import InvalidInputError, UnsupportedLayerError
from gpuopt.io.onnx import from_onnx
from gpuopt.network import Dense, from_torch
from helpers import onnx_model

RNG = np.random.default_rng(0)
W = RNG.standard_normal((2, 3)).astype(np.float32)
TRAINING = "the output is random in training mode; export the model in inference mode (model.eval())"


# ---------------------------------------------------------------------- ONNX: random operators
def _onnx(nodes, inits=None, *, opset=13, extra_inputs=()):
    """A float32 model ``x (1, 3) -> y``; ``inits`` maps names to arrays (initializers)."""
    inits = {"Wt": W.T.copy(), **(inits or {})}
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])]
        + [helper.make_tensor_value_info(n, t, s) for n, t, s in extra_inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    return onnx_model(graph, opset)


def _gemm(src="x", dst="g"):
    return helper.make_node("MatMul", [src, "Wt"], [dst], name="fc")


def _dropout(*inputs, **attrs):
    return helper.make_node("Dropout", list(inputs), ["y"], name="drop", **attrs)


TRUE, FALSE = np.array(True), np.array(False)
RATIO = np.array(0.5, dtype=np.float32)

NON_DETERMINISTIC = {
    "dropout_training_mode_true": (
        _onnx([_gemm(), _dropout("g", "r", "t")], {"r": RATIO, "t": TRUE}, opset=13),
        "node 'drop' (op Dropout) is not supported: training_mode is True: " + TRAINING,
    ),
    "dropout_training_mode_constant_node_true": (
        _onnx([_gemm(), helper.make_node("Constant", [], ["t"], value=numpy_helper.from_array(TRUE)),
               _dropout("g", "", "t")], opset=13),
        "node 'drop' (op Dropout) is not supported: training_mode is True: " + TRAINING,
    ),
    "dropout_training_mode_from_data": (
        _onnx([_gemm(), helper.make_node("Identity", ["g"], ["t"]), _dropout("g", "r", "t")], {"r": RATIO}),
        "node 'drop' (op Dropout) is not supported: training_mode input 't' is not a constant: " + TRAINING,
    ),
    "dropout_training_mode_overridable_input": (
        _onnx([_gemm(), _dropout("g", "r", "t")], {"r": RATIO, "t": FALSE},
              extra_inputs=[("t", TensorProto.BOOL, [])]),
        "node 'drop' (op Dropout) is not supported: training_mode input 't' is a graph input "
        "(its initializer can be overridden at run time): " + TRAINING,
    ),
    "dropout_opset6_training_by_default": (
        _onnx([_gemm(), _dropout("g")], opset=6),
        "node 'drop' (op Dropout) is not supported: is_test=0 (training mode) in opset 6: " + TRAINING,
    ),
    "dropout_training_mode_on_constants": (  # Dropout on a weight: still random
        _onnx([helper.make_node("Dropout", ["Wt", "r", "t"], ["Wd"], name="drop"),
               helper.make_node("MatMul", ["x", "Wd"], ["y"])], {"r": RATIO, "t": TRUE}),
        "node 'drop' (op Dropout) is not supported: training_mode is True: " + TRAINING,
    ),
    **{
        f"{op}_like_on_data_path": (
            _onnx([_gemm(), helper.make_node(op, ["g"], ["n"], name="rnd"),
                   helper.make_node("Add", ["g", "n"], ["y"])], opset=15),
            f"node 'rnd' (op {op}) is not supported: its output is random, not a fixed function of its inputs",
        )
        for op in ("RandomNormalLike", "RandomUniformLike", "Bernoulli")
    },
    **{
        f"{op}_added_to_data": (
            _onnx([_gemm(), helper.make_node(op, [], ["n"], name="rnd", shape=[1, 2]),
                   helper.make_node("Add", ["g", "n"], ["y"])]),
            f"node 'rnd' (op {op}) is not supported: its output is random, not a fixed function of its inputs",
        )
        for op in ("RandomNormal", "RandomUniform")
    },
    "Multinomial_on_data_path": (
        _onnx([_gemm(), helper.make_node("Multinomial", ["g"], ["n"], name="rnd", dtype=TensorProto.INT32),
               helper.make_node("Cast", ["n"], ["y"], to=TensorProto.FLOAT)]),
        "node 'rnd' (op Multinomial) is not supported: its output is random, not a fixed function of its inputs",
    ),
}


@pytest.mark.parametrize("case", sorted(NON_DETERMINISTIC))
def test_onnx_non_deterministic_ops_are_refused(case):
    model, message = NON_DETERMINISTIC[case]
    onnx.checker.check_model(model)
    with pytest.raises(UnsupportedLayerError, match=re.escape(message)) as info:
        from_onnx(model)
    node, op = re.match(r"node '(\w+)' \(op (\w+)\)", message).groups()
    assert (info.value.node, info.value.op_type) == (node, op)


@pytest.mark.parametrize("inputs, inits, opset, attrs", [
    (("g",), {}, 13, {}),
    (("g", "r"), {"r": RATIO}, 13, {}),
    (("g", "r", "t"), {"r": RATIO, "t": FALSE}, 13, {}),
    (("g", "", "t"), {"t": FALSE}, 12, {}),
    (("g",), {}, 6, {"is_test": 1}),
    (("g",), {}, 10, {}),  # opsets 7-11 have no training mode
])
def test_onnx_inference_dropout_is_the_identity(inputs, inits, opset, attrs):
    net = from_onnx(_onnx([_gemm(), _dropout(*inputs, **attrs)], inits, opset=opset))
    assert len(net.layers) == 1 and isinstance(net.layers[0], Dense)
    np.testing.assert_array_equal(net.layers[0].weight, W.astype(np.float64))


# ---------------------------------------------------------------------- from_torch: training mode
TRAIN_MSG = ("is in training mode (BatchNorm uses batch statistics, Dropout is random); call model.eval() "
             "first, or pass allow_training_mode=True to verify the eval-mode network")


def _bn_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Dropout(0.5), nn.Linear(3, 2))
    with torch.no_grad():
        model[1].running_mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
        model[1].running_var.copy_(torch.tensor([0.5, 2.0, 1.5]))
    return model.double()


def _set_modes(model, case):
    if case == "eval_but_dropout":
        model.eval()
        model[3].train()
    elif case == "train_but_children_eval":
        model.eval()
        model.training = True
    return model


@pytest.mark.parametrize("case, where", [
    ("train", "`model`"),
    ("eval_but_dropout", "`model` (submodule '3')"),
    ("train_but_children_eval", "`model`"),
])
def test_from_torch_refuses_training_mode_without_changing_it(case, where):
    model = _set_modes(_bn_model().train(), case)
    modes = [m.training for m in model.modules()]
    with pytest.raises(InvalidInputError, match=re.escape(f"{where} {TRAIN_MSG}")):
        from_torch(model, (4,))
    assert [m.training for m in model.modules()] == modes


def test_from_torch_allow_training_mode_gives_the_eval_network():
    model = _bn_model().train()
    net = from_torch(model, (4,), allow_training_mode=True)
    assert all(m.training for m in model.modules())  # untouched
    x = np.random.default_rng(1).uniform(-1, 1, (5, 4))
    with torch.no_grad():
        ref = model.eval()(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(net.forward64(x), ref, rtol=1e-12, atol=1e-12)


def test_from_torch_unsupported_module_is_reported_before_training_mode():
    with pytest.raises(UnsupportedLayerError, match=re.escape("module '1' of type GELU is not supported")):
        from_torch(nn.Sequential(nn.Linear(2, 2), nn.GELU()).train(), (2,))


# ---------------------------------------------------------------------- from_torch: arguments
def _small():
    return nn.Sequential(nn.Linear(4, 2)).eval()


SHAPE_MSG = "`input_shape` must be a non-empty sequence of positive integers, got "


@pytest.mark.parametrize("kwargs, error, message", [
    ({"input_shape": "4"}, InvalidInputError, SHAPE_MSG + "'4'"),
    ({"input_shape": ("4",)}, InvalidInputError, SHAPE_MSG + "('4',)"),
    ({"input_shape": None}, InvalidInputError, SHAPE_MSG + "None"),
    ({"input_shape": ()}, InvalidInputError, SHAPE_MSG + "()"),
    ({"input_shape": (0,)}, InvalidInputError, SHAPE_MSG + "(0,)"),
    ({"input_shape": (-4,)}, InvalidInputError, SHAPE_MSG + "(-4,)"),
    ({"input_shape": (2, -2)}, InvalidInputError, SHAPE_MSG + "(2, -2)"),
    ({"input_shape": (4.5,)}, InvalidInputError, SHAPE_MSG + "(4.5,)"),
    ({"input_shape": (True,)}, InvalidInputError, SHAPE_MSG + "(True,)"),
    ({"input_shape": (4,), "mean": "0.5"}, InvalidInputError, "`mean` must be an array of real numbers, got str '0.5'"),
    ({"input_shape": (4,), "std": [1, 2j, 1, 1]}, InvalidInputError, "`std` must be real, got complex values"),
    ({"input_shape": (4,), "std": 0.0}, InvalidInputError, "`std` must be non-zero everywhere"),
    ({"input_shape": (4,), "std": float("inf")}, InvalidInputError, "`mean` and `std` must be finite"),
])
def test_from_torch_argument_validation(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        from_torch(_small(), **kwargs)


@pytest.mark.parametrize("shape", ["12", ("3",), (3.0,), (0,), (-3,), ()])
def test_from_onnx_input_shape_validation(shape):
    model = _onnx([_gemm(), _dropout("g")])
    with pytest.raises(InvalidInputError, match=re.escape(SHAPE_MSG + repr(shape))):
        from_onnx(model, input_shape=shape)


def test_from_torch_refuses_a_non_module():
    with pytest.raises(InvalidInputError, match=re.escape("`model` must be a torch.nn.Module, got function")):
        from_torch(lambda x: x, (4,))


@pytest.mark.parametrize("shape", [4, (4,), [4], torch.Size([4]), (np.int64(4),)])
def test_from_torch_accepts_integer_shapes(shape):
    assert from_torch(_small(), shape).input_shape == (4,)


# ---------------------------------------------------------------------- regions
REAL = "must be an array of real numbers"
RAGGED = "must be an array of real numbers with a regular shape, got a ragged sequence"


@pytest.mark.parametrize("lower, upper, message", [
    ("abc", [1.0], f"`lower` {REAL}, got str 'abc'"),
    ("0", [1.0], f"`lower` {REAL}, got str '0'"),
    ([0.0], b"1", f"`upper` {REAL}, got bytes b'1'"),
    (None, [1.0], f"`lower` {REAL}, got None"),
    ([0.0], [None], f"`upper` {REAL}, got an element of type NoneType"),
    ([0.0, "a"], [1.0, 1.0], f"`lower` {REAL}, got dtype <U32"),
    ([0.0, {}], [1.0, 1.0], f"`lower` {REAL}, got an element of type dict"),
    ([[0.0, 0.0], [0.0]], [1.0, 1.0, 1.0], f"`lower` {RAGGED}"),
    ([0.0, [0.0]], [1.0, 1.0], f"`lower` {RAGGED}"),
    ([0.0, 0.0], [1.0 + 0j, 1.0], "`upper` must be real, got complex values"),
    (np.zeros(2, dtype=complex), np.ones(2), "`lower` must be real, got complex values"),
    ([0.0, 0.5j], [1.0, 1.0], "`lower` must be real, got complex values"),
    (torch.zeros(2, dtype=torch.complex64), [1.0, 1.0], "`lower` must be real, got a complex tensor"),
    ([0.0, np.nan], [1.0, 1.0], "`lower` contains NaN"),
    ([0.0, 0.0], [1.0, np.inf], "Box bounds must be finite"),
    ([0.0, 0.0], [1.0], "`lower` and `upper` must have the same size, got 2 and 1"),
    ([], [], "a Box must have at least one dimension"),
    ([0.0, 2.0], [1.0, 1.0], "the box is empty: lower[1] = 2.0 > upper[1] = 1.0"),
])
def test_box_validation(lower, upper, message):
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        Box(lower, upper)


CENTER = np.full(4, 0.5)


@pytest.mark.parametrize("center, kwargs, message", [
    ("0.5", {"eps": 0.1}, f"`center` {REAL}, got str '0.5'"),
    (None, {"eps": 0.1}, f"`center` {REAL}, got None"),
    ([[0.5], [0.5, 0.5]], {"eps": 0.1}, f"`center` {RAGGED}"),
    (CENTER + 0j, {"eps": 0.1}, "`center` must be real, got complex values"),
    ([], {"eps": 0.1}, "`center` must have at least one entry"),
    (CENTER, {"eps": "0.1"}, "`eps` must be a real number, got str '0.1'"),
    (CENTER, {"eps": None}, "`eps` must be a real number, got None"),
    (CENTER, {"eps": 0.1j}, "`eps` must be real, got complex values"),
    (CENTER, {"eps": True}, "`eps` must be a real number, got bool True"),
    (CENTER, {"eps": [0.1, 0.2]}, "`eps` must be a single real number, got an array of shape (2,)"),
    (CENTER, {"eps": -0.1}, "`eps` must be a finite number >= 0, got -0.1"),
    (CENTER, {"eps": np.inf}, "`eps` must be a finite number >= 0, got inf"),
    (CENTER, {"eps": 0.1, "clip_lower": np.zeros(3)},
     "`clip_lower` must be a scalar or have the center's size 4, got size 3"),
    (CENTER, {"eps": 0.1, "clip_upper": np.ones((2, 3))},
     "`clip_upper` must be a scalar or have the center's size 4, got size 6"),
    (CENTER, {"eps": 0.1, "clip_lower": "0"}, f"`clip_lower` {REAL}, got str '0'"),
    (CENTER, {"eps": 0.1, "clip_upper": 1j}, "`clip_upper` must be real, got complex values"),
    (CENTER, {"eps": 0.1, "clip_upper": np.nan}, "`clip_upper` contains NaN"),
    (CENTER, {"eps": 0.1, "clip_lower": 0.7},
     "`clip_lower`/`clip_upper` leave the ball empty (the center lies outside the clip box by more than eps)"),
    (CENTER, {"eps": 0.1, "clip_lower": 1.0, "clip_upper": 0.0},
     "`clip_lower` exceeds `clip_upper` (at index 0): the clip box is empty"),
    (CENTER, {"eps": 0.1, "clip_lower": [0.0, 0.0, 0.6, 0.0], "clip_upper": 0.5},
     "`clip_lower` exceeds `clip_upper` (at index 2): the clip box is empty"),
])
def test_linf_ball_validation(center, kwargs, message):
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        LinfBall(center, **kwargs)


def test_linf_ball_canonicalises_clip_bounds():
    ball = LinfBall(torch.full((2, 2), 0.5), np.float32(0.25), clip_lower=[0.0, 0.0, 0.3, 0.0],
                    clip_upper=np.array([1.0]))
    assert ball.eps == 0.25 and isinstance(ball.eps, float)
    assert ball.clip_upper == 1.0 and isinstance(ball.clip_upper, float)
    assert not ball.clip_lower.flags.writeable
    box = ball.to_box()
    np.testing.assert_array_equal(box.lower, [0.25, 0.25, 0.3, 0.25])
    np.testing.assert_array_equal(box.upper, [0.75] * 4)
    # infinite clip bounds mean "no clip"
    np.testing.assert_array_equal(LinfBall([0.0], 1.0, clip_lower=-np.inf).to_box().lower, [-1.0])
