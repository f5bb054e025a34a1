"""Streaming compress -> encrypt -> hash for backup bytes, and the exact reverse for restore.

Why this module exists: every byte drkit stores passes through here exactly once,
in memory bounded by the frame size (never by the size of the backup), so that a
1 TiB database can be backed up by a process using a few tens of MiB. The same
code gives every stored object a SHA-256 of the bytes actually at rest, which the
catalog records and ``drkit verify`` checks without needing the key.

Pipeline
========

Writing (:class:`EncryptingWriter`)::

    producer bytes --> zstd (level, threads) --> AES-256-GCM frames --> sink
                                                        \\--> SHA-256 of everything written to the sink

Reading (:class:`DecryptingReader`) is the reverse: frames are authenticated and
decrypted one at a time, and the zstd decompressor pulls from them. Compression
always happens before encryption (ciphertext does not compress).

Wire format, version 2
======================

All integers are unsigned big-endian. A stream is one header followed by one or
more frames::

    header:
      offset  size  field
      0       4     magic            b"DRKT"
      4       1     version          2
      5       1     compression id   1 = zstd (one zstd frame, RFC 8878, with content checksum)
      6       1     cipher id        1 = AES-256-GCM
      7       1     key_id_len       L, 1..64
      8       L     key_id           ASCII; sha256(b"drkit-key-id:" + key).hexdigest()[:16]
      8+L     4     chunk_size       maximum plaintext bytes per frame, 1..64 MiB
      12+L    8     salt             random per stream
      20+L    2     context_len      C, 1..1024
      22+L    C     context          UTF-8; what the stream is: "<database>/<backup id>/<object name>"

    frame i (i = 0, 1, 2, ...):
      4     ciphertext length N      16 <= N <= chunk_size + 16
      N     ciphertext || 16-byte GCM tag

Plaintext of the frames, concatenated, is the compressed (zstd) stream. Every
frame except the last carries exactly ``chunk_size`` plaintext bytes; the last
carries 0..chunk_size bytes.

Per frame i:

* nonce (12 bytes) = salt (8 bytes) || u32 i. Frame indices are limited to
  0 .. 2**32-2 (at most 2**32-1 frames; 16 PiB at 4 MiB frames), so a nonce is
  never reused within a stream; the random salt separates streams under the
  same key (a salt collision needs ~2**32 streams per key).
* AAD = the full header bytes || u64 i || u8 final, where final is 1 only on the
  last frame of the stream. The last frame is always flagged final, even if it
  carries 0 plaintext bytes.

The context binds a stream to the one object it was written as: the writer is
given it (``context=``), every reader must say which object it expects
(``expected_context=``), and a stream whose context differs is refused before
anything is decrypted. Because the context is part of the header, and so of every
frame's AAD, it cannot be edited to match without failing authentication: one
backup's data copied over another's, or a manifest put where data belongs, is
refused by name. Version 1 streams (no context) are refused: they were never
released, and an unbound stream is exactly what version 2 exists to rule out.

Consequences, all detected as :class:`~drkit.errors.IntegrityError`:

* any changed header byte changes every frame's AAD (or makes the header
  unparseable); a changed key id is reported as :class:`EncryptionKeyError`;
* a stream stored under another object's name fails the context check (and an
  edited context fails authentication);
* reordered frames fail because the index is in the nonce and AAD;
* frames spliced from another stream fail because salt and header differ;
* a stream cut at a frame boundary fails because its last frame is not flagged
  final (this is also what a writer that failed mid-stream leaves behind);
* bytes after the final frame are rejected;
* a changed length prefix shifts frame boundaries and fails authentication;
* compressed data that is not exactly one complete zstd frame is rejected
  (zstandard's stream reader alone reports a clean EOF on a cut-off frame, so
  the reader follows the zstd block headers as the data passes).

The SHA-256 reported in :class:`StreamStats` covers the stored bytes (header and
frames), so stored copies can be checked with :func:`verify_stored` without the key
(which also reads the context from the header, to name a swapped object).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, TYPE_CHECKING, Protocol, Self, cast, overload

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from drkit.errors import DrkitError, EncryptionKeyError, IntegrityError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FORMAT_VERSION",
    "MAX_CHUNK_SIZE",
    "DecryptingReader",
    "EncryptingWriter",
    "EncryptionKey",
    "StreamHeader",
    "StreamStats",
    "Readable",
    "Writable",
    "context_mismatch",
    "copy_stream",
    "describe_context",
    "read_header",
    "sha256_of_stream",
    "verify_stored",
]

FORMAT_VERSION = 2
DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
MIN_CHUNK_SIZE = 1
MAX_CHUNK_SIZE = 64 * 1024 * 1024

MAGIC = b"DRKT"
KEY_BYTES = 32
TAG_BYTES = 16
SALT_BYTES = 8
MAX_KEY_ID_LEN = 64
MAX_CONTEXT_LEN = 1024
# At most this many frames per stream: the frame index is a u32 in the nonce.
# Module-level (read at run time) so tests can lower it.
MAX_FRAMES = 2**32 - 1

_COMPRESSION_IDS = {1: "zstd"}
_CIPHER_IDS = {1: "aes-256-gcm"}
_KEY_ID_PREFIX = b"drkit-key-id:"
_KEYGEN_HINT = "python -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())'"

_FIXED_HEAD = struct.Struct(">4sBBBB")  # magic, version, compression, cipher, key_id_len
_HEAD_TAIL = struct.Struct(">I8sH")  # chunk_size, salt, context_len
_FRAME_LEN = struct.Struct(">I")
_AAD_TAIL = struct.Struct(">QB")  # frame index, final flag


class Readable(Protocol):
    """Anything with ``read(n)``: files, pipes, BytesIO, DecryptingReader. ``readinto`` is used if present."""

    def read(self, size: int = ..., /) -> bytes | None: ...


class Writable(Protocol):
    """Anything with a ``write`` that takes a bytes-like object (files, sockets' makefile, writers here)."""

    def write(self, data: memoryview, /) -> object: ...


# --------------------------------------------------------------------------- keys


def _derive_key_id(key: bytes) -> str:
    return hashlib.sha256(_KEY_ID_PREFIX + key).hexdigest()[:16]


@dataclass(frozen=True)
class EncryptionKey:
    """A 32-byte AES-256 key and its public id (safe to log and store in stream headers)."""

    key: bytes = field(repr=False)
    key_id: str

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes) or len(self.key) != KEY_BYTES:
            size = len(self.key) if isinstance(self.key, (bytes, bytearray)) else "non-bytes"
            raise EncryptionKeyError(f"an encryption key must be exactly {KEY_BYTES} bytes, got {size}")
        if self.key_id != _derive_key_id(self.key):
            raise EncryptionKeyError(
                "key_id does not match the key; build keys with EncryptionKey.from_bytes()"
            )

    @classmethod
    def from_bytes(cls, key: bytes) -> EncryptionKey:
        key = bytes(key)
        if len(key) != KEY_BYTES:
            raise EncryptionKeyError(f"an encryption key must be exactly {KEY_BYTES} bytes, got {len(key)}")
        return cls(key=key, key_id=_derive_key_id(key))

    @classmethod
    def from_env(cls, var: str, environ: Mapping[str, str] | None = None) -> EncryptionKey:
        """Load the key from environment variable ``var`` holding base64 of exactly 32 bytes.

        Error messages name the variable and never contain its value.
        """
        env = os.environ if environ is None else environ
        value = env.get(var, "").strip()
        if not value:
            raise EncryptionKeyError(
                f"environment variable {var} is not set or empty; it must hold the base64 of a "
                f"32-byte key. Generate one with: {_KEYGEN_HINT}"
            )
        try:
            key = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise EncryptionKeyError(
                f"environment variable {var} is not valid base64; it must hold the base64 of a "
                f"32-byte key. Generate one with: {_KEYGEN_HINT}"
            ) from None
        if len(key) != KEY_BYTES:
            raise EncryptionKeyError(
                f"environment variable {var} decodes to {len(key)} bytes; the key must be exactly "
                f"{KEY_BYTES} bytes. Generate one with: {_KEYGEN_HINT}"
            )
        return cls.from_bytes(key)

    @staticmethod
    def generate() -> EncryptionKey:
        return EncryptionKey.from_bytes(os.urandom(KEY_BYTES))


