"""The verification pipeline: falsify fast, prove exactly.

For a list of Problems sharing one network (a VNNLIB instance may have several input boxes; the
instance is violated iff any Problem is), :func:`verify_problems` runs the stage table of
:mod:`gpuopt.engine.stages` over one :class:`~gpuopt.engine.item.ItemState`:

1. **bounds** (IBP, then CROWN, then alpha-CROWN on the spec rows; float64 with outward
   rounding pads): a disjunct whose margin
   lower bound is ``> 0`` is unreachable; a Problem whose disjuncts are all unreachable holds;
2. **attack** (batched PGD, float32 on the chosen device): a candidate gives ``sat`` only when
   :func:`gpuopt.check.check_counterexample` proves it: inside the exact input set, and in the
   unsafe region by more than its float64 error bound, or exactly in rational arithmetic;
3. **Relax-and-Walk** (:mod:`gpuopt.milp.walk`), for networks that input splitting does not
   take: LP walks across linear regions from the attack's points, for ``walk_share`` of the time
   left; a point gives ``sat`` only through the same exact check, and the best one seeds the MILP;
4. **input splitting** (:mod:`gpuopt.bab`), only for networks with at most
   ``split.max_input_dim`` inputs: branch and bound over sub-boxes with CROWN bounds;
   **activation splitting** (:mod:`gpuopt.relu_split`) for the others: branch and bound over
   ReLU phases with alpha/beta-CROWN bounds, for ``relu_split_share`` of the time left (with
   ``milp_refine_share`` > 0, after the intermediate bounds were refined by per-neuron proofs:
   activation splitting on the layers before each neuron, or MILPs, ``refine_method``), after
   MILPs of the network's tail after a narrow hidden layer, over that layer's box
   (:mod:`gpuopt.milp.tail`), proved what they can (a relaxation: the same thresholds and
   re-check as the MILP below); a
   disjunct it leaves with at most ``relu_split.handoff`` open domains goes to the MILP as those
   domains (leaves), one MILP each;
5. **MILP** (big-M, or ``formulation``, in HiGHS with the CROWN bounds, per remaining disjunct or leaf,
   seeded with the best point of the attack and the walk, rescaled exactly; see :mod:`gpuopt.milp.highs`): the disjunct is
   unreachable iff HiGHS's dual bound exceeds ``threshold`` plus the tolerance margin and HiGHS
   logged no numerical warning; an improving solution that passes the exact check gives ``sat``.

``unsat`` is only reported when every open disjunct of every Problem was proven by a sound stage.
The MILP threshold is ``milp_threshold_abs + milp_threshold_rel * scale`` where ``scale`` is the
largest of 1, ``max|b|`` and the objective rows' magnitude over the output bounds: a property that
holds by less than that is reported ``unknown`` rather than guessed.

Proofs run on the outer (outward-rounded) input box and on spec rows whose right-hand sides are
rounded up (:meth:`~gpuopt.specs.OutputSpec.proof_rhs`), strict rows relaxed to non-strict: each
is a superset of the exact unsafe set, so a proof for it is a proof for the exact property.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .attacks import AttackConfig
from .bab import SplitConfig
from .errors import InvalidInputError, require_file
from .milp.cuts import cut_kinds
from .milp.encode import Formulation
from .milp.highs import SolverConfig
from .milp.walk import WalkConfig
from .network import Network
from .problem import Problem
from .regions import Box, LinfBall
from .relu_split import ReluSplitConfig
from .specs import OutputSpec
from .verdict import Status, Verdict

__all__ = ["VerifyConfig", "verify", "verify_problems", "verify_instance"]

log = logging.getLogger("gpuopt")


#: ``VerifyConfig.milp_refine_share=None`` (auto): the refinement's share of the time on networks
#: with at most AUTO_REFINE_MAX_INPUTS inputs and AUTO_REFINE_MAX_NEURONS ReLUs (mnist_fc's 784
#: inputs and up to 6 x 256 ReLUs; not the conv nets of oval21), where per-neuron MILPs are cheap,
#: in items of at least AUTO_REFINE_MIN_SECONDS in all (or without a timeout): a neuron's MILP
#: takes about 1 s, and the refinement pays after hundreds of them
AUTO_REFINE_SHARE = 0.8
AUTO_REFINE_MAX_INPUTS = 1024
AUTO_REFINE_MAX_NEURONS = 2048
AUTO_REFINE_MIN_SECONDS = 60.0


@dataclass(frozen=True)
class VerifyConfig:
    """Pipeline settings. ``device``: where the attack runs (``None``: CUDA if available, else
    CPU). ``use_crown``/``use_attack``/``use_input_split``/``use_relu_split``/``use_milp`` switch
    stages off (for ablations and tests); ``alpha_steps`` is the alpha-CROWN budget on the spec
    rows (0: off), and with ``alpha_intermediate`` on the intermediate layers too (when CROWN
    leaves the item open, and not on the few-input nets whose bounds are the forward and zonotope
    passes, nor where input splitting follows); ``split`` configures input splitting, ``relu_split`` activation
    splitting (which gets ``relu_split_share`` of the time an item has left when it starts; the
    MILP the rest). The attack stage runs rounds of ``attack.restarts`` restarts (new seeds each
    round) until ``attack.patience`` rounds in a row did not improve the best margin by 1% (2 by
    default here; ``None``: no such stop), ``attack.rounds`` are done, or it has used
    ``attack_share`` of the time the item had left when it began (at least 2 s); one round where
    input splitting follows (it searches its sub-boxes itself). ``use_walk``,
    ``walk`` and ``walk_share`` set the Relax-and-Walk stage; ``use_lp`` and ``lp_share`` the LP
    stage (LP bound tightening, then the LP of each open disjunct); ``formulation`` the MILP's encoding
    (``bigm``, ``split``, ``extended``, ``partition[:N[:equal_size|equal_range]]``), and ``cuts``
    adds valid inequalities to it (:func:`gpuopt.milp.cuts.cut_kinds`: ``False``, ``True`` or
    ``"all"``, or a comma-separated choice of ``ideal`` root rounds of ideal-formulation cuts and
    ``implication`` inequalities between the binaries); with ``milp_recheck`` each MILP proof is
    re-checked by a branch and bound of safe dual bounds (:mod:`gpuopt.milp.recheck`) in at most
    the time HiGHS took, and the verdict says how many were. ``milp_condition_share`` > 0 (0, off,
    by default: on the mnist_fc MILPs it decided nothing more, see the README): a MILP not decided
    in its first seconds tightens its last layer's and outputs' bounds by LP over the points where
    its disjunct's margin is small (in at most that share of its time left) and starts again on
    them (:func:`gpuopt.engine.tasks.milp_task`). ``milp_refine_share`` > 0 refines
    the intermediate bounds of networks that activation splitting takes by per-neuron proofs
    (:mod:`gpuopt.bounds.milp_refine`, at most ``milp_refine_neuron_time`` s each) in that share
    of the time left, before splitting, and ends once a short splitting run proves the property
    on the bounds so far; ``refine_method`` ``"split"`` (the default) proves each neuron by
    activation splitting on the layers before it (CROWN's padded float64 arithmetic), ``"milp"``
    by a MILP, whose bounds rest on HiGHS's tolerances (an ``unsat`` verdict that may use them
    says so). ``None`` (the default, "auto") is
    :data:`AUTO_REFINE_SHARE` on networks whose per-neuron proofs are cheap enough to pay (at
    most :data:`AUTO_REFINE_MAX_INPUTS` inputs and :data:`AUTO_REFINE_MAX_NEURONS` ReLUs, as
    the mnist_fc nets) for items with a timeout of at least :data:`AUTO_REFINE_MIN_SECONDS` (or
    none), 0 otherwise (see :meth:`refine_share`); 0 is off. With it on,
    activation splitting first runs in ``milp_refine_probe_share`` of the time left (0: not at
    all), so that what it decides quickly does not wait for the refinement. ``milp_beside``: the
    MILPs of the open disjuncts run in a thread beside activation splitting, which stops once they
    decide the item (:mod:`gpuopt.engine.beside`); ``None`` (auto) when a CPU is free beside
    torch's threads, ``True``/``False`` always/never."""

    attack: AttackConfig = field(default_factory=lambda: AttackConfig(patience=2))
    solver: SolverConfig = field(default_factory=SolverConfig)
    device: str | None = None
    split: SplitConfig = field(default_factory=SplitConfig)
    relu_split: ReluSplitConfig = field(default_factory=ReluSplitConfig)
    use_relu_split: bool = True
    relu_split_share: float = 0.7
    use_crown: bool = True
    alpha_steps: int = 20
    alpha_intermediate: bool = True
    use_attack: bool = True
    attack_share: float = 0.1
    use_input_split: bool = True
    use_milp: bool = True
    formulation: str = "bigm"
    cuts: bool | str = False
    use_walk: bool = True
    walk_share: float = 0.08
    walk: WalkConfig = field(default_factory=WalkConfig)
    use_lp: bool = True
    lp_share: float = 0.15
    milp_recheck: bool = True
    milp_condition_share: float = 0.0
    milp_refine_share: float | None = None
    milp_refine_neuron_time: float = 1.0
    milp_refine_probe_share: float = 0.1
    milp_beside: bool | None = None
    refine_method: str = "split"
    milp_threshold_abs: float = 1e-6
    milp_threshold_rel: float = 1e-5

    def __post_init__(self):
        if self.device is not None:
            from .devices import check_device

            check_device(self.device)
        for name, want in (("attack", AttackConfig), ("solver", SolverConfig), ("split", SplitConfig),
                           ("relu_split", ReluSplitConfig), ("walk", WalkConfig)):
            if not isinstance(getattr(self, name), want):
                raise InvalidInputError(f"`{name}` must be a {want.__name__}, got {type(getattr(self, name)).__name__}")
        Formulation.parse(self.formulation)  # a precise error for an unknown name
        cut_kinds(self.cuts)  # and for an unknown cut family
        for name in ("use_crown", "use_attack", "use_input_split", "use_relu_split", "use_milp", "alpha_intermediate",
                     "use_walk", "use_lp", "milp_recheck"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidInputError(f"`{name}` must be True or False, got {getattr(self, name)!r}")
        if self.milp_beside is not None and not isinstance(self.milp_beside, bool):
            raise InvalidInputError(f"`milp_beside` must be True, False or None (auto), got {self.milp_beside!r}")
        if not isinstance(self.alpha_steps, int) or isinstance(self.alpha_steps, bool):
            raise InvalidInputError(f"`alpha_steps` must be an integer, got {self.alpha_steps!r}")
        if self.alpha_steps < 0:
            raise InvalidInputError(f"`alpha_steps` must be >= 0, got {self.alpha_steps}")
        for name in ("attack_share", "relu_split_share", "walk_share", "lp_share", "milp_refine_share",
                     "milp_refine_probe_share", "milp_condition_share"):
            v = getattr(self, name)
            if v is None and name == "milp_refine_share":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise InvalidInputError(f"`{name}` must be a number in [0, 1], got {v!r}")
        from .bounds.milp_refine import PROVERS

        if self.refine_method not in PROVERS:
            raise InvalidInputError(f"`refine_method` must be one of {', '.join(PROVERS)}, got {self.refine_method!r}")
        v = self.milp_refine_neuron_time
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
            raise InvalidInputError(f"`milp_refine_neuron_time` must be a positive number of seconds, got {v!r}")
        if self.milp_threshold_abs <= 0 or self.milp_threshold_rel < 0:
            raise InvalidInputError("`milp_threshold_abs` must be > 0 and `milp_threshold_rel` >= 0")

    def refine_share(self, input_size: int, relus: int, seconds: float | None = None) -> float:
        """The MILP refinement's share of the time for a network with ``input_size`` inputs and
        ``relus`` hidden ReLUs, in an item of ``seconds`` in all (``None``: no timeout):
        ``milp_refine_share``, or when it is ``None`` (auto) :data:`AUTO_REFINE_SHARE` if
        ``input_size <= AUTO_REFINE_MAX_INPUTS``, ``relus <= AUTO_REFINE_MAX_NEURONS`` and
        ``seconds`` is ``None`` or at least :data:`AUTO_REFINE_MIN_SECONDS` (within a relative 1e-9:
        an item's ``deadline - t0`` of a 60 s timeout is 59.99999999999994 at some ``t0``), else 0.
        (On the conv
        nets of oval21, 3,072 inputs, a 1 s neuron MILP often ends at its root with no bound,
        and the refinement takes time that splitting would use; in a short item it has time
        for too few MILPs; on mnist_fc 256x4 and 256x6 it decides four instances more at the
        official timeouts, see the README.)"""
        if self.milp_refine_share is not None:
            return float(self.milp_refine_share)
        if input_size <= AUTO_REFINE_MAX_INPUTS and relus <= AUTO_REFINE_MAX_NEURONS and \
                (seconds is None or seconds >= AUTO_REFINE_MIN_SECONDS * (1.0 - 1e-9)):
            return AUTO_REFINE_SHARE
        return 0.0


def _timeout_iv(timeout) -> float | None:
    """``timeout`` as seconds (``None``: no limit); a precise error for anything else."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float, np.integer, np.floating)):
        raise InvalidInputError(f"`timeout` must be a number of seconds or None, got {type(timeout).__name__}")
    timeout = float(timeout)
    if not math.isfinite(timeout) or timeout < 0:
        raise InvalidInputError(f"`timeout` must be a finite number >= 0, got {timeout!r}")
    return timeout


def verify_problems(problems: Sequence[Problem], *, timeout: float | None = None,
                    config: VerifyConfig = VerifyConfig(), start_time: float | None = None) -> Verdict:
    """Decide the disjunction of ``problems`` (all on one network); see the module docstring.

    ``timeout`` is in seconds from ``start_time`` (default: now); ``None`` means no limit.
    """
    from .engine.item import ItemState
    from .engine.stages import run_stages
    from .output_order import reduce_output_order

    t0 = time.monotonic() if start_time is None else start_time
    timeout = _timeout_iv(timeout)
    if not isinstance(config, VerifyConfig):
        raise InvalidInputError(f"`config` must be a VerifyConfig, got {type(config).__name__}")
    problems = list(problems)
    if not problems:
        return Verdict(status=Status.UNSAT, seconds=time.monotonic() - t0, margin_lower=math.inf, decided_by="spec",
                       message="the unsafe region is empty")
    for p in problems:
        if not isinstance(p, Problem):
            raise InvalidInputError(f"`problems` must hold Problems, got {type(p).__name__}")
        if p.network is not problems[0].network:
            raise InvalidInputError("all problems must share one network")
    reduction = reduce_output_order(problems)
    fields = reduction.item_fields() if reduction is not None else {"problems": problems}
    item = ItemState(config=config, t0=t0, deadline=None if timeout is None else t0 + timeout, **fields)
    return run_stages(item).verdict


def verify(network: Network, region: Box | LinfBall, spec: OutputSpec, *, timeout: float | None = None,
           config: VerifyConfig = VerifyConfig()) -> Verdict:
    """Decide whether some ``x`` in ``region`` has ``network(x)`` in the unsafe region ``spec``.

    Returns a :class:`~gpuopt.verdict.Verdict`: ``sat`` with a float64-checked counterexample,
    ``unsat`` with a sound proof, or ``unknown``/``timeout``.
    """
    return verify_problems([Problem(network, region, spec)], timeout=timeout, config=config)


def load_instance(onnx_path, vnnlib_path) -> list[Problem]:
    """Read an ONNX network and a VNNLIB property into a list of Problems."""
    from .io.onnx import from_onnx
    from .io.vnnlib import load_vnnlib

    for what, path in (("network", onnx_path), ("property", vnnlib_path)):
        require_file(path, what)
    net = from_onnx(onnx_path)
    props = load_vnnlib(vnnlib_path, n_inputs=net.input_size, n_outputs=net.output_size)
    return [p.problem(net) for p in props]


def verify_instance(onnx_path, vnnlib_path, *, timeout: float | None = None,
                    config: VerifyConfig = VerifyConfig(), start_time: float | None = None) -> Verdict:
    """VNN-COMP style: decide the instance ``(onnx_path, vnnlib_path)``; loading counts toward
    the timeout, which runs from ``start_time`` (a ``time.monotonic()`` value; default now)."""
    t0 = time.monotonic() if start_time is None else start_time
    timeout = _timeout_iv(timeout)
    problems = load_instance(onnx_path, vnnlib_path)
    return verify_problems(problems, timeout=timeout, config=config, start_time=t0)


def attack_problems(problems: Sequence[Problem], *, timeout: float | None = None,
                    attack: AttackConfig = AttackConfig(), device=None, start_time: float | None = None) -> Verdict:
    """The attack alone on the disjunction of ``problems`` (one network): rounds of restarts
    (:func:`~gpuopt.attacks.falsify`) until a float64-confirmed counterexample is found (``sat``)
    or the time ends (``unknown``: an attack never proves anything). Without a timeout it runs
    ``attack.rounds`` rounds (one by default)."""
    from .attacks import pgd_attack
    from .check import check_counterexample
    from .devices import check_device
    from .engine.stages import stacked_spec

    import torch

    t0 = time.monotonic() if start_time is None else start_time
    timeout = _timeout_iv(timeout)
    if not isinstance(attack, AttackConfig):
        raise InvalidInputError(f"`attack` must be an AttackConfig, got {type(attack).__name__}")
    dev = check_device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    problems = list(problems)
    for p in problems:
        if not isinstance(p, Problem):
            raise InvalidInputError(f"`problems` must hold Problems, got {type(p).__name__}")
        if p.network is not problems[0].network:
            raise InvalidInputError("all problems must share one network")
    if not problems:
        return Verdict(status=Status.UNKNOWN, seconds=time.monotonic() - t0, message="the unsafe region is empty")
    found = {}

    def confirm(i: int, x) -> bool:
        c = check_counterexample(problems[i], x.detach().to("cpu", torch.float64).numpy())
        if c.ok and "x" not in found:
            found.update(x=c.x, y=c.y, margin=c.margin)
        return c.ok

    lower = np.stack([p.region.lower for p in problems])
    upper = np.stack([p.region.upper for p in problems])
    A, b = stacked_spec(problems)
    deadline = None if timeout is None else t0 + timeout
    cand = pgd_attack(problems[0].network, lower, upper, A, b, config=attack, device=dev, deadline=deadline,
                      confirm=confirm, stop_at_first=True)
    seconds = time.monotonic() - t0
    detail = f"{cand.rounds} rounds, {cand.restarts} restarts, {cand.evaluations} restart-steps"
    if "x" in found:
        return Verdict(status=Status.SAT, seconds=seconds, counterexample=found["x"], output=found["y"],
                       margin_upper=found["margin"], decided_by="attack",
                       message=f"attack counterexample after {detail}, float64 margin {found['margin']:.6g}")
    # the best points, checked in float64: the verdict's margin_upper is a margin at a real point
    best = min(check_counterexample(p, x).margin for p, x in zip(problems, cand.x.detach().to("cpu", torch.float64).numpy()))
    return Verdict(status=Status.UNKNOWN, seconds=time.monotonic() - t0, margin_upper=best, decided_by=None,
                   message=f"no counterexample in {detail}; best float64 margin {best:.6g}")


def attack_instance(onnx_path, vnnlib_path, *, timeout: float | None = None, attack: AttackConfig = AttackConfig(),
                    device=None, start_time: float | None = None) -> Verdict:
    """VNN-COMP style :func:`attack_problems` on ``(onnx_path, vnnlib_path)``; loading counts
    toward the timeout."""
    t0 = time.monotonic() if start_time is None else start_time
    timeout = _timeout_iv(timeout)
    return attack_problems(load_instance(onnx_path, vnnlib_path), timeout=timeout, attack=attack, device=device,
                           start_time=t0)


def bound_instance(onnx_path, vnnlib_path, *, method: str = "crown", alpha_steps: int = 20) -> dict:
    """Sound bounds of every constraint of the VNNLIB's unsafe region: for each disjunct (over
    all input boxes, in file order) and each of its rows ``a^T y <= b`` (as parsed, in file
    order), bounds of ``a^T f(x) - b`` over the disjunct's input box, by ``method`` (see
    :mod:`gpuopt.bounds.rows`). Returns ``{"method", "seconds", "disjuncts": [[{"lower",
    "upper"}, ...], ...]}``."""
    from .bounds.rows import ROW_METHODS, row_bounds

    if method not in ROW_METHODS:
        raise InvalidInputError(f"`method` must be one of {', '.join(ROW_METHODS)}, got {method!r}")
    t0 = time.monotonic()
    problems = load_instance(onnx_path, vnnlib_path)
    out = []
    for p in problems:
        # all rows of the problem's disjuncts in one call: the intermediate bounds are shared
        A_all = np.concatenate([np.atleast_2d(A) for A, _ in p.spec.disjuncts])
        lo_all, hi_all = row_bounds(p.network, p.region.lower, p.region.upper, A_all, method=method,
                                    alpha_steps=alpha_steps)
        start = 0
        for A, b in p.spec.disjuncts:
            rows = slice(start, start + np.atleast_2d(A).shape[0])
            start = rows.stop
            lo, hi = lo_all[rows], hi_all[rows]
            b = np.asarray(b, dtype=np.float64)
            # a^T y - b, rounded outwards: the subtraction of b is itself rounded
            # a bound that overflowed float64 (NaN from inf - inf) bounds nothing: -inf / +inf
            low = np.nan_to_num(np.nextafter(lo.numpy() - b, -np.inf), nan=-np.inf, neginf=-np.inf, posinf=np.inf)
            high = np.nan_to_num(np.nextafter(hi.numpy() - b, np.inf), nan=np.inf, neginf=-np.inf, posinf=np.inf)
            out.append([{"lower": float(l), "upper": float(u)} for l, u in zip(low, high)])
    return {"method": method, "seconds": time.monotonic() - t0, "disjuncts": out}
