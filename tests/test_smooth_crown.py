"""Tests of gpuopt.bounds.smooth: linear relaxations of Sigmoid/Tanh and CROWN through them."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch

from gpuopt import Box, OutputSpec, verify
from gpuopt.bounds.base import disjunct_lower_bounds
from gpuopt.bounds.interval import interval_bounds
from gpuopt.bounds.smooth import smooth_chain, smooth_disjunct_lower_bounds, smooth_relaxation
from gpuopt.network import (Add, Conv2d, Dense, ElementwiseAffine, Flatten, Network, ReLU, Sigmoid, Softmax, Tanh)

mpmath.mp.dps = 40


def _exact(kind: str, z: float) -> mpmath.mpf:
    z = mpmath.mpf(z)
    return 1 / (1 + mpmath.exp(-z)) if kind == "sigmoid" else mpmath.tanh(z)


def _intervals():
    """Pre-activation intervals of every shape the relaxation distinguishes."""
    rng = np.random.default_rng(11)
    out = [(-3.0, -1.0), (1.0, 3.0), (-2.0, 0.5), (-0.5, 2.0), (-1e-3, 1e-3), (0.0, 0.0), (0.7, 0.7),
           (-1.0, 0.0), (0.0, 1.0), (-40.0, -30.0), (30.0, 40.0), (-800.0, 800.0), (-1e-12, 2e-12),
           (2.0, 2.0 + 1e-12), (-5.0, -5.0 + 1e-9), (-math.inf, -2.0), (3.0, math.inf), (-math.inf, math.inf),
           (-20.0, 25.0), (1e-300, 2e-300)]
    for _ in range(40):
        a, b = np.sort(rng.normal(size=2) * rng.choice([0.01, 1.0, 5.0]) + rng.normal() * 2)
        out.append((float(a), float(b)))
    return out


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
def test_relaxation_lines_hold_for_the_exact_activation_and_are_not_loose(kind):
    """``aL z + bL <= f(z) <= aU z + bU`` on a grid of every interval (40-digit arithmetic), and the
    lines are on average (at the midpoint) no further apart than ``f(u) - f(l)`` plus a hair."""
    ivs = _intervals()
    l = torch.tensor([a for a, _ in ivs], dtype=torch.float64)[None]
    u = torch.tensor([b for _, b in ivs], dtype=torch.float64)[None]
    aL, aU, bU, bL = (t[0].tolist() for t in smooth_relaxation(kind, l, u))
    for i, (a, b) in enumerate(ivs):
        lo_f, hi_f = float(_exact(kind, a)) if math.isfinite(a) else (0.0 if kind == "sigmoid" else -1.0), \
            float(_exact(kind, b)) if math.isfinite(b) else 1.0
        if math.isfinite(a) and math.isfinite(b):
            grid = [a + (b - a) * t for t in np.linspace(0, 1, 201)] + [a, b, (a + b) / 2]
        else:
            fin = a if math.isfinite(a) else b if math.isfinite(b) else 0.0
            grid = [fin] + [fin + s * 10.0 ** e for e in range(-3, 4) for s in (-1, 1)
                            if (a <= fin + s * 10.0 ** e <= b)]
            assert aL[i] == 0 and aU[i] == 0, "an unbounded interval gets flat lines"
        for z in grid:
            fz = _exact(kind, z)
            zq = mpmath.mpf(z)
            assert mpmath.mpf(aL[i]) * zq + mpmath.mpf(bL[i]) <= fz, (kind, a, b, z)
            assert mpmath.mpf(aU[i]) * zq + mpmath.mpf(bU[i]) >= fz, (kind, a, b, z)
        z = (a + b) / 2 if math.isfinite(a + b) else fin
        gap = (aU[i] * z + bU[i]) - (aL[i] * z + bL[i])
        assert gap <= (hi_f - lo_f) + 1e-9 * (1 + abs(a) + abs(b)) if math.isfinite(a + b) else gap <= 2.0 + 1e-9


def _chain(rng, n_in: int, widths, acts, final_sigmoid=False) -> Network:
    layers, prev = [], n_in
    for w, act in zip(widths, acts):
        layers += [Dense(rng.normal(size=(w, prev)) * 1.5 / math.sqrt(prev), rng.normal(size=w)), act()]
        prev = w
    layers.append(Dense(rng.normal(size=(3, prev)) * 2 / math.sqrt(prev), rng.normal(size=3)))
    if final_sigmoid:
        layers.append(Sigmoid())
    return Network(layers, (n_in,))


def _attacked_minima(net, lo, hi, A, b, rng, n_samples=1500, steps=40):
    """Each disjunct's smallest margin found by sampling and then projected gradient descent."""
    x = torch.tensor(rng.uniform(lo, hi, (n_samples, lo.size)), requires_grad=True)
    lo_t, hi_t = torch.tensor(lo), torch.tensor(hi)
    for _ in range(steps):
        y = net.forward(x)
        m = (torch.einsum("kmo,no->nkm", A, y) - b[None]).amax(-1)
        (g,) = torch.autograd.grad(m.sum(), x)
        with torch.no_grad():
            x -= 0.02 * (hi_t - lo_t) * g.sign()
            x.copy_(torch.maximum(torch.minimum(x, hi_t), lo_t))
    y = net.forward64(x.detach().numpy())
    return (np.einsum("kmo,no->nkm", A.numpy(), y) - b.numpy()[None]).max(-1).min(0)


