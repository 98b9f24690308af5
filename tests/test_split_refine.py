"""Refinement of intermediate bounds by activation splitting per neuron (``milp_refine(...,
method="split")``, ``VerifyConfig(refine_method="split")``) and the sub-networks it runs on
(:class:`gpuopt.network.BlockChain`, :meth:`Network.prefix`). Checked here:

* the refined bounds never loosen and contain every sampled pre-activation (dense nets, the
  dyadic nets of ``test_milp_refine_exact``, whose other adversarial nets run both methods there,
  and the graph nets of ``test_milp_refine_graph``), and contain the exact range of every neuron
  (brute force / enumeration);
* every neuron whose exact range is clearly one-sided is made stable on its side, none whose range
  crosses 0 is (a neuron 1.5e-4 clear of 0 included: its domains with no unstable neuron left get
  their exact LP);
* a deadline mid-refinement leaves sound bounds; the result records its method and says whether it
  rests on HiGHS's tolerances;
* ``net.prefix(k).forward64`` equals the block form's ``z_k`` (dense and graph nets), and bad
  indices or blocks are refused;
* through ``verify`` the verdicts equal brute force on problems shifted to +-1e-3, and an ``unsat``
  verdict on split-refined bounds names activation splitting, not HiGHS's tolerances;
* bad methods are refused by the config, by ``milp_refine`` and by the command line.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from gpuopt import Status, VerifyConfig, verify
from gpuopt.bounds import ibp, intermediate_bounds
from gpuopt.bounds.milp_refine import PROVERS, milp_refine
from gpuopt.errors import InvalidInputError
from gpuopt.layers import Dense
from gpuopt.network import AffineBlock, BlockChain, Network

from helpers import affine_view_values, box_points, random_dense_network, shifted_problem, small_robustness_case
from test_milp_refine import _case, _exact_range, assert_sound_on_samples
from test_milp_refine_exact import _assert_sound, _dyadic, _exact_layer, _net
from test_milp_refine_exact import _pre as _pre_exact
from test_milp_refine_graph import (EXACT_CASES, METHODS, NETS, SAMPLE_CASES, _assert_sound_on_points, _box,
                                    _check_matching, _exact_case, assert_contains_exact_ranges, net_residual,
                                    refine_random_dags)
from test_milp_refine_graph import _pre as _pre_graph


def _split(net, pre, lo, hi, **kw):
    kw.setdefault("neuron_time", 5.0)
    return milp_refine(net.affine_blocks(), pre, lo, hi, method="split", **kw)


# ============================================================================ dense nets
@functools.lru_cache(maxsize=None)
def _dense_case(seed: int, witnesses: bool = True):
    """``(net, lo, hi, pre, refinement by splitting)`` of ``test_milp_refine._case(seed)`` (cached:
    the exactness and binding tests reuse it)."""
    _, net, lo_x, hi_x, pre = _case(seed)
    return net, lo_x, hi_x, pre, _split(net, pre, lo_x, hi_x, neuron_time=10.0, witnesses=witnesses)


@pytest.mark.parametrize("seed", range(6))
def test_split_refined_bounds_hold_on_samples_and_never_loosen(seed):
    """20000 samples and the box corners: every pre-activation inside the refined bounds, which are
    inside the input bounds; the unstable counts are those of the bounds."""
    net, lo_x, hi_x, pre, res = _dense_case(seed)
    assert res.method == "split"
    assert_sound_on_samples(np.random.default_rng(1000 + seed), net, lo_x, hi_x, pre, res)


def _check_exact(net, lo_x, hi_x, pre, res) -> int:
    """Every neuron left unstable by ``pre`` whose exact range (brute force, one enumeration per
    layer) stays 1e-4 clear of 0 is stable on its side in ``res``; none whose range crosses 0 is;
    every refined bound contains the exact range. Returns the neurons checked."""
    checked = 0
    for k in range(1, len(pre)):
        l0, u0 = pre[k]
        l, u = res.pre[k]
        emin, emax = _exact_layer(net, k, lo_x, hi_x)
        for j in np.flatnonzero((l0 < 0) & (u0 > 0)):
            low, high = emin[j], emax[j]
            checked += 1
            if high < -1e-4:
                assert u[j] <= 0, (k, j, high, u[j])
            elif low > 1e-4:
                assert l[j] >= 0, (k, j, low, l[j])
            elif low < -1e-9 and high > 1e-9:
                assert l[j] < 0 < u[j], (k, j, low, high)
            assert l[j] <= low + 1e-9 and u[j] >= high - 1e-9, (k, j, low, high, l[j], u[j])
    return checked


@pytest.mark.parametrize("seed", range(6))
def test_split_stabilises_exactly_the_neurons_whose_exact_range_is_one_sided(seed):
    """Every neuron left unstable by the bounds whose exact range (brute force) stays 1e-4 clear of
    0 is made stable on its side; none whose range crosses 0 is; every refined bound contains the
    exact range."""
    assert _check_exact(*_dense_case(seed)) > 0


def test_split_stabilises_something_somewhere():
    """The test above binds: over its seeds splitting makes some neuron stable that the bounds left
    unstable (and the counts agree with the bounds)."""
    made = 0
    for seed in range(6):
        res = _dense_case(seed)[-1]
        assert res.stabilised == sum(a - b for a, b in zip(res.unstable_before, res.unstable_after))
        made += res.stabilised
    assert made > 0


@pytest.mark.parametrize("seed", [1, 5])
def test_split_without_witnesses_narrows_crossing_neurons_to_sound_bounds(seed):
    """Without the witness search every unstable neuron gets its searches: those that cross 0 end
    open, and their worst open bound narrows the bound (close to the exact range); still every
    refined bound contains the exact range and the stabilised ones are those above."""
    net, lo_x, hi_x, pre, res = _dense_case(seed, witnesses=False)
    assert _check_exact(net, lo_x, hi_x, pre, res) > 0
    assert res.tightened > 0  # the worst-bound path ran
    assert res.stabilised == _dense_case(seed)[-1].stabilised


@functools.lru_cache(maxsize=None)
def _near_boundary_case(eps: float = 1.5e-4):
    """``_case(4)`` with the bias of layer 2's neuron 2 moved so that its exact minimum over the box
    is ``+eps`` (CROWN's bounds still leave it unstable): ``(net, lo, hi, pre, k, j, exact range,
    refinement by splitting)``."""
    _, net, lo_x, hi_x, _ = _case(4)
    k, j = 2, 2
    low, _ = _exact_range(net, k, j, lo_x, hi_x)
    layers = list(net.layers)
    bias = np.array(layers[2 * k].bias, dtype=np.float64)
    bias[j] += eps - low
    layers[2 * k] = Dense(np.array(layers[2 * k].weight), bias)
    net = Network(layers, net.input_shape)
    inter = intermediate_bounds(net, torch.tensor(lo_x)[None], torch.tensor(hi_x)[None])
    pre = [(l[0].numpy(), u[0].numpy()) for l, u in inter.pre_activation]
    exact = _exact_range(net, k, j, lo_x, hi_x)
    return net, lo_x, hi_x, pre, k, j, exact, _split(net, pre, lo_x, hi_x, neuron_time=10.0)


def test_a_neuron_1_5e_4_clear_of_zero_is_refined_soundly():
    """The near-boundary neuron: its exact minimum is +1.5e-4 and CROWN leaves it unstable; the MILP
    method makes it active; splitting's bounds contain the exact range and its lower bound comes
    within 1e-5 of 0 (made stable or not: see the test below)."""
    net, lo_x, hi_x, pre, k, j, (low, high), res = _near_boundary_case()
    assert abs(low - 1.5e-4) < 1e-9 and pre[k][0][j] < 0 < pre[k][1][j]
    assert milp_refine(net.affine_blocks(), pre, lo_x, hi_x, neuron_time=10.0).pre[k][0][j] >= 0
    l, u = res.pre[k]
    assert l[j] <= low + 1e-9 and u[j] >= high - 1e-9, (l[j], u[j], low, high)
    assert l[j] >= -1e-5, l[j]
    x = lo_x + (hi_x - lo_x) * np.random.default_rng(0).random((20000, 3))
    for (lk, uk), z in zip(res.pre, affine_view_values(net, x)[0]):
        assert np.all(z >= lk - 1e-12) and np.all(z <= uk + 1e-12)


def test_split_stabilises_a_neuron_1_5e_4_clear_of_zero():
    """Splitting makes the near-boundary neuron active, as the MILP method does: a domain with no
    unstable neuron left gets its exact LP even without a problem to check points against (found
    while writing these tests: without it that domain's bound stayed at -7.7e-7 after its leaf
    steps, where the exact minimum is +1.5e-4)."""
    _, _, _, _, k, j, _, res = _near_boundary_case()
    assert res.pre[k][0][j] >= 0, res.pre[k][0][j]


@pytest.mark.parametrize("seed", [0, 3])
def test_split_ignores_parallel_and_gives_the_same_bounds(seed, monkeypatch):
    """``parallel`` applies to MILPs only: with splitting no thread pool is made, and the bounds and
    counts equal those of ``parallel=1``."""
    import gpuopt.bounds.milp_refine as mr

    _, net, lo_x, hi_x, pre = _case(seed)
    one = _split(net, pre, lo_x, hi_x)

    def no_pool(*a, **kw):
        raise AssertionError("a thread pool was made for activation splitting")

    monkeypatch.setattr(mr, "ThreadPoolExecutor", no_pool)
    three = _split(net, pre, lo_x, hi_x, parallel=3)
    assert (one.milps, one.stabilised, one.tightened) == (three.milps, three.stabilised, three.tightened)
    for (l1, u1), (l3, u3) in zip(one.pre, three.pre):
        assert np.array_equal(l1, l3) and np.array_equal(u1, u3)


# ============================================================================ adversarial nets
DYADIC = [(0, "ibp"), (1, "ibp"), (2, "ibp"), (3, "crown"), (4, "crown"), (5, "ibp")]


@functools.lru_cache(maxsize=None)
def _dyadic_case(seed: int, kind: str):
    net, lo, hi = _dyadic(seed, boundary=True)
    pre = _pre_exact(net, lo, hi, kind)
    return net, lo, hi, pre, _split(net, pre, lo, hi)


@pytest.mark.parametrize("seed, kind", DYADIC)
def test_split_on_dyadic_nets_with_ranges_touching_zero_is_sound(seed, kind):
    """Neurons whose exact maximum (minimum) is exactly 0: not made stable the wrong way."""
    net, lo, hi, pre, res = _dyadic_case(seed, kind)
    _assert_sound(net, pre, res, lo, hi)


def test_the_dyadic_split_tests_bind():
    """Over those cases splitting moves some bound and makes some neuron stable."""
    moved = stab = 0
    for seed, kind in DYADIC:
        _, _, _, pre, res = _dyadic_case(seed, kind)
        moved += sum(int(((a != c) | (b != d)).sum()) for (a, b), (c, d) in zip(pre, res.pre))
        stab += res.stabilised
    assert moved > 0 and stab > 0


# ============================================================================ graph nets
@pytest.mark.parametrize("case, method", [(1, "ibp"), (3, "ibp"), (6, "ibp"), (7, "crown")])
def test_split_refined_bounds_hold_on_samples_of_graph_nets(case, method):
    """Residual, branch, concat and deep-skip nets (``test_milp_refine_graph.SAMPLE_CASES``): sound
    on samples, corners and vertices; the passthrough (carried) coordinates untouched."""
    kind, size, radius = SAMPLE_CASES[case]
    rng = np.random.default_rng(100 + case)
    net = NETS[kind](rng, **size)
    lo, hi = _box(rng, net.input_size, radius)
    pre = _pre_graph(net, lo, hi, METHODS[method])
    res = _split(net, pre, lo, hi, neuron_time=1.0)
    assert not net.is_chain and any(b.passthrough is not None for b in net.affine_blocks()[:-1])
    assert res.milps > 0
    x = box_points(np.random.default_rng(case), lo, hi, 6000, max_corner_dim=8, n_random_vertices=300)
    assert _assert_sound_on_points(net, pre, res, x, _check_matching(net, x)) > 0


@functools.lru_cache(maxsize=None)
def _graph_exact_case(kind: str, seed: int):
    net, lo, hi = _exact_case(kind, seed)
    pre = _pre_graph(net, lo, hi, ibp)
    return net, lo, hi, pre, _split(net, pre, lo, hi, neuron_time=10.0)


@pytest.mark.parametrize("kind, seed", EXACT_CASES)
def test_split_refined_bounds_contain_the_exact_ranges_of_graph_nets(kind, seed):
    """Every refined bound of a ReLU coordinate contains its exact range (enumeration); one whose
    range is 1e-4 clear of 0 is made stable on that side, one whose range crosses 0 by 1e-6 is not."""
    net, lo, hi, pre, res = _graph_exact_case(kind, seed)
    assert_contains_exact_ranges(net, lo, hi, pre, res, seed, clear=1e-4)


def test_the_graph_exact_range_split_tests_bind():
    """Over those cases splitting makes some coordinate stable that IBP left unstable."""
    stabilised = 0
    for kind, seed in EXACT_CASES:
        stabilised += _graph_exact_case(kind, seed)[-1].stabilised
    assert stabilised >= 5, stabilised


def test_split_on_random_dags_is_sound():
    """12 random DAGs with 2+ hidden levels (some input coordinates fixed), IBP or CROWN bounds,
    each refinement cut off after 1.5 s (searches of 0.3 s, doubling per pass)."""
    nets, searches, changed = refine_random_dags(12, lambda net, pre, lo, hi, seed: _split(
        net, pre, lo, hi, neuron_time=0.3, deadline=time.monotonic() + 1.5))
    assert nets == 12 and searches > 10 and changed > 0, (nets, searches, changed)


# ============================================================================ result, deadline
def test_only_milps_rest_on_solver_tolerances():
    """``on_solver_tolerances`` is True after MILPs were solved, False for splitting (even with
    searches run) and for a MILP refinement that solved none; ``method`` is recorded."""
    _, net, lo_x, hi_x, pre = _case(0)
    split = _split(net, pre, lo_x, hi_x)
    milp = milp_refine(net.affine_blocks(), pre, lo_x, hi_x, neuron_time=5.0)
    none = milp_refine(net.affine_blocks(), pre, lo_x, hi_x, deadline=time.monotonic() - 1.0)
    assert split.method == "split" and split.milps > 0 and split.on_solver_tolerances is False
    assert milp.method == "milp" and milp.milps > 0 and milp.on_solver_tolerances is True
    assert none.method == "milp" and none.milps == 0 and none.on_solver_tolerances is False
    assert set(PROVERS) == {"milp", "split"}


def test_split_stops_at_a_past_deadline_with_the_input_bounds():
    _, net, lo_x, hi_x, pre = _case(1)
    res = _split(net, pre, lo_x, hi_x, deadline=time.monotonic() - 1.0)
    assert res.milps == 0 and res.method == "split"
    for (l0, u0), (l, u) in zip(pre, res.pre):
        assert np.array_equal(l0, l) and np.array_equal(u0, u)


@pytest.mark.parametrize("seconds", [0.02, 0.1, 0.5])
def test_a_deadline_mid_split_refinement_leaves_sound_bounds(seconds):
    """Cut off part-way on a residual net (some layers refined, searches interrupted): still sound,
    and the refinement ends soon after the deadline."""
    rng = np.random.default_rng(11)
    net = net_residual(rng, n=12, w=12)
    lo, hi = _box(rng, net.input_size, 0.8)
    pre = _pre_graph(net, lo, hi, ibp)
    res = _split(net, pre, lo, hi, deadline=time.monotonic() + seconds, neuron_time=0.05)
    assert res.seconds < seconds + 5.0
    x = box_points(rng, lo, hi, 5000, n_random_vertices=300)
    _assert_sound_on_points(net, pre, res, x, _check_matching(net, x))


# ============================================================================ BlockChain, Network.prefix
def _dense_net():
    return random_dense_network(np.random.default_rng(5), 4, [7, 6, 5], 3)


def _graph_net():
    return net_residual(np.random.default_rng(3), n=6, w=8)


@pytest.mark.parametrize("make", [_dense_net, _graph_net])
def test_prefix_forward_equals_the_pre_activations(make):
    """``net.prefix(k).forward64(x)`` is the block form's ``z_k`` (``helpers.affine_view_values``,
    ReLU off on passthrough coordinates), for every hidden layer ``k``; sizes agree."""
    net = make()
    blocks = net.affine_blocks()
    x = np.random.default_rng(0).normal(size=(300, net.input_size)) * 2.0
    zs, _ = affine_view_values(net, x)
    assert len(zs) == len(blocks) - 1
    if make is _graph_net:
        assert any(b.passthrough is not None and np.any(b.passthrough) for b in blocks[:-1])
    for k, z in enumerate(zs):
        chain = net.prefix(k)
        assert isinstance(chain, BlockChain) and len(chain.affine_blocks()) == k + 1
        assert chain.input_size == net.input_size and chain.output_size == z.shape[1]
        assert chain.n_relus == sum(b.matrix.shape[0] for b in blocks[:k])
        np.testing.assert_allclose(chain.forward64(x), z, rtol=0, atol=1e-12 * max(1.0, np.abs(z).max()))
    whole = BlockChain(blocks)
    np.testing.assert_allclose(whole.forward64(x), net.forward64(x), rtol=0, atol=1e-10)
    chain = net.prefix(len(zs) - 1)
    ops = chain.linear_ops("cpu", torch.float64)
    assert len(ops) == len(zs) and chain.linear_ops("cpu", torch.float64) is ops  # cached
    for op, blk in zip(ops, blocks):
        assert op.shape == blk.matrix.shape
        assert (op.passthrough is None) == (blk.passthrough is None)


@pytest.mark.parametrize("k", [-1, 3, 4, True, False, 1.0, "0", None])
def test_prefix_refuses_an_index_outside_the_hidden_layers(k):
    """The dense net has hidden layers 0..2: -1, 3 (the output block), bools, floats and strings
    are refused."""
    with pytest.raises(InvalidInputError, match="`k`"):
        _dense_net().prefix(k)


def test_prefix_accepts_numpy_integers():
    net = _dense_net()
    assert net.prefix(np.int64(2)).output_size == net.prefix(2).output_size == 5


def test_block_chain_refuses_no_blocks_and_mismatched_shapes():
    a = AffineBlock(sp.csr_matrix(np.ones((3, 2))), np.zeros(3))
    b = AffineBlock(sp.csr_matrix(np.ones((4, 3))), np.zeros(4))
    with pytest.raises(InvalidInputError, match="at least one"):
        BlockChain([])
    with pytest.raises(InvalidInputError, match="block 1"):
        BlockChain([a, a])
    with pytest.raises(InvalidInputError, match="block 2"):
        BlockChain([a, b, a])
    chain = BlockChain([a, b])
    assert (chain.input_size, chain.output_size, chain.n_relus) == (2, 4, 3)
    assert np.array_equal(chain.forward64(np.array([[1.0, -2.0]])), np.zeros((1, 4)))  # relu(-1) = 0


# ============================================================================ through verify
SPLIT_CONFIG = dict(use_input_split=False, use_attack=False, milp_refine_share=0.5, milp_refine_probe_share=0.0,
                    refine_method="split")


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("delta", [1e-3, -1e-3])
def test_pipeline_with_split_refinement_agrees_with_brute_force(seed, delta):
    """Exact minimum margin moved to +1e-3 (never sat) or -1e-3 (never unsat), with the refinement
    by splitting on (no probe first); no verdict mentions a MILP refinement."""
    net, region, spec = small_robustness_case(seed)
    problem, _ = shifted_problem(net, region, spec, seed, delta)
    v = verify(net, problem.region, problem.spec, timeout=60, config=VerifyConfig(**SPLIT_CONFIG))
    assert v.status is (Status.UNSAT if delta > 0 else Status.SAT) or v.status in (Status.UNKNOWN, Status.TIMEOUT), v
    assert "refined by MILP" not in v.message


def test_an_unsat_verdict_on_split_refined_bounds_says_so():
    """A property proven after the split refinement moved some bound names activation splitting per
    neuron, and never HiGHS's tolerances for the refinement."""
    said = 0
    for seed in range(8):
        net, region, spec = small_robustness_case(seed)
        problem, _ = shifted_problem(net, region, spec, seed, 1e-3)
        config = VerifyConfig(**{**SPLIT_CONFIG, "use_crown": False, "alpha_steps": 0})
        v = verify(net, problem.region, problem.spec, timeout=60, config=config)
        assert "refined by MILP" not in v.message, v.message
        if v.status is Status.UNSAT and v.decided_by not in ("ibp", "crown", "alpha-crown"):
            if "refined by activation splitting (" in v.message:
                assert "refine" in v.stage_seconds
                if v.decided_by == "relu-split":
                    assert "HiGHS's tolerances" not in v.message, v.message
                said += 1
    assert said > 0


