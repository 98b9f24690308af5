"""The hybrid orchestrator: batch stages in this process, task stages in a pool, many items at once.

Items come from a stream of :class:`ItemSource` (each builds its :class:`ItemState` when admitted).
The loop:

1. **Admit** a group of items filling the free places while fewer than ``max_active`` (default
   ``workers + 1``) items are in flight (so every worker has an item's tasks to run and one more
   item's are queued): build them, run the *batch* stages of :data:`~gpuopt.engine.stages.STAGES`
   on the whole group (bounds and attack, one tensor per network on the chosen device), and for
   each item still open plan its first enabled *task* stage: its tasks join the item's queue.
   Items the batch stages decide leave at once, so the next group follows immediately.
2. **Dispatch** queued tasks while fewer than ``workers`` are in the pool, one at a time to the
   item with the fewest tasks running (the oldest first): items share the workers fairly, and an
   item gets several workers at once only when no other item is waiting.
3. **Merge** finished tasks into their items. An item decided by a task has its other tasks
   cancelled (their workers are freed at once); an item whose stage has no task left is finished
   by that stage, and moves to the next task stage or ends ``unknown``.
4. **Deadlines**: an item past its deadline (plus a small grace for tasks to report) has its tasks
   cancelled and ends ``timeout``. A task result counts only if the task *ended* by the item's
   deadline (its own ``end`` stamp): one that ran past it ends the item ``timeout`` whatever it
   found, and a decision merged late (this process was busy with another group's batch stages)
   keeps the time at which its task ended (a stage's ``finish`` deciding on its merged results:
   the time the last of them ended). Results that arrive together merge in the order their tasks
   ended, so a late sibling cannot overrule an in-time decision. No task starts for an item with
   no time left.

Steps 2 and 3 also run between the groups of step 1, so that results are merged (and workers
refilled) while the admission goes on. So while the pool solves MILPs (or splits inputs) for
earlier items, this process bounds and attacks the next ones; the items' stage events (wall-clock start and end of each stage and task)
show the overlap. A task that crashes its worker is retried once by the executor; if it fails
again the item ends ``error`` with the cause. Each item yields exactly one finished
:class:`ItemState` (or an exception from building it).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Iterator

from ..verdict import Status
from .executor import TaskStatus, wait_any
from .item import ItemState
from .stages import STAGES, finalize, record_event

__all__ = ["ItemSource", "run_hybrid"]

log = logging.getLogger("gpuopt")

#: seconds an item's tasks may run past its deadline before they are cancelled (they stop
#: themselves at the deadline; this only bounds a stuck one)
DEADLINE_GRACE = 2.0


@dataclass(frozen=True)
class ItemSource:
    """An item to run: ``key``, and ``build()`` returning its :class:`ItemState` (raising
    :class:`~gpuopt.errors.GpuoptError` for bad input, which ends the item ``error``)."""

    key: str
    build: Callable[[], ItemState]


@dataclass(eq=False)
class _Active:
    key: str
    item: ItemState
    order: int  # admission order (older items are served first)
    stage: int = -1  # index into the stage table of the task stage running
    handles: set = field(default_factory=set)
    queue: deque = field(default_factory=deque)  # planned tasks of the current stage, not yet submitted
    started: float = 0.0  # time.time() when the current stage was planned
    last_end: float | None = None  # time.time() at which the last task of this stage merged in time ended


def run_hybrid(sources: Iterable[ItemSource], executor, *, stages=STAGES, group_size: int = 8,
               max_active: int | None = None) -> Iterator[tuple[str, ItemState | BaseException]]:
    """Run items through the batch stages here and the task stages on ``executor``; yields
    ``(key, finished ItemState)`` (or ``(key, exception)`` when building failed) as items end.
    ``group_size`` items are admitted (and batched) at a time while fewer than ``max_active``
    (default ``workers + 1``) wait for tasks: an item's clock runs from its admission, so
    admitting far ahead of the pool would spend the budgets of items waiting in its queue."""
    stages = tuple(stages)
    max_active = max_active or max(1, executor.n_workers) + 1
    it = iter(sources)
    exhausted = False
    active: dict[str, _Active] = {}
    owner: dict = {}  # task handle -> (key, spec)

    n_workers = max(1, executor.n_workers)
    admitted = [0]

    def submit_next_stage(act: _Active) -> bool:
        """Plans the next enabled task stage of ``act`` into its queue; False when none is left."""
        item = act.item
        for s in range(act.stage + 1, len(stages)):
            stage = stages[s]
            if stage.kind != "task" or not stage.enabled(item.config, item):
                continue
            act.stage, act.started, act.last_end = s, time.time(), None
            specs = stage.run(item)
            if not specs:  # nothing to run: the stage concludes on what it has
                stage.finish(item)
                record_event(item, stage.name, act.started, time.time(), _word(item), 0.0)
                if item.verdict is not None:
                    return False
                continue
            act.queue.extend(specs)
            return True
        return False

    def dispatch():
        """Submits queued tasks while fewer than ``n_workers`` are in the pool (see the module docstring)."""
        while len(owner) < n_workers:
            # an item with no time left starts nothing more: step 3 ends it
            waiting = [a for a in active.values() if a.queue and a.item.left() > 0]
            if not waiting:
                return
            act = min(waiting, key=lambda a: (len(a.handles), a.order))
            spec = act.queue.popleft()
            budget = max(0.0, act.item.left())
            h = executor.submit(spec.fn, *spec.args, budget, time.time(),
                                timeout=budget + DEADLINE_GRACE + 5.0 if math.isfinite(budget) else None, retries=1)
            owner[h] = (act.key, spec)
            act.handles.add(h)

    def end(act: _Active):
        for h in list(act.handles):
            h.cancel()
            owner.pop(h, None)
        act.handles.clear()
        act.queue.clear()
        active.pop(act.key, None)
        return act.key, finalize(act.item)

    def merge_and_expire(wait: float):
        """Steps 2 and 3: merges the tasks finished within ``wait`` seconds, refills the pool and
        ends the items past their deadlines; yields the items that end."""
        done = wait_any(list(owner), timeout=wait) if owner else []
        # results that ended first merge first: a late sibling cannot overrule an in-time decision
        for h in sorted(done, key=_ended):
            if h not in owner:  # its item ended with an earlier result of this batch (its tasks cancelled)
                continue
            key, spec = owner.pop(h)
            act = active.get(key)
            if act is None:
                continue
            act.handles.discard(h)
            item, stage = act.item, stages[act.stage]
            outcome = h.result()
            if outcome.status is TaskStatus.OK:
                value = outcome.value
                if _merge_in_time(item, stage, spec, value) and value.get("end") is not None:
                    act.last_end = max(act.last_end or 0.0, value["end"])
                record_event(item, stage.name, value.get("start", act.started), value.get("end", time.time()),
                             _word(item), value.get("end", 0.0) - value.get("start", 0.0))
            elif outcome.status is TaskStatus.TIMEOUT:
                item.decide(Status.TIMEOUT, message=f"{spec.label}: killed at the hard limit")
            elif outcome.status is not TaskStatus.CANCELLED:
                item.decide(Status.ERROR, message=f"{spec.label}: {outcome.error or outcome.status.value} "
                                                  f"(after {outcome.attempts} attempts)")
            if item.verdict is not None:
                yield end(act)
            elif not act.handles and not act.queue:
                stage.finish(item)
                if item.verdict is not None and act.last_end is not None:
                    _time_at(item, act.last_end)  # concluded on its tasks: timed when the last one ended
                if item.verdict is not None or not submit_next_stage(act):
                    yield end(act)
        dispatch()
        now = time.monotonic()
        for act in list(active.values()):
            # at once when none of its tasks runs; else after the grace, for them to report
            if act.item.deadline is not None and now > act.item.deadline + (DEADLINE_GRACE if act.handles else 0.0):
                act.item.decide(Status.TIMEOUT)
                yield end(act)

    while True:
        # 1. admit a group while the pool has room
        while not exhausted and len(active) < max_active:
            group, built = [], []
            # a group fills the free places (items decided by the batch stages leave at once)
            while len(group) < min(group_size, max_active - len(active)):
                try:
                    src = next(it)
                except StopIteration:
                    exhausted = True
                    break
                group.append(src)
            for src in group:
                try:
                    built.append((src.key, src.build()))
                except Exception as err:  # noqa: BLE001 - a bad item ends as an error, the run goes on
                    yield src.key, err
            if built:
                yield from _admit(built, stages, active, submit_next_stage, end, admitted)
            dispatch()  # the pool starts on this group's tasks while the next group is bounded
            # what finished while this group was bounded merges now, not after the next groups:
            # their workers get new tasks, and decisions are not held back
            yield from merge_and_expire(0.0)
        dispatch()
        if exhausted and not active:
            return
        # 2. merge finished tasks, 3. deadlines
        can_admit = not exhausted and len(active) < max_active
        yield from merge_and_expire(0.0 if can_admit else 0.5)


def _ended(handle) -> float:
    """The wall-clock end of a finished task's run (``inf`` when it reported none)."""
    outcome = handle.result()
    value = outcome.value if outcome.status is TaskStatus.OK else None
    end = value.get("end") if isinstance(value, dict) else None
    return end if isinstance(end, (int, float)) else math.inf


