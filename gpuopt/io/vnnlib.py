"""Reading VNNLIB property files and writing VNN-COMP counterexamples.

Supported subset (as used by VNN-COMP): ``(declare-const X_i Real)`` for the inputs and
``(declare-const Y_j Real)`` for the outputs (each family numbered ``0..n-1`` without gaps),
``;`` comments, and ``(assert F)`` where ``F`` is built from ``and``, ``or`` (any nesting) and the
comparisons ``<=``, ``>=``, ``<``, ``>`` between linear terms: numbers (``3``, ``-0.5``,
``1e-3``), declared variables, ``(+ t ...)``, ``(- t)``, ``(- t u ...)`` and ``(* c t)`` with at
most one non-constant factor. Every number is read exactly (as a :class:`~fractions.Fraction`:
``0.1`` is one tenth, and ``(+ 0.1 0.2)`` equals ``0.3``), and strict comparisons stay strict.

Semantics: the conjunction of all asserts describes the **unsafe** set (the negation of the
property). It is expanded into disjunctive normal form; each DNF term is a conjunction of

* input atoms, each a bound on one variable (``X_i <= c``, ``c < X_i``, possibly scaled, e.g.
  ``(<= (* 3 X_0) 1)``); they are intersected into an exact box, which must bound every ``X_i``.
  It gives two float64 boxes: the **outer** box (bounds rounded outwards, a superset of the exact
  set, used by bounds and proofs) and the **inner** box (the float64 points of the exact set,
  strict bounds excluded; a reported counterexample must lie in it), see :class:`Property`;
* output atoms, linear in the ``Y_j``, each written as a row ``a^T y <= b`` (or ``<``), kept exactly
  in the :class:`~gpuopt.specs.OutputSpec`.

Terms with a constant atom that is false (``(< 0 0)``), or an empty exact box, are dropped; a file
whose every term has an empty input box is refused as contradictory. Terms with the same
box (exact float equality) are grouped: each group becomes one ``(Box, OutputSpec)`` pair whose
disjuncts are the output conjunctions of its terms (a term without output atoms means every
output is unsafe and gets the always-true row ``0 <= 0``). Pairs are returned in order of first
appearance, as :class:`Property` tuples ``(box, spec)`` that also carry ``.inner``. An empty list
means the unsafe set is empty, so the property holds trivially.

Size. The DNF is kept factored while it is built, as blocks ``(input terms) x (output terms)``:
input bounds asserted apart from a disjunction of output conditions, or ``(or box_1 box_2)``
conjoined with ``(or out_1 ... out_k)``, are not multiplied out, and a long disjunction of
``(and box output)`` terms (nn4sys' ``lindex_60000.vnnlib``: 120000 such terms, 11 MB) is read
in linear time and memory. Declarations and single-input bounds that stand on lines of their own
(a 224x224x3 image's box is 301,056 such lines) are read in bulk, with the same results (see
:func:`_plain_lines`). The expanded DNF may have at most ``MAX_DNF_TERMS`` terms and
``MAX_DNF_ATOMS`` atoms, or as many as the file has comparisons when that is more (a DNF no
longer than its text is linear); beyond that the formula is refused: conjunctions of
disjunctions multiply (an ``and`` of 30 two-way ``or``s has 2^30 terms). Within one pair,
disjuncts follow the DNF order, except that output conjunctions met under several input terms
that share a box are grouped by input term (the same union).
"""

from __future__ import annotations

import gc
import gzip
import math
from fractions import Fraction
from operator import itemgetter
import re
import struct

import numpy as np

from ..errors import InvalidInputError
from ..problem import NearBox, Problem
from ..regions import Box
from ..specs import OutputSpec, float_down, float_up

__all__ = ["Property", "load_vnnlib", "parse_vnnlib", "format_counterexample", "write_counterexample"]

#: DNF expansions beyond this many terms, or this many atoms over all terms, are refused (unless
#: the file itself has more comparisons than that: a DNF no longer than the text is linear).
MAX_DNF_TERMS = 100_000
MAX_DNF_ATOMS = 20_000_000

# A comparison of two plain tokens on one line, ``(op a b)``, is read as one token (groups 1-3):
# large files are mostly such atoms. Anything else is split into ``(``, ``)``, comments and words
# (group 4). Token indices are positions; an error maps one back to its line (:meth:`_Parser.line`).
_TOKEN = re.compile(r"\((<=|>=|<|>)[^\S\n]+([^\s();]+)[^\S\n]+([^\s();]+)[^\S\n]*\)"
                    r"|(;[^\n]*|\(|\)|[^\s();]+)")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_VAR_NAME = re.compile(r"([XY])_(0|[1-9]\d*)")
#: numbers below ``10^-MAX_DECIMAL_EXPONENT`` in size are refused (their exact value would need that many digits)
MAX_DECIMAL_EXPONENT = 10000
_COMPARISONS = ("<=", ">=", "<", ">")
_STRICT = ("<", ">")
_CHUNK = 1 << 20  # characters tokenised at a time
_ZERO = Fraction(0)
_ONE = Fraction(1)
_MINUS_ONE = Fraction(-1)
_INF = math.inf
_BY_POSITION = itemgetter(1)


class Property(tuple):
    """One ``(box, spec)`` pair of a VNNLIB file (it unpacks as a pair), with ``inner``: the
    float64 box of points that satisfy the exact input constraints (``box`` is its outward-rounded
    hull), or ``None`` when no float64 point does; then ``near`` (:class:`~gpuopt.problem.NearBox`)
    has the float hull on the coordinates with no float64 point (an input fixed at a decimal
    such as ``0.1``), else ``None``."""

    def __new__(cls, box: Box, spec: OutputSpec, inner: Box | None, near: NearBox | None = None):
        obj = super().__new__(cls, (box, spec))
        obj.inner = inner
        obj.near = near
        return obj

    @property
    def box(self) -> Box:
        return self[0]

    def problem(self, network):
        """The :class:`~gpuopt.problem.Problem` of ``network`` on this property (its ``inner`` and
        ``near`` boxes carried along)."""
        return Problem(network, self.box, self.spec, inner=self.inner, near=self.near)

    @property
    def spec(self) -> OutputSpec:
        return self[1]


