"""Exact decisions at the boundary and MILP numerics (issue: never a wrong answer).

Each test is built so that the float64 shortcut it guards against gives the wrong answer.
"""

import re
from fractions import Fraction

import numpy as np
import pytest

from gpuopt import Box, OutputSpec, Problem, VerifyConfig, verify
from gpuopt.check import _exact_forward, check_counterexample
from gpuopt.milp.encode import encode_bigm
from gpuopt.milp.highs import MilpStatus, _scale, solve_milp
from gpuopt.network import Dense, Network, ReLU
from helpers import onnx_model


def affine_net(w, b):
    w = np.atleast_2d(np.asarray(w, dtype=np.float64))
    return Network([Dense(w, np.asarray(b, dtype=np.float64))], input_shape=(w.shape[1],))


# ------------------------------------------------------------------------------------------------
# the counterexample check


def test_margin_in_the_rounding_band_is_decided_exactly():
    # y = 3 x - 0.30000000000000004 at x = 0.1: float64 gives exactly 0.0, the exact value is
    # 3 * 0.1000000000000000055... - 0.3000000000000000444... = -2.8e-17 < 0
    net = affine_net([[3.0]], [-0.30000000000000004])
    x = np.array([0.1])
    assert float(net.forward64(x[None])[0, 0]) == 0.0
    (y_exact,) = _exact_forward(net, x, 10**6)
    assert y_exact == 3 * Fraction(0.1) - Fraction(0.30000000000000004) < 0
    box = Box(x, x)
    below = Problem(net, box, OutputSpec([([[1.0]], [0.0])], 1))    # unsafe: y <= 0 (true: y < 0)
    above = Problem(net, box, OutputSpec([([[-1.0]], [0.0])], 1))   # unsafe: y >= 0 (false)
    c = check_counterexample(below, x)
    assert c.ok and c.how == "exact"
    c = check_counterexample(above, x)
    assert not c.ok and c.how == "exact"  # the old float check answered sat here


@pytest.mark.parametrize("strict, expected", [(False, True), (True, False)])
def test_strict_rows_need_a_strict_margin(strict, expected):
    net = affine_net([[1.0]], [0.0])
    spec = OutputSpec([([[1.0]], [0.0], [strict])], 1)  # y <= 0, or y < 0
    c = check_counterexample(Problem(net, Box([0.0], [0.0]), spec), np.array([0.0]))
    assert c.ok is expected


def test_point_is_clipped_into_the_exact_input_set():
    net = affine_net([[1.0]], [0.0])
    spec = OutputSpec([([[-1.0]], [-0.5])], 1)  # unsafe: y >= 0.5
    outer, inner = Box([0.0], [0.5]), Box([0.0], [np.nextafter(0.5, 0)])
    c = check_counterexample(Problem(net, outer, spec, inner=inner), np.array([0.5]))
    assert c.x[0] == np.nextafter(0.5, 0) and not c.ok
    assert check_counterexample(Problem(net, outer, spec, inner=None), np.array([0.5])).how == "outside"


def test_exact_coefficients_round_the_right_hand_side_up():
    # unsafe: y <= 1/10 (not the float 0.1): the float row's b is rounded up so proofs stay sound
    spec = OutputSpec([([[1]], [Fraction(1, 10)], [True])], 1)
    b = spec.disjuncts[0][1][0]
    assert Fraction(b) >= Fraction(1, 10)
    assert spec.exact_unsafe([0.1]) == (False, Fraction(0.1) - Fraction(1, 10))  # 0.1 > 1/10


def test_inexact_coefficients_pad_the_proof_rhs():
    spec = OutputSpec([([[Fraction(1, 10)]], [0])], 1)  # 0.1 as a coefficient is rounded
    assert not spec.coefficients_exact
    (b,) = spec.proof_rhs([1e6])
    assert b[0] >= 1e6 * abs(Fraction(1, 10) - Fraction(0.1))


# ------------------------------------------------------------------------------------------------
# MILP numerics


