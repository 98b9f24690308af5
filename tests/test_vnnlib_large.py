"""Large VNNLIB files: nn4sys' ``lindex_*.vnnlib`` shape, exactness on generated files, and the
refusal of genuinely exponential formulas.

The nn4sys benchmark (VNN-COMP 2022/2023) writes each ``lindex_N.vnnlib`` as one disjunction of
``2 N`` terms, two per learned-index segment: the same input interval with ``Y_0`` below the
segment's lower limit, then with ``Y_0`` above its upper limit (generator ``cheng_gen.py``,
``write_spec``: numbers ``%.16f`` in 2023, ``%.60g`` in 2022). ``lindex_60000`` is 11 MB.
"""

import math
import random
import re
import time
from fractions import Fraction

import numpy as np
import pytest

from gpuopt.errors import InvalidInputError
from gpuopt.io import vnnlib
from gpuopt.io.vnnlib import load_vnnlib, parse_vnnlib
from gpuopt.regions import Box
from gpuopt.specs import OutputSpec
from helpers import fraction_down, fraction_up, sexpr_tokens, sexpr_tree


_up, _down = fraction_up, fraction_down


def lindex_segments(n: int, seed: int = 0) -> list[tuple[str, str, str, str]]:
    """``n`` segments ``(x_lb, x_ub, y_lb, y_ub)`` as the 2023 generator prints them (``%.16f``):
    short input intervals in [0, 0.1) with distinct lower ends, in random order, and a thin band
    of allowed outputs."""
    rng = random.Random(seed)
    segs = []
    for k in range(n):
        x_lb = (k + rng.uniform(0.0, 0.5)) * (0.1 / n)
        x_ub = x_lb + rng.uniform(1e-9, 0.4) * (0.1 / n)
        y_lb = rng.uniform(0.0, 0.99)
        y_ub = y_lb + 0.0027586397
        segs.append(tuple("%.16f" % v for v in (x_lb, x_ub, y_lb, y_ub)))
    rng.shuffle(segs)
    return segs


def lindex_text(segs) -> str:
    """The file ``write_spec`` writes: the unsafe set is Y_0 outside [y_lb, y_ub] on each interval."""
    lines = ["(declare-const X_0 Real)", "(declare-const Y_0 Real)", "(assert (or"]
    for x_lb, x_ub, y_lb, y_ub in segs:
        lines.append(f"  (and (>= X_0 {x_lb}) (<= X_0 {x_ub}) (<= Y_0 {y_lb}))")
        lines.append(f"  (and (>= X_0 {x_lb}) (<= X_0 {x_ub}) (>= Y_0 {y_ub}))")
    lines.append("))")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# (1) the size of lindex_60000


def test_lindex_60000_loads(tmp_path):
    segs = lindex_segments(60000)
    path = tmp_path / "lindex_60000.vnnlib"
    path.write_text(lindex_text(segs))
    assert path.stat().st_size > 10_000_000
    start = time.perf_counter()
    props = load_vnnlib(path, n_inputs=1, n_outputs=1)
    elapsed = time.perf_counter() - start
    assert elapsed < 60, f"reading took {elapsed:.1f} s"  # about 5 s; quadratic work would take hours
    assert len(props) == 60000
    assert all(p.spec.n_disjuncts == 2 for p in props)
    for k in (0, 1, 777, 31415, 59999):
        x_lb, x_ub, y_lb, y_ub = (Fraction(t) for t in segs[k])
        prop = props[k]  # one pair per segment, in file order
        assert prop.box.lower.tolist() == [_down(x_lb)] and prop.box.upper.tolist() == [_up(x_ub)]
        assert prop.inner.lower.tolist() == [_up(x_lb)] and prop.inner.upper.tolist() == [_down(x_ub)]
        rows = [prop.spec.exact_rows(j) for j in range(2)]
        assert [(A.tolist(), b.tolist(), s.tolist()) for A, b, s in rows] == [
            ([[Fraction(1)]], [y_lb], [False]),  # Y_0 <= y_lb
            ([[Fraction(-1)]], [-y_ub], [False]),  # -Y_0 <= -y_ub
        ]
        assert [b.tolist() for _, b in prop.spec.disjuncts] == [[_up(y_lb)], [_up(-y_ub)]]
    lowers = np.array([p.box.lower[0] for p in props])
    assert np.unique(lowers).size == 60000


