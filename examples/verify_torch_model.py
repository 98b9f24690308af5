"""Verify a plain torch model with gpuopt: convert it, then attack and prove L-inf robustness.

Runs on the CPU in seconds; on a machine with CUDA the attack runs on the GPU.

    python examples/verify_torch_model.py
"""

import numpy as np
import torch

import gpuopt


def main() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 16), torch.nn.ReLU(),
        torch.nn.Linear(16, 16), torch.nn.ReLU(),
        torch.nn.Linear(16, 3),
    ).eval()
    net = gpuopt.from_torch(model, input_shape=(4,))
    x = np.full(4, 0.5)
    label = int(net.forward64(x[None]).argmax())
    print(f"{'eps':>6} {'status':>8} {'decided by':>12} {'margin bracket':>24} {'seconds':>8}")
    for eps in (0.01, 0.05, 0.2, 0.5, 1.0):
        region = gpuopt.LinfBall(x, eps, clip_lower=0.0, clip_upper=1.0)
        v = gpuopt.verify(net, region, gpuopt.robustness(label, 3), timeout=30)
        bracket = f"[{v.margin_lower:.3g}, {v.margin_upper:.3g}]"
        print(f"{eps:6.2f} {v.status.value:>8} {str(v.decided_by):>12} {bracket:>24} {v.seconds:8.3f}")
        if v.status is gpuopt.Status.SAT:
            y = net.forward64(v.counterexample[None])[0]
            print(f"       counterexample classified as {int(y.argmax())} (label {label}), "
                  f"max |x' - x| = {np.abs(v.counterexample - x).max():.4f}")


if __name__ == "__main__":
    main()
