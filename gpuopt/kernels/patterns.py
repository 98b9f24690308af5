"""Bit-packing and hashing of activation patterns.

A pattern is a row of bits ``s_i = [z_i > 0]`` over all ReLU neurons. :func:`pack_and_hash`
packs each row into bytes (bit ``k`` of byte ``j`` is ``s_{8j+k}``, most significant first, as
``numpy.packbits``; the last byte zero-padded) and hashes the bytes with 64-bit FNV-1a:
``h_0 = 14695981039346656037``, ``h_{j+1} = (h_j XOR byte_j) * 1099511628211 mod 2^64``.

Two implementations with one signature: ``impl="cupy"`` runs ``cuda_kernels/patterns.cu`` on a
CUDA tensor, ``impl="torch"`` packs with torch and hashes with numpy's wrapping ``uint64``
arithmetic; ``impl="auto"`` takes the kernel when the bits are on a CUDA device and CuPy is
installed. Both return the same bytes and hashes (the hashes as ``int64``, the same 64 bits).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InvalidInputError
from . import disable, kernel_ready, launch, load_kernel

__all__ = ["IMPLEMENTATIONS", "distinct_rows", "pack_and_hash"]

IMPLEMENTATIONS = ("auto", "torch", "cupy")
_FNV_OFFSET = np.uint64(14695981039346656037)
_FNV_PRIME = np.uint64(1099511628211)
_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)


def _bits_iv(bits) -> torch.Tensor:
    if not isinstance(bits, torch.Tensor):
        raise InvalidInputError(f"`bits` must be a torch tensor, got {type(bits).__name__}")
    if bits.dim() != 2:
        raise InvalidInputError(f"`bits` must have shape (rows, neurons), got {tuple(bits.shape)}")
    if bits.dtype != torch.bool:
        raise InvalidInputError(f"`bits` must be a bool tensor, got {bits.dtype}")
    return bits.contiguous()


def pack_and_hash(bits: torch.Tensor, *, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """``(packed, hashes)``: ``(rows, ceil(n / 8))`` uint8 and ``(rows,)`` int64, on the device of
    ``bits`` ``(rows, n)`` bool."""
    bits = _bits_iv(bits)
    if impl not in IMPLEMENTATIONS:
        raise InvalidInputError(f"`impl` must be one of {', '.join(IMPLEMENTATIONS)}, got {impl!r}")
    if impl == "auto":
        # the kernel needs CuPy, a CUDA tensor and the .cu source (shipped with the source tree)
        if bits.is_cuda and kernel_ready("patterns"):
            try:
                return _pack_and_hash_cupy(bits)
            except Exception as err:  # noqa: BLE001 - a kernel that fails to build or launch leaves
                # the fallback, which gives the same bytes and hashes
                disable("patterns", err)
        impl = "torch"
    if impl == "cupy":
        if not bits.is_cuda:
            raise InvalidInputError("`impl='cupy'` needs `bits` on a CUDA device")
        return _pack_and_hash_cupy(bits)
    return _pack_and_hash_torch(bits)


def _pack_and_hash_torch(bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, n = bits.shape
    n_bytes = (n + 7) // 8
    padded = torch.zeros((rows, n_bytes * 8), dtype=torch.uint8, device=bits.device)
    padded[:, :n] = bits.to(torch.uint8)
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.int32, device=bits.device)
    packed = (padded.view(rows, n_bytes, 8).to(torch.int32) * weights).sum(dim=-1).to(torch.uint8)
    host = packed.cpu().numpy().astype(np.uint64)
    h = np.full(rows, _FNV_OFFSET, dtype=np.uint64)
    for j in range(n_bytes):  # array arithmetic on uint64 wraps modulo 2^64
        h ^= host[:, j]
        h *= _FNV_PRIME
    return packed, torch.from_numpy(h.view(np.int64)).to(bits.device)


def _pack_and_hash_cupy(bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, n = bits.shape
    n_bytes = (n + 7) // 8
    packed = torch.empty((rows, n_bytes), dtype=torch.uint8, device=bits.device)
    hashes = torch.empty((rows,), dtype=torch.int64, device=bits.device)
    if rows == 0:
        return packed, hashes
    if n == 0:
        hashes.fill_(int(_FNV_OFFSET.view(np.int64)))
        return packed, hashes
    kernel = load_kernel("patterns", "pack_and_hash")
    threads = 128
    launch(kernel, (rows + threads - 1) // threads, threads,
           (bits.view(torch.uint8), np.int64(rows), np.int64(n), packed, hashes), bits.device)
    return packed, hashes


def distinct_rows(packed: torch.Tensor, hashes: torch.Tensor) -> torch.Tensor:
    """Indices of the first occurrence of each distinct packed row, in order of appearance.
    Rows are grouped by hash and then compared byte for byte, so a hash collision never merges
    two different patterns."""
    keep: list[int] = []
    seen: dict[int, list[int]] = {}
    host_h = hashes.cpu().tolist()
    host_p = packed.cpu()
    for i, h in enumerate(host_h):
        same = seen.setdefault(h, [])
        if any(torch.equal(host_p[i], host_p[j]) for j in same):
            continue
        same.append(i)
        keep.append(i)
    return torch.tensor(keep, dtype=torch.int64, device=packed.device)
