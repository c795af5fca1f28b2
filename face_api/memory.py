"""Give freed image buffers back to the OS when a worker goes idle, not after every photo.

A photo's decode, resizes and HOG pyramids take a few hundred MB that glibc keeps in its heaps
after they are freed. malloc_trim(0) after every photo kept worker RSS low, but the next photo
then faulted those pages in again: extra page faults and system CPU on every photo of the library
mix (the README has the figures). Trimming once no photo has been in flight for
`delay` seconds keeps the memory of a busy worker for its next photo and still returns it when
the work stops. A delay of 0 trims as soon as no photo is in flight (for hosts short of memory).
"""
from __future__ import annotations

import ctypes
import threading

try:
    _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):  # pragma: no cover - not glibc
    _malloc_trim = None


def release_freed() -> None:
    """Return what glibc keeps of freed memory now (after loading the models: building the ONNX
    graphs frees memory that forked workers would otherwise carry)."""
    import gc

    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)


class IdleTrimmer:
    def __init__(self, delay: float = 1.0, trim=_malloc_trim):
        self.delay = delay
        self._trim = trim
        self._lock = threading.Lock()
        self._busy = 0
        self._timer: threading.Timer | None = None
        self.trims = 0

    def __enter__(self):
        with self._lock:
            self._busy += 1
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        return self

    def __exit__(self, *exc):
        with self._lock:
            self._busy -= 1
            if self._busy or self._trim is None:
                return
            if self.delay <= 0:
                self._trim(0)
                self.trims += 1
            else:
                self._timer = threading.Timer(self.delay, self._trim_if_idle)
                self._timer.daemon = True
                self._timer.start()

    def _trim_if_idle(self):
        with self._lock:
            if self._busy or self._timer is None or threading.current_thread() is not self._timer:
                return  # a photo started meanwhile (its exit schedules another timer)
            self._timer = None
            self._trim(0)
            self.trims += 1
