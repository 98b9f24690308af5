"""`gpuopt.optimize` and `gpuopt optimize`: the best value is attained inside the region, the bound
is never below the true maximum (brute force on tiny networks), and small problems close."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from gpuopt.cli import main
from gpuopt.errors import InvalidInputError
from gpuopt.network import Dense, Network, ReLU
from gpuopt.optimize import optimize, parse_objective
from gpuopt.regions import Box, L1Ball, LinfBall

from helpers import box_points, numpy_forward, random_dense_network
from test_cli import _write_tiny_onnx, _write_vnnlib


def _grid_max(net, lo, hi, c, n=201):
    g = [np.linspace(a, b, n) for a, b in zip(lo, hi)]
    X = np.stack([m.ravel() for m in np.meshgrid(*g)], axis=1)
    y, _ = numpy_forward(net, X)
    return float((y @ c).max()), X, y


@pytest.mark.parametrize("seed", range(6))
def test_optimize_closes_small_problems_and_brackets_the_true_maximum(seed):
    rng = np.random.default_rng(seed)
    net = random_dense_network(rng, 2, [8, 6], 3)
    lo = rng.normal(size=2)
    hi = lo + rng.uniform(0.5, 2.0, size=2)
    c = rng.normal(size=3)
    res = optimize(net, Box(lo, hi), c, timeout=30, seed=seed)
    grid, _, _ = _grid_max(net, lo, hi, c)
    assert res.status == "optimal", res
    assert res.upper_bound >= grid - 1e-9  # sound: never below any attained value
    assert res.best_value >= grid - 1e-3 * max(1.0, abs(grid))  # the grid is a sample: its max is a lower bound
    assert res.best_value <= res.upper_bound + 1e-9
    assert np.all(res.x >= lo) and np.all(res.x <= hi)
    y, _ = numpy_forward(net, res.x[None])
    assert res.best_value == pytest.approx(float(y[0] @ c), abs=1e-9)
    assert res.gap == pytest.approx(res.upper_bound - res.best_value)


def test_optimize_over_an_l1_ball_and_linear_rows():
    rng = np.random.default_rng(11)
    net = random_dense_network(rng, 2, [10], 2)
    centre, eps = np.array([0.4, 0.5]), 0.3
    res = optimize(net, L1Ball(centre, eps, 0.0, 1.0), [1.0, -1.0], constraints=([[1.0, 1.0]], [0.85]), timeout=30)
    assert res.status == "optimal"
    assert np.abs(res.x - centre).sum() <= eps + 1e-12 and res.x.sum() <= 0.85 + 1e-12
    # the exact maximum over the set, sampled densely
    g = np.linspace(0, 1, 401)
    X = np.stack([m.ravel() for m in np.meshgrid(g, g)], axis=1)
    X = X[(np.abs(X - centre).sum(1) <= eps) & (X.sum(1) <= 0.85)]
    y, _ = numpy_forward(net, X)
    best = float((y @ [1.0, -1.0]).max())
    assert res.upper_bound >= best - 1e-9
    assert res.best_value >= best - 1e-2


def test_known_maximum_of_a_hand_built_network():
    """f(x) = relu(x1 - x2) - 0.5 relu(x1 + x2 - 1) on [0, 1]^2: the maximum is 1 at (1, 0)."""
    net = Network([Dense([[1.0, -1.0], [1.0, 1.0]], [0.0, -1.0]), ReLU(), Dense([[1.0, -0.5]], [0.0])], (2,))
    res = optimize(net, LinfBall([0.5, 0.5], 0.5), "Y_0 + 2", timeout=20)
    assert res.status == "optimal"
    assert res.best_value == pytest.approx(3.0, abs=1e-9)
    assert res.x == pytest.approx([1.0, 0.0], abs=1e-9)
    assert 3.0 - 1e-9 <= res.upper_bound <= 3.0 + 1e-5


@pytest.mark.parametrize("text, c, d", [
    ("Y_0 - 2*Y_1", [1, -2, 0], 0.0),
    ("-Y_2 + 0.5", [0, 0, -1], 0.5),
    ("3 * Y_1 + Y_1 - 1e-1", [0, 4, 0], -0.1),
    ("  Y_0", [1, 0, 0], 0.0),
])
def test_parse_objective(text, c, d):
    cc, dd = parse_objective(text, 3)
    assert cc.tolist() == c and dd == pytest.approx(d)


@pytest.mark.parametrize("text, message", [
    ("", "the objective expression is empty"),
    ("Y_3", "the objective names Y_3, but the network has 3 outputs"),
    ("Y_0 Y_1", "cannot read the objective 'Y_0 Y_1' at position 4"),
    ("X_0", "cannot read the objective 'X_0' at position 0"),
    ("Y_0 * 2", "cannot read the objective 'Y_0 * 2' at position 4"),
])
def test_parse_objective_errors(text, message):
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        parse_objective(text, 3)


def test_optimize_arguments_are_validated():
    net = Network([Dense(np.eye(2), np.zeros(2)), ReLU(), Dense(np.ones((1, 2)), np.zeros(1))], (2,))
    box = Box(np.zeros(2), np.ones(2))
    cases = [
        (dict(network="x"), "`network` must be a gpuopt Network, got str"),
        (dict(region=(0, 1)), "`region` must be a Box, LinfBall or L1Ball, got tuple"),
        (dict(region=Box(np.zeros(3), np.ones(3))), "`region` must have 2 inputs (the network's), got 3"),
        (dict(objective=[1.0, 2.0]), "`objective` must have one coefficient per output (1), got 2"),
        (dict(objective=[np.nan]), "`objective` and `offset` must be finite"),
        (dict(constraints=[[1.0, 1.0]]), "`constraints` must be a pair (G, g) of numbers meaning G x <= g"),
        (dict(constraints=([[1.0]], [1.0])), "`constraints` G must have shape (1, 2), got (1, 1)"),
        (dict(timeout=0), "`timeout` must be a finite number of seconds > 0, got 0"),
    ]
    for change, message in cases:
        args = dict(network=net, region=box, objective=[1.0]) | {k: v for k, v in change.items()
                                                                  if k in ("network", "region", "objective")}
        kw = {k: v for k, v in change.items() if k not in ("network", "region", "objective")}
        with pytest.raises(InvalidInputError, match=re.escape(message)):
            optimize(args["network"], args["region"], args["objective"], **kw)
    with pytest.raises(InvalidInputError, match=re.escape("the L1 ball's `center` must lie inside the clip box")):
        L1Ball([2.0, 0.0], 1.0, 0.0, 1.0)


def test_cli_optimize_json_and_text(tmp_path, capsys):
    onnx_path = _write_tiny_onnx(tmp_path / "tiny.onnx")
    spec = _write_vnnlib(tmp_path / "r.vnnlib", 2, 2, -1.0, 1.0, "(<= Y_0 Y_1)")
    assert main([ "optimize", str(onnx_path), str(spec), "--maximize", "Y_0 - Y_1", "--timeout", "20", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"best_value", "upper_bound", "gap", "x", "status", "seconds", "sense"}
    assert out["status"] == "optimal" and len(out["x"]) == 2
    from gpuopt.io.onnx import from_onnx

    net = from_onnx(onnx_path)
    grid = max(float(y[0] - y[1]) for y in net.forward64(box_points(np.random.default_rng(0), -np.ones(2),
                                                                          np.ones(2), 400)))
    assert out["upper_bound"] >= grid - 1e-9 and out["best_value"] >= grid - 1e-6
    assert main(["optimize", str(onnx_path), str(spec), "--minimize", "Y_0 - Y_1", "--timeout", "20"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "optimal" and lines[-3].startswith("lower bound ")
    lowest = float(lines[-4].split()[-1])
    assert lowest <= min(float(y[0] - y[1]) for y in net.forward64(box_points(np.random.default_rng(0), -np.ones(2),
                                                                             np.ones(2), 400))) + 1e-9
    assert main(["optimize", str(onnx_path), str(spec), "--maximize", "Y_5"]) == 2
    assert "the objective names Y_5, but the network has 2 outputs" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse's own usage error
        main(["optimize", str(onnx_path), str(spec), "--maximize", "Y_0", "--formulation", "hull"])
    assert exit_info.value.code == 2
    assert "`formulation` must be one of" in capsys.readouterr().err


def test_review_findings_stay_fixed():
    """An LP stopped early bounds nothing; an all-zero constraint row; a centre on a row's
    boundary; a single-point region; numpy timeouts; option checks."""
    from gpuopt.milp.encode import encode
    from gpuopt.milp.highs import MilpStatus, solve_milp

    # a network with no unstable neuron: the model is an LP; a short limit must not give a bound
    rng = np.random.default_rng(0)
    W = np.abs(rng.normal(size=(60, 60)))
    net = Network([Dense(W, np.ones(60)), ReLU(), Dense(np.ones((1, 60)), np.zeros(1))], (60,))
    lo, hi = np.zeros(60), np.ones(60)
    model = encode(net.affine_blocks(), [(np.ones(60), W.sum(1) + 1)], (np.array([0.0]), np.array([1e6])), lo, hi,
                   [[-1.0]], [0.0])
    res = solve_milp(model, time_limit=1e-6, threshold=np.inf)
    assert res.status is MilpStatus.OPTIMAL or res.dual_bound == -np.inf
    # an all-zero row G x <= 1 on a net with no hidden layer
    lin = Network([Dense([[1.0, -1.0]], [0.0])], (2,))
    r = optimize(lin, Box(np.zeros(2), np.ones(2)), [1.0], constraints=([[0.0, 0.0]], [1.0]), timeout=10)
    assert r.status == "optimal" and r.best_value == pytest.approx(1.0)
    # the centre on the boundary x0 + x1 <= 1: the optimum (1, 0) is still reported exactly
    r = optimize(lin, Box(np.zeros(2), np.ones(2)), [1.0], constraints=([[1.0, 1.0]], [1.0]), timeout=10)
    assert r.best_value == pytest.approx(1.0, abs=1e-9) and r.status == "optimal"
    # a single point: x0 + x1 <= 0 on [0, 1]^2
    r = optimize(lin, Box(np.zeros(2), np.ones(2)), [1.0], constraints=([[1.0, 1.0]], [0.0]), timeout=10)
    assert r.x == pytest.approx([0.0, 0.0]) and r.best_value == pytest.approx(0.0)
    assert optimize(lin, Box(np.zeros(2), np.ones(2)), [1.0], timeout=np.float32(5)).status == "optimal"
    with pytest.raises(InvalidInputError, match=re.escape("the region is empty")):
        optimize(lin, Box(np.zeros(2), np.ones(2)), [1.0], constraints=([[1.0, 1.0]], [-1.0]), timeout=10)
    for kw, message in ((dict(formulation="bogus"), "`formulation` must be one of"),
                        (dict(walk_share=2), "`walk_share` must be a number in [0, 1], got 2"),
                        (dict(rtol=float("nan")), "`rtol` must be a finite number >= 0, got nan"),
                        (dict(offset="x"), "`offset` must be a number, got str"),
                        (dict(cuts="gomory"), "unknown cut kind(s) ['gomory']")):
        with pytest.raises(InvalidInputError, match=re.escape(message)):
            optimize(lin, Box(np.zeros(2), np.ones(2)), [1.0], timeout=10, **kw)


@pytest.mark.parametrize("cuts", ["all", "implication"])
def test_optimize_with_cuts_reaches_the_same_optimum(cuts):
    """20 inputs (beyond input splitting), three hidden layers: with valid inequalities in the
    MILP the optimum and its proof are the same as without, and no sampled point beats the bound."""
    rng = np.random.default_rng(77)
    net = random_dense_network(rng, 20, [12, 10, 8], 2)
    lo = rng.normal(size=20)
    hi = lo + rng.uniform(0.2, 0.6, size=20)
    c = np.array([1.0, -1.0])
    plain = optimize(net, Box(lo, hi), c, timeout=60)
    cut = optimize(net, Box(lo, hi), c, timeout=60, cuts=cuts)
    assert plain.status == cut.status == "optimal"
    assert "cuts" in cut.stage_seconds and "milp" in cut.stage_seconds
    assert cut.best_value == pytest.approx(plain.best_value, abs=1e-4 * max(1.0, abs(plain.best_value)))
    y, _ = numpy_forward(net, box_points(rng, lo, hi, 2000))
    assert cut.upper_bound >= float((y @ c).max()) - 1e-9


@pytest.mark.parametrize("seed", range(3))
def test_input_splitting_closes_few_input_networks(seed):
    """5 inputs, two hidden layers: the input-splitting stage proves the bound (the MILP is never
    needed), and no sampled point beats it."""
    rng = np.random.default_rng(200 + seed)
    net = random_dense_network(rng, 5, [12, 10], 3)
    lo = rng.normal(size=5)
    hi = lo + rng.uniform(0.2, 1.0, size=5)
    c = rng.normal(size=3)
    res = optimize(net, Box(lo, hi), c, timeout=60, seed=seed)
    assert res.status == "optimal" and "input_split" in res.stage_seconds and "milp" not in res.stage_seconds
    X = rng.uniform(lo, hi, size=(100000, 5))
    y, _ = numpy_forward(net, X)
    assert float((y @ c).max()) <= res.upper_bound + 1e-12
    y, _ = numpy_forward(net, res.x[None])
    assert res.best_value == pytest.approx(float(y[0] @ c), abs=1e-12)
    assert np.all(res.x >= lo) and np.all(res.x <= hi)


@pytest.mark.parametrize("extra", [["--cuts"], ["--cut-kinds", "implication"]])
def test_optimize_cli_cut_options(extra, tmp_path, capsys, monkeypatch):
    """``--cuts`` / ``--cut-kinds`` reach :func:`optimize`, which still closes the tiny network."""
    import importlib

    optimize_module = importlib.import_module("gpuopt.optimize")  # the package's `optimize` is the function

    real, seen = optimize_module.optimize, []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("cuts"))
        return real(*args, **kwargs)

    monkeypatch.setattr(optimize_module, "optimize", spy)
    onnx_path = _write_tiny_onnx(tmp_path / "tiny.onnx")
    spec = _write_vnnlib(tmp_path / "r.vnnlib", 2, 2, -1.0, 1.0, "(<= Y_0 Y_1)")
    assert main(["optimize", str(onnx_path), str(spec), "--maximize", "Y_0 - Y_1", "--timeout", "20"] + extra) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "optimal"
    assert seen == ["all" if extra == ["--cuts"] else "implication"]


@pytest.mark.parametrize("seed", range(3))
def test_input_splitting_cut_short_still_bounds_the_maximum(seed, monkeypatch):
    """Input splitting that runs out of boxes still bounds the maximum by the least bound of its
    open sub-boxes: never below the exact maximum (brute force), and below the root's bound. (The
    MILP is refused here, so the bound is input splitting's.)"""
    import functools
    import importlib

    from gpuopt.errors import SolverError
    from gpuopt.specs import OutputSpec

    from helpers import brute_force_min_margin

    bab_module = importlib.import_module("gpuopt.bab")
    highs_module = importlib.import_module("gpuopt.milp.highs")

    def refuse(*args, **kwargs):
        raise SolverError("refused in this test")

    monkeypatch.setattr(highs_module, "solve_milp", refuse)
    rng = np.random.default_rng(300 + seed)
    net = random_dense_network(rng, 4, [12, 10], 3)
    lo = rng.normal(size=4)
    hi = lo + rng.uniform(0.5, 1.5, size=4)
    c = rng.normal(size=3)
    exact = -float(brute_force_min_margin(net, lo, hi, OutputSpec([(-c[None], np.zeros(1))], 3)).per_disjunct[0])
    real, found = bab_module.SplitConfig, {}
    for max_boxes in (1, 4, 64):
        monkeypatch.setattr(bab_module, "SplitConfig", functools.partial(real, max_boxes=max_boxes))
        res = optimize(net, Box(lo, hi), c, timeout=60, seed=seed)
        assert "input_split" in res.stage_seconds
        assert exact - 1e-9 <= res.upper_bound and res.best_value <= exact + 1e-9, (res, exact)
        if res.status != "optimal":
            assert res.milp["status"] == "refused"
        found[max_boxes] = (res.status, res.upper_bound)
    assert found[1][0] == "timeout", found  # the root alone leaves the bound open
    assert found[64][1] < found[1][1], found
    if found[4][0] == "timeout":  # cut short after 4 boxes (seed 1): their bounds already tighten it
        assert found[4][1] < found[1][1], found


