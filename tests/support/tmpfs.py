"""A small tmpfs mounted by a test, to make a filesystem full for real (the tests run as root).

``mounted_tmpfs(path, "8m")`` mounts it (creating ``path``), yields, and unmounts in any case (lazily if
something still holds it). ``grow(path, "64m")`` is the operator freeing space: a remount with a bigger
size keeps every file.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class TmpfsUnavailable(RuntimeError):
    """Mounting needs root (CAP_SYS_ADMIN); the reason is in the message."""


def _run(*args: str) -> None:
    proc = subprocess.run(list(args), capture_output=True, text=True)
    if proc.returncode != 0:
        raise TmpfsUnavailable(f"{' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")


def mount_tmpfs(path: Path, size: str, mode: str = "0755") -> None:
    if os.geteuid() != 0:
        raise TmpfsUnavailable("mounting a tmpfs needs root; the fault suite runs as root (as CI does)")
    path.mkdir(parents=True, exist_ok=True)
    _run("mount", "-t", "tmpfs", "-o", f"size={size},mode={mode}", "tmpfs", str(path))


def grow(path: Path, size: str) -> None:
    """Remount with a new size; the files stay."""
    _run("mount", "-o", f"remount,size={size}", str(path))


def unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@contextmanager
def mounted_tmpfs(path: Path, size: str, mode: str = "0755") -> Iterator[Path]:
    mount_tmpfs(path, size, mode)
    try:
        yield path
    finally:
        unmount(path)
