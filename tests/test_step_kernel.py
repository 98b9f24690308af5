"""The fused box step (gpuopt/kernels/step.py, cuda_kernels/box_step.cu): the torch fallback
against a numpy float32/float64 transcription of its definition (each operation rounded on its
own, so equal bit for bit), the generic geometry step against the box's, and the CuPy kernel
against the fallback on seeded and degenerate inputs (on a GPU with CuPy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpuopt.attacks.geometry import BoxGeometry, Geometry
from gpuopt.errors import InvalidInputError
from gpuopt.kernels import cupy_available, kernel_source
from gpuopt.kernels.step import box_step

SHAPES = [(1, 1, 1), (2, 3, 5), (3, 7, 33), (1, 64, 10)]


def _case(B, R, n, dtype, seed, *, zeros=False, masks=True):
    """Seeded inputs: points in the box, gradients (some exactly 0), masks, step lengths."""
    g = torch.Generator().manual_seed(seed)
    lower = torch.rand((B, n), generator=g, dtype=dtype) - 1
    upper = lower + torch.rand((B, n), generator=g, dtype=dtype) * 2
    upper[:, :1] = lower[:, :1]  # a degenerate coordinate: lower == upper
    span = (upper - lower)[:, None]

    def point():
        return lower[:, None] + span * torch.rand((B, R, n), generator=g, dtype=dtype)
    grad = torch.randn((B, R, n), generator=g, dtype=dtype)
    grad[torch.rand((B, R, n), generator=g) < 0.2] = 0.0
    if zeros:
        grad.zero_()
    c = dict(x=point(), x_prev=point(), g=grad, best_x=point(), best_g=torch.randn((B, R, n), generator=g, dtype=dtype),
             t=torch.rand((B, R), generator=g, dtype=dtype), radius=(upper - lower) / 2, lower=lower, upper=upper)
    c["better"] = torch.rand((B, R), generator=g) < 0.5 if masks else None
    c["back"] = torch.rand((B, R), generator=g) < 0.3 if masks else None
    return c


def _copy(c, device="cpu"):
    return {k: (v.clone().to(device) if isinstance(v, torch.Tensor) else v) for k, v in c.items()}


def _run(c, momentum, impl):
    out = box_step(c["x"], c["x_prev"], c["g"], c["t"], c["radius"], c["lower"], c["upper"], best_x=c["best_x"],
                   best_g=c["best_g"], better=c["better"], back=c["back"], momentum=momentum, impl=impl)
    return out, c


def _numpy_reference(c, momentum):
    """The definition, elementwise, in numpy at the tensors' precision (each op rounded)."""
    f = {k: (v.numpy().copy() if isinstance(v, torch.Tensor) else v) for k, v in c.items()}
    x, xp, g, bx, bg = f["x"], f["x_prev"], f["g"], f["best_x"], f["best_g"]
    dt = x.dtype.type
    if f["better"] is not None:
        m = f["better"][..., None]
        bx, bg = np.where(m, x, bx), np.where(m, g, bg)
    if f["back"] is not None:
        m = f["back"][..., None]
        x, xp, g = np.where(m, bx, x), np.where(m, bx, xp), np.where(m, bg, g)
    lo, hi = f["lower"][:, None], f["upper"][:, None]
    s = np.sign(g).astype(x.dtype)
    z = np.minimum(np.maximum(x + -((s * f["t"][..., None]) * f["radius"][:, None]), lo), hi)
    if momentum is None:
        return z, x, bx, bg
    a = dt(momentum)
    w = (xp * dt(momentum - 1) + x * dt(2 * (1 - momentum))) + z * a
    return np.minimum(np.maximum(w, lo), hi), x, bx, bg


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("momentum", [None, 0.75, 0.3])
@pytest.mark.parametrize("shape", SHAPES)
def test_torch_fallback_matches_its_definition_bit_for_bit(shape, momentum, dtype):
    c = _case(*shape, dtype, seed=sum(shape))
    ref = _numpy_reference(_copy(c), momentum)
    out, c = _run(c, momentum, "torch")
    for got, want in zip((out, c["x"], c["best_x"], c["best_g"]), ref):
        assert np.array_equal(got.numpy(), want)
    assert out.data_ptr() == (c["g"] if momentum is None else c["x_prev"]).data_ptr()


