"""The fault-injection scenarios behind ``tests/faults`` and ``python -m bench.faults`` (see docs/faults.md).

A scenario injects one fault into real components (a SIGKILLed ``drkit`` process, a cut TCP connection
to Azurite, a full tmpfs, a restarted Azurite or Prefect server, a killed archive command, two commands
at once) and returns an :class:`Outcome`: what the operation did, what ``drkit catalog check`` found and
repaired, and whether a restore of the newest chain holds exactly the rows that were written. The
tests assert ``outcome.ok`` (no violated expectation) and a few specifics; the bench runs the same
functions N times and tabulates them.

Every scenario ends with :func:`settle`, the same "afterwards" for every fault:

1. ``drkit catalog check --repair`` now (what the fault left: stale ``running`` rows, missing copies);
2. the same check as it will run once the grace period for young debris has passed (orphan objects
   and partial writes younger than an hour are left alone while a write may be in flight);
3. a deep check (every complete copy hashed) must then be clean;
4. independently of the check: every copy the catalog calls complete has its objects with the
   recorded size, no row is still ``running``, no partial write is left in the local tier;
5. the next log backup (through the CLI, so through the database lock) succeeds;
6. a point-in-time restore of the newest chain (full + diff + logs, replayed to the latest point)
   holds exactly the marker rows written, and the ballast table's digest.

A :class:`World` is one sandbox PostgreSQL primary wired to drkit with the tiers the fault needs, a
real Prefect server, and the marker rows written so far. Commands run as ``drkit`` subprocesses
(``DRKIT_FAULT`` in their environment for the test-only fault points of :mod:`drkit.faults`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import yaml

from drkit.config import load_policy
from drkit.engines import open_engine
from drkit.engines.postgres.engine import server
from drkit.engines.postgres.pgctl import LocalCluster, free_port
from drkit.engines.postgres.restore import restored_dsn
from drkit.runtime import Runtime
from drkit.sandbox import KEY_ENV, Sandbox, create_sandbox
from drkit.storage.filesystem import is_partial_name
from drkit.tiers.naming import DATA_OBJECT, DESCRIPTOR_OBJECT, MANIFEST_OBJECT, object_key
from tests.support.approvers import from_enroll_output
from tests.support.azurite import Azurite, azurite_binary, start_azurite
from tests.support.prefect_process import PrefectProcess
from tests.support.tcpproxy import TcpProxy
from tests.support.tmpfs import grow, mount_tmpfs, unmount

DB = "app"
CONN_ENV = "AZURE_STORAGE_CONNECTION_STRING"
DRKIT = Path(sys.executable).with_name("drkit")
LATER = timedelta(hours=2)  # past catalog_check.GRACE: young orphans and partial writes are judged too
MiB = 1 << 20
APPROVER = "dba@example.com"


# -- results ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One finished ``drkit`` command."""

    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str
    fault: str | None = None

    @property
    def killed(self) -> bool:
        return self.code == -signal.SIGKILL

    @property
    def last_line(self) -> str:
        lines = [ln for ln in self.stderr.splitlines() if ln.strip()]
        return lines[-1].strip() if lines else ""

    @property
    def backup_id(self) -> str | None:
        ids = [ln.strip() for ln in self.stdout.splitlines() if ln.strip().startswith(f"{DB}-")]
        return ids[-1] if ids else None

    def describe(self) -> str:
        what = "killed (SIGKILL)" if self.killed else f"exit {self.code}"
        where = f" [DRKIT_FAULT={self.fault}]" if self.fault else ""
        return f"`drkit {' '.join(self.args)}`{where}: {what}; stderr: {self.last_line[:300]!r}"

    def clean_failure(self) -> str | None:
        """Why this is not a clean failure (exit 1 or 2, one error line, no traceback); None if it is."""
        if self.code not in (1, 2):
            return f"expected a clean failure, got {self.describe()}"
        if "Traceback (most recent call last)" in self.stderr:
            return f"{self.describe()}: a traceback on stderr instead of one error line"
        lines = [ln.strip() for ln in self.stderr.splitlines() if ln.strip()]
        errors = [i for i, ln in enumerate(lines) if ln.startswith("error:")]
        if not errors:
            glued = [ln for ln in lines if "error:" in ln]
            if glued:
                return (f"{self.describe()}: its error line is glued to other output on stderr "
                        f"({glued[0][:200]!r}; {len(lines)} lines in all)")
            return f"{self.describe()}: no error line on stderr"
        if len(lines) > 1:
            others = [ln for i, ln in enumerate(lines) if i != errors[-1]]
            return (f"{self.describe()}: besides its error line ({lines[errors[-1]][:200]!r}), {len(others)} more "
                    f"line(s) on stderr, e.g. {others[:3]!r}")
        return None


@dataclass
class Outcome:
    """What one fault did, for a test's assertion or a row of the bench's table."""

    fault: str
    outcome: str = ""
    check: str = ""
    restore_exact: bool | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step of settle(), for the bench
    found: list[str] = field(default_factory=list)  # finding kinds the first catalog check reported
    found_later: list[str] = field(default_factory=list)  # ... and the check past the grace period, besides

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.steps[name] = round(self.steps.get(name, 0.0) + time.monotonic() - t0, 1)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def report(self) -> str:
        lines = [f"fault: {self.fault}", f"outcome: {self.outcome}", f"catalog check: {self.check}",
                 f"restore exact: {self.restore_exact}"]
        lines += [f"PROBLEM: {p}" for p in self.problems]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# -- the world --------------------------------------------------------------------------------------------


@dataclass
class World:
    root: Path
    sb: Sandbox
    prefect: PrefectProcess
    local_dir: Path
    policies: dict[str, Path]
    azurite: Azurite | None = None
    container: str | None = None
    blob_conn: str | None = None  # the connection string drkit gets (through a proxy, when there is one)
    proxy: TcpProxy | None = None
    standby: LocalCluster | None = None
    written: list[int] = field(default_factory=list)
    ballast_digest: str | None = None
    restores: int = 0

    # commands

    def env(self, fault: str | None = None, **extra: str) -> dict[str, str]:
        env = self.prefect.environ(**{KEY_ENV: self.sb.key_b64})
        if self.blob_conn:
            env[CONN_ENV] = self.blob_conn
        if fault:
            env["DRKIT_FAULT"] = fault
        env.update(extra)
        return env

    def spawn(self, *args: str, fault: str | None = None, policy: str = "main",
              env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(DRKIT), "--config", str(self.policies[policy]), *args], cwd=self.root,
            env={**self.env(fault), **(env or {})}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True)

    @staticmethod
    def finish(proc: subprocess.Popen[str], args: tuple[str, ...], fault: str | None = None,
               timeout: float = 600) -> Run:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            out, err = proc.communicate()
            err += f"\n(the test stopped it after {timeout:.0f} s)"
        return Run(args, proc.returncode, out, err, fault)

    def drkit(self, *args: str, fault: str | None = None, policy: str = "main", timeout: float = 600,
              env: dict[str, str] | None = None) -> Run:
        return self.finish(self.spawn(*args, fault=fault, policy=policy, env=env), args, fault, timeout)

    @contextmanager
    def runtime(self, policy: str = "main") -> Iterator[Runtime]:
        rt = Runtime(load_policy(self.policies[policy]), self.env())
        try:
            yield rt
        finally:
            rt.close()

    # data

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.sb.dsn, autocommit=True)

    def write_markers(self, n: int = 3) -> list[int]:
        """Committed marker rows: a restore of the newest chain must hold exactly the ones written."""
        start = max(self.written, default=0) + 1
        ids = list(range(start, start + n))
        with self.connect() as conn:
            for i in ids:
                conn.execute("INSERT INTO fault_marker(id) VALUES (%s)", [i])
                self.written.append(i)
        return ids

    def add_ballast(self, mib: int) -> None:
        """Incompressible rows (1 MiB each), so a backup streams for a while and fills a disk for real."""
        with self.connect() as conn:
            for _ in range(mib):
                conn.execute("INSERT INTO fault_ballast(b) VALUES (%s)", [os.urandom(MiB)])
            self.ballast_digest = ballast_digest(conn)

    def backups(self, policy: str = "main") -> dict[str, Any]:
        with self.runtime(policy) as rt:
            return {b.id: b for b in rt.catalog.list_backups(DB)}


