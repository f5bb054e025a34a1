"""Tests for drkit.pipeline: what a backup operator relies on when bytes go to and come back from storage.

A restore must return exactly what was backed up, or fail loudly: wrong key,
flipped bits, cut-off or reordered streams and checksum mismatches are all errors,
and the key never leaks into messages.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import struct
import tracemalloc

import psutil
import pytest
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import drkit.pipeline as pipeline
from drkit.errors import DrkitError, EncryptionKeyError, IntegrityError
from drkit.pipeline import (
    DEFAULT_CHUNK_SIZE,
    FORMAT_VERSION,
    DecryptingReader,
    EncryptingWriter,
    EncryptionKey,
    copy_stream,
    read_header,
    sha256_of_stream,
    verify_stored,
)

CHUNK = 4096
KEY = EncryptionKey.from_bytes(bytes(range(32)))
OTHER_KEY = EncryptionKey.from_bytes(bytes(range(1, 33)))
CTX = "app/app-full-20240501T120000-a1/data.drk"  # what every test stream is written as


def encrypt(data: bytes, key: EncryptionKey = KEY, *, chunk_size: int = CHUNK, threads: int = 0,
            level: int = 3, context: str = CTX) -> tuple[bytes, pipeline.StreamStats]:
    sink = io.BytesIO()
    with EncryptingWriter(sink, key, context=context, chunk_size=chunk_size, threads=threads, level=level) as w:
        w.write(data)
    return sink.getvalue(), w.stats


def decrypt(blob: bytes, key: EncryptionKey = KEY, expected_sha256: str | None = None,
            expected_context: str = CTX) -> bytes:
    with DecryptingReader(io.BytesIO(blob), key, expected_context=expected_context,
                          expected_sha256=expected_sha256) as r:
        return r.read()


def compressible(n: int) -> bytes:
    line = b"2024-05-01 12:00:00 UTC LOG: checkpoint complete: wrote 42 buffers\n"
    return (line * (n // len(line) + 1))[:n]


def layout(blob: bytes) -> tuple[int, list[tuple[int, int]]]:
    """Parse the documented wire format independently: header length and (start, end) of each frame."""
    kid_len = blob[7]
    (ctx_len,) = struct.unpack(">H", blob[8 + kid_len + 12 : 8 + kid_len + 14])
    header_len = 8 + kid_len + 4 + 8 + 2 + ctx_len
    frames = []
    pos = header_len
    while pos < len(blob):
        (n,) = struct.unpack(">I", blob[pos : pos + 4])
        frames.append((pos, pos + 4 + n))
        pos += 4 + n
    assert pos == len(blob)
    return header_len, frames


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 7 * CHUNK + 123])
@pytest.mark.parametrize("kind", ["random", "compressible"])
def test_round_trip_returns_exactly_the_input(size: int, kind: str) -> None:
    data = os.urandom(size) if kind == "random" else compressible(size)
    blob, stats = encrypt(data)
    assert decrypt(blob, expected_sha256=stats.sha256) == data


def test_round_trip_with_default_chunk_size_and_threads() -> None:
    data = os.urandom(3 * 1024 * 1024) + compressible(3 * 1024 * 1024)
    sink = io.BytesIO()
    with EncryptingWriter(sink, KEY, context=CTX) as w:  # defaults: level 3, all cores, 4 MiB frames
        w.write(data)
    assert w.header.chunk_size == DEFAULT_CHUNK_SIZE
    assert decrypt(sink.getvalue()) == data
    assert w.stats.stored_bytes < len(data)  # the compressible half did compress


def test_compressed_stream_exactly_filling_frames_round_trips() -> None:
    # Edge case: the last frame is completely full (and flagged final), no empty trailer frame.
    data = os.urandom(10_000)
    blob, _ = encrypt(data, chunk_size=1 << 20)
    header_len, frames = layout(blob)
    compressed_len = frames[0][1] - frames[0][0] - 4 - 16
    for chunk in (compressed_len, compressed_len // 2 if compressed_len % 2 == 0 else compressed_len // 3):
        if compressed_len % chunk:
            continue
        blob, _ = encrypt(data, chunk_size=chunk)
        _, frames = layout(blob)
        assert len(frames) == compressed_len // chunk
        assert all(end - start == 4 + chunk + 16 for start, end in frames)
        assert decrypt(blob) == data


def test_many_small_writes_of_any_buffer_type() -> None:
    data = os.urandom(50_000)
    sink = io.BytesIO()
    with EncryptingWriter(sink, KEY, context=CTX, chunk_size=1000, threads=0) as w:
        for i in range(0, len(data), 777):
            piece = data[i : i + 777]
            w.write([bytes, bytearray, memoryview][i % 3](piece))
    assert decrypt(sink.getvalue()) == data
    assert w.stats.raw_bytes == len(data)


def test_write_returns_number_of_bytes_accepted() -> None:
    with EncryptingWriter(io.BytesIO(), KEY, context=CTX, threads=0) as w:
        assert w.write(b"abc") == 3
        assert w.write(memoryview(b"12345678").cast("I")) == 8
        assert w.writable()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=30_000),
    chunk_size=st.integers(min_value=1, max_value=6000),
    cuts=st.lists(st.integers(min_value=0, max_value=30_000), max_size=5),
    threads=st.sampled_from([0, 2]),
    level=st.sampled_from([1, 3, 10]),
    read_size=st.integers(min_value=1, max_value=50_000),
)
def test_property_round_trip(data: bytes, chunk_size: int, cuts: list[int], threads: int, level: int,
                             read_size: int) -> None:
    sink = io.BytesIO()
    with EncryptingWriter(sink, KEY, context=CTX, chunk_size=chunk_size, threads=threads, level=level) as w:
        prev = 0
        for cut in sorted(c for c in cuts if c <= len(data)) + [len(data)]:
            w.write(data[prev:cut])
            prev = cut
    out = bytearray()
    with DecryptingReader(io.BytesIO(sink.getvalue()), KEY, expected_context=CTX,
                          expected_sha256=w.stats.sha256) as r:
        while chunk := r.read(read_size):
            out += chunk
        assert r.stats == w.stats
    assert bytes(out) == data


def test_readinto_and_copy_stream_restore_the_data() -> None:
    data = os.urandom(100_000)
    blob, stats = encrypt(data)
    reader = DecryptingReader(io.BytesIO(blob), KEY, expected_context=CTX)
    buf = bytearray(10_000)
    n = reader.readinto(buf)
    assert 0 < n <= len(buf) and bytes(buf[:n]) == data[:n]
    rest = io.BytesIO()
    assert copy_stream(reader, rest, bufsize=3000) == len(data) - n
    assert bytes(buf[:n]) + rest.getvalue() == data
    assert reader.stats == stats


class Trickle:
    """A pipe-like source: every read returns at most ``step`` bytes, and there is no readinto."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data = data
        self.pos = 0
        self.step = step

    def read(self, size: int = -1) -> bytes:
        n = self.step if size < 0 else min(size, self.step)
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out


