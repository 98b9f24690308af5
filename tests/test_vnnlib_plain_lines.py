"""The bulk reader of plain lines (``_plain_lines``: one declaration or one input bound per line)
gives exactly what the general reader gives, on generated files that mix plain lines with
everything it must leave alone: mirrored and strict bounds, repeated bounds on one input, bounds
that tie or cross after rounding, general asserts, comments, multi-line expressions, late
declarations and malformed lines. Errors must match too (message and line)."""

import random
import warnings

import numpy as np

from gpuopt.errors import InvalidInputError
from gpuopt.io import vnnlib
from gpuopt.io.vnnlib import parse_vnnlib

NUMBERS = ["0", "1", "-1", "0.1", "0.10000000000000001", "0.3", ".5", "5.", "+2", "-0.0", "1e-3", "2.5E+2",
           "0.1000000000000000055511151231257827021181583404541015625", "1e-320", "4.9406564584124654e-324",
           "0.30000000000000004", "123456789012345678901234567890", "1e-999", "1e999", "0x1", "1_0", "nan", "1e",
           "0.7", "0.69999999999999996", "1.79769313486231575e308", "1.7976931348623157e308", "-1e-330", "-0e5"]
GOOD_NUMBERS = [c for c in NUMBERS if c not in ("1e-999", "1e999", "0x1", "1_0", "nan", "1e", "1.79769313486231575e308")]


def _bound_line(rng, n_in, clean):
    i = rng.randrange(n_in if clean else n_in + 1)  # n_in: an undeclared input
    op = rng.choice(["<=", ">=", "<", ">"])
    c = rng.choice(GOOD_NUMBERS if clean else NUMBERS)
    var = rng.choice([f"X_{i}", f"X_{i}", f"X_{i}", f"Y_{i % 2}"] + ([] if clean else [f"X_0{i}"]))
    body = f"({op} {var} {c})" if rng.random() < 0.7 else f"({op} {c} {var})"
    form = rng.random()
    if form < 0.85:
        return f"(assert {body})"
    if form < 0.9:
        return f"  (assert {body}) ; a comment"
    if form < 0.95:
        return f"(assert {body})\r"
    return f"(assert{body})"


def _general_line(rng, n_in, clean):
    i = rng.randrange(n_in)
    return rng.choice(CLEAN_LINES if clean else [
        f"(assert (or (and (>= X_{i} 0.2) (<= X_{i} 0.6)) (and (>= X_{i} -1) (<= X_{i} 0.25))))",
        "(assert (<= Y_0 Y_1))",
        "(assert (or (>= Y_0 0.5) (< Y_1 -0.5)))",
        f"(assert (<= (* 2 X_{i}) 1))",
        "; only a comment (assert (<= X_0 -100))",
        "",
        f"(assert (and\n  (>= X_{i} 0.1)\n  (assert (<= X_{i} 0.2))\n))",
        f"(assert (and (<= X_{i} 0.9)\n(<= Y_0 3)))",
        f"(declare-const X_{i} Real)",
        "(assert (<= X_0 0.1 0.2))",
    ]).replace("{i}", str(i))


CLEAN_LINES = ["(assert (or (and (>= X_{i} 0.2) (<= X_{i} 0.6)) (and (>= X_{i} -1) (<= X_{i} 0.25))))",
               "(assert (<= Y_0 Y_1))", "(assert (or (>= Y_0 0.5) (< Y_1 -0.5)))", "(assert (<= (* 2 X_{i}) 1))",
               "; only a comment (assert (<= X_0 -100))", "", "(assert (and (<= X_{i} 0.9)\n(<= Y_0 3)))"]


def random_file(rng) -> str:
    n_in = rng.randint(1, 4)
    clean = rng.random() < 0.5
    lines = [f"(declare-const X_{i} Real)" for i in range(n_in)] + ["(declare-const Y_0 Real)", "(declare-const Y_1 Real)"]
    rng.shuffle(lines)
    if not clean and rng.random() < 0.3:  # a late declaration, or a bound before its declaration
        k = rng.randrange(len(lines))
        lines.insert(rng.randrange(len(lines) + 1), lines.pop(k))
    body = []
    for i in range(n_in):  # most files bound every input
        if rng.random() < 0.9:
            body.append(f"(assert (>= X_{i} {rng.choice(['0', '-1', '0.1', '0.30000000000000004', '0.7'])}))")
            body.append(f"(assert (<= X_{i} {rng.choice(['1', '0.3', '0.7', '0.69999999999999996', '2.5E+2'])}))")
    for _ in range(rng.randint(0, 6)):
        body.append(_bound_line(rng, n_in, clean) if rng.random() < 0.6 else _general_line(rng, n_in, clean))
    rng.shuffle(body)
    cut = rng.randrange(len(body) + 1)
    if not clean and rng.random() < 0.2:  # declarations after some of the asserts
        return "\n".join(body[:cut] + lines + body[cut:])
    return "\n".join(lines + body)


def _general_only(monkeypatch):
    monkeypatch.setattr(vnnlib, "_plain_lines", lambda text, source: (text, {}, {}, None, []))


def _outcome(text):
    try:
        props = parse_vnnlib(text, source="f.vnnlib")
    except InvalidInputError as err:
        return ("error", str(err))
    out = []
    for p in props:
        inner = None if p.inner is None else (p.inner.lower.tobytes(), p.inner.upper.tobytes())
        disjuncts = []
        for k in range(p.spec.n_disjuncts):
            A, b, strict = p.spec.exact_rows(k)
            disjuncts.append((A.tolist(), b.tolist(), strict.tolist()))
        out.append((p.box.lower.tobytes(), p.box.upper.tobytes(), inner, disjuncts))
    return ("ok", out)