def test_points_stay_in_the_box_and_zero_gradients_do_not_move():
    c = _case(3, 5, 8, torch.float32, seed=1, zeros=True, masks=False)
    x0 = c["x"].clone()
    out, _ = _run(c, None, "torch")
    assert torch.equal(out, x0)
    c = _case(3, 5, 8, torch.float32, seed=2)
    out, _ = _run(c, 0.75, "torch")
    assert bool(((out >= c["lower"][:, None]) & (out <= c["upper"][:, None])).all())


@pytest.mark.parametrize("momentum", [None, 0.75])
def test_generic_geometry_step_equals_the_box_step(momentum):
    """Geometry.tracked_step (step + project composed) and the box's fused definition agree."""
    c = _case(2, 6, 9, torch.float32, seed=5)
    geom = BoxGeometry(c["lower"], c["upper"])
    generic = _copy(c)
    got = Geometry.tracked_step(geom, generic["x"], generic["x_prev"], generic["g"], generic["t"],
                                best_x=generic["best_x"], best_g=generic["best_g"], better=generic["better"],
                                back=generic["back"], momentum=momentum)
    out, c = _run(c, momentum, "torch")
    assert torch.equal(got, out) and torch.equal(generic["best_x"], c["best_x"]) and torch.equal(generic["x"], c["x"])


def test_bad_arguments():
    c = _case(1, 2, 3, torch.float32, seed=0)
    with pytest.raises(InvalidInputError, match="`impl` must be one of"):
        _run(c, None, "numba")
    c["best_g"] = None
    with pytest.raises(InvalidInputError, match="`back` needs `best_g`"):
        _run(c, None, "torch")
    assert "box_step_f32" in kernel_source("box_step") and "box_step_f64" in kernel_source("box_step")


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and cupy_available()), reason="needs CUDA and CuPy")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("momentum", [None, 0.75, 0.3])
@pytest.mark.parametrize("shape", SHAPES + [(0, 4, 3), (2, 0, 3), (64, 256, 784)])
@pytest.mark.parametrize("masks", [True, False])
def test_cupy_kernel_matches_the_fallback(shape, momentum, dtype, masks):
    c = _case(*shape, dtype, seed=sum(shape) + 7, masks=masks)
    if not masks:
        c["best_g"] = None
    a, b = _copy(c, "cuda"), _copy(c, "cuda")
    out_k, a = _run(a, momentum, "cupy")
    out_t, b = _run(b, momentum, "torch")
    torch.cuda.synchronize()
    assert out_k.device.type == "cuda"
    for key in ("x", "best_x") + (("best_g",) if masks else ()):
        assert torch.equal(a[key], b[key]), key
    assert torch.equal(out_k, out_t)


@pytest.mark.parametrize("shape", [(2, 64, 100), (2, 64, 256)])  # the where path, then the row-copy path
def test_masks_broadcast_over_restarts_on_both_row_paths(shape):
    """An (items, 1) mask marks every restart of its item, on either CPU path (adversarial review:
    the row-copy path once read it as flat row indices)."""
    B, R, n = shape
    g = torch.Generator().manual_seed(0)
    lower, upper = -torch.ones(B, n), torch.ones(B, n)
    x = torch.rand(B, R, n, generator=g) - 0.5
    best_x = torch.zeros(B, R, n)
    better = torch.zeros(B, 1, dtype=torch.bool)
    better[-1] = True
    box_step(x.clone(), x.clone(), torch.randn(B, R, n, generator=g), torch.ones(B, R), (upper - lower) / 2,
             lower, upper, best_x=best_x, better=better, impl="torch")
    assert torch.equal(best_x, torch.where(better[..., None], x, torch.zeros_like(x)))


def test_a_nan_gradient_leaves_its_coordinate():
    c = _case(2, 3, 4, torch.float32, seed=3, masks=False)
    c["g"][0, 1, 2] = float("nan")
    x0 = c["x"].clone()
    out, _ = _run(c, None, "torch")
    assert not torch.isnan(out).any() and out[0, 1, 2] == x0[0, 1, 2]


def test_a_disabled_kernel_is_not_ready_and_says_why(monkeypatch, caplog):
    """A kernel that failed to build or launch is switched off for the process (its fallback runs),
    with one warning naming it and the cause."""
    import gpuopt.kernels as kernels

    monkeypatch.setattr(kernels, "_disabled", {})
    monkeypatch.setattr(kernels, "_installed", lambda name: True)
    assert kernels.kernel_ready("box_step")
    with caplog.at_level("WARNING"):
        kernels.disable("box_step", RuntimeError("no kernel image for this GPU"))
    assert not kernels.kernel_ready("box_step") and kernels.kernel_ready("patterns")
    assert "box_step" in caplog.text and "no kernel image for this GPU" in caplog.text
