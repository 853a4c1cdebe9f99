"""The model cache on disk: installing a model's copy, keeping the cache within a size limit of its own, and clear
errors when the disk is full or the folder cannot be written.

On AWS a multi-model endpoint keeps its models on the instance's storage and deletes the least recently used ones
when a new model needs the space. ``mme serve`` does the same in its ``cache_dir``:

- ``models/<name>``: one extracted copy per model version. A copy's last use is its folder's mtime (written when it
  is installed, when its model is unloaded, and for every loaded model whenever room is made), so the order
  survives a restart.
- ``downloads/``: archives while they download and extract; nothing stays there.

Counted against the limit: every copy (the sizes of its files, as the archive's tar headers give them, not disk
blocks) and every install in flight (its archive while it downloads; archive and content while it is extracted).
Before an install writes anything, room is made: copies of models that are not loaded go first, least recently used
first; then loaded models are unloaded, least recently used first, and their copies deleted. A copy whose model is
loaded or being loaded is never deleted: MMS re-reads it whenever it restarts a worker. Everything is written under
a ``.partial`` name and renamed into place when complete, so a half-written model is never loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from mme import MmeError
from mme.archive import ArchiveError, check_archive
from mme.errors import ServiceUnavailableError, ValidationError

logger = logging.getLogger(__name__)

#: What `mme serve` calls the limit, for messages that say how to change it.
CACHE_SIZE_OPTION = "--max-cache-size"
#: Default of the limit (`CachePolicy.max_cache_bytes`). Twice the largest archive the cache accepts
#: (`CachePolicy.max_archive_bytes`, 10 GiB): the most an accepted archive of hardly compressible weights needs while
#: it is extracted (the archive and its content side by side), so no archive the cache accepts is refused for size.
#: On AWS the instance's storage volume is the limit; a laptop's cache lives in the home folder across runs, where an
#: unbounded cache would grow by every model ever tried.
DEFAULT_MAX_CACHE_BYTES = 20 * 1024**3
PARTIAL = ".partial"
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class CacheStorageError(MmeError):
    """The cache folder cannot be used (it cannot be created or written); the message names it and the fix."""


def probe_writable(folder: Path) -> None:
    """Create ``folder`` if needed, and write and delete a file in it; raises ``OSError`` when either fails."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write-check{PARTIAL}-{uuid.uuid4().hex[:8]}"
    probe.write_bytes(b"")
    probe.unlink()


def check_writable(cache_dir: Path) -> None:
    """Create ``cache_dir``'s ``models`` and ``downloads`` folders and write a file in each.

    Raises:
        CacheStorageError: a folder cannot be created or written (read-only mount, permissions, a file in the way).
    """
    for folder in (cache_dir / "models", cache_dir / "downloads"):
        try:
            probe_writable(folder)
        except OSError as error:
            raise CacheStorageError(
                f"the model cache folder {cache_dir} cannot be written ({_describe(error)}): give --cache-dir a "
                "folder you can write, or make this one writable (its permissions, a read-only mount, or a file "
                "standing where a folder should be)"
            ) from None


def _describe(error: OSError) -> str:
    return f"{error.strerror or error}" + (f": {error.filename}" if error.filename else "")