def test_bulk_reader_equals_the_general_reader(monkeypatch):
    rng = random.Random(20261206)
    texts = [random_file(rng) for _ in range(1500)]
    fast = [_outcome(t) for t in texts]
    _general_only(monkeypatch)
    slow = [_outcome(t) for t in texts]
    kinds = {"ok": 0, "error": 0}
    for text, f, s in zip(texts, fast, slow):
        assert f == s, text
        kinds[f[0]] += 1
    # the generator reaches both outcomes often
    assert kinds["ok"] > 300 and kinds["error"] > 300, kinds


def test_the_dnf_size_limit_counts_the_bounds_read_above(monkeypatch):
    """The size limit grows with the comparisons read so far: bounds read in bulk count where
    they stand in the file, as the general reader counts them."""
    monkeypatch.setattr(vnnlib, "MAX_DNF_TERMS", 4)
    rng = random.Random(7)
    texts = []
    for _ in range(300):
        n = rng.randint(1, 4)
        lines = [f"(declare-const X_{i} Real)" for i in range(n)] + ["(declare-const Y_0 Real)"]
        body = [f"(assert (>= X_{i} -1))" for i in range(n)] + [f"(assert (<= X_{i} 1))" for i in range(n)]
        for _ in range(rng.randint(1, 2)):  # a product of disjunctions within one assert
            ors = [" ".join(f"(<= Y_0 {j})" for j in range(rng.randint(2, 3))) for _ in range(2)]
            body.insert(rng.randrange(len(body) + 1), "(assert (and " + " ".join(f"(or {o})" for o in ors) + "))")
        texts.append("\n".join(lines + body))
    fast = [_outcome(t) for t in texts]
    _general_only(monkeypatch)
    slow = [_outcome(t) for t in texts]
    assert fast == slow
    assert 50 < sum(f[0] == "error" for f in fast) < 250  # the limit is reached in some, not all


def test_bounds_at_the_float64_limits_and_signed_zeros(monkeypatch):
    texts = ["(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (>= X_0 -1))\n"
             f"(assert (<= X_0 {c}))\n(assert (<= Y_0 0))" for c in ("1.79769313486231575e308",
                                                                    "1.7976931348623157e308", "-1e-330", "-0.0")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning from rounding a bound of DBL_MAX
        fast = [_outcome(t) for t in texts]
    assert fast[0][0] == "error" and "out of the float64 range" in fast[0][1]
    assert fast[2][1][0][1] == np.array([-0.0]).tobytes()  # a negative bound that underflows keeps its sign
    assert fast[3][1][0][1] == np.array([0.0]).tobytes()
    _general_only(monkeypatch)
    assert fast == [_outcome(t) for t in texts]


def test_bulk_reader_takes_the_plain_lines():
    text = "\n".join(["(declare-const X_0 Real)", "(declare-const X_1 Real)", "(declare-const Y_0 Real)",
                      "(assert (<= X_0 0.1))", "(assert (>= 0.5 X_1))", "(assert (> X_0 -0.1))",
                      "(assert (<= X_0 0.05))", "(assert (>= X_1 0))", "(assert (<= Y_0 1))"])
    out, declared, lines, base, starts = vnnlib._plain_lines(text, "f")
    assert set(declared) == {"X_0", "X_1", "Y_0"} and lines["Y_0"] == 3
    # the second upper bound of X_0 and the output bound are left to the general reader, lines kept
    assert out.split("\n") == [""] * 6 + ["(assert (<= X_0 0.05))", "", "(assert (<= Y_0 1))"]
    assert base.tokens == ({0: ("-0.1", True), 1: ("0", False)}, {0: ("0.1", False), 1: ("0.5", False)})
    (p,) = parse_vnnlib(text)
    # -0.1 in float64 is below -1/10: the outer bound, and one step up is the inner (strict) one
    assert p.box.upper[0] == 0.05 and p.box.lower[0] == -0.1
    assert p.inner.lower[0] == np.nextafter(-0.1, 1)
    assert p.inner.upper[0] == np.nextafter(0.05, -1)  # 0.05 in float64 is above 1/20


def test_a_large_box_reads_in_bulk():
    n = 60000
    rng = np.random.default_rng(0)
    x = rng.random(n)
    lines = [f"(declare-const X_{i} Real)" for i in range(n)] + ["(declare-const Y_0 Real)", "(declare-const Y_1 Real)"]
    for i, v in enumerate(x.tolist()):
        lines.append(f"(assert (<= X_{i} {v + 0.01!r}))")
        lines.append(f"(assert (>= X_{i} {v - 0.01!r}))")
    lines.append("(assert (>= Y_1 Y_0))")
    text = "\n".join(lines)
    (p,) = parse_vnnlib(text)
    assert np.all(p.box.lower <= x - 0.01) and np.all(p.box.upper >= x + 0.01)
    assert np.all(p.box.upper - p.box.lower <= 0.02 + 1e-15)
    assert np.all(p.inner.lower >= p.box.lower) and np.all(p.inner.upper <= p.box.upper)
    # the bounds each round one way: the outer and inner bounds differ by at most one step
    assert np.all((p.inner.lower == p.box.lower) | (p.inner.lower == np.nextafter(p.box.lower, 2)))