def _fits_float(q: Fraction) -> bool:
    return abs(q) <= _FLOAT_MAX


_FLOAT_MAX = Fraction(np.finfo(np.float64).max)
_DBL_MAX = float(np.finfo(np.float64).max)


def _plain_box() -> bool:
    """Whether a :class:`Box` holds nothing but its two bound arrays (then :func:`_box` may build
    one without re-checking bounds this module has checked)."""
    try:
        return set(vars(Box(np.zeros(1), np.zeros(1)))) == {"lower", "upper"}
    except TypeError:
        return False


_PLAIN_BOX = _plain_box()


def _box(lower: list, upper: list) -> Box:
    """``Box(lower, upper)`` for float bounds known to be finite with ``lower <= upper``, without
    Box's checks and copies (a file can hold 10^5 boxes)."""
    lo = np.array(lower, dtype=np.float64)
    hi = np.array(upper, dtype=np.float64)
    if not _PLAIN_BOX:
        return Box(lo, hi)
    lo.setflags(write=False)
    hi.setflags(write=False)
    box = object.__new__(Box)
    object.__setattr__(box, "lower", lo)
    object.__setattr__(box, "upper", hi)
    return box


def _sign_against(tok: str, f: float) -> int:
    """The sign of ``f - value(tok)`` for a number token (of a modest exponent), exactly."""
    mant, _, ex = tok.lower().partition("e")
    whole, _, frac = mant.partition(".")
    exponent = (int(ex) if ex else 0) - len(frac)
    m = int(whole + frac)
    n, d = f.as_integer_ratio()
    diff = n - m * 10 ** exponent * d if exponent >= 0 else n * 10 ** -exponent - m * d
    return (diff > 0) - (diff < 0)


class _BaseBox:
    """Bounds ``X_i >= c`` / ``X_i <= c`` asserted on lines of their own (at most one lower and one
    upper bound per input; further ones are read by the general reader): they hold in every DNF
    term. Each is kept as its token (its exact value is made when another atom meets it) and as
    its outer and inner float64 bounds, computed in bulk with the same rounding as
    :func:`~gpuopt.specs.float_down` / :func:`~gpuopt.specs.float_up`."""

    def __init__(self):
        self.tokens = ({}, {})  # [is_upper][i] -> (token, strict)

    def add(self, i: int, is_upper: bool, tok: str, strict: bool) -> bool:
        """Record one bound; False (nothing recorded) when ``i`` has that side already or ``tok``
        is out of float64's range (the general reader reports that)."""
        side = self.tokens[is_upper]
        if i in side:
            return False
        try:
            f = float(tok)
        except ValueError:
            return False
        # the largest double or beyond (the exact value may exceed float64's range), or an exponent
        # too large to compare exactly in integers: the general reader decides those
        if len(tok) > 300 or not abs(f) < _DBL_MAX or (
                f == 0.0 and abs(int(tok.lower().partition("e")[2] or 0)) > 400):
            return False
        side[i] = (tok, strict)
        return True

    def __len__(self) -> int:
        return len(self.tokens[0]) + len(self.tokens[1])

    def finish(self, n_in: int) -> None:
        """Arrays over the ``n_in`` inputs: ``nearest``, ``outer``, ``inner`` per side (NaN where
        the side has no base bound), and ``empty``: the inputs whose two base bounds admit no
        value, decided exactly."""
        self.nearest, self.outer, self.inner = [], [], []
        for is_upper, side in enumerate(self.tokens):
            near, outer, inner = (np.full(n_in, np.nan) for _ in range(3))
            if side:
                idx = np.fromiter(side, dtype=np.int64, count=len(side))
                toks = [t for t, _ in side.values()]
                f = np.array([float(t) for t in toks])
                sign = np.array([_sign_against(t, x) for t, x in zip(toks, f.tolist())])
                f[(f == 0) & (sign == 0)] = 0.0  # "-0.0" is 0; a negative value that underflows stays -0.0
                strict = np.array([s for _, s in side.values()], dtype=bool)
                towards = np.inf if is_upper else -np.inf
                near[idx] = f
                # lower: outer = largest float <= c, inner = smallest float >= c (> c when strict);
                # upper: the mirror images (sign is the sign of f - c)
                out_moves = sign < 0 if is_upper else sign > 0
                in_moves = (sign > 0 if is_upper else sign < 0) | (strict & (sign == 0))
                outer[idx] = np.where(out_moves, np.nextafter(f, towards), f)
                inner[idx] = np.where(in_moves, np.nextafter(f, -towards), f)
            self.nearest.append(near)
            self.outer.append(outer)
            self.inner.append(inner)
        # rounding to nearest is monotone: nearest(lo) < nearest(hi) implies lo < hi exactly
        both = np.flatnonzero(~(self.nearest[0] < self.nearest[1]) & ~np.isnan(self.nearest[0])
                              & ~np.isnan(self.nearest[1]))
        self.empty = {}
        for i in both.tolist():
            (l, ls), (h, hs) = (self.exact(side, i) for side in (0, 1))
            if l > h or (l == h and (ls or hs)):
                self.empty[i] = ((l, ls), (h, hs))

    def exact(self, is_upper: int, i: int):
        """``(exact value, strict)`` of input ``i``'s base bound on one side, or None."""
        t = self.tokens[is_upper].get(i)
        return None if t is None else (Fraction(t[0]), t[1])


