"""The engine protocols: what drkit needs from a database server, whatever its kind.

Everything above ``drkit/engines/`` (tasks, flows, the CLI, retention, status, verification and restore
orchestration) talks to these protocols only and never asks which engine it has:

* :class:`ChainModel`: one engine's rules for joining backups into restore chains (pure: records in,
  plans out), and :class:`RestoreIndex`, the same rules indexed once for a retention sweep;
* :class:`Engine`: one database's operations (prerequisites, backups, verification, restore, DR), bound
  to a runtime; ``drkit.engines.open_engine`` is the one place that picks the implementation;
* :class:`ServerEngine`: what an engine's server-side part does for a backup stream (PostgreSQL's
  ``PostgresEngine`` writes its files and WAL into a ``ByteSink``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from drkit.catalog.records import BackupRecord, CopyRecord
    from drkit.plans import Need, RestorePlan, RestoreResult
    from drkit.verify import CheckResult, VerifyReport

Progress = Callable[[int, int], None]  # (bytes done, bytes expected)
BackupKind = Literal["full", "diff", "log"]


class ByteSink(Protocol):
    """Where an engine writes its backup stream (a file, or drkit.pipeline's EncryptingWriter)."""

    def write(self, data: bytes, /) -> int: ...


@dataclass(frozen=True)
class CheckItem:
    """One prerequisite: what it is now, what it must be, and how to fix it."""

    name: str
    ok: bool
    current: str
    expected: str
    fix: str = ""
    needs_restart: bool = False


@dataclass(frozen=True)
class SetupResult:
    applied: list[str]
    restart_needed: bool
    remaining: list[CheckItem]


@dataclass(frozen=True)
class BackupOutcome:
    """What an engine reports about a backup stream it has just written."""

    timeline: int
    start_lsn: int
    end_lsn: int
    start_wal: str | None
    end_wal: str | None
    start_time: datetime | None
    end_time: datetime
    manifest: Mapping[str, Any] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BaseInfo:
    """What a differential needs to know about its full."""

    backup_id: str
    start_lsn: int
    files: Mapping[str, int]  # relpath -> size in the full


class ServerEngine(Protocol):
    """The server-side part of an engine that writes a base backup stream itself."""

    name: str

    def check(self) -> list[CheckItem]: ...

    def setup(self) -> SetupResult: ...

    def full_backup(self, out: ByteSink, *, progress: Progress | None = None) -> BackupOutcome: ...

    def diff_backup(
        self, out: ByteSink, base: BaseInfo, *, progress: Progress | None = None
    ) -> BackupOutcome: ...


# -- restore chains --------------------------------------------------------------------------------------


class RestoreIndex(Protocol):
    """One database's usable backups, indexed once, answering what retention asks of restore chains.

    Built by :meth:`ChainModel.index` over the backups that have a copy retention counts. Its answers
    must equal what :meth:`ChainModel.plan_restore` plans for the same records (property-tested).
    """

    @property
    def newest_verified_full(self) -> BackupRecord | None:
        """The newest verified full with a copy in a policy tier, which retention never lets go of."""
        ...

    def needs(self, now: datetime, since: datetime) -> dict[str, Need]:
        """Every backup a restore to some target in ``[since, now]``, or to the latest point, reads."""
        ...

    def chain_of(self, b: BackupRecord, by_id: Mapping[str, BackupRecord]) -> list[BackupRecord]:
        """What restoring ``b``'s own point reads: a full alone; a diff and its full; a log and its chain."""
        ...


class ChainModel(Protocol):
    """One engine's rules for restore chains: what a backup depends on, which points a set of backups
    reaches, and the continuity between them. Pure: catalog records in, plans out."""

    def plan_restore(self, database: str, backups: Sequence[BackupRecord], copies: Sequence[CopyRecord], *,
                     target: datetime | None, now: datetime, tier_order: Sequence[str]) -> RestorePlan:
        """The chain restoring ``database`` to ``target`` (None: the latest point the backups reach)."""
        ...

    def plan_to_position(self, database: str, backups: Sequence[BackupRecord], copies: Sequence[CopyRecord],
                         *, position: int, tier_order: Sequence[str]) -> RestorePlan:
        """The chain restoring up to and including the log record at ``position`` (an LSN)."""
        ...

    def plan_for_backup(self, target: BackupRecord, backups: Sequence[BackupRecord], copies: Sequence[CopyRecord],
                        *, tier_order: Sequence[str]) -> RestorePlan:
        """The smallest restore that proves ``target``: a full alone; a diff on its full; a log with its chain."""
        ...

    def index(self, backups: Iterable[BackupRecord], has_copy: Callable[[str], object]) -> RestoreIndex:
        """The usable backups among ``backups`` (restorable, ``has_copy(id)`` true), indexed for retention."""
        ...

    def parse_position(self, text: str) -> int:
        """A log position as an operator types it (PostgreSQL ``0/3000028``; SQL Server a decimal LSN)."""
        ...

    def format_position(self, position: int) -> str:
        """``position`` as the engine prints it."""
        ...


# -- one database's operations ---------------------------------------------------------------------------

StepCallback = Callable[[str, float], None]
"""(what is happening, fraction done 0..1), for progress artifacts."""


@dataclass(frozen=True)
class EngineFeatures:
    """What an engine's restores can do, declared (never probed): the CLI and runbooks refuse up front."""

    standby_restore: bool
    """A restore comes up as a server of its own on this host (a port), which clients can be switched to
    (corruption recovery: :meth:`Engine.client_access`, :meth:`Engine.open_to_clients`)."""
    position_targets: bool
    """A restore can stop at a log position (``--lsn``), not only at a time."""
    new_chain_after_switch: bool = False
    """A switch of primary (promotion, corruption recovery) starts a new log chain (PostgreSQL: a new
    timeline), so the runbooks take a full backup of the new primary at once, after checking that it
    archives its log into drkit. False where the log chain carries on (a SQL Server availability group)."""


@dataclass(frozen=True)
class OpenedRestore:
    """What opening a restored standby to clients as the database's primary did (corruption recovery's switch).

    ``listen_addresses``: where the server now listens; ``tcp_clients``: whether and how TCP clients can log in;
    ``peer_only``: TCP logins are refused until an operator provides the access rules; ``configured``: the
    settings written so that it runs as the primary (``name = value``).
    """

    listen_addresses: str
    tcp_clients: str
    peer_only: bool
    configured: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"listen_addresses": self.listen_addresses, "tcp_clients": self.tcp_clients,
                "peer_only": self.peer_only, "configured": list(self.configured)}