# --------------------------------------------------------------------------- header


@dataclass(frozen=True)
class StreamHeader:
    """The parsed stream header (see the module docstring for its layout)."""

    version: int
    compression: str
    cipher: str
    key_id: str
    chunk_size: int
    salt: bytes
    context: str  # the object this stream was written as: "<database>/<backup id>/<name>"

    def to_bytes(self) -> bytes:
        comp = _id_for(_COMPRESSION_IDS, self.compression)
        ciph = _id_for(_CIPHER_IDS, self.cipher)
        kid = self.key_id.encode("ascii")
        if not 1 <= len(kid) <= MAX_KEY_ID_LEN:
            raise ValueError(f"key_id must be 1..{MAX_KEY_ID_LEN} ASCII characters")
        if len(self.salt) != SALT_BYTES:
            raise ValueError(f"salt must be {SALT_BYTES} bytes")
        ctx = _encode_context(self.context)
        return (
            _FIXED_HEAD.pack(MAGIC, self.version, comp, ciph, len(kid))
            + kid
            + _HEAD_TAIL.pack(self.chunk_size, self.salt, len(ctx))
            + ctx
        )


def _encode_context(context: str) -> bytes:
    if not isinstance(context, str):
        raise TypeError(f"a stream context must be a str, not {type(context).__name__}")
    raw = context.encode("utf-8")
    if not 1 <= len(raw) <= MAX_CONTEXT_LEN:
        raise ValueError(f"a stream context must be 1..{MAX_CONTEXT_LEN} bytes of UTF-8, got {len(raw)}")
    return raw


