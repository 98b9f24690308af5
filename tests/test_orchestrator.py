"""The hybrid orchestrator: batch stages here, task stages in the pool, many items at once.

* task stages of earlier items run while later items are bounded (stage events overlap);
* an item decided by one task has its other tasks cancelled at once;
* workers killed during MILPs fail only their task, which is retried: every item still ends with
  the verdict of a fault-free run (and of the inline pipeline).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from gpuopt.demo import load_demo_model
from gpuopt.engine import LocalExecutor
from gpuopt.engine.orchestrator import ItemSource, run_hybrid
from gpuopt.engine.stages import STAGES, Stage, TaskSpec
from gpuopt.runs import _build_sample
from gpuopt.verdict import Status
from gpuopt.verify import VerifyConfig
from tests._orchestrator_tasks import die_first, sleep_task


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def demo():
    return load_demo_model()


def _sources(demo, idx, eps, config, timeout=30.0):
    net, images, labels = demo
    return [ItemSource(f"s{i}", lambda i=i: _build_sample(net, images[i], int(labels[i]), eps, (0.0, 1.0),
                                                          timeout, config)) for i in idx]


def _run(sources, stages=STAGES, workers=2, *, warm=False, **kw):
    """The verdicts of a run; ``warm``: every worker runs a task first (so that a task's timing does
    not include a worker's start-up on a loaded machine)."""
    with LocalExecutor(workers) as ex:
        if warm:
            for h in [ex.submit(sleep_task, 0.3, "warm", 0.0, 0.0, timeout=60) for _ in range(workers)]:
                h.result()
        out = dict(run_hybrid(sources, ex, stages=stages, **kw))
    assert all(not isinstance(v, BaseException) for v in out.values()), out
    return {k: v.verdict for k, v in out.items()}


# a stage that sleeps in the pool, then leaves the item open (or decides it, see _merge)
def _plan_sleep(item):
    return [TaskSpec(sleep_task, (3.0, "open"), "sleep")]


def _plan_race(item):
    return [TaskSpec(sleep_task, (0.3, "decide"), "fast"), TaskSpec(sleep_task, (60.0, "open"), "slow")]


def _merge(item, spec, value):
    if value["kind"] == "decide":
        item.decide(Status.UNKNOWN, decided_by="race", message="the fast task decided")


def _finish(item):
    return "open"


def _slow_batch(items):
    """A batch stage that takes 2 s (as bounding a large group on a device would)."""
    time.sleep(2.0)
    return ["open"] * len(items)


def test_task_stages_of_earlier_items_overlap_the_batch_stages_of_later_ones(demo):
    config = VerifyConfig(device="cpu", use_attack=False)
    stages = (STAGES[0], Stage("slow", "batch", _slow_batch, lambda c, it: True),
              Stage("sleep", "task", _plan_sleep, lambda c, it: True, _merge, _finish))
    # eps large enough that the bounds leave every item open
    got = _run(_sources(demo, range(3), 0.3, config), stages, workers=2, group_size=1)
    assert len(got) == 3 and all(v.status is Status.UNKNOWN for v in got.values())
    ev = {k: {e["stage"]: e for e in v.events} for k, v in got.items()}
    # a later item's batch stage ran while the first item's task slept in a worker
    sleep = ev["s0"]["sleep"]
    assert any(ev[k]["slow"]["start"] < sleep["end"] and ev[k]["slow"]["end"] > sleep["start"] for k in ("s1", "s2"))


def test_an_item_decided_by_one_task_cancels_its_other_tasks(demo):
    config = VerifyConfig(device="cpu", use_attack=False)
    stages = (STAGES[0], Stage("race", "task", _plan_race, lambda c, it: True, _merge, _finish))
    t0 = time.monotonic()
    got = _run(_sources(demo, [0], 0.3, config), stages, workers=2)
    assert got["s0"].decided_by == "race"
    assert time.monotonic() - t0 < 20  # the 60 s task was cancelled, its worker killed


def _dying_milp(marker_dir, how):
    """The MILP stage where the first MILP task of each item to start kills its worker (each
    respawn costs a worker start-up, so not every task dies)."""
    milp = next(st for st in STAGES if st.name == "milp")

    def plan(item):
        return [TaskSpec(die_first, (str(marker_dir / f"item{id(item)}"), how, s.fn, *s.args), s.label, s.meta)
                for s in milp.run(item)]

    return tuple(st for st in STAGES if st.name != "milp") + (Stage("milp", "task", plan, milp.enabled, milp.merge,
                                                                    milp.finish),)


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_workers_killed_during_milps_fail_only_their_task(demo, tmp_path, how):
    # no attack, no CROWN, no LP stage, no activation splitting: the MILP decides the items that IBP leaves open
    config = VerifyConfig(device="cpu", use_attack=False, use_crown=False, use_relu_split=False, alpha_steps=0,
                          use_lp=False)
    idx = range(4)
    clean = _run(_sources(demo, idx, 0.06, config, timeout=120.0), workers=2)
    faulty = _run(_sources(demo, idx, 0.06, config, timeout=120.0), _dying_milp(tmp_path, how), workers=2)
    assert set(faulty) == set(clean) == {f"s{i}" for i in idx}
    assert any(v.decided_by == "milp" for v in clean.values())
    assert len(list(tmp_path.iterdir())) > 0  # MILP tasks ran, and died once each
    for k in clean:
        assert faulty[k].status is clean[k].status, (k, faulty[k], clean[k])
    # and the inline pipeline agrees
    from gpuopt.engine.stages import run_stages

    for src in _sources(demo, idx, 0.06, config, timeout=120.0):
        assert run_stages(src.build()).verdict.status is clean[src.key].status


def test_a_bad_item_ends_as_an_error_and_the_run_goes_on(demo):
    config = VerifyConfig(device="cpu")

    def broken():
        raise ValueError("no such sample")

    sources = _sources(demo, [0], 0.01, config) + [ItemSource("bad", broken)]
    with LocalExecutor(1) as ex:
        out = dict(run_hybrid(sources, ex))
    assert isinstance(out["bad"], ValueError) and out["s0"].verdict.status in (Status.UNSAT, Status.SAT)
    assert np.isfinite(out["s0"].verdict.seconds)


def _plan_fast(item):
    return [TaskSpec(sleep_task, (0.3, "decide"), "fast")]


def _plan_late(item):
    return [TaskSpec(sleep_task, (2.0, "decide"), "late")]


def test_a_decision_merged_late_keeps_the_time_its_task_ended(demo):
    # one worker: while s1's 2 s batch stage blocks this process, s0's 0.3 s task ends in the pool
    # and is merged only afterwards; s0's verdict is timed at its task's end, not at the merge
    config = VerifyConfig(device="cpu", use_attack=False)
    stages = (STAGES[0], Stage("slow", "batch", _slow_batch, lambda c, it: True),
              Stage("fast", "task", _plan_fast, lambda c, it: True, _merge, _finish))
    got = _run(_sources(demo, range(2), 0.3, config), stages, workers=1, group_size=1, max_active=2)
    ev = {k: {e["stage"]: e for e in v.events} for k, v in got.items()}
    s0 = got["s0"]
    assert s0.decided_by == "race"
    task_end = ev["s0"]["fast"]["end"]
    assert ev["s1"]["slow"]["end"] > task_end + 1.0  # the merge really was late
    assert abs(s0.seconds - (task_end - ev["s0"]["bounds"]["start"])) < 0.25, (s0.seconds, ev["s0"])


def test_a_task_that_ends_after_the_deadline_ends_the_item_timeout(demo):
    # the task decides at 2 s, within the cancel grace of a 1 s deadline: too late all the same
    config = VerifyConfig(device="cpu", use_attack=False)
    stages = (STAGES[0], Stage("late", "task", _plan_late, lambda c, it: True, _merge, _finish))
    got = _run(_sources(demo, [0], 0.3, config, timeout=1.0), stages, workers=1)
    v = got["s0"]
    assert v.status is Status.TIMEOUT and v.decided_by != "race", v
    assert "after the item's deadline" in v.message


def _slow_batch_1s(items):
    time.sleep(1.0)
    return ["open"] * len(items)


def test_results_merge_between_the_groups_of_an_admission(demo):
    # one worker, groups of one, room for three: s0's 0.3 s task ends while s1 is bounded (1 s);
    # it is merged before s2's group is bounded, not after every group of the admission
    config = VerifyConfig(device="cpu", use_attack=False)
    stages = (STAGES[0], Stage("slow", "batch", _slow_batch_1s, lambda c, it: True),
              Stage("fast", "task", _plan_fast, lambda c, it: True, _merge, _finish))
    yielded = {}
    with LocalExecutor(1) as ex:
        ex.submit(sleep_task, 0.0, "warm", 0.0, 0.0, timeout=60).result()  # the worker is up first
        for key, state in run_hybrid(_sources(demo, range(3), 0.3, config), ex, stages=stages, group_size=1,
                                     max_active=3):
            yielded[key] = (time.time(), state.verdict)
    assert all(v.decided_by == "race" for _, v in yielded.values())
    s2_slow = next(e for e in yielded["s2"][1].events if e["stage"] == "slow")
    assert yielded["s0"][0] < s2_slow["start"], (yielded["s0"][0], s2_slow)
