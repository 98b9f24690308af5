"""Shared test helpers: random network builders, an independent numpy forward pass, and a
brute-force exact minimiser of the spec margin (enumeration of activation patterns + LPs).

Imported by the test modules as ``from helpers import ...`` (pytest puts ``tests/`` on
``sys.path`` because the folder has no ``__init__.py``). Nothing here calls gpuopt's bounds,
attack or MILP code: the reference answers are computed independently.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linprog

from gpuopt.network import Add, Concat, Conv2d, Dense, ElementwiseAffine, Flatten, Network, ReLU
from gpuopt.specs import OutputSpec

__all__ = [
    "affine_view_forward",
    "onnx_model",
    "random_dense_network",
    "random_conv_network",
    "numpy_forward",
    "numpy_margin",
    "dense_weights",
    "box_points",
    "to_alternating_dense",
    "random_spec",
    "small_robustness_case",
    "BruteForce",
    "brute_force_min_margin",
]


def affine_view_forward(net, x: np.ndarray) -> np.ndarray:
    """Evaluates ``A_L act(... act(A_0 x))`` from Network.affine_blocks in float64."""
    return affine_view_values(net, x)[1]


# ---------------------------------------------------------------------------- networks
def random_dense_network(rng: np.random.Generator, n_in: int, hidden, n_out: int,
                         *, bias_scale: float = 0.5) -> Network:
    """``Dense, ReLU, ..., Dense`` with weights ``N(0, 1/fan_in)`` and biases ``N(0, bias_scale^2)``."""
    layers = []
    prev = n_in
    for width in list(hidden) + [n_out]:
        layers.append(Dense(rng.normal(size=(width, prev)) / math.sqrt(prev),
                            bias_scale * rng.normal(size=width)))
        layers.append(ReLU())
        prev = width
    layers.pop()  # no ReLU after the output layer
    return Network(layers, (n_in,))


def random_conv_network(rng: np.random.Generator, in_shape, c_out: int, kernel, stride, padding,
                        n_hidden: int, n_out: int) -> Network:
    """``Conv2d, ReLU, Flatten, Dense, ReLU, Dense`` (``n_hidden == 0``: no hidden Dense)."""
    c_in = in_shape[0]
    kh, kw = kernel
    conv = Conv2d(rng.normal(size=(c_out, c_in, kh, kw)) / math.sqrt(c_in * kh * kw),
                  0.3 * rng.normal(size=c_out), stride, padding)
    flat = math.prod(conv.output_shape(tuple(in_shape)))
    layers = [conv, ReLU(), Flatten()]
    prev = flat
    if n_hidden:
        layers += [Dense(rng.normal(size=(n_hidden, prev)) / math.sqrt(prev), 0.3 * rng.normal(size=n_hidden)),
                   ReLU()]
        prev = n_hidden
    layers.append(Dense(rng.normal(size=(n_out, prev)) / math.sqrt(prev), 0.3 * rng.normal(size=n_out)))
    return Network(layers, tuple(in_shape))


def dense_weights(network: Network) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(W_0, b_0), ..., (W_L, b_L)]`` of a strictly alternating ``Dense, ReLU, ..., Dense`` network."""
    out = []
    for i, layer in enumerate(network.layers):
        if i % 2 == 0:
            assert isinstance(layer, Dense), f"layer {i} should be Dense, got {layer}"
            out.append((np.array(layer.weight), np.array(layer.bias)))
        else:
            assert isinstance(layer, ReLU), f"layer {i} should be ReLU, got {layer}"
    assert isinstance(network.layers[-1], Dense)
    return out


# ---------------------------------------------------------------------------- forward
def _conv_numpy(layer: Conv2d, x: np.ndarray) -> np.ndarray:
    """Cross-correlation on ``(batch, C, H, W)`` by explicit windows (no torch)."""
    w = np.asarray(layer.weight)
    c_out, c_in, kh, kw = w.shape
    pt, pl, pb, pr = layer.padding
    sh, sw = layer.stride
    dh, dw = layer.dilation
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    hp, wp = xp.shape[2], xp.shape[3]
    ho = (hp - dh * (kh - 1) - 1) // sh + 1
    wo = (wp - dw * (kw - 1) - 1) // sw + 1
    out = np.empty((x.shape[0], c_out, ho, wo))
    for i in range(ho):
        for j in range(wo):
            win = xp[:, :, i * sh: i * sh + dh * (kh - 1) + 1: dh, j * sw: j * sw + dw * (kw - 1) + 1: dw]
            out[:, :, i, j] = np.einsum("bchw,ochw->bo", win, w)
    return out + np.asarray(layer.bias)[None, :, None, None]


