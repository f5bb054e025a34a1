"""SQL Server errors as drkit domain errors, and the scrubbing that keeps secrets out of every message.

A driver error (pyodbc's ``Error``: SQLSTATE, then ``[driver][SQL Server]text (native)``) becomes the
:class:`SqlServerError` subclass its native error numbers mean, with a message that says what failed and
what to do. The SAS token and the DSN password never reach a message: :func:`scrub` removes them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from drkit.engines.sqlserver.tsql import Batch
from drkit.errors import DatabaseUnreachableError, EngineError, NotRetryable, PrerequisiteError


class SqlServerError(EngineError):
    """SQL Server refused a batch. ``numbers`` are its native error numbers, ``sqlstate`` the ODBC state."""

    def __init__(self, message: str, *, numbers: tuple[int, ...] = (), sqlstate: str = "") -> None:
        super().__init__(message)
        self.numbers = numbers
        self.sqlstate = sqlstate


class BackupDeviceError(SqlServerError):
    """The server could not open, write or read a backup device (3201, 3202, 3203): access, not data."""


class BackupMediaError(SqlServerError, NotRetryable):
    """A backup set is damaged or not a valid backup (3241, 3242, 3243, 3183, 3189): the data is bad."""


class LogChainError(SqlServerError, NotRetryable):
    """A log backup does not join the database's restore point (4305, 4326) or the previous log backup."""


class LogBackupNotPossibleError(SqlServerError, PrerequisiteError):
    """BACKUP LOG cannot run: SIMPLE recovery model (4208) or no full backup yet (4214)."""


class RestoreTargetError(SqlServerError, NotRetryable):
    """The restore target database exists, or belongs to another database (1801, 3154)."""


class CorruptionFoundError(SqlServerError, NotRetryable):
    """DBCC CHECKDB reported consistency errors in the restored database."""


class QueryTimeoutError(SqlServerError):
    """A batch ran longer than its timeout and was cancelled."""


class AvailabilityGroupError(SqlServerError):
    """An availability-group step was refused, or the group is not in a state that allows it."""


# -- secrets -----------------------------------------------------------------------------------------

_SIG_RE = re.compile(r"(?i)(sig=)[^&\s'\"]+")
_PWD_RE = re.compile(r"(?i)\b(pwd|password)\s*=\s*(\{[^}]*\}|[^;]*)")
_SECRET_LITERAL_RE = re.compile(r"(?i)(SECRET\s*=\s*N?')[^']*(')")