def _plain_lines(text: str, source: str):
    """Read the lines that hold one ``(declare-const X_i Real)`` or one bound ``(assert (op X_i
    number))`` (or ``(op number X_i)``), written with single spaces as large files are, in bulk;
    returns ``(text, declared, decl_lines, base, starts)``: the text with those lines blanked (line
    numbers are kept), the variables declared that way (``name -> (kind, index)``, with their
    lines), a :class:`_BaseBox` of the bounds, or None, and for each command left to the general
    reader the number of bounds read in bulk above it (the DNF size limit counts them as read).
    Other lines go to the general reader.

    The same file read by the general reader alone gives the same result: a declaration is taken
    only before anything else but comments (so every later command sees it declared, as it
    would), and a bound only where no expression is open and its input was declared above it.
    A token is a number here when ``float`` reads it and it has only the characters of one
    (``float`` then reads exactly what ``_NUMBER`` matches).
    """
    if "(declare-const" not in text:
        return text, {}, {}, None, []
    lines = text.split("\n")
    starts: list[int] = []
    declared: dict[str, tuple[str, int]] = {}
    decl_lines: dict[str, int] = {}
    base = _BaseBox()
    depth = 0  # of parentheses opened by the general text so far
    general = False  # whether the general text has a command yet
    for n, line in enumerate(lines):
        parts = line.split() if depth == 0 else ()
        if len(parts) == 4 and parts[0] == "(assert" and parts[1] in _BOUND_OPS and parts[3][-2:] == "))":
            a, b, upper = parts[2], parts[3][:-2], parts[1] in ("(<=", "(<")
            var = declared.get(a)
            if var is None:
                var, a, b, upper = declared.get(b), b, a, not upper
            if (var is not None and var[0] == "X" and not b.strip(_NUMBER_CHARS)
                    and base.add(var[1], upper, b, parts[1] in ("(<", "(>"))):
                lines[n] = ""  # read: the line is left out
                continue
        elif len(parts) == 3 and parts[0] == "(declare-const" and parts[2] == "Real)" and not general:
            m = _VAR_NAME.fullmatch(parts[1])
            if m is not None:
                name = parts[1]
                if name in declared:
                    raise InvalidInputError(f"{name} is declared twice (first on line {decl_lines[name]})",
                                            path=source, line=n + 1)
                declared[name] = (m.group(1), int(m.group(2)))
                decl_lines[name] = n + 1
                lines[n] = ""
                continue
        code = line.partition(";")[0]
        if code and not code.isspace():
            general = True
            if "(" not in code:
                depth -= code.count(")")
                continue
            for ch in code:  # each command the general reader will read: the bounds read in bulk before it
                if ch == "(":
                    if depth == 0:
                        starts.append(len(base))
                    depth += 1
                elif ch == ")":
                    depth -= 1
    if not declared:
        return text, {}, {}, None, []
    return "\n".join(lines), declared, decl_lines, (base if len(base) else None), starts


_BOUND_OPS = frozenset(("(<=", "(>=", "(<", "(>"))
_NUMBER_CHARS = "0123456789.eE+-"


class _List:
    """A parenthesised expression: ``items`` (``_List`` or ``(text, pos)`` atoms); ``pos`` is a token index."""

    __slots__ = ("items", "pos")

    def __init__(self, pos: int):
        self.items: list = []
        self.pos = pos


class _Cmp(_List):
    """A comparison ``(op a b)`` of two plain tokens, read as one token; its ``items`` are those
    the generic reader would give (all at the same position, on the same line)."""

    __slots__ = ("op", "a", "b")

    def __init__(self, pos: int, op: str, a: str, b: str):
        self.pos = pos
        self.op = op
        self.a = a
        self.b = b

    @property
    def items(self) -> list:
        return [(self.op, self.pos), (self.a, self.pos), (self.b, self.pos)]


def _pos(node) -> int:
    return node.pos if isinstance(node, _List) else node[1]


def _show(node) -> str:
    return f"'{node[0]}'" if not isinstance(node, _List) else "a parenthesised expression"


# Atoms. A comparison reads as True or False when constant, else as an input atom
# ``("X", i, is_upper, bound, strict)`` or an output atom ``("Y", pos, row, rhs, strict)``: the row
# ``sum(a * y_j for j, a in row) <= rhs`` (``<`` when strict), ``pos`` its token index (rows are
# kept in textual order). Output atoms are cached without their position, as ``("Y", row, rhs, strict)``.


def _placed(value, pos: int):
    if value.__class__ is tuple and value[0] == "Y":
        return ("Y", pos, value[1], value[2], value[3])
    return value


class _Dnf:
    """A formula in disjunctive normal form, kept factored: ``blocks`` is a list of pairs
    ``(xs, ys)``, standing for the terms ``x and y`` for each input term ``x`` in ``xs`` (a tuple of
    input atoms) and each output term ``y`` in ``ys`` (a tuple of output atoms); neither list is
    empty and neither is ever changed. ``n_terms`` and ``n_atoms`` count the terms and atoms of the
    expanded DNF."""

    __slots__ = ("blocks", "n_terms", "n_atoms")

    def __init__(self, blocks: list, n_terms: int, n_atoms: int):
        self.blocks = blocks
        self.n_terms = n_terms
        self.n_atoms = n_atoms


def _atom_dnf(value) -> _Dnf:
    if value is True:
        return _Dnf([([()], [()])], 1, 0)
    if value is False:
        return _Dnf([], 0, 0)
    if value[0] == "X":
        return _Dnf([([(value,)], [()])], 1, 1)
    return _Dnf([([()], [(value,)])], 1, 1)


def _product(left: list, right: list) -> list:
    """The terms ``a + b`` for ``a`` in ``left``, ``b`` in ``right`` (a list is shared, not copied,
    when the other is the single empty term)."""
    if len(left) == 1 and not left[0]:
        return right
    if len(right) == 1 and not right[0]:
        return left
    return [a + b for a in left for b in right]


