"""Laying a restore down as root never follows a link the database's OS user could plant.

Each victim is a root-owned file or directory; the links pointing at it are made (or handed to)
the ``postgres`` OS user, as a database superuser could through ``COPY … TO PROGRAM``.
"""

from __future__ import annotations

import io
import os
import pwd
import tarfile
from pathlib import Path

import pytest

from drkit.engines.postgres.pgctl import LocalCluster, chown_tree, make_owned_dir
from drkit.engines.postgres.pgfiles import MANIFEST_NAME, ArchiveWriter, pages_member_name
from drkit.engines.postgres.pgrestore import extract_archive, finish_ownership, write_recovery_config
from drkit.errors import EngineError, IntegrityError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="plants links as another OS user: needs root")

PG = pwd.getpwnam("postgres")


def _victim(tmp: Path) -> Path:
    victim = tmp / "victim"
    victim.write_text("precious\n")
    os.chmod(victim, 0o644)
    return victim


def _unchanged(victim: Path) -> None:
    st = os.lstat(victim)
    assert (st.st_uid, st.st_gid) == (0, 0)
    if victim.is_dir():
        assert sorted(p.name for p in victim.iterdir()) == ["keep"]
        assert (victim / "keep").read_text() == "precious\n"
    else:
        assert victim.read_text() == "precious\n"
        assert st.st_mode & 0o777 == 0o644


def _plant(link: Path, to: Path) -> None:
    """A link owned by the OS user, as if it had made it."""
    link.symlink_to(to)
    os.lchown(link, PG.pw_uid, PG.pw_gid)


def _tar(*members: tarfile.TarInfo, manifest: bool = True) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            tar.addfile(m, io.BytesIO(b"x" * m.size) if m.isreg() else None)
        if manifest:
            data = b'{"files": {}, "dirs": []}'
            info = tarfile.TarInfo(MANIFEST_NAME)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = 1 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize("member", [
    _member("pg_hba.conf", tarfile.SYMTYPE, "/etc/shadow"),
    _member("base/1/1259", tarfile.LNKTYPE, "../../../victim"),
    _member("dev", tarfile.CHRTYPE),
    _member("/abs/path"),
    _member("base/../../escape"),
    _member("./base/x"),
    _member("base//x"),
], ids=["symlink", "hardlink", "device", "absolute", "dotdot", "dot", "empty-component"])
def test_archive_members_that_are_not_plain_or_leave_the_target_are_refused(tmp_path: Path,
                                                                           member: tarfile.TarInfo) -> None:
    target = tmp_path / "t"
    target.mkdir()
    with pytest.raises(IntegrityError, match="unsafe path|not a plain file"):
        extract_archive(io.BytesIO(_tar(member)), target)
    assert not any(p.is_symlink() or not p.is_dir() for p in target.rglob("*"))
    assert not (tmp_path / "escape").exists()


def test_a_pages_member_leaving_the_target_is_refused(tmp_path: Path) -> None:
    out = io.BytesIO()
    w = ArchiveWriter(out)
    w.add_bytes(pages_member_name("../victim", 0), b"\0" * 8)
    w.add_json(MANIFEST_NAME, {"files": {}, "dirs": []})
    w.close()
    victim = _victim(tmp_path)
    target = tmp_path / "t"
    target.mkdir()
    with pytest.raises(IntegrityError, match="unsafe path"):
        extract_archive(io.BytesIO(out.getvalue()), target)
    _unchanged(victim)


def test_extraction_does_not_follow_a_link_inside_the_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("precious\n")
    target = tmp_path / "t"
    target.mkdir()
    _plant(target / "base", victim)
    out = io.BytesIO()
    w = ArchiveWriter(out)
    w.add_bytes("base/keep", b"overwritten")
    w.add_json(MANIFEST_NAME, {"files": {}, "dirs": []})
    w.close()
    with pytest.raises(EngineError, match="symbolic link"):
        extract_archive(io.BytesIO(out.getvalue()), target)
    _unchanged(victim)


def test_extraction_refuses_a_target_that_is_not_ours(tmp_path: Path) -> None:
    target = tmp_path / "t"
    target.mkdir()
    os.chown(target, PG.pw_uid, PG.pw_gid)  # the OS user swapped in a directory of its own
    with pytest.raises(EngineError, match="not by drkit"):
        extract_archive(io.BytesIO(_tar()), target)


