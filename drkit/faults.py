"""Test-only fault points: kill this process at a named step, so the fault suite can prove what a crash leaves.

A fault point is a call ``fault_point("backup.manifest")`` at a place where a crash would leave a
distinct state (an object written but not recorded, a record completed but not labelled, ...). It does
nothing unless the environment variable ``DRKIT_FAULT`` names that point::

    DRKIT_FAULT=backup.complete            # SIGKILL this process just before that step
    DRKIT_FAULT=backup.complete:after      # ... just after it

SIGKILL, not an exception: nothing in the process (no ``finally``, no Prefect hook) gets to tidy up,
which is what a power cut, the OOM killer or ``kill -9`` do. The names are listed in ``POINTS`` and in
``docs/faults.md``; an unknown name in ``DRKIT_FAULT`` is refused at the first point reached, so a typo
cannot make a fault test pass by never firing.
"""

from __future__ import annotations

import os
import signal

ENV = "DRKIT_FAULT"

POINTS: dict[str, str] = {
    "backup.stream": "while the data object is being streamed (after the first bytes reached the store)",
    "backup.manifest": "writing the manifest object",
    "backup.descriptor": "writing backup.json beside the objects",
    "backup.complete": "marking the catalog record completed",
    "backup.label": "labelling the stored copy (blob metadata and tags)",
    "tiers.copy": "copying a backup's objects to another tier",
    "tiers.delete": "deleting a copy's objects (retention)",
    "walspool.prune": "pruning shipped segments from the spool after a log backup",
}


def fault_point(name: str, when: str = "before") -> None:
    """SIGKILL this process if ``DRKIT_FAULT`` names this point (``name`` or ``name:after``)."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    point, _, phase = wanted.partition(":")
    if point not in POINTS:
        raise SystemExit(f"{ENV}={wanted!r} names no fault point; known: {', '.join(sorted(POINTS))}")
    if point == name and (phase or "before") == when:
        os.kill(os.getpid(), signal.SIGKILL)
