"""Activation-pattern packing and hashing: the torch fallback against numpy.packbits and a
pure-Python FNV-1a, the CuPy kernel against the fallback (on a GPU with CuPy), degenerate shapes,
and de-duplication that survives hash collisions."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from gpuopt.errors import InvalidInputError
from gpuopt.kernels import cupy_available, kernel_source
from gpuopt.kernels.patterns import distinct_rows, pack_and_hash


def _fnv1a(data: bytes) -> int:
    h = 14695981039346656037
    for byte in data:
        h = ((h ^ byte) * 1099511628211) % 2**64
    return h


def _signed(h: int) -> int:
    return h - 2**64 if h >= 2**63 else h


@pytest.mark.parametrize("rows, n", [(0, 5), (3, 0), (1, 1), (4, 8), (5, 9), (7, 64), (3, 1000)])
def test_torch_packing_and_hashing_match_references(rows, n):
    rng = np.random.default_rng(rows * 1000 + n)
    bits = rng.random((rows, n)) < 0.5
    packed, hashes = pack_and_hash(torch.tensor(bits), impl="torch")
    ref = np.packbits(bits, axis=1) if n else np.zeros((rows, 0), np.uint8)
    assert packed.dtype == torch.uint8 and packed.shape == (rows, (n + 7) // 8)
    assert np.array_equal(packed.numpy(), ref)
    assert hashes.dtype == torch.int64 and hashes.shape == (rows,)
    assert hashes.tolist() == [_signed(_fnv1a(bytes(r))) for r in ref]


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and cupy_available()), reason="needs CUDA and CuPy")
@pytest.mark.parametrize("rows, n", [(0, 5), (3, 0), (1, 1), (5, 9), (1000, 777), (4096, 4096)])
def test_cupy_kernel_matches_the_torch_fallback(rows, n):
    g = torch.Generator().manual_seed(rows + n)
    bits = (torch.rand((rows, n), generator=g) < 0.3).cuda()
    p_k, h_k = pack_and_hash(bits, impl="cupy")
    p_t, h_t = pack_and_hash(bits, impl="torch")
    assert torch.equal(p_k, p_t) and torch.equal(h_k, h_t)
    assert p_k.device.type == "cuda"


def test_distinct_rows_survives_hash_collisions():
    packed = torch.tensor([[1, 2], [3, 4], [1, 2], [3, 5], [3, 4]], dtype=torch.uint8)
    same_hash = torch.zeros(5, dtype=torch.int64)  # every row collides
    assert distinct_rows(packed, same_hash).tolist() == [0, 1, 3]
    _, hashes = pack_and_hash(torch.tensor(np.unpackbits(packed.numpy(), axis=1).astype(bool)))
    assert distinct_rows(packed, hashes).tolist() == [0, 1, 3]
    assert distinct_rows(packed[:0], hashes[:0]).tolist() == []


@pytest.mark.parametrize("bits, impl, message", [
    (np.zeros((2, 3), bool), "torch", "`bits` must be a torch tensor, got ndarray"),
    (torch.zeros(3, dtype=torch.bool), "torch", "`bits` must have shape (rows, neurons), got (3,)"),
    (torch.zeros((2, 3)), "torch", "`bits` must be a bool tensor, got torch.float32"),
    (torch.zeros((2, 3), dtype=torch.bool), "fast", "`impl` must be one of auto, torch, cupy, got 'fast'"),
    (torch.zeros((2, 3), dtype=torch.bool), "cupy", "`impl='cupy'` needs `bits` on a CUDA device"),
])
def test_pack_and_hash_validation(bits, impl, message):
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        pack_and_hash(bits, impl=impl)


def test_kernel_sources_ship_with_the_tree():
    src = kernel_source("patterns")
    assert "pack_and_hash" in src and "1099511628211ULL" in src