def wide_input_network():
    """y = relu(1 - 5e-10 x0) + relu(x1) - 1 on x0 in [0, 1e7], x1 in [0, 1]: min y = -0.005 at
    x0 = 1e7, x1 = 0, reached only through the 5e-10 entry that HiGHS drops below 1e-9."""
    net = Network([Dense([[-5e-10, 0.0], [0.0, 1.0]], [1.0, 0.0]), ReLU(), Dense([[1.0, 1.0]], [-1.0])],
                  input_shape=(2,))
    return net, Box([0.0, 0.0], [1e7, 1.0])


def test_milp_keeps_the_tiny_coefficient_of_a_wide_input():
    net, box = wide_input_network()
    blocks = net.affine_blocks()
    pre = [(np.array([0.995, 0.0]) - 1e-9, np.array([1.0, 1.0]))]
    model = encode_bigm(blocks, pre, (np.array([-0.01]), np.array([1.0])), box.lower, box.upper,
                        np.array([[1.0]]), np.array([0.0]))
    res = solve_milp(model, time_limit=10, threshold=1.0)
    assert res.status is MilpStatus.OPTIMAL
    assert res.dual_bound == pytest.approx(-0.005, abs=1e-9)
    assert res.solution[0] == pytest.approx(1e7)


def test_verify_finds_the_counterexample_behind_a_tiny_coefficient():
    net, box = wide_input_network()
    spec = OutputSpec([([[1.0]], [-0.004])], 1)  # unsafe: y <= -0.004, reached for x0 > 8e6
    config = VerifyConfig(use_attack=False, use_input_split=False, use_relu_split=False, alpha_steps=0)
    v = verify(net, box, spec, timeout=30, config=config)
    assert v.status.value == "sat" and v.counterexample[0] > 8e6


def test_scaling_removes_tiny_entries_by_widening_their_rows():
    from gpuopt.milp.encode import MilpModel
    import scipy.sparse as sp

    # min v1 s.t. v1 - 1e-12 v0 = 0, v0 in [0, 1], v1 free in [-1, 1]: optimum 0 (v0 = 0)
    A = sp.csr_matrix(np.array([[-1e-12, 1.0]]))
    model = MilpModel(c=np.array([0.0, 1.0]), offset=0.0, A=A, row_lower=np.zeros(1), row_upper=np.zeros(1),
                      col_lower=np.array([0.0, -1.0]), col_upper=np.array([1.0, 1.0]),
                      integrality=np.zeros(2, dtype=bool), x_index=np.arange(1), y_index=np.arange(1, 2),
                      t_index=None, layers=(), spec_A=np.ones((1, 1)), spec_b=np.zeros(1))
    sc = _scale(model)
    assert sc.dropped == 1 and sc.A.nnz == 1
    # the row now admits v1 in [-1e-12, 1e-12]: a relaxation, so its optimum is a lower bound
    assert sc.row_lower[0] * 1.0 <= -1e-12 and sc.row_upper[0] >= 1e-12
    res = solve_milp(model, time_limit=5, threshold=1.0)
    assert res.dual_bound <= 0.0 and res.dual_bound >= -2e-12


# ------------------------------------------------------------------------------------------------
# deadlines


def test_a_solver_that_overruns_is_abandoned_at_the_deadline(monkeypatch):
    """HiGHS's MIP presolve checks neither its time limit nor any callback: a stubbed run() that
    blocks for 3 s stands in for it. The pipeline must answer at its deadline, not after."""
    import time

    import highspy

    from gpuopt.milp.highs import _highspy

    _highspy()  # the banner-silencing first Highs() is built with the real class
    monkeypatch.setattr(highspy.Highs, "run", lambda self: time.sleep(3.0))
    net, box = wide_input_network()
    spec = OutputSpec([([[1.0]], [-0.004])], 1)
    config = VerifyConfig(use_attack=False, use_input_split=False, use_relu_split=False, alpha_steps=0)
    t0 = time.monotonic()
    v = verify(net, box, spec, timeout=1.0, config=config)
    elapsed = time.monotonic() - t0
    assert v.status.value == "timeout"
    assert elapsed < 1.0 + 0.5, f"the verdict came {elapsed:.2f} s after the call (timeout 1 s)"
    assert "abandoned" in (v.milp_status or "")