def describe_context(context: str) -> str:
    """``"app/app-full-1/data.drk"`` → ``"backup app-full-1's data.drk"`` (other contexts are quoted)."""
    parts = context.rsplit("/", 2)
    if len(parts) == 3 and all(parts):
        return f"backup {parts[1]}'s {parts[2]}"
    return repr(context)


def context_mismatch(found: str, expected: str) -> IntegrityError:
    """The error for a stream that is another object than the one asked for; names both."""
    got, want = describe_context(found), describe_context(expected)
    db_found, db_expected = found.rsplit("/", 2)[0], expected.rsplit("/", 2)[0]
    if db_found != db_expected and "/" in found and "/" in expected:
        got, want = f"{got} (database {db_found!r})", f"{want} (database {db_expected!r})"
    return IntegrityError(
        f"object is {got}, expected {want}: a stored object was swapped or copied to the wrong place"
    )


@dataclass(frozen=True)
class StreamStats:
    """Sizes and checksum of one stream, as the catalog records them."""

    raw_bytes: int  # bytes the producer wrote (or the reader returned)
    stored_bytes: int  # bytes that went to the sink (or came from the source)
    sha256: str  # hex SHA-256 of the stored bytes


def _id_for(table: Mapping[int, str], name: str) -> int:
    for ident, known in table.items():
        if known == name:
            return ident
    raise ValueError(f"unsupported algorithm {name!r}")


def _read_exact(source: Readable, n: int) -> bytes:
    """Read up to ``n`` bytes, retrying short reads; returns fewer only at EOF."""
    data = source.read(n)
    if data is None:
        data = b""
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = source.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _readinto_exact(source: Readable, view: memoryview) -> int:
    """Fill ``view`` from ``source``; returns the number of bytes read (short only at EOF)."""
    readinto = getattr(source, "readinto", None)
    total = 0
    size = len(view)
    while total < size:
        if readinto is not None:
            n = int(readinto(view[total:]) or 0)
        else:
            chunk = source.read(size - total)
            n = len(chunk) if chunk else 0
            if chunk:
                view[total : total + n] = chunk
        if not n:
            break
        total += n
    return total


