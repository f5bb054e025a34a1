"""`drkit setup` copies the archive script, as root, into a spool the database's OS user owns.

That user (which a database superuser can act as) may plant a link named like the script: root must
replace it, never write, chmod or chown through it.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from drkit.engines import open_engine
from drkit.engines.postgres.engine import _ARCHIVE_SCRIPT_SRC, ARCHIVE_SCRIPT_NAME
from drkit.runtime import Runtime
from drkit.sandbox import Sandbox

pytestmark = [pytest.mark.slow, pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="plays root against the postgres OS user")]

PG = pwd.getpwnam("postgres")


def test_setup_replaces_a_link_planted_as_the_archive_script(sandbox: Sandbox, rt: Runtime, scratch: Path) -> None:
    victim = scratch / "victim"
    victim.write_text("precious\n")
    os.chmod(victim, 0o600)
    script = sandbox.spool / ARCHIVE_SCRIPT_NAME
    script.unlink()
    os.symlink(victim, script)
    os.lchown(script, PG.pw_uid, PG.pw_gid)

    result = open_engine(rt, "app").setup()

    st = os.lstat(victim)
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600) and victim.read_text() == "precious\n"
    st = os.lstat(script)
    assert not os.path.islink(script) and (st.st_uid, st.st_mode & 0o777) == (PG.pw_uid, 0o755)
    assert script.read_bytes() == _ARCHIVE_SCRIPT_SRC.read_bytes()
    assert result.remaining == [] and not result.restart_needed
    assert [i.name for i in open_engine(rt, "app").check() if not i.ok] == []
