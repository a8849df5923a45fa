"""A per-process cache of loaded models, bounded by their size in memory.

The caller creates one (``ModelCache(functools.partial(load_model, model_dir=...), budget)``)
and shares it between threads; nothing here is global.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol


class CacheObserver(Protocol):
    """Told about loads and evictions (the process's metrics)."""

    def model_loaded(self, name: str, nbytes: int) -> None: ...

    def model_evicted(self, name: str, nbytes: int) -> None: ...


class _Unobserved:
    def model_loaded(self, name: str, nbytes: int) -> None:
        pass

    def model_evicted(self, name: str, nbytes: int) -> None:
        pass


@dataclass(frozen=True)
class CacheStats:
    loads: int
    evictions: int
    # Memory held by the models currently cached.
    bytes: int


def model_nbytes(model: Any) -> int:
    """Bytes of a torch module's parameters and buffers (0 for anything else); what an object
    with its own ``memory_bytes()`` says it holds (a model with its runtime session)."""
    own = getattr(model, "memory_bytes", None)
    if callable(own):
        return int(own())
    tensors = [*getattr(model, "parameters", list)(), *getattr(model, "buffers", list)()]
    return sum(int(t.numel()) * int(t.element_size()) for t in tensors)


class ModelCache:
    """Thread-safe LRU of models, loaded once each however many threads ask at the same time.

    Least recently used models are dropped while the total size exceeds ``budget_bytes``; the
    model just requested is always kept, even if it alone is over budget."""

    def __init__(
        self,
        loader: Callable[[str], Any],
        budget_bytes: int,
        observer: CacheObserver | None = None,
    ) -> None:
        self._loader = loader
        self._observer: CacheObserver = observer or _Unobserved()
        self._budget = budget_bytes
        self._lock = threading.Lock()
        self._models: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        # Loads in flight: later callers wait on the first caller's future instead of loading.
        self._loading: dict[str, Future[Any]] = {}
        self._loads = 0
        self._evictions = 0

    def get(self, name: str) -> Any:
        with self._lock:
            cached = self._models.get(name)
            if cached is not None:
                self._models.move_to_end(name)
                return cached[0]
            future = self._loading.get(name)
            owner = future is None
            if future is None:
                future = self._loading[name] = Future()
        if not owner:
            return future.result()
        try:
            model = self._loader(name)
            size = model_nbytes(model)
        except BaseException as exc:
            with self._lock:
                del self._loading[name]
            future.set_exception(exc)
            raise
        with self._lock:
            del self._loading[name]
            self._models[name] = (model, size)
            self._loads += 1
            self._observer.model_loaded(name, size)
            self._shrink(keep=name)
        future.set_result(model)
        return model

    def loaded(self) -> list[str]:
        """Cached model names, least recently used first."""
        with self._lock:
            return list(self._models)

    def evict(self, name: str) -> bool:
        """Drop ``name``; False if it was not cached."""
        with self._lock:
            dropped = self._models.pop(name, None)
            if dropped is None:
                return False
            self._evictions += 1
            self._observer.model_evicted(name, dropped[1])
            return True

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._loads, self._evictions, self._total())

    def _total(self) -> int:
        return sum(size for _, size in self._models.values())

    def _shrink(self, keep: str) -> None:
        while self._total() > self._budget:
            victim = next((n for n in self._models if n != keep), None)
            if victim is None:
                return
            _, size = self._models.pop(victim)
            self._evictions += 1
            self._observer.model_evicted(victim, size)