class _Parser:
    """Turns VNNLIB text into the list of ``(Box, OutputSpec)`` pairs; see the module docstring."""

    def __init__(self, text: str, source: str):
        self.text, self.declared, self.decl_lines, self.base, self.bulk_starts = _plain_lines(text, source)
        self.bulk_read = 0  # bounds read in bulk above the command being read
        self.source = source
        self.decl_pos: dict[str, int] = {}
        self.numbers: dict[str, Fraction] = {}  # number token -> exact value
        self.atoms: dict[tuple, object] = {}  # (op, a, b) of a one-token comparison -> its atom
        self.n_comparisons = 0  # comparisons read so far (by the general reader)
        self.unit_rows: dict[tuple, tuple] = {}  # (j, y_j <= c) -> row of y_j <= c or -y_j <= -c

    # -- errors ---------------------------------------------------------------------------------
    def line(self, tok: int) -> int:
        """1-based line of token number ``tok`` (positions are only computed on error)."""
        offset = next(m.start() for i, m in enumerate(_TOKEN.finditer(self.text)) if i == tok)
        return self.text.count("\n", 0, offset) + 1

    def error(self, message: str, pos: int | None = None) -> InvalidInputError:
        return InvalidInputError(message, path=self.source, line=None if pos is None else self.line(pos))

    # -- s-expressions --------------------------------------------------------------------------
    def read(self):
        """Yield the top-level s-expressions as each one closes, built without recursion.

        Nodes record the index of their first token, not its offset, so that tokenising stays a
        ``findall`` (per chunk of about 1 MB of text: no token spans a line break, so chunks end
        after one); :meth:`line` maps an index back to a line number. Yielding each command as
        soon as it is complete lets its tree be freed before the next one is built.
        """
        stack: list[_List] = []
        text = self.text
        i = -1
        start = 0
        while start < len(text):
            end = text.find("\n", start + _CHUNK)
            end = len(text) if end < 0 else end + 1
            tokens = _TOKEN.findall(text, start, end)
            start = end
            for op, a, b, tok in tokens:
                i += 1
                if op:
                    node = _Cmp(i, op, a, b)
                    if stack:
                        stack[-1].items.append(node)
                    else:
                        yield node
                elif tok == "(":
                    stack.append(_List(i))
                elif tok == ")":
                    if not stack:
                        raise self.error("unbalanced parentheses: unexpected ')'", i)
                    node = stack.pop()
                    if stack:
                        stack[-1].items.append(node)
                    else:
                        yield node
                elif tok[0] == ";":
                    continue
                elif stack:
                    stack[-1].items.append((tok, i))
                else:
                    raise self.error(f"unexpected '{tok}' outside parentheses", i)
        if stack:
            raise self.error("unbalanced parentheses: '(' is never closed", stack[-1].pos)

    # -- terms ----------------------------------------------------------------------------------
    def head(self, node: _List, what: str) -> str:
        if not node.items:
            raise self.error(f"empty expression '()' where {what} was expected", node.pos)
        h = node.items[0]
        if isinstance(h, _List):
            raise self.error("expected an operator name, got a parenthesised expression", h.pos)
        return h[0]

    def number(self, tok: str, pos: int) -> Fraction | None:
        """The exact value of the number ``tok``; ``None`` when ``tok`` is not a number."""
        q = self.numbers.get(tok)
        if q is not None:
            return q
        if not _NUMBER.fullmatch(tok):
            return None
        whole, _, frac = tok.partition(".")
        if "e" in tok or "E" in tok or len(whole) > 300:
            q = _ZERO if self.check_exponent(tok, pos) else Fraction(tok)
            if not _fits_float(q):
                raise self.error(f"number '{tok}' is out of the float64 range", pos)
        else:  # a plain decimal below 10^300: exactly int(digits) / 10^len(fraction digits)
            q = Fraction(int(whole + frac), 10 ** len(frac))
        self.numbers[tok] = q
        return q

    def check_exponent(self, tok: str, pos: int) -> bool:
        """Refuse a number whose decimal exponent is beyond :data:`MAX_DECIMAL_EXPONENT` in size
        (the review found ``1e-43429448190325`` hanging in ``Fraction``, which writes out ``10^n``);
        above the float64 range it is the range's error. Returns whether the number is zero
        (whatever its exponent, up to 9 digits of it)."""
        mantissa, e, exponent = tok.lower().partition("e")
        digits = mantissa.lstrip("+-")
        whole, _, frac = digits.partition(".")
        if not (whole + frac).strip("0"):
            if e and len(exponent.lstrip("+-")) > 9:
                raise self.error(f"number '{tok}' has an exponent of more than 9 digits", pos)
            return True
        lead = len(whole.lstrip("0")) - 1 if whole.strip("0") else -(len(frac) - len(frac.lstrip("0")) + 1)
        if len(exponent.lstrip("+-")) > 9:
            size = math.inf if not exponent.startswith("-") else -math.inf
        else:
            size = (int(exponent) if e else 0) + lead  # the value is about 10^size
        if size > 310:
            raise self.error(f"number '{tok}' is out of the float64 range", pos)
        if size < -MAX_DECIMAL_EXPONENT:
            raise self.error(f"number '{tok}' is below 10^-{MAX_DECIMAL_EXPONENT}, far under the least float64 "
                             "(4.9e-324); write 0 if that is meant", pos)
        return False

    def term(self, node) -> tuple[dict, Fraction]:
        """A linear term as ``(coefficients by variable, constant)``, exactly."""
        if not isinstance(node, _List):
            tok, pos = node
            var = self.declared.get(tok)
            if var is not None:
                return {var: _ONE}, _ZERO
            q = self.number(tok, pos)
            if q is not None:
                return {}, q
            if _VAR_NAME.fullmatch(tok):
                raise self.error(f"variable {tok} is used but not declared", pos)
            if tok[0] in "0123456789.+-":
                raise self.error(f"invalid number '{tok}'", pos)
            raise self.error(f"unknown symbol '{tok}' (expected a number or a declared variable)", pos)
        op = self.head(node, "a term")
        args = node.items[1:]
        if op == "+":
            if not args:
                raise self.error("'+' needs at least 1 argument, got 0", node.pos)
            coef: dict = {}
            const = _ZERO
            for a in args:
                c, k = self.term(a)
                for v, x in c.items():
                    coef[v] = coef.get(v, 0) + x
                const += k
            return coef, const
        if op == "-":
            if not args:
                raise self.error("'-' needs at least 1 argument, got 0", node.pos)
            coef, const = self.term(args[0])
            if len(args) == 1:
                return {v: -x for v, x in coef.items()}, -const
            coef = dict(coef)
            for a in args[1:]:
                c, k = self.term(a)
                for v, x in c.items():
                    coef[v] = coef.get(v, 0) - x
                const -= k
            return coef, const
        if op == "*":
            if len(args) < 2:
                raise self.error(f"'*' needs at least 2 arguments, got {len(args)}", node.pos)
            scale = _ONE
            linear = None
            for a in args:
                c, k = self.term(a)
                if c:
                    if linear is not None:
                        raise self.error("nonlinear term: '*' multiplies two non-constant factors", node.pos)
                    linear = (c, k)
                else:
                    scale *= k
            if linear is None:
                return {}, scale
            c, k = linear
            return {v: scale * x for v, x in c.items()}, scale * k
        if op in _COMPARISONS or op in ("and", "or"):
            raise self.error(f"'{op}' is a formula, but a term was expected", node.pos)
        raise self.error(f"unknown operator '{op}' in a term (expected +, - or *)", node.pos)

    # -- formulas -> DNF ------------------------------------------------------------------------
    def comparison(self, op: str, node: _List):
        """One comparison: True or False when constant, an input atom, or an output atom without
        its position (see the atom layouts above)."""
        args = node.items[1:]
        if len(args) != 2:
            raise self.error(f"'{op}' needs exactly 2 arguments, got {len(args)}", node.pos)
        fast = self.plain_bound(op, args)
        if fast is not None:
            return fast
        ca, ka = self.term(args[0])
        cb, kb = self.term(args[1])
        if op in (">=", ">"):
            ca, ka, cb, kb = cb, kb, ca, ka
        strict = op in _STRICT
        # lhs - rhs <= 0 (< 0 when strict), exactly
        coef = dict(ca)
        for v, x in cb.items():
            coef[v] = coef.get(v, 0) - x
        const = ka - kb
        coef = {v: x for v, x in coef.items() if x != 0}
        if not _fits_float(const) or not all(_fits_float(x) for x in coef.values()):
            raise self.error("a coefficient overflows float64", node.pos)
        xs = [v for v in coef if v[0] == "X"]
        if xs and len(xs) != len(coef):
            raise self.error("a comparison mixes inputs X_* and outputs Y_*; unsupported", node.pos)
        if not coef:
            return const < 0 if strict else const <= 0
        if xs:
            if len(xs) > 1:
                raise self.error(
                    "general linear constraints on inputs are unsupported "
                    "(each input comparison must bound a single X_i)", node.pos)
            (v, a), = coef.items()
            bound = -const / a
            if not _fits_float(bound):
                raise self.error("an input bound overflows float64", node.pos)
            return ("X", v[1], a > 0, bound, strict)
        row = tuple(sorted((v[1], x) for v, x in coef.items()))
        return ("Y", row, -const, strict)

    def plain_bound(self, op: str, args: list):
        """Fast path for the common ``(op X_i number)``, ``(op Y_j number)`` and their mirror
        images; ``None`` otherwise. Gives what the general path gives."""
        a, b = args
        if isinstance(a, _List) or isinstance(b, _List):
            return None
        upper = op in ("<=", "<")
        var = self.declared.get(a[0])
        if var is None:
            var, a, b, upper = self.declared.get(b[0]), b, a, not upper
        if var is None or b[0] in self.declared:
            return None
        c = self.number(*b)
        if c is None:
            return None
        if var[0] == "X":
            return ("X", var[1], upper, c, op in _STRICT)
        # y_j <= c is the row (1) y_j <= c; y_j >= c is (-1) y_j <= -c (rows shared between atoms)
        row = self.unit_rows.get((var[1], upper))
        if row is None:
            row = self.unit_rows[var[1], upper] = ((var[1], _ONE if upper else _MINUS_ONE),)
        return ("Y", row, c if upper else -c, op in _STRICT)

    def part(self, node):
        """A formula as a :class:`_Dnf`, or, for a comparison, its atom (True, False or a tuple)."""
        if node.__class__ is _Cmp:
            self.n_comparisons += 1
            key = (node.op, node.a, node.b)
            value = self.atoms.get(key)
            if value is None:
                value = self.atoms[key] = self.comparison(node.op, node)
            return _placed(value, node.pos)
        if not isinstance(node, _List):
            raise self.error(f"expected a formula, got {_show(node)}", _pos(node))
        op = self.head(node, "a formula")
        if op in _COMPARISONS:
            self.n_comparisons += 1
            return _placed(self.comparison(op, node), node.pos)
        if op in ("and", "or"):
            args = node.items[1:]
            if not args:
                raise self.error(f"'{op}' needs at least 1 argument, got 0", node.pos)
            parts = [self.part(a) for a in args]
            return self.conjoin(parts, node.pos) if op == "and" else self.disjoin(parts, node.pos)
        raise self.error(f"unknown operator '{op}' in a formula (expected and, or, <=, >=, <, >)", node.pos)

    def formula(self, node) -> _Dnf:
        value = self.part(node)
        return value if value.__class__ is _Dnf else _atom_dnf(value)

    def check_size(self, n_terms: int, n_atoms: int, pos: int | None) -> None:
        max_terms = max(MAX_DNF_TERMS, self.n_comparisons + self.bulk_read)
        max_atoms = max(MAX_DNF_ATOMS, self.n_comparisons + self.bulk_read)
        if n_terms > max_terms or n_atoms > max_atoms:
            raise self.error(f"the formula expands to more than {max_terms} DNF terms "
                             f"or {max_atoms} atoms; unsupported", pos)

    def conjoin(self, parts: list, pos: int | None) -> _Dnf:
        """DNF of a conjunction: single terms are merged in linear time, and the size of the
        product of the others is checked before it is built."""
        xs: list = []
        ys: list = []
        multi = []
        false = False
        for p in parts:
            if p.__class__ is not _Dnf:
                if p is True:
                    continue
                if p is False:
                    false = True
                elif p[0] == "X":
                    xs.append(p)
                else:
                    ys.append(p)
                continue
            blocks = p.blocks
            if not blocks:
                false = True
            elif len(blocks) == 1 and len(blocks[0][0]) == 1 and len(blocks[0][1]) == 1:
                xs.extend(blocks[0][0][0])
                ys.extend(blocks[0][1][0])
            else:
                multi.append(p)
        if false:
            return _Dnf([], 0, 0)
        if len(multi) == 1 and not xs and not ys:
            return multi[0]
        n_terms, n_atoms = 1, len(xs) + len(ys)
        for d in multi:
            n_atoms = n_atoms * d.n_terms + d.n_atoms * n_terms
            n_terms *= d.n_terms
            self.check_size(n_terms, n_atoms, pos)
        blocks = [([tuple(xs)], [tuple(ys)])]
        for d in multi:
            blocks = [(_product(x1, x2), _product(y1, y2)) for x1, y1 in blocks for x2, y2 in d.blocks]
        return _Dnf(blocks, n_terms, n_atoms)

    def disjoin(self, parts: list, pos: int | None) -> _Dnf:
        """DNF of a disjunction: the blocks in order, neighbours that share their input terms
        (or their output terms) merged into one block."""
        n_terms = n_atoms = 0
        work: list = []  # [xs, ys, xs is ours, ys is ours]: only lists made here are extended
        for p in parts:
            if p.__class__ is not _Dnf:
                p = _atom_dnf(p)
            n_terms += p.n_terms
            n_atoms += p.n_atoms
            for xs, ys in p.blocks:
                if work:
                    last = work[-1]
                    if last[0] == xs:
                        if not last[3]:
                            last[1], last[3] = list(last[1]), True
                        last[1].extend(ys)
                        continue
                    if last[1] == ys:
                        if not last[2]:
                            last[0], last[2] = list(last[0]), True
                        last[0].extend(xs)
                        continue
                work.append([xs, ys, False, False])
        self.check_size(n_terms, n_atoms, pos)
        return _Dnf([(w[0], w[1]) for w in work], n_terms, n_atoms)

    # -- top level ------------------------------------------------------------------------------
    def declare(self, node: _List) -> None:
        if len(node.items) != 3:
            raise self.error(f"'declare-const' needs 2 arguments, got {len(node.items) - 1}", node.pos)
        name, typ = node.items[1], node.items[2]
        if isinstance(name, _List):
            raise self.error("'declare-const' expects a variable name", name.pos)
        m = _VAR_NAME.fullmatch(name[0])
        if not m:
            raise self.error(f"unsupported variable name '{name[0]}' (expected X_i or Y_j)", name[1])
        if isinstance(typ, _List) or typ[0] != "Real":
            raise self.error(f"{name[0]} must be declared 'Real', got {_show(typ)}", _pos(typ))
        if name[0] in self.declared:
            first = self.decl_lines.get(name[0]) or self.line(self.decl_pos[name[0]])
            raise self.error(f"{name[0]} is declared twice (first on line {first})", name[1])
        self.declared[name[0]] = (m.group(1), int(m.group(2)))
        self.decl_pos[name[0]] = name[1]

    def count(self, kind: str, given: int | None) -> int:
        idx = sorted(i for k, i in self.declared.values() if k == kind)
        what, has = ("inputs", "takes") if kind == "X" else ("outputs", "has")
        if not idx:
            raise self.error(f"the file declares no {what} {kind}_*")
        n = len(idx)
        if idx[-1] != n - 1:
            missing = next(i for i, j in enumerate(idx) if i != j)
            raise self.error(f"{what} must be declared as {kind}_0..{kind}_{{n-1}} without gaps: "
                             f"{kind}_{missing} is missing")
        if given is not None and int(given) != n:
            raise self.error(f"the VNNLIB declares {n} {what} {kind}_* but the network {has} {int(given)} {what}")
        return n

    def parse(self, n_inputs: int | None, n_outputs: int | None) -> list[Property]:
        dnfs = []
        for k, node in enumerate(self.read()):
            if self.base is not None:
                self.bulk_read = self.bulk_starts[k] if k < len(self.bulk_starts) else len(self.base)
            cmd = self.head(node, "a command")
            if cmd == "declare-const":
                self.declare(node)
            elif cmd == "assert":
                if len(node.items) != 2:
                    raise self.error(f"'assert' needs exactly 1 argument, got {len(node.items) - 1}", node.pos)
                try:
                    dnfs.append(self.formula(node.items[1]))
                except RecursionError:
                    raise self.error("the formula is nested too deeply", node.pos) from None
            else:
                raise self.error(f"unknown command '{cmd}' (expected declare-const or assert)", node.pos)
        if not self.declared:
            raise self.error("the file declares no variables (empty or not a VNNLIB file)")
        node = None  # the syntax trees and the caches are no longer needed
        self.bulk_read = len(self.base) if self.base is not None else 0
        self.atoms = self.numbers = None
        n_in = self.count("X", n_inputs)
        n_out = self.count("Y", n_outputs)
        if self.base is not None:
            self.base.finish(n_in)
        dnf = self.conjoin(dnfs, None)
        del dnfs
        return self.group(dnf, n_in, n_out)

    def group(self, dnf: _Dnf, n_in: int, n_out: int) -> list[Property]:
        """One Property per distinct float box, in order of first appearance; its disjuncts are
        the output terms met with that box."""
        groups: dict[bytes, tuple] = {}  # box key -> (float bounds, [output term lists])
        boxes: dict[int, tuple | str] = {}  # id(input term) -> (key, bounds), or why it is empty
        empty_reason = None
        for xs, ys in dnf.blocks:
            for x in xs:
                box = boxes.get(id(x))
                if box is None:
                    box = boxes[id(x)] = self.exact_box(x, n_in, dnf.n_terms)
                if box.__class__ is str:
                    empty_reason = box
                    continue  # an infeasible term
                g = groups.get(box[0])
                if g is None:
                    groups[box[0]] = (box[1], [ys])
                else:
                    g[1].append(ys)
        if not groups and empty_reason is not None:
            raise self.error(empty_reason)
        rows: dict[int, tuple] = {}  # id(output term) -> (A, b, strict)
        self.matrices: dict[tuple, np.ndarray] = {}  # A by the ids of its rows
        self.flags: dict[tuple, np.ndarray] = {}  # strict by its flags
        result = []
        for (lo, hi, lo_in, hi_in), yss in groups.values():
            disjuncts = []
            for ys in yss:
                for y in ys:
                    r = rows.get(id(y))
                    if r is None:
                        r = rows[id(y)] = self.disjunct(y, n_out)
                    disjuncts.append(r)
            spec = OutputSpec._from_exact(disjuncts, n_out)
            near = None
            if all(-_INF < a <= b < _INF for a, b in zip(lo, hi)):
                box = _box(lo, hi)
                # the inner bounds lie within the outer ones, so they are finite when ordered
                inner = _box(lo_in, hi_in) if all(a <= b for a, b in zip(lo_in, hi_in)) else None
                if inner is None:  # coordinates with no float64 point: their float hull stands in
                    hull = np.array(lo_in) > np.array(hi_in)
                    near = NearBox(Box(np.where(hull, lo, lo_in), np.where(hull, hi, hi_in)), hull)
            else:  # not expected: let Box report it
                box = Box(np.array(lo), np.array(hi))
                inner = Box(np.array(lo_in), np.array(hi_in)) if np.all(np.array(lo_in) <= np.array(hi_in)) else None
            result.append(Property(box, spec, inner, near))
        return result

    def disjunct(self, y: tuple, n_out: int) -> tuple:
        """The rows ``(A, b, strict)`` of one output term: float64 ``A`` when every coefficient
        is a float64 number, else Fractions; ``b`` exact. ``A`` and ``strict`` are shared between
        terms with the same coefficients and flags (they become read-only)."""
        if not y:  # no output atom: every output is unsafe, 0 <= 0
            return np.zeros((1, n_out)), np.zeros(1), np.zeros(1, dtype=bool)
        if len(y) == 1:
            out = y
            key = (id(y[0][2]),)
            flags = (y[0][4],)
        else:
            out = sorted(y, key=_BY_POSITION)  # rows in textual order
            key = tuple(id(atom[2]) for atom in out)  # the rows live as long as the DNF
            flags = tuple(atom[4] for atom in out)
        A = self.matrices.get(key)
        if A is None:
            rows = [atom[2] for atom in out]
            # float coefficients unless one is not a float64 number (then exact Fractions)
            exact_a = all(Fraction(float(x)) == x for row in rows for _, x in row)
            A = np.zeros((len(out), n_out)) if exact_a else np.full((len(out), n_out), _ZERO, dtype=object)
            for r, row in enumerate(rows):
                for j, x in row:
                    A[r, j] = float(x) if exact_a else x
            self.matrices[key] = A
        strict = self.flags.get(flags)
        if strict is None:
            strict = self.flags[flags] = np.array(flags, dtype=bool)
        b = np.empty(len(out), dtype=object)
        b[:] = [atom[3] for atom in out]
        return A, b, strict

    def exact_box(self, x_atoms: tuple, n_in: int, n_terms: int) -> tuple | str:
        """Intersect input atoms exactly: ``(key, (lo, hi, lo_in, hi_in))``, the outer and inner
        float bounds (lists) and their bytes as a key, or a message when the exact box is empty."""
        if self.base is not None:
            return self.exact_box_on_base(x_atoms, n_in, n_terms)
        low: list = [None] * n_in  # the tightest exact bounds, as (Fraction, strict), or None
        high: list = [None] * n_in
        for _, i, is_upper, c, strict in x_atoms:
            if is_upper:
                h = high[i]
                if h is None or c < h[0] or (strict and c == h[0]):
                    high[i] = (c, strict)
            else:
                l = low[i]
                if l is None or c > l[0] or (strict and c == l[0]):
                    low[i] = (c, strict)
        if None in low or None in high:
            i = next(i for i in range(n_in) if low[i] is None or high[i] is None)
            side = "lower" if high[i] is not None else "upper" if low[i] is not None else "lower or upper"
            raise self.error(f"input X_{i} has no {side} bound" + (" in one of the disjuncts" if n_terms > 1 else ""))
        for i, ((l, l_strict), (h, h_strict)) in enumerate(zip(low, high)):
            if l > h or (l == h and (l_strict or h_strict)):
                lo_op = "<" if l_strict else "<="
                hi_op = "<" if h_strict else "<="
                return f"the input box is empty: {l} {lo_op} X_{i} {hi_op} {h} has no solution"
        lo = [float_down(l) for l, _ in low]
        hi = [float_up(h) for h, _ in high]
        lo_in = [float_up(l, s) for l, s in low]
        hi_in = [float_down(h, s) for h, s in high]
        key = struct.pack(f"{4 * n_in}d", *lo, *hi, *lo_in, *hi_in)
        return key, (lo, hi, lo_in, hi_in)

    def exact_box_on_base(self, x_atoms: tuple, n_in: int, n_terms: int) -> tuple | str:
        """:meth:`exact_box` where the :class:`_BaseBox` holds in every term: the inputs this
        term's atoms touch are intersected exactly (the base bound among them), the others take
        the base's float bounds as they are."""
        base = self.base
        sides: tuple[dict, dict] = ({}, {})  # [is_upper][i] -> the tightest (exact value, strict)
        for _, i, is_upper, c, strict in x_atoms:
            side = sides[is_upper]
            b = side[i] if i in side else base.exact(is_upper, i)
            if b is None or (c < b[0] if is_upper else c > b[0]) or (strict and c == b[0]):
                b = (c, strict)
            side[i] = b
        low, high = sides
        has = [np.isfinite(base.nearest[k]) for k in (0, 1)]
        for k in (0, 1):
            has[k][list(sides[k])] = True
        if not (has[0].all() and has[1].all()):
            i = int(np.flatnonzero(~(has[0] & has[1]))[0])
            side = "lower" if has[1][i] else "upper" if has[0][i] else "lower or upper"
            raise self.error(f"input X_{i} has no {side} bound" + (" in one of the disjuncts" if n_terms > 1 else ""))
        empty = {}
        for i in set(low) | set(high):
            (l, l_strict), (h, h_strict) = low.get(i) or base.exact(0, i), high.get(i) or base.exact(1, i)
            if l > h or (l == h and (l_strict or h_strict)):
                empty[i] = ((l, l_strict), (h, h_strict))
        empty.update((i, v) for i, v in base.empty.items() if i not in low and i not in high)
        if empty:
            i = min(empty)
            (l, l_strict), (h, h_strict) = empty[i]
            lo_op = "<" if l_strict else "<="
            hi_op = "<" if h_strict else "<="
            return f"the input box is empty: {l} {lo_op} X_{i} {hi_op} {h} has no solution"
        lo, hi = base.outer[0].copy(), base.outer[1].copy()
        lo_in, hi_in = base.inner[0].copy(), base.inner[1].copy()
        for i, (l, strict) in low.items():
            lo[i], lo_in[i] = float_down(l), float_up(l, strict)
        for i, (h, strict) in high.items():
            hi[i], hi_in[i] = float_up(h), float_down(h, strict)
        key = b"".join(a.tobytes() for a in (lo, hi, lo_in, hi_in))
        return key, (lo.tolist(), hi.tolist(), lo_in.tolist(), hi_in.tolist())


