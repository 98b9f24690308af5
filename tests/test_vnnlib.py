"""Tests of gpuopt.io.vnnlib: parsing VNNLIB into (Box, OutputSpec) pairs and writing results."""

import gzip
import math
from fractions import Fraction
import re

import numpy as np
import pytest

from gpuopt.errors import InvalidInputError
from gpuopt.io.vnnlib import format_counterexample, load_vnnlib, parse_vnnlib, write_counterexample
from helpers import fraction_down, fraction_up, sexpr_tokens, sexpr_tree


def header(n_in: int, n_out: int) -> str:
    """All declarations on line 1, so a body starts on line 2."""
    decls = [f"(declare-const X_{i} Real)" for i in range(n_in)]
    decls += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    return " ".join(decls) + "\n"


UNIT_BOX = "(assert (and (>= X_0 0) (<= X_0 1)))\n"


_up, _down = fraction_up, fraction_down


def disjuncts(spec):
    return [(A.tolist(), b.tolist()) for A, b in spec.disjuncts]


def one(text, **kw):
    """Parse ``text`` that must yield a single box; return (lower, upper, disjuncts)."""
    result = parse_vnnlib(text, **kw)
    assert len(result) == 1
    box, spec = result[0]
    return box.lower.tolist(), box.upper.tolist(), disjuncts(spec)


# ---------------------------------------------------------------------------------------------
# inputs


@pytest.mark.parametrize("body, lower, upper", [
    ("(assert (<= X_0 1)) (assert (>= X_0 -1e-3)) (assert (<= 0.5 X_1)) (assert (>= 2 X_1))",
     [-1e-3, 0.5], [1.0, 2.0]),
    # scaled bounds, (- t), and the tightest bound wins
    ("(assert (<= (* 2 X_0) 1)) (assert (<= (* -4 X_0) 8)) (assert (<= (- X_0) 3))"
     " (assert (and (>= X_1 0) (<= (* X_1 3) 1.5) (<= X_1 7)))",
     [-2.0, 0.0], [0.5, 0.5]),
    # both bounds from additive terms; a degenerate interval is allowed
    ("(assert (<= (+ X_0 1) 2)) (assert (>= (- X_0 1) -1.5)) (assert (<= X_1 3)) (assert (>= X_1 3))",
     [-0.5, 3.0], [1.0, 3.0]),
    ("(assert (< X_0 1)) (assert (> X_0 0)) (assert (< 1 X_1)) (assert (> 2E+0 X_1))",
     [0.0, 1.0], [1.0, 2.0]),
])
def test_input_bounds(body, lower, upper):
    lo, hi, dis = one(header(2, 1) + body + "\n(assert (<= Y_0 0))")
    assert (lo, hi) == (lower, upper)
    assert dis == [([[1.0]], [0.0])]


def test_numbers_are_parsed_exactly():
    text = header(1, 1) + "(assert (>= X_0 0.1)) (assert (<= X_0 3.991125645861615)) (assert (<= Y_0 -.5e1))"
    (prop,) = parse_vnnlib(text)
    # 0.1 is one tenth: the float 0.1 lies above it, so the outer box starts one ulp lower and the
    # inner box (float points of the exact set) at 0.1; 3.991125645861615 rounds up as a float
    assert Fraction(0.1) > Fraction(1, 10) and Fraction(3.991125645861615) > Fraction("3.991125645861615")
    assert prop.box.lower.tolist() == [math.nextafter(0.1, 0)] and prop.box.upper.tolist() == [3.991125645861615]
    assert prop.inner.lower.tolist() == [0.1] and prop.inner.upper.tolist() == [math.nextafter(3.991125645861615, 0)]
    assert disjuncts(prop.spec) == [([[1.0]], [-5.0])]


def test_constants_are_summed_exactly():
    # 0.1 + 0.2 == 0.3 exactly (in floats 0.1 + 0.2 > 0.3): a true constant atom
    text = header(1, 1) + UNIT_BOX + "(assert (<= (+ 0.1 0.2) 0.3)) (assert (<= Y_0 1))"
    assert disjuncts(parse_vnnlib(text)[0].spec) == [([[1.0]], [1.0])]
    text = header(1, 1) + UNIT_BOX + "(assert (< (+ 0.1 0.2) 0.3)) (assert (<= Y_0 1))"
    assert parse_vnnlib(text) == []


