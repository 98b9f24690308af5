"""Receptive fields and cones of influence (gpuopt.bounds.reach) and the CROWN passes built on them:
a chunk of rows run on just the coordinates it reaches gives the full pass's bounds, and CROWN
restricted to chosen outputs gives those outputs' full bounds, the other coordinates IBP's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sys

from gpuopt.bounds import ibp
from gpuopt.bounds.crown import crown
from gpuopt.bounds.reach import cone, receptive, row_support
from gpuopt.network import Add, AvgPool2d, Conv2d, Flatten, LinearOp, Network, ReLU

from helpers import assert_bounds_contain_samples

crown_mod = sys.modules["gpuopt.bounds.crown"]  # (the package exports a function of that name)


def _residual_cnn(rng, size: int = 10, c: int = 4) -> Network:
    """A small TinyYOLO-like net: conv, a residual block, average pooling, a 1x1 conv head."""
    def conv(c_out, c_in, k):
        pad = (k // 2,) * 4
        return Conv2d(rng.normal(size=(c_out, c_in, k, k)) / np.sqrt(c_in * k * k), 0.2 * rng.normal(size=c_out),
                      padding=pad)
    return Network([
        conv(c, 3, 3),                     # 0
        ReLU(),                            # 1
        conv(c, c, 3),                     # 2
        ReLU(),                            # 3
        conv(c, c, 3),                     # 4
        Add(),                             # 5 = 4 + 1
        ReLU(),                            # 6
        AvgPool2d((2, 2), (2, 2)),         # 7
        conv(c, c, 3),                     # 8
        ReLU(),                            # 9
        conv(5, c, 1),                     # 10
        Flatten(),                         # 11
    ], (3, size, size), inputs=[(-1,), (0,), (1,), (2,), (3,), (4, 1), (5,), (6,), (7,), (8,), (9,), (10,)])


@pytest.fixture
def sparse_blocks(monkeypatch):
    """Small blocks stored sparse, as a full-size CNN's are."""
    monkeypatch.setattr(LinearOp, "sparse_min_entries", 1)


def _box(rng, net, batch=1, eps=0.05):
    x = rng.uniform(0, 1, (batch, net.input_size))
    return torch.tensor(x - eps), torch.tensor(x + eps)


def _pattern_reach(net, k, rows):
    """The coordinates rows ``rows`` of block ``k`` reach, by dense products of the blocks'
    nonzero patterns (independent of reach.py)."""
    blocks = net.affine_blocks()
    v = np.zeros(blocks[k].matrix.shape[0])
    v[rows] = 1.0
    out = [None] * (k + 1)
    for j in range(k, -1, -1):
        v = (v @ (blocks[j].matrix.toarray() != 0)) > 0
        out[j] = np.flatnonzero(v)
        v = v.astype(float)
    return out


def test_row_support_and_receptive_match_pattern_products(sparse_blocks):
    rng = np.random.default_rng(0)
    net = _residual_cnn(rng)
    matrices = [b.matrix.tocsr() for b in net.affine_blocks()]
    assert row_support(matrices[0], np.zeros(0, dtype=np.int64)).size == 0
    for k in range(len(matrices)):
        for rows in (np.array([0]), rng.choice(matrices[k].shape[0], 7, replace=False)):
            got = receptive(matrices, k, rows)
            want = _pattern_reach(net, k, rows)
            assert len(got) == len(want) == k + 1
            for g, w in zip(got, want):
                assert np.array_equal(g, w)
    # a corner neuron of the first conv reaches a 2x2 window of each of the 3 input channels
    assert receptive(matrices, 0, np.array([0]))[0].size == 3 * 2 * 2