def _read_header_bytes(source: Readable) -> tuple[StreamHeader, bytes]:
    fixed = _read_exact(source, _FIXED_HEAD.size)
    if len(fixed) < _FIXED_HEAD.size:
        if fixed and not MAGIC.startswith(fixed[: len(MAGIC)]):
            raise IntegrityError("not a drkit stream: bad magic bytes")
        raise IntegrityError(
            f"truncated stream: header needs at least {_FIXED_HEAD.size} bytes, got {len(fixed)}"
        )
    magic, version, comp, ciph, kid_len = _FIXED_HEAD.unpack(fixed)
    if magic != MAGIC:
        raise IntegrityError("not a drkit stream: bad magic bytes")
    if version == 1:
        raise IntegrityError(
            "stream format version 1 (not bound to its backup) is not read by this drkit, which reads "
            f"version {FORMAT_VERSION}; take a new backup with this drkit"
        )
    if version != FORMAT_VERSION:
        raise IntegrityError(
            f"unsupported stream format version {version}; this drkit reads version {FORMAT_VERSION}"
        )
    if comp not in _COMPRESSION_IDS:
        raise IntegrityError(f"unknown compression id {comp} in stream header")
    if ciph not in _CIPHER_IDS:
        raise IntegrityError(f"unknown cipher id {ciph} in stream header")
    if not 1 <= kid_len <= MAX_KEY_ID_LEN:
        raise IntegrityError(f"corrupt stream header: key id length {kid_len}")
    rest_len = kid_len + _HEAD_TAIL.size
    rest = _read_exact(source, rest_len)
    if len(rest) < rest_len:
        raise IntegrityError(f"truncated stream: header ends after {len(fixed) + len(rest)} bytes")
    try:
        key_id = rest[:kid_len].decode("ascii")
    except UnicodeDecodeError:
        raise IntegrityError("corrupt stream header: key id is not ASCII") from None
    chunk_size, salt, ctx_len = _HEAD_TAIL.unpack(rest[kid_len:])
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise IntegrityError(f"corrupt stream header: chunk size {chunk_size} is out of range")
    if not 1 <= ctx_len <= MAX_CONTEXT_LEN:
        raise IntegrityError(f"corrupt stream header: context length {ctx_len}")
    ctx = _read_exact(source, ctx_len)
    if len(ctx) < ctx_len:
        raise IntegrityError(
            f"truncated stream: header ends after {len(fixed) + len(rest) + len(ctx)} bytes"
        )
    try:
        context = ctx.decode("utf-8")
    except UnicodeDecodeError:
        raise IntegrityError("corrupt stream header: context is not UTF-8") from None
    header = StreamHeader(
        version=version,
        compression=_COMPRESSION_IDS[comp],
        cipher=_CIPHER_IDS[ciph],
        key_id=key_id,
        chunk_size=chunk_size,
        salt=salt,
        context=context,
    )
    return header, fixed + rest + ctx


def read_header(source: Readable) -> StreamHeader:
    """Parse the stream header at the current position (no key needed).

    Bad magic, unknown version/algorithm ids or a truncated header raise IntegrityError.
    The context it returns is not authenticated yet (frames are): use it to name, not to trust.
    """
    return _read_header_bytes(source)[0]


# --------------------------------------------------------------------------- writer


def _write_all(sink: Writable, view: memoryview) -> None:
    """Write all of ``view``, retrying short writes of raw (unbuffered) sinks."""
    while view:
        written = sink.write(view)
        if not isinstance(written, int) or written >= len(view):
            return
        if written <= 0:
            raise OSError(f"sink accepted no bytes ({written!r}); non-blocking sinks are not supported")
        view = view[written:]


class _CompressedSink:
    """The file-like zstd writes compressed bytes into; hands them to the frame encoder."""

    def __init__(self, owner: EncryptingWriter) -> None:
        self._owner = owner

    def write(self, data: ReadableBuffer) -> int:
        return self._owner._accept_compressed(data)

    def flush(self) -> None:
        pass


