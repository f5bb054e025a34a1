"""`make demo`: the whole story once, on a local sandbox, visible in the Prefect UI.

Creates a PostgreSQL primary from the system binaries under var/demo, loads
sample data, starts (or reuses) a local Prefect server, then runs: full →
writes → diff → writes with timed markers → log → point-in-time restore to a
recorded marker time, checked against the data. Ends with a summary table and
the Prefect UI's URL. The Prefect server keeps running so the runs and
artifacts can be inspected; `make stop` stops it.

It lives in ``cli/`` (not ``flows/``) because it drives the flows as an operator would, answers their
approvals, and shares the local-server code with the ``drkit`` command (:mod:`cli.prefect_server`).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.table import Table

from cli.common import use_prefect
from cli.prefect_server import ensure_local_server
from drkit.engines.postgres.pgctl import LocalCluster
from drkit.sandbox import KEY_ENV, create_sandbox

console = Console(width=150)
PREFECT_PORT = int(os.environ.get("DRKIT_DEMO_PREFECT_PORT", "4200"))


def ensure_prefect_server(workdir: Path) -> str:
    """The demo's Prefect server on 127.0.0.1:PREFECT_PORT (reused if one answers), left running for the UI;
    its data, pid and log in ``workdir/prefect`` (``make stop`` stops it)."""
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        console.print(f"using the Prefect server at PREFECT_API_URL={configured}")
        return configured
    server = ensure_local_server(workdir / "prefect", port=PREFECT_PORT, stop_hint="make stop")
    how = f"started (pid {server.pid}, data in {server.home})" if server.started else "already running, reused"
    console.print(f"Prefect server at {server.url.removesuffix('/api')}: {how}", highlight=False)
    return server.url


def _reset_world(world: Path) -> None:
    """Stop what an earlier demo left running (primary, replica, restored clusters), then start afresh."""
    from drkit.config import default_bin_dir

    for data_dir in [world / "pg" / "primary", world / "pg" / "dr", *world.glob("restored*")]:
        if (data_dir / "postmaster.pid").exists():
            LocalCluster(data_dir, 0, default_bin_dir()).stop("immediate")
    shutil.rmtree(world, ignore_errors=True)


def run_demo(workdir: Path) -> None:
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    world = workdir / "world"
    _reset_world(world)
    console.rule("[bold]drkit demo")
    console.print("starting (or reusing) a local Prefect server …")  # the first start takes ~10 s
    api = ensure_prefect_server(workdir)
    os.environ["PREFECT_API_URL"] = api  # also for the runbooks' threads (settings contexts are per thread)
    use_prefect()
    from prefect.settings import PREFECT_API_URL, temporary_settings
    with temporary_settings(updates={PREFECT_API_URL: api}):
        _story(world, api)


def _story(world: Path, api: str) -> None:
    from flows.backup import differential_backup, full_backup, log_backup_flow
    from flows.restore import restore_point_in_time
    from flows.verify import verify_latest_chain

    t0 = time.monotonic()
    sb = create_sandbox(world, db="shop")
    os.environ[KEY_ENV] = sb.key_b64
    (world / "backup-key.b64").write_text(sb.key_b64 + "\n")
    os.chmod(world / "backup-key.b64", 0o600)
    cfg = str(sb.policy_path)
    console.print(f"PostgreSQL primary on 127.0.0.1:{sb.primary.port}, policy {cfg}")
    rows: list[dict[str, Any]] = []
    try:
        with psycopg.connect(sb.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE orders(id bigint PRIMARY KEY, customer int, amount numeric(10,2), "
                         "note text, at timestamptz DEFAULT now())")
            conn.execute("INSERT INTO orders(id, customer, amount, note) SELECT g, g % 1000, (g % 997) / 3.0, "
                         "md5(g::text) FROM generate_series(1, 300000) g")
            conn.execute("CREATE INDEX ON orders(customer)")
            conn.execute("CREATE TABLE marker(id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
            conn.execute("VACUUM ANALYZE")

        from drkit.config import load_policy
        from drkit.runtime import Runtime
        rt = Runtime(load_policy(cfg))

        def step(label: str, fn: Callable[[], Any], show: Callable[[Any], str] = str) -> Any:
            """Run one step, timed from its start to its end (approval waits included), and say what it
            left behind in an operator's words."""
            s = time.monotonic()
            result = fn()
            seconds = time.monotonic() - s
            rows.append({"step": label, "result": result, "seconds": seconds})
            console.print(f"✔ {label}: {show(result)} ({seconds:.1f} s)", highlight=False)
            return result

        step("full backup", lambda: full_backup(db="shop", config=cfg))
        with psycopg.connect(sb.dsn, autocommit=True) as conn:
            conn.execute("UPDATE orders SET amount = amount + 1 WHERE id <= 3000")  # 1% of the rows
            conn.execute("INSERT INTO orders(id, customer, amount, note) SELECT g, g % 1000, 9.99, 'after full' "
                         "FROM generate_series(300001, 310000) g")
        step("differential backup", lambda: differential_backup(db="shop", config=cfg))
        marks: dict[int, datetime] = {}
        with psycopg.connect(sb.dsn, autocommit=True) as conn:
            for i in range(1, 11):
                conn.execute("INSERT INTO marker(id) VALUES (%s)", [i])
                conn.execute("UPDATE orders SET note = %s WHERE id = %s", [f"marker {i}", i])
                marks[i] = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
                time.sleep(0.25)
        step("log backup", lambda: log_backup_flow(db="shop", config=cfg))
        chain = step("verification restore of the newest chain (amcheck, visibility map, SQL checks)",
                     lambda: "PASS" if verify_latest_chain(db="shop", config=cfg)["passed"] else "FAIL")
        k = 6
        target = marks[k]
        pitr = step(f"point-in-time restore to marker {k} ({target.isoformat(timespec='milliseconds')})",
                    lambda: restore_point_in_time(db="shop", into=str(world / "restored"), target=target,
                                                  keep_running=True, config=cfg),
                    show=lambda r: f"reaches {r['reaches']}; running from {r['data_dir']} ({r['connect']})")
        out = pitr["data_dir"]
        port = int((Path(out) / "postmaster.pid").read_text().splitlines()[3])
        restored = LocalCluster(Path(out), port, sb.primary.bin_dir, socket_dir=Path(out))  # no TCP: its socket
        with psycopg.connect(restored.dsn(), autocommit=True) as c:
            got = [r[0] for r in c.execute("SELECT id FROM marker ORDER BY id").fetchall()]
            notes = c.execute("SELECT count(*) FROM orders WHERE note LIKE 'marker %'").fetchone()
            total = c.execute("SELECT count(*) FROM orders").fetchone()
        restored.port = port
        restored.stop()
        ok = got == list(range(1, k + 1)) and notes == (k,) and total == (310000,) and chain == "PASS"
        backups = rt.catalog.list_backups("shop")
        rt.close()
        dr_result = _dr_story(sb, cfg, step)
    finally:
        sb.stop()

    table = Table(title="drkit demo summary")
    for col in ("backup", "kind", "status", "WAL", "raw", "stored", "pages changed", "seconds"):
        table.add_column(col, no_wrap=True)
    for b in sorted(backups, key=lambda b: b.started_at):
        secs = ((b.finished_at or b.started_at) - b.started_at).total_seconds()
        table.add_row(b.id, b.kind, b.status, f"{b.start_wal}..{(b.end_wal or '')[-8:]}",
                      f"{b.raw_bytes / 2**20:.1f} MiB",
                      f"{b.stored_bytes / 2**20:.2f} MiB",
                      f"{b.meta['pages_changed']} of {b.meta['pages_scanned']}" if b.kind == "diff" else "",
                      f"{secs:.1f}")
    console.print(table)
    verdict = "[green]PASS[/green]" if ok else "[red]FAIL[/red]"
    console.print(f"verification of the newest chain: {chain} (report: artifact 'shop-verify-report')")
    console.print(f"point-in-time restore to marker {k}: markers {got}, rows {total[0] if total else '?'}, "
                  f"validated with amcheck + visibility checks → {verdict}")
    fo, fb = dr_result
    console.print(f"failover: approved by {fo['approver']} after the pause; DR took writes "
                  f"{fo['time_to_recover_seconds_excluding_approval']} s after the approval "
                  f"(data-loss window at most {fo['data_loss_window_seconds']:.1f} s: "
                  "the age of the last replayed commit)")
    paused = fb["switch"].get("write_unavailable_seconds")
    console.print(f"failback: database switched back with writes paused {paused} s; "
                  "DR is a replica again (report and post-mortem: artifacts 'shop-failover-report', 'shop-postmortem')")
    console.print(f"whole story: {time.monotonic() - t0:.1f} s")
    console.print(f"Prefect UI: [bold]{api.removesuffix('/api')}[/bold] (runs, progress and report artifacts)")
    console.print("stop the Prefect server with: make stop")
    if not ok:
        raise SystemExit(1)


