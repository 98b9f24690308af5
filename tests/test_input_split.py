"""Input splitting: per-box CROWN rows and inherited parent bounds.

CROWN bounds a batch of boxes either on the union of the neurons open in any box, or (when
that wastes work) on each box's own open neurons; both must give the same bounds. Sub-boxes
inherit their parent's bounds, which the search intersects in; its verdicts must agree with
brute-force enumeration whether those bounds are kept, dropped, or kept for some chunks only.
"""

from __future__ import annotations

import importlib
import math
import time

import numpy as np
import pytest
import torch

from gpuopt import Problem
from gpuopt.bab import SplitConfig, input_split
from gpuopt.bounds import Bounds, crown, ibp

from gpuopt.errors import InvalidInputError
from gpuopt.specs import OutputSpec

from helpers import (box_points, brute_force_min_margin, small_robustness_case, numpy_forward, random_dense_network,
                     shifted_problem)

crown_module = importlib.import_module("gpuopt.bounds.crown")
bab_module = importlib.import_module("gpuopt.bab")


def _boxes(rng, n_in, centre_scale=1.0):
    """Boxes of very different sizes, so that most neurons are open only in the wide ones."""
    widths = np.array([2.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 0.0, 1e-5] * 2)
    centre = rng.normal(size=(widths.size, n_in)) * centre_scale
    rad = widths[:, None] * rng.uniform(0.5, 1.0, size=(widths.size, n_in))
    return centre - rad, centre + rad


@pytest.mark.parametrize("seed", range(6))
def test_crown_per_box_rows_equal_box_by_box(seed, monkeypatch):
    """A batch where boxes open few neurons each takes the per-(box, neuron) path, and its bounds
    equal those of each box bounded alone (which takes the union path)."""
    rng = np.random.default_rng(seed)
    net = random_dense_network(rng, 3, [12, 12, 10], 4)
    lo, hi = (torch.tensor(t) for t in _boxes(rng, 3))
    used = []
    original = crown_module._backward

    def spy(*args, **kwargs):
        used.append(kwargs.get("index") is not None)
        return original(*args, **kwargs)

    monkeypatch.setattr(crown_module, "_backward", spy)
    batch = crown(net, lo, hi)
    assert any(used), "the batch never took the per-box path"
    used.clear()
    for i in range(lo.shape[0]):
        alone = crown(net, lo[i:i + 1], hi[i:i + 1])
        for (bl, bu), (al, au) in zip(list(batch.pre_activation) + [batch.output],
                                      list(alone.pre_activation) + [alone.output]):
            scale = 1e-12 * (1 + al.abs().max() + au.abs().max())
            assert torch.allclose(bl[i], al[0], rtol=0, atol=scale)
            assert torch.allclose(bu[i], au[0], rtol=0, atol=scale)
    assert not any(used), "a single box took the per-box path"


@pytest.mark.parametrize("seed", range(6))
def test_crown_with_a_parent_prior_is_sound_and_inside_it(seed):
    """Children bounded with their parent's bounds as ``prior``: every bound lies inside the
    prior and inside IBP's, and contains the sampled pre-activations and outputs."""
    rng = np.random.default_rng(100 + seed)
    net = random_dense_network(rng, 3, [10, 10, 8], 3)
    centre = rng.normal(size=(4, 3))
    plo, phi = torch.tensor(centre - 0.6), torch.tensor(centre + 0.6)
    parent = crown(net, plo, phi)
    mid = (plo + phi) / 2
    dim = torch.tensor(rng.integers(0, 3, size=4))
    ar = torch.arange(4)
    clo, chi = plo.clone(), phi.clone()
    chi[ar, dim] = mid[ar, dim]  # the lower halves
    child = crown(net, clo, chi, prior=parent)
    base = ibp(net, clo, chi)
    for (l, u), (pl, pu), (il, iu) in zip(list(child.pre_activation) + [child.output],
                                          list(parent.pre_activation) + [parent.output],
                                          list(base.pre_activation) + [base.output]):
        assert bool((l >= pl).all() and (u <= pu).all())
        assert bool((l >= il).all() and (u <= iu).all())
    for i in range(4):
        pts = box_points(rng, clo[i].numpy(), chi[i].numpy(), 300)
        y, pre = numpy_forward(net, pts)
        for (l, u), z in zip(child.pre_activation, pre):
            assert np.all(z >= l[i].numpy()) and np.all(z <= u[i].numpy())
        assert np.all(y >= child.output[0][i].numpy()) and np.all(y <= child.output[1][i].numpy())


