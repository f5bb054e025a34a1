"""The Prometheus exporter (drkit.metrics) on a real SQLite catalog: each metric README "Monitoring" lists, as a
scrape shows it (parsed back with prometheus_client's own parser).

Records are written through the catalog repository; the collector's clock is fixed (``NOW``) so ages are exact.
The replica here listens nowhere: its probe fails fast (a real lag is in tests/integration/test_metrics_endpoint.py).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from drkit.catalog import Catalog
from drkit.catalog.records import BackupRecord
from drkit.config import parse_policy
from drkit.engines.postgres.lsn import DEFAULT_SEGMENT_SIZE, segment_name
from drkit.metrics import Approvals, metrics_registry
from drkit.runtime import Runtime

SEG = DEFAULT_SEGMENT_SIZE
NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)
MIB = 2**20

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def policy_data(tmp: Path, **db_extra: Any) -> dict[str, Any]:
    port = _closed_port()
    return {
        "catalog": f"sqlite:///{tmp / 'catalog.db'}",
        "tiers": {"local": {"store": "filesystem", "path": str(tmp / "local")},
                  "offsite": {"store": "filesystem", "path": str(tmp / "offsite")}},
        "databases": {
            "app": {"engine": "postgres", "dsn": f"host=127.0.0.1 port={port} user=x dbname=app connect_timeout=1",
                    "data_dir": str(tmp / "pg"), "rpo_target": "15m", "rto_target": "2h",
                    "replica": {"dsn": f"host=127.0.0.1 port={port} user=x dbname=app connect_timeout=1",
                                "max_lag_seconds": 7}, **db_extra},
            "web": {"engine": "postgres", "dsn": "host=127.0.0.1 port=1 user=x dbname=web",
                    "data_dir": str(tmp / "pg2")},
        },
    }


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def catalog(tmp: Path) -> Iterator[Catalog]:
    cat = Catalog.open(f"sqlite:///{tmp / 'catalog.db'}")
    yield cat
    cat.close()


def rt_for(tmp: Path, data: dict[str, Any] | None = None) -> Runtime:
    return Runtime(parse_policy(data or policy_data(tmp), base_dir=tmp))


def backup(id: str, kind: str, first: int, last: int, end: datetime, *, status: str = "completed",
           base_id: str | None = None, db: str = "app", stored: int = 1000) -> BackupRecord:
    started = end - timedelta(minutes=2)
    return BackupRecord(
        id=id, database=db, kind=kind, status=status, base_id=base_id, timeline=1,
        start_lsn=first * SEG + (0 if kind == "log" else 0x28), end_lsn=(last + 1) * SEG,
        start_wal=segment_name(1, first), end_wal=segment_name(1, last), started_at=started,
        finished_at=end, start_time=started, end_time=end, raw_bytes=stored * 2, stored_bytes=stored,
        sha256="ab" * 32, format="t", key_id="k", error="boom" if status == "failed" else None, verified_at=None,
        meta={"segment_size": SEG})


def put(cat: Catalog, b: BackupRecord, tiers: Sequence[str] = ("local",)) -> BackupRecord:
    cat.import_backup(b, [(t, f"{t}/{b.id}", b.stored_bytes, "ab" * 32) for t in tiers])
    return b


def scrape(rt: Runtime, approvals: Approvals | None = None) -> Samples:
    registry, collector = metrics_registry(rt, approvals=approvals, now=lambda: NOW, probe_timeout=1.0)
    try:
        text = generate_latest(registry).decode()
    finally:
        collector.close()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


# -- backups, RPO --------------------------------------------------------------------------------------------


def test_backup_ages_last_success_and_failure_per_kind(tmp: Path, catalog: Catalog) -> None:
    full = put(catalog, backup("F1", "full", 2, 2, NOW - timedelta(hours=20)))
    put(catalog, backup("D1", "diff", 3, 3, NOW - timedelta(hours=3), base_id="F1"))
    put(catalog, backup("L1", "log", 2, 5, NOW - timedelta(minutes=40)))
    put(catalog, backup("F2", "full", 6, 6, NOW - timedelta(hours=1), status="failed"))
    rt = rt_for(tmp)
    s = scrape(rt)

    assert value(s, "drkit_exporter_collect_success") == 1
    assert value(s, "drkit_backup_last_success_timestamp_seconds", database="app", kind="full") == \
        full.end_time.timestamp()  # type: ignore[union-attr]
    assert value(s, "drkit_backup_age_seconds", database="app", kind="full") == 20 * 3600
    assert value(s, "drkit_backup_age_seconds", database="app", kind="diff") == 3 * 3600
    assert value(s, "drkit_backup_age_seconds", database="app", kind="log") == 40 * 60
    # the failed full is the newest failure, and not the newest success
    assert value(s, "drkit_backup_last_failure_timestamp_seconds", database="app", kind="full") == \
        (NOW - timedelta(hours=1, minutes=2)).timestamp()
    assert value(s, "drkit_backup_last_failure_timestamp_seconds", database="app", kind="log") is None
    # a database without backups has no age at all (absent, not 0)
    assert value(s, "drkit_backup_age_seconds", database="web", kind="full") is None


def test_restorable_until_and_rpo_follow_the_log_chain(tmp: Path, catalog: Catalog) -> None:
    put(catalog, backup("F1", "full", 2, 2, NOW - timedelta(hours=5)))
    put(catalog, backup("L1", "log", 2, 4, NOW - timedelta(hours=2)))
    put(catalog, backup("L2", "log", 6, 7, NOW - timedelta(minutes=10)))  # after a gap: not reachable
    s = scrape(rt_for(tmp))
    assert value(s, "drkit_restorable_until_timestamp_seconds", database="app") == \
        (NOW - timedelta(hours=2)).timestamp()
    assert value(s, "drkit_rpo_seconds", database="app") == 2 * 3600
    assert value(s, "drkit_rpo_seconds", database="web") is None


def test_targets_from_the_policy(tmp: Path, catalog: Catalog) -> None:
    s = scrape(rt_for(tmp))
    assert value(s, "drkit_rpo_target_seconds", database="app") == 15 * 60
    assert value(s, "drkit_rto_target_seconds", database="app") == 2 * 3600
    assert value(s, "drkit_rpo_target_seconds", database="web") == 30 * 60  # the defaults
    assert value(s, "drkit_rto_target_seconds", database="web") == 3600


# -- 3-2-1 and bytes per tier ----------------------------------------------------------------------------------


def test_chain_copies_stores_and_stored_bytes_per_tier(tmp: Path, catalog: Catalog) -> None:
    put(catalog, backup("F1", "full", 2, 2, NOW - timedelta(hours=5), stored=4000), ("local", "offsite"))
    put(catalog, backup("L1", "log", 2, 4, NOW - timedelta(hours=1), stored=300), ("local",))
    put(catalog, backup("W1", "full", 2, 2, NOW - timedelta(hours=5), db="web", stored=50), ("local", "offsite"))
    s = scrape(rt_for(tmp))
    # the newest chain is F1 + L1: L1 has one copy in one store, so the chain has 1 copy on 1 store
    assert value(s, "drkit_chain_copies", database="app") == 1
    assert value(s, "drkit_chain_stores", database="app") == 1
    assert value(s, "drkit_chain_copies", database="web") == 2
    assert value(s, "drkit_chain_stores", database="web") == 2
    assert value(s, "drkit_stored_bytes", database="app", tier="local") == 4300
    assert value(s, "drkit_stored_bytes", database="app", tier="offsite") == 4000
    assert value(s, "drkit_stored_bytes", database="web", tier="local") == 50


def test_a_copy_found_missing_no_longer_counts(tmp: Path, catalog: Catalog) -> None:
    put(catalog, backup("W1", "full", 2, 2, NOW - timedelta(hours=5), db="web", stored=50), ("local", "offsite"))
    catalog.set_copy_status("W1", "offsite", "missing")
    s = scrape(rt_for(tmp))
    assert value(s, "drkit_chain_copies", database="web") == 1
    assert value(s, "drkit_stored_bytes", database="web", tier="offsite") == 0


# -- verification, throughput and the RTO estimate -------------------------------------------------------------


def test_verification_result_throughput_and_estimated_rto(tmp: Path, catalog: Catalog) -> None:
    put(catalog, backup("F1", "full", 2, 2, NOW - timedelta(hours=5), stored=300 * MIB))
    put(catalog, backup("L1", "log", 2, 4, NOW - timedelta(hours=1), stored=100 * MIB))
    catalog.audit(actor="t", action="backup.verify", database="app", subject="F1",
                  detail={"passed": True, "stored_throughput_mib_s": 50.0})
    last = catalog.audit(actor="t", action="backup.verify", database="app", subject="F1",
                         detail={"passed": False, "stored_throughput_mib_s": 0, "error": "amcheck failed"})
    s = scrape(rt_for(tmp))
    assert value(s, "drkit_verification_last_timestamp_seconds", database="app") == last.at.timestamp()
    assert value(s, "drkit_verification_last_success", database="app") == 0
    # the failed one measured nothing: the throughput is the last one measured
    assert value(s, "drkit_restore_throughput_bytes_per_second", database="app") == 50 * MIB
    assert value(s, "drkit_estimated_rto_seconds", database="app") == pytest.approx(400 / 50)
    assert value(s, "drkit_verification_last_success", database="web") is None


def test_a_passed_verification(tmp: Path, catalog: Catalog) -> None:
    catalog.audit(actor="t", action="backup.verify", database="web", subject="W1", detail={"passed": True})
    s = scrape(rt_for(tmp))
    assert value(s, "drkit_verification_last_success", database="web") == 1
    assert value(s, "drkit_restore_throughput_bytes_per_second", database="web") is None  # none measured


# -- drills, catalog check ---------------------------------------------------------------------------------------


def _drill(met: bool, rto: float, rpo: float) -> dict[str, Any]:
    return {"rto_seconds": rto, "rpo_seconds": rpo, "rto_target_seconds": 7200.0, "rpo_target_seconds": 900.0,
            "met": met, "backup_id": "F1", "reached": NOW.isoformat()}


def test_drill_last_result_and_measured_rto_rpo(tmp: Path, catalog: Catalog) -> None:
    catalog.audit(actor="t", action="drill.completed", database="app", detail=_drill(True, 95.5, 30.0))
    s = scrape(rt_for(tmp))
    assert value(s, "drkit_drill_last_success", database="app") == 1
    assert value(s, "drkit_drill_last_rto_seconds", database="app") == 95.5
    assert value(s, "drkit_drill_last_rpo_seconds", database="app") == 30.0

    missed = catalog.audit(actor="t", action="drill.completed", database="app", detail=_drill(False, 9000, 30))
    s = scrape(rt_for(tmp))
    assert value(s, "drkit_drill_last_timestamp_seconds", database="app") == missed.at.timestamp()
    assert value(s, "drkit_drill_last_success", database="app") == 0
    assert value(s, "drkit_drill_last_rto_seconds", database="app") == 9000

    failed = catalog.audit(actor="t", action="drill.failed", database="app", detail={"error": "no backup"})
    s = scrape(rt_for(tmp))
    assert value(s, "drkit_drill_last_timestamp_seconds", database="app") == failed.at.timestamp()
    assert value(s, "drkit_drill_last_success", database="app") == 0
    assert value(s, "drkit_drill_last_rto_seconds", database="app") == 9000  # of the last completed one
    assert value(s, "drkit_drill_last_success", database="web") is None


def test_catalog_check_time_and_findings_left(tmp: Path, catalog: Catalog) -> None:
    s = scrape(rt_for(tmp))
    assert value(s, "drkit_catalog_check_last_timestamp_seconds") is None  # never checked
    check = catalog.audit(actor="t", action="catalog.check", subject="quick",
                          detail={"found": 3, "repaired": 1, "remaining": 2, "by_database": {"app": 2}})
    s = scrape(rt_for(tmp))
    assert value(s, "drkit_catalog_check_last_timestamp_seconds") == check.at.timestamp()
    assert value(s, "drkit_catalog_check_findings") == 2


# -- replicas, approvals -------------------------------------------------------------------------------------------


def test_a_replica_that_does_not_answer_is_down_with_no_lag(tmp: Path, catalog: Catalog) -> None:
    s = scrape(rt_for(tmp))
    assert value(s, "drkit_replica_up", database="app") == 0
    assert value(s, "drkit_replica_lag_seconds", database="app") is None
    assert value(s, "drkit_replica_max_lag_seconds", database="app") == 7
    assert value(s, "drkit_replica_up", database="web") is None  # no replica configured
    assert value(s, "drkit_exporter_collect_success") == 1


def test_approvals_waiting_and_the_oldest_wait(tmp: Path, catalog: Catalog) -> None:
    s = scrape(rt_for(tmp), approvals=lambda: [NOW - timedelta(minutes=20), NOW - timedelta(minutes=3)])
    assert value(s, "drkit_approvals_waiting") == 2
    assert value(s, "drkit_approval_oldest_wait_seconds") == 20 * 60
    s = scrape(rt_for(tmp), approvals=list)
    assert value(s, "drkit_approvals_waiting") == 0
    assert value(s, "drkit_approval_oldest_wait_seconds") == 0


def test_approvals_unknown_leave_them_out_not_the_scrape(tmp: Path, catalog: Catalog) -> None:
    def broken() -> list[datetime]:
        raise ConnectionError("Prefect API down")

    s = scrape(rt_for(tmp), approvals=broken)
    assert "drkit_approvals_waiting" not in names(s)
    assert value(s, "drkit_exporter_collect_success") == 1
    assert "drkit_approvals_waiting" not in names(scrape(rt_for(tmp)))  # without a source (drkit metrics)


# -- a catalog that cannot be read ---------------------------------------------------------------------------------


def test_an_unreadable_catalog_is_collect_success_0_not_a_failed_scrape(tmp: Path) -> None:
    (tmp / "catalog.db").write_bytes(b"this is not a SQLite database, just some bytes " * 100)
    s = scrape(rt_for(tmp))
    assert value(s, "drkit_exporter_collect_success") == 0
    assert "drkit_backup_age_seconds" not in names(s) and "drkit_chain_copies" not in names(s)
    # what the policy and the replicas tell is still there
    assert value(s, "drkit_rpo_target_seconds", database="app") == 15 * 60
    assert value(s, "drkit_replica_up", database="app") == 0


def test_the_catalog_is_read_again_at_each_scrape(tmp: Path, catalog: Catalog) -> None:
    registry, collector = metrics_registry(rt_for(tmp), now=lambda: NOW, probe_timeout=1.0)
    try:
        assert b'drkit_backup_age_seconds{database="web"' not in generate_latest(registry)
        put(catalog, backup("W1", "full", 2, 2, NOW - timedelta(hours=5), db="web"))
        assert b'drkit_backup_age_seconds{database="web",kind="full"} 18000.0' in generate_latest(registry)
    finally:
        collector.close()


def test_every_metric_of_the_contract_is_produced(tmp: Path, catalog: Catalog) -> None:
    """The names README "Monitoring" lists, all present on a catalog that has each kind of record."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("### Metrics"):]
    section = section[:section.index("\n## ")]
    listed = {line.split("`")[1] for line in section.splitlines() if line.startswith("| `drkit_")}
    put(catalog, backup("F1", "full", 2, 2, NOW - timedelta(hours=5)), ("local", "offsite"))
    put(catalog, backup("D1", "diff", 3, 3, NOW - timedelta(hours=3), base_id="F1"))
    put(catalog, backup("L1", "log", 2, 4, NOW - timedelta(hours=1)))
    put(catalog, backup("F2", "full", 6, 6, NOW - timedelta(minutes=30), status="failed"))
    catalog.audit(actor="t", action="backup.verify", database="app", detail={"passed": True,
                                                                              "stored_throughput_mib_s": 10})
    catalog.audit(actor="t", action="drill.completed", database="app", detail=_drill(True, 1, 1))
    catalog.audit(actor="t", action="catalog.check", detail={"remaining": 0})
    s = scrape(rt_for(tmp), approvals=list)
    produced = names(s)
    assert len(listed) == 26
    # the replica's lag is the one a replica that answers gives (integration test)
    assert listed - produced == {"drkit_replica_lag_seconds"}


# -- the policy's metrics block -----------------------------------------------------------------------------------


def test_the_listener_defaults_to_localhost_9187_and_a_bad_address_names_the_key(tmp: Path) -> None:
    from drkit.errors import ConfigError

    assert parse_policy({}, base_dir=tmp).metrics.listen == "127.0.0.1:9187"
    assert parse_policy({"metrics": {"listen": None}}, base_dir=tmp).metrics.listen is None
    assert parse_policy({}, base_dir=tmp).metrics.alert_token_env == "DRKIT_ALERT_TOKEN"
    for bad in ("9187", "localhost:", "127.0.0.1:0", "127.0.0.1:70000"):
        with pytest.raises(ConfigError, match=r"metrics\.listen: expected host:port"):
            parse_policy({"metrics": {"listen": bad}}, base_dir=tmp)