@pytest.mark.parametrize("name", ["postgresql.auto.conf", "recovery.signal", "pg_ident.conf"])
def test_recovery_config_is_not_written_through_a_link(tmp_path: Path, name: str) -> None:
    victim = _victim(tmp_path)
    target = tmp_path / "data"
    target.mkdir(mode=0o700)
    for present in ("postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf", "postgresql.conf"):
        if present != name and not (name == "pg_ident.conf" and present == "pg_hba.conf"):
            (target / present).write_text("")  # (no pg_hba.conf: drkit writes one and adds to pg_ident.conf)
    _plant(target / name, victim)
    with pytest.raises(EngineError, match="symbolic link"):
        write_recovery_config(target, port=5432, wal_dir=tmp_path / "wal", target_time=None, immediate=True,
                              os_user="postgres")
    _unchanged(victim)


def test_recovery_config_opens_no_tcp_and_writes_peer_auth_when_the_backup_had_no_hba(tmp_path: Path) -> None:
    target = tmp_path / "da ta"
    (target / "pg_wal").mkdir(parents=True)
    write_recovery_config(target, port=5433, wal_dir=tmp_path / "w 1" / "pg_wal", target_time=None,
                          immediate=True, os_user="postgres")
    auto = (target / "postgresql.auto.conf").read_text()
    assert "listen_addresses = ''" in auto
    assert f"""unix_socket_directories = '"{target}"'""" in auto and "unix_socket_permissions = '0700'" in auto
    assert f"restore_command = 'cp ''{tmp_path}/w 1/pg_wal''/%f %p'" in auto
    hba = [ln for ln in (target / "pg_hba.conf").read_text().splitlines() if ln and not ln.startswith("#")]
    assert hba == ["local all all peer map=drkit"]
    ident = (target / "pg_ident.conf").read_text()
    assert "drkit root postgres" in ident and "drkit postgres postgres" in ident
    assert (target / "recovery.signal").exists() and (target / "pg_wal" / "archive_status").is_dir()


def test_handing_the_tree_over_changes_links_never_their_targets(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    victim_dir = tmp_path / "victim_dir"
    victim_dir.mkdir()
    (victim_dir / "keep").write_text("precious\n")
    tree = tmp_path / "tree"
    (tree / "base").mkdir(parents=True)
    (tree / "base" / "f").write_text("data")
    (tree / "base" / "file-link").symlink_to(victim)
    (tree / "dir-link").symlink_to(victim_dir)
    finish_ownership(tree, "postgres")
    _unchanged(victim)
    _unchanged(victim_dir)
    for p in (tree, tree / "base", tree / "base" / "f", tree / "base" / "file-link", tree / "dir-link"):
        assert os.lstat(p).st_uid == PG.pw_uid, p
    assert os.stat(tree).st_mode & 0o777 == 0o700


def test_owned_dirs_and_files_refuse_links_the_os_user_planted(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("precious\n")
    _plant(tmp_path / "spool", victim)
    with pytest.raises(EngineError, match="owned by uid"):
        make_owned_dir(tmp_path / "spool", "postgres")
    with pytest.raises(EngineError, match="owned by uid"):
        chown_tree(tmp_path / "spool", "postgres")
    _unchanged(victim)
    # a link root made is the administrator's choice, and is followed
    (tmp_path / "admin").symlink_to(victim)
    make_owned_dir(tmp_path / "admin", None, 0o755)


def test_the_server_log_is_neither_chowned_nor_read_through_a_link(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    log = tmp_path / "restored.log"
    _plant(log, victim)
    cluster = LocalCluster(tmp_path / "restored", 1, tmp_path, "postgres", log_file=log)
    with pytest.raises(EngineError, match="symbolic link"):
        cluster.start()
    assert cluster.log_tail() == []  # the victim's content never reaches an error message
    _unchanged(victim)
    log.unlink()
    os.link(victim, log)  # a second name for a root file (where fs.protected_hardlinks is off)
    with pytest.raises(EngineError, match="hard link"):
        cluster.start()
    assert cluster.log_tail() == []
    log.unlink()
    _unchanged(victim)