def test_crown_ignores_nan_in_the_prior():
    """A NaN in the prior says nothing: the bounds are those without it."""
    rng = np.random.default_rng(7)
    net = random_dense_network(rng, 2, [8, 8], 2)
    lo = torch.tensor(rng.normal(size=(3, 2)))
    hi = lo + 0.5
    plain = crown(net, lo, hi)
    nan = crown(net, lo, hi, prior=Bounds(
        tuple((torch.full_like(l, math.nan), torch.full_like(u, math.nan)) for l, u in plain.pre_activation),
        (torch.full_like(plain.output[0], math.nan), torch.full_like(plain.output[1], math.nan)), "nan"))
    for (a, b), (c, d) in zip(list(plain.pre_activation) + [plain.output], list(nan.pre_activation) + [nan.output]):
        assert torch.equal(a, c) and torch.equal(b, d)


def _split_case(seed):
    return small_robustness_case(4242 + seed)


@pytest.mark.parametrize("prior_bytes", ["default", 0, "some"])
@pytest.mark.parametrize("seed", range(12))
def test_input_split_agrees_with_brute_force_with_or_without_parent_bounds(seed, prior_bytes, monkeypatch):
    """Whether sub-boxes keep their parent's bounds (the default), never do (no room), or keep
    them for some stacked chunks only (so chunks with and without bounds are concatenated), the
    verdict matches exact enumeration."""
    net, region, spec = _split_case(seed)
    if prior_bytes == 0:
        monkeypatch.setattr(bab_module, "PRIOR_BYTES", 0)
    elif prior_bytes == "some":  # room for a few boxes' bounds: the stack mixes both kinds
        per_box = 16 * sum(op.shape[0] for op in net.linear_ops("cpu", torch.float64))
        monkeypatch.setattr(bab_module, "PRIOR_BYTES", 6 * per_box)
    box = region.to_box()
    true_min = brute_force_min_margin(net, box.lower, box.upper, spec, seed=seed).per_disjunct.min()
    res = input_split(Problem(net, region, spec), deadline=time.monotonic() + 60,
                      config=SplitConfig(batch_size=4, attack_boxes=0))
    if true_min > 1e-9:
        assert res.status == "unsat", (true_min, res)
    elif true_min < -1e-9:
        assert res.status == "sat", (true_min, res)
        y, _ = numpy_forward(net, res.counterexample[None])
        assert spec.margin64(y)[0] <= 0
    assert res.status != "unsat" or true_min > 0


@pytest.mark.parametrize("seed", range(6))
def test_root_bounds_are_taken_as_they_are(seed, monkeypatch):
    """Given the bounds stage's bounds of the whole box, the search bounds the root with them
    (one computation of intermediate bounds fewer) and reaches the enumeration's verdict."""
    net, region, spec = _split_case(seed)
    box = region.to_box()
    true_min = brute_force_min_margin(net, box.lower, box.upper, spec, seed=seed).per_disjunct.min()
    calls = []
    real = bab_module.intermediate_bounds
    monkeypatch.setattr(bab_module, "intermediate_bounds", lambda *a, **k: calls.append(1) or real(*a, **k))
    config = SplitConfig(batch_size=4, attack_boxes=0)
    plain = input_split(Problem(net, region, spec), deadline=time.monotonic() + 60, config=config)
    n_plain, calls[:] = len(calls), []
    root = crown(net, torch.tensor(box.lower)[None], torch.tensor(box.upper)[None])
    given = input_split(Problem(net, region, spec), deadline=time.monotonic() + 60, config=config, root_bounds=root)
    assert len(calls) == n_plain - 1 and given.boxes == plain.boxes
    assert given.status == plain.status
    if true_min > 1e-9:
        assert given.status == "unsat"
    elif true_min < -1e-9:
        assert given.status == "sat"