@pytest.mark.parametrize("seed", range(8))
def test_bounds_are_below_attacked_margins_and_tighter_than_intervals(seed):
    """Chains of Sigmoid, Tanh and ReLU (some ending in a Sigmoid): every disjunct bound is below
    the smallest margin sampling and a gradient attack find, and on small boxes far tighter than
    the interval bounds' (less than half their distance to that margin, in the median)."""
    rng = np.random.default_rng(500 + seed)
    acts = [(Sigmoid, Tanh), (Tanh, ReLU, Sigmoid), (ReLU, Tanh), (Sigmoid, Sigmoid, Sigmoid)][seed % 4]
    net = _chain(rng, 4, [12] * len(acts), acts, final_sigmoid=seed % 3 == 0)
    A = torch.tensor(rng.normal(size=(2, 2, 3)))
    b = torch.tensor(rng.normal(size=(2, 2)) * 0.1)
    ratios = []
    for radius in (0.02, 0.3, 2.0):
        lo = rng.normal(size=(3, 4))
        hi = lo + radius
        lb = smooth_disjunct_lower_bounds(net, torch.tensor(lo), torch.tensor(hi), A, b)
        ol, oh = interval_bounds(net, torch.tensor(lo), torch.tensor(hi))
        ilb = disjunct_lower_bounds(ol, oh, A, b)
        for i in range(3):
            found = _attacked_minima(net, lo[i], hi[i], A, b, rng)
            assert np.all(lb[i].numpy() <= found), (seed, radius, i, lb[i], found)
            if radius == 0.02:
                ratios += list((found - lb[i].numpy()) / np.maximum(found - ilb[i].numpy(), 1e-12))
    assert np.median(ratios) < 0.5, ratios


