"""Dead-neuron pruning (:mod:`gpuopt.bounds.prune`): the pruned blocks compute the network's
pre-activations on every point of the box (dense, conv and graph networks, skip connections
included), a dropped neuron is dead there, and activation splitting gives the same answers and
full-width leaves with the pruning as without it."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from gpuopt import relu_split as relu_split_module
from gpuopt.bounds.crown import crown
from gpuopt.bounds.prune import DeadPruning
from gpuopt.layers import Dense
from gpuopt.relu_split import ReluSplitConfig, relu_split

from helpers import affine_view_values, box_points, random_conv_network, random_dag_network, random_dense_network


def _dag_dense(rng, n_out, n_in):
    return Dense(rng.normal(size=(n_out, n_in)) / np.sqrt(n_in), 0.3 * rng.normal(size=n_out) - 0.4)


def _net(kind: str, seed: int):
    rng = np.random.default_rng(seed)
    if kind == "dense":
        n_in = 4
        net = random_dense_network(rng, n_in, [8, 8, 6], 3, bias_scale=1.0)
    elif kind == "conv":
        n_in = 9
        net = random_conv_network(rng, (1, 3, 3), 3, (2, 2), (1, 1), (0, 0, 0, 0), 5, 2)
    else:
        n_in = 3
        net = random_dag_network(rng, 9, n_in, dense=_dag_dense, any_last=True)
    centre = rng.normal(size=n_in)
    return net, centre - 0.3, centre + 0.3


def _pruned_forward(prune: DeadPruning, x: np.ndarray):
    """The pre-activations (kept neurons) and outputs through the pruned blocks, in float64."""
    ops = prune.ops("cpu", torch.float64)
    h = torch.as_tensor(x, dtype=torch.float64)
    pre = []
    for j, op in enumerate(ops):
        z = op.matvec(h)
        if j == len(ops) - 1:
            return pre, z.numpy()
        pre.append(z.numpy())
        h = z.clamp(min=0) if op.passthrough is None else torch.where(op.passthrough, z, z.clamp(min=0))


@pytest.mark.parametrize("kind", ["dense", "conv", "graph"])
def test_pruned_blocks_compute_the_network_on_the_box(kind):
    dropped = 0
    for seed in range(12):
        net, lo, hi = _net(kind, seed)
        b = crown(net, torch.tensor(lo)[None], torch.tensor(hi)[None])
        prune = DeadPruning(net, b.pre_activation)
        dropped += prune.dropped
        x = box_points(np.random.default_rng(seed), lo, hi, 300)
        full_pre, full_out = affine_view_values(net, x)
        pre, out = _pruned_forward(prune, x)
        np.testing.assert_allclose(out, full_out, rtol=1e-12, atol=1e-12)
        for j, (z_full, z) in enumerate(zip(full_pre, pre)):
            keep = prune.keep[j].numpy()
            np.testing.assert_allclose(z, z_full[:, keep], rtol=1e-12, atol=1e-12)
            gone = np.setdiff1d(np.arange(z_full.shape[1]), keep)
            assert np.all(z_full[:, gone] <= 0), f"layer {j}: a dropped neuron is active on the box"
            # narrow and widen are inverse on the kept neurons, the dropped ones get their own bounds
            lo_j, up_j = (t[0] for t in b.pre_activation[j])
            assert torch.equal(prune.widen(prune.narrow(lo_j, j), j, 0), lo_j)
            assert torch.equal(prune.widen(prune.narrow(up_j, j), j, 1), up_j)
    assert dropped > 0, "no case dropped a neuron: the test does not bind"


def test_passthrough_coordinates_are_never_dropped():
    for seed in range(20):
        net, lo, hi = _net("graph", seed)
        b = crown(net, torch.tensor(lo)[None], torch.tensor(hi)[None])
        prune = DeadPruning(net, b.pre_activation)
        for j, blk in enumerate(net.affine_blocks()[:-1]):
            if blk.passthrough is not None:
                kept = set(prune.keep[j].tolist())
                assert all(i in kept for i in np.flatnonzero(blk.passthrough))


def test_nothing_dead_keeps_the_network_ops():
    net = random_dense_network(np.random.default_rng(0), 3, [4], 2)
    pre = [(torch.full((1, 4), -1.0), torch.full((1, 4), 1.0))]
    prune = DeadPruning(net, pre)
    assert prune.dropped == 0
    assert prune.ops("cpu", torch.float64) is net.linear_ops("cpu", torch.float64)


def test_a_neuron_dead_in_one_row_only_is_kept():
    net = random_dense_network(np.random.default_rng(0), 3, [4], 2)
    up = torch.tensor([[-1.0, 1.0, -1.0, 1.0], [1.0, 1.0, -1.0, -1.0]])
    prune = DeadPruning(net, [(up - 2, up)])
    assert prune.keep[0].tolist() == [0, 1, 3]
    nan = torch.tensor([[float("nan"), -1.0, -1.0, -1.0]])
    assert DeadPruning(net, [(nan - 1, nan)]).keep[0].tolist() == [0]  # NaN proves nothing


class _NoPruning(DeadPruning):
    def __init__(self, network, pre, outputs=None):  # (no dead neuron, and the whole cone)
        super().__init__(network, [(lo, torch.full_like(torch.as_tensor(up), 1.0)) for lo, up in pre])


def _split_case(seed: int):
    rng = np.random.default_rng(seed)
    net = random_dense_network(rng, 3, [10, 10], 2, bias_scale=1.0)
    centre = rng.normal(size=3)
    lo, hi = centre - 0.5, centre + 0.5
    b = crown(net, torch.tensor(lo)[None], torch.tensor(hi)[None])
    # the unsafe set y_0 - y_1 <= d, with d near the sampled minimum: some hold by small margins,
    # some are just violated
    _, y = affine_view_values(net, box_points(rng, lo, hi, 2000))
    C = np.array([[1.0, -1.0]])
    d = np.array([float((y[:, 0] - y[:, 1]).min()) + 0.05 * rng.normal()])
    return net, lo, hi, [(C, d, None)], b


def test_relu_split_gives_the_same_answers_with_and_without_pruning(monkeypatch):
    """Without pruning (every neuron kept) and with it, activation splitting bounds the same
    domains the same way: the same status, domain count and bounds up to rounding (float64 steps:
    float32 ones round at 1e-7, and their choices then differ by that much)."""
    config = ReluSplitConfig(batch_size=4, max_domains=400, handoff=8, step_dtype="float64")
    dropped, compared, leaf_count = 0, 0, 0
    for seed in range(8):
        net, lo, hi, disj, b = _split_case(seed)
        dropped += DeadPruning(net, b.pre_activation).dropped
        got = relu_split(net, torch.tensor(lo), torch.tensor(hi), disj, b, config=config)
        with monkeypatch.context() as m:
            m.setattr(relu_split_module, "DeadPruning", _NoPruning)
            ref = relu_split(net, torch.tensor(lo), torch.tensor(hi), disj, b, config=config)
        assert got.status == ref.status and got.closed == ref.closed
        assert got.domains == ref.domains
        if np.isfinite(ref.worst_bound):
            assert got.worst_bound == pytest.approx(ref.worst_bound, rel=1e-9, abs=1e-9)
        compared += 1
        # leaves come back at full width; the dropped neurons keep their root bounds (dead)
        keep = DeadPruning(net, b.pre_activation).keep
        for leaves in got.leaves:
            for _, layers in leaves or ():
                leaf_count += 1
                for j, ((l, u), (l0, u0)) in enumerate(zip(layers, b.pre_activation)):
                    assert l.shape == u.shape == (l0.shape[1],)
                    gone = np.setdiff1d(np.arange(l0.shape[1]), keep[j].numpy())
                    assert np.array_equal(u[gone], u0[0].numpy()[gone]) and np.all(u[gone] <= 0)
                    assert np.array_equal(l[gone], l0[0].numpy()[gone])
    assert dropped > 0 and compared == 8 and leaf_count > 0


def test_alpha_crown_gives_the_same_bounds_with_and_without_pruning(monkeypatch):
    """alpha-CROWN on the intermediate layers and on spec rows, over a batch of boxes whose dead
    neurons differ: the same bounds up to rounding (float64 steps), each box's dropped neurons keep
    their own bounds, and sampled pre-activations lie inside."""
    crown_module = importlib.import_module("gpuopt.bounds.crown")  # the module (the package exports the function)

    dropped = 0
    for seed in range(8):
        rng = np.random.default_rng(100 + seed)
        net = random_dense_network(rng, 3, [10, 10, 8], 2, bias_scale=1.0)
        lo = torch.tensor(rng.normal(size=(3, 3)))
        lo[1] = lo[0] + 0.1  # overlapping boxes: some neurons dead in all three
        hi = lo + 0.4
        b = crown(net, lo, hi)
        dropped += DeadPruning(net, b.pre_activation).dropped
        C = torch.tensor(rng.normal(size=(2, 2)))
        got = crown_module.alpha_crown_bounds(net, lo, hi, b, steps=5, step_dtype="float64")
        got_rows = crown_module.alpha_crown_linear_lower(net, lo, hi, C, b, steps=5)
        with monkeypatch.context() as m:
            m.setattr(crown_module, "DeadPruning", _NoPruning)
            ref = crown_module.alpha_crown_bounds(net, lo, hi, b, steps=5, step_dtype="float64")
            ref_rows = crown_module.alpha_crown_linear_lower(net, lo, hi, C, b, steps=5)
        torch.testing.assert_close(got_rows, ref_rows, rtol=1e-9, atol=1e-9)
        for j, ((gl, gu), (rl, ru), (bl, bu)) in enumerate(zip(got.pre_activation, ref.pre_activation,
                                                               b.pre_activation)):
            torch.testing.assert_close(gl, rl, rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(gu, ru, rtol=1e-9, atol=1e-9)
            assert bool((gl >= bl).all() and (gu <= bu).all())
        for i in range(3):
            pre, _ = affine_view_values(net, box_points(rng, lo[i].numpy(), hi[i].numpy(), 300))
            for (gl, gu), z in zip(got.pre_activation, pre):
                assert np.all(z >= gl[i].numpy() - 1e-9) and np.all(z <= gu[i].numpy() + 1e-9)
    assert dropped > 0


def test_sparse_blocks_prune_and_select_rows_like_dense_ones():
    """A conv net large enough for sparse blocks (:class:`gpuopt.network.LinearOp` keeps them as
    CSR): the pruned sparse blocks compute the network on the box, and ``rows`` of a sparse block
    equals the dense rows."""
    rng = np.random.default_rng(7)
    net = random_conv_network(rng, (1, 16, 16), 4, (3, 3), (1, 1), (0, 0, 0, 0), 6, 2)
    assert net.linear_ops("cpu", torch.float64)[0].dense is None, "the first block should be sparse"
    centre = rng.uniform(0.2, 0.8, size=256)
    lo, hi = centre - 0.05, centre + 0.05
    b = crown(net, torch.tensor(lo)[None], torch.tensor(hi)[None])
    prune = DeadPruning(net, b.pre_activation)
    assert prune.dropped > 0  # (a pruned block may come out dense: fewer entries)
    x = box_points(rng, lo, hi, 100)
    full_pre, full_out = affine_view_values(net, x)
    pre, out = _pruned_forward(prune, x)
    np.testing.assert_allclose(out, full_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pre[0], full_pre[0][:, prune.keep[0].numpy()], rtol=1e-12, atol=1e-12)
    op = net.linear_ops("cpu", torch.float64)[0]
    idx = torch.tensor([0, 5, 783, 5])
    want = net.affine_blocks()[0].matrix.toarray()[idx.numpy()]
    np.testing.assert_array_equal(op.rows(idx).numpy(), want)


def _fully_convolutional(seed: int):
    """Conv, ReLU, Conv, ReLU, Conv on a 1x6x6 image: every block sparse, each output a 3x3 window
    of the layer before, so the cone of a corner's outputs is a small part of each layer."""
    from gpuopt.layers import Conv2d, Flatten, ReLU
    from gpuopt.network import Network

    rng = np.random.default_rng(seed)
    pad = (1, 1, 1, 1)
    net = Network([Conv2d(rng.normal(size=(2, 1, 3, 3)) / 3, rng.normal(size=2) * 0.3, padding=pad), ReLU(),
                   Conv2d(rng.normal(size=(2, 2, 3, 3)) / 4, rng.normal(size=2) * 0.3, padding=pad), ReLU(),
                   Conv2d(rng.normal(size=(2, 2, 3, 3)) / 4, rng.normal(size=2) * 0.3, padding=pad), Flatten()],
                  (1, 6, 6))
    centre = rng.uniform(-1, 1, size=36)
    return net, centre - 0.4, centre + 0.4


