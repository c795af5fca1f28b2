"""install.sh into a temporary filesystem root (--root, --no-services, current user/group) and a
throwaway venv that already holds the lock (tests/deploy/venvs.py): the package is installed into
that venv, and the rendered programs run its console script, never the checkout."""
from __future__ import annotations

import grp
import hashlib
import os
import pwd
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support.venvs import locked_venv
from tests.support.services import PROJECT_ROOT

QUEUES = ("thumbnails", "metadata", "geolocation", "faces")
USER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def venv(tmp_path) -> Path:
    return locked_venv(tmp_path / "venv")


def install(root: Path, venv: Path, *extra: str, src: Path = PROJECT_ROOT) -> subprocess.CompletedProcess:
    prefix = root / "var/www/photo"
    # --no-apt: the packages are there already (make test installs them); apt needs the network.
    cmd = [str(src / "install.sh"), "--prefix", str(prefix), "--root", str(root),
           "--venv", str(venv), "--user", USER, "--group", GROUP, "--no-services", "--no-apt", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def snapshot(*tops: Path) -> dict:
    """Everything an install could change: paths, modes, owners, contents, mtimes."""
    out = {}
    for top in tops:
        for path in sorted(top.rglob("*")):
            st = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() else None
            out[str(path)] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns if digest else None, digest)
    return out


def installed(venv: Path, module: str) -> Path:
    return next((venv / "lib").glob(f"python3*/site-packages/{module}"))


def commands(conf_dir: Path) -> list[list[str]]:
    """The command line of every supervisor program and ExecStart= in the rendered files."""
    out = []
    for f in sorted(conf_dir.rglob("*")):
        for line in f.read_text().splitlines() if f.is_file() else ():
            key, _, value = line.partition("=")
            if key in ("command", "ExecStart"):
                argv = shlex.split(value)
                if argv[0] == "/usr/bin/setpriv":     # setpriv --options <command>: the command proper
                    argv = argv[1:]
                    while argv[0].startswith("-"):
                        argv.pop(0)
                out.append(argv)
    return out


def test_units_run_only_the_installed_package(tmp_path, venv):
    root = tmp_path / "root"
    res = install(root, venv)
    assert res.returncode == 0, res.stdout + res.stderr
    prefix = root / "var/www/photo"

    conf_d, systemd = root / "etc/supervisor/conf.d", root / "etc/systemd/system"
    assert sorted(p.name for p in conf_d.iterdir()) == sorted(f"photo-{q}-worker.conf" for q in QUEUES)
    assert [p.name for p in systemd.iterdir()] == ["face-api.service"]
    for f in [*conf_d.iterdir(), *systemd.iterdir()]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o644
        assert str(PROJECT_ROOT) not in f.read_text(), f"{f.name} names the checkout"
    cli = venv / "bin/photo-pipeline"
    assert sorted(map(tuple, commands(root / "etc"))) == sorted(
        [(str(cli), "consume", "--queue", q) for q in QUEUES] + [(str(cli), "serve-face-api")])
    assert os.access(cli, os.X_OK)
    faces = (conf_d / "photo-faces-worker.conf").read_text()
    assert f"directory={prefix}\n" in faces
    assert f"stdout_logfile={prefix}/storage/logs/supervisor-photo-faces.log" in faces
    assert "numprocs=8" in faces
    unit = (systemd / "face-api.service").read_text()
    assert f"ExecStart={cli} serve-face-api\n" in unit and f"WorkingDirectory={prefix}\n" in unit
    assert f"User={USER}\nGroup={GROUP}\nUMask=0002" in unit

    # The package is in the venv; nothing of the checkout was copied into the app root.
    assert sorted(p.name for p in prefix.iterdir()) == ["storage"]
    for rel, src in (("workers/commands/cli.py", "workers/commands/cli.py"),
                     ("face_api/gunicorn.conf.py", "face_api/gunicorn.conf.py"),
                     ("workers/etc/systemd/face-api.service.j2", "etc/systemd/face-api.service.j2")):
        module, _, rest = rel.partition("/")
        assert (installed(venv, module) / rest).read_bytes() == (PROJECT_ROOT / src).read_bytes(), rel
    assert "all pinned requirements present" in res.stdout     # the lock step did not touch pip
    assert "--no-deps --force-reinstall" in res.stdout and "No broken requirements found" in res.stdout
    # The console script works from an unrelated directory with a bare environment.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    bare = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([str(cli), "render-config"], cwd=elsewhere, env=bare, capture_output=True, text=True)
    assert out.returncode == 0 and "[program:photo-faces-worker]" in out.stdout, out.stderr
    where = subprocess.run([str(venv / "bin/python"), "-c", "import workers, face_api; print(workers.__file__, face_api.__file__)"],
                           cwd=elsewhere, env=bare, capture_output=True, text=True, check=True).stdout.split()
    assert all(p.startswith(str(venv)) for p in where), where

    logs = prefix / "storage/logs"
    for p in (logs, prefix / "storage"):
        st = p.lstat()
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), p
        assert stat.S_IMODE(st.st_mode) == 0o775, p
    assert "services\nskipped (--no-services)" in res.stdout
    assert "config changed: 1" in res.stdout


