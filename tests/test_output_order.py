"""A final Softmax or LogSoftmax comes off when every spec row compares outputs
(:mod:`gpuopt.output_order`): verdicts on such networks agree with brute force on the logits,
at margins of a thousandth either side of 0; rows that do not compare outputs, a Softmax whose
logits may underflow, and any other layer arrangement keep the network as it is (interval
bounds and the attack), proven only where no sampled point reaches the unsafe region;
counterexamples report the original network's output."""

from __future__ import annotations

import math
from decimal import Decimal, getcontext
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

import gpuopt
from gpuopt import Box, OutputSpec, Status, verify
from gpuopt.check import _forward_with_error_layers
from gpuopt.errors import UnsupportedLayerError
from gpuopt.io.onnx import from_onnx
from gpuopt.network import Dense, Flatten, LogSoftmax, Network, Reshape, Sigmoid, Softmax, Tanh, from_torch
from gpuopt.output_order import SOFTMAX_SPREAD, reduce_output_order
from gpuopt.problem import Problem

from helpers import brute_force_min_margin, numpy_forward, onnx_model, random_dense_network, shifted_spec
from test_onnx_import import _f32

DELTAS = (0.02, 1e-3, -1e-3, -0.02)


def _pair_case(seed: int):
    """A small ReLU net with 4 logits, a box, and the unsafe region "output i is below output j
    (and below k)": rows ``e_i - e_j`` (and ``e_i - e_k``), right-hand sides 0; its exact minimum
    margin over the box."""
    rng = np.random.default_rng(seed)
    n_in = int(rng.integers(2, 4))
    net = random_dense_network(rng, n_in, [int(rng.integers(4, 8))], 4)
    i, j, k = rng.permutation(4)[:3]
    rows = [np.eye(4)[i] - np.eye(4)[j]] + ([np.eye(4)[i] - np.eye(4)[k]] if seed % 2 else [])
    spec = OutputSpec([(np.array(rows), np.zeros(len(rows)))], 4)
    centre = rng.normal(size=n_in)
    lo, hi = centre - 0.5, centre + 0.5
    return net, lo, hi, spec, int(i), brute_force_min_margin(net, lo, hi, spec).per_disjunct[0]


def _moved(net: Network, i: int, shift: float, final=None) -> Network:
    """``net`` with output ``i``'s bias raised by ``shift`` (every row of the spec has ``+1`` on
    output ``i``: the margin moves by ``shift``), then ``final``."""
    *body, last = net.layers
    bias = last.bias.copy()
    bias[i] += shift
    return Network(list(body) + [Dense(last.weight, bias)] + ([final] if final is not None else []), net.input_shape)


@pytest.mark.parametrize("final", [Softmax, LogSoftmax])
def test_pairwise_verdicts_agree_with_brute_force_on_the_logits(final):
    decided = total = 0
    for seed in range(6):
        base, lo, hi, spec, i, m = _pair_case(seed)
        for delta in DELTAS:
            logits = _moved(base, i, delta - m)
            net = _moved(base, i, delta - m, final())
            assert reduce_output_order([Problem(net, Box(lo, hi), spec)]) is not None
            v = verify(net, Box(lo, hi), spec, timeout=20)
            total += 1
            if v.status is Status.UNSAT:
                assert delta > 0, (seed, delta)
                assert "taken to the logits" in v.message
                decided += 1
            elif v.status is Status.SAT:
                assert delta < 0, (seed, delta)
                x = np.asarray(v.counterexample)
                assert np.all((x >= lo) & (x <= hi))
                z = numpy_forward(logits, x[None])[0][0]
                assert np.all(spec.disjuncts[0][0] @ z <= 0)  # on the logits, exactly the unsafe rows
                y = net.forward64(x[None])[0]
                np.testing.assert_allclose(v.output, y, rtol=0, atol=0)  # the original network's output
                if final is Softmax:
                    assert abs(y.sum() - 1) < 1e-12
                decided += 1
    assert decided >= 0.9 * total, (decided, total)


