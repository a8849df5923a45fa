"""Hostile and broken media against one real `stemify serve`, and the limits behind it.

Every input is generated here (ffmpeg, or bytes written by hand). Each one is either refused
at submit (4xx with a clear message), ends as a failed job with a clear error, or — when it
is, after all, valid audio (silence, one sample, a WAV that is also a zip) — succeeds. After
the corpus the worker still serves a good job, and nothing is left behind: no temporary
file, no storage object of a refused upload.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import signal
import struct
import subprocess
import wave
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from support.processes import Cluster, FileServer, client, embedded_env, wait_for

from stemify.audio import decode_blocks, probe
from stemify.audio.decode import _read_full
from stemify.audio.limits import MediaLimits
from stemify.audio.probe import limit_hit
from stemify.errors import AudioLimitError, InvalidAudioError

pytestmark = [pytest.mark.service, pytest.mark.timeout(120)]

MAX_DURATION_S = 5.0
RATE = 44100


# ---- making inputs ----------------------------------------------------------------------------


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def tone(out: Path, seconds: float, *args: str, rate: int = RATE) -> bytes:
    ffmpeg("-f", "lavfi", "-i", f"sine=frequency=330:sample_rate={rate}:duration={seconds}",
           "-ac", "2", *args, str(out))  # fmt: skip
    return out.read_bytes()


def wav_bytes(frames: int, channels: int = 2, rate: int = RATE, silent: bool = False) -> bytes:
    t = np.arange(frames) / max(rate, 1)
    signal = np.zeros(frames) if silent else 0.3 * np.sin(2 * np.pi * 330 * t)
    pcm = (np.repeat(signal[:, None], channels, axis=1) * 32767).astype("<i2").tobytes()
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return out.getvalue()


def wav_with_sizes(
    pcm_frames: int, data_size: int, riff_size: int | None = None, rate: int = RATE
) -> bytes:
    """A stereo 16-bit WAV whose header sizes say what we like, with ``pcm_frames`` real frames."""
    pcm = wav_bytes(pcm_frames, rate=rate)[44:]
    fmt = struct.pack("<HHIIHH", 1, 2, rate, rate * 4, 4, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", data_size)
    riff = riff_size if riff_size is not None else len(body) + len(pcm)
    return b"RIFF" + struct.pack("<I", riff) + body + pcm


@dataclass(frozen=True)
class Case:
    name: str
    """The upload's file name (hostile too, sometimes)."""
    make: Callable[[Path], bytes]
    outcome: str
    """"refused" (at submit), "failed" (the job) or "succeeded"."""
    code: str | None = None
    message: str = ""
    """A regex the error message must match."""


def _zip_of_mp3(tmp: Path) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("song.mp3", tone(tmp / "in-zip.mp3", 2.0))
    return out.getvalue()


def _pdf_with_mp3(tmp: Path) -> bytes:
    return b"%PDF-1.4\n1 0 obj << >> endobj\n" + tone(tmp / "in-pdf.mp3", 2.0) + b"\n%%EOF\n"


def _wav_zip_polyglot(tmp: Path) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("readme.txt", "a zip hiding behind a wav")
    return wav_bytes(RATE) + out.getvalue()  # zip readers find the directory at the end


def _header_lies_short(tmp: Path) -> bytes:
    """8 s of FLAC whose STREAMINFO says it holds 1 s (ffprobe believes the header)."""
    data = bytearray(tone(tmp / "long.flac", 8.0))
    # After "fLaC", the block header and 10 bytes: rate (20 bits), channels (3), bits (5),
    # and the total sample count (36 bits).
    fields = int.from_bytes(data[18:26], "big")
    fields = (fields & ~((1 << 36) - 1)) | RATE
    data[18:26] = fields.to_bytes(8, "big")
    return bytes(data)


def _truncated(suffix: str, *args: str) -> Callable[[Path], bytes]:
    def make(tmp: Path) -> bytes:
        data = tone(tmp / f"whole{suffix}", 4.0, *args)
        return data[: len(data) // 2]

    return make


def _video_only(tmp: Path) -> bytes:
    out = tmp / "video.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64:rate=5:duration=1", "-an", str(out))
    return out.read_bytes()


