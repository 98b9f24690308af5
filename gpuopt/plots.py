"""Figures of a results file (matplotlib, Agg backend, PNG files; the ``plots`` extra)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from .errors import InvalidInputError, MissingDependencyError

__all__ = ["plot_summary", "plot_radii"]


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise MissingDependencyError("plots need matplotlib: pip install 'gpuopt[plots]'") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _folder(folder) -> Path:
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--plots must be a folder, got the file {out}")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_summary(records: list[dict], folder) -> list[Path]:
    """Write ``robust_accuracy.png`` (dataset runs: certified and upper robust accuracy against
    eps), ``decided_by.png`` and ``times.png`` (time per item, by status) into ``folder``."""
    from .runs import summarize

    plt = _pyplot()
    out = _folder(folder)
    written = []
    summary = summarize(records)
    groups = sorted((g for g in summary["groups"] if g["eps"] is not None), key=lambda g: g["eps"])
    if groups:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        eps = [g["eps"] for g in groups]
        ax.plot(eps, [g["robust_accuracy_certified"] for g in groups], "o-", label="certified (verified)")
        ax.plot(eps, [g["robust_accuracy_upper"] for g in groups], "s--", label="upper (not falsified)")
        ax.plot(eps, [g["clean_accuracy"] for g in groups], ":", color="gray", label="clean")
        ax.set_xlabel("eps (L-inf)")
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(0, 1.02)
        ax.legend()
        written.append(_save(plt, fig, out / "robust_accuracy.png"))
    decided = Counter(r.get("decided_by") or r.get("status") for r in records)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    names = [k for k, _ in decided.most_common()]
    ax.barh(names, [decided[k] for k in names])
    ax.set_xlabel("items")
    ax.set_title("decided by (or status when undecided)")
    written.append(_save(plt, fig, out / "decided_by.png"))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    by_status: dict = {}
    for r in records:
        if isinstance(r.get("seconds"), (int, float)) and r.get("status") != "misclassified":
            by_status.setdefault(r["status"], []).append(float(r["seconds"]))
    for status, ts in sorted(by_status.items()):
        ax.hist(ts, bins=30, alpha=0.6, label=f"{status} ({len(ts)})")
    ax.set_xlabel("seconds per item")
    ax.set_ylabel("items")
    ax.legend()
    written.append(_save(plt, fig, out / "times.png"))
    return written


def plot_radii(records: list[dict], folder) -> list[Path]:
    """Write ``radii.png`` (each sample's bracket ``[lower, upper]``, sorted by ``upper``) and
    ``radius_accuracy.png`` (certified and upper robust accuracy against eps, from the radii;
    :func:`gpuopt.runs.radius_curve`) into ``folder``."""
    import numpy as np

    from .runs import RADIUS_DONE, radius_curve

    plt = _pyplot()
    out = _folder(folder)
    done = [r for r in records if r.get("status") in RADIUS_DONE]
    norm = next((r.get("norm") for r in records if r.get("norm")), "linf")
    written = []
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if done:
        done.sort(key=lambda r: r["upper"])
        idx = np.arange(len(done))
        ax.vlines(idx, [r["lower"] for r in done], [r["upper"] for r in done], color="tab:blue", alpha=0.6)
        ax.plot(idx, [r["lower"] for r in done], "^", ms=3, label="certified lower")
        found = [(k, r["upper"]) for k, r in zip(idx, done) if r.get("upper_found", True)]
        if found:  # an upper end without a counterexample is only eps_max, the end of the search
            ax.plot(*zip(*found), "v", ms=3, label="attacked upper")
        ax.legend()
    ax.set_xlabel("sample (sorted by upper)")
    ax.set_ylabel(f"radius ({norm})")
    written.append(_save(plt, fig, out / "radii.png"))
    top = max([r["upper"] for r in done if r.get("upper_found", True) and np.isfinite(r["upper"])]
              or [r["lower"] for r in done if r["lower"] > 0] or [1.0])
    curve = radius_curve(records, np.linspace(0.0, top * 1.05, 101))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(curve["eps"], curve["certified"], "-", label="certified (lower >= eps)")
    ax.plot(curve["eps"], curve["upper"], "--", label="upper (no counterexample within eps)")
    ax.set_xlabel(f"eps ({norm})")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend()
    written.append(_save(plt, fig, out / "radius_accuracy.png"))
    return written