@pytest.mark.parametrize("step", [1, 3, 4097])
def test_short_reads_from_pipe_like_sources_are_handled(step: int) -> None:
    data = os.urandom(20_000)
    blob, stats = encrypt(data)
    with DecryptingReader(Trickle(blob, step), KEY, expected_context=CTX, expected_sha256=stats.sha256) as r:
        assert r.read() == data
    assert sha256_of_stream(Trickle(blob, step)) == (stats.sha256, len(blob))
    out = io.BytesIO()
    assert copy_stream(Trickle(data, step), out) == len(data)
    assert out.getvalue() == data


# --------------------------------------------------------------------------- format


def test_stream_follows_the_documented_wire_format() -> None:
    data = compressible(9000) + os.urandom(5000)
    blob, _ = encrypt(data, chunk_size=1024)
    magic, version, comp, ciph, kid_len = struct.unpack(">4sBBBB", blob[:8])
    assert (magic, version, comp, ciph) == (b"DRKT", FORMAT_VERSION, 1, 1)
    key_id = blob[8 : 8 + kid_len].decode("ascii")
    assert key_id == hashlib.sha256(b"drkit-key-id:" + KEY.key).hexdigest()[:16] == KEY.key_id
    chunk_size, salt, ctx_len = struct.unpack(">I8sH", blob[8 + kid_len : 8 + kid_len + 14])
    assert chunk_size == 1024
    assert blob[8 + kid_len + 14 : 8 + kid_len + 14 + ctx_len].decode() == CTX
    header_len, frames = layout(blob)
    header = blob[:header_len]
    aead = AESGCM(KEY.key)
    compressed = bytearray()
    for i, (start, end) in enumerate(frames):
        final = i == len(frames) - 1
        nonce = salt + struct.pack(">I", i)
        aad = header + struct.pack(">QB", i, 1 if final else 0)
        plain = aead.decrypt(nonce, blob[start + 4 : end], aad)
        assert len(plain) == 1024 or final
        compressed += plain
    assert zstandard.ZstdDecompressor().decompress(bytes(compressed), max_output_size=len(data)) == data


