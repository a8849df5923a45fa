"""The web page at `/`, in a real browser (Debian's Chromium driven by Playwright) against a live
`stemify serve` with the tiny random-weight models.

Any console error, uncaught exception or Content-Security-Policy violation in the page fails the
test. With STEMIFY_SCREENSHOTS=1 the tests also save screenshots of the main states to
docs/img/ (committed once, shown in the README)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    expect,
    sync_playwright,
)
from support.processes import Cluster, FileServer, client, free_port, submit, wait_for

from stemify.web import STATIC_DIR

pytestmark = pytest.mark.browser

MakeAudio = Callable[..., Path]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The policy every response carries (the contract with the security headers): the page runs
# under it in every test below.
CONTRACT_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self'; font-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
DESKTOP = {"width": 1100, "height": 900}
PHONE = {"width": 390, "height": 844}
FOUR_STEMS = ["drums", "bass", "other", "vocals"]
MAX_DURATION_S = 30
SCREENSHOTS = os.environ.get("STEMIFY_SCREENSHOTS") == "1"
IMAGES = Path(__file__).resolve().parents[1] / "docs" / "img"
_FAILED_LOAD = re.compile(r"^Failed to load resource: the server responded with a status of (\d+)")
# Reports CSP violations to the console, where the watcher below sees them (Playwright's init
# scripts run outside the page's policy).
_REPORT_CSP = """
document.addEventListener("securitypolicyviolation", (e) =>
  console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`));
"""


def screenshot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        IMAGES.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(IMAGES / f"{name}.png"), full_page=True)


def web_env(tmp: Path, model_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "STEMIFY_DATA_DIR": str(tmp / "data"),
        "STEMIFY_MODEL_DIR": str(model_dir),
        "STEMIFY_DEFAULT_MODEL": "tiny",
        "STEMIFY_ALLOW_LOOPBACK_URLS": "1",
        "STEMIFY_SECRET_KEY": "web-test-secret",
        "STEMIFY_MAX_DURATION_S": str(MAX_DURATION_S),
        "STEMIFY_HEARTBEAT_INTERVAL_S": "0.5",
        "STEMIFY_DOWNLOAD_RETRIES": "0",  # a dead link fails at once
        **extra,
    }


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One server for the module, authentication off (loopback, one local user)."""
    tmp = tmp_path_factory.mktemp("web")
    cluster = Cluster(tmp, web_env(tmp, model_dir))
    cluster.serve()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Console:
    """What the page reported as wrong. HTTP errors the test provokes on purpose (a 415 for a bad
    file) are logged by Chromium too; ``allow`` names those statuses."""

    problems: list[str] = field(default_factory=list)
    allowed: set[int] = field(default_factory=set)

    def allow(self, *statuses: int) -> None:
        self.allowed.update(statuses)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        failed = _FAILED_LOAD.match(message.text)
        if failed and int(failed.group(1)) in self.allowed:
            return
        self.problems.append(message.text)

    def unexpected(self) -> list[str]:
        return self.problems


@dataclass
class Browsing:
    browser: Browser
    base: str
    console: Console = field(default_factory=Console)
    contexts: list[BrowserContext] = field(default_factory=list)

    def page(self, viewport: dict[str, int] = DESKTOP, **options: object) -> Page:
        context = self.browser.new_context(viewport=viewport, **options)  # type: ignore[arg-type]
        self.contexts.append(context)
        context.add_init_script(_REPORT_CSP)
        page = context.new_page()
        page.on("console", self.console.on_console)
        page.on("pageerror", lambda error: self.console.problems.append(f"page error: {error}"))
        return page

    def open(self, viewport: dict[str, int] = DESKTOP, **options: object) -> Page:
        page = self.page(viewport, **options)
        page.goto(f"{self.base}/")
        page.wait_for_selector("body[data-ready=true]")
        return page

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def web(browser: Browser, server: Cluster) -> Iterator[Browsing]:
    browsing = Browsing(browser, server.base)
    yield browsing
    browsing.close()
    assert browsing.console.unexpected() == [], "the page reported errors"


def wait_for_mixer(page: Page, stems: list[str], timeout: float = 90_000) -> None:
    page.wait_for_selector("#mixer[data-ready=true]", timeout=timeout)
    names = page.eval_on_selector_all("#mixer > li", "rows => rows.map(r => r.dataset.stem)")
    assert sorted(names) == sorted(stems)


def gains(page: Page) -> dict[str, float]:
    rows = page.eval_on_selector_all(
        "#mixer > li", "rows => rows.map(r => [r.dataset.stem, r.dataset.gain])"
    )
    return {name: float(gain) for name, gain in rows}


def decoded_seconds(path: Path) -> float:
    """Decode the whole file with ffmpeg (not just read its header) and return its length."""
    result = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and not result.stderr, result.stderr
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
         str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(probe.stdout.strip())


# ---- tests -------------------------------------------------------------------------------------


def test_assets_keep_to_the_content_security_policy() -> None:
    """No inline script, no style attribute, nothing from another origin, no innerHTML."""
    html = (STATIC_DIR / "index.html").read_text()
    for script in re.findall(r"<script\b[^>]*>", html):
        assert 'src="/web/assets/' in script, script
    assert " style=" not in html and "<style" not in html
    for asset in STATIC_DIR.iterdir():
        text = asset.read_text()
        assert not re.search(r"(?:src|href)=\"(?:https?:)?//", text), asset.name
        links = set(re.findall(r"https?://[^\s\"'`]*", text))
        assert links <= {"http://www.w3.org/2000/svg", "https://…"}, (asset.name, links)
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text, asset.name