class Engine(Protocol):
    """One database's operations, whatever its engine: what tasks, flows and the CLI call.

    ``drkit.engines.open_engine(rt, db)`` returns the implementation for the
    database's ``engine:`` in the policy. Each method refuses what it cannot do with a one-line
    ``DrkitError`` naming the fix; an operation the engine lacks altogether is refused when the policy
    is loaded (``drkit.config``), never half-way through a runbook.
    """

    @property
    def database(self) -> str:
        """The policy's name for the database."""
        ...

    @property
    def chain(self) -> ChainModel:
        """The engine's restore-chain rules."""
        ...

    @property
    def features(self) -> EngineFeatures:
        """What this engine's restores can do."""
        ...

    def check(self) -> list[CheckItem]:
        """Every prerequisite: what it is now, what it must be, and how to fix it. Changes nothing."""
        ...

    def setup(self) -> SetupResult:
        """Apply what can be applied to meet the prerequisites."""
        ...

    def probe_primary(self, *, timeout: float) -> ProbeResult:
        """One probe of the server that is the database's primary now (where backups go); never raises
        for a server that does not answer."""
        ...

    def require_ready(self) -> None:
        """Raise ``PrerequisiteError`` naming what is missing before a backup writes anything."""
        ...

    def take_backup(self, kind: BackupKind, *, progress: Progress | None = None) -> BackupRecord | None:
        """Take and catalog a backup of ``kind``; None when a log backup has nothing new to ship."""
        ...

    def plan_restore(self, target: datetime | None, *, position: str | None = None,
                     now: datetime | None = None) -> RestorePlan:
        """The plan to ``target`` (None: latest) or to the log ``position`` as an operator typed it;
        refused when the key cannot read a piece."""
        ...

    def restore(self, plan: RestorePlan, into: str, *, port: int | None = None, keep_running: bool = False,
                on_step: StepCallback | None = None) -> RestoreResult:
        """Run ``plan`` into ``into`` (PostgreSQL: a new directory; SQL Server: a new database name)."""
        ...

    def validate_restored(self, result: RestoreResult) -> list[CheckResult]:
        """The integrity checks and the policy's SQL checks against a restored database."""
        ...

    def release_restored(self, result: RestoreResult) -> None:
        """Stop what a restore left running (a database restored on a server stays where it is)."""
        ...

    def client_access(self, result: RestoreResult) -> str:
        """How clients will log in to a restored standby once it is opened to them, in words for the approval
        form (only where ``features.standby_restore``; elsewhere refused in one line)."""
        ...

    def open_to_clients(self, location: str, port: int) -> OpenedRestore:
        """Make the restored standby at ``location`` the database's primary: log archiving into drkit, listening
        on ``port`` with the backup's own settings; returns once it accepts connections (only where
        ``features.standby_restore``; elsewhere refused in one line)."""
        ...

    def scratch_location(self, purpose: str) -> str:
        """A new place for a throwaway restore (``purpose`` names it, e.g. ``drill``): PostgreSQL a fresh
        directory under the policy's ``scratch_dir``, SQL Server a new database name on its server."""
        ...

    def discard_restored(self, location: str, result: RestoreResult | None = None) -> None:
        """Remove a throwaway restore at ``location`` whatever state it was left in (``result``: what the
        restore returned, None when it failed): stop it, delete its data. Nothing there is fine."""
        ...

    def verify(self, backup_id: str | None, *, actor: str = "drkit-verify") -> VerifyReport:
        """Verification restore of one backup (default: the newest full), recorded verified or corrupt."""
        ...

    def verify_chain(self, *, actor: str = "drkit-verify") -> VerifyReport:
        """Verification restore of the newest chain, end to end."""
        ...

    def import_history(self) -> str:
        """Adopt the backups the server itself remembers (SQL Server's msdb) into the catalog; a summary
        line. An engine whose server keeps no backup history refuses."""
        ...