def test_logsoftmax_rows_that_sum_to_zero_keep_any_right_hand_side():
    """``y_i - y_j <= b`` and ``y_i + y_k - 2 y_j <= b`` are the same rows on the logits for a
    LogSoftmax, whatever ``b``: verdicts at shifted right-hand sides agree with brute force."""
    decided = total = 0
    for seed in range(5):
        rng = np.random.default_rng(50 + seed)
        logits = random_dense_network(rng, 3, [6], 4)
        net = Network(list(logits.layers) + [LogSoftmax()], (3,))
        i, j, k = rng.permutation(4)[:3]
        e = np.eye(4)
        spec = OutputSpec([(np.array([e[i] - e[j]]), np.zeros(1)),
                           (np.array([e[i] + e[k] - 2 * e[j], e[k] - e[i]]), np.zeros(2))], 4)
        lo, hi = -0.4 * np.ones(3), 0.4 * np.ones(3)
        minima = brute_force_min_margin(logits, lo, hi, spec).per_disjunct
        for delta in DELTAS:
            s = shifted_spec(spec, minima, delta)
            assert any(b[0] != 0 for _, b in s.disjuncts)
            assert reduce_output_order([Problem(net, Box(lo, hi), s)]) is not None
            v = verify(net, Box(lo, hi), s, timeout=20)
            total += 1
            assert v.status is not (Status.SAT if delta > 0 else Status.UNSAT), (seed, delta, v.message)
            if v.status is Status.SAT:
                x = np.asarray(v.counterexample)
                z = numpy_forward(logits, x[None])[0][0]
                assert any(np.all(A @ z - b <= 0) for A, b in s.disjuncts)
            decided += v.status in (Status.SAT, Status.UNSAT)
    assert decided >= 0.9 * total, (decided, total)


def _problem(net, spec, lo=-np.ones(3), hi=np.ones(3)):
    return Problem(net, Box(lo, hi), spec)


def test_rows_that_do_not_compare_outputs_are_not_reduced_and_never_proven():
    rng = np.random.default_rng(3)
    logits = random_dense_network(rng, 3, [6], 4)
    soft = Network(list(logits.layers) + [Softmax()], (3,))
    log = Network(list(logits.layers) + [LogSoftmax()], (3,))
    e = np.eye(4)
    refused = [
        (soft, OutputSpec([(np.array([e[0] - e[1]]), np.array([0.1]))], 4)),  # y_0 - y_1 <= 0.1: not a sign
        (soft, OutputSpec([(np.array([2 * e[0] - e[1]]), np.zeros(1))], 4)),  # unequal weights
        (soft, OutputSpec([(np.array([e[0] - e[1] + e[2] - e[3]]), np.zeros(1))], 4)),  # four outputs
        (soft, OutputSpec([(np.array([-e[0]]), np.array([-0.99]))], 4)),  # a probability threshold
        (log, OutputSpec([(np.array([-e[0]]), np.array([0.5]))], 4)),  # a log-probability threshold
        (log, OutputSpec([(np.array([e[0] - 0.5 * e[1]]), np.zeros(1))], 4)),  # sums to 1/2
        # one row qualifies, the other disjunct's does not: nothing comes off
        (soft, OutputSpec([(np.array([e[0] - e[1]]), np.zeros(1)), (np.array([e[2]]), np.array([0.0]))], 4)),
    ]
    x = np.random.default_rng(30).uniform(-1, 1, (20000, 3))
    for net, spec in refused:
        assert reduce_output_order([_problem(net, spec)]) is None, spec.disjuncts
        v = verify(net, Box(-np.ones(3), np.ones(3)), spec, timeout=2)
        assert "taken to the logits" not in v.message
        if v.status is Status.UNSAT:  # by interval bounds on the network as it is: nothing sampled reaches it
            y = net.forward64(x)
            assert v.decided_by in ("interval", "input-split")
            assert all(np.all((A @ y.T - b[:, None]).max(axis=0) > 0) for A, b in spec.disjuncts)
    # the exact coefficients decide: 0.1 y_0 - 0.1 y_1 (decimal 0.1, not a float) compares
    tenth = Fraction(1, 10)
    spec = OutputSpec([(np.array([[tenth, -tenth, 0, 0]], dtype=object), np.zeros(1))], 4)
    assert reduce_output_order([_problem(soft, spec)]) is not None
    # and 1/3 y_0 + 1/3 y_1 - 2/3 y_2 sums to exactly 0 (its float64 rounding does not)
    third = Fraction(1, 3)
    spec = OutputSpec([(np.array([[third, third, -2 * third, 0]], dtype=object), np.array([0.25]))], 4)
    assert reduce_output_order([_problem(log, spec)]) is not None