@pytest.mark.parametrize("body, lower, upper, inner_lower, inner_upper", [
    # 3 X_0 <= 1: the outer bound rounds up, the inner one down (3 * inner <= 1 exactly)
    ("(assert (<= (* 3 X_0) 1)) (assert (>= X_0 0))", [0.0], [_up(Fraction(1, 3))], [0.0], [_down(Fraction(1, 3))]),
    # strict bounds exclude the bound itself from the inner box only
    ("(assert (< X_0 1)) (assert (> X_0 0))", [0.0], [1.0], [5e-324], [math.nextafter(1.0, 0)]),
    ("(assert (<= X_0 0.5)) (assert (>= X_0 0.5))", [0.5], [0.5], [0.5], [0.5]),
])
def test_outer_and_inner_boxes(body, lower, upper, inner_lower, inner_upper):
    (prop,) = parse_vnnlib(header(1, 1) + body + "(assert (<= Y_0 0))")
    assert prop.box.lower.tolist() == lower and prop.box.upper.tolist() == upper
    assert prop.inner.lower.tolist() == inner_lower and prop.inner.upper.tolist() == inner_upper
    assert 3 * Fraction(prop.inner.upper[0]) <= 1 or "3" not in body


def test_a_decimal_point_interval_has_no_float_point():
    # 0.1 <= X_0 <= 0.1: the exact set is {1/10}, which holds no float64: no counterexample can exist
    (prop,) = parse_vnnlib(header(1, 1) + "(assert (<= X_0 0.1)) (assert (>= X_0 0.1)) (assert (<= Y_0 0))")
    assert prop.inner is None and prop.box.lower[0] < 0.1 <= prop.box.upper[0]


# ---------------------------------------------------------------------------------------------
# outputs


@pytest.mark.parametrize("atom, row, rhs", [
    ("(<= Y_1 Y_0)", [-1, 1, 0], 0),
    ("(>= Y_0 3.99)", [-1, 0, 0], -3.99),
    ("(< Y_2 -1)", [0, 0, 1], -1),
    ("(> Y_2 -1)", [0, 0, -1], 1),
    ("(<= (+ Y_0 (* 2 Y_1) 1) (- Y_2 3))", [1, 2, -1], -4),
    ("(>= (- Y_0) 2.5)", [1, 0, 0], -2.5),
    ("(<= (- Y_0 Y_1 Y_2 1) 0)", [1, -1, -1], 1),
    ("(<= (* Y_1 0.5) (* -1 (+ Y_0 Y_0)))", [2, 0.5, 0], 0),
    ("(<= (* 2 (- Y_0 Y_1) 3) 6)", [6, -6, 0], 6),
    ("(<= (+ Y_0 Y_1) (+ Y_1 1))", [1, 0, 0], 1),  # Y_1 cancels
])
def test_output_rows(atom, row, rhs):
    (prop,) = parse_vnnlib(header(1, 3) + UNIT_BOX + f"(assert {atom})")
    A, b, strict = prop.spec.exact_rows(0)
    assert A.tolist() == [[Fraction(r) for r in row]] and b.tolist() == [Fraction(str(rhs))]
    assert strict.tolist() == [atom.startswith(("(<", "(>")) and not atom.startswith(("(<=", "(>="))]
    # the float row rounds b up, so that a float proof of A y > b holds for the exact row
    assert disjuncts(prop.spec) == [([[float(r) for r in row]], [_up(Fraction(str(rhs)))])]


Y_ATOMS = {"A": "(<= Y_0 1)", "B": "(<= Y_1 2)", "C": "(<= Y_0 Y_1)", "D": "(>= Y_1 4)", "E": "(<= (+ Y_0 Y_1) 5)"}
Y_ROWS = {"A": ([1.0, 0.0], 1.0), "B": ([0.0, 1.0], 2.0), "C": ([1.0, -1.0], 0.0),
          "D": ([0.0, -1.0], -4.0), "E": ([1.0, 1.0], 5.0)}


def spell(formula: str) -> str:
    return re.sub(r"\b([A-E])\b", lambda m: Y_ATOMS[m.group(1)], formula)


