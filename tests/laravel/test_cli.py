"""The operator sub-commands (inspect, queue-key, payload)."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys

from workers.laravel import decode_payload, queue_key
from workers.laravel.cli import add_subcommands, inspect_cmd, payload_cmd, queue_key_cmd

from tests.support.php import APP_KEY, ROOT

GEO = "App\\Jobs\\GeolocationProcessJob"


def test_queue_key_cmd(capsys):
    assert queue_key_cmd(GEO, '{"class":"ignored","ip":"8.8.8.8","lat":1.0,"n":5,"tags":["x","y"],"url":"http://a/b"}') == 0
    assert capsys.readouterr().out == "b1817c6d538844170741b98645133719\n"


def test_payload_then_inspect(tmp_path, capsys):
    assert payload_cmd(GEO, '{"image_id": 3, "name": "Zürich"}') == 0
    body = capsys.readouterr().out.strip()
    job = decode_payload(body)
    assert job.class_name == GEO and job.data == {"image_id": 3, "name": "Zürich"}
    f = tmp_path / "body.json"
    f.write_text(body, encoding="utf-8")
    assert inspect_cmd(str(f)) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["class"] == GEO and out["data"] == {"image_id": 3, "name": "Zürich"} and out["chain"] == []
    for k in ("uuid", "max_tries", "timeout", "backoff", "retry_until"):
        assert k in out


def test_inspect_chain_and_failed_jobs_row(php_payloads, tmp_path, capsys):
    row = next(r for r in php_payloads if r["name"] == "chain/three")
    f = tmp_path / "failed.json"
    f.write_text(json.dumps({"uuid": "x", "connection": "rabbitmq", "payload": row["body"]}))
    assert inspect_cmd(str(f)) == 0
    out = json.loads(capsys.readouterr().out)
    assert [c["class"] for c in out["chain"]] == ["App\\Jobs\\MetadataProcessJob", GEO]
    assert out["chain"][1]["data"]["name"] == "Zürich 😀 日本"


def test_inspect_encrypted_uses_env_key(php_payloads, tmp_path, capsys, monkeypatch):
    row = next(r for r in php_payloads if r["name"] == "EncryptedJob/AES-256-GCM")
    f = tmp_path / "enc.json"
    f.write_text(row["body"])
    monkeypatch.delenv("APP_KEY", raising=False)
    monkeypatch.delenv("PHOTO_APP_KEY", raising=False)
    assert inspect_cmd(str(f)) == 1
    assert "APP_KEY" in capsys.readouterr().err
    monkeypatch.setenv("PHOTO_APP_KEY", APP_KEY)
    assert inspect_cmd(str(f)) == 0
    assert json.loads(capsys.readouterr().out)["encrypted"] is True


def test_inspect_stdin_and_garbage(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"not json")))
    assert inspect_cmd("-") == 1
    assert "error" in capsys.readouterr().err


def test_argparse_wiring(capsys):
    ap = argparse.ArgumentParser()
    add_subcommands(ap.add_subparsers(dest="cmd"))
    args = ap.parse_args(["queue-key", GEO, '{"a": 1}'])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == queue_key(GEO, {"a": 1})


def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "workers.laravel.cli", "queue-key", GEO, '{"a":"/"}'],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == queue_key(GEO, {"a": "/"})