# ------------------------------------------------------------------------------------------------
# errors, not crashes, from the API


@pytest.mark.parametrize("make, message", [
    (lambda: VerifyConfig(device="bogus"), "`device` 'bogus': not a device (expected cpu, cuda or cuda:N)"),
    (lambda: VerifyConfig(device="meta"), "`device` 'meta': unsupported device (expected cpu, cuda or cuda:N)"),
    (lambda: VerifyConfig(device=3), "`device` must be a device name (expected cpu, cuda or cuda:N), got int"),
    (lambda: VerifyConfig(alpha_steps="20"), "`alpha_steps` must be an integer, got '20'"),
    (lambda: __import__("gpuopt").robustness("a", 3), "`label` must be an integer, got 'a'"),
    (lambda: __import__("gpuopt").targeted(0, 1.5, 3), "`target` must be an integer, got 1.5"),
    (lambda: OutputSpec([([[1.0, 2.0], [3.0]], [0.0, 0.0])], 2), "disjunct 0: `A` must be a rectangular array"),
    (lambda: OutputSpec([([[1j]], [0.0])], 1), "disjunct 0: `A` must be a rectangular array of real numbers"),
    (lambda: verify(*wide_input_network(), OutputSpec([([[1.0]], [0.0])], 1), timeout="5"),
     "`timeout` must be a number of seconds or None, got str"),
])
def test_api_misuse_raises_a_precise_error(make, message):
    from gpuopt import InvalidInputError

    with pytest.raises(InvalidInputError, match=re.escape(message)):
        make()


def test_an_extreme_but_valid_box_gets_a_verdict():
    rng = np.random.default_rng(0)
    net = Network([Dense(rng.normal(size=(8, 17)), np.zeros(8)), ReLU(), Dense(rng.normal(size=(2, 8)), np.zeros(2))],
                  input_shape=(17,))
    big = np.full(17, 1.7e308)
    v = verify(net, Box(-big, big), OutputSpec([([[1.0, -1.0]], [0.0])], 2), timeout=10)
    assert v.status.value in ("sat", "unknown", "timeout")  # the bounds overflow: never an error


# ------------------------------------------------------------------------------------------------
# underflow and overflow (found by an adversarial review)


@pytest.mark.parametrize("net, box, spec", [
    # y = x on [0, 5e-324], unsafe y > 0: halving the box's width underflowed to a [0, 0] bound
    (affine_net([[1.0]], [0.0]), Box([0.0], [5e-324]), OutputSpec([([[-1.0]], [0.0], [True])], 1)),
    # y = x on [0, 2.5e-323], unsafe y >= 2.5e-323
    (affine_net([[1.0]], [0.0]), Box([0.0], [2.5e-323]), OutputSpec([([[-1.0]], [-2.5e-323])], 1)),
    # y = 1e-170 relu(1e-160 x), unsafe y > 0: the product underflows to 0 in float64
    (Network([Dense([[1e-160]], [0.0]), ReLU(), Dense([[1e-170]], [0.0])], input_shape=(1,)), Box([0.0], [1.0]),
     OutputSpec([([[-1.0]], [0.0], [True])], 1)),
], ids=["subnormal-box", "subnormal-threshold", "underflowing-product"])
def test_underflow_never_proves_a_reachable_region(net, box, spec):
    from gpuopt.bounds import crown, ibp
    import torch

    v = verify(net, box, spec, timeout=10)
    assert v.status.value != "unsat"
    lo, hi = torch.tensor(box.lower[None]), torch.tensor(box.upper[None])
    for bounds in (ibp(net, lo, hi), crown(net, lo, hi)):
        assert float(bounds.output[1][0, 0]) >= float(net.forward64(box.upper[None])[0, 0])


