"""Which download links a job carries: the API's own signed links, or direct links to the
stored objects (presigned S3 GETs, or a CDN in front of the bucket).

Every kind expires by the one rule of :meth:`LinkSigner.expiry` (rounded steps, never past the
job's own expiry), so the job JSON stays the same between two reads. The zip is always the
API's link: it is no object of its own but streamed by the API from the stems' objects."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol
from urllib.parse import quote

from stemify.errors import ConfigurationError
from stemify.jobs.model import Job, StemFile
from stemify.jobs.signing import LinkSigner, target_of
from stemify.settings import Settings
from stemify.storage import Storage

if TYPE_CHECKING:
    from stemify.storage.s3 import S3Storage

LinkKind = Literal["api", "s3", "cdn"]
LINK_KINDS: tuple[LinkKind, ...] = ("api", "s3", "cdn")


# ---- the names downloads are saved under ------------------------------------------------------


def base_name(job: Job) -> str:
    """The song's name without its extension (or one made from the job id)."""
    name = job.input_name or f"stemify-{job.id[:8]}"
    stem, dot, _ = name.rpartition(".")
    return stem if dot and stem else name


def extension(key: str, job: Job) -> str:
    last = key.rsplit("/", 1)[-1]
    return last.rsplit(".", 1)[-1].lower() if "." in last else job.spec.output_format


def stem_file_name(job: Job, stem: StemFile) -> str:
    """``<song>-<stem>.<ext>``, the name every kind of link saves a stem under."""
    return f"{base_name(job)}-{stem.name}.{extension(stem.key, job)}"


def attachment(file_name: str) -> str:
    """Content-Disposition with an ASCII ``filename`` and, for other names, RFC 5987's
    ``filename*`` in UTF-8."""
    ascii_name = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "_" for c in file_name)
    header = f'attachment; filename="{ascii_name}"'
    if ascii_name != file_name:
        header += f"; filename*=UTF-8''{quote(file_name, safe='')}"
    return header


# ---- links -------------------------------------------------------------------------------------


class DirectLinks(Protocol):
    """Links straight to stored objects, computed locally (no request to anything)."""

    @property
    def kind(self) -> LinkKind: ...

    @property
    def origin(self) -> str:
        """``scheme://host[:port]`` of the links (the page's CSP must allow fetching them)."""
        ...

    def url(self, key: str, expires: int, disposition: str) -> str:
        """A GET link to the object of storage key ``key``, valid until ``expires`` (Unix
        seconds), served with ``disposition`` as its Content-Disposition where it can be."""
        ...


@dataclass(frozen=True)
class DownloadLinks:
    signer: LinkSigner
    """The API's own signed links (the zip's always, the stems' without ``direct``)."""
    direct: DirectLinks | None = None

    @property
    def kind(self) -> LinkKind:
        return self.direct.kind if self.direct is not None else "api"

    @property
    def origins(self) -> tuple[str, ...]:
        return (self.direct.origin,) if self.direct is not None else ()

    def api_query(self, job: Job, stem: str | None, now: datetime) -> str:
        expires = self.signer.expiry(now, job.expires_at)
        return self.signer.query(job.id, target_of(stem), expires)

    def direct_url(self, job: Job, stem: StemFile, now: datetime) -> str | None:
        if self.direct is None:
            return None
        expires = self.signer.expiry(now, job.expires_at)
        return self.direct.url(stem.key, expires, attachment(stem_file_name(job, stem)))


def build_links(settings: Settings, storage: Storage, secret: bytes) -> DownloadLinks:
    """The links ``settings`` ask for; ConfigurationError at start for settings that cannot
    work (CDN without S3, an unreadable key, a link lifetime S3 refuses)."""
    signer = LinkSigner(secret, settings.signed_url_ttl_s)
    s3 = _s3(storage)
    cdn_asked = settings.cdn_base_url or settings.cdn_key_id or settings.cdn_private_key_file
    if cdn_asked:
        if s3 is None:
            raise ConfigurationError(
                "STEMIFY_CDN_BASE_URL needs S3 storage (STEMIFY_STORAGE_URL=s3://BUCKET/PREFIX): "
                "the CDN serves the bucket's objects"
            )
        from stemify.storage.cdn import cdn_links

        return DownloadLinks(signer, cdn_links(settings, s3.prefix))
    if s3 is None or settings.download_mode == "proxy":
        return DownloadLinks(signer)
    from stemify.storage.s3_presign import S3Presigner, check_lifetime

    check_lifetime(settings.signed_url_ttl_s)
    return DownloadLinks(signer, S3Presigner(s3))


def _s3(storage: Storage) -> S3Storage | None:
    # An S3Storage exists only once its module is imported: local storage imports no boto3.
    if "stemify.storage.s3" not in sys.modules:
        return None
    from stemify.storage.s3 import S3Storage

    return storage if isinstance(storage, S3Storage) else None