# -- DR operations ---------------------------------------------------------------------------------------

if TYPE_CHECKING:
    from drkit.health import ProbeResult

Side = Literal["primary", "dr"]
"""The two servers of a database in the DR runbooks: ``primary`` (the database's own DSN, in the primary
region) and ``dr`` (its ``replica:``). Which of them takes writes is a state the runbooks read, not a name."""


@dataclass(frozen=True)
class ReplicaLag:
    """How far the DR replica is behind the server it follows.

    ``state`` is the engine's word for the replica: PostgreSQL's WAL receiver status (``streaming``,
    ``catchup``), ``disconnected`` or ``absent``; SQL Server's synchronization state (``SYNCHRONIZED``,
    ``SYNCHRONIZING``, ``NOT SYNCHRONIZING``); ``primary`` on both once the replica takes writes itself.
    ``bytes``: log received (or sent) but not applied yet; ``seconds``: how far behind in time;
    ``last_applied_at``: commit time of the newest transaction the replica applied (the data-loss
    window of a failover starts there). None where the engine cannot tell. ``details``: the engine's
    evidence, one line per database (positions, states), for the approval form.
    """

    state: str
    bytes: int | None
    seconds: float | None
    last_applied_at: datetime | None
    measured_at: datetime | None
    max_lag_seconds: float
    details: tuple[str, ...] = ()

    @property
    def is_primary(self) -> bool:
        return self.state == "primary"

    @property
    def too_far(self) -> bool:
        """Past ``replica.max_lag_seconds``, or not replicating at all (absent, lag unknown)."""
        return self.state == "absent" or self.seconds is None or self.seconds > self.max_lag_seconds

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "bytes": self.bytes, "seconds": self.seconds,
                "last_applied_at": self.last_applied_at.isoformat() if self.last_applied_at else None,
                "measured_at": self.measured_at.isoformat() if self.measured_at else None,
                "max_lag_seconds": self.max_lag_seconds, "too_far": self.too_far, "details": list(self.details)}


