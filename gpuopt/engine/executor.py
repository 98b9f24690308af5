"""Task executors: run CPU tasks (LP walk, OBBT, MILP) in worker processes beside the GPU work.

A *task* is a picklable module-level function with picklable (plain data) arguments. It runs
in a fresh *spawned* worker process that imports what the task needs and nothing else; nothing
relies on globals inherited from the caller. Every submitted task ends in exactly one
:class:`TaskOutcome`, whatever happens to it::

    with LocalExecutor(workers=4) as ex:
        handles = [ex.submit(solve_leaf, leaf, cfg, timeout=60.0) for leaf in leaves]
        while handles:
            for h in wait_any(handles, timeout=1.0):
                handles.remove(h)
                merge(h.result())          # never raises for a failed task

==============  ===========================================================================
status          meaning
==============  ===========================================================================
``ok``          the function returned; ``value`` holds its return value
``error``       the function raised; ``error`` reads ``"ExcType: message"``; not retried
                (a Python exception is deterministic)
``timeout``     the task ran longer than its ``timeout``; its worker was killed; not retried
``crashed``     the worker died (``os._exit``, segfault, SIGKILL) or the task raised
                ``MemoryError``; retried ``retries`` times (default once) on a fresh worker,
                then reported with the cause, e.g. ``"worker died (exit code -11, SIGSEGV)"``
``cancelled``   :meth:`TaskHandle.cancel` was called or the executor was closed first; a
                running task's worker is killed
==============  ===========================================================================

:class:`Executor` is the interface callers use; :class:`LocalExecutor` implements it on a
``pebble.ProcessPool`` (a dying worker fails only its own task and is replaced; per-task
timeouts kill the worker). A Ray implementation can slot in behind the same interface.

Notes on :class:`LocalExecutor`:

- Start method ``spawn`` (never ``fork``: it is unsafe once CUDA or threads exist). A spawned
  worker receives the caller's ``sys.path`` and working directory, so a task function must be
  importable from there (a module of an installed package, or of a directory on ``sys.path``);
  functions defined interactively in ``__main__`` are rejected at :meth:`~Executor.submit`.
- Each worker uses one thread: ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``,
  ``OPENBLAS_NUM_THREADS`` (and the numexpr/vecLib equivalents) are set to ``1`` in the worker
  before any task runs, so numpy and torch imported by a task use one thread; if torch is
  already imported in the worker (e.g. by the caller's ``__main__``), ``torch.set_num_threads(1)``
  is called. The caller's own environment is not touched. Pass ``threads=1`` to HiGHS too.
- The worker-side machinery is standard library only (no gpuopt, no torch import), so a worker
  starts in about 0.2 s; a task pays for the imports it needs, once per worker. But spawn
  re-runs the caller's main *script* (not a ``python -m`` module) in every worker: a script
  that imports gpuopt (hence torch) at top level makes each worker start take seconds. Keep a
  script's imports inside ``if __name__ == "__main__":`` or a function.
- A task's exception or return value never crosses the pipe as an object: the worker sends
  pickled bytes of ``("ok", value)`` or of the exception's type name, message and traceback.
  An exception class that cannot be (un)pickled, or an unpicklable return value, is an
  ``error`` outcome; it cannot kill the worker or break the pool.
- The task timeout counts from the moment a worker starts the task (queueing time is free). A
  task stuck inside C code that ignores SIGTERM (a long HiGHS call) is SIGKILLed after pebble's
  3 s grace period: give the solver its own time limit slightly below the task timeout.
- When a worker dies, pebble fails the last task it saw acknowledged by that worker; if the
  worker had finished that task (its reply still unread) and died in the next one, pebble
  blames the wrong task and leaves the real one "running". The runner therefore marks each
  attempt's start (with its pid) and end in small files; a task blamed after its end (or
  before its start) is rerun without counting an attempt, and the task that was really
  running in the dead worker is failed as ``crashed`` (and retried).
- Always pass a ``timeout`` for tasks of unknown length: it is also the backstop for the one
  case pebble cannot see, a worker that exits with status 0 in the middle of a task.
"""

from __future__ import annotations

