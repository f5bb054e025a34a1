"""The policy file (drkit.config): loading, validation errors that name the key, secrets kept out of messages."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from drkit.config import (
    CONFIG_ENV,
    ConfigError,
    find_config,
    load_policy,
    parse_policy,
    resolve_dsn,
)
from drkit.errors import UnknownDatabaseError

PASSWORD = "Tr0ub4dor-s3cret"

VALID = """\
catalog: sqlite:///state/catalog.db
tiers:
  local: {store: filesystem, path: backups/local, keep_days: 7}
  archive: {store: filesystem, path: /srv/drkit/archive, keep_days: 2555}
databases:
  orders:
    engine: postgres
    dsn_env: ORDERS_DSN
    data_dir: /var/lib/postgresql/15/main
    schedules: {full: "0 2 * * *", diff: "0 */6 * * *", log: "*/15 * * * *"}
    timezone: Europe/Berlin
  billing:
    engine: sqlserver
    dsn_env: BILLING_DSN
approvals:
  approvers: [alice@example.com]
  failover_timeout: 45m
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def error_for(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_policy(write(tmp_path / "drkit.yaml", text))
    return str(err.value)


def orders(extra: str, *, base: str = "engine: postgres\ndsn_env: ORDERS_DSN\ndata_dir: /pg\n") -> str:
    """A policy with one database 'orders' whose block is ``base`` plus ``extra``."""
    body = textwrap.indent(base + textwrap.dedent(extra), "    ")
    return "databases:\n  orders:\n" + body


# -- loading -----------------------------------------------------------------------------------------


def test_load_a_valid_policy(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path / "drkit.yaml", VALID))
    assert sorted(policy.databases) == ["billing", "orders"]
    db = policy.database("orders")
    assert db.engine == "postgres"
    assert db.dsn_env == "ORDERS_DSN"
    assert db.data_dir == Path("/var/lib/postgresql/15/main")
    assert db.schedules.diff == "0 */6 * * *"
    assert db.timezone == "Europe/Berlin"
    assert policy.tiers["local"].keep_days == 7
    assert policy.approvals.failover_timeout == timedelta(minutes=45)
    assert policy.backup_tier == "local"


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path / "drkit.yaml", ""))
    assert policy.databases == {}
    assert "local" in policy.tiers


@pytest.mark.parametrize(("value", "expected"), [
    ("30m", timedelta(minutes=30)), ("10s", timedelta(seconds=10)), ("2h", timedelta(hours=2)),
    ("1d", timedelta(days=1)), (90, timedelta(seconds=90)),
])
def test_durations(tmp_path: Path, value: object, expected: timedelta) -> None:
    policy = parse_policy({"approvals": {"failover_timeout": value}}, base_dir=tmp_path)
    assert policy.approvals.failover_timeout == expected


# -- errors that name the key ------------------------------------------------------------------------


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    msg = error_for(tmp_path, "catalog: x\ndatabases:\n  orders: {engine: postgres\ntiers: {}\n")
    assert "not valid YAML" in msg
    assert "line 4" in msg
    assert str(tmp_path / "drkit.yaml") in msg


def test_tab_indentation_names_the_line(tmp_path: Path) -> None:
    msg = error_for(tmp_path, "catalog: x\ndatabases:\n  orders:\n\tengine: postgres\n")
    assert "line 4" in msg


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    msg = error_for(tmp_path, "- orders\n- billing\n")
    assert "top level" in msg


def test_unknown_key_names_the_full_path(tmp_path: Path) -> None:
    msg = error_for(tmp_path, orders('shedules: {full: "0 2 * * *"}\n'))
    assert "databases.orders.shedules" in msg
    assert "unknown key" in msg


def test_unknown_top_level_key(tmp_path: Path) -> None:
    assert "databasess" in error_for(tmp_path, "databasess: {}\n")


def test_wrong_engine(tmp_path: Path) -> None:
    msg = error_for(tmp_path, orders("", base="engine: mysql\ndsn_env: X\ndata_dir: /pg\n"))
    assert "databases.orders.engine" in msg
    assert "postgres" in msg and "sqlserver" in msg


def test_missing_engine(tmp_path: Path) -> None:
    msg = error_for(tmp_path, orders("", base="dsn_env: X\n"))
    assert "databases.orders.engine" in msg and "missing" in msg


def test_postgres_needs_data_dir(tmp_path: Path) -> None:
    msg = error_for(tmp_path, orders("", base="engine: postgres\ndsn_env: X\n"))
    assert "databases.orders" in msg and "data_dir" in msg


def test_sqlserver_needs_no_data_dir(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path / "drkit.yaml", orders("", base="engine: sqlserver\ndsn_env: X\n")))
    assert policy.database("orders").data_dir is None


