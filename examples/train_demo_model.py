"""Train the small digits classifier bundled with ``gpuopt demo``.

This script is how ``gpuopt/data/digits_demo.npz`` was made; it is not needed to run the demo.
It needs scikit-learn (not a gpuopt dependency) for the dataset, plus torch and numpy:

    python3 -m venv /tmp/skvenv && /tmp/skvenv/bin/pip install torch scikit-learn numpy
    /tmp/skvenv/bin/python examples/train_demo_model.py [--out gpuopt/data/digits_demo.npz]

Data: scikit-learn's bundled ``load_digits`` dataset (1797 8x8 grey-scale images, pixel values
0..16, 10 classes). It is a copy of the test set of the UCI ML hand-written digits dataset
("Optical Recognition of Handwritten Digits", Alpaydin & Kaynak, 1998,
https://archive.ics.uci.edu/dataset/80), distributed with scikit-learn under its BSD licence.
Features are scaled to [0, 1] by dividing by 16.

Model: a 64-32-32-10 ReLU MLP trained with plain (non-adversarial) full-batch AdamW (Adam with
decoupled weight decay) and cross-entropy on a seeded 75/25 stratified train/test split. Everything is seeded and torch
runs in deterministic mode, so re-running gives the same weights on the same platform.

The npz holds ``w0, b0, w1, b1, w2, b2`` (float32, Dense orientation ``(out, in)``),
``test_images`` (the first 100 held-out images, float32 ``(100, 64)`` in [0, 1]),
``test_labels`` (int64 ``(100,)``), and ``test_accuracy``: the float32 model's accuracy on those
100 images, as a string (for example ``"0.97"``); ``full_test_accuracy`` is the accuracy on the
whole held-out split, also as a string.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SEED = 0
HIDDEN = (32, 32)
EPOCHS = 300
LR = 3e-3
WEIGHT_DECAY = 0.5  # decoupled (AdamW); keeps weights small, which also helps verification
N_BUNDLED = 100


def main(argv=None) -> None:
    default_out = Path(__file__).resolve().parents[1] / "gpuopt" / "data" / "digits_demo.npz"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=default_out)
    args = ap.parse_args(argv)

    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)

    sizes = (64, *HIDDEN, 10)
    layers: list[torch.nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)

    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    for epoch in range(EPOCHS):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
        if epoch % 100 == 0 or epoch == EPOCHS - 1:
            print(f"epoch {epoch:4d}  loss {loss.item():.4f}")

    model.eval()
    with torch.no_grad():
        pred_te = model(torch.from_numpy(x_te)).argmax(1).numpy()
        pred_tr = model(xt).argmax(1).numpy()
    full_acc = float((pred_te == y_te).mean())
    acc = float((pred_te[:N_BUNDLED] == y_te[:N_BUNDLED]).mean())
    print(f"train accuracy {float((pred_tr == y_tr).mean()):.4f}, "
          f"test accuracy {full_acc:.4f} ({len(y_te)} images), first {N_BUNDLED}: {acc:.4f}")

    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    arrays = {}
    for k, lin in enumerate(linears):
        arrays[f"w{k}"] = lin.weight.detach().numpy().astype(np.float32)
        arrays[f"b{k}"] = lin.bias.detach().numpy().astype(np.float32)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        **arrays,
        test_images=x_te[:N_BUNDLED].astype(np.float32),
        test_labels=y_te[:N_BUNDLED].astype(np.int64),
        test_accuracy=np.array(repr(acc)),
        full_test_accuracy=np.array(repr(full_acc)),
    )
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
