"""The PostgreSQL engine: prerequisites, full and block-level differential backups, WAL shipping.

A backup holds one session open from ``pg_backup_start`` to
``pg_backup_stop`` (non-exclusive API): if the session dies, PostgreSQL aborts
the backup. The data directory is read directly, so drkit must run on the
database host (or see its data directory); ``check`` verifies that.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drkit.engines.base import BackupOutcome, BaseInfo, ByteSink, CheckItem, Progress, SetupResult
from drkit.engines.postgres.lsn import format_lsn, parse_lsn, parse_segment_name, segment_name, segment_number
from drkit.engines.postgres.pgctl import make_owned_dir
from drkit.engines.postgres.pgfiles import (
    MANIFEST_NAME,
    ArchiveWriter,
    list_data_dir,
    pages_member_name,
    scan_changed_pages,
)
from drkit.engines.postgres.walspool import WalBatch, open_spool_file
from drkit.errors import DatabaseUnreachableError, EngineError, PrerequisiteError
from drkit.safedir import SafeDir, trusted_path

if TYPE_CHECKING:
    import psycopg

    from drkit.runtime import Runtime

ARCHIVE_SCRIPT_NAME = ".drkit-archive-wal.py"
_ARCHIVE_SCRIPT_SRC = Path(__file__).with_name("archive_wal.py")
FORMAT = "drkit-pg-tar-v1"
REPLICA_ITEM = "DR replica"
"""The check item of the DR replica's slot: reported by ``drkit check``, never a reason to refuse a backup."""


def dsn_hint(dsn: str) -> str:
    """host:port/dbname of a DSN, for messages; never the password."""
    import psycopg  # psycopg only when a DSN is used (`drkit restore-plan` needs none)
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(unparseable DSN)"
    host = params.get("host") or params.get("hostaddr") or "localhost"
    return f"{host}:{params.get('port') or 5432}/{params.get('dbname') or params.get('user') or ''}"


@dataclass(frozen=True)
class WalSwitch:
    segment: str
    segno: int
    timeline: int
    end_time: datetime
    segment_size: int


class _ByteCounter:
    def __init__(self, total: int, progress: Progress | None) -> None:
        self.done, self.total, self._progress, self._last = 0, total, progress, 0

    def __call__(self, n: int) -> None:
        self.done += n
        if self._progress and self.done - self._last >= 64 * 1024 * 1024:
            self._last = self.done
            self._progress(self.done, self.total)


