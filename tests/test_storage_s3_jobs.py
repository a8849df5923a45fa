"""Jobs' objects on S3 (SeaweedFS, the ``s3`` fixture), through the real services: dedup shares
stems by server-side copy, and retention (the sweeper, `stemify jobs cleanup`) deletes them
from the bucket."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from support.processes import STEMIFY

from stemify.clock import now_utc
from stemify.jobs.layout import input_key, job_prefix, stem_key
from stemify.jobs.model import Job, JobSpec, JobStatus, StemFile
from stemify.services import Services
from stemify.worker.maintenance import sweep

pytestmark = pytest.mark.api

MakeServices = Callable[..., Services]
PREFIX = "stemify/jobs-test"
SHA = "ab" * 32


@pytest.fixture
def services(make_services: MakeServices, s3: Any) -> Services:
    return make_services(storage_url=f"s3://{s3.name}/{PREFIX}")


def keys(s3: Any) -> list[str]:
    answer = s3.client.list_objects_v2(Bucket=s3.name)
    return sorted(item["Key"].removeprefix(f"{PREFIX}/") for item in answer.get("Contents", ()))


def operations(services: Services) -> list[str]:
    """The S3 operations the services' storage client makes from now on."""
    seen: list[str] = []
    client = services.storage.client  # type: ignore[attr-defined]
    client.meta.events.register("before-call.s3", lambda model, **_: seen.append(model.name))
    return seen


def new_job(services: Services, *, sha: str = SHA, add: bool = True) -> Job:
    job_id = uuid.uuid4().hex
    with services.storage.writer(input_key(job_id)) as out:
        out.write(b"input of " + job_id.encode())
    job = Job(
        id=job_id,
        spec=JobSpec(model="tiny", shifts=0),
        source="upload",
        created_at=now_utc(),
        input_key=input_key(job_id),
        input_sha256=sha,
        input_size=10,
        input_duration_s=1.0,
        input_format="wav",
    )
    if add:
        services.store.add(job)
    return job


def succeeded_job(
    services: Services, *, expires_in: timedelta = timedelta(hours=1)
) -> tuple[Job, dict[str, bytes]]:
    """A finished job with two stems of 6 MiB (more than one part) in the bucket."""
    job = new_job(services)
    stems, contents = {}, {}
    for name in ("vocals", "drums"):
        key = stem_key(job.id, f"{name}.wav")
        contents[key] = os.urandom(6 << 20)
        with services.storage.writer(key) as out:
            out.write(contents[key])
        stems[name] = StemFile(name, key, len(contents[key]))
    now = now_utc()
    assert services.store.succeed(
        job.id, None, stems=stems, quality=None, stage_seconds={}, now=now,
        expires_at=now + expires_in,
    )  # fmt: skip
    return job, contents


def test_dedup_copies_on_the_server_and_deleting_one_job_keeps_the_other(
    services: Services, s3: Any
) -> None:
    first, contents = succeeded_job(services)
    second = new_job(services, add=False)  # the same input and options, submitted
    seen = operations(services)
    done = services.jobs.submit(second)
    assert done.status == JobStatus.SUCCEEDED and done.cache_hit
    # Server-side copies only: no byte of a stem came through this process, none went up.
    assert seen.count("CopyObject") == 2
    assert not {"GetObject", "PutObject", "UploadPart", "CreateMultipartUpload"} & set(seen)
    assert sorted(s.key for s in done.stems.values()) == [
        stem_key(second.id, "drums.wav"),
        stem_key(second.id, "vocals.wav"),
    ]
    # Deleting the first job (as DELETE /jobs/<id> does) leaves the copies whole.
    services.storage.delete_prefix(job_prefix(first.id))
    services.store.delete(first.id)
    assert not [k for k in keys(s3) if k.startswith(job_prefix(first.id))]
    for key, data in contents.items():
        copy = key.replace(first.id, second.id)
        assert b"".join(services.storage.read_range(copy, 0, None, chunk=1 << 20)) == data


def test_the_sweeper_deletes_an_expired_jobs_objects(services: Services, s3: Any) -> None:
    expired, _ = succeeded_job(services, expires_in=timedelta(seconds=-1))
    kept, _ = succeeded_job(services)
    assert sweep(services, now_utc()) == [expired.id]
    assert [k for k in keys(s3) if k.startswith(job_prefix(expired.id))] == []
    assert len([k for k in keys(s3) if k.startswith(job_prefix(kept.id))]) == 3
    job = services.store.get(expired.id)
    assert job is not None and job.status == JobStatus.EXPIRED


def test_jobs_cleanup_deletes_the_objects(services: Services, s3: Any) -> None:
    """`stemify jobs cleanup --failed` as an operator runs it, on the same database and bucket:
    the expired job's and the failed job's objects go from the bucket."""
    succeeded_job(services, expires_in=timedelta(seconds=-1))
    failed = new_job(services, sha="cd" * 32)
    assert services.store.fail(failed.id, None, code="storage_error", message="x", now=now_utc())
    kept, _ = succeeded_job(services)
    settings = services.settings
    result = subprocess.run(
        [STEMIFY, "jobs", "cleanup", "--failed"],
        env={
            **os.environ,
            "STEMIFY_DATA_DIR": str(settings.data_dir),
            "STEMIFY_STORAGE_URL": f"s3://{s3.name}/{PREFIX}",
            "STEMIFY_MODEL_DIR": str(settings.model_dir),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "expired 1 job(s)" in result.stdout
    assert "deleted 1 failed or canceled job(s)" in result.stdout
    assert sorted({k.split("/")[1] for k in keys(s3)}) == [kept.id]
    assert services.store.get(failed.id) is None
