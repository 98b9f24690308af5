"""from_torch on traced graph models: residual blocks with BatchNorm, torch.cat, LeNet with MaxPool.

Each model is defined here, put in eval mode with non-trivial BatchNorm statistics, converted, and
compared with the model itself in float64 (a float64 copy of the model, so the comparison is tight).
"""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpuopt.errors import UnsupportedLayerError
from gpuopt.network import Add, Concat, MaxPool2d, from_torch


class ResBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1), nn.BatchNorm2d(4), nn.ReLU())
        self.block1 = ResBlock(4, 4, 1)
        self.block2 = ResBlock(4, 8, 2)
        self.head = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        x = self.block2(self.block1(self.stem(x)))
        return self.head(x.view(x.size(0), -1))


class CatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 5)
        self.b = nn.Linear(6, 3)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        h = torch.cat([torch.relu(self.a(x)), self.b(x) * 0.5 - 1.0], dim=1)
        return self.out(h)


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 3, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3),
                                      nn.ReLU(), nn.MaxPool2d(2, stride=1, padding=1))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * 5 * 5, 7), nn.ReLU(), nn.Linear(7, 3))

    def forward(self, x):
        return self.classifier(self.features(x))


def _randomise_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


@pytest.mark.parametrize("factory, shape, graph_layer", [
    (SmallResNet, (3, 8, 8), Add), (CatNet, (6,), Concat), (LeNet, (1, 16, 16), MaxPool2d)])
def test_traced_models_match_in_float64(factory, shape, graph_layer):
    torch.manual_seed(0)
    model = _randomise_bn(factory())
    before = copy.deepcopy(model.state_dict())
    net = from_torch(model, shape)
    assert any(isinstance(l, graph_layer) for l in net.layers)
    reference = copy.deepcopy(model).double()
    x = torch.rand((20, *shape), dtype=torch.float64) * 2 - 0.5
    with torch.no_grad():
        expected = reference(x)
    got = net.forward(x)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-10), (got - expected).abs().max()
    # the model is read, never changed
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and not model.training


def test_batchnorm_folds_only_into_an_unshared_conv():
    model = _randomise_bn(SmallResNet())
    net = from_torch(model, (3, 8, 8))
    # stem conv + bn fold; each block's convs and shortcut fold too: no elementwise layer remains
    assert not any(type(l).__name__ == "ElementwiseAffine" for l in net.layers)


def test_untraceable_and_unsupported_models_are_refused():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    with pytest.raises(UnsupportedLayerError, match=re.escape("`model` cannot be traced by torch.fx")):
        from_torch(DataDependent().eval(), (3,))

    class Gate(nn.Module):
        def forward(self, x):
            return torch.erf(x) * x

    with pytest.raises(UnsupportedLayerError, match=re.escape("node 'erf' (call_function erf) is not supported")):
        from_torch(Gate(), (3,))

    class Square(nn.Module):
        def forward(self, x):
            return x * x

    with pytest.raises(UnsupportedLayerError, match=re.escape("a product of two data tensors")):
        from_torch(Square(), (3,))


def test_batchnorm_fold_rounding_is_bounded():
    """The folded weights and bias lie within ``param_errors`` of the exact fold, computed here
    in 60-digit decimal arithmetic from the model's parameters."""
    from decimal import Decimal, getcontext

    getcontext().prec = 60
    torch.manual_seed(3)
    conv = nn.Conv2d(2, 3, 3, bias=True)
    bn = nn.BatchNorm2d(3, eps=1e-5)
    model = _randomise_bn(nn.Sequential(conv, bn, nn.ReLU(), nn.Flatten()), seed=4)
    net = from_torch(model, (2, 5, 5))
    layer, err = net.layers[0], net.param_errors[0]
    assert err is not None and err[0].shape == layer.weight.shape
    D = lambda v: Decimal(float(v.detach()) if isinstance(v, torch.Tensor) else float(v))  # noqa: E731  (exact)
    w0, b0 = conv.weight.detach().double().numpy(), conv.bias.detach().double().numpy()
    for c in range(3):
        scale = D(bn.weight[c]) / (D(bn.running_var[c]) + D(bn.eps)).sqrt()
        shift = D(bn.bias[c]) - D(bn.running_mean[c]) * scale
        assert abs(D(layer.bias[c]) - (D(b0[c]) * scale + shift)) <= D(err[1][c])
        for idx in np.ndindex(w0.shape[1:]):
            exact = D(w0[(c, *idx)]) * scale
            assert abs(D(layer.weight[(c, *idx)]) - exact) <= D(err[0][(c, *idx)])


def test_grouped_and_one_dimensional_layers():
    """Conv1d (grouped too), depthwise Conv2d, MaxPool1d and AvgPool1d: the same function."""
    torch.manual_seed(3)
    nn = torch.nn
    model = nn.Sequential(nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2), nn.ReLU(), nn.MaxPool1d(2, 1),
                          nn.Conv1d(6, 6, 2, groups=6, dilation=2), nn.ReLU(), nn.AvgPool1d(2), nn.Flatten(),
                          nn.Linear(6 * 3, 3)).double().eval()
    net = from_torch(model, (4, 20))
    x = torch.randn(50, 4, 20, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(net.forward64(x.numpy()) - ref).max() <= 1e-10
    image = nn.Sequential(nn.Conv2d(3, 6, 3, groups=3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 2)).double().eval()
    net = from_torch(image, (3, 6, 6))
    x = torch.randn(20, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        ref = image(x).numpy()
    assert np.abs(net.forward64(x.numpy()) - ref).max() <= 1e-10
