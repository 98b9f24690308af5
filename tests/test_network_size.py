"""Networks too large for the exact linear form are refused with a precise error (or an
``unknown`` verdict), never with an out-of-memory crash deep inside numpy."""

from __future__ import annotations

import numpy as np
import pytest

from gpuopt import Box, InvalidInputError, NetworkTooLargeError, OutputSpec, verify
from gpuopt.layers import AvgPool2d, Conv2d, Dense, Flatten, MaxPool2d, ReLU
from gpuopt.lowering import lowered_nonzeros, max_nonzeros, network_steps
from gpuopt.network import Network

from helpers import random_conv_network, random_dense_network


def _conv_pool_net(rng):
    layers = [Conv2d(rng.normal(size=(4, 2, 3, 3)), rng.normal(size=4), (1, 1), (1, 1, 1, 1)), ReLU(),
              MaxPool2d((2, 2), (2, 2)), Conv2d(rng.normal(size=(3, 4, 2, 2)), rng.normal(size=3), (2, 2)), ReLU(),
              AvgPool2d((2, 2), (1, 1)), Flatten(), Dense(rng.normal(size=(2, 3)), rng.normal(size=2))]
    return Network(layers, (2, 8, 8))


def test_the_estimate_bounds_the_linear_form_from_above():
    rng = np.random.default_rng(0)
    for net in (random_dense_network(rng, 6, [8, 5], 3), random_conv_network(rng, (2, 5, 4), 2, (3, 2), (2, 1), (1, 0, 0, 1), 4, 3),
                _conv_pool_net(rng)):
        steps, _ = network_steps(net)
        actual = sum(m.nnz for s in steps if s.kind == "affine" for m in s.matrices)
        assert actual <= lowered_nonzeros(net) <= 4 * actual + 100


def test_a_network_above_the_limit_is_refused(monkeypatch):
    rng = np.random.default_rng(1)
    net = _conv_pool_net(rng)
    n = lowered_nonzeros(net)
    monkeypatch.setenv("GPUOPT_MAX_NONZEROS", str(n - 1))
    assert max_nonzeros() == n - 1
    with pytest.raises(NetworkTooLargeError, match="GPUOPT_MAX_NONZEROS"):
        network_steps(net)
    spec = OutputSpec([(np.array([[1.0, -1.0]]), np.array([1e6]))], 2)  # y0 - y1 <= 1e6: reachable
    v = verify(net, Box(np.zeros(128), np.ones(128)), spec, timeout=20)
    assert v.status.value == "sat" and v.decided_by == "attack"  # the attack needs no linear form
    monkeypatch.setenv("GPUOPT_MAX_NONZEROS", "lots")
    with pytest.raises(InvalidInputError, match="GPUOPT_MAX_NONZEROS must be a number"):
        max_nonzeros()
    monkeypatch.setenv("GPUOPT_MAX_NONZEROS", str(n))
    assert verify(net, Box(np.zeros(128), np.ones(128)), spec, timeout=20).status.value == "sat"


def test_a_too_large_network_still_gets_the_attack(monkeypatch):
    """Above the limit, the attack runs alone and its counterexamples are checked layer by layer:
    a reachable property is ``sat``, an unreachable one ``unknown`` with the reason."""
    rng = np.random.default_rng(4)
    net = _conv_pool_net(rng)
    monkeypatch.setenv("GPUOPT_MAX_NONZEROS", "100")
    lo, hi = np.zeros(128), np.ones(128)
    x = rng.uniform(lo, hi)
    y = net.forward64(x[None])[0]
    reach = OutputSpec([(np.array([[1.0, -1.0]]), np.array([y[0] - y[1] + 1e-3]))], 2)  # y0 - y1 <= value + 1e-3
    v = verify(net, Box(lo, hi), reach, timeout=20)
    assert v.status.value == "sat"
    z = net.forward64(np.asarray(v.counterexample)[None])[0]
    assert z[0] - z[1] <= y[0] - y[1] + 1e-3
    never = OutputSpec([(np.array([[1.0, 0.0]]), np.array([-1e9]))], 2)  # y0 <= -1e9: unreachable
    v = verify(net, Box(lo, hi), never, timeout=6)
    assert v.status.value in ("unknown", "timeout") and "linear form needs about" in v.message
    assert set(v.stage_seconds) <= {"bounds", "attack"}
