"""Certified L-inf radii: the bracket always contains the true radius (closed form on linear
classifiers, bisection of brute-force enumeration on tiny ReLU networks), is tight where the
verifier decides, and bad arguments get precise errors."""

from __future__ import annotations

import re

import numpy as np
import pytest

import gpuopt
from gpuopt.errors import InvalidInputError
from gpuopt.network import Dense, Network, ReLU
from gpuopt.specs import robustness

from helpers import brute_force_min_margin, random_dense_network


def _classified(seed, n_in: int, hidden, centre_range=(0.3, 0.7)):
    """``(rng, net, x0, label)``: a random 3-class net, a point drawn in ``centre_range`` and the
    class the net gives it."""
    rng = np.random.default_rng(seed)
    net = random_dense_network(rng, n_in, hidden, 3)
    x0 = rng.uniform(*centre_range, n_in)
    return rng, net, x0, int(np.argmax(net.forward64(x0[None])[0]))


def test_linear_classifier_radius_in_closed_form():
    w = np.array([2.0, -1.0, 0.5, 3.0])
    net = Network([Dense(np.stack([w, np.zeros(4)]), np.array([-0.3, 0.0]))], (4,))
    x0 = np.array([0.5, 0.2, 0.4, 0.3])
    true = (w @ x0 - 0.3) / np.abs(w).sum()  # class 1 needs w.x - 0.3 <= 0
    r = gpuopt.certify_radius(net, x0, 0, timeout=30, clip=None, eps_max=2.0)
    assert r.lower <= true <= r.upper and r.upper_found and r.status == "exact"
    assert r.upper - r.lower <= 1e-3 * r.upper + 1e-6
    assert np.max(np.abs(r.x_adv - x0)) <= r.upper


def _true_radius(net, x0, label, clip=(0.0, 1.0), hi=1.0, spec=None):
    """Bisection of eps on the exact minimum margin over the clipped ball (brute force), for
    ``spec`` (default: untargeted robustness of ``label``)."""
    spec = robustness(label, net.output_size) if spec is None else spec
    lo_e, hi_e = 0.0, hi
    for _ in range(40):
        mid = (lo_e + hi_e) / 2
        box_lo, box_hi = np.maximum(x0 - mid, clip[0]), np.minimum(x0 + mid, clip[1])
        if brute_force_min_margin(net, box_lo, box_hi, spec).min_margin <= 0:
            hi_e = mid
        else:
            lo_e = mid
    return lo_e, hi_e


@pytest.mark.parametrize("seed", range(4))
def test_bracket_contains_the_brute_force_radius_on_relu_networks(seed):
    rng, net, x0, label = _classified(seed, 2, [5, 5], (0.2, 0.8))
    lo_t, hi_t = _true_radius(net, x0, label)
    r = gpuopt.certify_radius(net, x0, label, timeout=30, eps_max=1.0, clip=(0.0, 1.0))
    assert r.lower <= hi_t + 1e-9, (r, lo_t, hi_t)
    if r.upper_found:
        assert r.upper >= lo_t - 1e-9, (r, lo_t, hi_t)
        y = net.forward64(r.x_adv[None])[0]
        assert np.max(np.delete(y, label)) >= y[label]
        assert np.all((r.x_adv >= 0) & (r.x_adv <= 1))
    assert r.lower <= r.upper


def test_a_misclassified_input_has_radius_zero():
    net = Network([Dense(np.eye(2), np.zeros(2))], (2,))
    r = gpuopt.certify_radius(net, np.array([0.2, 0.7]), 0, timeout=5)
    assert (r.lower, r.upper, r.status, r.verify_calls) == (0.0, 0.0, "exact", 0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(norm="l3"), "`norm` must be one of linf, l1, l2, got 'l3'"),
    (dict(label=2), "`label` must be a class index in [0, 2), got 2"),
    (dict(eps_max=-1.0), "`eps_max` must be a finite number >= 0, got -1.0"),
    (dict(timeout=float("nan")), "`timeout` must be a finite number >= 0, got nan"),
    (dict(x=np.zeros(3)), "`x` must hold 2 numbers (the network's input size), got 3"),
    (dict(x=np.array([0.7, np.nan])), "`x` must be finite, but holds nan at index 1"),
    (dict(x=np.array([[np.inf], [-np.inf]])), "`x` must be finite, but holds inf at index (0, 0) (and 1 more)"),
    (dict(x=["a", "b"]), "`x` must be an array of 2 real numbers, got list"),
    (dict(network="net"), "`network` must be a gpuopt Network (see gpuopt.from_torch), got str"),
])
def test_bad_arguments(kwargs, message):
    args = dict(network=Network([Dense(np.eye(2), np.zeros(2))], (2,)), x=np.array([0.7, 0.2]), label=0)
    args.update(kwargs)
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        gpuopt.certify_radius(args.pop("network"), args.pop("x"), args.pop("label"), **args)


