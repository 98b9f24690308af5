"""The layer-by-layer float64 forward with error bounds (for networks too large for the step
form) bounds the distance to the exact output, and decides points as the step form does."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from gpuopt import Box, OutputSpec, Problem
from gpuopt.check import _exact_forward, _forward_with_error, _forward_with_error_layers, check_counterexample
from gpuopt.layers import (Add, AvgPool2d, Concat, Conv2d, ConvTranspose2d, Dense, ElementwiseAffine, Flatten,
                           MaxPool2d, Pad, ReLU, Reshape, Slice, Transpose)
from gpuopt.network import Network

from helpers import random_dag_network


def _image_net(rng, scale=1.0):
    """Every layer kind the checker handles, on a (2, 6, 6) input, with a residual branch."""
    layers = [Conv2d(rng.normal(size=(3, 2, 3, 3)) * scale, rng.normal(size=3), (1, 1), (1, 1, 1, 1)),  # 0
              ReLU(),  # 1
              ElementwiseAffine(rng.normal(size=(3, 1, 1)), rng.normal(size=(3, 1, 1))),  # 2
              Add(2),  # 3: 0 + 2
              MaxPool2d((2, 2), (2, 2)),  # 4 -> (3, 3, 3)
              Pad((0, 1, 1, 0, 0, 1), 0.25),  # 5 -> (3, 4, 4)
              AvgPool2d((2, 2), (1, 1)),  # 6 -> (3, 3, 3) (divisor 4: exact, so the exact forward applies)
              ConvTranspose2d(rng.normal(size=(3, 2, 2, 2)), rng.normal(size=2), (2, 2)),  # 7 -> (2, 6, 6)
              ReLU(),  # 8
              Transpose((0, 2, 1)),  # 9
              Slice(1, 1, 5, 2),  # 10 -> (2, 2, 6)
              Flatten(),  # 11
              Reshape((24,)),  # 12
              Dense(rng.normal(size=(5, 24)), rng.normal(size=5)),  # 13
              ReLU(),  # 14
              Concat(0, 2),  # 15: 13 and 14
              Dense(rng.normal(size=(3, 10)), rng.normal(size=3))]  # 16
    inputs = [(-1,), (0,), (1,), (0, 2), (3,), (4,), (5,), (6,), (7,), (8,), (9,), (10,), (11,), (12,), (13,),
              (13, 14), (15,)]
    return Network(layers, (2, 6, 6), inputs=inputs)


@pytest.mark.parametrize("seed", range(6))
def test_layer_errors_bound_the_exact_output(seed):
    rng = np.random.default_rng(seed)
    nets = [_image_net(rng, scale=10.0 ** rng.integers(-3, 4)),
            random_dag_network(rng, 12, 4, dense=lambda r, o, i: Dense(r.normal(size=(o, i)), r.normal(size=o)))]
    for net in nets:
        for _ in range(3):
            x = rng.normal(size=net.input_size) * 10.0 ** rng.integers(-2, 3)
            y, e = _forward_with_error_layers(net, x)
            y_steps, e_steps = _forward_with_error(net, x)
            exact = _exact_forward(net, x, 10 ** 7)
            assert exact is not None
            for k, v in enumerate(exact):
                assert abs(Fraction(float(y[k])) - v) <= Fraction(float(e[k])), (k, y[k], float(v), e[k])
            assert np.allclose(y, y_steps, rtol=1e-12, atol=1e-12)
            assert np.all(e <= 64 * e_steps + 1e-300)  # the same order as the step form's bounds


def test_a_too_large_network_is_checked_layer_by_layer(monkeypatch):
    """With the step form refused, a counterexample is still decided soundly (float64 band)."""
    rng = np.random.default_rng(3)
    net = _image_net(rng)
    x = rng.normal(size=net.input_size)
    y = net.forward64(x[None])[0]
    box = Box(x - 1e-9, x + 1e-9)
    reach = Problem(net, box, OutputSpec([(np.array([[1.0, -1.0, 0.0]]), np.array([y[0] - y[1] + 1e-6]))], 3))
    miss = Problem(net, box, OutputSpec([(np.array([[1.0, -1.0, 0.0]]), np.array([y[0] - y[1] - 1e-6]))], 3))
    monkeypatch.setenv("GPUOPT_MAX_NONZEROS", "10")
    net._param_cache.clear()
    assert check_counterexample(reach, x).ok and check_counterexample(reach, x).how == "float"
    assert not check_counterexample(miss, x).ok


def test_average_pooling_divides_by_the_window_count_exactly():
    """Windows of 9, 6 and 4 positions (no padding counted): 1/9 and 1/6 are not float64 numbers,
    but the bound covers the exact quotient."""
    from gpuopt.layers import pool_windows

    rng = np.random.default_rng(7)
    layer = AvgPool2d((3, 3), (1, 1), (1, 1, 1, 1), False)
    net = Network([layer, Flatten()], (2, 5, 5))
    for _ in range(20):
        x = rng.normal(size=50) * 10.0 ** rng.integers(-3, 4)
        y, e = _forward_with_error_layers(net, x)
        win = pool_windows(layer, (2, 5, 5))
        for k, w in enumerate(win):
            taps = [Fraction(float(x[j])) for j in w if j >= 0]
            exact = sum(taps) / len(taps)
            assert abs(Fraction(float(y[k])) - exact) <= Fraction(float(e[k]))
