"""Approvers with authenticator apps, for tests: enrolled in the Prefect API in use, answering with codes.

``answer(run_id, approve=..., approver=..., reason=...)`` is what a DBA does: it enrolls the approver in
this Prefect API the first time (as ``drkit approvers enroll`` would), resumes the run with their app's
next code and returns what the flow decided (``verdict``: approved, rejected, recorded, refused; ``detail``).
"""

from __future__ import annotations

import re
import time

from drkit import totp
from drkit.totp import Authenticator
from flows import approvals
from flows.approvals import api_url

_apps: dict[tuple[str, str], Authenticator] = {}


def authenticator(approver: str) -> Authenticator:
    """The approver's app, enrolled (with a fresh secret) in the current Prefect API on first use."""
    key = (api_url(), approver)
    if key not in _apps:
        from tasks.approvers import enroll

        _apps[key] = Authenticator(enroll(approver, replace=True))
    return _apps[key]


def from_enroll_output(api: str, approver: str, stdout: str) -> Authenticator:
    """The app of an approver enrolled with `drkit approvers enroll` (the key it printed once)."""
    found = re.search(r"secret=([A-Z2-7]+)", stdout)
    assert found, f"no otpauth secret in the enroll output:\n{stdout}"
    _apps[(api, approver)] = app = Authenticator(found.group(1))
    return app


def answer(run_id: str, *, approve: bool, approver: str, reason: str, code: str | None = None,
           timeout: float = 120) -> dict[str, str]:
    """Answer a paused run as ``approver`` (their next code unless ``code``), and wait for the flow's verdict."""
    pause = approvals.answer(run_id, approve=approve, approver=approver, reason=reason,
                             code=authenticator(approver).next_code() if code is None else code)
    return approvals.outcome(run_id, pause, timeout=timeout)


def wrong_code(approver: str) -> str:
    """A well-formed code that is not the approver's, now or one step either side."""
    secret = authenticator(approver)._secret  # noqa: SLF001
    now = totp.step_at(time.time())
    valid = {totp.code_at(secret, s) for s in range(now - 2, now + 3)}
    return next(c for c in ("000000", "111111", "222222", "333333") if c not in valid)
