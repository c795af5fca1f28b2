"""Worker settings: environment variables with prefix PHOTO_, a `.env` file, and optionally the
Laravel app's own `.env` (PHOTO_LARAVEL_ENV) so DB_* and RABBITMQ_* are not written twice."""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

from dotenv import dotenv_values
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Per-queue timeouts and process counts from the spec (system-v2.md).
QUEUE_TIMEOUTS = {"metadata": 60, "geolocation": 120, "thumbnails": 300, "faces": 360}
QUEUE_NUMPROCS = {"thumbnails": 2, "metadata": 1, "geolocation": 1, "faces": 8}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PHOTO_", env_file=".env", extra="ignore")

    database_url: str = f"sqlite:///{PROJECT_ROOT / 'storage' / 'photo.db'}"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    storage_root: Path = PROJECT_ROOT / "storage"
    log_dir: Path = PROJECT_ROOT / "storage" / "logs"
    laravel_env: Path | None = None          # the app's .env: DB_* and RABBITMQ_* reused from it

    # Laravel compatibility.
    app_key: str | None = None               # APP_KEY, for ShouldBeEncrypted commands
    cache_prefix: str = "laravel_cache_"     # config/cache.php prefix: lock names are prefix + name
    job_data_property: str = "data"          # the job property holding the $data array
    laravel_profile: str = "laravel8"        # serialize() layout of jobs we publish (Debian ships 8.83)
    tries: int = 1                           # queue:work --tries default when a payload has no maxTries
    backoff: int = 0                         # queue:work --backoff default
    queue_timeouts: dict[str, int] = Field(default_factory=lambda: dict(QUEUE_TIMEOUTS))
    queue_numprocs: dict[str, int] = Field(default_factory=lambda: dict(QUEUE_NUMPROCS))  # supervisor numprocs
    # Job class -> "module:function"; a handler is (context, data) -> list of follow-up jobs.
    job_handlers: dict[str, str] = Field(default_factory=lambda: {
        "App\\Jobs\\MetadataProcessJob": "workers.jobs.metadata:handle",
        "App\\Jobs\\GeolocationProcessJob": "workers.jobs.geolocation:handle",
        "App\\Jobs\\ThumbnailProcessJob": "workers.jobs.thumbnails:handle",
        "App\\Jobs\\FaceProcessJob": "workers.jobs.faces:handle",
    })
    lock_release_delay: int = 10             # seconds before a job that found its lock taken retries
    heartbeat: int = 60                      # AMQP heartbeat seconds
    metrics_port: int | None = None          # optional Prometheus port per consumer

    # Services the jobs call.
    face_api_url: str = "http://127.0.0.1:5000"
    face_api_timeout: float = 300.0
    face_api_retries: int = 3
    face_api_send: str = "path"              # "path" (API reads the file) or "bytes" (upload)
    face_match_threshold: float = 0.6
    face_engine: str = "http"                # "http" (face API) or "inprocess" (embedded mode)
    nominatim_url: str = "https://nominatim.openstreetmap.org"
    nominatim_user_agent: str = "photo-pipeline/1.0 (self-hosted photo library)"
    nominatim_email: str | None = None
    nominatim_zoom: int = 18
    nominatim_language: str = "en"
    nominatim_interval: float = 1.0          # seconds between requests, whole installation
    nominatim_timeout: float = 10.0          # per request
    nominatim_retries: int = 3               # network errors / 5xx, inside one job
    nominatim_pause: float = 60              # 403/429: first pause, doubled per repeat...
    nominatim_pause_max: float = 3600        # ...up to this (Retry-After honoured)
    nominatim_max_wait: float = 20           # longest wait for the installation-wide slot
    geocoder: str = "nominatim"              # "nominatim" or "offline"
    geocode_fallback: str = "offline"        # when Nominatim stays unavailable: "offline" or "none"
    geocode_fallback_after: float = 900      # answer offline when paused longer than this
    offline_max_km: float = 50               # offline geocoder: farther than this = no place
    geocode_precision: int = 4               # cache key: coordinates rounded to this many decimals
    thumbnail_root: Path | None = None       # default: <storage_root>/thumbnails
    thumbnail_quality: int = 75
    thumbnail_format: str = "jpeg"           # jpeg or webp
    thumbnail_keep_exif: bool = False
    thumbnail_sizes: list[dict] = Field(default_factory=lambda: [
        {"method": "cover", "width": 300, "height": 300},
        {"method": "scale", "width": 1600, "height": 1600},
    ])
    max_pixels: int = 120_000_000            # decompression-bomb budget

    # Face grouping (issue 10; workers/people.py explains the rule). face_match_threshold above
    # stays the outer bound. "roots" is the original's rule: the nearest approved root < threshold.
    face_grouping: str = "people"            # "people" (all approved faces vote) or "roots"
    face_vote_k: int = 5                     # nearest approved faces that vote
    face_margin: float = 0.04                # the best person must beat the runner-up by this
    face_radius_slack: float = 0.1           # person radius = leave-one-out spread + this
    face_unknown_neighbours: int = 2         # this many unknown faces closer than the person: unassigned
    face_one_per_photo: bool = True          # two faces of one photo never get the same person
    face_rematch_batch: int = 200            # faces per automatic rematch step (one per face job)
    face_cluster_radius: float = 0.45        # suggested groups: DBSCAN eps...
    face_cluster_min_faces: int = 3          # ...and minimum faces (the face itself included)

    def model_post_init(self, __context) -> None:
        if self.laravel_env:
            self._apply_laravel_env(Path(self.laravel_env))

    def _apply_laravel_env(self, path: Path) -> None:
        """Fill database_url / amqp_url / app_key from the Laravel .env unless set explicitly."""
        env = {k: v for k, v in dotenv_values(path).items() if v is not None}
        explicit = {k.lower().removeprefix("photo_") for k in os.environ if k.startswith("PHOTO_")}
        if "database_url" not in explicit and env.get("DB_HOST"):
            driver = {"mysql": "mysql+pymysql", "mariadb": "mysql+pymysql",
                      "sqlite": "sqlite"}.get(env.get("DB_CONNECTION", "mysql"), "mysql+pymysql")
            if driver == "sqlite":
                self.database_url = f"sqlite:///{env.get('DB_DATABASE', 'database.sqlite')}"
            else:
                self.database_url = (f"{driver}://{quote(env.get('DB_USERNAME', 'root'), safe='')}:"
                                     f"{quote(env.get('DB_PASSWORD', ''), safe='')}@{env['DB_HOST']}:"
                                     f"{env.get('DB_PORT', '3306')}/{env.get('DB_DATABASE', 'laravel')}")
        if "amqp_url" not in explicit and env.get("RABBITMQ_HOST"):
            vhost = quote(env.get("RABBITMQ_VHOST", "/"), safe="")
            self.amqp_url = (f"amqp://{quote(env.get('RABBITMQ_USER', 'guest'), safe='')}:"
                             f"{quote(env.get('RABBITMQ_PASSWORD', 'guest'), safe='')}@{env['RABBITMQ_HOST']}:"
                             f"{env.get('RABBITMQ_PORT', '5672')}/{vhost}")
        if "app_key" not in explicit and env.get("APP_KEY"):
            self.app_key = env["APP_KEY"]
        if "cache_prefix" not in explicit and env.get("CACHE_PREFIX"):
            self.cache_prefix = env["CACHE_PREFIX"]

    @property
    def thumbnails_dir(self) -> Path:
        return self.thumbnail_root or self.storage_root / "thumbnails"

    def timeout_for(self, queue: str) -> int:
        return self.queue_timeouts.get(queue, 60)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
