"""The policy's ``sqlserver:`` block is a typed model: wrong keys and values are refused when the policy loads,
each error naming its key path; the engine is built from what was loaded."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from drkit.config import load_policy, parse_policy
from drkit.engines.sqlserver.engine import sqlserver_engine
from drkit.errors import ConfigError
from drkit.runtime import Runtime
from tests.support.fake_odbc import DSN, SAS_TOKEN

CONTAINER = "https://acct.blob.core.windows.net/sqlbackups/prod"


def policy_file(tmp_path: Path, block: str, *, engine: str = "sqlserver") -> Path:
    path = tmp_path / "drkit.yaml"
    path.write_text("databases:\n  orders:\n" + textwrap.indent(
        f"engine: {engine}\ndsn_env: ORDERS_DSN\ndata_dir: /pg\n" if engine == "postgres"
        else f"engine: {engine}\ndsn_env: ORDERS_DSN\n", "    ") + textwrap.indent(block, "    "))
    return path


def load_error(tmp_path: Path, block: str, **kw: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_policy(policy_file(tmp_path, block, **kw))
    return str(err.value)


def test_an_unknown_key_is_refused_at_load_with_its_path(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "sqlserver: {disk_path: /b, colour: blue}\n")
    assert "databases.orders.sqlserver.colour: unknown key" in msg


@pytest.mark.parametrize(("block", "key"), [
    ("sqlserver: {disk_path: /b, copy_only: maybe}\n", "copy_only"),
    ("sqlserver: {disk_path: /b, query_timeout_s: '30'}\n", "query_timeout_s"),
    ("sqlserver: {disk_path: /b, long_timeout_s: -1}\n", "long_timeout_s"),
    ("sqlserver: {disk_path: [/b]}\n", "disk_path"),
    ("sqlserver: {disk_path: /b, target: tape}\n", "target"),
    ("sqlserver: {disk_path: /b, max_stripe_gib: 500}\n", "max_stripe_gib"),
    ("sqlserver: {disk_path: /b, database: \"bad\\x01name\"}\n", "database"),
    ("sqlserver: {disk_path: /b, certificate: ''}\n", "certificate"),
])
def test_a_wrong_value_is_refused_at_load_with_its_path(tmp_path: Path, block: str, key: str) -> None:
    assert f"databases.orders.sqlserver.{key}: " in load_error(tmp_path, block)


@pytest.mark.parametrize(("block", "key", "says"), [
    ("sqlserver: {target: url}\n", "url", "needs the container URL"),
    (f"sqlserver: {{target: url, url: '{CONTAINER}?sv=1&sig=abc'}}\n", "url", "must not hold a SAS token"),
    ("sqlserver: {target: url, url: 'http://127.0.0.1:10000/c'}\n", "url", "https"),
    ("sqlserver: {database: Orders}\n", "disk_path", "backup directory"),
])
def test_a_target_without_what_it_needs_is_refused_at_load(tmp_path: Path, block: str, key: str, says: str) -> None:
    msg = load_error(tmp_path, block)
    assert f"databases.orders.sqlserver.{key}: " in msg and says in msg
    assert "sig=abc" not in msg


def test_the_block_belongs_to_sqlserver_databases_only(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "sqlserver: {disk_path: /b}\n", engine="postgres")
    assert "databases.orders.sqlserver: " in msg and "engine: sqlserver" in msg


def test_the_server_database_defaults_to_the_policy_name(tmp_path: Path) -> None:
    policy = load_policy(policy_file(tmp_path, "sqlserver: {disk_path: 'D:\\Backup'}\n"))
    settings = policy.database("orders").sqlserver
    assert settings is not None and settings.database == "orders" and settings.target == "disk"
    named = load_policy(policy_file(tmp_path, "sqlserver: {database: 'Or]ders', disk_path: /b}\n"))
    settings = named.database("orders").sqlserver
    assert settings is not None and settings.database == "Or]ders"


def test_the_engine_is_built_from_the_loaded_block(tmp_path: Path) -> None:
    policy = parse_policy({"databases": {"orders": {"engine": "sqlserver", "dsn_env": "ORDERS_DSN", "sqlserver": {
        "database": "Orders", "target": "url", "url": CONTAINER, "sas_token_env": "ORDERS_SAS"}}}},
        base_dir=tmp_path)
    engine = sqlserver_engine(Runtime(policy, environ={"ORDERS_DSN": DSN, "ORDERS_SAS": "?" + SAS_TOKEN}), "orders")
    assert engine.settings is policy.database("orders").sqlserver
    assert engine.credential_name == "https://acct.blob.core.windows.net/sqlbackups"
    with pytest.raises(ConfigError, match=r"databases\.orders\.sqlserver\.sas_token_env: .*ORDERS_SAS"):
        sqlserver_engine(Runtime(policy, environ={"ORDERS_DSN": DSN}), "orders")


def test_a_sqlserver_database_without_its_block_is_refused_when_opened(tmp_path: Path) -> None:
    policy = parse_policy({"databases": {"orders": {"engine": "sqlserver", "dsn_env": "ORDERS_DSN"}}},
                          base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"databases\.orders\.sqlserver: not set"):
        sqlserver_engine(Runtime(policy, environ={"ORDERS_DSN": DSN}), "orders")


# -- what SQL Server runs on an availability-group secondary (copy-only full, regular log, no diff) ----------


AG_BLOCK = "sqlserver: {disk_path: /b, availability_group: ag1, backup_replica: preferred, copy_only: true}\n"


@pytest.mark.parametrize(("block", "key", "says"), [
    ("sqlserver: {disk_path: /b, backup_replica: preferred, copy_only: true}\n", "backup_replica",
     "set availability_group"),
    ("sqlserver: {disk_path: /b, availability_group: ag1, backup_replica: preferred}\n", "copy_only",
     "only COPY_ONLY full backups"),
    ("sqlserver: {disk_path: /b, backup_replica: secondary}\n", "backup_replica", "'connected' or 'preferred'"),
    ("sqlserver: {disk_path: /b, copy_only_log: true}\n", "copy_only_log", "unknown key"),
])
def test_backups_that_sqlserver_cannot_take_on_a_secondary_are_refused_at_load(
        tmp_path: Path, block: str, key: str, says: str) -> None:
    msg = load_error(tmp_path, block)
    assert f"databases.orders.sqlserver.{key}: " in msg and says in msg, msg


def test_a_differential_schedule_with_the_preferred_replica_is_refused_at_load(tmp_path: Path) -> None:
    msg = load_error(tmp_path, AG_BLOCK)  # schedules.diff defaults to every 6 hours
    assert "databases.orders: schedules.diff: must be null" in msg and "no differential" in msg, msg
    policy = load_policy(policy_file(tmp_path, AG_BLOCK + "schedules: {diff: null}\n"))
    settings = policy.database("orders").sqlserver
    assert settings is not None and (settings.backup_replica, settings.copy_only) == ("preferred", True)


def test_the_connected_replica_is_the_default_and_copy_only_is_off(tmp_path: Path) -> None:
    settings = load_policy(policy_file(tmp_path, "sqlserver: {disk_path: /b}\n")).database("orders").sqlserver
    assert settings is not None and (settings.backup_replica, settings.copy_only) == ("connected", False)
