"""The bundled demo: certified L-infinity robustness of a small digits classifier.

``gpuopt demo`` needs no downloads. It loads ``gpuopt/data/digits_demo.npz``: a 64-32-32-10 ReLU
MLP trained on scikit-learn's copy of the UCI hand-written digits (8x8 images, pixels scaled to
[0, 1]) together with 100 held-out test images; ``examples/train_demo_model.py`` is how it was
made. For every radius ``eps`` and each of the first ``n_images`` correctly classified test
images, it asks whether some image within ``eps`` of the original (and still in [0, 1]) changes
the predicted class, as one small bulk run (:func:`gpuopt.runs.verify_dataset`: bounds and
attacks over the items in this process, MILPs in a worker pool, a progress bar), then prints one
table row per ``eps``.
"""

from __future__ import annotations

import io
import statistics
import time
from importlib import resources
from typing import Sequence

import numpy as np

from .network import Dense, Network, ReLU
from .runs import verify_dataset

__all__ = ["load_demo_model", "run_demo"]

_DATA_FILE = "digits_demo.npz"
N_CLASSES = 10


def _load_npz() -> dict:
    raw = resources.files("gpuopt").joinpath("data", _DATA_FILE).read_bytes()
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load_demo_model() -> tuple[Network, np.ndarray, np.ndarray]:
    """The bundled digits classifier and its 100 held-out test images.

    Returns ``(network, images, labels)``: a :class:`~gpuopt.network.Network` on inputs of shape
    ``(64,)`` (Dense, ReLU, Dense, ReLU, Dense; 10 logits), ``images`` float64 ``(100, 64)`` in
    [0, 1], and ``labels`` int64 ``(100,)``.
    """
    d = _load_npz()
    n_dense = sum(1 for k in d if k.startswith("w") and k[1:].isdigit())
    layers = []
    for k in range(n_dense):
        layers.append(Dense(d[f"w{k}"], d[f"b{k}"]))
        if k < n_dense - 1:
            layers.append(ReLU())
    net = Network(layers, (d["w0"].shape[1],))
    images = np.asarray(d["test_images"], dtype=np.float64)
    labels = np.asarray(d["test_labels"], dtype=np.int64)
    return net, images, labels


def _fmt_seconds(ts: list[float]) -> tuple[str, str]:
    if not ts:
        return "-", "-"
    return f"{statistics.fmean(ts):.3f}", f"{statistics.median(ts):.3f}"


def _table(header: Sequence[str], rows: list[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells):
        return " | ".join(c.rjust(w) for c, w in zip(cells, widths))

    return [line(header), "-+-".join("-" * w for w in widths), *(line(r) for r in rows)]


def run_demo(*, n_images: int = 20, timeout: float = 30.0,
             eps_values: Sequence[float] = (0.01, 0.02, 0.05, 0.1), workers: int | None = None) -> int:
    """Verify L-infinity robustness of the bundled model; print a table to stdout; return 0.

    ``n_images``: how many correctly classified test images to check (the first ones in the
    bundled order); ``timeout``: seconds per verification; ``eps_values``: the radii, in pixel
    units of the [0, 1] scale; ``workers``: pool processes (default: cores - 1). A progress bar
    goes to stderr.
    """
    t_start = time.monotonic()
    net, images, labels = load_demo_model()
    pred = net.forward64(images).argmax(axis=1)
    correct = np.flatnonzero(pred == labels)
    chosen = correct[: max(int(n_images), 0)]
    # the scanned prefix of the test set: the chosen images plus the misclassified ones before them
    n_scanned = int(chosen[-1]) + 1 if len(chosen) else 0
    n_ok = len(chosen)

    arch = "-".join(str(n) for n in [net.input_size] + [l.weight.shape[0] for l in net.layers
                                                         if isinstance(l, Dense)])
    print(f"gpuopt demo: L-inf robustness of a {arch} ReLU MLP on 8x8 hand-written digits (pixels in [0, 1])")
    print(f"clean accuracy: {n_ok}/{n_scanned} of the first {n_scanned} bundled test images "
          f"(whole bundled set: {int((pred == labels).sum())}/{len(labels)}); "
          f"checking the {n_ok} correct ones at eps in {list(map(float, eps_values))}, "
          f"timeout {timeout:g}s each", flush=True)

    results: dict[float, list[tuple[int, dict]]] = {float(e): [] for e in eps_values}
    if n_ok:
        for rec in verify_dataset(net, images[chosen], labels[chosen], eps=[float(e) for e in eps_values],
                                  timeout=timeout, workers=workers, progress=True, clip=(0.0, 1.0)):  # pixels in [0, 1]
            results[float(rec["eps"])].append((int(chosen[rec["sample"]]), rec))
    for items in results.values():
        items.sort(key=lambda pair: pair[0])

    header = ("eps", "verified (unsat)", "falsified (sat)", "unknown/timeout",
              "robust acc [certified, upper]", "mean s", "median s")
    rows = []
    example = None
    for eps, items in results.items():
        n_unsat = sum(r["status"] == "unsat" for _, r in items)
        n_sat = sum(r["status"] == "sat" for _, r in items)
        n_unk = len(items) - n_unsat - n_sat
        if n_scanned:
            bounds = f"[{n_unsat / n_scanned:.2f}, {(n_ok - n_sat) / n_scanned:.2f}]"
        else:
            bounds = "-"
        mean_s, med_s = _fmt_seconds([float(r["seconds"]) for _, r in items])
        rows.append((f"{eps:g}", str(n_unsat), str(n_sat), str(n_unk), bounds, mean_s, med_s))
        if example is None:
            example = next(((eps, i, r) for i, r in items if r["status"] == "sat"), None)

    print()
    for line in _table(header, rows):
        print(line)
    print()
    if example is not None:
        eps, i, r = example
        x = np.asarray(r["counterexample"], dtype=np.float64)
        y = net.forward64(x[None])[0]  # independent float64 re-check of the verdict
        cls, lab = int(np.argmax(y)), int(labels[i])
        dist = float(np.max(np.abs(x - images[i])))
        inside = dist <= eps and x.min() >= 0.0 and x.max() <= 1.0
        print(f"example counterexample: test image #{i} (label {lab}) at eps={eps:g} is classified "
              f"as {cls}; float64 re-check: logit[{cls}]={y[cls]:.4f} vs logit[{lab}]={y[lab]:.4f}, "
              f"max|x'-x|={dist:.4f} (<= eps, in [0, 1]: {'yes' if inside else 'NO'})")
    else:
        print("no counterexample found at these radii")
    print("robust accuracy counts misclassified images as non-robust; 'upper' treats unknowns as robust.")
    print(f"numbers from the bundled model (gpuopt/data/{_DATA_FILE}) on {n_ok} correctly classified "
          f"of the first {n_scanned} bundled test images; total {time.monotonic() - t_start:.1f}s")
    return 0