# ============================================================================ refused settings
@pytest.mark.parametrize("bad", ["lp", "MILP", "", None, 1])
def test_a_bad_refine_method_is_refused_by_the_config(bad):
    with pytest.raises(InvalidInputError, match="refine_method"):
        VerifyConfig(refine_method=bad)


def test_the_config_takes_split_and_milp():
    """Splitting is the pipeline's default; the MILP method can be chosen."""
    assert VerifyConfig().refine_method == "split"
    assert VerifyConfig(refine_method="milp").refine_method == "milp"


@pytest.mark.parametrize("bad", ["nope", "SPLIT", "lp"])
def test_a_bad_method_is_refused_by_milp_refine(bad):
    _, net, lo_x, hi_x, pre = _case(0)
    with pytest.raises(InvalidInputError, match="method"):
        milp_refine(net.affine_blocks(), pre, lo_x, hi_x, method=bad)


def _tiny_instance(tmp_path):
    from test_cli import _write_tiny_onnx, _write_vnnlib

    onnx = _write_tiny_onnx(tmp_path / "tiny.onnx")
    return onnx, _write_vnnlib(tmp_path / "p.vnnlib", 2, 2, -1, 1, "(>= (- Y_0 Y_1) 1000)")


@pytest.mark.parametrize("extra, want", [([], "split"), (["--refine-method", "split"], "split"),
                                         (["--refine-method", "milp"], "milp")])