def test_the_cone_of_the_outputs_read_computes_them_exactly():
    """With ``outputs``, the neurons outside their cone drop out with the other outputs: the kept
    outputs and pre-activations through the pruned blocks equal the full network's."""
    outputs = [0, 1, 36 + 6]  # (channel 0 at (0, 0) and (0, 1), channel 1 at (1, 0))
    for seed in range(6):
        net, lo, hi = _fully_convolutional(seed)
        b = crown(net, torch.tensor(lo)[None], torch.tensor(hi)[None])
        dead_only = DeadPruning(net, b.pre_activation)
        prune = DeadPruning(net, b.pre_activation, outputs=outputs)
        assert prune.out_keep.tolist() == outputs
        assert prune.dropped > dead_only.dropped + 20  # the cone binds
        x = box_points(np.random.default_rng(seed), lo, hi, 300)
        full_pre, full_out = affine_view_values(net, x)
        pre, out = _pruned_forward(prune, x)
        np.testing.assert_allclose(out, full_out[:, outputs], rtol=1e-12, atol=1e-12)
        for j, (z_full, z) in enumerate(zip(full_pre, pre)):
            np.testing.assert_allclose(z, z_full[:, prune.keep[j].numpy()], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="one box"):
        DeadPruning(net, [(torch.zeros(2, l.shape[1]), torch.ones(2, l.shape[1])) for l, _ in b.pre_activation],
                    outputs=outputs)