def ballast_digest(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT count(*) || ':' || coalesce(md5(string_agg(md5(b), ',' ORDER BY id)), '') "
                       "FROM fault_ballast").fetchone()
    assert row is not None
    return str(row[0])


def kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _scratch(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))  # the postgres OS user must reach it
    os.chmod(path, 0o755)
    return path


def _policies(sb: Sandbox, root: Path, local_dir: Path, container: str | None,
              standby: LocalCluster | None) -> dict[str, Path]:
    base = yaml.safe_load(sb.policy_path.read_text())
    base["catalog"] = f"sqlite:///{root}/catalog.db"
    base["scratch_dir"] = str(root / "scratch")
    db = base["databases"][DB]
    db["verify"] = {"after": []}  # the fault suite proves backups by restoring them (settle), not per backup
    if standby is not None:
        db["replica"] = {"dsn": standby.dsn(), "data_dir": str(standby.data_dir), "slot": "drkit_dr"}
        db["traffic"] = {"router": "endpoint"}
        db["health"] = {"interval": "1s", "retries": 1, "timeout": "1s"}
        base["approvals"] = {"approvers": [APPROVER], "failover_timeout": "10m"}
    tiers: dict[str, Any] = {"local": {"store": "filesystem", "path": str(local_dir), "keep_days": 7}}
    blob = None
    if container:
        # Cool, 30 days, copied unverified (the suite does not wait for verification restores); the SDK's
        # own retries kept low so a cut connection surfaces to the task's retry quickly.
        blob = {"store": "azure", "container": container, "connection_string_env": CONN_ENV,
                "access_tier": "Cool", "keep_days": 30, "only_verified": False, "request_retries": 1}
        tiers["blob"] = blob
    variants: dict[str, dict[str, Any]] = {"main": {**base, "tiers": tiers, "backup_tier": "local"}}
    if blob:
        variants["blob-first"] = {**base, "tiers": tiers, "backup_tier": "blob"}
        variants["dr"] = {**base, "tiers": {"blob": blob}, "backup_tier": "blob"}  # the DR site: the container only
    out = {}
    for name, data in variants.items():
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        out[name] = path
    return out


