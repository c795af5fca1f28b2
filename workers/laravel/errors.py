"""The wire format's exceptions, one root: `WireFormatError`, a value PHP would not have written
(or would not read). The codec does no I/O, so nothing else can go wrong in it."""
from __future__ import annotations

from workers.errors import PipelineError


class WireFormatError(PipelineError, ValueError):
    """Root of the codec's errors: PhpSerializeError, PhpJsonError, PayloadError, DecryptError."""
