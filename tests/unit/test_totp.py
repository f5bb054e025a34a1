"""TOTP as authenticator apps compute it (RFC 6238), and what the verifier accepts."""

from __future__ import annotations

import base64
import time
from urllib.parse import parse_qs, urlparse

import pytest

from drkit import totp
from drkit.errors import ConfigError

# RFC 6238 appendix B: the SHA1 key is the ASCII "12345678901234567890"; 8-digit codes.
RFC_KEY = base64.b32encode(b"12345678901234567890").decode()
RFC_SHA1 = [(59, "94287082"), (1111111109, "07081804"), (1111111111, "14050471"), (1234567890, "89005924"),
            (2000000000, "69279037"), (20000000000, "65353130")]


@pytest.mark.parametrize(("unix_time", "code"), RFC_SHA1)
def test_rfc6238_sha1_test_vectors(unix_time: int, code: str) -> None:
    assert totp.code_at(RFC_KEY, totp.step_at(unix_time), digits=8) == code
    assert totp.matching_step(RFC_KEY, code, unix_time, digits=8) == totp.step_at(unix_time)


def test_six_digit_codes_are_the_rfc_codes_last_six_digits() -> None:
    assert totp.code_at(RFC_KEY, totp.step_at(59)) == "287082"


def test_one_step_either_side_is_accepted_and_no_further() -> None:
    secret, now = totp.new_secret(), 1_800_000_015.0
    step = totp.step_at(now)
    for delta in (-1, 0, 1):
        assert totp.matching_step(secret, totp.code_at(secret, step + delta), now) == step + delta
    for delta in (-2, 2):
        assert totp.matching_step(secret, totp.code_at(secret, step + delta), now) is None
    assert totp.matching_step(secret, "", now) is None
    assert totp.matching_step(secret, "12345é", now) is None


def test_secrets_are_random_160_bit_base32_and_typed_forms_are_accepted() -> None:
    a, b = totp.new_secret(), totp.new_secret()
    assert a != b and len(base64.b32decode(a + "=" * (-len(a) % 8))) == 20
    spaced = " ".join(a[i:i + 4] for i in range(0, len(a), 4)).lower()  # as a person types it
    assert totp.code_at(spaced, 5) == totp.code_at(a, 5)
    with pytest.raises(ConfigError) as err:
        totp.code_at("not base32!", 5)
    assert "not base32!" not in str(err.value)


def test_provisioning_uri_is_what_authenticator_apps_import() -> None:
    secret = totp.new_secret()
    uri = urlparse(totp.provisioning_uri(secret, "alice@example.com"))
    assert (uri.scheme, uri.netloc, uri.path) == ("otpauth", "totp", "/drkit:alice@example.com")
    assert {k: v[0] for k, v in parse_qs(uri.query).items()} == {
        "secret": secret, "issuer": "drkit", "algorithm": "SHA1", "digits": "6", "period": "30"}


def test_the_authenticator_never_gives_a_step_twice() -> None:
    app = totp.Authenticator(totp.new_secret())
    now = time.time()
    codes = [app.next_code(), app.next_code()]
    steps = list(app.issued())
    assert len(set(steps)) == 2 and steps[0] >= totp.step_at(now)
    assert app._secret not in repr(app)  # noqa: SLF001
    assert codes == [totp.code_at(app._secret, s) for s in steps]  # noqa: SLF001