def test_refine_method_option_reaches_the_config(extra, want, tmp_path, monkeypatch):
    """``gpuopt verify --refine-method`` sets ``VerifyConfig.refine_method`` (default: the config's)."""
    from gpuopt.cli import main
    from test_cli import _capture_config

    seen = _capture_config(monkeypatch)
    onnx, spec = _tiny_instance(tmp_path)
    try:
        assert main(["verify", str(onnx), str(spec), "--timeout", "30", "--bab", "relu"] + extra) == 0
    finally:
        torch.set_num_threads(1)
    assert seen["config"].refine_method == want


def test_run_refine_method_option_reaches_every_item(tmp_path, monkeypatch):
    """``gpuopt run --refine-method split`` sets it in the config every item of the CSV gets."""
    import gpuopt.runs as runs
    from gpuopt.cli import main

    seen, real = [], runs.read_instances

    def capture(*a, **kw):
        seen.append(kw["config"])
        return real(*a, **kw)

    monkeypatch.setattr(runs, "read_instances", capture)
    onnx, spec = _tiny_instance(tmp_path)
    csv = tmp_path / "instances.csv"
    csv.write_text(f"{onnx},{spec},10\n")
    try:
        assert main(["run", str(csv), "--results", str(tmp_path / "r.jsonl"), "--workers", "1",
                     "--refine-method", "split"]) == 0
    finally:
        torch.set_num_threads(1)
    assert len(seen) == 1 and seen[0].refine_method == "split"