@dataclass(frozen=True)
class ReplicaState:
    """The DR replica as a failover finds it: already the primary (an earlier run promoted it), and its lag."""

    already_primary: bool
    lag: ReplicaLag


FenceAction = Literal["stopped", "already down", "unreachable", "fenced read-only", "not a primary",
                      "demoted by the failover"]


@dataclass(frozen=True)
class Fencing:
    """What fencing the old primary did, or why nothing could be done (``unreachable``)."""

    action: FenceAction
    detail: str


@dataclass(frozen=True)
class Promotion:
    """What promoting a replica did. ``already_primary``: nothing was promoted (never twice).

    ``method`` names what ran; ``position`` where the new primary's history starts (PostgreSQL's timeline
    and LSN; SQL Server's end of log per database); ``forced``: data not yet replicated may be lost (SQL
    Server's ``FORCE_FAILOVER_ALLOW_DATA_LOSS``); ``data_loss_seconds``: the engine's own estimate of it,
    when it has one.
    """

    already_primary: bool
    method: str
    position: str
    seconds: float
    at: datetime
    forced: bool = False
    data_loss_seconds: float | None = None
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        if self.already_primary:
            return f"already the primary ({self.position}); nothing was promoted again"
        return f"{self.method}; {self.position}"

    def as_dict(self) -> dict[str, Any]:
        return {"already_primary": self.already_primary, "method": self.method, "position": self.position,
                "seconds": round(self.seconds, 3), "at": self.at.isoformat(), "forced": self.forced,
                "data_loss_seconds": self.data_loss_seconds, "notes": list(self.notes)}


ResyncOutcome = Literal["rewound", "no rewind required", "rebuilt", "resumed", "already streaming",
                        "already synchronizing"]


@dataclass(frozen=True)
class Resync:
    """How ``node`` became a replica of the other side again."""

    node: Side
    outcome: ResyncOutcome
    detail: str


@dataclass(frozen=True)
class CaughtUp:
    """``node`` has applied everything the other side had when the wait began."""

    node: Side
    position: str


@dataclass(frozen=True)
class Switchover:
    """The planned switch of writes from DR back to the primary: no acknowledged write lost."""

    promotion: Promotion
    stopped_at: str | None
    """Where DR's last record is (PostgreSQL: its shutdown checkpoint), when the engine stops DR to switch."""
    write_unavailable_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"promotion": self.promotion.as_dict(), "stopped_at": self.stopped_at,
                "write_unavailable_seconds": round(self.write_unavailable_seconds, 3)}


ReplicaOutcome = Literal["created", "started", "already streaming"]


@dataclass(frozen=True)
class ReplicaCreated:
    """What building the DR replica did (``drkit replica create``).

    ``outcome``: ``created`` (a base backup of the primary, then started), ``started`` (an existing, stopped replica of
    this primary was started), ``already streaming`` (nothing changed). ``endpoint`` is where clients reach the
    replica (``host:port``), ``location`` where its data lives, ``source`` the primary it follows, ``slot`` the
    replication slot it holds there; ``warnings`` name what a later failback will have to do differently.
    """

    outcome: ReplicaOutcome
    endpoint: str
    location: str
    source: str
    slot: str | None
    lag: ReplicaLag
    seconds: float
    warnings: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "endpoint": self.endpoint, "location": self.location,
                "source": self.source, "slot": self.slot, "lag": self.lag.as_dict(),
                "seconds": round(self.seconds, 3), "warnings": list(self.warnings)}