def test_radius_command_on_a_benchmark_network(benchmarks_dir, tmp_path, capsys):
    """One MNIST image through ``gpuopt radius``: a record with a bracket that contains the
    distance of its own checked counterexample, and a summary line."""
    import json

    from gpuopt.cli import main

    out = tmp_path / "r.jsonl"
    assert main(["radius", "--model", str(benchmarks_dir / "vnncomp2022" / "mnist_fc" / "onnx" / "mnist-net_256x2.onnx"),
                 "--data", str(benchmarks_dir / "mnist" / "mnist_test_first100.csv"), "--scale", "255",
                 "--limit", "1", "--timeout", "60", "--eps-max", "0.1", "--results", str(out), "--workers", "1"]) == 0
    assert "1 samples:" in capsys.readouterr().out
    (rec,) = [r for r in map(json.loads, out.read_text().splitlines()) if "key" in r]  # not the run header
    assert rec["status"] in ("exact", "bracket") and 0 <= rec["lower"] <= rec["upper"] <= 0.1
    if rec["upper_found"]:
        x = np.array(rec["counterexample"])
        assert np.all((x >= 0) & (x <= 1))


def test_report_reads_radius_records(tmp_path, capsys):
    import json

    from gpuopt.cli import main

    path = tmp_path / "r.jsonl"
    recs = [{"key": "radius:0", "status": "exact", "lower": 0.1, "upper": 0.1001, "seconds": 2.0},
            {"key": "radius:1", "status": "bracket", "lower": 0.05, "upper": 0.2, "seconds": 4.0},
            {"key": "radius:2", "status": "misclassified", "lower": 0.0, "upper": 0.0, "seconds": 0.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "3 samples: bracket 1, exact 1, misclassified 1" in out and "median certified lower 0.075" in out
    # L1 records (keys radius-l1:i) are radius records too, and get their plots with the extra
    l1 = tmp_path / "l1.jsonl"
    l1.write_text("".join(json.dumps(dict(r, key=r["key"].replace("radius:", "radius-l1:"), norm="l1")) + "\n"
                          for r in recs))
    assert main(["report", str(l1)]) == 0
    assert "3 samples: bracket 1, exact 1, misclassified 1" in capsys.readouterr().out
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return  # the plots extra is not installed: the curve itself is tested below
    assert main(["report", str(l1), "--plots", str(tmp_path / "figs")]) == 0
    assert {p.name for p in (tmp_path / "figs").iterdir()} == {"radii.png", "radius_accuracy.png"}


def test_radius_curve_counts_certified_and_broken_samples():
    from gpuopt.runs import radius_curve

    recs = [{"status": "exact", "lower": 0.1, "upper": 0.1001},
            {"status": "bracket", "lower": 0.05, "upper": 0.2},
            {"status": "bracket", "lower": 0.3, "upper": 0.5, "upper_found": False},
            {"status": "misclassified", "lower": 0.0, "upper": 0.0},
            {"status": "error"}]
    c = radius_curve(recs, [0.0, 0.05, 0.1, 0.15, 0.3, 0.6])
    assert c["n"] == 4
    assert c["certified"].tolist() == [0.75, 0.75, 0.5, 0.25, 0.25, 0.0]
    assert c["upper"].tolist() == [0.75, 0.75, 0.75, 0.5, 0.25, 0.25]


def test_targeted_radius_with_a_margin_in_closed_form():
    """Logits ``(0, w.x, 1)`` with target 1 and margin 1.2: the target needs ``w.x >= 1.2`` (and
    ``w.x >= 0``), so from ``x0`` with ``w.x0 = 0.5`` the radius is ``0.7 / ||w||_1``."""
    w = np.array([1.0, 2.0, -1.0])
    net = Network([Dense(np.stack([np.zeros(3), w, np.zeros(3)]), np.array([0.0, 0.0, 1.0]))], (3,))
    x0 = np.array([0.5, 0.25, 0.5])  # w.x0 = 0.5; class 2 (logit 1) wins
    true = 0.7 / np.abs(w).sum()
    r = gpuopt.certify_radius(net, x0, 2, target=1, margin=1.2, clip=None, eps_max=1.0, timeout=30)
    assert r.lower <= true <= r.upper and r.status == "exact", r
    y = net.forward64(r.x_adv[None])[0]
    assert y[1] >= 1.2 * y[0] and y[1] >= 1.2 * y[2]


@pytest.mark.parametrize("kwargs, message", [
    (dict(target=0), "`target` must be a class index in [0, 2) other than `label`, got 0"),
    (dict(margin=1.2), "`margin` must be a finite number > 0 and needs a `target`, got 1.2"),
    (dict(target=1, margin=0.0), "`margin` must be a finite number > 0 and needs a `target`, got 0.0"),
    (dict(target=1, margin=-1.2), "`margin` must be a finite number > 0 and needs a `target`, got -1.2"),
])
def test_bad_target_arguments(kwargs, message):
    net = Network([Dense(np.eye(2), np.zeros(2))], (2,))
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        gpuopt.certify_radius(net, np.array([0.7, 0.2]), 0, **kwargs)


@pytest.mark.parametrize("seed", range(6))
def test_min_distortion_milp_brackets_and_closes_the_brute_force_radius(seed):
    """The MILP alone, with no verifier calls: its certified lower bound never exceeds the true
    radius, its point is a checked counterexample no farther than the attack's, and on these tiny
    networks it meets the true radius."""
    from gpuopt.radius import min_distortion_milp

    rng, net, x0, label = _classified(40 + seed, 3, [6, 5], (0.2, 0.8))
    spec = robustness(label, 3)
    lo_t, hi_t = _true_radius(net, x0, label, hi=1.0)
    if hi_t >= 1.0 - 1e-9:
        pytest.skip("robust on the whole clip box")
    lower, x = min_distortion_milp(net, x0, spec, min(1.0, hi_t * 1.5), clip=(0.0, 1.0))
    assert lower <= hi_t + 1e-9
    assert x is not None and np.all((x >= 0) & (x <= 1))
    d = np.max(np.abs(x - x0))
    y = net.forward64(x[None])[0]
    assert np.max(np.delete(y, label)) >= y[label]
    assert d >= lo_t - 1e-9 and d <= hi_t + 1e-6 * max(1.0, hi_t) + 1e-6
    assert lower >= lo_t - 1e-6 * max(1.0, lo_t) - 1e-6


def test_certify_radius_uses_the_milp_to_close_the_bracket():
    rng, net, x0, label = _classified(7, 3, [8, 6], (0.3, 0.7))
    lo_t, hi_t = _true_radius(net, x0, label)
    config = gpuopt.VerifyConfig(device="cpu", use_input_split=False, use_relu_split=False, use_milp=False)
    r = gpuopt.certify_radius(net, x0, label, timeout=30, eps_max=1.0, config=config, rtol=1e-6, clip=(0.0, 1.0))
    assert r.lower <= hi_t + 1e-9 and (not r.upper_found or r.upper >= lo_t - 1e-9)
    if hi_t < 1.0 - 1e-9:
        assert r.status == "exact", r


def _clip_box_grid(n: int = 1201):
    """``(X, h)``: the ``n x n`` grid of the 2-input clip box ``[0, 1]^2`` and its step."""
    g = np.linspace(0, 1, n)
    return np.stack([m.ravel() for m in np.meshgrid(g, g)], axis=1), g[1] - g[0]


def test_l1_radius_brackets_a_dense_grid_on_two_inputs():
    """The L1 radius on 2-input nets: a 1201 x 1201 grid of the clip box gives the misclassified
    point nearest in L1 up to the grid step h, so the true radius lies in [d_grid - 2h, d_grid]."""
    X, h = _clip_box_grid()
    checked = 0
    for seed in range(40):
        rng, net, x0, label = _classified(60 + seed, 2, [8, 6], (0.3, 0.7))
        Y = net.forward64(X)
        wrong = np.max(np.delete(Y, label, axis=1), axis=1) >= Y[:, label]
        if not wrong.any():
            continue  # robust on the whole clip box
        d_grid = float(np.abs(X[wrong] - x0).sum(1).min())
        r = gpuopt.certify_radius(net, x0, label, norm="l1", eps_max=2.0, timeout=30, rtol=1e-6, clip=(0.0, 1.0))
        assert r.lower <= d_grid + 1e-9, (seed, r, d_grid)
        assert r.upper_found and r.upper >= d_grid - 2 * h - 1e-9, (seed, r, d_grid)
        assert np.abs(r.x_adv - x0).sum() <= r.upper
        y = net.forward64(r.x_adv[None])[0]
        assert np.max(np.delete(y, label)) >= y[label]
        assert r.status == "exact", (seed, r)  # two inputs: HiGHS closes it
        assert r.upper <= d_grid + 1e-6
        checked += 1
        if checked == 4:
            break
    assert checked == 4, checked


def test_l2_radius_of_a_linear_classifier_in_closed_form():
    """Unclipped, the L2 radius of a linear classifier is ``(w_0 - w_1) . x0 + c / ||w_0 - w_1||_2``;
    CROWN is exact there, so the bound bisection meets the attack."""
    w = np.array([2.0, -1.0, 0.5, 3.0])
    net = Network([Dense(np.stack([w, np.zeros(4)]), np.array([-0.3, 0.0]))], (4,))
    x0 = np.array([0.5, 0.2, 0.4, 0.3])
    true = (w @ x0 - 0.3) / np.linalg.norm(w)
    r = gpuopt.certify_radius(net, x0, 0, norm="l2", timeout=30, clip=None, eps_max=2.0)
    assert r.lower <= true <= r.upper and r.upper_found, r
    assert r.upper - r.lower <= 1e-3 * r.upper + 1e-6 and r.status == "exact", r
    assert np.linalg.norm(r.x_adv - x0) <= r.upper


def _l2_ball_points(rng, x0, eps, n, clip):
    d = rng.normal(size=(n, x0.size))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    pts = x0 + d * eps * rng.random((n, 1)) ** (1.0 / x0.size)
    pts = np.concatenate([pts, x0 + d * eps])  # the sphere itself too
    return np.clip(pts, *clip)  # clipping moves a point towards x0 in every coordinate: still inside


@pytest.mark.parametrize("seed, norm", [(s, n) for s in range(4) for n in ("l2", "l1")])
def test_ball_row_bounds_hold_on_sampled_points_of_the_clipped_ball(seed, norm):
    from gpuopt.radius import ball_row_bounds

    rng = np.random.default_rng(60 + seed)
    net = random_dense_network(rng, 4, [8, 8], 3)
    x0 = rng.uniform(0.2, 0.8, 4)
    C = rng.normal(size=(5, 3))
    sample = _l2_ball_points if norm == "l2" else _l1_ball_points
    for eps in (0.05, 0.3, 1.0):
        lb = ball_row_bounds(net, x0, eps, (0.0, 1.0), C, norm=norm)
        v = net.forward64(sample(rng, x0, eps, 20000, (0.0, 1.0))) @ C.T
        assert np.all(lb <= v.min(0) + 1e-12), (eps, lb, v.min(0))


@pytest.mark.parametrize("seed", range(4))
def test_l2_bracket_is_sound_on_relu_networks(seed):
    """Nothing within ``lower`` (sampled) changes the class; the adversarial point lies within
    ``upper`` and is checked."""
    rng, net, x0, label = _classified(70 + seed, 3, [6, 5], (0.3, 0.7))
    r = gpuopt.certify_radius(net, x0, label, norm="l2", timeout=20, eps_max=1.5, clip=(0.0, 1.0))
    assert 0 < r.lower <= r.upper
    pts = _l2_ball_points(rng, x0, r.lower, 40000, (0.0, 1.0))
    y = net.forward64(pts)
    others = np.delete(y, label, axis=1)
    assert np.all(y[:, label] > others.max(axis=1))
    if r.upper_found:
        assert np.linalg.norm(r.x_adv - x0) <= r.upper
        y_adv = net.forward64(r.x_adv[None])[0]
        assert np.delete(y_adv, label).max() >= y_adv[label]


def _l1_ball_points(rng, x0, eps, n, clip):
    d = rng.laplace(size=(n, x0.size)) * (rng.random((n, x0.size)) < 0.5)
    d /= np.maximum(np.abs(d).sum(axis=1, keepdims=True), 1e-300)
    pts = np.concatenate([x0 + d * eps * rng.random((n, 1)), x0 + d * eps, x0 + eps * np.eye(x0.size),
                          x0 - eps * np.eye(x0.size)])
    return np.clip(pts, *clip)


@pytest.mark.parametrize("seed, norm", [(s, n) for s in range(3) for n in ("l2", "l1")])
def test_crown_over_a_ball_holds_on_samples_and_beats_the_box(seed, norm):
    import torch

    from gpuopt.bounds import crown

    rng = np.random.default_rng(90 + seed)
    net = random_dense_network(rng, 6, [10, 10, 8], 3)
    x0 = rng.uniform(0.3, 0.7, 6)
    eps = 0.4
    lo, hi = torch.tensor(np.clip(x0 - eps, 0, 1))[None], torch.tensor(np.clip(x0 + eps, 0, 1))[None]
    box = crown(net, lo, hi)
    ball = crown(net, lo, hi, ball=(torch.tensor(x0)[None], torch.tensor([eps]), norm))
    pts = (_l2_ball_points if norm == "l2" else _l1_ball_points)(rng, x0, eps, 20000, (0.0, 1.0))
    h = pts
    for blk, (l, u), (lb, ub) in zip(net.affine_blocks()[:-1], ball.pre_activation, box.pre_activation):
        z = h @ blk.matrix.T.toarray() + blk.bias
        assert np.all(z >= l[0].numpy() - 1e-12) and np.all(z <= u[0].numpy() + 1e-12)
        assert np.all(l[0].numpy() >= lb[0].numpy()) and np.all(u[0].numpy() <= ub[0].numpy())
        h = np.maximum(z, 0)
    widths = [float((u - l).sum()) for l, u in ball.pre_activation]
    assert sum(widths) < sum(float((u - l).sum()) for l, u in box.pre_activation)


@pytest.mark.parametrize("norm", ["linf", "l1"])
def test_the_region_lp_refines_an_adversarial_point_and_certifies_nothing(norm):
    from gpuopt.radius import _distance_up, min_distortion_milp

    cases = 0
    for seed in range(200):
        rng, net, x0, label = _classified(110 + seed, 3, [6, 5], (0.3, 0.7))
        pts = rng.uniform(0, 1, (5000, 3))
        bad = pts[np.argmax(net.forward64(pts), axis=1) != label]
        if not len(bad):
            continue
        d = np.array([_distance_up(p, x0, norm) for p in bad])
        x_adv = bad[np.argmax(d)]  # a far one: its region holds closer points
        spec = robustness(label, 3)
        lower, x = min_distortion_milp(net, x0, spec, float(d.max()), clip=(0.0, 1.0), norm=norm, region_of=x_adv)
        assert lower == 0.0
        assert x is not None and _distance_up(x, x0, norm) <= d.max()
        y_x = net.forward64(x[None])[0]
        assert np.delete(y_x, label).max() >= y_x[label] and np.all((x >= 0) & (x <= 1))
        cases += 1
        if cases == 4:
            break
    assert cases == 4


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_ball_proofs_widen_by_the_source_models_parameter_errors(norm):
    """``y_0 - y_1 = relu(x_0) + 0.5 >= 0.5`` everywhere, so every L1/L2 ball is safe for class 0 on
    the stored parameters. When the importer says the output bias may be off by 0.6 from the
    source model's, no ball may be certified: the bound proof must widen by the deviation."""
    from gpuopt.radius import _ball_proves
    from gpuopt.verify import VerifyConfig

    layers = [Dense(np.array([[1.0, 0.0]]), np.array([0.0])), ReLU(),
              Dense(np.array([[1.0], [0.0]]), np.array([0.5, 0.0]))]
    exact = Network(layers, (2,))
    rounded = Network(layers, (2,), param_errors=[None, None, (np.zeros((2, 1)), np.array([0.6, 0.0]))])
    x0 = np.array([-0.5, 0.3])  # relu(x_0) = 0 in every ball below: the margin is 0.5 exactly
    spec = robustness(0, 2)
    for eps in (0.01, 0.1):
        assert _ball_proves(exact, x0, eps, (None, None), spec, VerifyConfig(), None, norm)
        assert not _ball_proves(rounded, x0, eps, (None, None), spec, VerifyConfig(), None, norm)
    r = gpuopt.certify_radius(rounded, x0, 0, norm=norm, timeout=10, clip=None, eps_max=1.0)
    assert r.lower == 0.0 and not r.upper_found, r


def _targeted_spec(n_cls: int, target: int, margin):
    """The unsafe set of ``certify_radius(..., target=, margin=)``, written out independently:
    ``y_t >= m y_j`` for every ``j != t``."""
    from gpuopt.specs import OutputSpec

    m = 1.0 if margin is None else margin
    rows = np.array([m * np.eye(n_cls)[j] - np.eye(n_cls)[target] for j in range(n_cls) if j != target])
    return OutputSpec([(rows, np.zeros(len(rows)))], n_cls)


@pytest.mark.parametrize("norm", ["linf", "l1"])
@pytest.mark.parametrize("margin", [None, 1.2])
def test_targeted_brackets_contain_the_brute_force_radius_on_relu_networks(norm, margin):
    """Targeted (with and without a margin) on tiny ReLU nets with 2 inputs: the bracket holds the
    true radius, from bisection of exact enumeration (L-inf) or a 1201 x 1201 grid of the clip box
    (L1: the true radius lies in ``[d_grid - 2h, d_grid]``); the point reaches the target."""
    X, h = _clip_box_grid()
    checked = 0
    for seed in range(40):
        rng, net, x0, label = _classified(300 + seed, 2, [8, 6], (0.3, 0.7))
        target = int(np.argsort(net.forward64(x0[None])[0])[-2])  # the runner-up class
        spec = _targeted_spec(3, target, margin)
        reach = spec.margin64(net.forward64(X)) <= 0
        if not reach.any():
            continue  # the target is out of reach in the clip box
        if norm == "linf":
            lo_t, hi_t = _true_radius(net, x0, label, spec=spec)
        else:
            hi_t = float(np.abs(X[reach] - x0).sum(1).min())
            lo_t = hi_t - 2 * h
        r = gpuopt.certify_radius(net, x0, label, norm=norm, target=target, margin=margin, eps_max=2.0, timeout=30,
                                  rtol=1e-6, clip=(0.0, 1.0))
        assert r.lower <= hi_t + 1e-9, (seed, r, lo_t, hi_t)
        assert r.upper_found and r.upper >= lo_t - 1e-9, (seed, r, lo_t, hi_t)
        dist = np.abs(r.x_adv - x0).max() if norm == "linf" else np.abs(r.x_adv - x0).sum()
        assert dist <= r.upper
        assert spec.margin64(net.forward64(r.x_adv[None]))[0] <= 0  # reaches the target (with the margin)
        checked += 1
        if checked == 2:
            break
    assert checked == 2, checked


def test_a_float64_tie_at_the_clean_point_is_not_a_counterexample():
    """0.1 + 0.2 rounds to 0.30000000000000004, the other class's score; exactly it is 2^-55 below
    it, so the clean point is classified correctly and its radius is not 0. The float64 tie must
    not decide it (nor mark it misclassified in a dataset run)."""
    from fractions import Fraction

    from gpuopt.runs import _misclassified

    c = 0.30000000000000004
    net = Network([Dense(np.array([[1.0, 1.0], [0.0, 0.0]]), np.array([0.0, c])), ReLU()], (2,))
    x0 = np.array([0.1, 0.2])
    assert net.forward64(x0[None])[0][0] == c and Fraction(c) - (Fraction(0.1) + Fraction(0.2)) > 0
    r = gpuopt.certify_radius(net, x0, 1, eps_max=1e-3, clip=None, timeout=10)
    assert r.x_adv is None or not np.array_equal(r.x_adv, x0)
    assert r.upper > 0 and r.lower <= r.upper
    assert not _misclassified(net, x0, 1) and _misclassified(net, x0, 0)


def test_linf_radius_of_sigmoid_and_tanh_networks_brackets_a_dense_grid():
    """Two inputs, Tanh and Sigmoid layers: the L-inf bracket contains the grid's radius (up to the
    grid step h: the true radius lies in [d_grid - h, d_grid]) and is narrow; the bisection's proofs
    rest on the linear relaxation and interval splitting. L1 and L2 radii are refused by name."""
    from gpuopt.errors import NotPiecewiseLinearError
    from gpuopt.network import Sigmoid, Tanh

    X, h = _clip_box_grid(801)
    checked = 0
    for seed in range(30):
        rng = np.random.default_rng(900 + seed)
        net = Network([Dense(rng.normal(size=(8, 2)) * 2, rng.normal(size=8)), Tanh(),
                       Dense(rng.normal(size=(6, 8)), rng.normal(size=6)), Sigmoid(),
                       Dense(rng.normal(size=(3, 6)) * 3, rng.normal(size=3))], (2,))
        x0 = rng.uniform(0.3, 0.7, 2)
        label = int(np.argmax(net.forward64(x0[None])[0]))
        Y = net.forward64(X)
        wrong = np.max(np.delete(Y, label, axis=1), axis=1) >= Y[:, label]
        if not wrong.any():
            continue
        d_grid = float(np.abs(X[wrong] - x0).max(1).min())
        r = gpuopt.certify_radius(net, x0, label, eps_max=1.0, timeout=20, rtol=1e-3, clip=(0.0, 1.0))
        assert 0 < r.lower <= d_grid + 1e-9, (seed, r, d_grid)
        assert r.upper_found and r.upper >= d_grid - h - 1e-9, (seed, r, d_grid)
        y = net.forward64(r.x_adv[None])[0]
        assert np.max(np.delete(y, label)) >= y[label] and np.abs(r.x_adv - x0).max() <= r.upper
        assert r.upper - r.lower <= 0.05 * r.upper, (seed, r)
        checked += 1
        if checked == 3:
            break
    assert checked == 3, checked
    for norm in ("l1", "l2"):
        with pytest.raises(NotPiecewiseLinearError, match="its L-inf radius does not"):
            gpuopt.certify_radius(net, x0, label, norm=norm, timeout=5)


def _kink_net():
    """``y_0 = 1 - |x_1| - relu(x_2)``, ``y_1 = 0`` (``|x_1| = relu(x_1) + relu(-x_1)``): class 0
    at ``x0 = (0.1, -0.2)`` (``y_0 = 0.9``), changed where ``|x_1| + relu(x_2) >= 1``. By hand,
    unclipped: L-inf ``t = 0.55`` (``0.65 + 0.35``; ``x_1`` alone needs 0.9); L1 0.9 (``x_2``
    first spends 0.2 to reach its kink); L2 ``0.55 sqrt(2)`` (``a + b = 1.1`` with ``b >= 0.2``,
    at ``a = b``), below the 0.9 of ``x_1`` alone."""
    net = Network([Dense(np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]), np.zeros(3)), ReLU(),
                   Dense(np.array([[-1.0, -1.0, -1.0], [0.0, 0.0, 0.0]]), np.array([1.0, 0.0]))], (2,))
    return net, np.array([0.1, -0.2]), {"linf": 0.55, "l1": 0.9, "l2": 0.55 * np.sqrt(2.0)}