def test_cone_marks_exactly_the_neurons_that_reach_the_outputs(sparse_blocks):
    rng = np.random.default_rng(1)
    net = _residual_cnn(rng)
    matrices = [b.matrix.tocsr() for b in net.affine_blocks()]
    assert cone(matrices, np.arange(matrices[-1].shape[0])) is None
    outputs = np.array([12, 12, 37])
    masks = cone(matrices, outputs)
    L = len(matrices)
    for j in range(L - 1):
        want = _pattern_reach(net, L - 1, np.unique(outputs))[j + 1]
        assert np.array_equal(np.flatnonzero(masks[j]), want)
    assert 0 < masks[-1].sum() < masks[-1].size  # a real restriction on this net's last layers


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("batch", [1, 4])
def test_compacted_passes_give_the_full_passes_bounds(sparse_blocks, monkeypatch, seed, batch):
    rng = np.random.default_rng(10 + seed)
    net = _residual_cnn(rng)
    lo, hi = _box(rng, net, batch, eps=0.08)
    if batch > 1:  # narrow boxes beside a wide one: per-(box, neuron) pairs
        hi[1:] = lo[1:] + 1e-3
    calls = []
    real = crown_mod.compacted

    def counting(*args):
        calls.append(len(args[2]))
        return real(*args)

    monkeypatch.setattr(crown_mod, "compacted", counting)
    monkeypatch.setattr(crown_mod, "COMPACT_SHARE", 1.0)
    fast = crown(net, lo, hi)
    assert calls, "no chunk ran compacted"
    monkeypatch.setattr(crown_mod, "COMPACT_SHARE", -1.0)
    calls.clear()
    full = crown(net, lo, hi)
    assert not calls
    for (a, b), (c, d) in zip(list(fast.pre_activation) + [fast.output], list(full.pre_activation) + [full.output]):
        assert torch.allclose(a, c, rtol=1e-10, atol=1e-12) and torch.allclose(b, d, rtol=1e-10, atol=1e-12)
    assert_bounds_contain_samples(net, fast, lo.numpy(), hi.numpy(), rng, what="compacted")
    # tighter than IBP somewhere: the passes did run
    base = ibp(net, lo, hi)
    assert bool((fast.output[1] - fast.output[0] < base.output[1] - base.output[0] - 1e-9).any())


@pytest.mark.parametrize("seed", range(3))
def test_crown_on_chosen_outputs_keeps_their_bounds_and_ibp_elsewhere(sparse_blocks, seed):
    rng = np.random.default_rng(20 + seed)
    net = _residual_cnn(rng)
    lo, hi = _box(rng, net, 2, eps=0.06)
    outputs = torch.tensor([7, 31, 31, 80])
    full = crown(net, lo, hi)
    part = crown(net, lo, hi, outputs=outputs)
    base = ibp(net, lo, hi)
    sel = torch.unique(outputs)
    others = torch.ones(net.output_size, dtype=torch.bool)
    others[sel] = False
    for side in (0, 1):
        assert torch.allclose(part.output[side][:, sel], full.output[side][:, sel], rtol=1e-10, atol=1e-12)
        assert torch.equal(part.output[side][:, others], base.output[side][:, others])
    masks = cone([op._matrix for op in net.linear_ops("cpu", torch.float64)], outputs.numpy())
    for j, mask in enumerate(masks):
        m = torch.as_tensor(mask)
        for side in (0, 1):
            assert torch.allclose(part.pre_activation[j][side][:, m], full.pre_activation[j][side][:, m],
                                  rtol=1e-10, atol=1e-12)
            assert torch.equal(part.pre_activation[j][side][:, ~m], base.pre_activation[j][side][:, ~m])
    assert_bounds_contain_samples(net, part, lo.numpy(), hi.numpy(), rng, what="cone")


def test_alpha_crown_on_chosen_outputs_tightens_their_cone_only(sparse_blocks):
    from gpuopt.bounds.crown import alpha_crown_bounds

    rng = np.random.default_rng(30)
    net = _residual_cnn(rng)
    lo, hi = _box(rng, net, 1, eps=0.1)
    start = crown(net, lo, hi)
    outputs = torch.tensor([44])
    full = alpha_crown_bounds(net, lo, hi, start, steps=5)
    part = alpha_crown_bounds(net, lo, hi, start, steps=5, outputs=outputs)
    masks = cone([op._matrix for op in net.linear_ops("cpu", torch.float64)], outputs.numpy())
    moved = 0
    for j, mask in enumerate(masks):
        m = torch.as_tensor(mask)
        for side in (0, 1):
            assert torch.allclose(part.pre_activation[j][side][:, m], full.pre_activation[j][side][:, m],
                                  rtol=1e-6, atol=1e-9)
            assert torch.equal(part.pre_activation[j][side][:, ~m], start.pre_activation[j][side][:, ~m])
            moved += int((full.pre_activation[j][side][:, ~m] != start.pre_activation[j][side][:, ~m]).sum())
    assert moved > 0  # the full run did tighten neurons outside the cone
    assert_bounds_contain_samples(net, part, lo.numpy(), hi.numpy(), rng, what="alpha cone")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sparse_row_products_and_their_gradient_match_dense(sparse_blocks, dtype):
    rng = np.random.default_rng(40)
    net = _residual_cnn(rng)
    sparse = [(op, b) for op, b in zip(net.linear_ops("cpu", dtype), net.affine_blocks()) if op.dense is None]
    assert len(sparse) >= 3
    for op, block in sparse:
        M = torch.tensor(block.matrix.toarray(), dtype=dtype)
        A = torch.tensor(rng.normal(size=(2, 3, op.shape[0])), dtype=dtype, requires_grad=True)
        out = op.rmatmul(A)
        assert out.dtype == dtype and out.is_contiguous()
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
        assert torch.allclose(out, A.detach() @ M, **tol)
        G = torch.tensor(rng.normal(size=out.shape), dtype=dtype)
        (grad,) = torch.autograd.grad((out * G).sum(), A)
        assert torch.allclose(grad, G @ M.T, **tol)


