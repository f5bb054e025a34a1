"""Peers benchmark: drkit vs pgBackRest vs barman-cloud, full backup to and restore from one Azurite (TLS).

Run from the project root, as root (every server and both peers run as the ``postgres`` OS user)::

    .venv/bin/python -m bench.peers [--scale 60] [--runs 2] [--keep] [--profile]

Needs: PostgreSQL 15 binaries, Azurite in ``.tools/azurite`` (``scripts/install-azurite.sh``), Debian's
``pgbackrest`` (``apt-get install pgbackrest``), barman-cloud in its own venv built from ``/usr/bin/python3`` so the
project's lock is untouched (``/usr/bin/python3 -m venv .tools/barman-venv && .tools/barman-venv/bin/pip install
'barman[azure,cloud]' psycopg2-binary lz4``), ``openssl`` and ``/usr/bin/time``.

Steps: a sandbox under ``/tmp/drkit-bench-<pid>`` loaded with ``pgbench -i -s SCALE`` (``bench.backup.Bench``);
a self-signed certificate and **one** in-memory Azurite over TLS that all three tools use (pgBackRest speaks
only HTTPS to object stores, so TLS for everyone is the fair choice, and it is what real Azure is); drkit's
policy gets an Azure tier ``blob`` (container ``drkit-bench``, Cool) as its ``backup_tier``. Then ``--runs``
rounds of full backups, rotating the order: drkit (``take_base_backup(rt, db, 'full')`` in a child process, as
``bench.backup`` does), ``pgbackrest backup --type=full`` and ``barman-cloud-backup``; before each, the server's
``archive_command`` is switched to that tool's own WAL archiver (drkit's spool script, ``pgbackrest
archive-push``, ``barman-cloud-wal-archive``), because each backup needs its WAL archived by its own tool to be
restorable. The primary is stopped, then ``--runs`` rounds of restores of each tool's newest full into new data
directories, rotating the order: ``pgbackrest restore --type=immediate --target-action=promote``,
``barman-cloud-restore`` + ``recovery_target='immediate'`` with ``barman-cloud-wal-restore`` as restore_command,
and drkit's ``restore(rt, db, into=...)`` (only fulls in the catalog: recovery ``immediate``). Each restore is
timed for the restore tool itself (lay-down) and end to end until the restored server has promoted
(``pg_is_in_recovery()`` false: consistent, accepting writes); every restore is checked by counting
``pgbench_accounts``. Every process measured runs under ``/usr/bin/time`` (its peak RSS, i.e. the largest single
process, and CPU), and a 50 ms poll adds the summed RSS of the tool's whole process tree (pgBackRest and
barman-cloud fork workers). Nothing here is a test: it prints tables and the issue's targets with PASS/FAIL.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.backup import (
    _CLEAN_ENV,
    PROJECT_ROOT,
    TIME_BIN,
    Bench,
    Measured,
    log,
    make_table,
    mib,
    tool,
    verdict,
)
from bench.backup import print_profile as print_backup_profile
from bench.restore import _pg_ids, redo_info
from bench.restore import print_profile as print_restore_profile

TARGET_PEER_RATIO = 0.8  # drkit <= 0.8x the best peer, for the full backup and for the restore

DRKIT = "drkit"
PGBR = "pgBackRest"
BARMAN = "barman-cloud"
CONTAINERS = {"drkit": "drkit-bench", "pgBackRest": "pgbackrest", "barman-cloud": "barman"}

STANZA = "bench"  # pgBackRest stanza and barman-cloud server name
CONN_ENV = "AZURE_STORAGE_CONNECTION_STRING"
POLL_S = 0.05  # how often the peers' restores poll pg_is_in_recovery(): as often as drkit's recover() does
TREE_POLL_S = 0.05
NOT_THE_TOOL = {"time", "runuser", "postgres"}  # the measuring wrapper, our `runuser`, and servers started

AZURITE_DIR = PROJECT_ROOT / ".tools" / "azurite"
DEFAULT_BARMAN_VENV = PROJECT_ROOT / ".tools" / "barman-venv"


# ------------------------------------------------------------------------------------------- measurement


class TreeMeasured(Measured):
    """:class:`bench.backup.Measured` plus the peak of the summed RSS of the whole process tree.

    ``/usr/bin/time``'s ``%M`` is the largest *single* process of the tree; pgBackRest (``--process-max``)
    and barman-cloud (``--jobs``) fork workers, so a poll (every 50 ms) also sums RSS over the tree, leaving
    out the ``time`` wrapper, ``runuser`` and any ``postgres`` server the tool starts. RSS counts pages shared
    between forked workers once per process, so the sum is an upper bound.
    """

    def __init__(self, cmd: list[str], tmp_dir: Path, **popen: Any) -> None:
        super().__init__(cmd, tmp_dir, **popen)
        self.tree_peak_kib = 0
        self.tree_procs = 0
        self._stop = threading.Event()
        self._tree = threading.Thread(target=self._poll_tree, daemon=True)
        self._tree.start()

    def _poll_tree(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                return
            total = n = 0
            for p in procs:
                try:
                    if p.name() in NOT_THE_TOOL:
                        continue
                    total += p.memory_info().rss
                    n += 1
                except psutil.Error:
                    continue
            self.tree_peak_kib = max(self.tree_peak_kib, total // 1024)
            self.tree_procs = max(self.tree_procs, n)
            self._stop.wait(TREE_POLL_S)

    def wait(self) -> tuple[int, int, float]:
        try:
            return super().wait()
        finally:
            self._stop.set()
            self._tree.join(1)


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc (Azurite's share of the work)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Contender:
    """One tool at one setting (peers may run at several, and the best of them is the reference)."""

    tool: str  # DRKIT, PGBR or BARMAN
    compress: str = ""  # pgBackRest compress-type / barman-cloud compression

    @property
    def name(self) -> str:
        return self.tool if self.tool == DRKIT else f"{self.tool} {self.compress}"

    @property
    def slug(self) -> str:
        return self.tool.split("-")[0].lower() + (f"-{self.compress}" if self.compress else "")

    @property
    def is_peer(self) -> bool:
        return self.tool != DRKIT


@dataclass
class Result:
    tool: str  # Contender.name
    op: str  # "backup" or "restore"
    wall_s: float  # judged figure: drkit = the call in the child; peers = the tool's process
    process_s: float  # whole process(es), spawn to exit (to promoted, for restores)
    rss_kib: int  # /usr/bin/time %M: largest single process
    tree_kib: int  # summed RSS of the tool's process tree (poll)
    tree_procs: int
    cpu_s: float  # the tool's user + sys (children included)
    azurite_cpu_s: float
    stored_bytes: int = 0  # backup: container delta (data + WAL); restore: bytes of the backup read
    wal_bytes: int = 0  # backup: of stored_bytes, WAL archived by the tool's archive_command
    detail: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- Azurite over TLS


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (pgBackRest 2.45 matches DNS names only)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True)
    os.chmod(cert, 0o644)  # the postgres OS user (pgBackRest, barman) reads it as its CA file
    os.chmod(key, 0o600)
    return cert, key


def start_tls_azurite(workdir: Path, cert: Path, key: Path) -> Any:
    """One in-memory Azurite over HTTPS (tests/support/azurite.py's class; it stops it by PID)."""
    from tests.support.azurite import ACCOUNT, ACCOUNT_KEY, Azurite, azurite_binary

    class TlsAzurite(Azurite):
        @property
        def blob_endpoint(self) -> str:
            return f"https://{self.host}:{self.port}/{ACCOUNT}"

        @property
        def connection_string(self) -> str:
            return (f"DefaultEndpointsProtocol=https;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                    f"BlobEndpoint={self.blob_endpoint};")

        def start(self, timeout: float = 30.0) -> None:
            args = [str(azurite_binary()), "--blobHost", self.host, "--blobPort", str(self.port),
                    "--skipApiVersionCheck", "--inMemoryPersistence", "--cert", str(cert), "--key", str(key)]
            with open(self.log_path, "ab") as out:
                self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                             cwd=self.workdir, start_new_session=True)
            ctx = ssl.create_default_context(cafile=str(cert))
            deadline = time.monotonic() + timeout
            import http.client

            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"azurite-blob exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    conn = http.client.HTTPSConnection(self.host, self.port, timeout=2, context=ctx)
                    conn.request("GET", f"/{ACCOUNT}?comp=list")
                    conn.getresponse().read()  # any answer (403 for an anonymous list) means it serves
                    conn.close()
                    return
                except OSError:
                    time.sleep(0.05)
            self.stop()
            raise RuntimeError(f"Azurite (TLS) did not answer on {self.host}:{self.port} in {timeout}s")

    az = TlsAzurite(workdir)
    az.start()
    return az


# ------------------------------------------------------------------------------------------- the benchmark


class PeersBench(Bench):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.azurite: Any = None
        self.cert = self.key = Path()
        self.pgbr_conf = self.root / "pgbr" / "pgbackrest.conf"
        self.barman_env = self.root / "barman" / "env.sh"
        self.barman_venv = Path(args.barman_venv)
        self.barman_url = ""
        self.drkit_archive_command = ""
        self.restored: list[Path] = []
        self.service: Any = None
        self.backup_ids: dict[str, str] = {}  # contender name -> its newest backup (label / id)

    # -- prerequisites

    def check_tools(self) -> None:
        missing = []
        if os.geteuid() != 0:
            missing.append("run as root (servers and peers run as the postgres OS user via runuser)")
        if not TIME_BIN:
            missing.append("/usr/bin/time (apt-get install time)")
        if not shutil.which("pgbackrest"):
            missing.append("pgbackrest (apt-get install pgbackrest)")
        if not (self.barman_venv / "bin" / "barman-cloud-backup").exists():
            missing.append(f"barman-cloud in {self.barman_venv} (/usr/bin/python3 -m venv {self.barman_venv} && "
                           f"{self.barman_venv}/bin/pip install 'barman[azure,cloud]' psycopg2-binary lz4)")
        if not shutil.which("openssl"):
            missing.append("openssl")
        if not (AZURITE_DIR / "node_modules" / ".bin" / "azurite-blob").exists():
            missing.append("Azurite (scripts/install-azurite.sh)")
        if missing:
            raise SystemExit("bench.peers needs: " + "; ".join(missing))

    def versions(self) -> dict[str, str]:
        def out(cmd: list[str]) -> str:
            p = subprocess.run(cmd, capture_output=True, text=True)
            return (p.stdout or p.stderr).strip().splitlines()[0] if (p.stdout or p.stderr).strip() else "?"

        try:
            az = json.loads((AZURITE_DIR / "node_modules" / "azurite" / "package.json").read_text())["version"]
        except (OSError, ValueError, KeyError):
            az = "?"
        return {"pgbackrest": out(["pgbackrest", "version"]),
                "barman": out([str(self.barman_venv / "bin" / "barman-cloud-backup"), "--version"]),
                "azurite": f"Azurite {az} ({out(['node', '--version'])})",
                "postgres": out([tool("postgres"), "--version"])}

    # -- setup

    def setup_all(self) -> None:
        self.setup()  # sandbox, wal_keep_size, catalog (bench.backup.Bench)
        self.drkit_archive_command = str(self.sql("SHOW archive_command")[0][0])
        az_dir = self.root / "az"
        az_dir.mkdir()
        self.cert, self.key = make_cert(az_dir)
        self.azurite = start_tls_azurite(az_dir, self.cert, self.key)
        log(f"Azurite (TLS, in memory) pid {self.azurite.pid} on {self.azurite.blob_endpoint}")
        conn = self.azurite.connection_string
        # Every Python client (drkit's child, barman-cloud) trusts the self-signed certificate via requests.
        os.environ[CONN_ENV] = conn
        os.environ["REQUESTS_CA_BUNDLE"] = str(self.cert)
        from azure.storage.blob import BlobServiceClient

        self.service = BlobServiceClient.from_connection_string(conn, connection_verify=str(self.cert))
        for name in CONTAINERS.values():  # untimed, for all three alike
            self.service.create_container(name)
        self.write_drkit_policy()
        self.setup_pgbackrest()
        self.setup_barman()

    def write_drkit_policy(self) -> None:
        import yaml

        path = self.sb.policy_path
        policy = yaml.safe_load(path.read_text())
        policy["tiers"]["blob"] = {"store": "azure", "container": CONTAINERS[DRKIT], "connection_string_env": CONN_ENV,
                                   "access_tier": "Cool", "keep_days": 30}
        policy["backup_tier"] = "blob"
        path.write_text(yaml.safe_dump(policy, sort_keys=False))

    def setup_pgbackrest(self) -> None:
        from drkit.engines.postgres.pgctl import make_owned_dir

        base = self.pgbr_conf.parent
        for d in (base, base / "log", base / "lock", base / "spool"):
            make_owned_dir(d, "postgres", 0o750)
        from tests.support.azurite import ACCOUNT, ACCOUNT_KEY

        data_dir = self.sb.primary.data_dir
        self.pgbr_conf.write_text(
            "[global]\n"
            f"log-path={base / 'log'}\nlock-path={base / 'lock'}\nspool-path={base / 'spool'}\n"
            "log-level-console=warn\nstart-fast=y\n"
            "repo1-type=azure\nrepo1-path=/repo\n"
            f"repo1-azure-account={ACCOUNT}\nrepo1-azure-key={ACCOUNT_KEY}\n"
            f"repo1-azure-container={CONTAINERS[PGBR]}\nrepo1-azure-uri-style=path\n"
            f"repo1-storage-host=localhost\nrepo1-storage-port={self.azurite.port}\n"
            f"repo1-storage-ca-file={self.cert}\nrepo1-storage-verify-tls=y\n"
            f"repo1-retention-full=99\nprocess-max={self.args.pgbackrest_process_max}\n"
            f"[{STANZA}]\npg1-path={data_dir}\npg1-port={self.port}\npg1-socket-path={data_dir}\n")
        os.chown(self.pgbr_conf, *_pg_ids())
        os.chmod(self.pgbr_conf, 0o600)
        self.as_postgres(["pgbackrest", f"--config={self.pgbr_conf}", f"--stanza={STANZA}", "stanza-create"])

    def setup_barman(self) -> None:
        from drkit.engines.postgres.pgctl import make_owned_dir

        make_owned_dir(self.barman_env.parent, "postgres", 0o750)
        # archive_command and restore_command run in the postmaster's environment: a wrapper carries ours.
        self.barman_env.write_text(
            f"#!/bin/sh\nexport {CONN_ENV}='{self.azurite.connection_string}'\n"
            f"export REQUESTS_CA_BUNDLE='{self.cert}'\nexec \"$@\"\n")
        os.chown(self.barman_env, *_pg_ids())
        os.chmod(self.barman_env, 0o750)
        self.barman_url = f"{self.azurite.blob_endpoint}/{CONTAINERS[BARMAN]}"

    def as_postgres(self, cmd: list[str]) -> str:
        proc = subprocess.run(["runuser", "-u", "postgres", "--", *cmd], capture_output=True, text=True,
                              env=_CLEAN_ENV, cwd="/")
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd[:3])} failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
        return proc.stdout

    def barman_bin(self, name: str) -> str:
        return str(self.barman_venv / "bin" / name)

    @staticmethod
    def barman_compress_flag(c: Contender) -> list[str]:
        flags = {"none": [], "gz": ["--gzip"], "bz2": ["--bzip2"], "snappy": ["--snappy"], "lz4": ["--lz4"]}
        return flags[c.compress]

    def archive_command(self, c: Contender) -> str:
        if c.tool == DRKIT:
            return self.drkit_archive_command
        if c.tool == PGBR:
            return (f"pgbackrest --config={self.pgbr_conf} --stanza={STANZA} --compress-type={c.compress} "
                    "archive-push %p")
        return (f"{self.barman_env} {self.barman_bin('barman-cloud-wal-archive')} --cloud-provider azure-blob-storage "
                f"{' '.join(self.barman_compress_flag(c))} {self.barman_url} {STANZA} %p")

    def use_archiver(self, who: Contender) -> None:
        """Each tool's backup needs its WAL archived by its own archiver; switch, after the backlog is empty."""
        self.wait_archiver()
        from psycopg import sql

        self.sql(sql.SQL("ALTER SYSTEM SET archive_command = {}").format(sql.Literal(self.archive_command(who))))
        self.sql("SELECT pg_reload_conf()")
        time.sleep(0.5)  # let the archiver process the SIGHUP before any segment of the backup completes

    # -- store accounting

    def usage(self, container: str) -> tuple[int, int, int]:
        """(data bytes, WAL bytes, blobs) in a container; WAL = pgBackRest's archive/, barman's wals/."""
        data = wal = n = 0
        for b in self.service.get_container_client(container).list_blobs():
            n += 1
            parts = b.name.split("/")
            if "archive" in parts[:2] or "wals" in parts[:2]:
                wal += b.size
            else:
                data += b.size
        return data, wal, n

    # -- backups

    def run_backup(self, c: Contender) -> Result:
        os.sync()  # not timed: no run pays for the previous one's dirty pages
        self.use_archiver(c)
        before = self.usage(CONTAINERS[c.tool])
        az0 = cpu_seconds(self.azurite.pid)
        r = self.drkit_backup() if c.tool == DRKIT else self.peer_backup(c)
        r.azurite_cpu_s = cpu_seconds(self.azurite.pid) - az0
        if c.is_peer:
            self.backup_ids[c.name] = self.newest_backup(c)  # not timed
        after = self.usage(CONTAINERS[c.tool])
        r.stored_bytes = (after[0] - before[0]) + (after[1] - before[1])
        r.wal_bytes = after[1] - before[1]
        r.detail["blobs"] = after[2] - before[2]
        return r

    def drkit_backup(self, profile_out: Path | None = None) -> Result:
        cmd = [sys.executable, "-m", "bench.backup", "--child", "full", "--policy", str(self.sb.policy_path)]
        if profile_out:
            cmd += ["--profile-out", str(profile_out)]
        res, wall, m, rss, cpu = self.child(cmd, "drkit-full")
        return Result(DRKIT, "backup", res["call_s"], wall, rss, m.tree_peak_kib, m.tree_procs, cpu, 0.0,
                      detail={"record_stored_bytes": res["stored_bytes"], "raw_bytes": res["raw_bytes"],
                              "import_s": res["import_s"], "id": res["id"]})

    def child(self, cmd: list[str], tag: str) -> tuple[dict[str, Any], float, TreeMeasured, int, float]:
        err_path = self.root / f"child-{tag}.stderr"
        t0 = time.perf_counter()
        with open(err_path, "wb") as err_fh:
            m = TreeMeasured(cmd, self.root, stdout=subprocess.PIPE, stderr=err_fh, env=self.sb.environ(),
                             cwd=str(PROJECT_ROOT))
            assert m.proc.stdout is not None
            out = m.proc.stdout.read()
            m.proc.stdout.close()
            rc, rss, cpu = m.wait()
        wall = time.perf_counter() - t0
        if rc != 0:
            raise SystemExit(f"drkit child {tag} failed (rc={rc}):\n{err_path.read_text(errors='replace')[-3000:]}")
        return json.loads(out.decode().strip().splitlines()[-1]), wall, m, rss, cpu

    def peer_backup(self, c: Contender) -> Result:
        if c.tool == PGBR:
            cmd = ["pgbackrest", f"--config={self.pgbr_conf}", f"--stanza={STANZA}", "--type=full",
                   f"--compress-type={c.compress}", "backup"]
        else:
            cmd = [str(self.barman_env), self.barman_bin("barman-cloud-backup"), "--cloud-provider",
                   "azure-blob-storage", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                   "--immediate-checkpoint", "-J", str(self.args.barman_jobs), *self.barman_compress_flag(c),
                   self.barman_url, STANZA]
        wall, m, rss, cpu, out = self.run_measured(["runuser", "-u", "postgres", "--", *cmd], f"{c.name} backup")
        return Result(c.name, "backup", wall, wall, rss, m.tree_peak_kib, m.tree_procs, cpu, 0.0,
                      detail={"output": out[-500:]})

    def run_measured(self, cmd: list[str], what: str) -> tuple[float, TreeMeasured, int, float, str]:
        err_path = self.root / "peer.stderr"
        t0 = time.perf_counter()
        with open(err_path, "wb") as err_fh:
            m = TreeMeasured(cmd, self.root, stdout=err_fh, stderr=subprocess.STDOUT, env=_CLEAN_ENV, cwd="/")
            rc, rss, cpu = m.wait()
        wall = time.perf_counter() - t0
        out = err_path.read_text(errors="replace")
        if rc != 0:
            raise SystemExit(f"{what} failed (rc={rc}):\n{out[-3000:]}")
        return wall, m, rss, cpu, out

    def newest_backup(self, c: Contender) -> str:
        """The label / id of the backup just taken (the newest in the repository)."""
        if c.tool == PGBR:
            info = json.loads(self.as_postgres(["pgbackrest", f"--config={self.pgbr_conf}", f"--stanza={STANZA}",
                                                "--output=json", "info"]))
            return str(max(info[0]["backup"], key=lambda b: b["timestamp"]["stop"])["label"])
        out = self.as_postgres([str(self.barman_env), self.barman_bin("barman-cloud-backup-list"), "--cloud-provider",
                                "azure-blob-storage", "--format", "json", self.barman_url, STANZA])
        return str(max(json.loads(out)["backups_list"], key=lambda b: b["backup_id"])["backup_id"])

    # -- restores

    def run_restore(self, c: Contender, i: int, stored: int) -> Result:
        from drkit.engines.postgres.pgctl import free_port

        target = self.root / f"restore-{c.slug}-{i}"
        log_path = self.root / f"{target.name}.log"
        shutil.rmtree(target, ignore_errors=True)
        log_path.unlink(missing_ok=True)
        os.sync()  # not timed
        az0 = cpu_seconds(self.azurite.pid)
        self.restored.append(target)
        if c.tool == DRKIT:
            r = self.drkit_restore(target)
        else:
            r = self.peer_restore(c, target, log_path, free_port(), self.backup_ids[c.name])
        r.azurite_cpu_s = cpu_seconds(self.azurite.pid) - az0
        r.stored_bytes = stored
        r.detail["redo"] = redo_info(log_path)
        r.detail["rows"] = self.count_rows(r.detail["port"], target if c.tool == DRKIT else None)
        r.detail["data_dir"] = str(target)
        return r

    def drkit_restore(self, target: Path, profile_out: Path | None = None) -> Result:
        cmd = [sys.executable, "-m", "bench.restore", "--child", "restore", "--into", str(target),
               "--policy", str(self.sb.policy_path)]
        if profile_out:
            cmd += ["--profile-out", str(profile_out)]
        res, wall, m, rss, cpu = self.child(cmd, "drkit-restore")
        lay = next((t for what, t in res["steps"] if what == "recovery"), float("nan"))
        return Result(DRKIT, "restore", res["call_s"], wall, rss, m.tree_peak_kib, m.tree_procs, cpu, 0.0,
                      detail={"lay_down_s": lay, "port": res["port"], "recovery": res["recovery"],
                              "import_s": res["import_s"], "steps": res["steps"]})

    def peer_restore(self, c: Contender, target: Path, log_path: Path, port: int, backup_id: str) -> Result:
        from drkit.engines.postgres.pgctl import LocalCluster, make_owned_dir

        t0 = time.perf_counter()
        make_owned_dir(target, "postgres", 0o700)
        if c.tool == PGBR:
            cmd = ["pgbackrest", f"--config={self.pgbr_conf}", f"--stanza={STANZA}", f"--pg1-path={target}",
                   f"--set={backup_id}", "--type=immediate", "--target-action=promote", "restore"]
        else:
            cmd = [str(self.barman_env), self.barman_bin("barman-cloud-restore"), "--cloud-provider",
                   "azure-blob-storage", self.barman_url, STANZA, backup_id, str(target)]
        tool_s, m, rss, cpu, _ = self.run_measured(["runuser", "-u", "postgres", "--", *cmd], f"{c.name} restore")
        settings = {"port": str(port), "listen_addresses": "127.0.0.1", "unix_socket_directories": str(target),
                    "archive_mode": "off"}
        if c.tool == BARMAN:
            settings |= {"restore_command": f"{self.barman_env} {self.barman_bin('barman-cloud-wal-restore')} "
                                            f"--cloud-provider azure-blob-storage {self.barman_url} {STANZA} %f %p",
                         "recovery_target": "immediate", "recovery_target_action": "promote"}
        lines = "".join(f"{k} = '{v}'\n" for k, v in settings.items())
        with open(target / "postgresql.auto.conf", "a") as fh:
            fh.write(f"\n# bench.peers\n{lines}")
        signal_file = target / "recovery.signal"
        if not signal_file.exists():
            signal_file.touch()
            os.chown(signal_file, *_pg_ids())
        config_s = time.perf_counter() - t0
        cluster = LocalCluster(target, port, Path(tool("pg_ctl")).parent, "postgres", log_file=log_path)
        cluster.start(wait_seconds=1800)
        started_s = time.perf_counter() - t0
        self.wait_promoted(port, log_path)
        wall = time.perf_counter() - t0
        return Result(c.name, "restore", wall, wall, rss, m.tree_peak_kib, m.tree_procs, cpu, 0.0,
                      detail={"lay_down_s": config_s, "tool_s": tool_s, "started_s": started_s, "port": port,
                              "restore_command": self.restore_command(target)})

    @staticmethod
    def restore_command(target: Path) -> str:
        try:
            lines = (target / "postgresql.auto.conf").read_text().splitlines()
        except OSError:
            return "?"
        return next((ln for ln in reversed(lines) if ln.startswith("restore_command")), "?")

    def wait_promoted(self, port: int, log_path: Path, timeout: float = 1800) -> None:
        import psycopg

        deadline = time.perf_counter() + timeout
        dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
        while True:
            try:
                with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                    if row is not None and not row[0]:
                        return
            except psycopg.OperationalError:
                pass
            if time.perf_counter() > deadline:
                raise SystemExit(f"restored server did not promote: {log_path}")
            time.sleep(POLL_S)

    def count_rows(self, port: int, socket_dir: Path | None = None) -> int:
        """Rows restored; drkit's restores listen on the Unix socket in their data directory only."""
        import psycopg

        host = str(socket_dir) if socket_dir else "127.0.0.1"
        with psycopg.connect(f"host={host} port={port} user=postgres dbname=postgres", autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pgbench_accounts").fetchone()
        return int(row[0]) if row else -1

    def discard(self, data_dir: Path) -> None:
        from drkit.engines.postgres.pgctl import LocalCluster

        LocalCluster(data_dir, 0, Path(tool("pg_ctl")).parent, "postgres").stop("fast")
        if not self.args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
            shutil.rmtree(data_dir.parent / f".{data_dir.name}.drkit-wal", ignore_errors=True)

    # -- teardown

    def teardown_all(self) -> None:
        from drkit.engines.postgres.pgctl import LocalCluster

        for d in self.restored:
            if (d / "postmaster.pid").exists():
                try:
                    LocalCluster(d, 0, Path(tool("pg_ctl")).parent, "postgres").stop("fast")
                except Exception as exc:  # noqa: BLE001 - report and go on to cleanup
                    log(f"stopping the restored server in {d} failed: {exc}")
        if self.azurite is not None:
            pid = self.azurite.pid
            self.azurite.stop()
            log(f"stopped Azurite (pid {pid})")
        self.teardown()  # stops the primary; deletes the root unless --keep


# ------------------------------------------------------------------------------------------- output


def _fmt_ratio(x: float, best: float) -> str:
    return f"{x / best:.2f}x" if best > 0 else "-"


def _rss(runs: list[Result]) -> str:
    return (f"{max(x.rss_kib for x in runs) / 1024:.0f} / {max(x.tree_kib for x in runs) / 1024:.0f}"
            f" ({max(x.tree_procs for x in runs)})")


def report(b: PeersBench, info: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console(width=200)
    args = b.args
    v = info["versions"]
    contenders: list[Contender] = info["contenders"]
    names = [c.name for c in contenders]
    peers = [c.name for c in contenders if c.is_peer]
    console.print(
        f"\nPostgreSQL 15, pgbench scale {args.scale}: database {mib(info['db_bytes'])}, {os.cpu_count()} CPUs; "
        f"load average (1/5/15 min) before {info['load_before']}, after {info['load_after']}. One Azurite over TLS "
        f"(in memory, self-signed certificate, verified by every client) for all three tools; best of {args.runs} "
        f"runs, order rotated each run; median beside it.\n{v['postgres']}; {v['azurite']}; {v['pgbackrest']}; "
        f"{v['barman']}. Settings: drkit {info['drkit_setting']}; pgBackRest compress-type as named, "
        f"process-max={args.pgbackrest_process_max}, start-fast; barman-cloud --<compression> as named, "
        f"-J {args.barman_jobs}, --immediate-checkpoint (WAL archived with the same compression).")

    for op in ("backup", "restore"):
        runs: list[Result] = info[op]
        by = {n: [r for r in runs if r.tool == n] for n in names}
        best = {n: min(v, key=lambda r: r.wall_s) for n, v in by.items()}
        med = {n: statistics.median(r.wall_s for r in v) for n, v in by.items()}
        peer = min(peers, key=lambda n: best[n].wall_s)
        peer_best = best[peer].wall_s
        info[op + "_sum"] = {"best": best, "med": med, "peer": peer,
                             "peer_med": min(med[n] for n in peers)}
        if op == "backup":
            t = make_table(f"Full backup to Azurite (wall s = best of {args.runs}; ratio = to the best peer's best, "
                           f"{peer})",
                           ["contender", "wall s", "ratio", "median s", "process s", "stored bytes", "of which WAL",
                            "blobs", "peak RSS MiB: largest / tree (procs)", "CPU s", "Azurite CPU s"])
            for n in names:
                r = best[n]
                t.add_row(n, f"{r.wall_s:.2f}", _fmt_ratio(r.wall_s, peer_best), f"{med[n]:.2f}",
                          f"{min(x.process_s for x in by[n]):.2f}", f"{r.stored_bytes:,}", f"{r.wal_bytes:,}",
                          str(r.detail.get("blobs", "")), _rss(by[n]), f"{r.cpu_s:.2f}", f"{r.azurite_cpu_s:.2f}")
            console.print(t)
            console.print(
                "wall s: drkit = the take_base_backup call in the child process (drkit runs inside a long-lived "
                "worker); 'process s' adds interpreter start, imports and policy load; peers = their process, "
                "spawn to exit. Each backup waits for its own WAL: drkit in its spool (archive_command = drkit's "
                "spool script, so its WAL stays local and is inside the full), pgBackRest in its repo "
                "(archive-push), barman-cloud via pg_backup_stop(wait_for_archive) (barman-cloud-wal-archive). "
                "stored bytes = what the backup added to the tool's container, WAL archived during it included. "
                "Peak RSS: largest single process (/usr/bin/time %M) / summed RSS of the tool's process tree "
                "(50 ms poll; shared pages counted per process), the most over the runs. CPU s: the tool's "
                "user + sys (children included), Azurite's: its process's, both of the best run.")
        else:
            lay_best = {n: min(r.detail["lay_down_s"] for r in by[n]) for n in names}
            lay_peer = min(peers, key=lambda n: lay_best[n])
            info["lay"] = {"best": lay_best, "peer": lay_peer}
            t = make_table(f"Restore from Azurite to a consistent, promoted server (best of {args.runs}; ratio = to "
                           f"the best peer's best, {peer}; lay-down ratio to {lay_peer}'s)",
                           ["contender", "end-to-end s", "ratio", "median s", "lay-down s", "ratio (lay-down)",
                            "start → promoted s", "process s", "peak RSS MiB: largest / tree (procs)", "CPU s",
                            "Azurite CPU s", "rows OK"])
            expect = args.scale * 100_000
            for n in names:
                r = best[n]
                d = r.detail
                rows_ok = all(x.detail["rows"] == expect for x in by[n])
                t.add_row(n, f"{r.wall_s:.2f}", _fmt_ratio(r.wall_s, peer_best), f"{med[n]:.2f}",
                          f"{d['lay_down_s']:.2f}", _fmt_ratio(lay_best[n], lay_best[lay_peer]),
                          f"{r.wall_s - d['lay_down_s']:.2f}", f"{r.process_s:.2f}", _rss(by[n]), f"{r.cpu_s:.2f}",
                          f"{r.azurite_cpu_s:.2f}", "yes" if rows_ok else "NO")
            console.print(t)
            console.print(
                "end-to-end: peers = mkdir → restore tool → recovery settings (port, archive_mode=off; barman: "
                "restore_command = barman-cloud-wal-restore, recovery_target='immediate', promote) → pg_ctl start "
                f"-w → pg_is_in_recovery() false (polled every {POLL_S} s); drkit = the restore() call in the "
                "child (the same steps; its recover() polls every 0.05 s; process s adds interpreter start and "
                "imports). lay-down = everything before the server starts. The server's WAL fetches (pgBackRest "
                "archive-get, barman-cloud-wal-restore: processes the server starts) are in end-to-end but not in "
                "RSS/CPU; drkit's WAL is inside its full. rows OK = count(*) of pgbench_accounts = "
                f"{expect:,} on every restore.")

    t = make_table("Every run (in order)", ["#", "op", "contender", "wall s", "process s", "detail", "peak RSS MiB",
                                            "tree RSS MiB", "CPU s", "Azurite CPU s", "stored bytes"])
    for i, r in enumerate(info["backup"] + info["restore"], 1):
        d = r.detail
        if r.op == "restore":
            redo = d["redo"]
            redo_s = f"{redo['redo_elapsed_s']:.2f} s" if "redo_elapsed_s" in redo else "?"
            redo_kib = f"{redo['redo_bytes'] / 1024:,.0f} KiB" if "redo_bytes" in redo else "?"
            extra = (f"lay-down {d['lay_down_s']:.2f}"
                     + (f" (tool {d['tool_s']:.2f})" if "tool_s" in d else f" (import {d['import_s']:.2f})")
                     + f"; server start→ready {redo.get('server_s', float('nan')):.2f}, redo {redo_kib} in "
                       f"{redo_s}, {redo.get('restored_segments', 0)} WAL files via restore_command")
        else:
            extra = f"import {d['import_s']:.2f} s, raw {d['raw_bytes']:,} B" if r.tool == DRKIT else ""
        t.add_row(str(i), r.op, r.tool, f"{r.wall_s:.2f}", f"{r.process_s:.2f}", extra, f"{r.rss_kib / 1024:.1f}",
                  f"{r.tree_kib / 1024:.1f}", f"{r.cpu_s:.2f}", f"{r.azurite_cpu_s:.2f}", f"{r.stored_bytes:,}")
    console.print(t)
    if info.get("pgbr_restore_command"):
        console.print(f"pgBackRest's restore wrote: {info['pgbr_restore_command']}")

    bk, rs, lay = info["backup_sum"], info["restore_sum"], info["lay"]
    b_best, r_best = bk["best"][DRKIT].wall_s, rs["best"][DRKIT].wall_s
    b_peer, r_peer = bk["best"][bk["peer"]].wall_s, rs["best"][rs["peer"]].wall_s
    b_ratio, r_ratio = b_best / b_peer, r_best / r_peer
    b_proc = min(r.process_s for r in info["backup"] if r.tool == DRKIT) / b_peer
    r_proc = min(r.process_s for r in info["restore"] if r.tool == DRKIT) / r_peer
    lay_ratio = lay["best"][DRKIT] / lay["best"][lay["peer"]]
    t = make_table("Targets", ["target", "measured", "result"])
    t.add_row(f"drkit full backup <= {TARGET_PEER_RATIO}x the best peer's time (best vs best)",
              f"{b_ratio:.2f}x ({b_best:.2f} s vs {bk['peer']} {b_peer:.2f} s); median "
              f"{bk['med'][DRKIT] / bk['peer_med']:.2f}x; whole process {b_proc:.2f}x",
              verdict(b_ratio <= TARGET_PEER_RATIO))
    t.add_row(f"drkit restore <= {TARGET_PEER_RATIO}x the best peer's restore time (end-to-end, best vs best)",
              f"{r_ratio:.2f}x ({r_best:.2f} s vs {rs['peer']} {r_peer:.2f} s); median "
              f"{rs['med'][DRKIT] / rs['peer_med']:.2f}x; whole process {r_proc:.2f}x",
              verdict(r_ratio <= TARGET_PEER_RATIO))
    t.add_row(f"(also) drkit restore lay-down <= {TARGET_PEER_RATIO}x the best peer's",
              f"{lay_ratio:.2f}x ({lay['best'][DRKIT]:.2f} s vs {lay['peer']} {lay['best'][lay['peer']]:.2f} s)",
              verdict(lay_ratio <= TARGET_PEER_RATIO))
    console.print(t)
    if info.get("profile_backup"):
        print_backup_profile(info["profile_backup"], console)
    if info.get("profile_restore"):
        print_restore_profile(info["profile_restore"], console)


def loadavg() -> str:
    """Load average, plus any other process that kept a CPU more than 20 % busy over the last second."""
    import psutil

    procs = list(psutil.process_iter(["pid", "name", "cmdline"]))
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.cpu_percent(None)
    time.sleep(1.0)
    busy = []
    for p in procs:
        try:
            pct = p.cpu_percent(None)
        except psutil.Error:
            continue
        if pct > 20 and p.pid != os.getpid():
            cmd = " ".join(p.info["cmdline"] or [p.info["name"] or "?"])
            busy.append(f"{pct:.0f}% {cmd[:60]}")
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    return load + (f" (busy: {'; '.join(busy)})" if busy else " (no other busy process)")


# ------------------------------------------------------------------------------------------- main


def bench_main(args: argparse.Namespace) -> int:
    b = PeersBench(args)
    b.check_tools()
    info: dict[str, Any] = {"load_before": loadavg(), "versions": b.versions(),
                            "drkit_setting": "zstd-3 (threads), AES-256-GCM, 8 MiB blocks x 4 in flight, Content-MD5"}
    t_all = time.perf_counter()
    interrupted = False

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        b.setup_all()
        log(f"pgbench -i -s {args.scale} (port {b.port})")
        info["load"] = b.load(args.scale)
        info["db_bytes"] = b.db_bytes()
        log(f"loaded {mib(info['db_bytes'])} in {info['load']['init_s']:.1f} s")

        contenders = [Contender(DRKIT)]
        contenders += [Contender(PGBR, c) for c in args.pgbackrest_compress.split(",") if c]
        contenders += [Contender(BARMAN, c) for c in args.barman_compress.split(",") if c]
        info["contenders"] = contenders
        k = len(contenders)
        info["backup"] = []
        for i in range(args.runs):
            for c in contenders[i % k:] + contenders[:i % k]:
                r = b.run_backup(c)
                info["backup"].append(r)
                log(f"backup {c.name} #{i + 1}: {r.wall_s:.2f} s (process {r.process_s:.2f} s), {r.stored_bytes:,} B "
                    f"(WAL {r.wal_bytes:,}), RSS {r.rss_kib / 1024:.1f} MiB (tree {r.tree_kib / 1024:.1f}), "
                    f"Azurite CPU {r.azurite_cpu_s:.2f} s")
        if args.profile:
            prof = b.root / "backup.pstats"
            log("profiling one more drkit full under cProfile (not timed)")
            b.use_archiver(contenders[0])
            b.drkit_backup(profile_out=prof)
            info["profile_backup"] = prof
        b.use_archiver(contenders[0])  # leave the sandbox as it was made
        stored = {c.name: next(r for r in reversed(info["backup"]) if r.tool == c.name).stored_bytes
                  for c in contenders}
        log(f"restoring {', '.join(f'{n} {i}' for n, i in b.backup_ids.items())} and drkit's newest full; "
            "stopping the primary")
        b.sb.stop()

        info["restore"] = []
        for i in range(args.runs):
            for c in contenders[(i + 1) % k:] + contenders[:(i + 1) % k]:
                r = b.run_restore(c, i, stored[c.name])
                info["restore"].append(r)
                if c.tool == PGBR:
                    info["pgbr_restore_command"] = r.detail["restore_command"]
                log(f"restore {c.name} #{i + 1}: {r.wall_s:.2f} s end-to-end (lay-down {r.detail['lay_down_s']:.2f} "
                    f"s, process {r.process_s:.2f} s), RSS {r.rss_kib / 1024:.1f} MiB (tree "
                    f"{r.tree_kib / 1024:.1f}), Azurite CPU {r.azurite_cpu_s:.2f} s, rows {r.detail['rows']:,}")
                b.discard(Path(r.detail["data_dir"]))
        if args.profile:
            prof = b.root / "restore.pstats"
            log("profiling one more drkit restore under cProfile (not timed)")
            target = b.root / "restore-drkit-profile"
            b.restored.append(target)
            b.drkit_restore(target, profile_out=prof)
            b.discard(target)
            info["profile_restore"] = prof
        info["load_after"] = loadavg()
        report(b, info)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: cleaning up")
    finally:
        b.teardown_all()
        log(f"whole benchmark: {time.perf_counter() - t_all:.0f} s")
    return 130 if interrupted else 0


def _choices(*allowed: str) -> Any:
    def parse(text: str) -> str:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"use a comma-separated list of {', '.join(allowed)}")
        return ",".join(dict.fromkeys(items))

    return parse


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peers", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--scale", type=int, default=60, help="pgbench scale (60 is about 900 MiB)")
    p.add_argument("--runs", type=int, default=2, help="runs of each backup and restore, order rotated (best shown)")
    p.add_argument("--keep", action="store_true", help="keep /tmp/drkit-bench-<pid> (every server is stopped)")
    p.add_argument("--profile", action="store_true", help="also run one drkit full and restore under cProfile")
    p.add_argument("--pgbackrest-compress", default="zst,lz4", type=_choices("none", "gz", "bz2", "lz4", "zst"),
                   help="pgBackRest compress-type(s), comma-separated: each is a contender (default zst,lz4, its "
                        "two fastest here)")
    p.add_argument("--pgbackrest-process-max", type=int, default=2, help="pgBackRest process-max (2 cores)")
    p.add_argument("--barman-compress", default="lz4", type=_choices("none", "gz", "bz2", "snappy", "lz4"),
                   help="barman-cloud compression(s), comma-separated: each is a contender (default lz4, its fastest: "
                        "gzip takes ~10x longer to back up, none is Azurite-bound)")
    p.add_argument("--barman-jobs", type=int, default=2, help="barman-cloud-backup -J (default 2)")
    p.add_argument("--barman-venv", default=str(DEFAULT_BARMAN_VENV), help="venv holding barman-cloud")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return bench_main(args)


if __name__ == "__main__":
    sys.exit(main())
