"""Adversarial cases for the orchestrator's deadline rules, the batched attack objective and the
CUDA warm-up (each test's docstring says the rule it checks; those marked "Was a bug" failed before
the fix that followed the review)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from gpuopt.engine.orchestrator import ItemSource
from gpuopt.engine.stages import STAGES, Stage, TaskSpec
from gpuopt.runs import _build_sample
from gpuopt.verdict import Status
from gpuopt.verify import VerifyConfig
from tests._orchestrator_tasks import sleep_task
from tests import test_orchestrator as orchestrator_tests

# the orchestrator tests' fixtures and runner
demo = orchestrator_tests.demo
_keep_torch_threads = orchestrator_tests._keep_torch_threads
_run = orchestrator_tests._run
_merge_decide = orchestrator_tests._merge  # a "decide" result decides the item (decided_by="race")
_finish_open = orchestrator_tests._finish


# ------------------------------------------------------------------ orchestrator: deadlines
def _source(demo, key, i, timeout, config):
    net, images, labels = demo
    return ItemSource(key, lambda: _build_sample(net, images[i], int(labels[i]), 0.3, (0.0, 1.0), timeout, config))


def _run_warm(sources, stages, workers, **kw):
    return _run(sources, stages, workers, warm=True, **kw)


def _slow_for_long_items(items):
    """A batch stage that takes 4 s for items with a long budget (s1), none for s0: it blocks
    this process while s0's tasks end in the pool."""
    if any(it.deadline - it.t0 > 10 for it in items):
        time.sleep(4.0)
    return ["open"] * len(items)


def _beside_slow_batch(demo, name, plan, merge, finish, s0_budget, workers):
    """s0 (``s0_budget`` seconds) runs the task stage ``name`` while this process is busy with s1's
    4 s batch stage (s1: 60 s); the verdicts by key."""
    config = VerifyConfig(device="cpu", use_attack=False)
    stages = (STAGES[0], Stage("slow", "batch", _slow_for_long_items, lambda c, it: True),
              Stage(name, "task", plan, lambda c, it: True, merge, finish))
    return _run_warm([_source(demo, "s0", 0, s0_budget, config), _source(demo, "s1", 1, 60.0, config)], stages,
                     workers=workers, group_size=1, max_active=2)


def _plan_late_then_fast(item):
    # submitted in this order: the late task's handle comes first in the pool's bookkeeping
    return [TaskSpec(sleep_task, (3.0, "open"), "late"), TaskSpec(sleep_task, (0.2, "decide"), "fast")]


def test_an_in_time_decision_is_not_lost_to_a_late_sibling_merged_before_it(demo):
    """Was a bug (today it fails earlier, with the KeyError crash of the test below; with that fixed, the
    order problem remains). s0 (2 s budget) runs two tasks: "fast" decides at ~0.3 s, in time; "late" ends at ~3 s,
    after the deadline. This process is busy with s1's 4 s batch stage meanwhile, so both are merged
    together afterwards, the late one first (wait_any returns handles in submission order):
    ``_merge_in_time`` ends s0 ``timeout`` on the late one and the fast task's in-time decision is
    dropped. By the rule (a result counts if its task ended by the deadline) s0 was decided by the
    fast task at ~0.3 s; the outcome must not depend on the order in which finished tasks are merged
    (e.g. merge the in-time results first, or sort by their "end" stamps)."""
    got = _beside_slow_batch(demo, "pair", _plan_late_then_fast, _merge_decide, _finish_open, 2.0, workers=2)
    v = got["s0"]
    ev = {e["stage"]: e for e in v.events}
    assert v.decided_by == "race" and v.status is Status.UNKNOWN, (v.status, v.message, ev)
    assert v.seconds < 2.0


def _plan_two_deciding(item):
    return [TaskSpec(sleep_task, (0.2, "decide"), "first"), TaskSpec(sleep_task, (0.4, "decide"), "second")]