@pytest.mark.parametrize("seed", range(12))
def test_input_split_with_alpha_crown_agrees_with_brute_force(seed):
    """With alpha-CROWN on every box CROWN leaves open (from the first box on), verdicts still match
    exact enumeration on properties that hold by 1e-3 and ones violated by 1e-3."""
    net, region, spec = _split_case(seed)
    for delta in (1e-3, -1e-3):
        problem, shifted = shifted_problem(net, region, spec, seed, delta)
        res = input_split(problem, deadline=time.monotonic() + 60,
                          config=SplitConfig(batch_size=4, attack_boxes=0, alpha_after=0))
        assert res.status == ("unsat" if delta > 0 else "sat"), (delta, res)
        if res.status == "sat":
            y, _ = numpy_forward(net, res.counterexample[None])
            assert shifted.margin64(y)[0] <= 0


def test_alpha_crown_closes_boxes_crown_leaves_open_and_waits_for_its_turn(monkeypatch):
    """On properties that hold by a small margin, alpha-CROWN on the open boxes must save boxes
    somewhere (this fails if it never binds) and never change a verdict; before
    ``alpha_after`` boxes it is not called at all."""
    calls = []
    real = bab_module.alpha_crown_linear_lower
    monkeypatch.setattr(bab_module, "alpha_crown_linear_lower", lambda *a, **k: calls.append(a[1].shape[0]) or real(*a, **k))
    saved = 0
    for seed in range(12):
        problem, _ = shifted_problem(*_split_case(seed), seed, 1e-2)
        runs = {}
        for name, cfg in (("crown", SplitConfig(batch_size=4, attack_boxes=0, alpha_steps=0)),
                          ("late", SplitConfig(batch_size=4, attack_boxes=0, alpha_after=10**9,
                                               alpha_after_seconds=1e9)),
                          ("alpha", SplitConfig(batch_size=4, attack_boxes=0, alpha_after=0))):
            calls.clear()
            runs[name] = (input_split(problem, deadline=time.monotonic() + 60, config=cfg), list(calls))
        assert all(r.status == "unsat" for r, _ in runs.values()), (seed, runs)
        assert not runs["crown"][1] and not runs["late"][1]
        assert runs["late"][0].boxes == runs["crown"][0].boxes
        assert runs["alpha"][1] or runs["alpha"][0].boxes == 1  # a box left open gets alpha-CROWN
        saved += runs["crown"][0].boxes - runs["alpha"][0].boxes
    assert saved > 0


def test_alpha_crown_also_starts_after_its_seconds(monkeypatch):
    """Where boxes are slow to bound, the time binds before the count: with ``alpha_after_seconds``
    0 the first open box already gets alpha-CROWN, with a count that is never reached."""
    calls = []
    real = bab_module.alpha_crown_linear_lower
    monkeypatch.setattr(bab_module, "alpha_crown_linear_lower", lambda *a, **k: calls.append(1) or real(*a, **k))
    problem, _ = shifted_problem(*_split_case(3), 3, 1e-2)
    for seconds, expect in ((1e9, False), (0.0, True)):
        calls.clear()
        res = input_split(problem, deadline=time.monotonic() + 60,
                          config=SplitConfig(batch_size=4, attack_boxes=0, alpha_after=10**9, alpha_after_seconds=seconds))
        assert res.status == "unsat" and bool(calls) == expect


@pytest.mark.parametrize("kwargs, name", [({"alpha_steps": -1}, "alpha_steps"), ({"alpha_after": 0.5}, "alpha_after"),
                                          ({"alpha_after_seconds": -1.0}, "alpha_after_seconds"),
                                          ({"alpha_after_seconds": float("nan")}, "alpha_after_seconds")])
def test_bad_alpha_settings_are_refused(kwargs, name):
    with pytest.raises(InvalidInputError, match=name):
        SplitConfig(**kwargs)


def _id_bounds(ids):
    """Bounds, rows, coefficients and disjunct bounds that encode each box's id."""
    bnd = Bounds(((ids[:, None].repeat(1, 3), ids[:, None].repeat(1, 3) + 0.5),),
                 (ids[:, None] - 1, ids[:, None] + 1), "test")
    return bnd, ids[:, None] * 10, ids[:, None, None].repeat(1, 1, 2), ids[:, None] + 0.25