def test_both_dsn_and_dsn_env_is_an_error_without_the_password(tmp_path: Path) -> None:
    msg = error_for(tmp_path, orders(f"dsn: postgresql://drkit:{PASSWORD}@db1/orders\n"))
    assert "databases.orders" in msg and "dsn_env" in msg
    assert PASSWORD not in msg


def test_neither_dsn_nor_dsn_env_is_an_error(tmp_path: Path) -> None:
    msg = error_for(tmp_path, orders("", base="engine: postgres\ndata_dir: /pg\n"))
    assert "databases.orders" in msg and "dsn_env" in msg


@pytest.mark.parametrize("cron", ["0 2 * *", "every day", "0 2 * * * *", "0 2 * * ?"])
def test_bad_cron(tmp_path: Path, cron: str) -> None:
    msg = error_for(tmp_path, orders(f'schedules: {{full: "{cron}"}}\n'))
    assert "databases.orders.schedules.full" in msg
    assert "cron" in msg


def test_bad_timezone(tmp_path: Path) -> None:
    msg = error_for(tmp_path, orders("timezone: Mars/Olympus_Mons\n"))
    assert "databases.orders.timezone" in msg and "Mars/Olympus_Mons" in msg


@pytest.mark.parametrize("value", ["30 minutes", "soon", "-5m", "1w", "-5", ".inf", ".nan", "99999999999d", "1e300"])
def test_bad_duration(tmp_path: Path, value: str) -> None:
    msg = error_for(tmp_path, f"approvals:\n  failover_timeout: {value}\n")
    assert "approvals.failover_timeout" in msg
    assert "duration" in msg


def test_bad_database_name(tmp_path: Path) -> None:
    msg = error_for(tmp_path, "databases:\n  Orders DB: {engine: sqlserver, dsn_env: X}\n")
    assert "databases" in msg and "Orders DB" in msg


def test_backup_tier_must_exist(tmp_path: Path) -> None:
    msg = error_for(tmp_path, "backup_tier: blob\n")
    assert "backup_tier" in msg and "blob" in msg


def test_filesystem_tier_needs_a_path(tmp_path: Path) -> None:
    msg = error_for(tmp_path, "tiers:\n  local: {store: filesystem}\n")
    assert "tiers.local" in msg and "path" in msg


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    msg = error_for(tmp_path, orders("timezone: Nowhere/Town\nshedules: {}\n"))
    assert "databases.orders.timezone" in msg and "databases.orders.shedules" in msg


def test_unknown_database_lists_the_defined_ones(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path / "drkit.yaml", VALID))
    with pytest.raises(UnknownDatabaseError) as err:
        policy.database("ordres")
    msg = str(err.value)
    assert "ordres" in msg and "orders" in msg and "billing" in msg
    assert isinstance(err.value, ConfigError)
    with pytest.raises(UnknownDatabaseError):
        policy.wal_spool("ordres")


# -- paths -------------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_policy_file_not_the_cwd(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = write(tmp_path / "etc" / "drkit.yaml", VALID)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    policy = load_policy(Path("..") / "etc" / "drkit.yaml")
    etc = conf.parent.resolve()
    assert policy.tier_path("local") == etc / "backups" / "local"
    assert policy.tier_path("archive") == Path("/srv/drkit/archive")
    assert policy.catalog_url() == f"sqlite:///{etc / 'state' / 'catalog.db'}"
    assert policy.wal_spool("orders") == etc / "var" / "drkit" / "spool" / "orders"


def test_absolute_and_in_memory_catalogs_are_kept(tmp_path: Path) -> None:
    for url in ("sqlite:////var/lib/drkit/catalog.db", "sqlite:///:memory:", "postgresql://h/drkit"):
        assert parse_policy({"catalog": url}, base_dir=tmp_path).catalog_url() == url


# -- secrets -----------------------------------------------------------------------------------------


def test_resolve_dsn_from_the_environment() -> None:
    policy = parse_policy({"databases": {"orders": {"engine": "sqlserver", "dsn_env": "ORDERS_DSN"}}},
                          base_dir=Path("."))
    dsn = f"postgresql://drkit:{PASSWORD}@db1/orders"
    assert resolve_dsn("orders", policy.database("orders"), {"ORDERS_DSN": dsn}) == dsn


@pytest.mark.parametrize("environ", [{}, {"ORDERS_DSN": ""}])
def test_unset_dsn_variable_names_the_variable(environ: dict[str, str]) -> None:
    policy = parse_policy({"databases": {"orders": {"engine": "sqlserver", "dsn_env": "ORDERS_DSN"}}},
                          base_dir=Path("."))
    with pytest.raises(ConfigError) as err:
        resolve_dsn("orders", policy.database("orders"), {**environ, "OTHER_DSN": f"x:{PASSWORD}"})
    msg = str(err.value)
    assert "ORDERS_DSN" in msg and "databases.orders.dsn_env" in msg
    assert PASSWORD not in msg


