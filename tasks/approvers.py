"""Approvers' TOTP secrets (Prefect Secret blocks) and the codes they have used (the catalog's audit trail).

One Secret block per approver, ``drkit-approver-<name as a slug>-<8 hex of its hash>`` (the hash keeps two
names with the same slug apart). The secret is read only here, only to check a code, and never logged,
returned to a caller other than :func:`enroll` (which hands it to the person enrolling, once) or put in
an exception. These are plain functions, not Prefect tasks: a task's parameters and result would be
recorded by the API.

A code, once accepted, is spent: the flow records its time step in the catalog (``approver.code_used``,
append-only, out of reach of anyone who can only reach the Prefect API) and refuses that step again for
that approver, in any run, so a code read from a run's stored answer cannot be replayed.
"""

from __future__ import annotations

import getpass
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prefect import get_client
from prefect.blocks.system import Secret
from prefect.exceptions import ObjectNotFound
from pydantic import SecretStr

from drkit import totp
from drkit.config import load_policy
from drkit.errors import DrkitError
from drkit.runtime import Runtime

BLOCK_PREFIX = "drkit-approver-"
CODE_USED = "approver.code_used"


def block_name(approver: str) -> str:
    """The Secret block holding an approver's TOTP secret."""
    slug = re.sub(r"[^a-z0-9]+", "-", approver.lower()).strip("-")[:40].strip("-") or "x"
    return f"{BLOCK_PREFIX}{slug}-{hashlib.sha256(approver.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class Enrollment:
    approver: str
    block: str
    since: datetime | None  # when the block was last written; None: not enrolled


def _block(client: Any, approver: str) -> Any:
    """The approver's block document, without its secret; None when not enrolled."""
    try:
        return client.read_block_document_by_name(block_name(approver), "secret", include_secrets=False)
    except ObjectNotFound:
        return None


def enrollment(approver: str) -> Enrollment:
    """Whether ``approver`` is enrolled (the block exists), read without its secret."""
    with get_client(sync_client=True) as client:
        doc = _block(client, approver)
    since = None if doc is None else getattr(doc, "updated", None) or getattr(doc, "created", None)
    return Enrollment(approver, block_name(approver), since)


def enroll(approver: str, *, replace: bool = False) -> str:
    """Create (or with ``replace``, renew) an approver's secret; returns it, base32, for their app. Once."""
    if enrollment(approver).since is not None and not replace:
        raise DrkitError(f"{approver} is enrolled already; `drkit approvers enroll {approver} --replace` gives "
                         "them a new secret (their old codes stop working)")
    secret = totp.new_secret()
    Secret(value=SecretStr(secret)).save(block_name(approver), overwrite=True)
    return secret


def remove(approver: str) -> bool:
    """Delete an approver's secret; False when there was none."""
    with get_client(sync_client=True) as client:
        doc = _block(client, approver)
        if doc is None:
            return False
        client.delete_block_document(doc.id)
    return True


def secret_of(approver: str) -> str | None:
    """The approver's base32 secret, or None when not enrolled. Only for checking a code."""
    try:
        block = Secret.load(block_name(approver))
    except ValueError:  # no such block
        return None
    return str(block.get())  # type: ignore[union-attr]


def _runtime(config: str | None) -> Runtime:
    return Runtime(load_policy(config))


def used_steps(approver: str, config: str | None) -> set[int]:
    """The time steps of codes ``approver`` has already used (spent codes)."""
    rt = _runtime(config)
    try:
        return {int(e.detail["step"]) for e in rt.catalog.audit_events(action=CODE_USED)
                if e.actor == approver and "step" in e.detail}
    finally:
        rt.close()


def spend(approver: str, step: int, config: str | None, *, run: str) -> None:
    """Record that ``approver``'s code of ``step`` was used (in flow run ``run``): it is refused from now on."""
    rt = _runtime(config)
    try:
        rt.catalog.audit(actor=approver, action=CODE_USED, subject=approver, detail={"step": step, "run": run})
    finally:
        rt.close()


def audit_enrollment(action: str, approver: str, config: str | None, detail: dict[str, Any]) -> None:
    """``approver.enrolled`` / ``approver.replaced`` / ``approver.removed``, by the OS user who ran it."""
    rt = _runtime(config)
    try:
        rt.catalog.audit(actor=_whoami(), action=action, subject=approver, detail=detail)
    finally:
        rt.close()


def _whoami() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