def _hls(tmp: Path) -> bytes:
    return b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n"


def _aiff_rate_zero(tmp: Path) -> bytes:
    comm = struct.pack(">hIh", 2, RATE, 16) + bytes(10)  # an 80-bit float rate of 0
    pcm = bytes(RATE * 4)
    body = b"AIFF" + b"COMM" + struct.pack(">I", len(comm)) + comm
    body += b"SSND" + struct.pack(">III", len(pcm) + 8, 0, 0) + pcm
    return b"FORM" + struct.pack(">I", len(body)) + body


def _unknown_codec_wav(tmp: Path) -> bytes:
    data = bytearray(wav_bytes(RATE))
    data[20:22] = struct.pack("<H", 0x7777)  # no such format tag
    return bytes(data)


def _flac_header_only(tmp: Path) -> bytes:
    data = tone(tmp / "header.flac", 2.0)
    # "fLaC" + the STREAMINFO block (4 + 34 bytes): no frames at all.
    return data[:42]


def _mp3_tag_only(tmp: Path) -> bytes:
    return b"ID3\x04\x00\x00\x00\x00\x00\x10" + bytes(16)


def _elf(tmp: Path) -> bytes:
    return Path(shutil.which("ffprobe") or "/bin/true").read_bytes()[:4096]


