"""MILPs beside activation splitting: the two searches of one item on two cores at once.

On a large network activation splitting can stall at its relaxation's bound while HiGHS's cuts go
past it (oval21 cifar_wide_kw img9214: splitting stalls at -0.080 after 80 s; the MILP, given the
whole time, proves the disjunct after 374 s), and the pipeline's MILP stage only gets what
splitting leaves. With a core to spare, :func:`gpuopt.engine.stages.run_stages` therefore starts
the MILPs of the item's open disjuncts (:func:`gpuopt.engine.tasks.milp_task`, the MILP stage's
own task, on the bounds known when splitting begins) in a thread of their own when activation
splitting begins (after :data:`DELAY_SECONDS`, or a tenth of the item's time if less: what
splitting decides quickly pays for no MILP; on the 30 mnist_fc 256x2 instances, decided in 3 s each,
starting at once cost 11 s in all, 105.3 s against 94.0 s), one disjunct after the other. HiGHS
releases the GIL while it solves.

* Splitting asks :func:`current_stop` before each step and ends once the MILPs have decided the
  item: a counterexample (checked in float64 by the task, as in the MILP stage), or every open
  disjunct proven.
* The MILPs run on through the stages after splitting (the walk, the LP stage); what they finish
  is merged between stages like the MILP stage's own results (:func:`gpuopt.engine.stages.merge_beside`):
  only proofs and counterexamples, through the same merge and its soundness argument. When the
  MILP stage begins (or the item is decided) what still runs is cancelled
  (:func:`gpuopt.milp.highs.cancellable`: HiGHS at its next callback, a proof's re-check at its
  next node, the proof then resting on HiGHS's tolerances as when a re-check runs out of time),
  and the MILP stage starts afresh on the disjuncts still open, with the LP stage's tighter bounds
  and splitting's leaves.

On when ``VerifyConfig.milp_beside`` is ``True``, or ``None`` (auto) when the process has a CPU
to spare beside torch's threads (:func:`spare_cpus`), never inside a pool worker (the workers
share the cores already).
"""

from __future__ import annotations

import contextvars
import threading
import time

__all__ = ["BesideMilps", "current_stop", "spare_cpus", "running"]

_CURRENT: contextvars.ContextVar = contextvars.ContextVar("gpuopt_beside", default=None)
#: the MILPs beside activation splitting start this many seconds after it (at most a tenth of
#: the item's time left)
DELAY_SECONDS = 10.0


def spare_cpus() -> int:
    """CPUs this process may use that neither other processes (:func:`gpuopt.launch.free_cpus`)
    nor torch's threads take."""
    import torch

    from ..launch import free_cpus

    return max(free_cpus() - torch.get_num_threads(), 0)


class BesideMilps:
    """``specs`` (MILP :class:`~gpuopt.engine.stages.TaskSpec` rows, one per open disjunct) run one
    after the other in a daemon thread, from ``delay`` seconds after :meth:`start`, each with the
    time ``left()`` returns when it starts;
    ``results`` collects ``(spec, value)`` as each ends. :meth:`decided` says whether they decided
    the item; :meth:`stop` cancels what still runs."""

    def __init__(self, specs, left, delay: float = 0.0, complete: bool = True):
        self.specs = list(specs)
        self.left = left
        self.delay = delay
        self.complete = complete  # the specs cover every open disjunct (else "all proven" decides nothing)
        self.results: list = []
        self.merged = 0  # results already merged into the item
        self.error: BaseException | None = None
        self.cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpuopt-milp-beside", daemon=True)
        self.started, self.started_wall = time.monotonic(), time.time()

    def start(self) -> "BesideMilps":
        self._thread.start()
        return self

    def _run(self) -> None:
        from ..milp.highs import cancellable

        if self.cancel.wait(self.delay):  # what splitting decides within the delay costs no MILP
            return
        with cancellable(self.cancel):
            for spec in self.specs:
                left = self.left()
                if self.cancel.is_set() or left <= 0:
                    break
                try:
                    value = spec.fn(*spec.args, left, time.time())
                except BaseException as exc:  # reported to the item's thread at the merge
                    self.error = exc
                    break
                self.results.append((spec, value))
                if value["kind"] in ("sat", "timeout"):
                    break

    def decided(self) -> bool:
        """A counterexample found, or every disjunct proven."""
        done = list(self.results)
        if any(v["kind"] == "sat" for _, v in done):
            return True
        return (self.complete and bool(self.specs) and len(done) == len(self.specs)
                and all(v["kind"] == "proven" for _, v in done))

    def stop(self, wait: float = 1.0) -> list:
        """Cancel what still runs, wait up to ``wait`` seconds for the thread (a model being
        encoded cannot be interrupted; a result that comes later is dropped), and return the
        results so far."""
        self.cancel.set()
        self._thread.join(wait)
        return list(self.results)


def current_stop():
    """For the activation splitting of the item being decided in this context: a callable that
    answers whether the MILPs beside it have decided the item, or None when none run."""
    runner = _CURRENT.get()
    return None if runner is None else runner.decided


class running:
    """``with running(runner):`` makes ``runner`` the one :func:`current_stop` answers for."""

    def __init__(self, runner: BesideMilps | None):
        self.runner = runner

    def __enter__(self):
        self._token = _CURRENT.set(self.runner)
        return self.runner

    def __exit__(self, *exc):
        _CURRENT.reset(self._token)
        return False