def test_page_and_assets_are_served(server: Cluster) -> None:
    page = httpx.get(f"{server.base}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CONTRACT_CSP
    assert "<h1>stemify</h1>" in page.text
    for name in re.findall(r'"/web/assets/([\w.]+)"', page.text):
        asset = httpx.get(f"{server.base}/web/assets/{name}")
        assert asset.status_code == 200, name
    module = httpx.get(f"{server.base}/web/assets/app.js")
    assert "javascript" in module.headers["content-type"]
    assert module.headers["cache-control"] == "no-cache"
    assert httpx.get(f"{server.base}/web/config").json() == {
        "auth_required": False,
        "max_upload_mb": 500,
        "max_duration_s": MAX_DURATION_S,
        "default_model": "tiny",
        "player_max_mb": 1024,
    }
    assert httpx.get(f"{server.base}/web/assets/nothing.js").status_code == 404


def test_event_stream_reader(web: Browsing) -> None:
    """The page's SSE parser, on chunks as a network or proxy may cut them."""
    page = web.open()
    events = page.evaluate(
        """async () => {
            const { readEvents } = await import("/web/assets/events.js");
            const chunks = [
                ": keep-alive\\n\\n", "event: job\\r", "\\ndata: {\\"a\\":", "1}\\r\\n\\r", "\\n",
                "data: one\\ndata: two\\n\\nevent: deleted\\ndata: {}\\n\\n",
            ];
            const body = new ReadableStream({
                start(controller) {
                    for (const chunk of chunks) controller.enqueue(new TextEncoder().encode(chunk));
                    controller.close();
                },
            });
            const seen = [];
            for await (const event of readEvents(body)) seen.push(event);
            return seen;
        }"""
    )
    assert events == [
        {"event": "job", "data": '{"a":1}'},
        {"event": "message", "data": "one\ntwo"},
        {"event": "deleted", "data": "{}"},
    ]


def test_empty_form_lists_installed_models(web: Browsing) -> None:
    page = web.open()
    assert page.is_hidden("#key-section")  # authentication is off
    options = page.eval_on_selector_all("#model-select option", "os => os.map(o => o.value)")
    assert sorted(options) == ["tiny", "tiny6", "tinybag"]  # installed ones only
    assert page.input_value("#model-select") == "tiny"
    expect(page.locator("#model-description")).to_have_text(
        "Local model. Stems: drums, bass, other, vocals."
    )
    screenshot(page, "web-form")
    page.select_option("#model-select", "tiny6")
    page.check("input[name=stem-mode][value=some]")
    boxes = page.eval_on_selector_all("#stem-choices input", "bs => bs.map(b => b.value)")
    assert boxes == [*FOUR_STEMS, "guitar", "piano"]
    page.click("#submit-button")
    expect(page.locator("#form-error")).to_have_text("Choose a file or paste a link first.")
    # A file dropped on the zone becomes the upload and clears the link.
    page.fill("#url-input", "https://example.invalid/song.mp3")
    page.eval_on_selector(
        "#drop-zone",
        """zone => {
            const transfer = new DataTransfer();
            transfer.items.add(new File(["RIFF"], "dropped.wav", { type: "audio/wav" }));
            zone.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true }));
        }""",
    )
    assert page.eval_on_selector("#file-input", "i => i.files[0].name") == "dropped.wav"
    assert page.input_value("#url-input") == ""
    page.set_input_files("#file-input", [])
    page.fill("#url-input", "https://example.invalid/song.mp3")
    for box in page.locator("#stem-choices input").all():
        box.uncheck()
    page.click("#submit-button")
    expect(page.locator("#form-error")).to_have_text("Pick at least one stem.")


def test_upload_progress_mixer_and_downloads(
    web: Browsing, server: Cluster, make_audio: MakeAudio, tmp_path: Path
) -> None:
    song = make_audio("song.mp3", seconds=4.0)
    page = web.open()
    page.set_input_files("#file-input", str(song))
    page.click("#submit-button")
    expect(page.locator("#job-name")).to_have_text("song.mp3")
    expect(page.locator("#job-status")).to_have_text("Done — 100 %", timeout=90_000)
    assert page.eval_on_selector("#job-progress", "p => p.value") == 100
    assert page.is_hidden("#cancel-button")
    wait_for_mixer(page, FOUR_STEMS)

    # Mute, solo and volume act on each stem's GainNode.
    assert gains(page) == dict.fromkeys(FOUR_STEMS, 1.0)
    page.click("li[data-stem=drums] .mute")
    assert page.get_attribute("li[data-stem=drums] .mute", "aria-pressed") == "true"
    assert gains(page) == {"drums": 0.0, "bass": 1.0, "other": 1.0, "vocals": 1.0}
    page.click("li[data-stem=vocals] .solo")
    assert gains(page) == {"drums": 0.0, "bass": 0.0, "other": 0.0, "vocals": 1.0}
    page.click("li[data-stem=drums] .solo")  # soloed but still muted
    assert gains(page) == {"drums": 0.0, "bass": 0.0, "other": 0.0, "vocals": 1.0}
    page.click("li[data-stem=drums] .mute")
    page.fill("li[data-stem=vocals] input[type=range]", "0.5")
    assert gains(page) == {"drums": 1.0, "bass": 0.0, "other": 0.0, "vocals": 0.5}

    # Every waveform has something drawn.
    drawn = page.eval_on_selector_all(
        "#mixer canvas",
        """cs => cs.map(c => c.getContext("2d").getImageData(0, 0, c.width, c.height).data
                 .filter((v, i) => i % 4 === 3 && v > 0).length)""",
    )
    assert len(drawn) == 4 and all(pixels > 0 for pixels in drawn), drawn

    # Playing moves the position; pausing stops it.
    page.click("#play-button")
    expect(page.locator("#play-button")).to_have_text("Pause")
    position = page.locator("#seek")
    deadline = time.monotonic() + 10
    while float(position.input_value()) < 0.2:
        assert time.monotonic() < deadline, "playing did not move the position"
        time.sleep(0.1)
    page.click("#play-button")
    expect(page.locator("#play-button")).to_have_text("Play")
    screenshot(page, "web-mixer")

    # The download links, as given in the job, return files that decode; the zip has them all.
    hrefs = page.eval_on_selector_all("#mixer .download", "as => as.map(a => a.href)")
    assert len(hrefs) == 4
    for href in hrefs:
        response = httpx.get(href)
        assert response.status_code == 200, response.text
        stem = tmp_path / "stem.wav"
        stem.write_bytes(response.content)
        assert abs(decoded_seconds(stem) - 4.0) < 0.1
    archive = httpx.get(page.eval_on_selector("#zip-link", "a => a.href"))
    names = zipfile.ZipFile(io.BytesIO(archive.content)).namelist()
    assert sorted(names) == sorted(f"{stem}.wav" for stem in FOUR_STEMS)

    quality = page.eval_on_selector_all("#quality li", "ls => ls.map(l => l.textContent)")
    assert len(quality) == 5 and "add back up to the original" in quality[0]
    assert quality[1].startswith("Drums: peaks at −") and "LUFS" in quality[1]

    # The job is in the address: a reload opens it again.
    assert page.url.endswith(
        "#job=" + page.get_attribute("#history > li:first-child", "data-job-id")
    )
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    wait_for_mixer(page, FOUR_STEMS)

    # The history lists it; on a phone the page fits the screen's width.
    expect(page.locator("#history > li").first).to_have_attribute("data-status", "succeeded")
    phone = web.open(PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    phone.click("#history > li:first-child .open")
    wait_for_mixer(phone, FOUR_STEMS)
    overflow = phone.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than a phone screen"
    screenshot(phone, "web-phone-mixer")


def test_bad_file_and_limits_show_the_server_message(web: Browsing, make_audio: MakeAudio) -> None:
    web.console.allow(415, 422)
    page = web.open()
    page.set_input_files(
        "#file-input",
        files=[{"name": "notes.mp3", "mimeType": "audio/mpeg", "buffer": b"not audio\n" * 300}],
    )
    page.click("#submit-button")
    expect(page.locator("#form-error")).to_have_text(
        "The uploaded file is not an audio or video file ffmpeg can read."
    )
    assert page.is_hidden("#job-section")
    screenshot(page, "web-error")

    too_long = make_audio("long.mp3", seconds=MAX_DURATION_S + 5)
    page.set_input_files("#file-input", str(too_long))
    page.click("#submit-button")
    expect(page.locator("#form-error")).to_have_text(
        re.compile(r"^The uploaded file is 0:3\d long; the limit is 0:30\.$")
    )

    page.fill("#url-input", "ftp://example.invalid/song.mp3")
    page.click("#submit-button")
    expect(page.locator("#form-error")).to_have_text("Url must be an http:// or https:// link.")


def test_names_are_text_not_markup(web: Browsing, make_audio: MakeAudio) -> None:
    clip = make_audio("clip.wav", seconds=1.0)
    hostile = "<img src=x onerror=alert(1)><b>song.wav"  # no "/": that would cut the name
    page = web.open()
    page.set_input_files(
        "#file-input",
        files=[{"name": hostile, "mimeType": "audio/wav", "buffer": clip.read_bytes()}],
    )
    page.click("#submit-button")
    expect(page.locator("#job-status")).to_have_text("Done — 100 %", timeout=60_000)
    name = page.text_content("#job-name") or ""
    assert "song" in name, name  # shown as text (as sanitised by the server), never parsed
    for where in ("#job-name", "#history"):
        assert page.locator(f"{where} img, {where} b").count() == 0


def test_cancel_an_upload(web: Browsing, server: Cluster, make_audio: MakeAudio) -> None:
    api = client(server.base)
    before = api.get("/jobs", params={"limit": 100}).json()["jobs"]
    storage = server.tmp / "data" / "storage"
    files_before = sorted(storage.rglob("*"))
    page = web.open()
    # A slow line (200 kB/s) keeps the 1.7 MB upload going long enough to cancel it.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 200_000},
    )
    page.set_input_files("#file-input", str(make_audio("big.wav", seconds=10.0)))
    page.click("#submit-button")
    expect(page.locator("#job-status")).to_contain_text("Uploading")
    page.click("#cancel-button")
    expect(page.locator("#form-error")).to_have_text("The upload was canceled; nothing was kept.")
    assert page.is_hidden("#job-section")
    assert api.get("/jobs", params={"limit": 100}).json()["jobs"] == before
    # Not even a temporary file (the server may take a moment to notice the disconnect).
    deadline = time.monotonic() + 10
    while sorted(storage.rglob("*")) != files_before:
        assert time.monotonic() < deadline, sorted(storage.rglob("*"))
        time.sleep(0.1)


def test_link_job_in_two_stem_mode(web: Browsing, make_audio: MakeAudio) -> None:
    files = FileServer(make_audio("linked.mp3", seconds=3.0))
    try:
        page = web.open()
        page.fill("#url-input", files.url)
        page.check("input[name=stem-mode][value=two]")
        page.select_option("#two-stem-select", "vocals")
        page.select_option("#format-select", "flac")
        page.click("#submit-button")
        expect(page.locator("#job-name")).to_contain_text("linked")  # the name in the link
        expect(page.locator("#job-status")).to_have_text("Done — 100 %", timeout=90_000)
        wait_for_mixer(page, ["vocals", "no_vocals"])
        assert files.requests >= 1
        href = page.eval_on_selector("li[data-stem=no_vocals] .download", "a => a.href")
        assert httpx.get(href).headers["content-type"] in ("audio/flac", "audio/x-flac")
    finally:
        files.close()


def test_failed_job_shows_its_error(web: Browsing) -> None:
    dead = f"http://127.0.0.1:{free_port()}/gone.mp3"  # nothing listens there
    page = web.open()
    page.fill("#url-input", dead)
    page.click("#submit-button")
    expect(page.locator("#job-status")).to_have_text("Failed.", timeout=60_000)
    expect(page.locator("#job-error")).to_have_text(re.compile(r"^Download failed: .+"))
    assert page.is_hidden("#result") and page.is_hidden("#cancel-button")


def test_open_cancel_and_delete_from_history(
    web: Browsing, server: Cluster, make_audio: MakeAudio
) -> None:
    api = client(server.base)
    # Long enough (25 s, 8 shifts) to be caught running.
    job = submit(api, make_audio("slow.wav", seconds=25.0), shifts="8")
    page = web.open()
    row = page.locator(f"#history > li[data-job-id='{job['id']}']")
    row.locator(".open").click()
    expect(page.locator("#job-name")).to_have_text("slow.wav")
    expect(page.locator("#job-status")).to_contain_text("Separating", timeout=60_000)
    expect(page.locator("#job-status")).to_contain_text(
        re.compile(r"— \d+ % — about"), timeout=30_000
    )
    screenshot(page, "web-progress")
    page.click("#cancel-button")
    expect(page.locator("#job-status")).to_have_text("Canceled.", timeout=30_000)
    expect(page.locator("#job-announce")).to_have_text("Canceled.")  # for screen readers
    assert page.is_hidden("#cancel-button")
    assert wait_for(api, job["id"])["status"] == "canceled"

    page.click("#history-refresh")
    expect(row).to_have_attribute("data-status", "canceled")
    row.locator(".delete").click()
    expect(row).to_have_count(0)
    assert page.is_hidden("#job-section")  # it was the job on screen
    assert api.get(f"/jobs/{job['id']}").status_code == 404

    # A link to a job that is gone says so.
    web.console.allow(404)
    assert not page.url.endswith(job["id"])
    page.goto(f"{server.base}/#job={job['id']}")
    page.reload()  # a new hash alone does not load the page again
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator("#form-error")).to_have_text(f"Job {job['id']} not found.")
    assert page.is_hidden("#job-section")