def test_alpha_crown_bounds_starts_no_chunk_past_its_deadline(monkeypatch):
    """Each chunk's first and last passes ignore the deadline, so no chunk may start after it."""
    import time

    from gpuopt.bounds.crown import alpha_crown_bounds

    rng = np.random.default_rng(50)
    net = _residual_cnn(rng)
    lo, hi = _box(rng, net, 1, eps=0.1)
    start = crown(net, lo, hi)
    monkeypatch.setattr(crown_mod, "CHUNK_ELEMENTS", 4096)  # many chunks per layer
    calls = []
    real = crown_mod._optimised_rows
    deadline = time.monotonic() + 3600

    def slow(*args, **kwargs):
        calls.append(1)
        out = real(*args, **kwargs)
        monkeypatch.setattr(time, "monotonic", lambda: deadline + 1.0)  # the deadline has passed
        return out

    monkeypatch.setattr(crown_mod, "_optimised_rows", slow)
    got = alpha_crown_bounds(net, lo, hi, start, steps=2, deadline=deadline)
    assert len(calls) == 1
    assert_bounds_contain_samples(net, got, lo.numpy(), hi.numpy(), rng, what="cut short")


def test_restricted_block_takes_the_given_magnitudes_only_for_their_own_vector(sparse_blocks):
    rng = np.random.default_rng(60)
    net = _residual_cnn(rng)
    op = net.linear_ops("cpu", torch.float64)[1]
    M = net.affine_blocks()[1].matrix.tocsr()
    rows = np.array([3, 17, 40])
    cols = row_support(M, rows)
    u = torch.tensor(rng.uniform(0, 1, (2, op.shape[1])))
    v = u[:, torch.as_tensor(cols)]
    sub = op.restrict(rows, cols, magnitudes=(op.abs_matvec(u), v))
    want = v @ torch.tensor(abs(M[rows][:, cols]).toarray()).T
    assert torch.allclose(sub.abs_matvec(v), want, rtol=1e-12, atol=0)
    other = v.clone() * 2  # any other vector is multiplied, not looked up
    assert torch.allclose(sub.abs_matvec(other), 2 * want, rtol=1e-12, atol=0)
    assert sub.abs_col_max >= float(abs(M[rows][:, cols]).sum(axis=0).max())


def test_crown_under_inference_mode(sparse_blocks):
    rng = np.random.default_rng(61)
    net = _residual_cnn(rng)
    with torch.inference_mode():
        lo, hi = _box(rng, net)
        b = crown(net, lo, hi, outputs=torch.tensor([5]))
    assert_bounds_contain_samples(net, b, lo.numpy(), hi.numpy(), rng, what="inference mode")


@pytest.mark.parametrize("bad", [torch.tensor([3.0]), [-1], [10 ** 6], np.array([True, False])])
def test_crown_refuses_outputs_that_are_not_output_indices(sparse_blocks, bad):
    from gpuopt.errors import InvalidInputError

    rng = np.random.default_rng(62)
    net = _residual_cnn(rng)
    lo, hi = _box(rng, net)
    with pytest.raises(InvalidInputError, match="outputs"):
        crown(net, lo, hi, outputs=bad)
