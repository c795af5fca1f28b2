"""One settings object for the face API; environment variables with prefix PHOTO_ (and .env).

A setting that cannot work is a SettingsError whose message is one line naming each variable
(`settings_error_line`; secrets are never echoed). `settings_or_exit()` is what a starting process
calls: gunicorn.conf.py before any worker is forked, the app factory under any server, and the
workers' embedded mode for the in-process engine; it prints that line and exits with status 2.
"""
from __future__ import annotations

import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import SettingsError

# Relative defaults are relative to the working directory (the Laravel app root on the box, where
# face-api.service runs), never to the installed package.
STORAGE = Path("storage")


def _int_list(value):
    if isinstance(value, str):
        return [int(v) for v in value.replace(",", " ").split()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PHOTO_", env_file=".env", extra="ignore")

    # Files the API may read by `path`: one or more roots separated by ':'.
    storage_root: Annotated[list[Path], NoDecode] = [STORAGE]
    debug_dir: Path = STORAGE / "face-debug"
    debug_images: bool = True          # write a JPEG with the boxes drawn
    debug_max_side: int = 2000         # debug JPEG is drawn on the detection image, at most this size
    log_dir: Path = STORAGE / "logs"
    # Bearer token /encode and /compare require when set (auth.py); SecretStr keeps it
    # out of reprs and logs.
    face_api_token: SecretStr | None = None

    # Which detector finds the faces: "yunet" (YuNet from libfacedetection via the `yuface` wheel:
    # one pass, more faces found, see face_api/detectors) or "hog" (the original's recipe, below,
    # unchanged: the parity mode). Where yuface cannot be imported the default refuses to start.
    face_detector: str = "yunet"
    # YuNet: the long side of its pass (a 12 MP photo's 40 px faces are 12 px at 1200, and it is
    # the original's first HOG pass, so faces both find are encoded from the same pixels), a small
    # pass for faces that fill the frame (0: none), the score a candidate needs, and the score
    # YuNet must give it again on a rescaled crop (the second opinion; 0: off).
    yunet_max_side: int = Field(1200, ge=160, le=8192)
    yunet_large_face_side: int = Field(320, ge=0, le=2048)
    yunet_min_score: float = Field(0.5, ge=0.0, le=1.0)
    yunet_confirm_score: float = Field(0.7, ge=0.0, le=1.0)

    # What computes the two networks: "onnxruntime" (the same weights, read from dlib's model file
    # and yuface's library, run as ONNX graphs: networks/resnet.py, networks/yunet_onnx.py; same
    # outputs, less CPU: the README has the figures) or "native" (dlib's and yuface's own code, as
    # the original). Each graph is checked against the native output
    # when first built; if it ever disagrees, the native code is used (logged; /health says).
    face_runtime: Literal["onnxruntime", "native"] = "onnxruntime"

    # Detection as the original server: HOG, upsample 1, scales 1200/1600/2000, 1 jitter.
    face_scales: Annotated[list[int], NoDecode] = [1200, 1600, 2000]
    face_upsample: int = Field(1, ge=0, le=3)
    face_jitters: int = Field(1, ge=1, le=100)
    # Speed options (see the engine.py and detectors/hog.py docstrings); each was measured against the ground
    # truth (bench/groundtruth.py) and kept the thumbnail reconstruction's recall and precision.
    # JPEG DCT-domain downscale to the smallest size >= each pass's scale before the resize.
    face_draft_decode: bool = True
    # ... but faces smaller than this (px on the detection image; 80 is HOG's window, so these
    # were found thanks to the upsampling) are encoded on a full decode: their pixels are magnified.
    face_full_decode_below: int = Field(80, ge=0, le=10_000)
    # A middle scale is skipped when a larger one follows (1200 then 2000): the larger pass sees
    # the same face sizes and more.
    face_skip_covered_scales: bool = True
    # HOG on luminance: less HOG time, but it lost small faces on the ground truth (README).
    face_grey_hog: bool = False
    # A later scale scans only the pyramid levels for faces smaller than earlier passes could see,
    # plus this many levels of overlap (0: the two passes together still sample face sizes at
    # least as densely as one pyramid does); face_full_rescan=1 scans every level like the original.
    face_full_rescan: bool = False
    face_rescan_overlap: int = Field(0, ge=0, le=20)
    # Photos one API worker processes at once (dlib releases the GIL: one core each). gunicorn's
    # `threads` (FACE_API_THREADS) sets it under gunicorn, as in the original's 16 workers x 2.
    face_threads: int = Field(2, ge=1, le=64)
    # Freed image memory goes back to the OS once a worker has had no photo for this long
    # (0: as soon as no photo is in flight; memory.py says why).
    memory_trim_idle_seconds: float = Field(1.0, ge=0, le=3600)

    # Input limits.
    max_upload_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 120_000_000      # decompression-bomb budget (width*height)

    @field_validator("storage_root", mode="before")
    @classmethod
    def _split_roots(cls, value):
        if isinstance(value, str):
            return [Path(p) for p in value.split(":") if p.strip()]
        return value

    @field_validator("face_detector", mode="before")
    @classmethod
    def _known_detector(cls, value):
        from .detectors import DETECTORS  # the names live with the detectors

        name = str(value).strip().lower()
        if name not in DETECTORS:
            raise ValueError(f"unknown detector {value!r} (one of {', '.join(DETECTORS)})")
        return name

    @model_validator(mode="after")
    def _detector_installed(self):
        from .detectors import check_available

        check_available(self.face_detector)  # DetectorUnavailable is a ValueError: one line
        return self

    @field_validator("face_scales", mode="before")
    @classmethod
    def _split_scales(cls, value):
        value = _int_list(value)
        if not value or any(int(v) <= 0 for v in value):
            raise ValueError("face_scales must be positive integers")
        return value


# Values of these settings are never echoed back: they may carry a password or the API token.
_SECRET = re.compile(r"token|key|password|secret|url", re.IGNORECASE)


def settings_error_line(exc: ValidationError, prefix: str = "PHOTO_") -> str:
    """One line naming each bad environment variable, e.g.
    `PHOTO_FACE_ENGINE='gpu': must be one of http, inprocess`."""
    problems = []
    for error in exc.errors():
        field = "_".join(str(part) for part in error.get("loc", ()))
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        if not field:                     # a rule across fields names its variables itself
            problems.append(message)
            continue
        value = error.get("input")
        shown = "" if _SECRET.search(field) or isinstance(value, dict) else f"={value!r}"
        problems.append(f"{prefix}{field.upper()}{shown}: {message}")
    return "; ".join(problems)


def load_settings(**overrides) -> Settings:
    """Settings from the environment (and `overrides`); SettingsError in one line when invalid."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(settings_error_line(exc)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()


def check_storage_roots(settings: Settings) -> None:
    """The roots `POST /encode {"path"}` may read must exist: every request would 404 otherwise."""
    for root in settings.storage_root:
        if not root.is_dir():
            raise SettingsError(f"PHOTO_STORAGE_ROOT: {root.resolve()} is not a directory")


def settings_or_exit(check_paths: bool = True, program: str = "face API") -> Settings:
    """The face API's settings, validated; on error one line on stderr and exit status 2."""
    try:
        settings = get_settings()
        if check_paths:
            check_storage_roots(settings)
        return settings
    except ValidationError as exc:
        line = settings_error_line(exc)
    except ValueError as exc:       # a SettingsError, or a validator's own ValueError
        line = " ".join(str(exc).split())
    print(f"{program}: refusing to start: {line}", file=sys.stderr)
    raise SystemExit(2)