def test_api_key_field_when_auth_is_required(
    browser: Browser, model_dir: Path, tmp_path: Path, make_audio: MakeAudio
) -> None:
    # A player budget of 1 MB, less than this job's stems take decoded (3 MB): downloads only.
    env = web_env(
        tmp_path,
        model_dir,
        STEMIFY_AUTH="required",
        STEMIFY_WEB_PLAYER_MAX_MB="1",
        STEMIFY_MAX_UPLOAD_MB="1",
    )
    cluster = Cluster(tmp_path, env)
    try:
        created = cluster.cli("keys", "create", "--name", "web")
        assert created.returncode == 0, created.stderr
        key = re.search(r"\bsk_\S+", created.stdout)
        assert key, created.stdout
        cluster.serve()
        web = Browsing(browser, cluster.base)
        web.console.allow(401)
        page = web.open()
        assert page.is_visible("#key-section")
        expect(page.locator("#form-error")).to_have_text("Enter your API key above to start.")
        assert page.is_disabled("#submit-button")

        page.fill("#api-key", "sk_wrong")
        page.click("#key-form button[type=submit]")
        expect(page.locator("#form-error")).to_have_text("Invalid API key.")

        page.fill("#api-key", key.group(0))
        page.click("#key-form button[type=submit]")
        expect(page.locator("#model-select option")).to_have_count(3)
        # A file over the upload limit is refused before it is sent.
        big = {"name": "big.wav", "mimeType": "audio/wav", "buffer": b"\0" * (3 << 20)}
        page.set_input_files("#file-input", files=[big])
        page.click("#submit-button")
        expect(page.locator("#form-error")).to_have_text(
            "The file big.wav is 3 MB; this server takes files up to 1 MB."
        )
        page.set_input_files("#file-input", str(make_audio("keyed.wav", seconds=2.0)))
        page.click("#submit-button")
        expect(page.locator("#job-status")).to_have_text("Done — 100 %", timeout=90_000)
        expect(page.locator("#mixer-status")).to_have_text(
            "Too long to play here: the stems would take 3 MB of memory in the browser, more "
            "than the 1 MB this server allows. Download them instead."
        )
        assert page.is_disabled("#play-button")
        assert page.locator("#mixer .download").count() == 4
        expect(page.locator("#history > li")).to_have_count(1)
        # Download links are signed: a plain link, as the browser follows it, needs no key.
        href = page.eval_on_selector("li[data-stem=bass] .download", "a => a.href")
        stem = tmp_path / "bass.wav"
        stem.write_bytes(httpx.get(href).raise_for_status().content)
        assert abs(decoded_seconds(stem) - 2.0) < 0.1
        assert httpx.get(href.split("?")[0]).status_code == 401

        # The key is kept in the browser: a reload needs no typing.
        page.reload()
        page.wait_for_selector("body[data-ready=true]")
        assert page.input_value("#api-key") == key.group(0)
        expect(page.locator("#history > li")).to_have_count(1)
        web.close()
        assert web.console.unexpected() == [], "the page reported errors"
    except BaseException:
        print(cluster.logs())  # shown by pytest when the test fails
        raise
    finally:
        cluster.stop()
