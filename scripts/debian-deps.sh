#!/usr/bin/env bash
# Installs the Debian packages the project and its tests need, only those missing.
# Used by `make test` / `make run` / install.sh so a fresh Debian box needs nothing by hand.
set -euo pipefail
pkgs=(python3 python3-venv python3-dev build-essential
      libimage-exiftool-perl
      mariadb-server mariadb-client rabbitmq-server supervisor
      php-cli php-laravel-framework php-amqplib php-imagick php-mbstring php-xml
      chromium)
[ "$#" -gt 0 ] && pkgs=("$@")
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
# Packaged services must not start on the CI box: tests run their own throwaway instances.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d; trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
fi
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