# ---------------------------------------------------------------------------------------------
# (2) exactness: the pairs describe the formula's set, checked by an independent evaluator


def _tree(text: str):
    return sexpr_tree(sexpr_tokens(text))


def _value(t, env) -> Fraction:
    if isinstance(t, str):
        return env[t] if t in env else Fraction(t)
    vals = [_value(a, env) for a in t[1:]]
    if t[0] == "+":
        return sum(vals, Fraction(0))
    if t[0] == "-":
        return -vals[0] if len(vals) == 1 else vals[0] - sum(vals[1:], Fraction(0))
    assert t[0] == "*"
    return math.prod(vals, start=Fraction(1))


def _holds(f, env) -> bool:
    op, args = f[0], f[1:]
    if op == "and":
        return all(_holds(a, env) for a in args)
    if op == "or":
        return any(_holds(a, env) for a in args)
    a, b = (_value(x, env) for x in args)
    return {"<=": a <= b, "<": a < b, ">=": a >= b, ">": a > b}[op]


def unsafe_by_formula(asserts, x, y) -> bool:
    """The formula itself, exactly: ``x``, ``y`` are Fractions."""
    env = {f"X_{i}": v for i, v in enumerate(x)} | {f"Y_{j}": v for j, v in enumerate(y)}
    return all(_holds(f, env) for f in asserts)


class PairsOracle:
    """Whether some pair has the float point ``x`` in the float points of its exact box
    (``inner``) and ``y`` in its exact unsafe region."""

    def __init__(self, props):
        self.props = [p for p in props if p.inner is not None]
        self.lower = np.array([p.inner.lower for p in self.props])
        self.upper = np.array([p.inner.upper for p in self.props])

    def __call__(self, x, y) -> bool:
        inside = np.flatnonzero(np.all((self.lower <= x) & (x <= self.upper), axis=1))
        return any(self.props[k].spec.exact_unsafe(y)[0] for k in inside)


def varied_text(n: int, seed: int) -> str:
    """A lindex-like disjunction over two inputs and two outputs with the variations other files
    use: input bounds asserted apart, a second ``or`` of output conditions conjoined with the first,
    ``or``s nested in ``and``s, strict and mirrored comparisons, exact-float (``%.60g``) and
    decimal numbers, the same box in several places, terms with two output rows or none, and terms
    whose boxes are empty."""
    rng = random.Random(seed)
    grid = [Fraction(k, 8) for k in range(9)]
    terms = []
    boxes = []
    for k in range(n):
        if boxes and rng.random() < 0.25:
            lo, hi = rng.choice(boxes)  # a box seen before
        else:
            a = rng.choice(grid[:-1]) + Fraction(rng.randrange(0, 3), 10)  # decimals: 0.1, 0.2
            b = a + rng.choice([Fraction(1, 8), Fraction(3, 10), Fraction(0)])
            lo, hi = (str(float(a)), str(float(b))) if rng.random() < 0.5 else \
                ("%.60g" % float(a), "%.60g" % float(b))
            boxes.append((lo, hi))
        lo_op = rng.choice([">=", ">"])
        hi_cmp = rng.choice([f"(<= X_0 {hi})", f"(< X_0 {hi})", f"(>= {hi} X_0)"])
        c = "%.16f" % rng.uniform(-1, 1)
        d = "%.16f" % rng.uniform(-1, 1)
        out = rng.choice([f"(<= Y_0 {c})", f"(> Y_1 {c})", f"(and (<= Y_0 {c}) (>= Y_1 {d}))",
                          f"(or (< (+ Y_0 Y_1) {c}) (>= (* 2 Y_1) {d}))", "(<= (- Y_0 Y_1) 0.1)", ""])
        terms.append(f"  (and ({lo_op} X_0 {lo}) {hi_cmp} {out})")
    terms.append("  (and (>= X_0 0.5) (<= X_0 0.25) (<= Y_0 0))")  # an empty box
    decls = "\n".join(["(declare-const X_0 Real)", "(declare-const X_1 Real)",
                       "(declare-const Y_0 Real)", "(declare-const Y_1 Real)"])
    return (decls + "\n(assert (>= X_1 -0.5))\n(assert (<= X_1 0.5))\n(assert (or\n" + "\n".join(terms)
            + "\n))\n(assert (or (<= Y_0 0.75) (and (> X_1 0) (<= Y_1 0.9))))\n")