@pytest.mark.parametrize("asserts, expected", [
    (["A"], ["A"]),
    (["A", "B"], ["AB"]),
    (["(and A B)"], ["AB"]),
    (["(or A B)"], ["A", "B"]),
    (["(or (and A B) (and C (or D E)))"], ["AB", "CD", "CE"]),
    (["(or A B)", "(or C D)"], ["AC", "AD", "BC", "BD"]),
    (["(and (or A B) (or C D))"], ["AC", "AD", "BC", "BD"]),
    (["(or (or A) (and (and B)))"], ["A", "B"]),
    (["(and A (or B C) A)"], ["ABA", "ACA"]),
    # rows within a disjunct keep the textual order of their atoms
    (["(and (or A B) C)"], ["AC", "BC"]),
    (["(or (and B A) C)", "E"], ["BAE", "CE"]),
])
def test_dnf(asserts, expected):
    text = header(1, 2) + UNIT_BOX + "\n".join(f"(assert {spell(a)})" for a in asserts)
    _, _, dis = one(text)
    want = [([Y_ROWS[c][0] for c in term], [Y_ROWS[c][1] for c in term]) for term in expected]
    assert dis == want


def test_input_disjunction_gives_boxes_in_order():
    text = header(2, 2) + """
(assert (>= X_1 -1)) (assert (<= X_1 1))
(assert (or (and (>= X_0 0) (<= X_0 1)) (and (>= X_0 2) (<= X_0 3))))
(assert (or (<= Y_0 Y_1) (<= Y_1 Y_0)))
"""
    result = parse_vnnlib(text)
    assert [(b.lower.tolist(), b.upper.tolist()) for b, _ in result] == [([0, -1], [1, 1]), ([2, -1], [3, 1])]
    for _, spec in result:
        assert disjuncts(spec) == [([[1.0, -1.0]], [0.0]), ([[-1.0, 1.0]], [0.0])]


def test_mixed_terms_are_grouped_by_box():
    # each input branch carries its own output constraint; identical boxes are merged
    text = header(1, 1) + """
(assert (or (and (>= X_0 0) (<= X_0 1) (<= Y_0 1))
            (and (>= X_0 2) (<= X_0 3) (<= Y_0 2))
            (and (>= X_0 0) (<= X_0 1) (>= Y_0 5))))
"""
    result = parse_vnnlib(text)
    assert [(b.lower.tolist(), b.upper.tolist(), disjuncts(s)) for b, s in result] == [
        ([0.0], [1.0], [([[1.0]], [1.0]), ([[-1.0]], [-5.0])]),
        ([2.0], [3.0], [([[1.0]], [2.0])]),
    ]


def test_infeasible_terms_are_dropped():
    text = header(1, 1) + UNIT_BOX + "(assert (or (and (<= X_0 -1) (<= Y_0 1)) (and (>= X_0 0.5) (<= Y_0 2))))"
    lo, hi, dis = one(text)
    assert (lo, hi, dis) == ([0.5], [1.0], [([[1.0]], [2.0])])


@pytest.mark.parametrize("body, message", [
    (UNIT_BOX + "(assert (<= X_0 -1))", "the input box is empty: 0 <= X_0 <= -1 has no solution"),
    (UNIT_BOX + "(assert (or (>= X_0 2) (<= X_0 -2)))", "the input box is empty: 0 <= X_0 <= -2 has no solution"),
    (UNIT_BOX + "(assert (< X_0 0))", "the input box is empty: 0 <= X_0 < 0 has no solution"),
])
def test_contradictory_input_constraints_are_an_error(body, message):
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        parse_vnnlib(header(1, 1) + body)


@pytest.mark.parametrize("body", [
    UNIT_BOX + "(assert (<= 1 0))",
    UNIT_BOX + "(assert (< 0 0))",
    UNIT_BOX + "(assert (> Y_0 Y_0))",
    UNIT_BOX + "(assert (or (< 2 1) (and (<= Y_0 0) (>= 0 1))))",
])
def test_empty_unsafe_set_gives_no_pairs(body):
    assert parse_vnnlib(header(1, 1) + body) == []


@pytest.mark.parametrize("body, expected", [
    ("(assert (or (<= 1 0) (<= Y_0 0)))", [([[1.0]], [0.0])]),
    ("(assert (and (<= 0 1) (<= Y_0 0)))", [([[1.0]], [0.0])]),
    ("(assert (<= 0 0)) (assert (<= Y_0 0))", [([[1.0]], [0.0])]),
    ("(assert (<= (* 2 3) (+ 1 5)))", [([[0.0]], [0.0])]),
    ("(assert (<= Y_0 Y_0))", [([[0.0]], [0.0])]),  # Y_0 cancels: a true constant atom
    ("", [([[0.0]], [0.0])]),  # no output constraint: every output is unsafe
    ("(assert (or (<= Y_0 1) (<= 0 1)))", [([[1.0]], [1.0]), ([[0.0]], [0.0])]),
])
def test_constant_atoms(body, expected):
    _, _, dis = one(header(1, 1) + UNIT_BOX + body)
    assert dis == expected


