"""drkit.liveness: a process is judged gone only when this host can tell; a reused PID is not mistaken for it."""

from __future__ import annotations

import subprocess
import sys

from drkit.liveness import describe, gone, me


def test_this_process_runs_an_ended_one_is_gone_and_another_hosts_is_unknown() -> None:
    assert gone(me()) is False
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    ended = {**me(), "pid": child.pid}
    assert gone(ended) is True
    assert gone({**me(), "start": "0"}) is True  # same PID, another start time: the PID was reused
    assert gone({**me(), "host": "elsewhere"}) is None
    assert gone({**me(), "pidns": "pid:[1]"}) is None  # another container on this host
    assert gone(None) is None and gone({"host": "h"}) is None


def test_describe_names_the_process_for_messages() -> None:
    assert describe({"pid": 42, "host": "db1"}) == "process 42 on host db1"
    assert describe(None) == "its process"
