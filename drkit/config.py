"""The policy file (drkit.yaml): pydantic models, loading and validation.

Every error names the key that is wrong and what was expected, so an operator
can fix the file without reading code. Secrets are never read from the file's
text into messages: DSNs come from the environment (``dsn_env``) or, if
written inline, are held as ``SecretStr`` and only shown as a host/port hint.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from drkit.errors import ConfigError, UnknownDatabaseError
from drkit.traffic.base import ATM_ENDPOINT_TYPES

DEFAULT_CONFIG_NAME = "drkit.yaml"
CONFIG_ENV = "DRKIT_CONFIG"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_CRON_FIELD_RE = re.compile(r"^[0-9*/,\-A-Za-z]+$")
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$")
_POOL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_KEY_PATH_RE = re.compile(r"^[a-z_]+(\.[A-Za-z0-9_-]+)*: ")
DEFAULT_SITE = "local"
DEFAULT_WORK_POOL = "drkit"


def parse_duration(value: Any) -> timedelta:
    """``'30m'``, ``'10s'``, ``'0.5s'``, ``'250ms'``, ``'2h'``, ``'1d'`` or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value >= 0:  # also false for NaN
                return timedelta(seconds=float(value))
        elif isinstance(value, str):
            m = _DURATION_RE.match(value.strip())
            if m:
                n, unit = float(m.group(1)), m.group(2)
                field = {"ms": "milliseconds", "s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[unit]
                return timedelta(**{field: n})
    except OverflowError:  # .inf, 99999999999d: a ConfigError naming the key, not a traceback
        pass
    raise ValueError(f"expected a non-negative duration like '30s', '10m', '2h' or '1d', got {value!r}")


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def _check_cron(expr: str) -> str:
    fields = expr.split()
    if len(fields) != 5 or not all(_CRON_FIELD_RE.match(f) for f in fields):
        raise ValueError(f"expected a 5-field cron expression like '0 2 * * *', got {expr!r}")
    return expr


Cron = Annotated[str, BeforeValidator(lambda v: _check_cron(str(v)))]


def _sqlserver_settings(value: Any, info: ValidationInfo) -> Any:
    """A database's ``sqlserver:`` block, validated as SqlServerSettings; its module (and its T-SQL builders) is
    imported only by a policy that has such a block, not by every command that reads a PostgreSQL policy. Its
    errors keep their key paths (``databases.NAME.sqlserver.KEY``): pydantic nests them under the field."""
    if value is None:
        return None
    from drkit.engines.sqlserver.settings import SqlServerSettings
    return SqlServerSettings.model_validate(value, context=info.context)


if TYPE_CHECKING:
    from drkit.engines.sqlserver.settings import SqlServerSettings

    SqlServerBlock = SqlServerSettings | None
else:
    SqlServerBlock = Annotated[Any, PlainValidator(_sqlserver_settings)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EncryptionConfig(_Model):
    key_env: str = "DRKIT_BACKUP_KEY"


class TierConfig(_Model):
    store: Literal["filesystem", "azure"] = "filesystem"
    path: Path | None = None
    keep_days: int = Field(default=7, ge=0)
    container: str | None = None
    connection_string_env: str | None = None
    account_url: str | None = None
    sas_token_env: str | None = None
    secret_block: str | None = None  # a Prefect Secret block holding the connection string (flows only)
    prefix: str = ""
    access_tier: Literal["Hot", "Cool", "Cold", "Archive"] | None = None
    request_retries: int = Field(default=4, ge=0, le=20)  # Azure SDK retries per request (tasks retry too)
    only_verified: bool | None = None  # default: every tier but the one backups are written to
    takes_over: bool | None = None  # default: true for an Archive-tier tier (moves, not copies)
    rehydrate_priority: Literal["Standard", "High"] = "Standard"
    rehydrate_to: Literal["Hot", "Cool", "Cold"] = "Cool"

    @model_validator(mode="after")
    def _store_needs(self) -> TierConfig:
        if self.store == "filesystem" and self.path is None:
            raise ValueError("a filesystem tier needs 'path' (a directory for its backups)")
        if self.store == "azure" and not self.container:
            raise ValueError("an azure tier needs 'container' (the blob container for its backups)")
        if self.store == "azure" and not (self.connection_string_env or self.account_url):
            raise ValueError("an azure tier needs 'connection_string_env' (name of an environment variable), "
                             "or 'account_url' (with 'sas_token_env' or an Azure AD identity)")
        return self


class Schedules(_Model):
    full: Cron | None = "0 2 * * *"
    diff: Cron | None = "0 */6 * * *"
    log: Cron | None = "*/15 * * * *"
    verify: Cron | None = "30 3 * * *"
    drill: Cron | None = "0 3 * * 0"  # the weekly DR drill (Sunday 03:00 in the database's timezone)


BackupKindName = Literal["full", "diff", "log"]


def _after_fulls() -> list[BackupKindName]:
    return ["full"]


class VerifyConfig(_Model):
    after: list[BackupKindName] = Field(default_factory=_after_fulls)
    checks: list[str] | None = None  # None: the engine's own built-in checks

    def checks_for(self, builtin: Sequence[str]) -> list[str]:
        """The checks to run: the policy's, else the engine's ``builtin`` integrity checks."""
        return list(self.checks) if self.checks is not None else list(builtin)


class ReplicaConfig(_Model):
    """The DR replica: a streaming standby of the primary."""

    dsn: SecretStr | None = None
    dsn_env: str | None = None
    data_dir: Path | None = None  # when drkit manages it on this host (rewind, rebuild, restart)
    slot: str = "drkit_dr"
    max_lag_seconds: float = 5.0
    site: str | None = None  # the site (``sites:``) the replica runs on; with one site, that one

    @model_validator(mode="after")
    def _needs(self) -> ReplicaConfig:
        if (self.dsn is None) == (self.dsn_env is None):
            raise ValueError("set exactly one of 'dsn_env' or 'dsn' for the replica")
        return self


def _check_pool(name: str) -> str:
    if not _POOL_RE.match(name) or name.lower().startswith("prefect"):
        raise ValueError(f"work pool name {name!r}: use letters, digits, '_', '.' or '-' (at most 100, not "
                         "starting with 'prefect', which Prefect reserves)")
    return name


PoolName = Annotated[str, BeforeValidator(lambda v: _check_pool(str(v)))]


class SiteConfig(_Model):
    """``sites.NAME``: a place databases live (a host, a region), served by its own Prefect work pool;
    a worker on that site runs whatever touches its databases' hosts."""

    work_pool: PoolName


def _default_sites() -> dict[str, SiteConfig]:
    return {DEFAULT_SITE: SiteConfig(work_pool=DEFAULT_WORK_POOL)}


class AzureTrafficConfig(_Model):
    """``traffic.azure`` (``router: azure_tm``): the Traffic Manager profile whose weighted endpoints split
    application traffic between the regions."""

    subscription: str = Field(min_length=1)
    resource_group: str = Field(min_length=1)
    profile: str = Field(min_length=1)
    endpoints: dict[str, str]
    """``traffic.primary`` / ``traffic.dr`` → the profile's endpoint: ``name`` (an azureEndpoints one) or
    ``TYPE/name`` (TYPE: azureEndpoints, externalEndpoints or nestedEndpoints)."""
    api_version: str = Field(default="2022-04-01", min_length=1)

    @field_validator("endpoints")
    @classmethod
    def _endpoint_specs(cls, v: dict[str, str]) -> dict[str, str]:
        for name, spec in v.items():
            kind, sep, resource = spec.rpartition("/")
            if not resource or (sep and kind not in ATM_ENDPOINT_TYPES):
                raise ValueError(f"{name}: expected 'NAME' or 'TYPE/NAME' with TYPE one of "
                                 f"{', '.join(ATM_ENDPOINT_TYPES)}, got {spec!r}")
        return v


class TrafficConfig(_Model):
    """How clients reach the database and the application: the router, and its server names."""

    router: Literal["haproxy", "azure_tm", "endpoint"] = "endpoint"
    socket: Path | None = None  # haproxy: the runtime API socket (stats socket ... level admin)
    state_file: Path | None = None  # haproxy: server-state file, so a reload keeps the weights
    app_backend: str = "app"
    db_backend: str = "db"
    primary: str = "primary"  # server / endpoint names
    dr: str = "dr"
    azure: AzureTrafficConfig | None = None  # azure_tm: subscription, resource_group, profile, endpoints

    @model_validator(mode="after")
    def _needs(self) -> TrafficConfig:
        if self.router == "haproxy" and self.socket is None:
            raise ValueError("a haproxy router needs 'socket' (its runtime API socket)")
        if self.router == "azure_tm":
            if self.azure is None:
                raise ValueError("an azure_tm router needs 'azure' (subscription, resource_group, profile, "
                                 "endpoints)")
            absent = [n for n in (self.primary, self.dr) if n not in self.azure.endpoints]
            if absent:
                raise ValueError(f"azure.endpoints: no endpoint for {', '.join(absent)} (the names given by "
                                 "traffic.primary and traffic.dr)")
        return self


class HealthConfig(_Model):
    """Probes: the application's health URLs per region, and how often/how many times to try."""

    primary_url: str | None = None
    dr_url: str | None = None
    interval: Duration = timedelta(seconds=30)
    retries: int = Field(default=3, ge=0, le=100)
    timeout: Duration = timedelta(seconds=2)


class FailbackConfig(_Model):
    hold: Duration = timedelta(minutes=10)
    steps: list[int] = Field(default_factory=lambda: [10, 50, 100])
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    max_latency_ms: float = Field(default=500, gt=0)
    probe_interval: Duration = timedelta(seconds=5)


class DatabaseConfig(_Model):
    engine: Literal["postgres", "sqlserver"]
    site: str | None = None  # the site (``sites:``) its primary runs on; with one site, that one
    dsn: SecretStr | None = None
    dsn_env: str | None = None
    data_dir: Path | None = None
    bin_dir: Path | None = None
    os_user: str | None = None
    wal_spool: Path | None = None
    schedules: Schedules = Field(default_factory=Schedules)
    timezone: str = "UTC"
    rpo_target: Duration = timedelta(minutes=30)  # the most data a loss may cost (DR drills compare with it)
    rto_target: Duration = timedelta(hours=1)  # the longest a recovery to a writable, validated copy may take
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    replica: ReplicaConfig | None = None
    traffic: TrafficConfig = Field(default_factory=TrafficConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    failback: FailbackConfig = Field(default_factory=FailbackConfig)
    sqlserver: SqlServerBlock = None  # engine: sqlserver; its `database` defaults to the policy name

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (use an IANA name like 'UTC' or 'Europe/Berlin')") from None
        return v

    @field_validator("sqlserver")
    @classmethod
    def _sqlserver_only_for_its_engine(cls, v: SqlServerSettings | None, info: ValidationInfo
                                       ) -> SqlServerSettings | None:
        if v is not None and info.data.get("engine", "sqlserver") != "sqlserver":  # a bad engine is its own error
            raise ValueError("only an 'engine: sqlserver' database takes a 'sqlserver' block")
        return v

    @model_validator(mode="after")
    def _dr_capabilities(self) -> DatabaseConfig:
        """A DR step the engine cannot do for this policy is refused on load, not half-way through a runbook."""
        if self.replica is None or self.engine != "sqlserver":
            return self
        if self.sqlserver is None or not self.sqlserver.availability_group:
            raise ValueError("sqlserver.availability_group: required with 'replica': SQL Server fails over through "
                             "the availability group both replicas belong to; name it")
        postgres_only = [k for k in ("data_dir", "slot") if k in self.replica.model_fields_set]
        if postgres_only:
            raise ValueError(f"replica.{postgres_only[0]}: PostgreSQL only (a streaming standby drkit rewinds); a "
                             "SQL Server DR replica is its availability-group replica, reached by dsn or dsn_env")
        return self

    @model_validator(mode="after")
    def _no_diff_on_a_secondary(self) -> DatabaseConfig:
        if self.sqlserver is not None and self.sqlserver.backup_replica == "preferred" and self.schedules.diff:
            raise ValueError("schedules.diff: must be null with sqlserver.backup_replica: preferred: the preferred "
                             "backup replica may be a secondary, where SQL Server takes no differential backup")
        return self

    @model_validator(mode="after")
    def _needs(self) -> DatabaseConfig:
        if (self.dsn is None) == (self.dsn_env is None):
            raise ValueError("set exactly one of 'dsn_env' (name of an environment variable) or 'dsn'")
        if self.engine == "postgres" and self.data_dir is None:
            raise ValueError("a postgres database needs 'data_dir' (the server's data directory)")
        return self


class ApprovalsConfig(_Model):
    """Who may approve a runbook's switch, and how many of them must.

    Every approver proves who they are with a code from an authenticator app (``drkit approvers enroll``).
    ``required`` distinct approvers must approve a switch (failover, failback, corruption switch); a
    rejection by any one of them settles it.
    """

    approvers: list[str] = Field(default_factory=list)
    required: int = Field(default=1, ge=1)
    failover_timeout: Duration = timedelta(minutes=30)
    restore_timeout: Duration = timedelta(hours=1)

    @model_validator(mode="after")
    def _enough_approvers(self) -> ApprovalsConfig:
        if self.required > 1 and len(set(self.approvers)) < self.required:
            raise ValueError(f"required: {self.required} distinct approvers must approve, but approvers lists "
                             f"{len(set(self.approvers))}; list at least {self.required}")
        return self


class MetricsConfig(_Model):
    """``metrics``: the HTTP listener ``drkit serve`` starts (Prometheus ``/metrics``, the Alertmanager receiver).

    ``listen``: ``host:port`` (null: no listener); ``alert_token_env``: the environment variable holding the
    bearer token the Alertmanager receiver requires."""

    listen: str | None = "127.0.0.1:9187"
    alert_token_env: str = "DRKIT_ALERT_TOKEN"  # noqa: S105 - the name of a variable, not a token

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str | None) -> str | None:
        if v is not None:
            parse_listen(v)
        return v


def parse_listen(value: str, *, any_port: bool = False) -> tuple[str, int]:
    """``'127.0.0.1:9187'``, ``'[::1]:9187'`` or ``':9187'`` (all addresses) -> (host, port); ``any_port``
    also takes port 0 (a free one)."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not (0 if any_port else 1) <= int(port) < 65536:
        raise ValueError(f"expected host:port like '127.0.0.1:9187', got {value!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if any(c.isspace() or c in "[]/" for c in host):
        raise ValueError(f"expected host:port like '127.0.0.1:9187', got {value!r}")
    return host, int(port)


def _default_tiers() -> dict[str, TierConfig]:
    return {"local": TierConfig(store="filesystem", path=Path("var/drkit/local"), keep_days=7)}


class Policy(_Model):
    catalog: str = Field(default="sqlite:///var/drkit/catalog.db", repr=False)  # a URL may hold a password
    scratch_dir: Path = Path("var/drkit/scratch")
    encryption: EncryptionConfig = Field(default_factory=EncryptionConfig)
    tiers: dict[str, TierConfig] = Field(default_factory=_default_tiers)
    backup_tier: str = "local"
    retention_schedule: Cron | None = "0 4 * * *"  # the daily retention sweep (UTC)
    catalog_check_schedule: Cron | None = "0 6 * * *"  # the daily `drkit catalog check --repair` (UTC)
    sites: dict[str, SiteConfig] = Field(default_factory=_default_sites)
    control_pool: PoolName | None = None  # catalog-wide flows and DR runbooks; None: the first site's pool
    databases: dict[str, DatabaseConfig] = Field(default_factory=dict)
    approvals: ApprovalsConfig = Field(default_factory=ApprovalsConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    notifications: dict[str, list[str]] = Field(default_factory=dict)
    base_dir: Path = Field(default=Path("."), exclude=True)

    @field_validator("databases", mode="before")
    @classmethod
    def _sqlserver_database_is_the_name(cls, v: Any) -> Any:
        """A ``sqlserver:`` block without ``database`` means the server database named like the policy's."""
        if not isinstance(v, dict):
            return v
        out = {}
        for name, cfg in v.items():
            block = cfg.get("sqlserver") if isinstance(cfg, dict) else None
            if isinstance(block, dict) and "database" not in block:
                cfg = {**cfg, "sqlserver": {"database": name, **block}}
            out[name] = cfg
        return out

    @field_validator("databases", "tiers", "sites")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not _NAME_RE.match(name):
                raise ValueError(
                    f"name {name!r} must start with a lowercase letter and use only a-z, 0-9, '_' or '-'"
                )
        return v

    @model_validator(mode="after")
    def _backup_tier_exists(self) -> Policy:
        if self.backup_tier not in self.tiers:
            raise ValueError(f"backup_tier {self.backup_tier!r} is not one of the tiers: {sorted(self.tiers)}")
        return self

    @model_validator(mode="after")
    def _sites_known(self) -> Policy:
        """Each pool serves one site; each database names known sites (required once there are several);
        with several sites a DR replica lives on another site than its primary (it must survive the loss
        of the primary's site). With one site (the default, everything on one host) both are that site."""
        if not self.sites:
            raise ValueError(f"sites: name at least one site, or leave 'sites' out for the single site "
                             f"{DEFAULT_SITE!r} on work pool {DEFAULT_WORK_POOL!r}")
        owner: dict[str, str] = {}
        for name, site in self.sites.items():
            if site.work_pool in owner:
                raise ValueError(f"sites.{name}.work_pool: {site.work_pool!r} is already the work pool of site "
                                 f"{owner[site.work_pool]!r}; each site has a pool of its own")
            owner[site.work_pool] = name
        known = ", ".join(self.sites)
        several = len(self.sites) > 1
        for db, cfg in self.databases.items():
            for key, site_name in ((f"databases.{db}.site", cfg.site),
                                   *(((f"databases.{db}.replica.site", cfg.replica.site),) if cfg.replica else ())):
                if site_name is None and several:
                    raise ValueError(f"{key}: required when the policy names several sites ({known})")
                if site_name is not None and site_name not in self.sites:
                    raise ValueError(f"{key}: unknown site {site_name!r}; the policy's sites are {known}")
            if several and cfg.replica is not None and cfg.replica.site == cfg.site:
                raise ValueError(f"databases.{db}.replica.site: {cfg.site!r} is the primary's site too; a DR "
                                 "replica must be on another site, to survive the loss of the primary's")
        return self

    # -- lookups ---------------------------------------------------------------------------------

    def site_of(self, db: str) -> str:
        """The site of ``db``'s primary (with one site: that one)."""
        return self.database(db).site or next(iter(self.sites))

    def replica_site_of(self, db: str) -> str | None:
        """The site of ``db``'s DR replica (None: no replica)."""
        replica = self.database(db).replica
        return None if replica is None else (replica.site or self.site_of(db))

    def work_pool_of(self, db: str) -> str:
        """The work pool of the site ``db``'s primary runs on: where its backups and restores run."""
        return self.sites[self.site_of(db)].work_pool

    def control_work_pool(self) -> str:
        """Where catalog-wide flows and the DR runbooks run: ``control_pool``, else the first site's pool."""
        return self.control_pool or next(iter(self.sites.values())).work_pool


    def database(self, name: str) -> DatabaseConfig:
        try:
            return self.databases[name]
        except KeyError:
            known = ", ".join(sorted(self.databases)) or "none"
            raise UnknownDatabaseError(
                f"unknown database {name!r}: the policy file defines {known}"
            ) from None

    def resolve(self, path: Path) -> Path:
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    def catalog_url(self) -> str:
        prefix = "sqlite:///"
        if self.catalog.startswith(prefix) and not self.catalog.startswith(prefix + "/"):
            rel = self.catalog[len(prefix):]
            if rel and rel != ":memory:":
                return prefix + str(self.resolve(Path(rel)))
        return self.catalog

    def tier_path(self, tier: str) -> Path:
        cfg = self.tiers[tier]
        if cfg.path is None:
            raise ConfigError(f"tiers.{tier}: has no 'path'")
        return self.resolve(cfg.path)

    def verified_only_tiers(self) -> frozenset[str]:
        """Tiers that take a backup only once its verification restore passed."""
        return frozenset(n for n, t in self.tiers.items()
                         if (t.only_verified if t.only_verified is not None else n != self.backup_tier))

    def move_tiers(self) -> frozenset[str]:
        """Tiers that take a backup over from the tier before them (Azure Archive), rather than copy it."""
        return frozenset(n for n, t in self.tiers.items()
                         if (t.takes_over if t.takes_over is not None else t.access_tier == "Archive"))

    def wal_spool(self, db: str) -> Path:
        cfg = self.database(db)
        return self.resolve(cfg.wal_spool or Path("var/drkit/spool") / db)


def resolve_replica_dsn(db_name: str, cfg: DatabaseConfig, environ: Mapping[str, str] | None = None) -> str:
    """The DR replica's connection string; errors name the key or variable, never the value."""
    if cfg.replica is None:
        raise ConfigError(f"databases.{db_name}.replica: not configured; the DR runbooks need a replica")
    env = os.environ if environ is None else environ
    if cfg.replica.dsn is not None:
        return cfg.replica.dsn.get_secret_value()
    assert cfg.replica.dsn_env is not None
    value = env.get(cfg.replica.dsn_env, "")
    if not value:
        raise ConfigError(f"databases.{db_name}.replica.dsn_env: environment variable {cfg.replica.dsn_env} "
                          "is not set")
    return value


def resolve_dsn(db_name: str, cfg: DatabaseConfig, environ: Mapping[str, str] | None = None) -> str:
    """The connection string for a database; an operator-facing error names the variable, never its value."""
    env = os.environ if environ is None else environ
    if cfg.dsn is not None:
        return cfg.dsn.get_secret_value()
    assert cfg.dsn_env is not None
    value = env.get(cfg.dsn_env, "")
    if not value:
        raise ConfigError(
            f"databases.{db_name}.dsn_env: environment variable {cfg.dsn_env} is not set; "
            f"export it with the connection string of {db_name!r}"
        )
    return value


def default_bin_dir() -> Path:
    """``pg_config --bindir``, else Debian's PostgreSQL 15 location."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            candidate = Path(out.stdout.strip())
            if (candidate / "pg_ctl").exists():
                return candidate
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "pg_ctl").exists():
            return candidate
    return Path("/usr/lib/postgresql/15/bin")


def _format_validation_error(exc: ValidationError, source: str) -> str:
    """One line (the CLI prints errors as one line): every problem as ``key.path: what``, joined by '; '."""
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if not loc and _KEY_PATH_RE.match(msg):  # a check across keys, whose message names the key itself
            problems.append(" ".join(msg.split()))
            continue
        loc = loc or "(top level)"
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see README 'Policy file')"
        elif err["type"] == "missing":
            msg = "required key is missing"
        problems.append(f"{loc}: {' '.join(msg.split())}")
    return f"{source}: invalid policy file: " + "; ".join(problems)


def parse_policy(data: Any, *, base_dir: Path, source: str = "policy") -> Policy:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys (catalog, tiers, databases, ...)")
    try:
        return Policy.model_validate({**data, "base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def find_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    chosen = Path(path) if path else Path(env[CONFIG_ENV]) if env.get(CONFIG_ENV) else Path(DEFAULT_CONFIG_NAME)
    if not chosen.is_file():
        how = "--config" if path else f"${CONFIG_ENV}" if env.get(CONFIG_ENV) else "the current directory"
        raise ConfigError(f"policy file {chosen} not found (from {how}); pass --config PATH or set ${CONFIG_ENV}")
    return chosen


def load_policy(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Policy:
    chosen = find_config(path, environ)
    try:
        data = yaml.safe_load(chosen.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{chosen}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                          "save the policy file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{chosen}: cannot read the policy file: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(f"{chosen}: not valid YAML{where}: {problem}") from None
    return parse_policy(data, base_dir=chosen.resolve().parent, source=str(chosen))
