"""Domain exceptions: every failure an operator can see has a message that says what to do.

Messages never contain secrets (keys, passwords, connection strings).
"""

from __future__ import annotations


class DrkitError(Exception):
    """Base of every error drkit raises on purpose."""


class NotRetryable:
    """Mixed into an engine's errors that retrying the same step cannot fix (damaged media, a broken log
    chain, a refused name or target): the task retry policy fails them at once."""


class ConfigError(DrkitError):
    """The policy file is missing, malformed, or names something that does not exist."""


class UnknownDatabaseError(ConfigError):
    """A command named a database that the policy file does not define."""


class EncryptionKeyError(DrkitError):
    """The backup encryption key is missing, malformed, or is not the key a backup was written with."""


class IntegrityError(DrkitError):
    """Stored bytes do not match what was written: wrong checksum, bad tag, truncated stream."""


class StoreError(DrkitError):
    """A storage tier could not read or write an object."""


class ObjectNotFoundError(StoreError):
    """The object does not exist in the store."""


class CatalogError(DrkitError):
    """The catalog could not be opened, migrated, or holds no such record."""


class BackupNotFoundError(CatalogError):
    """No backup with that id exists in the catalog."""


class EngineError(DrkitError):
    """The database engine refused or failed a step (connect, start/stop backup, restore)."""


class DatabaseUnreachableError(EngineError):
    """The database server could not be reached with the configured DSN."""


class PrerequisiteError(EngineError):
    """The server is not set up for backups (wal_level, archive_mode, ...); `drkit check DB` lists fixes."""


class WalGapError(EngineError):
    """The WAL archive has a gap or a timeline switch: the log chain is broken until a new full backup."""


class WalConflictError(EngineError):
    """A WAL segment arrived twice with different content."""


class BackupSkipped(DrkitError, NotRetryable):
    """This server must not take the backup now, by the policy's choice (an availability-group replica that is
    not the group's preferred backup replica): not a failure. The engine records it (audit event
    ``backup.skipped``) before raising; the backup task logs the reason and returns no backup."""


class BackupInProgressError(DrkitError):
    """Another backup of the same database is running."""


class RestorePlanError(DrkitError):
    """No restore chain reaches the requested target; the message says what does exist."""


class RestoreError(DrkitError):
    """A restore started but could not be completed or validated."""


class VerificationError(DrkitError):
    """A verification restore found the backup bad (it is now marked corrupt) or could not prove it."""


class ApprovalError(DrkitError):
    """An approval step timed out or was refused; nothing was switched."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of ``exc``'s message (its class name when it has none), for a one-line log or answer."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def safe_summary(exc: BaseException) -> str:
    """One line about an unexpected ``exc`` that may go to a log or an HTTP answer: a :class:`DrkitError`'s own
    first line (never a secret, by this module's rule); for anything else only its class and where it was
    raised, since a library's message may carry a connection string, a URL with credentials or a password."""
    if isinstance(exc, DrkitError):
        return f"{type(exc).__name__}: {first_line(exc)}"
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else ""
    return f"{type(exc).__module__}.{type(exc).__qualname__}{where} (message withheld: it may hold a secret)"