def test_read_header_parses_without_a_key() -> None:
    blob, _ = encrypt(b"hello")
    header = read_header(io.BytesIO(blob))
    assert (header.version, header.compression, header.cipher) == (2, "zstd", "aes-256-gcm")
    assert header.context == CTX
    assert header.key_id == KEY.key_id
    assert header.chunk_size == CHUNK
    assert len(header.salt) == 8


def test_each_stream_gets_a_fresh_salt() -> None:
    a, _ = encrypt(b"same data")
    b, _ = encrypt(b"same data")
    assert read_header(io.BytesIO(a)).salt != read_header(io.BytesIO(b)).salt
    assert a != b


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"PK\x03\x04" + bytes(40), "not a drkit stream"),
        (b"DRKT\x03\x01\x01\x10" + bytes(40), "version 3"),
        (b"DRKT\x01\x01\x01\x10" + bytes(40), "version 1 .not bound to its backup"),
        (b"DRKT\x02\x07\x01\x10" + bytes(40), "compression"),
        (b"DRKT\x02\x01\x09\x10" + bytes(40), "cipher"),
        (b"DRKT\x02\x01\x01\x10" + bytes(16) + b"\x00\x00\x10\x00" + bytes(8) + b"\x00\x00", "context length 0"),
        (b"DRKT\x02\x01\x01\x10" + bytes(16) + b"\x00\x00\x10\x00" + bytes(8) + b"\x00\x05ab", "truncated"),
        (b"DRK", "truncated"),
        (b"", "truncated"),
    ],
)
def test_read_header_rejects_what_is_not_a_v2_stream(blob: bytes, message: str) -> None:
    with pytest.raises(IntegrityError, match=message):
        read_header(io.BytesIO(blob))
    with pytest.raises(IntegrityError, match=message):
        DecryptingReader(io.BytesIO(blob), KEY, expected_context=CTX)


# --------------------------------------------------------------------------- keys


def test_wrong_key_is_reported_with_both_key_ids() -> None:
    blob, _ = encrypt(b"secret data")
    with pytest.raises(EncryptionKeyError) as info:
        DecryptingReader(io.BytesIO(blob), OTHER_KEY, expected_context=CTX)
    assert KEY.key_id in str(info.value) and OTHER_KEY.key_id in str(info.value)
    assert f"written with key id {KEY.key_id}" in str(info.value)


def test_key_id_is_derived_from_the_key() -> None:
    raw = os.urandom(32)
    key = EncryptionKey.from_bytes(raw)
    assert key.key_id == hashlib.sha256(b"drkit-key-id:" + raw).hexdigest()[:16]
    assert EncryptionKey.generate().key_id != EncryptionKey.generate().key_id
    with pytest.raises(EncryptionKeyError):
        EncryptionKey(key=raw, key_id="0000000000000000")
    with pytest.raises(EncryptionKeyError, match="32 bytes"):
        EncryptionKey.from_bytes(raw[:16])


def test_key_repr_does_not_reveal_the_key() -> None:
    raw = os.urandom(32)
    key = EncryptionKey.from_bytes(raw)
    text = repr(key) + str(key)
    assert key.key_id in text
    for form in (repr(raw), raw.hex(), base64.b64encode(raw).decode()):
        assert form not in text


def test_from_env_loads_a_base64_key() -> None:
    raw = os.urandom(32)
    key = EncryptionKey.from_env("DRKIT_KEY", {"DRKIT_KEY": base64.b64encode(raw).decode() + "\n"})
    assert key == EncryptionKey.from_bytes(raw)


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = os.urandom(32)
    monkeypatch.setenv("DRKIT_TEST_KEY", base64.b64encode(raw).decode())
    assert EncryptionKey.from_env("DRKIT_TEST_KEY").key == raw


