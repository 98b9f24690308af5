"""The engine: items, stages and the executors that run CPU tasks beside the GPU work.

Importing this package is light (no torch, no pebble, no worker processes).
"""

from .executor import (Executor, LocalExecutor, TaskHandle, TaskOutcome, TaskStatus,
                       default_workers, wait_any)

__all__ = [
    "Executor", "LocalExecutor", "TaskHandle", "TaskOutcome", "TaskStatus", "default_workers",
    "wait_any",
]
