"""The bundled demo: model data, the printed table, and the soundness of its counterexamples."""

from __future__ import annotations

from importlib import resources

import numpy as np
import gpuopt.demo as demo
from gpuopt.cli import main


def _npz() -> dict:
    path = resources.files("gpuopt").joinpath("data", "digits_demo.npz")
    with resources.as_file(path) as p, np.load(p) as z:
        return {k: z[k] for k in z.files}


def _logits64(d: dict, x: np.ndarray) -> np.ndarray:
    """Plain-numpy float64 forward pass from the raw npz weights (independent of gpuopt)."""
    h = np.asarray(x, dtype=np.float64)
    h = np.maximum(d["w0"].astype(np.float64) @ h + d["b0"].astype(np.float64), 0.0)
    h = np.maximum(d["w1"].astype(np.float64) @ h + d["b1"].astype(np.float64), 0.0)
    return d["w2"].astype(np.float64) @ h + d["b2"].astype(np.float64)


def test_bundled_model_matches_recorded_accuracy():
    net, images, labels = demo.load_demo_model()
    d = _npz()
    assert net.input_shape == (64,) and net.output_size == 10
    assert images.shape == (100, 64) and labels.shape == (100,)
    assert images.min() >= 0.0 and images.max() <= 1.0
    acc = float((net.forward64(images).argmax(axis=1) == labels).mean())
    assert abs(acc - float(d["test_accuracy"])) <= 1e-6
    assert acc > 0.9
    # gpuopt's network and the plain numpy pass agree
    ref = np.stack([_logits64(d, x) for x in d["test_images"]])
    np.testing.assert_allclose(net.forward64(images), ref, rtol=1e-12, atol=1e-12)


def test_run_demo_prints_table(capsys):
    assert demo.run_demo(n_images=3, timeout=10, eps_values=(0.01, 0.1)) == 0
    out = capsys.readouterr().out
    assert "verified (unsat)" in out and "falsified (sat)" in out and "unknown/timeout" in out
    rows = [line for line in out.splitlines() if line.lstrip().startswith(("0.01 |", "0.1 |"))]
    assert len(rows) == 2
    for row in rows:
        unsat, sat, unknown = (int(c) for c in row.split("|")[1:4])
        assert unsat + sat + unknown == 3
    assert "bundled model" in out.splitlines()[-1]


def test_demo_counterexamples_are_real(monkeypatch):
    """Every ``sat`` the demo reports lies in the clipped L-inf box and is misclassified in float64."""
    calls = []
    real_run = demo.verify_dataset

    def recording_run(net, x, y, **kw):
        for rec in real_run(net, x, y, **kw):
            calls.append((np.asarray(x)[rec["sample"]], int(np.asarray(y)[rec["sample"]]), rec))
            yield rec

    monkeypatch.setattr(demo, "verify_dataset", recording_run)
    assert demo.run_demo(n_images=3, timeout=10, eps_values=(0.01, 0.1)) == 0
    assert len(calls) == 6
    d = _npz()
    images = d["test_images"].astype(np.float64)
    n_sat = 0
    for centre, label, rec in calls:
        (idx,) = np.flatnonzero(np.all(images == centre, axis=1))[:1]
        assert label == int(d["test_labels"][idx])
        assert int(np.argmax(_logits64(d, images[idx]))) == label  # only correct images are checked
        if rec["status"] != "sat":
            continue
        n_sat += 1
        x = np.asarray(rec["counterexample"], dtype=np.float64)
        lo = np.maximum(images[idx] - rec["eps"], 0.0)
        hi = np.minimum(images[idx] + rec["eps"], 1.0)
        assert x.shape == (64,) and np.all(x >= lo) and np.all(x <= hi)
        y = _logits64(d, x)
        assert np.max(np.delete(y, label)) >= y[label]
    assert n_sat >= 1  # the bundled model has non-robust images at eps=0.1


def test_cli_demo():
    assert main(["demo", "--images", "2", "--timeout", "10"]) == 0


def test_run_demo_caps_at_available_images(capsys, monkeypatch):
    """Asking for more images than the bundle holds uses all correctly classified ones."""
    net, images, labels = demo.load_demo_model()
    n_ok = int((net.forward64(images).argmax(axis=1) == labels).sum())

    def all_unsat(net, x, y, *, eps, **kw):
        for e in eps:
            for i in range(len(x)):
                yield {"sample": i, "eps": e, "status": "unsat", "seconds": 0.0}

    monkeypatch.setattr(demo, "verify_dataset", all_unsat)
    assert demo.run_demo(n_images=1000, timeout=1, eps_values=(0.01,)) == 0
    assert f"on {n_ok} correctly classified" in capsys.readouterr().out.splitlines()[-1]
