"""S3Storage beyond the common contract (tests/test_storage.py runs that on both backends), on a
real S3 server (SeaweedFS, the ``s3`` fixture): streams of many parts, aborted multipart
uploads, server-side copies, memory, boto3's configuration, errors and the deploy-time check."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from stemify.errors import NotFoundError, StorageError
from stemify.settings import Settings
from stemify.storage import S3Storage, storage_from_url
from stemify.storage.s3 import MIN_PART_SIZE, parse_s3_url

# A real S3 server: these take over 20 s together (with the S3 half of test_storage.py).
pytestmark = pytest.mark.api

MiB = 1 << 20
PREFIX = "stemify/test"
PIECE = 64 * 1024


@pytest.fixture
def store(s3: Any) -> S3Storage:
    """Parts of S3's minimum size, 5 MiB, so a few MiB make a multipart upload."""
    return S3Storage(s3.name, PREFIX, part_size=MIN_PART_SIZE, session=s3.session)


def uploads(s3: Any, prefix: str = "") -> list[dict[str, Any]]:
    answer = s3.client.list_multipart_uploads(Bucket=s3.name, Prefix=prefix)
    return list(answer.get("Uploads", ()))


def keys(s3: Any) -> list[str]:
    answer = s3.client.list_objects_v2(Bucket=s3.name)
    return sorted(item["Key"] for item in answer.get("Contents", ()))


def operations(store: S3Storage) -> list[str]:
    """The S3 operations the store's client makes from now on, by name."""
    seen: list[str] = []

    def record(model: Any, **_: Any) -> None:
        seen.append(model.name)

    store.client.meta.events.register("before-call.s3", record)
    return seen


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: connections to it are refused


# ---- the URL and the settings ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "bucket", "prefix", "where"),
    [
        ("s3://my-bucket/stems/prod", "my-bucket", "stems/prod/", "s3://my-bucket/stems/prod"),
        ("s3://my-bucket/stems/prod/", "my-bucket", "stems/prod/", "s3://my-bucket/stems/prod"),
        ("s3://my-bucket", "my-bucket", "", "s3://my-bucket"),
        ("s3://my-bucket/", "my-bucket", "", "s3://my-bucket"),
        ("S3://my.bucket/a", "my.bucket", "a/", "s3://my.bucket/a"),
    ],
)
def test_storage_from_url_builds_s3(
    s3: Any, url: str, bucket: str, prefix: str, where: str
) -> None:
    store = storage_from_url(url)
    assert isinstance(store, S3Storage)
    assert (store.bucket, store.prefix, store.url) == (bucket, prefix, where)
    assert store.local_path("jobs/1/input") is None
    assert store.usage() is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://", "must name a bucket"),
        ("s3:///prefix", "must name a bucket"),
        ("s3://a/b", "invalid S3 bucket name"),
        ("s3://bad/bucket*name", None),  # a key may hold '*': this one is valid
        ("s3://bucket/a//b", "invalid S3 key prefix"),
        ("s3://bucket/../up", "invalid S3 key prefix"),
        ("s3://bucket/.tmp", "invalid S3 key prefix"),
        ("s3://bucket/p?versionId=1", "query or fragment"),
        ("s3://AKIAEXAMPLE:hunter2secret@bucket/p", "without credentials"),
        ("s3://bucket:9000/p", "without credentials or a port"),
    ],
)
def test_storage_from_url_rejects_bad_s3_urls(s3: Any, url: str, message: str | None) -> None:
    if message is None:
        assert isinstance(storage_from_url(url), S3Storage)
        return
    with pytest.raises(ValueError, match=message) as info:
        storage_from_url(url)
    assert "hunter2secret" not in str(info.value)


