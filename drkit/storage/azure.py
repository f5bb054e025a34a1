"""A storage tier in an Azure Blob Storage container (block blobs), streamed and committed last.

Why this exists: the offsite and archive tiers live in Azure Blob Storage, and a
backup stream of unknown length (compressed, encrypted, 1 TiB or more) has to get
there with bounded memory and without ever being visible half-written.

Writes
======
``writer(key)`` yields a file whose ``write()`` fills a ``block_size`` buffer; each
full buffer is staged as one block (Put Block) by a small thread pool with at most
``max_concurrency`` blocks in flight, so memory stays at most
``block_size x (max_concurrency + 1)``. Each block carries a transactional checksum
(``validate_content``: Content-MD5 by default, or CRC64 with azure-storage-extensions),
and block ids are ``<attempt uuid hex>-<index>`` (the SDK base64-encodes them), so two
attempts at the same key never mix blocks. The block list is committed (Put Block
List, with the caller's metadata, index tags and the tier's access tier) only when
the with-block exits cleanly. On an exception nothing is committed: staged blocks
are invisible (not listed, ``exists()`` is False, reads get 404) and Azure (and
Azurite) garbage-collect uncommitted blocks after about a week. A commit replaces an
existing blob atomically.

A blob holds at most 50,000 blocks, so the block size doubles every 10,000 blocks
(8 MiB blocks: 78 GiB, then 16 MiB ... up to about 2.4 TiB in total); memory grows
with it only for such huge streams. Pass ``size_hint`` to pick a larger block size
from the start.

Reads
=====
``reader(key)`` checks the blob's properties first: a blob in the Archive tier
raises :class:`ObjectArchivedError` (rehydrate it first, see :meth:`AzureStore.start_rehydrate`).
Otherwise ranges of ``read_size`` bytes (8 MiB) are fetched by up to ``max_concurrency``
threads ahead of the consumer, pinned to the blob's ETag (a blob replaced mid-read
fails instead of mixing versions); memory is at most ``read_size x (max_concurrency + 1)``.

Secrets
=======
Account keys, SAS tokens and connection strings never appear in messages, ``repr``,
``describe()`` or logs: this module logs nothing, error messages are built from the
HTTP status and error code plus the service's one-line message with URL query strings
and known secret values removed, and Azure SDK exceptions are not chained into ours
(``raise ... from None``), because their text can hold a request URL with a SAS.
The SDK's own HTTP logging (logger ``azure.core.pipeline.policies.http_logging_policy``,
INFO) redacts headers and query parameters, and request bodies/headers are only dumped
with ``logging_enable=True``, which drkit never sets; but urllib3 logs every request
line, SAS query included, at DEBUG (logger ``urllib3.connectionpool``), so the first
AzureStore installs a filter on that logger that masks ``sig=`` values and the
store's known secrets.

Azurite (the emulator the tests use) supports all of the above except that
rehydration from Archive completes instantly (no ``rehydrate-pending-*`` state).
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import io
import logging
import math
import os
import re
import threading
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, cast
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    DecodeError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import (
    BlobBlock,
    BlobClient,
    BlobProperties,
    BlobServiceClient,
    ContentSettings,
    ExponentialRetry,
    RehydratePriority,
    StandardBlobTier,
)

from drkit.errors import ConfigError, StoreError
from drkit.errors import ObjectNotFoundError as ObjectNotFoundError
from drkit.storage.base import AccessTiers, ObjectLabels, StoreFeatures, TierState, validate_key

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

    from drkit.config import TierConfig
    from drkit.storage.base import Store

__all__ = [
    "ACCESS_TIERS",
    "AZURE_FEATURES",
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_MAX_CONCURRENCY",
    "AzureStore",
    "BlobInfo",
    "ClientOptions",
    "ObjectArchivedError",
    "TierState",
    "build_service_client",
    "open_azure_store",
    "rehydration_hint",
]

MiB = 1024 * 1024
DEFAULT_BLOCK_SIZE = 8 * MiB
DEFAULT_MAX_CONCURRENCY = 4
MAX_BLOCK_SIZE = 4000 * MiB  # Azure's limit for one block (API 2019-12-12 and later)
MAX_BLOCKS = 50_000  # Azure's limit of committed blocks per blob
BLOCKS_PER_SIZE_STEP = 10_000  # the block size doubles after this many blocks

AZURE_FEATURES = StoreFeatures(access_tiers=True, rehydration=True, metadata=True, index_tags=True)
"""What every AzureStore declares: Hot/Cool/Cold/Archive access tiers, rehydration, blob metadata, index tags."""

AccessTier = Literal["Hot", "Cool", "Cold", "Archive"]
ACCESS_TIERS: tuple[str, ...] = ("Hot", "Cool", "Cold", "Archive")
OnlineTier = Literal["Hot", "Cool", "Cold"]
Priority = Literal["Standard", "High"]
Validation = bool | Literal["md5", "crc64"]

_METADATA_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # a C# identifier, as Azure requires
_TAG_CHARS_RE = re.compile(r"^[A-Za-z0-9 +\-./:=_]*$")
_CONTAINER_RE = re.compile(r"^(?=.{3,63}$)[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9]))*$")
_URL_QUERY_RE = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s'\"?#]*)\?[^\s'\"#]*", re.IGNORECASE)
_SECRET_SUBS = (
    (re.compile(r"(?i)\b(sig|signature)=[^&\s'\";]+"), r"\1=***"),
    (re.compile(r"(?i)\b(AccountKey|SharedAccessSignature|SharedAccessKey)=[^;\s'\"]+"), r"\1=***"),
    (re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(SharedKey|Bearer)\s+[^\s'\",}]+"), r"\1\2 ***"),
)


class ObjectArchivedError(StoreError):
    """The object is in the Archive access tier: it cannot be read until it is rehydrated."""


def rehydration_hint(priority: str | None = None) -> str:
    """What Azure documents about rehydration times, for messages and flow logs."""
    standard = "up to 15 hours with Standard priority"
    high = "usually under 1 hour with High priority (for blobs under 10 GB)"
    if priority == "High":
        return f"Azure says rehydration takes {high}; {standard}"
    return f"Azure says rehydration takes {standard}; {high}"


@dataclass(frozen=True)
class BlobInfo:
    """One committed object as listed by :meth:`AzureStore.objects`."""

    key: str
    size: int
    tier: str | None
    archive_status: str | None
    last_modified: datetime | None
    metadata: dict[str, str]


@dataclass(frozen=True)
class ClientOptions:
    """Retry and timeout settings for the Azure SDK client built by :func:`build_service_client`.

    The SDK's default (3 retries after 15 s, 18 s, 24 s) stalls a failing upload for
    about a minute per request; drkit's tasks have their own retries, so these are
    shorter: backoffs of about 1, 4, 10, 28 s (initial_backoff + increment_base**n).
    """

    retry_total: int = 4
    initial_backoff: int = 1
    increment_base: int = 3
    random_jitter_range: int = 1
    connection_timeout: int = 20
    read_timeout: int = 120

    def client_kwargs(self) -> dict[str, Any]:
        return {
            "retry_policy": ExponentialRetry(
                initial_backoff=self.initial_backoff,
                increment_base=self.increment_base,
                retry_total=self.retry_total,
                random_jitter_range=self.random_jitter_range,
            ),
            "connection_timeout": self.connection_timeout,
            "read_timeout": self.read_timeout,
            "user_agent": "drkit",
        }


# --------------------------------------------------------------------------- helpers


def _normalize_tier(tier: str, *, online_only: bool = False) -> str:
    for name in ACCESS_TIERS:
        if tier.lower() == name.lower() and not (online_only and name == "Archive"):
            return name
    allowed = [t for t in ACCESS_TIERS if not (online_only and t == "Archive")]
    raise StoreError(f"unknown access tier {tier!r}; use one of {', '.join(allowed)}")


def _normalize_priority(priority: str) -> str:
    for name in ("Standard", "High"):
        if priority.lower() == name.lower():
            return name
    raise StoreError(f"unknown rehydrate priority {priority!r}; use Standard or High")


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str] | None:
    if not metadata:
        return None
    out: dict[str, str] = {}
    total = 0
    for k, v in metadata.items():
        if not isinstance(k, str) or not _METADATA_KEY_RE.match(k):
            raise StoreError(
                f"invalid metadata name {k!r}: Azure needs a C# identifier (letters, digits, '_', "
                "not starting with a digit)"
            )
        if not isinstance(v, str) or not v.isascii() or any(c in v for c in "\r\n\x00"):
            raise StoreError(f"invalid value for metadata {k!r}: it must be a single line of ASCII text")
        if k.lower() in (o.lower() for o in out):
            raise StoreError(f"metadata name {k!r} is given twice (Azure metadata names are case-insensitive)")
        total += len(k) + len(v)
        out[k] = v
    if total > 8192:
        raise StoreError(f"metadata is {total} bytes; Azure allows at most 8 KiB per blob")
    return out


def _check_tags(tags: Mapping[str, str] | None) -> dict[str, str] | None:
    if not tags:
        return None
    if len(tags) > 10:
        raise StoreError(f"{len(tags)} index tags given; Azure allows at most 10 per blob")
    out: dict[str, str] = {}
    for k, v in tags.items():
        if not isinstance(k, str) or not 1 <= len(k) <= 128 or not _TAG_CHARS_RE.match(k):
            raise StoreError(
                f"invalid index tag name {k!r}: 1-128 characters from letters, digits, space and + - . / : = _"
            )
        if not isinstance(v, str) or len(v) > 256 or not _TAG_CHARS_RE.match(v):
            raise StoreError(
                f"invalid value for index tag {k!r}: at most 256 characters from letters, digits, "
                "space and + - . / : = _"
            )
        out[k] = v
    return out


def _error_code(exc: BaseException) -> str:
    code = getattr(exc, "error_code", None)
    if code is None:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
        code = headers.get("x-ms-error-code") if headers is not None else None
    if code is None:
        return ""
    return str(getattr(code, "value", code))


def _public_endpoint(url: str) -> str:
    """``url`` without query (SAS), fragment or user info, and without a trailing slash."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _secrets_of(service: BlobServiceClient) -> tuple[str, ...]:
    found: set[str] = set()
    cred = getattr(service, "credential", None)
    for attr in ("account_key", "signature", "_signature"):
        value = getattr(cred, attr, None)
        if isinstance(value, str) and len(value) >= 8:
            found.add(value)
    query = urlsplit(str(getattr(service, "url", ""))).query
    if query:
        found.add(query)
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name.lower() == "sig" and value:
                found.update((value, quote(value, safe=""), quote(value)))
    return tuple(sorted(found, key=len, reverse=True))


