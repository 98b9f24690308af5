"""Tests of gpuopt.network.from_torch (and the affine view of the networks it builds)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from gpuopt.errors import UnsupportedLayerError
from gpuopt.network import Add, Conv2d, Dense, ElementwiseAffine, Flatten, Network, ReLU, Reshape, from_torch
from helpers import affine_view_forward


def _randomise_batchnorm(model: nn.Module, gen: torch.Generator):
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen))
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.2)
            m.weight.data.copy_(torch.randn(n, generator=gen))
            m.bias.data.copy_(torch.randn(n, generator=gen))


def _build():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1),  # (3, 8, 10) -> (4, 4, 5)
        nn.BatchNorm2d(4),  # folded into the Conv2d
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 5, (2, 3), padding=(1, 0), dilation=(1, 2)), nn.ReLU()),  # -> (5, 5, 1)
        nn.BatchNorm2d(5),  # after a ReLU: an ElementwiseAffine
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(25, 16),
        nn.BatchNorm1d(16),  # folded into the Linear
        nn.ReLU(),
        nn.Identity(),
        nn.Linear(16, 3),
    )
    with torch.no_grad():
        _randomise_batchnorm(model, torch.Generator().manual_seed(1))
    return model.double().eval()


def test_from_torch_matches_torch_eval_float64():
    model = _build()
    mean = np.array([0.4, 0.5, 0.6])
    std = np.array([0.2, 0.25, 0.3])
    net = from_torch(model, (3, 8, 10), mean=mean, std=std)
    assert [type(l) for l in net.layers] == [
        ElementwiseAffine, Conv2d, ReLU, Conv2d, ReLU, ElementwiseAffine, Flatten, Dense, ReLU, Dense
    ]
    x = np.random.default_rng(0).uniform(0, 1, (32, 3, 8, 10))
    xt = torch.as_tensor(x)
    with torch.no_grad():
        ref = model((xt - torch.as_tensor(mean).view(1, 3, 1, 1)) / torch.as_tensor(std).view(1, 3, 1, 1)).numpy()
    ours = net.forward64(x)
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(affine_view_forward(net, x), ref, rtol=1e-9, atol=1e-9)
    # float32 forward agrees loosely, flattened inputs are accepted
    out32 = net.forward(torch.as_tensor(x.reshape(32, -1), dtype=torch.float32)).numpy()
    np.testing.assert_allclose(out32, ref, rtol=1e-4, atol=1e-4)
    # the model was not modified
    assert not model.training and next(model.parameters()).dtype == torch.float64


def test_from_torch_dense_only_with_scalar_normalisation():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2)).double().eval()
    net = from_torch(model, (6,), mean=0.5, std=2.0)
    x = np.random.default_rng(1).uniform(-1, 1, (10, 6))
    with torch.no_grad():
        ref = model((torch.as_tensor(x) - 0.5) / 2.0).numpy()
    np.testing.assert_allclose(net.forward64(x), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(affine_view_forward(net, x), ref, rtol=1e-12, atol=1e-12)


def test_from_torch_unsupported_module():
    model = nn.Sequential(nn.Linear(4, 3), nn.GELU())
    with pytest.raises(UnsupportedLayerError, match=re.escape("module '1' of type GELU is not supported")) as info:
        from_torch(model, (4,))
    assert info.value.op_type == "GELU" and info.value.node == "1"


def test_sparse_linear_op_products_match_the_dense_ones_with_their_gradients():
    """A sparse LinearOp (a convolution's matrix) gives the same ``A @ M``, ``|M| v`` and gradient
    of ``A @ M`` as the dense matrix, row-major (the bound passes' batched products need it)."""
    import scipy.sparse as sp

    from gpuopt.network import LinearOp

    gen = np.random.default_rng(3)
    n_out, n_in = 300, 400
    dense = gen.standard_normal((n_out, n_in)) * (gen.random((n_out, n_in)) < 0.05)
    op = LinearOp(sp.csr_matrix(dense), gen.standard_normal(n_out), "cpu", torch.float64)
    assert op.dense is None  # the sparse path is the one under test
    M = torch.tensor(dense)
    A = torch.tensor(gen.standard_normal((5, 3, n_out)), requires_grad=True)
    weight = torch.tensor(gen.standard_normal((5, 3, n_in)))
    out = op.rmatmul(A)
    assert out.shape == (5, 3, n_in) and out.is_contiguous()
    torch.testing.assert_close(out, A @ M, rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad((out * weight).sum(), A)
    torch.testing.assert_close(grad, weight @ M.T, rtol=1e-12, atol=1e-12)
    v = torch.tensor(gen.random((7, n_in)))
    mv = op.abs_matvec(v)
    assert mv.is_contiguous()
    torch.testing.assert_close(mv, v @ M.abs().T, rtol=1e-12, atol=1e-12)
    dense_op = LinearOp(sp.csr_matrix(dense[:20, :20] + 1.0), np.zeros(20), "cpu", torch.float64)
    assert dense_op.dense is not None and dense_op.abs_matvec(v[:, :20]).is_contiguous()


_CONV_GEOMETRIES = [  # (c_in, h, w, c_out, kh, kw, stride, padding (t, l, b, r), dilation)
    (3, 9, 8, 4, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    (2, 10, 11, 3, 4, 3, (2, 3), (0, 2, 1, 0), (1, 2)),  # asymmetric padding, uneven strides
    (4, 7, 7, 5, 2, 2, (2, 2), (0, 0, 0, 0), (2, 1)),  # the last row and column read by no output
    (1, 5, 6, 2, 5, 6, (1, 1), (2, 3, 2, 3), (1, 1)),
    (3, 12, 12, 2, 3, 3, (3, 2), (1, 0, 2, 1), (2, 2)),
]


@pytest.mark.parametrize("geometry", _CONV_GEOMETRIES)
def test_convolution_linear_op_matches_its_sparse_matrix(geometry, monkeypatch):
    """A LinearOp that multiplies by the convolution (and its transpose) gives the same
    ``M v + c``, ``|M| v``, ``A @ M`` with its gradient and rows of ``M`` as the sparse matrix of
    the same convolution, for strides, dilations and asymmetric paddings."""
    from gpuopt.network import LinearOp

    c_in, h, w, c_out, kh, kw, stride, padding, dilation = geometry
    gen = np.random.default_rng(sum(geometry[:6]))
    layer = Conv2d(gen.standard_normal((c_out, c_in, kh, kw)), gen.standard_normal(c_out), stride, padding, dilation)
    lm = layer.operator((c_in, h, w))
    matrix = lm.matrices[0]
    monkeypatch.setattr(LinearOp, "sparse_min_entries", 0)
    monkeypatch.setattr(LinearOp, "conv_density", 1.0)
    monkeypatch.setattr(LinearOp, "conv_min_channels", 1)
    monkeypatch.setattr(LinearOp, "sparse_density", 1.0)
    conv = LinearOp(matrix, lm.bias, "cpu", torch.float64, None, lm.conv)
    sparse = LinearOp(matrix, lm.bias, "cpu", torch.float64)
    assert conv.conv is not None and conv.dense is None and sparse.conv is None
    assert LinearOp(matrix, lm.bias, "cpu", torch.float32, None, lm.conv).conv is None  # float64 only
    v = torch.tensor(gen.standard_normal((3, matrix.shape[1])))
    torch.testing.assert_close(conv.matvec(v), sparse.matvec(v), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(conv.abs_matvec(v.abs()), sparse.abs_matvec(v.abs()), rtol=1e-12, atol=1e-12)
    A = torch.tensor(gen.standard_normal((2, 5, matrix.shape[0])), requires_grad=True)
    weight = torch.tensor(gen.standard_normal((2, 5, matrix.shape[1])))
    got, want = conv.rmatmul(A), sparse.rmatmul(A)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    (g1,) = torch.autograd.grad((got * weight).sum(), A)
    (g2,) = torch.autograd.grad((want * weight).sum(), A)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)
    rows = torch.tensor([0, 2, matrix.shape[0] - 1])
    torch.testing.assert_close(conv.rows(rows), torch.tensor(matrix[rows.numpy()].toarray()), rtol=0, atol=1e-15)
    torch.testing.assert_close(conv.abs_matrix.to_dense(), torch.tensor(abs(matrix).toarray()))


def test_lowering_keeps_the_geometry_of_exactly_one_convolution():
    """A chain's convolution blocks carry their geometry; a block composed of a dense layer and a
    convolution, a dense block, and a residual network's blocks (which carry a skip tensor) do not."""
    gen = np.random.default_rng(5)
    chain = Network([Dense(gen.standard_normal((48, 4)), gen.standard_normal(48)), Reshape((3, 4, 4)),
                     Conv2d(gen.standard_normal((2, 3, 3, 3)), gen.standard_normal(2), (1, 1), (1, 1, 1, 1)), ReLU(),
                     Conv2d(gen.standard_normal((3, 2, 2, 2)), gen.standard_normal(3), (2, 2)), ReLU(),
                     Conv2d(gen.standard_normal((2, 3, 2, 2)), gen.standard_normal(2)), Flatten()], (4,))
    blocks = chain.affine_blocks()
    assert [b.conv is not None for b in blocks] == [False, True, True]
    assert blocks[1].conv.in_shape == (2, 4, 4) and blocks[1].conv.out_shape == (3, 2, 2)
    res = Network([Conv2d(gen.standard_normal((2, 2, 3, 3)), np.zeros(2), (1, 1), (1, 1, 1, 1)), ReLU(),
                   Conv2d(gen.standard_normal((2, 2, 3, 3)), np.zeros(2), (1, 1), (1, 1, 1, 1)), Add(), ReLU(),
                   Flatten(), Dense(gen.standard_normal((3, 32)), np.zeros(3))], (2, 4, 4),
                  inputs=[(-1,), (0,), (1,), (2, -1), (3,), (4,), (5,)])
    rblocks = res.affine_blocks()
    assert rblocks[0].passthrough is not None and rblocks[0].conv is None
    assert all(b.conv is None for b in rblocks[1:])


def test_an_empty_block_is_dense_whatever_the_thresholds(monkeypatch):
    """A block left without rows (pruning every neuron of a layer) multiplies as a dense matrix,
    also with the sparse thresholds at 0 (review finding: the sparse path could not reshape it)."""
    import scipy.sparse as sp

    from gpuopt.network import LinearOp

    monkeypatch.setattr(LinearOp, "sparse_min_entries", 0)
    op = LinearOp(sp.csr_matrix((0, 5)), np.zeros(0), "cpu", torch.float64)
    assert op.dense is not None
    assert op.rmatmul(torch.zeros(2, 3, 0, dtype=torch.float64)).shape == (2, 3, 5)
    assert op.abs_matvec(torch.ones(4, 5, dtype=torch.float64)).shape == (4, 0)


def test_digest_names_what_the_network_computes():
    """Equal networks (rebuilt, unpickled) share a digest; one weight one ulp off, another bias,
    another wiring or input shape each give another."""
    import pickle

    from gpuopt.network import Dense, Flatten, Network, ReLU

    rng = np.random.default_rng(0)
    w1, b1, w2, b2 = rng.normal(size=(5, 4)), rng.normal(size=5), rng.normal(size=(3, 5)), rng.normal(size=3)

    def build(w1=w1, b1=b1, shape=(4,), flatten=False):
        layers = ([Flatten()] if flatten else []) + [Dense(w1, b1), ReLU(), Dense(w2, b2)]
        return Network(layers, shape)

    ref = build().digest()
    assert len(ref) == 64 and build().digest() == ref and pickle.loads(pickle.dumps(build())).digest() == ref
    w_ulp = w1.copy()
    w_ulp[2, 1] = np.nextafter(w_ulp[2, 1], np.inf)
    b_other = b1.copy()
    b_other[0] += 1.0
    others = {build(w1=w_ulp).digest(), build(b1=b_other).digest(), build(shape=(2, 2), flatten=True).digest(),
              build(w1=w1.astype(np.float32).astype(np.float64)).digest()}
    assert ref not in others and len(others) == 4


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sparse_row_products_in_chunks_equal_the_whole_product_exactly(dtype, monkeypatch):
    """``_scipy_rows`` in chunks (forced small: 16 rows and a remainder) gives the very values of one
    product over all the rows, for row counts around the chunk's size; and so do a sparse block's
    products and gradients through it."""
    import scipy.sparse as sp

    import gpuopt.network as network_module
    from gpuopt.network import LinearOp, _scipy_rows

    rng = np.random.default_rng(3)
    m = sp.random(300, 200, density=0.05, format="csr", random_state=4, dtype=dtype)
    monkeypatch.setattr(network_module, "SCIPY_CHUNK_BYTES", 16 * 200 * np.dtype(dtype).itemsize)
    for rows in (1, 15, 16, 17, 33, 100):
        x = torch.from_numpy(rng.normal(size=(rows, 200)).astype(dtype))
        whole = torch.from_numpy(np.ascontiguousarray((m @ x.numpy().T).T))
        got = _scipy_rows(m, x)
        assert got.dtype == whole.dtype and got.is_contiguous() and torch.equal(got, whole), rows
    W = sp.random(400, 300, density=0.05, format="csr", random_state=5)
    op = LinearOp(W, np.zeros(400), "cpu", torch.float64, None)
    assert op.dense is None and op.conv is None  # a sparse block: its products go through scipy
    monkeypatch.setattr(network_module, "SCIPY_CHUNK_BYTES", 16 * 400 * 8)
    Wd = torch.from_numpy(W.toarray())
    A = torch.from_numpy(rng.normal(size=(50, 400))).requires_grad_(True)
    out = op.rmatmul(A)
    torch.testing.assert_close(out, A.detach() @ Wd, rtol=1e-12, atol=1e-12)
    G = torch.from_numpy(rng.normal(size=out.shape))
    out.backward(G)
    torch.testing.assert_close(A.grad, G @ Wd.T, rtol=1e-12, atol=1e-12)
    v = torch.from_numpy(rng.normal(size=(70, 300)))
    torch.testing.assert_close(op.linear(v), v @ Wd.T, rtol=1e-12, atol=1e-12)