def numpy_forward(network: Network, x, *, absolute: bool = False):
    """Independent float64 forward pass from ``network.layers``.

    Returns ``(outputs (batch, n_out), [pre-activation (batch, n_k) per ReLU layer])``. With
    ``absolute=True`` every weight/bias is replaced by its magnitude (and ``x`` by ``|x|``):
    the result is the scale ``sum |w||h| + |b|`` that rounding errors are relative to.
    """
    h = np.asarray(x, dtype=np.float64).reshape(-1, *network.input_shape)
    if absolute:
        h = np.abs(h)
    mag = np.abs if absolute else (lambda a: a)
    pre = []
    for layer in network.layers:
        if isinstance(layer, Dense):
            h = h @ mag(layer.weight).T + mag(layer.bias)
        elif isinstance(layer, Conv2d):
            lay = Conv2d(mag(layer.weight), mag(layer.bias), layer.stride, layer.padding, layer.dilation)
            h = _conv_numpy(lay, h)
        elif isinstance(layer, ReLU):
            pre.append(h.reshape(h.shape[0], -1).copy())
            h = h if absolute else np.maximum(h, 0.0)
        elif isinstance(layer, Flatten):
            h = h.reshape(h.shape[0], -1)
        elif isinstance(layer, ElementwiseAffine):
            h = h * mag(layer.scale) + mag(layer.shift)
        else:  # pragma: no cover
            raise TypeError(layer)
    return h.reshape(h.shape[0], -1), pre


def _affine_numpy(layers, in_shape, x: np.ndarray) -> np.ndarray:
    h = x.reshape(-1, *in_shape)
    for layer in layers:
        if isinstance(layer, Dense):
            h = h @ np.asarray(layer.weight).T + np.asarray(layer.bias)
        elif isinstance(layer, Conv2d):
            h = _conv_numpy(layer, h)
        elif isinstance(layer, Flatten):
            h = h.reshape(h.shape[0], -1)
        elif isinstance(layer, ElementwiseAffine):
            h = h * np.asarray(layer.scale) + np.asarray(layer.shift)
        else:  # pragma: no cover
            raise TypeError(layer)
    return h.reshape(h.shape[0], -1)


def to_alternating_dense(network: Network) -> Network:
    """An equivalent ``Dense, ReLU, ..., Dense`` network: each maximal run of affine layers
    (Dense/Conv2d/Flatten/ElementwiseAffine) becomes one Dense whose matrix is read off by
    evaluating the run (numpy) on the basis vectors; an empty run (leading/trailing ReLU, two
    ReLUs in a row) becomes an identity Dense."""
    runs, current = [], []
    for layer in network.layers:
        if isinstance(layer, ReLU):
            runs.append(current)
            current = []
        else:
            current.append(layer)
    runs.append(current)
    layers = []
    shape_index = 0
    shapes = network.layer_shapes
    for r, run in enumerate(runs):
        in_shape = shapes[shape_index]
        n = math.prod(in_shape)
        bias = _affine_numpy(run, in_shape, np.zeros((1, n)))[0]
        cols = _affine_numpy(run, in_shape, np.eye(n)) - bias[None]
        layers.append(Dense(cols.T, bias))
        if r < len(runs) - 1:
            layers.append(ReLU())
        shape_index += len(run) + 1
    return Network(layers, (network.input_size,))


def numpy_margin(spec: OutputSpec, y: np.ndarray) -> np.ndarray:
    """``min_k max_i (A_k y - b_k)_i`` per row of ``y``, by plain numpy (not ``margin64``)."""
    y = np.asarray(y, dtype=np.float64).reshape(-1, spec.n_outputs)
    per = np.empty((y.shape[0], spec.n_disjuncts))
    for k, (A, b) in enumerate(spec.disjuncts):
        per[:, k] = np.max(np.einsum("mo,bo->bm", A, y) - b[None], axis=1)
    return per.min(axis=1)