import abc
import concurrent.futures
import enum
import functools
import importlib
import itertools
import logging
import math
import numbers
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .. import host_memory
from ..errors import InvalidInputError

logger = logging.getLogger("gpuopt")

__all__ = [
    "Executor", "LocalExecutor", "TaskHandle", "TaskOutcome", "TaskStatus", "default_workers",
    "wait_any",
]


class TaskStatus(enum.Enum):
    """How a task ended."""

    OK = "ok"
    TIMEOUT = "timeout"
    CRASHED = "crashed"
    ERROR = "error"
    CANCELLED = "cancelled"


@dataclass(frozen=True, kw_only=True)
class TaskOutcome:
    """The end of one task.

    Attributes:
        status: how it ended.
        value: the function's return value (``None`` unless ``status`` is ``ok``).
        error: a one-line message (``None`` when ``status`` is ``ok``), e.g.
            ``"ValueError: bad shape"``, ``"task exceeded its 3.0 s limit"``,
            ``"worker died (exit code -11, SIGSEGV)"``.
        attempts: how many times the task was handed to a worker (2 after one retry).
        seconds: wall time from :meth:`Executor.submit` to the outcome, all attempts included.
    """

    status: TaskStatus
    value: Any
    error: str | None
    attempts: int
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status is TaskStatus.OK


class TaskHandle(abc.ABC):
    """A submitted task. Its outcome is delivered through a ``concurrent.futures.Future``."""

    def __init__(self) -> None:
        self._outcome: concurrent.futures.Future[TaskOutcome] = concurrent.futures.Future()

    def done(self) -> bool:
        """Whether the task has its final outcome (retries included)."""
        return self._outcome.done()

    def result(self, timeout: float | None = None) -> TaskOutcome:
        """Wait for the outcome and return it.

        A failed, crashed, timed-out or cancelled task is an outcome, never an exception. Only
        the wait itself can fail: ``TimeoutError`` if the outcome is not there after
        ``timeout`` seconds (``None``: wait as long as it takes).
        """
        try:
            return self._outcome.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"task not finished within {timeout} s") from None

    @abc.abstractmethod
    def cancel(self) -> bool:
        """Stop the task (a running one is killed); its outcome becomes ``cancelled``.

        Returns ``True`` if the outcome is ``cancelled``, ``False`` if the task had already
        ended otherwise.
        """


class Executor(abc.ABC):
    """Runs tasks (picklable module-level functions) in worker processes.

    Use as a context manager or call :meth:`close`; leaving the block cancels what is still
    running, so collect outcomes inside it.
    """

    @property
    @abc.abstractmethod
    def n_workers(self) -> int:
        """Number of worker processes (tasks that run at the same time)."""

    @abc.abstractmethod
    def submit(self, fn: Callable[..., Any], /, *args: Any, timeout: float | None,
               retries: int = 1, **kwargs: Any) -> TaskHandle:
        """Schedule ``fn(*args, **kwargs)`` in a worker and return its handle at once.

        Args:
            fn: a module-level function, importable by a fresh process (no lambda, no local
                function). Its arguments and return value must be picklable.
            timeout: seconds the task may run once started; ``None`` for no limit (stated
                explicitly, as the limit is the backstop against a hung task).
            retries: how often a task whose worker died is run again on a fresh worker.

        ``timeout`` and ``retries`` are the executor's; the task cannot take keyword arguments
        with these names. Raises :class:`~gpuopt.errors.InvalidInputError` if ``fn`` or its
        arguments cannot be pickled, or an option is invalid; ``RuntimeError`` once closed.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Cancel unfinished tasks (their outcome: ``cancelled``) and stop the workers.

        Idempotent.
        """

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def wait_any(handles: Iterable[TaskHandle], timeout: float | None = None) -> list[TaskHandle]:
    """Wait until at least one handle is done (or ``timeout`` seconds pass).

    Returns the handles that are done, in the order given (empty if the wait timed out or
    ``handles`` is empty).
    """
    handles = list(handles)
    for h in handles:
        if not isinstance(h, TaskHandle):
            raise InvalidInputError(f"`handles` must hold TaskHandle objects; got {type(h).__name__}")
    if timeout is not None:
        timeout = _seconds_iv(timeout, "timeout", allow_zero=True)
    if not handles:
        return []
    concurrent.futures.wait([h._outcome for h in handles], timeout=timeout,
                            return_when=concurrent.futures.FIRST_COMPLETED)
    return [h for h in handles if h.done()]