CORPUS = [
    Case("empty.mp3", lambda tmp: b"", "refused", "invalid_audio", "empty"),
    Case("random.bin", lambda tmp: os.urandom(65536), "refused", "invalid_audio", "not an audio"),
    Case("random.mp3", lambda tmp: os.urandom(65536), "refused", "invalid_audio", "not an audio"),
    Case("hello.txt", lambda tmp: b"hello, world\n" * 100, "refused", "invalid_audio", ""),
    Case(
        "page.mp3",
        lambda tmp: b"<!DOCTYPE html><html><body>hi</body></html>",
        "refused",
        "invalid_audio",
        "is a web page",
    ),
    Case("archive.mp3", _zip_of_mp3, "refused", "invalid_audio", "is a zip archive"),
    Case("document.mp3", _pdf_with_mp3, "refused", "invalid_audio", "is a PDF document"),
    Case(
        "song.wav.gz",
        lambda tmp: gzip.compress(wav_bytes(RATE)),
        "refused",
        "invalid_audio",
        "is a gzip archive",
    ),
    Case("program.wav", _elf, "refused", "invalid_audio", "is a program"),
    Case(
        "image.mp3",
        lambda tmp: b"\x89PNG\r\n\x1a\n" + os.urandom(512),
        "refused",
        "invalid_audio",
        "is a PNG image",
    ),
    Case("playlist.m3u8", _hls, "refused", "invalid_audio", "is a playlist"),
    Case(
        "concat.txt",
        lambda tmp: b"ffconcat version 1.0\nfile '/etc/passwd'\n",
        "refused",
        "invalid_audio",
        "not an audio or video file",
    ),
    Case(
        "stream.sdp",
        lambda tmp: b"v=0\no=- 0 0 IN IP4 127.0.0.1\nm=audio 9 RTP/AVP 0\n",
        "refused",
        "invalid_audio",
        "not an audio or video file",
    ),
    Case("raw.pcm", lambda tmp: wav_bytes(RATE)[44:], "refused", "invalid_audio", ""),
    Case("video.mp4", _video_only, "refused", "invalid_audio", "has no audio stream"),
    Case("tag-only.mp3", _mp3_tag_only, "refused", "invalid_audio", ""),
    Case("header-only.flac", _flac_header_only, "refused", "invalid_audio", ""),
    Case("unknown-codec.wav", _unknown_codec_wav, "refused", "invalid_audio", ""),
    Case("rate-zero.aiff", _aiff_rate_zero, "refused", "invalid_audio", ""),
    Case(
        "channels64.wav",
        lambda tmp: wav_bytes(4410, channels=64),
        "refused",
        "audio_limit",
        "has 64 audio channels; at most 16",
    ),
    Case(
        "rate1hz.wav",
        lambda tmp: wav_bytes(4, rate=1),
        "refused",
        "audio_limit",
        "sample rate of 1 Hz; supported rates are 8 kHz to 384 kHz",
    ),
    Case(
        "rate768k.wav",
        lambda tmp: wav_bytes(76800, rate=768000),
        "refused",
        "audio_limit",
        "sample rate of 768 kHz",
    ),
    Case(
        # ffprobe measures the data that is there (1 s), not the header's 10 hours.
        "ten-hours.wav",
        lambda tmp: wav_with_sizes(8000, data_size=10 * 3600 * 8000 * 4, rate=8000),
        "succeeded",
    ),
    Case(
        "absurd-riff.wav",
        lambda tmp: wav_with_sizes(RATE, RATE * 4, riff_size=0xFFFFFFFF),
        "succeeded",
    ),
    Case(
        "streamed-long.wav",
        lambda tmp: wav_with_sizes(8 * RATE, data_size=0xFFFFFFFF),
        "refused",
        "audio_limit",
        "the limit is 0:05",
    ),
    Case(
        "too-long.flac",
        lambda tmp: tone(tmp / "long.flac", 8.0),
        "refused",
        "audio_limit",
        "is 0:08 long; the limit is 0:05",
    ),
    Case(
        "header-lies-short.flac",
        _header_lies_short,
        "failed",
        "audio_limit",
        r"longer than the 0:05 limit \(decoding stopped there\)",
    ),
    Case(
        # ffprobe measures the data there is (1 s), so the second that exists is separated.
        "data-size-past-the-end.wav",
        lambda tmp: wav_with_sizes(RATE, data_size=4 * RATE * 4),
        "succeeded",
    ),
    Case("truncated.flac", _truncated(".flac"), "failed", "invalid_audio", "truncated or corrupt"),
    Case(
        "truncated.mp3",
        _truncated(".mp3", "-c:a", "libmp3lame"),
        "failed",
        "invalid_audio",
        "truncated or corrupt",
    ),
    Case("truncated.m4a", _truncated(".m4a"), "refused", "invalid_audio", "not an audio"),
    Case("one-sample.wav", lambda tmp: wav_bytes(1), "succeeded"),
    Case("silence.wav", lambda tmp: wav_bytes(RATE, silent=True), "succeeded"),
    Case("polyglot-wav-zip.wav", _wav_zip_polyglot, "succeeded"),
    Case(
        "../../../../etc/cron.d/evil.mp3",
        lambda tmp: os.urandom(4096),
        "refused",
        "invalid_audio",
        "",
    ),
    Case(
        "\u202eevil\r\nname\"'<>;.wav" + "x" * 600,
        lambda tmp: b"\x00" * 4096,
        "refused",
        "invalid_audio",
        "",
    ),
    # A file name too long for the multipart parser's header limit.
    Case("x" * 20000 + ".wav", lambda tmp: wav_bytes(RATE), "refused", "bad_request", "header"),
    Case("a real mp3 named.wav", lambda tmp: tone(tmp / "real.mp3", 1.0), "succeeded"),
]


# ---- the service -------------------------------------------------------------------------------


@dataclass
class Service:
    cluster: Cluster
    api: httpx.Client
    storage: Path
    temp: Path


