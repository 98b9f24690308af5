"""The optimisation steps of alpha-CROWN and of activation splitting run without the rounding pads
(their values only choose the multipliers); the bound returned must still be a padded evaluation.
With the pad forced to a large constant ``P``, every returned bound must lie ``P`` below the true
minimum: a step's unpadded value leaking out as a bound would break that by about ``P``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import importlib

from gpuopt.bounds import crown
from gpuopt.bounds.crown import _backward, _magnitudes, _relaxation, alpha_crown_linear_lower
from gpuopt.problem import Problem
from gpuopt.regions import Box
from gpuopt.relu_split import ReluSplitConfig, relu_split
from gpuopt.specs import OutputSpec

from helpers import numpy_forward, random_conv_network, random_dense_network

PAD = 10.0
crown_module = importlib.import_module("gpuopt.bounds.crown")  # the package exports a function of that name
relu_split_module = importlib.import_module("gpuopt.relu_split")


def _net(seed: int, conv: bool):
    rng = np.random.default_rng(seed)
    if conv:
        return rng, random_conv_network(rng, (1, 3, 3), 2, (2, 2), (1, 1), (0, 0, 0, 0), 4, 2), 9
    n_in = 3
    return rng, random_dense_network(rng, n_in, [6, 5], 2), n_in


def _samples(rng, net, lo, hi, n=4000):
    x = rng.uniform(lo, hi, size=(n, lo.shape[0]))
    corners = np.where(rng.integers(0, 2, size=(n, lo.shape[0])) == 1, hi, lo)
    return numpy_forward(net, np.concatenate([x, corners]))[0]


@pytest.fixture
def big_pad(monkeypatch):
    monkeypatch.setattr(crown_module, "rounding_pad", lambda abs_sum, n_terms, nonzero_terms=None: abs_sum * 0 + PAD)


def test_unpadded_value_is_the_padded_one_plus_the_pad():
    rng, net, n_in = _net(0, False)
    lo = torch.as_tensor(rng.normal(size=n_in) - 0.5)[None]
    hi = lo + 1.0
    bounds = crown(net, lo, hi)
    ops = net.linear_ops("cpu", torch.float64)
    relax = [_relaxation(l, u, op.passthrough) for (l, u), op in zip(bounds.pre_activation, ops)]
    x_mid, x_rad = (lo + hi) / 2, (hi - lo) / 2
    hmax = _magnitudes(x_mid, x_rad, bounds.pre_activation, ops)
    C = torch.as_tensor(rng.normal(size=(1, 3, 2)))
    padded, _ = _backward(C, len(ops) - 1, ops, relax, x_mid, x_rad, 40, hmax)
    bare, _ = _backward(C, len(ops) - 1, ops, relax, x_mid, x_rad, 40, hmax, pad=False)
    assert (bare > padded).all()
    assert torch.allclose(bare, padded, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="box inputs only"):
        _backward(C, len(ops) - 1, ops, relax, x_mid, x_rad, 40, hmax, pad=False,
                  ball=(x_mid, torch.ones(1, dtype=torch.float64), "l2"))


@pytest.mark.parametrize("conv", [False, True])
def test_alpha_crown_rows_are_padded(big_pad, conv):
    for seed in range(4):
        rng, net, n_in = _net(seed, conv)
        lo = rng.normal(size=n_in) - 0.4
        hi = lo + 0.8
        t_lo, t_hi = torch.as_tensor(lo)[None], torch.as_tensor(hi)[None]
        C = torch.as_tensor(rng.normal(size=(1, 4, 2)))
        rows = alpha_crown_linear_lower(net, t_lo, t_hi, C, crown(net, t_lo, t_hi), steps=15)
        sampled = (_samples(rng, net, lo, hi) @ C[0].numpy().T).min(axis=0)
        assert (rows[0].numpy() <= sampled - PAD + 1e-9).all(), (rows, sampled)


@pytest.mark.parametrize("conv", [False, True])
def test_relu_split_root_bound_is_padded(big_pad, monkeypatch, conv):
    """The root domain is the whole box: its bound (after ``root_steps`` of optimisation) must be
    at most the sampled minimum of the disjunct's margin less the pad."""
    recorded = []

    class Stop(Exception):
        pass

    real = relu_split_module._bound

    def first_bound(*args, **kwargs):
        out = real(*args, **kwargs)
        recorded.append(out[0].clone())
        raise Stop

    monkeypatch.setattr(relu_split_module, "_bound", first_bound)
    for seed in range(4):
        rng, net, n_in = _net(seed, conv)
        lo = rng.normal(size=n_in) - 0.4
        hi = lo + 0.8
        A = rng.normal(size=(2, 2))
        b = np.zeros(2)
        spec = OutputSpec([(A, b)], 2)
        t_lo, t_hi = torch.as_tensor(lo), torch.as_tensor(hi)
        with pytest.raises(Stop):
            relu_split(net, t_lo, t_hi, [(A, b, None)], crown(net, t_lo[None], t_hi[None]),
                       problem=Problem(net, Box(lo, hi), spec), config=ReluSplitConfig(root_steps=30))
        margin = (_samples(rng, net, lo, hi) @ A.T - b).max(axis=1).min()
        assert float(recorded[-1][0]) <= margin - PAD + 1e-9