def test_other_arrangements_keep_the_attack_alone():
    rng = np.random.default_rng(4)
    body = list(random_dense_network(rng, 3, [6], 4).layers)
    pair = OutputSpec([(np.array([[1.0, -1.0, 0, 0]]), np.zeros(1))], 4)
    nets = [
        Network(body + [Softmax(), Dense(np.eye(4), np.zeros(4))], (3,)),  # not the final layer
        Network(body + [Sigmoid()], (3,)),  # saturates in float: not taken off
        Network(body + [Tanh()], (3,)),
        Network([body[0], Tanh()] + body[2:] + [Softmax()], (3,)),  # a hidden smooth layer stays
    ]
    x = np.random.default_rng(31).uniform(-1, 1, (20000, 3))
    for net in nets:
        assert reduce_output_order([_problem(net, pair)]) is None, net
        v = verify(net, Box(-np.ones(3), np.ones(3)), pair, timeout=2)
        if v.status is Status.UNSAT:  # only by interval bounds, and only if no sampled point reaches it
            y = net.forward64(x)
            assert v.decided_by in ("interval", "input-split") and np.all(y[:, 0] - y[:, 1] > 0)


def test_softmax_whose_logits_may_underflow_is_not_taken_off():
    """Logits more than :data:`SOFTMAX_SPREAD` below their group's largest underflow in float32,
    where two of them tie at 0 whatever their order: such a Softmax stays (a LogSoftmax does not
    underflow and comes off)."""
    rng = np.random.default_rng(6)
    logits = random_dense_network(rng, 3, [6], 4)
    pair = OutputSpec([(np.array([[1.0, -1.0, 0, 0]]), np.zeros(1))], 4)
    for scale, expect in ((1.0, True), (10 * SOFTMAX_SPREAD, False)):
        *body, last = logits.layers
        scaled = list(body) + [Dense(last.weight * scale, last.bias * scale)]
        assert (reduce_output_order([_problem(Network(scaled + [Softmax()], (3,)), pair)]) is not None) == expect
        assert reduce_output_order([_problem(Network(scaled + [LogSoftmax()], (3,)), pair)]) is not None


def test_groups_of_a_softmax_along_the_last_of_two_axes():
    """Softmax over each row of a ``(2, 3)`` tensor, then Flatten (outputs 0-2 and 3-5): a row
    that compares outputs of one group qualifies, across groups it does not; the legacy ONNX form
    ``Flatten, Softmax, Reshape`` keeps the whole output as one group."""
    rng = np.random.default_rng(7)
    first = Dense(rng.normal(size=(6, 3)), rng.normal(size=6))
    grouped = Network([first, Reshape((2, 3)), Softmax(), Flatten()], (3,))
    e = np.eye(6)
    within = OutputSpec([(np.array([e[3] - e[5]]), np.zeros(1))], 6)
    across = OutputSpec([(np.array([e[2] - e[3]]), np.zeros(1))], 6)
    red = reduce_output_order([_problem(grouped, within)])
    assert red is not None and [type(layer) for layer in red.problems[0].network.layers] == [Dense, Reshape, Flatten]
    x = rng.uniform(-1, 1, (5, 3))
    np.testing.assert_allclose(red.problems[0].network.forward64(x), x @ first.weight.T + first.bias, rtol=1e-14)
    assert reduce_output_order([_problem(grouped, across)]) is None
    legacy = Network([first, Flatten(), Softmax(), Reshape((6,))], (3,))
    assert reduce_output_order([_problem(legacy, across)]) is not None