def scrub(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` without secrets: known values, SAS signatures, passwords, credential secrets."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    text = _SIG_RE.sub(r"\1***", text)
    text = _PWD_RE.sub(r"\1=***", text)
    return _SECRET_LITERAL_RE.sub(r"\1***\2", text)


def dsn_password(dsn: str) -> str | None:
    """The password in an ODBC connection string (``PWD=…`` or ``Password={…}``), to scrub it elsewhere."""
    m = _PWD_RE.search(dsn)
    return (m.group(2).strip("{}") or None) if m else None


# -- driver errors -----------------------------------------------------------------------------------

_NATIVE_RE = re.compile(r"\((\d+)\)(?=\s*(?:\(SQL[A-Za-z]+\)|;|$))")
_PREFIX_RE = re.compile(r"(?:^|;\s*)(?:\[[^\]]*\]\s*)+")
_TRAILER_RE = re.compile(r"\s*\(\d+\)\s*(?:\(SQL[A-Za-z]+\))?\s*(?=;|$)")


def parse_driver_error(exc: BaseException) -> tuple[str, tuple[int, ...], str]:
    """(SQLSTATE, native error numbers, message text without driver prefixes) of a pyodbc-style error.

    pyodbc formats ``args[1]`` as ``[SQLSTATE] [driver][SQL Server]text (native) (SQLFunction)``,
    further diagnostic records appended as ``; [SQLSTATE] [..]text (native)``.
    """
    args = exc.args
    if len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        sqlstate, message = args[0], args[1]
    else:
        sqlstate, message = "", str(exc)
    numbers = tuple(int(n) for n in _NATIVE_RE.findall(message))
    text = _TRAILER_RE.sub("", message)
    parts = [p.strip() for p in _PREFIX_RE.split(text) if p.strip()]
    return sqlstate, numbers, " / ".join(parts) or message


CONSISTENCY_ERRORS = frozenset({
    *range(2501, 2600),  # DBCC table and index checks (2508 counts, 2533 page not allocated, 2570 data purity)
    *range(5228, 5271),  # DBCC internal consistency (the page, the row, the slot)
    *range(7900, 8000),  # system catalog, FILESTREAM and metadata checks (7965, 7985, 7995)
    *range(8900, 9000),  # allocation and consistency (8909, 8928, 8939, 8976, 8978, 8989 the summary)
    824,                 # a page failed its checksum or torn-page check: the data read back is damaged
}) - {7926, 7928, 7929, 8921, 8967}
"""DBCC CHECKDB error numbers that report damage in the database checked. Left out: 7926/7928/7929 (the
internal snapshot could not be created), 8921 (failed while collecting facts: possibly tempdb out of
space) and 8967 (an internal DBCC error) say CHECKDB could not run, not what it found."""


def is_consistency_error(numbers: Sequence[int]) -> bool:
    """True when DBCC CHECKDB's error numbers report damage (only then is a backup corrupt): a timeout,
    tempdb or the log full (1105, 9002), a lost connection prove nothing about the backup."""
    return any(n in CONSISTENCY_ERRORS for n in numbers)


_DEVICE_ERRORS = {3201, 3202, 3203, 3204, 18204, 18210}
_MEDIA_ERRORS = {3241, 3242, 3243, 3183, 3189, 3266}
_CHAIN_ERRORS = {4305, 4326, 4330, 4319}
_TARGET_ERRORS = {1801, 3154, 1834, 5133, 3634}

DrkitErrorLike = SqlServerError | DatabaseUnreachableError


def translate_error(
    exc: BaseException, batch: Batch, *, endpoint: str, timeout: int, secrets: Sequence[str] = ()
) -> DrkitErrorLike:
    """The domain error for a driver error raised while running ``batch``."""
    sqlstate, numbers, text = parse_driver_error(exc)
    text = scrub(text, secrets)
    nums = set(numbers)
    where = f"SQL Server error {', '.join(map(str, numbers))}" if numbers else f"SQLSTATE {sqlstate or '?'}"
    head = f"{batch.label} failed ({where}): {text}"
    if sqlstate.startswith("08") or sqlstate == "28000" or nums & {18456, 4060, 18452}:
        return DatabaseUnreachableError(
            f"cannot reach SQL Server at {endpoint} for {batch.label} ({where}): {text}; check the server is up, "
            "the login and password in the DSN variable, and that the login may connect")
    if sqlstate in ("HYT00", "HYT01"):
        return QueryTimeoutError(
            f"{batch.label} did not finish within {timeout} s and was cancelled; raise sqlserver."
            f"{'long_timeout_s' if batch.long_running else 'query_timeout_s'} in the policy file if that is "
            "expected for this database", numbers=numbers, sqlstate=sqlstate)
    kind, advice = _classify(nums)
    return kind(f"{head}{advice}", numbers=numbers, sqlstate=sqlstate)


def _classify(nums: set[int]) -> tuple[type[SqlServerError], str]:
    """The error class for native error numbers, and what to tell the operator (after the server's text)."""
    if nums & _CHAIN_ERRORS:
        return LogChainError, (
            ". The log backups do not join: one between the database's current point and this "
            "backup is missing or was skipped (a log backup taken outside drkit, or a lost one). Run "
            "`drkit import-history DB` to import backups taken outside drkit, restore to a point before "
            "the gap, or take a new full backup to start a new chain")
    if nums & {4208}:
        return LogBackupNotPossibleError, (
            ". The database uses the SIMPLE recovery model, which keeps no log to back up; "
            "ALTER DATABASE … SET RECOVERY FULL, then take a full backup to start the log chain")
    if nums & {4214}:
        return LogBackupNotPossibleError, (
            ". There is no full backup to start the log chain from; take one first (`drkit backup full DB`)")
    if nums & _DEVICE_ERRORS:
        return BackupDeviceError, (
            ". For TO URL: check that the SAS token (sqlserver.sas_token_env) is valid, not expired, "
            "and grants read, write, list and delete on the container, and that the container exists; for "
            "TO DISK: the SQL Server service account must be able to read and write the backup directory, "
            "and it must have free space")
    if nums & _TARGET_ERRORS:
        return RestoreTargetError, (
            ". drkit restores only into a new database name and never overwrites one; "
            "pick another name or drop the existing database yourself")
    if nums & _MEDIA_ERRORS:
        return BackupMediaError, (
            ". The backup set is damaged, incomplete or not a SQL Server backup; do not rely on it: "
            "restore from another backup and take a new full backup")
    if any(41000 <= n < 42000 for n in nums) or nums & {19405, 19406}:
        return AvailabilityGroupError, ". See the availability group's dashboard for its state"
    return SqlServerError, ""
