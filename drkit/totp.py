"""Time-based one-time passwords (RFC 6238): how an approver proves who they are.

The parameters authenticator apps use: HMAC-SHA1, 6 digits, a 30-second time step, a random 160-bit secret
shared once as an ``otpauth://`` URI (or its base32 text). The verifier accepts the codes of the current
step and one step either side (clock drift, the time it takes to type), and the caller refuses a step it
has already accepted for that person (replay). Pure: no Prefect, no I/O except the clock and the random
source; the secret is never part of an exception or a repr.
"""

from __future__ import annotations

import base64
import hmac
import secrets
import time
from collections.abc import Iterable
from urllib.parse import quote, urlencode

from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP

from drkit.errors import ConfigError

DIGITS = 6
STEP_SECONDS = 30
WINDOW = 1  # steps accepted either side of the current one
SECRET_BYTES = 20  # 160 bits, as RFC 4226 recommends
ISSUER = "drkit"


def new_secret() -> str:
    """A fresh random secret, base32 without padding (what authenticator apps accept when typed in)."""
    return base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii").rstrip("=")


def _key(secret_b32: str) -> bytes:
    text = "".join(secret_b32.split()).upper()
    try:
        return base64.b32decode(text + "=" * (-len(text) % 8))
    except ValueError:
        raise ConfigError("an approver's TOTP secret is not base32 text; re-enroll the approver "
                          "(drkit approvers enroll NAME --replace)") from None


def _totp(key: bytes, digits: int) -> TOTP:
    try:
        return TOTP(key, digits, SHA1(), STEP_SECONDS)  # noqa: S303 - HMAC-SHA1 is RFC 6238's, and the apps'
    except ValueError:  # a key under 128 bits
        raise ConfigError("an approver's TOTP secret is too short; re-enroll the approver "
                          "(drkit approvers enroll NAME --replace)") from None


def step_at(unix_time: float) -> int:
    """The time step (counter) of a moment: seconds since the epoch // 30."""
    return int(unix_time // STEP_SECONDS)


def code_at(secret_b32: str, step: int, *, digits: int = DIGITS) -> str:
    """The code an authenticator app shows during ``step``."""
    return _totp(_key(secret_b32), digits).generate(step * STEP_SECONDS).decode("ascii")


def matching_step(secret_b32: str, code: str, unix_time: float | None = None, *, window: int = WINDOW,
                  digits: int = DIGITS) -> int | None:
    """The time step whose code is ``code`` (current step ± ``window``), or None. Compares in constant time."""
    now = step_at(time.time() if unix_time is None else unix_time)
    totp = _totp(_key(secret_b32), digits)
    found = None
    for step in range(now - window, now + window + 1):
        if hmac.compare_digest(totp.generate(step * STEP_SECONDS), code.encode("ascii", "replace")):
            found = step
    return found


def well_formed(code: str) -> bool:
    return len(code) == DIGITS and code.isascii() and code.isdigit()


def provisioning_uri(secret_b32: str, account: str, *, issuer: str = ISSUER) -> str:
    """The ``otpauth://totp/...`` URI an authenticator app imports (as a QR code or a link)."""
    label = quote(f"{issuer}:{account}", safe="@:")
    query = urlencode({"secret": secret_b32, "issuer": issuer, "algorithm": "SHA1", "digits": DIGITS,
                       "period": STEP_SECONDS})
    return f"otpauth://totp/{label}?{query}"


class Authenticator:
    """The approver's side (an authenticator app), for the demo and tests: codes of steps not used before.

    A person waits for the next code after using one; so does :meth:`next_code` once the current and the
    next step are both used.
    """

    def __init__(self, secret_b32: str) -> None:
        self._secret = secret_b32
        self._used: set[int] = set()

    def __repr__(self) -> str:
        return "Authenticator(secret=***)"

    def issued(self) -> Iterable[int]:
        return sorted(self._used)

    def next_code(self) -> str:
        """A code of the current or the next step that this app has not given out yet (it waits for a
        fresh step when both are given out: the verifier refuses a step twice)."""
        while True:
            now = time.time()
            current = step_at(now)
            for step in (current, current + 1):
                if step not in self._used:
                    self._used.add(step)
                    return code_at(self._secret, step)
            time.sleep((current + 1) * STEP_SECONDS - now)  # until the next step begins
