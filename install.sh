#!/usr/bin/env bash
# Installs photo-pipeline on a Debian/Ubuntu box: Debian packages, a venv holding the pinned lock
# and this checkout as an installed package (the `photo-pipeline` command), storage/logs, the
# supervisor programs and the face-api systemd unit; then (re)starts them. The programs run the
# venv's console script, so the checkout can be deleted or moved after the install.
# Idempotent: run it again after every `git pull` (it upgrades the package in place); run an older
# checkout's install.sh to roll back. `--dry-run` prints the steps and changes nothing.
# Never written: the operator's settings (/etc/default/face-api, the app's .env).
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PREFIX=/var/www/photo
WORKDIR=""
VENV=""
USER_NAME=www-data
GROUP_NAME=web
ROOT=/
DRY_RUN=0
SERVICES=1
MIGRATE=0
APT=1

usage() {
  cat <<EOF
usage: sudo ./install.sh [options]
  --prefix DIR     the Laravel app root (default /var/www/photo); logs in DIR/storage/logs
  --workdir DIR    working directory of the programs: relative settings (storage, .env) resolve
                   there (default: the prefix). --app-dir is the old name
  --venv DIR       virtualenv (default: <prefix>/face-api-venv)
  --user NAME      process owner (default www-data)
  --group NAME     group (default web; created if missing)
  --root DIR       filesystem root for /etc/supervisor and /etc/systemd (default /; tests)
  --migrate        run \`photo-pipeline migrate\` (DB from the app's .env / PHOTO_*)
  --no-apt         skip the Debian packages step
  --no-services    do not touch systemctl / supervisorctl
  --dry-run        print every step, change nothing
EOF
}

while [ "$#" -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="$2"; shift 2 ;;
    --workdir|--app-dir) WORKDIR="$2"; shift 2 ;;
    --venv) VENV="$2"; shift 2 ;;
    --user) USER_NAME="$2"; shift 2 ;;
    --group) GROUP_NAME="$2"; shift 2 ;;
    --root) ROOT="$2"; shift 2 ;;
    --migrate) MIGRATE=1; shift ;;
    --no-apt) APT=0; shift ;;
    --no-services) SERVICES=0; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done

abspath() { case "$1" in /*) printf '%s' "${1%/}" ;; *) printf '%s/%s' "$PWD" "${1%/}" ;; esac; }
PREFIX="$(abspath "$PREFIX")"
WORKDIR="$(abspath "${WORKDIR:-$PREFIX}")"
VENV="$(abspath "${VENV:-$PREFIX/face-api-venv}")"
ROOT="$(abspath "$ROOT")"          # "/" becomes "", so "$ROOT/etc" is /etc
SUPERVISOR_DIR="$ROOT/etc/supervisor/conf.d"
SYSTEMD_DIR="$ROOT/etc/systemd/system"
LOG_DIR="$PREFIX/storage/logs"
PY="$VENV/bin/python"
CLI="$VENV/bin/photo-pipeline"

step() { echo "==> $*"; }
# Every change goes through run: printed always, executed unless --dry-run.
run() {
  echo "+ $*"
  [ "$DRY_RUN" -eq 1 ] || "$@"
}

IS_ROOT=0; [ "$(id -u)" -eq 0 ] && IS_ROOT=1
OWNER_OK=1
if [ "$IS_ROOT" -ne 1 ]; then
  OWNER_OK=0; OWNER_WHY="not running as root"
elif ! id -u "$USER_NAME" >/dev/null 2>&1; then
  OWNER_OK=0; OWNER_WHY="user $USER_NAME does not exist"
fi

step "Debian packages (python3-venv, libimage-exiftool-perl, supervisor)"
if [ "$APT" -eq 1 ]; then
  run "$SRC/scripts/debian-deps.sh" python3 python3-venv libimage-exiftool-perl supervisor
else
  echo "skipped (--no-apt)"
fi

step "group $GROUP_NAME"
if getent group "$GROUP_NAME" >/dev/null; then
  echo "exists"
elif [ "$IS_ROOT" -eq 1 ]; then
  run groupadd --system "$GROUP_NAME"
else
  echo "group $GROUP_NAME missing and not root: skipped (files keep your group)"
fi

step "virtualenv $VENV: the pinned lock, then the photo-pipeline package"
# `pip install -r requirements.txt` then `pip install --no-deps <checkout>`: the box gets exactly
# the lock CI tested (tests/test_packaging.py keeps it complete and in step with pyproject.toml),
# and installing the package can neither add nor upgrade a dependency; `pip check` then proves the
# lock satisfies what the package declares. (`pip install -c requirements.txt .` would resolve
# afresh and take an unpinned version of anything the lock missed.)
REQ="$SRC/requirements.txt"
# True when every pinned requirement that applies here (environment markers) is installed at
# exactly its version (offline; no pip).
lock_satisfied() {
  [ -x "$PY" ] || return 1
  "$PY" - "$REQ" <<'EOF'
import re, sys
from importlib import metadata
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
have = {norm(d.metadata["Name"]): d.version for d in metadata.distributions()}
for path in sys.argv[1:]:
    for line in open(path):
        spec, _, marker = line.split("#", 1)[0].strip().partition(";")
        if not spec:
            continue
        if marker.strip():
            from packaging.markers import Marker   # in the lock; missing means "not satisfied"
            if not Marker(marker).evaluate():
                continue
        name, _, version = spec.partition("==")
        if have.get(norm(name.strip())) != version.strip():
            sys.exit(1)
EOF
}
# The files the package is built from. They are built from a copy: an in-tree build would leave
# build/ in the checkout, whose stale modules setuptools would put into the next wheel.
PACKAGE_FILES=(pyproject.toml README.md workers face_api etc)
package_files() {
  (cd "$SRC" && find "${PACKAGE_FILES[@]}" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 |
     LC_ALL=C sort -z)
}
# What the installed package was built from, recorded in the venv after each install: a changed
# checkout (git pull, or an older one to roll back) differs and is reinstalled, the same is not.
STAMP="$VENV/.photo-pipeline-source"
DIGEST="$(package_files | (cd "$SRC" && xargs -0 sha256sum) | sha256sum | cut -d' ' -f1)"
if lock_satisfied; then
  echo "all pinned requirements present"
else
  [ -x "$PY" ] || run python3 -m venv "$VENV"
  run "$PY" -m pip install -q --upgrade pip
  run "$PY" -m pip install -q -r "$REQ"
fi
if [ -x "$CLI" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$DIGEST" ]; then
  echo "photo-pipeline package up to date ($CLI)"
else
  if [ "$DRY_RUN" -eq 1 ]; then
    BUILD="<tmp>"
  else
    BUILD="$(mktemp -d)"; trap 'rm -rf "$BUILD"' EXIT
    package_files | (cd "$SRC" && xargs -0 cp --parents -p -t "$BUILD")
  fi
  echo "+ copy ${PACKAGE_FILES[*]} to $BUILD"
  # --force-reinstall: two checkouts may carry the same version number.
  run "$PY" -m pip install -q --no-deps --force-reinstall "$BUILD"
  run "$PY" -m pip check
  if [ "$DRY_RUN" -eq 1 ]; then
    echo "+ record the source digest in $STAMP"
  else
    echo "$DIGEST" > "$STAMP"
  fi
fi

step "old code copies in $WORKDIR"
# install.sh used to copy workers/ and face_api/ into the working directory; the programs now run
# the installed package, and a stale copy there would only mislead whoever reads it.
OLD=()
if [ "$WORKDIR" != "$SRC" ]; then
  [ -f "$WORKDIR/workers/cli.py" ] && OLD+=("$WORKDIR/workers")
  [ -f "$WORKDIR/face_api/app.py" ] && OLD+=("$WORKDIR/face_api")
fi
if [ "${#OLD[@]}" -eq 0 ]; then
  echo "none"
else
  run rm -rf "${OLD[@]}"
  LEFT=()
  for p in sql scripts etc install.sh requirements.txt requirements-nodeps.txt Makefile; do
    [ -e "$WORKDIR/$p" ] && LEFT+=("$WORKDIR/$p")
  done
  [ "${#LEFT[@]}" -eq 0 ] || echo "no longer used; remove them if an earlier install.sh put them there: ${LEFT[*]}"
fi

step "storage/logs (owner $USER_NAME:$GROUP_NAME, dirs 775, files 664)"
run mkdir -p "$LOG_DIR"
# u+rwX,g+rwX,o+rX,o-w: dirs 775, files 664, executables (install.sh, scripts/) stay 775.
run chmod -R u+rwX,g+rwX,o+rX,o-w "$LOG_DIR"
run chmod 775 "$PREFIX/storage"
if [ "$OWNER_OK" -eq 1 ]; then
  run chown -R "$USER_NAME:$GROUP_NAME" "$LOG_DIR"
  run chown "$USER_NAME:$GROUP_NAME" "$PREFIX/storage"
else
  echo "chown skipped: $OWNER_WHY (files stay owned by $(id -un):$(id -gn))"
fi

step "config: $SUPERVISOR_DIR/photo-*-worker.conf, $SYSTEMD_DIR/face-api.service"
CHANGED=0
if [ "$DRY_RUN" -eq 1 ]; then
  echo "+ (cd $WORKDIR && $CLI render-config --prefix $PREFIX --venv $VENV --workdir $WORKDIR" \
       "--user $USER_NAME --group $GROUP_NAME --out <tmp>) and install the files that differ"
else
  STAGE="$(mktemp -d)"; trap 'rm -rf "$STAGE" "${BUILD:-}"' EXIT
  # From the working directory, so it reads the settings (.env) the programs will read.
  (cd "$WORKDIR" && "$CLI" render-config --prefix "$PREFIX" --venv "$VENV" --workdir "$WORKDIR" \
     --user "$USER_NAME" --group "$GROUP_NAME" --out "$STAGE" >/dev/null)
  mkdir -p "$SUPERVISOR_DIR" "$SYSTEMD_DIR"
  for f in "$STAGE"/*; do
    name="$(basename "$f")"
    case "$name" in *.service) dest="$SYSTEMD_DIR/$name" ;; *) dest="$SUPERVISOR_DIR/$name" ;; esac
    if cmp -s "$f" "$dest"; then
      echo "unchanged $dest"
    else
      run install -m 644 "$f" "$dest"; CHANGED=1
    fi
  done
fi

step "migrations"
if [ "$MIGRATE" -eq 1 ]; then
  run env -C "$WORKDIR" "$CLI" migrate
else
  echo "skipped (pass --migrate)"
fi

step "services"
if [ "$SERVICES" -eq 0 ]; then
  echo "skipped (--no-services)"
elif [ -n "$ROOT" ]; then
  echo "skipped: --root $ROOT is not the live system"
else
  run systemctl daemon-reload
  run systemctl enable face-api
  run systemctl restart face-api
  run supervisorctl reread
  run supervisorctl update
  # A new package needs new processes; TERM lets each finish its current job (stopwaitsecs).
  run supervisorctl restart 'photo-thumbnails-worker:*' 'photo-metadata-worker:*' \
      'photo-geolocation-worker:*' 'photo-faces-worker:*'
fi
[ "$DRY_RUN" -eq 1 ] && echo "dry run: nothing was changed"
echo "done (config changed: $CHANGED)"