@pytest.mark.parametrize("environ", [{}, {"DRKIT_KEY": ""}, {"DRKIT_KEY": "   "}])
def test_from_env_missing_key_says_which_variable_and_how_to_make_one(environ: dict[str, str]) -> None:
    with pytest.raises(EncryptionKeyError) as info:
        EncryptionKey.from_env("DRKIT_KEY", environ)
    msg = str(info.value)
    assert "DRKIT_KEY" in msg
    assert "base64.b64encode(os.urandom(32))" in msg


@pytest.mark.parametrize(
    "value",
    [
        base64.b64encode(b"\xa5" * 31).decode(),  # valid base64, 31 bytes
        base64.b64encode(b"\x5a" * 33).decode(),  # 33 bytes
        "this-is-not-base64!!secretsecret",
        base64.b64encode(b"\x11" * 32).decode()[:-2],  # broken padding
    ],
)
def test_from_env_bad_value_names_the_variable_never_the_value(value: str) -> None:
    with pytest.raises(EncryptionKeyError) as info:
        EncryptionKey.from_env("DRKIT_KEY", {"DRKIT_KEY": value})
    exc = info.value
    assert "DRKIT_KEY" in str(exc)
    shown_context = "" if exc.__suppress_context__ else repr(exc.__context__)
    for text in (str(exc), repr(exc), str(exc.__cause__), shown_context):
        assert value not in text
        assert value[:12] not in text


# --------------------------------------------------------------------------- tampering


@pytest.fixture(scope="module")
def sample() -> tuple[bytes, bytes]:
    data = os.urandom(1500) + compressible(1500)
    blob, _ = encrypt(data, chunk_size=512)
    assert len(layout(blob)[1]) >= 3
    return data, blob


def test_flipping_any_single_byte_is_detected(sample: tuple[bytes, bytes]) -> None:
    _, blob = sample
    header_len, _ = layout(blob)
    key_id_region = range(8, 8 + blob[7])  # the key id (a changed length byte misparses the header)
    for pos in range(len(blob)):
        tampered = bytearray(blob)
        tampered[pos] ^= 0x01
        expected: type[Exception] | tuple[type[Exception], ...] = (
            EncryptionKeyError if pos in key_id_region else (IntegrityError, EncryptionKeyError) if pos == 7
            else IntegrityError)
        with pytest.raises(expected):
            decrypt(bytes(tampered))
    assert header_len < len(blob)


@pytest.mark.parametrize("where", ["length", "ciphertext", "tag"])
def test_damage_in_a_frame_names_the_frame(sample: tuple[bytes, bytes], where: str) -> None:
    _, blob = sample
    _, frames = layout(blob)
    start, end = frames[1]
    pos = {"length": start + 3, "ciphertext": start + 10, "tag": end - 1}[where]
    tampered = bytearray(blob)
    tampered[pos] ^= 0x80
    with pytest.raises(IntegrityError, match="frame 1"):
        decrypt(bytes(tampered))


def test_truncation_anywhere_is_detected(sample: tuple[bytes, bytes]) -> None:
    _, blob = sample
    for cut in range(len(blob)):
        with pytest.raises(IntegrityError):
            decrypt(blob[:cut])


def test_truncation_at_a_frame_boundary_is_reported_as_truncated(sample: tuple[bytes, bytes]) -> None:
    _, blob = sample
    header_len, frames = layout(blob)
    for cut in [header_len] + [end for _, end in frames[:-1]]:
        with pytest.raises(IntegrityError, match="truncated"):
            decrypt(blob[:cut])


def test_reading_a_truncated_stream_fails_before_claiming_eof(sample: tuple[bytes, bytes]) -> None:
    data, blob = sample
    _, frames = layout(blob)
    reader = DecryptingReader(io.BytesIO(blob[: frames[-2][1]]), KEY, expected_context=CTX)
    with pytest.raises(IntegrityError, match="truncated"):
        while reader.read(100):
            pass
    with pytest.raises(IntegrityError):  # stays failed: a retry cannot turn it into a clean EOF
        reader.read(100)


def test_swapping_or_dropping_frames_is_detected(sample: tuple[bytes, bytes]) -> None:
    _, blob = sample
    header_len, frames = layout(blob)
    parts = [blob[s:e] for s, e in frames]
    swapped = blob[:header_len] + parts[1] + parts[0] + b"".join(parts[2:])
    with pytest.raises(IntegrityError):
        decrypt(swapped)
    dropped = blob[:header_len] + parts[0] + b"".join(parts[2:])
    with pytest.raises(IntegrityError):
        decrypt(dropped)