def _identity_onnx(path):
    """``y = relu(x) - relu(-x) = x`` on one input, as an ONNX file."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from helpers import onnx_model

    inits = [numpy_helper.from_array(np.array([[1.0], [-1.0]], np.float32), "W1"),
             numpy_helper.from_array(np.array([[1.0, -1.0]], np.float32), "W2")]
    nodes = [helper.make_node("Gemm", ["x", "W1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "id", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])], inits)
    onnx.save(onnx_model(graph), path)
    return path


def test_reported_points_lie_in_the_exact_vnnlib_region(tmp_path):
    """The VNNLIB box is rounded outwards for the bounds, but the reported point must satisfy the
    exact (decimal, strict) bounds: 0.1 is not a float64, and ``(> X_0 0)`` excludes 0."""
    from fractions import Fraction

    from gpuopt.optimize import optimize_instance

    net = _identity_onnx(tmp_path / "id.onnx")
    head = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n"
    spec = tmp_path / "a.vnnlib"
    spec.write_text(head + "(assert (>= X_0 0.1))\n(assert (<= X_0 1))\n")
    res = optimize_instance(net, spec, "-1e16*Y_0 + 1e15", timeout=10)
    assert Fraction(float(res.x[0])) >= Fraction(1, 10)
    assert res.best_value <= 0.0 <= res.upper_bound
    spec.write_text(head + "(assert (> X_0 0))\n(assert (<= X_0 1))\n")
    res = optimize_instance(net, spec, "Y_0", sense="min", timeout=10)
    assert res.x[0] > 0 and res.best_value > 0 and res.upper_bound <= res.best_value


def test_optimize_refuses_overflow_and_empty_regions(tmp_path):
    from gpuopt.optimize import optimize_instance

    absolute = Network([Dense(np.array([[1.0], [-1.0]]), np.zeros(2)), ReLU(), Dense(np.array([[1.0, 1.0]]),
                                                                                      np.zeros(1))], (1,))
    # the objective overflows float64 at points of the region: refused, never "optimal" with best inf
    with pytest.raises(InvalidInputError, match="objective's value at a point of the region is inf"):
        optimize(absolute, L1Ball([0.5], 1.5, [-1.0], [2.0]), [1e308], timeout=5)
    with pytest.raises(InvalidInputError, match="too wide"):
        optimize(absolute, Box([-1.7e308], [1.7e308]), [1.0], timeout=5)
    # a huge but finite region: a sound answer
    tiny = Network([Dense(np.array([[1.0], [-1.0]]), np.zeros(2)), ReLU(),
                    Dense(np.array([[1e-10, 1e-10]]), np.zeros(1))], (1,))
    res = optimize(tiny, Box([-1e300], [1e300]), [1.0], timeout=5)
    assert res.best_value == pytest.approx(1e290) and res.upper_bound >= 1e290
    # a file whose every term is constantly false holds no region
    net = _identity_onnx(tmp_path / "id.onnx")
    spec = tmp_path / "f.vnnlib"
    spec.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (>= X_0 0))\n(assert (<= X_0 1))\n"
                    "(assert (<= 1 0))\n")
    with pytest.raises(InvalidInputError, match="describes no input region"):
        optimize_instance(net, spec, "Y_0", timeout=5)
    assert main(["optimize", str(net), str(spec), "--maximize", "Y_0"]) == 2


def test_optimize_inner_box_is_validated():
    rng = np.random.default_rng(0)
    net = random_dense_network(rng, 2, [4], 1)
    with pytest.raises(InvalidInputError, match="`inner` must lie inside"):
        optimize(net, Box([0.0, 0.0], [1.0, 1.0]), [1.0], inner=Box([-0.5, 0.0], [1.0, 1.0]), timeout=5)
    with pytest.raises(InvalidInputError, match="`inner` must have 2 inputs"):
        optimize(net, Box([0.0, 0.0], [1.0, 1.0]), [1.0], inner=Box([0.0], [1.0]), timeout=5)
    res = optimize(net, Box([0.0, 0.0], [1.0, 1.0]), [1.0], inner=Box([0.5, 0.5], [0.6, 0.6]), timeout=10)
    assert np.all(res.x >= 0.5) and np.all(res.x <= 0.6)


def test_a_model_the_encoder_refuses_still_gives_an_anytime_answer(monkeypatch):
    """When the MILP cannot be built (big-M constants from bounds that overflow), optimize reports
    its other bounds with the refusal, instead of failing."""
    import importlib

    encode_module = importlib.import_module("gpuopt.milp.encode")

    def refuse(*args, **kwargs):
        raise InvalidInputError("`layer 0 pre-activation` bounds must be finite to build big-M constants")

    monkeypatch.setattr(encode_module, "encode", refuse)
    rng = np.random.default_rng(1)
    net = random_dense_network(rng, 20, [16, 16], 2)
    lo, hi = -np.ones(20), np.ones(20)
    res = optimize(net, Box(lo, hi), [1.0, -1.0], timeout=5)
    assert res.milp is not None and res.milp["status"] == "refused" and "walk" not in res.stage_seconds
    y, _ = numpy_forward(net, rng.uniform(lo, hi, size=(20000, 20)))
    assert float((y[:, 0] - y[:, 1]).max()) <= res.upper_bound and res.best_value <= res.upper_bound
