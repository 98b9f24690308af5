"""Row bounds (``gpuopt bounds``): sampled outputs lie inside every method's bounds, IBP is at
least as loose as CROWN, which is at least as loose as alpha-CROWN, and the CLI prints the JSON
object the issue specifies."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from gpuopt.bounds.rows import row_bounds
from gpuopt.cli import main
from gpuopt.errors import InvalidInputError

from helpers import random_conv_network, random_dense_network


@pytest.mark.parametrize("seed", range(6))
def test_samples_inside_and_methods_ordered(seed):
    rng = np.random.default_rng(seed)
    if seed % 2:
        net = random_conv_network(rng, (1, 4, 4), 2, (2, 2), (1, 1), (0, 0, 0, 0), 6, 3)
    else:
        net = random_dense_network(rng, 4, [8, 8], 3)
    n = net.input_size
    c = rng.normal(size=n)
    lo, hi = c - 0.5, c + 0.5
    A = rng.normal(size=(5, 3))
    got = {m: row_bounds(net, lo, hi, A, method=m) for m in ("ibp", "crown", "alpha-crown", "lp")}
    x = lo + (hi - lo) * rng.random((4000, n))
    v = net.forward64(x) @ A.T
    for m, (l, u) in got.items():
        assert np.all(l.numpy() <= v.min(0)) and np.all(u.numpy() >= v.max(0)), m
    tol = 1e-9
    assert np.all(got["ibp"][0].numpy() <= got["crown"][0].numpy() + tol)
    assert np.all(got["crown"][0].numpy() <= got["alpha-crown"][0].numpy() + tol)
    assert np.all(got["ibp"][1].numpy() >= got["crown"][1].numpy() - tol)
    assert np.all(got["crown"][1].numpy() >= got["alpha-crown"][1].numpy() - tol)
    assert np.all(got["alpha-crown"][0].numpy() <= got["lp"][0].numpy() + tol)
    assert np.all(got["alpha-crown"][1].numpy() >= got["lp"][1].numpy() - tol)


def test_unknown_method_is_refused():
    rng = np.random.default_rng(0)
    net = random_dense_network(rng, 2, [3], 2)
    with pytest.raises(InvalidInputError, match=re.escape("`method` must be one of ibp, crown, alpha-crown, lp, got 'lp2'")):
        row_bounds(net, np.zeros(2), np.ones(2), np.eye(2), method="lp2")


def test_bounds_command_prints_the_json_object(benchmarks_dir, capsys):
    base = benchmarks_dir / "vnncomp2022" / "mnist_fc"
    assert main(["bounds", str(base / "onnx" / "mnist-net_256x2.onnx"), str(base / "vnnlib" / "prop_0_0.03.vnnlib"),
                 "--method", "crown", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["method"] == "crown" and res["seconds"] >= 0
    assert len(res["disjuncts"]) == 9 and all(len(d) == 1 for d in res["disjuncts"])
    # prop_0 at 0.03 holds (reference: unsat): every disjunct's single row is proven positive
    assert all(d[0]["lower"] > 0 and d[0]["lower"] <= d[0]["upper"] for d in res["disjuncts"])
