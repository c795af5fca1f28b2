"""The one table of the jobs: what the Laravel app publishes, where, what handles it, and the
defaults the settings, the consumer, the embedded runner, reprocess, chaining, `monitor` and
`render-config` read. It imports nothing from the project, so anything may import it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JobSpec:
    class_name: str          # the Laravel job class the app dispatches
    queue: str               # its queue; also the lock's `{queue}-processing:` prefix and the CLI's name
    handler: str             # "module:function", (context, data) -> follow-up jobs
    done_column: str         # the images column the job sets when it finishes
    timeout: int             # seconds (PHOTO_QUEUE_TIMEOUTS); supervisor waits this + a margin on stop
    processes: int           # supervisor numprocs (PHOTO_QUEUE_NUMPROCS)
    on_upload: bool = True   # the app publishes it for every new photo (else only as a follow-up)
    chains: tuple[str, ...] = ()   # queues of the follow-ups its handler may publish
    budget: float = 1.0      # share of the timeout the handler may spend before it stops by itself


JOBS = (
    JobSpec("App\\Jobs\\ThumbnailProcessJob", "thumbnails", "workers.jobs.thumbnails:handle",
            "thumbnails_at", timeout=300, processes=2),
    JobSpec("App\\Jobs\\MetadataProcessJob", "metadata", "workers.jobs.metadata:handle",
            "metadata_at", timeout=60, processes=1, chains=("geolocation",)),
    # Geolocation waits for the installation-wide Nominatim slot; it gives up (and is released)
    # at `budget` of its timeout, so a slow queue never turns into a timed-out, counted attempt.
    JobSpec("App\\Jobs\\GeolocationProcessJob", "geolocation", "workers.jobs.geolocation:handle",
            "geocoded_at", timeout=120, processes=1, on_upload=False, budget=0.75),
    JobSpec("App\\Jobs\\FaceProcessJob", "faces", "workers.jobs.faces:handle",
            "faces_at", timeout=360, processes=8),
)

BY_QUEUE = {job.queue: job for job in JOBS}
BY_CLASS = {job.class_name: job for job in JOBS}
QUEUES = tuple(BY_QUEUE)
