"""torch models that split, index, repeat, broadcast, permute, reduce and resample tensors
(``split``/``chunk``, ``x[:, a:b]``, ``repeat``, ``expand``, ``permute``/``transpose``,
``unsqueeze``/``squeeze``, ``sum``/``mean``/``amax``/``amin``, nearest ``interpolate`` and
``nn.Upsample``, ``pixel_shuffle``/``pixel_unshuffle``) convert to exact networks: the forward
matches the model in float64 on random inputs, the affine-block view matches the forward, and
CROWN's bounds contain sampled outputs. Unsupported forms are refused with the node named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpuopt.bounds import crown
from gpuopt.errors import UnsupportedLayerError
from gpuopt.io.selection import torch_nearest_indices
from gpuopt.network import from_torch

from test_onnx_import import affine_view_forward


class SplitCat(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        a, b = torch.split(self.fc(x), [3, 5], dim=1)
        c, d = self.fc(x).chunk(2, dim=-1)
        return self.out(torch.cat([F.relu(b), a], dim=1) + torch.cat([d, F.relu(c)], dim=1))


class IndexRepeat(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(4, 6), nn.Linear(18, 2)

    def forward(self, x):
        h = F.relu(self.fc(x))
        h = h[:, 1:5][:, None, ::2]  # (1, 2)
        h = h.repeat(1, 3, 2)  # (3, 4)
        h = torch.cat([h, h[..., -1:].expand(-1, 3, 2)], dim=2)  # (3, 6)
        return self.out(h.reshape(h.size(0), -1))


class PermuteReduce(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.out = nn.Conv2d(2, 4, 3, padding=1), nn.Linear(4 + 5 + 5 * 4 + 4, 2)

    def forward(self, x):  # x: (2, 5, 4)
        h = F.relu(self.conv(x))  # (4, 5, 4)
        s = h.sum(dim=(2, 3))  # (4,)
        m = torch.mean(h, 1).amax(dim=2)  # (5,)
        t = h.permute(0, 2, 3, 1).amin(-1)  # (5, 4)
        u = torch.transpose(h, 1, 3).sum(dim=[1, 2], keepdim=True).squeeze(2).squeeze(1)  # (4,)
        return self.out(torch.cat([s, m, t.flatten(1), u], dim=1))


class Resample(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.shuffle = nn.PixelShuffle(2)
        self.out = nn.Linear(4 * 6 * 6 + 1 * 6 * 6 + 4 * 5 * 7 + 16 * 1 * 1, 2)

    def forward(self, x):  # x: (1, 3, 3)
        h = F.relu(self.conv(x))  # (4, 3, 3)
        a = self.up(h)  # (4, 6, 6)
        b = self.shuffle(h)  # (1, 6, 6)
        c = F.interpolate(h, size=(5, 7), mode="nearest")  # (4, 5, 7)
        d = F.pixel_unshuffle(a[:, :, :2, :2], 2)  # (16, 1, 1)
        return self.out(torch.cat([a.flatten(1), b.flatten(1), c.flatten(1), d.flatten(1)], dim=1))


class Resample1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.out = nn.Conv1d(1, 3, 3, padding=1), nn.Linear(3 * 7 + 3 * 10, 2)

    def forward(self, x):  # x: (1, 4)
        h = F.relu(self.conv(x))
        a = F.interpolate(h, scale_factor=1.75, mode="nearest-exact")  # 7
        b = F.interpolate(h, size=10)
        return self.out(torch.cat([a, b], dim=2).flatten(1))


class TransposeKeywords(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(3, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = F.relu(self.fc(x)).reshape(-1, 2, 4).transpose(dim0=1, dim1=2)
        return self.out(h.reshape(h.size(0), -1))


class RowwiseLinear(nn.Module):
    """A Linear on every row (as in mixer and sequence models): a 1x1 convolution over the rows."""

    def __init__(self):
        super().__init__()
        self.mix, self.out = nn.Linear(4, 6), nn.Linear(5 * 6, 2)

    def forward(self, x):  # x: (5, 4)
        return self.out(F.relu(self.mix(x)).flatten(1))


MODELS = [(TransposeKeywords, (3,)), (RowwiseLinear, (5, 4)), (SplitCat, (4,)), (IndexRepeat, (4,)), (PermuteReduce, (2, 5, 4)), (Resample, (1, 3, 3)),
          (Resample1d, (1, 4))]


@pytest.mark.parametrize("factory,shape", MODELS, ids=[m.__name__ for m, _ in MODELS])
def test_selection_models_convert_exactly(factory, shape):
    torch.manual_seed(0)
    model = factory().double().eval()
    net = from_torch(model, shape)
    x = torch.rand((40, *shape), generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        ref = model(x).numpy()
    ours = net.forward64(x.numpy())
    assert np.abs(ours - ref).max() <= 1e-12 * (1 + np.abs(ref).max())
    assert np.abs(affine_view_forward(net, x.numpy()) - ours).max() <= 1e-12 * (1 + np.abs(ref).max())
    lo, hi = -torch.ones((1, int(np.prod(shape))), dtype=torch.float64), torch.ones((1, int(np.prod(shape))),
                                                                                     dtype=torch.float64)
    b = crown(net, lo, hi)
    assert np.all(ours >= b.output[0][0].numpy() - 1e-9) and np.all(ours <= b.output[1][0].numpy() + 1e-9)


class _Wrap(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fc, self.fn = nn.Linear(3, 4), fn

    def forward(self, x):
        return self.fn(self.fc(x))


def test_nearest_indices_are_exact_or_refused():
    assert torch_nearest_indices(3, 6, 2.0, False) == [0, 0, 1, 1, 2, 2]
    assert torch_nearest_indices(4, 7, 1.75, False) == [0, 0, 1, 1, 2, 2, 3]
    assert torch_nearest_indices(4, 7, 1.75, True) == [0, 0, 1, 2, 2, 3, 3]
    # 10 x 1.05 keeps 10 entries: torch's copy kernel reads entry 1 where floor(1 / 1.05) is 0
    with pytest.raises(ValueError, match="copy kernel"):
        torch_nearest_indices(10, 10, 1.05, False)
    with pytest.raises(ValueError, match="halving kernel"):
        torch_nearest_indices(7, 14, 2.01, False)
    # 14 -> 46: position 23 is 23 * 14 / 46 = 7 exactly, 6.9999995 in float32
    with pytest.raises(ValueError, match="reads entry 7 exactly but 6 by float32"):
        torch_nearest_indices(14, 46, None, False)


@pytest.mark.parametrize("fn,match", [
    (lambda h: F.interpolate(h[:, None, :], scale_factor=1.05), "copy kernel"),
    (lambda h: h.split(0, 1), "ZeroDivisionError"),
    (lambda h: torch.chunk(h, 0, 1), "ZeroDivisionError"),
    (lambda h: h.split(3, 1)[5], "IndexError"),
    (lambda h: h[:, ::0], "ValueError"),
    (lambda h: h.transpose(1, 5), "transpose of dimensions"),
    (lambda h: F.interpolate(h[:, None, :], scale_factor=2, align_corners=True), "align_corners"),
    (lambda h: h[:, :, None].sum(dim=(1, -2)), "twice"),
    (lambda h: h.sum(), "every dimension"),
    (lambda h: h.sum(dim=0), "batch axis"),
    (lambda h: h.repeat(2, 1), "batch axis must repeat once"),
    (lambda h: h[0], r"x\[:, \.\.\.\]"),
    (lambda h: h[:, 4:], "empty slice"),
    (lambda h: F.interpolate(h[:, None, :], scale_factor=2, mode="linear"), "mode 'linear'"),
    (lambda h: h.permute(1, 0), "batch axis must stay first"),
])
def test_unsupported_selections_are_refused(fn, match):
    with pytest.raises(UnsupportedLayerError, match=match):
        from_torch(_Wrap(fn).eval(), (3,))
