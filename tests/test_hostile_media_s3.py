"""Uploads probed where they are stored, on S3 (SeaweedFS): ffprobe reads the object by ranges
through a short-lived presigned link, under the same limits as a local file, so an upload
never lands whole on the API's disk. The hostile corpus's refusals are the same as with local
storage, and neither a probe copy nor an object of a refused upload is left behind."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.processes import Cluster, client, embedded_env
from support.s3 import boto3_env
from test_hostile_media import CORPUS, MAX_DURATION_S, Case, tone

from stemify.audio import probe, probe_url
from stemify.audio.limits import MediaLimits
from stemify.errors import AudioLimitError, InvalidAudioError, StorageError
from stemify.storage.s3 import S3Storage

pytestmark = [pytest.mark.service, pytest.mark.timeout(120)]

REFUSED = [case for case in CORPUS if case.outcome == "refused" and case.code == "invalid_audio"]
PREFIX = "hostile"


@dataclass
class Service:
    api: httpx.Client
    admin: Any
    bucket: str
    temp: Path

    def objects(self) -> list[str]:
        answer = self.admin.list_objects_v2(Bucket=self.bucket)
        return [item["Key"] for item in answer.get("Contents", ())]


@pytest.fixture(scope="module")
def service(
    s3_server: Any, model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("hostile-s3")
    temp = tmp / "tmpdir"
    temp.mkdir()
    bucket = f"hostile-{int(time.time() * 1000)}"
    s3_server.admin.create_bucket(Bucket=bucket)
    env = embedded_env(
        tmp,
        model_dir,
        {
            **boto3_env(s3_server, tmp),
            "STEMIFY_STORAGE_URL": f"s3://{bucket}/{PREFIX}",
            "STEMIFY_MAX_DURATION_S": str(MAX_DURATION_S),
            "STEMIFY_SECRET_KEY": "hostile",
            # Every temporary file of the service lands here: a probe copy would show.
            "TMPDIR": str(temp),
        },
    )
    cluster = Cluster(tmp, env)
    cluster.serve()
    with client(cluster.base) as api:
        yield Service(api, s3_server.admin, bucket, temp)
    cluster.stop()


def _shown(case: Case) -> str:
    return re.sub(r"[^\w.-]+", "_", case.name)[:40]


@pytest.mark.parametrize("case", REFUSED, ids=[_shown(c) for c in REFUSED])
def test_a_hostile_upload_is_refused_as_with_local_storage(
    service: Service, case: Case, tmp_path: Path
) -> None:
    response = service.api.post(
        "/jobs", files={"file": (case.name, case.make(tmp_path))}, data={"shifts": "0"}
    )
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert error["code"] == case.code, error
    assert re.search(case.message, error["message"]), error
    # Named as the caller's file: never a link, a bucket or a path of ours.
    assert "http" not in error["message"] and service.bucket not in error["message"]
    assert "/tmp" not in error["message"] and "input " not in error["message"]
    assert service.objects() == []
    assert list(service.temp.iterdir()) == []


def test_an_mp4_with_its_index_at_the_end_is_probed_by_ranges(
    service: Service, tmp_path: Path
) -> None:
    # ffmpeg writes the moov atom last unless told +faststart: reading it needs a seek.
    too_long = tone(tmp_path / "long.m4a", MAX_DURATION_S + 2, "-c:a", "aac")
    assert too_long.find(b"moov") > too_long.find(b"mdat") > 0
    refused = service.api.post("/jobs", files={"file": ("long.m4a", too_long)})
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"] == {
        "code": "audio_limit",
        "message": "the uploaded file is 0:07 long; the limit is 0:05",
    }
    assert list(service.temp.iterdir()) == [] and service.objects() == []
    song = tone(tmp_path / "phone.m4a", 3.0, "-c:a", "aac")
    response = service.api.post("/jobs", files={"file": ("phone.m4a", song)}, data={"shifts": "0"})
    assert response.status_code == 202, response.text
    assert response.json()["input"]["duration_s"] == pytest.approx(3.0, abs=0.05)
    # Only the worker's scratch of the accepted job, never a probe's copy.
    assert all(p.name.startswith("stemify-job-") for p in service.temp.iterdir())


# ---- the probe itself, against the bucket -------------------------------------------------------


@pytest.fixture
def store(s3: Any) -> S3Storage:
    return S3Storage(s3.name, "probe")


def _probe_object(store: S3Storage, key: str, limits: MediaLimits | None = None) -> Any:
    url = store.read_url(key, 60)
    assert url is not None
    head = b"".join(store.read_range(key, 0, 16))
    return probe_url(
        url, name="the upload", head=head, size=store.size(key), limits=limits or MediaLimits()
    )


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".mp3", ".m4a", ".ogg"])
def test_probing_an_object_equals_probing_the_file(
    store: S3Storage, tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"song{suffix}"
    tone(path, 2.0)
    store.put_file("song", path)
    assert _probe_object(store, "song") == probe(path)


def test_an_objects_bounds_and_limits_name_it(store: S3Storage, tmp_path: Path) -> None:
    path = tmp_path / "hi.wav"
    tone(path, 1.0, rate=96000)
    store.put_file("hi", path)
    with pytest.raises(AudioLimitError, match=r"^the upload has a sample rate of 96 kHz"):
        _probe_object(store, "hi", MediaLimits(max_samplerate=48000))
    with pytest.raises(InvalidAudioError, match=r"^the upload could not be read: ffprobe needed"):
        _probe_object(store, "hi", MediaLimits(memory_mb=20))


def test_a_storage_that_refuses_the_read_is_a_storage_error(
    store: S3Storage, tmp_path: Path
) -> None:
    path = tmp_path / "song.wav"
    tone(path, 1.0)
    store.put_file("song", path)
    url = store.read_url("song", 60)
    assert url is not None
    tampered = url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
    # Not the caller's file at fault: 503 storage_error at the API, not 422 invalid_audio.
    with pytest.raises(StorageError, match=r"^the storage could not be read: HTTP error 403"):
        probe_url(tampered, name="the upload", head=b"RIFF", size=path.stat().st_size)
