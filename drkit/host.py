"""What drkit needs to know about the host it runs on, whatever the database engine: a free local port,
and the OS user that runs the servers drkit starts itself."""

from __future__ import annotations

import os
import socket
import time

from drkit.errors import EngineError


def free_port(start: int = 20000, end: int = 32000) -> int:
    """A free TCP port on 127.0.0.1 below the ephemeral range (so it never collides with client ports)."""
    base = start + (os.getpid() * 37 + time.monotonic_ns() // 1000) % (end - start)
    for i in range(end - start):
        port = start + (base - start + i) % (end - start)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise EngineError(f"no free port between {start} and {end} on 127.0.0.1")


def effective_os_user(configured: str | None) -> str | None:
    """The user to run server binaries as (a database's ``os_user``): the configured one, or ``postgres`` when
    we are root (PostgreSQL refuses to run as root); None: the current user."""
    if configured:
        return configured
    return "postgres" if os.geteuid() == 0 else None