def _os_errors(error: BaseException) -> Iterator[OSError]:
    """``error`` and the errors it was raised from or during, as far as they are `OSError` s."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError):
            yield current
        current = current.__cause__ or current.__context__


@dataclass(frozen=True)
class CachedCopy:
    """An extracted model in ``models/``: its opaque name, size in bytes and last use (seconds since the epoch)."""

    name: str
    path: Path
    size: int
    last_used: float


def folder_bytes(path: Path) -> int:
    """The sizes of the files under ``path`` added up (what the tar headers of its archive said)."""
    total = 0
    for root, _folders, files in os.walk(path):
        for file in files:
            with contextlib.suppress(OSError):  # a file deleted meanwhile takes no room
                total += os.lstat(os.path.join(root, file)).st_size
    return total


def choose_unloaded(copies: Iterable[CachedCopy], *, in_use: Iterable[str], to_free: int) -> list[CachedCopy]:
    """The copies to delete to free ``to_free`` bytes: those not in ``in_use``, least recently used first, and only
    as many as needed; all of them when together they free less."""
    keep = set(in_use)
    chosen: list[CachedCopy] = []
    freed = 0
    for copy in sorted((c for c in copies if c.name not in keep), key=lambda c: (c.last_used, c.name)):
        if freed >= to_free:
            break
        chosen.append(copy)
        freed += copy.size
    return chosen


#: Which models must keep their copies: opaque name -> last use (seconds since the epoch).
InUse = Callable[[], Mapping[str, float]]
#: Unload the least recently used loaded model; its folder, or None when no model is loaded.
UnloadLeastRecentlyUsed = Callable[[], Awaitable[Path | None]]


class CacheStorage:
    """The disk side of the model cache under ``cache_dir``, limited to ``max_bytes``."""

    def __init__(self, cache_dir: Path, *, max_bytes: int) -> None:
        self.cache_dir = cache_dir
        self.max_bytes = max_bytes
        # Installs in flight: name -> bytes reserved (archive, then archive and content).
        self._in_flight: dict[str, int] = {}
        # Copies installed for a load that may still be going on: name -> TargetModel.
        self._installed: dict[str, str] = {}
        self._sizes: dict[str, int] = {}  # a copy never changes once renamed into place
        # Room is made by one install at a time, so two cannot both count on the same free bytes.
        self._room = asyncio.Lock()

    @property
    def models_dir(self) -> Path:
        return self.cache_dir / "models"

    @property
    def downloads_dir(self) -> Path:
        return self.cache_dir / "downloads"

    def prepare(self) -> None:
        """Create the folders, check they can be written, and remove what a killed run left half-written.

        Raises:
            CacheStorageError: the cache folder cannot be written.
        """
        check_writable(self.cache_dir)
        self.remove_partial_files()

    def remove_partial_files(self, name: str = "") -> None:
        """Delete half-written downloads and extractions (of the model ``name``, or all)."""
        for folder in (self.models_dir, self.downloads_dir):
            for leftover in folder.glob(f"{name}*{PARTIAL}*"):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        leftover.unlink()

    def copies(self) -> list[CachedCopy]:
        """The complete copies in ``models/`` (anything ``.partial`` is not one)."""
        found = []
        for path in self.models_dir.iterdir():
            try:
                status = path.stat()
            except OSError:
                continue
            if PARTIAL in path.name or not path.is_dir():
                continue
            if path.name not in self._sizes:
                self._sizes[path.name] = folder_bytes(path)
            found.append(CachedCopy(path.name, path, self._sizes[path.name], status.st_mtime))
        return found

    def used_bytes(self) -> int:
        """Bytes the cache holds: its copies and the installs in flight."""
        copies = self.copies()
        return sum(c.size for c in copies if c.name not in self._in_flight) + sum(self._in_flight.values())

    def record_use(self, path: Path, when: float | None = None) -> None:
        """Remember that the copy at ``path`` was used at ``when`` (seconds since the epoch; default now)."""
        # A read-only cache still serves what it holds: a lost timestamp only blurs the eviction order.
        with contextlib.suppress(OSError):
            os.utime(path, None if when is None else (when, when))

    def free_disk_bytes(self) -> int:
        """Bytes free for us on the cache's filesystem."""
        status = os.statvfs(self.cache_dir)
        return status.f_bavail * status.f_frsize

    def hold(self, name: str, key: str) -> None:
        """Keep copy ``name`` for the load of ``key`` going on (as if just installed for it): a copy found on disk is
        in use from the moment a load decides to use it, not only once it is loaded."""
        self._installed[name] = key

    def installed_for(self, loading: Iterable[str]) -> set[str]:
        """Names of copies installed for loads still going on (``loading``: their TargetModels)."""
        keys = set(loading)
        self._installed = {name: key for name, key in self._installed.items() if key in keys}
        return set(self._installed)

    def write_error(self, error: BaseException) -> OSError | None:
        """The error behind ``error`` that says the cache cannot be written (disk full, quota, read-only, or
        permission denied on a path in the cache), or None when ``error`` is about something else."""
        for cause in _os_errors(error):
            if cause.errno in _DISK_FULL or cause.errno == errno.EROFS:
                return cause
            in_cache = cause.filename is not None and str(cause.filename).startswith(str(self.cache_dir))
            if cause.errno in {errno.EACCES, errno.EPERM} and in_cache:
                return cause
        return None

    # --- installing a model -------------------------------------------------------------------------------------

    async def install(
        self,
        *,
        key: str,
        name: str,
        archive_bytes: int,
        destination: Path,
        download: Callable[[Path], None],
        in_use: InUse,
        unload_least_recently_used: UnloadLeastRecentlyUsed,
    ) -> None:
        """Download and extract the model ``key`` into ``destination`` (``models/<name>``) within the limit.

        ``download(path)`` (blocking; run in a thread) writes the archive to ``path``; it raises `ValidationError`
        for a store problem and lets a cache write error (see `write_error`) through as it is. Room is made before
        the download (the archive's size) and again before extraction (the content's size, from the tar headers).
        When the disk fills up anyway, what was written is removed, the copies of unloaded models are deleted, and
        the install is tried once more.

        Raises:
            ValidationError: the archive is refused, or the model needs more than the whole limit.
            ServiceUnavailableError: the disk is full even without the unloaded copies, the cache cannot be written,
                or the limit is taken by models in use.
        """
        try:
            for attempt in (1, 2):
                self._in_flight[name] = 0
                try:
                    await self._install_once(
                        key, name, archive_bytes, destination, download, in_use, unload_least_recently_used
                    )
                except OSError as error:
                    await asyncio.to_thread(self.remove_partial_files, name)
                    needed = max(self._in_flight[name], archive_bytes)
                    self._in_flight[name] = 0
                    if error.errno not in _DISK_FULL:
                        raise ServiceUnavailableError(self._unwritable_message(key, error)) from None
                    freed = await self._free_unloaded(in_use)
                    if attempt == 2 or freed == 0:
                        raise ServiceUnavailableError(self._disk_full_message(key, needed)) from None
                    logger.warning("disk full installing %s: deleted %d bytes of unloaded models; again", key, freed)
                else:
                    self._installed[name] = key
                    self.record_use(destination)
                    return
        finally:
            self._in_flight.pop(name, None)

    async def _install_once(
        self,
        key: str,
        name: str,
        archive_bytes: int,
        destination: Path,
        download: Callable[[Path], None],
        in_use: InUse,
        unload: UnloadLeastRecentlyUsed,
    ) -> None:
        archive = self.downloads_dir / f"{name}.tar.gz{PARTIAL}"
        staging = self.models_dir / f"{name}{PARTIAL}-{uuid.uuid4().hex[:8]}"
        try:
            await self._make_room(key, name, archive_bytes, in_use, unload)
            await asyncio.to_thread(download, archive)
            checked = await asyncio.to_thread(check_archive, archive)
            with checked:
                await self._make_room(key, name, checked.content_bytes, in_use, unload)
                await asyncio.to_thread(checked.extract_to, staging)
            try:
                await asyncio.to_thread(staging.rename, destination)
            except OSError:
                if not destination.is_dir():  # another process may have won the rename: its copy is as good
                    raise
        except ArchiveError as error:
            raise ValidationError(f"model data for TargetModel {key!r} is refused: {error}") from None
        finally:
            await asyncio.to_thread(self._remove_quietly, archive, staging)

    @staticmethod
    def _remove_quietly(archive: Path, staging: Path) -> None:
        with contextlib.suppress(OSError):
            archive.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)

    # --- making room --------------------------------------------------------------------------------------------

    async def _make_room(
        self, key: str, name: str, nbytes: int, in_use: InUse, unload: UnloadLeastRecentlyUsed
    ) -> None:
        """Reserve ``nbytes`` more for the install of ``name``, deleting copies until they fit within the limit and
        (unloaded copies only) on the disk."""
        needed = self._in_flight.get(name, 0) + nbytes
        if needed > self.max_bytes:
            raise ValidationError(
                f"model {key} needs {needed} bytes in the model cache while it is installed (its archive and what "
                f"it unpacks to), more than the cache's limit of {self.max_bytes} bytes: start mme serve with a "
                f"larger {CACHE_SIZE_OPTION}"
            )
        async with self._room:
            while True:
                self._record_uses(in_use())
                copies = await asyncio.to_thread(self.copies)
                used = sum(c.size for c in copies if c.name not in self._in_flight) + sum(self._in_flight.values())
                over_limit = used + nbytes - self.max_bytes
                short_on_disk = nbytes - await asyncio.to_thread(self.free_disk_bytes)
                if over_limit <= 0 and short_on_disk <= 0:
                    break
                keep = {*in_use(), *self._in_flight}
                victims = choose_unloaded(copies, in_use=keep, to_free=max(over_limit, short_on_disk))
                if victims:
                    await self._delete(victims, in_use, why=f"to make room for {key}")
                    continue
                if over_limit <= 0:
                    # Short on disk with nothing unloaded to delete: try anyway, and a full disk answers clearly.
                    break
                unloaded = await unload()
                if unloaded is None:
                    raise ServiceUnavailableError(
                        f"the model cache {self.cache_dir} is at its limit of {self.max_bytes} bytes with models "
                        f"being installed ({used} bytes in use); try again, or start mme serve with a larger "
                        f"{CACHE_SIZE_OPTION}"
                    )
                for copy in copies:
                    if copy.path == unloaded:
                        await self._delete([copy], in_use, why=f"unloaded to make room for {key}")
            self._in_flight[name] = self._in_flight.get(name, 0) + nbytes

    def _record_uses(self, uses: Mapping[str, float]) -> None:
        for name, when in uses.items():
            self.record_use(self.models_dir / name, when)

    async def _free_unloaded(self, in_use: InUse) -> int:
        """Delete every copy whose model is not loaded or being installed; the bytes freed."""
        async with self._room:
            copies = await asyncio.to_thread(self.copies)
            victims = choose_unloaded(copies, in_use={*in_use(), *self._in_flight}, to_free=sum(c.size for c in copies))
            return await self._delete(victims, in_use, why="the disk is full")

    async def _delete(self, copies: list[CachedCopy], in_use: InUse, *, why: str) -> int:
        """Delete ``copies`` except those now in use; the bytes freed.

        Raises:
            ServiceUnavailableError: a copy cannot be removed (the cache became unwritable).
        """
        freed = 0
        for copy in copies:
            if copy.name in in_use() or copy.name in self._in_flight:
                continue  # loaded meanwhile: MMS may re-read it
            doomed = copy.path.with_name(f"{copy.name}{PARTIAL}-deleting-{uuid.uuid4().hex[:8]}")
            try:
                # Renamed first, on the event loop: one step that no load can see half done, and never half a model
                # left under its own name if the deletion stops midway.
                copy.path.rename(doomed)
            except FileNotFoundError:
                continue
            except OSError as error:
                raise ServiceUnavailableError(self._unwritable_message(f"(deleting {copy.name})", error)) from None
            self._sizes.pop(copy.name, None)
            await asyncio.to_thread(shutil.rmtree, doomed, True)
            freed += copy.size
            logger.info("deleted the cached copy %s (%d bytes, %s)", copy.name, copy.size, why)
        return freed

    # --- messages -----------------------------------------------------------------------------------------------

    def _disk_full_message(self, key: str, needed: int) -> str:
        try:
            free = f"{self.free_disk_bytes()} bytes free"
        except OSError:
            free = "free space unknown"
        return (
            f"the model cache {self.cache_dir} ran out of disk space installing {key} ({free} on its disk, at least "
            f"{needed} needed for the archive and what it unpacks to; nothing half-written was kept): free space on "
            f"that disk, or start mme serve with --cache-dir on a disk with room and a {CACHE_SIZE_OPTION} that fits it"
        )

    def _unwritable_message(self, key: str, error: OSError) -> str:
        return (
            f"the model cache {self.cache_dir} cannot be written installing {key} ({_describe(error)}): make it "
            "writable again (remount it read-write, fix its permissions), or restart mme serve with a --cache-dir "
            "that is"
        )