def default_workers() -> int:
    """One worker per usable CPU core, less one for the process driving the GPU (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))  # respects taskset / cgroup cpusets
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


# ---------------------------------------------------------------------------------------------
# validation


def _seconds_iv(value: object, name: str, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        what = "a non-negative" if allow_zero else "a positive"
        raise InvalidInputError(f"`{name}` must be None or {what} finite number of seconds; got {value!r}")
    return float(value)


def _workers_iv(workers: object) -> int:
    if workers is None:
        return default_workers()
    if not isinstance(workers, numbers.Integral) or isinstance(workers, bool) or workers < 1:
        raise InvalidInputError(f"`workers` must be None or a positive integer; got {workers!r}")
    return int(workers)


class _Invoke:
    """Pickles as "call fn(*args, **kwargs)": unpickling it in the worker runs the task.

    The caller pickles it once, at submit (so a retry does not pickle the arguments again), and
    the worker-side runner unpickles it inside its own error handling: a function or argument
    the worker cannot import becomes an ordinary ``error`` outcome.
    """

    __slots__ = ("fn", "args", "kwargs")

    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict):
        self.fn, self.args, self.kwargs = fn, args, kwargs

    def __reduce__(self):
        return functools.partial(self.fn, *self.args, **self.kwargs), ()


def _task_name(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None) or repr(fn)
    return f"{module}.{name}" if module else name


def _submit_iv(fn: object, args: tuple, kwargs: dict, timeout: object,
               retries: object) -> tuple[str, bytes, float | None, int]:
    if not callable(fn):
        raise InvalidInputError(f"`fn` must be a callable; got {type(fn).__name__}")
    name = _task_name(fn)
    if getattr(fn, "__module__", None) == "__main__" and not hasattr(sys.modules.get("__main__"), "__file__"):
        raise InvalidInputError(
            f"`fn` must be defined in an importable module; {name} was defined interactively, "
            "and worker processes cannot import it")
    try:
        pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # PicklingError, AttributeError, TypeError
        raise InvalidInputError(
            f"`fn` must be a picklable module-level function (not a lambda or a local "
            f"function); pickling {name} failed: {exc}") from exc
    if timeout is not None:
        timeout = _seconds_iv(timeout, "timeout")
    if not isinstance(retries, numbers.Integral) or isinstance(retries, bool) or retries < 0:
        raise InvalidInputError(f"`retries` must be a non-negative integer; got {retries!r}")
    try:
        blob = pickle.dumps(_Invoke(fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise InvalidInputError(
            f"the arguments of {name} must be picklable (plain data, arrays, frozen configs); "
            f"pickling them failed: {exc}") from exc
    return name, blob, timeout, int(retries)


# ---------------------------------------------------------------------------------------------
# local process pool (pebble)

# The worker side is standard library only, so a worker imports neither gpuopt nor torch (which
# ``import gpuopt`` pulls in) unless a task needs them. It is shipped as source: the pool's
# initializer is the builtin ``exec`` running _WORKER_INIT, which sets the thread limits and
# compiles _RUNNER_SOURCE into a module ``_gpuopt_worker``; the task each worker is handed is
# ``_gpuopt_worker.run(blob)`` (see _RunnerRef), with ``blob`` a pickled _Invoke.
#
# ``run`` returns bytes: pickle of ("ok", value) or ("raised", kind, type name, message,
# traceback). No exception object and no unpicklable value ever crosses the pipe, so a task
# cannot kill its worker or break pebble's result thread with an exception class that does
# not pickle or unpickle (e.g. one with a custom ``__init__``) or with an unpicklable result.
_RUNNER_SOURCE = """
import os
import pickle
import traceback


def run(blob, mark=None):
    if mark is not None:
        _touch(mark + ".start", str(os.getpid()))
    reply = _call(blob)
    if mark is not None:
        _touch(mark + ".done", "")
    return reply


def _touch(path, text):
    # atomically (a temporary file renamed into place): a reader never sees the marker created
    # but still empty
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        pass


