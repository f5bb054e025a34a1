"""The Engine protocol: what drkit needs from a database server, whatever its kind.

Flows and the backup/restore orchestration talk to this protocol only, so a
flow never touches psycopg or pyodbc directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

Progress = Callable[[int, int], None]  # (bytes done, bytes expected)


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


class Engine(Protocol):
    name: str

    def check(self) -> list[CheckItem]: ...

    def setup(self) -> SetupResult: ...

    def full_backup(self, out: ByteSink, *, progress: Progress | None = None) -> BackupOutcome: ...

    def diff_backup(
        self, out: ByteSink, base: BaseInfo, *, progress: Progress | None = None
    ) -> BackupOutcome: ...
