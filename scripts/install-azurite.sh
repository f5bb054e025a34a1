#!/usr/bin/env bash
# Installs Azurite (the Azure Storage emulator the Azure tier tests run against) into .tools/azurite/,
# and Node.js/npm via apt when they are missing. Idempotent: does nothing if azurite-blob is already there.
# Pinned to 3.37.0: `npm install azurite@3` on Node 20 silently resolves to 3.35.0 (engines field);
# 3.37.0 warns EBADENGINE on Node 20 but runs fine.
set -euo pipefail

AZURITE_VERSION=3.37.0
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="$root/.tools/azurite"

if [ -x "$prefix/node_modules/.bin/azurite-blob" ]; then
  exit 0
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "installing system packages: nodejs npm"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends nodejs npm
fi

echo "installing azurite@$AZURITE_VERSION into $prefix"
mkdir -p "$prefix"
npm install --prefix "$prefix" "azurite@$AZURITE_VERSION" --no-audit --no-fund --loglevel=error
test -x "$prefix/node_modules/.bin/azurite-blob" || { echo "azurite-blob was not installed into $prefix" >&2; exit 1; }
