"""Falsification over rounds of restarts: rounds until the deadline, patience, chunking and
out-of-memory splitting with identical results, refused candidates, and the pools of distinct
activation patterns."""

from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest
import torch

import gpuopt.attacks.search as search
from gpuopt.attacks import AttackConfig, BoxGeometry, falsify, pgd_attack
from gpuopt.kernels.patterns import pack_and_hash
from gpuopt.network import Dense, Network, ReLU
from gpuopt.specs import OutputSpec, robustness

from helpers import random_dense_network


def _unreachable():
    """``y = relu(x) + relu(-x) + 1 >= 1``: ``y <= 0.5`` cannot be reached."""
    net = Network([Dense([[1.0], [-1.0]], [0.0, 0.0]), ReLU(), Dense([[1.0, 1.0]], [1.0])], (1,))
    A, b = OutputSpec([(np.array([[1.0]]), np.array([0.5]))], 1).padded()
    return net, A, b


def _batch(seed=3, items=5):
    rng = np.random.default_rng(seed)
    net = random_dense_network(rng, 4, [12, 12], 3)
    lo = torch.tensor(rng.uniform(-1, 0, (items, 4)), dtype=torch.float32)
    hi = lo + torch.tensor(rng.uniform(0.2, 1.5, (items, 4)), dtype=torch.float32)
    A, b = robustness(0, 3).padded(dtype=torch.float32)
    return net, BoxGeometry(lo, hi), A.expand(items, *A.shape), b.expand(items, *b.shape)


def test_rounds_continue_until_the_deadline():
    net, A, b = _unreachable()
    pgd_attack(net, [[-3.0]], [[3.0]], A, b, config=AttackConfig(restarts=4, steps=10))  # warm-up: the
    # first autograd call of a process can take most of the 0.5 s budget
    t0 = time.monotonic()
    cand = pgd_attack(net, [[-3.0]], [[3.0]], A, b, config=AttackConfig(restarts=4, steps=10),
                      deadline=t0 + 0.5)
    assert cand.rounds > 1 and cand.restarts == 4 * cand.rounds
    # rounds go on until the deadline is near: a round is not started when its steps would end
    # past it, so the search stops at most about a round before it (a loaded machine's rounds are slower)
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.5 - 3 * elapsed / cand.rounds - 0.05
    assert not bool(cand.success[0])


def test_rounds_and_patience_stop_earlier():
    net, A, b = _unreachable()
    far = time.monotonic() + 60
    cand = pgd_attack(net, [[-3.0]], [[3.0]], A, b, config=AttackConfig(restarts=4, steps=5, rounds=3), deadline=far)
    assert cand.rounds == 3
    # the best margin (0.5 at x = 0) is found in round 0 and never improves: patience 2 stops after 3
    cand = pgd_attack(net, [[-3.0]], [[3.0]], A, b, config=AttackConfig(restarts=4, steps=20, patience=2), deadline=far)
    assert cand.rounds == 3
    # no deadline: one round
    assert pgd_attack(net, [[-3.0]], [[3.0]], A, b, config=AttackConfig(restarts=4, steps=5)).rounds == 1


def test_chunking_gives_the_same_results():
    net, geom, A, b = _batch()
    cfg = AttackConfig(restarts=16, steps=25, seed=5)
    whole = falsify(net, geom, A, b, config=cfg)
    one_item_bytes = search._row_bytes(net, torch.float32) * cfg.restarts
    for size in (1, 2, 3):
        part = falsify(net, geom, A, b, config=cfg, chunk_bytes=size * one_item_bytes)
        assert torch.equal(part.x, whole.x) and torch.equal(part.margin, whole.margin)
        assert torch.equal(part.success, whole.success) and part.evaluations == whole.evaluations


def test_out_of_memory_halves_the_chunk_with_the_same_results(monkeypatch):
    net, geom, A, b = _batch()
    cfg = AttackConfig(restarts=8, steps=10, seed=1)
    whole = falsify(net, geom, A, b, config=cfg)
    real = search.spec_margins
    calls = []

    def limited(network, A_, b_):
        f = real(network, A_, b_)

        def margins(x, items):
            calls.append(x.shape[0])
            if x.shape[0] > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return f(x, items)

        return margins

    monkeypatch.setattr(search, "spec_margins", limited)
    part = falsify(net, geom, A, b, config=cfg)
    assert max(calls) > 2  # it did run out of memory first
    assert torch.equal(part.x, whole.x) and torch.equal(part.margin, whole.margin)


