"""Which process did something, and is it still alive: the identity a lock holder or a running backup leaves.

A backup row and a database lock outlive a process that is SIGKILLed (the OOM killer, a power cut, a
``kill -9``). To tell a leftover from work in progress, they carry the identity of the process that made
them: host, boot, PID namespace, PID and the process's start time (so a reused PID is not mistaken for
it). :func:`gone` answers from this host only: a process on another host (or in another container's PID
namespace) cannot be judged here, and is reported as unknown (None), never as gone.

Linux only (``/proc``); elsewhere every answer is "unknown", which makes callers fall back to waiting.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from functools import cache
from typing import Any

__all__ = ["describe", "gone", "me"]

_PROC = "/proc"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot), or None if there is no such process."""
    stat = _read(f"{_PROC}/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rpartition(")")[2].split()  # the command name may contain spaces and parentheses
    return fields[19] if len(fields) > 19 else None


def _pid_namespace() -> str | None:
    try:
        return os.readlink(f"{_PROC}/self/ns/pid")
    except OSError:
        return None


@cache
def _here() -> dict[str, str | None]:
    return {"host": socket.gethostname(), "boot": _read(f"{_PROC}/sys/kernel/random/boot_id"),
            "pidns": _pid_namespace()}


def me() -> dict[str, Any]:
    """This process's identity, JSON-ready: host, boot, pidns, pid, start."""
    pid = os.getpid()
    return {**_here(), "pid": pid, "start": _start_ticks(pid)}


def gone(ident: Mapping[str, Any] | None) -> bool | None:
    """True if the process ``ident`` names has certainly ended; False if it runs; None if this host cannot tell."""
    if not ident or not isinstance(ident.get("pid"), int):
        return None
    here = _here()
    if ident.get("host") != here["host"] or here["boot"] is None or here["pidns"] is None:
        return None
    if ident.get("boot") != here["boot"]:
        return True  # this host rebooted since: every process of the old boot has ended
    if ident.get("pidns") != here["pidns"]:
        return None  # another container on this host: its PIDs are not ours to look up
    start = _start_ticks(int(ident["pid"]))
    return start is None or start != ident.get("start")


def describe(ident: Mapping[str, Any] | None) -> str:
    """``process 1234 on host db1``, for messages."""
    if not ident or "pid" not in ident:
        return "its process"
    return f"process {ident['pid']} on host {ident.get('host') or '?'}"
