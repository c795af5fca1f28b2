"""One long-lived `exiftool -stay_open` per process, driven through PyExifTool.

    exif.read(path, timeout=55) -> Result(tags, status, stderr)

Starting exiftool (Perl) costs far more than reading one photo, so each consumer process keeps
one running (pid-keyed: a forked pool worker starts its own) and restarts it if it died.
What this adds to PyExifTool's ExifToolHelper, and why:

  * No exception for exiftool's status 1 (empty or unreadable file): the JSON's `ExifTool:Error`
    says why, and the job stores it (sylikc/pyexiftool#75).
  * `-stay_open` reads one argument per line, so a file name with a newline would split into
    two arguments (options included): such paths go as `#[CSTR]` lines (see path_arg).
  * PyExifTool's reader spins forever if exiftool dies mid-command (EOF reads b"" in a loop) and
    has no time limit: it is replaced by one that raises `ExifToolDied` / `ExifToolTimeout`.
  * Output is read as bytes and decoded leniently (tag values may hold invalid UTF-8), and
    non-finite numbers stay strings so the JSON can be stored.
"""
from __future__ import annotations

import atexit
import json
import math
import os
import select
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import exiftool
import exiftool.exiftool as _pet

from workers.errors import PipelineError

EXECUTABLE = "exiftool"
COMMON_ARGS = ["-G", "-n"]                      # group names; numbers, not print-converted text
# -m: "[minor]" problems do not stop extraction; LargeFileSupport: >2 GB videos before 12.88.
READ_ARGS = ["-j", "-m", "-api", "LargeFileSupport=1"]


class ExifToolDied(PipelineError, RuntimeError):
    """exiftool exited while a command was running."""


class ExifToolTimeout(PipelineError, RuntimeError):
    """exiftool did not answer in time (it is killed; the next read starts a new one)."""


@dataclass
class Result:
    tags: dict | None        # the file's JSON object (None: exiftool printed nothing, e.g. not found)
    status: int              # exiftool's exit status: 0 ok, 1 error
    stderr: str


# --- a reader that notices EOF and deadlines (replaces PyExifTool's) ----------------------------

_deadline = threading.local()


def _read_until(fd: int, ending: bytes, block_size: int) -> bytes:
    chunks: list[bytes] = []
    tail = b""
    while not tail.rstrip().endswith(ending):
        at = getattr(_deadline, "at", None)
        wait = None if at is None else max(0.0, at - time.monotonic())
        ready, _, _ = select.select([fd], [], [], wait)
        if not ready:
            raise ExifToolTimeout("exiftool did not answer in time")
        chunk = os.read(fd, block_size)
        if not chunk:
            raise ExifToolDied("exiftool exited while reading")
        chunks.append(chunk)
        tail = (tail + chunk)[-(len(ending) + 16):]
    return b"".join(chunks)


_pet._read_fd_endswith = _read_until


# --- the per-process exiftool -------------------------------------------------------------------

def path_arg(path: str | os.PathLike) -> bytes:
    """The argfile line naming exactly this (absolute) path.

    A plain line keeps every byte except a newline or a trailing CR; those need a `#[CSTR]`
    line, in which exiftool leaves `$` and `@` escaped, so that one combination is refused."""
    raw = os.fsencode(path)
    if not raw.startswith(b"/"):
        raise ValueError(f"exiftool needs an absolute path, got {path!r}")
    if b"\n" not in raw and b"\r" not in raw:
        return raw
    if b"$" in raw or b"@" in raw:
        raise ValueError(f"exiftool cannot be given this file name: {path!r}")
    for a, b in ((b"\\", b"\\\\"), (b"\n", b"\\n"), (b"\r", b"\\r")):
        raw = raw.replace(a, b)
    return b"#[CSTR]" + raw


def parse_json(stdout: bytes) -> dict | None:
    text = stdout.decode("utf-8", errors="replace").strip()
    if not text:
        return None
    data = json.loads(text, parse_constant=str,
                      parse_float=lambda s: float(s) if math.isfinite(float(s)) else s)
    if isinstance(data, list):
        data = data[0] if data else None
    return data if isinstance(data, dict) else None


class Reader:
    """A running exiftool; `read()` is serialized (one command at a time per process)."""

    def __init__(self, executable: str = EXECUTABLE):
        self.executable = executable
        self._et: exiftool.ExifToolHelper | None = None
        self._lock = threading.Lock()
        self.starts = 0

    @property
    def pid(self) -> int | None:
        proc = getattr(self._et, "_process", None)
        return proc.pid if proc is not None and proc.poll() is None else None

    def _ensure(self) -> exiftool.ExifToolHelper:
        if self._et is not None:
            with warnings.catch_warnings():          # "process was previously running but died"
                warnings.simplefilter("ignore")
                if self._et.running:
                    return self._et
            self._kill()
        et = exiftool.ExifToolHelper(executable=self.executable, common_args=COMMON_ARGS,
                                     encoding="utf-8", check_execute=False, auto_start=False)
        et.run()
        self._et, self.starts = et, self.starts + 1
        return et

    def _kill(self) -> None:
        et, self._et = self._et, None
        proc = getattr(et, "_process", None)
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            try:
                pipe.close()
            except OSError:
                pass
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            et.running                                  # lets PyExifTool mark itself stopped

    def read(self, path: str | os.PathLike, timeout: float | None = None) -> Result:
        """Metadata of one file (`-G -n -j`); restarts exiftool once if it died under us."""
        with self._lock:
            for retry in (False, True):
                et = self._ensure()
                _deadline.at = None if timeout is None else time.monotonic() + timeout
                try:
                    out = et.execute(*READ_ARGS, path_arg(path), raw_bytes=True)
                except ExifToolTimeout:
                    self._kill()
                    raise
                except (ExifToolDied, BrokenPipeError, exiftool.exceptions.ExifToolException):
                    self._kill()
                    if retry:
                        raise
                    continue
                finally:
                    _deadline.at = None
                stderr = (et.last_stderr or b"").decode("utf-8", errors="replace").strip()
                return Result(parse_json(out), et.last_status or 0, stderr)
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            if self._et is not None:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        self._et.terminate(timeout=5)
                except Exception:  # noqa: BLE001 - dying anyway
                    pass
                self._kill()


_reader: Reader | None = None
_reader_pid: int | None = None
_reader_lock = threading.Lock()


def reader() -> Reader:
    """This process's exiftool (a forked child never shares its parent's pipes)."""
    global _reader, _reader_pid
    with _reader_lock:
        if _reader is None or _reader_pid != os.getpid():
            _reader, _reader_pid = Reader(), os.getpid()
        return _reader


def read(path: str | os.PathLike, timeout: float | None = None) -> Result:
    return reader().read(Path(path), timeout)


@atexit.register
def _close_at_exit() -> None:
    if _reader is not None and _reader_pid == os.getpid():
        _reader.close()