def test_crown_covers_products_that_underflow_on_huge_inputs():
    # y = -1e-170 relu(1e-170 x) at x = 1e300 is -1e-40, but the back-substituted coefficient
    # -1e-340 underflows to -0.0: without the underflow terms CROWN's lower bound was 0 > y. Two
    # boxes in one batch (the terms are bounded over all boxes), the huge one second
    from gpuopt.bounds import alpha_crown_bounds, crown
    import torch

    net = Network([Dense([[1e-170]], [0.0]), ReLU(), Dense([[-1e-170]], [0.0])], input_shape=(1,))
    lo, hi = torch.tensor([[0.0], [1e300]], dtype=torch.float64), torch.tensor([[1.0], [1e300]], dtype=torch.float64)
    y = net.forward64(np.array([[0.0], [1.0], [1e300]]))[:, 0]
    assert y[2] < -1e-41
    base = crown(net, lo, hi)
    for bounds in (base, alpha_crown_bounds(net, lo, hi, base, steps=3)):
        l, u = (t[:, 0].numpy() for t in bounds.output)
        assert l[0] <= min(y[0], y[1]) and u[0] >= max(y[0], y[1])
        assert l[1] <= y[2] <= u[1]


def test_an_overflowing_forward_pass_gets_a_verdict():
    net = Network([Dense([[1e200]], [0.0]), ReLU(), Dense([[1e200]], [0.0])], input_shape=(1,))
    v = verify(net, Box([0.0], [1.0]), OutputSpec([([[1.0]], [-1.0])], 1), timeout=10)  # y <= -1: unreachable
    assert v.status.value in ("unsat", "unknown", "timeout")


# ------------------------------------------------------------------------------------------------
# parameters that the ONNX importer had to round when folding (found by an adversarial review)


def _onnx_chain(tmp_path, name, nodes, inits):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    tensors = []
    for key, value in inits.items():
        t = numpy_helper.from_array(np.array(value, dtype=np.float32))
        t.name = key
        tensors.append(t)
    graph = helper.make_graph([helper.make_node(*n) for n in nodes], "g",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 1])], tensors)
    path = tmp_path / f"{name}.onnx"
    onnx.save(onnx_model(graph), path)
    return path


FOLDS = {
    # y = x / 3 - 1 at x = 3 is exactly 0, so y < 0 is unreachable; fl(1/3) < 1/3 made it "sat"
    "div": ([("Gemm", ["X", "W", "B"], ["H"]), ("Div", ["H", "c"], ["D"]), ("Sub", ["D", "one"], ["Y"])],
            {"W": [[1.0]], "B": [0.0], "c": [3.0], "one": [1.0]}, (3.0, 3.0), "(< Y_0 0)", "unsat"),
    # y = x + 2^30 + 2^-30 at x = -2^30 is 2^-30 > 0: y <= 0 is unreachable; the folded bias lost 2^-30
    "add": ([("Gemm", ["X", "W", "B"], ["H"]), ("Add", ["H", "t"], ["Y"])],
            {"W": [[1.0]], "B": [2.0 ** 30], "t": [2.0 ** -30]}, (-2.0 ** 30, -2.0 ** 30), "(<= Y_0 0)", "unsat"),
    # y = x + 2^60 - 1 - 2^60 = x - 1 in real arithmetic: y <= -0.5 is reached at x = 0; the fold gives y = x
    "cancel": ([("Gemm", ["X", "W", "B"], ["H"]), ("Add", ["H", "a"], ["H2"]), ("Add", ["H2", "m"], ["H3"]),
                ("Add", ["H3", "b"], ["Y"])],
               {"W": [[1.0]], "B": [0.0], "a": [2.0 ** 60], "m": [-1.0], "b": [-2.0 ** 60]}, (0.0, 1.0),
               "(<= Y_0 -0.5)", "sat"),
}


