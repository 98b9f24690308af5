"""Bounds over an L1 ball: the first layer's range is exact and attained, and no sampled point of
the ball leaves any layer's bounds."""

from __future__ import annotations

import numpy as np
import pytest

from gpuopt.bounds.l1 import knapsack_range, l1_ball_bounds

from helpers import random_dense_network


def _ball_points(rng, c, eps, lo, hi, n):
    d = rng.laplace(size=(n, c.size))
    d = d / np.abs(d).sum(1, keepdims=True) * eps * rng.uniform(0, 1, (n, 1)) ** (1 / c.size)
    x = np.clip(c + d, lo, hi)
    return x[np.abs(x - c).sum(1) <= eps]


@pytest.mark.parametrize("seed", range(5))
def test_knapsack_range_is_exact_and_attained(seed):
    rng = np.random.default_rng(seed)
    n = 12
    W = rng.normal(size=(6, n))
    lo, hi = np.zeros(n), np.ones(n)
    c = rng.uniform(0, 1, n)
    eps = rng.uniform(0.1, 3.0)
    l, u = knapsack_range(W, c, eps, lo, hi)
    # the LP optimum, by scipy's own solver on the split form x = c + p - m, p, m >= 0
    from scipy.optimize import linprog

    for j in range(W.shape[0]):
        for sign, bound in ((-1.0, u[j]), (1.0, l[j])):
            res = linprog(np.concatenate([sign * W[j], -sign * W[j]]), A_ub=np.ones((1, 2 * n)), b_ub=[eps],
                          bounds=[(0, h - ci) for h, ci in zip(hi, c)] + [(0, ci - lo_) for lo_, ci in zip(lo, c)])
            exact = W[j] @ c + sign * res.fun
            assert bound == pytest.approx(exact, abs=1e-9)
            assert (bound >= exact) if sign < 0 else (bound <= exact)


@pytest.mark.parametrize("seed", range(5))
def test_no_sampled_point_leaves_the_bounds(seed):
    rng = np.random.default_rng(10 + seed)
    net = random_dense_network(rng, 8, [10, 7], 3)
    blocks = net.affine_blocks()
    c = rng.uniform(0, 1, 8)
    eps = rng.uniform(0.2, 2.0)
    pre, out = l1_ball_bounds(blocks, c, eps, np.zeros(8), np.ones(8))
    X = _ball_points(rng, c, eps, 0.0, 1.0, 4000)
    h = X.T
    for k, block in enumerate(blocks):
        z = block.matrix @ h + block.bias[:, None]
        l, u = pre[k] if k < len(pre) else out
        assert np.all(z >= l[:, None]) and np.all(z <= u[:, None])
        h = np.maximum(z, 0.0)
    # tighter than the box hull's interval bounds on the first layer
    W = blocks[0].matrix.toarray()
    box_lo, box_hi = np.maximum(c - eps, 0), np.minimum(c + eps, 1)
    hull = np.maximum(W * box_lo, W * box_hi).sum(1) + blocks[0].bias
    assert np.all(pre[0][1] <= hull + 1e-9)