def test_two_finished_tasks_of_one_item_merged_together_do_not_crash_the_run(demo):
    """Was a bug (crash; pre-existing in the merge loop, but the new late rule adds a trigger: any late
    result now ends its item). s0's two tasks both decide, in time, while this process runs s1's 4 s
    batch stage, so wait_any returns both at once. Merging the first decides s0 and ``end(act)``
    pops the second handle from ``owner``; the loop then reaches the second handle and
    ``owner.pop(h)`` raises KeyError out of run_hybrid: the whole run dies. Correct: s0 is decided
    by its first task, the sibling is skipped (``owner.pop(h, None)`` and continue), s1 goes on."""
    got = _beside_slow_batch(demo, "two", _plan_two_deciding, _merge_decide, _finish_open, 30.0, workers=2)
    assert got["s0"].decided_by == "race" and got["s1"].decided_by == "race"


def _plan_fast_open(item):
    return [TaskSpec(sleep_task, (0.3, "open"), "fast")]


def _merge_nothing(item, spec, value):
    pass


def _finish_unsat(item):
    # as finish_milp / finish_relu_split / finish_input_split do: the proof verdict comes from finish
    item.decide(Status.UNSAT, decided_by="finish", message="every task proved its part")
    return "decided"


def test_a_decision_made_by_finish_after_a_late_merge_keeps_the_time_its_last_task_ended(demo):
    """Was a bug. The UNSAT verdicts of the MILP, activation- and input-splitting stages are decided in the
    stage's ``finish`` (after the last task's merge), not in ``merge``, so ``_merge_in_time``'s
    re-timing never applies to them. s0 (2 s budget): its only task ends at ~0.3 s, in time, but is
    merged after s1's 4 s batch stage; finish then decides UNSAT timed at the merge (~4 s): an
    UNSAT verdict reported as taking twice the item's whole timeout. It should be timed at the task's
    end (~0.3 s), as a decision made in ``merge`` is."""
    got = _beside_slow_batch(demo, "proof", _plan_fast_open, _merge_nothing, _finish_unsat, 2.0, workers=1)
    v = got["s0"]
    ev = {e["stage"]: e for e in v.events}
    assert v.status is Status.UNSAT and v.decided_by == "finish", v
    task_end = ev["proof"]["end"] - ev["bounds"]["start"]
    assert v.seconds <= task_end + 0.25, (v.seconds, task_end)


def _plan_long_open(item):
    return [TaskSpec(sleep_task, (4.0, "open"), "long")]


def _plan_by_budget(item):
    # s0 (long budget) occupies the only worker; s1 (1 s budget) waits in the queue
    return _plan_long_open(item) if item.deadline - item.t0 > 10 else [TaskSpec(sleep_task, (0.1, "decide"), "fast")]


def test_an_expired_item_with_only_queued_tasks_ends_at_once_without_dispatching(demo):
    """s1's task waits for the one worker (busy with s0's 4 s task); s1 expires at 1 s with
    nothing running and ends ``timeout`` at once (not after DEADLINE_GRACE), its task never started."""
    config = VerifyConfig(device="cpu", use_attack=False)
    stages = (STAGES[0], Stage("t", "task", _plan_by_budget, lambda c, it: True, _merge_decide, _finish_open))
    got = _run_warm([_source(demo, "s0", 0, 60.0, config), _source(demo, "s1", 1, 1.0, config)], stages,
                    workers=1, group_size=2, max_active=2)
    v = got["s1"]
    assert v.status is Status.TIMEOUT and v.decided_by != "race", v
    assert 1.0 <= v.seconds < 1.8, v.seconds
    assert not any(e["stage"] == "t" for e in v.events), v.events  # never dispatched
    assert got["s0"].status is Status.UNKNOWN


