"""Forward linear bounds (gpuopt.bounds.forward): soundness on chains and graphs, chunking, and
the choice between forward bounds and CROWN."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpuopt import Box, OutputSpec, verify
from gpuopt.bounds import crown, ibp
from gpuopt.bounds.forward import forward_crown, prefers_forward
import gpuopt.bounds.forward as forward_mod
from gpuopt.network import Add, Concat, Conv2d, Dense, Flatten, MaxPool2d, Network, ReLU, Reshape
from gpuopt.verdict import Status

from helpers import assert_bounds_contain_samples, box_points, random_dense_network


def _graph_net(rng):
    """A few-input graph: a dense lift to an image, conv, residual add, max-pool, concat."""
    return Network([
        Dense(rng.normal(size=(32, 3)), rng.normal(size=32)),            # 0
        Reshape((2, 4, 4)),                                              # 1
        Conv2d(rng.normal(size=(2, 2, 3, 3)) / 3, rng.normal(size=2), padding=(1, 1, 1, 1)),  # 2
        ReLU(),                                                          # 3
        Add(),                                                           # 4 = 3 + 1
        MaxPool2d((2, 2), (2, 2)),                                       # 5
        Flatten(),                                                       # 6
        ReLU(),                                                          # 7 (reads 0)
        Concat(0),                                                       # 8 = [6, 7]
        Dense(rng.normal(size=(4, 40)) / 6, rng.normal(size=4)),         # 9
    ], (3,), inputs=[(-1,), (0,), (1,), (2,), (3, 1), (4,), (5,), (0,), (6, 7), (8,)])


def _nets():
    rng = np.random.default_rng(5)
    yield "dense", random_dense_network(rng, 3, [40, 30, 20], 4)
    yield "graph", _graph_net(rng)


@pytest.mark.parametrize("name, net", list(_nets()))
@pytest.mark.parametrize("seed", range(4))
def test_forward_bounds_contain_sampled_values(name, net, seed):
    rng = np.random.default_rng(seed)
    lo = rng.uniform(-1, 0, (3, net.input_size))
    hi = lo + rng.choice([0.0, 0.05, 0.5], size=lo.shape)  # some degenerate coordinates
    b = forward_crown(net, torch.tensor(lo), torch.tensor(hi))
    b_ibp = ibp(net, torch.tensor(lo), torch.tensor(hi))
    assert b.method == "forward" and len(b.pre_activation) == len(b_ibp.pre_activation)
    assert_bounds_contain_samples(net, b, lo, hi, rng, what=name)
    # intersected with IBP, and strictly tighter somewhere on a deep net
    for (fl, fu), (il, iu) in zip(list(b.pre_activation) + [b.output], list(b_ibp.pre_activation) + [b_ibp.output]):
        assert bool((fl >= il).all() and (fu <= iu).all())
    assert float((b.output[1] - b.output[0]).sum()) < float((b_ibp.output[1] - b_ibp.output[0]).sum())


def test_a_point_box_gives_the_point(seed=3):
    rng = np.random.default_rng(seed)
    net = random_dense_network(rng, 2, [30, 30], 3)
    x = rng.normal(size=(1, 2))
    b = forward_crown(net, torch.tensor(x), torch.tensor(x))
    y = net.forward64(x)
    assert np.all(b.output[0].numpy() <= y) and np.all(y <= b.output[1].numpy())
    assert float((b.output[1] - b.output[0]).max()) < 1e-9 * max(1.0, float(np.abs(y).max()))


def test_chunks_of_boxes_give_the_same_bounds(monkeypatch):
    rng = np.random.default_rng(7)
    net = random_dense_network(rng, 2, [20, 20], 2)
    lo = torch.tensor(rng.uniform(-1, 0, (7, 2)))
    hi = lo + 0.3
    whole = forward_crown(net, lo, hi)
    monkeypatch.setattr(forward_mod, "CHUNK_ELEMENTS", 1)  # one box per chunk
    parts = forward_crown(net, lo, hi)
    for (a, b), (c, d) in zip(list(whole.pre_activation) + [whole.output], list(parts.pre_activation) + [parts.output]):
        # the same computation per box (summation order may differ with the batch size)
        assert torch.allclose(a, c, rtol=1e-12, atol=1e-12) and torch.allclose(b, d, rtol=1e-12, atol=1e-12)


def test_a_passed_deadline_keeps_ibp_bounds():
    rng = np.random.default_rng(8)
    net = random_dense_network(rng, 2, [20, 20], 2)
    lo = torch.tensor(rng.uniform(-1, 0, (2, 2)))
    b = forward_crown(net, lo, lo + 0.5, deadline=0.0)
    b_ibp = ibp(net, lo, lo + 0.5)
    assert b.method == "forward-partial" and torch.equal(b.output[0], b_ibp.output[0])


def test_the_cheaper_method_is_chosen():
    rng = np.random.default_rng(9)
    assert prefers_forward(random_dense_network(rng, 2, [100, 10], 2))  # 32 * 2 < 100
    assert not prefers_forward(random_dense_network(rng, 8, [100, 10], 2))  # 32 * 8 > 100
    assert not prefers_forward(Network([Dense(np.eye(2), np.zeros(2))], (2,)))  # no hidden layer


def test_forward_is_comparable_to_crown_on_a_few_input_wide_net():
    rng = np.random.default_rng(10)
    net = random_dense_network(rng, 2, [200, 200], 3)
    lo = torch.tensor(rng.uniform(-1, 0, (1, 2)))
    hi = lo + 0.2
    f, c = forward_crown(net, lo, hi), crown(net, lo, hi)
    width = lambda b: float((b.output[1] - b.output[0]).sum())  # noqa: E731
    assert width(f) <= 3 * width(c)


@pytest.mark.parametrize("threshold, expected", [(-0.5, Status.UNSAT), (0.5, Status.SAT)])
def test_verify_on_a_few_input_wide_network(threshold, expected):
    """A network where the bounds stage uses forward bounds; the answers are checked by sampling."""
    rng = np.random.default_rng(11)
    net = random_dense_network(rng, 2, [120, 120], 1)
    assert prefers_forward(net)
    box = Box([-1.0, -1.0], [1.0, 1.0])
    y = net.forward64(box_points(rng, box.lower, box.upper, 20000))[:, 0]
    # unsafe: y <= min + threshold * spread
    t = float(y.min() + threshold * (y.max() - y.min()))
    v = verify(net, box, OutputSpec([([[1.0]], [t])], 1), timeout=60)
    if expected is Status.SAT:
        assert v.status is Status.SAT and net.forward64(v.counterexample[None])[0, 0] <= t
    else:  # half a spread below the sampled minimum: input splitting over two inputs proves it
        assert v.status is Status.UNSAT, v
