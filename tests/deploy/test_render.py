"""render-config: the supervisor programs and the systemd unit, checked by supervisor's own
config parser and by systemd-analyze, not by string matching alone."""
from __future__ import annotations

import configparser
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from workers.commands import render_config
from workers.settings import QUEUE_TIMEOUTS, Settings
from tests.support.venvs import install_checkout, locked_venv
from tests.support.services import PROJECT_ROOT

VENV = PROJECT_ROOT / ".venv"
QUEUES = ("thumbnails", "metadata", "geolocation", "faces")


def ini(text: str) -> configparser.RawConfigParser:
    cp = configparser.RawConfigParser(inline_comment_prefixes=None)
    cp.read_string(text)
    return cp


def test_defaults_follow_the_spec():
    files = render_config.render(Settings())
    assert sorted(files) == sorted([f"photo-{q}-worker.conf" for q in QUEUES] + ["face-api.service"])
    for queue, numprocs in {"thumbnails": 2, "metadata": 1, "geolocation": 1, "faces": 8}.items():
        sec = ini(files[f"photo-{queue}-worker.conf"])[f"program:photo-{queue}-worker"]
        assert sec["numprocs"] == str(numprocs)
        assert sec["process_name"] == "%(program_name)s_%(process_num)02d"
        assert sec["command"] == ("/usr/bin/setpriv --reuid=www-data --regid=web --init-groups "
                                  f"/var/www/photo/face-api-venv/bin/photo-pipeline consume --queue {queue}")
        assert sec["directory"] == "/var/www/photo"          # the prefix: `storage` resolves there
        assert sec["umask"] == "002"
        assert sec["autostart"] == sec["autorestart"] == sec["redirect_stderr"] == "true"
        assert sec["stopsignal"] == "TERM"
        assert int(sec["stopwaitsecs"]) > QUEUE_TIMEOUTS[queue]
        assert sec["stdout_logfile"] == f"/var/www/photo/storage/logs/supervisor-photo-{queue}.log"
    assert "may run more than one process" in files["photo-geolocation-worker.conf"]
    unit = files["face-api.service"]
    assert "ExecStart=/var/www/photo/face-api-venv/bin/photo-pipeline serve-face-api" in unit.splitlines()
    for line in ("User=www-data", "Group=web", "UMask=0002", "WorkingDirectory=/var/www/photo",
                 "Restart=on-failure", "EnvironmentFile=-/etc/default/face-api",
                 "Environment=FACE_API_BIND=127.0.0.1:5000", "Environment=FACE_API_WORKERS=16",
                 "Environment=FACE_API_THREADS=2", "Environment=FACE_API_TIMEOUT=300"):
        assert line in unit.splitlines()