@pytest.mark.parametrize("norm", ["linf", "l1", "l2"])
@pytest.mark.parametrize("eps_max", [0.5, 0.54])
def test_a_sample_robust_beyond_eps_max_is_certified_at_eps_max_itself(norm, eps_max):
    """The true radius exceeds ``eps_max`` (by hand, and the exact minimum margin over the ball's
    box, which holds every ball, is positive): ``lower`` is ``eps_max`` exactly, the status says so,
    and ``upper`` stays the end of the search with no counterexample claimed."""
    net, x0, true = _kink_net()
    assert true[norm] > eps_max
    assert brute_force_min_margin(net, x0 - eps_max, x0 + eps_max, robustness(0, 2)).min_margin > 0
    r = gpuopt.certify_radius(net, x0, 0, norm=norm, eps_max=eps_max, timeout=20)
    assert r.lower == eps_max and r.status == "beyond_eps_max", r
    assert r.upper == eps_max and not r.upper_found and r.x_adv is None, r
    assert r.verify_calls == 1, r  # one proof on the whole ball, no bisection


@pytest.mark.parametrize("norm", ["linf", "l1", "l2"])
def test_a_radius_inside_eps_max_is_bracketed_not_certified_at_eps_max(norm):
    net, x0, true = _kink_net()
    r = gpuopt.certify_radius(net, x0, 0, norm=norm, eps_max=1.0, timeout=20)
    assert r.status in ("exact", "bracket") and r.upper_found, r
    assert r.lower <= true[norm] + 1e-9 and r.upper >= true[norm] - 1e-9, r
    if norm != "l2":  # the verifier (L-inf) and the MILP (L1) close it
        assert r.status == "exact", r


