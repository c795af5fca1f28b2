"""The workers' exceptions, one root: `PipelineError`. A handler's outcome other than success is
one of the first two; the rest name what went wrong where, and the edges map them (the consumer's
policy to a verdict, the CLI to one line and exit status 2).

    PipelineError
    ├── JobFailed          permanent: failed_jobs at once, no retry (bad data, corrupt file)
    ├── JobReleased        later, no attempt counted (rate-limit pause, lock held elsewhere)
    ├── SettingsError      a setting that cannot work, in one line naming the variable
    ├── laravel.WireFormatError   what PHP would not have written (payload, serialize, JSON, key)
    └── the rooms' own: ImageError, ExifToolDied, NominatimError, FaceApiError, FolderError, ...
"""
from __future__ import annotations


class PipelineError(Exception):
    """Root of every exception the workers raise on purpose."""


class JobFailed(PipelineError):
    """Permanent failure: recorded in failed_jobs without retry."""


class JobReleased(PipelineError):
    """Put the job back for later without counting an attempt."""

    def __init__(self, delay: float, reason: str = ""):
        super().__init__(reason or f"released for {delay}s")
        self.delay = delay


class SettingsError(PipelineError, ValueError):
    """A setting that cannot work, in one line naming the variable (values of secrets not shown)."""