def box_points(rng: np.random.Generator, lower, upper, n: int = 200, *, max_corner_dim: int = 6,
               n_random_vertices: int = 20) -> np.ndarray:
    """``n`` uniform points in the box, its corners when the dimension is small (else random
    vertices), and its centre; all exactly inside ``[lower, upper]`` in float64."""
    lower = np.asarray(lower, dtype=np.float64).reshape(-1)
    upper = np.asarray(upper, dtype=np.float64).reshape(-1)
    d = lower.size
    pts = [lower + (upper - lower) * rng.random((n, d)), (0.5 * (lower + upper))[None]]
    if d <= max_corner_dim:
        bits = np.array(list(itertools.product([0, 1], repeat=d)), dtype=bool)
    else:
        bits = rng.random((n_random_vertices, d)) < 0.5
    pts.append(np.where(bits, upper[None], lower[None]))
    return np.clip(np.concatenate(pts), lower, upper)


def small_robustness_case(seed: int):
    """A dense ``n_in-8-8-6-3`` network (``n_in`` 2, 3 or 4), an L-inf ball around a random point
    (radius 0.2, 0.5 or 1) and the robustness spec of the point's label: ``(net, region, spec)``,
    the same for the same ``seed``."""
    from gpuopt import LinfBall, robustness

    rng = np.random.default_rng(seed)
    n_in = [2, 3, 4][seed % 3]
    net = random_dense_network(rng, n_in, [8, 8, 6], 3)
    centre = rng.normal(size=n_in)
    label = int(np.argmax(net.forward64(centre[None])[0]))
    eps = float(rng.choice([0.2, 0.5, 1.0]))
    return net, LinfBall(centre, eps), robustness(label, 3)


def two_disjunct_case(seed: int, n_hidden: int = 2):
    """A random dense net (2-3 inputs, ``n_hidden`` ReLU layers of 4-7, 2 outputs), the box of
    half-width 0.7 about a random centre, and a spec of two disjuncts of 1-2 random rows each:
    ``(net, lower, upper, spec)``."""
    rng = np.random.default_rng(seed)
    n_in = int(rng.integers(2, 4))
    net = random_dense_network(rng, n_in, [int(rng.integers(4, 8)) for _ in range(n_hidden)], 2)
    centre = rng.normal(size=n_in)
    disj = [(rng.normal(size=(int(rng.integers(1, 3)), 2)), 0.3 * rng.normal()) for _ in range(2)]
    return net, centre - 0.7, centre + 0.7, OutputSpec([(A, np.full(A.shape[0], b)) for A, b in disj], 2)


def check_relu_split(net, lo, hi, spec: OutputSpec, minima, delta: float, config, seconds: float = 30.0):
    """Activation splitting on ``spec`` with each disjunct's exact minimum margin ``minima[k]``
    moved to ``delta``: ``unsat`` with every proven bound in ``(0, delta]`` when ``delta > 0``, else
    ``sat`` with a counterexample that the independent forward pass confirms and no disjunct
    closed. Returns the result."""
    import time

    from gpuopt.bounds import crown
    from gpuopt.problem import Problem
    from gpuopt.regions import Box
    from gpuopt.relu_split import relu_split

    s = shifted_spec(spec, minima, delta)
    res = relu_split(net, torch.as_tensor(lo), torch.as_tensor(hi), [(A, b, None) for A, b in s.disjuncts],
                     crown(net, torch.as_tensor(lo)[None], torch.as_tensor(hi)[None]),
                     problem=Problem(net, Box(lo, hi), s), deadline=time.monotonic() + seconds, config=config)
    assert res.status == ("unsat" if delta > 0 else "sat"), (delta, res.status)
    assert delta > 0 or not any(res.closed), (delta, res.closed)
    if res.status == "sat":
        y, _ = numpy_forward(net, res.x[None])
        assert numpy_margin(s, y)[0] <= 0
    else:
        assert all(0 < b <= delta + 1e-7 for b in res.proven_bound), res.proven_bound
    return res


def shifted_spec(spec: OutputSpec, minima, delta: float) -> OutputSpec:
    """The spec with each disjunct's right-hand sides moved so that its exact minimum margin
    ``minima[k]`` becomes ``delta`` (``margin = max_i (A y - b)_i``, so adding ``m - delta`` to
    ``b`` shifts it)."""
    return OutputSpec([(A, b + (m - delta)) for (A, b), m in zip(spec.disjuncts, minima)], spec.n_outputs)


def shifted_problem(net, region, spec: OutputSpec, seed: int, delta: float):
    """``Problem(net, region, spec)`` with each disjunct's exact minimum margin over the region's
    box (:func:`brute_force_min_margin`) moved to ``delta``: ``(problem, shifted spec)``."""
    from gpuopt import Problem

    box = region.to_box()
    minima = brute_force_min_margin(net, box.lower, box.upper, spec, seed=seed).per_disjunct
    shifted = shifted_spec(spec, minima, delta)
    return Problem(net, region, shifted), shifted