def test_other_errors_are_not_taken_for_out_of_memory(monkeypatch):
    net, geom, A, b = _batch()

    def broken(network, A_, b_):
        def margins(x, items):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
        return margins

    monkeypatch.setattr(search, "spec_margins", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        falsify(net, geom, A, b, config=AttackConfig(restarts=2, steps=2))


def test_a_refused_candidate_keeps_the_item_open_and_aims_lower():
    """``y = x`` on [-1, 1], unsafe ``y <= 0``: the first confirmed candidate is refused, so the
    item continues below a lower target and its result is strictly inside the unsafe region."""
    net = Network([Dense([[1.0]], [0.0])], (1,))
    A, b = OutputSpec([(np.array([[1.0]]), np.array([0.0]))], 1).padded()
    seen = []

    def confirm(item, x):
        seen.append(float(x[0]))
        return len(seen) > 1

    cand = pgd_attack(net, [[-1.0]], [[1.0]], A, b, config=AttackConfig(restarts=1, steps=50, corners=0),
                      deadline=time.monotonic() + 30, confirm=confirm)
    assert len(seen) == 2 and bool(cand.success[0])
    assert seen[1] < seen[0] or seen[1] < 0


def test_pools_hold_distinct_patterns_best_first():
    net, geom, A, b = _batch(items=3)
    cand = falsify(net, geom, A, b, config=AttackConfig(restarts=32, steps=5, keep=6, seed=2))
    assert len(cand.pools) == 3
    for i, pool in enumerate(cand.pools):
        k = pool.x.shape[0]
        assert 1 <= k <= 6
        assert torch.all(pool.margin[1:] >= pool.margin[:-1])
        assert torch.all(geom.select(torch.tensor([i])).contains(pool.x[None]))
        _, pats = net.forward(pool.x, return_pattern=True)
        packed, hashes = pack_and_hash(torch.cat(pats, dim=1))
        assert torch.equal(packed, pool.packed) and torch.equal(hashes, pool.hashes)
        assert len({bytes(r.tolist()) for r in pool.packed}) == k  # all distinct
    # the best point of each item is its pool's first point (or better: the pool is per restart)
    assert torch.all(cand.margin <= torch.stack([p.margin[0] for p in cand.pools]) + 1e-6)


def test_success_is_recomputed_and_margins_agree():
    net, geom, A, b = _batch(seed=9, items=6)
    cand = falsify(net, geom, A, b, config=AttackConfig(restarts=16, steps=30))
    y = net.forward(cand.x)
    rows = torch.einsum("bkmo,bo->bkm", A, y) - b
    torch.testing.assert_close(cand.margin, rows.amax(-1).amin(-1))
    assert torch.equal(cand.success, cand.margin <= 0)
    assert torch.all(geom.contains(cand.x[:, None]))
    assert math.isfinite(float(cand.margin.max()))


def test_success_marks_only_confirmed_candidates():
    """A candidate that the float64 check refuses is not a success (adversarial review)."""
    net, geom, A, b = _batch(seed=9, items=4)
    free = falsify(net, geom, A, b, config=AttackConfig(restarts=16, steps=20))
    assert free.success.any()
    refused = falsify(net, geom, A, b, config=AttackConfig(restarts=16, steps=20), confirm=lambda i, x: False)
    assert not refused.success.any()


def test_stop_at_first_ends_a_disjunction_early():
    """Two boxes, one with a counterexample and one without: with ``stop_at_first`` the search
    ends at the first confirmed point instead of running to the deadline."""
    net = Network([Dense([[1.0]], [0.0])], (1,))  # y = x
    A, b = OutputSpec([(np.array([[1.0]]), np.array([0.0]))], 1).padded()  # unsafe: y <= 0
    t0 = time.monotonic()
    cand = pgd_attack(net, [[-1.0], [1.0]], [[1.0], [2.0]], A, b, config=AttackConfig(restarts=4, steps=5),
                      deadline=t0 + 20, confirm=lambda i, x: True, stop_at_first=True)
    assert time.monotonic() - t0 < 10 and cand.success.tolist() == [True, False]


@pytest.mark.parametrize("lower, upper, kwargs, message", [
    ([[0.0, 0.0, 0.0, 0.0]], [[1.0, 1.0, 1.0, 1.0]], {}, "`lower` must have shape (batch, 2) or (2,) with batch >= 1, got (1, 4)"),
    ([[1.0, 0.0]], [[0.0, 1.0]], {}, "`lower` must be <= `upper` everywhere: the box is empty"),
    ([[math.nan, 0.0]], [[1.0, 1.0]], {}, "`lower` and `upper` must be finite"),
    ([[0.0, 0.0]], [[math.inf, 1.0]], {}, "`lower` and `upper` must be finite"),
    (np.zeros((0, 2)), np.zeros((0, 2)), {}, "`lower` must have shape (batch, 2) or (2,) with batch >= 1, got (0, 2)"),
    ([[0.0, 0.0]], [[1.0, 1.0]], dict(config={"restarts": 2}), "`config` must be an AttackConfig, got dict"),
])
def test_pgd_attack_input_validation(lower, upper, kwargs, message):
    net = Network([Dense(np.eye(2), np.zeros(2)), ReLU(), Dense([[1.0, -1.0]], [0.0])], (2,))
    A, b = OutputSpec([(np.array([[1.0]]), np.array([0.0]))], 1).padded()
    with pytest.raises(Exception, match=re.escape(message)):
        pgd_attack(net, lower, upper, A, b, **kwargs)


def test_boxes_beyond_float32_are_searched_in_float64():
    """``y = x`` on ``[-1e39, 1e39]`` (beyond float32): ``y >= 0.5`` is found, not lost to NaN."""
    net = Network([Dense([[1.0]], [0.0])], (1,))
    A, b = OutputSpec([(np.array([[-1.0]]), np.array([-0.5]))], 1).padded()
    cand = pgd_attack(net, [[-1e39]], [[1e39]], A, b, config=AttackConfig(restarts=4, steps=5))
    assert cand.x.dtype == torch.float64 and bool(cand.success[0]) and float(cand.x[0, 0]) >= 0.5


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_ball_attacks_with_an_unbounded_clip_box(kind):
    """The starts' vertices come from the ball's box, not the clip box: with no clip range the
    vertices were infinite and the attack returned the centre (found by the L2 radius test)."""
    from gpuopt.attacks.geometry import L1Geometry, L2Geometry
    from gpuopt.attacks.search import falsify
    from gpuopt.network import Dense, Network
    from gpuopt.specs import robustness

    w = np.array([2.0, -1.0, 0.5, 3.0])
    net = Network([Dense(np.stack([w, np.zeros(4)]), np.array([-0.3, 0.0]))], (4,))
    x0 = torch.tensor([[0.5, 0.2, 0.4, 0.3]], dtype=torch.float64)
    inf = torch.full((1, 4), np.inf, dtype=torch.float64)
    geometry = (L1Geometry if kind == "l1" else L2Geometry)(x0, torch.tensor([2.0], dtype=torch.float64), -inf, inf)
    A, b = robustness(0, 2).padded()
    res = falsify(net, geometry, A[None], b[None], config=AttackConfig(restarts=16, steps=50, rounds=1))
    assert torch.isfinite(res.x).all() and float(res.margin[0]) < 0


@pytest.mark.parametrize("n_in, draws", [(4, 16), (64, 16), (65, 0)])
def test_screening_draws_only_on_low_dimensional_inputs(n_in, draws):
    """Each uniform start is the best of ``screen`` draws on inputs of at most ``screen_max_dim``
    dimensions, and no draw is screened above it (the objective is never called)."""
    rng = np.random.default_rng(5)
    net = random_dense_network(rng, n_in, [6], 3)
    lo = torch.zeros((2, n_in))
    geom = BoxGeometry(lo, lo + 1)
    calls = []

    def objective(x):
        calls.append(x.shape)
        return x.sum(-1)

    cfg = AttackConfig(restarts=8, screen=16, screen_max_dim=64, corners=0.0, odi=0.0)
    x = search._starts(net, objective, geom, cfg, search.generators(0, [0, 1]), False)
    assert x.shape == (2, 8, n_in) and len(calls) == draws
    if draws:  # the kept starts are the best of the draws by the objective
        plain = search._starts(net, objective, geom, AttackConfig(restarts=8, screen=1, corners=0.0, odi=0.0),
                               search.generators(0, [0, 1]), False)
        assert torch.all(x.sum(-1) <= plain.sum(-1))


@pytest.mark.parametrize("K, M", [(1, 1), (3, 1), (1, 3), (4, 3)])
def test_spec_margins_match_a_float64_reference_with_padding(K, M):
    """``min_k max_m (A y - b)`` over each item's real rows, with padding rows (``b = +inf``) and
    padding disjuncts (``b[k, 0] = -inf``) as the engine stacks them; any ``items`` subset, and a
    new ``items`` tensor is never served the rows cached for the last one."""
    rng = np.random.default_rng(K * 10 + M)
    net = random_dense_network(rng, 4, [10], 5)
    P, R = 3, 7
    A = np.zeros((P, K, M, 5))
    b = np.full((P, K, M), np.inf)
    real = []
    for i in range(P):
        k_i = int(rng.integers(1, K + 1))
        disj = []
        for k in range(K):
            if k >= k_i:
                b[i, k, 0] = -np.inf  # a padding disjunct: its row value +inf is never the min
                continue
            m_k = int(rng.integers(1, M + 1))
            A[i, k, :m_k] = rng.normal(size=(m_k, 5))
            b[i, k, :m_k] = rng.normal(size=m_k)
            disj.append((A[i, k, :m_k], b[i, k, :m_k]))
        real.append(disj)
    margins = search.spec_margins(net, torch.tensor(A), torch.tensor(b))
    x = torch.tensor(rng.uniform(-1, 1, (P, R, 4)))
    for items in (torch.arange(P), torch.tensor([2, 0]), torch.tensor([1])):
        xs = x[: len(items)].clone().requires_grad_(True)
        got = margins(xs, items)
        y = net.forward64(xs.detach().reshape(-1, 4).numpy()).reshape(len(items), R, 5)
        want = np.array([[min(float(np.max(Ak @ y[j, r] - bk)) for Ak, bk in real[int(i)]) for r in range(R)]
                         for j, i in enumerate(items)])
        np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-12, atol=1e-12)
        (g,) = torch.autograd.grad(got.sum(), xs)
        assert torch.isfinite(g).all()


