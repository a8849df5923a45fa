"""The storage contract on both backends — LocalStorage on a real directory and S3Storage on a
real S3 server (SeaweedFS, the ``s3`` fixture): atomic writes, ranges, prefixes, key safety;
then what only LocalStorage has (its temp dir, symlinks, local paths)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from stemify.errors import NotFoundError, StorageError
from stemify.storage import LocalStorage, Storage, check_key, storage_from_url
from stemify.storage.s3 import MIN_PART_SIZE, S3Storage

# S3Storage's keys go under this prefix of the test bucket.
S3_PREFIX = "stemify/test"

# Speed markers: the local backend's tests are unit tests; the S3 ones talk to a real server
# (all of them together take over 20 s), so they are api tests, out of `pytest -m unit`.


@pytest.fixture(
    params=[
        pytest.param("local", marks=pytest.mark.unit),
        pytest.param("s3", marks=pytest.mark.api),
    ]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """Each backend in turn: the contract tests run on both."""
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    bucket = request.getfixturevalue("s3")
    return S3Storage(bucket.name, S3_PREFIX, part_size=MIN_PART_SIZE, session=bucket.session)


@pytest.fixture
def local(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


def visible_files(store: Storage) -> list[str]:
    """Every object a reader could see, i.e. everything except the temp area (local) or the
    multipart uploads in progress (S3)."""
    if isinstance(store, S3Storage):
        pages = store.client.get_paginator("list_objects_v2").paginate(
            Bucket=store.bucket, Prefix=store.prefix
        )
        return sorted(
            item["Key"].removeprefix(store.prefix)
            for page in pages
            for item in page.get("Contents", ())
        )
    assert isinstance(store, LocalStorage)
    return sorted(
        p.relative_to(store.root).as_posix()
        for p in store.root.rglob("*")
        if p.is_file() and not p.relative_to(store.root).as_posix().startswith(".tmp/")
    )


def temp_files(store: Storage) -> list[object]:
    """What unfinished writes hold: temp files (local), multipart uploads (S3)."""
    if isinstance(store, S3Storage):
        answer = store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix)
        return list(answer.get("Uploads", ()))
    assert isinstance(store, LocalStorage)
    return list(store.temp_dir.iterdir())


def abandon_a_write(store: Storage) -> None:
    """What a writer killed mid-way leaves: a temp file, or a multipart upload with a part."""
    if isinstance(store, S3Storage):
        name = f"{store.prefix}jobs/crashed/input"
        upload = store.client.create_multipart_upload(Bucket=store.bucket, Key=name)
        store.client.upload_part(
            Bucket=store.bucket, Key=name, UploadId=upload["UploadId"], PartNumber=1, Body=b"x"
        )
        return
    assert isinstance(store, LocalStorage)
    (store.temp_dir / "crashed.part").write_bytes(b"x")


@pytest.mark.unit
def test_root_and_temp_dir_are_created(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "a" / "b")
    assert store.root.is_dir()
    assert store.temp_dir == store.root / ".tmp"
    assert store.temp_dir.is_dir()


def test_put_file_round_trip(store: Storage, tmp_path: Path) -> None:
    data = os.urandom(200_000)
    source = tmp_path / "song.flac"
    source.write_bytes(data)

    assert store.put_file("jobs/1/input", source) == len(data)

    assert source.exists()  # copied, not moved
    assert store.exists("jobs/1/input")
    assert store.size("jobs/1/input") == len(data)
    with store.open("jobs/1/input") as f:
        assert f.read() == data
    assert b"".join(store.read_range("jobs/1/input", 0, None)) == data
    if isinstance(store, LocalStorage):
        assert store.local_path("jobs/1/input") == store.root / "jobs" / "1" / "input"
    else:
        assert store.local_path("jobs/1/input") is None
    assert temp_files(store) == []


def test_put_file_move(store: Storage, tmp_path: Path) -> None:
    source = tmp_path / "upload.bin"
    source.write_bytes(b"abc")
    assert store.put_file("jobs/2/input", source, move=True) == 3
    assert not source.exists()
    if isinstance(store, LocalStorage):
        assert store.local_path("jobs/2/input") is not None
    with store.open("jobs/2/input") as f:
        assert f.read() == b"abc"


def test_put_file_replaces_an_existing_object(store: Storage, tmp_path: Path) -> None:
    source = tmp_path / "x"
    source.write_bytes(b"old")
    store.put_file("k", source)
    source.write_bytes(b"newer")
    assert store.put_file("k", source) == 5
    with store.open("k") as f:
        assert f.read() == b"newer"


def test_put_file_missing_source(store: Storage, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        store.put_file("k", tmp_path / "nope")
    assert visible_files(store) == []
    assert temp_files(store) == []


def test_writer_streams_and_commits(store: Storage) -> None:
    with store.writer("jobs/1/stems/vocals.wav") as out:
        out.write(b"RIFF")
        out.write(b"\x00" * 1000)
        # Not visible while the block runs.
        assert not store.exists("jobs/1/stems/vocals.wav")
        if isinstance(store, LocalStorage):
            assert len(temp_files(store)) == 1  # S3: under one part, nothing is sent yet
    assert store.size("jobs/1/stems/vocals.wav") == 1004
    assert temp_files(store) == []


def test_writer_exception_leaves_nothing(store: Storage) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.writer("jobs/1/stems/drums.wav") as out:
        out.write(b"half a stem")
        raise Boom
    assert not store.exists("jobs/1/stems/drums.wav")
    assert visible_files(store) == []
    assert temp_files(store) == []


def test_writer_exception_keeps_the_previous_version(store: Storage) -> None:
    with store.writer("k") as out:
        out.write(b"v1")
    with pytest.raises(RuntimeError), store.writer("k") as out:
        out.write(b"v2, broken")
        raise RuntimeError("encoder died")
    with store.open("k") as f:
        assert f.read() == b"v1"


def test_missing_keys(store: Storage) -> None:
    with pytest.raises(NotFoundError) as info:
        store.open("jobs/none/input")
    assert info.value.code == "not_found"
    with pytest.raises(NotFoundError):
        store.size("jobs/none/input")
    with pytest.raises(NotFoundError):
        store.read_range("jobs/none/input", 0, None)  # raised by the call, not on iteration
    with pytest.raises(NotFoundError):
        store.read_range("jobs/none/input", 10, 20)
    with pytest.raises(NotFoundError):
        store.read_range("jobs/none/input", 5, 5)
    if isinstance(store, LocalStorage):
        with pytest.raises(NotFoundError):
            store.local_path("jobs/none/input")
    else:
        assert store.local_path("jobs/none/input") is None  # no local files at all
    assert not store.exists("jobs/none/input")


def test_a_directory_is_not_an_object(store: Storage) -> None:
    with store.writer("jobs/1/input") as out:
        out.write(b"x")
    assert not store.exists("jobs/1")
    with pytest.raises(NotFoundError):
        store.open("jobs/1")
    with pytest.raises(NotFoundError):
        store.size("jobs/1")


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, None, bytes(range(100))),
        (0, 100, bytes(range(100))),
        (10, 20, bytes(range(10, 20))),
        (99, None, bytes([99])),
        (50, 50, b""),  # empty range
        (0, 0, b""),
        (100, None, b""),  # starts exactly at the end
        (150, None, b""),  # starts beyond the end
        (150, 300, b""),
        (90, 1000, bytes(range(90, 100))),  # end clipped to the size
    ],
)
def test_read_range_edges(store: Storage, start: int, end: int | None, expected: bytes) -> None:
    with store.writer("blob") as out:
        out.write(bytes(range(100)))
    assert b"".join(store.read_range("blob", start, end)) == expected


def test_read_range_chunks(store: Storage) -> None:
    data = os.urandom(10_000)
    with store.writer("blob") as out:
        out.write(data)
    pieces = list(store.read_range("blob", 100, 9_000, chunk=1000))
    assert b"".join(pieces) == data[100:9_000]
    assert all(len(p) <= 1000 for p in pieces)
    assert len(pieces) == 9


@pytest.mark.parametrize(("start", "end", "chunk"), [(-1, None, 10), (10, 5, 10), (0, 5, 0)])
def test_read_range_rejects_bad_arguments(
    store: Storage, start: int, end: int | None, chunk: int
) -> None:
    with store.writer("blob") as out:
        out.write(b"0123456789")
    with pytest.raises(ValueError):
        store.read_range("blob", start, end, chunk)


def test_delete_prefix(store: Storage) -> None:
    for key in [
        "jobs/1/input",
        "jobs/1/stems/vocals.wav",
        "jobs/1/stems/drums.wav",
        "jobs/10/input",  # shares the string prefix "jobs/1" but is another job
        "jobs/2/input",
    ]:
        with store.writer(key) as out:
            out.write(key.encode())

    assert store.delete_prefix("jobs/1/stems/") == 2
    assert store.exists("jobs/1/input")
    assert store.delete_prefix("jobs/1") == 1
    assert visible_files(store) == ["jobs/10/input", "jobs/2/input"]
    assert store.delete_prefix("jobs/1") == 0  # nothing left: no error
    assert store.delete_prefix("jobs/never") == 0
    assert store.delete_prefix("jobs/2/input") == 1  # a prefix may name a single object
    assert visible_files(store) == ["jobs/10/input"]


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../outside",
        "jobs/../../outside",
        "jobs/..",
        "jobs/./input",
        "jobs//input",
        "jobs/1/",
        "jobs\\1\\input",
        "jobs/1\x00/input",
        "jobs/1\n/input",
        ".tmp/abc.part",
    ],
)
def test_unsafe_keys_are_rejected(store: Storage, tmp_path: Path, key: str) -> None:
    source = tmp_path / "src"
    source.write_bytes(b"x")
    with pytest.raises(ValueError):
        check_key(key)
    with pytest.raises(ValueError):
        store.put_file(key, source)
    with pytest.raises(ValueError), store.writer(key) as out:
        out.write(b"x")
    with pytest.raises(ValueError):
        store.open(key)
    with pytest.raises(ValueError):
        store.exists(key)
    if key != "jobs/1/":  # a valid prefix: one trailing slash is allowed there
        with pytest.raises(ValueError):
            store.delete_prefix(key)
    assert visible_files(store) == []
    assert (tmp_path / "outside").exists() is False


def test_empty_prefix_cannot_wipe_the_store(store: Storage) -> None:
    with store.writer("jobs/1/input") as out:
        out.write(b"x")
    for prefix in ["", "/"]:
        with pytest.raises(ValueError):
            store.delete_prefix(prefix)
    assert store.exists("jobs/1/input")


def test_cleanup_temp_removes_abandoned_writes(store: Storage) -> None:
    abandon_a_write(store)
    assert store.cleanup_temp(600) == 0  # too fresh: it could be a live writer's
    assert len(temp_files(store)) == 1
    later = time.time() + 3600
    assert store.cleanup_temp(600, now=later) == 1  # type: ignore[call-arg]
    assert temp_files(store) == []
    assert visible_files(store) == []
    assert store.cleanup_temp(600, now=later) == 0  # type: ignore[call-arg]


def test_copy_shares_bytes_and_survives_the_source(store: Storage) -> None:
    with store.writer("jobs/a/stems/vocals.wav") as out:
        out.write(b"stem bytes")
    assert store.copy("jobs/a/stems/vocals.wav", "jobs/b/stems/vocals.wav") == 10
    assert store.delete_prefix("jobs/a") == 1
    with store.open("jobs/b/stems/vocals.wav") as reader:
        assert reader.read() == b"stem bytes"
    assert temp_files(store) == []
    with pytest.raises(NotFoundError):
        store.copy("jobs/a/stems/vocals.wav", "jobs/c/stems/vocals.wav")
    assert not store.exists("jobs/c/stems/vocals.wav")


# ---- LocalStorage only --------------------------------------------------------------------------


@pytest.mark.unit
def test_symlink_out_of_the_store_is_refused(local: LocalStorage, tmp_path: Path) -> None:
    store = local
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    (store.root / "jobs").mkdir()
    (store.root / "jobs" / "evil").symlink_to(outside)
    with pytest.raises(ValueError):
        store.open("jobs/evil/secret")


@pytest.mark.unit
def test_cleanup_temp_removes_only_old_files(local: LocalStorage) -> None:
    store = local
    old = store.temp_dir / "abandoned.part"
    old.write_bytes(b"x")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    fresh = store.temp_dir / "in-progress.part"
    fresh.write_bytes(b"y")

    assert store.cleanup_temp(600) == 1
    assert not old.exists()
    assert fresh.exists()


@pytest.mark.unit
def test_usage(local: LocalStorage) -> None:
    store = local
    usage = store.usage()
    assert usage is not None
    free, total = usage
    assert 0 <= free <= total
    assert total > 0


@pytest.mark.unit
def test_storage_from_url(tmp_path: Path) -> None:
    by_url = storage_from_url((tmp_path / "a").as_uri())
    assert isinstance(by_url, LocalStorage)
    assert by_url.root == (tmp_path / "a").resolve()

    by_path = storage_from_url(str(tmp_path / "b"))
    assert isinstance(by_path, LocalStorage)
    assert by_path.root == (tmp_path / "b").resolve()

    spaced = storage_from_url("file://" + str(tmp_path / "with%20space"))
    assert isinstance(spaced, LocalStorage)
    assert spaced.root == (tmp_path / "with space").resolve()

    localhost = storage_from_url("file://localhost" + str(tmp_path / "c"))
    assert isinstance(localhost, LocalStorage)

    # The protocol is what callers hold.
    store: Storage = by_url
    with store.writer("k") as out:
        out.write(b"1")
    assert store.size("k") == 1


@pytest.mark.unit
@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://", "must name a bucket"),  # s3://bucket/prefix is S3Storage now
        ("https://example.com/x", "unsupported storage URL scheme 'https'"),
        ("file://host/path", "file:///absolute/path"),
        ("file:relative", "absolute path"),
        ("", "empty"),
    ],
)
def test_storage_from_url_rejects(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        storage_from_url(url)


def test_streams_larger_than_one_part(store: Storage, tmp_path: Path) -> None:
    """More than one multipart part of the S3 store (5 MiB parts), written by the stream and
    by the file, read back whole and across a part boundary, copied."""
    part = 5 << 20
    data = os.urandom(2 * part + 123)
    with store.writer("jobs/1/input") as out:
        for at in range(0, len(data), 64 * 1024):
            out.write(data[at : at + 64 * 1024])
    source = tmp_path / "stem.wav"
    source.write_bytes(data[::-1])
    assert store.put_file("jobs/1/stems/vocals.wav", source) == len(data)
    assert store.size("jobs/1/input") == len(data)
    with store.open("jobs/1/input") as f:
        assert f.read() == data
    across = b"".join(store.read_range("jobs/1/stems/vocals.wav", part - 10, part + 10))
    assert across == data[::-1][part - 10 : part + 10]
    assert store.copy("jobs/1/stems/vocals.wav", "jobs/2/stems/vocals.wav") == len(data)
    assert b"".join(store.read_range("jobs/2/stems/vocals.wav", 0, None)) == data[::-1]
    assert temp_files(store) == []