@pytest.mark.parametrize("command", ["verify", "run"])
@pytest.mark.parametrize("value", ["foo", "lp", ""])
def test_refine_method_option_refuses_other_values(command, value, tmp_path, capsys):
    from gpuopt.cli import main

    onnx, spec = _tiny_instance(tmp_path)
    args = ["verify", str(onnx), str(spec)] if command == "verify" else \
        ["run", str(tmp_path / "none.csv"), "--results", str(tmp_path / "r.jsonl")]
    with pytest.raises(SystemExit) as exc:
        main(args + ["--refine-method", value])
    assert exc.value.code == 2
    assert "--refine-method" in capsys.readouterr().err


# ============================================================================ ending once the property follows
def _ibp_pre(net, lo, hi):
    b = intermediate_bounds(net, torch.tensor(lo)[None], torch.tensor(hi)[None])
    return [(l[0].numpy(), u[0].numpy()) for l, u in b.pre_activation]


@pytest.mark.parametrize("method", ["split", "milp"])
def test_the_refinement_ends_when_enough_says_so(method):
    """``enough(pre)`` is asked after a layer whose bounds changed, with those bounds; True ends the
    refinement there (``ended_early``, fewer proofs than the whole refinement), and the bounds it
    leaves are sound; an ``enough`` that always says False changes nothing."""
    rng, net, lo_x, hi_x, pre = _case(3)  # layer 1 changes, and layer 2 has proofs after it
    seen = []

    def stop_at_once(p):
        seen.append([(l.copy(), u.copy()) for l, u in p])
        return True

    early = milp_refine(net.affine_blocks(), pre, lo_x, hi_x, neuron_time=5.0, method=method, enough=stop_at_once)
    full = milp_refine(net.affine_blocks(), pre, lo_x, hi_x, neuron_time=5.0, method=method)
    never = milp_refine(net.affine_blocks(), pre, lo_x, hi_x, neuron_time=5.0, method=method, enough=lambda p: False)
    assert early.ended_early and len(seen) == 1 and not full.ended_early and not never.ended_early
    assert 0 < early.milps < full.milps
    for (ls, us), (l, u) in zip(seen[0], early.pre):
        assert np.array_equal(ls, l) and np.array_equal(us, u)
    for (l1, u1), (l2, u2) in zip(full.pre, never.pre):
        assert np.array_equal(l1, l2) and np.array_equal(u1, u2)
    x = lo_x + (hi_x - lo_x) * rng.random((20000, 3))
    for (l0, u0), (l, u), z in zip(pre, early.pre, affine_view_values(net, x)[0]):
        assert np.all(l >= l0) and np.all(u <= u0) and np.all(z >= l - 1e-12) and np.all(z <= u + 1e-12)