def test_several_problems_share_one_reduced_network():
    rng = np.random.default_rng(8)
    net = Network(list(random_dense_network(rng, 3, [5], 3).layers) + [LogSoftmax()], (3,))
    spec = OutputSpec([(np.array([[1.0, -1.0, 0]]), np.zeros(1))], 3)
    probs = [Problem(net, Box(-np.ones(3) * r, np.ones(3) * r), spec) for r in (0.1, 0.2)]
    red = reduce_output_order(probs)
    assert red.problems[0].network is red.problems[1].network
    assert reduce_output_order(probs).problems[0].network is red.problems[0].network  # cached
    assert red.original is net and red.layer == "LogSoftmax"


# ------------------------------------------------------------------------------ importers
def test_onnx_logsoftmax_along_another_axis_is_refused_by_name():
    import onnx

    nodes = [helper.make_node("LogSoftmax", ["x"], ["s"], axis=1), helper.make_node("Flatten", ["s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    with pytest.raises(UnsupportedLayerError, match="LogSoftmax"):
        from_onnx(onnx.shape_inference.infer_shapes(onnx_model(graph, 13)))


def test_onnx_classifier_with_a_final_softmax_is_verified_from_files(tmp_path):
    """An ONNX classifier ending in Softmax and a VNNLIB robustness property (true class beats
    every other): decided like the same network without the Softmax."""
    import onnx

    rng = np.random.default_rng(11)
    W1, b1, W2, b2 = _f32(rng, 8, 3), _f32(rng, 8), _f32(rng, 3, 8), _f32(rng, 3)
    verdicts = {}
    for final in (True, False):
        nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["a"], transB=1), helper.make_node("Relu", ["a"], ["r"]),
                 helper.make_node("Gemm", ["r", "W2", "b2"], ["z" if final else "y"], transB=1)]
        if final:
            nodes.append(helper.make_node("Softmax", ["z"], ["y"], axis=-1))
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                                  [numpy_helper.from_array(a, name) for a, name in
                                   ((W1, "W1"), (b1, "b1"), (W2, "W2"), (b2, "b2"))])
        path = tmp_path / f"net{int(final)}.onnx"
        onnx.save(onnx_model(graph, 13), path)
        x0 = np.zeros(3)
        label = int(np.argmax(from_onnx(path).forward64(x0[None])[0]))
        for eps in (0.05, 2.0):
            vnn = tmp_path / f"p{eps}.vnnlib"
            lines = [f"(declare-const X_{i} Real)" for i in range(3)] + [f"(declare-const Y_{i} Real)" for i in range(3)]
            lines += [f"(assert (>= X_{i} {-eps}))\n(assert (<= X_{i} {eps}))" for i in range(3)]
            others = [f"(and (>= Y_{j} Y_{label}))" for j in range(3) if j != label]
            lines.append(f"(assert (or {' '.join(others)}))")
            vnn.write_text("\n".join(lines) + "\n")
            v = gpuopt.verify_instance(path, vnn, timeout=20)
            verdicts[(final, eps)] = v.status
            if final and v.status is Status.SAT:
                y = from_onnx(path).forward64(np.asarray(v.counterexample)[None])[0]
                assert abs(v.output.sum() - 1) < 1e-12 and np.allclose(v.output, y)
    assert verdicts[(True, 0.05)] is verdicts[(False, 0.05)] is Status.UNSAT
    assert verdicts[(True, 2.0)] is verdicts[(False, 2.0)] is Status.SAT


def test_torch_log_softmax_modules_and_functions():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 5), nn.Linear(5, 4)
            self.out = nn.LogSoftmax(dim=1)

        def forward(self, x):
            h = self.b(torch.relu(self.a(x)))
            return torch.cat([self.out(h), torch.log_softmax(h * 2, dim=-1), h.log_softmax(-1)], dim=1)

    torch.manual_seed(0)
    model = M().double().eval()
    net = from_torch(model, (3,))
    assert sum(isinstance(layer, LogSoftmax) for layer in net.layers) == 3
    x = torch.rand(30, 3, dtype=torch.float64) * 6 - 3
    with torch.no_grad():
        assert np.abs(net.forward64(x.numpy()) - model(x).numpy()).max() <= 1e-13

    class Bad(nn.Module):
        def forward(self, x):
            return torch.log_softmax(x.reshape(-1, 2, 2), dim=1).flatten(1)

    with pytest.raises(UnsupportedLayerError, match="log_softmax along dimension 1"):
        from_torch(Bad().eval(), (4,))


