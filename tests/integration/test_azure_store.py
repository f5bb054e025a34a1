"""AzureStore against a real Azurite (npm, started by the tests): streaming, atomic commit, tiers, failures.

Azurite facts these tests rely on (checked here):
reading an archived blob gives 409 BlobArchived, and rehydration completes at once
(no ``rehydrate-pending-*`` state), so the "pending" path is not testable here.
"""

from __future__ import annotations

import io
import logging
import os
import random
import traceback
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from azure.storage.blob import (
    AccountSasPermissions,
    BlobServiceClient,
    ResourceTypes,
    generate_account_sas,
)

from drkit.config import TierConfig
from drkit.errors import ConfigError, ObjectNotFoundError, StoreError
from drkit.pipeline import DecryptingReader, EncryptingWriter, EncryptionKey
from drkit.storage.azure import (
    AzureStore,
    ClientOptions,
    ObjectArchivedError,
    open_azure_store,
)
from drkit.storage.base import Store
from tests.support.azurite import ACCOUNT, ACCOUNT_KEY, Azurite, connection_string, running_azurite
from tests.support.tcpproxy import TcpProxy

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(120)]

MiB = 1024 * 1024
# No waiting between retries, so failure tests stay fast (production uses ClientOptions()).
FAST = ClientOptions(retry_total=1, initial_backoff=0, increment_base=0, random_jitter_range=0,
                     connection_timeout=5, read_timeout=15)


