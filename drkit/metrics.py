"""Prometheus metrics: drkit's state read afresh from the catalog and the DR replicas at each scrape.

:class:`DrkitCollector` is a ``prometheus_client`` custom collector on its own registry
(:func:`metrics_registry`): each scrape asks the catalog, per database, for what the metrics show (aggregates,
the records of the newest restorable chain, the newest audit events: :func:`drkit.status.catalog_status`, the
numbers ``drkit status`` shows; the same as reading every record, which ``catalog_families(reference=True)``
still does, and tests/unit/test_metrics_fast.py checks them equal), and probes every DR replica's lag through
the engine's DR operations at the same time, each bounded by :data:`PROBE_TIMEOUT`. A catalog that cannot be read gives
``drkit_exporter_collect_success 0`` (and no catalog metric), never a failed scrape; a replica that does not
answer gives ``drkit_replica_up 0`` and no lag.

The metric names are listed in README "Monitoring"; approvals waiting come from a callable the caller gives
(``drkit serve`` asks Prefect; ``drkit`` itself cannot).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from drkit.catalog.records import AuditRecord, BackupRecord, CopyRecord
from drkit.engines import chain_for, dr_operations
from drkit.engines.base import ChainModel
from drkit.errors import RestorePlanError, first_line
from drkit.plans import RestorePlan
from drkit.restore import measured_rate_mib_s
from drkit.runtime import Runtime
from drkit.status import DatabaseStatus, catalog_status, database_status

PROBE_TIMEOUT = 2.0
"""Seconds one replica's lag probe may take (libpq's floor to connect to a silent host is 2 s)."""

Approvals = Callable[[], Sequence[datetime]]
"""Start times of the runs paused for an approval now."""

R = TypeVar("R", BackupRecord, AuditRecord)

KINDS = ("full", "diff", "log")
VERIFY, CHECK, DRILL_OK, DRILL_FAILED = "backup.verify", "catalog.check", "drill.completed", "drill.failed"
REPLICA_DOWN_STATES = frozenset({"disconnected", "absent"})
"""Lag states in which the replica itself did not answer (the primary reports it gone)."""


log = logging.getLogger("drkit.metrics")


def _ts(t: datetime) -> float:
    return t.timestamp()


def _end(b: BackupRecord) -> datetime:
    return b.end_time or b.finished_at or b.started_at


def _newest(events: Sequence[AuditRecord]) -> AuditRecord | None:
    """The newest of ``events`` by time (ties: the larger id)."""
    return max(events, key=lambda e: (e.at, e.id)) if events else None


RATE_LOOKBACK = 20
"""Verifications read at first, newest first, for one that measured a throughput (all of them if none did)."""


def _measured_rate(cat: Any, db: str) -> float | None:
    """:func:`measured_rate_mib_s` over the database's verifications, reading the newest few first."""
    recent = cat.recent_audits(db, VERIFY, RATE_LOOKBACK)
    rate = measured_rate_mib_s(recent[::-1])
    if rate is None and len(recent) == RATE_LOOKBACK:
        rate = measured_rate_mib_s(cat.recent_audits(db, VERIFY, None)[::-1])
    return rate


def _by_database(records: Sequence[R]) -> dict[str | None, list[R]]:
    """``records`` grouped by their database, each group in the given order."""
    out: dict[str | None, list[R]] = {}
    for r in records:
        out.setdefault(r.database, []).append(r)
    return out


@dataclass(frozen=True)
class Snapshot:
    """One read of the catalog: everything the catalog metrics need, for every database."""

    backups: list[BackupRecord]
    copies: list[CopyRecord]
    verifications: list[AuditRecord]
    drills: list[AuditRecord]
    check: AuditRecord | None

    @classmethod
    def read(cls, rt: Runtime) -> Snapshot:
        cat = rt.catalog
        return cls(backups=cat.list_backups(), copies=cat.all_copies(),
                   verifications=cat.audit_events(action=VERIFY),
                   drills=cat.audit_events(action=DRILL_OK) + cat.audit_events(action=DRILL_FAILED),
                   check=cat.latest_audit(CHECK))


@dataclass(frozen=True)
class ReplicaProbe:
    up: bool
    lag_seconds: float | None


def probe_replica(rt: Runtime, db: str, timeout: float = PROBE_TIMEOUT) -> ReplicaProbe:
    """The DR replica's lag through the engine's DR operations; never raises (a failure is ``up`` False)."""
    try:
        lag = dr_operations(rt, db).lag(timeout=timeout)
    except Exception:  # a metric must not fail because one server is down or misconfigured
        return ReplicaProbe(False, None)
    if lag.state in REPLICA_DOWN_STATES:
        return ReplicaProbe(False, None)
    return ReplicaProbe(True, lag.seconds)


