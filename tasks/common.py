"""What every drkit task shares: loading the runtime, retry rules, the per-database lock, progress.

Retry rule: retry what is transient (a dropped connection, a store I/O error);
never retry what a retry cannot fix (bad policy, missing key, prerequisites,
a WAL gap, corrupt data). A base backup attempt is atomic (its objects are
written under uncommitted names, its catalog row ends 'failed'), so retrying
the whole step is safe; a half-finished engine step is never resumed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect import get_client, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.exceptions import MissingContextError, ObjectNotFound, PrefectHTTPStatusError
from prefect.variables import Variable

from drkit.config import load_policy
from drkit.errors import (
    BackupInProgressError,
    ConfigError,
    DatabaseUnreachableError,
    EncryptionKeyError,
    IntegrityError,
    NotRetryable,
    PrerequisiteError,
    RestorePlanError,
    StoreError,
    WalConflictError,
    WalGapError,
)
from drkit.liveness import describe as describe_process
from drkit.liveness import gone as process_gone
from drkit.liveness import me as this_process
from drkit.runtime import Runtime

_PERMANENT: tuple[type[BaseException], ...] = (
    ConfigError, EncryptionKeyError, PrerequisiteError, WalGapError, WalConflictError, IntegrityError,
    RestorePlanError)


def runtime(config: str | None) -> Runtime:
    """The runtime for a task: the policy, with secrets from Prefect Secret blocks added to its environment.

    A tier's ``secret_block`` fills its ``connection_string_env`` variable when the environment lacks
    it, so workers need no secret in their environment. Values never reach a log or a result.
    """
    policy = load_policy(config)
    environ = dict(os.environ)
    for name, tier in policy.tiers.items():
        if tier.secret_block and tier.connection_string_env and not environ.get(tier.connection_string_env):
            from prefect.blocks.system import Secret

            try:
                block = Secret.load(tier.secret_block)
                environ[tier.connection_string_env] = str(block.get())  # type: ignore[union-attr]
            except ValueError:
                raise ConfigError(f"tiers.{name}.secret_block: no Prefect Secret block named "
                                  f"{tier.secret_block!r}") from None
    return Runtime(policy, environ)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry_condition_fn: retry connection and I/O trouble only."""
    try:
        state.result()
    except _PERMANENT:
        return False
    except Exception as exc:
        if isinstance(exc, NotRetryable):  # an engine's error that retrying cannot fix
            return False
        return isinstance(exc, (DatabaseUnreachableError, StoreError, OSError, ConnectionError, TimeoutError))
    return False


def lock_name(db: str) -> str:
    return f"drkit-backup-{db}"


def ensure_limit(name: str, limit: int = 1) -> None:
    """Create the global concurrency limit if it is missing (a missing limit would silently not limit)."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            except Exception:  # created concurrently by another run: fine if it now exists
                client.read_global_concurrency_limit_by_name(name)


LOCK_LEASE_SECONDS = 60.0
"""Prefect's lease on a database lock's slot: the shortest the server accepts (it refuses under 60 s).
The holder's process renews it every 20 s while it lives (:class:`_LeaseRenewer`); if the process dies,
the server takes the slot back once the lease lapses (its repossessor looks every 15 s): within about 75 s."""

LOCK_RENEW_SECONDS = 20.0
"""How often the holder renews its lease (three chances before it lapses)."""

LOCK_POLL_SECONDS = 2.0
"""How often a waiting backup looks whether the lock is free, or its holder a process that is gone."""

def _log() -> Any:
    """The flow run's logger (so the UI shows lock takeovers), else a plain one."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("drkit.lock")


def _holder_variable(db: str) -> str:
    """The Prefect Variable naming a lock's holder: its lease and its process."""
    return artifact_key("drkit-lock", db).replace("-", "_")


@contextmanager
def database_lock(db: str, timeout_seconds: float = 3600) -> Iterator[None]:
    """At most one backup of ``db`` at a time, across processes and workers (strict: never a no-op).

    Each attempt is one call to the Prefect API that either takes the slot with a lease or answers that it
    is taken (``423 Locked``): no acquisition is left pending when a waiter gives up, so the server never
    grants the slot to a waiter that has stopped waiting. The holder renews its lease while it works.

    A holder killed outright (SIGKILL, OOM) cannot release its slot. Its lease lapses within about 75 s
    (:data:`LOCK_LEASE_SECONDS`), but a waiter does not wait for that when it can tell: the holder
    records its lease and process in a Prefect Variable, and a waiter on the same host that finds that
    process gone releases the lease itself (logged) and takes the lock, within seconds.
    """
    name = lock_name(db)
    ensure_limit(name)
    deadline = time.monotonic() + timeout_seconds
    while True:
        lease = _try_acquire(name)
        if lease is not None:
            renewer = _LeaseRenewer(db, lease)
            _record_holder(db, lease)
            try:
                yield
            finally:
                renewer.stop()
                _forget_holder(db, lease)
                _release(lease)
            return
        if _release_dead_holder(db):
            continue
        if time.monotonic() >= deadline:
            raise BackupInProgressError(
                f"another backup of {db!r} held the lock {name!r} for over {timeout_seconds:.0f}s; "
                "see the running flows in the Prefect UI")
        time.sleep(min(LOCK_POLL_SECONDS, max(0.0, deadline - time.monotonic())))