def parse_vnnlib(text: str, *, n_inputs: int | None = None, n_outputs: int | None = None,
                 source: str = "<string>") -> list[Property]:
    """Parse VNNLIB ``text`` into ``[(Box, OutputSpec), ...]`` (see the module docstring).

    ``n_inputs``/``n_outputs``, when given, must equal the declared numbers of ``X_*``/``Y_*``.
    ``source`` names the text in error messages. Raises :class:`InvalidInputError`.
    """
    # A large file makes millions of small objects that live until the end: the cyclic collector
    # would only spend time finding no garbage (a third of the reading time of an 11 MB file).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _Parser(text, source).parse(n_inputs, n_outputs)
    finally:
        if collecting:
            gc.enable()


def load_vnnlib(path, *, n_inputs: int | None = None,
                n_outputs: int | None = None) -> list[Property]:
    """Read a ``.vnnlib`` (or gzip-compressed ``.vnnlib.gz``) file; see :func:`parse_vnnlib`."""
    name = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise InvalidInputError("VNNLIB file not found", path=name) from None
    except OSError as e:
        raise InvalidInputError(f"cannot read the VNNLIB file: {e.strerror or e}", path=name) from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise InvalidInputError(f"corrupt gzip data: {e}", path=name) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInputError(f"not a text file (invalid UTF-8 at byte {e.start})", path=name) from None
    return parse_vnnlib(text, n_inputs=n_inputs, n_outputs=n_outputs, source=name)