class EncryptingWriter:
    """Writable file-like: compresses, encrypts and hashes everything written, into ``sink``.

    ``context`` names the object the stream is written as (``"<database>/<backup id>/<name>"``);
    it is stored in the header and authenticated with every frame, and a reader must expect it.

    Use as a context manager. A clean exit writes the final frame; an exception
    inside the block abandons the stream without a final frame, so readers
    report it as truncated. ``close()`` does not close ``sink``.

    Deliberately not an ``io.IOBase``: IOBase would call ``close()`` from
    ``__del__`` and so finalize (mark complete) a stream abandoned by a crash.

    Memory: two ``chunk_size`` buffers plus zstd's own state. Buffers handed to
    ``sink.write`` are reused after it returns (the ``io`` contract): a sink must
    copy what it keeps.
    """

    def __init__(
        self,
        sink: Writable,
        key: EncryptionKey,
        *,
        context: str,
        level: int = 3,
        threads: int = -1,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}, got {chunk_size}")
        self._sink = sink
        self._aead = AESGCM(key.key)
        self._chunk_size = chunk_size
        self.header = StreamHeader(
            version=FORMAT_VERSION,
            compression="zstd",
            cipher="aes-256-gcm",
            key_id=key.key_id,
            chunk_size=chunk_size,
            salt=os.urandom(SALT_BYTES),
            context=context,
        )
        self._header_bytes = self.header.to_bytes()
        self._hash = hashlib.sha256()
        self._raw = 0
        self._stored = 0
        self._index = 0
        self._plain = memoryview(bytearray(chunk_size))
        self._fill = 0
        self._out = memoryview(bytearray(_FRAME_LEN.size + chunk_size + TAG_BYTES))
        self._state = "open"  # open | closed | aborted
        self._stats: StreamStats | None = None
        self._emit(memoryview(self._header_bytes))
        cctx = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True)
        self._zstd: zstandard.ZstdCompressionWriter | None = cctx.stream_writer(
            cast("IO[bytes]", _CompressedSink(self)), closefd=False
        )

    # -- file-like surface

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self._state != "open"

    def flush(self) -> None:
        """No-op: data reaches the sink in whole frames; everything is written by ``close()``."""

    def write(self, data: ReadableBuffer) -> int:
        if self._state != "open" or self._zstd is None:
            raise ValueError(f"write to a {self._state} EncryptingWriter")
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        n = view.nbytes
        try:
            self._zstd.write(view)
        except BaseException:
            self.abort()
            raise
        self._raw += n
        return n

    def close(self) -> None:
        """Flush zstd, write the final frame. Idempotent; a no-op on an aborted writer."""
        if self._state != "open" or self._zstd is None:
            return
        try:
            self._zstd.flush(zstandard.FLUSH_FRAME)  # ends the zstd frame, via _accept_compressed
            self._zstd = None
            self._seal(final=True)
            flush = getattr(self._sink, "flush", None)
            if flush is not None:
                flush()
        except BaseException:
            self.abort()
            raise
        self._state = "closed"
        self._stats = StreamStats(self._raw, self._stored, self._hash.hexdigest())

    def abort(self) -> None:
        """Abandon the stream without a final frame (readers will report it truncated)."""
        if self._state == "closed":
            return
        self._state = "aborted"
        self._zstd = None

    @property
    def stats(self) -> StreamStats:
        if self._stats is None:
            raise RuntimeError(
                f"EncryptingWriter stats are available only after close() (state: {self._state})"
            )
        return self._stats

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- internals

    def _emit(self, view: memoryview) -> None:
        self._hash.update(view)
        _write_all(self._sink, view)
        self._stored += len(view)

    def _accept_compressed(self, data: ReadableBuffer) -> int:
        src = memoryview(data)
        if src.format != "B" or src.ndim != 1:
            src = src.cast("B")
        n = len(src)
        pos = 0
        chunk = self._chunk_size
        while pos < n:
            if self._fill == chunk:  # full and more is coming: this frame is not the last
                self._seal(final=False)
            take = min(chunk - self._fill, n - pos)
            self._plain[self._fill : self._fill + take] = src[pos : pos + take]
            self._fill += take
            pos += take
        return n

    def _seal(self, *, final: bool) -> None:
        if self._index >= MAX_FRAMES:
            raise DrkitError(
                f"stream too long: more than {MAX_FRAMES} frames of {self._chunk_size} bytes; "
                "use a larger chunk_size"
            )
        n = self._fill
        ct_len = n + TAG_BYTES
        nonce = self.header.salt + _FRAME_LEN.pack(self._index)
        aad = self._header_bytes + _AAD_TAIL.pack(self._index, 1 if final else 0)
        _FRAME_LEN.pack_into(self._out, 0, ct_len)
        end = _FRAME_LEN.size + ct_len
        self._aead.encrypt_into(nonce, self._plain[:n], aad, self._out[_FRAME_LEN.size : end])
        self._emit(self._out[:end])
        self._index += 1
        self._fill = 0


# --------------------------------------------------------------------------- reader