def test_frames_spliced_from_another_stream_are_detected(sample: tuple[bytes, bytes]) -> None:
    data, blob = sample
    other, _ = encrypt(data, chunk_size=512)  # same key, same data, different salt
    header_len, frames = layout(blob)
    s, e = frames[1]
    spliced = blob[:s] + other[s:e] + blob[e:]
    assert len(spliced) == len(blob) and spliced != blob
    with pytest.raises(IntegrityError, match="frame 1"):
        decrypt(spliced)
    # A whole other stream's body behind this header fails too.
    with pytest.raises(IntegrityError):
        decrypt(blob[:header_len] + other[header_len:])


def test_data_after_the_final_frame_is_detected(sample: tuple[bytes, bytes]) -> None:
    _, blob = sample
    _, frames = layout(blob)
    last = blob[frames[-1][0] : frames[-1][1]]
    for extra in (b"\x00", b"\x00\x00\x00\x00", os.urandom(100), last):
        with pytest.raises(IntegrityError):
            decrypt(blob + extra)


def seal(compressed: bytes, chunk_size: int = 512, key: EncryptionKey = KEY) -> bytes:
    """Encrypt arbitrary 'compressed' bytes into a validly authenticated stream (documented format)."""
    kid, ctx = key.key_id.encode(), CTX.encode()
    header = (b"DRKT" + bytes([2, 1, 1, len(kid)]) + kid + struct.pack(">I", chunk_size) + b"saltsalt"
              + struct.pack(">H", len(ctx)) + ctx)
    pieces = [compressed[i : i + chunk_size] for i in range(0, len(compressed), chunk_size)] or [b""]
    out = [header]
    for i, piece in enumerate(pieces):
        aad = header + struct.pack(">QB", i, 1 if i == len(pieces) - 1 else 0)
        ct = AESGCM(key.key).encrypt(b"saltsalt" + struct.pack(">I", i), piece, aad)
        out.append(struct.pack(">I", len(ct)) + ct)
    return b"".join(out)