@pytest.mark.parametrize("case", sorted(FOLDS))
def test_rounded_folds_never_give_a_wrong_answer(tmp_path, case):
    import gpuopt

    nodes, inits, (lo, hi), atom, truth = FOLDS[case]
    onnx_path = _onnx_chain(tmp_path, case, nodes, inits)
    net = gpuopt.from_onnx(onnx_path)
    assert net.param_errors is not None  # the importer knows it rounded
    spec = tmp_path / f"{case}.vnnlib"
    spec.write_text(f"(declare-const X_0 Real)(declare-const Y_0 Real)(assert (>= X_0 {lo!r}))"
                    f"(assert (<= X_0 {hi!r}))(assert {atom})")
    status = gpuopt.verify_instance(onnx_path, spec, timeout=10).status.value
    assert status in (truth, "unknown", "timeout")


def test_exact_folds_keep_exact_parameters(tmp_path):
    import pickle

    import gpuopt

    nodes = [("Gemm", ["X", "W", "B"], ["H"]), ("Div", ["H", "c"], ["D"]), ("Add", ["D", "t"], ["Y"])]
    net = gpuopt.from_onnx(_onnx_chain(tmp_path, "exact", nodes, {"W": [[3.0]], "B": [1.0], "c": [4.0], "t": [0.5]}))
    assert net.param_errors is None and net.layers[0].weight[0, 0] == 0.75 and net.layers[0].bias[0] == 0.75
    inexact = gpuopt.from_onnx(_onnx_chain(tmp_path, "inexact", nodes, {"W": [[1.0]], "B": [1.0], "c": [3.0], "t": [0.5]}))
    again = pickle.loads(pickle.dumps(inexact))
    assert again.param_errors is not None
    assert np.array_equal(again.param_errors[0][0], inexact.param_errors[0][0])


def test_a_balls_box_contains_the_exact_ball_and_its_inner_box_lies_inside():
    from gpuopt import LinfBall

    rng = np.random.default_rng(3)
    center = rng.uniform(-1, 1, 200)
    eps = 0.1
    ball = LinfBall(center, eps)
    outer, inner = ball.to_box(), ball.inner_box()
    for c, lo, hi, ilo, ihi in zip(center, outer.lower, outer.upper, inner.lower, inner.upper):
        lo_e, hi_e = Fraction(c) - Fraction(eps), Fraction(c) + Fraction(eps)
        assert Fraction(lo) <= lo_e <= Fraction(ilo) and Fraction(ihi) <= hi_e <= Fraction(hi)
    # the plain float sums round inwards somewhere: the old box would have missed part of the ball
    assert np.any(center - eps > outer.lower) or np.any(center + eps < outer.upper)
    problem = Problem(affine_net(np.eye(200)[:1], [0.0]), ball, OutputSpec([([[1.0]], [0.0])], 1))
    assert np.array_equal(problem.inner.lower, inner.lower) and np.array_equal(problem.region.upper, outer.upper)


