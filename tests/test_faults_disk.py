"""Disk full: the data dir, the storage and the scratch space of an embedded `stemify serve` on
a 96 MB tmpfs the test mounts, filled to the edge. An upload that does not fit is answered 507
(storage_full) with its partial file removed; a job whose stems do not fit fails with
storage_full and leaves no partial stem; the service keeps serving, and once space is freed
the next job succeeds."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from support.faults import fill, leftovers, small_filesystem
from support.processes import Cluster, client, embedded_env, submit, wait_for

pytestmark = pytest.mark.faults

MakeAudio = Callable[..., Path]


def test_disk_full_upload_and_stems(model_dir: Path, tmp_path: Path, make_audio: MakeAudio) -> None:
    song = make_audio("song.wav", seconds=30.0)  # 5.3 MB; its four stems 21 MB
    with small_filesystem(tmp_path / "small", 96) as small:
        scratch = small / "tmp"
        scratch.mkdir()
        env = embedded_env(small, model_dir, {
            "TMPDIR": str(scratch),
            # Prometheus' multiprocess files are memory-mapped, and a mapping that cannot get a
            # page on a full filesystem may kill the process (SIGBUS; not what is tested here).
            "STEMIFY_METRICS_DIR": str(tmp_path / "metrics"),
        })  # fmt: skip
        cluster = Cluster(tmp_path, env)
        try:
            cluster.serve()
            api = client(cluster.base)
            storage = small / "data" / "storage"
            filler = fill(small, leave_mb=8)  # the upload fits, its stems do not

            job = submit(api, song, shifts="0")
            failed = wait_for(api, job["id"], timeout=180)
            assert failed["status"] == "failed", cluster.logs()
            assert failed["error"]["code"] == "storage_full", failed
            assert "no space left" in failed["error"]["message"]
            assert failed["stems"] == []
            assert not list(storage.glob(f"jobs/{job['id']}/stems/*"))

            with song.open("rb") as file:  # about 2.7 MB are left: this one does not fit
                refused = api.post("/jobs", files={"file": (song.name, file)})
            assert refused.status_code == 507, refused.text
            assert refused.json() == {"error": {
                "code": "storage_full",
                "message": "the server has no space left to store this; try again later",
            }}  # fmt: skip
            listed = api.get("/jobs").json()["jobs"]
            assert [j["id"] for j in listed] == [job["id"]]  # no job for the refused upload
            assert sorted(p.name for p in (storage / "jobs").iterdir()) == [job["id"]]
            assert leftovers(scratch, storage) == []
            assert api.get("/health").status_code == 200

            os.unlink(filler)  # the operator frees space (a job spools 42 MB, writes 21)
            again = submit(api, song, shifts="0")
            done = wait_for(api, again["id"], timeout=180)
            assert done["status"] == "succeeded", cluster.logs()
            assert len(done["stems"]) == 4
            assert leftovers(scratch, storage) == []
            assert "storage_full" in cluster.logs()
            print(
                "disk filled to 8 MB free: the job failed storage_full, a 5.3 MB upload got "
                "507; after freeing space the next job succeeded"
            )
        finally:
            cluster.stop()
