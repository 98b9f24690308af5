"""The stage table: order, events, early exits, and a custom row."""

import time

import numpy as np

from gpuopt import Box, OutputSpec, Problem, VerifyConfig, verify
from gpuopt.engine.item import ItemState
from gpuopt.engine.stages import STAGES, run_stages
from gpuopt.network import Dense, Network, ReLU
from gpuopt.verdict import Status


def small_net():
    return Network([Dense([[1.0, -1.0], [0.5, 2.0]], [0.0, -0.1]), ReLU(), Dense([[1.0, 1.0]], [0.0])],
                   input_shape=(2,))


def test_events_record_each_stage_that_ran_in_order():
    net = small_net()
    # y >= 0 always (a sum of ReLUs): y <= -1 is unreachable, proven by the bounds alone
    v = verify(net, Box([-1, -1], [1, 1]), OutputSpec([([[1.0]], [-1.0])], 1), timeout=10)
    assert v.status is Status.UNSAT and [e["stage"] for e in v.events] == ["bounds"]
    assert v.events[0]["outcome"] == "decided" and v.events[0]["start"] <= v.events[0]["end"]
    # y <= 0.5 is reachable: bounds leave it open, the attack decides
    v = verify(net, Box([-1, -1], [1, 1]), OutputSpec([([[1.0]], [0.5])], 1), timeout=10)
    assert v.status is Status.SAT and [e["stage"] for e in v.events] == ["bounds", "attack"]
    assert [e["outcome"] for e in v.events] == ["open", "decided"]
    assert set(v.stage_seconds) == {"bounds", "attack"}
    assert v.to_dict()["events"] == [dict(e) for e in v.events]


def test_disabled_stages_do_not_run_and_the_item_ends_unknown():
    net = small_net()
    config = VerifyConfig(use_attack=False, use_input_split=False, use_relu_split=False, use_milp=False, use_crown=False, use_walk=False,
                          alpha_steps=0)
    v = verify(net, Box([-1, -1], [1, 1]), OutputSpec([([[1.0]], [0.5])], 1), timeout=10, config=config)
    assert v.status is Status.UNKNOWN and [e["stage"] for e in v.events] == ["bounds"]


def test_a_custom_stage_is_a_row_of_the_table():
    net = small_net()
    calls = []

    def oracle(item):
        calls.append(sorted(item.open))
        item.decide(Status.UNKNOWN, decided_by="oracle", message="custom stage ran")
        return "decided"

    problem = Problem(net, Box([-1, -1], [1, 1]), OutputSpec([([[1.0]], [0.5])], 1))
    item = ItemState(problems=[problem], config=VerifyConfig(), t0=time.monotonic(), deadline=None)
    table = (STAGES[0], ("oracle", oracle, lambda c, it: True)) + STAGES[1:]
    v = run_stages(item, table).verdict
    assert calls == [[(0, 0)]] and v.decided_by == "oracle"
    assert [e["stage"] for e in v.events] == ["bounds", "oracle"]  # later stages skipped


def test_a_passed_deadline_ends_the_item_between_stages():
    net = small_net()
    problem = Problem(net, Box([-1, -1], [1, 1]), OutputSpec([([[1.0]], [0.5])], 1))
    item = ItemState(problems=[problem], config=VerifyConfig(), t0=time.monotonic(), deadline=time.monotonic() - 1)
    v = run_stages(item).verdict
    assert v.status is Status.TIMEOUT and [e["stage"] for e in v.events] == ["bounds"]
    assert np.isfinite(v.margin_lower)


def test_task_stages_never_conclude_unsat_with_a_disjunct_left_open():
    """Defence in depth: a task stage's finish says unsat only when its results closed every
    open disjunct, whatever its notes say."""
    from gpuopt.engine.stages import finish_input_split, finish_milp

    net = small_net()
    problem = Problem(net, Box([-1, -1], [1, 1]), OutputSpec([([[1.0]], [0.5])], 1))
    for finish in (finish_input_split, finish_milp):
        item = ItemState(problems=[problem], config=VerifyConfig(), t0=time.monotonic(), deadline=None)
        run_stages(item, STAGES[:1])  # IBP leaves (0, 0) open
        item.verdict = None
        assert item.open == {(0, 0)}
        finish(item)
        assert item.verdict is None or item.verdict.status is Status.UNKNOWN


def cancelling_net():
    """``y = relu(x) - relu(x) = 0`` through two hidden layers (the second an identity on ``h >= 0``):
    interval bounds and CROWN leave ``y <= -0.5`` open on ``[-1, 1]``, though it is unreachable."""
    return Network([Dense([[1.0], [1.0]], [0.0, 0.0]), ReLU(), Dense(np.eye(2), np.zeros(2)), ReLU(),
                    Dense([[1.0, -1.0]], [0.0])], input_shape=(1,))


def _run(config):
    item = ItemState(config=config, t0=time.monotonic(), deadline=time.monotonic() + 20,
                     problems=[Problem(cancelling_net(), Box([-1.0], [1.0]), OutputSpec([([[1.0]], [-0.5])], 1))])
    return run_stages(item)


def test_where_input_splitting_follows_the_attack_runs_one_round_and_no_intermediate_alpha(monkeypatch):
    import gpuopt.engine.stages as stages

    calls = []
    real = stages.alpha_crown_bounds
    monkeypatch.setattr(stages, "alpha_crown_bounds", lambda *a, **k: calls.append(1) or real(*a, **k))
    item = _run(VerifyConfig())
    assert item.verdict.status is Status.UNSAT and item.verdict.decided_by == "input-split"
    assert item.stage_notes["attack"]["rounds"] == 1 and not calls
    # without input splitting the same item gets the attack's rounds (patience 2: at least 3
    # without an improvement) and alpha-CROWN on its intermediate layer
    item = _run(VerifyConfig(use_input_split=False))
    assert item.stage_notes["attack"]["rounds"] >= 3 and calls
    assert item.verdict.status is not Status.SAT