def test_scaling_never_overflows_the_objective():
    """A column whose scaled cost would overflow float64 keeps the factor 1 (HiGHS otherwise
    takes an infinite cost and reports a finite bound of it)."""
    from gpuopt.milp.encode import MilpModel
    import scipy.sparse as sp

    # max 1e308 * v0 over v0 in [0, 4] (min of the negation): the column's factor would be 4
    A = sp.csr_matrix(np.array([[1.0, -1.0]]))
    model = MilpModel(c=np.array([-1e308, 0.0]), offset=0.0, A=A, row_lower=np.zeros(1), row_upper=np.zeros(1),
                      col_lower=np.array([0.0, 0.0]), col_upper=np.array([4.0, 4.0]),
                      integrality=np.zeros(2, dtype=bool), x_index=np.arange(1), y_index=np.arange(1, 2),
                      t_index=None, layers=(), spec_A=np.ones((1, 1)), spec_b=np.zeros(1))
    sc = _scale(model)
    assert np.all(np.isfinite(sc.c)) and sc.col_scale[0] == 1.0
    assert sc.c[0] * sc.cost_scale == -1e308


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("per_row", [False, True])
def test_relaxed_coefficients_equal_the_selected_slope_product_bit_for_bit(grad, per_row):
    """CROWN's backward step forms ``A * (lower slope where A >= 0, else upper slope)`` from the
    clamped parts of ``A`` in place when no gradient is needed: the same bits as the product, on
    zeros of both signs, subnormals, huge and tiny entries and slopes of 0, 1 and in between. With
    gradients the product itself is used: at ``A == 0`` the gradient on ``A`` is the lower slope
    (the clamps' would be ``lower + upper``)."""
    import torch

    from gpuopt.bounds.crown import _relaxed_coefficients

    gen = torch.Generator().manual_seed(3 + 2 * per_row + grad)
    B, m, n = 7, 5, 11
    A = torch.randn(B, m, n, generator=gen, dtype=torch.float64) * torch.logspace(-320, 300, n, dtype=torch.float64)
    A[0, 0, :4] = torch.tensor([0.0, -0.0, 5e-324, -5e-324], dtype=torch.float64)
    shape = (B, m, n) if per_row else (B, 1, n)
    lower = torch.rand(shape, generator=gen, dtype=torch.float64)
    upper = torch.rand(shape, generator=gen, dtype=torch.float64)
    lower[..., :3] = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)
    upper[..., 3:5] = torch.tensor([1.0, 1e-300], dtype=torch.float64)
    expected = A * torch.where(A >= 0, lower, upper)
    if grad:
        A.requires_grad_(True)
        lower.requires_grad_(True)
    pos = A.detach().clamp(min=0)
    with torch.set_grad_enabled(grad):
        got = _relaxed_coefficients(A, A.clamp(min=0) if grad else pos, A.clamp(max=0), lower, upper)
    assert torch.equal(got.detach(), expected)  # == treats -0.0 and 0.0 alike, NaN never arises here
    assert got.requires_grad == grad
    if grad:
        got.sum().backward()
        assert torch.equal(A.grad, torch.where(A >= 0, lower, upper).detach())
        assert torch.equal(lower.grad, A.detach().clamp(min=0).sum(1, keepdim=True) if not per_row
                           else A.detach().clamp(min=0))
    else:
        assert got.data_ptr() == pos.data_ptr()  # formed in place


def test_relaxed_coefficients_keep_the_wider_dtype_of_mixed_slopes():
    """A float32 ``A`` with a float64 upper slope: the product is formed in float64 (as the
    where-product is), never rounded to float32 first."""
    import torch

    from gpuopt.bounds.crown import _relaxed_coefficients

    A = torch.tensor([[[3.2e-30, -87017.84727, 1.0]]], dtype=torch.float32)
    lower = torch.tensor([[[0.3, 0.7, 1 / 3]]], dtype=torch.float32)
    upper = torch.tensor([[[0.1, 0.123456789012345, 0.9]]], dtype=torch.float64)
    expected = A * torch.where(A >= 0, lower, upper)
    got = _relaxed_coefficients(A, A.clamp(min=0), A.clamp(max=0), lower, upper)
    assert got.dtype == torch.float64 and torch.equal(got, expected)