def test_relu_split_on_the_cone_bounds_as_the_full_network(monkeypatch):
    """Activation splitting on a disjunct that reads two outputs of a fully convolutional net. The
    root and its first split (``max_domains=1``) give the same domains and the same worst bound
    with the cone's pruning as with every neuron (the bounds use only the cone). Past that the
    trees differ: without the pruning, a split may fall on a neuron outside the cone, which
    changes no bound. A full search answers ``unsat`` only where sampling finds no point of the
    unsafe set, and ``sat`` only with a point that is one."""
    decided = 0
    for seed in range(6):
        net, lo, hi = _fully_convolutional(seed)
        b = crown(net, torch.tensor(lo)[None], torch.tensor(hi)[None])
        _, y = affine_view_values(net, box_points(np.random.default_rng(seed), lo, hi, 3000))
        C = np.zeros((1, net.output_size))
        C[0, 0], C[0, 7] = 1.0, -1.0
        margin = y[:, 0] - y[:, 7]
        for d in (float(margin.min()) - 0.3, float(margin.min()) - 0.02 * (seed % 3)):
            disj = [(C, np.array([d]), None)]
            first = ReluSplitConfig(max_domains=1, step_dtype="float64", refine=False)
            got = relu_split(net, torch.tensor(lo), torch.tensor(hi), disj, b, config=first)
            with monkeypatch.context() as m:
                m.setattr(relu_split_module, "CONE_PRUNING", False)
                ref = relu_split(net, torch.tensor(lo), torch.tensor(hi), disj, b, config=first)
            assert got.status == ref.status and got.domains == ref.domains
            assert got.worst_bound == pytest.approx(ref.worst_bound, rel=1e-9, abs=1e-12)
            full = relu_split(net, torch.tensor(lo), torch.tensor(hi), disj, b,
                              config=ReluSplitConfig(batch_size=4, max_domains=300, step_dtype="float64"))
            if full.status == "unsat":
                decided += 1
                assert np.all(margin > d)
            if full.status == "sat":
                assert full.x is None or float(C[0] @ net.forward64(np.asarray(full.x)[None])[0]) <= d + 1e-9
    assert decided > 0