def _merge_in_time(item: ItemState, stage, spec, value: dict) -> bool:
    """Merges a task's result if the task ended by the item's deadline (True), else ends the item
    ``timeout`` (False); a decision it brings is timed at the task's end, not at this (possibly
    late) merge."""
    ended = value.get("end")
    if ended is not None and item.deadline is not None:
        now_wall, now = time.time(), time.monotonic()
        late = ended - (now_wall + (item.deadline - now))  # seconds past the deadline, on the wall clock
        if late > 0:
            item.decide(Status.TIMEOUT, message=f"{spec.label}: its result came {late:.2f} s after the item's deadline")
            return False
    undecided = item.verdict is None
    stage.merge(item, spec, value)
    if undecided and item.verdict is not None and ended is not None:
        _time_at(item, ended)
    return True


def _time_at(item: ItemState, wall: float) -> None:
    """Times the item's verdict at the wall-clock moment ``wall`` (when the work that decided it
    ended), if that is earlier than the moment it was recorded; a ``timeout`` keeps its time."""
    if item.verdict.status is Status.TIMEOUT:
        return
    at = wall - (time.time() - (time.monotonic() - item.t0))  # in seconds from the item's start
    item.verdict = replace(item.verdict, seconds=max(0.0, min(item.verdict.seconds, at)))


def _word(item: ItemState) -> str:
    if item.verdict is None:
        return "open"
    return "timeout" if item.verdict.status is Status.TIMEOUT else "decided"


def _admit(built, stages, active, submit_next_stage, end, admitted):
    """Runs the batch stages on a freshly built group, then submits task stages for the open items."""
    items = [item for _, item in built]
    for stage in stages:
        if stage.kind == "task":
            continue
        todo = [item for item in items if item.verdict is None and stage.enabled(item.config, item)
                and (stage.name == "bounds" or item.left() > 0)]
        for item in items:
            if item.verdict is None and stage.name != "bounds" and item.left() <= 0:
                item.decide(Status.TIMEOUT)
        if not todo:
            continue
        ts, wall = time.monotonic(), time.time()
        words = stage.run(todo) if stage.kind == "batch" else [stage.run(item) for item in todo]
        for item, word in zip(todo, words):
            record_event(item, stage.name, wall, time.time(), word, time.monotonic() - ts)
    for key, item in built:
        admitted[0] += 1
        act = _Active(key, item, admitted[0])
        active[key] = act
        if item.verdict is not None or not submit_next_stage(act):
            yield end(act)