def test_an_item_without_a_deadline_merges_its_decision_and_is_timed_at_the_task_end(demo):
    """Was a bug (latent, pre-existing in dispatch; no package caller builds a deadline-less item for
    run_hybrid, only for the inline run_stages): ItemState.deadline may be None (left() = inf) and
    _merge_in_time handles it, but dispatch submits with ``timeout=budget + DEADLINE_GRACE + 5.0``
    = inf, which the executor refuses (InvalidInputError: `timeout` must be ... finite). Correct:
    no hard limit (timeout=None) for a task of an item without a deadline; the item is decided by
    its task and timed within [0, the task's end]."""
    config = VerifyConfig(device="cpu", use_attack=False)
    net, images, labels = demo

    def build():
        item = _build_sample(net, images[0], int(labels[0]), 0.3, (0.0, 1.0), 30.0, config)
        item.deadline = None
        return item

    stages = (STAGES[0], Stage("t", "task", lambda it: [TaskSpec(sleep_task, (0.3, "decide"), "fast")],
                               lambda c, it: True, _merge_decide, _finish_open))
    got = _run_warm([ItemSource("s0", build)], stages, workers=1)
    v = got["s0"]
    ev = {e["stage"]: e for e in v.events}
    assert v.decided_by == "race"
    assert 0.0 <= v.seconds <= ev["t"]["end"] - ev["bounds"]["start"] + 0.1


# ------------------------------------------------------------------ the attack objective
def _identity_net():
    """y = (relu(x), relu(-x)): y0 - y1 = x on any box."""
    from gpuopt.network import Dense, Network, ReLU

    return Network([Dense(np.array([[1.0], [-1.0]]), np.zeros(2)), ReLU(),
                    Dense(np.eye(2), np.zeros(2))], (1,))


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_an_attack_that_succeeds_early_reports_success_and_the_exact_margin(steps, dtype):
    """unsafe iff x >= 0.5 on [-1, 1] (row -(y0 - y1) <= -0.5), with a padding row
    (b = +inf) and a padding disjunct (b[k, 0] = -inf); whatever the step count (early stop looks
    every 4 steps), success and a margin equal to its float64 recomputation at the returned point."""
    from gpuopt.attacks import AttackConfig, pgd_attack

    net = _identity_net()
    A = np.zeros((2, 2, 2))
    b = np.full((2, 2), np.inf)
    A[0, 0] = [-1.0, 1.0]
    b[0, 0] = -0.5
    b[1, 0] = -np.inf  # padding disjunct
    res = pgd_attack(net, [-1.0], [1.0], A, b, config=AttackConfig(restarts=4, steps=steps, seed=0), dtype=dtype)
    x = res.x.double().numpy()[0]
    m64 = 0.5 - x[0]
    assert bool(res.success[0]) and m64 <= 0
    assert float(res.margin[0]) == pytest.approx(m64, abs=1e-6 if dtype == torch.float32 else 1e-15)


def test_spec_margins_gradient_is_finite_and_exact_with_inf_padding():
    """the gradient through the batched rows with +-inf right-hand sides is the float64
    gradient of the selected row (no NaN from inf entries)."""
    from gpuopt.attacks import search

    net = _identity_net()
    A = torch.zeros((1, 2, 2, 2), dtype=torch.float64)
    b = torch.full((1, 2, 2), math.inf, dtype=torch.float64)
    A[0, 0, 0] = torch.tensor([-1.0, 1.0])
    b[0, 0, 0] = -0.5
    b[0, 1, 0] = -math.inf
    obj = search.spec_margins(net, A, b)
    x = torch.tensor([[[0.25], [-0.75]]], dtype=torch.float64, requires_grad=True)
    items = torch.arange(1)
    m = obj(x, items)
    (g,) = torch.autograd.grad(m.sum(), x)
    assert m.tolist() == [[0.25, 1.25]]
    assert g.tolist() == [[[-1.0], [-1.0]]]
    m2 = obj(x.detach(), items)  # cached rows, same answer
    assert m2.tolist() == [[0.25, 1.25]]


def test_spec_margins_with_an_items_tensor_modified_in_place_gets_fresh_rows():
    """The rows are cached per ``items`` tensor and its version: a tensor changed in place is not
    served the rows of its old contents."""
    from gpuopt.attacks import search

    net = _identity_net()
    A = torch.zeros((2, 1, 1, 2), dtype=torch.float64)
    A[0, 0, 0] = torch.tensor([1.0, -1.0])  # item 0: x
    A[1, 0, 0] = torch.tensor([-1.0, 1.0])  # item 1: -x
    b = torch.zeros((2, 1, 1), dtype=torch.float64)
    obj = search.spec_margins(net, A, b)
    x = torch.tensor([[[0.5]]], dtype=torch.float64)
    items = torch.tensor([0])
    assert obj(x, items).item() == 0.5
    items[0] = 1
    assert obj(x, items).item() == -0.5
    assert obj(x, items.clone()).item() == -0.5