def test_the_property_check_proves_only_what_holds():
    """``property_check``'s ``enough`` says True on properties that hold by 1e-3 (exact minimum
    margin shifted there; binding: on most seeds) and never on ones violated by 1e-3."""
    from gpuopt.bounds.milp_refine import property_check

    proven = 0
    for seed in range(6):
        net, region, spec = small_robustness_case(seed)
        box = region.to_box()
        pre = _ibp_pre(net, box.lower, box.upper)
        for delta in (1e-3, -1e-3):
            problem, shifted = shifted_problem(net, region, spec, seed, delta)
            rows = [(A, b, None) for A, b in shifted.disjuncts]
            says = property_check(net, box.lower, box.upper, rows)(pre)
            if delta < 0:
                assert not says, seed
            else:
                proven += says
    assert proven >= 4, proven


def test_the_pipeline_refinement_ends_once_the_property_follows(monkeypatch):
    """Through ``verify``: the refinement task asks the property check after its layers, and once it
    proves the property the refinement ends early and activation splitting decides the item."""
    import gpuopt.bounds.milp_refine as mr

    ended = []
    real = mr.milp_refine

    def spy(*a, **kw):
        res = real(*a, **kw)
        ended.append((kw.get("enough") is not None, res.ended_early))
        return res

    monkeypatch.setattr(mr, "milp_refine", spy)
    decided = 0
    for seed in range(8):
        net, region, spec = small_robustness_case(seed)
        problem, _ = shifted_problem(net, region, spec, seed, 1e-3)
        config = VerifyConfig(use_input_split=False, use_attack=False, use_crown=False, alpha_steps=0,
                              milp_refine_share=0.5, milp_refine_probe_share=0.0)
        v = verify(net, problem.region, problem.spec, timeout=60, config=config)
        assert v.status in (Status.UNSAT, Status.TIMEOUT, Status.UNKNOWN)
        decided += v.status is Status.UNSAT
    assert ended and all(asked for asked, _ in ended)
    assert any(early for _, early in ended) and decided > 0