def test_bounds_through_convolutions_and_elementwise_affine_layers():
    """A convolution, an elementwise affine layer and Tanh/Sigmoid: bounds below attacked margins."""
    rng = np.random.default_rng(3)
    net = Network([ElementwiseAffine(rng.uniform(0.5, 2, (1, 1, 1)), rng.normal(size=(1, 1, 1))),
                   Conv2d(rng.normal(size=(2, 1, 3, 3)) / 3, rng.normal(size=2) * 0.1, (1, 1), (1, 1, 1, 1)), Tanh(),
                   Flatten(), Dense(rng.normal(size=(6, 32)) / 5, rng.normal(size=6)), Sigmoid(),
                   Dense(rng.normal(size=(3, 6)), rng.normal(size=3))], (1, 4, 4))
    assert smooth_chain(net) is not None
    A = torch.tensor(rng.normal(size=(1, 2, 3)))
    b = torch.zeros(1, 2)
    lo = rng.uniform(0, 0.9, (2, 16))
    hi = lo + 0.1
    lb = smooth_disjunct_lower_bounds(net, torch.tensor(lo), torch.tensor(hi), A, b)
    for i in range(2):
        found = _attacked_minima(net, lo[i], hi[i], A, b, rng)
        assert np.all(lb[i].numpy() <= found)
        assert np.all(lb[i].numpy() > found - 1.0)  # and not vacuous


def test_only_plain_smooth_chains_are_relaxed():
    """A graph, a Softmax inside, parameters known only within errors, or no smooth activation:
    no relaxation (None), so the interval bounds alone decide."""
    rng = np.random.default_rng(1)
    d = lambda m, n: Dense(rng.normal(size=(m, n)), rng.normal(size=m))  # noqa: E731
    relu_only = Network([d(4, 2), ReLU(), d(2, 4)], (2,))
    with_softmax = Network([d(4, 2), Sigmoid(), d(3, 4), Softmax(), d(2, 3)], (2,))
    graph = Network([d(2, 2), Sigmoid(), Add(), d(2, 2)], (2,), inputs=[(-1,), (0,), (1, -1), (2,)])
    errors = Network([d(4, 2), Tanh(), d(2, 4)], (2,), param_errors=[(1e-7, 0.0), None, None])
    A, b = torch.ones(1, 1, 2), torch.zeros(1, 1)
    box = torch.zeros(1, 2), torch.ones(1, 2)
    for net in (relu_only, with_softmax, graph, errors):
        assert smooth_chain(net) is None
        assert smooth_disjunct_lower_bounds(net, *box, A, b) is None
    plain = Network([d(4, 2), Tanh(), d(2, 4), Sigmoid()], (2,))
    sc = smooth_chain(plain)
    assert sc.activations == ("tanh", "sigmoid") and len(sc.chain.affine_blocks()) == 3


def test_padded_and_overflowing_rows_prove_nothing():
    """A padded row (``b = +inf``) never counts, and bounds that overflow give ``-inf``."""
    rng = np.random.default_rng(2)
    net = _chain(rng, 2, [5], [Sigmoid])
    A = torch.tensor([[[1.0, 0, 0], [0, 0, 0]]])
    b = torch.tensor([[-100.0, math.inf]])
    lb = smooth_disjunct_lower_bounds(net, torch.zeros(1, 2), torch.ones(1, 2), A, b)
    assert float(lb[0, 0]) > 0  # the first row alone, y_0 + 100 > 0
    huge = Network([Dense(np.full((3, 2), 1e300), np.zeros(3)), Tanh(), Dense(np.full((2, 3), 1e308), np.zeros(2))],
                   (2,))
    lb = smooth_disjunct_lower_bounds(huge, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 1, 2), torch.zeros(1, 1))
    assert not float(lb[0, 0]) > 0