def _approve_when_paused(name: str, approver: str, app: Any, *, delay: float = 2.0) -> None:
    """What a DBA does in the UI (Resume → fill the form), done by the demo so it runs unattended."""
    from flows.approvals import answer, paused_runs

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        runs = [r for r in paused_runs() if r["name"] == name]
        if runs:
            console.print(f"[yellow]⏸  {name} is paused for approval[/yellow] — in production a DBA resumes it in "
                          f"the Prefect UI or with `drkit approve {runs[0]['id']} --as NAME --reason TEXT`; "
                          f"the demo approves as {approver} in {delay:.0f} s")
            time.sleep(delay)
            answer(str(runs[0]["id"]), approve=True, approver=approver, reason="drkit demo", code=app.next_code())
            return
        time.sleep(0.3)
    raise RuntimeError(f"{name} never paused for approval")


def _dr_story(sb: Any, cfg: str, step: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A streaming replica, an unplanned failover with its approval, then a planned failback."""
    import threading

    import yaml

    from drkit.engines.postgres import replica
    from drkit.engines.postgres.pgctl import free_port
    from drkit.totp import Authenticator
    from flows.dr import dr_failback, dr_failover
    from tasks.approvers import enroll

    standby = step("create a streaming DR replica", lambda: replica.create_standby(
        sb.dsn, data_dir=sb.root / "pg" / "dr", port=free_port(), slot="drkit_dr", bin_dir=sb.primary.bin_dir,
        os_user=sb.primary.os_user),
        show=lambda c: f"streaming from the primary (slot drkit_dr), on 127.0.0.1:{c.port}, data in {c.data_dir}")
    policy = yaml.safe_load(Path(cfg).read_text())
    policy["databases"]["shop"].update({
        "replica": {"dsn": standby.dsn(), "data_dir": str(standby.data_dir), "slot": "drkit_dr"},
        "traffic": {"router": "endpoint"}, "health": {"interval": "1s", "retries": 2, "timeout": "1s"}})
    Path(cfg).write_text(yaml.safe_dump(policy, sort_keys=False))
    approver = policy["approvals"]["approvers"][0]
    app = Authenticator(enroll(approver, replace=True))  # what `drkit approvers enroll` gives their phone
    with psycopg.connect(sb.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO marker(id) VALUES (100)")
    replica.wait_caught_up(sb.dsn, "drkit_dr", timeout=60)
    console.print("[red]✘ the primary region fails (PostgreSQL killed)[/red]")
    sb.primary.stop("immediate")

    def runbook(name: str, run: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        """The runbook in a thread (it pauses for approval), answered as the DBA would, to its end."""
        def go() -> dict[str, Any]:
            out: dict[str, Any] = {}
            t = threading.Thread(target=lambda: out.update(result=run()))
            t.start()
            _approve_when_paused(name, approver, app)
            t.join()
            if "result" not in out:
                raise RuntimeError(f"{name} did not finish; see its run in the Prefect UI")
            return dict(out["result"])
        return go

    fo = step("failover to DR (approved)", runbook("failover-shop", lambda: dr_failover(db="shop", config=cfg)),
              show=lambda r: f"the DR replica was promoted and takes writes at {r.get('endpoint')}, "
                             f"{r.get('time_to_recover_seconds_excluding_approval')} s after the approval")
    with psycopg.connect(standby.dsn(), autocommit=True) as conn:
        conn.execute("INSERT INTO marker(id) VALUES (101)")  # written on DR while the primary is away
    fb = step("failback to the primary region", runbook("failback-shop", lambda: dr_failback(db="shop", config=cfg)),
              show=lambda r: (f"the primary at 127.0.0.1:{sb.primary.port} takes writes again, DR at "
                              f"127.0.0.1:{standby.port} is its replica again") if r.get("failed_back")
              else f"stayed on DR ({r.get('resync')})")
    with psycopg.connect(sb.dsn, autocommit=True) as conn:
        back = conn.execute("SELECT count(*) FROM marker WHERE id IN (100, 101)").fetchone()
    console.print(f"rows written on DR while the primary was away are on the primary: {back == (2,)}")
    standby.stop()
    return fo, fb
