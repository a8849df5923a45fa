"""What a job's download links cost when the job JSON is rendered (it is polled often): the
API's signed links, presigned S3 GETs (the first render in an expiry step signs, later ones
reuse the link), public and signed CDN links. In process, no server: presigning and CDN
signing are local computations (botocore's SigV4, an RSA-2048 signature).

    python bench/bench_links.py [--renders 2000]   # writes bench/out/links.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from stemify.clock import now_utc
from stemify.jobs.links import DownloadLinks, build_links
from stemify.jobs.model import Job, JobSpec, JobStatus, StemFile
from stemify.jobs.render import job_to_dict
from stemify.settings import Settings
from stemify.storage import storage_from_url

OUT = Path(__file__).parent / "out"
STEMS = ("drums", "bass", "other", "vocals")


def four_stem_job(job_id: str) -> Job:
    now = now_utc()
    stems = {n: StemFile(n, f"jobs/{job_id}/stems/{n}.wav", 100 << 20) for n in STEMS}
    return Job(
        id=job_id, spec=JobSpec(model="htdemucs"), source="upload", created_at=now,
        status=JobStatus.SUCCEEDED, stems=stems, input_name="song.mp3",
        expires_at=now + timedelta(hours=24),
    )  # fmt: skip


ROUNDS = 5


def per_render_us(render: Callable[[], Any], count: int) -> float:
    """Median over five rounds of the mean time of one render, in microseconds."""
    rounds = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(count):
            render()
        rounds.append((time.perf_counter() - start) / count * 1e6)
    return statistics.median(rounds)


def links_for(tmp: Path, **settings: Any) -> DownloadLinks:
    config = Settings(data_dir=tmp, **settings)
    storage = storage_from_url(config.storage)
    return build_links(config, storage, b"bench-secret")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--renders", type=int, default=2000)
    args = parser.parse_args()
    # boto3 as for a bucket; nothing below sends a request.
    os.environ.update(
        AWS_REGION="us-east-1", AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret",
        AWS_ENDPOINT_URL_S3="https://s3.example.com", AWS_EC2_METADATA_DISABLED="true",
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        key = tmp / "cdn.pem"
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        s3 = {"storage_url": "s3://bench-bucket/stemify"}
        cdn = {**s3, "cdn_base_url": "https://cdn.example.com"}
        variants = {
            "api": links_for(tmp),
            "s3": links_for(tmp, **s3),
            "cdn_public": links_for(tmp, **cdn),
            "cdn_signed": links_for(tmp, **cdn, cdn_key_id="KBENCH", cdn_private_key_file=key),
        }
        job = four_stem_job("0" * 32)
        results: dict[str, float] = {}
        for label, links in variants.items():
            # The same job again and again: what polling and SSE do within an expiry step.
            results[f"{label}_repeat_us"] = per_render_us(
                lambda links=links: job_to_dict(job, links=links), args.renders
            )
            # A new job each time: every link signed afresh (a presigned link's first render).
            jobs = iter([four_stem_job(f"{i:032x}") for i in range(ROUNDS * args.renders)])
            results[f"{label}_fresh_us"] = per_render_us(
                lambda links=links, jobs=jobs: job_to_dict(next(jobs), links=links), args.renders
            )
    report = {"renders": args.renders, "stems": len(STEMS), "per_render_us": results}
    OUT.mkdir(exist_ok=True)
    (OUT / "links.json").write_text(json.dumps(report, indent=2))
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