@pytest.fixture(scope="module")
def service(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("hostile")
    temp = tmp / "tmpdir"
    temp.mkdir()
    env = embedded_env(
        tmp,
        model_dir,
        {
            "STEMIFY_MAX_DURATION_S": str(MAX_DURATION_S),
            "STEMIFY_ALLOW_LOOPBACK_URLS": "1",
            "STEMIFY_SECRET_KEY": "hostile",
            # Every temporary file of the service lands here, to be counted at the end.
            "TMPDIR": str(temp),
        },
    )
    cluster = Cluster(tmp, env)
    cluster.serve()
    with client(cluster.base) as api:
        yield Service(cluster, api, tmp / "data" / "storage", temp)
    cluster.stop()


def _shown(case: Case) -> str:
    return re.sub(r"[^\w.-]+", "_", case.name)[:40]


@pytest.mark.parametrize("case", CORPUS, ids=[_shown(c) for c in CORPUS])
def test_hostile_input(service: Service, case: Case, tmp_path: Path) -> None:
    data = case.make(tmp_path)
    response = service.api.post("/jobs", files={"file": (case.name, data)}, data={"shifts": "0"})
    if case.outcome == "refused":
        assert 400 <= response.status_code < 500, response.text
        error = response.json()["error"]
        assert error["code"] == case.code, error
        assert re.search(case.message, error["message"]), error
        # Named as the caller's file, never by our storage name or a path of ours.
        assert str(service.storage) not in error["message"]
        assert "/tmp" not in error["message"] and "input " not in error["message"]
        return
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["input"]["name"] is None or "/" not in job["input"]["name"]
    done = wait_for(service.api, job["id"], timeout=90)
    if case.outcome == "failed":
        assert done["status"] == "failed", done
        assert done["error"]["code"] == case.code, done["error"]
        assert re.search(case.message, done["error"]["message"]), done["error"]
        assert done["stems"] == []
    else:
        assert done["status"] == "succeeded", done
        assert len(done["stems"]) == 4


def test_hostile_link(service: Service, tmp_path: Path) -> None:
    archive = tmp_path / "archive.mp3"
    archive.write_bytes(_zip_of_mp3(tmp_path))
    server = FileServer(archive)
    try:
        response = service.api.post("/jobs", data={"url": server.url, "shifts": "0"})
        assert response.status_code == 202, response.text
        done = wait_for(service.api, response.json()["id"], timeout=60)
    finally:
        server.close()
    assert done["status"] == "failed"
    assert done["error"]["code"] == "invalid_audio"
    assert "is a zip archive" in done["error"]["message"]


def test_after_the_corpus_a_good_job_runs_and_nothing_is_left(
    service: Service, tmp_path: Path
) -> None:
    name = '../..\\evil\r\n"quoted";\u202etxt.mp3 \U0001f3b5 na\u00efve' + "x" * 300 + ".wav"
    song = tone(tmp_path / "good.wav", 2.0)
    response = service.api.post("/jobs", files={"file": (name, song)}, data={"shifts": "0"})
    assert response.status_code == 202, response.text
    done = wait_for(service.api, response.json()["id"], timeout=90)
    assert done["status"] == "succeeded", done
    shown = done["input"]["name"]
    # The base name only, without control or format characters (the bidi override), cut.
    assert shown.startswith("evil") and "txt.mp3 \U0001f3b5 na\u00efvexxx" in shown
    assert len(shown) == 200
    assert not any(c in shown for c in "/\\\r\n\u202e")
    stem = done["stems"][0]
    download = httpx.get(service.cluster.base + stem["url"], timeout=30)
    assert download.status_code == 200
    disposition = download.headers["content-disposition"]
    assert disposition.isascii() and "\r" not in disposition and "\n" not in disposition
    ascii_name = re.fullmatch(r'attachment; filename="([^"]*)"(; filename\*=.*)?', disposition)
    assert ascii_name is not None, disposition
    assert "/" not in ascii_name[1] and "\\" not in ascii_name[1]

    # Every job's files live under jobs/<its id>/ (ids only, never names); refused uploads left
    # nothing; no temporary file of the service (probes, scratch, downloads) remains.
    jobs = service.api.get("/jobs", params={"limit": 100}).json()["jobs"]
    assert all(job["status"] in ("succeeded", "failed") for job in jobs)
    ids = {job["id"] for job in jobs}
    stored = {p.name for p in (service.storage / "jobs").iterdir()}
    assert stored <= ids
    for path in service.storage.rglob("*"):
        relative = path.relative_to(service.storage).parts
        assert relative[0] in ("jobs", "tmp", ".tmp"), relative
        assert not path.name.endswith(".part"), path
    assert sorted(p.name for p in service.temp.iterdir()) == []


# ---- the limits, one by one ---------------------------------------------------------------------


def test_decoding_stops_at_the_duration_limit_whatever_the_header_says(tmp_path: Path) -> None:
    path = tmp_path / "lies.flac"
    path.write_bytes(_header_lies_short(tmp_path))
    assert probe(path).duration_s == pytest.approx(1.0)  # the header's claim
    limits = MediaLimits(max_duration_s=3.0)
    frames = 0
    with pytest.raises(AudioLimitError, match=r"longer than the 0:03 limit"):
        for block in decode_blocks(path, samplerate=RATE, channels=2, limits=limits):
            frames += block.shape[1]
    assert frames <= (3.0 + 1.0) * RATE + 65536
    # Without the limit all 8 s come out.
    total = sum(b.shape[1] for b in decode_blocks(path, samplerate=RATE, channels=2))
    assert total == 8 * RATE


def test_channel_and_rate_bounds_are_settings(tmp_path: Path) -> None:
    path = tmp_path / "six.wav"
    path.write_bytes(wav_bytes(4410, channels=6, rate=96000))
    assert probe(path).channels == 6
    with pytest.raises(AudioLimitError, match="has 6 audio channels; at most 2 are supported"):
        probe(path, limits=MediaLimits(max_channels=2))
    with pytest.raises(AudioLimitError, match=r"96 kHz; supported rates are 8 kHz to 48 kHz"):
        probe(path, limits=MediaLimits(max_samplerate=48000))


def test_content_decides_not_the_extension(tmp_path: Path) -> None:
    real_mp3 = tmp_path / "really-an-mp3.wav"
    real_mp3.write_bytes(tone(tmp_path / "x.mp3", 1.0))
    assert probe(real_mp3).codec == "mp3"
    noise = tmp_path / "noise.mp3"
    noise.write_bytes(os.urandom(65536))
    # ffprobe alone would call this an mp3 (on the strength of its name, score 1).
    with pytest.raises(InvalidAudioError, match=r"matches no known format|not an audio"):
        probe(noise)


def test_memory_limit(tmp_path: Path) -> None:
    path = tmp_path / "fine.wav"
    path.write_bytes(wav_bytes(RATE))
    # Too little address space for ffprobe even to load its libraries: a clear error.
    with pytest.raises(InvalidAudioError, match="more than the 64 MB memory limit"):
        probe(path, limits=MediaLimits(memory_mb=64))
    with pytest.raises(InvalidAudioError, match="more than the 64 MB memory limit"):
        list(decode_blocks(path, samplerate=RATE, channels=2, limits=MediaLimits(memory_mb=64)))


def test_a_decoder_that_produces_nothing_is_stopped(tmp_path: Path) -> None:
    # The reading loop of decode_blocks, on a pipe whose writer (ffmpeg, stuck on a hostile
    # file) stays silent: it gives up after stall_s instead of waiting forever.
    read_end, write_end = os.pipe()
    try:
        with os.fdopen(read_end, "rb", buffering=0) as stream:
            os.write(write_end, b"\x00" * 16)
            buffer = bytearray(64)
            with pytest.raises(InvalidAudioError, match=r"ffmpeg produced no audio for 0.2 s"):
                _read_full(stream, memoryview(buffer), tmp_path / "stuck.wav", 0.2)
    finally:
        os.close(write_end)


def test_cpu_limit_is_named_when_hit() -> None:
    # A real SIGXCPU needs minutes of decoding; the exit status it leaves is what is mapped.
    limits = MediaLimits(cpu_s=7)
    assert limit_hit(-signal.SIGXCPU, "", "ffmpeg", limits) == (
        "ffmpeg used more than the 7 s CPU time limit"
    )
    assert limit_hit(1, "Invalid data found when processing input", "ffmpeg", limits) is None