class _ZstdFrameTracker:
    """Follows the structure of the compressed stream (RFC 8878) as it passes by.

    zstandard's stream reader reports a clean EOF on a cut-off zstd frame, so this
    tracker is what proves that the compressed data is exactly one complete zstd
    frame with nothing after it. Work is per block header (blocks are <= 128 KiB),
    never per byte.
    """

    _ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

    def __init__(self) -> None:
        self._acc = bytearray()
        self._need = 5  # magic + frame header descriptor
        self._state = "frame_header"
        self._skip = 0
        self._after_skip = ""
        self._checksum = False

    @property
    def complete(self) -> bool:
        return self._state == "done"

    def feed(self, data: memoryview) -> None:
        pos = 0
        n = len(data)
        while pos < n:
            if self._skip:
                take = min(self._skip, n - pos)
                self._skip -= take
                pos += take
                if not self._skip:
                    self._enter(self._after_skip)
                continue
            if self._state == "done":
                raise IntegrityError("corrupt stream: data after the end of the compressed stream")
            take = min(self._need - len(self._acc), n - pos)
            self._acc += data[pos : pos + take]
            pos += take
            if len(self._acc) == self._need:
                fields = bytes(self._acc)
                self._acc.clear()
                self._parse(fields)

    def _skip_then(self, count: int, state: str) -> None:
        if count:
            self._skip = count
            self._after_skip = state
        else:
            self._enter(state)

    def _enter(self, state: str) -> None:
        if state == "checksum":
            self._skip_then(4, "done")
            return
        self._state = state
        self._need = 3 if state == "block_header" else 0

    def _parse(self, fields: bytes) -> None:
        if self._state == "frame_header":
            if fields[:4] != self._ZSTD_MAGIC:
                raise IntegrityError("corrupt stream: compressed data is not a zstd frame")
            fhd = fields[4]
            if fhd & 0x08:
                raise IntegrityError("corrupt stream: reserved bit set in zstd frame header")
            single_segment = (fhd >> 5) & 1
            self._checksum = bool(fhd & 0x04)
            fcs_size = (1 if single_segment else 0, 2, 4, 8)[fhd >> 6]
            rest = (0 if single_segment else 1) + (0, 1, 2, 4)[fhd & 0x03] + fcs_size
            self._skip_then(rest, "block_header")
            return
        # block header: 3 bytes little-endian: last(1) | type(2) | size(21)
        value = int.from_bytes(fields, "little")
        last = value & 1
        block_type = (value >> 1) & 3
        size = value >> 3
        if block_type == 3:
            raise IntegrityError("corrupt stream: reserved zstd block type")
        content = 1 if block_type == 1 else size  # RLE blocks store one byte
        if last:
            self._skip_then(content, "checksum" if self._checksum else "done")
        else:
            self._skip_then(content, "block_header")