def test_comments_and_whitespace():
    text = """; a comment with (unbalanced parentheses
(declare-const X_0 Real) ; trailing comment )
(declare-const Y_0 Real)
(assert
\t(<= X_0 ; in the middle
   1.5))
(assert (>= X_0 0));no space
(assert (<= Y_0 0))
; last line without newline"""
    assert one(text) == ([0.0], [1.5], [([[1.0]], [0.0])])


def test_declared_counts_are_checked_when_given():
    text = header(2, 3) + "(assert (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1)))"
    assert len(parse_vnnlib(text, n_inputs=2, n_outputs=3)) == 1


def test_declaration_order_does_not_matter():
    text = "(declare-const Y_0 Real)(declare-const X_1 Real)(declare-const X_0 Real)" + \
        "(assert (and (>= X_0 0) (<= X_0 1) (>= X_1 2) (<= X_1 3) (<= Y_0 0)))"
    assert one(text) == ([0.0, 2.0], [1.0, 3.0], [([[1.0]], [0.0])])


def test_load_plain_and_gzip(tmp_path):
    text = header(1, 1) + UNIT_BOX + "(assert (>= Y_0 1))"
    plain = tmp_path / "p.vnnlib"
    plain.write_text(text)
    packed = tmp_path / "p.vnnlib.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    for path in (plain, packed, str(packed)):
        ((box, spec),) = load_vnnlib(path, n_inputs=1, n_outputs=1)
        assert box.lower.tolist() == [0.0] and disjuncts(spec) == [([[-1.0]], [-1.0])]


def test_large_flat_file_is_fast():
    import time
    n = 3072
    text = header(n, 10) + "".join(f"(assert (<= X_{i} 0.5))\n(assert (>= X_{i} -0.5))\n" for i in range(n))
    text += "(assert (or " + " ".join(f"(and (<= Y_0 Y_{j}))" for j in range(1, 10)) + "))"
    start = time.perf_counter()
    ((box, spec),) = parse_vnnlib(text)
    assert time.perf_counter() - start < 2.0
    assert box.size == n and spec.n_disjuncts == 9


# ---------------------------------------------------------------------------------------------
# errors: one per message, with its line


H = header(1, 1)  # body starts on line 2


