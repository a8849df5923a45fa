"""The page at first run and after it, in Chromium: the model's state while it downloads,
"Download this mix" (rendered in the browser, compared sample by sample with the stems), and
several dropped files becoming several jobs."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from playwright.sync_api import Browser, expect
from support.model_server import MODEL_NAME, publish_model
from support.processes import Cluster, client, submit, wait_for
from test_first_run import first_run as first_run_cluster
from test_web import (  # noqa: F401  (fixtures)
    Browsing,
    browser,
    server,
    wait_for_mixer,
    web,
)

from stemify.audio import decode_blocks

pytestmark = pytest.mark.browser

MakeAudio = Callable[..., Path]
FOUR_STEMS = ["drums", "bass", "other", "vocals"]


def samples(path: Path) -> npt.NDArray[np.float32]:
    return np.concatenate(list(decode_blocks(path, samplerate=44100, channels=2)), axis=1)


def test_download_this_mix_is_the_sum_of_the_stems_at_their_gains(
    web: Browsing,  # noqa: F811  (the fixture imported above)
    server: Cluster,  # noqa: F811
    make_audio: MakeAudio,
    tmp_path: Path,
) -> None:
    api = client(server.base)
    job = wait_for(api, submit(api, make_audio("mixme.wav", seconds=3.0))["id"], timeout=120)
    assert job["status"] == "succeeded", job
    page = web.page()
    page.goto(f"{web.base}/#job={job['id']}")
    page.wait_for_selector("body[data-ready=true]")
    wait_for_mixer(page, FOUR_STEMS)
    page.click("li[data-stem=vocals] .mute")
    page.fill("li[data-stem=drums] input[type=range]", "0.5")

    with page.expect_download() as download:
        page.click("#mix-button")
    assert download.value.suggested_filename == "mixme-mix.wav"
    mix = tmp_path / "mix.wav"
    download.value.save_as(mix)
    expect(page.locator("#mix-status")).to_have_text("The mix is downloading as mixme-mix.wav.")

    stems = {}
    for stem in job["stems"]:
        path = tmp_path / f"{stem['name']}.wav"
        path.write_bytes(httpx.get(f"{server.base}{stem['url']}").content)
        stems[stem["name"]] = samples(path)
    # The WAV is at the stems' own rate (no resampling on the way), 16-bit.
    header = mix.read_bytes()[:44]
    assert int.from_bytes(header[24:28], "little") == 44100
    assert int.from_bytes(header[34:36], "little") == 16
    expected = 0.5 * stems["drums"] + stems["bass"] + stems["other"]
    mixed = samples(mix)
    assert mixed.shape == expected.shape
    assert np.abs(mixed - expected).max() <= 1.5 / 32768  # 16-bit rounding
    assert np.abs(mixed - (expected + stems["vocals"])).max() > 0.01  # the vocals are out


def test_several_dropped_files_become_several_jobs(
    web: Browsing,  # noqa: F811  (the fixture imported above)
    make_audio: MakeAudio,
) -> None:
    songs = [make_audio(f"drop{i}.wav", seconds=1.0 + i * 0.5) for i in range(3)]
    page = web.open()
    files = [
        {"name": song.name, "data": base64.b64encode(song.read_bytes()).decode()} for song in songs
    ]
    page.eval_on_selector(
        "#drop-zone",
        """(zone, files) => {
            const transfer = new DataTransfer();
            for (const f of files) {
              const bytes = Uint8Array.from(atob(f.data), (c) => c.charCodeAt(0));
              transfer.items.add(new File([bytes], f.name, { type: "audio/wav" }));
            }
            zone.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true }));
        }""",
        files,
    )
    assert page.eval_on_selector("#file-input", "i => i.files.length") == 3
    page.click("#submit-button")
    rows = page.locator("#batch-list > li")
    expect(rows).to_have_count(3)
    for i in range(3):
        expect(rows.nth(i).locator(".batch-name")).to_have_text(f"drop{i}.wav")
        expect(rows.nth(i)).to_have_attribute("data-status", "succeeded", timeout=120_000)
        expect(rows.nth(i).locator(".batch-status")).to_have_text("Succeeded — 100 %")
    ids = rows.evaluate_all("rs => rs.map(r => r.dataset.jobId)")
    assert len(set(ids)) == 3
    # Each row opens its job.
    rows.nth(1).locator("button").click()
    expect(page.locator("#job-name")).to_have_text("drop1.wav")


@pytest.fixture
def first_run(tmp_path: Path) -> Iterator[Cluster]:
    # About 8 s for the 0.76 MB model: the page is seen while it downloads.
    release, catalogue, _ = publish_model(tmp_path, bytes_per_s=100_000)
    cluster = first_run_cluster(tmp_path, release, catalogue)
    cluster.serve()
    yield cluster
    cluster.stop()
    release.close()


def test_the_model_state_shows_while_it_downloads(
    browser: Browser,  # noqa: F811
    first_run: Cluster,
    make_audio: MakeAudio,
) -> None:
    browsing = Browsing(browser, first_run.base)
    try:
        page = browsing.open()
        state = page.locator("#model-state")
        expect(state).to_be_visible()
        expect(state).to_have_attribute("data-state", "downloading")
        expect(state).to_contain_text(f"Downloading the model {MODEL_NAME} — ")
        assert page.locator("#model-select option").all_text_contents() == [
            f"{MODEL_NAME} (downloading)"
        ]
        page.set_input_files("#file-input", str(make_audio("early.wav", seconds=1.0)))
        page.click("#submit-button")
        expect(page.locator("#job-status")).to_contain_text(
            f"Waiting for the model {MODEL_NAME} to finish downloading", timeout=30_000
        )
        expect(state).to_be_hidden(timeout=60_000)
        expect(state).to_have_attribute("data-state", "installed")
        expect(page.locator("#job-status")).to_have_text("Done — 100 %", timeout=120_000)
        assert page.locator("#model-select option").all_text_contents() == [MODEL_NAME]
    finally:
        browsing.close()
    assert browsing.console.unexpected() == [], "the page reported errors"
