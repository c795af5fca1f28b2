"""Where a stopped `reprocess` run got to, so the same command continues after it.

One small JSON file per (database, job, mode, --since): the high-water id taken at the start and
the id of the last row whose job the broker confirmed. Together with the dedup rows this is what
keeps a restart from sending a job twice, even for rows whose first job has finished meanwhile
(its dedup row is gone, but the cursor is past it). The file is deleted when the run completes,
and locked while a run uses it, so two runs of the same command cannot interleave."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path

from workers.errors import PipelineError


PADDING = 64      # spare bytes, so a growing state rarely changes the file's length


class CheckpointBusy(PipelineError, RuntimeError):
    """Another run of the same command holds the checkpoint."""


class CheckpointUnreadable(PipelineError, RuntimeError):
    """The checkpoint file is damaged (or not ours)."""


class Checkpoint:
    def __init__(self, path: Path | None = None, state: dict | None = None):
        self.path = path
        self.state = state or {}
        self._lock = None
        self._fd: int | None = None
        self._size = 0

    @classmethod
    def memory(cls) -> "Checkpoint":
        """A checkpoint that is never written (dry runs, --failed)."""
        return cls()

    @staticmethod
    def path_for(directory: Path, run: dict) -> Path:
        """The file of the run described by `run` (JSON-able, with "job" and "mode")."""
        key = hashlib.sha256(json.dumps(run, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return Path(directory) / f"{run['job']}-{run['mode']}-{key}.json"

    @classmethod
    def peek(cls, directory: Path, run: dict) -> "Checkpoint":
        """Read only, unlocked, never written: what a dry run shows."""
        path = cls.path_for(directory, run)
        return cls(None, _read(path) if path.exists() else None)

    @classmethod
    def open(cls, directory: Path, run: dict, fresh: bool = False) -> "Checkpoint":
        """The run's checkpoint, locked against a second run of the same command; `fresh`
        forgets a saved one."""
        path = cls.path_for(directory, run)
        path.parent.mkdir(parents=True, exist_ok=True)
        cp = cls(path)
        cp._lock = open(path.with_suffix(".lock"), "a")
        try:
            fcntl.flock(cp._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            cp._lock.close()
            raise CheckpointBusy(f"another reprocess run with these options is using {path}") from None
        try:
            if path.exists() and not fresh:
                cp.state = _read(path)
            elif path.exists():
                path.unlink()
        except BaseException:
            cp.close()
            raise
        return cp

    @property
    def resumed(self) -> bool:
        return "cursor" in self.state

    def start(self, high_water: int, started_at: str) -> None:
        """A new run (nothing saved): remember its high-water id."""
        self.state = {"high_water": high_water, "started_at": started_at, "cursor": 0, "counts": {}}
        self._write()

    def advance(self, cursor: int, outcome: str) -> None:
        """Row `cursor` is dealt with (`outcome`: published, already queued, ...)."""
        self.state["cursor"] = cursor
        counts = self.state["counts"]
        counts[outcome] = counts.get(outcome, 0) + 1
        self._write()

    def finish(self) -> None:
        """The run is complete: the next identical command starts a new one."""
        self.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock is not None:
            self._lock.close()      # releases the flock
            self._lock = None

    def _write(self) -> None:
        """Overwrite the file in place with one pwrite, padded to at least its old length: one
        system call, so a crashed process leaves the old or the new state (a write-and-rename per
        job cost 0.7 ms, this 0.01 ms)."""
        if self.path is None:
            return
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o664)
        data = json.dumps(self.state).encode()
        self._size = max(self._size, len(data) + PADDING)
        os.pwrite(self._fd, data.ljust(self._size), 0)     # JSON allows trailing blanks


def _read(path: Path) -> dict:
    try:
        state = json.loads(path.read_text())
        if not isinstance(state, dict) or not {"cursor", "high_water", "counts"} <= state.keys():
            raise ValueError("missing keys")
    except ValueError as exc:
        raise CheckpointUnreadable(f"{path} is not a reprocess checkpoint ({exc}): --fresh starts over") from None
    return state
