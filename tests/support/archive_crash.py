#!/usr/bin/python3
"""A test ``archive_command``: drkit's own archive script, killed once right after its rename.

Usage (as PostgreSQL's ``archive_command``, run by the postgres OS user)::

    /usr/bin/python3 SPOOL/.archive-crash.py SPOOL/.drkit-archive-wal.py ARM_FILE %p SPOOL/%f

It loads the real script (standard library only, as PostgreSQL runs it) and runs its ``main``. While
``ARM_FILE`` exists, the first ``os.replace`` the script makes (the rename of its temp file to the
segment's name) is carried out and then the process SIGKILLs itself: killed between the rename and
the directory fsync, as a power cut or the OOM killer would. The arm file is removed first, so only
one run dies; PostgreSQL sees the archive command killed by a signal and retries the segment.
"""

import importlib.util
import os
import signal
import sys


def main(argv: list[str]) -> int:
    script, arm, *rest = argv[1:]
    spec = importlib.util.spec_from_file_location("drkit_archive_wal", script)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    real_replace = os.replace

    def replace_then_die(src: str, dst: str) -> None:
        real_replace(src, dst)
        try:
            os.unlink(arm)
        except FileNotFoundError:
            return  # not armed (or another run took it): behave
        os.kill(os.getpid(), signal.SIGKILL)

    mod.os.replace = replace_then_die  # the script's own module object: os.replace is looked up at call time
    result: int = mod.main([script, *rest])
    return result


if __name__ == "__main__":
    sys.exit(main(sys.argv))
