"""MILPs beside activation splitting (:mod:`gpuopt.engine.beside`): their verdicts equal brute
force, activation splitting stops once they decide, a cancelled HiGHS run returns at once and
proves nothing, and the switch is validated."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from gpuopt.errors import InvalidInputError
from gpuopt.milp import encode_bigm
from gpuopt.milp.highs import MilpStatus, cancellable, cancelled, solve_milp
from gpuopt.regions import Box
from gpuopt.verify import VerifyConfig, verify

from helpers import brute_force_min_margin, random_dense_network, shifted_spec
from test_relu_split import _case

#: input splitting off (activation splitting takes every net), the attack off (the MILPs must find
#: the counterexamples themselves), and the stages after splitting off: only the MILPs beside it
#: can decide
ONLY_BESIDE = dict(device="cpu", split=VerifyConfig().split.__class__(max_input_dim=1), use_attack=False,
                   use_walk=False, use_lp=False, milp_refine_share=0.0, milp_beside=True)


@pytest.fixture(autouse=True)
def no_delay(monkeypatch):
    """The MILPs start with splitting here (the default waits 10 s, a tenth of the item's time)."""
    import gpuopt.engine.beside as beside

    monkeypatch.setattr(beside, "DELAY_SECONDS", 0.0)


def test_the_milps_wait_their_delay_and_a_stop_within_it_runs_none():
    """``BesideMilps(..., delay)``: stopped within its delay, no task ran; without one, each ran in
    turn with the time left, and ``decided`` reads their results."""
    from gpuopt.engine.beside import BesideMilps
    from gpuopt.engine.stages import TaskSpec

    calls = []

    def task(tag, budget, submitted):
        calls.append((tag, budget))
        return {"kind": "proven"}

    specs = [TaskSpec(task, (k,), f"t{k}", {"problem": 0, "disjunct": k}) for k in range(2)]
    late = BesideMilps(specs, lambda: 50.0, delay=5.0).start()
    time.sleep(0.2)
    assert late.stop(wait=2.0) == [] and calls == [] and not late.decided()
    now = BesideMilps(specs, lambda: 50.0).start()
    now._thread.join(5.0)
    assert [c[0] for c in calls] == [0, 1] and all(b == 50.0 for _, b in calls) and now.decided()
    assert BesideMilps([], lambda: 50.0).decided() is False  # nothing to run decides nothing
    partial = BesideMilps(specs, lambda: 50.0, complete=False).start()  # some open disjunct had no MILP
    partial._thread.join(5.0)
    assert len(partial.results) == 2 and not partial.decided()


def test_a_milp_called_after_a_cancel_starts_no_highs_run():
    """(Found by review: each call after a cancel built and started a HiGHS run, then abandoned
    it, running on for seconds.) A cancelled caller's ``solve_milp`` returns before HiGHS starts."""
    net, lo, hi, spec = _case(5)
    from gpuopt.bounds import ibp
    import torch

    b = ibp(net, torch.as_tensor(lo[None]), torch.as_tensor(hi[None]))
    model = encode_bigm(net.affine_blocks(), [(l[0].numpy(), u[0].numpy()) for l, u in b.pre_activation],
                        (b.output[0][0].numpy(), b.output[1][0].numpy()), lo, hi, *spec.disjuncts[0])
    event = threading.Event()
    event.set()
    before = sum(t.name == "gpuopt-highs" for t in threading.enumerate())
    with cancellable(event):
        res = solve_milp(model, time_limit=60, threshold=-1e9, deadline=time.monotonic() + 60)
    assert res.raw_status == "cancelled before it began" and not res.proves_above(-1e9)
    assert sum(t.name == "gpuopt-highs" for t in threading.enumerate()) == before
    assert solve_milp(model, time_limit=60, threshold=-1e9).proves_above(-1e9)  # outside the block it runs


def test_an_error_beside_splitting_leaves_its_verdict(monkeypatch):
    """(Found by review: a MemoryError of the MILP thread replaced splitting's ``unsat``.) The
    MILPs beside fail at once; activation splitting still decides, and its verdict stands."""
    import gpuopt.engine.stages as stages

    def broken(*args):
        raise MemoryError("no room for the model")

    config = VerifyConfig(**dict(ONLY_BESIDE, use_milp=True))
    checked = 0
    for seed in range(20):
        net, lo, hi, spec = _case(seed + 500)
        minima = brute_force_min_margin(net, lo, hi, spec).per_disjunct
        shifted = shifted_spec(spec, minima, 0.01)
        with monkeypatch.context() as m:
            m.setattr(stages, "milp_task", broken)
            v = verify(net, Box(lo, hi), shifted, timeout=60, config=config)
        if not any(e["stage"] == "milp_beside" for e in v.events) or v.decided_by != "relu-split":
            continue
        assert v.status.value == "unsat", v.message
        checked += 1
    assert checked >= 2


def _splitting_that_waits(seen: dict):
    """A stand-in for activation splitting that decides nothing and waits until the MILPs beside
    it say they decided (or 30 s)."""
    from gpuopt.engine.beside import current_stop

    def task(net_ref, problem_data, disjuncts, pre, config, share, budget, submitted):
        stop, t0 = current_stop(), time.monotonic()
        seen["had_stop"] = stop is not None
        while stop is not None and not stop() and time.monotonic() - t0 < 30:
            time.sleep(0.01)
        seen["waited"] = time.monotonic() - t0
        return {"kind": "timeout", "closed": {}, "domains": 0, "open_domains": 1, "worst": -1.0, "leaves": {},
                "start": time.time(), "end": time.time()}
    return task


@pytest.mark.parametrize("seed", range(6))
def test_the_milps_beside_splitting_decide_like_brute_force_and_stop_it(seed, monkeypatch):
    """With activation splitting replaced by a search that never decides, and every stage after
    it off, the verdict comes from the MILPs beside it: ``unsat`` when each disjunct's exact
    minimum is 0.01 above the threshold, ``sat`` (a float64-checked point) when 0.01 below;
    splitting was asked to stop long before its 30 s."""
    import gpuopt.engine.stages as stages

    seen = {}
    monkeypatch.setattr(stages, "relu_split_task", _splitting_that_waits(seen))
    net, lo, hi, spec = _case(seed + 300)
    minima = brute_force_min_margin(net, lo, hi, spec).per_disjunct
    for delta in (0.01, -0.01):
        shifted = shifted_spec(spec, minima, delta)
        seen.clear()
        v = verify(net, Box(lo, hi), shifted, timeout=60, config=VerifyConfig(**ONLY_BESIDE))
        if not any(e["stage"] == "relu_split" for e in v.events):
            continue  # decided before splitting began (the bounds, or MILPs of the network's tail)
        assert v.status.value == ("unsat" if delta > 0 else "sat"), (seed, delta, v.status, v.message)
        assert v.decided_by == "milp" and seen["had_stop"] and seen["waited"] < 20, (v.message, seen)
        if delta > 0:
            assert "beside activation splitting" in v.message
            assert v.margin_lower > 0
        else:
            y = net.forward64(np.asarray(v.counterexample)[None])[0]
            assert np.all(v.counterexample >= lo) and np.all(v.counterexample <= hi)
            assert any(np.all(A @ y <= b) for A, b in shifted.disjuncts)
        assert any(e["stage"] == "milp_beside" for e in v.events)


def test_off_by_default_where_no_cpu_is_spare_and_splitting_then_runs_alone(monkeypatch):
    """``milp_beside=None`` (auto) with no CPU to spare (the test default) starts no MILP beside
    splitting: the stand-in gets no stop, and the verdict is left to the later stages."""
    import gpuopt.engine.stages as stages

    seen = {}
    monkeypatch.setattr(stages, "relu_split_task", _splitting_that_waits(seen))
    net, lo, hi, spec = _case(301)
    minima = brute_force_min_margin(net, lo, hi, spec).per_disjunct
    config = VerifyConfig(**dict(ONLY_BESIDE, milp_beside=None, use_milp=False))
    v = verify(net, Box(lo, hi), shifted_spec(spec, minima, 0.01), timeout=30, config=config)
    if any(e["stage"] == "relu_split" for e in v.events):
        assert seen["had_stop"] is False and v.status.value == "unknown"
        assert not any(e["stage"] == "milp_beside" for e in v.events)


def test_a_cancelled_milp_returns_at_once_and_proves_nothing():
    """A MILP run inside ``cancellable(event)`` stops within a second of ``event.set()`` and
    proves nothing; outside the block nothing is cancelled."""
    rng = np.random.default_rng(7)
    net = random_dense_network(rng, 12, [60, 60, 60], 3)
    lo, hi = -np.ones(12) * 2, np.ones(12) * 2
    from gpuopt.bounds import ibp
    import torch

    b = ibp(net, torch.as_tensor(lo[None]), torch.as_tensor(hi[None]))
    pre = [(l[0].numpy(), u[0].numpy()) for l, u in b.pre_activation]
    model = encode_bigm(net.affine_blocks(), pre, (b.output[0][0].numpy(), b.output[1][0].numpy()), lo, hi,
                        np.array([[1.0, -1.0, 0.0]]), np.array([0.0]))
    event = threading.Event()
    assert not cancelled()
    with cancellable(event):
        threading.Timer(0.5, event.set).start()
        t0 = time.monotonic()
        res = solve_milp(model, time_limit=120, threshold=np.inf, deadline=time.monotonic() + 120)
        took = time.monotonic() - t0
        assert cancelled()
    assert not cancelled()
    if res.status is not MilpStatus.OPTIMAL:  # (solved within half a second: nothing to cancel)
        assert took < 3.0, took
        assert res.status is MilpStatus.TIME_LIMIT and not res.proves_above(-1e9)


def test_splitting_asked_to_stop_ends_at_its_root():
    """``relu_split(..., stop=...)`` answering true ends the search before its first split."""
    import torch

    from gpuopt.bounds import crown
    from gpuopt.problem import Problem
    from gpuopt.relu_split import relu_split

    found = 0
    for seed in range(40):
        net, lo, hi, spec = _case(seed)
        minima = brute_force_min_margin(net, lo, hi, spec).per_disjunct
        s = shifted_spec(spec, minima, 0.001)
        runs = [relu_split(net, torch.as_tensor(lo), torch.as_tensor(hi), [(A, b, None) for A, b in s.disjuncts],
                           crown(net, torch.as_tensor(lo)[None], torch.as_tensor(hi)[None]),
                           problem=Problem(net, Box(lo, hi), s), deadline=time.monotonic() + 20, stop=stop)
                for stop in (None, lambda: True)]
        full, stopped = runs
        if full.status != "unsat" or full.domains <= len(s.disjuncts):
            continue  # decided at the root: nothing for a stop to cut short
        assert stopped.status == "timeout" and stopped.domains == len(s.disjuncts), (seed, stopped)
        found += 1
        if found == 3:
            break
    assert found == 3


@pytest.mark.parametrize("value", ["yes", 1, 0.0])
def test_milp_beside_is_validated(value):
    with pytest.raises(InvalidInputError, match="milp_beside"):
        VerifyConfig(milp_beside=value)