def test_addressing_style_setting(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEMIFY_S3_ADDRESSING_STYLE", "path")
    settings = Settings()
    assert settings.s3_addressing_style == "path"
    store = storage_from_url(f"s3://{s3.name}/p", s3_addressing_style=settings.s3_addressing_style)
    assert isinstance(store, S3Storage)
    assert store.client.meta.config.s3 == {"addressing_style": "path"}
    with store.writer("k") as out:  # path style works against the server
        out.write(b"x")
    assert store.size("k") == 1
    monkeypatch.setenv("STEMIFY_S3_ADDRESSING_STYLE", "sideways")
    with pytest.raises(ValueError):
        Settings()
    with pytest.raises(ValueError, match="addressing style"):
        S3Storage(s3.name, addressing_style="sideways")


def test_keys_live_under_the_prefix(s3: Any, store: S3Storage) -> None:
    s3.client.put_object(Bucket=s3.name, Key="outside/jobs/1/input", Body=b"not ours")
    s3.client.put_object(Bucket=s3.name, Key="stemify/testing/jobs/1/input", Body=b"nor this")
    with store.writer("jobs/1/input") as out:
        out.write(b"ours")
    assert "stemify/test/jobs/1/input" in keys(s3)
    assert store.delete_prefix("jobs") == 1
    assert keys(s3) == ["outside/jobs/1/input", "stemify/testing/jobs/1/input"]
    assert not store.exists("outside/jobs/1/input")


def test_an_empty_prefix_is_the_whole_bucket(s3: Any) -> None:
    store = S3Storage(s3.name, "", session=s3.session)
    with store.writer("jobs/1/input") as out:
        out.write(b"x")
    assert keys(s3) == ["jobs/1/input"]


# ---- streams ----------------------------------------------------------------------------------


def test_writer_streams_many_parts(s3: Any, store: S3Storage) -> None:
    """12 MiB written in 64 KiB pieces: a multipart upload of three 5 MiB-or-less parts, under
    way (and invisible) while the block runs, the object only at its end."""
    data = os.urandom(12 * MiB)
    seen = operations(store)
    with store.writer("jobs/1/input") as out:
        for at in range(0, len(data), PIECE):
            out.write(data[at : at + PIECE])
        # Two parts have been read from the stream by now; the first is under way.
        deadline = time.monotonic() + 10
        while not uploads(s3, PREFIX) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(uploads(s3, PREFIX)) == 1
        assert not store.exists("jobs/1/input")
    assert seen.count("CreateMultipartUpload") == 1
    assert seen.count("UploadPart") == 3
    assert seen.count("CompleteMultipartUpload") == 1
    assert "PutObject" not in seen
    assert uploads(s3) == []
    assert store.size("jobs/1/input") == len(data)
    with store.open("jobs/1/input") as f:
        assert f.read() == data
    assert (
        b"".join(store.read_range("jobs/1/input", 5 * MiB - 10, 5 * MiB + 10))
        == (data[5 * MiB - 10 : 5 * MiB + 10])
    )


def test_writer_of_exactly_one_part_and_of_nothing(store: S3Storage) -> None:
    data = os.urandom(MIN_PART_SIZE)
    with store.writer("one") as out:
        out.write(data)
    with store.open("one") as f:
        assert f.read() == data
    with store.writer("empty"):
        pass
    assert store.size("empty") == 0
    assert b"".join(store.read_range("empty", 0, None)) == b""


def test_aborted_writer_after_parts_leaves_nothing(s3: Any, store: S3Storage) -> None:
    """The failure comes when parts are already stored: the multipart upload is aborted, no
    object appears, no upload is left pending, the caller's own exception comes through."""

    class EncoderDied(Exception):
        pass

    piece = os.urandom(PIECE)
    with pytest.raises(EncoderDied), store.writer("jobs/1/stems/vocals.wav") as out:
        for _ in range(12 * MiB // PIECE):
            out.write(piece)
        deadline = time.monotonic() + 10
        while not uploads(s3) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert uploads(s3)  # parts were on their way
        raise EncoderDied
    assert uploads(s3) == []
    assert keys(s3) == []
    assert not store.exists("jobs/1/stems/vocals.wav")


def test_aborted_writer_keeps_the_previous_version(store: S3Storage) -> None:
    with store.writer("k") as out:
        out.write(b"v1")
    with pytest.raises(RuntimeError), store.writer("k") as out:
        out.write(os.urandom(11 * MiB))
        raise RuntimeError("encoder died")
    with store.open("k") as f:
        assert f.read() == b"v1"


def test_writer_memory_stays_within_two_parts(store: S3Storage) -> None:
    """64 MiB through writer() with 5 MiB parts: the Python heap of every thread (tracemalloc
    traces them all) peaks at two parts (one uploading, the next filling) plus botocore's
    1 MiB reads for the payload's SHA-256 and checksum: measured 12.3 MiB; any copy of the
    stream, or a third part held, would be over."""
    piece = os.urandom(PIECE)  # the same piece again and again: the data costs nothing
    total = 64 * MiB
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with store.writer("big") as out:
            for _ in range(total // PIECE):
                out.write(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    used = peak - before
    assert used < 2 * MIN_PART_SIZE + 3 * MiB, f"writer peak {used / MiB:.1f} MiB"
    assert used > MIN_PART_SIZE  # the measure saw the parts at all
    expected, got = hashlib.sha256(), hashlib.sha256()
    for _ in range(total // PIECE):
        expected.update(piece)
    for chunk in store.read_range("big", 0, None, chunk=MiB):
        got.update(chunk)
    assert store.size("big") == total
    assert got.hexdigest() == expected.hexdigest()


def test_a_failing_upload_stops_the_writer(s3: Any, store: S3Storage) -> None:
    """The bucket disappears under a writer: its next writes fail with StorageError (within a
    part or two, not after the whole stream), and nothing is left."""
    piece = os.urandom(PIECE)
    written = 0
    with (
        pytest.raises(StorageError, match=r"cannot write s3://") as info,
        store.writer("jobs/1/input") as out,
    ):
        out.write(piece)
        s3.client.delete_bucket(Bucket=s3.name)
        for _ in range(200 * MiB // PIECE):
            out.write(piece)
            written += PIECE
    assert written < 3 * MIN_PART_SIZE
    assert "NoSuchBucket" in str(info.value)


def test_open_streams_in_pieces(store: S3Storage) -> None:
    data = os.urandom(3 * MiB)
    with store.writer("k") as out:
        out.write(data)
    with store.open("k") as f:
        first = f.read(1000)
        rest = f.read()
    assert first + rest == data
    assert len(first) == 1000


# ---- copies, cleanup ---------------------------------------------------------------------------


def test_copy_is_server_side(s3: Any, store: S3Storage) -> None:
    """What this asserts: the store's client sends no GET and no PUT of data for a copy, only
    HEAD + CopyObject, and both objects are in the bucket afterwards, equal. (That the server
    copies without reading through us is then the only way the copy can have happened.)"""
    data = os.urandom(12 * MiB)
    with store.writer("jobs/a/stems/vocals.wav") as out:
        out.write(data)
    seen = operations(store)
    assert store.copy("jobs/a/stems/vocals.wav", "jobs/b/stems/vocals.wav") == len(data)
    assert "CopyObject" in seen
    assert not {"GetObject", "PutObject", "UploadPart", "CreateMultipartUpload"} & set(seen)
    assert keys(s3) == [f"{PREFIX}/jobs/a/stems/vocals.wav", f"{PREFIX}/jobs/b/stems/vocals.wav"]
    assert store.delete_prefix("jobs/a") == 1
    with store.open("jobs/b/stems/vocals.wav") as f:
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()


def test_cleanup_temp_spares_live_and_foreign_uploads(s3: Any, store: S3Storage) -> None:
    """Old uploads under the prefix go, unless a part came recently (a slow live writer);
    uploads outside the prefix are not the store's."""
    crashed = f"{PREFIX}/jobs/1/input"
    slow = f"{PREFIX}/jobs/2/input"
    s3.client.create_multipart_upload(Bucket=s3.name, Key=crashed)
    live = s3.client.create_multipart_upload(Bucket=s3.name, Key=slow)
    s3.client.create_multipart_upload(Bucket=s3.name, Key="elsewhere/jobs/1/input")
    # The server's times are whole seconds: 1.1 s later, the part's is at least one more.
    time.sleep(1.1)
    s3.client.upload_part(
        Bucket=s3.name, Key=slow, UploadId=live["UploadId"], PartNumber=1, Body=b"x"
    )
    begun = max(u["Initiated"].timestamp() for u in uploads(s3, PREFIX))
    assert store.cleanup_temp(3600) == 0  # all begun just now
    # A clock at which both were begun over an hour ago, but the slow one's part was not.
    assert store.cleanup_temp(3600, now=begun + 0.5 + 3600) == 1
    assert {u["Key"] for u in uploads(s3)} == {"elsewhere/jobs/1/input", slow}
    # An hour later still, the slow writer's part is old too: it has died.
    assert store.cleanup_temp(3600, now=begun + 2 * 3600 + 2) == 1
    assert {u["Key"] for u in uploads(s3)} == {"elsewhere/jobs/1/input"}


# ---- errors, configuration, the deploy-time check -----------------------------------------------


def test_unreachable_endpoint(s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    store = storage_from_url(f"s3://{s3.name}/{PREFIX}")
    source = tmp_path / "f"
    source.write_bytes(b"x")
    calls = [
        lambda: store.size("jobs/1/input"),
        lambda: store.exists("jobs/1/input"),
        lambda: store.open("jobs/1/input"),
        lambda: store.read_range("jobs/1/input", 0, 10),
        lambda: store.put_file("jobs/1/input", source),
        lambda: store.copy("jobs/1/input", "jobs/2/input"),
        lambda: store.delete_prefix("jobs/1"),
        lambda: store.cleanup_temp(60),
        lambda: store.check(),  # type: ignore[attr-defined]
    ]
    for call in calls:
        with pytest.raises(StorageError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message
        assert f"s3://{s3.name}" in message
        assert "Could not connect" in message, message
        assert s3.server.secret_key not in message
        assert s3.server.access_key not in message

    def write() -> None:
        with store.writer("jobs/1/input") as out:
            out.write(b"x")

    with pytest.raises(StorageError, match="Could not connect"):
        write()


def test_missing_credentials(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = storage_from_url(f"s3://{s3.name}/{PREFIX}")
    with pytest.raises(StorageError, match="Unable to locate credentials"):
        store.size("jobs/1/input")
    with pytest.raises(StorageError, match=r"cannot access bucket .*credentials"):
        store.check()  # type: ignore[attr-defined]


def test_wrong_credentials(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = "wrong-secret-" + s3.server.secret_key[:6]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    store = storage_from_url(f"s3://{s3.name}/{PREFIX}")
    for call in (lambda: store.size("k"), lambda: store.open("k")):
        with pytest.raises(StorageError) as info:
            call()
        assert not isinstance(info.value, NotFoundError)
        assert wrong not in str(info.value)
        assert s3.server.access_key not in str(info.value)


def test_check_passes_and_leaves_nothing(s3: Any, store: S3Storage) -> None:
    store.check()
    assert keys(s3) == []
    assert uploads(s3) == []


def test_check_names_what_failed(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # A missing bucket.
    missing = storage_from_url(f"s3://{s3.name}-gone/{PREFIX}")
    assert isinstance(missing, S3Storage)
    with pytest.raises(StorageError, match=rf"cannot access bucket s3://{s3.name}-gone: 404"):
        missing.check()
    # Credentials that may read and list, not write.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.server.reader_access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.server.reader_secret_key)
    reader = storage_from_url(f"s3://{s3.name}/{PREFIX}")
    assert isinstance(reader, S3Storage)
    with pytest.raises(StorageError) as info:
        reader.check()
    assert str(info.value).startswith(f"cannot write to s3://{s3.name}/{PREFIX}: AccessDenied")
    assert s3.server.reader_secret_key not in str(info.value)
    assert keys(s3) == []


def test_parse_s3_url() -> None:
    assert parse_s3_url("s3://b-1/x/y") == ("b-1", "x/y")
    assert parse_s3_url("s3://b-1") == ("b-1", "")


def test_writes_from_threads_at_once(store: S3Storage) -> None:
    """Writers are independent (each its own transfer manager): several at once, interleaved."""
    datas = {f"jobs/{i}/input": os.urandom(6 * MiB + i) for i in range(3)}
    errors: list[BaseException] = []

    def write(key: str) -> None:
        try:
            with store.writer(key) as out:
                data = datas[key]
                for at in range(0, len(data), PIECE):
                    out.write(data[at : at + PIECE])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(key,)) for key in datas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    for key, data in datas.items():
        with store.open(key) as f:
            assert f.read() == data
