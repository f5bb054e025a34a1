#!/usr/bin/env bash
# Installs what the browser test (tests/browser/) needs: Debian's chromium via apt when /usr/bin/chromium is
# missing, and playwright-core (the driver only, no bundled browser) into .tools/playwright/ with npm.
# Playwright never downloads a browser here (`npx playwright install` cannot reach its CDN): the test
# launches /usr/bin/chromium through `executablePath`. Idempotent: does nothing when both are present.
set -euo pipefail

PLAYWRIGHT_VERSION=1.65.1
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="$root/.tools/playwright"

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ -f "$prefix/node_modules/playwright-core/package.json" ] \
   && grep -q "\"version\": \"$PLAYWRIGHT_VERSION\"" "$prefix/node_modules/playwright-core/package.json"; then
  exit 0
fi

echo "installing playwright-core@$PLAYWRIGHT_VERSION into $prefix"
mkdir -p "$prefix"
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$prefix" "playwright-core@$PLAYWRIGHT_VERSION" \
  --no-audit --no-fund --loglevel=error
test -f "$prefix/node_modules/playwright-core/package.json" \
  || { echo "playwright-core was not installed into $prefix" >&2; exit 1; }
