"""Find the dlib model files shipped by the face_recognition_models package.

The package's __init__ imports pkg_resources (gone from setuptools >= 82), so it is never
imported: importlib.util.find_spec locates the package directory without executing it.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelsNotFound

PACKAGE = "face_recognition_models"
FILES = {
    "detector": None,  # HOG frontal face detector is built into dlib
    "shape_predictor_5": "shape_predictor_5_face_landmarks.dat",
    "face_recognition": "dlib_face_recognition_resnet_model_v1.dat",
}


@dataclass(frozen=True)
class ModelFiles:
    directory: Path
    shape_predictor_5: Path
    face_recognition: Path
    package_version: str | None

    def describe(self) -> dict:
        return {
            "directory": str(self.directory),
            "package": PACKAGE,
            "package_version": self.package_version,
            "files": {
                p.name: {"bytes": p.stat().st_size}
                for p in (self.shape_predictor_5, self.face_recognition)
            },
        }


def models_dir() -> Path:
    """Directory holding the .dat files: $PHOTO_MODELS_DIR, else face_recognition_models/models."""
    override = os.environ.get("PHOTO_MODELS_DIR")
    if override:
        return Path(override)
    spec = importlib.util.find_spec(PACKAGE)  # finds, does not execute, the package
    if spec is None or not spec.submodule_search_locations:
        raise ModelsNotFound(f"package {PACKAGE} is not installed (pip install --no-deps {PACKAGE})")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def find_model_files() -> ModelFiles:
    directory = models_dir()
    paths = {}
    for key in ("shape_predictor_5", "face_recognition"):
        path = directory / FILES[key]
        if not path.is_file():
            raise ModelsNotFound(f"model file missing: {path}")
        paths[key] = path
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return ModelFiles(directory=directory, package_version=version, **paths)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
