#!/usr/bin/env bash
# Installs the system packages drkit needs, only when they are missing (idempotent).
# PostgreSQL 15 server binaries (initdb, pg_ctl, pg_rewind, pg_amcheck) and contrib (pg_visibility, amcheck).
set -euo pipefail

need=()
pgbin=$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)
[ -x "$pgbin/initdb" ] && [ -x "$pgbin/pg_ctl" ] || need+=(postgresql-15)
[ -x "$pgbin/pg_amcheck" ] || need+=(postgresql-client-15)
ls /usr/share/postgresql/*/extension/pg_visibility.control >/dev/null 2>&1 || need+=(postgresql-contrib)
command -v zstd >/dev/null || need+=(zstd)
[ -x /usr/bin/python3 ] || need+=(python3)
# pyodbc (the SQL Server engine) loads libodbc.so.2 from unixODBC at import time.
ldconfig -p 2>/dev/null | grep -q 'libodbc\.so\.2' || need+=(unixodbc)
# HAProxy (traffic router tests drive a real one through its runtime API); the package's service is not used.
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
# Prometheus (promtool tests the alert rules; the scrape test runs a real server) and Alertmanager (amtool checks
# the routing example); tests start their own processes, the packages' services are not used.
command -v promtool >/dev/null && command -v prometheus >/dev/null || need+=(prometheus)
command -v amtool >/dev/null && command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)

if [ ${#need[@]} -gt 0 ]; then
  echo "installing system packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
  # Debian's package starts a default cluster; drkit makes its own, so stop it to free port 5432.
  if command -v pg_lsclusters >/dev/null && [ -n "$(pg_lsclusters -h 2>/dev/null)" ]; then
    $SUDO pg_ctlcluster 15 main stop 2>/dev/null || true
  fi
  # Debian's prometheus packages start their services (and node-exporter, should it come along); stop any that did.
  for svc in prometheus prometheus-alertmanager prometheus-node-exporter; do
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
      if systemctl is-active --quiet "$svc" 2>/dev/null; then
        $SUDO systemctl stop "$svc" || true
        $SUDO systemctl disable "$svc" 2>/dev/null || true
      fi
    elif [ -x "/etc/init.d/$svc" ] && "/etc/init.d/$svc" status >/dev/null 2>&1; then
      $SUDO "/etc/init.d/$svc" stop || true
    fi
  done
fi
id postgres >/dev/null 2>&1 || { echo "the postgres OS user is missing (install postgresql-15)"; exit 1; }
