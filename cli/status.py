"""Status: backups' ages, RPO, the active endpoint, each side's role, replica lag and the last catalog check."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.common import (
    app,
    console,
    guard,
    print_json,
    runtime,
)
from drkit.engines import chain_for

if TYPE_CHECKING:
    pass

# -- status ---------------------------------------------------------------------------------------------


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Per database: newest backups and their age, the data-loss window now, the active endpoint and each side's
    role (measured), replica lag, last catalog check."""
    from drkit.status import catalog_status, check_status

    def run() -> None:
        from rich.table import Table
        rt = runtime()
        now = datetime.now(UTC)
        from drkit.tiers.naming import tier_location
        locations = {t: tier_location(rt.policy, t) for t in rt.tier_order}
        rows = [catalog_status(rt.catalog, db, now=now, tier_order=rt.tier_order, chain=chain_for(rt, db),
                               locations=locations)[0]
                for db in rt.policy.databases]
        from drkit.dr import dr_status
        drs = {db: dr_status(rt, db) for db in rt.policy.databases}
        checked = rt.catalog.latest_audit("catalog.check")
        if as_json:
            print_json([{**r.as_json(now), **drs[r.database].as_json(),
                          "catalog_check": check_status(checked, r.database).as_json()} for r in rows])
            return
        table = Table(title="status")
        for col in ("database", "newest full", "newest diff", "newest log", "restorable until", "RPO now",
                    "3-2-1", "active endpoint", "sides", "replica lag", "catalog check"):
            table.add_column(col)
        for r in rows:
            def age(kind: str, r: Any = r) -> str:
                b = r.newest[kind]
                if b is None:
                    return "—"
                end = b.end_time or b.started_at
                return f"{human_age((now - end).total_seconds())} ago"
            table.add_row(r.database, age("full"), age("diff"), age("log"),
                          r.restorable_until.isoformat(timespec="seconds") if r.restorable_until else "—",
                          human_age(r.rpo_seconds) if r.rpo_seconds is not None else "no restorable backup",
                          r.rule_321, _endpoint_text(drs[r.database].endpoint),
                          _sides_text(drs[r.database].sides), _lag_text(drs[r.database].replica_lag),
                          check_status(checked, r.database).text(now, human_age))
        console.print(table)
    guard(run)


def _endpoint_text(record: dict[str, Any] | None) -> str:
    if record is None:
        return "not recorded (the policy's primary)"
    return f"{record['endpoint']} ({record['side'] or record['active']})"


def _sides_text(sides: dict[str, dict[str, Any]] | None) -> str:
    if sides is None:
        return "—"
    return ", ".join(f"{name} {s['role']}" for name, s in sides.items())


def _lag_text(lag: dict[str, Any] | None) -> str:
    if lag is None:
        return "—"
    if lag.get("state") == "unknown":
        return f"unknown ({lag.get('error')})"
    flag = " TOO FAR" if lag.get("too_far") else ""
    return f"{lag.get('seconds')} s, {lag.get('bytes')} B ({lag.get('state')}){flag}"


def human_age(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d"


