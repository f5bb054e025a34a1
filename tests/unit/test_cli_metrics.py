"""`drkit metrics`: the exposition on stdout, written for node_exporter's textfile collector (atomically,
following no link planted in its directory), served with --listen; bad input is one line and exit 2; no Prefect."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from cli import app
from drkit.catalog import Catalog
from tests.support.procs import stop_group

runner = CliRunner()
DRKIT = str(Path(sys.executable).with_name("drkit"))


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"
    Catalog.open(catalog).close()
    path = tmp_path / "drkit.yaml"
    path.write_text(yaml.safe_dump({
        "catalog": catalog,
        "tiers": {"local": {"store": "filesystem", "path": str(tmp_path / "local")}},
        "databases": {"app": {"engine": "postgres", "dsn": "postgresql://127.0.0.1:1/app",
                              "data_dir": str(tmp_path / "pg")}},
    }))
    return path


def families(text: str) -> dict[str, float]:
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def test_metrics_prints_the_exposition(policy: Path) -> None:
    r = runner.invoke(app, ["--config", str(policy), "metrics"])
    assert r.exit_code == 0, r.output
    assert families(r.stdout)["drkit_exporter_collect_success"] == 1
    assert "drkit_chain_copies{database=\"app\"} 0.0" in r.stdout


def test_textfile_is_written_for_node_exporter(policy: Path, tmp_path: Path) -> None:
    out = tmp_path / "textfile" / "drkit.prom"
    out.parent.mkdir()
    out.write_text("old\n")
    r = runner.invoke(app, ["--config", str(policy), "metrics", "--textfile", str(out)])
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    assert families(out.read_text())["drkit_exporter_collect_success"] == 1
    assert out.stat().st_mode & 0o777 == 0o644  # node_exporter runs as another user
    assert os.listdir(out.parent) == ["drkit.prom"]  # no temporary file left behind


def test_textfile_follows_no_link_planted_in_its_directory(policy: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    textdir = tmp_path / "textfile"
    textdir.mkdir(mode=0o1777)
    (textdir / "drkit.prom").symlink_to(victim)  # at the name itself
    (textdir / ".drkit.prom.drkit-tmp").symlink_to(victim)  # and at the temporary name
    r = runner.invoke(app, ["--config", str(policy), "metrics", "--textfile", str(textdir / "drkit.prom")])
    assert r.exit_code == 0, r.output
    assert victim.read_text() == "keep me\n"
    assert not (textdir / "drkit.prom").is_symlink()
    assert "drkit_exporter_collect_success 1.0" in (textdir / "drkit.prom").read_text()


@pytest.mark.parametrize(("args", "says"), [
    (["--textfile", "{tmp}/drkit.txt"], "node_exporter reads only files ending in .prom"),
    (["--textfile", "{tmp}/nowhere/drkit.prom"], "no directory"),
    (["--listen", "localhost"], "metrics.listen: expected host:port"),
    (["--listen", "127.0.0.1:0", "--textfile", "{tmp}/drkit.prom"], "choose one"),
])
def test_bad_input_is_one_line_and_exit_2(policy: Path, tmp_path: Path, args: list[str], says: str) -> None:
    r = runner.invoke(app, ["--config", str(policy), "metrics", *[a.format(tmp=tmp_path) for a in args]])
    assert r.exit_code == 2
    assert r.stderr.startswith("error: ") and says in r.stderr and r.stderr.count("\n") == 1


def test_metrics_imports_no_prefect(policy: Path) -> None:
    run = ("import json, sys\nfrom cli import app\ntry:\n    app(sys.argv[1:])\nexcept SystemExit as exc:\n"
           "    code = exc.code\nprint(json.dumps([code, 'prefect' in sys.modules]), file=sys.stderr)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(policy.parent / "prefect-home")
    proc = subprocess.run([sys.executable, "-c", run, "--config", str(policy), "metrics"], capture_output=True,
                          text=True, env=env, timeout=120, check=False)
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == [0, False]
    assert "drkit_exporter_collect_success 1.0" in proc.stdout



def _ctrl_c_as_in_a_terminal() -> None:
    """Ctrl-C at its default in the command, as a terminal's foreground command has it: a test run started as
    a background job of a script (``make test &``) inherits SIGINT ignored, and Python then never raises
    KeyboardInterrupt for it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)

@pytest.fixture
def listening(policy: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([DRKIT, "--config", str(policy), "metrics", "--listen", f"127.0.0.1:{port}"],
                            stderr=subprocess.PIPE, start_new_session=True, preexec_fn=_ctrl_c_as_in_a_terminal)
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        stop_group(proc)


def test_listen_serves_until_interrupted(listening: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, url = listening
    assert proc.stderr is not None
    first = proc.stderr.readline().decode()  # printed once the socket is bound
    assert first.startswith(f"serving drkit metrics on {url}/metrics")
    r = httpx.get(f"{url}/metrics", timeout=30)
    assert r.status_code == 200 and families(r.text)["drkit_exporter_collect_success"] == 1
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert proc.wait(timeout=30) == 0
    assert proc.stderr.read() == b""  # no traceback