def test_verify_proves_with_the_relaxation_what_intervals_cannot():
    """784 inputs, two Sigmoid layers, a small box: a threshold between the interval bound and the
    relaxation's bound is proven (``unsat``, by CROWN); one just below the attacked margin is not."""
    rng = np.random.default_rng(8)
    net = _chain(rng, 784, [40, 40], [Sigmoid, Sigmoid])
    x0 = rng.uniform(0, 1, 784)
    lo, hi = np.clip(x0 - 0.02, 0, 1), np.clip(x0 + 0.02, 0, 1)
    A = torch.tensor([[[1.0, -1.0, 0.0]]], dtype=torch.float64)
    lb_crown = float(smooth_disjunct_lower_bounds(net, torch.tensor(lo)[None], torch.tensor(hi)[None], A,
                                                  torch.zeros(1, 1))[0, 0])
    ol, oh = interval_bounds(net, torch.tensor(lo)[None], torch.tensor(hi)[None])
    lb_ibp = float(disjunct_lower_bounds(ol, oh, A, torch.zeros(1, 1))[0, 0])
    assert lb_crown > lb_ibp + 0.05
    t = (lb_crown + lb_ibp) / 2  # unsafe region y_0 - y_1 <= t: y_0 - y_1 - t >= lb_crown - t > 0
    spec = OutputSpec([(np.array([[1.0, -1.0, 0.0]]), np.array([t]))], 3)
    v = verify(net, Box(lo, hi), spec, timeout=20)
    assert v.status.value == "unsat" and v.decided_by == "crown", v.message
    found = float(_attacked_minima(net, lo, hi, A, torch.zeros(1, 1, dtype=torch.float64), rng, n_samples=500)[0])
    spec = OutputSpec([(np.array([[1.0, -1.0, 0.0]]), np.array([found + 1e-3]))], 3)
    v = verify(net, Box(lo, hi), spec, timeout=10)
    assert v.status.value == "sat"


def test_bounds_command_on_a_sigmoid_tanh_onnx_network(tmp_path, capsys):
    """``gpuopt bounds`` on an ONNX Tanh/Sigmoid network: ``ibp`` (interval bounds) and ``crown``
    (the relaxation, at least as tight) contain sampled values of each row; ``alpha-crown`` is
    refused by name."""
    import json

    import onnx

    from gpuopt.cli import main
    from gpuopt.io.onnx import from_onnx
    from test_smooth_layers import _onnx_smooth

    model = _onnx_smooth(np.random.default_rng(4))
    onnx.save(model, tmp_path / "net.onnx")
    lo, hi = np.array([-0.3, 0.1, 0.2]), np.array([-0.1, 0.3, 0.25])
    text = "".join(f"(declare-const X_{i} Real)\n" for i in range(3)) + "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
    text += "".join(f"(assert (>= X_{i} {float(lo[i])!r}))\n(assert (<= X_{i} {float(hi[i])!r}))\n" for i in range(3))
    text += "(assert (or (and (<= Y_0 Y_1)) (and (>= Y_0 0.5) (<= Y_1 -0.25))))\n"
    (tmp_path / "p.vnnlib").write_text(text)
    args = [str(tmp_path / "net.onnx"), str(tmp_path / "p.vnnlib"), "--json"]
    got = {}
    for method in ("ibp", "crown"):
        assert main(["bounds", *args, "--method", method]) == 0
        got[method] = json.loads(capsys.readouterr().out)["disjuncts"]
    y = from_onnx(model).forward64(np.random.default_rng(5).uniform(lo, hi, (20000, 3)))
    values = [[y[:, 0] - y[:, 1]], [-y[:, 0] + 0.5, y[:, 1] + 0.25]]  # each row's lhs - rhs
    for k, rows in enumerate(values):
        for i, v in enumerate(rows):
            c, b = got["crown"][k][i], got["ibp"][k][i]
            assert b["lower"] <= c["lower"] <= v.min() and v.max() <= c["upper"] <= b["upper"], (k, i)
    assert any(got["crown"][k][i]["upper"] - got["crown"][k][i]["lower"]
               < 0.5 * (got["ibp"][k][i]["upper"] - got["ibp"][k][i]["lower"]) for k in range(2) for i in range(len(values[k])))
    assert main(["bounds", *args, "--method", "alpha-crown"]) != 0
    assert "'ibp' (interval bounds) and 'crown'" in capsys.readouterr().err