def _call(blob):
    try:
        value = pickle.loads(blob)  # unpickling the _Invoke calls the task
    except MemoryError as exc:
        return _raised("memory", exc)
    except BaseException as exc:  # SystemExit too: a task must not end its worker
        return _raised("exception", exc)
    try:
        return pickle.dumps(("ok", value), protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException as exc:
        return _raised("unpicklable", exc)


def _raised(kind, exc):
    try:
        text = str(exc)
    except BaseException:
        text = "<unprintable>"
    return pickle.dumps(("raised", kind, type(exc).__name__, text, traceback.format_exc()),
                        protocol=pickle.HIGHEST_PROTOCOL)
"""

_WORKER_INIT = """
import os, sys, types
for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
              "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
    os.environ[_name] = "1"  # read by numpy's BLAS / torch when a task imports them
if "torch" in sys.modules:  # imported already, e.g. by the caller's __main__
    sys.modules["torch"].set_num_threads(1)
if "numpy" in sys.modules:
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(1)
    except ImportError:
        pass
try:  # gpuopt/host_memory.py run as a file: no gpuopt (and so no torch) import here
    import runpy
    runpy.run_path(HOST_MEMORY)["keep_freed_memory"]()
except Exception:
    pass
_module = types.ModuleType("_gpuopt_worker")
exec(RUNNER_SOURCE, _module.__dict__)
sys.modules["_gpuopt_worker"] = _module
"""


class _ModuleRef:
    """Pickles as ``importlib.import_module(name)`` (resolved in the worker, not here)."""

    def __init__(self, name: str):
        self.name = name

    def __reduce__(self):
        return importlib.import_module, (self.name,)


class _RunnerRef:
    """Pickles as the worker's ``_gpuopt_worker.run``: the function pebble calls there."""

    def __reduce__(self):
        return getattr, (_ModuleRef("_gpuopt_worker"), "run")


class _ExecutorClosed(Exception):
    pass


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit code unknown"
    if code < 0:
        try:
            return f"exit code {code}, {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exit code {code}"


def _format_error(type_name: str, text: str) -> str:
    """``"ExcType: first line of the message"``, at most ~500 characters."""
    lines = text.strip().splitlines()
    first = lines[0] if lines else ""
    if len(first) > 500:
        first = first[:497] + "..."
    return f"{type_name}: {first}" if first else type_name


def _one_line(exc: BaseException) -> str:
    return _format_error(type(exc).__name__, str(exc))


def _classify(fut: concurrent.futures.Future, timeout: float | None, name: str
              ) -> tuple[TaskStatus, Any, str | None, bool]:
    """(status, value, error, retryable) of a finished pebble future."""
    from pebble import ProcessExpired

    if fut.cancelled():
        return TaskStatus.CANCELLED, None, "cancelled", False
    exc = fut.exception()
    if exc is None:  # the runner's reply
        try:
            reply = pickle.loads(fut.result())
        except Exception as load_exc:  # e.g. the value's class is not importable here
            return (TaskStatus.ERROR, None,
                    f"the return value could not be unpickled: {_one_line(load_exc)}", False)
        if reply[0] == "ok":
            return TaskStatus.OK, reply[1], None, False
        _, kind, type_name, text, remote_tb = reply
        logger.debug("gpuopt executor: task %s raised:\n%s", name, remote_tb)
        error = _format_error(type_name, text)
        if kind == "memory":  # environmental (other workers' memory): worth a retry
            return TaskStatus.CRASHED, None, error, True
        if kind == "unpicklable":
            return TaskStatus.ERROR, None, f"the return value could not be pickled: {error}", False
        return TaskStatus.ERROR, None, error, False
    if isinstance(exc, ProcessExpired):
        return TaskStatus.CRASHED, None, f"worker died ({_describe_exit(exc.exitcode)})", True
    if isinstance(exc, BrokenProcessPool):
        return TaskStatus.CRASHED, None, f"worker pool broke ({exc})", True
    if isinstance(exc, concurrent.futures.TimeoutError):  # pebble's: the runner never raises
        return TaskStatus.TIMEOUT, None, f"task exceeded its {timeout} s limit", False
    # pebble could not hand the task over (should not happen: the payload is bytes)
    logger.debug("gpuopt executor: task %s failed in the pool: %r", name, exc)
    return TaskStatus.ERROR, None, _one_line(exc), False


class _LocalHandle(TaskHandle):
    """Handle of a task on a :class:`LocalExecutor`.

    It follows one pebble future at a time (``_fut``). The pebble future's done-callback (run in
    a pebble thread, or here when already done) either resubmits the same pickled call (a
    worker death, with attempts left) or sets the final outcome. A callback of a future that is
    no longer the current one is ignored, so an attempt can never be reported twice.
    """

    def __init__(self, executor: LocalExecutor, name: str, blob: bytes, timeout: float | None,
                 retries: int):
        super().__init__()
        self._executor = executor
        self._name = name
        self._blob = blob
        self._timeout = timeout
        self._max_attempts = retries + 1
        self._lock = threading.RLock()  # re-entered when pebble runs a callback synchronously
        self._fut: concurrent.futures.Future | None = None
        self._gen = -1  # generation of the pebble pool holding _fut
        self._attempts = 0
        self._uncounted = 0  # restarts after pebble blamed this task for another's death
        self._mark: str | None = None  # the runner's marker files of the current attempt
        self._victim: str | None = None  # set when cancelled as the real victim of a death
        self._t0 = time.monotonic()

    def __repr__(self) -> str:
        state = self._outcome.result().status.value if self.done() else "pending"
        return f"<TaskHandle {self._name} {state} attempts={self._attempts}>"

    # all methods below run with self._lock held unless stated otherwise

    def _start(self, *, count: bool = True) -> None:
        if count:
            self._attempts += 1
        self._victim = None
        self._mark = self._executor._new_mark()
        try:
            fut, gen = self._executor._schedule(self._blob, self._timeout, self._mark)
        except _ExecutorClosed:
            self._finish(TaskStatus.CANCELLED, error="cancelled: the executor was closed")
            return
        except Exception as exc:  # pebble refused the task: fail it, never lose it
            logger.exception("gpuopt executor: could not schedule task %s", self._name)
            self._finish(TaskStatus.CRASHED, error=f"could not schedule: {_one_line(exc)}")
            return
        self._fut, self._gen = fut, gen
        fut.add_done_callback(self._on_done)

    def _on_done(self, fut: concurrent.futures.Future) -> None:  # takes the lock
        blame = None
        with self._lock:
            if fut is not self._fut or self._outcome.done():
                return
            if self._victim is not None and fut.cancelled():
                status, value, error, retryable = TaskStatus.CRASHED, None, self._victim, True
            else:
                status, value, error, retryable = _classify(fut, self._timeout, self._name)
                if _broke_pool(fut) and self._uncounted < 3:
                    # the whole pool was aborted (pebble's "All workers expired": a worker
                    # died before pebble read which task it had started). Only the task that
                    # was running in the dead worker is charged an attempt; the others rerun.
                    code = self._executor._exit_code(self._running_pid())
                    if code is None or not self._died_running():
                        logger.debug("gpuopt executor: task %s was aborted with its broken pool; "
                                     "rerunning it", self._name)
                        self._uncounted += 1
                        self._start(count=False)
                        return
                    error = f"worker died ({_describe_exit(code)})"
                dead_pid = _expired_pid(fut)
                if dead_pid is not None and not self._died_running() and self._uncounted < 3:
                    # pebble blames the last task it saw acknowledged by the dead worker; this
                    # one had already finished there (its reply was not yet read) or never
                    # started: run it again, uncounted, and fail the task that really died
                    logger.debug("gpuopt executor: task %s was blamed for worker %d's death; "
                                 "rerunning it", self._name, dead_pid)
                    self._uncounted += 1
                    blame = (dead_pid, error)
                    self._start(count=False)
                    status = None
            if status is not None:
                if retryable and self._attempts < self._max_attempts:
                    logger.warning("gpuopt executor: task %s: %s; retrying (attempt %d of %d)",
                                   self._name, error, self._attempts + 1, self._max_attempts)
                    self._start()
                    return
                self._finish(status, value, error)
        if blame is not None:
            self._executor._fail_victims(*blame)

    def _died_running(self) -> bool:
        """Whether the current attempt's runner started and did not finish."""
        mark = self._mark
        return (mark is None or (os.path.exists(mark + ".start")
                                 and not os.path.exists(mark + ".done")))

    def _running_pid(self) -> int | None:
        """The worker the current attempt started in, while it has not finished."""
        mark = self._mark
        if mark is None or os.path.exists(mark + ".done"):
            return None
        try:
            with open(mark + ".start") as f:
                return int(f.read())
        except (OSError, ValueError):
            return None

    def _running_in(self, pid: int) -> bool:
        """Whether the current attempt started in worker ``pid`` and has not finished."""
        return self._running_pid() == pid

    def _rescue(self, old_gen: int) -> None:  # takes the lock
        """Resubmit after the pool of generation ``old_gen`` broke, if still on it."""
        with self._lock:
            if self._gen != old_gen or self._outcome.done():
                return
            if self._fut is not None and self._fut.done():
                return  # its done-callback decides (and counts the attempt)
            ran = self._fut is not None and self._fut.running()
            if ran and self._attempts >= self._max_attempts:
                self._finish(TaskStatus.CRASHED, error="worker pool broke")
                return
            self._start(count=ran)  # a task that never started does not lose an attempt

    def _finish(self, status: TaskStatus, value: Any = None, error: str | None = None) -> None:
        outcome = TaskOutcome(status=status, value=value, error=error, attempts=self._attempts,
                              seconds=time.monotonic() - self._t0)
        self._executor._forget(self)
        logger.debug("gpuopt executor: task %s -> %s (%s) after %d attempt(s), %.3f s",
                     self._name, status.value, error, outcome.attempts, outcome.seconds)
        self._outcome.set_result(outcome)

    def cancel(self) -> bool:
        with self._lock:
            if self._outcome.done():
                return self._outcome.result().status is TaskStatus.CANCELLED
            fut = self._fut
            self._finish(TaskStatus.CANCELLED, error="cancelled by the caller")
        if fut is not None:
            fut.cancel()  # pebble drops a queued task, and kills the worker of a running one
        return True


def _expired_pid(fut: concurrent.futures.Future) -> int | None:
    """The dead worker's pid when pebble failed ``fut`` with ``ProcessExpired``."""
    from pebble import ProcessExpired

    if fut.cancelled():
        return None
    exc = fut.exception()
    return exc.pid if isinstance(exc, ProcessExpired) and exc.pid else None


def _broke_pool(fut: concurrent.futures.Future) -> bool:
    """Whether pebble failed ``fut`` by aborting its whole pool."""
    return not fut.cancelled() and isinstance(fut.exception(), BrokenProcessPool)


def _retire_pool(pool: Any, orphans: list[_LocalHandle], old_gen: int) -> None:
    for handle in orphans:
        handle._rescue(old_gen)
    try:
        pool.stop()
        pool.join()  # kills its workers
    except Exception:  # pragma: no cover - best effort on an already broken pool
        logger.exception("gpuopt executor: could not stop a broken worker pool")


class LocalExecutor(Executor):
    """Process pool on this machine (``pebble.ProcessPool``, spawn start method).

    Args:
        workers: number of worker processes; default :func:`default_workers` (usable cores
            minus one, at least one).

    Workers are started at construction, in the background, so they are ready when the first
    tasks arrive. See the module docstring for what tasks may be and what workers do.
    """

    def __init__(self, workers: int | None = None):
        self._n = _workers_iv(workers)
        self._lock = threading.Lock()
        self._closed = False
        self._live: set[_LocalHandle] = set()
        self._retiring: list[threading.Thread] = []
        self._gen = 0
        self._marks = tempfile.mkdtemp(prefix="gpuopt-tasks-")
        self._mark_ids = itertools.count()
        self._exit_codes: dict[int, int] = {}  # pid -> exit code of workers seen dead
        self._pool = self._new_pool()

    def __repr__(self) -> str:
        return f"LocalExecutor(workers={self._n}{', closed' if self._closed else ''})"

    @property
    def n_workers(self) -> int:
        return self._n

    def _new_pool(self) -> Any:
        import multiprocessing

        import pebble

        pool = pebble.ProcessPool(max_workers=self._n,
                                  context=multiprocessing.get_context("spawn"),
                                  initializer=exec,
                                  initargs=(_WORKER_INIT, {"RUNNER_SOURCE": _RUNNER_SOURCE,
                                                           "HOST_MEMORY": host_memory.__file__}))
        self._record_exit_codes(pool)
        _ = pool.active  # reading it starts the pool: workers spawn now, not at the first task
        return pool

    def _record_exit_codes(self, pool: Any) -> None:
        """Keep the exit code of every worker pebble finds dead.

        When a worker dies before pebble has read which task it started, pebble aborts the
        whole pool without saying which worker died or how; the record lets the task that was
        running there (its marker names the worker) report ``worker died (exit code N)``.
        Without pebble's worker manager (another pebble version) nothing is recorded and such
        a task is rerun as one that never started, at most three times.
        """
        manager = getattr(getattr(pool, "_pool_manager", None), "worker_manager", None)
        inspect = getattr(manager, "inspect_workers", None)
        if inspect is None:
            return
        codes = self._exit_codes

        def inspect_and_record():
            expired = inspect()
            for pid, code in expired:
                codes[pid] = code
            return expired

        manager.inspect_workers = inspect_and_record

    def _exit_code(self, pid: int | None) -> int | None:
        """Exit code of worker ``pid`` if pebble has seen it die."""
        return None if pid is None else self._exit_codes.get(pid)

    def submit(self, fn: Callable[..., Any], /, *args: Any, timeout: float | None,
               retries: int = 1, **kwargs: Any) -> TaskHandle:
        name, blob, timeout, retries = _submit_iv(fn, args, kwargs, timeout, retries)
        handle = _LocalHandle(self, name, blob, timeout, retries)
        with self._lock:
            if self._closed:
                raise RuntimeError("the executor is closed")
            self._live.add(handle)
        with handle._lock:
            if not handle.done():  # close() may have cancelled it already
                handle._start()
        return handle

    def _new_mark(self) -> str:
        return os.path.join(self._marks, str(next(self._mark_ids)))

    def _fail_victims(self, pid: int, error: str) -> None:
        """Fail the tasks still running in dead worker ``pid``, which pebble missed."""
        with self._lock:
            live = list(self._live)
        for handle in live:
            with handle._lock:
                fut = handle._fut
                if handle.done() or fut is None or fut.done() or not handle._running_in(pid):
                    continue
                handle._victim = error
            fut.cancel()  # its done-callback retries or fails it as crashed

    def _schedule(self, blob: bytes, timeout: float | None,
                  mark: str | None = None) -> tuple[concurrent.futures.Future, int]:
        """Hand a pickled call to the pool; replace the pool if pebble reports it broken."""
        with self._lock:
            if self._closed:
                raise _ExecutorClosed
            try:
                return self._pool.schedule(_RunnerRef(), args=(blob, mark), timeout=timeout), self._gen
            except RuntimeError as exc:  # "Unexpected error within the Pool": it is broken
                logger.warning("gpuopt executor: the worker pool broke (%s); starting a new one", exc)
            old_pool, old_gen = self._pool, self._gen
            self._pool = self._new_pool()
            self._gen += 1
            # tasks still on the old pool that pebble may never resolve: resubmit them
            # (outside this lock and theirs: a helper thread, which then stops the old pool)
            orphans = [h for h in self._live if h._gen == old_gen]
            thread = threading.Thread(target=_retire_pool, args=(old_pool, orphans, old_gen),
                                      name="gpuopt-retire-pool", daemon=True)
            thread.start()
            self._retiring.append(thread)
            return self._pool.schedule(_RunnerRef(), args=(blob, mark), timeout=timeout), self._gen

    def _forget(self, handle: _LocalHandle) -> None:
        with self._lock:
            self._live.discard(handle)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            live = list(self._live)
            pool = self._pool
            retiring = list(self._retiring)
        for handle in live:
            handle.cancel()
        pool.stop()
        pool.join()
        for thread in retiring:
            thread.join()
        shutil.rmtree(self._marks, ignore_errors=True)