@pytest.mark.parametrize("text, message", [
    (H + "(assert (<= X_0 1))\n(assert (<= Y_0 1)))", "<string>:3: unbalanced parentheses: unexpected ')'"),
    (H + "\n(assert (<= X_0 1)\n", "<string>:3: unbalanced parentheses: '(' is never closed"),
    (H + "assert", "<string>:2: unexpected 'assert' outside parentheses"),
    (H + "(assert\n  (not (<= Y_0 1)))",
     "<string>:3: unknown operator 'not' in a formula (expected and, or, <=, >=, <, >)"),
    (H + "(assert (<= (/ Y_0 2) 1))", "<string>:2: unknown operator '/' in a term (expected +, - or *)"),
    (H + "(assert (<= (and Y_0) 1))", "<string>:2: 'and' is a formula, but a term was expected"),
    (H + "(assert (<= Y_0 1.2.3))", "<string>:2: invalid number '1.2.3'"),
    (H + "(assert (<= Y_0 nan))", "<string>:2: unknown symbol 'nan' (expected a number or a declared variable)"),
    (H + "(assert (<= Y_0 1e400))", "<string>:2: number '1e400' is out of the float64 range"),
    (H + "(assert (<= Y_0))", "<string>:2: '<=' needs exactly 2 arguments, got 1"),
    (H + "(assert (>= Y_0 1 2))", "<string>:2: '>=' needs exactly 2 arguments, got 3"),
    (H + "(assert (<= (+) 1))", "<string>:2: '+' needs at least 1 argument, got 0"),
    (H + "(assert (<= (-) 1))", "<string>:2: '-' needs at least 1 argument, got 0"),
    (H + "(assert (<= (* Y_0) 1))", "<string>:2: '*' needs at least 2 arguments, got 1"),
    (H + "(assert (and))", "<string>:2: 'and' needs at least 1 argument, got 0"),
    (H + "(assert (or))", "<string>:2: 'or' needs at least 1 argument, got 0"),
    (H + "(assert (<= Y_0 1) (<= Y_0 2))", "<string>:2: 'assert' needs exactly 1 argument, got 2"),
    (H + "(assert Y_0)", "<string>:2: expected a formula, got 'Y_0'"),
    (H + "(assert ())", "<string>:2: empty expression '()' where a formula was expected"),
    (H + "(assert ((<= Y_0 1)))", "<string>:2: expected an operator name, got a parenthesised expression"),
    (H + "()", "<string>:2: empty expression '()' where a command was expected"),
    (H + "(check-sat)", "<string>:2: unknown command 'check-sat' (expected declare-const or assert)"),
    (H + "(declare-const X_1)", "<string>:2: 'declare-const' needs 2 arguments, got 1"),
    (H + "(declare-const (X_1) Real)", "<string>:2: 'declare-const' expects a variable name"),
    (H + "(declare-const Z_1 Real)", "<string>:2: unsupported variable name 'Z_1' (expected X_i or Y_j)"),
    (H + "(declare-const X_01 Real)", "<string>:2: unsupported variable name 'X_01' (expected X_i or Y_j)"),
    (H + "(declare-const X_1 Int)", "<string>:2: X_1 must be declared 'Real', got 'Int'"),
    (H + "\n(declare-const X_0 Real)", "<string>:3: X_0 is declared twice (first on line 1)"),
    (H + "(assert (<= X_0 1))\n(assert (>= X_5 0))", "<string>:3: variable X_5 is used but not declared"),
    (H + "(assert (<= Y_3 0))", "<string>:2: variable Y_3 is used but not declared"),
    (H + "(assert (<= Y_0 0))\n(declare-const Y_1 Real)\n(assert (<= Y_1 0))\n(assert (<= Y_2 0))",
     "<string>:5: variable Y_2 is used but not declared"),
    (H + "(assert (<= (* Y_0 Y_0) 1))", "<string>:2: nonlinear term: '*' multiplies two non-constant factors"),
    (H + "(assert (<= X_0 Y_0))", "<string>:2: a comparison mixes inputs X_* and outputs Y_*; unsupported"),
    (H + "(assert (<= 1e300 (* -1e300 (- Y_0 1e300))))", "<string>:2: a coefficient overflows float64"),
    (header(2, 1) + "(assert (<= (+ X_0 X_1) 1))",
     "<string>:2: general linear constraints on inputs are unsupported (each input comparison must bound a single X_i)"),
    (H + "(assert (>= (* 1e-300 X_0) 1e300))", "<string>:2: an input bound overflows float64"),
])
def test_errors_with_line(text, message):
    with pytest.raises(InvalidInputError, match=re.escape(message)) as info:
        parse_vnnlib(text)
    assert info.value.path == "<string>"
    assert info.value.line == int(message.split(":")[1])


@pytest.mark.parametrize("text, kw, message", [
    ("", {}, "the file declares no variables (empty or not a VNNLIB file)"),
    ("; only a comment\n", {}, "the file declares no variables (empty or not a VNNLIB file)"),
    ("(declare-const Y_0 Real)", {}, "the file declares no inputs X_*"),
    ("(declare-const X_0 Real)", {}, "the file declares no outputs Y_*"),
    ("(declare-const X_0 Real)(declare-const X_2 Real)(declare-const Y_0 Real)", {},
     "inputs must be declared as X_0..X_{n-1} without gaps: X_1 is missing"),
    ("(declare-const X_0 Real)(declare-const Y_1 Real)", {},
     "outputs must be declared as Y_0..Y_{n-1} without gaps: Y_0 is missing"),
    (header(784, 10), {"n_inputs": 5}, "the VNNLIB declares 784 inputs X_* but the network takes 5 inputs"),
    (header(5, 10), {"n_inputs": 5, "n_outputs": 5},
     "the VNNLIB declares 10 outputs Y_* but the network has 5 outputs"),
    (header(2, 1) + "(assert (and (>= X_0 0) (<= X_0 1) (>= X_1 0)))", {}, "input X_1 has no upper bound"),
    (header(2, 1) + "(assert (and (>= X_0 0) (<= X_1 1)))", {}, "input X_0 has no upper bound"),
    (header(1, 1) + "(assert (<= X_0 1))", {}, "input X_0 has no lower bound"),
    (header(1, 1) + "(assert (or (and (<= X_0 1) (>= X_0 0)) (<= X_0 1)))", {},
     "input X_0 has no lower bound in one of the disjuncts"),
])
def test_errors_without_line(text, kw, message):
    with pytest.raises(InvalidInputError, match=re.escape("<string>: " + message)) as info:
        parse_vnnlib(text, **kw)
    assert info.value.line is None