@pytest.mark.parametrize("seed", range(4))
def test_optimised_tangent_points_tighten_the_rows_and_stay_sound(seed):
    """With ``steps``, the per-row tangent points are optimised: every row bound is at least the
    default one, most are higher, and all stay below the attacked margins."""
    rng = np.random.default_rng(700 + seed)
    acts = [(Sigmoid, Tanh, Sigmoid), (Tanh, Tanh), (Sigmoid, ReLU, Tanh), (Tanh, Sigmoid)][seed]
    net = _chain(rng, 5, [16] * len(acts), acts, final_sigmoid=seed == 1)
    A = torch.tensor(rng.normal(size=(4, 1, 3)))
    b = torch.zeros(4, 1, dtype=torch.float64)
    lo = rng.uniform(-1, 0.5, (2, 5))
    hi = lo + rng.uniform(0.1, 0.8, (2, 1))
    plain = smooth_disjunct_lower_bounds(net, torch.tensor(lo), torch.tensor(hi), A, b)
    tuned = smooth_disjunct_lower_bounds(net, torch.tensor(lo), torch.tensor(hi), A, b, steps=15)
    assert bool((tuned >= plain).all())
    assert int((tuned > plain + 1e-9).sum()) >= 5, (plain, tuned)
    for i in range(2):
        found = _attacked_minima(net, lo[i], hi[i], A, b, rng)
        assert np.all(tuned[i].numpy() <= found), (seed, i, tuned[i], found)


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
def test_relaxation_at_any_tangent_points_of_the_sound_ranges_holds(kind):
    """:func:`relaxation_at` with tangent points anywhere in their ranges (``[l, u]`` on a convex
    or concave interval; ``[0, u]`` above and ``[l, 0]`` below across 0) gives valid lines."""
    from gpuopt.bounds.smooth import relaxation_at

    ivs = [(a, b) for a, b in _intervals() if math.isfinite(a) and math.isfinite(b) and b > a]
    l = torch.tensor([a for a, _ in ivs], dtype=torch.float64)
    u = torch.tensor([b for _, b in ivs], dtype=torch.float64)
    mixed = (l < 0) & (u > 0)
    for t in (0.0, 0.02, 0.5, 0.97, 1.0):
        d_up = torch.where(mixed, t * u, l + t * (u - l))
        d_lo = torch.where(mixed, t * l, l + t * (u - l))
        aL, aU, bU, bL = (x.tolist() for x in relaxation_at(kind, l, u, d_up, d_lo))
        for i, (a, b) in enumerate(ivs):
            for z in [a + (b - a) * s for s in np.linspace(0, 1, 41)]:
                fz, zq = _exact(kind, z), mpmath.mpf(z)
                assert mpmath.mpf(aL[i]) * zq + mpmath.mpf(bL[i]) <= fz, (kind, t, a, b, z)
                assert mpmath.mpf(aU[i]) * zq + mpmath.mpf(bU[i]) >= fz, (kind, t, a, b, z)


def test_the_optimiser_keeps_its_tangent_points_in_the_sound_ranges(monkeypatch):
    """Every tangent point the optimisation steps (and its final evaluation) pass to
    :func:`relaxation_at` lies in the range where any point gives sound lines."""
    from gpuopt.bounds import smooth

    seen = []
    original = smooth.relaxation_at

    def checked(kind, l, u, d_up, d_lo, **kw):
        shape = torch.broadcast_shapes(l.shape, d_up.shape)
        L, U, du, dl = (t.detach().expand(shape) for t in (l, u, d_up, d_lo))
        fin = torch.isfinite(L) & torch.isfinite(U) & (U > L)
        mixed = fin & (L < 0) & (U > 0)
        convex, concave = fin & (U <= 0), fin & (L >= 0)
        assert bool(((du >= 0) & (du <= U))[mixed].all() and ((dl >= L) & (dl <= 0))[mixed].all())
        assert bool(((dl >= L) & (dl <= U))[convex].all() and ((du >= L) & (du <= U))[concave].all())
        seen.append(int(mixed.sum()))
        return original(kind, l, u, d_up, d_lo, **kw)

    monkeypatch.setattr(smooth, "relaxation_at", checked)
    rng = np.random.default_rng(12)
    net = _chain(rng, 4, [10, 10], [Tanh, Sigmoid])
    lo = rng.uniform(-1, 0, (2, 4))
    smooth_disjunct_lower_bounds(net, torch.tensor(lo), torch.tensor(lo + 0.7), torch.tensor(rng.normal(size=(2, 1, 3))),
                                 torch.zeros(2, 1, dtype=torch.float64), steps=10)
    assert len(seen) > 20 and sum(seen) > 0


