"""Worker settings: environment variables with prefix PHOTO_, a `.env` file, and optionally the
Laravel app's own `.env` (PHOTO_LARAVEL_ENV) so DB_* and RABBITMQ_* are not written twice."""
from __future__ import annotations

import importlib
import os
import re
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers.errors import SettingsError
from workers.jobs import registry

# Relative defaults are relative to the working directory: on the box the workers run in the
# Laravel app root (supervisor's `directory=`), so `storage` is the app's storage directory. An
# installed package has no project directory of its own to put data in.
STORAGE = Path("storage")

# Per-queue defaults, from the job registry.
QUEUE_TIMEOUTS = {job.queue: job.timeout for job in registry.JOBS}
QUEUE_NUMPROCS = {job.queue: job.processes for job in registry.JOBS}
JOB_HANDLERS = {job.class_name: job.handler for job in registry.JOBS}

# Operator safety: settings with a closed set of values (checked at start-up, case-insensitive).
CHOICES = {
    "face_engine": ("http", "inprocess"),
    "face_api_send": ("path", "bytes"),
    "thumbnail_format": ("jpeg", "jpg", "webp"),
    "geocoder": ("nominatim", "offline"),
    "geocode_fallback": ("offline", "none"),
    "face_grouping": ("people", "roots"),
    "face_metric": ("learned", "off"),
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PHOTO_", env_file=".env", extra="ignore")

    database_url: str = f"sqlite:///{STORAGE / 'photo.db'}"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    storage_root: Path = STORAGE
    log_dir: Path = STORAGE / "logs"
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
    job_handlers: dict[str, str] = Field(default_factory=lambda: dict(JOB_HANDLERS))
    lock_release_delay: int = 10             # seconds before a job that found its lock taken retries

    # Lock leases (workers/queue/leases.py): a running job's lock expires this far after its last
    # renewal, so a dead consumer's lock lapses within one lease, not the whole job timeout.
    lock_lease: int = Field(30, ge=0)        # seconds; 0: hold the lock for the job's timeout (Laravel)
    lock_renew_every: float = Field(10, gt=0)  # seconds between renewals (at most a third of the lease)

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

    # Face grouping (workers/faces/rules.py explains the rule). face_match_threshold above
    # stays the outer bound. "roots" is the original's rule: the nearest approved root < threshold.
    face_grouping: str = "people"            # "people" (all approved faces vote) or "roots"
    face_vote_k: int = 5                     # nearest approved faces that vote
    face_ratio: float = Field(0.92, gt=0, le=1)  # best person's distance / the runner-up's below this
    face_radius_slack: float = 0.1           # person radius = leave-one-out spread + this
    face_unknown_neighbours: int = 2         # this many unknown faces closer than the person: unassigned
    # A face the rule left unassigned is looked at again with the faces already filed from
    # approvals counted as their person's (workers/faces/filing.py); 0 = no second look.
    face_second_ratio: float = Field(0.85, ge=0, le=1)  # the ratio test of that second look
    face_one_per_photo: bool = True          # two faces of one photo never get the same person
    face_rematch_batch: int = 200            # faces per automatic rematch step (one per face job)
    face_cluster_radius: float = 0.45        # suggested groups: DBSCAN eps...
    face_cluster_min_faces: int = 3          # ...and minimum faces (the face itself included)
    # The distance learned from reviewed faces (workers/faces/metric.py explains it).
    face_metric: str = "learned"             # "learned" or "off" (dlib's Euclidean distance only)
    face_metric_shrinkage: float = Field(300.0, ge=0)  # approvals worth as much as dlib's distance
    face_metric_beta: float = Field(0.5, ge=0, lt=1)   # weight of the different-people pairs
    face_metric_min_people: int = Field(10, ge=1)      # people with 2 approved faces before learning
    face_metric_radius_slack: float = 0.2    # radius slack in the learned metric (radii there are
                                             # measured on the faces it was fitted on)
    # Work a consumer does when its queue has been empty this long (workers/queue/idle.py): the faces
    # workers finish the automatic rematch after approvals even when no photo is uploaded.
    idle_interval: float = Field(5.0, ge=0)  # seconds; 0 = never
    idle_tasks: dict[str, str] = Field(default_factory=lambda: {"faces": "workers.faces.filing:idle_rematch"})

    # Reprocess (`python -m workers reprocess`): publishing jobs for rows that already exist.
    reprocess_max_queue_depth: int = Field(1000, ge=1)   # reprocess waits while a queue holds this many ready
    reprocess_poll_interval: float = Field(1.0, gt=0)    # seconds between queue-depth checks while waiting
    reprocess_batch_size: int = Field(500, ge=1)         # rows read per query
    reprocess_state_dir: Path | None = None  # restart checkpoints; default <storage_root>/reprocess

    # Operator safety: values are checked when the settings are read, so a process with a typo
    # refuses to start with one line naming the variable instead of failing every job later
    # (`check_paths` adds what only a consumer needs). The face API checks its own settings.
    face_api_token: SecretStr | None = None  # PHOTO_FACE_API_TOKEN: sent as a Bearer token to the face API
    review_token: SecretStr | None = None    # PHOTO_REVIEW_TOKEN: required by `review` off loopback

    @field_validator(*CHOICES, mode="before")
    @classmethod
    def _one_of(cls, value, info):
        allowed = CHOICES[info.field_name]
        name = str(value).strip().lower()
        if name not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return name

    @field_validator("nominatim_timeout", "face_api_timeout")
    @classmethod
    def _positive(cls, value):
        if value <= 0:
            raise ValueError("must be more than 0 seconds")
        return value

    @field_validator("laravel_env")
    @classmethod
    def _readable_env_file(cls, value):
        # A mistyped path would silently fall back to the defaults (another database).
        if value is not None and not Path(value).is_file():
            raise ValueError(f"{value} is not a file")
        return value

    @model_validator(mode="after")
    def _geolocation_fits_one_request(self):
        # The geolocation job stops asking at 75% of its timeout minus two request timeouts
        # (connect + read), after waiting up to one interval for the installation-wide slot
        # (workers/jobs/geolocation.py): below this it could never send a single request.
        needed = (2 * self.nominatim_timeout + self.nominatim_interval) / registry.BY_QUEUE["geolocation"].budget
        timeout = self.timeout_for("geolocation")
        if timeout < needed:
            raise ValueError(f"PHOTO_QUEUE_TIMEOUTS: geolocation {timeout} s is too short for one Nominatim "
                             f"request (needs >= {needed:.0f} s with PHOTO_NOMINATIM_TIMEOUT="
                             f"{self.nominatim_timeout:g} and PHOTO_NOMINATIM_INTERVAL={self.nominatim_interval:g})")
        return self

    def check_paths(self) -> None:
        """What a consumer needs on disk: the storage root `images.path` is relative to."""
        if not self.storage_root.is_dir():
            raise SettingsError(f"PHOTO_STORAGE_ROOT: {self.storage_root.resolve()} is not a directory")

    @property
    def face_api_headers(self) -> dict[str, str]:
        """Headers of every face API request: the bearer token when one is set."""
        token = self.face_api_token.get_secret_value() if self.face_api_token else ""
        return {"Authorization": f"Bearer {token}"} if token else {}

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
def resolve(spec: str, default: str | None = "handle"):
    """A "module:function" reference of the settings (job_handlers, idle_tasks) -> (module,
    function); a bare "module" means its `default` function (None: the function is required)."""
    module_name, _, func_name = spec.partition(":")
    module = importlib.import_module(module_name)
    if not (func_name or default):
        raise ValueError(f"{spec!r} names no function (module:function)")
    return module, getattr(module, func_name or default)


# Values of these settings are never shown: they may carry a password, a key or a token.
SECRET_NAMES = re.compile(r"token|key|password|secret|url", re.IGNORECASE)


def error_line(exc: ValidationError) -> str:
    """The operator's line for invalid settings: each variable with its value (secrets masked)
    and what is wrong, e.g. `PHOTO_FACE_ENGINE='gpu': must be one of http, inprocess`."""
    parts = []
    for error in exc.errors():
        name = "_".join(map(str, error.get("loc", ()))).upper()
        reason = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        value = error.get("input")
        if name and not (SECRET_NAMES.search(name) or isinstance(value, dict)):
            name = f"PHOTO_{name}={value!r}"
        elif name:
            name = f"PHOTO_{name}"
        parts.append(f"{name}: {reason}" if name else reason)
    return "; ".join(parts)


def get_settings(**overrides) -> Settings:
    """The settings, validated (`overrides` win over the environment); SettingsError (one line)
    when they cannot work."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(error_line(exc)) from None