class PostgresEngine:
    """One PostgreSQL server, reached by DSN, whose data directory is on this host."""

    def __init__(
        self,
        name: str,
        *,
        dsn: str,
        data_dir: Path,
        spool: Path,
        bin_dir: Path,
        os_user: str | None,
        archive_python: str = "/usr/bin/python3",
        archive_timeout: float = 120.0,
        replica_slot: str | None = None,
    ) -> None:
        self.name = name
        self._dsn = dsn
        self.data_dir = data_dir
        self.spool = spool
        self.bin_dir = bin_dir
        self.os_user = os_user
        self.archive_python = archive_python
        self.archive_timeout = archive_timeout
        self.replica_slot = replica_slot  # the DR replica's slot here, when the policy names a replica

    def __repr__(self) -> str:
        return f"PostgresEngine({self.name!r}, {dsn_hint(self._dsn)})"

    # -- connection --------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return dsn_hint(self._dsn)

    def connect(self) -> psycopg.Connection[Any]:
        import psycopg

        try:
            return psycopg.connect(self._dsn, autocommit=True, connect_timeout=10, application_name="drkit")
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DatabaseUnreachableError(
                f"cannot connect to database {self.name!r} at {self.endpoint}: {first}"
            ) from None

    @contextmanager
    def session(self) -> Iterator[psycopg.Connection[Any]]:
        conn = self.connect()
        try:
            yield conn
        finally:
            conn.close()

    @staticmethod
    def _one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
        row = conn.execute(query, params).fetchone()
        return None if row is None else row[0]

    def segment_size(self, conn: psycopg.Connection[Any]) -> int:
        return int(self._one(conn, "SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'"))

    # -- prerequisites -----------------------------------------------------------------------------

    @property
    def archive_command(self) -> str:
        script = self.spool / ARCHIVE_SCRIPT_NAME
        return (f"{shlex.quote(self.archive_python)} {shlex.quote(str(script))} %p "
                f"{shlex.quote(str(self.spool))}/%f")

    def check(self) -> list[CheckItem]:
        items: list[CheckItem] = []
        with self.session() as conn:
            settings = dict(conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN ('wal_level', 'archive_mode', "
                "'archive_command', 'wal_log_hints', 'data_checksums', 'full_page_writes', "
                "'data_directory', 'server_version_num')"
            ).fetchall())
            settings["is_superuser"] = str(self._one(conn, "SELECT current_setting('is_superuser')"))
            archiver = conn.execute(
                "SELECT last_archived_wal, last_failed_wal, last_failed_time, last_archived_time "
                "FROM pg_stat_archiver").fetchone()
            slot = None if self.replica_slot is None else conn.execute(
                "SELECT active FROM pg_replication_slots WHERE slot_name = %s", [self.replica_slot]).fetchone()
        superuser = settings.get("is_superuser") == "on"
        items.append(CheckItem("superuser", superuser, settings.get("is_superuser", "?"), "on",
                               "connect as a superuser (pg_backup_start, pg_switch_wal, data_directory)"))
        server_dir = settings.get("data_directory", "")
        same_dir = bool(server_dir) and os.path.realpath(server_dir) == os.path.realpath(self.data_dir)
        items.append(CheckItem(
            "data_dir", same_dir, server_dir or "(hidden: not superuser)", str(self.data_dir),
            f"set databases.{self.name}.data_dir to the server's data_directory ({server_dir})"))
        readable = (self.data_dir / "PG_VERSION").is_file() and os.access(self.data_dir / "PG_VERSION", os.R_OK)
        items.append(CheckItem("data_dir readable", readable, "yes" if readable else "no", "yes",
                               f"run drkit on the database host as a user that can read {self.data_dir}"))
        level = settings.get("wal_level", "?")
        items.append(CheckItem("wal_level", level in ("replica", "logical"), level, "replica",
                               "ALTER SYSTEM SET wal_level = 'replica' (restart)", needs_restart=True))
        mode = settings.get("archive_mode", "?")
        items.append(CheckItem("archive_mode", mode in ("on", "always"), mode, "on",
                               "ALTER SYSTEM SET archive_mode = 'on' (restart)", needs_restart=True))
        cmd = settings.get("archive_command", "")
        items.append(CheckItem("archive_command", cmd == self.archive_command, cmd or "(empty)",
                               self.archive_command, "drkit setup DB (then SELECT pg_reload_conf())"))
        script_ok = (self.spool / ARCHIVE_SCRIPT_NAME).is_file()
        items.append(CheckItem("wal spool", script_ok and self.spool.is_dir(), str(self.spool),
                               f"{self.spool} with {ARCHIVE_SCRIPT_NAME}", "drkit setup DB"))
        hints = settings.get("data_checksums") == "on" or settings.get("wal_log_hints") == "on"
        items.append(CheckItem(
            "wal_log_hints or data checksums", hints,
            f"checksums={settings.get('data_checksums')}, wal_log_hints={settings.get('wal_log_hints')}",
            "one of them on (pg_rewind at failback)",
            "ALTER SYSTEM SET wal_log_hints = 'on' (restart); without it a failback rebuilds the old primary "
            "from a full base backup instead of rewinding it", needs_restart=True))
        fpw = settings.get("full_page_writes", "?")
        items.append(CheckItem("full_page_writes", fpw == "on", fpw, "on", "ALTER SYSTEM SET full_page_writes = 'on'"))
        if self.replica_slot is not None:
            state = "missing" if slot is None else ("active" if slot[0] else "inactive: the replica is not connected")
            items.append(CheckItem(
                f"{REPLICA_ITEM} (slot {self.replica_slot})", state == "active", state, "active",
                f"drkit replica create {self.name} (builds the replica, or starts a stopped one)"))
        if archiver is not None:
            last_ok, last_failed, failed_at, ok_at = archiver
            healthy = last_failed is None or (ok_at is not None and failed_at is not None and ok_at > failed_at)
            items.append(CheckItem(
                "archiver", healthy,
                "ok" if healthy else f"last failure on {last_failed} at {failed_at}",
                "no failure since the last success", "see the server log for archive_command errors"))
        return items

    def setup(self) -> SetupResult:
        make_owned_dir(self.spool, self.os_user, 0o700)
        self._install_archive_script()
        applied: list[str] = []
        wanted = {"archive_command": self.archive_command}
        for item in self.check():
            if item.ok:
                continue
            if item.name == "wal_level":
                wanted["wal_level"] = "replica"
            elif item.name == "archive_mode":
                wanted["archive_mode"] = "on"
            elif item.name == "wal_log_hints or data checksums":
                wanted["wal_log_hints"] = "on"
            elif item.name == "full_page_writes":
                wanted["full_page_writes"] = "on"
        with self.session() as conn:
            for name, value in wanted.items():
                current = self._one(conn, "SELECT setting FROM pg_settings WHERE name = %s", [name])
                if current == value:
                    continue
                from psycopg import sql

                conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
                applied.append(f"{name} = {value!r}")
            conn.execute("SELECT pg_reload_conf()")
            time.sleep(0.2)
            pending = bool(self._one(conn, "SELECT count(*) FROM pg_settings WHERE pending_restart"))
        remaining = [i for i in self.check() if not i.ok and not i.needs_restart]
        return SetupResult(applied=applied, restart_needed=pending, remaining=remaining)

    def _install_archive_script(self) -> None:
        """Copy the archive script into the spool, owned by the OS user, 0755.

        The OS user owns the spool and may have planted a link named like the script: the copy goes to a
        fresh name through the spool's directory descriptor and is renamed over whatever is there
        (safedir), so root never writes, chmods or chowns through a link.
        """
        owner = None
        if self.os_user and os.geteuid() == 0:
            pw = pwd.getpwnam(self.os_user)
            owner = (pw.pw_uid, pw.pw_gid)
        with SafeDir.open(trusted_path(self.spool)) as spool:
            spool.replace(ARCHIVE_SCRIPT_NAME, _ARCHIVE_SCRIPT_SRC.read_bytes(), mode=0o755, owner=owner)

    def require_ready(self) -> None:
        """Raise PrerequisiteError listing every unmet prerequisite and its fix."""
        bad = [i for i in self.check() if not i.ok and i.name != "archiver" and not i.name.startswith(REPLICA_ITEM)]
        if bad:
            lines = "; ".join(f"{i.name} is {i.current!r}, needs {i.expected!r} (fix: {i.fix})" for i in bad)
            raise PrerequisiteError(f"database {self.name!r} is not ready for backups: {lines}. "
                                    f"`drkit check {self.name}` lists them, `drkit setup {self.name}` applies fixes")

    # -- backups -----------------------------------------------------------------------------------

    def full_backup(self, out: ByteSink, *, progress: Progress | None = None) -> BackupOutcome:
        return self._base_backup(out, None, progress)

    def diff_backup(self, out: ByteSink, base: BaseInfo, *, progress: Progress | None = None) -> BackupOutcome:
        return self._base_backup(out, base, progress)

    def _base_backup(self, out: ByteSink, base: BaseInfo | None, progress: Progress | None) -> BackupOutcome:
        kind = "diff" if base else "full"
        with self.session() as conn:
            seg_size = self.segment_size(conn)
            sysid = str(self._one(conn, "SELECT system_identifier FROM pg_control_system()"))
            version = str(self._one(conn, "SHOW server_version_num"))
            start_lsn = parse_lsn(self._one(conn, "SELECT pg_backup_start(%s, true)::text",
                                            [f"drkit {kind} {self.name}"]))
            started = True
            try:
                listing = list_data_dir(self.data_dir)
                counter = _ByteCounter(listing.total_bytes, progress)
                writer = ArchiveWriter(out, counter)
                for d in listing.dirs:
                    writer.add_dir(d)
                files: dict[str, int] = {}
                pages_kept = pages_scanned = whole_bytes = 0
                for f in listing.files:
                    if base is not None and f.relation and f.fork is None and f.relpath in base.files:
                        kept, scanned = self._add_changed_pages(writer, f.relpath, f.abspath, base, counter)
                        if scanned is None:
                            continue
                        pages_kept += kept
                        pages_scanned += scanned // 8192
                        files[f.relpath] = scanned
                    else:
                        size = writer.add_file(f.relpath, f.abspath, f.size)
                        if size is None:
                            continue
                        whole_bytes += size
                        files[f.relpath] = size
                row = conn.execute(
                    # false: do not let the server poll the archiver once a second; the segments are
                    # awaited in our own spool right below (notes: a fixed ~1 s per backup otherwise).
                    "SELECT lsn::text, labelfile, spcmapfile, clock_timestamp() FROM pg_backup_stop(false)"
                ).fetchone()
                started = False
            finally:
                if started:
                    from psycopg import Error as PsycopgError

                    with suppress(PsycopgError):
                        conn.execute("SELECT pg_backup_stop(false)")
            assert row is not None
            stop_lsn, label, spcmap, stop_time = parse_lsn(row[0]), row[1], row[2], row[3]
        tli = _label_timeline(label)
        wal = self._wal_between(tli, start_lsn, stop_lsn, seg_size)
        for name in wal:
            if not self._add_spool_file(writer, name):
                raise EngineError(f"WAL segment {name} vanished from the spool {self.spool} during the backup")
        if tli > 1:
            self._add_spool_file(writer, f"{tli:08X}.history")
        writer.add_bytes("backup_label", label.encode())
        if spcmap:
            writer.add_bytes("tablespace_map", spcmap.encode())
        manifest: dict[str, Any] = {
            "format": FORMAT, "kind": kind, "database": self.name, "files": files, "dirs": listing.dirs,
            "start_lsn": format_lsn(start_lsn), "stop_lsn": format_lsn(stop_lsn), "timeline": tli,
            "wal": wal, "segment_size": seg_size, "system_identifier": sysid, "server_version_num": version,
            "base": base.backup_id if base else None,
        }
        writer.add_json(MANIFEST_NAME, manifest)
        writer.close()
        meta: dict[str, Any] = {"system_identifier": sysid, "server_version_num": version,
                                "files": len(files), "data_bytes": listing.total_bytes}
        if base is not None:
            meta.update(pages_changed=pages_kept, pages_scanned=pages_scanned, whole_file_bytes=whole_bytes)
        return BackupOutcome(
            timeline=tli, start_lsn=start_lsn, end_lsn=stop_lsn, start_wal=wal[0], end_wal=wal[-1],
            start_time=stop_time, end_time=stop_time, manifest=manifest, meta=meta,
        )

    @staticmethod
    def _add_changed_pages(
        writer: ArchiveWriter, relpath: str, abspath: str, base: BaseInfo, counter: Callable[[int], None]
    ) -> tuple[int, int | None]:
        try:
            fh = open(abspath, "rb")  # noqa: SIM115
        except FileNotFoundError:
            return 0, None
        kept = 0
        scanned = 0

        def count(n: int) -> None:
            nonlocal scanned
            scanned += n
            counter(n)

        with fh:
            for first_block, payload in scan_changed_pages(
                fh, since_lsn=base.start_lsn, base_blocks=base.files[relpath] // 8192, on_bytes=count
            ):
                kept += int.from_bytes(payload[0:4], "little")
                writer.add_bytes(pages_member_name(relpath, first_block), payload)
        return kept, scanned

    def _wal_between(self, tli: int, start_lsn: int, stop_lsn: int, seg_size: int) -> list[str]:
        first = segment_number(start_lsn, seg_size)
        last = segment_number(stop_lsn, seg_size)
        if stop_lsn % seg_size == 0 and last > first:
            last -= 1
        names = [segment_name(tli, s, seg_size) for s in range(first, last + 1)]
        for name in names:
            self.wait_archived(name)
        return names

    # -- WAL ---------------------------------------------------------------------------------------

    def switch_wal(self) -> WalSwitch:
        """Commit a heartbeat (so recovery has a commit to stop at), then close the current segment."""
        with self.session() as conn:
            seg_size = self.segment_size(conn)
            with conn.transaction():
                row = conn.execute("SELECT pg_current_xact_id(), clock_timestamp()").fetchone()
                assert row is not None
                end_time = row[1]
            segment = self._one(conn, "SELECT pg_walfile_name(pg_switch_wal())")
        tli, segno = parse_segment_name(segment, seg_size)
        return WalSwitch(segment=segment, segno=segno, timeline=tli, end_time=end_time, segment_size=seg_size)

    def wait_archived(self, segment: str) -> None:
        deadline = time.monotonic() + self.archive_timeout
        path = self.spool / segment
        while not path.exists():
            if time.monotonic() > deadline:
                with self.session() as conn:
                    row = conn.execute("SELECT last_failed_wal, last_failed_time FROM pg_stat_archiver").fetchone()
                failed = f"; pg_stat_archiver last failed {row[0]} at {row[1]}" if row and row[0] else ""
                raise EngineError(
                    f"WAL segment {segment} did not reach the spool {self.spool} within "
                    f"{self.archive_timeout:.0f}s{failed}; check archive_command (`drkit check {self.name}`)")
            time.sleep(0.1)

    def _add_spool_file(self, writer: ArchiveWriter, name: str) -> bool:
        """Add spool entry ``name`` as ``pg_wal/<name>``: regular files only, never through a link (walspool)."""
        fh = open_spool_file(self.spool, name)
        if fh is None:
            return False
        with fh:
            writer.add_open_file(f"pg_wal/{name}", fh)
        return True

    def write_wal_archive(self, out: ByteSink, batch: WalBatch) -> dict[str, Any]:
        writer = ArchiveWriter(out)
        for name in (*batch.history_files, *batch.segments):
            if not self._add_spool_file(writer, name):
                raise EngineError(f"WAL file {name} vanished from the spool {self.spool} while shipping it")
        manifest = {"format": FORMAT, "kind": "log", "database": self.name, "timeline": batch.timeline,
                    "segments": list(batch.segments), "history": list(batch.history_files),
                    "start_lsn": format_lsn(batch.start_lsn), "end_lsn": format_lsn(batch.end_lsn)}
        writer.add_json(MANIFEST_NAME, manifest)
        writer.close()
        return manifest


_TLI_RE = re.compile(r"^START TIMELINE: (\d+)$", re.M)


def _label_timeline(label: str) -> int:
    m = _TLI_RE.search(label)
    if not m:
        raise EngineError("pg_backup_stop returned a backup_label without START TIMELINE")
    return int(m.group(1))


def server(rt: Runtime, db: str) -> PostgresEngine:
    """The server that is ``db``'s primary now (the catalog's endpoint record says which: the policy's own, the
    promoted DR replica, a recovered cluster; see ``primary.active_primary``): its DSN, data directory, WAL spool."""
    from drkit.engines.postgres.primary import active_primary

    cfg = rt.policy.database(db)
    active = active_primary(rt, db)
    slot = cfg.replica.slot if cfg.replica is not None and active.side == "primary" else None
    return PostgresEngine(db, dsn=active.dsn, data_dir=active.data_dir, spool=rt.policy.wal_spool(db),
                          bin_dir=rt.bin_dir(db), os_user=rt.os_user(db), replica_slot=slot)