def test_consecutive_affine_layers_are_not_composed_into_a_rounded_matrix():
    """Two Dense layers in a row whose product cancels (1 + 2^-60 - 1): composed in float64 it would
    be 0 and the bounds those of another network (a wrong unsat, review finding). Each stays its
    own block, joined by an exact identity: the bound is below the exact margin, and verify
    never says unsat."""
    net = Network([Dense(np.array([[1.0], [2.0 ** -60], [-1.0]]), np.zeros(3)), Dense(np.ones((1, 3)), np.zeros(1)),
                   Sigmoid()], (1,))
    assert smooth_chain(net).activations == ("identity", "sigmoid")
    lo, hi = np.array([2.0 ** 60]), np.array([2.0 ** 61])
    exact = 0.6 - 1 / (1 + mpmath.exp(-mpmath.mpf(2) ** 60 * mpmath.mpf(2) ** -60))  # the margin at lo: < 0
    lb = smooth_disjunct_lower_bounds(net, torch.tensor(lo)[None], torch.tensor(hi)[None],
                                      torch.tensor([[[-1.0]]]), torch.tensor([[-0.6]]))
    assert float(lb[0, 0]) <= exact
    v = verify(net, Box(lo, hi), OutputSpec([(np.array([[-1.0]]), np.array([-0.6]))], 1), timeout=2)
    assert v.status.value != "unsat"


def test_a_passed_deadline_proves_nothing_at_once(monkeypatch):
    """Past its deadline the pass stops at the first chunk of neurons and the rows get ``-inf``: no
    relaxation is formed and no row bounded on flat lines (review finding: a cut-short pass still
    did all of that, seconds past the deadline on wide nets)."""
    from gpuopt.bounds import smooth

    rng = np.random.default_rng(21)
    net = _chain(rng, 6, [30, 30], [Sigmoid, Tanh])
    lo = rng.uniform(-1, 0, (3, 6))
    A = torch.tensor(rng.normal(size=(2, 1, 3)))
    b = torch.zeros(2, 1, dtype=torch.float64)
    full = smooth_disjunct_lower_bounds(net, torch.tensor(lo), torch.tensor(lo + 0.2), A, b, steps=5)
    assert bool(torch.isfinite(full).all())

    def refuse(*args, **kwargs):
        raise AssertionError("a relaxation formed past the deadline")

    monkeypatch.setattr(smooth, "smooth_relaxation", refuse)
    late = smooth_disjunct_lower_bounds(net, torch.tensor(lo), torch.tensor(lo + 0.2), A, b, steps=5, deadline=0.0)
    assert late.shape == (3, 2) and bool((late == -math.inf).all())


def test_direct_calls_with_bad_boxes_or_specs_are_refused_by_name():
    from gpuopt.errors import InvalidInputError

    rng = np.random.default_rng(2)
    net = _chain(rng, 2, [4], [Tanh])
    A, b = torch.ones(1, 1, 3, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    box = torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
    for args, match in (((torch.zeros(1, 3), torch.ones(1, 3), A, b), "must have 2 inputs"),
                        ((box[1], box[0], A, b), "empty box"),
                        ((torch.zeros(2), torch.ones(2), A, b), r"\(batch, n_in\)"),
                        ((*box, torch.ones(1, 1, 2), b), "3 columns"),
                        ((*box, A, torch.zeros(2)), "its shape without n_out")):
        with pytest.raises(InvalidInputError, match=match):
            smooth_disjunct_lower_bounds(net, *args)