def test_compressed_stream_must_be_exactly_one_complete_zstd_frame() -> None:
    # zstandard alone reports a clean EOF on a cut-off frame; the reader must not.
    data = os.urandom(3000) + compressible(20_000)
    frame = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data)
    assert decrypt(seal(frame)) == data  # the helper builds valid streams
    for bad in (frame[:-1], frame[:-4], frame[: len(frame) // 2], frame + b"\x00", frame + frame, b""):
        with pytest.raises(IntegrityError):
            decrypt(seal(bad))


# --------------------------------------------------------------------------- checksums and stats


def test_stats_describe_the_stored_bytes() -> None:
    data = compressible(100_000)
    blob, stats = encrypt(data)
    assert stats.raw_bytes == len(data)
    assert stats.stored_bytes == len(blob)
    assert stats.sha256 == hashlib.sha256(blob).hexdigest()
    assert stats.stored_bytes < stats.raw_bytes
    with DecryptingReader(io.BytesIO(blob), KEY, expected_context=CTX) as r:
        with pytest.raises(RuntimeError):
            _ = r.stats
        assert r.read() == data
        assert r.stats == stats


def test_writer_stats_before_close_raise() -> None:
    w = EncryptingWriter(io.BytesIO(), KEY, context=CTX, threads=0)
    w.write(b"x")
    with pytest.raises(RuntimeError, match="after close"):
        _ = w.stats
    w.close()
    assert w.stats.raw_bytes == 1


def test_close_does_not_close_the_sink() -> None:
    sink = io.BytesIO()
    w = EncryptingWriter(sink, KEY, context=CTX, threads=0)
    w.close()
    w.close()  # idempotent
    assert not sink.closed
    with pytest.raises(ValueError):
        w.write(b"late")


def test_expected_sha256_mismatch_names_both_hashes() -> None:
    blob, stats = encrypt(b"payload" * 1000)
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(IntegrityError) as info:
        decrypt(blob, expected_sha256=wrong)
    assert wrong in str(info.value) and stats.sha256 in str(info.value)
    assert decrypt(blob, expected_sha256=stats.sha256.upper()) == b"payload" * 1000


def test_sha256_of_stream_and_verify_stored() -> None:
    blob, stats = encrypt(os.urandom(20_000))
    assert sha256_of_stream(io.BytesIO(blob), bufsize=1000) == (stats.sha256, len(blob))
    assert verify_stored(io.BytesIO(blob), stats.sha256) == len(blob)
    damaged = bytearray(blob)
    damaged[-1] ^= 1
    with pytest.raises(IntegrityError) as info:
        verify_stored(io.BytesIO(bytes(damaged)), stats.sha256)
    assert stats.sha256 in str(info.value) and hashlib.sha256(damaged).hexdigest() in str(info.value)


def test_copy_stream_copies_everything() -> None:
    data = os.urandom(1_000_003)
    dst = io.BytesIO()
    assert copy_stream(io.BytesIO(data), dst, bufsize=4096) == len(data)
    assert dst.getvalue() == data


# --------------------------------------------------------------------------- failed writers


@pytest.mark.parametrize("size", [10, 1024 * 1024])
def test_writer_failing_inside_with_leaves_a_detectably_truncated_stream(size: int) -> None:
    sink = io.BytesIO()
    writer = EncryptingWriter(sink, KEY, context=CTX, threads=0, chunk_size=CHUNK)
    with pytest.raises(OSError, match="producer died"), writer as w:
        w.write(os.urandom(size))
        raise OSError("producer died")
    if size > CHUNK:
        assert len(layout(sink.getvalue())[1]) > 10  # complete non-final frames were written
    with pytest.raises(RuntimeError):
        _ = w.stats
    with pytest.raises(IntegrityError, match="truncated"):
        decrypt(sink.getvalue())


def test_writer_never_closed_leaves_a_truncated_stream() -> None:
    sink = io.BytesIO()
    w = EncryptingWriter(sink, KEY, context=CTX, threads=0, chunk_size=CHUNK)
    w.write(os.urandom(1024 * 1024))
    del w
    assert len(layout(sink.getvalue())[1]) > 10
    with pytest.raises(IntegrityError, match="truncated"):
        decrypt(sink.getvalue())


def test_sink_failure_aborts_the_stream() -> None:
    class FailingSink(io.BytesIO):
        def write(self, b: object) -> int:
            if self.tell() > 3 * CHUNK:
                raise OSError("disk full")
            return super().write(b)  # type: ignore[arg-type]

    sink = FailingSink()
    w = EncryptingWriter(sink, KEY, context=CTX, threads=0, chunk_size=CHUNK)
    with pytest.raises(OSError, match="disk full"):
        for _ in range(8):
            w.write(os.urandom(256 * 1024))
    w.close()  # no-op on an aborted writer: must not append a final frame
    with pytest.raises(ValueError):
        w.write(b"more")
    with pytest.raises(IntegrityError):
        decrypt(sink.getvalue())


def test_frame_limit_is_enforced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "MAX_FRAMES", 3)
    sink = io.BytesIO()
    writer = EncryptingWriter(sink, KEY, context=CTX, chunk_size=100, threads=0)
    with pytest.raises(DrkitError, match="too long"), writer as w:
        w.write(os.urandom(1000))
    with pytest.raises(IntegrityError):
        decrypt(sink.getvalue())
    small, _ = encrypt(os.urandom(150), chunk_size=100)  # 2 frames: within the limit
    assert len(decrypt(small)) == 150


# --------------------------------------------------------------------------- memory


class _Discard:
    """A sink that keeps nothing, recording the largest RSS seen while frames arrive."""

    def __init__(self) -> None:
        self.bytes = 0
        self.calls = 0
        self.proc = psutil.Process()
        self.max_rss = self.proc.memory_info().rss

    def write(self, data: memoryview) -> int:
        self.bytes += len(data)
        self.calls += 1
        if self.calls % 8 == 0:
            self.max_rss = max(self.max_rss, self.proc.memory_info().rss)
        return len(data)


def test_memory_stays_bounded_while_streaming_256_mib() -> None:
    total = 256 * 1024 * 1024
    block = 1024 * 1024
    # 16 MiB of random data, cycled: repeats are farther apart than zstd's window, so it stays
    # incompressible and every byte really goes through all stages.
    pool = memoryview(os.urandom(16 * block))
    sink = _Discard()
    rss_before = sink.max_rss
    tracemalloc.start()
    try:
        with EncryptingWriter(sink, KEY, context=CTX) as w:
            for i in range(total // block):
                off = (i % 16) * block
                w.write(pool[off : off + block])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert w.stats.raw_bytes == total
    assert sink.bytes == w.stats.stored_bytes >= total  # incompressible: nothing was lost or buffered away
    assert peak < 64 * 1024 * 1024, f"Python allocations peaked at {peak / 2**20:.1f} MiB"
    growth = sink.max_rss - rss_before
    assert growth < 128 * 1024 * 1024, f"RSS grew by {growth / 2**20:.1f} MiB for a 256 MiB stream"


# --------------------------------------------------------------------------- binding to the object


def test_a_stream_read_as_another_backups_object_is_refused_naming_both() -> None:
    blob, stats = encrypt(b"rows of backup B", context="app/app-full-B/data.drk")
    with pytest.raises(IntegrityError) as info:
        decrypt(blob, expected_context="app/app-full-A/data.drk", expected_sha256=stats.sha256)
    assert "object is backup app-full-B's data.drk, expected backup app-full-A's data.drk" in str(info.value)


def test_a_manifest_in_place_of_data_is_refused_naming_both() -> None:
    blob, _ = encrypt(b'{"kind": "full"}', context="app/app-full-X/manifest.drk")
    with pytest.raises(IntegrityError, match="object is backup app-full-X's manifest.drk, expected backup "
                                             "app-full-Y's data.drk"):
        decrypt(blob, expected_context="app/app-full-Y/data.drk")


def test_a_stream_of_another_database_names_both_databases() -> None:
    blob, _ = encrypt(b"x", context="billing/b-full-1/data.drk")
    with pytest.raises(IntegrityError, match="'billing'.*expected.*'app'"):
        decrypt(blob, expected_context="app/b-full-1/data.drk")


def test_an_edited_context_fails_authentication() -> None:
    # Rewriting the header to claim the expected name (same length) passes the name check but not the tags.
    blob, _ = encrypt(os.urandom(3000), context="app/app-full-B/data.drk")
    forged = blob.replace(b"app/app-full-B/data.drk", b"app/app-full-A/data.drk", 1)
    assert forged != blob
    with pytest.raises(IntegrityError, match="frame 0 failed authentication"):
        decrypt(forged, expected_context="app/app-full-A/data.drk")


def test_the_context_is_required_and_bounded() -> None:
    for bad in ("", "x" * (pipeline.MAX_CONTEXT_LEN + 1)):
        with pytest.raises(ValueError, match="context"):
            EncryptingWriter(io.BytesIO(), KEY, context=bad)
    blob, _ = encrypt(b"x")
    with pytest.raises(TypeError):
        DecryptingReader(io.BytesIO(blob), KEY)  # type: ignore[call-arg]
    unicode_ctx = "prod-ü/app-full-1/data.drk"
    blob, _ = encrypt(b"abc", context=unicode_ctx)
    assert decrypt(blob, expected_context=unicode_ctx) == b"abc"


def test_a_version_1_stream_is_refused_with_a_clear_message() -> None:
    kid = KEY.key_id.encode()
    header = b"DRKT" + bytes([1, 1, 1, len(kid)]) + kid + struct.pack(">I", 512) + b"saltsalt"
    aad = header + struct.pack(">QB", 0, 1)
    frame = zstandard.ZstdCompressor(write_checksum=True).compress(b"old")
    ct = AESGCM(KEY.key).encrypt(b"saltsalt" + struct.pack(">I", 0), frame, aad)
    v1 = header + struct.pack(">I", len(ct)) + ct
    with pytest.raises(IntegrityError, match="version 1 .not bound to its backup. is not read"):
        decrypt(v1)


def test_verify_stored_names_a_swapped_object_without_the_key() -> None:
    a, a_stats = encrypt(os.urandom(5000), context="app/app-full-A/data.drk")
    b, _ = encrypt(os.urandom(5000), context="app/app-full-B/data.drk")
    assert verify_stored(io.BytesIO(a), a_stats.sha256, expected_context="app/app-full-A/data.drk") == len(a)
    with pytest.raises(IntegrityError, match="object is backup app-full-B's data.drk, expected backup "
                                             "app-full-A's data.drk"):
        verify_stored(io.BytesIO(b), a_stats.sha256, expected_context="app/app-full-A/data.drk")
    with pytest.raises(IntegrityError, match="sha256"):  # keyless and context-less: the hash alone
        verify_stored(io.BytesIO(b), a_stats.sha256)
    with pytest.raises(IntegrityError, match="sha256"):  # not even a stream: the hash mismatch is reported
        verify_stored(io.BytesIO(b"junk"), a_stats.sha256, expected_context="app/app-full-A/data.drk")