def test_resolve_dsn_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = parse_policy({"databases": {"orders": {"engine": "sqlserver", "dsn_env": "DRKIT_T_ORDERS_DSN"}}},
                          base_dir=Path("."))
    monkeypatch.setenv("DRKIT_T_ORDERS_DSN", "host=db1")
    assert resolve_dsn("orders", policy.database("orders")) == "host=db1"
    monkeypatch.delenv("DRKIT_T_ORDERS_DSN")
    with pytest.raises(ConfigError, match="DRKIT_T_ORDERS_DSN"):
        resolve_dsn("orders", policy.database("orders"))


def test_inline_dsn_password_never_shows(tmp_path: Path) -> None:
    dsn = f"postgresql://drkit:{PASSWORD}@db1:5432/orders"
    text = orders(f"dsn: {dsn}\n", base="engine: postgres\ndata_dir: /pg\n")
    policy = load_policy(write(tmp_path / "drkit.yaml", text))
    db = policy.database("orders")
    for shown in (str(policy), repr(policy), str(db), repr(db), policy.model_dump_json(),
                  str(policy.model_dump()), str(db.dsn)):
        assert PASSWORD not in shown
    assert resolve_dsn("orders", db) == dsn  # but it is there for the connection


@pytest.mark.parametrize("broken", [
    "timezone: Nowhere/Town\n",  # another key in the same block is wrong
    "shedules: {}\n",
    "dsn_env: ORDERS_DSN\n",  # both set
    'schedules: {full: "bad"}\n',
])
def test_inline_dsn_password_never_in_validation_errors(tmp_path: Path, broken: str) -> None:
    text = orders(f"dsn: postgresql://drkit:{PASSWORD}@db1/orders\n{broken}", base="engine: postgres\ndata_dir: /pg\n")
    msg = error_for(tmp_path, text)
    assert "databases.orders" in msg
    assert PASSWORD not in msg


def test_inline_dsn_password_never_in_yaml_errors(tmp_path: Path) -> None:
    text = orders(f"dsn: postgresql://drkit:{PASSWORD}@db1/orders: oops\n", base="engine: postgres\n")
    msg = error_for(tmp_path, text)
    assert "line" in msg
    assert PASSWORD not in msg


def test_inline_dsn_of_the_wrong_type_does_not_echo_it(tmp_path: Path) -> None:
    text = orders(f"dsn: {{user: drkit, password: {PASSWORD}}}\n", base="engine: postgres\ndata_dir: /pg\n")
    msg = error_for(tmp_path, text)
    assert "databases.orders.dsn" in msg
    assert PASSWORD not in msg


# -- finding the file ----------------------------------------------------------------------------------


@pytest.fixture
def three_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    explicit = write(tmp_path / "explicit.yaml", VALID)
    from_env = write(tmp_path / "env" / "drkit.yaml", VALID)
    cwd = tmp_path / "cwd"
    in_cwd = write(cwd / "drkit.yaml", VALID)
    monkeypatch.chdir(cwd)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    return explicit, from_env, in_cwd


def test_find_config_precedence(three_configs: tuple[Path, Path, Path]) -> None:
    explicit, from_env, _ = three_configs
    env = {CONFIG_ENV: str(from_env)}
    assert find_config(explicit, env) == explicit
    assert find_config(str(explicit), env) == explicit
    assert find_config(None, env) == from_env
    assert find_config(None, {}).resolve() == (Path.cwd() / "drkit.yaml").resolve()


def test_find_config_uses_os_environ(three_configs: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _, from_env, in_cwd = three_configs
    assert find_config().resolve() == in_cwd.resolve()
    monkeypatch.setenv(CONFIG_ENV, str(from_env))
    assert find_config() == from_env
    assert load_policy().base_dir == from_env.parent.resolve()


def test_missing_explicit_config_does_not_fall_back(three_configs: tuple[Path, Path, Path]) -> None:
    _, from_env, _ = three_configs
    with pytest.raises(ConfigError) as err:
        find_config("nope.yaml", {CONFIG_ENV: str(from_env)})
    assert "nope.yaml" in str(err.value) and "--config" in str(err.value)


def test_missing_env_config_does_not_fall_back(three_configs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        find_config(None, {CONFIG_ENV: str(tmp_path / "gone.yaml")})
    assert "gone.yaml" in str(err.value) and CONFIG_ENV in str(err.value)


def test_no_config_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        find_config(None, {})
    assert "drkit.yaml" in str(err.value)
