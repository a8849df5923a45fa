"""The web page with S3 storage (SeaweedFS) in Chromium: the player fetches the stems from the
bucket through their presigned links (cross-origin: the bucket's CORS rule of
docs/operations/object-storage-downloads.md, and the page's CSP naming the bucket's origin),
plays them, and a download link saves the stem under its name. Without a CORS rule for it,
the page says so."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, expect
from support.processes import Cluster
from support.s3 import boto3_env
from test_web import (  # the page's test harness
    FOUR_STEMS,
    Browsing,
    browser,
    decoded_seconds,
    wait_for_mixer,
    web_env,
)

pytestmark = pytest.mark.browser
assert browser  # the module's Chromium fixture, shared

MakeAudio = Callable[..., Path]


def cors_rule(origin: str) -> dict[str, Any]:
    """The rule the docs give: the page's origin may GET the objects (and read Range answers)."""
    return {
        "CORSRules": [
            {
                "AllowedOrigins": [origin],
                "AllowedMethods": ["GET", "HEAD"],
                "AllowedHeaders": ["Range"],
                "ExposeHeaders": ["Content-Length", "Content-Range", "Accept-Ranges"],
                "MaxAgeSeconds": 3600,
            }
        ]
    }


@pytest.fixture
def s3_cluster(
    s3_server: Any, model_dir: Path, tmp_path: Path
) -> Iterator[tuple[Cluster, Any, str]]:
    """`stemify serve` (embedded worker) storing in a fresh bucket whose CORS rule allows it."""
    bucket = f"web-{int(time.time() * 1000)}"
    client = s3_server.admin
    client.create_bucket(Bucket=bucket)
    env = {
        **web_env(tmp_path, model_dir),
        **boto3_env(s3_server, tmp_path),
        "STEMIFY_STORAGE_URL": f"s3://{bucket}/web",
    }
    cluster = Cluster(tmp_path, env)
    client.put_bucket_cors(Bucket=bucket, CORSConfiguration=cors_rule(cluster.base))
    cluster.serve()
    yield cluster, client, bucket
    cluster.stop()


def test_player_and_downloads_work_with_stems_in_s3(
    browser: Browser,
    s3_cluster: tuple[Cluster, Any, str],
    s3_server: Any,
    make_audio: MakeAudio,
    tmp_path: Path,
) -> None:
    cluster, client, bucket = s3_cluster
    web = Browsing(browser, cluster.base)
    try:
        song = make_audio("song.mp3", seconds=4.0)
        page = web.open()
        page.set_input_files("#file-input", str(song))
        page.click("#submit-button")
        expect(page.locator("#job-status")).to_have_text("Done — 100 %", timeout=120_000)
        # The mixer decoded every stem, fetched from the bucket, not the API.
        wait_for_mixer(page, FOUR_STEMS)
        hrefs = page.eval_on_selector_all("#mixer .download", "as => as.map(a => a.href)")
        endpoint = urlsplit(s3_server.endpoint)
        assert len(hrefs) == 4
        assert all(urlsplit(h).netloc == endpoint.netloc for h in hrefs), hrefs
        assert all(urlsplit(h).path.startswith(f"/{bucket}/web/jobs/") for h in hrefs)

        page.click("#play-button")
        expect(page.locator("#play-button")).to_have_text("Pause")
        deadline = time.monotonic() + 10
        while float(page.locator("#seek").input_value()) < 0.2:
            assert time.monotonic() < deadline, "playing did not move the position"
            time.sleep(0.1)
        page.click("#play-button")

        # A download link saves the stem under its name (the presigned Content-Disposition).
        with page.expect_download() as caught:
            page.click("li[data-stem=drums] .download")
        download = caught.value
        assert download.suggested_filename == "song-drums.wav"
        saved = tmp_path / "drums.wav"
        download.save_as(saved)
        assert abs(decoded_seconds(saved) - 4.0) < 0.1
        assert httpx.get(hrefs[0]).status_code == 200
        assert web.console.unexpected() == [], "the page reported errors"

        # With a CORS rule for another origin the browser may not read the stems: the page
        # says so, and the download links still work. (Not "no rule": SeaweedFS, unlike AWS,
        # then allows every origin.)
        client.put_bucket_cors(
            Bucket=bucket, CORSConfiguration=cors_rule("https://elsewhere.example")
        )
        job_url = page.url
        bare = web.page()  # a new context: nothing cached
        bare.goto(job_url)
        expect(bare.locator("#mixer-status")).to_contain_text(
            "is the bucket's CORS rule set for this page?", timeout=30_000
        )
        problems = web.console.unexpected()
        assert problems and all("CORS" in p or "Failed to load" in p for p in problems), problems
        web.console.problems.clear()
        with bare.expect_download() as caught:
            bare.click("li[data-stem=vocals] .download")
        assert caught.value.suggested_filename == "song-vocals.wav"
    finally:
        web.close()
    # The refused page's other stem fetches may fail after the clear: CORS refusals only.
    late = web.console.unexpected()
    assert all("CORS" in p or "Failed to load" in p for p in late), late
