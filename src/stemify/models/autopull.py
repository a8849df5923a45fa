"""The default model fetched at start when it is missing (``STEMIFY_AUTO_PULL``), in the
background, through :func:`~stemify.models.pull.pull_model` (resumable, sha256-checked); and
the state of a model as the page and the API show it: installed, downloading, or missing.

Jobs for the model being fetched wait for it (the runner calls :meth:`AutoPull.wait`); a failed
download is one error, kept here and shown by ``/ready``, ``/models`` and the page.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from stemify.errors import ModelNotFoundError, StemifyError
from stemify.models.catalogue import CatalogueEntry, ModelStatus, local_models, official_catalogue
from stemify.models.loading import check_installed
from stemify.models.pull import pull_model

log = logging.getLogger(__name__)

State = Literal["installed", "downloading", "missing"]


@dataclass(frozen=True)
class ModelState:
    state: State
    percent: float | None = None  # downloading only
    reason: str | None = None  # missing only: why, and what to do

    def to_dict(self) -> dict[str, object]:
        return {"state": self.state, "percent": self.percent, "reason": self.reason}


def is_installed(name: str, model_dir: Path) -> bool:
    try:
        check_installed(name, model_dir)
    except ModelNotFoundError:
        return False
    return True


def installed_models(model_dir: Path) -> list[str]:
    """The bags in ``model_dir`` whose every weight file is present (no checkpoint is read)."""
    return [name for name in local_models(model_dir) if is_installed(name, model_dir)]


def missing(name: str) -> ModelState:
    return ModelState("missing", reason=f"not installed: run `stemify models pull {name}`")


class AutoPull:
    """One model, fetched by one background thread; thread-safe state."""

    def __init__(
        self,
        name: str,
        model_dir: Path,
        base_url: str,
        catalogue: Mapping[str, CatalogueEntry],
    ) -> None:
        self.name = name
        self._model_dir = model_dir
        self._base_url = base_url
        self._entry = catalogue.get(name)
        self._lock = threading.Lock()
        self._done_bytes: dict[str, int] = {}
        self._error: str | None = None
        self._running = False
        self._ended = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Start fetching if the model is missing; False when there is nothing to fetch."""
        if is_installed(self.name, self._model_dir):
            self._ended.set()
            return False
        if self._entry is None:
            self._error = (
                f"model {self.name!r} is not installed and not in the catalogue, so it cannot be "
                f"downloaded: put its files in {self._model_dir}"
            )
            log.error("auto-pull: %s", self._error)
            self._ended.set()
            return False
        self._running = True
        log.info("auto-pull: downloading model %s from %s", self.name, self._base_url)
        self._thread = threading.Thread(target=self._pull, name="auto-pull", daemon=True)
        self._thread.start()
        return True

    def _progress(self, file_name: str, done: int, _total: int | None) -> None:
        with self._lock:
            self._done_bytes[file_name] = done

    def _pull(self) -> None:
        assert self._entry is not None
        try:
            pull_model(self._entry, self._model_dir, self._base_url, progress=self._progress)
        except StemifyError as exc:
            with self._lock:
                self._error = f"download of model {self.name} failed: {exc.message}"
            log.error("auto-pull: %s", self._error)
        except Exception as exc:  # a bug or a full disk must end the wait too, not hang jobs
            with self._lock:
                self._error = f"download of model {self.name} failed: {type(exc).__name__}: {exc}"
            log.exception("auto-pull: unexpected error")
        else:
            log.info("auto-pull: model %s installed in %s", self.name, self._model_dir)
        finally:
            with self._lock:
                self._running = False
            self._ended.set()

    @property
    def error(self) -> str | None:
        """Why the model could not be fetched (None while fetching or once installed)."""
        with self._lock:
            return self._error

    @property
    def downloading(self) -> bool:
        with self._lock:
            return self._running

    def arriving(self) -> ModelStatus | None:
        """The model as job submission sees it while it downloads (jobs for it are accepted);
        None before the fetch started or after it failed."""
        with self._lock:
            if self._thread is None or self._error is not None:
                return None
        return self.status()

    def status(self) -> ModelStatus | None:
        """The model's catalogue line, installed or not (None if it is in no catalogue)."""
        entry = self._entry
        if entry is None:
            return None
        return ModelStatus(
            name=entry.name,
            description=entry.description,
            sources=entry.sources,
            installed=False,
            size_bytes=entry.size_bytes,
            official=entry.name in official_catalogue(),
        )

    def wait(self, timeout: float) -> bool:
        """Block until the fetch ended (installed or failed); False on timeout."""
        return self._ended.wait(timeout)

    def _percent(self) -> float | None:
        total = self._entry.size_bytes if self._entry is not None else None
        if not total:
            return None
        return round(min(100.0, 100.0 * sum(self._done_bytes.values()) / total), 1)

    def state(self) -> ModelState:
        with self._lock:
            if self._running:
                return ModelState("downloading", percent=self._percent())
            if self._error is not None:
                return ModelState("missing", reason=self._error)
        if is_installed(self.name, self._model_dir):
            return ModelState("installed")
        return missing(self.name)


def model_state(name: str, installed: bool, auto: AutoPull | None) -> ModelState:
    """What the page shows for ``name``: the fetch's own state when it is the fetched model."""
    if installed:
        return ModelState("installed")
    if auto is not None and auto.name == name:
        return auto.state()
    return missing(name)