@contextmanager
def open_world(prefect: PrefectProcess, *, blob: str | None = None, ballast_mib: int = 16,
               local_tmpfs: str | None = None, spool_tmpfs: str | None = None, first_full: bool = True,
               standby: bool = False) -> Iterator[World]:
    """A sandbox primary, its policies and tiers, the marker and ballast tables, and a first full backup.

    ``blob``: ``"memory"`` (Azurite in memory), ``"disk"`` (Azurite keeping its data on disk, so it can
    be restarted) or ``"proxy"`` (in memory, reached through a :class:`TcpProxy` that can cut it).
    ``local_tmpfs`` / ``spool_tmpfs``: mount a tmpfs of that size for the local tier / the WAL spool.
    ``standby``: a streaming replica, and the policy's replica, traffic (endpoint) and health settings.
    """
    root = _scratch("drkit-fault-")
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, root, True)
        local_dir = root / "local-tier"
        if local_tmpfs:
            mount_tmpfs(local_dir, local_tmpfs)
            stack.callback(unmount, local_dir)
        if spool_tmpfs:
            mount_tmpfs(root / "world" / "spool" / DB, spool_tmpfs, "0700")
            stack.callback(unmount, root / "world" / "spool" / DB)
        sb = create_sandbox(root / "world", fsync=False)
        stack.callback(sb.primary.stop, "immediate")
        with psycopg.connect(sb.dsn, autocommit=True) as c:
            c.execute("CREATE TABLE fault_marker(id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
            c.execute("CREATE TABLE fault_ballast(id serial PRIMARY KEY, b bytea)")
            c.execute("ALTER TABLE fault_ballast ALTER b SET STORAGE EXTERNAL")  # random bytes: no pglz
        replica_node = None
        if standby:
            from drkit.engines.postgres import replica

            replica_node = replica.create_standby(
                sb.dsn, data_dir=root / "world" / "pg" / "standby", port=free_port(), slot="drkit_dr",
                bin_dir=sb.primary.bin_dir, os_user=sb.primary.os_user)
            stack.callback(replica_node.stop, "immediate")
        azurite = proxy = None
        container = conn = None
        if blob:
            azurite_binary()
            (root / "azurite").mkdir()
            azurite = start_azurite(root / "azurite", in_memory=blob != "disk")
            stack.callback(azurite.stop)
            container = f"f{uuid.uuid4().hex[:12]}"
            conn = azurite.connection_string
            if blob == "proxy":
                proxy = TcpProxy(azurite.host, azurite.port)
                stack.callback(proxy.close)
                conn = conn.replace(f"{azurite.host}:{azurite.port}", f"{proxy.host}:{proxy.port}")
        world = World(root=root, sb=sb, prefect=prefect, local_dir=local_dir,
                      policies=_policies(sb, root, local_dir, container, replica_node), azurite=azurite,
                      container=container, blob_conn=conn, proxy=proxy, standby=replica_node)
        with world.connect() as c:
            world.ballast_digest = ballast_digest(c)
        if ballast_mib:
            world.add_ballast(ballast_mib)
        if first_full:
            world.write_markers(2)
            run = world.drkit("backup", "full", DB)
            if run.code != 0:
                raise RuntimeError(f"the world's first full backup failed: {run.describe()}\n{run.stderr[-3000:]}")
        yield world


# -- checks: the "afterwards" of every fault --------------------------------------------------------------


def catalog_check(world: World, *, repair: bool = False, deep: bool = False, later: bool = False,
                  via_cli: bool = False) -> dict[str, Any]:
    """``drkit catalog check`` as JSON (its ``--json`` document). ``later``: as it will run past the grace period."""
    if via_cli:
        assert not later, "the CLI checks now"
        args = ["catalog", "check", "--json", *(["--repair"] if repair else []), *(["--deep"] if deep else [])]
        run = world.drkit(*args)
        if run.code not in (0, 1):
            raise AssertionError(f"catalog check failed to run: {run.describe()}")
        report: dict[str, Any] = json.loads(run.stdout)
        if (run.code == 0) != bool(report["clean"]):
            raise AssertionError(f"catalog check's exit status {run.code} disagrees with clean={report['clean']}")
        return report
    from drkit.catalog_check import run_check

    with world.runtime() as rt:
        clock = (lambda: datetime.now(UTC) + LATER) if later else None
        result: dict[str, Any] = run_check(rt, deep=deep, repair=repair, now=clock).as_json()
        return result


def _kinds(report: dict[str, Any]) -> list[str]:
    return sorted({f["kind"] for f in report["findings"]})


def complete_copy_problems(world: World) -> list[str]:
    """Every copy the catalog calls complete has its objects, the data object with the recorded size."""
    problems = []
    with world.runtime() as rt:
        for b in rt.catalog.list_backups(statuses=["completed", "verified"]):
            for c in rt.catalog.copies(b.id):
                if c.status != "complete" or c.tier not in rt.policy.tiers:
                    continue
                store = rt.store(c.tier)
                for name in (DATA_OBJECT, MANIFEST_OBJECT, DESCRIPTOR_OBJECT):
                    if not store.exists(object_key(b, name)):
                        problems.append(f"{b.id} ({b.status}): its {c.tier} copy is 'complete' but "
                                        f"{object_key(b, name)} is missing")
                data = object_key(b, DATA_OBJECT)
                if c.stored_bytes and store.exists(data) and store.size(data) != c.stored_bytes:
                    problems.append(f"{b.id}: {data} in {c.tier} is {store.size(data)} bytes, the catalog "
                                    f"recorded {c.stored_bytes}")
        for b in rt.catalog.list_backups(statuses=["running"]):
            problems.append(f"{b.id} is still 'running' after the repair")
    return problems


def partial_writes(directory: Path) -> list[Path]:
    found = []
    for dirpath, _, names in os.walk(directory):
        found += [Path(dirpath) / n for n in names if is_partial_name(n)]
    return found


def restore_exact(world: World, out: Outcome, policy: str = "main") -> bool:
    """Restore the newest chain (to its latest point) in a new directory; compare with what was written."""
    from drkit.engines.postgres.restore import restore

    world.restores += 1
    into = world.root / "restores" / f"r{world.restores}"
    into.parent.mkdir(exist_ok=True)
    os.chmod(into.parent, 0o755)
    with world.runtime(policy) as rt:
        plan = open_engine(rt, DB).plan_restore(None)
        try:
            res = restore(rt, DB, into=into, plan=plan, keep_running=True)
        except Exception as exc:
            out.problem(f"the restore of the newest chain failed: {type(exc).__name__}: {exc}")
            out.restore_exact = False
            return False
        cluster = LocalCluster(res.data_dir, res.port, rt.bin_dir(DB), rt.os_user(DB))
        try:
            with psycopg.connect(restored_dsn(res), autocommit=True) as conn:
                ids = [r[0] for r in conn.execute("SELECT id FROM fault_marker ORDER BY id").fetchall()]
                digest = ballast_digest(conn)
        finally:
            cluster.stop("immediate")
            shutil.rmtree(into, ignore_errors=True)
    pieces = ", ".join(f"{p.role} {p.backup.id} from {p.tier}" for p in plan.pieces)
    exact = ids == sorted(world.written) and digest == world.ballast_digest
    if not exact:
        lost = sorted(set(world.written) - set(ids))
        extra = sorted(set(ids) - set(world.written))
        out.problem(f"the restore ({pieces}) differs from what was written: missing markers {lost[:20]}, "
                    f"unexpected {extra[:20]}, ballast {'equal' if digest == world.ballast_digest else 'differs'}")
    out.restore_exact = exact
    return exact


def settle(world: World, out: Outcome, *, follow_up: bool = True, restore_policy: str = "main",
           via_cli: bool = False) -> None:
    """The same "afterwards" for every fault (see the module docstring). ``via_cli``: the first check is the
    operator's `drkit catalog check --repair --json` (else the same function in this process: faster)."""
    with out.step("check"):
        now = catalog_check(world, repair=True, via_cli=via_cli)
        later = catalog_check(world, repair=True, later=True)
        final = catalog_check(world, deep=True, later=True)
    found = _kinds(now)
    late = sorted(set(_kinds(later)) - set(found))
    out.found, out.found_later = found, late
    for rep in (now, later):
        left = [f for f in rep["findings"] if not f["repaired"]]
        for f in left:
            out.problem(f"catalog check finding not repaired: {f['kind']} {f['subject']}: {f['detail']} "
                        f"({f['note']})")
    if final["clean"]:
        if not found and not late:
            out.check = "clean"
        else:
            parts = ", ".join(found) if found else ""
            if late:
                parts += ("; " if parts else "") + "after the grace period: " + ", ".join(late)
            out.check = f"clean after --repair ({parts})"
    else:
        out.check = "NOT clean: " + ", ".join(_kinds(final))
        for f in final["findings"]:
            out.problem(f"catalog check (deep) still finds {f['kind']} {f['subject']}: {f['detail']}")
    with out.step("oracles"):
        for p in complete_copy_problems(world):
            out.problem(p)
        for p in partial_writes(world.local_dir):
            out.problem(f"a partial write is left in the local tier: {p}")
    if follow_up:
        with out.step("next log backup"):
            world.write_markers(1)
            run = world.drkit("backup", "log", DB)
        if run.code != 0 or not run.backup_id:
            out.problem(f"the next log backup failed: {run.describe()}")
        if restore_policy != "main":  # the DR site reads the container: the sweep sends the new log offsite
            with out.step("next log backup"):
                sweep = world.drkit("retention", "apply")
            if sweep.code != 0:
                out.problem(f"the retention sweep after the next log backup failed: {sweep.describe()}")
    with out.step("restore"):
        restore_exact(world, out, restore_policy)


def _timed(fn: Callable[..., Outcome]) -> Callable[..., Outcome]:
    def wrapper(*args: Any, **kwargs: Any) -> Outcome:
        t0 = time.monotonic()
        out = fn(*args, **kwargs)
        out.seconds = round(time.monotonic() - t0, 1)
        return out

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _wait_for(what: str, cond: Callable[[], Any], timeout: float, poll: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(poll)


def _new_partial(directory: Path, prefix: str = ".data.drk.part-") -> Path | None:
    for p in partial_writes(directory):
        if p.name.startswith(prefix):
            with contextlib.suppress(FileNotFoundError):
                if p.stat().st_size > 0:
                    return p
    return None


# -- 1. the backup process SIGKILLed at each step ---------------------------------------------------------


@dataclass(frozen=True)
class KillCase:
    point: str  # DRKIT_FAULT value, or "external" (a killer polling for the data object's partial write)
    args: tuple[str, ...]
    policy: str = "main"
    completed: bool | None = None  # the faulted backup must end completed (True) / failed (False)
    rerun: bool = False  # the operator reruns the same command (retention: "idempotent: rerun after a crash")
    found: tuple[str, ...] = ()  # what `drkit catalog check` must find right after the kill (and repair)
    later: tuple[str, ...] = ()  # ... and, besides, once its grace period for young debris has passed

    @property
    def name(self) -> str:
        what = self.args[1] if self.args[0] == "backup" else " ".join(self.args[:2])
        return f"kill -9 at {self.point} ({what}{', blob tier' if self.policy == 'blob-first' else ''})"


def _future(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat(timespec="seconds")


STALE = ("stale",)  # the killed backup's `running` row: its process is gone
KILL_CASES: list[KillCase] = [
    KillCase("external", ("backup", "full", DB), completed=False, found=STALE),
    KillCase("backup.stream", ("backup", "log", DB), completed=False, found=STALE),
    KillCase("backup.manifest", ("backup", "diff", DB), completed=False, found=STALE),
    KillCase("backup.descriptor", ("backup", "log", DB), completed=False, found=STALE),
    KillCase("backup.complete", ("backup", "log", DB), completed=False, found=STALE),
    KillCase("backup.complete:after", ("backup", "full", DB), completed=True),
    KillCase("walspool.prune", ("backup", "log", DB), completed=True),
    # The repair removes a dead backup's objects from the policy's backup tier (local); the ones this run
    # wrote to blob (another policy's backup tier) are orphans, removed once past the grace period.
    KillCase("backup.label", ("backup", "full", DB), policy="blob-first", completed=False, found=STALE,
             later=("orphan",)),
    KillCase("tiers.copy", ("retention", "apply"), rerun=True),
    # The copy row is marked deleted before its objects go: they stay, claimed by nothing, until the check
    # removes them as orphans (once past the grace period; a rerun does not revisit a deleted copy).
    KillCase("tiers.delete", ("retention", "apply", "--now", "+8d"), rerun=True, later=("orphan",)),
]
TESTED_KILL_CASES = [c for c in KILL_CASES if c.point != "backup.stream"]
"""The test suite's cases: the external killer already kills a backup mid-stream (the bench runs all)."""


def _args(case: KillCase) -> tuple[str, ...]:
    return tuple(_future(8) if a == "+8d" else a for a in case.args)


@_timed
def kill_backup(world: World, case: KillCase) -> Outcome:
    """SIGKILL a ``drkit`` command at one step; afterwards everything in :func:`settle` holds."""
    out = Outcome(case.name)
    world.write_markers(3)
    before = set(world.backups())
    args = _args(case)
    copies_before = _copy_states(world)
    with out.step("fault"):
        _kill(world, case, args, out)
    new = {k: v for k, v in world.backups().items() if k not in before}
    changed = sorted(f"{tier} copy {status}" for key, (tier, status) in _copy_states(world).items()
                     if copies_before.get(key) != (tier, status) and key[0] not in new)
    left = ", ".join([*(f"a {b.kind} {b.status}" for b in new.values()), *changed]) or "nothing"
    out.outcome = f"killed; left {left}"
    if case.rerun:
        with out.step("rerun"):
            again = world.drkit(*args)
        if again.code != 0:
            out.problem(f"the rerun after the crash failed: {again.describe()}")
        out.outcome += f"; rerun {'completed' if again.code == 0 else 'FAILED'}"
        with world.runtime() as rt:
            pending = [c for c in rt.catalog.all_copies(DB) if c.status == "pending"]
        for c in pending:
            out.problem(f"the {c.tier} copy of {c.backup_id} is still 'pending' after the rerun")
    settle(world, out, via_cli=True)
    if tuple(out.found) != case.found or tuple(out.found_later) != case.later:
        out.problem(f"catalog check found {out.found or 'nothing'} (then {out.found_later or 'nothing'} past "
                    f"the grace period); expected {list(case.found) or 'nothing'} (then "
                    f"{list(case.later) or 'nothing'})")
    if case.completed is not None:
        final = {k: v for k, v in world.backups().items() if k in new}
        faulted = [b for b in final.values() if b.kind == args[1]]
        want = "completed" if case.completed else "failed"
        for b in faulted:
            if b.status != want:
                out.problem(f"the faulted backup {b.id} ended {b.status}, expected {want}")
        if not faulted:
            out.problem("the faulted command left no backup row")
        out.outcome += f"; it ends {', '.join(b.status for b in faulted) or 'unrecorded'}"
    return out


def _copy_states(world: World) -> dict[tuple[str, str], tuple[str, str]]:
    with world.runtime() as rt:
        return {(c.backup_id, c.tier): (c.tier, c.status) for c in rt.catalog.all_copies(DB)}


def _kill(world: World, case: KillCase, args: tuple[str, ...], out: Outcome) -> Run:
    if case.point == "external":
        proc = world.spawn(*args, policy=case.policy)
        try:
            part = _wait_for("the data object's partial write", lambda: _new_partial(world.local_dir)
                             if proc.poll() is None else "exited", 120, poll=0.002)
        finally:
            kill_group(proc)
        run = world.finish(proc, args)
        if part == "exited":
            out.problem(f"the backup ended before the killer saw it stream: {run.describe()}")
        else:
            out.notes.append(f"killed with {part.stat().st_size if part.exists() else '?'} bytes in {part.name}")
    else:
        run = world.drkit(*args, fault=case.point, policy=case.policy)
    if not run.killed:
        out.problem(f"the fault never fired: {run.describe()}")
    return run


# -- 2. the blob connection cut mid-upload and mid-download -----------------------------------------------


@_timed
def cut_upload(world: World) -> Outcome:
    """Retention copies to blob through the proxy; the connection is cut once, mid-upload, then restored."""
    assert world.proxy is not None
    out = Outcome("blob connection cut mid-upload (retention copy)")
    world.write_markers(2)
    run = world.drkit("backup", "full", DB)  # a fresh full: something big to copy
    if run.code != 0:
        out.problem(f"the full before the fault failed: {run.describe()}")
    proxy = world.proxy
    cuts = proxy.cuts
    proxy.sever_after(4 * MiB)
    proc = world.spawn("retention", "apply")
    try:
        _wait_for("the cut", lambda: proxy.cuts > cuts or proc.poll() is not None, 300)
    finally:
        proxy.restore()  # the network comes back; the task's retry (or the SDK's) continues
    run = world.finish(proc, ("retention", "apply"))
    if proxy.cuts == cuts:
        out.problem(f"the connection was never cut (the copy sent less than 4 MiB?): {run.describe()}")
    if run.code == 0:
        out.outcome = "completed after a retry"
    else:
        why = run.clean_failure()
        out.outcome = "failed cleanly" if why is None else "FAILED"
        if why:
            out.problem(why)
        rerun = world.drkit("retention", "apply")
        if rerun.code != 0:
            out.problem(f"the rerun with the network back failed: {rerun.describe()}")
    with world.runtime() as rt:
        in_blob = {c.backup_id for c in rt.catalog.all_copies(DB) if c.tier == "blob" and c.status == "complete"}
        done = {b.id for b in rt.catalog.list_backups(DB, statuses=["completed", "verified"])}
    for bid in sorted(done - in_blob):
        out.problem(f"{bid} has no complete blob copy after the sweep")
    settle(world, out)
    return out


@_timed
def cut_download(world: World) -> Outcome:
    """A restore at the DR site (the container only) through the proxy; the connection cut mid-download and
    down until the restore gives up. It fails with one line, the copy is not marked damaged (a network error
    proves nothing about a copy), and a rerun with the network back restores."""
    assert world.proxy is not None
    out = Outcome("blob connection cut mid-download (restore from blob)")
    run = world.drkit("retention", "apply")  # every backup offsite (logs and diffs at once, fulls unverified too)
    if run.code != 0:
        out.problem(f"preparing: {run.describe()}")
    proxy = world.proxy
    cuts, start = proxy.cuts, proxy.bytes_down
    into = world.root / "restores" / f"cut{world.restores}"
    into.parent.mkdir(exist_ok=True)
    os.chmod(into.parent, 0o755)
    stop = threading.Event()

    def cutter() -> None:
        while not stop.is_set():
            if proxy.bytes_down - start > 4 * MiB:
                proxy.sever()  # and it stays down (new connections are reset) until restore()
                return
            time.sleep(0.002)

    thread = threading.Thread(target=cutter, daemon=True)
    thread.start()
    args = ("restore", DB, "--latest", "--into", str(into))
    try:
        run = world.drkit(*args, policy="dr")
    finally:
        stop.set()
        thread.join(5)
        proxy.restore()
    if proxy.cuts == cuts:
        out.problem(f"the connection was never cut: {run.describe()}")
    with world.runtime() as rt:
        damaged = [c for c in rt.catalog.all_copies(DB) if c.status in ("missing", "corrupt")]
    for c in damaged:
        out.problem(f"a cut connection marked the {c.tier} copy of {c.backup_id} {c.status}: a network error "
                    "proves nothing about the copy")
    if run.code == 0:
        out.outcome = "restore completed although the network stayed down (read before the cut?)"
        _stop_restored(world, into)
    else:
        why = run.clean_failure()
        out.outcome = "restore failed cleanly; rerun with the network back restored" if why is None else \
            "restore FAILED"
        if why:
            out.problem(why)
        again_into = into.with_name(into.name + "-again")
        again = world.drkit("restore", DB, "--latest", "--into", str(again_into), policy="dr")
        if again.code != 0:
            out.problem(f"the restore with the network back failed: {again.describe()}")
            out.outcome = "restore failed; the rerun FAILED too"
        _stop_restored(world, again_into)
    _stop_restored(world, into)
    settle(world, out, restore_policy="dr")
    return out


def _stop_restored(world: World, into: Path) -> None:
    """A restore without --keep-running stops its cluster (a failed one may not have); then remove it."""
    with world.runtime() as rt:
        if (into / "postmaster.pid").exists():
            LocalCluster(into, 0, rt.bin_dir(DB), rt.os_user(DB)).stop("immediate")
    shutil.rmtree(into, ignore_errors=True)
    shutil.rmtree(into.parent / f".{into.name}.drkit-wal", ignore_errors=True)


# -- 3. the local tier's filesystem full ------------------------------------------------------------------


@_timed
def local_tier_full(world: World, kinds: tuple[str, ...] = ("full", "log")) -> Outcome:
    """The local tier is a small tmpfs: backups that do not fit fail cleanly; space back, all is there.

    Each failing backup costs its task's retry delays (a full disk is retried like any store error).
    """
    out = Outcome(f"local tier filesystem full (tmpfs; {' and '.join(kinds)} backup)")
    world.write_markers(2)
    world.add_ballast(12)  # more incompressible data than the tier has room for
    results = []
    for kind in kinds:
        before = set(world.backups())
        run = world.drkit("backup", kind, DB)
        results.append(f"{kind}: {'completed' if run.code == 0 else 'failed'}")
        if run.code == 0:
            out.problem(f"the {kind} backup fit although the tier is full (make the ballast bigger): "
                        f"{run.describe()}")
            continue
        why = run.clean_failure()
        if why:
            out.problem(why)
        elif "space" not in run.last_line.lower():
            out.notes.append(f"the {kind} error does not say the disk is full: {run.last_line}")
        new = [b for k, b in world.backups().items() if k not in before]
        for b in new:
            if b.status != "failed":
                out.problem(f"the {kind} backup {b.id} is {b.status} after running out of space")
        for p in partial_writes(world.local_dir):
            out.problem(f"the failed {kind} left a partial write: {p}")
    grow(world.local_dir, "256m")  # the operator frees space
    out.outcome = "; ".join(results) + "; after freeing space the next log backup shipped it all"
    settle(world, out)
    return out


# -- 4. Azurite restarted during a retention sweep --------------------------------------------------------


@_timed
def azurite_restart(world: World) -> Outcome:
    """``retention apply --now +8 days`` moves everything to blob; Azurite restarts while a copy is in flight."""
    assert world.azurite is not None
    out = Outcome("Azurite restarted during a retention sweep")
    world.write_markers(2)
    for args in (("backup", "full", DB), ("backup", "log", DB)):
        run = world.drkit(*args)
        if run.code != 0:
            out.problem(f"preparing: {run.describe()}")
    args = ("retention", "apply", "--now", _future(8))
    proc = world.spawn(*args)
    try:
        with world.runtime() as rt:
            _wait_for("a copy to blob in flight", lambda: proc.poll() is not None or any(
                c.tier == "blob" and c.status == "pending" for c in rt.catalog.all_copies(DB)), 300, poll=0.01)
        if proc.poll() is not None:
            out.problem("the sweep finished before Azurite could be restarted")
        world.azurite.stop()
        world.azurite.start()
    except BaseException:
        kill_group(proc)
        raise
    run = world.finish(proc, args)
    if run.code == 0:
        out.outcome = "sweep completed (its task retried)"
    else:
        why = run.clean_failure()
        out.outcome = "sweep failed cleanly; the rerun completed" if why is None else "sweep FAILED"
        if why:
            out.problem(why)
        again = world.drkit(*args)
        if again.code != 0:
            out.problem(f"the rerun failed: {again.describe()}")
    again = world.drkit(*args)  # idempotent: nothing left to do
    if again.code != 0 or "0 change(s)" not in again.stdout:
        out.notes.append(f"a second sweep still changed something: {again.stdout.strip().splitlines()[-1:]}")
    with world.runtime() as rt:
        local = [c for c in rt.catalog.all_copies(DB) if c.tier == "local" and c.status == "complete"]
    out.notes.append(f"{len(local)} local copies left after the sweep at +8 days")
    settle(world, out, restore_policy="dr")
    return out


# -- 5. the Prefect API stopped during a backup flow and during a paused failover ------------------------


@_timed
def prefect_down_backup(world: World, *, outage_seconds: float = 0.0) -> Outcome:
    """The Prefect server is killed while a full backup streams and started again (same port, same database).

    The right outcome: the client's retries bridge a restart, so the backup completes and the flow run is
    recorded; nothing is half-written either way.
    """
    out = Outcome("Prefect API restarted during a backup flow")
    world.write_markers(2)
    before = set(world.backups())
    args = ("backup", "full", DB)
    proc = world.spawn(*args)
    try:
        _wait_for("the backup to stream", lambda: _new_partial(world.local_dir) or proc.poll() is not None, 120,
                  poll=0.002)
        world.prefect.stop(signal.SIGKILL)
        if outage_seconds:
            time.sleep(outage_seconds)  # the outage itself is the fault
        world.prefect.start()
    except BaseException:
        kill_group(proc)
        raise
    run = world.finish(proc, args)
    held = _lock_slots(world)
    if held:
        # Prefect's default lease storage is in the server's memory: the restarted server has the slot taken
        # and no lease to release or expire, so every later backup of the database would wait for the lock's
        # timeout. Freed here as an operator would (`prefect gcl update … --active-slots 0`), so the rest of
        # the checks can run; the problem stays recorded.
        out.problem(f"the database lock leaked: after the backup ended, {held} slot(s) of "
                    f"drkit-backup-{DB} stay taken on the restarted Prefect server (its leases were in memory), "
                    "so the next backup would wait for the lock's timeout")
        _free_lock(world)
    new = [b for k, b in world.backups().items() if k not in before]
    status = ", ".join(b.status for b in new) or "no row"
    if run.code == 0:
        out.outcome = f"completed after the API came back (backup {status})"
        if [b.status for b in new] != ["completed"]:
            out.problem(f"the CLI succeeded but the catalog says: {status}")
    else:
        why = run.clean_failure()
        out.outcome = f"failed cleanly (backup {status})" if why is None else f"FAILED (backup {status})"
        out.problem(f"the backup did not survive a restart of the Prefect API: {run.describe()}")
        if why:
            out.problem(why)
    settle(world, out)
    return out


@_timed
def prefect_stays_down_backup(world: World) -> Outcome:
    """The Prefect server is killed while a full backup streams and stays down until the command gives up.

    The right outcome: the backup fails cleanly (one error line, its row ``failed``, its objects removed),
    since the run cannot be recorded nor the database lock kept. The client's retries (about a minute per
    call) are turned off here (``PREFECT_CLIENT_MAX_RETRIES=0``) so the failure comes in seconds, not minutes.
    """
    out = Outcome("Prefect API down (for good) during a backup flow")
    world.write_markers(2)
    before = set(world.backups())
    args = ("backup", "full", DB)
    proc = world.spawn(*args, env={"PREFECT_CLIENT_MAX_RETRIES": "0"})
    try:
        _wait_for("the backup to stream", lambda: _new_partial(world.local_dir) or proc.poll() is not None, 120,
                  poll=0.002)
        world.prefect.stop(signal.SIGKILL)
        run = world.finish(proc, args, timeout=900)
    finally:
        kill_group(proc)
        world.prefect.start()
    new = [b for k, b in world.backups().items() if k not in before]
    status = ", ".join(b.status for b in new) or "no row"
    if run.code == 0:
        out.outcome = f"completed without the API (backup {status})"
    else:
        # Either is consistent: the backup failed (and was tidied), or it completed and only its flow run
        # could not be recorded. The command must say so in one line either way.
        why = run.clean_failure()
        out.outcome = (f"command failed cleanly (backup {status})" if why is None
                       else f"command failed, not cleanly (backup {status})")
        if why:
            out.problem(why)
    for b in new:
        if b.status not in ("failed", "completed"):
            out.problem(f"the backup {b.id} is {b.status} after its command ended")
    if _lock_slots(world):
        # Nothing can give a slot back while the API is down, and the restarted server has forgotten the
        # holder's lease: what counts is that the next backup is not blocked by it (its holder is gone).
        nxt = world.drkit("backup", "log", DB, timeout=180)
        if nxt.code == 0 and not _lock_slots(world):
            out.notes.append("the lock stayed taken while the API was down; the next backup took it back")
        else:
            out.problem(f"the database lock stayed taken and the next backup did not get it: {nxt.describe()}")
            _free_lock(world)
    settle(world, out)
    return out


def _lock_slots(world: World) -> int:
    """Slots taken on the database's backup lock (a Prefect global concurrency limit), 0 if it does not exist."""
    import httpx

    resp = httpx.get(f"{world.prefect.api_url}/v2/concurrency_limits/drkit-backup-{DB}", timeout=10)
    return int(resp.json()["active_slots"]) if resp.status_code == 200 else 0


def _free_lock(world: World) -> None:
    import httpx

    httpx.patch(f"{world.prefect.api_url}/v2/concurrency_limits/drkit-backup-{DB}", json={"active_slots": 0},
                timeout=10).raise_for_status()


def _paused_runs(world: World, name: str) -> list[str]:
    import httpx

    try:
        resp = httpx.post(f"{world.prefect.api_url}/flow_runs/filter", timeout=5, json={
            "flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}, "name": {"any_": [name]}}})
    except httpx.HTTPError:
        return []
    return [r["id"] for r in resp.json()] if resp.status_code == 200 else []


def _pause_ready(world: World, run_id: str) -> bool:
    """The paused run's form (its schema and description inputs) is saved: it is polling for an answer."""
    import httpx

    run = httpx.get(f"{world.prefect.api_url}/flow_runs/{run_id}", timeout=5).json()
    keyset = ((run.get("state") or {}).get("state_details") or {}).get("run_input_keyset") or {}
    keys = [keyset.get("schema"), keyset.get("description")]
    return all(k and httpx.get(f"{world.prefect.api_url}/flow_runs/{run_id}/input/{k}", timeout=5).status_code
               == 200 for k in keys)


def _in_recovery(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    return bool(row and row[0])


@_timed
def prefect_down_paused_failover(world: World, *, outage_seconds: float = 5.0, at_pause: bool = False) -> Outcome:
    """``drkit failover`` pauses for approval; the Prefect server crashes and comes back; then a DBA approves.

    The right outcome: nothing is promoted while nobody can approve; the paused run survives the outage
    (its process keeps polling through the client's retries) and the approval given once the API is back
    promotes the replica exactly once.
    """
    assert world.standby is not None
    out = Outcome("Prefect API killed as the failover pauses" if at_pause
                  else "Prefect API down during a paused failover")
    world.write_markers(2)
    run = world.drkit("backup", "log", DB)
    if run.code != 0:
        out.problem(f"preparing: {run.describe()}")
    from drkit.engines.postgres import replica

    replica.wait_caught_up(world.sb.dsn, "drkit_dr")
    world.sb.primary.stop("immediate")  # the primary region dies
    proc = world.spawn("failover", DB)
    try:
        run_id = _wait_for("the failover to pause for approval", lambda: (_paused_runs(world, f"failover-{DB}")
                           or [None])[0] if proc.poll() is None else "exited", 300, poll=0.3)
        if run_id == "exited":
            ended = world.finish(proc, ("failover", DB))
            raise AssertionError(f"the failover ended before pausing: {ended.describe()}")
        # Down while it *waits*: once the pause has saved its form (a kill in between is another fault:
        # docs/faults.md, "what the faults found").
        if not at_pause:
            _wait_for("the pause's form to be saved", lambda: _pause_ready(world, run_id), 60, poll=0.1)
        world.prefect.stop(signal.SIGKILL)
        time.sleep(outage_seconds)  # the outage itself is the fault
        if proc.poll() is not None:
            out.notes.append("the paused failover's process ended during the outage")
        world.prefect.start()
        if not _in_recovery(world.standby.dsn()):
            out.problem("the replica was promoted while the Prefect API was down (nobody approved)")
        still = _paused_runs(world, f"failover-{DB}")
        if run_id not in still:
            out.problem(f"after the outage the run {run_id} is no longer paused (paused now: {still})")
        enrolled = world.drkit("approvers", "enroll", APPROVER, "--replace")  # their authenticator app
        code = from_enroll_output(world.prefect.api_url, APPROVER, enrolled.stdout).next_code()
        answer = world.drkit("approve", run_id, "--as", APPROVER, "--reason", "region down (fault suite)",
                             "--code", code)
        if answer.code != 0:
            out.problem(f"the approval after the outage failed: {answer.describe()}")
    except BaseException:
        kill_group(proc)
        raise
    run = world.finish(proc, ("failover", DB))
    promoted = not _in_recovery(world.standby.dsn())
    out.outcome = ("paused run survived; approved after the outage; promoted once" if run.code == 0 and promoted
                   else f"failover {run.describe()}; replica {'promoted' if promoted else 'not promoted'}")
    if run.code != 0 or not promoted:
        out.problem(f"the failover did not complete after the approval: {run.describe()}")
    with world.runtime() as rt:
        done = [e for e in rt.catalog.audit_events(database=DB) if e.action == "failover.completed"]
    if len(done) != 1:
        out.problem(f"{len(done)} failover.completed audit events, expected exactly 1")
    with psycopg.connect(world.standby.dsn(), autocommit=True) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM fault_marker ORDER BY id").fetchall()]
    if ids != sorted(world.written):
        out.problem(f"the promoted replica lacks acknowledged markers {sorted(set(world.written) - set(ids))}")
    settle(world, out, follow_up=False)
    return out


# -- 6. the archive command killed between rename and directory fsync; the spool full ----------------------


def _archiver(world: World) -> dict[str, Any]:
    with world.connect() as conn:
        row = conn.execute("SELECT archived_count, last_archived_wal, failed_count, last_failed_wal "
                           "FROM pg_stat_archiver").fetchone()
    assert row is not None
    return {"archived": row[0], "last_archived": row[1], "failed": row[2], "last_failed": row[3]}


def _set_archive_command(world: World, command: str) -> None:
    with world.connect() as conn:
        conn.execute(f"ALTER SYSTEM SET archive_command = '{command}'")
        conn.execute("SELECT pg_reload_conf()")


def _switch(world: World) -> str:
    with world.connect() as conn:
        row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
    assert row is not None
    return str(row[0])


@_timed
def archive_killed_after_rename(world: World) -> Outcome:
    """drkit's archive script SIGKILLed between its rename and its directory fsync; PostgreSQL retries it."""
    out = Outcome("archive command killed between rename and directory fsync")
    spool = world.sb.spool
    wrapper = spool / ".archive-crash.py"
    shutil.copyfile(Path(__file__).with_name("archive_crash.py"), wrapper)
    with world.runtime() as rt:
        user = rt.os_user(DB)
    if user:
        shutil.chown(wrapper, user)
    arm = spool / ".archive-crash.armed"
    real = spool / ".drkit-archive-wal.py"
    _set_archive_command(world, f"/usr/bin/python3 {wrapper} {real} {arm} %p {spool}/%f")
    log = world.sb.primary.log_path
    offset = log.stat().st_size if log.exists() else 0
    try:
        arm.touch()
        world.write_markers(3)
        segment = _switch(world)
        _wait_for("the archive command to be killed", lambda: not arm.exists(), 120)
        if not (spool / segment).exists():
            out.problem(f"{segment} is not in the spool although the killed run renamed it there")
        _wait_for("PostgreSQL's retry to archive the segment",
                  lambda: (_archiver(world)["last_archived"] or "") >= segment, 180, poll=0.2)
        seen = log.read_bytes()[offset:].decode(errors="replace") if log.exists() else ""
        said = [ln for ln in seen.splitlines() if "archive command" in ln]
        out.notes.append(f"the server log: {said[0].split('LOG:', 1)[-1].strip() if said else '(nothing)'}")
        out.outcome = f"killed once after renaming {segment}; PostgreSQL retried; the segment was acknowledged"
    finally:
        with world.runtime() as rt:
            _set_archive_command(world, server(rt, DB).archive_command)
        arm.unlink(missing_ok=True)
        wrapper.unlink(missing_ok=True)
    for p in spool.glob(".*.part-*"):
        out.problem(f"a partial segment is left in the spool: {p.name}")
    settle(world, out)
    return out


@_timed
def spool_full(world: World) -> Outcome:
    """The WAL spool is a small tmpfs: archiving fails (PostgreSQL retries, WAL waits in pg_wal); space back,
    the archiver catches up and the next log backup ships every segment."""
    out = Outcome("WAL spool disk full (tmpfs)")
    spool = world.sb.spool
    failed_before = _archiver(world)["failed"]
    last = ""
    for _ in range(6):  # more 16 MiB segments than the spool holds
        world.write_markers(1)
        last = _switch(world)
        if _archiver(world)["failed"] > failed_before:
            break
    _wait_for("archiving to fail for lack of space", lambda: _archiver(world)["failed"] > failed_before, 120,
              poll=0.2)
    st = _archiver(world)
    out.notes.append(f"archiving failed at {st['last_failed']} (failed {st['failed'] - failed_before} time(s))")
    for p in spool.glob(".*.part-*"):
        out.problem(f"a failed archive attempt left a partial segment in the spool: {p.name}")
    grow(spool, "512m")  # the operator frees space
    out.outcome = f"archiving failed while full; after freeing space PostgreSQL archived through {last}"
    settle(world, out)  # the log backup's own WAL switch wakes the archiver
    return out


@_timed
def spool_full_drained_by_a_log_backup(world: World) -> Outcome:
    """The spool fills (no log backup for a while); the next scheduled log backup should drain it by itself.

    The right outcome: the log backup ships what the spool holds and prunes it, so archiving resumes with
    no operator. (drkit's log backup first waits for the segment it just switched to, which cannot reach
    a full spool: it fails after ``archive_timeout``, 120 s, and prunes nothing.)
    """
    out = Outcome("WAL spool full: the next log backup drains it")
    spool = world.sb.spool
    failed_before = _archiver(world)["failed"]
    for _ in range(8):
        world.write_markers(1)
        _switch(world)
        if _archiver(world)["failed"] > failed_before:
            break
    _wait_for("archiving to fail for lack of space", lambda: _archiver(world)["failed"] > failed_before, 120,
              poll=0.2)
    with out.step("log backup while full"):
        run = world.drkit("backup", "log", DB)
    segment = _switch(world)  # as the next log backup would: wakes the archiver
    try:
        _wait_for("archiving to resume", lambda: (_archiver(world)["last_archived"] or "") >= segment, 30,
                  poll=0.2)
        out.outcome = f"log backup {'completed' if run.code == 0 else 'failed'}; archiving resumed by itself"
    except TimeoutError:
        out.outcome = f"log backup {'completed' if run.code == 0 else 'failed'}; the spool stayed full"
        out.problem(f"a log backup while the spool is full does not drain it ({run.describe()}); archiving "
                    "stays stuck until an operator frees space")
        grow(spool, "512m")
    settle(world, out)
    return out


# -- 7. two backups at once; a retention sweep concurrent with a backup ---------------------------------------


@_timed
def two_backups_at_once(world: World) -> Outcome:
    """Two ``drkit backup full`` of one database started together: one waits (or is refused), never both at once."""
    out = Outcome("two full backups of one database at once")
    world.write_markers(2)
    before = set(world.backups())
    args = ("backup", "full", DB)
    procs = [world.spawn(*args) for _ in range(2)]
    runs = [world.finish(p, args) for p in procs]
    new = sorted((b for k, b in world.backups().items() if k not in before), key=lambda b: b.started_at)
    codes = sorted(r.code for r in runs)
    if codes == [0, 0]:
        out.outcome = "both completed, one after the other"
    elif codes == [0, 1] and any("in progress" in r.last_line or "lock" in r.last_line for r in runs if r.code):
        out.outcome = "one completed, the other refused (BackupInProgressError)"
    else:
        out.outcome = "; ".join(r.describe() for r in runs)
        out.problem(f"unexpected results: {out.outcome}")
    done = [b for b in new if b.status in ("completed", "verified")]
    if len(done) != codes.count(0):
        out.problem(f"{codes.count(0)} command(s) succeeded but {len(done)} backup(s) completed: "
                    + ", ".join(f"{b.id} {b.status}" for b in new))
    for a, b in zip(done, done[1:], strict=False):
        if a.finished_at and b.started_at < a.finished_at:
            out.problem(f"{a.id} and {b.id} ran at the same time ({b.started_at} < {a.finished_at})")
    settle(world, out)
    return out


@_timed
def sweep_during_backup(world: World) -> Outcome:
    """A differential backup and ``retention apply --now +8 days`` (moving copies to blob) started together."""
    out = Outcome("retention sweep concurrent with a backup")
    world.write_markers(2)
    before = set(world.backups())
    backup_args = ("backup", "diff", DB)
    sweep_args = ("retention", "apply", "--now", _future(8))
    procs = [world.spawn(*backup_args), world.spawn(*sweep_args)]
    backup, sweep = world.finish(procs[0], backup_args), world.finish(procs[1], sweep_args)
    results = []
    for run, what in ((backup, "backup"), (sweep, "sweep")):
        if run.code == 0:
            results.append(f"{what} completed")
            continue
        why = run.clean_failure()
        results.append(f"{what} {'failed cleanly' if why is None else 'FAILED'}")
        out.problem(f"the {what} failed when run concurrently: {run.describe()}")
    out.outcome = "; ".join(results)
    new = [b for k, b in world.backups().items() if k not in before]
    if backup.code == 0 and not any(b.kind == "diff" and b.status == "completed" for b in new):
        out.problem("the backup command succeeded but no completed diff is recorded")
    with world.runtime() as rt:
        damaged = [c for c in rt.catalog.all_copies(DB) if c.status in ("missing", "corrupt")]
    for c in damaged:
        out.problem(f"the {c.tier} copy of {c.backup_id} was marked {c.status} (retention deleted it, it is not "
                    "damage)")
    settle(world, out)
    return out


# -- the families, for the bench (tests build the same worlds in tests/faults) ----------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[World], Outcome]


@dataclass(frozen=True)
class Family:
    name: str
    world: Callable[[PrefectProcess], Any]  # a context manager yielding a World
    scenarios: tuple[Scenario, ...]
    fresh_world_per_run: bool = False


def _kill_scenario(case: KillCase) -> Scenario:
    return Scenario(case.name, lambda w: kill_backup(w, case))


FAMILIES: tuple[Family, ...] = (
    Family("kill", lambda pf: open_world(pf, blob="memory"), tuple(_kill_scenario(c) for c in KILL_CASES)),
    Family("network", lambda pf: open_world(pf, blob="proxy"),
           (Scenario("cut mid-upload", cut_upload), Scenario("cut mid-download", cut_download))),
    Family("disk", lambda pf: open_world(pf, local_tmpfs="8m", ballast_mib=0),
           (Scenario("local tier full", local_tier_full),), fresh_world_per_run=True),
    Family("azurite", lambda pf: open_world(pf, blob="disk"), (Scenario("azurite restart", azurite_restart),)),
    Family("prefect", lambda pf: open_world(pf), (Scenario("prefect restarted: backup", prefect_down_backup),
                                                   Scenario("prefect down: backup", prefect_stays_down_backup))),
    Family("failover", lambda pf: open_world(pf, standby=True, ballast_mib=4),
           (Scenario("prefect down: paused failover", prefect_down_paused_failover),), fresh_world_per_run=True),
    Family("pausing", lambda pf: open_world(pf, standby=True, ballast_mib=4),
           (Scenario("prefect killed as the failover pauses",
                     lambda w: prefect_down_paused_failover(w, at_pause=True)),), fresh_world_per_run=True),
    Family("archive", lambda pf: open_world(pf, spool_tmpfs="72m", ballast_mib=4),
           (Scenario("archive killed after rename", archive_killed_after_rename),
            Scenario("spool full", spool_full)), fresh_world_per_run=True),
    Family("spool", lambda pf: open_world(pf, spool_tmpfs="72m", ballast_mib=0),
           (Scenario("spool full: drained by a log backup", spool_full_drained_by_a_log_backup),),
           fresh_world_per_run=True),
    Family("concurrency", lambda pf: open_world(pf, blob="memory"),
           (Scenario("two backups at once", two_backups_at_once),
            Scenario("sweep during a backup", sweep_during_backup))),
)