class _LatestPlannedOnce:
    """A database's chain model that plans the latest point (no target) once: a scrape's status and its RTO
    estimate ask for the same plan, the costliest step of a scrape after reading the catalog."""

    def __init__(self, chain: ChainModel) -> None:
        self._chain = chain
        self._latest: RestorePlan | RestorePlanError | None = None

    def plan_restore(self, database: str, backups: Sequence[BackupRecord], copies: Sequence[CopyRecord], *,
                     target: datetime | None, now: datetime, tier_order: Sequence[str]) -> RestorePlan:
        if target is not None:
            return self._chain.plan_restore(database, backups, copies, target=target, now=now,
                                            tier_order=tier_order)
        if self._latest is None:
            try:
                self._latest = self._chain.plan_restore(database, backups, copies, target=None, now=now,
                                                        tier_order=tier_order)
            except RestorePlanError as exc:
                self._latest = exc
        if isinstance(self._latest, RestorePlanError):
            raise self._latest
        return self._latest

    def __getattr__(self, name: str) -> Any:  # the chain model's other methods, as they are
        return getattr(self._chain, name)


class _Families:
    """The gauge families of one scrape, made on first use, yielded in the order they were first set."""

    def __init__(self) -> None:
        self._families: dict[str, GaugeMetricFamily] = {}

    def set(self, name: str, doc: str, value: float, **labels: str) -> None:
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = GaugeMetricFamily(name, doc, labels=list(labels))
        family.add_metric(list(labels.values()), float(value))

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._families.values())