def _values(v, name: str) -> list[float]:
    if v is None:
        raise InvalidInputError(f"`{name}` is required to write a counterexample")
    try:
        arr = np.asarray(v, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InvalidInputError(f"`{name}` must be an array of numbers") from None
    if arr.size == 0:
        raise InvalidInputError(f"`{name}` is empty")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"`{name}` contains NaN or infinite values")
    return [float(a) for a in arr]


def format_counterexample(x, y) -> str:
    """The VNN-COMP counterexample block ``(\\n(X_0 v)\\n...(Y_0 v)\\n...)\\n``.

    Values are written with ``repr`` of the float64, so they read back exactly.
    """
    lines = ["("]
    lines += [f"(X_{i} {v!r})" for i, v in enumerate(_values(x, "x"))]
    lines += [f"(Y_{j} {v!r})" for j, v in enumerate(_values(y, "y"))]
    lines.append(")")
    return "\n".join(lines) + "\n"


def write_counterexample(path, x, y, status: str = "sat") -> None:
    """Write a VNN-COMP result file: ``status`` on the first line, then for ``"sat"`` the
    counterexample block of :func:`format_counterexample` (``x``/``y`` are ignored otherwise)."""
    status = str(status)
    if not status or any(ch.isspace() for ch in status):
        raise InvalidInputError(f"`status` must be a single word such as 'sat' or 'unsat', got {status!r}")
    text = status + "\n"
    if status == "sat":
        text += format_counterexample(x, y)
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise InvalidInputError(f"cannot write the result file: {e.strerror or e}", path=str(path)) from None