def test_logsoftmax_check_bound_holds_against_60_digit_arithmetic():
    """The layer-wise check's error bound for a LogSoftmax after a Dense contains the distance
    from the float64 value to the exact one, at small and at widely spread logits."""
    getcontext().prec = 60
    rng = np.random.default_rng(12)
    for scale in (1.0, 40.0):
        dense = Dense(rng.normal(size=(5, 3)) * scale, rng.normal(size=5))
        net = Network([dense, LogSoftmax()], (3,))
        for _ in range(10):
            x = rng.uniform(-2, 2, 3)
            y, e = _forward_with_error_layers(net, x)
            z = [sum(Decimal(float(w)) * Decimal(float(v)) for w, v in zip(row, x)) + Decimal(float(b))
                 for row, b in zip(dense.weight, dense.bias)]
            lse = sum(v.exp() for v in z).ln()
            exact = [v - lse for v in z]
            assert all(abs(Decimal(float(a)) - b) <= Decimal(float(c)) for a, b, c in zip(y, exact, e))
            assert np.all(e < 1e-9 * (1 + np.abs(y)))
    # an input error moves a LogSoftmax output by at most twice the largest input error
    e_in = _forward_with_error_layers(Network([dense], (3,)), x)[1]
    assert np.all(e <= 2 * e_in.max() + 1e-9) and math.isfinite(float(e.max()))


def test_radius_of_a_softmax_classifier_is_its_logits_radius():
    rng = np.random.default_rng(14)  # (its radius, about 0.08, lies inside eps_max)
    logits = random_dense_network(rng, 2, [6], 3)
    x0 = np.array([0.5, 0.5])
    label = int(np.argmax(logits.forward64(x0[None])[0]))
    ref = gpuopt.certify_radius(logits, x0, label, eps_max=0.5, timeout=30)
    assert ref.status == "exact"
    for final in (Softmax(), LogSoftmax()):
        net = Network(list(logits.layers) + [final], (2,))
        got = gpuopt.certify_radius(net, x0, label, eps_max=0.5, timeout=30)
        assert got.status == "exact" and got.lower == pytest.approx(ref.lower, rel=2e-3, abs=2e-6)
        y = net.forward64(got.x_adv[None])[0]
        assert np.delete(y, label).max() >= y[label]  # another class at least ties
    # a target margin other than 1 is no order comparison: refused as before
    with pytest.raises(gpuopt.NotPiecewiseLinearError):
        gpuopt.certify_radius(Network(list(logits.layers) + [Softmax()], (2,)), x0, label,
                              target=(label + 1) % 3, margin=2.0, eps_max=0.5, timeout=5)


def test_bulk_runs_decide_a_softmax_classifier_like_its_logits():
    """``verify_dataset`` (the hybrid engine with a worker): each sample's status on a Softmax
    classifier is the one on its logits, and a counterexample record carries probabilities."""
    from gpuopt.runs import verify_dataset

    rng = np.random.default_rng(15)
    logits = random_dense_network(rng, 2, [8], 3)
    x = rng.uniform(0.2, 0.8, (6, 2))
    y = np.argmax(logits.forward64(x), axis=1)
    runs = {}
    for name, net in (("logits", logits), ("softmax", Network(list(logits.layers) + [Softmax()], (2,)))):
        records = list(verify_dataset(net, x, y, eps=[0.01, 0.3], timeout=20, workers=1))
        runs[name] = {r["key"]: r for r in records}
    assert runs["logits"].keys() == runs["softmax"].keys() and len(runs["logits"]) == 12
    for key, rec in runs["softmax"].items():
        assert rec["status"] == runs["logits"][key]["status"], key
        if rec["status"] == "unsat":
            assert "taken to the logits" in rec["message"]
        if rec["status"] == "sat":
            assert abs(sum(rec["output"]) - 1) < 1e-12  # the original network's output
    statuses = {r["status"] for r in runs["softmax"].values()}
    assert {"unsat", "sat"} <= statuses