@pytest.fixture(scope="module")
def az(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    with running_azurite(tmp_path_factory.mktemp("azurite")) as server:
        yield server


@pytest.fixture(scope="module")
def service(az: Azurite) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(az.connection_string, **FAST.client_kwargs())


def _container() -> str:
    return f"t-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def store(service: BlobServiceClient) -> AzureStore:
    return AzureStore(service, _container(), name="blob", block_size=4 * MiB, max_concurrency=4)


def _varying_writes(sink: io.RawIOBase | EncryptingWriter, data: bytes, seed: int = 7) -> None:
    """Write ``data`` in pieces of 1 byte .. 3 MiB, as a real producer does."""
    rng = random.Random(seed)
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        n = rng.choice([1, 17, 4096, 65536, 1 * MiB + 3, 3 * MiB])
        sink.write(view[pos : pos + n])
        pos += n


def _read_all(store: AzureStore, key: str) -> bytes:
    with store.reader(key) as f:
        return f.read()


def _committed_blocks(service: BlobServiceClient, store: AzureStore, key: str) -> list[object]:
    """Committed blocks of the blob behind ``key`` ([] when no blob was ever committed)."""
    blob = service.get_container_client(store.container).get_blob_client(store.prefix + key)
    committed, _uncommitted = blob.get_block_list("all")
    return list(committed)


def test_pipeline_round_trip_of_a_multi_block_stream(store: AzureStore, service: BlobServiceClient) -> None:
    assert isinstance(store, Store)
    key = EncryptionKey.generate()
    plain = os.urandom(20 * MiB)  # incompressible: 20 MiB stored, 5+ blocks of 4 MiB
    with store.writer("db/app/full/0001.drkt") as sink, EncryptingWriter(sink, key, context="app/0001/data.drk",
                                                                           threads=0) as enc:
        _varying_writes(enc, plain)
    stats = enc.stats
    assert store.exists("db/app/full/0001.drkt")
    assert store.size("db/app/full/0001.drkt") == stats.stored_bytes
    blocks = _committed_blocks(service, store, "db/app/full/0001.drkt")
    assert len(blocks) == -(-stats.stored_bytes // (4 * MiB)) >= 5

    with store.reader("db/app/full/0001.drkt") as src:
        dec = DecryptingReader(src, key, expected_sha256=stats.sha256, expected_context="app/0001/data.drk")
        out = io.BytesIO()
        while chunk := dec.read(1 * MiB + 7):
            out.write(chunk)
    assert out.getvalue() == plain
    assert dec.stats.sha256 == stats.sha256

    # empty objects work too
    with store.writer("empty"):
        pass
    assert store.size("empty") == 0 and _read_all(store, "empty") == b""


def test_memory_stays_bounded_by_block_size_and_concurrency(service: BlobServiceClient) -> None:
    store = AzureStore(service, _container(), name="blob", block_size=2 * MiB, read_size=2 * MiB, max_concurrency=2)
    store.ensure_container()
    piece = os.urandom(1 * MiB)
    tracemalloc.start()
    try:
        with store.writer("big") as w:
            for _ in range(24):
                w.write(piece)
        _, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with store.reader("big") as r:
            buf = bytearray(256 * 1024)
            total = 0
            while n := r.readinto(buf):  # type: ignore[attr-defined]  # typing.BinaryIO omits readinto
                total += n
        _, download_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 24 * MiB
    bound = 2 * MiB * (2 + 1)  # block_size x (max_concurrency + 1)
    assert upload_peak < bound + 2 * MiB, upload_peak
    assert download_peak < bound + 2 * MiB, download_peak


def test_exception_inside_the_writer_commits_nothing(store: AzureStore, service: BlobServiceClient) -> None:
    with store.writer("keep") as w:
        w.write(b"version 1")
    with pytest.raises(RuntimeError, match="producer died"), store.writer("new") as w:
        w.write(os.urandom(10 * MiB))  # two blocks staged, a partial third buffered
        raise RuntimeError("producer died")
    assert not store.exists("new")
    assert list(store.list()) == ["keep"]
    assert _committed_blocks(service, store, "new") == []  # staged blocks stay uncommitted (GC'd by Azure)
    with pytest.raises(ObjectNotFoundError):
        store.size("new")
    with pytest.raises(ObjectNotFoundError):
        _read_all(store, "new")

    # a failed rewrite of an existing key leaves the old object in place
    with pytest.raises(RuntimeError), store.writer("keep") as w:
        w.write(os.urandom(5 * MiB))
        raise RuntimeError("again")
    assert _read_all(store, "keep") == b"version 1"


def test_store_basics_list_delete_prefix(service: BlobServiceClient) -> None:
    container = _container()
    a = AzureStore(service, container, name="a", prefix="site-a")
    b = AzureStore(service, container, name="b", prefix="site-b/")
    assert list(a.list()) == []  # container does not exist yet
    for k in ["z/1", "a/2", "a/10", "m"]:
        with a.writer(k) as w:
            w.write(k.encode())
    with b.writer("a/2") as w:
        w.write(b"other")
    assert list(a.list()) == ["a/10", "a/2", "m", "z/1"]
    assert list(a.list("a/")) == ["a/10", "a/2"]
    assert list(b.list()) == ["a/2"]
    assert _read_all(a, "a/2") == b"a/2" and _read_all(b, "a/2") == b"other"
    assert [o.key for o in a.objects("a")] == ["a/10", "a/2"]
    a.delete("a/2")
    a.delete("a/2")  # idempotent
    a.delete("never-there")
    assert not a.exists("a/2") and b.exists("a/2")
    with pytest.raises(ObjectNotFoundError):
        a.size("a/2")
    with pytest.raises(StoreError, match="invalid object key"):
        a.exists("../escape")
    with pytest.raises(ObjectNotFoundError):
        _read_all(AzureStore(service, _container(), name="c"), "x")  # missing container


def test_metadata_tags_and_access_tier_are_set_on_commit(service: BlobServiceClient) -> None:
    store = AzureStore(service, _container(), name="blob", access_tier="Cool")
    meta = {"kind": "full", "lsn_start": "0/3000028", "sha256": "ab" * 32}
    tags = {"database": "app", "kind": "full", "backup": "20261128T0200Z"}
    with store.writer("app/full/1", metadata=meta, tags=tags) as w:
        w.write(b"x" * 1000)
    with store.writer("app/log/1", tags={"database": "app", "kind": "log"}, access_tier="Cold") as w:
        w.write(b"y")
    assert store.metadata("app/full/1") == meta
    assert store.tags("app/full/1") == tags
    assert store.get_tier("app/full/1").tier == "Cool"
    assert store.get_tier("app/log/1").tier == "Cold"
    assert store.find_by_tags("\"database\" = 'app' AND \"kind\" = 'full'") == ["app/full/1"]
    assert [(o.key, o.tier, o.metadata) for o in store.objects("app/full")] == [("app/full/1", "Cool", meta)]
    store.set_tier("app/full/1", "hot")
    assert store.get_tier("app/full/1").tier == "Hot"
    store.set_tags("app/full/1", {"database": "app", "kind": "full", "verified": "yes"})
    assert store.tags("app/full/1")["verified"] == "yes"

    # bad metadata/tags are refused before a single byte is uploaded
    with pytest.raises(StoreError, match="metadata name"), store.writer("bad", metadata={"1st": "x"}):
        pytest.fail("the writer must not open")
    with pytest.raises(StoreError, match="index tag"), store.writer("bad", tags={"k": "no\u00e9"}):
        pytest.fail("the writer must not open")
    assert not store.exists("bad")


def test_archived_object_is_refused_until_rehydrated(service: BlobServiceClient) -> None:
    store = AzureStore(service, _container(), name="archive", access_tier="Archive")
    payload = os.urandom(3 * MiB)
    with store.writer("app/full/old") as w:  # committed straight into Archive
        w.write(payload)
    state = store.get_tier("app/full/old")
    assert state.tier == "Archive" and state.archived
    assert not state.rehydrating and state.archive_status is None
    assert store.exists("app/full/old") and store.size("app/full/old") == len(payload)
    with pytest.raises(ObjectArchivedError, match="rehydrate it first.*15 hours.*High priority"):
        store.reader("app/full/old").__enter__()
    assert issubclass(ObjectArchivedError, StoreError)

    # Azurite completes a rehydration instantly: never 'rehydrate-pending-to-hot', readable at once.
    after = store.start_rehydrate("app/full/old", to_tier="Hot", priority="High")
    assert (after.tier, after.archive_status, after.rehydrating) == ("Hot", None, False)
    assert not store.is_rehydrating("app/full/old")
    assert _read_all(store, "app/full/old") == payload
    assert store.start_rehydrate("app/full/old").tier == "Hot"  # not archived: a no-op

    # set_tier into Archive and out with Standard priority to Cool
    store.set_tier("app/full/old", "Archive")
    with pytest.raises(ObjectArchivedError):
        _read_all(store, "app/full/old")
    assert store.start_rehydrate("app/full/old", to_tier="Cool").tier == "Cool"
    with pytest.raises(StoreError, match="access tier"):
        store.start_rehydrate("app/full/old", to_tier="Archive")

    # archived while a reader is open: the next range GET gets 409 BlobArchived -> ObjectArchivedError
    small = AzureStore(store._service, store.container, name="archive", read_size=1 * MiB, max_concurrency=1)
    with pytest.raises(ObjectArchivedError), small.reader("app/full/old") as r:
        r.read(1)
        store.set_tier("app/full/old", "Archive")
        r.read()


def _sas_connection_string(host: str, port: int, sas: str) -> str:
    return f"BlobEndpoint=http://{host}:{port}/{ACCOUNT};SharedAccessSignature={sas}"


def _account_sas() -> str:
    return generate_account_sas(
        ACCOUNT,
        ACCOUNT_KEY,
        resource_types=ResourceTypes(service=True, container=True, object=True),
        permission=AccountSasPermissions(read=True, write=True, delete=True, list=True, create=True, add=True,
                                         tag=True, filter_by_tags=True, set_immutability_policy=False),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )


def _assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, "a secret leaked"
    assert "sig=" not in text.replace("sig=***", "")
    assert "AccountKey=" not in text


def test_cut_connection_mid_upload_then_retry(az: Azurite, service: BlobServiceClient) -> None:
    sas = _account_sas()
    sig = dict(p.split("=", 1) for p in sas.split("&"))["sig"]
    container = _container()
    key = EncryptionKey.generate()
    plain = os.urandom(20 * MiB)
    with TcpProxy(az.host, az.port) as proxy:
        env = {"AZ_CONN": _sas_connection_string(proxy.host, proxy.port, sas)}
        cfg = TierConfig(store="azure", container=container, connection_string_env="AZ_CONN")
        store = open_azure_store("offsite", cfg, env, options=FAST, block_size=4 * MiB, max_concurrency=3)
        direct = AzureStore(service, container, name="direct")
        store.ensure_container()

        proxy.sever_after(9 * MiB)  # cut the connection in the middle of the third block
        with (
            pytest.raises(StoreError) as failed,
            store.writer("app/full/1") as sink,
            EncryptingWriter(sink, key, context="app/1/data.drk", threads=0) as enc,
        ):
            _varying_writes(enc, plain)
        assert proxy.cuts == 1
        message = str(failed.value)
        assert "'app/full/1'" in message and "azure store 'offsite'" in message
        _assert_no_secret(message, sas, sig)
        _assert_no_secret("".join(traceback.format_exception(failed.value)), sas, sig)
        assert not direct.exists("app/full/1")
        assert list(direct.list()) == []
        assert _committed_blocks(service, direct, "app/full/1") == []

        # while the network is down, reads and lists fail with StoreError too (not SDK errors)
        with pytest.raises(StoreError) as down:
            list(store.list())
        _assert_no_secret(str(down.value), sas, sig)

        proxy.restore()
        with store.writer("app/full/1") as sink, EncryptingWriter(sink, key, context="app/1/data.drk",
                                                                   threads=0) as enc:
            _varying_writes(enc, plain)
        with store.reader("app/full/1") as src:
            assert DecryptingReader(src, key, expected_sha256=enc.stats.sha256,
                                    expected_context="app/1/data.drk").read() == plain
        assert direct.size("app/full/1") == enc.stats.stored_bytes


def test_cut_connection_mid_download_raises_store_error(az: Azurite, service: BlobServiceClient) -> None:
    container = _container()
    payload = os.urandom(12 * MiB)
    with TcpProxy(az.host, az.port) as proxy:
        cut = BlobServiceClient.from_connection_string(connection_string(proxy.host, proxy.port),
                                                       **FAST.client_kwargs())
        store = AzureStore(cut, container, name="blob", block_size=2 * MiB, read_size=2 * MiB, max_concurrency=2)
        with store.writer("k") as w:
            w.write(payload)
        with pytest.raises(StoreError, match="cannot read 'k'"), store.reader("k") as r:
            first = r.read(1 * MiB)
            assert first == payload[: 1 * MiB]
            proxy.sever()
            r.read()
        proxy.restore()
        assert _read_all(store, "k") == payload


def test_secrets_never_appear_in_repr_describe_or_errors(az: Azurite, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # the Azure SDK logs each request at INFO: it must redact the SAS
    sas = _account_sas()
    conn = az.connection_string
    env = {"AZ_KEY_CONN": conn, "AZ_SAS_CONN": _sas_connection_string(az.host, az.port, sas)}
    stores = [
        open_azure_store("blob", TierConfig(store="azure", container="drkit-secrets",
                                            connection_string_env=var, access_tier="Cool"), env, options=FAST)
        for var in env
    ]
    for store in stores:
        for text in (repr(store), store.describe()):
            _assert_no_secret(text, ACCOUNT_KEY, sas, conn)
        assert store.describe() == f"azure store 'blob' at http://127.0.0.1:{az.port}/{ACCOUNT}/drkit-secrets"
        with store.writer("x") as w:
            w.write(b"1")
        with pytest.raises(ObjectNotFoundError) as missing:
            store.size("missing")
        _assert_no_secret(str(missing.value), ACCOUNT_KEY, sas)

    # a wrong key / a forged SAS: authentication fails, the message says so and leaks nothing
    bad_key = "A" * 86 + "=="
    forged = sas.replace(dict(p.split("=", 1) for p in sas.split("&"))["sig"], "Zm9yZ2Vk")
    bad_env = {"K": conn.replace(ACCOUNT_KEY, bad_key), "S": _sas_connection_string(az.host, az.port, forged)}
    for var, secret in (("K", bad_key), ("S", forged)):
        bad = open_azure_store("blob", TierConfig(store="azure", container="drkit-secrets",
                                                  connection_string_env=var), bad_env, options=FAST)
        with pytest.raises(StoreError, match="access denied") as denied, bad.writer("y") as w:
            w.write(b"2")
        _assert_no_secret(str(denied.value), secret, "Zm9yZ2Vk")
        _assert_no_secret("".join(traceback.format_exception(denied.value)), secret, "Zm9yZ2Vk")

    # configuration errors name the variable, never its value
    with pytest.raises(ConfigError, match="AZ_MISSING") as err:
        open_azure_store("blob", TierConfig(store="azure", container="c-1", connection_string_env="AZ_MISSING"), {})
    with pytest.raises(ConfigError, match="AZ_BAD") as err:
        open_azure_store("blob", TierConfig(store="azure", container="c-1", connection_string_env="AZ_BAD"),
                         {"AZ_BAD": "AccountKey=c2VjcmV0c2VjcmV0;nonsense"})
    assert "c2VjcmV0c2VjcmV0" not in str(err.value)
    with pytest.raises(ConfigError, match="query string"):
        open_azure_store("blob", TierConfig(store="azure", container="c-1",
                                            account_url=f"https://acct.blob.core.windows.net/?{sas}"), {})
    # (the policy loader refuses these too; open_azure_store does not rely on it)
    with pytest.raises(ConfigError, match="container"):
        open_azure_store("blob", TierConfig.model_construct(store="azure", connection_string_env="AZ_KEY_CONN"), env)
    with pytest.raises(ConfigError, match="connection_string_env .* or account_url"):
        open_azure_store("blob", TierConfig.model_construct(store="azure", container="c-1"), env)
    # account_url alone means DefaultAzureCredential; building it makes no network call
    aad = open_azure_store("blob", TierConfig(store="azure", container="c-1",
                                              account_url="https://acct.blob.core.windows.net"), {})
    assert aad.describe() == "azure store 'blob' at https://acct.blob.core.windows.net/c-1"

    assert "devstoreaccount1" in caplog.text  # the SDK did log requests ...
    sig = dict(p.split("=", 1) for p in sas.split("&"))["sig"]
    _assert_no_secret(caplog.text, ACCOUNT_KEY, sas, sig, bad_key)  # ... without secrets
    assert not [r for r in caplog.records if r.name.startswith("drkit")]  # and drkit logs nothing itself


def test_block_size_grows_to_fit_azure_block_limit(service: BlobServiceClient) -> None:
    from drkit.storage import azure

    store = AzureStore(service, _container(), name="blob", block_size=8 * MiB, max_concurrency=1)
    store.ensure_container()
    with store.writer("k") as w:
        writer = w
        sizes = [writer._block_size_for(i) for i in (0, 9_999, 10_000, 20_000, 49_999)]  # type: ignore[attr-defined]
        w.write(b"x")
    assert sizes == [8 * MiB, 8 * MiB, 16 * MiB, 32 * MiB, 128 * MiB]
    total = sum(min(8 * MiB << (i // azure.BLOCKS_PER_SIZE_STEP), azure.MAX_BLOCK_SIZE)
                for i in range(azure.MAX_BLOCKS))
    assert total > 2 * 1024**4  # more than 2 TiB fit in one blob without a size hint