def test_dnf_blowup_is_refused():
    ors = " ".join(f"(assert (or (<= Y_0 {k}) (<= Y_0 {k + 0.5})))" for k in range(20))  # 2^20 terms
    with pytest.raises(InvalidInputError, match=re.escape("<string>: the formula expands to more than 100000 DNF")):
        parse_vnnlib(header(1, 1) + UNIT_BOX + ors)
    # few terms, but each repeats many atoms
    bounds = "".join(f"(assert (and (>= X_{i} 0) (<= X_{i} 1)))" for i in range(3000))
    ors = " ".join(f"(assert (or (<= Y_0 {k}) (<= Y_0 {k + 0.5})))" for k in range(12))
    with pytest.raises(InvalidInputError, match=re.escape("or 20000000 atoms; unsupported")):
        parse_vnnlib(header(3000, 1) + bounds + ors)


def test_deep_nesting_is_an_error_not_a_crash():
    depth = 5000
    text = header(1, 1) + UNIT_BOX + "(assert " + "(and " * depth + "(<= Y_0 0)" + ")" * depth + ")"
    with pytest.raises(InvalidInputError, match=re.escape("<string>:3: the formula is nested too deeply")):
        parse_vnnlib(text)


def test_file_errors(tmp_path):
    missing = tmp_path / "nope.vnnlib"
    with pytest.raises(InvalidInputError, match=re.escape(f"{missing}: VNNLIB file not found")):
        load_vnnlib(missing)
    bad = tmp_path / "bad.vnnlib"
    bad.write_text(header(1, 1) + "(assert (<= Y_0 1x))")
    with pytest.raises(InvalidInputError, match=re.escape(f"{bad}:2: invalid number '1x'")):
        load_vnnlib(bad)
    gz = tmp_path / "bad.vnnlib.gz"
    gz.write_bytes(gzip.compress(b"(declare-const X_0 Real)")[:-6])
    with pytest.raises(InvalidInputError, match=re.escape(f"{gz}: corrupt gzip data")):
        load_vnnlib(gz)
    binary = tmp_path / "bin.vnnlib"
    binary.write_bytes(b"(declare\xff")
    with pytest.raises(InvalidInputError, match=re.escape(f"{binary}: not a text file (invalid UTF-8 at byte 8)")):
        load_vnnlib(binary)
    with pytest.raises(InvalidInputError, match=re.escape(f"{tmp_path}: cannot read the VNNLIB file")):
        load_vnnlib(tmp_path)


# ---------------------------------------------------------------------------------------------
# semantics: the (Box, OutputSpec) pairs describe the same set as the formula


_tokens, _tree = sexpr_tokens, sexpr_tree


def _value(t, env):
    if isinstance(t, str):
        return env[t] if t in env else float(t)
    vals = [_value(a, env) for a in t[1:]]
    if t[0] == "+":
        return sum(vals)
    if t[0] == "-":
        return -vals[0] if len(vals) == 1 else vals[0] - sum(vals[1:])
    assert t[0] == "*"
    return float(np.prod(vals))


def _holds(f, env):
    op, args = f[0], f[1:]
    if op == "and":
        return all(_holds(a, env) for a in args)
    if op == "or":
        return any(_holds(a, env) for a in args)
    a, b = (_value(x, env) for x in args)
    return {"<=": a <= b, "<": a < b, ">=": a >= b, ">": a > b}[op]


def unsafe_by_formula(text, x, y):
    env = {f"X_{i}": v for i, v in enumerate(x)} | {f"Y_{j}": v for j, v in enumerate(y)}
    return all(_holds(cmd[1], env) for cmd in _tree(_tokens(text)) if cmd[0] == "assert")


SEMANTIC_CASES = [
    header(2, 3) + """
(assert (or (and (>= X_0 0) (<= X_0 1) (>= (* 2 X_1) -1) (<= X_1 1))
            (and (>= X_0 0.5) (<= X_0 2) (<= X_1 1.25) (<= (- X_1) 0.25) (<= Y_2 (* 0.5 Y_0)))))
(assert (or (and (<= (+ Y_0 Y_1) 0.3) (> Y_2 -0.2)) (< (- Y_1 Y_2 0.1) Y_0)))
(assert (or (<= Y_0 0.4) (>= Y_1 -0.6) (< 3 2)))
""",
    header(1, 2) + """
(assert (and (>= X_0 -1) (<= X_0 1)))
(assert (or (and (<= Y_0 Y_1) (or (<= Y_0 0) (>= Y_1 0.5))) (and (<= (* 3 Y_1) (+ Y_0 -0.5)))))
""",
]