def test_a_step_that_would_end_past_the_deadline_is_not_started():
    """On a large network one step takes seconds: the loop stops before a step whose (estimated)
    end is past the deadline, instead of overrunning it by a step."""
    from gpuopt.attacks.pgd import descend

    def slow(x, items):  # 0.3 s per evaluation; the margin x stays above its target
        time.sleep(0.3)
        return (x[..., 0] ** 2 + 1.0)

    geometry = BoxGeometry(torch.tensor([[-1.0]]), torch.tensor([[1.0]]))
    x0 = torch.full((1, 2, 1), 0.5)
    descend(slow, geometry, x0, AttackConfig(restarts=2, steps=1))  # warm-up (the first autograd call)
    t0 = time.monotonic()
    res = descend(slow, geometry, x0, AttackConfig(restarts=2, steps=50), deadline=t0 + 1.0)
    took = time.monotonic() - t0
    assert took <= 1.0 + 0.1, took  # the start's evaluation and two steps fit; a third would end at 1.2 s
    assert res.steps == 2


def _spec(rng, bsz, K, M, n_out):
    A = torch.as_tensor(rng.normal(size=(bsz, K, M, n_out)))
    b = torch.as_tensor(rng.normal(size=(bsz, K, M)))
    return A, b


@pytest.mark.parametrize("K,M", [(1, 1), (1, 4), (3, 1), (2, 3)])
def test_manual_margin_gradient_is_autograds_bit_for_bit(K, M):
    """On a chain of ElementwiseAffine, Flatten, Dense and ReLU layers, the attack's margins and
    their gradient come without autograd (Network.forward_vjp): the same bits as autograd's, for
    one or several disjuncts and rows (the selected row routes the gradient), ties and dead
    ReLUs included."""
    from gpuopt.attacks.pgd import _value_and_grad
    from gpuopt.network import ElementwiseAffine, Flatten

    rng = np.random.default_rng(10 * K + M)
    dense = random_dense_network(rng, 6, [9, 7], 4)
    layers = [ElementwiseAffine(rng.uniform(0.5, 2.0, size=(2, 3)), rng.normal(size=(2, 3))), Flatten(),
              *dense._layers]
    net = Network(layers, (2, 3))
    A, b = _spec(rng, 3, K, M, 4)
    A[0, 0, :, :] = A[0, -1, :, :]  # a tie between two disjuncts' rows of item 0
    objective = search.spec_margins(net, A, b)
    x = torch.as_tensor(rng.uniform(-1, 1, size=(3, 5, 6)))
    x[1, 0] = 0.0  # many ReLUs at exactly 0 pre-activation only by chance; zeros in the input
    items = torch.arange(3)
    m_auto, g_auto = _value_and_grad(lambda x_, it: objective(x_, it), x, items)  # no value_and_grad: autograd
    m_manual, g_manual = _value_and_grad(objective, x, items)
    assert objective.value_and_grad(x, items) is not None
    assert torch.equal(m_auto, m_manual) and torch.equal(g_auto, g_manual)
    assert g_manual.shape == x.shape and bool((g_manual != 0).any())