def random_spec(rng: np.random.Generator, n_out: int, rows_per_disjunct, *, b_scale: float = 0.5) -> OutputSpec:
    """One disjunct per entry of ``rows_per_disjunct``, with that many random rows."""
    disj = []
    for m in rows_per_disjunct:
        disj.append((rng.normal(size=(m, n_out)), b_scale * rng.normal(size=m)))
    return OutputSpec(disj, n_out)


# ---------------------------------------------------------------------------- brute force
@dataclass
class BruteForce:
    """Exact minimum of each disjunct margin over the box, per ``disjunct`` index; ``argmin``
    the LP's minimiser for each; ``n_regions`` the number of feasible activation patterns."""

    per_disjunct: np.ndarray
    argmin: list
    n_regions: int
    n_lps: int

    @property
    def min_margin(self) -> float:
        return float(self.per_disjunct.min())


def _lp(c, A_ub, b_ub, bounds):
    res = linprog(c, A_ub=A_ub if len(A_ub) else None, b_ub=b_ub if len(b_ub) else None,
                  bounds=bounds, method="highs",
                  options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10})
    return res


_BRUTE_FORCE_CACHE: dict = {}


def _enumeration_store():
    """The folder where test processes share their enumerations (pytest-xdist's workers each
    meet the same cases), and the digest of this file and of SciPy's version, part of every key,
    so that a changed enumeration never reads an old result."""
    import hashlib
    import os
    import tempfile
    from pathlib import Path

    import scipy

    digest = hashlib.sha256(Path(__file__).read_bytes() + scipy.__version__.encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"gpuopt-test-enumerations-{os.getuid()}"
    return folder, digest


def brute_force_min_margin(network: Network, lower, upper, spec: OutputSpec, *, n_samples: int = 512,
                           seed: int = 0) -> BruteForce:
    """:func:`enumerate_min_margin`, remembered per test process and shared between the test
    processes through files (:func:`_enumeration_store`): many tests enumerate the same cases (a
    case's enumeration takes up to 15 s). The key is this file's digest, the weights, the box, the
    spec and the sampling settings, pickled; the result is a fresh copy."""
    import copy
    import hashlib
    import os
    import pickle

    folder, digest = _enumeration_store()
    key = hashlib.sha256(pickle.dumps((digest, dense_weights(network), np.asarray(lower, dtype=np.float64),
                                       np.asarray(upper, dtype=np.float64),
                                       [(np.asarray(A), np.asarray(b)) for A, b in spec.disjuncts],
                                       n_samples, seed))).hexdigest()
    if key not in _BRUTE_FORCE_CACHE:
        path = folder / f"{key}.pkl"
        try:
            _BRUTE_FORCE_CACHE[key] = pickle.loads(path.read_bytes())
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError):
            result = enumerate_min_margin(network, lower, upper, spec, n_samples=n_samples, seed=seed)
            _BRUTE_FORCE_CACHE[key] = result
            try:  # written whole, then renamed: a reader never sees half a file
                folder.mkdir(parents=True, exist_ok=True)
                part = folder / f"{key}.{os.getpid()}.part"
                part.write_bytes(pickle.dumps(result))
                os.replace(part, path)
            except OSError:
                pass
    return copy.deepcopy(_BRUTE_FORCE_CACHE[key])


