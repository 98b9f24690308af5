"""Activation splitting (ReLU branch and bound with alpha/beta-CROWN): against brute-force
enumeration of linear regions on tiny dense and conv networks, on properties that hold by small
margins and on ones just violated. Never a closed disjunct that is reachable, never a
counterexample that is not one; most cases decided. Then the stage in the pipeline."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from gpuopt.bounds import crown
from gpuopt.errors import InvalidInputError
from gpuopt.problem import Problem
from gpuopt.regions import Box
from gpuopt.relu_split import BRANCHING, ReluSplitConfig, _fair_order, relu_split
from gpuopt.specs import OutputSpec
from gpuopt.verify import VerifyConfig, verify

from helpers import (brute_force_min_margin, numpy_forward, numpy_margin, random_conv_network, random_dense_network,
                     shifted_spec, to_alternating_dense)


def _case(seed: int, conv: bool = False):
    rng = np.random.default_rng(seed)
    if conv:
        net = random_conv_network(rng, (1, 3, 3), 2, (2, 2), (1, 1), (0, 0, 0, 0), 4, 2)
        n_in = 9
    else:
        n_in = int(rng.integers(2, 5))
        net = random_dense_network(rng, n_in, [int(rng.integers(3, 7)) for _ in range(int(rng.integers(1, 3)))], 2)
    centre = rng.normal(size=n_in)
    lo, hi = centre - 0.6, centre + 0.6
    disj = [(rng.normal(size=(int(rng.integers(1, 3)), 2)), 0.3 * rng.normal(size=1)) for _ in range(2)]
    disj = [(A, np.full(A.shape[0], b[0])) for A, b in disj]
    return net, lo, hi, OutputSpec(disj, 2)


def _solved_case(seed: int, conv: bool = False):
    """``_case(seed, conv)`` and its exact per-disjunct minima by brute force."""
    net, lo, hi, spec = _case(seed, conv)
    return net, lo, hi, spec, brute_force_min_margin(to_alternating_dense(net), lo, hi, spec).per_disjunct


def _run(net, lo, hi, spec, deadline_s=20.0, config=ReluSplitConfig()):
    problem = Problem(net, Box(lo, hi), spec)
    bounds = crown(net, torch.as_tensor(lo)[None], torch.as_tensor(hi)[None])
    import time

    return relu_split(net, torch.as_tensor(lo), torch.as_tensor(hi), [(A, b, None) for A, b in spec.disjuncts],
                      bounds, problem=problem, deadline=time.monotonic() + deadline_s, config=config)


@pytest.mark.parametrize("branching", BRANCHING)
@pytest.mark.parametrize("conv,sparse", [(False, False), (True, False), (True, True)])
def test_verdicts_agree_with_brute_force(conv, sparse, branching, monkeypatch):
    """``sparse``: every layer's matrix through the sparse CSR path (its products and their own
    gradient, :class:`gpuopt.network.LinearOp`), which only conv nets of realistic size take."""
    if sparse:
        from gpuopt.network import LinearOp

        monkeypatch.setattr(LinearOp, "sparse_density", 1.0)
        monkeypatch.setattr(LinearOp, "sparse_min_entries", 0)
    decided = total = 0
    for seed in range(12 if not conv else 6):
        net, lo, hi, spec, minima = _solved_case(seed, conv)
        if sparse:
            assert all(op.dense is None for op in net.linear_ops("cpu", torch.float64))
        for delta in (0.02, 1e-3, -1e-3, -0.02):  # holds by a small margin, or is just violated
            s = shifted_spec(spec, minima, delta)
            # (one of the 96 runs takes its whole limit under fsb: 10 s, as 20 s, leaves it open)
            res = _run(net, lo, hi, s, deadline_s=10.0, config=ReluSplitConfig(branching=branching, batch_size=4))
            total += 1
            for k, closed in enumerate(res.closed):
                if closed:  # a closed disjunct must be unreachable
                    assert delta > 0, (seed, delta, k)
                    assert res.proven_bound[k] > 0 and res.proven_bound[k] <= delta + 1e-9, (seed, delta, k)
            if res.status == "unsat":
                assert delta > 0, (seed, delta)
                decided += 1
            elif res.status == "sat":
                assert delta < 0, (seed, delta)
                assert np.all((res.x >= lo) & (res.x <= hi))
                y, _ = numpy_forward(net, res.x[None])
                assert numpy_margin(s, y)[0] <= 0
                decided += 1
    assert decided >= 0.75 * total, (decided, total)


def test_children_bounded_below_their_parent_are_retried():
    """Children whose own bound falls below their parent's get ``retry_steps`` more steps (and
    none with ``retry_steps=0`` and the plateaus' retry off); either way every verdict agrees
    with brute force."""
    retried = {0: 0, 10: 0}
    for seed in range(10):
        net, lo, hi, spec, minima = _solved_case(seed)
        for delta in (0.01, -0.01):
            s = shifted_spec(spec, minima, delta)
            for steps in retried:
                res = _run(net, lo, hi, s,
                           config=ReluSplitConfig(batch_size=2, retry_steps=steps, stall_retry=steps > 0))
                retried[steps] += res.retried
                assert res.status != ("sat" if delta > 0 else "unsat"), (seed, delta, steps)
                assert all(not closed or delta > 0 for closed in res.closed), (seed, delta, steps)
    assert retried[0] == 0 and retried[10] > 0, retried


def test_exact_leaves_decide_properties_a_millionth_from_the_boundary():
    """A domain with no unstable neuron left is affine: its LP (safe dual bound, and its minimiser
    checked in float64) decides it where the beta multipliers only approach the optimum. At
    margins of +-1e-6 this decided 14 of 24 cases before, 23 after; never a wrong answer."""
    decided = total = 0
    for seed in range(12):
        net, lo, hi, spec, minima = _solved_case(seed)
        for delta in (1e-6, -1e-6):
            res = _run(net, lo, hi, shifted_spec(spec, minima, delta), deadline_s=10)
            total += 1
            assert res.status != ("sat" if delta > 0 else "unsat"), (seed, delta, res)
            decided += res.status in ("sat", "unsat")
    assert decided >= 20, (decided, total)


def test_a_split_is_needed_and_closes_what_crown_alone_cannot():
    """A case where the root bound is negative but the property holds: the splits prove it."""
    found = False
    for seed in range(40):
        net, lo, hi, spec = _case(seed)
        minima = brute_force_min_margin(net, lo, hi, spec).per_disjunct
        s = shifted_spec(spec, minima, 0.01)
        res = _run(net, lo, hi, s)
        if res.status == "unsat" and res.domains > len(spec.disjuncts):
            found = True
            break
    assert found


@pytest.mark.parametrize("beside", [False, True])
def test_the_pipeline_decides_like_brute_force_with_activation_splitting(beside, monkeypatch):
    """Input splitting off (``max_input_dim`` 1): activation splitting then the MILP decide; also
    with the MILPs beside splitting (started at once), the two racing (:mod:`gpuopt.engine.beside`)."""
    import gpuopt.engine.beside

    monkeypatch.setattr(gpuopt.engine.beside, "DELAY_SECONDS", 0.0)
    config = VerifyConfig(device="cpu", split=VerifyConfig().split.__class__(max_input_dim=1), use_attack=False,
                          milp_beside=beside)
    for seed in range(8):
        net, lo, hi, spec = _case(seed + 100)
        minima = brute_force_min_margin(net, lo, hi, spec).per_disjunct
        for delta in (0.01, -0.01):
            v = verify(net, Box(lo, hi), shifted_spec(spec, minima, delta), timeout=60, config=config)
            assert v.status.value == ("unsat" if delta > 0 else "sat"), (seed, delta, v.status, v.message)


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "`batch_size` must be an integer >= 1, got 0"),
    (dict(steps=-1), "`steps` must be an integer >= 0, got -1"),
    (dict(leaf_steps=1.5), "`leaf_steps` must be an integer >= 0, got 1.5"),
    (dict(lr_beta=0), "`lr_beta` must be a number > 0, got 0"),
    (dict(max_domains=True), "`max_domains` must be an integer >= 1, got True"),
    (dict(handoff=-1), "`handoff` must be an integer >= 0, got -1"),
    (dict(refine=1), "`refine` must be True, False or 'auto', got 1"),
    (dict(branching="sb"), "`branching` must be one of babsr, fsb, got 'sb'"),
    (dict(candidates=0), "`candidates` must be an integer >= 1, got 0"),
    (dict(retry_steps=-2), "`retry_steps` must be an integer >= 0, got -2"),
    (dict(retry_steps=True), "`retry_steps` must be an integer >= 0, got True"),
    (dict(selection="best"), "`selection` must be one of worst, fair, got 'best'"),
    (dict(disjunct_domains=-1), "`disjunct_domains` must be an integer >= 0, got -1"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        ReluSplitConfig(**kwargs)


def test_a_network_without_relu_is_refused_by_name():
    """Found by review: an affine network crashed with an IndexError inside the bound passes."""
    from gpuopt.layers import Dense
    from gpuopt.network import Network

    net = Network([Dense(np.eye(2), np.zeros(2))], (2,))
    lo, hi = torch.tensor([-1.0, -1.0], dtype=torch.float64), torch.tensor([1.0, 1.0], dtype=torch.float64)
    with pytest.raises(InvalidInputError, match="at least one ReLU layer"):
        relu_split(net, lo, hi, [(np.array([[1.0, 0.0]]), np.array([-2.0]), None)], crown(net, lo[None], hi[None]))


def test_benchmark_instance_decided_by_activation_splitting(benchmarks_dir):
    """mnist_fc 256x2 prop_6 at 0.03 (unsat): CROWN leaves it open, the MILP once timed out at 60 s."""
    from gpuopt.verify import verify_instance

    base = benchmarks_dir / "vnncomp2022" / "mnist_fc"
    v = verify_instance(base / "onnx" / "mnist-net_256x2.onnx", base / "vnnlib" / "prop_6_0.03.vnnlib", timeout=60,
                        config=VerifyConfig(device="cpu"))
    assert v.status.value == "unsat" and v.decided_by == "relu-split", v.message
    assert math.isfinite(v.margin_lower) and v.margin_lower > 0


def test_the_lookahead_splits_only_splittable_neurons_and_runs_out_like_the_intercept_score(monkeypatch):
    """Every neuron the lookahead picks is an unstable neuron not split yet in that domain (its
    score is >= 0); a domain with none left gets -1, as the intercept score then has none."""
    import gpuopt.relu_split as rs

    real, seen = rs._lookahead, []

    def spy(ops, parents, *args, **kwargs):
        choice = real(ops, parents, *args, **kwargs)
        seen.append((torch.cat(parents.scores, dim=1), choice))
        return choice

    monkeypatch.setattr(rs, "_lookahead", spy)
    for seed in range(8):
        net, lo, hi, spec = _case(seed)
        minima = brute_force_min_margin(net, lo, hi, spec).per_disjunct
        _run(net, lo, hi, shifted_spec(spec, minima, 1e-3), config=ReluSplitConfig(branching="fsb", batch_size=2))
    assert seen
    picks = 0
    for scores, choice in seen:
        has = (scores >= 0).any(dim=1)
        assert torch.equal(choice >= 0, has)
        rows = torch.nonzero(has).flatten()
        assert bool((scores[rows, choice[rows]] >= 0).all())
        picks += int(has.sum())
    assert picks > 10


def test_the_lookahead_ends_the_stall_of_one_sided_splits(benchmarks_dir, monkeypatch):
    """mnist_fc 256x4 prop_3_0.05 (unsat): the intercept score keeps splitting last-layer neurons
    whose active child keeps the parent's bound; it took 4,139 domains. The lookahead, preferring a
    split whose weaker child gains, took 441. The same count would take about 15 s here."""
    import gpuopt.relu_split as rs
    from gpuopt.verify import verify_instance

    real, results = rs.relu_split, []

    def spy(*args, **kwargs):
        results.append(real(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(rs, "relu_split", spy)
    base = benchmarks_dir / "vnncomp2022" / "mnist_fc"
    config = VerifyConfig(device="cpu", relu_split=ReluSplitConfig(branching="fsb"))
    v = verify_instance(base / "onnx" / "mnist-net_256x4.onnx", base / "vnnlib" / "prop_3_0.05.vnnlib", timeout=300,
                        config=config)
    assert v.status.value == "unsat" and v.decided_by == "relu-split", v.message
    assert len(results) == 1 and results[0].domains < 1500, results[0].domains


def test_splitting_benchmark_runs_and_compares(benchmarks_dir, tmp_path):
    """``benchmarks/relu_split.py`` on two real instances: one JSON line each, decided, none wrong
    against the reference labels, and ``--compare`` prints the side-by-side table."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "relu_split.py"
    out = tmp_path / "split.jsonl"
    run = subprocess.run([sys.executable, str(script), "--suites", "mnist_fc", "--limit", "2", "--timeout", "20",
                          "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2
    assert all(r["status"] in ("sat", "unsat") and not r["wrong"] and r["reference"] == r["status"] for r in records)
    table = subprocess.run([sys.executable, str(script), "--compare", str(out), str(out)], capture_output=True,
                           text=True, timeout=60)
    assert table.returncode == 0 and "2 instances; decided:" in table.stdout


def test_fair_order_goes_round_the_disjuncts_nearest_to_closing_first():
    bound = torch.tensor([-1.0, -5.0, -0.1, -3.0, -2.0])
    tag = torch.tensor([0, 0, 1, 1, 2])
    # rank 0: each disjunct's weakest (-5, -3, -2), highest first; then rank 1 (-0.1, -1)
    assert _fair_order(bound, tag).tolist() == [4, 3, 1, 2, 0]
    assert _fair_order(bound[:0], tag[:0]).tolist() == []


@pytest.mark.parametrize("cap", [1, 3])
def test_given_up_disjuncts_stay_open_and_their_open_bound_holds(cap):
    """With ``disjunct_domains``, a disjunct is dropped after that many splits: it is not closed,
    the search is never ``unsat`` because of it, it hands on no leaves, and its ``open_bound`` (the
    worst bound of its domains when dropped) is still a lower bound of its true minimum margin."""
    given_up = 0
    for seed in range(12):
        net, lo, hi, spec, minima = _solved_case(seed)
        for delta in (0.02, 1e-3, -1e-3):
            res = _run(net, lo, hi, shifted_spec(spec, minima, delta),
                       config=ReluSplitConfig(batch_size=1, selection="fair", disjunct_domains=cap, handoff=64))
            assert len(res.open_bound) == len(spec.disjuncts)
            for k, closed in enumerate(res.closed):
                if res.status == "sat":
                    continue
                # the true minimum of the shifted disjunct's margin is delta
                assert min(res.open_bound[k], res.proven_bound[k]) <= delta + 1e-9, (seed, delta, k, res)
                if closed:
                    assert delta > 0 and res.open_bound[k] == math.inf
                elif res.leaves[k] is None and math.isfinite(res.open_bound[k]):
                    given_up += 1
            if not all(res.closed):
                assert res.status != "unsat", (seed, delta, res)
    assert given_up > 0


def test_steps_leave_out_the_domains_already_proven(monkeypatch):
    """A domain proven by its starting multipliers takes no optimisation steps, and one proven by a
    step leaves the batch for the later steps: with one disjunct unreachable by far and one that
    needs steps, the steps' passes carry only the second; the verdicts stay those of brute force."""
    import importlib

    rs = importlib.import_module("gpuopt.relu_split")
    real = rs._backward
    step_batches = []

    def spy(*args, **kwargs):
        if kwargs.get("pad") is False:
            step_batches.append(args[0].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(rs, "_backward", spy)
    for seed in range(12):
        net, lo, hi, spec, minima = _solved_case(seed)
        tight = shifted_spec(spec, minima, 1e-3).disjuncts[0]
        far = (np.array([[-1.0, 1.0]]), np.array([-1e6]))  # y0 - y1 >= 1e6: unreachable by far
        step_batches.clear()
        res = _run(net, lo, hi, OutputSpec([far, tight], 2), config=ReluSplitConfig(batch_size=4))
        assert res.closed[0] and res.status in ("unsat", "timeout", "unknown")
        if step_batches:
            assert step_batches[0] == 1, (seed, step_batches[:5])  # the root steps: the tight disjunct only
            break
    else:
        pytest.fail("no case needed optimisation steps")


def test_domain_store_keeps_every_row_through_pops_and_growth():
    """The open-domain store against a plain set: after random pushes (past its capacity, so
    that it grows) and pops (holes filled from the end), it holds exactly the rows pushed and not
    popped, each row's fields still together, and a pop returns exactly the rows asked for."""
    from gpuopt.relu_split import _Domains, _DomainStore

    gen = torch.Generator().manual_seed(5)
    widths = (3, 2)
    factor = {f: i + 1 for i, f in enumerate(_Domains.FIELDS)}
    next_id = [0]

    def value(ids, f, j):
        """Every entry of row ``id``, field ``f``, layer ``j`` (a row torn apart shows)."""
        return (ids * 10 * factor[f] + j) % 100 if f == "sign" else ids * 10.0 * factor[f] + j

    def batch(k):
        ids = torch.arange(next_id[0], next_id[0] + k)
        next_id[0] += k
        fields = {}
        for f in _Domains.FIELDS:
            shape = (lambda n: (k, 2, n)) if f in ("alpha", "beta") else (lambda n: (k, n))
            dtype = torch.int8 if f == "sign" else torch.float64
            fields[f] = [value(ids, f, j).to(dtype).reshape((k,) + (1,) * (len(shape(n)) - 1)).expand(shape(n)).clone()
                         for j, n in enumerate(widths)]
        return _Domains(*[fields[f] for f in _Domains.FIELDS], ids.to(torch.float64), ids % 4, ids * 7.0 + 0.5)

    def ids_of(d):
        if d is None or not len(d):
            return []
        ids = d.bound.long()
        assert torch.equal(d.tag, ids % 4)
        assert torch.equal(d.plain, ids * 7.0 + 0.5)
        for f in _Domains.FIELDS:
            for j, t in enumerate(getattr(d, f)):
                want = value(ids, f, j).to(t.dtype)
                assert torch.equal(t.reshape(len(d), -1), want[:, None].expand(len(d), t[0].numel())), (f, j)
        return sorted(ids.tolist())

    store = _DomainStore(batch(5))
    held = set(range(5))
    for _ in range(40):
        k = int(torch.randint(0, 150, (1,), generator=gen))
        store.push(batch(k))
        held |= set(range(next_id[0] - k, next_id[0]))
        assert len(store) == len(held)
        idx = torch.randperm(len(store), generator=gen)[:int(torch.randint(0, len(store) + 1, (1,), generator=gen))]
        asked = sorted(store.view().bound[idx].long().tolist()) if len(store) else []
        assert ids_of(store.pop(idx)) == asked
        held -= set(asked)
        assert ids_of(store.view()) == sorted(held)
    store.push(None)
    assert len(store) == len(held)


def _scaled_pair(seed: int, power: int):
    """A 4-12-12-2 net and its copy whose output layer is scaled by ``2^power`` (exact in floats),
    with one spec row shifted to hold by 1e-3 on the first and the same spec scaled on the copy."""
    from gpuopt.layers import Dense, ReLU
    from gpuopt.network import Network

    rng = np.random.default_rng(seed)
    sizes = [4, 12, 12, 2]
    weights = [(rng.normal(size=(m, n)) / math.sqrt(n), 0.5 * rng.normal(size=m)) for n, m in zip(sizes, sizes[1:])]

    def build(factor):
        layers = []
        for i, (W, b) in enumerate(weights):
            last = i == len(weights) - 1
            layers += [Dense(W * factor if last else W, b * factor if last else b)] + ([] if last else [ReLU()])
        return Network(layers, (4,))

    net, scaled = build(1.0), build(2.0 ** power)
    centre = rng.normal(size=4)
    lo, hi = centre - 0.5, centre + 0.5
    spec = OutputSpec([(rng.normal(size=(1, 2)), np.zeros(1))], 2)
    minima = brute_force_min_margin(to_alternating_dense(net), lo, hi, spec).per_disjunct
    spec = shifted_spec(spec, minima, 1e-3)
    (A, b), = spec.disjuncts
    return net, scaled, lo, hi, spec, OutputSpec([(A, b * 2.0 ** power)], 2)


def test_the_search_is_the_same_when_the_outputs_are_scaled_down():
    """Scaling a network's outputs (and the spec's right-hand sides) by 2^-12 changes no margin's
    sign: the same verdict, and about the same number of domains, since the split multipliers'
    steps shrink with the outputs (:func:`gpuopt.relu_split.beta_step_scale`); with the step
    size as configured, the scaled searches needed several times the domains."""
    checked = 0
    for seed in range(30):
        net, scaled, lo, hi, spec, spec_s = _scaled_pair(seed, -12)
        config = ReluSplitConfig(batch_size=2, refine=False)
        base = _run(net, lo, hi, spec, config=config)
        if base.status != "unsat" or base.domains < 30:
            continue  # the case must take a search
        small = _run(scaled, lo, hi, spec_s, config=config)
        assert small.status == "unsat", (seed, small)
        assert small.domains <= 1.5 * base.domains + 8, (seed, base.domains, small.domains)
        checked += 1
        if checked == 3:
            break
    assert checked == 3


def test_progress_sees_lower_bounds_of_every_disjunct_and_can_end_the_search():
    """``progress`` gets, per disjunct, a value never above its true minimum margin (brute force),
    at every step; answering true ends the search there (a timeout, not a verdict), and the
    result's ``min(open_bound, proven_bound)`` is then exactly the last value it was given."""
    ended = 0
    for seed in range(12):
        net, lo, hi, spec, minima = _solved_case(seed)
        for delta in (0.02, 1e-3):
            seen = []

            def progress(lowest, seen=seen):
                seen.append(lowest())
                return len(seen) >= 3

            problem = Problem(net, Box(lo, hi), shifted_spec(spec, minima, delta))
            bounds = crown(net, torch.as_tensor(lo)[None], torch.as_tensor(hi)[None])
            res = relu_split(net, torch.as_tensor(lo), torch.as_tensor(hi),
                             [(A, b, None) for A, b in problem.spec.disjuncts], bounds, problem=problem,
                             config=ReluSplitConfig(batch_size=1, handoff=0), progress=progress)
            for low in seen:
                assert len(low) == len(spec.disjuncts)
                assert all(v <= delta + 1e-9 for v in low), (seed, delta, low)
            if len(seen) >= 3:
                ended += 1
                assert res.status == "timeout", (seed, delta, res.status)
                assert tuple(min(a, b) for a, b in zip(res.open_bound, res.proven_bound)) == seen[-1]
            else:
                assert res.status == "unsat", (seed, delta, res.status)
    assert ended >= 4, ended