@pytest.mark.parametrize("final", [Softmax, LogSoftmax])
def test_a_final_layer_that_reads_an_earlier_branch_stays(final):
    """The (log-)softmax reads layer 0 while layer 1 is a dead branch: taken off, the dead branch
    would become the output (a wrong unsat here, a wrong sat the other way round)."""
    live = Dense(np.array([[1.0], [0.0]]), np.array([0.0, 0.0]))  # logits (x, 0)
    dead = Dense(np.array([[0.0], [0.0]]), np.array([1.0, 0.0]))  # constant (1, 0)
    spec = OutputSpec([(np.array([[1.0, -1.0]]), np.array([0.0]))], 2)  # unsafe: y_0 <= y_1 (at x <= 0)
    box = Box(np.array([-1.0]), np.array([1.0]))
    for a, b, truth in ((live, dead, Status.SAT), (dead, live, Status.UNSAT)):
        net = Network([a, b, final()], (1,), inputs=[(-1,), (-1,), (0,)])
        assert reduce_output_order([Problem(net, box, spec)]) is None
        v = verify(net, box, spec, timeout=10)
        assert v.status is not (Status.UNSAT if truth is Status.SAT else Status.SAT), (final, v.message)

    class Unused(torch.nn.Module):  # the same from torch: a branch computed and never used
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(1, 2), nn.Linear(1, 2)

        def forward(self, x):
            z, _ = self.fc1(x), self.fc2(x)
            return torch.log_softmax(z, -1) if final is LogSoftmax else torch.softmax(z, -1)

    model = Unused().double().eval()
    with torch.no_grad():
        model.fc1.weight.copy_(torch.tensor([[1.0], [0.0]]))
        model.fc1.bias.zero_()
        model.fc2.weight.zero_()
        model.fc2.bias.copy_(torch.tensor([1.0, 0.0]))
    v = verify(from_torch(model, (1,)), box, spec, timeout=10)
    assert v.status is not Status.UNSAT


def test_softmax_margins_are_sound_on_the_probabilities():
    """Through a Softmax the logits' margin is not the probabilities': the verdict's lower margin
    is mapped to a sound one (positive, at most the sampled minimum), and a counterexample's
    upper margin is the probabilities' own."""
    net = Network([Dense(np.array([[1.0], [0.0]]), np.array([10.0, 0.0])), Softmax()], (1,))  # z = (x + 10, 0)
    box = Box(np.array([-1.0]), np.array([1.0]))
    y = net.forward64(np.linspace(-1, 1, 2001)[:, None])
    v = verify(net, box, OutputSpec([(np.array([[1.0, -1.0]]), np.array([0.0]))], 2), timeout=10)
    assert v.status is Status.UNSAT and 0 < v.margin_lower <= float(np.min(y[:, 0] - y[:, 1]))
    v = verify(net, box, OutputSpec([(np.array([[-1.0, 1.0]]), np.array([0.0]))], 2), timeout=10)
    assert v.status is Status.SAT and v.margin_upper == pytest.approx(float(v.output[1] - v.output[0]), abs=1e-15)
    assert -1 <= v.margin_upper < 0


def test_radius_refusal_says_why_the_softmax_stays():
    rng = np.random.default_rng(16)
    logits = random_dense_network(rng, 2, [6], 3)
    *body, last = logits.layers
    steep = Network(list(body) + [Dense(last.weight * 500, last.bias), Softmax()], (2,))
    with pytest.raises(gpuopt.NotPiecewiseLinearError, match="a smaller eps_max may qualify"):
        gpuopt.certify_radius(steep, np.zeros(2), 0, eps_max=50.0, clip=None, timeout=5)