def enumerate_min_margin(network: Network, lower, upper, spec: OutputSpec, *, n_samples: int = 512,
                         seed: int = 0) -> BruteForce:
    """``min_{x in box} max_i (A_k f(x) - b_k)_i`` for every disjunct ``k``, exactly (up to LP
    tolerances), for a ``Dense, ReLU, ..., Dense`` network.

    Activation patterns are enumerated depth-first, one neuron at a time, on the closed linear
    regions ``{x in box : z_j >= 0 (active), z_j <= 0 (inactive)}``; a partial pattern is kept if
    a sample point realises it or an LP finds it feasible. On each full pattern the network is
    affine, and each disjunct's margin is minimised by an LP (an epigraph variable for several
    rows). The closed regions cover the box and ``f`` agrees with the pattern's affine map on
    each, so the minimum over regions is the exact minimum.
    """
    lower = np.asarray(lower, dtype=np.float64).reshape(-1)
    upper = np.asarray(upper, dtype=np.float64).reshape(-1)
    weights = dense_weights(network)
    n = lower.size
    box = list(zip(lower, upper))
    rng = np.random.default_rng(seed)
    samples = box_points(rng, lower, upper, n_samples)
    _, sample_pre = numpy_forward(network, samples)
    K = spec.n_disjuncts
    best = np.full(K, np.inf)
    argmin = [None] * K
    counters = {"regions": 0, "lps": 0}

    def feasible(G, g) -> bool:
        counters["lps"] += 1
        res = _lp(np.zeros(n), G, g, box)
        return res.status == 0

    def leaf(P, q, G, g):
        """``h = P x + q`` is the last hidden layer's output on this region."""
        counters["regions"] += 1
        W, c = weights[-1]
        Py, qy = W @ P, W @ q + c
        for k, (A, b) in enumerate(spec.disjuncts):
            coef, const = A @ Py, A @ qy - b  # row_i(x) = coef_i x + const_i
            counters["lps"] += 1
            if A.shape[0] == 1:
                res = _lp(coef[0], G, g, box)
                val = None if res.status != 0 else float(res.fun + const[0])
                x = None if res.status != 0 else res.x
            else:  # variables (x, t): min t s.t. coef_i x - t <= -const_i
                G2 = np.hstack([G, np.zeros((len(G), 1))]) if len(G) else np.zeros((0, n + 1))
                rows = np.hstack([coef, -np.ones((coef.shape[0], 1))])
                res = _lp(np.r_[np.zeros(n), 1.0], np.vstack([G2, rows]), np.r_[g, -const],
                          box + [(None, None)])
                val = None if res.status != 0 else float(res.fun)
                x = None if res.status != 0 else res.x[:n]
            if res.status not in (0, 2):
                raise RuntimeError(f"reference LP failed: {res.message}")
            if val is not None and val < best[k]:
                best[k], argmin[k] = val, x

    def layer(depth, P, q, G, g, mask):
        if depth == len(weights) - 1:
            leaf(P, q, G, g)
            return
        W, c = weights[depth]
        Pz, qz = W @ P, W @ q + c
        zs = sample_pre[depth]
        width = W.shape[0]

        def neuron(j, G, g, mask, active):
            if j == width:
                D = np.asarray(active, dtype=np.float64)
                layer(depth + 1, D[:, None] * Pz, D * qz, G, g, mask)
                return
            for is_active in (True, False):
                # active: z_j >= 0  <=>  -Pz_j x <= qz_j ; inactive: Pz_j x <= -qz_j
                row = -Pz[j] if is_active else Pz[j]
                rhs = qz[j] if is_active else -qz[j]
                G2 = np.vstack([G, row[None]]) if len(G) else row[None]
                g2 = np.r_[g, rhs]
                m2 = mask & ((zs[:, j] >= 0) if is_active else (zs[:, j] <= 0))
                if m2.any() or feasible(G2, g2):
                    neuron(j + 1, G2, g2, m2, active + [is_active])

        neuron(0, G, g, mask, [])

    layer(0, np.eye(n), np.zeros(n), np.zeros((0, n)), np.zeros(0), np.ones(len(samples), dtype=bool))
    return BruteForce(per_disjunct=best, argmin=argmin, n_regions=counters["regions"], n_lps=counters["lps"])


def fraction_up(q) -> float:
    """The smallest float64 ``>= q`` for a Fraction ``q`` (an oracle independent of gpuopt's)."""
    from fractions import Fraction

    f = float(q)
    return f if Fraction(f) >= q else math.nextafter(f, math.inf)


def fraction_down(q) -> float:
    """The largest float64 ``<= q`` for a Fraction ``q``."""
    from fractions import Fraction

    f = float(q)
    return f if Fraction(f) <= q else math.nextafter(f, -math.inf)


def affine_view_values(net, x) -> tuple[list, np.ndarray]:
    """``affine_blocks`` evaluated in numpy: the pre-activations of every block ``(batch, n_k)`` and
    the outputs; ReLU outside each block's passthrough mask, identity inside."""
    z = np.asarray(x, dtype=np.float64).reshape(len(x), -1).T
    blocks = net.affine_blocks()
    pre = []
    for k, blk in enumerate(blocks):
        z = blk.matrix @ z + blk.bias[:, None]
        if k < len(blocks) - 1:
            pre.append(z.T.copy())
            keep = np.zeros(len(z), dtype=bool) if blk.passthrough is None else np.asarray(blk.passthrough)
            z = np.where(keep[:, None], z, np.maximum(z, 0.0))
    return pre, z.T