# ============================================================================ found by the adversarial review
def test_a_layer_dead_on_the_whole_box_before_a_neuron_at_exactly_zero_does_not_crash():
    """Layer 0 dead everywhere on the box, so layer 1 is exactly 0 while a sound prior leaves it at
    [-1, 1]: every neuron of the sub-network is pruned and nothing is left to split (activation
    splitting used to fail on the empty branching scores); the refined bounds hold."""
    ws = [[np.eye(2), np.array([-5.0, -5.0])], [np.array([[1.0, 1.0], [1.0, -1.0]]), np.zeros(2)],
          [np.array([[1.0, 1.0], [1.0, -1.0]]), np.zeros(2)], [np.array([[1.0, -1.0]]), np.zeros(1)]]
    net = _net(ws)
    lo, hi = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    pre = _pre_exact(net, lo, hi, "ibp")
    pre[1] = (np.array([-1.0, -1.0]), np.array([1.0, 1.0]))
    res = _split(net, pre, lo, hi, neuron_time=1.0, witnesses=False)
    for (l, u) in res.pre[1:]:
        assert np.all(l <= 0.0) and np.all(u >= 0.0) and np.all(u - l <= 2.0)


@pytest.mark.parametrize("method", ["split", "milp"])
@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_non_finite_input_bounds_are_refused(method, bad):
    """A NaN or infinite bound in ``pre`` proves nothing: refused with the layer named (a NaN lower
    bound read as an inactive neuron once gave a layer-1 upper bound of 0 below a reachable 1.74)."""
    _, net, lo_x, hi_x, pre = _case(0)
    pre = [(l.copy(), u.copy()) for l, u in pre]
    pre[0][0][0] = bad
    with pytest.raises(InvalidInputError, match="layer 0 must be finite"):
        milp_refine(net.affine_blocks(), pre, lo_x, hi_x, method=method)