class DrkitCollector(Collector):
    """drkit's metrics for the policy of ``rt``; ``approvals`` (None: those two metrics are left out)."""

    def __init__(self, rt: Runtime, *, approvals: Approvals | None = None,
                 now: Callable[[], datetime] | None = None, probe_timeout: float = PROBE_TIMEOUT) -> None:
        self.rt = rt
        self.approvals = approvals
        self._now = now or (lambda: datetime.now(UTC))
        self._probe_timeout = probe_timeout
        self._lock = threading.Lock()
        # One thread reads the catalog, whichever thread scrapes: the SQLite reader keeps one connection per
        # thread, and a threaded HTTP server would otherwise leave one behind per request.
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drkit-metrics")

    def describe(self) -> list[Metric]:
        return []  # registering must not scrape (a registry collects a collector without ``describe``)

    def close(self) -> None:
        self._reader.shutdown(wait=True)
        self.rt.close()

    def collect(self) -> Iterator[Metric]:
        with self._lock:  # scrapes at once wait for each other rather than probe every replica twice
            return iter(self._collect())

    def _collect(self) -> list[Metric]:
        now = self._now()
        out = _Families()
        dbs = list(self.rt.policy.databases)
        with_replica = [db for db in dbs if self.rt.policy.databases[db].replica is not None]
        pool = ThreadPoolExecutor(max_workers=len(with_replica) + 1, thread_name_prefix="drkit-probe")
        try:
            probes = {db: pool.submit(probe_replica, self.rt, db, self._probe_timeout) for db in with_replica}
            approvals = pool.submit(self.approvals) if self.approvals is not None else None
            read = True
            try:
                out = self._reader.submit(self.catalog_families, now).result()
            except Exception as exc:  # an unreadable catalog (or records the planner cannot read): a metric
                log.warning("metrics: cannot read the catalog: %s", first_line(exc))
                read = False
            self._policy_metrics(out)
            self._replica_metrics(out, probes)
            if approvals is not None:
                self._approval_metrics(out, approvals, now)
        finally:
            pool.shutdown(wait=False)  # an approvals source past its time is left to finish on its own
        out.set("drkit_exporter_collect_success", "1 = this scrape read the catalog, 0 = it could not",
                1 if read else 0)
        return list(out)

    # -- from the catalog ----------------------------------------------------------------------------------

    def catalog_families(self, now: datetime, *, reference: bool = False) -> _Families:
        """The catalog's metrics: asked of the catalog per database (aggregates, the newest chain's records,
        the newest audit events); ``reference``: derived from every record instead (the plain computation the
        fast one is tested equal to)."""
        out = _Families()
        if reference:
            self._catalog_metrics(out, Snapshot.read(self.rt), now)
        else:
            self._catalog_metrics_fast(out, now)
        return out

    def _catalog_metrics_fast(self, out: _Families, now: datetime) -> None:
        from drkit.tiers.naming import tier_location

        rt, cat = self.rt, self.rt.catalog
        tiers = rt.tier_order
        locations = {t: tier_location(rt.policy, t) for t in tiers}
        for db in rt.policy.databases:
            tallies = cat.backup_tallies(db)
            st, latest = catalog_status(cat, db, now=now, tier_order=tiers, chain=chain_for(rt, db),
                                        locations=locations, tallies=tallies)
            failed = {t.kind: t.newest_start for t in tallies if t.status == "failed" and t.newest_start}
            self._backup_metrics(out, db, st, failed, now)
            stored = cat.stored_bytes_by_tier(db)
            for tier in tiers:
                out.set("drkit_stored_bytes", "bytes of complete copies stored per tier", stored.get(tier, 0),
                        database=db, tier=tier)
            self._verification_metrics(out, db, cat.newest_audit(db, [VERIFY]), _measured_rate(cat, db),
                                       st, latest.plan)
            self._drill_metrics(out, db, cat.newest_audit(db, [DRILL_OK, DRILL_FAILED]),
                                cat.newest_audit(db, [DRILL_OK]))
        self._check_metrics(out, cat.latest_audit(CHECK))

    def _catalog_metrics(self, out: _Families, snap: Snapshot, now: datetime) -> None:
        rt = self.rt
        from drkit.tiers.naming import tier_location

        tiers = rt.tier_order
        locations = {t: tier_location(rt.policy, t) for t in tiers}
        # Grouped by database once: each database then reads only its own records (a fleet's scrape would
        # otherwise go over every record of every database, several times, for each database).
        backups = _by_database(snap.backups)
        database_of = {b.id: b.database for b in snap.backups}
        copies: dict[str, list[CopyRecord]] = {}
        for c in snap.copies:
            if (owner := database_of.get(c.backup_id)) is not None:
                copies.setdefault(owner, []).append(c)
        verifications, drills = _by_database(snap.verifications), _by_database(snap.drills)
        for db in rt.policy.databases:
            chain = _LatestPlannedOnce(chain_for(rt, db))
            mine, my_copies = backups.get(db, []), copies.get(db, [])
            st = database_status(db, mine, my_copies, now=now, tier_order=tiers, chain=chain, locations=locations)
            failed: dict[str, datetime] = {}
            for b in mine:
                if b.status == "failed" and (b.kind not in failed or b.started_at > failed[b.kind]):
                    failed[b.kind] = b.started_at
            self._backup_metrics(out, db, st, failed, now)
            stored = dict.fromkeys(tiers, 0)
            for c in my_copies:
                if c.status == "complete" and c.tier in stored:
                    stored[c.tier] += c.stored_bytes
            for tier in tiers:
                out.set("drkit_stored_bytes", "bytes of complete copies stored per tier", stored[tier],
                        database=db, tier=tier)
            events = verifications.get(db, [])
            try:
                plan: RestorePlan | None = chain.plan_restore(db, mine, my_copies, target=None, now=now,
                                                              tier_order=tiers)
            except RestorePlanError:
                plan = None
            self._verification_metrics(out, db, _newest(events), measured_rate_mib_s(events), st, plan)
            mine_drills = drills.get(db, [])
            self._drill_metrics(out, db, _newest(mine_drills), _newest([e for e in mine_drills
                                                                        if e.action == DRILL_OK]))
        self._check_metrics(out, snap.check)

    @staticmethod
    def _check_metrics(out: _Families, check: AuditRecord | None) -> None:
        if check is not None:
            out.set("drkit_catalog_check_last_timestamp_seconds", "time of the last catalog check", _ts(check.at))
            out.set("drkit_catalog_check_findings", "findings the last catalog check left",
                    int(check.detail.get("remaining") or 0))

    @staticmethod
    def _backup_metrics(out: _Families, db: str, st: DatabaseStatus, failed: Mapping[str, datetime],
                        now: datetime) -> None:
        """``failed``: per kind, the start of its newest failed backup."""
        for kind in KINDS:
            newest = st.newest[kind]
            if newest is not None:
                out.set("drkit_backup_last_success_timestamp_seconds",
                        "end time of the newest restorable backup of that kind", _ts(_end(newest)),
                        database=db, kind=kind)
                out.set("drkit_backup_age_seconds", "now - the end of the newest restorable backup of that kind",
                        (now - _end(newest)).total_seconds(), database=db, kind=kind)
            if kind in failed:
                out.set("drkit_backup_last_failure_timestamp_seconds",
                        "start time of the newest failed backup of that kind", _ts(failed[kind]),
                        database=db, kind=kind)
        if st.restorable_until is not None and st.rpo_seconds is not None:
            out.set("drkit_restorable_until_timestamp_seconds", "newest point a restore can reach",
                    _ts(st.restorable_until), database=db)
            out.set("drkit_rpo_seconds", "now - restorable until: the data-loss window now", st.rpo_seconds,
                    database=db)
        out.set("drkit_chain_copies", "copies of the newest restorable chain (the fewest any piece has)",
                st.copies, database=db)
        out.set("drkit_chain_stores", "distinct stores holding every piece of the newest restorable chain",
                st.stores, database=db)

    @staticmethod
    def _verification_metrics(out: _Families, db: str, last: AuditRecord | None, rate: float | None,
                              st: DatabaseStatus, plan: RestorePlan | None) -> None:
        """``last``: the newest verification; ``rate``: the throughput the newest that measured one measured."""
        if last is not None:
            out.set("drkit_verification_last_timestamp_seconds", "time of the newest verification",
                    _ts(last.at), database=db)
            out.set("drkit_verification_last_success", "1 = the newest verification passed, 0 = it failed",
                    1 if last.detail.get("passed") else 0, database=db)
        if rate is None:
            return
        out.set("drkit_restore_throughput_bytes_per_second",
                "stored bytes per second read by the last verification's restore", rate * 2**20, database=db)
        if st.restorable_until is None or plan is None:
            return
        out.set("drkit_estimated_rto_seconds", "estimated time to read the newest chain at the measured throughput",
                plan.total_bytes / 2**20 / rate, database=db)

    @staticmethod
    def _drill_metrics(out: _Families, db: str, last: AuditRecord | None, completed: AuditRecord | None) -> None:
        """``last``: the newest drill event; ``completed``: the newest that completed."""
        if last is None:
            return
        ok = last.action == DRILL_OK
        out.set("drkit_drill_last_timestamp_seconds", "time of the last DR drill", _ts(last.at), database=db)
        out.set("drkit_drill_last_success", "1 = the last drill completed and met both targets",
                1 if ok and last.detail.get("met") else 0, database=db)
        if completed is not None:
            for what in ("rto", "rpo"):
                value = completed.detail.get(f"{what}_seconds")
                if isinstance(value, (int, float)):
                    out.set(f"drkit_drill_last_{what}_seconds", f"measured {what.upper()} of the last completed drill",
                            value, database=db)

    # -- from the policy, the replicas and the approvals ---------------------------------------------------

    def _policy_metrics(self, out: _Families) -> None:
        for db, cfg in self.rt.policy.databases.items():
            out.set("drkit_rpo_target_seconds", "policy rpo_target", cfg.rpo_target.total_seconds(), database=db)
            out.set("drkit_rto_target_seconds", "policy rto_target", cfg.rto_target.total_seconds(), database=db)
            if cfg.replica is not None:
                out.set("drkit_replica_max_lag_seconds", "policy replica.max_lag_seconds",
                        cfg.replica.max_lag_seconds, database=db)

    @staticmethod
    def _replica_metrics(out: _Families, probes: Mapping[str, Future[ReplicaProbe]]) -> None:
        for db, future in probes.items():
            probe = future.result()
            out.set("drkit_replica_up", "1 = the DR replica answered the probe, 0 = not", 1 if probe.up else 0,
                    database=db)
            if probe.lag_seconds is not None:
                out.set("drkit_replica_lag_seconds", "replay lag of the DR replica", probe.lag_seconds, database=db)

    def _approval_metrics(self, out: _Families, approvals: Future[Sequence[datetime]], now: datetime) -> None:
        try:
            since = list(approvals.result(timeout=self._probe_timeout))
        except Exception:  # Prefect not answering (in time): the approvals are unknown, the rest still scraped
            return
        out.set("drkit_approvals_waiting", "runs paused for an approval now", len(since))
        oldest = max(((now - t).total_seconds() for t in since), default=0.0)
        out.set("drkit_approval_oldest_wait_seconds", "how long the oldest paused run has waited (0 if none)",
                max(0.0, oldest))


def metrics_registry(rt: Runtime, *, approvals: Approvals | None = None,
                     **options: Any) -> tuple[CollectorRegistry, DrkitCollector]:
    """A registry of its own (no process or GC metrics) holding drkit's collector for ``rt``'s policy."""
    registry = CollectorRegistry()
    collector = DrkitCollector(rt, approvals=approvals, **options)
    registry.register(collector)
    return registry, collector
