"""The resident adapter pool: adapter files of one folder, held as ready tensors in RAM, least recently used out.

The folder is the same one the UI's library shows (`library.list_adapters`): an adapter trained or imported
there is served by name without a restart. Adapters load on first use, or ahead of it (`prefetch`, called when
a request is queued), so a batch rarely waits for a file.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..adapters.library import AdapterEntry, list_adapters
from ..errors import AdapterNotFoundError
from .multilora import ModuleKey, ModuleLora

AdapterTensors = dict[ModuleKey, ModuleLora]


@dataclass(frozen=True)
class ResidentAdapter:
    name: str
    path: Path
    version: tuple[int, int]  # (mtime_ns, size) of the file it was read from
    modules: AdapterTensors

    @property
    def nbytes(self) -> int:
        return sum(module.nbytes for module in self.modules.values())


def _version(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


class AdapterPool:
    """Named adapters of `folder`; at most `max_resident` of them (and `max_bytes` of tensors) in RAM at once.
    `read` turns a file into tensors fitted to the served base, raising AdapterFileError if it does not fit."""

    def __init__(self, folder: Path | None, read: Callable[[Path], AdapterTensors], max_resident: int | None = None,
                 max_bytes: int | None = None):
        self.folder = None if folder is None else Path(folder)
        self.pinned: dict[str, Path] = {}  # files added by name (Styler.load), wherever they are
        self.read = read
        self.max_resident, self.max_bytes = max_resident, max_bytes
        self.resident: OrderedDict[str, ResidentAdapter] = OrderedDict()
        self.loads = 0  # files read into RAM since start
        self._catalog: dict[str, AdapterEntry] = {}
        self._lock = threading.RLock()
        self._reading: dict[str, threading.Event] = {}  # names being read now
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="adapter-prefetch")

    def catalog(self, refresh: bool = True) -> dict[str, AdapterEntry]:
        """Every adapter in the folder by name (the file's stem; the first of two with the same stem wins)."""
        with self._lock:
            if refresh or not self._catalog:
                entries: dict[str, AdapterEntry] = {}
                for entry in list_adapters(self.folder) if self.folder is not None else ():
                    entries.setdefault(entry.name, entry)
                self._catalog = entries
            return dict(self._catalog)

    def entry(self, name: str) -> AdapterEntry:
        """The named adapter's library entry; the folder is read again before a name is called unknown."""
        entry = self.catalog(refresh=False).get(name) or self.catalog().get(name)
        if entry is None:
            raise AdapterNotFoundError(f"no adapter named {name!r} in {self.folder}; GET /v1/adapters lists them")
        return entry

    def pin(self, name: str, path: Path) -> None:
        """Serve the file at `path` under `name`, whether or not it is in the folder."""
        with self._lock:
            self.pinned[name] = Path(path)

    def path_of(self, name: str) -> Path:
        return self.pinned.get(name) or self.entry(name).path

    def get(self, name: str, keep: Iterable[str] = ()) -> ResidentAdapter:
        """The adapter's tensors, read now if they are not resident (or the file changed). Adapters in `keep`
        (the rest of the batch) are never evicted to make room. A file is read outside the lock, once: a
        second caller for the same name (the prefetcher and a batch) waits for the first."""
        while True:
            with self._lock:
                path = self.path_of(name)
                held = self.resident.get(name)
                if held is not None and held.path == path and held.version == _version(path):
                    self.resident.move_to_end(name)
                    self._evict(keep={name, *keep})  # a batch larger than the bound left extras behind
                    return held
                reading = self._reading.get(name)
                if reading is None:
                    reading = self._reading[name] = threading.Event()
                    break
            reading.wait()  # another thread is reading it: take its result (or read it again if that failed)
        try:
            adapter = ResidentAdapter(name, path, _version(path), self.read(path))
            with self._lock:
                self.loads += 1
                self.resident[name] = adapter
                self._evict(keep={name, *keep})
            return adapter
        finally:
            with self._lock:
                self._reading.pop(name).set()

    def _evict(self, keep: set[str]) -> None:
        def over() -> bool:
            return ((self.max_resident is not None and len(self.resident) > self.max_resident)
                    or (self.max_bytes is not None and self.resident_bytes > self.max_bytes))

        for name in list(self.resident):
            if not over():
                break
            if name not in keep:
                del self.resident[name]

    def prefetch(self, names: Iterable[str]) -> None:
        """Read the named adapters in the background, so the batch that needs them finds them resident."""
        for name in names:
            if name not in self.resident:
                self._loader.submit(self._quiet_get, name)

    def _quiet_get(self, name: str) -> None:
        try:
            self.get(name)
        except Exception:  # noqa: BLE001 - the request that needs it reads it again and reports the error
            pass

    def forget(self, name: str) -> None:
        with self._lock:
            self.resident.pop(name, None)
            self._catalog.pop(name, None)
            self.pinned.pop(name, None)

    @property
    def resident_bytes(self) -> int:
        return sum(adapter.nbytes for adapter in self.resident.values())

    def close(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)