@dataclass(frozen=True)
class PendingStep:
    """A step a promotion left waiting for a human's approval, with the evidence to decide on.

    SQL Server: after a forced failover the other replicas' databases stay suspended, and resuming one rolls
    back the log records the new primary never received; ``evidence`` says per database what would be
    rolled back, ``action`` what approving runs (a snapshot first, then the resume). ``key`` names the step
    for :meth:`DrOperations.run_pending_step`.
    """

    key: str
    side: Side
    action: str
    evidence: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "side": self.side, "action": self.action, "evidence": list(self.evidence)}


@dataclass(frozen=True)
class DrMethods:
    """How an engine does each DR step, in words for the approval forms and reports."""

    promote: str
    fence: str
    resync: str
    switch_back: str


class DrOperations(Protocol):
    """What the failover and failback runbooks (flows/dr.py) need from an engine, for one database.

    ``drkit.engines.dr_operations(rt, db)`` returns the implementation for the database's ``engine:``. Every
    method is idempotent (a runbook re-run after a crash calls it again and it continues or does nothing)
    and every wait is bounded. A DR step an engine cannot do for a database's policy is refused when the
    policy is loaded, never half-way through a runbook.
    """

    @property
    def database(self) -> str:
        """The policy's name for the database."""
        ...

    @property
    def methods(self) -> DrMethods:
        """How this engine promotes, fences, resynchronises and switches back."""
        ...

    def endpoint(self, side: Side) -> str:
        """``host:port`` clients use to reach ``side`` (for the router and the endpoint record)."""
        ...

    def probe(self, side: Side, *, timeout: float, require_writable: bool = True) -> ProbeResult:
        """One probe of ``side``'s database (connect, answer, writable); never raises."""
        ...

    def replica_state(self) -> ReplicaState:
        """The DR replica seen from itself (usable when the primary is gone)."""
        ...

    def lag(self, *, timeout: float = 10.0) -> ReplicaLag:
        """The DR replica's lag for monitoring (PostgreSQL asks the primary while it answers, then the replica;
        SQL Server asks the DR replica, whose queues and newest applied commit tell it either way)."""
        ...

    def fence_primary(self) -> Fencing:
        """Stop the old primary taking writes where it can be reached; raise only when it answers as the
        primary and promoting the replica now would leave two primaries."""
        ...

    def promote_replica(self) -> Promotion:
        """Make the DR replica the primary (after the runbook's approval): may lose what was not replicated.
        A replica that is already the primary is left alone."""
        ...

    def confirm_writable(self, side: Side) -> datetime:
        """Wait (bounded) until ``side`` takes writes; the server's time of the confirmation."""
        ...

    def resync(self, node: Side) -> Resync:
        """Make ``node`` a replica of the other side again (which must be the primary)."""
        ...

    def wait_caught_up(self, node: Side, *, timeout: float) -> CaughtUp:
        """Wait until replica ``node`` has applied all the other side had (what a switch without loss needs)."""
        ...

    def pending_steps(self) -> list[PendingStep]:
        """The steps a promotion left for a human to approve before they run (re-read each time: a step that
        was done, or cannot be reached, is not listed). An engine that leaves none returns an empty list."""
        ...

    def run_pending_step(self, key: str) -> str:
        """Run the approved pending step ``key``; what it did, in one line. A step no longer pending is a
        no-op that says so (a re-run after a crash)."""
        ...

    def switch_back(self) -> Switchover:
        """Move writes from DR back to the primary with no acknowledged write lost (the primary must be a
        caught-up replica of DR). A primary that already took over is left alone."""
        ...

    def create_replica(self, *, timeout: float = 3600.0) -> ReplicaCreated:
        """Build the DR replica the policy describes from the primary, start it and wait until it follows.

        Idempotent: a replica that already follows the primary is left alone, a stopped one is started.
        Checks the primary's prerequisites first and refuses, changing nothing, to overwrite anything that
        is not a replica of this primary. An engine whose replicas are built with its own tools refuses in
        one line saying which.
        """
        ...