def test_the_reviewers_torch_net_is_certified_at_eps_max():
    """The review's case: robust well beyond ``eps_max = 0.01`` at the origin (sampled points of
    the ball keep the class); it used to end at ``lower = 0.01 (1 - 2^-9)``, ``"bracket"``."""
    import torch

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    net = gpuopt.from_torch(m, input_shape=(4,))
    x = np.zeros(4)
    label = int(net.forward64(x[None]).argmax())
    pts = np.random.default_rng(0).uniform(-0.01, 0.01, (20000, 4))
    assert np.all(net.forward64(pts).argmax(axis=1) == label)
    for norm in ("linf", "l1", "l2"):
        r = gpuopt.certify_radius(net, x, label, eps_max=0.01, clip=None, norm=norm, timeout=20)
        assert (r.lower, r.upper, r.upper_found, r.status) == (0.01, 0.01, False, "beyond_eps_max"), (norm, r)


def test_clip_defaults_to_unbounded_and_is_honoured_when_given():
    """``y_0 - y_1 = 1.05 - x`` at ``x0 = 0.9``: unbounded the class changes at ``x = 1.05`` (radius
    0.15, outside [0, 1]); with ``clip=(0, 1)`` no valid input changes it."""
    import inspect

    assert inspect.signature(gpuopt.certify_radius).parameters["clip"].default is None
    net = Network([Dense(np.array([[-1.0], [0.0]]), np.array([1.05, 0.0]))], (1,))
    x0 = np.array([0.9])
    r = gpuopt.certify_radius(net, x0, 0, eps_max=0.5, timeout=10)
    assert r.status == "exact" and r.upper_found and r.lower <= 0.15 <= r.upper and r.x_adv[0] >= 1.05, r
    r = gpuopt.certify_radius(net, x0, 0, eps_max=0.5, timeout=10, clip=(0, 1))
    assert (r.lower, r.status, r.upper_found) == (0.5, "beyond_eps_max", False), r


