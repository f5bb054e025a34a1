"""How long whole `drkit` commands take, before and after the fast-CLI work (see bench/README.md).

    git worktree add /tmp/drkit-before 60528b3        # the code before (its CLI was `drkit.cli`)
    .venv/bin/python -m bench.cli --before /tmp/drkit-before
    git worktree remove /tmp/drkit-before

Each side gets its own sandbox world (a PostgreSQL cluster with about 16 MB of data, a policy, a SQLite
catalog; the two sides' catalogs have different schema revisions). Every command runs as a fresh process
(`python -m cli`, or `python -m drkit.cli` from the old tree with it first on PYTHONPATH), several times;
the table shows medians. For `backup full` it also shows the flow's own duration as the Prefect API
records it (the top-level flow run's start to end) and the command's overhead over it:

* "server": PREFECT_API_URL points at a running Prefect server;
* "no URL": PREFECT_API_URL is not set. Before: Prefect starts a temporary server in every command. After:
  the first command starts drkit's local server (its time is shown apart) and later commands reuse it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg

from cli.prefect_server import LOCAL_DIR, ensure_local_server, stop_local_server
from drkit.sandbox import KEY_ENV, Sandbox, create_sandbox

ROOT = Path(__file__).resolve().parent.parent
READ_ONLY = [["--help"], ["status"], ["backups", "app"], ["restore-plan", "app"], ["approvals"]]


@dataclass
class Side:
    name: str
    sandbox: Sandbox
    module: str  # "cli" or "drkit.cli"
    pythonpath: str | None

    def env(self, api_url: str | None, prefect_home: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update({KEY_ENV: self.sandbox.key_b64, "DRKIT_CONFIG": str(self.sandbox.policy_path),
                    "PREFECT_HOME": str(prefect_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                    "DO_NOT_TRACK": "1",
                    # a temporary server (before, without a URL) may take longer than Prefect's 20 s here
                    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"})
        if api_url:
            env["PREFECT_API_URL"] = api_url
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        return env

    def run(self, args: list[str], env: dict[str, str]) -> float:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", self.module, *args], cwd=self.sandbox.root, env=env,
                              capture_output=True, text=True, timeout=600, check=False)
        seconds = time.perf_counter() - t0
        if proc.returncode not in (0, 1) or (args[0] == "backup" and proc.returncode):
            raise SystemExit(f"{self.name}: drkit {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-800:]}")
        return seconds


def last_flow_seconds(api_url: str | None, prefect_db: Path | None) -> float:
    """The newest top-level flow run's duration, from the API or (a temporary server's) SQLite database."""
    if api_url:
        req = urllib.request.Request(f"{api_url}/flow_runs/filter", method="POST",  # noqa: S310 - our server
                                     data=json.dumps({"sort": "START_TIME_DESC", "limit": 20}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            runs = [r for r in json.load(resp) if r["parent_task_run_id"] is None and r["end_time"]]
        r = runs[0]
        return (datetime.fromisoformat(r["end_time"]) - datetime.fromisoformat(r["start_time"])).total_seconds()
    assert prefect_db is not None
    with sqlite3.connect(prefect_db) as conn:
        start, end = conn.execute("SELECT start_time, end_time FROM flow_run WHERE parent_task_run_id IS NULL "
                                  "AND end_time IS NOT NULL ORDER BY start_time DESC LIMIT 1").fetchone()
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def make_world(root: Path) -> Sandbox:
    sb = create_sandbox(root, db="app")
    with psycopg.connect(sb.dsn, autocommit=True) as conn:  # about 16 MB
        conn.execute("CREATE TABLE orders(id bigint PRIMARY KEY, note text)")
        conn.execute("INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(1, 200000) g")
        conn.execute("CHECKPOINT")
    return sb


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, help="a checkout of the code before (e.g. a worktree of 60528b3)")
    ap.add_argument("--runs", type=int, default=7, help="runs of each read-only command (default 7)")
    ap.add_argument("--backups", type=int, default=3, help="runs of each backup case (default 3)")
    ap.add_argument("--keep", action="store_true", help="keep the worlds under the temporary directory")
    opts = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="drkit-bench-cli-"))
    os.chmod(base, 0o755)
    sides = [Side("after", make_world(base / "after"), "cli", None)]
    if opts.before:
        sides.insert(0, Side("before", make_world(base / "before"), "drkit.cli", str(opts.before.resolve())))
    server_home = base / "prefect-server"
    server = ensure_local_server(server_home)
    rows: dict[str, dict[str, str]] = {}
    try:
        for side in sides:
            quiet = side.env(None, base / f"{side.name}-prefect-home")
            side.run(["backups", "app"], quiet)  # the first command creates (migrates) the catalog
            side.run(["backup", "full", "app"], side.env(server.url, base / "unused"))  # something to list
            for args in READ_ONLY:
                side.run(args, quiet)  # warm-up
                times = [side.run(args, quiet) for _ in range(opts.runs)]
                rows.setdefault(" ".join(args), {})[side.name] = f"{median(times):.2f}"

            with_server = side.env(server.url, base / "unused")
            cmd, flow = [], []
            for _ in range(opts.backups):
                cmd.append(side.run(["backup", "full", "app"], with_server))
                flow.append(last_flow_seconds(server.url, None))
            over = [c - f for c, f in zip(cmd, flow, strict=True)]
            rows.setdefault("backup full (server)", {})[side.name] = (
                f"{median(cmd):.2f} (flow {median(flow):.2f}, overhead {median(over):.2f})")

            home = base / f"{side.name}-no-url-home"
            no_url = side.env(None, home)
            first = side.run(["backup", "full", "app"], no_url)
            cmd, flow = [], []
            local = side.sandbox.root / LOCAL_DIR
            for _ in range(opts.backups):
                cmd.append(side.run(["backup", "full", "app"], no_url))
                url = (local / "server.url").read_text().strip() if (local / "server.url").exists() else None
                flow.append(last_flow_seconds(url, home / "prefect.db"))
            over = [c - f for c, f in zip(cmd, flow, strict=True)]
            rows.setdefault("backup full (no URL)", {})[side.name] = (
                f"{median(cmd):.2f} (flow {median(flow):.2f}, overhead {median(over):.2f}); first {first:.2f}")
            print(side.name, json.dumps({k: v.get(side.name) for k, v in rows.items()}), flush=True)
            stop_local_server(local)
    finally:
        stop_local_server(server_home)
        for side in sides:
            stop_local_server(side.sandbox.root / LOCAL_DIR)
            side.sandbox.stop()
        if not opts.keep:
            shutil.rmtree(base, ignore_errors=True)

    names = [s.name for s in sides]
    print(f"\nwhole-process seconds, median of {opts.runs} (read-only) / {opts.backups} (backup) runs")
    header = ["command", *names] + (["before/after"] if len(names) == 2 else [])
    table = [header]
    for command, by_side in rows.items():
        line = [f"drkit {command}", *(by_side.get(n, "") for n in names)]
        if len(names) == 2:
            b, a = (float(by_side[n].split()[0]) for n in names)
            line.append(f"{b / a:.1f}x")
        table.append(line)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
