"""The results store: append-only JSONL, one record per decided item, that survives a crash.

Each record is one JSON object on one line with a unique ``key`` (the item's id). A record is
written with a single ``write`` of the whole line, flushed and ``fsync``-ed before
:meth:`ResultStore.append` returns, so a run killed at any moment (SIGKILL included) leaves every
returned record on disk and at most one torn last line. Opening the file again drops a torn last
line (it is truncated back to the last newline), so appends always start on a line boundary;
:meth:`ResultStore.keys` tells a resumed run which items are done, and :meth:`append` refuses a
key twice.

A store opened with ``run`` (a JSON-able description of the question every record answers: the
network's digest, the data's, the clip box, ...) writes it as the file's first line,
``{"run": ...}`` (no ``key``, so readers of records skip it), and a resumed run must describe
the same question: records keyed ``sample@eps`` of one network would otherwise pass as another's.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Iterator

from ..errors import InvalidInputError

__all__ = ["ResultStore", "read_records", "read_run_header"]


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


def read_run_header(path) -> dict | None:
    """The ``run`` header of a results file (its first line, ``{"run": ...}``), or None."""
    p = Path(path)
    if not p.exists():
        return None
    with open(p, "rb") as f:
        first = f.readline()
    if not first.endswith(b"\n"):
        return None
    try:
        obj = json.loads(first)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if isinstance(obj, dict) and "key" not in obj and isinstance(obj.get("run"), dict):
        return obj["run"]
    return None


class ResultStore:
    """Append-only JSONL results file (see the module docstring).

    ``resume=False`` refuses an existing non-empty file (so a new run never mixes with an old
    one); ``resume=True`` keeps its records and appends after them, after checking that the
    file's ``run`` header (if it has one) equals ``run`` (see the module docstring).
    """

    def __init__(self, path, *, resume: bool = False, run: dict | None = None):
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
        run = None if run is None else json.loads(json.dumps(_json_safe(run)))  # as it reads back
        header = read_run_header(self.path)
        if run is None and header is not None:
            raise InvalidInputError(f"the results file {self.path} holds the records of a {header.get('kind')} run; "
                                    "choose another results file")
        if run is not None and header is not None and header != run:
            diff = sorted(k for k in set(run) | set(header) if run.get(k) != header.get(k))
            what = "; ".join(f"{k}: {header.get(k)!r} there, {run.get(k)!r} now" for k in diff)
            raise InvalidInputError(f"the results file {self.path} holds the records of another run ({what}); "
                                    "choose another results file")
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if run is not None and header is None:
            if self._records:  # written before run headers existed: nothing to compare with
                logging.getLogger("gpuopt").warning(
                    "%s has no run header: cannot check that its records answer this run's question", self.path)
            else:
                self._write({"run": run})

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
        self._write(record)
        self._records[key] = record

    def _write(self, obj: dict) -> None:
        line = (json.dumps(_json_safe(obj), separators=(",", ":")) + "\n").encode()
        os.write(self._fd, line)
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