def _points(props, rng, n):
    """Float inputs on and around the inner boxes' ends and inside them; outputs on thresholds
    (as exact Fractions) and off them."""
    ends = sorted({v for p in props for box in (p.box, p.inner) if box is not None
                   for v in (box.lower[0], box.upper[0])})
    x0 = [v for e in ends for v in (e, math.nextafter(e, -1), math.nextafter(e, 2))] + \
        [rng.uniform(-0.1, 1.6) for _ in range(50)]
    thresholds = sorted({s * Fraction(v) for p in props for k in range(p.spec.n_disjuncts)
                         for v in p.spec.exact_rows(k)[1] for s in (1, -1)})
    ys = [t for t in thresholds] + [Fraction(rng.uniform(-1.2, 1.2)) for _ in range(40)]
    for _ in range(n):
        x = np.array([rng.choice(x0), rng.choice([-0.5, 0.0, 5e-324, 0.25, 0.5, math.nextafter(0.5, 1)])])
        y = [rng.choice(ys), rng.choice(ys + [Fraction(9, 10)])]
        yield x, y


@pytest.mark.parametrize("seed", [0, 1])
def test_pairs_match_the_formula_exactly(seed):
    text = varied_text(120, seed)
    props = parse_vnnlib(text)
    asserts = [cmd[1] for cmd in _tree(text) if cmd[0] == "assert"]
    rng = random.Random(seed)
    oracle = PairsOracle(props)
    got, want = [], []
    for x, y in _points(props, rng, 1500):
        got.append(oracle(x, y))
        want.append(unsafe_by_formula(asserts, [Fraction(v) for v in x], y))
    assert got == want
    assert 0.1 < np.mean(want) < 0.9  # both outcomes are exercised


def test_lindex_pairs_match_the_formula_exactly():
    segs = lindex_segments(200, seed=3)
    text = lindex_text(segs)
    props = parse_vnnlib(text)
    assert len(props) == 200 and all(p.spec.n_disjuncts == 2 for p in props)
    asserts = [cmd[1] for cmd in _tree(text) if cmd[0] == "assert"]
    rng = random.Random(3)
    oracle = PairsOracle(props)
    got, want = [], []
    for x, y in _points(props, rng, 600):
        x = x[:1]
        got.append(oracle(x, y[:1]))
        want.append(unsafe_by_formula(asserts, [Fraction(x[0])], y[:1]))
    assert got == want
    assert 0.05 < np.mean(want) < 0.95


def test_boxes_times_outputs_is_not_multiplied_out():
    # 300 boxes conjoined with 300 output conditions: 90000 DNF terms, read as 300 pairs of 300
    # disjuncts without building the 90000 terms
    boxes = " ".join(f"(and (>= X_0 {k}) (<= X_0 {k + 1}))" for k in range(300))
    outs = " ".join(f"(<= Y_0 {k})" for k in range(300))
    text = f"(declare-const X_0 Real)(declare-const Y_0 Real)(assert (or {boxes}))(assert (or {outs}))"
    start = time.perf_counter()
    props = parse_vnnlib(text)
    assert time.perf_counter() - start < 20  # about 1 s
    assert [p.box.lower[0] for p in props] == list(range(300))
    assert all(p.spec.n_disjuncts == 300 for p in props)
    assert [b.tolist() for _, b in props[7].spec.disjuncts] == [[float(k)] for k in range(300)]