def assert_bounds_contain_samples(net, bounds, lo, hi, rng, n: int = 400, what: str = "") -> None:
    """Every sampled point's pre-activations and outputs (of the affine-block view, in float64) lie
    inside ``bounds`` on each box ``[lo[i], hi[i]]``."""
    for i in range(len(lo)):
        pre, y = affine_view_values(net, box_points(rng, np.asarray(lo[i]), np.asarray(hi[i]), n))
        for k, ((l, u), z) in enumerate(zip(bounds.pre_activation, pre)):
            assert np.all(z >= l[i].numpy()) and np.all(z <= u[i].numpy()), (what, i, k)
        assert np.all(y >= bounds.output[0][i].numpy()) and np.all(y <= bounds.output[1][i].numpy()), (what, i)


def sexpr_tokens(text: str) -> list[str]:
    """Tokens of an S-expression text (``;`` comments dropped)."""
    import re

    return re.findall(r"\(|\)|[^\s()]+", re.sub(r";[^\n]*", "", text))


def sexpr_tree(tokens) -> list:
    """Nested lists of the parenthesised ``tokens`` (an independent reader for VNNLIB tests)."""
    stack = [[]]
    for t in tokens:
        if t == "(":
            stack.append([])
        elif t == ")":
            node = stack.pop()
            stack[-1].append(node)
        else:
            stack[-1].append(t)
    assert len(stack) == 1, "unbalanced parentheses"
    return stack[0]


def random_dag_network(rng: np.random.Generator, n_layers: int, n_in: int, *, dense,
                       kinds=("dense", "relu", "relu", "add", "concat"), min_w: int = 1, max_w: int = 4,
                       any_last: bool = False) -> Network:
    """A random DAG of Dense, ReLU, Add and Concat layers on vectors of ``n_in`` inputs: each
    layer (its kind drawn from ``kinds``) reads the last tensor, one of the last three, or any
    earlier one (or the input), so skips span any number of ReLU layers, and some branches may be
    unused. Dense layers come from ``dense(rng, n_out, n_in)`` with ``min_w..max_w`` outputs; a
    Concat joins tensors of at most ``max_w`` and ``2 max_w`` entries. The last layer is a Dense
    of 2 outputs on the layer before (with ``any_last``, one time in ten on a random earlier one)."""
    layers, inputs, sizes = [], [], {-1: n_in}
    for i in range(n_layers):
        earlier = list(sizes)
        kind = rng.choice(list(kinds))
        r = rng.random()
        a = earlier[-1] if r < 0.5 else int(rng.choice(earlier[-3:])) if r < 0.8 else int(rng.choice(earlier))
        if kind == "add":
            b = int(rng.choice([j for j in earlier if sizes[j] == sizes[a]]))
            layers.append(Add())
            inputs.append((a, b))
            sizes[i] = sizes[a]
        elif kind == "concat" and sizes[a] <= max_w:
            b = int(rng.choice([j for j in earlier if sizes[j] + sizes[a] <= 2 * max_w]))
            layers.append(Concat(0))
            inputs.append((a, b))
            sizes[i] = sizes[a] + sizes[b]
        elif kind == "relu":
            layers.append(ReLU())
            inputs.append((a,))
            sizes[i] = sizes[a]
        else:
            width = int(rng.integers(min_w, max_w + 1))
            layers.append(dense(rng, width, sizes[a]))
            inputs.append((a,))
            sizes[i] = width
    last = n_layers - 1
    if any_last and rng.random() >= 0.9:
        last = int(rng.integers(-1, n_layers))
    layers.append(dense(rng, 2, sizes[last]))
    inputs.append((last,))
    return Network(layers, (n_in,), inputs=inputs)


# Pinned so that any onnxruntime since 1.10 reads the test models: `make_model` otherwise stamps
# the newest IR version of the installed onnx, which an older onnxruntime rejects (as on the GPU
# machine's image, where every hand-built model in test_onnx_import failed to load).
TEST_ONNX_IR_VERSION = 8


def onnx_model(graph, opset: int = 13):
    """An ONNX model of ``graph`` at default-domain ``opset``, IR version pinned (see above)."""
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = TEST_ONNX_IR_VERSION
    return model