def _scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    text = _URL_QUERY_RE.sub(r"\1?***", text)
    for pattern, replacement in _SECRET_SUBS:
        text = pattern.sub(replacement, text)
    return text


class _RedactingFilter(logging.Filter):
    """Masks SAS signatures, account keys and known secret values in log records it sees."""

    def __init__(self) -> None:
        super().__init__("drkit-redact")
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record is not ours to fix
            return True
        clean = _scrub(message, tuple(sorted(self.secrets, key=len, reverse=True)))
        if clean != message:
            record.msg, record.args = clean, None
        return True


_REDACTOR = _RedactingFilter()
# Loggers that print request URLs (with any SAS query) below WARNING.
_REDACTED_LOGGERS = ("urllib3.connectionpool", "azure.core.pipeline.policies.http_logging_policy")


def _install_redaction(secrets: tuple[str, ...]) -> None:
    _REDACTOR.secrets.update(secrets)
    for name in _REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if _REDACTOR not in logger.filters:
            logger.addFilter(_REDACTOR)


# --------------------------------------------------------------------------- writer


class _BlockWriter(io.RawIOBase):
    """The file ``AzureStore.writer`` yields: buffers writes into blocks and stages them in the background.

    ``close()`` only ends writing; the commit is done by the context manager on a
    clean exit, so a writer closed by garbage collection never commits anything.
    """

    def __init__(
        self,
        store: AzureStore,
        blob: BlobClient,
        key: str,
        *,
        block_size: int,
        max_concurrency: int,
        validate: Validation,
    ) -> None:
        super().__init__()
        self._store = store
        self._blob = blob
        self._key = key
        self._base_block_size = block_size
        self._max_concurrency = max_concurrency
        self._validate = validate
        self.attempt = uuid.uuid4().hex
        self._buf = bytearray(block_size)
        self._fill = 0
        self.block_ids: list[str] = []
        self._inflight: set[Future[None]] = set()
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=max_concurrency, thread_name_prefix="drkit-azure-put"
        )
        self._error: StoreError | None = None
        self._finished = False
        self.bytes_written = 0

    # -- file-like surface

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def flush(self) -> None:
        """Data is sent in whole blocks; everything is committed when the with-block exits."""

    def write(self, data: ReadableBuffer) -> int:
        if self._finished or self.closed:
            raise ValueError(f"write to a closed Azure writer for {self._key!r}")
        if self._error is not None:
            raise self._error
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        n = view.nbytes
        self._reap(block=False)
        pos = 0
        while pos < n:
            size = len(self._buf)
            take = min(size - self._fill, n - pos)
            self._buf[self._fill : self._fill + take] = view[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == size:
                self._stage_buffer()
        self.bytes_written += n
        return n

    # -- staging

    def _block_size_for(self, index: int) -> int:
        return min(self._base_block_size << (index // BLOCKS_PER_SIZE_STEP), MAX_BLOCK_SIZE)

    def _stage_buffer(self) -> None:
        index = len(self.block_ids)
        if index >= MAX_BLOCKS:
            raise self._fail(
                StoreError(
                    f"cannot write {self._key!r} to {self._store.describe()}: more than {MAX_BLOCKS} blocks "
                    f"({self.bytes_written} bytes so far); pass a size_hint or a larger block_size"
                )
            )
        self._reap(block=True)  # wait for a free slot before copying: memory <= block_size x (concurrency + 1)
        data = bytes(memoryview(self._buf)[: self._fill])
        block_id = f"{self.attempt}-{index:06d}"
        self.block_ids.append(block_id)
        assert self._pool is not None
        self._inflight.add(self._pool.submit(self._put_block, block_id, data))
        self._fill = 0
        next_size = self._block_size_for(index + 1)
        if next_size != len(self._buf):
            self._buf = bytearray(next_size)

    def _put_block(self, block_id: str, data: bytes) -> None:
        self._blob.stage_block(block_id, data, length=len(data), validate_content=self._validate)

    def _reap(self, *, block: bool) -> None:
        """Collect finished uploads (raising the first failure); with ``block``, wait for a free slot."""
        if not self._inflight:
            return
        if block and len(self._inflight) >= self._max_concurrency:
            done, _ = wait(self._inflight, return_when=FIRST_COMPLETED)
        else:
            done = {f for f in self._inflight if f.done()}
        for fut in done:
            self._inflight.discard(fut)
            exc = fut.exception()
            if exc is not None:
                raise self._fail(self._store._error(exc, "upload a block of", self._key))

    def _fail(self, error: StoreError) -> StoreError:
        if self._error is None:
            self._error = error
        return self._error

    # -- end of the stream

    def commit(
        self,
        *,
        metadata: dict[str, str] | None,
        tags: dict[str, str] | None,
        access_tier: str | None,
    ) -> None:
        if self._error is not None:
            raise self._error
        if self._fill:
            self._stage_buffer()
        while self._inflight:
            wait(self._inflight)
            self._reap(block=False)
        self._finished = True
        self._release()
        try:
            self._blob.commit_block_list(
                [BlobBlock(block_id=b) for b in self.block_ids],
                content_settings=ContentSettings(content_type="application/octet-stream"),
                metadata=metadata,
                tags=tags,
                standard_blob_tier=StandardBlobTier(access_tier) if access_tier else None,
            )
        except Exception as exc:
            raise self._fail(self._store._error(exc, "commit", self._key)) from None

    def abort(self) -> None:
        """Stop: cancel queued blocks, wait for running ones, commit nothing."""
        self._finished = True
        for fut in self._inflight:
            fut.cancel()
        if self._inflight:
            wait(self._inflight)
        self._inflight.clear()
        self._release()

    def _release(self) -> None:
        self._buf = bytearray()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- reader


class _BodyError(Exception):
    """A range response whose body was cut short or failed its Content-MD5 check (worth a retry)."""


def _get_range(blob: BlobClient, offset: int, length: int, etag: str, validate: bool) -> bytearray:
    """GET ``length`` bytes at ``offset``, streamed into one preallocated buffer, pinned to ``etag``.

    This calls the SDK's generated operation (``BlobClient._client.blob.download``: the
    same pipeline, so the same authentication, retries and timeouts) rather than
    ``download_blob``, because ``download_blob`` gathers each response with
    ``b"".join(list(stream))`` and the stream's ``__len__`` is its Content-Length:
    CPython preallocates a list slot (8 bytes) per downloaded byte, so an 8 MiB range
    briefly costs 75 MB (azure-storage-blob 12.31.1). If the SDK's internals change,
    this falls back to ``download_blob``; the memory test in
    tests/integration/test_azure_store.py notices the difference.
    """
    operations = getattr(getattr(blob, "_client", None), "blob", None)
    download = getattr(operations, "download", None)
    if download is None:  # pragma: no cover - only with a different SDK version
        data = blob.download_blob(
            offset, length, max_concurrency=1, validate_content=validate, etag=etag,
            match_condition=MatchConditions.IfNotModified,
        ).readall()
        return bytearray(data)
    response, stream = download(
        range=f"bytes={offset}-{offset + length - 1}",
        range_get_content_md5=True if validate else None,
        headers={"If-Match": etag},
        decompress=False,
        error_map={412: ResourceModifiedError},
        cls=lambda pipeline_response, body, _headers: (pipeline_response.http_response, body),
    )
    buf = bytearray(length)
    view = memoryview(buf)
    pos = 0
    try:
        for chunk in stream:
            n = len(chunk)
            if pos + n > length:
                raise _BodyError(f"the server sent more than the {length} bytes asked for")
            view[pos : pos + n] = chunk
            pos += n
    finally:
        view.release()
    if pos != length:
        raise _BodyError(f"the response ended after {pos} of {length} bytes")
    if validate:
        expected = response.headers.get("Content-MD5")
        actual = base64.b64encode(hashlib.md5(buf, usedforsecurity=False).digest()).decode()
        if expected != actual:
            raise _BodyError(f"Content-MD5 mismatch for bytes {offset}..{offset + length - 1}")
    return buf


class _RangeReader(io.RawIOBase):
    """The file ``AzureStore.reader`` yields: ranges fetched ahead by a thread pool, returned in order."""

    def __init__(
        self,
        store: AzureStore,
        blob: BlobClient,
        key: str,
        *,
        size: int,
        etag: str,
        chunk_size: int,
        max_concurrency: int,
        validate: bool,
    ) -> None:
        super().__init__()
        self._store = store
        self._blob = blob
        self._key = key
        self.size = size
        self._etag = etag
        self._chunk_size = chunk_size
        self._max_concurrency = max_concurrency
        self._validate = validate
        self._next = 0
        self._pending: deque[tuple[int, int, Future[bytearray]]] = deque()
        self._pool: ThreadPoolExecutor | None = (
            ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="drkit-azure-get") if size else None
        )
        self._cur = memoryview(b"")
        self._pos = 0
        self.bytes_read = 0
        if validate:
            self._chunk_size = min(chunk_size, 4 * MiB)  # Azure returns a range MD5 only for <= 4 MiB

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        total = 0
        want = len(view)
        while total < want:
            if self._pos >= len(self._cur) and not self._advance():
                break
            n = min(want - total, len(self._cur) - self._pos)
            view[total : total + n] = self._cur[self._pos : self._pos + n]
            self._pos += n
            total += n
        self.bytes_read += total
        return total

    def readall(self) -> bytes:
        parts: builtins.list[bytes] = []
        if self._pos < len(self._cur):
            parts.append(bytes(self._cur[self._pos :]))
        while self._advance():
            parts.append(bytes(self._cur))
        self._pos = len(self._cur)
        data = b"".join(parts)
        self.bytes_read += len(data)
        return data

    def _schedule(self) -> None:
        while self._pool is not None and len(self._pending) < self._max_concurrency and self._next < self.size:
            n = min(self._chunk_size, self.size - self._next)
            self._pending.append((self._next, n, self._pool.submit(self._fetch, self._next, n)))
            self._next += n

    def _fetch(self, offset: int, length: int) -> bytearray:
        """One range; a body cut short mid-transfer is fetched again (the pipeline retries the rest)."""
        attempts = 3
        for attempt in range(1, attempts + 1):
            try:
                return _get_range(self._blob, offset, length, self._etag, self._validate)
            except (_BodyError, DecodeError, ServiceResponseError):
                if attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    def _advance(self) -> bool:
        if self.closed:
            raise ValueError(f"read from a closed Azure reader for {self._key!r}")
        self._cur = memoryview(b"")
        self._pos = 0
        self._schedule()
        if not self._pending:
            return False
        offset, length, fut = self._pending.popleft()
        try:
            data = fut.result()
        except Exception as exc:
            raise self._store._error(exc, "read", self._key) from None
        if len(data) != length:
            raise StoreError(
                f"short read of {self._key!r} from {self._store.describe()}: got {len(data)} bytes at "
                f"offset {offset}, expected {length}"
            )
        self._cur = memoryview(data)
        self._schedule()
        return True

    def close(self) -> None:
        if not self.closed:
            for _, _, fut in self._pending:
                fut.cancel()
            self._pending.clear()
            self._cur = memoryview(b"")
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        super().close()


# --------------------------------------------------------------------------- store


class AzureStore:
    """Store objects as block blobs named ``<prefix><key>`` in one container.

    ``access_tier`` (Hot/Cool/Cold/Archive, or None for the account default) is set
    on every commit. ``validate_content`` is the per-block transactional check:
    True/"md5" (Content-MD5; also the fastest mode on Azurite) or "crc64" (needs
    azure-storage-extensions). ``validate_download`` adds a Content-MD5 check per
    downloaded range (ranges are then at most 4 MiB; drkit streams are authenticated
    end to end anyway: AES-GCM frames and the catalog's SHA-256). Reads fetch
    ``read_size`` ranges, ``max_concurrency`` ahead.

    Memory: a writer holds at most ``block_size x (max_concurrency + 1)`` bytes, a
    reader ``read_size x (max_concurrency + 1)``.
    """

    def __init__(
        self,
        service: BlobServiceClient,
        container: str,
        *,
        name: str,
        access_tier: str | None = None,
        prefix: str = "",
        block_size: int = DEFAULT_BLOCK_SIZE,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        validate_content: Validation = True,
        validate_download: bool = False,
        read_size: int = DEFAULT_BLOCK_SIZE,
    ) -> None:
        if not _CONTAINER_RE.match(container):
            raise ValueError(
                f"invalid container name {container!r}: 3-63 characters, lowercase letters, digits and "
                "single hyphens, starting and ending with a letter or digit"
            )
        if not 1 <= block_size <= MAX_BLOCK_SIZE:
            raise ValueError(f"block_size must be 1..{MAX_BLOCK_SIZE} bytes, got {block_size}")
        if not 1 <= read_size <= 256 * MiB:
            raise ValueError(f"read_size must be 1..{256 * MiB} bytes, got {read_size}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        if validate_content not in (True, False, "md5", "crc64"):
            raise ValueError(f"validate_content must be True, False, 'md5' or 'crc64', got {validate_content!r}")
        if prefix:
            prefix = prefix if prefix.endswith("/") else prefix + "/"
            validate_key(prefix[:-1])
        self.name = name
        self.container = container
        self.prefix = prefix
        self.access_tier = _normalize_tier(access_tier) if access_tier else None
        self.block_size = block_size
        self.max_concurrency = max_concurrency
        self.validate_content: Validation = validate_content
        self.validate_download = validate_download
        self.read_size = read_size
        self._service = service
        self._container = service.get_container_client(container)
        self._endpoint = _public_endpoint(service.url)
        self._secrets = _secrets_of(service)
        _install_redaction(self._secrets)
        self._container_ready = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"AzureStore(name={self.name!r}, endpoint={self._endpoint!r}, container={self.container!r}, "
            f"prefix={self.prefix!r}, access_tier={self.access_tier!r})"
        )

    def describe(self) -> str:
        where = f"{self._endpoint}/{self.container}"
        if self.prefix:
            where += f"/{self.prefix.rstrip('/')}"
        return f"azure store {self.name!r} at {where}"

    # -- names and errors

    def _blob_name(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _blob(self, key: str) -> BlobClient:
        return self._container.get_blob_client(self._blob_name(key))

    def _error(self, exc: BaseException, doing: str, key: str | None = None) -> StoreError:
        """A StoreError (or subclass) for an SDK/network failure; no secrets, no URLs with queries."""
        if isinstance(exc, StoreError):
            return exc
        what = f"{key!r} in {self.describe()}" if key is not None else self.describe()
        code = _error_code(exc)
        if isinstance(exc, ResourceNotFoundError):
            if code == "ContainerNotFound":
                return ObjectNotFoundError(f"cannot {doing} {what}: container {self.container!r} does not exist")
            return ObjectNotFoundError(f"no object {key!r} in {self.describe()}")
        if isinstance(exc, HttpResponseError) and exc.status_code is not None:
            status = exc.status_code
            raw = str(exc.message or exc.reason or "").strip()
            message = _scrub(raw.splitlines()[0], self._secrets) if raw else ""
            detail = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
            if code == "BlobArchived":
                return ObjectArchivedError(
                    f"cannot {doing} {what}: it is in the Archive tier; rehydrate it first "
                    f"({rehydration_hint()})"
                )
            if isinstance(exc, ResourceModifiedError) or status == 412:
                return StoreError(f"cannot {doing} {what}: the object changed while it was in use ({detail})")
            if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
                return StoreError(
                    f"cannot {doing} {what}: access denied ({detail}); check the tier's credentials and "
                    "their permissions"
                )
            return StoreError(f"cannot {doing} {what}: {detail}")
        raw = str(exc).strip()
        text = _scrub(raw.splitlines()[0], self._secrets) if raw else type(exc).__name__
        if isinstance(exc, ServiceRequestError):
            return StoreError(f"cannot {doing} {what}: the storage service could not be reached ({text})")
        if isinstance(exc, ServiceResponseError | DecodeError | _BodyError):
            return StoreError(f"cannot {doing} {what}: the connection failed during the request ({text})")
        if isinstance(exc, AzureError):
            return StoreError(f"cannot {doing} {what}: {type(exc).__name__}: {text}")
        return StoreError(f"cannot {doing} {what}: {type(exc).__name__}: {text}")

    def ensure_container(self) -> None:
        """Create the container if it does not exist (idempotent; done before the first write).

        A credential that may not create containers (e.g. a container-scoped SAS) is
        fine as long as the container exists.
        """
        if self._container_ready:
            return
        with self._lock:
            if self._container_ready:
                return
            try:
                self._container.create_container()
            except ResourceExistsError:
                pass
            except HttpResponseError as exc:
                if exc.status_code != 403:
                    raise self._error(exc, "create the container of") from None
            except AzureError as exc:
                raise self._error(exc, "create the container of") from None
            self._container_ready = True

    def _properties(self, key: str, doing: str) -> BlobProperties:
        try:
            return self._blob(key).get_blob_properties()
        except AzureError as exc:
            raise self._error(exc, doing, key) from None

    # -- declared features: access tiers with Archive and rehydration, blob metadata, index tags

    @property
    def features(self) -> StoreFeatures:
        return AZURE_FEATURES

    def access_tiers(self) -> AccessTiers:
        return self

    def labels(self) -> ObjectLabels:
        return self

    # -- Store protocol

    @contextmanager
    def writer(
        self,
        key: str,
        *,
        metadata: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        access_tier: str | None = None,
        size_hint: int | None = None,
    ) -> Iterator[BinaryIO]:
        """Yield a writable file for ``key``; the blob is committed only on a clean exit.

        ``metadata`` (blob metadata, names must be C# identifiers, ASCII values) and
        ``tags`` (at most 10 index tags, searchable with :meth:`find_by_tags`) are set
        atomically with the commit. ``access_tier`` overrides the store's tier for
        this object. ``size_hint`` (expected bytes) picks a block size that fits
        Azure's 50,000-block limit from the start.
        """
        blob = self._blob(key)
        meta = _check_metadata(metadata)
        tag_map = _check_tags(tags)
        tier = _normalize_tier(access_tier) if access_tier else self.access_tier
        block_size = self.block_size
        if size_hint is not None and size_hint > 0:
            needed = math.ceil(size_hint / (BLOCKS_PER_SIZE_STEP * 4))
            block_size = min(max(block_size, math.ceil(needed / MiB) * MiB), MAX_BLOCK_SIZE)
        self.ensure_container()
        out = _BlockWriter(
            self,
            blob,
            key,
            block_size=block_size,
            max_concurrency=self.max_concurrency,
            validate=self.validate_content,
        )
        try:
            yield cast("BinaryIO", out)
        except BaseException:
            out.abort()
            raise
        try:
            out.commit(metadata=meta, tags=tag_map, access_tier=tier)
        except BaseException:
            out.abort()
            raise

    @contextmanager
    def reader(self, key: str) -> Iterator[BinaryIO]:
        """Yield a readable file for ``key``.

        ObjectNotFoundError if there is none; ObjectArchivedError if it is in the
        Archive tier (rehydrating or not).
        """
        props = self._properties(key, "read")
        state = _tier_state(props)
        if state.archived:
            raise ObjectArchivedError(self._archived_message(key, state))
        src = _RangeReader(
            self,
            self._blob(key),
            key,
            size=int(props.size),
            etag=str(props.etag),
            chunk_size=self.read_size,
            max_concurrency=self.max_concurrency,
            validate=self.validate_download,
        )
        try:
            yield cast("BinaryIO", src)
        finally:
            src.close()

    def exists(self, key: str) -> bool:
        try:
            return bool(self._blob(key).exists())
        except AzureError as exc:
            raise self._error(exc, "check", key) from None

    def size(self, key: str) -> int:
        return int(self._properties(key, "stat").size)

    def delete(self, key: str) -> None:
        try:
            self._blob(key).delete_blob(delete_snapshots="include")
        except ResourceNotFoundError:
            return
        except AzureError as exc:
            raise self._error(exc, "delete", key) from None

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter([info.key for info in self._iter_blobs(prefix, include=None)])

    # -- beyond the Store protocol

    def objects(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Committed objects under ``prefix`` with size, tier and metadata, sorted by key."""
        return iter(self._iter_blobs(prefix, include=["metadata"]))

    def _iter_blobs(self, prefix: str, include: builtins.list[str] | None) -> builtins.list[BlobInfo]:
        if "\x00" in prefix or "\\" in prefix or prefix.startswith("/"):
            raise StoreError(f"invalid key prefix {prefix!r}")
        cut = len(self.prefix)
        try:
            found = [
                BlobInfo(
                    key=b.name[cut:],
                    size=int(b.size or 0),
                    tier=str(b.blob_tier) if b.blob_tier else None,
                    archive_status=str(b.archive_status) if b.archive_status else None,
                    last_modified=b.last_modified,
                    metadata=dict(b.metadata or {}),
                )
                for b in self._container.list_blobs(name_starts_with=self.prefix + prefix, include=include)
            ]
        except ResourceNotFoundError:
            return []  # no container yet: nothing stored
        except AzureError as exc:
            raise self._error(exc, "list") from None
        found.sort(key=lambda info: info.key)
        return found

    def find_by_tags(self, where: str) -> builtins.list[str]:
        """Keys (under this store's prefix) whose index tags match ``where``.

        ``where`` is Azure's tag filter syntax, e.g. ``"db" = 'app' AND "kind" = 'full'``.
        """
        cut = len(self.prefix)
        try:
            names = [b.name for b in self._container.find_blobs_by_tags(where)]
        except ResourceNotFoundError:
            return []
        except AzureError as exc:
            raise self._error(exc, "search the tags of") from None
        return sorted(n[cut:] for n in names if n.startswith(self.prefix))

    def metadata(self, key: str) -> dict[str, str]:
        return dict(self._properties(key, "read the metadata of").metadata or {})

    def set_metadata(self, key: str, metadata: Mapping[str, str]) -> None:
        """Replace the object's metadata."""
        meta = _check_metadata(metadata) or {}
        try:
            self._blob(key).set_blob_metadata(meta)
        except AzureError as exc:
            raise self._error(exc, "set the metadata of", key) from None

    def tags(self, key: str) -> dict[str, str]:
        try:
            return dict(self._blob(key).get_blob_tags())
        except AzureError as exc:
            raise self._error(exc, "read the tags of", key) from None

    def set_tags(self, key: str, tags: Mapping[str, str]) -> None:
        """Replace the object's index tags."""
        tag_map = _check_tags(tags) or {}
        try:
            self._blob(key).set_blob_tags(tag_map)
        except AzureError as exc:
            raise self._error(exc, "set the tags of", key) from None

    def get_tier(self, key: str) -> TierState:
        return _tier_state(self._properties(key, "read the access tier of"))

    def set_tier(self, key: str, tier: str) -> None:
        """Move the object to ``tier`` (Hot/Cool/Cold/Archive). To leave Archive use :meth:`start_rehydrate`."""
        name = _normalize_tier(tier)
        try:
            self._blob(key).set_standard_blob_tier(StandardBlobTier(name))
        except AzureError as exc:
            raise self._error(exc, f"move to the {name} tier", key) from None

    def start_rehydrate(self, key: str, to_tier: str = "Hot", priority: str = "Standard") -> TierState:
        """Start bringing an archived object back online; returns the state right after.

        Not archived: nothing to do. Already rehydrating: a request for High priority
        upgrades a Standard one (Azure allows that); otherwise nothing changes. Azure
        completes rehydration asynchronously (see :func:`rehydration_hint`); poll
        :meth:`is_rehydrating` / :meth:`get_tier`. Azurite completes it at once.
        """
        target = _normalize_tier(to_tier, online_only=True)
        prio = _normalize_priority(priority)
        state = self.get_tier(key)
        if not state.archived:
            return state
        if state.rehydrating:
            pending_to = (state.archive_status or "").rsplit("-", 1)[-1]
            if prio != "High" or state.rehydrate_priority == "High":
                return state
            target = _normalize_tier(pending_to, online_only=True)
        try:
            self._blob(key).set_standard_blob_tier(
                StandardBlobTier(target), rehydrate_priority=RehydratePriority(prio)
            )
        except AzureError as exc:
            raise self._error(exc, f"rehydrate (to {target}, {prio} priority)", key) from None
        return self.get_tier(key)

    def is_rehydrating(self, key: str) -> bool:
        return self.get_tier(key).rehydrating

    def rehydration_time(self, priority: str | None = None) -> str:
        """What Azure documents about rehydration times (see :func:`rehydration_hint`)."""
        return rehydration_hint(priority)

    def _archived_message(self, key: str, state: TierState) -> str:
        if state.rehydrating:
            status = f"; rehydration is in progress ({state.archive_status}"
            status += f", {state.rehydrate_priority} priority)" if state.rehydrate_priority else ")"
            return (
                f"object {key!r} in {self.describe()} is in the Archive tier{status}; wait for it to "
                f"finish before reading ({rehydration_hint(state.rehydrate_priority)})"
            )
        return (
            f"object {key!r} in {self.describe()} is in the Archive tier and cannot be read; rehydrate it "
            f"first (AzureStore.start_rehydrate, or a restore from the archive tier does it): "
            f"{rehydration_hint()}"
        )


def _tier_state(props: BlobProperties) -> TierState:
    def text(value: object) -> str | None:
        if value is None or value == "":
            return None
        return str(getattr(value, "value", value))

    return TierState(
        tier=text(props.blob_tier),
        archive_status=text(props.archive_status),
        rehydrate_priority=text(getattr(props, "rehydrate_priority", None)),
        changed_at=props.blob_tier_change_time,
    )


# --------------------------------------------------------------------------- configuration


def build_service_client(
    where: str,
    cfg: TierConfig,
    environ: Mapping[str, str],
    options: ClientOptions | None = None,
) -> BlobServiceClient:
    """The SDK client for a tier's configuration. Messages name variables, never their values.

    * ``connection_string_env``: name of an environment variable holding a connection
      string (account key or ``SharedAccessSignature=``);
    * ``account_url`` (no query string) plus, if the tier has ``sas_token_env``, a SAS
      token from that variable; otherwise azure-identity's DefaultAzureCredential
      (managed identity, workload identity, environment, Azure CLI ...).
    """
    kwargs = (options or ClientOptions()).client_kwargs()
    conn_var = cfg.connection_string_env
    sas_var: str | None = getattr(cfg, "sas_token_env", None)
    if conn_var and cfg.account_url:
        raise ConfigError(f"{where}: set either connection_string_env or account_url, not both")
    if conn_var:
        value = environ.get(conn_var, "").strip()
        if not value:
            raise ConfigError(
                f"{where}: environment variable {conn_var} is not set or empty; it must hold the Azure "
                "Storage connection string for this tier"
            )
        try:
            return BlobServiceClient.from_connection_string(value, **kwargs)
        except (ValueError, TypeError, AzureError):
            raise ConfigError(
                f"{where}: environment variable {conn_var} does not hold a valid Azure Storage connection "
                "string (it needs BlobEndpoint=... or AccountName=..., and AccountKey=... or "
                "SharedAccessSignature=...)"
            ) from None
    if cfg.account_url:
        parts = urlsplit(cfg.account_url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ConfigError(f"{where}: account_url must be an https:// URL of the storage account's blob endpoint")
        if parts.query or parts.username or parts.password:
            raise ConfigError(
                f"{where}: account_url must not contain a query string or credentials; put a SAS token in "
                "the environment variable named by sas_token_env instead"
            )
        credential: Any
        if sas_var:
            sas = environ.get(sas_var, "").strip().lstrip("?")
            if not sas:
                raise ConfigError(
                    f"{where}: environment variable {sas_var} is not set or empty; it must hold a SAS token "
                    "for this tier's container"
                )
            credential = sas
        else:
            try:
                from azure.identity import DefaultAzureCredential
            except ImportError:  # pragma: no cover - azure-identity is a pinned dependency
                raise ConfigError(
                    f"{where}: account_url without a SAS needs azure-identity (pip install azure-identity)"
                ) from None
            credential = DefaultAzureCredential()
        try:
            return BlobServiceClient(cfg.account_url, credential=credential, **kwargs)
        except (ValueError, TypeError, AzureError):
            raise ConfigError(f"{where}: cannot use account_url {_public_endpoint(cfg.account_url)!r}") from None
    raise ConfigError(
        f"{where}: an azure tier needs connection_string_env (the name of an environment variable holding a "
        "connection string) or account_url"
    )


def open_azure_store(
    tier_name: str,
    cfg: TierConfig,
    environ: Mapping[str, str] | None = None,
    *,
    options: ClientOptions | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    validate_content: Validation = True,
) -> AzureStore:
    """The AzureStore for policy tier ``tier_name``; ConfigError (naming variables, never values) if unusable.

    No network call happens here; the container is created (if missing) before the first write.
    """
    where = f"tiers.{tier_name}"
    if cfg.store != "azure":
        raise ConfigError(f"{where}: store is {cfg.store!r}, not 'azure'")
    if not cfg.container:
        raise ConfigError(f"{where}: an azure tier needs 'container' (the blob container for its backups)")
    if not _CONTAINER_RE.match(cfg.container):
        raise ConfigError(
            f"{where}: container {cfg.container!r} is not a valid Azure container name (3-63 characters: "
            "lowercase letters, digits and single hyphens, starting and ending with a letter or digit)"
        )
    prefix: str = getattr(cfg, "prefix", None) or ""
    env: Mapping[str, str] = os.environ if environ is None else environ
    service = build_service_client(where, cfg, env, options)
    try:
        return AzureStore(
            service,
            cfg.container,
            name=tier_name,
            access_tier=cfg.access_tier,
            prefix=prefix,
            block_size=block_size,
            max_concurrency=max_concurrency,
            validate_content=validate_content,
        )
    except (ValueError, StoreError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


if TYPE_CHECKING:

    def _conforms_to_store(store: AzureStore) -> Store:
        return store
