"""install.sh into a temporary filesystem root (--root, --no-services, current user/group)."""
from __future__ import annotations

import grp
import hashlib
import os
import pwd
import stat
import subprocess
from pathlib import Path

from tests.services import PROJECT_ROOT

QUEUES = ("thumbnails", "metadata", "geolocation", "faces")
VENV = PROJECT_ROOT / ".venv"
USER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name


def install(root: Path, *extra: str) -> subprocess.CompletedProcess:
    prefix = root / "var/www/photo"
    # --no-apt: the packages are there already (make test installs them); apt needs the network.
    cmd = [str(PROJECT_ROOT / "install.sh"), "--prefix", str(prefix), "--root", str(root),
           "--venv", str(VENV), "--user", USER, "--group", GROUP, "--no-services", "--no-apt", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def snapshot(root: Path) -> dict:
    """Everything an install could change: paths, modes, owners, contents, mtimes."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        out[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns if digest else None, digest)
    return out


def test_install_into_temp_root(tmp_path):
    res = install(tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    prefix = tmp_path / "var/www/photo"

    conf_d, systemd = tmp_path / "etc/supervisor/conf.d", tmp_path / "etc/systemd/system"
    assert sorted(p.name for p in conf_d.iterdir()) == sorted(f"photo-{q}-worker.conf" for q in QUEUES)
    assert [p.name for p in systemd.iterdir()] == ["face-api.service"]
    for f in [*conf_d.iterdir(), *systemd.iterdir()]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o644
    faces = (conf_d / "photo-faces-worker.conf").read_text()
    assert f"{VENV}/bin/python -m workers consume --queue faces" in faces
    assert f"directory={prefix}\n" in faces
    assert f"stdout_logfile={prefix}/storage/logs/supervisor-photo-faces.log" in faces
    assert "numprocs=8" in faces
    unit = (systemd / "face-api.service").read_text()
    assert f"ExecStart={VENV}/bin/gunicorn -c {prefix}/face_api/gunicorn.conf.py face_api.app:app" in unit
    assert f"User={USER}\nGroup={GROUP}\nUMask=0002" in unit

    # the code, synced without caches
    for rel in ("workers/cli.py", "workers/deploy.py", "face_api/app.py", "face_api/gunicorn.conf.py",
                "workers/templates/supervisor/photo-worker.conf.j2", "requirements.txt", "install.sh"):
        assert (prefix / rel).read_bytes() == (PROJECT_ROOT / rel).read_bytes(), rel
    assert not list(prefix.rglob("__pycache__"))

    logs = prefix / "storage/logs"
    assert logs.is_dir()
    managed = [logs, prefix / "storage", *(prefix / d for d in ("workers", "face_api", "scripts"))]
    for top in managed:
        for p in [top, *top.rglob("*")] if top != prefix / "storage" else [top]:
            st = p.lstat()
            assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), p
            if p.is_dir():
                assert stat.S_IMODE(st.st_mode) == 0o775, p
            elif st.st_mode & 0o111:
                assert stat.S_IMODE(st.st_mode) == 0o775, p       # scripts stay executable
            else:
                assert stat.S_IMODE(st.st_mode) == 0o664, p
    assert stat.S_IMODE((prefix / "install.sh").stat().st_mode) == 0o775
    assert stat.S_IMODE((prefix / "requirements.txt").stat().st_mode) == 0o664
    assert "all pinned requirements present" in res.stdout     # the venv step did not touch pip
    assert "services\nskipped (--no-services)" in res.stdout

    # the installed copy renders the same config (render-config ran from the app dir)
    assert "config changed: 1" in res.stdout


def test_install_twice_is_idempotent(tmp_path):
    assert install(tmp_path).returncode == 0
    log = tmp_path / "var/www/photo/storage/logs/supervisor-photo-faces.log"
    log.write_text("kept\n")
    log.chmod(0o600)
    assert install(tmp_path).returncode == 0
    assert stat.S_IMODE(log.stat().st_mode) == 0o664 and log.read_text() == "kept\n"   # logs: 664
    before = snapshot(tmp_path)
    res = install(tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert snapshot(tmp_path) == before
    assert res.stdout.count("unchanged ") == 5
    assert "config changed: 0" in res.stdout


def test_install_updates_changed_config_and_removes_stale_code(tmp_path):
    assert install(tmp_path).returncode == 0
    prefix = tmp_path / "var/www/photo"
    (prefix / "workers/stale_module.py").write_text("old\n")
    conf = tmp_path / "etc/supervisor/conf.d/photo-metadata-worker.conf"
    conf.write_text("edited by hand\n")
    res = install(tmp_path)
    assert res.returncode == 0, res.stderr
    assert not (prefix / "workers/stale_module.py").exists()
    assert "[program:photo-metadata-worker]" in conf.read_text()
    assert "config changed: 1" in res.stdout


def test_dry_run_changes_nothing_and_prints_steps(tmp_path):
    res = subprocess.run([str(PROJECT_ROOT / "install.sh"), "--prefix", str(tmp_path / "var/www/photo"),
                          "--root", str(tmp_path), "--venv", str(tmp_path / "venv"), "--migrate", "--dry-run"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert list(tmp_path.iterdir()) == []
    out = res.stdout
    for step in ("==> Debian packages", "==> group web", "==> code in", "==> virtualenv",
                 "==> storage/logs", "==> config:", "==> migrations", "==> services"):
        assert step in out, step
    for cmd in ("debian-deps.sh python3 python3-venv libimage-exiftool-perl supervisor",
                f"+ python3 -m venv {tmp_path}/venv", "pip install -q -r",
                f"+ mkdir -p {tmp_path}/var/www/photo/storage/logs", "+ chmod -R u+rwX,g+rwX,o+rX,o-w",
                "render-config", "-m workers migrate"):
        assert cmd in out, cmd
    assert "dry run: nothing was changed" in out
    assert "--no-deps" not in out              # the lock only: the test oracle stays off the box


def test_dry_run_on_live_root_lists_service_commands(tmp_path):
    res = subprocess.run([str(PROJECT_ROOT / "install.sh"), "--prefix", str(tmp_path / "p"), "--dry-run", "--no-apt"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for cmd in ("+ systemctl daemon-reload", "+ systemctl enable face-api", "+ systemctl restart face-api",
                "+ supervisorctl reread", "+ supervisorctl update"):
        assert cmd in res.stdout
    assert list(tmp_path.iterdir()) == []


def test_bad_option_is_refused(tmp_path):
    res = subprocess.run([str(PROJECT_ROOT / "install.sh"), "--bogus"], capture_output=True, text=True)
    assert res.returncode == 2 and "unknown option --bogus" in res.stderr


def test_missing_user_skips_chown_with_a_message(tmp_path):
    prefix = tmp_path / "var/www/photo"
    res = subprocess.run([str(PROJECT_ROOT / "install.sh"), "--prefix", str(prefix), "--root", str(tmp_path),
                          "--venv", str(VENV), "--user", "no-such-user-photo", "--group", GROUP,
                          "--no-services", "--no-apt"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    expected = ("not running as root" if os.getuid() else "user no-such-user-photo does not exist")
    assert f"chown skipped: {expected}" in res.stdout
    assert (prefix / "storage/logs").stat().st_uid == os.getuid()
    assert stat.S_IMODE((prefix / "storage/logs").stat().st_mode) == 0o775