# ---------------------------------------------------------------------------------------------
# (3) exponential products are still refused


@pytest.mark.parametrize("kind", ["X", "Y"])
def test_exponential_product_is_refused_quickly(kind):
    n = 25
    decls = "".join(f"(declare-const {kind}_{i} Real)" for i in range(n))
    decls += "(declare-const Y_0 Real)" if kind == "X" else "(declare-const X_0 Real)"
    bounds = "(assert (and (>= X_0 0) (<= X_0 1)))" if kind == "Y" else ""
    ors = " ".join(f"(or (and (>= {kind}_{i} 0) (<= {kind}_{i} 0.5)) (and (>= {kind}_{i} 0.5) (<= {kind}_{i} 1)))"
                   for i in range(n))
    start = time.perf_counter()
    with pytest.raises(InvalidInputError, match=re.escape(
            f"<string>:1: the formula expands to more than {vnnlib.MAX_DNF_TERMS} DNF terms")):
        parse_vnnlib(decls + bounds + f"(assert (and {ors}))")
    assert time.perf_counter() - start < 2.0


def test_linear_disjunction_beyond_the_term_limit_is_read(monkeypatch):
    # an or of 2 * 600 (and box output) terms with the limit at 1000: linear, so read
    monkeypatch.setattr(vnnlib, "MAX_DNF_TERMS", 1000)
    props = parse_vnnlib(lindex_text(lindex_segments(600, seed=5)))
    assert len(props) == 600
    # a product of 11 two-way ors (2048 terms from 22 comparisons) is not
    ors = "".join(f"(assert (or (<= Y_0 {k}) (>= Y_0 {k + 1})))" for k in range(11))
    with pytest.raises(InvalidInputError, match="more than 1000 DNF terms"):
        parse_vnnlib("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (>= X_0 0))(assert (<= X_0 1))" + ors)


# ---------------------------------------------------------------------------------------------
# the fast constructors build what the checked ones build


def test_fast_output_spec_equals_checked_one():
    third = Fraction(1, 3)
    cases = [
        [(np.array([[1.0, -2.0]]), np.array([Fraction(1, 10)], dtype=object), np.array([True]))],
        [(np.array([[third, Fraction(0)], [Fraction(1), Fraction(-5, 2)]], dtype=object),
          np.array([Fraction(7), Fraction(-1, 7)], dtype=object), np.array([False, True])),
         (np.zeros((1, 2)), np.zeros(1), np.zeros(1, dtype=bool))],
        [(np.zeros((1, 2)), np.zeros(1), np.zeros(1, dtype=bool))],
    ]
    for disjuncts in cases:
        slow = OutputSpec([tuple(a.copy() for a in d) for d in disjuncts], 2)
        fast = OutputSpec._from_exact([tuple(a.copy() for a in d) for d in disjuncts], 2)
        assert (slow._exact is None) == (fast._exact is None)
        for k in range(slow.n_disjuncts):
            for s, f in zip(slow.disjuncts[k] + (slow.strict[k], slow._coef_err[k]),
                            fast.disjuncts[k] + (fast.strict[k], fast._coef_err[k])):
                assert s.dtype == f.dtype and s.tobytes() == f.tobytes() and not f.flags.writeable
            for s, f in zip(slow.exact_rows(k), fast.exact_rows(k)):
                assert s.tolist() == f.tolist()


def test_fast_box_equals_checked_one():
    assert vnnlib._PLAIN_BOX
    fast, slow = vnnlib._box([0.0, -1.5], [0.5, 2.0]), Box(np.array([0.0, -1.5]), np.array([0.5, 2.0]))
    assert type(fast) is Box and vars(fast).keys() == vars(slow).keys()
    for name in ("lower", "upper"):
        f, s = getattr(fast, name), getattr(slow, name)
        assert f.dtype == s.dtype == np.float64 and f.tolist() == s.tolist() and not f.flags.writeable