def test_activation_splitting_refuses_non_finite_bounds():
    """The same for activation splitting itself: a NaN or inf pre-activation bound is refused with
    the layer named, never read as a stable neuron."""
    from gpuopt.bounds.base import Bounds
    from gpuopt.relu_split import relu_split

    _, net, lo_x, hi_x, pre = _case(0)
    for bad in (np.nan, np.inf):
        tens = [(torch.tensor(l[None]), torch.tensor(u[None])) for l, u in pre]
        tens[1][1][0, 0] = bad
        rows = [(np.eye(net.output_size)[:1], np.zeros(1), None)]
        with pytest.raises(InvalidInputError, match="ReLU layer 1 must be finite"):
            relu_split(net, torch.tensor(lo_x), torch.tensor(hi_x), rows, Bounds(tuple(tens), (None, None), "test"))


# ============================================================================ the layer schedule
def _record_passes(monkeypatch, moves: int = 2):
    """Replace the refinement's pass by a recorder: each call's layers and its deadline's distance
    from now; the first ``moves`` calls of each layer set narrow something, later ones nothing."""
    import gpuopt.bounds.milp_refine as mr

    calls = []

    def fake_pass(blocks, pre, layers, *a, deadline, **kw):
        layers = list(layers)
        calls.append((layers, None if deadline is None else deadline - time.monotonic()))
        moved = sum(1 for ls, _ in calls if ls == layers) <= moves
        return 1, moved, False

    monkeypatch.setattr(mr, "_refine_pass", fake_pass)
    return calls