def test_in_place_coefficients_only_for_slopes_that_broadcast_into_the_coefficients():
    """The in-place form needs slopes that fit ``A``'s shape; wider slopes (more rows, or more
    leading dims) take the product, whose result is the broadcast shape."""
    import torch

    from gpuopt.bounds.crown import _broadcasts_into, _relaxed_coefficients

    assert _broadcasts_into((3, 1, 5), (3, 4, 5)) and _broadcasts_into((5,), (3, 4, 5))
    assert _broadcasts_into((3, 4, 5), (3, 4, 5)) and _broadcasts_into((), (2,))
    assert not _broadcasts_into((3, 2, 5), (3, 4, 5)) and not _broadcasts_into((2, 3, 1, 5), (3, 1, 5))
    assert _broadcasts_into((3, 4, 1), (3, 4, 5))
    A = torch.tensor([[[1.0, -2.0, 0.5]]], dtype=torch.float64)  # (1, 1, 3)
    lower = torch.tensor([[[0.5, 0.5, 0.25], [1.0, 0.0, 1.0]]], dtype=torch.float64)  # (1, 2, 3): wider
    upper = torch.full((1, 1, 3), 0.75, dtype=torch.float64)
    got = _relaxed_coefficients(A, A.clamp(min=0), A.clamp(max=0), lower, upper)
    assert got.shape == (1, 2, 3) and torch.equal(got, A * torch.where(A >= 0, lower, upper))


# ------------------------------------------------------------------------------------------------
# an input fixed at a decimal that no float64 holds (the review of the command line found every
# such ``sat`` answered ``unknown``)

def _fixed_input_problem(net, rhs: str, second: str = "(assert (>= X_1 -1))\n(assert (<= X_1 1))"):
    """``X_0`` fixed at the decimal 0.1 (no float64 equals it), unsafe ``Y_0 <= rhs``."""
    from gpuopt.io.vnnlib import parse_vnnlib

    text = ("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
            "(assert (>= X_0 0.1))\n(assert (<= X_0 0.1))\n" + second + f"\n(assert (<= Y_0 {rhs}))\n")
    (prop,) = parse_vnnlib(text, n_inputs=2, n_outputs=1)
    return Problem(net, prop.box, prop.spec, inner=prop.inner, near=prop.near)


def test_an_input_fixed_at_a_decimal_stands_for_its_exact_value():
    """y = x0 + 0 x1: with X_0 = 0.1 exactly, ``Y_0 <= 0.1 + 1e-3`` is reached, ``Y_0 <= 0.1 - 1e-3``
    is not, and ``Y_0 <= 0.1`` is reached exactly at the margin 0, which float64 cannot see: the
    check says ``near`` for the first (the float64 point next to 0.1 stands for it), never ok for
    the second and undecided for the third; ``verify`` answers sat, unsat and never unsat."""
    net = affine_net([[1.0, 0.0]], [0.0])
    sat = _fixed_input_problem(net, "0.101")
    assert sat.inner is None and sat.near is not None and list(sat.near.hull) == [True, False]
    c = check_counterexample(sat, np.array([0.3, 0.5]))
    assert c.ok and c.how == "near" and c.x[0] in (sat.region.lower[0], sat.region.upper[0])
    assert Fraction(sat.region.lower[0]) <= Fraction("0.1") <= Fraction(sat.region.upper[0])
    safe = _fixed_input_problem(net, "0.099")
    assert not check_counterexample(safe, np.array([0.1, 0.0])).ok
    edge = _fixed_input_problem(net, "0.1")
    c = check_counterexample(edge, np.array([0.1, 0.0]))
    assert not c.ok and c.how == "undecided"
    config = VerifyConfig(device="cpu")
    v = verify_problems_quick(sat, config)
    assert v.status.value == "sat" and "no float64 point" in v.message, v.message
    assert verify_problems_quick(safe, config).status.value == "unsat"
    assert verify_problems_quick(edge, config).status.value != "unsat"


def verify_problems_quick(problem, config):
    from gpuopt.verify import verify_problems

    return verify_problems([problem], timeout=20, config=config)


def test_a_problem_checks_its_near_box():
    net = affine_net([[1.0, 0.0]], [0.0])
    p = _fixed_input_problem(net, "0.101")
    from gpuopt.problem import NearBox

    with pytest.raises(Exception, match="only where `inner` is None"):
        Problem(net, p.region, p.spec, inner=p.region, near=p.near)
    with pytest.raises(Exception, match="must lie inside `region`"):
        Problem(net, p.region, p.spec, inner=None, near=NearBox(Box(p.region.lower - 1, p.region.upper), p.near.hull))
