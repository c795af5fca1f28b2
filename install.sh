#!/usr/bin/env bash
# Installs photo-pipeline on a Debian/Ubuntu box: Debian packages, the pinned venv, the code,
# storage/logs, the supervisor programs and the face-api systemd unit; then (re)starts them.
# Idempotent: run it again after every `git pull`. `--dry-run` prints the steps and changes nothing.
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PREFIX=/var/www/photo
APP_DIR=""
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
  --app-dir DIR    where this project's code lives (default: the prefix); synced from $SRC
  --venv DIR       virtualenv (default: <prefix>/face-api-venv)
  --user NAME      process owner (default www-data)
  --group NAME     group (default web; created if missing)
  --root DIR       filesystem root for /etc/supervisor and /etc/systemd (default /; tests)
  --migrate        run \`python -m workers migrate\` (DB from the app's .env / PHOTO_*)
  --no-apt         skip the Debian packages step
  --no-services    do not touch systemctl / supervisorctl
  --dry-run        print every step, change nothing
EOF
}

while [ "$#" -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="$2"; shift 2 ;;
    --app-dir) APP_DIR="$2"; shift 2 ;;
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
APP_DIR="$(abspath "${APP_DIR:-$PREFIX}")"
VENV="$(abspath "${VENV:-$PREFIX/face-api-venv}")"
ROOT="$(abspath "$ROOT")"          # "/" becomes "", so "$ROOT/etc" is /etc
SUPERVISOR_DIR="$ROOT/etc/supervisor/conf.d"
SYSTEMD_DIR="$ROOT/etc/systemd/system"
LOG_DIR="$PREFIX/storage/logs"
PY="$VENV/bin/python"

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
  run "$SRC/scripts/debian-deps.sh" python3 python3-venv libimage-exiftool-perl supervisor rsync
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

step "code in $APP_DIR"
if [ "$APP_DIR" = "$SRC" ]; then
  echo "already there"
else
  run mkdir -p "$APP_DIR"
  # Only this project's own paths: the app dir may be the Laravel root, whose files we never touch.
  HAVE_RSYNC=0; command -v rsync >/dev/null && HAVE_RSYNC=1
  for d in workers face_api etc scripts sql; do
    [ -d "$SRC/$d" ] || continue
    if [ "$HAVE_RSYNC" -eq 1 ]; then
      run rsync -rlt --delete --exclude __pycache__ --exclude '*.pyc' "$SRC/$d/" "$APP_DIR/$d/"
    else   # no rsync (--no-apt): replace the directory, keeping timestamps
      run rm -rf "$APP_DIR/$d"
      run cp -a "$SRC/$d" "$APP_DIR/$d"
      run find "$APP_DIR/$d" -name __pycache__ -prune -exec rm -rf {} +
    fi
  done
  for f in install.sh requirements.txt requirements-nodeps.txt Makefile; do
    [ -f "$SRC/$f" ] || continue
    run cp -p "$SRC/$f" "$APP_DIR/$f"
  done
fi

step "virtualenv $VENV"
# The pinned lock only: the box needs no test oracle (requirements-nodeps.txt).
REQ="$SRC/requirements.txt"
# True when every pinned requirement that applies here (environment markers) is installed at
# exactly its version (offline; no pip).
venv_satisfied() {
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
if venv_satisfied; then
  echo "all pinned requirements present"
else
  [ -x "$PY" ] || run python3 -m venv "$VENV"
  run "$PY" -m pip install -q --upgrade pip
  run "$PY" -m pip install -q -r "$REQ"
fi

step "storage/logs (owner $USER_NAME:$GROUP_NAME, dirs 775, files 664)"
run mkdir -p "$LOG_DIR"
# u+rwX,g+rwX,o+rX,o-w: dirs 775, files 664, executables (install.sh, scripts/) stay 775.
PERM_PATHS=("$LOG_DIR")
[ "$APP_DIR" = "$SRC" ] || for p in workers face_api etc scripts sql install.sh requirements.txt \
    requirements-nodeps.txt Makefile; do [ -e "$APP_DIR/$p" ] && PERM_PATHS+=("$APP_DIR/$p"); done
run chmod -R u+rwX,g+rwX,o+rX,o-w "${PERM_PATHS[@]}"
run chmod 775 "$PREFIX/storage"
if [ "$OWNER_OK" -eq 1 ]; then
  run chown -R "$USER_NAME:$GROUP_NAME" "${PERM_PATHS[@]}"
  run chown "$USER_NAME:$GROUP_NAME" "$PREFIX/storage"
else
  echo "chown skipped: $OWNER_WHY (files stay owned by $(id -un):$(id -gn))"
fi

step "config: $SUPERVISOR_DIR/photo-*-worker.conf, $SYSTEMD_DIR/face-api.service"
CHANGED=0
if [ "$DRY_RUN" -eq 1 ]; then
  echo "+ (cd $APP_DIR && $PY -m workers render-config --prefix $PREFIX --venv $VENV --app-dir $APP_DIR" \
       "--user $USER_NAME --group $GROUP_NAME --out <tmp>) and install the files that differ"
else
  STAGE="$(mktemp -d)"; trap 'rm -rf "$STAGE"' EXIT
  (cd "$APP_DIR" && "$PY" -m workers render-config --prefix "$PREFIX" --venv "$VENV" --app-dir "$APP_DIR" \
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
  run env -C "$APP_DIR" "$PY" -m workers migrate
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
  # New code needs new processes; TERM lets each finish its current job (stopwaitsecs).
  run supervisorctl restart 'photo-thumbnails-worker:*' 'photo-metadata-worker:*' \
      'photo-geolocation-worker:*' 'photo-faces-worker:*'
fi
[ "$DRY_RUN" -eq 1 ] && echo "dry run: nothing was changed"
echo "done (config changed: $CHANGED)"