_CLIP = "`clip` must be None or a pair (low, high) of numbers or arrays broadcastable to `x`, low <= high, no NaN: "


@pytest.mark.parametrize("clip, message", [
    ((0.0,), _CLIP + "got a tuple of 1 entry"),
    ([0.0, 1.0, 2.0], _CLIP + "got a list of 3 entries"),
    ("01", _CLIP + "got str"),
    (0.5, _CLIP + "got float"),
    ((0.0, float("nan")), _CLIP + "its high holds NaN"),
    ((np.array([0.0, np.nan]), 1.0), _CLIP + "its low holds NaN at index 1"),
    ((1.0, 0.0), _CLIP + "low > high at index 0"),
    ((np.array([0.0, 0.9]), np.array([1.0, 0.5])), _CLIP + "low > high at index 1"),
    ((np.zeros(3), 1.0), _CLIP + "its low of shape (3,) does not broadcast to `x`'s shape (2,)"),
    (("a", 1.0), _CLIP + "its low is a str, not real numbers"),
    ((0.0, True), _CLIP + "its high is a bool, not real numbers"),
    ((0.0, 0.5), "`x` lies outside `clip` (above its high end) at index 0: the clean input must be a valid input"),
    ((np.array([0.0, 0.3]), None), "`x` lies outside `clip` (below its low end) at index 1"),
])
def test_bad_clip_arguments(clip, message):
    net = Network([Dense(np.eye(2), np.zeros(2))], (2,))
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        gpuopt.certify_radius(net, np.array([0.7, 0.2]), 0, clip=clip, timeout=5)