def test_box_stack_pops_from_the_top_and_keeps_each_box_with_its_bounds():
    """Chunks with bounds, without, and with their own bounding results, popped in sizes that
    split chunks: every popped box keeps its own data, last pushed first, nothing is lost, and
    only the boxes without results are bounded (once, with their own inherited bounds). Each box
    keeps its floor (``-inf`` when pushed without one), and the stack's floor is the least left."""
    stack = bab_module._BoxStack()
    kinds, floors = [], []
    for n, kind in [(3, "none"), (4, "prior"), (1, "done"), (5, "none"), (2, "prior"), (3, "done"), (2, "done")]:
        ids = torch.arange(len(kinds), len(kinds) + n, dtype=torch.float64)
        lo = torch.stack([ids, -ids], 1)
        prior = _id_bounds(ids)[0] if kind != "none" else None
        done = _id_bounds(ids) if kind == "done" else None
        floor = None if kind == "none" else 7.5 - ids  # -inf for the boxes pushed without one
        stack.push(lo, lo + 1, torch.ones((n, 1), dtype=torch.bool), prior, done, floor=floor)
        kinds += [kind] * n
        floors += [-math.inf] * n if floor is None else floor.tolist()
    stack.push(torch.zeros((0, 2)), torch.zeros((0, 2)), torch.zeros((0, 1), dtype=torch.bool), None)
    assert len(stack) == len(kinds) == 20
    bounded = []

    def fake_bound(lo, hi, prior, mask, deadline):
        ids = lo[:, 0]
        bounded.extend(ids.tolist())
        for row, i in enumerate(ids.tolist()):  # each box arrives with its own inherited bounds
            if kinds[int(i)] == "prior":
                assert torch.all(prior.pre_activation[0][0][row] == i)
            elif prior is not None:
                assert torch.all(prior.pre_activation[0][0][row] == -math.inf)
        return _id_bounds(ids)

    order = []
    for n in [2, 6, 1, 4, 2, 5]:
        left = floors[: len(stack)]  # the boxes still on the stack (the first pushed)
        assert stack.floor() == min(left)
        chunks = stack.pop(n)
        lo = torch.cat([c[0] for c in chunks])
        assert torch.cat([c[6] for c in chunks]).tolist() == [floors[int(i)] for i in lo[:, 0].tolist()]
        assert lo.shape == (n, 2) and torch.equal(torch.cat([c[1] for c in chunks]), lo + 1)
        ids = lo[:, 0].tolist()
        assert ids == sorted(ids)  # the stack's order is kept inside a batch
        bnd, rows, coef, disj = bab_module._bound_chunks(chunks, fake_bound, None)
        want = _id_bounds(lo[:, 0])
        assert torch.equal(bnd.pre_activation[0][0], want[0].pre_activation[0][0])
        assert torch.equal(bnd.output[1], want[0].output[1])
        assert torch.equal(rows, want[1]) and torch.equal(coef, want[2]) and torch.equal(disj, want[3])
        order += ids[::-1]
    assert len(stack) == 0 and stack.floor() == math.inf
    assert order == [float(i) for i in range(19, -1, -1)]  # last pushed, first popped
    assert sorted(bounded) == [float(i) for i, k in enumerate(kinds) if k != "done"]


@pytest.mark.parametrize("seed", [0, 3, 6, 7, 9, 12, 15])
def test_an_unfinished_search_bounds_every_margin_from_below(seed):
    """A search stopped by its box limit reports ``open_lower``: at most the exact least margin,
    over the box, of every disjunct (brute force; the disjuncts are shifted to hold by different
    margins, so a bound taken from the wrong disjunct shows); finite once a box was bounded; and
    with more boxes it rises above the root's bound. (These seeds' roots are left open.)"""
    net, region, spec = _split_case(seed)
    box = region.to_box()
    minima = brute_force_min_margin(net, box.lower, box.upper, spec, seed=seed).per_disjunct
    deltas = 0.02 + 0.3 * np.arange(spec.n_disjuncts)
    spec = OutputSpec([(A, b + (m - d)) for (A, b), m, d in zip(spec.disjuncts, minima, deltas)], spec.n_outputs)
    problem = Problem(net, region, spec)
    found = {}
    for max_boxes in (1, 8, 64):
        res = input_split(problem, config=SplitConfig(batch_size=2, attack_boxes=0, max_boxes=max_boxes))
        assert res.status in ("unsat", "unknown"), res
        assert res.open_lower <= deltas.min() + 1e-9, (max_boxes, res)
        assert math.isfinite(res.open_lower)
        if res.status == "unsat":
            assert res.open_lower == res.margin_lower > 0
        found[max_boxes] = (res.status, res.open_lower)
    assert found[1][0] == "unknown", found
    assert found[64][1] > found[1][1], found
