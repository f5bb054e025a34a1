"""The ``sqlserver:`` block of a database in the policy file, and the values derived from it.

:class:`SqlServerSettings` is the policy's typed model for the block (``drkit.config`` declares
``databases.NAME.sqlserver`` with it): unknown keys and wrong types are refused when the policy is
loaded, each error naming its key path. ``database`` defaults to the policy's name for the database.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from drkit.engines.sqlserver import tsql
from drkit.errors import ConfigError, PrerequisiteError

BLOB_LIMIT_BYTES = 190 * 2**30
"""A block blob written by BACKUP TO URL holds at most 50,000 blocks × 4 MiB (~195 GiB); keep a margin."""

MAX_STRIPE_GIB = 190


class SqlServerVerifySettings(BaseModel):
    """``sqlserver.verify``: where verification restores run."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True)

    instance_dsn_env: str | None = None
    """Environment variable with the ODBC connection string of another instance to restore and check on
    (dbatools' Test-DbaLastBackup -Destination); it must read the same backup devices. Default: this server."""


class SqlServerSettings(BaseModel):
    """The ``sqlserver:`` block of a database in the policy file."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True)

    database: str
    """The database's name on the server (policy names are lowercase; server names need not be)."""
    target: Literal["url", "disk"] = "disk"
    url: str | None = Field(default=None, validate_default=True)
    """``https://ACCOUNT.blob.core.windows.net/CONTAINER[/PREFIX]`` for ``target: url``; no SAS in it."""
    sas_token_env: str | None = None
    """Environment variable holding the container's SAS token (with or without the leading '?')."""
    url_tier: str | None = None
    """The policy tier that is this container, so URL backups count as copies in it (optional)."""
    disk_path: str | None = Field(default=None, validate_default=True)
    """Backup directory as the SQL Server sees it (``target: disk``, and staging for restores)."""
    local_path: str | None = None
    """The same directory as drkit sees it (a share or the same host); default: ``disk_path``."""
    certificate: str | None = None
    """Server certificate for ``ENCRYPTION (ALGORITHM = AES_256, SERVER CERTIFICATE = …)``."""
    availability_group: str | None = None
    backup_replica: Literal["connected", "preferred"] = "connected"
    """``connected``: back up on the server the DSN reaches. ``preferred``: only when that server is the
    availability group's preferred backup replica (``sys.fn_hadr_backup_is_preferred_replica``); elsewhere a
    backup is skipped (recorded, not failed), so drkit can be scheduled beside every replica, as Ola
    Hallengren's jobs are. The preferred replica may be a secondary, so it needs ``copy_only: true``."""
    copy_only: bool = Field(default=False, validate_default=True)
    """Take full backups ``COPY_ONLY``: they leave the differential base alone (beside another tool's fulls)
    and are the only full backup SQL Server takes on an AG secondary. Differentials are never copy-only, and
    log backups never are either: a copy-only log does not truncate the log, continues no chain, and is not
    supported on a secondary."""
    compression: bool = True
    max_stripe_gib: int = 100
    """Largest blob of a striped URL backup, in GiB (1..190: a block blob holds ~195 GiB)."""
    restore_data_path: str | None = None
    restore_log_path: str | None = None
    query_timeout_s: int = Field(default=60, ge=0)
    long_timeout_s: int = Field(default=0, ge=0)
    """0: no limit (a BACKUP of a large database runs for hours)."""
    login_timeout_s: int = Field(default=15, ge=0)
    verify: SqlServerVerifySettings = Field(default_factory=SqlServerVerifySettings)

    @field_validator("database", "certificate", "availability_group")
    @classmethod
    def _server_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return tsql.validate_name(value, "the name")
        except tsql.NameRefusedError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("backup_replica")
    @classmethod
    def _preferred_needs_a_group(cls, value: str, info: ValidationInfo) -> str:
        if value == "preferred" and not info.data.get("availability_group"):
            raise ValueError("'preferred' follows an availability group's backup preference: set "
                             "availability_group, or use backup_replica: connected")
        return value

    @field_validator("copy_only")
    @classmethod
    def _secondary_fulls_are_copy_only(cls, value: bool, info: ValidationInfo) -> bool:
        if not value and info.data.get("backup_replica") == "preferred":
            raise ValueError("must be true with backup_replica: preferred: the preferred backup replica may be "
                             "a secondary, where SQL Server takes only COPY_ONLY full backups")
        return value

    @field_validator("url")
    @classmethod
    def _container_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("target") != "url":
            return value
        if not value:
            raise ValueError("a URL target needs the container URL (https://ACCOUNT.blob.core.windows.net/CONTAINER)")
        try:
            split_container_url(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("disk_path")
    @classmethod
    def _disk_directory(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("target") == "disk" and not value:
            raise ValueError("a disk target needs the backup directory as the server sees it")
        return value

    @field_validator("max_stripe_gib")
    @classmethod
    def _stripe_size(cls, value: int) -> int:
        if not 1 <= value <= MAX_STRIPE_GIB:
            raise ValueError(f"expected 1..{MAX_STRIPE_GIB} (a block blob holds ~195 GiB), got {value}")
        return value

    @classmethod
    def from_mapping(cls, db: str, data: Mapping[str, Any] | None) -> SqlServerSettings:
        """The block for database ``db`` outside a policy file; errors name the key like the policy's."""
        where = f"databases.{db}.sqlserver"
        try:
            return cls.model_validate({"database": db, **(data or {})})
        except ValidationError as exc:
            raise ConfigError(describe_errors(exc, where)) from None

    @property
    def staging_local(self) -> Path | None:
        chosen = self.local_path or self.disk_path
        return Path(chosen) if chosen else None


def describe_errors(exc: ValidationError, where: str) -> str:
    """Every problem as ``where.key: what``, joined by '; ' (one line)."""
    problems = []
    for err in exc.errors():
        loc = ".".join([where, *(str(p) for p in err["loc"])])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key; known keys: {', '.join(sorted(SqlServerSettings.model_fields))}"
        problems.append(f"{loc}: {' '.join(msg.split())}")
    return "; ".join(problems)


def split_container_url(url: str) -> tuple[str, str]:
    """(container URL, blob prefix) of ``https://acct.blob.core.windows.net/container[/prefix]``."""
    parts = urlsplit(url)
    if parts.query or "?" in url or "sig=" in url:
        raise ConfigError("the URL must not hold a SAS token; put the token in the variable named by "
                          "sqlserver.sas_token_env")
    if parts.scheme != "https" or not parts.netloc:
        raise ConfigError(f"expected an https:// Azure Blob container URL, got {url!r} (SQL Server accepts "
                          "only https for BACKUP TO URL)")
    segments = [s for s in parts.path.split("/") if s]
    if not segments:
        raise ConfigError(f"{url!r} names no container: add /CONTAINER to the account URL")
    for s in segments:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", s):
            raise ConfigError(f"{url!r}: path segment {s!r} may use only letters, digits, '.', '_' and '-'")
    return f"https://{parts.netloc}/{segments[0]}", "/".join(segments[1:])


def stripe_count(size_bytes: int, max_stripe_bytes: int) -> int:
    """Stripes so that each blob stays ≤ ``max_stripe_bytes`` (1..64); refuses a database too big for URL."""
    wanted = max(1, math.ceil(max(size_bytes, 0) / max_stripe_bytes))
    if wanted <= tsql.MAX_STRIPES:
        return wanted
    if size_bytes / tsql.MAX_STRIPES > BLOB_LIMIT_BYTES:
        raise PrerequisiteError(
            f"the database is {size_bytes / 2**40:.1f} TiB: even {tsql.MAX_STRIPES} stripes would exceed the "
            f"~{BLOB_LIMIT_BYTES // 2**30} GiB a block blob can hold; back it up with target: disk")
    return tsql.MAX_STRIPES


def dsn_hint(dsn: str) -> str:
    """``server/database`` of an ODBC connection string, for messages; never the password."""
    pairs: dict[str, str] = {}
    for m in _DSN_PAIR.finditer(dsn):
        pairs[m.group(1).strip().lower()] = m.group(2).strip("{}")
    server = next((pairs[k] for k in _SERVER_KEYS if pairs.get(k)), "?")
    database = next((pairs[k] for k in ("database", "initial catalog") if pairs.get(k)), "")
    return f"{server}/{database}" if database else server


def dsn_with_server(dsn: str, server: str) -> str:
    """``dsn`` reaching ``server`` (an availability replica's name) instead, with the same ``tcp:`` prefix and
    port, login and options: the replicas of a group share them."""
    for m in _DSN_PAIR.finditer(dsn):
        if m.group(1).strip().lower() in _SERVER_KEYS:
            value = m.group(2).strip("{}")
            tcp = "tcp:" if value.lower().startswith("tcp:") else ""
            port = "," + value.rsplit(",", 1)[1] if "," in value and "\\" not in server else ""
            return dsn[:m.start(2)] + tcp + server + port + dsn[m.end(2):]
    return f"{dsn.rstrip(';')};Server={server}"


_DSN_PAIR = re.compile(r"\s*([^=;]+?)\s*=\s*(\{(?:[^}]|\}\})*\}|[^;]*)\s*(?:;|$)")
_SERVER_KEYS = ("server", "address", "addr", "data source")


def join_server_path(folder: str, name: str) -> str:
    """``folder`` + ``name`` with the server's separator (backslash on Windows paths, else '/')."""
    sep = "\\" if "\\" in folder and "/" not in folder else "/"
    return folder.rstrip("\\/") + sep + name
