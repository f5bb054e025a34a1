"""What ties a stored object to its backup, and a backup to its key and to its catalog record.

A restore reads bytes the catalog points at. Before a byte of them is used, drkit
proves four things, each where a backup is first touched:

* **The key is the backup's key** (:func:`check_key`, :func:`require_key`): the
  catalog records the id of the key each backup was written with (a key id is a
  hash of the key, not secret). Planning a restore, verifying, basing a diff on a
  full and rebuilding the catalog compare it with the configured key's id and
  refuse at once, naming the backup and both ids, instead of failing mid-restore.
* **The object is the one asked for** (:func:`stream_context`): every stream's
  header names the object it was written as, ``<database>/<backup id>/<name>``,
  authenticated with every frame (``docs/format.md``); readers pass the name they
  expect, so one backup's data copied over another's is refused by name.
* **The archive describes the catalog's record**: each engine checks the manifest
  inside a piece against its record (PostgreSQL:
  ``drkit.engines.postgres.manifest.check_manifest``: database, kind, base,
  timeline, LSN range and WAL segments).
* **``backup.json`` is authentic** (:func:`seal_descriptor`, :func:`open_descriptor`):
  the plain self-description beside each backup, from which ``drkit catalog
  rebuild`` re-creates the catalog, carries an HMAC-SHA256 under a subkey derived
  from the backup key (HKDF-SHA256, info ``b"drkit backup.json v2"``), so a status
  or checksum edited in the store is not imported.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from drkit.errors import EncryptionKeyError, IntegrityError
from drkit.pipeline import EncryptionKey

if TYPE_CHECKING:
    from drkit.catalog.records import BackupRecord
    from drkit.runtime import Runtime

__all__ = [
    "DESCRIPTOR_VERSION",
    "check_key",
    "open_descriptor",
    "require_key",
    "seal_descriptor",
    "stream_context",
]

DESCRIPTOR_VERSION = 2
_MAC_INFO = b"drkit backup.json v2"
_MAC_FIELDS = ("mac", "mac_key_id")


def stream_context(backup: BackupRecord, name: str) -> str:
    """The context a backup's object ``name`` (data.drk, manifest.drk) is written and read with."""
    return f"{backup.database}/{backup.id}/{name}"


# -- key ids -------------------------------------------------------------------------------------------


def _configured(key_env: str | None) -> str:
    return f"the configured key ({key_env})" if key_env else "the configured key"


def check_key(key: EncryptionKey, backup: BackupRecord, *, key_env: str | None = None) -> None:
    """EncryptionKeyError unless ``backup`` was written with ``key`` (backups recording no key id pass)."""
    require_keys(key, [backup], key_env=key_env)


def require_keys(key: EncryptionKey, backups: Iterable[BackupRecord], *, key_env: str | None = None) -> None:
    """EncryptionKeyError naming the first of ``backups`` written with another key, and both key ids."""
    wrong = [b for b in backups if b.key_id is not None and b.key_id != key.key_id]
    if not wrong:
        return
    first = wrong[0]
    more = f" (and {len(wrong) - 1} more backup(s) of it)" if len(wrong) > 1 else ""
    fix = f"set {key_env} to the key they were written with" if key_env else "use the key it was written with"
    raise EncryptionKeyError(
        f"backup {first.id} was written with key id {first.key_id}{more}; {_configured(key_env)} has id "
        f"{key.key_id}: {fix}"
    )


def require_key(rt: Runtime, backups: Iterable[BackupRecord]) -> None:
    """:func:`require_keys` with the runtime's key, if any of ``backups`` was written with a key.

    A missing or malformed key then raises its own EncryptionKeyError (naming the variable): a plan the
    configured key cannot read is refused before anything is read or written.
    """
    keyed = [b for b in backups if b.key_id is not None]
    if keyed:
        require_keys(rt.key, keyed, key_env=rt.policy.encryption.key_env)


# -- backup.json ---------------------------------------------------------------------------------------


def _mac_key(key: EncryptionKey) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_MAC_INFO).derive(key.key)


def _mac(key: EncryptionKey, fields: Mapping[str, Any]) -> str:
    body = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hmac.new(_mac_key(key), body.encode("ascii"), hashlib.sha256).hexdigest()


def seal_descriptor(fields: Mapping[str, Any], key: EncryptionKey) -> bytes:
    """``backup.json``: ``fields`` plus ``descriptor_version``, ``mac_key_id`` and their HMAC (no secrets).

    Refuses (EncryptionKeyError) to seal a backup written with another key: the descriptor must stay
    verifiable with the key that reads the backup.
    """
    recorded = fields.get("key_id")
    if recorded is not None and recorded != key.key_id:
        raise EncryptionKeyError(
            f"backup {fields.get('id')} was written with key id {recorded}; the configured key has id "
            f"{key.key_id}, so its backup.json is left as it is"
        )
    body = {k: v for k, v in fields.items() if k not in _MAC_FIELDS}
    body["descriptor_version"] = DESCRIPTOR_VERSION
    body["mac_key_id"] = key.key_id
    body["mac"] = _mac(key, body)
    return json.dumps(body, sort_keys=True, indent=1).encode()


def open_descriptor(raw: bytes, key: EncryptionKey, where: str, *, key_env: str | None = None) -> dict[str, Any]:
    """The fields of an authentic ``backup.json`` (``where`` names it in errors).

    Raises EncryptionKeyError if it was sealed (or its backup written) with another key, IntegrityError
    if it is not a version-2 descriptor or its MAC does not match (edited or damaged).
    """
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise IntegrityError(f"{where} is not valid JSON (damaged or not written by drkit)") from None
    if not isinstance(body, dict):
        raise IntegrityError(f"{where} is not a drkit backup descriptor")
    version = body.get("descriptor_version")
    if version != DESCRIPTOR_VERSION:
        raise IntegrityError(
            f"{where} is descriptor version {version!r}, without the MAC of version {DESCRIPTOR_VERSION}; "
            "it is not trusted"
        )
    mac_key_id, mac = body.get("mac_key_id"), body.pop("mac", None)
    if mac_key_id != key.key_id:
        raise EncryptionKeyError(
            f"{where} was written with key id {mac_key_id}; {_configured(key_env)} has id {key.key_id}"
        )
    if not isinstance(mac, str) or not hmac.compare_digest(mac, _mac(key, body)):
        raise IntegrityError(f"{where} failed authentication: its MAC does not match (edited or damaged)")
    if body.get("key_id") not in (None, key.key_id):
        raise EncryptionKeyError(
            f"{where}: backup {body.get('id')} was written with key id {body.get('key_id')}; "
            f"{_configured(key_env)} has id {key.key_id}"
        )
    for name in _MAC_FIELDS:
        body.pop(name, None)
    return body