@pytest.mark.parametrize("text", SEMANTIC_CASES)
def test_pairs_match_formula(text):
    pairs = parse_vnnlib(text)
    n_in = pairs[0][0].size
    n_out = pairs[0][1].n_outputs
    rng = np.random.default_rng(0)
    xs = rng.uniform(-1.5, 2.5, size=(2000, n_in))
    ys = rng.uniform(-1.0, 1.0, size=(2000, n_out))
    got = np.zeros(len(xs), dtype=bool)
    for box, spec in pairs:
        got |= box.contains(xs) & (spec.margin64(ys) <= 0)
    want = np.array([unsafe_by_formula(text, x, y) for x, y in zip(xs, ys)])
    assert np.array_equal(got, want)
    assert 0.05 < want.mean() < 0.95  # both outcomes are exercised


# ---------------------------------------------------------------------------------------------
# counterexamples


def _read_block(text):
    pairs = re.findall(r"\(([XY])_(\d+) (\S+)\)", text)
    x = [float(v) for k, i, v in pairs if k == "X"]
    y = [float(v) for k, i, v in pairs if k == "Y"]
    assert [int(i) for k, i, _ in pairs if k == "X"] == list(range(len(x)))
    assert [int(i) for k, i, _ in pairs if k == "Y"] == list(range(len(y)))
    return x, y


def test_format_counterexample_round_trip():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal(20), [0.1, -0.0, 1e-300, 5e-324, 1 / 3, 2.0**60]])
    y = rng.standard_normal((1, 7)).astype(np.float32)
    text = format_counterexample(x, y)
    lines = text.splitlines()
    assert lines[0] == "(" and lines[-1] == ")" and text.endswith(")\n")
    assert lines[1] == f"(X_0 {float(x[0])!r})" and lines[1 + len(x)] == f"(Y_0 {float(y[0, 0])!r})"
    assert len(lines) == 2 + x.size + y.size
    x2, y2 = _read_block(text)
    assert np.array_equal(np.array(x2), x) and np.array_equal(np.array(y2), y.reshape(-1).astype(np.float64))
    assert [np.float64(v).tobytes() for v in x2] == [v.tobytes() for v in x]  # -0.0 kept


def test_write_counterexample(tmp_path):
    path = tmp_path / "result.txt"
    write_counterexample(path, [0.5, -1.25], [3.0])
    assert path.read_text() == "sat\n(\n(X_0 0.5)\n(X_1 -1.25)\n(Y_0 3.0)\n)\n"
    for status in ("unsat", "timeout", "unknown"):
        write_counterexample(str(path), None, None, status=status)
        assert path.read_text() == status + "\n"


@pytest.mark.parametrize("x, y, status, message", [
    ([np.nan], [0.0], "sat", "`x` contains NaN or infinite values"),
    ([0.0], [np.inf], "sat", "`y` contains NaN or infinite values"),
    ([], [0.0], "sat", "`x` is empty"),
    (None, [0.0], "sat", "`x` is required to write a counterexample"),
    (["a"], [0.0], "sat", "`x` must be an array of numbers"),
    ([0.0], [0.0], "not sat", "`status` must be a single word such as 'sat' or 'unsat', got 'not sat'"),
])
def test_write_counterexample_errors(tmp_path, x, y, status, message):
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        write_counterexample(tmp_path / "r.txt", x, y, status=status)
    with pytest.raises(InvalidInputError, match=re.escape(f"{tmp_path}: cannot write the result file")):
        write_counterexample(tmp_path, [0.0], [0.0])


# ---------------------------------------------------------------------------------------------
# the VNN-COMP benchmark files (read from ../shared/benchmarks, skipped when absent)


def test_all_benchmark_files_load(benchmarks_dir):
    """Every plain file, and of each folder's gzipped files (the coverage suites: hundreds of
    near-identical image boxes, tens of MB unzipped) every ninth, the first and the last."""
    files = sorted(benchmarks_dir.rglob("*.vnnlib"))
    by_folder: dict = {}
    for path in sorted(benchmarks_dir.rglob("*.vnnlib.gz")):
        by_folder.setdefault(path.parent, []).append(path)
    for group in by_folder.values():
        files += sorted(set(group[::9] + group[-1:]))
    assert files, f"no .vnnlib files under {benchmarks_dir}"
    for path in files:
        pairs = load_vnnlib(path)
        assert pairs, path
        n_in = pairs[0][0].size
        for box, spec in pairs:
            assert box.size == n_in and np.all(box.lower <= box.upper)
            assert spec.n_outputs == pairs[0][1].n_outputs