def test_alpha_crown_rows_on_the_cone_equal_the_full_ones(monkeypatch):
    """alpha-CROWN on spec rows that read two outputs of a fully convolutional net: the cone's
    pruned passes give the full network's bounds (float64 steps: equal up to rounding), and they
    lie below every sampled value."""
    from gpuopt.bounds.crown import alpha_crown_linear_lower

    crown_module = importlib.import_module("gpuopt.bounds.crown")
    C = torch.zeros((2, 72), dtype=torch.float64)
    C[0, 0], C[0, 7], C[1, 36 + 8] = 1.0, -1.0, 1.0
    for seed in range(6):
        net, lo, hi = _fully_convolutional(seed)
        lo_t, hi_t = torch.tensor(lo)[None], torch.tensor(hi)[None]
        b = crown(net, lo_t, hi_t)
        got = alpha_crown_linear_lower(net, lo_t, hi_t, C, b, steps=10)
        with monkeypatch.context() as m:
            m.setattr(crown_module, "spec_outputs", lambda A: None)
            ref = alpha_crown_linear_lower(net, lo_t, hi_t, C, b, steps=10)
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)
        _, y = affine_view_values(net, box_points(np.random.default_rng(seed), lo, hi, 500))
        assert np.all(y @ C.numpy().T >= got.numpy() - 1e-12)