class _FrameSource:
    """Authenticates and decrypts frames one at a time; the zstd reader pulls plaintext from it."""

    def __init__(self, source: Readable, aead: AESGCM, header: StreamHeader, header_bytes: bytes,
                 hasher: hashlib._Hash) -> None:
        self._source = source
        self._aead = aead
        self._header_bytes = header_bytes
        self._salt = header.salt
        self._chunk_size = header.chunk_size
        self._hash = hasher
        self.stored = len(header_bytes)
        self._ct = memoryview(bytearray(header.chunk_size + TAG_BYTES))
        self._pt = memoryview(bytearray(header.chunk_size))
        self._pos = 0
        self._len = 0
        self._index = 0
        self._final_seen = False
        self._started = False
        self._next_len: int | None = None
        self.tracker = _ZstdFrameTracker()

    def read(self, size: int = -1) -> memoryview:
        # The returned view aliases the plaintext buffer; zstd consumes it fully before
        # asking for more, and the buffer is only overwritten by the next _load().
        while self._pos == self._len:
            if self._final_seen:
                return self._pt[:0]
            self._load()
        end = self._len if size < 0 else min(self._len, self._pos + size)
        out = self._pt[self._pos : end]
        self._pos = end
        self.tracker.feed(out)
        return out

    def finish(self) -> None:
        """At decompressor EOF: consume whatever remains and prove the stream ended properly."""
        if self._pos < self._len:
            self.tracker.feed(self._pt[self._pos : self._len])
            self._pos = self._len
        while not self._final_seen:
            self._load()
            self.tracker.feed(self._pt[: self._len])
            self._pos = self._len
        if not self.tracker.complete:
            raise IntegrityError(
                f"truncated stream: the compressed data ends mid-way through {self._index} frame(s)"
            )

    def _read_len(self) -> int | None:
        raw = _read_exact(self._source, _FRAME_LEN.size)
        if not raw:
            return None
        if len(raw) < _FRAME_LEN.size:
            raise IntegrityError(
                f"truncated or corrupt stream: it ends with {len(raw)} stray byte(s) where a "
                f"frame length prefix should be (near frame {self._index})"
            )
        self._hash.update(raw)
        self.stored += len(raw)
        return int.from_bytes(raw, "big")

    def _aad(self, index: int, final: bool) -> bytes:
        return self._header_bytes + _AAD_TAIL.pack(index, 1 if final else 0)

    def _load(self) -> None:
        index = self._index
        if not self._started:
            self._started = True
            self._next_len = self._read_len()
        ct_len = self._next_len
        if ct_len is None:
            if index == 0:
                raise IntegrityError(
                    "truncated stream: header present but no frames (the backup was never completed)"
                )
            raise IntegrityError(
                f"truncated stream: ends after frame {index - 1}, which is not the final frame"
            )
        if index >= MAX_FRAMES:
            raise IntegrityError(f"corrupt stream: more than {MAX_FRAMES} frames")
        if not TAG_BYTES <= ct_len <= self._chunk_size + TAG_BYTES:
            raise IntegrityError(
                f"corrupt stream: frame {index} declares {ct_len} bytes, outside "
                f"{TAG_BYTES}..{self._chunk_size + TAG_BYTES}"
            )
        ct = self._ct[:ct_len]
        got = _readinto_exact(self._source, ct)
        if got:
            self._hash.update(ct[:got])
            self.stored += got
        if got < ct_len:
            raise IntegrityError(f"truncated stream: frame {index} ends after {got} of {ct_len} bytes")
        self._next_len = self._read_len()
        at_end = self._next_len is None
        nonce = self._salt + _FRAME_LEN.pack(index)
        pt = self._pt[: ct_len - TAG_BYTES]
        try:
            self._aead.decrypt_into(nonce, ct, self._aad(index, at_end), pt)
        except InvalidTag:
            try:
                self._aead.decrypt_into(nonce, ct, self._aad(index, not at_end), pt)
            except InvalidTag:
                raise IntegrityError(
                    f"frame {index} failed authentication: the stored data is corrupt or was altered"
                ) from None
            if at_end:
                raise IntegrityError(
                    f"truncated stream: ends after frame {index}, which is not the final frame "
                    "(the backup was not completed or was cut short)"
                ) from None
            raise IntegrityError(f"corrupt stream: data follows the final frame {index}") from None
        if not at_end and ct_len != self._chunk_size + TAG_BYTES:
            raise IntegrityError(f"corrupt stream: non-final frame {index} is shorter than the chunk size")
        self._index = index + 1
        self._pos = 0
        self._len = ct_len - TAG_BYTES
        self._final_seen = at_end


class DecryptingReader(io.RawIOBase):
    """Readable file-like returning the original bytes of a stream written by EncryptingWriter.

    The header is read, and its key id and context checked, on construction:
    ``expected_context`` is the object the caller means to read (see
    :class:`EncryptingWriter`), and a stream written as any other object is
    refused with an IntegrityError naming both. Each frame is authenticated
    (context included) before any of its bytes are decompressed. Reaching EOF
    proves the stream was complete; with ``expected_sha256`` it also proves the
    stored bytes match the catalog. ``close()`` does not close ``source``.
    """

    def __init__(self, source: Readable, key: EncryptionKey, *, expected_context: str,
                 expected_sha256: str | None = None) -> None:
        super().__init__()
        _encode_context(expected_context)
        self._hash = hashlib.sha256()
        header, header_bytes = _read_header_bytes(source)
        if header.key_id != key.key_id:
            raise EncryptionKeyError(
                f"{describe_context(expected_context)} was written with key id {header.key_id}; "
                f"the configured key has id {key.key_id}"
            )
        if header.context != expected_context:
            raise context_mismatch(header.context, expected_context)
        self._hash.update(header_bytes)
        self.header = header
        self._expected = expected_sha256.strip().lower() if expected_sha256 is not None else None
        self._frames = _FrameSource(source, AESGCM(key.key), header, header_bytes, self._hash)
        self._zstd: zstandard.ZstdDecompressionReader | None = zstandard.ZstdDecompressor().stream_reader(
            cast("IO[bytes]", self._frames), closefd=False
        )
        self._raw = 0
        self._stats: StreamStats | None = None
        self._error: BaseException | None = None

    def readable(self) -> bool:
        return True

    @property
    def stats(self) -> StreamStats:
        if self._stats is None:
            raise RuntimeError("DecryptingReader stats are available only after reading to EOF")
        return self._stats

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if not len(view):
            return 0
        return self._pull(view)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        if size == 0:
            return b""
        return self._pull(size)

    def readall(self) -> bytes:
        parts: list[bytes] = []
        while True:
            data = self._pull(1 << 20)
            if not data:
                return b"".join(parts)
            parts.append(data)

    def close(self) -> None:
        self._zstd = None
        super().close()

    @overload
    def _pull(self, want: memoryview) -> int: ...
    @overload
    def _pull(self, want: int) -> bytes: ...

    def _pull(self, want: memoryview | int) -> int | bytes:
        """Decompress into ``want`` (a buffer) or return up to ``want`` bytes; runs EOF checks."""
        if self.closed:
            raise ValueError("I/O operation on closed DecryptingReader")
        if self._error is not None:
            raise self._error
        empty: int | bytes = b"" if isinstance(want, int) else 0
        if self._stats is not None or self._zstd is None:
            return empty
        try:
            try:
                got = self._zstd.read(want) if isinstance(want, int) else self._zstd.readinto(want)
            except zstandard.ZstdError as exc:
                raise IntegrityError(f"corrupt stream: zstd could not decompress it ({exc})") from exc
            n = got if isinstance(got, int) else len(got)
            if n:
                self._raw += n
                return got
            self._finish()
            return empty
        except IntegrityError as exc:
            self._error = exc
            raise

    def _finish(self) -> None:
        self._frames.finish()
        digest = self._hash.hexdigest()
        if self._expected is not None and digest != self._expected:
            raise IntegrityError(
                f"stored stream sha256 is {digest} but the expected sha256 is {self._expected}"
            )
        self._stats = StreamStats(self._raw, self._frames.stored, digest)
        self._zstd = None


