"""Typed errors. Every error a user can cause carries a stable ``code`` and a clear message,
so the command line prints one line and the HTTP API maps it to one JSON error shape."""

from __future__ import annotations

import errno


class StemifyError(Exception):
    """Base of every error stemify raises on purpose."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidAudioError(StemifyError):
    """The input is not audio we can decode (not media, no audio stream, empty, corrupt)."""

    code = "invalid_audio"


class AudioLimitError(StemifyError):
    """The input is audio, but outside a limit (too long, too many channels, ...)."""

    code = "audio_limit"


class EncodeError(StemifyError):
    """Writing a stem failed."""

    code = "encode_failed"


class ToolMissingError(StemifyError):
    """An external program (ffmpeg, ffprobe) is not installed."""

    code = "tool_missing"


class ModelNotFoundError(StemifyError):
    code = "model_not_found"


class ModelLoadError(StemifyError):
    code = "model_load_failed"


class ModelDownloadError(StemifyError):
    code = "model_download_failed"


class ChecksumError(ModelDownloadError):
    code = "checksum_mismatch"


class InvalidOptionError(StemifyError):
    """A separation option is invalid (unknown stem, overlap out of range, ...)."""

    code = "invalid_option"


class BackendUnavailableError(StemifyError):
    """The inference backend asked for cannot run this model (an architecture or a quantized
    model the optimised runtime does not take, or the runtime is not installed)."""

    code = "backend_unavailable"


class CanceledError(StemifyError):
    code = "canceled"

    def __init__(self, message: str = "separation was canceled") -> None:
        super().__init__(message)


class NotFoundError(StemifyError):
    """A stored object (job input, stem) does not exist."""

    code = "not_found"


class StorageError(StemifyError):
    """The storage backend failed (disk full, permissions, an unreachable bucket)."""

    code = "storage_error"


class WorkerLostError(StemifyError):
    """The job's worker stopped (killed, out of memory) as often as STEMIFY_MAX_ATTEMPTS allows."""

    code = "worker_lost"

    def __init__(self, losses: int) -> None:
        super().__init__(
            f"the worker processing this job stopped {losses} times; "
            "the input may need more memory than a worker has"
        )


class QueueUnavailableError(StemifyError):
    """The queue (Redis) cannot be reached; a stored job waits for the reconciler."""

    code = "queue_unavailable"


class StorageFullError(StorageError):
    """The disk (or quota) under the storage or the scratch space is full."""

    code = "storage_full"


_FULL = (errno.ENOSPC, errno.EDQUOT)


def storage_error(action: str, error: OSError) -> StorageError:
    """The typed error of a failed storage operation: ``action`` says what ("cannot write
    KEY"); a full disk is told apart, since it is an operator's to fix and the API's 507."""
    if error.errno in _FULL:
        return StorageFullError(f"{action}: no space left on the storage")
    return StorageError(f"{action}: {error}")


class DownloadError(StemifyError):
    """Fetching media from a link failed."""

    code = "download_failed"


class InvalidURLError(DownloadError, ValueError):
    """The link itself is unacceptable (not http(s), malformed, or a refused address); a
    ValueError too, since retrying the same link can never succeed."""

    code = "invalid_url"


class ForbiddenURLError(InvalidURLError):
    """The link, or a redirect it leads to, points where stemify must not connect: a local or
    private address, or a host outside the allowlist."""

    code = "forbidden_url"


class UploadTooLargeError(StemifyError):
    """An upload or a linked file is over the size limit."""

    code = "too_large"


class ConfigurationError(StemifyError):
    """A setting is missing or unsafe; the process refuses to start."""

    code = "configuration_error"
