"""Real PHP 8 + Laravel 8.83 as the oracle of the wire-format tests (tests/php), and the job
classes they share."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from workers.laravel import JobClass

ROOT = Path(__file__).resolve().parents[2]

PHP_DIR = ROOT / "tests" / "php"
ORACLE = PHP_DIR / "oracle.php"
APP_KEY = "base64:2fl+Ktvkfl+Fuz4Qp/A75G2RTiWVA/ZoKZvp6fiiM10="

V = "App\\Jobs\\Variants\\"
CLASSES = {
    V + "ProtectedDataJob": JobClass(V + "ProtectedDataJob", data_visibility="protected"),
    V + "PrivateDataJob": JobClass(V + "PrivateDataJob", data_visibility="private"),
    V + "EncryptedJob": JobClass(V + "EncryptedJob", data_visibility="protected", encrypted=True),
    V + "TriesJob": JobClass(V + "TriesJob", tries=5, max_exceptions=2, backoff=[10, 60, 120], timeout=90,
                             fail_on_timeout=True, retry_until=1900000000),
    V + "ModernTriesJob": JobClass(V + "ModernTriesJob", tries=3, timeout=120),
}


def _php_ok() -> bool:
    if not shutil.which("php"):
        return False
    r = subprocess.run(["php", "-r", 'require "/usr/share/php/Illuminate/autoload.php"; echo "ok";'],
                       capture_output=True, text=True)
    return r.stdout.strip() == "ok"


PHP_AVAILABLE = _php_ok()
needs_php = pytest.mark.skipif(not PHP_AVAILABLE, reason="php + Laravel (illuminate) not installed")


def run_oracle(mode: str, rows: list[dict] | None = None, tmp_path: Path | None = None, raw_lines: bool = False):
    args = ["php", str(ORACLE), mode]
    if rows is not None:
        assert tmp_path is not None
        f = tmp_path / f"{mode}.jsonl"
        with open(f, "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
        args.append(str(f))
    r = subprocess.run(args, capture_output=True, timeout=600)
    assert r.returncode == 0 and not r.stderr, r.stderr.decode(errors="replace")[-2000:]
    lines = r.stdout.decode("utf-8").splitlines()
    return lines if raw_lines else [json.loads(x) for x in lines]


def php_run(code: str, stdin: bytes = b"") -> bytes:
    r = subprocess.run(["php", "-d", "serialize_precision=-1", "-r", code], input=stdin, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return r.stdout
