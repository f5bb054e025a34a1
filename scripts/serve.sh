#!/usr/bin/env bash
# `make serve`: a Prefect server (reused if PREFECT_API_URL already answers) and every deployment
# from the policy file ($DRKIT_CONFIG or ./drkit.yaml): backups on their schedules, runbooks on demand
# (Deployments -> name -> Run in the UI). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
export PREFECT_API_URL=${PREFECT_API_URL:-http://127.0.0.1:4200/api}
server_pid=""
if ! curl -fsS "$PREFECT_API_URL/health" >/dev/null 2>&1; then
  mkdir -p var/prefect
  PREFECT_HOME=$PWD/var/prefect PREFECT_SERVER_UI_API_URL="$PREFECT_API_URL" \
    .venv/bin/prefect server start --host 127.0.0.1 --port "${PREFECT_PORT:-4200}" \
    >var/prefect/server.log 2>&1 &
  server_pid=$!
  trap '[ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null' EXIT
  for _ in $(seq 1 120); do curl -fsS "$PREFECT_API_URL/health" >/dev/null 2>&1 && break; sleep 1; done
fi
echo "Prefect UI: ${PREFECT_API_URL%/api}"
.venv/bin/python -m deployments "${DRKIT_CONFIG:-drkit.yaml}"