def test_mnist_fc(benchmarks_dir):
    files = sorted((benchmarks_dir / "vnncomp2022" / "mnist_fc" / "vnnlib").glob("*.vnnlib"))
    if not files:
        pytest.skip("mnist_fc vnnlib files not present")
    for path in files:
        ((box, spec),) = load_vnnlib(path, n_inputs=784, n_outputs=10)
        assert box.size == 784 and np.all(box.lower >= 0) and np.all(box.upper <= 1)
        assert spec.n_disjuncts == 9
        for A, b in spec.disjuncts:
            assert A.shape == (1, 10) and b.tolist() == [0.0]
            assert sorted(A[0].tolist()) == [-1.0] + [0.0] * 8 + [1.0]


def acas(benchmarks_dir, prop):
    path = benchmarks_dir / "vnncomp2022" / "acasxu" / "vnnlib" / f"prop_{prop}.vnnlib"
    if not path.exists():
        pytest.skip(f"{path} not present")
    return load_vnnlib(path, n_inputs=5, n_outputs=5)


def test_acasxu_prop_1(benchmarks_dir):
    ((box, spec),) = acas(benchmarks_dir, 1)
    # outer bounds round the decimals outwards
    assert box.lower.tolist() == [_down(Fraction(t)) for t in ("0.6", "-0.5", "-0.5", "0.45", "-0.5")]
    assert box.upper.tolist() == [_up(Fraction(t)) for t in ("0.679857769", "0.5", "0.5", "0.5", "-0.45")]
    assert disjuncts(spec) == [([[-1.0, 0.0, 0.0, 0.0, 0.0]], [_up(Fraction("-3.991125645861615"))])]


def test_acasxu_prop_6(benchmarks_dir):
    pairs = acas(benchmarks_dir, 6)
    assert len(pairs) == 2
    assert [b.lower[1] for b, _ in pairs] == [_down(Fraction("0.11140846")), _down(Fraction("-0.499999896"))]
    for _, spec in pairs:
        assert disjuncts(spec) == [([[-1.0] + [1.0 if k == j else 0.0 for k in range(1, 5)]], [0.0])
                                   for j in range(1, 5)]


def test_oval21(benchmarks_dir):
    files = sorted((benchmarks_dir / "vnncomp2021" / "oval21" / "vnnlib").glob("*.vnnlib"))
    if not files:
        pytest.skip("oval21 vnnlib files not present")
    ((box, spec),) = load_vnnlib(files[0], n_inputs=3072, n_outputs=10)
    assert box.size == 3072 and spec.n_disjuncts == 9


@pytest.mark.parametrize("number, message", [
    ("1e-43429448190325", "is below 10^-10000"),   # (hung in Fraction, which writes out 10^n: the review)
    ("123.45e-10010", "is below 10^-10000"),
    ("1e43429448190325", "is out of the float64 range"),
    ("0e-99999999999", "has an exponent of more than 9 digits"),
])
def test_numbers_with_enormous_exponents_are_refused_at_once(number, message):
    import time

    for text in (f"(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (>= X_0 {number}))\n"
                 "(assert (<= X_0 0.1))\n(assert (<= Y_0 0))\n",
                 "(declare-const X_0 Real)(declare-const Y_0 Real)(assert (>= X_0 0))(assert (<= X_0 0.1))"
                 f"(assert (<= Y_0 {number}))"):
        t = time.monotonic()
        with pytest.raises(InvalidInputError, match=re.escape(message)):
            parse_vnnlib(text, n_inputs=1, n_outputs=1)
        assert time.monotonic() - t < 5.0


@pytest.mark.parametrize("number, value", [("0e-999999999", 0.0), ("-0.000e+999999999", 0.0), ("1e-10000", 0.0),
                                           ("00012.5e-3", 0.0125), ("1E+2", 100.0)])
def test_numbers_with_large_exponents_that_are_fine_keep_their_exact_value(number, value):
    (prop,) = parse_vnnlib("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (>= X_0 -1))(assert (<= X_0 1))"
                           f"(assert (<= Y_0 {number}))", n_inputs=1, n_outputs=1)
    (A, b), = prop.spec.disjuncts
    assert float(b[0]) == value or (value == 0.0 and 0.0 <= float(b[0]) <= 5e-324)