def test_clip_takes_per_input_arrays_and_open_ends():
    """``y_0 - y_1 = x_0 - x_1`` at (0.7, 0.2): L-inf radius 0.25 unbounded. ``x_0 >= 0.6`` and
    ``x_1 <= 0.3`` leave no counterexample at all (per-input arrays, flat or of ``x``'s size in
    another shape); with ``x_1`` unbounded above (a None end) the nearest is (0.6, 0.6), at 0.4."""
    net = Network([Dense(np.eye(2), np.zeros(2))], (2,))
    x0 = np.array([0.7, 0.2])
    for clip in ((np.array([0.6, -1.0]), np.array([2.0, 0.3])), ([[0.6, -1.0]], [2.0, 0.3])):
        r = gpuopt.certify_radius(net, x0, 0, clip=clip, eps_max=0.3, timeout=10)
        assert (r.lower, r.status) == (0.3, "beyond_eps_max"), (clip, r)
    r = gpuopt.certify_radius(net, x0, 0, clip=(np.array([0.6, -np.inf]), None), eps_max=0.3, timeout=10)
    assert (r.lower, r.status) == (0.3, "beyond_eps_max"), r
    r = gpuopt.certify_radius(net, x0, 0, clip=(np.array([0.6, -np.inf]), None), eps_max=1.0, timeout=10)
    assert r.status == "exact" and r.lower <= 0.4 <= r.upper and r.x_adv[0] >= 0.6, r