def test_float32_attack_without_confirm_never_reports_success_with_a_positive_margin():
    """Was a bug (pre-existing, not introduced by the baddbmm change: the old einsum objective disagrees
    with the final recomputation just as often). In float32 the descent's margin (the objective over
    restarts, a batched forward) and the final margin falsify recomputes at the returned point (a
    one-row forward + einsum) round differently; ``success = success | (margin <= 0)`` keeps the
    descent's success, so pgd_attack returns success=True together with margin > 0 at the same point.
    The returned success and margin should agree (success iff margin <= 0, or both from one
    computation). Found by searching random 3-8-6 networks for a spec whose right-hand side sits
    one float32 ulp from the output at a degenerate box (lower == upper)."""
    from gpuopt.attacks import AttackConfig, pgd_attack
    from tests.helpers import random_dense_network

    rng = np.random.default_rng(2)
    R = 16
    for _ in range(400):
        net = random_dense_network(rng, 3, [8], 6)
        A = np.zeros((1, 2, 6))
        A[0, 0] = rng.normal(size=6)
        x0 = rng.uniform(-1, 1, 3)
        y = net.forward(torch.tensor(x0, dtype=torch.float32)[None])
        c = (torch.tensor(A[0, 0], dtype=torch.float32) @ y[0])
        for bval in (torch.nextafter(c, torch.tensor(-np.inf)), c, torch.nextafter(c, torch.tensor(np.inf))):
            b = np.array([[float(bval), np.inf]])
            res = pgd_attack(net, x0, x0, A, b, config=AttackConfig(restarts=R, steps=2, seed=0))
            assert not (bool(res.success[0]) and float(res.margin[0]) > 0), (res.success, res.margin)


# ------------------------------------------------------------------ warm-up and the CLI
def test_warm_up_never_touches_cuda_for_the_cpu(monkeypatch):
    """the CPU path starts no thread and calls no CUDA function."""
    from gpuopt import devices

    monkeypatch.setattr(devices, "_warmed", {})
    called = []
    monkeypatch.setattr(torch.cuda, "init", lambda: called.append("init"))
    assert devices.warm_up("cpu") is None and devices.warm_up(torch.device("cpu")) is None
    assert called == [] and devices._warmed == {}


def test_warm_up_from_many_threads_starts_one_thread_per_device(monkeypatch):
    """concurrent calls for one device share one warm-up thread."""
    import threading

    from gpuopt import devices

    monkeypatch.setattr(devices, "_warmed", {})
    calls = []
    real_ones = torch.ones

    def fake_ones(shape, device=None):
        calls.append(str(device))
        time.sleep(0.05)
        return real_ones(shape)

    monkeypatch.setattr(torch, "ones", fake_ones)
    got = []
    ts = [threading.Thread(target=lambda: got.append(devices.warm_up("cuda:0"))) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len({id(t) for t in got}) == 1
    got[0].join(10)
    assert calls == ["cuda:0"]


@pytest.mark.parametrize("extra", [[], ["--device", "cpu"]])
@pytest.mark.parametrize("command", ["attack", "verify"])
def test_cli_on_the_cpu_with_and_without_device(command, extra, tmp_path, capsys):
    """On a machine without CUDA: attack and verify answer sat on a tiny instance."""
    from gpuopt.cli import main
    from tests.test_cli import _write_tiny_onnx, _write_vnnlib

    onnx = tmp_path / "tiny.onnx"
    _write_tiny_onnx(onnx)
    spec = tmp_path / "p.vnnlib"
    _write_vnnlib(spec, 2, 2, -1.0, 1.0, "(<= Y_0 1000.0)")
    argv = [command, str(onnx), str(spec), "--timeout", "20"]
    if command == "attack":
        argv += ["--restarts", "4", "--steps", "5"]
    assert main(argv + extra) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "sat"