@pytest.mark.parametrize("method", sorted(PROVERS))
def test_the_last_hidden_layer_is_refined_after_the_others_in_its_share(monkeypatch, method):
    """With a deadline, the layers before the last hidden one get their passes (while a bound moves)
    in ``1 - last_share`` of the time, and the last layer comes after them with the rest; without
    ``last_share`` (None), or without a deadline, every pass covers all layers."""
    _, net, lo_x, hi_x, pre = _case(3)  # hidden layers 0, 1, 2: layers 1 and 2 are refined
    calls = _record_passes(monkeypatch)
    milp_refine(net.affine_blocks(), pre, lo_x, hi_x, deadline=time.monotonic() + 10.0, method=method,
                last_share=0.4)
    assert [ls for ls, _ in calls] == [[1], [1], [1], [2], [2], [2]]  # two passes move, the third ends a phase
    assert all(5.5 < left <= 6.0 for _, left in calls[:3])
    assert all(9.0 < left <= 10.0 for _, left in calls[3:])

    calls.clear()
    milp_refine(net.affine_blocks(), pre, lo_x, hi_x, deadline=time.monotonic() + 10.0, method=method,
                last_share=None)
    assert [ls for ls, _ in calls] == [[1, 2]] * 3 and all(9.0 < left <= 10.0 for _, left in calls)

    calls.clear()
    milp_refine(net.affine_blocks(), pre, lo_x, hi_x, method=method)  # no deadline: nothing to share
    assert [ls for ls, left in calls] == [[1, 2]] * 3 and all(left is None for _, left in calls)


def test_one_layer_to_refine_has_one_phase(monkeypatch):
    _, net, lo_x, hi_x, pre = _case(3)
    calls = _record_passes(monkeypatch)
    milp_refine(net.affine_blocks(), pre, lo_x, hi_x, deadline=time.monotonic() + 10.0, first_layer=2)
    assert [ls for ls, _ in calls] == [[2]] * 3 and all(9.0 < left <= 10.0 for _, left in calls)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_a_bad_last_share_is_refused(bad):
    _, net, lo_x, hi_x, pre = _case(3)
    with pytest.raises(InvalidInputError, match="last_share"):
        milp_refine(net.affine_blocks(), pre, lo_x, hi_x, deadline=time.monotonic() + 1.0, last_share=bad)
