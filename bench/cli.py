"""How long whole `drkit` commands take, before and after the fast-CLI work (see bench/README.md).

    git worktree add /tmp/drkit-before 8b9ec26        # the code before the last fast-CLI pass
    .venv/bin/python -m bench.cli --before /tmp/drkit-before
    git worktree remove /tmp/drkit-before

Each side gets its own sandbox world (a PostgreSQL cluster with about 16 MB of data, a policy, a SQLite
catalog). Every command runs as a fresh process (`python -m cli` from the side's tree, first on PYTHONPATH;
`python -m drkit.cli` for a tree older than the `cli` package), several times, the two sides taking turns;
the table shows medians: for read-only commands the wall seconds and, in brackets, the CPU seconds (user +
system), which a busy machine inflates less. For `backup full` it also shows the flow's own duration as the Prefect API
records it (the top-level flow run's start to end) and the command's overhead over it:

* "server": PREFECT_API_URL points at a running Prefect server;
* "no URL": PREFECT_API_URL is not set: the first command starts drkit's local server (its time is shown
  apart) and later commands reuse it.

The "after" side runs each command in its own process (DRKIT_WARM=0); the "warm" side runs the same commands
on the same world through a warm process (cli/warm.py, what `drkit server start` starts), whose command process's
CPU seconds (from its log) are added to the client's. Both run a copy of the tree made at the start, so edits
to the tree while the bench runs cannot make the warm process stale; every warm run is checked to have gone
through it.

The last columns are before/after and before/warm: the command's seconds for read-only commands, the overhead
for backups. Without --before, "before" is RECORDED_BEFORE: 8b9ec26 measured by this script at a quiet moment.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg

from cli.prefect_server import LOCAL_DIR, ensure_local_server, stop_local_server
from cli.warm import LOG_NAME, PACKAGES, WARM_DIR, start_warm, stop_warm
from drkit.sandbox import KEY_ENV, Sandbox, create_sandbox

ROOT = Path(__file__).resolve().parent.parent
READ_ONLY = [["--help"], ["status"], ["backups", "app"], ["restore-plan", "app"], ["approvals"]]
SERVER, NO_URL = "backup full (server)", "backup full (no URL)"
RECORDED_BEFORE = {  # 8b9ec26, whole-process seconds (median), quiet machine; backups: the overhead
    "--help": 0.37, "status": 0.56, "backups app": 0.47, "restore-plan app": 0.74, "approvals": 0.47,
    SERVER: 2.25, NO_URL: 2.36,
}


@dataclass
class Side:
    name: str
    sandbox: Sandbox
    module: str  # "cli" or "drkit.cli"
    pythonpath: str | None
    warm: bool = False  # through the warm process (else DRKIT_WARM=0 for a tree that has one)

    @property
    def warm_log(self) -> Path:
        return self.sandbox.root / LOCAL_DIR / WARM_DIR / LOG_NAME

    def start_warm(self, env: dict[str, str]) -> None:
        """A warm process on this side's world, started with ``env`` (as `drkit server start` would be)."""
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)
        try:
            pid = start_warm(self.sandbox.root / LOCAL_DIR)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        deadline = time.monotonic() + 300
        while not re.search(rf"^warm: ready in .* s, pid {pid},", self._log_since(0), re.MULTILINE):
            if time.monotonic() > deadline:
                raise SystemExit(f"the warm process did not start: {self._log_since(0)}")
            time.sleep(0.2)

    def _log_since(self, offset: int) -> str:
        try:
            return self.warm_log.read_text()[offset:]
        except FileNotFoundError:
            return ""

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
        if not self.warm:
            env["DRKIT_WARM"] = "0"
        return env

    def run(self, args: list[str], env: dict[str, str]) -> float:
        return self.timed(args, env)[0]

    def timed(self, args: list[str], env: dict[str, str]) -> tuple[float, float]:
        """(wall seconds, CPU seconds of the process and its children, user + system)."""
        offset = len(self._log_since(0))
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", self.module, *args], cwd=self.sandbox.root, env=env,
                              capture_output=True, text=True, timeout=600, check=False)
        seconds = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        if proc.returncode not in (0, 1) or (args[0] == "backup" and proc.returncode):
            raise SystemExit(f"{self.name}: drkit {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-800:]}")
        if self.warm and args[0] != "--help":  # the command's process is the warm process's child, not ours
            ran = re.findall(r" drkit \S+: exit \d+ after [\d.]+ s, cpu ([\d.]+) s", self._log_since(offset))
            if len(ran) != 1:
                raise SystemExit(f"{self.name}: drkit {' '.join(args)} did not go through the warm process")
            cpu += float(ran[0])
        return seconds, cpu


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
    code = base / "code"  # this tree as it is now
    for package in PACKAGES:
        shutil.copytree(ROOT / package, code / package, ignore=shutil.ignore_patterns("__pycache__"))
    after = Side("after", make_world(base / "after"), "cli", str(code))
    sides = [after, Side("warm", after.sandbox, "cli", str(code), warm=True)]
    if opts.before:
        module = "cli" if (opts.before / "cli" / "__main__.py").exists() else "drkit.cli"
        sides.insert(0, Side("before", make_world(base / "before"), module, str(opts.before.resolve())))
    server_home = base / "prefect-server"
    server = ensure_local_server(server_home)
    seconds: dict[str, dict[str, float]] = {}  # command -> side -> median seconds (backups: the overhead)
    shown: dict[str, dict[str, str]] = {}  # command -> side -> what the table shows
    try:
        quiet = {side.name: side.env(None, base / f"{side.name}-prefect-home") for side in sides}
        sides[-1].start_warm(quiet["warm"])
        for side in sides[:-1]:  # (warm shares after's world)
            side.run(["backups", "app"], quiet[side.name])  # the first command creates (migrates) the catalog
            side.run(["backup", "full", "app"], side.env(server.url, base / "unused"))  # something to list
        for args in READ_ONLY:
            times: dict[str, list[tuple[float, float]]] = {side.name: [] for side in sides}
            for side in sides:
                side.run(args, quiet[side.name])  # warm-up
            for _ in range(opts.runs):  # the sides take turns, so a busy moment costs both
                for side in sides:
                    times[side.name].append(side.timed(args, quiet[side.name]))
            for name, ts in times.items():
                wall, cpu = median([t[0] for t in ts]), median([t[1] for t in ts])
                seconds.setdefault(" ".join(args), {})[name] = wall
                shown.setdefault(" ".join(args), {})[name] = f"{wall:.2f} (cpu {cpu:.2f})"

        def backups(case: str, envs: dict[str, dict[str, str]], url_of: Callable[[Side], str | None],
                    db_of: Callable[[Side], Path | None], first: dict[str, float]) -> None:
            cmd: dict[str, list[float]] = {side.name: [] for side in sides}
            flow: dict[str, list[float]] = {side.name: [] for side in sides}
            for _ in range(opts.backups):  # the sides take turns here too
                for side in sides:
                    cmd[side.name].append(side.run(["backup", "full", "app"], envs[side.name]))
                    flow[side.name].append(last_flow_seconds(url_of(side), db_of(side)))
            for side in sides:
                over = [c - f for c, f in zip(cmd[side.name], flow[side.name], strict=True)]
                seconds.setdefault(case, {})[side.name] = median(over)
                shown.setdefault(case, {})[side.name] = (
                    f"{median(cmd[side.name]):.2f} (flow {median(flow[side.name]):.2f}, overhead "
                    f"{median(over):.2f})" + (f"; first {first[side.name]:.2f}" if side.name in first else ""))

        backups(SERVER, {side.name: side.env(server.url, base / "unused") for side in sides},
                lambda side: server.url, lambda side: None, {})

        def local_url(side: Side) -> str | None:
            url_file = side.sandbox.root / LOCAL_DIR / "server.url"
            return url_file.read_text().strip() if url_file.exists() else None

        no_url = {side.name: side.env(None, base / f"{side.name}-no-url-home") for side in sides}
        first = {side.name: side.run(["backup", "full", "app"], no_url[side.name]) for side in sides
                 if not side.warm}  # (warm: the server after's first command started)
        backups(NO_URL, no_url, local_url, lambda side: base / f"{side.name}-no-url-home" / "prefect.db", first)
        for side in sides:
            print(side.name, json.dumps({k: v.get(side.name) for k, v in shown.items()}), flush=True)
    finally:
        stop_local_server(server_home)
        for side in sides[:-1]:
            stop_warm(side.sandbox.root / LOCAL_DIR)
            stop_local_server(side.sandbox.root / LOCAL_DIR)
            side.sandbox.stop()
        if not opts.keep:
            shutil.rmtree(base, ignore_errors=True)

    recorded = not opts.before
    if recorded:  # the figures measured before this work, on this machine
        for command, value in RECORDED_BEFORE.items():
            seconds.setdefault(command, {})["before"] = value
            shown.setdefault(command, {})["before"] = f"{value:.2f}" + (" (overhead)" if command.startswith("backup ")
                                                                          else "")
    print(f"\nwhole-process seconds, median of {opts.runs} (read-only) / {opts.backups} (backup) runs"
          + ("; before: RECORDED_BEFORE (8b9ec26)" if recorded else ""))
    header = ["command", "before", "after", "warm", "before/after", "before/warm", "after/warm"]
    table = [header]
    for command, by_side in shown.items():
        ratios = [f"{seconds[command][a] / seconds[command][b]:.1f}x" if seconds[command].get(b) else ""
                  for a, b in (("before", "after"), ("before", "warm"), ("after", "warm"))]
        table.append([f"drkit {command}", by_side.get("before", ""), by_side.get("after", ""),
                      by_side.get("warm", ""), *ratios])
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))

if __name__ == "__main__":
    main()