def _try_acquire(name: str) -> UUID | None:
    """Take the lock's slot with a lease (its id), or None when another holder has it."""
    with get_client(sync_client=True) as client:
        try:
            response = client.increment_concurrency_slots_with_lease(
                names=[name], slots=1, mode="concurrency", lease_duration=LOCK_LEASE_SECONDS)
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code == 423:
                return None
            raise
    return UUID(str(response.json()["lease_id"]))


def _release(lease: UUID) -> None:
    try:
        with get_client(sync_client=True) as client:
            client.release_concurrency_slots_with_lease(lease)
    except Exception as exc:  # the lease lapses on its own within LOCK_LEASE_SECONDS
        _log().warning("could not release the backup lock's lease %s (it lapses within %.0f s): %s",
                       lease, LOCK_LEASE_SECONDS, exc)


class _LeaseRenewer:
    """Renews the lock's lease every :data:`LOCK_RENEW_SECONDS` until stopped (a daemon thread)."""

    def __init__(self, db: str, lease: UUID) -> None:
        self.db, self.lease = db, lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"drkit-lock-{db}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(LOCK_RENEW_SECONDS):
            try:
                with get_client(sync_client=True) as client:
                    client.renew_concurrency_lease(self.lease, lease_duration=LOCK_LEASE_SECONDS)
            except Exception as exc:  # tried again at the next turn, while the lease still runs
                logging.getLogger("drkit.lock").warning("could not renew the backup lock of %s: %s", self.db, exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _record_holder(db: str, lease: UUID | None) -> None:
    if lease is None:
        return
    holder = {"lease_id": str(lease), "process": this_process(), "since": datetime.now(UTC).isoformat()}
    try:
        Variable.set(_holder_variable(db), holder, overwrite=True)
    except Exception as exc:  # the lock is held either way; only a fast takeover after a crash is lost
        _log().warning("could not record the holder of the backup lock of %s: %s", db, exc)


def _forget_holder(db: str, lease: UUID | None) -> None:
    if lease is None:
        return
    try:
        current = Variable.get(_holder_variable(db))
        if isinstance(current, dict) and current.get("lease_id") == str(lease):
            Variable.unset(_holder_variable(db))
    except Exception as exc:
        _log().warning("could not clear the holder of the backup lock of %s: %s", db, exc)


def _release_dead_holder(db: str) -> bool:
    """Release the lock's lease if its recorded holder is a process of this host that is gone."""
    try:
        holder = Variable.get(_holder_variable(db))
        if not isinstance(holder, dict) or not holder.get("lease_id"):
            return False
        process = holder.get("process")
        if process_gone(process if isinstance(process, dict) else None) is not True:
            return False
        with get_client(sync_client=True) as client:
            client.release_concurrency_slots_with_lease(lease_id=UUID(str(holder["lease_id"])))
        if Variable.get(_holder_variable(db)) == holder:
            Variable.unset(_holder_variable(db))
    except Exception as exc:
        _log().warning("could not check the holder of the backup lock of %s: %s", db, exc)
        return False
    _log().warning("released the backup lock of %s: its holder, %s, is gone (since %s)", db,
                 describe_process(process if isinstance(process, dict) else None), holder.get("since"))
    return True


def progress_reporter(key: str, description: str) -> Callable[[int, int], None]:
    """A (done, total) callback that updates one Prefect progress artifact, at most every second."""
    artifact_id = create_progress_artifact(progress=0.0, key=key, description=description)
    assert isinstance(artifact_id, UUID)
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] < 1.0:
            return
        last[0] = now
        pct = min(100.0, 100.0 * done / total) if total else 0.0
        update_progress_artifact(artifact_id=artifact_id, progress=pct)

    report.artifact_id = artifact_id  # type: ignore[attr-defined]
    return report


def finish_progress(report: Callable[[int, int], None]) -> None:
    update_progress_artifact(artifact_id=report.artifact_id, progress=100.0)  # type: ignore[attr-defined]


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    raw = "-".join(parts).lower()
    return "".join(c if c.isalnum() else "-" for c in raw).strip("-")[:100]


@task(name="record", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[1, 5, 15])
def record(db: str, action: str, actor: str, detail: dict[str, Any], config: str | None) -> None:
    """An audit event for a runbook step (who decided what, when, and what happened)."""
    rt = runtime(config)
    try:
        rt.catalog.audit(actor=actor, action=action, database=db, subject=db, detail=detail)
    finally:
        rt.close()
