"""Intermediate bounds optimised with a domain's split constraints
(:func:`gpuopt.relu_split._split_tighten`) and the plateaus of activation splitting
(``ReluSplitConfig.stall_retry``, ``stall_tighten``): the bounds hold at every sampled input of the
domain, they are tighter than CROWN without the split multipliers where the splits matter, a
plateau's kind follows its weakest domain's LP, and the search with the plateau's steps (and the
tightening) at every step decides as brute-force enumeration does."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gpuopt import relu_split as rs
from gpuopt.bounds import crown
from gpuopt.bounds.base import center_radius
from gpuopt.bounds.crown import _term_count
from gpuopt.bounds.prune import DeadPruning
from gpuopt.layers import Dense, ReLU
from gpuopt.network import Network
from gpuopt.relu_split import ReluSplitConfig, _Domains, _refine, _split_tighten

from helpers import brute_force_min_margin, numpy_forward, check_relu_split, random_dense_network, two_disjunct_case


def _domains(net, lo, hi, signs):
    """The ops of ``net`` and one domain per entry of ``signs`` (per ReLU layer, ``{neuron: +-1}``)
    over the box's CROWN bounds, the split neurons' bounds clamped to their signs."""
    lo_t, hi_t = torch.as_tensor(lo)[None], torch.as_tensor(hi)[None]
    pre = [(l, u) for l, u in crown(net, lo_t, hi_t).pre_activation]
    prune = DeadPruning(net, pre)
    ops = prune.ops(lo_t.device, lo_t.dtype)
    D = len(signs)
    lower = [prune.narrow(l, j).expand(D, -1).clone() for j, (l, _) in enumerate(pre)]
    upper = [prune.narrow(u, j).expand(D, -1).clone() for j, (_, u) in enumerate(pre)]
    sign = [torch.zeros_like(l, dtype=torch.int8) for l in lower]
    for i, per_layer in enumerate(signs):
        for j, chosen in enumerate(per_layer):
            for n, s in chosen.items():
                p = int(torch.searchsorted(prune.keep[j], n))
                sign[j][i, p] = s
                if s > 0:
                    lower[j][i, p] = lower[j][i, p].clamp(min=0.0)
                else:
                    upper[j][i, p] = upper[j][i, p].clamp(max=0.0)
    pad = [torch.zeros(D, 1, l.shape[1], dtype=l.dtype) for l in lower]
    doms = _Domains(lower, upper, sign, pad, [p.clone() for p in pad], [l.clone() for l in lower],
                    [l.clone() for l in lower], torch.zeros(D, dtype=lo_t.dtype), torch.zeros(D, dtype=torch.long),
                    torch.zeros(D, dtype=lo_t.dtype))
    x_mid, x_rad = center_radius(lo_t, hi_t)
    return ops, prune, doms, x_mid, x_rad, _term_count(net, lo_t)


@pytest.mark.parametrize("seed", range(8))
def test_tightened_bounds_hold_at_every_input_of_the_domain(seed):
    rng = np.random.default_rng(700 + seed)
    n_in = int(rng.integers(2, 4))
    net = random_dense_network(rng, n_in, [int(rng.integers(5, 9)) for _ in range(3)], 2)
    lo = rng.normal(size=n_in) - 0.8
    hi = lo + 1.6
    x = rng.uniform(lo, hi, size=(40000, n_in))
    _, z = numpy_forward(net, x)
    # domains: random signs on neurons of the first two ReLU layers, each sign taken from a
    # sampled input, so that the domain holds inputs (two to four splits per domain)
    root = [(l[0].numpy(), u[0].numpy())
            for l, u in crown(net, torch.as_tensor(lo)[None], torch.as_tensor(hi)[None]).pre_activation]
    signs = []
    for _ in range(6):
        i = int(rng.integers(len(x)))
        anchor = [a[i] for a in z]
        chosen = [{}, {}, {}]
        for j in (0, 1):
            open_ = np.flatnonzero((root[j][0] < 0) & (root[j][1] > 0))
            for n in rng.choice(open_, size=min(len(open_), int(rng.integers(1, 3))), replace=False):
                chosen[j][int(n)] = 1 if anchor[j][n] >= 0 else -1
        signs.append(chosen)
    ops, prune, doms, x_mid, x_rad, n_terms = _domains(net, lo, hi, signs)
    out, nonempty = _split_tighten(ops, doms, x_mid, x_rad, n_terms, 20, 0.1, 0.1)
    assert bool(nonempty.all()) and len(out) == len(signs)  # every domain holds the sampled inputs
    tighter = 0
    for i, chosen in enumerate(signs):
        inside = np.ones(len(x), dtype=bool)
        for j, per in enumerate(chosen):
            for n, s in per.items():
                inside &= s * z[j][:, n] >= 0
        assert inside.sum() > 0
        for j in range(3):
            keep = prune.keep[j].numpy()
            zj = z[j][inside][:, keep]
            l, u = out.lower[j][i].numpy(), out.upper[j][i].numpy()
            assert np.all(zj >= l) and np.all(zj <= u), (seed, i, j)
            tighter += int(np.sum(l > doms.lower[j][i].numpy()) + np.sum(u < doms.upper[j][i].numpy()))
    assert tighter > 0  # the optimisation moved some bound


def test_split_multipliers_tighten_what_crown_cannot():
    """``x in [-1, 1]``; two first-layer neurons ``a = b = x``; ``c = relu(b) - 0.25``. On the
    domain ``a <= 0`` (so ``x <= 0``), ``c = -0.25``. CROWN through ``b``'s triangle gives
    ``c <= 0.75`` whatever the domain; with a multiplier on ``a``'s split the relaxation's own
    maximum over the domain, 0.25, is reached (``h_b <= (x + 1) / 2 <= 1/2``)."""
    net = Network([Dense(np.array([[1.0], [1.0]]), np.zeros(2)), ReLU(),
                   Dense(np.array([[0.0, 1.0]]), np.array([-0.25])), ReLU(),
                   Dense(np.array([[1.0]]), np.zeros(1))], (1,))
    ops, _, doms, x_mid, x_rad, n_terms = _domains(net, np.array([-1.0]), np.array([1.0]), [[{0: -1}, {}]])
    plain, _, _, _ = _refine(ops, doms, torch.zeros(1, dtype=torch.long), x_mid, x_rad, n_terms)
    assert float(plain.upper[1][0, 0]) > 0.74
    tight, _ = _split_tighten(ops, doms, x_mid, x_rad, n_terms, 100, 0.1, 0.1)
    assert 0.25 - 1e-9 <= float(tight.upper[1][0, 0]) <= 0.26
    assert float(tight.lower[1][0, 0]) <= -0.25


@pytest.mark.parametrize("tighten", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_relu_split_on_plateaus_at_every_step_agrees_with_brute_force(seed, tighten, monkeypatch):
    """``STALL_STEPS = 0``, ``STALL_SHARE = 1`` and every plateau taken for an inherited one: every
    step after the first is on a plateau, so every child bounded below its parent gets the
    plateau's steps (``tighten``: after its intermediate bounds are tightened with its splits)."""
    monkeypatch.setattr(rs, "STALL_STEPS", 0)
    monkeypatch.setattr(rs, "STALL_SHARE", 1.0)
    kinds = []
    monkeypatch.setattr(rs, "_inherited", lambda *args: kinds.append(args) or True)
    calls = []
    real = rs._split_tighten

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(rs, "_split_tighten", spy)
    net, lo, hi, spec = two_disjunct_case(seed, 3)
    minima = brute_force_min_margin(net, lo, hi, spec).per_disjunct
    explored = 0
    for delta in (0.02, 1e-3, -1e-3, -0.02):
        config = ReluSplitConfig(batch_size=2, root_steps=0, steps=1, retry_steps=0, stall_tighten=tighten)
        explored = max(explored, check_relu_split(net, lo, hi, spec, minima, delta, config).domains)
    # from the second step on every step is on the plateau (2 roots, at most 4 children a step)
    assert explored <= 6 or kinds, explored
    assert bool(calls) == (tighten and bool(kinds)) or explored <= 6, (len(calls), len(kinds), explored)


def test_a_plateau_is_inherited_only_when_its_lp_says_so():
    assert rs._inherited(0.5, -1.0, False)  # the LP proves the domain
    assert rs._inherited(-0.5, -1.0, False)  # the LP is well above the bound
    assert rs._inherited(-math.inf, -1.0, True)  # empty
    assert not rs._inherited(-0.995, -1.0, False)  # within 1%: the relaxation's own value
    assert not rs._inherited(-1.0, -1.0, False)
    assert not rs._inherited(-math.inf, -1.0, False)  # no LP bound: nothing known
    assert not rs._inherited(math.nan, -1.0, False)


@pytest.mark.parametrize("name", ["stall_retry", "stall_tighten"])
def test_the_plateau_switches_are_validated(name):
    with pytest.raises(Exception, match=name):
        ReluSplitConfig(**{name: "yes"})
