"""The `drkit` command's errors as an operator sees them: one line on stderr, the right exit status, no
traceback, and nothing the user typed (or an error carried) read as rich markup.

No database server is needed: every case fails before one would be reached. The cases that talk to a
Prefect API run `drkit` as a real process, since Prefect's log handlers write to the process's stderr.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import cli.common as cli_module
import cli.restore as cli_restore
from cli import app
from drkit.catalog import Catalog
from drkit.errors import EncryptionKeyError
from drkit.tiers import moves as tier_moves

runner = CliRunner()
DRKIT = str(Path(sys.executable).with_name("drkit"))
KEY = base64.b64encode(bytes(range(32))).decode()


@pytest.fixture
def policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DRKIT_BACKUP_KEY", KEY)
    path = tmp_path / "drkit.yaml"
    path.write_text(yaml.safe_dump({
        "catalog": f"sqlite:///{tmp_path / 'catalog.db'}",
        "tiers": {"local": {"store": "filesystem", "path": str(tmp_path / "local")}},
        "databases": {"app": {"engine": "postgres", "dsn": "postgresql://127.0.0.1:1/app",
                              "data_dir": str(tmp_path / "pg")}},
        "approvals": {"approvers": ["alice"]},
    }))
    return path


def drkit(policy: Path, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--config", str(policy), *args])
    return result.exit_code, result.stdout, result.stderr


def one_error_line(stderr: str) -> str:
    """The single line of stderr, which must be an `error:` line and never a traceback."""
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.mark.parametrize("value", ["[/x]", "[bold]", "[red]x[/red]", ":smile:"])
def test_a_bad_timestamp_is_shown_as_typed(policy: Path, value: str) -> None:
    code, out, err = drkit(policy, "restore-plan", "app", "--to", value)
    assert code == 2 and out == ""
    assert one_error_line(err) == (f"error: --to {value!r} is not a timestamp; use ISO 8601, "
                                   "e.g. 2026-11-28T10:00:03Z")


def test_a_bad_time_names_its_own_option(policy: Path) -> None:
    code, _, err = drkit(policy, "retention", "plan", "--now", "bad")
    assert code == 2 and one_error_line(err).startswith("error: --now 'bad' is not a timestamp")
    code, _, err = drkit(policy, "recover", "app", "--before", "bad")
    assert code == 2 and one_error_line(err).startswith("error: --before 'bad' is not a timestamp")


def test_a_policy_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "drkit.yaml"
    path.write_bytes(b'catalog: "\xff\xfe"\n')
    code, _, err = drkit(path, "status")
    assert code == 2 and "not UTF-8" in one_error_line(err) and str(path) in err


def test_every_policy_error_on_one_line_with_its_key(tmp_path: Path) -> None:
    path = tmp_path / "drkit.yaml"
    path.write_text("tiers: {local: {store: filesystem}}\ndatabases:\n  app: {engine: mysql, dsn_env: X}\n"
                    "shedules: {}\n")
    code, _, err = drkit(path, "status")
    line = one_error_line(err)
    assert code == 2
    for key in ("tiers.local:", "databases.app.engine:", "shedules:"):
        assert key in line
    assert line.count("; ") >= 2 and "Value error" not in line


def test_approve_a_run_id_that_is_not_a_uuid(policy: Path) -> None:
    code, _, err = drkit(policy, "approve", "not-a-uuid", "--as", "alice", "--reason", "x")
    assert code == 2 and "'not-a-uuid' is not a flow run id" in one_error_line(err)


def test_a_missing_or_malformed_key_is_bad_input(policy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for value in ("", "not base64!", base64.b64encode(b"short").decode()):
        monkeypatch.setenv("DRKIT_BACKUP_KEY", value)
        code, out, err = drkit(policy, "backup", "full", "app")
        assert code == 2 and out == "" and "DRKIT_BACKUP_KEY" in one_error_line(err)
        assert value not in err or not value


def test_a_well_formed_key_that_is_not_the_backups_is_a_failed_operation(
        policy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def wrong_key() -> None:
        raise EncryptionKeyError("backup was written with key id aaaa; the configured key has id bbbb")
    monkeypatch.setattr(cli_restore, "runtime", wrong_key)
    code, _, err = drkit(policy, "restore-plan", "app")
    assert code == 1 and "key id aaaa" in one_error_line(err)


def test_an_unexpected_error_is_one_line_with_its_type(policy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise RuntimeError("boom [bold]x[/bold] [/x]\nsecond line")
    monkeypatch.setattr(cli_restore, "runtime", broken)
    code, _, err = drkit(policy, "restore-plan", "app")
    assert code == 1 and one_error_line(err) == "error: RuntimeError: boom [bold]x[/bold] [/x] second line"
    # --verbose adds the traceback before the same line
    result = runner.invoke(app, ["--config", str(policy), "--verbose", "restore-plan", "app"])
    assert result.exit_code == 1 and "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1] == "error: RuntimeError: boom [bold]x[/bold] [/x] second line"


def test_an_error_outside_a_commands_guard_is_one_line(policy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tier_moves, "plan_retention", lambda *a, **k: [object()])  # breaks the table code
    code, _, err = drkit(policy, "retention", "plan")
    assert code == 1 and one_error_line(err).startswith("error: AttributeError: ")


def test_table_cells_are_not_markup(policy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_module.console, "width", 300)  # one table row per line
    cat = Catalog.open(yaml.safe_load(policy.read_text())["catalog"])
    try:
        b = cat.begin_backup("app", "full")
        cat.fail_backup(b.id, "[/x] disk [bold]full[/bold] :smile:")
    finally:
        cat.close()
    code, out, err = drkit(policy, "backups", "app")
    assert code == 0, err
    assert "[/x] disk [bold]full[/bold] :smile:" in out
    code, out, err = drkit(policy, "hold", "add", b.id, "--reason", "[/x]", "--as", "[bold]eve")
    assert code == 0 and out.strip() == f"hold placed on {b.id}"
    code, _, err = drkit(policy, "hold", "add", "[/x]", "--reason", "r")
    assert code == 1 and "[/x]" in one_error_line(err)


# -- a real process, against a Prefect API that is down --------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("args", [
    ["approvals"],
    ["approve", "00000000-0000-0000-0000-000000000000", "--as", "alice", "--reason", "x"],
    pytest.param(["backup", "full", "app"], marks=pytest.mark.slow),  # a flow run: Prefect retries ~10 s
])
def test_prefect_api_down(policy: Path, tmp_path: Path, args: list[str]) -> None:
    url = f"http://127.0.0.1:{closed_port()}/api"
    env = {**os.environ, "PREFECT_API_URL": url, "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    proc = subprocess.run([DRKIT, "--config", str(policy), *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    line = one_error_line(proc.stderr)
    assert f"cannot reach the Prefect API at {url.removesuffix('/api')}" in line and "PREFECT_API_URL" in line
