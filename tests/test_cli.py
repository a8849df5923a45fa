"""The ``stemify`` command, run as a real process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from stemify.audio import probe

pytestmark = pytest.mark.service

MakeAudio = Callable[..., Path]
STEMIFY = str(Path(sys.executable).with_name("stemify"))


def run(
    *args: str | Path, model_dir: Path | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if model_dir is not None:
        env["STEMIFY_MODEL_DIR"] = str(model_dir)
    return subprocess.run(
        [STEMIFY, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def bad_inputs(folder: Path, make_audio: MakeAudio) -> dict[str, Path]:
    """Every kind of bad input the engine must refuse with a clear line."""
    folder.mkdir()
    empty = folder / "empty.wav"
    empty.write_bytes(b"")
    noise = folder / "noise.mp3"
    noise.write_bytes(np.random.default_rng(1).bytes(20_000))
    text = folder / "notes.wav"
    text.write_text("these are not the stems you are looking for\n" * 50)
    flac = make_audio("whole.flac", seconds=4.0).read_bytes()
    truncated = folder / "truncated.flac"
    truncated.write_bytes(flac[: len(flac) // 2])
    silent_video = folder / "video.mp4"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
         "testsrc=size=64x64:rate=5:duration=1", "-an", str(silent_video)],
        check=True,
    )  # fmt: skip
    zero = folder / "zero.wav"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=44100",
         "-t", "0", str(zero)],
        check=True,
    )  # fmt: skip
    return {
        "empty.wav": empty,
        "noise.mp3": noise,
        "notes.wav": text,
        "truncated.flac": truncated,
        "video.mp4": silent_video,
        "zero.wav": zero,
    }


def test_separate_bad_files_fail_alone(
    model_dir: Path, make_audio: MakeAudio, tmp_path: Path
) -> None:
    good = make_audio("good.mp3", seconds=2.0)
    bad = bad_inputs(tmp_path / "bad", make_audio)
    out = tmp_path / "separated"
    # Bad files on both sides of the good one: the good one is still separated.
    files = [*list(bad.values())[:3], good, *list(bad.values())[3:]]
    done = run("separate", "-n", "tiny", "-o", out, "--shifts", "0", *files, model_dir=model_dir)
    assert done.returncode == 1
    errors = done.stderr.strip().splitlines()
    assert len(errors) == len(bad), done.stderr
    for line in errors:
        assert line.startswith("stemify: error: "), line
    for name in bad:
        assert sum(name in line for line in errors) == 1, (name, done.stderr)
    assert "Traceback" not in done.stderr
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == [f"tiny/good/{s}.wav" for s in ("bass", "drums", "other", "vocals")]


def test_separate_messages_name_the_problem(
    model_dir: Path, make_audio: MakeAudio, tmp_path: Path
) -> None:
    bad = bad_inputs(tmp_path / "bad", make_audio)
    done = run("separate", "-n", "tiny", "-o", tmp_path / "o", *bad.values(), model_dir=model_dir)
    text = done.stderr
    assert "empty.wav is empty" in text or "empty.wav is not an audio" in text
    assert "noise.mp3 is not an audio or video file" in text
    assert "notes.wav is not an audio or video file" in text
    assert "truncated.flac is truncated or corrupt" in text
    assert "video.mp4" in text and "no audio stream" in text
    assert "zero.wav contains no audio samples" in text
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.wav"))


@pytest.mark.parametrize(
    ("flags", "ext", "codec", "bits"),
    [
        (["--mp3", "--mp3-bitrate", "192"], "mp3", "mp3", None),
        (["--flac", "--int24"], "flac", "flac", "24"),
        (["--float32"], "wav", "pcm_f32le", None),
        (["--int24"], "wav", "pcm_s24le", None),
    ],
)
def test_separate_output_formats_and_template(
    model_dir: Path,
    make_audio: MakeAudio,
    tmp_path: Path,
    flags: list[str],
    ext: str,
    codec: str,
    bits: str | None,
) -> None:
    song = make_audio("My Song.ogg", seconds=1.5)
    out = tmp_path / "o"
    done = run(
        "separate", "-n", "tinybag", "-o", out, "--two-stems", "vocals", "--shifts", "0",
        "--filename", "{stem}-{track}.{ext}", "--json", *flags, song,
        model_dir=model_dir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert len(report) == 1
    stems = report[0]["stems"]
    assert sorted(stems) == ["no_vocals", "vocals"]
    assert stems["vocals"] == str(out / "tinybag" / f"vocals-My Song.{ext}")
    info = probe(Path(stems["vocals"]))
    assert info.codec == codec
    assert abs(info.duration_s - 1.5) < 0.1
    assert report[0]["quality"]["stems"]["vocals"]["peak_dbfs"] is not None
    if bits is not None:
        raw = subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", "stream=bits_per_raw_sample",
             "-of", "csv=p=0", stems["vocals"]],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert raw.stdout.strip() == bits


def test_missing_model_names_the_pull_command(tmp_path: Path, make_audio: MakeAudio) -> None:
    song = make_audio("song.wav", seconds=1.0)
    done = run("separate", "-n", "htdemucs", song, model_dir=tmp_path / "none")
    assert done.returncode == 1
    assert "stemify models pull htdemucs" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--mp3", "--flac"], "choose one of --mp3 and --flac"),
        (["--mp3", "--mp3-bitrate", "999"], "bitrate"),
        (["--two-stems", "kazoo"], "unknown stem kazoo"),
        (["--overlap", "1"], "overlap"),
        (["--filename", "{nope}.{ext}"], "bad --filename template"),
        (["--filename", "same.{ext}"], "same path"),
    ],
)
def test_bad_options_are_one_clear_line(
    model_dir: Path, make_audio: MakeAudio, tmp_path: Path, flags: list[str], message: str
) -> None:
    song = make_audio("song.wav", seconds=1.0)
    done = run("separate", "-n", "tiny", "-o", tmp_path / "o", *flags, song, model_dir=model_dir)
    assert done.returncode == 1
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not any((tmp_path / "o").rglob("*.*")) if (tmp_path / "o").exists() else True


def test_models_list_and_verify(model_dir: Path, tmp_path: Path) -> None:
    listed = run("models", "list", "--json", model_dir=model_dir)
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["htdemucs"]["installed"] is False and rows["htdemucs"]["official"] is True
    assert rows["htdemucs"]["size_bytes"] == 84_141_911
    assert rows["tiny"]["installed"] is True and rows["tiny"]["official"] is False
    assert rows["tiny6"]["sources"][-2:] == ["guitar", "piano"]
    table = run("models", "list", model_dir=model_dir)
    assert "htdemucs" in table.stdout and "tinybag" in table.stdout

    assert run("models", "verify", model_dir=model_dir).returncode == 0
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    victim = next(broken.glob("aaaa0001-*.th"))
    data = bytearray(victim.read_bytes())
    data[-100] ^= 0xFF
    victim.write_bytes(bytes(data))
    verified = run("models", "verify", model_dir=broken)
    assert verified.returncode == 1
    assert victim.name in verified.stdout and "BAD" in verified.stdout


def test_models_pull_unknown_model(tmp_path: Path) -> None:
    done = run("models", "pull", "nosuchmodel", model_dir=tmp_path)
    assert done.returncode == 1
    assert "unknown model 'nosuchmodel'" in done.stderr


def test_evaluate_table_and_json(model_dir: Path, make_audio: MakeAudio, tmp_path: Path) -> None:
    song = make_audio("song.wav", seconds=2.0)
    out = tmp_path / "o"
    assert run("separate", "-n", "tiny", "-o", out, song, model_dir=model_dir).returncode == 0
    stems = out / "tiny" / "song"
    copy = tmp_path / "copy"
    shutil.copytree(stems, copy)
    table = run("evaluate", stems, copy)
    assert table.returncode == 0, table.stderr
    assert "vocals" in table.stdout and "SDR" in table.stdout
    scores = json.loads(run("evaluate", stems, copy, "--json").stdout)
    assert set(scores["stems"]) == {"bass", "drums", "other", "vocals"}
    assert all(s["sdr_db"] > 50 for s in scores["stems"].values())
    missing = run("evaluate", tmp_path / "nope", copy)
    assert missing.returncode == 1 and "nope" in missing.stderr


def test_help_and_version() -> None:
    assert "separate" in run("--help").stdout
    assert run("--version").stdout.startswith("stemify, version")


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    env_url = "postgresql+psycopg://stemify:hunter2@db.internal/stemify"
    done = subprocess.run(
        [STEMIFY, "config", "show"],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "STEMIFY_DATABASE_URL": env_url,
            "STEMIFY_REDIS_URL": "redis://:sesame@cache:6379/0",
            "STEMIFY_SECRET_KEY": "topsecret",
            "STEMIFY_MAX_UPLOAD_MB": "42",
        },
    )
    assert done.returncode == 0, done.stderr
    assert "STEMIFY_MAX_UPLOAD_MB=42" in done.stdout
    assert "STEMIFY_DATABASE_URL=**********" in done.stdout
    for secret in ("hunter2", "sesame", "topsecret"):
        assert secret not in done.stdout


@pytest.mark.parametrize(
    "command", [["worker"], ["worker", "--autoscale", "1:2"], ["serve", "--port", "1"]]
)
def test_passwordless_remote_redis_is_refused(tmp_path: Path, command: list[str]) -> None:
    # 192.0.2.0/24 is reserved for documentation: nothing is contacted, the check comes first.
    env = {**os.environ, "STEMIFY_DATA_DIR": str(tmp_path), "STEMIFY_SECRET_KEY": "k"}
    env["STEMIFY_REDIS_URL"] = "redis://192.0.2.7:6379/0"
    done = subprocess.run([STEMIFY, *command], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1
    assert "without a password" in done.stderr and "STEMIFY_ALLOW_INSECURE_REDIS=1" in done.stderr
    assert not (tmp_path / "stemify.db").exists(), "nothing may start before the check"


@pytest.mark.parametrize(
    ("value", "message"),
    [("4", "--autoscale: expected MIN:MAX (e.g. 1:4), got '4'"),
     ("3:1", "--autoscale: need 0 <= MIN <= MAX and MAX >= 1, got '3:1'"),
     ("1:2 --threads 2",
      "--threads and --autoscale: the autoscaler gives each child its share of cores")],
)  # fmt: skip
def test_worker_autoscale_range_is_checked(tmp_path: Path, value: str, message: str) -> None:
    env = {**os.environ, "STEMIFY_DATA_DIR": str(tmp_path), "STEMIFY_SECRET_KEY": "k"}
    env["STEMIFY_REDIS_URL"] = "redis://127.0.0.1:6379/0"
    done = subprocess.run(
        [STEMIFY, "worker", "--autoscale", *value.split()], capture_output=True, text=True,
        env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip() == f"stemify: error: {message}"


def test_redis_url_check() -> None:
    from stemify.errors import ConfigurationError
    from stemify.services import check_redis_url

    check_redis_url("redis://127.0.0.1:6379/0", allow_insecure=False)
    check_redis_url("redis://localhost:6379", allow_insecure=False)
    check_redis_url("redis://[::1]:6379", allow_insecure=False)
    check_redis_url("redis://:secret@10.1.2.3:6379", allow_insecure=False)
    check_redis_url("rediss://user:secret@cache.internal:6380", allow_insecure=False)
    check_redis_url("redis://10.1.2.3:6379", allow_insecure=True)
    for url in ("redis://10.1.2.3:6379", "rediss://cache.internal", "redis://user@host:1"):
        with pytest.raises(ConfigurationError, match="without a password"):
            check_redis_url(url, allow_insecure=False)


def test_a_bad_setting_is_one_line_naming_it(tmp_path: Path) -> None:
    env = {**os.environ, "STEMIFY_DATA_DIR": str(tmp_path), "STEMIFY_MAX_BODY_KB": "lots"}
    env["STEMIFY_URL_ALLOWLIST"] = "youtube.com, a..b"
    env["STEMIFY_DATABASE_URL"] = "postgresql://u:pw-not-shown@db/x?bad=1"
    env["STEMIFY_LOG_LEVEL"] = "LOUD"
    done = subprocess.run(
        [STEMIFY, "config", "show"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 1 and done.stdout == ""
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert done.stderr.startswith("stemify: error: invalid STEMIFY_")
    assert "invalid STEMIFY_MAX_BODY_KB: Input should be a valid integer" in done.stderr
    assert "invalid STEMIFY_URL_ALLOWLIST" in done.stderr and "'a..b'" in done.stderr
    assert "invalid STEMIFY_LOG_LEVEL" in done.stderr
    assert "pw-not-shown" not in done.stderr