# --------------------------------------------------------------------------- helpers


def copy_stream(src: Readable, dst: Writable, bufsize: int = 1 << 20) -> int:
    """Copy ``src`` to ``dst`` through one reused buffer; returns the number of bytes copied."""
    buf = memoryview(bytearray(bufsize))
    total = 0
    while True:
        n = _read_some(src, buf)
        if not n:
            return total
        _write_all(dst, buf[:n])
        total += n


def _read_some(src: Readable, buf: memoryview) -> int:
    readinto = getattr(src, "readinto", None)
    if readinto is not None:
        n = readinto(buf)
        return int(n or 0)
    chunk = src.read(len(buf))
    if not chunk:
        return 0
    buf[: len(chunk)] = chunk
    return len(chunk)


def sha256_of_stream(source: Readable, bufsize: int = 1 << 20) -> tuple[str, int]:
    """Hex SHA-256 and length of everything left in ``source`` (no key needed)."""
    return _hash_rest(source, hashlib.sha256(), bufsize)


def verify_stored(source: Readable, expected_sha256: str, *, expected_context: str | None = None) -> int:
    """Check stored bytes against the catalog's SHA-256, without the key; returns their length.

    Raises IntegrityError naming both hashes on mismatch. With ``expected_context``
    the header is read on the way too, and a stream written as another object is
    refused naming both objects (the usual cause of a mismatch after a swap).
    """
    hasher = hashlib.sha256()
    head = _read_exact(source, _HEAD_PEEK)
    hasher.update(head)
    found: str | None = None
    if expected_context is not None:
        try:
            found = read_header(io.BytesIO(head)).context
        except IntegrityError:
            found = None  # not a readable header: the SHA-256 comparison below reports it
    tail_digest, tail_size = _hash_rest(source, hasher)
    digest, size = tail_digest, len(head) + tail_size
    expected = expected_sha256.strip().lower()
    if found is not None and expected_context is not None and found != expected_context:
        raise context_mismatch(found, expected_context)
    if digest != expected:
        raise IntegrityError(
            f"stored object sha256 is {digest} ({size} bytes) but the expected sha256 is {expected}"
        )
    return size


_HEAD_PEEK = _FIXED_HEAD.size + MAX_KEY_ID_LEN + _HEAD_TAIL.size + MAX_CONTEXT_LEN


def _hash_rest(source: Readable, hasher: hashlib._Hash, bufsize: int = 1 << 20) -> tuple[str, int]:
    buf = memoryview(bytearray(bufsize))
    total = 0
    while True:
        n = _read_some(source, buf)
        if not n:
            return hasher.hexdigest(), total
        hasher.update(buf[:n])
        total += n