def test_install_twice_is_idempotent(tmp_path, venv):
    root = tmp_path / "root"
    assert install(root, venv).returncode == 0
    log = root / "var/www/photo/storage/logs/supervisor-photo-faces.log"
    log.write_text("kept\n")
    log.chmod(0o600)
    assert install(root, venv).returncode == 0
    assert stat.S_IMODE(log.stat().st_mode) == 0o664 and log.read_text() == "kept\n"   # logs: 664
    before = snapshot(root, venv)
    res = install(root, venv)
    assert res.returncode == 0, res.stdout + res.stderr
    assert snapshot(root, venv) == before
    assert "photo-pipeline package up to date" in res.stdout and "pip install" not in res.stdout
    assert res.stdout.count("unchanged ") == 5
    assert "config changed: 0" in res.stdout


def copy_checkout(dest: Path) -> Path:
    """The files install.sh reads, as a second checkout would have them."""
    dest.mkdir()
    for rel in ("install.sh", "requirements.txt", "requirements-nodeps.txt", "pyproject.toml", "README.md"):
        shutil.copy2(PROJECT_ROOT / rel, dest / rel)
    for pkg in ("workers", "face_api", "etc", "scripts"):
        shutil.copytree(PROJECT_ROOT / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_upgrade_in_place_and_roll_back_keep_the_operators_settings(tmp_path, venv):
    root = tmp_path / "root"
    prefix = root / "var/www/photo"
    prefix.mkdir(parents=True)
    # The operator's settings, read from the working directory's .env by render-config.
    dotenv = prefix / ".env"
    settings = 'PHOTO_QUEUE_NUMPROCS={"faces": 3}\n'
    dotenv.write_text(settings)
    assert install(root, venv).returncode == 0
    faces_conf = root / "etc/supervisor/conf.d/photo-faces-worker.conf"
    assert "numprocs=3" in faces_conf.read_text()

    newer = copy_checkout(tmp_path / "newer")
    with open(newer / "workers/__init__.py", "a") as f:
        f.write("RELEASE_MARK = 'newer'\n")
    (newer / "workers/added_in_newer.py").write_text("X = 1\n")
    res = install(root, venv, src=newer)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "--force-reinstall" in res.stdout              # a changed checkout is reinstalled
    assert "RELEASE_MARK" in (installed(venv, "workers") / "__init__.py").read_text()
    assert (installed(venv, "workers") / "added_in_newer.py").exists()
    assert "numprocs=3" in faces_conf.read_text() and "config changed: 0" in res.stdout
    assert dotenv.read_text() == settings

    # Roll back: the older checkout's install.sh puts its own package back, without the new module.
    res = install(root, venv)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (installed(venv, "workers") / "__init__.py").read_bytes() == (PROJECT_ROOT / "workers/__init__.py").read_bytes()
    assert not (installed(venv, "workers") / "added_in_newer.py").exists()
    assert "numprocs=3" in faces_conf.read_text()


def test_old_code_copies_are_removed_and_the_app_left_alone(tmp_path, venv):
    """install.sh used to copy workers/ and face_api/ into the app root; they go, Laravel stays."""
    root = tmp_path / "root"
    prefix = root / "var/www/photo"
    for rel in ("workers/cli.py", "face_api/app.py", "sql/001.sql", "artisan", "app/Jobs/FaceProcessJob.php"):
        (prefix / rel).parent.mkdir(parents=True, exist_ok=True)
        (prefix / rel).write_text("old\n")
    res = install(root, venv)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not (prefix / "workers").exists() and not (prefix / "face_api").exists()
    assert f"no longer used; remove them if an earlier install.sh put them there: {prefix}/sql" in res.stdout
    for rel in ("sql/001.sql", "artisan", "app/Jobs/FaceProcessJob.php"):
        assert (prefix / rel).read_text() == "old\n", rel


def test_edited_config_is_rendered_again(tmp_path, venv):
    root = tmp_path / "root"
    assert install(root, venv).returncode == 0
    conf = root / "etc/supervisor/conf.d/photo-metadata-worker.conf"
    conf.write_text("edited by hand\n")
    res = install(root, venv)
    assert res.returncode == 0, res.stderr
    assert "[program:photo-metadata-worker]" in conf.read_text()
    assert "config changed: 1" in res.stdout


def test_dry_run_changes_nothing_and_prints_steps(tmp_path):
    res = subprocess.run([str(PROJECT_ROOT / "install.sh"), "--prefix", str(tmp_path / "var/www/photo"),
                          "--root", str(tmp_path), "--venv", str(tmp_path / "venv"), "--migrate", "--dry-run"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert list(tmp_path.iterdir()) == []
    out = res.stdout
    for step in ("==> Debian packages", "==> group web", "==> virtualenv", "==> old code copies",
                 "==> storage/logs", "==> config:", "==> migrations", "==> services"):
        assert step in out, step
    venv = tmp_path / "venv"
    for cmd in ("debian-deps.sh python3 python3-venv libimage-exiftool-perl supervisor",
                f"+ python3 -m venv {venv}", f"{venv}/bin/python -m pip install -q -r ",
                f"{venv}/bin/python -m pip install -q --no-deps --force-reinstall <tmp>",
                f"{venv}/bin/python -m pip check",
                f"+ mkdir -p {tmp_path}/var/www/photo/storage/logs", "+ chmod -R u+rwX,g+rwX,o+rX,o-w",
                f"{venv}/bin/photo-pipeline render-config", f"{venv}/bin/photo-pipeline migrate"):
        assert cmd in out, cmd
    assert "dry run: nothing was changed" in out
    assert "requirements-nodeps" not in out    # the lock only: the test oracle stays off the box
    assert "-m workers" not in out             # nothing runs from the checkout


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


def test_missing_user_skips_chown_with_a_message(tmp_path, venv):
    prefix = tmp_path / "var/www/photo"
    res = subprocess.run([str(PROJECT_ROOT / "install.sh"), "--prefix", str(prefix), "--root", str(tmp_path),
                          "--venv", str(venv), "--user", "no-such-user-photo", "--group", GROUP,
                          "--no-services", "--no-apt"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    expected = ("not running as root" if os.getuid() else "user no-such-user-photo does not exist")
    assert f"chown skipped: {expected}" in res.stdout
    assert (prefix / "storage/logs").stat().st_uid == os.getuid()
    assert stat.S_IMODE((prefix / "storage/logs").stat().st_mode) == 0o775
