"""``gpuopt.attack``, the training-loop API: exact answers on linear classifiers (success exactly
when the radius reaches the decision boundary), points inside the ball and the clip range in
float64, the model untouched (mode, parameters, buffers, gradients), reproducible seeds, targeted
attacks, and a precise error for each bad argument."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import gpuopt
from gpuopt.errors import InvalidInputError


DUAL = {"linf": 1, "l2": 2, "l1": math.inf}


def _linear_two_class(w, c):
    """Logits ``(w.x - c, 0)``; class 0 at ``x`` iff ``w.x > c``."""
    lin = torch.nn.Linear(len(w), 1, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([w], dtype=torch.float64))
        lin.bias.fill_(-c)

    class TwoClass(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            z = self.lin(x.reshape(x.shape[0], -1))
            return torch.cat([z, torch.zeros_like(z)], dim=1)

    return TwoClass()


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_success_exactly_beyond_the_decision_boundary(norm):
    """At ``x0 = 0`` with ``w.x0 - c = 1``, the smallest distortion that flips the class is
    ``1 / ||w||_q`` (q the dual norm): a radius 1% below never succeeds, 5% above always does."""
    w = [2.0, -1.0, 0.5, 3.0]
    model = _linear_two_class(w, -1.0)
    x = torch.zeros(3, 4, dtype=torch.float64)
    y = torch.zeros(3, dtype=torch.int64)
    r = 1.0 / torch.linalg.vector_norm(torch.tensor(w), ord=DUAL[norm]).item()
    below = gpuopt.attack(model, x, y, eps=0.99 * r, norm=norm, restarts=4, steps=50, seed=0)
    assert not below.success.any()
    above = gpuopt.attack(model, x, y, eps=1.05 * r, norm=norm, restarts=4, steps=100, seed=0)
    assert above.success.all()
    assert torch.all(model(above.x).argmax(1) == 1)


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 0.7), ("l1", 3.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_points_stay_in_the_ball_and_the_clip_range(norm, eps, dtype):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 5)).to(dtype)
    x = torch.rand(16, 1, 8, 8, dtype=dtype)
    x[:, :, 0, 0] = 0.0  # on the clip boundary
    y = model(x).argmax(1)
    res = gpuopt.attack(model, x, y, eps=eps, norm=norm, restarts=3, steps=20, seed=1, clip=(0.0, 1.0))
    assert res.x.shape == x.shape and res.x.dtype == dtype
    d = (res.x.double() - x.double()).reshape(16, -1)
    size = {"linf": d.abs().amax(1), "l2": d.norm(dim=1), "l1": d.abs().sum(1)}[norm]
    assert torch.all(size <= torch.tensor(eps, dtype=dtype).double())
    assert torch.all((res.x >= 0) & (res.x <= 1))
    with torch.no_grad():
        assert torch.equal(res.success, model(res.x).argmax(1) != y)
    assert torch.equal(res.success, res.margin < 0)
    x_adv, success = res  # unpacks as a pair
    assert x_adv is res.x and success is res.success


def test_per_feature_clip_bounds_are_respected():
    torch.manual_seed(1)
    model = torch.nn.Linear(6, 3)
    x = torch.rand(4, 6)
    lo, hi = x - 0.05, x + torch.linspace(0, 0.3, 6)
    res = gpuopt.attack(model, x, model(x).argmax(1), eps=0.2, steps=10, seed=0, clip=(lo, hi))
    assert torch.all((res.x >= lo) & (res.x <= hi))


def test_the_model_is_left_untouched():
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                torch.nn.Dropout(0.0), torch.nn.Linear(8, 3))
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(10, 5)
    y = torch.randint(0, 3, (10,))
    gpuopt.attack(model, x, y, eps=0.3, steps=5, restarts=2, seed=0)
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k  # parameters and BatchNorm running statistics
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    gpuopt.attack(model, x, y, eps=0.3, steps=5, seed=0)
    assert not model.training


def test_eps_as_a_0d_tensor_or_array_is_its_number():
    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x = torch.rand(5, 6)
    y = model(x).argmax(1)
    ref = gpuopt.attack(model, x, y, eps=0.25, restarts=2, steps=8, seed=1)
    for eps in (torch.tensor(0.25), torch.tensor(0.25, dtype=torch.float64), np.float64(0.25), np.array(0.25)):
        got = gpuopt.attack(model, x, y, eps=eps, restarts=2, steps=8, seed=1)
        assert torch.equal(got.x, ref.x) and torch.equal(got.success, ref.success), eps


def test_same_seed_same_result_and_the_global_rng_is_not_used():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x = torch.rand(8, 6)
    y = model(x).argmax(1)
    before = torch.get_rng_state()
    a = gpuopt.attack(model, x, y, eps=0.2, restarts=3, steps=15, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    b = gpuopt.attack(model, x, y, eps=0.2, restarts=3, steps=15, seed=7)
    assert torch.equal(a.x, b.x) and torch.equal(a.success, b.success)
    gpuopt.attack(model, x, y, eps=0.2, restarts=3, steps=15)  # seed None: still no global RNG use
    assert torch.equal(torch.get_rng_state(), before)


def test_targeted_success_means_the_target_class():
    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x = torch.rand(12, 6)
    y = model(x).argmax(1)
    t = (y + 1) % 4
    res = gpuopt.attack(model, x, y, eps=1.0, steps=40, restarts=2, targeted=t, seed=0)
    with torch.no_grad():
        assert torch.equal(res.success, model(res.x).argmax(1) == t)
    assert res.success.any()


def test_stop_on_success_false_runs_every_step_and_goes_deeper():
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x = torch.rand(12, 6)
    y = model(x).argmax(1)
    early = gpuopt.attack(model, x, y, eps=0.5, steps=30, seed=0)
    deep = gpuopt.attack(model, x, y, eps=0.5, steps=30, seed=0, stop_on_success=False)
    assert torch.all(deep.margin[early.success] <= early.margin[early.success] + 1e-6)


def _model():
    return torch.nn.Linear(4, 3)


X = torch.zeros(2, 4)
Y = torch.tensor([0, 1])


@pytest.mark.parametrize("kwargs, message", [
    (dict(x=X.numpy()), "`x` must be a torch tensor, got ndarray"),
    (dict(x=X.long()), "`x` must be a floating-point tensor, got torch.int64"),
    (dict(x=torch.zeros(4)), "`x` must be a non-empty batch (batch, ...), got shape (4,)"),
    (dict(x=torch.zeros(0, 4)), "`x` must be a non-empty batch (batch, ...), got shape (0, 4)"),
    (dict(x=torch.tensor([[0.0, math.nan, 0, 0], [0, 0, 0, 0]])), "`x` contains NaN or infinite values"),
    (dict(y=torch.tensor([0, 1, 2])), "`y` must have shape (2,) to match `x`, got (3,)"),
    (dict(y=torch.tensor([0.0, 1.0])), "`y` must hold integer class indices, got torch.float32"),
    (dict(y=[0, 1]), "`y` must be a torch tensor of class indices, got list"),
    (dict(y=torch.tensor([0, 3])), "`y` holds class 3, outside the model's 3 classes (0 to 2)"),
    (dict(y=torch.tensor([-1, 0])), "`y` holds class -1, outside the model's 3 classes (0 to 2)"),
    (dict(targeted=torch.tensor([1, 1])), "`targeted` equals `y` for some samples: a target must differ from the label"),
    (dict(targeted=torch.tensor([5, 0])), "`targeted` holds class 5, outside the model's 3 classes (0 to 2)"),
    (dict(eps=-0.1), "`eps` must be a finite number >= 0, got -0.1"),
    (dict(eps=math.inf), "`eps` must be a finite number >= 0, got inf"),
    (dict(eps="0.1"), "`eps` must be a finite number >= 0, got '0.1'"),
    (dict(eps=torch.tensor(-0.1)), "`eps` must be a finite number >= 0, got -0.1"),
    (dict(eps=torch.tensor([0.1, 0.2])), "`eps` must be a finite number >= 0, got tensor([0.1000, 0.2000])"),
    (dict(eps=torch.tensor(True)), "`eps` must be a finite number >= 0, got tensor(True)"),
    (dict(norm="l3"), "`norm` must be one of linf, l2, l1, got 'l3'"),
    (dict(restarts=0), "`restarts` must be >= 1, got 0"),
    (dict(steps=1.5), "`steps` must be an integer, got 1.5"),
    (dict(seed=-1), "`seed` must be >= 0, got -1"),
    (dict(schedule="adam"), "`schedule` must be one of apgd, cosine, got 'adam'"),
    (dict(clip=(0.0,)), "`clip` must be None or a pair (low, high) of numbers or tensors"),
    (dict(clip=(1.0, 0.0)), "`clip` low must be <= high everywhere"),
    (dict(clip=(0.5, 1.0)), "`x` lies outside `clip`: the clean inputs must be valid inputs"),
    (dict(clip=(torch.zeros(3), 1.0)), "`clip` low of shape (3,) does not broadcast to `x`'s shape (2, 4)"),
    (dict(clip=("0", 1.0)), "`clip` low must be a number or a tensor, got str"),
    (dict(model=lambda x: x.sum(1)), "`model` must return logits of shape (batch, classes) with at least 2 classes, got (2,)"),
    (dict(model="net"), "`model` must be a torch module or a callable, got str"),
    (dict(model=torch.nn.Linear(4, 3, device="meta")), "`model` is on meta but `x` is on cpu: move one of them"),
])
def test_bad_arguments_get_precise_errors(kwargs, message):
    args = dict(model=_model(), x=X, y=Y, eps=0.1)
    args.update(kwargs)
    model, x, y = args.pop("model"), args.pop("x"), args.pop("y")
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        gpuopt.attack(model, x, y, **args)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_attack_matches_the_cpu_semantics():
    torch.manual_seed(6)
    model = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    x = torch.rand(64, 6)
    y = model(x).argmax(1)
    cpu = gpuopt.attack(model, x, y, eps=0.2, steps=20, seed=0, clip=(0, 1))
    gmodel = torch.nn.Sequential(*[m for m in torch.nn.Sequential(*model).cuda()])
    gpu = gpuopt.attack(gmodel, x.cuda(), y.cuda(), eps=0.2, steps=20, seed=0, clip=(0, 1))
    assert gpu.x.device.type == "cuda" and next(gmodel.parameters()).device.type == "cuda"
    assert torch.all(((gpu.x.cpu() - x).abs() <= 0.2) & (gpu.x.cpu() >= 0) & (gpu.x.cpu() <= 1))
    # the same loop from starts of the same distribution (each device's own generator): success
    # rates within a few samples
    assert abs(int(gpu.success.sum()) - int(cpu.success.sum())) <= 4


def test_a_sample_already_misclassified_is_its_own_success():
    model = _linear_two_class([1.0, 1.0], 0.5)  # class 0 iff x0 + x1 > 0.5
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 0])  # sample 0 is already wrong; sample 1 is far from the boundary
    res = gpuopt.attack(model, x, y, eps=0.1, steps=0, seed=0)
    assert res.success.tolist() == [True, False]
    assert torch.equal(res.x[0], x[0])


def test_small_balls_around_large_inputs_hold_as_computed():
    """``c + d`` rounds at the scale of ``|c|``: with ``|x| ~ 1000`` and ``eps = 1e-4`` the returned
    points must still be within ``eps`` as the user computes the distance (adversarial review)."""
    torch.manual_seed(7)
    model = torch.nn.Linear(16, 3)
    x = torch.rand(8, 16) * 1000
    y = model(x).argmax(1)
    for norm, order in (("l2", 2), ("l1", 1)):
        res = gpuopt.attack(model, x, y, eps=1e-4, norm=norm, restarts=2, steps=5, seed=0, clip=(0.0, 1000.0))
        dist = torch.linalg.vector_norm(res.x - x, ord=order, dim=1)
        assert torch.all(dist <= 1e-4), (norm, dist.max().item())


def test_logits_in_another_dtype_and_half_inputs():
    torch.manual_seed(8)
    lin = torch.nn.Linear(6, 3)
    x = torch.rand(4, 6)
    y = lin(x).argmax(1)
    res = gpuopt.attack(lambda v: lin(v).double(), x, y, eps=0.2, steps=5, seed=0)
    assert res.x.dtype == torch.float32
    res = gpuopt.attack(lambda v: lin(v.float()), x.half(), y, eps=0.2, steps=5, seed=0)
    # the ball holds in the input's dtype, as the distance is computed there
    assert res.x.dtype == torch.float16 and torch.all((res.x - x.half()).abs() <= torch.tensor(0.2).half())


def test_dropout_in_train_mode_is_reproducible_per_seed():
    torch.manual_seed(9)
    model = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(32, 3))
    model.train()
    x = torch.rand(8, 6)
    y = torch.randint(0, 3, (8,))
    before = torch.get_rng_state()
    a = gpuopt.attack(model, x, y, eps=0.3, steps=10, seed=3, stop_on_success=False)
    b = gpuopt.attack(model, x, y, eps=0.3, steps=10, seed=3, stop_on_success=False)
    assert torch.equal(a.x, b.x)
    assert torch.equal(torch.get_rng_state(), before)


def test_huge_eps_with_a_clip_box_is_the_whole_box():
    model = _linear_two_class([1.0, 1.0], 0.5)
    x = torch.tensor([[0.9, 0.9]], dtype=torch.float64)
    for norm in ("l2", "l1"):
        res = gpuopt.attack(model, x, torch.tensor([0]), eps=1e30, norm=norm, steps=20, seed=0, clip=(0.0, 1.0))
        assert bool(res.success[0]) and torch.all((res.x >= 0) & (res.x <= 1))


@pytest.mark.parametrize("kwargs, message", [
    (dict(eps=1e39, x=X), "`eps` 1e+39 is beyond the range of `x`'s dtype torch.float32"),
    (dict(eps=1e30, norm="l2"), "`eps` 1e+30 is too large for the l2 norm in torch.float32 without a finite `clip`"),
    (dict(stop_on_success="no"), "`stop_on_success` must be True or False, got 'no'"),
    (dict(model=lambda v: torch.zeros(v.shape[0], 3)), "`model`'s logits do not depend on `x` through autograd"),
    (dict(model=lambda v: (v[:, :3] > 0).long()), "`model` must return floating-point logits, got torch.int64"),
])
def test_more_bad_arguments(kwargs, message):
    args = dict(model=_model(), x=X, y=Y, eps=0.1)
    args.update(kwargs)
    model, x, y = args.pop("model"), args.pop("x"), args.pop("y")
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        gpuopt.attack(model, x, y, **args)


def test_inference_mode_is_refused():
    with torch.inference_mode():
        with pytest.raises(InvalidInputError, match=re.escape("`attack` needs gradients")):
            gpuopt.attack(_model(), X, Y, eps=0.1)


@pytest.mark.parametrize("targeted", [False, True])
def test_cross_entropy_steps_keep_the_margin_semantics(targeted):
    torch.manual_seed(10)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x = torch.rand(16, 6)
    y = model(x).argmax(1)
    t = (y + 1) % 4 if targeted else None
    res = gpuopt.attack(model, x, y, eps=0.5, steps=30, restarts=2, seed=0, loss="ce", targeted=t)
    with torch.no_grad():
        pred = model(res.x).argmax(1)
    assert torch.equal(res.success, (pred == t) if targeted else (pred != y))
    assert torch.all((res.x - x).abs() <= 0.5) and res.success.any()


def test_unknown_loss_is_refused():
    with pytest.raises(InvalidInputError, match=re.escape("`loss` must be one of margin, ce, got 'dlr'")):
        gpuopt.attack(_model(), X, Y, eps=0.1, loss="dlr")