def test_manual_margin_gradient_falls_back_to_autograd_off_plain_chains():
    """A network with another layer type (a residual Add) has no forward_vjp: autograd runs, and
    the attack finds the same point as before."""
    from gpuopt.network import Add

    rng = np.random.default_rng(5)
    d1 = Dense(rng.normal(size=(4, 4)), rng.normal(size=4))
    d2 = Dense(rng.normal(size=(2, 4)), rng.normal(size=2))
    net = Network([d1, ReLU(), Add(), d2], (4,), inputs=[[-1], [0], [1, -1], [2]])
    assert net.forward_vjp(torch.zeros(1, 4, dtype=torch.float64)) is None
    A, b = _spec(rng, 2, 1, 2, 2)
    objective = search.spec_margins(net, A, b)
    x = torch.as_tensor(rng.uniform(-1, 1, size=(2, 3, 4)))
    assert objective.value_and_grad(x, torch.arange(2)) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(12))
def test_manual_margin_gradient_matches_on_one_item_through_a_width_one_layer(seed, dtype):
    """One item (the usual single-box attack) on a net with a width-1 hidden layer: the output
    gradient enters the products row-major, as autograd's does (a strided view gave other bits
    there), and a selected -0.0 becomes +0.0 as in autograd's one-hot product: the bits agree."""
    from gpuopt.attacks.pgd import _value_and_grad

    rng = np.random.default_rng(seed)
    net = Network([Dense(rng.normal(size=(1, 3)), [1.0]), ReLU(), Dense(rng.normal(size=(5, 1)), np.zeros(5))], (3,))
    A = torch.as_tensor(rng.normal(size=(1, 1, 1, 5)), dtype=dtype)
    A[0, 0, 0, 0] = -0.0
    b = torch.zeros((1, 1, 1), dtype=dtype)
    objective = search.spec_margins(net, A, b)
    x = torch.as_tensor(rng.uniform(-1, 1, size=(1, 20, 3)), dtype=dtype)
    items = torch.arange(1)
    m_auto, g_auto = _value_and_grad(lambda x_, it: objective(x_, it), x, items)
    m_manual, g_manual = _value_and_grad(objective, x, items)
    bits = torch.int64 if dtype == torch.float64 else torch.int32
    assert torch.equal(m_auto.view(bits), m_manual.view(bits))
    assert torch.equal(g_auto.view(bits), g_manual.view(bits))
    # a strided input goes to autograd (its backward takes another product there)
    strided = torch.as_tensor(rng.uniform(-1, 1, size=(1, 3, 20)), dtype=dtype).transpose(1, 2)
    assert not strided.is_contiguous() and objective.value_and_grad(strided, items) is None