def test_gunicorn_conf_gives_the_spec_command_line(tmp_path):
    """The unit's `-c gunicorn.conf.py` gives the spec's `--bind 127.0.0.1:5000 --workers 16
    --threads 2 --timeout 300` with the unit's environment, served by gthread workers that take a
    connection only while a thread is free (worker_connections = threads, no keep-alive) instead
    of the spec's eager uvicorn workers."""
    code = ("from gunicorn.config import Config; import runpy; c = Config();"
            "ns = runpy.run_path('face_api/gunicorn.conf.py');"
            "[c.set(k, v) for k, v in ns.items() if k in c.settings];"
            "import json; print(json.dumps([c.worker_class_str, c.bind, c.workers, c.threads, c.timeout,"
            " c.worker_connections, c.keepalive]))")
    env = {"PATH": "/usr/bin:/bin", "FACE_API_BIND": "127.0.0.1:5000", "FACE_API_WORKERS": "16",
           "FACE_API_THREADS": "2", "FACE_API_TIMEOUT": "300", "PHOTO_LOG_DIR": str(tmp_path),
           "PHOTO_STORAGE_ROOT": str(tmp_path)}   # the config refuses a missing storage root
    out = subprocess.run([str(VENV / "bin/python"), "-c", code], cwd=PROJECT_ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == ["gthread", ["127.0.0.1:5000"], 16, 2, 300, 2, 0]


def test_numprocs_from_settings_and_flags():
    s = Settings(queue_numprocs={"faces": 12, "geolocation": 3})
    files = render_config.render(s, numprocs={"thumbnails": 4})
    got = {q: ini(files[f"photo-{q}-worker.conf"])[f"program:photo-{q}-worker"]["numprocs"] for q in QUEUES}
    assert got == {"thumbnails": "4", "metadata": "1", "geolocation": "3", "faces": "12"}
    timeouts = Settings(queue_timeouts={"metadata": 500})
    sec = ini(render_config.render(timeouts)["photo-metadata-worker.conf"])["program:photo-metadata-worker"]
    assert int(sec["stopwaitsecs"]) == 500 + render_config.STOP_MARGIN
    with pytest.raises(render_config.ConfigError):
        render_config.render(Settings(), numprocs={"faces": 0})


def test_env_values_are_escaped_for_supervisor(tmp_path):
    """'%' is supervisor's expansion character (an AMQP URL has %2F); commas need quotes."""
    env = {"PHOTO_AMQP_URL": "amqp://u:p%40ss@h:5672/%2F", "PHOTO_X": "a,b=c", "PHOTO_Q": 'say "hi" now'}
    files = render_config.render(Settings(), environment=env, prefix=str(tmp_path), venv="/v", user="root", group="root")
    parsed = supervisor_parse(tmp_path, files)
    assert parsed["photo-metadata-worker"]["environment"] == {
        "PHOTO_LOG_DIR": f"{tmp_path}/storage/logs", "PYTHONUNBUFFERED": "1", **env}
    assert 'Environment="PHOTO_AMQP_URL=amqp://u:p%%40ss@h:5672/%%2F"' in files["face-api.service"]


@pytest.mark.parametrize("bad", ["x\ny", "a ;comment", "a #c", "'quoted'", """both ' and " """.strip()])
def test_unwritable_values_are_refused(bad):
    with pytest.raises(render_config.ConfigError):
        render_config.render(Settings(), environment={"PHOTO_X": bad})


@pytest.mark.parametrize("kw", [{"user": "www data"}, {"group": "web;rm"}, {"environment": {"1BAD": "x"}}])
def test_bad_names_are_refused(kw):
    with pytest.raises(render_config.ConfigError):
        render_config.render(Settings(), **kw)


def supervisor_parse(tmp_path: Path, files: dict[str, str]) -> dict:
    """Load the files with supervisor's own option parser (Debian's python3-supervisor)."""
    if not Path("/usr/bin/supervisord").exists():
        pytest.skip("supervisor not installed (make test installs it)")
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir(exist_ok=True)
    (tmp_path / "storage" / "logs").mkdir(parents=True, exist_ok=True)   # supervisor checks it exists
    for name, text in files.items():
        if name.endswith(".conf"):
            (conf_d / name).write_text(text)
    (tmp_path / "supervisord.conf").write_text(
        f"[supervisord]\nlogfile={tmp_path}/s.log\npidfile={tmp_path}/s.pid\n"
        f"[include]\nfiles = {conf_d}/*.conf\n")
    code = """
import json, sys
from supervisor.options import ServerOptions
o = ServerOptions(); o.realize(["-c", sys.argv[1]])
print(json.dumps({g.name: {"procs": [p.name for p in g.process_configs],
                           "command": g.process_configs[0].command, "uid": g.process_configs[0].uid,
                           "umask": g.process_configs[0].umask, "stopwaitsecs": g.process_configs[0].stopwaitsecs,
                           "stopsignal": int(g.process_configs[0].stopsignal),
                           "environment": g.process_configs[0].environment,
                           "directory": g.process_configs[0].directory,
                           "logfile": g.process_configs[0].stdout_logfile,
                           "redirect_stderr": g.process_configs[0].redirect_stderr} for g in o.process_group_configs}))
"""
    out = subprocess.run(["/usr/bin/python3", "-c", code, str(tmp_path / "supervisord.conf")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_supervisor_reads_the_default_rendering(tmp_path):
    parsed = supervisor_parse(tmp_path, render_config.render(Settings(), prefix=str(tmp_path)))
    assert sorted(parsed) == sorted(f"photo-{q}-worker" for q in QUEUES)
    faces = parsed["photo-faces-worker"]
    assert faces["procs"] == [f"photo-faces-worker_{i:02d}" for i in range(8)]
    assert parsed["photo-thumbnails-worker"]["procs"] == ["photo-thumbnails-worker_00", "photo-thumbnails-worker_01"]
    assert faces["umask"] == 0o002 and faces["stopsignal"] == 15 and faces["redirect_stderr"]
    assert faces["stopwaitsecs"] == QUEUE_TIMEOUTS["faces"] + render_config.STOP_MARGIN
    assert faces["uid"] is None              # setpriv drops to www-data:web, supervisor does not
    assert faces["command"].endswith("/bin/photo-pipeline consume --queue faces")
    assert faces["logfile"] == f"{tmp_path}/storage/logs/supervisor-photo-faces.log"


def test_no_setpriv_uses_supervisor_user(tmp_path):
    files = render_config.render(Settings(), prefix=str(tmp_path), user="root", group="root", setpriv=False)
    assert "/usr/bin/setpriv" not in files["photo-faces-worker.conf"]
    assert supervisor_parse(tmp_path, files)["photo-faces-worker"]["uid"] == 0


def test_cli_writes_files_and_keeps_unchanged_ones(tmp_path):
    args = [str(VENV / "bin/python"), "-m", "workers", "render-config", "--out", str(tmp_path),
            "--prefix", "/srv/photo/", "--venv", "/opt/venv", "--user", "app", "--group", "app",
            "--numprocs", "1", "--numprocs", "faces=3", "--env", "PHOTO_STORAGE_ROOT=/srv/photo/storage/app"]
    first = subprocess.run(args, cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert len(first.stdout.split()) == 5
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    subprocess.run(args, cwd=PROJECT_ROOT, check=True, capture_output=True)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == mtimes
    faces = ini((tmp_path / "photo-faces-worker.conf").read_text())["program:photo-faces-worker"]
    assert faces["numprocs"] == "3"
    assert faces["command"].endswith("/opt/venv/bin/photo-pipeline consume --queue faces")
    assert 'PHOTO_STORAGE_ROOT="/srv/photo/storage/app"' in faces["environment"]
    assert faces["stdout_logfile"] == "/srv/photo/storage/logs/supervisor-photo-faces.log"
    assert ini((tmp_path / "photo-metadata-worker.conf").read_text())["program:photo-metadata-worker"]["numprocs"] == "1"
    bad = subprocess.run(args[:4] + ["--numprocs", "nosuch=2"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown queue" in bad.stderr
    bad = subprocess.run(args[:4] + ["--env", "PHOTO_X=a\nb"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "render-config:" in bad.stderr


def systemd_analyze_works() -> bool:
    if not shutil.which("systemd-analyze"):
        return False
    probe = subprocess.run(["systemd-analyze", "--version"], capture_output=True)
    return probe.returncode == 0


def test_systemd_analyze_verify(tmp_path):
    if not systemd_analyze_works():
        pytest.skip("systemd-analyze not available in this container")
    import grp
    import os
    import pwd
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    venv = locked_venv(tmp_path / "venv")     # a venv holding the package: its photo-pipeline exists
    install_checkout(venv)
    unit = tmp_path / "face-api.service"
    unit.write_text(render_config.render(Settings(), venv=str(venv), user=user, group=group)["face-api.service"])
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    if res.returncode != 0 and "Failed to " in res.stderr and "face-api" not in res.stderr:
        pytest.skip(f"systemd-analyze cannot run here: {res.stderr.strip()[:200]}")
    assert res.returncode == 0, res.stderr
    # and it does check: a venv without the console script is refused
    unit.write_text(render_config.render(Settings(), venv=str(tmp_path / "novenv"), user=user, group=group)["face-api.service"])
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert res.returncode != 0 and "photo-pipeline" in res.stderr
