"""The results store: append-only JSONL, one record per decided item, that survives a crash.

Each record is one JSON object on one line with a unique ``key`` (the item's id). A record is
written with a single ``write`` of the whole line, flushed and ``fsync``-ed before
:meth:`ResultStore.append` returns, so a run killed at any moment (SIGKILL included) leaves every
returned record on disk and at most one torn last line. Opening the file again drops a torn last
line (it is truncated back to the last newline), so appends always start on a line boundary;
:meth:`ResultStore.keys` tells a resumed run which items are done, and :meth:`append` refuses a
key twice.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterator

from ..errors import InvalidInputError

__all__ = ["ResultStore", "read_records"]


def _json_safe(value):
    """Replace non-finite floats by strings, recursively (JSON has no inf/nan)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def read_records(path) -> Iterator[dict]:
    """The complete records of a results file, in order; a torn or unreadable line is skipped."""
    p = Path(path)
    if not p.exists():
        return
    with open(p, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break  # a torn last line: the record was never completed
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(rec, dict) and "key" in rec:
                yield rec


class ResultStore:
    """Append-only JSONL results file (see the module docstring).

    ``resume=False`` refuses an existing non-empty file (so a new run never mixes with an old
    one); ``resume=True`` keeps its records and appends after them.
    """

    def __init__(self, path, *, resume: bool = False):
        self.path = Path(path)
        if self.path.is_dir():
            raise InvalidInputError(f"`results` must be a file, got the directory {self.path}")
        if not self.path.parent.is_dir():
            raise InvalidInputError(f"the folder of the results file does not exist: {self.path.parent}")
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists and not resume:
            raise InvalidInputError(f"the results file {self.path} already exists: pass --resume to continue "
                                    "it, or choose another file")
        if exists:
            self._drop_torn_tail()
        self._records = {rec["key"]: rec for rec in read_records(self.path)}
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _drop_torn_tail(self) -> None:
        with open(self.path, "rb+") as f:
            data = f.read()
            end = data.rfind(b"\n") + 1
            if end != len(data):
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())

    def keys(self) -> set:
        """Keys of the records already on disk (done items)."""
        return set(self._records)

    def records(self) -> list[dict]:
        return list(self._records.values())

    def __contains__(self, key) -> bool:
        return key in self._records

    def append(self, record: dict) -> None:
        """Write ``record`` (which must hold a new ``key``) durably, as one line."""
        if "key" not in record:
            raise InvalidInputError("a result record needs a `key`")
        key = record["key"]
        if key in self._records:
            raise InvalidInputError(f"the results file already holds a record for {key!r}")
        line = (json.dumps(_json_safe(record), separators=(",", ":")) + "\n").encode()
        os.write(self._fd, line)
        os.fsync(self._fd)
        self._records[key] = record

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
