"""Large uploads that cost the sender nothing: a decodable WAV of any size generated as it is
sent, and the peak resident memory of the process that receives it (tests and bench)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

MiB = 1 << 20


def wav_header(data_bytes: int, rate: int = 44100, channels: int = 2) -> bytes:
    """A PCM WAV header for ``data_bytes`` of 16-bit samples (the body then costs nothing)."""
    block = channels * 2
    return (
        b"RIFF" + (36 + data_bytes).to_bytes(4, "little") + b"WAVEfmt "
        + (16).to_bytes(4, "little") + (1).to_bytes(2, "little")
        + channels.to_bytes(2, "little") + rate.to_bytes(4, "little")
        + (rate * block).to_bytes(4, "little") + block.to_bytes(2, "little")
        + (16).to_bytes(2, "little") + b"data" + data_bytes.to_bytes(4, "little")
    )  # fmt: skip


def wav_form(total: int, boundary: str = "stemifymemory") -> tuple[Iterator[bytes], int, str]:
    """A multipart form of one decodable WAV file of ``total`` bytes, generated as it is sent."""
    header = wav_header(total - 44)
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="shifts"\r\n\r\n0\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode() + header
    tail = f"\r\n--{boundary}--\r\n".encode()
    piece = b"\x10\x00\xf0\xff" * (MiB // 4)  # a quiet square wave, 1 MiB at a time
    body = total - 44

    def chunks() -> Iterator[bytes]:
        yield head
        left = body
        while left > 0:
            yield piece[: min(left, MiB)]
            left -= MiB
        yield tail

    return chunks(), len(head) + body + len(tail), f"multipart/form-data; boundary={boundary}"


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def upload_wav(base: str, total: int) -> dict[str, Any]:
    chunks, length, content_type = wav_form(total)
    response = httpx.post(
        f"{base}/api/v1/jobs",
        content=chunks,
        headers={"Content-Type": content_type, "Content-Length": str(length)},
        timeout=600,
    )
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job
