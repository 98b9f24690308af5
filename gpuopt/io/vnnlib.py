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
"""

from __future__ import annotations

import gzip
from fractions import Fraction
import re

import numpy as np

from ..errors import InvalidInputError
from ..regions import Box
from ..specs import OutputSpec, float_down, float_up

__all__ = ["Property", "load_vnnlib", "parse_vnnlib", "format_counterexample", "write_counterexample"]

#: DNF expansions beyond this many terms, or this many atoms over all terms, are refused.
MAX_DNF_TERMS = 100_000
MAX_DNF_ATOMS = 20_000_000

_TOKEN = re.compile(r";[^\n]*|\(|\)|[^\s();]+")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_VAR_NAME = re.compile(r"([XY])_(0|[1-9]\d*)")
_COMPARISONS = ("<=", ">=", "<", ">")
_STRICT = ("<", ">")


class Property(tuple):
    """One ``(box, spec)`` pair of a VNNLIB file (it unpacks as a pair), with ``inner``: the
    float64 box of points that satisfy the exact input constraints (``box`` is its outward-rounded
    hull), or ``None`` when no float64 point does."""

    def __new__(cls, box: Box, spec: OutputSpec, inner: Box | None):
        obj = super().__new__(cls, (box, spec))
        obj.inner = inner
        return obj

    @property
    def box(self) -> Box:
        return self[0]

    @property
    def spec(self) -> OutputSpec:
        return self[1]


def _fits_float(q: Fraction) -> bool:
    return abs(q) <= _FLOAT_MAX


_FLOAT_MAX = Fraction(np.finfo(np.float64).max)


class _List:
    """A parenthesised expression: ``items`` (``_List`` or ``(text, pos)`` atoms); ``pos`` is a token index."""

    __slots__ = ("items", "pos")

    def __init__(self, pos: int):
        self.items: list = []
        self.pos = pos


def _pos(node) -> int:
    return node.pos if isinstance(node, _List) else node[1]


def _show(node) -> str:
    return f"'{node[0]}'" if not isinstance(node, _List) else "a parenthesised expression"


class _Parser:
    """Turns VNNLIB text into the list of ``(Box, OutputSpec)`` pairs; see the module docstring."""

    def __init__(self, text: str, source: str):
        self.text = text
        self.source = source
        self.declared: dict[str, tuple[str, int]] = {}
        self.decl_pos: dict[str, int] = {}

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
        single ``findall``; :meth:`line` maps an index back to a line number. Yielding each command
        as soon as it is complete lets its tree be freed before the next one is built.
        """
        stack: list[_List] = []
        for i, tok in enumerate(_TOKEN.findall(self.text)):
            if tok == "(":
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

    def number(self, tok: str, pos: int) -> Fraction:
        v = Fraction(tok)
        if not _fits_float(v):
            raise self.error(f"number '{tok}' is out of the float64 range", pos)
        return v

    def term(self, node) -> tuple[dict, Fraction]:
        """A linear term as ``(coefficients by variable, constant)``, exactly."""
        if not isinstance(node, _List):
            tok, pos = node
            var = self.declared.get(tok)
            if var is not None:
                return {var: Fraction(1)}, Fraction(0)
            if _NUMBER.fullmatch(tok):
                return {}, self.number(tok, pos)
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
            const = Fraction(0)
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
            scale = Fraction(1)
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
    def atom(self, op: str, node: _List) -> list:
        """DNF (list of terms, each a tuple of atoms) of one comparison."""
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
            return [()] if (const < 0 if strict else const <= 0) else []
        if xs:
            if len(xs) > 1:
                raise self.error(
                    "general linear constraints on inputs are unsupported "
                    "(each input comparison must bound a single X_i)", node.pos)
            (v, a), = coef.items()
            bound = -const / a
            if not _fits_float(bound):
                raise self.error("an input bound overflows float64", node.pos)
            return [(("X", v[1], a > 0, bound, strict),)]
        row = tuple(sorted((v[1], x) for v, x in coef.items()))
        return [(("Y", node.pos, row, -const, strict),)]

    def plain_bound(self, op: str, args: list) -> list | None:
        """Fast path for the common ``(op X_i number)`` / ``(op number X_i)``; ``None`` otherwise."""
        a, b = args
        if isinstance(a, _List) or isinstance(b, _List):
            return None
        upper = op in ("<=", "<")
        var = self.declared.get(a[0])
        if var is None:
            var, a, b, upper = self.declared.get(b[0]), b, a, not upper
        if var is None or var[0] != "X" or b[0] in self.declared or not _NUMBER.fullmatch(b[0]):
            return None
        return [(("X", var[1], upper, self.number(*b), op in _STRICT),)]

    def check_size(self, n_terms: int, n_atoms: int, pos: int | None) -> None:
        if n_terms > MAX_DNF_TERMS or n_atoms > MAX_DNF_ATOMS:
            raise self.error(f"the formula expands to more than {MAX_DNF_TERMS} DNF terms "
                             f"or {MAX_DNF_ATOMS} atoms; unsupported", pos)

    def conjoin(self, dnfs: list, pos: int | None) -> list:
        """DNF of a conjunction; single-term conjuncts are merged in linear time."""
        base: list = []
        multi = []
        for d in dnfs:
            if not d:
                return []
            if len(d) == 1:
                base.extend(d[0])
            else:
                multi.append(d)
        terms = [tuple(base)]
        for d in multi:
            longest = max(len(t) for t in terms) + max(len(c) for c in d)
            self.check_size(len(terms) * len(d), len(terms) * len(d) * longest, pos)
            terms = [t + c for t in terms for c in d]
        return terms

    def formula(self, node) -> list:
        if not isinstance(node, _List):
            raise self.error(f"expected a formula, got {_show(node)}", _pos(node))
        op = self.head(node, "a formula")
        if op in _COMPARISONS:
            return self.atom(op, node)
        if op in ("and", "or"):
            args = node.items[1:]
            if not args:
                raise self.error(f"'{op}' needs at least 1 argument, got 0", node.pos)
            dnfs = [self.formula(a) for a in args]
            if op == "and":
                return self.conjoin(dnfs, node.pos)
            self.check_size(sum(len(d) for d in dnfs), 0, node.pos)
            return [t for d in dnfs for t in d]
        raise self.error(f"unknown operator '{op}' in a formula (expected and, or, <=, >=, <, >)", node.pos)

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
            first = self.line(self.decl_pos[name[0]])
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
        for node in self.read():
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
        n_in = self.count("X", n_inputs)
        n_out = self.count("Y", n_outputs)
        terms = self.conjoin(dnfs, None)
        return self.group(terms, n_in, n_out)

    def group(self, terms: list, n_in: int, n_out: int) -> list[Property]:
        groups: dict[bytes, tuple[np.ndarray, np.ndarray, Box | None, list]] = {}
        boxes: dict[tuple, tuple | str] = {}  # input atoms (by identity) -> float boxes, or why empty
        empty_reason = None
        for term in terms:
            x_atoms = tuple(a for a in term if a[0] == "X")
            out = [a for a in term if a[0] != "X"]
            key_atoms = tuple(map(id, x_atoms))
            if key_atoms not in boxes:
                boxes[key_atoms] = self.exact_box(x_atoms, n_in, len(terms))
            box = boxes[key_atoms]
            if isinstance(box, str):
                empty_reason = box
                continue  # an infeasible term
            lo, hi, lo_in, hi_in = box
            if out:
                out.sort(key=lambda a: a[1])  # rows in textual order
                # float coefficients unless one is not a float64 number (then exact Fractions)
                exact_a = all(Fraction(float(x)) == x for atom in out for _, x in atom[2])
                A = np.zeros((len(out), n_out)) if exact_a else np.full((len(out), n_out), Fraction(0), dtype=object)
                b = np.empty(len(out), dtype=object)
                strict = np.zeros(len(out), dtype=bool)
                for r, (_, _, row, rhs, st) in enumerate(out):
                    for j, x in row:
                        A[r, j] = float(x) if exact_a else x
                    b[r] = rhs
                    strict[r] = st
                disjunct = (A, b, strict)
            else:
                disjunct = (np.zeros((1, n_out)), np.zeros(1))  # 0 <= 0: every output is unsafe
            key = lo.tobytes() + hi.tobytes() + lo_in.tobytes() + hi_in.tobytes()
            if key not in groups:
                inner = Box(lo_in, hi_in) if np.all(lo_in <= hi_in) else None
                groups[key] = (lo, hi, inner, [])
            groups[key][3].append(disjunct)
        if not groups and empty_reason is not None:
            raise self.error(empty_reason)
        return [Property(Box(lo, hi), OutputSpec(disj, n_out), inner) for lo, hi, inner, disj in groups.values()]

    def exact_box(self, x_atoms: tuple, n_in: int, n_terms: int) -> tuple | str:
        """Intersect input atoms exactly: the outer and inner float boxes
        ``(lo, hi, lo_in, hi_in)``, or a message when the exact box is empty."""
        low: list = [None] * n_in  # exact bounds (Fraction or None) and whether each is strict
        high: list = [None] * n_in
        low_strict = [False] * n_in
        high_strict = [False] * n_in
        for _, i, is_upper, c, strict in x_atoms:
            if is_upper:
                if high[i] is None or c < high[i] or (c == high[i] and strict):
                    high[i], high_strict[i] = c, strict
            elif low[i] is None or c > low[i] or (c == low[i] and strict):
                low[i], low_strict[i] = c, strict
        missing = [i for i in range(n_in) if low[i] is None or high[i] is None]
        if missing:
            i = missing[0]
            side = "lower" if high[i] is not None else "upper" if low[i] is not None else "lower or upper"
            raise self.error(f"input X_{i} has no {side} bound" + (" in one of the disjuncts" if n_terms > 1 else ""))
        for i in range(n_in):
            if low[i] > high[i] or (low[i] == high[i] and (low_strict[i] or high_strict[i])):
                lo_op = "<" if low_strict[i] else "<="
                hi_op = "<" if high_strict[i] else "<="
                return f"the input box is empty: {low[i]} {lo_op} X_{i} {hi_op} {high[i]} has no solution"
        lo = np.array([float_down(q) for q in low])
        hi = np.array([float_up(q) for q in high])
        lo_in = np.array([float_up(q, s) for q, s in zip(low, low_strict)])
        hi_in = np.array([float_down(q, s) for q, s in zip(high, high_strict)])
        return lo, hi, lo_in, hi_in


def parse_vnnlib(text: str, *, n_inputs: int | None = None, n_outputs: int | None = None,
                 source: str = "<string>") -> list[Property]:
    """Parse VNNLIB ``text`` into ``[(Box, OutputSpec), ...]`` (see the module docstring).

    ``n_inputs``/``n_outputs``, when given, must equal the declared numbers of ``X_*``/``Y_*``.
    ``source`` names the text in error messages. Raises :class:`InvalidInputError`.
    """
    return _Parser(text, source).parse(n_inputs, n_outputs)


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
