"""Model archives (``<name>.tar.gz``, one per TargetModel): writing them reproducibly and extracting them safely.

The layout is the one the handler serves (see :mod:`handler.model`): the SavedModel in ``0/``, the tokenizer
files at the root, and ``mme.json``. Building and validating one is :mod:`mme.packaging`.
"""

from __future__ import annotations

import logging
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from mme import MmeError

logger = logging.getLogger(__name__)

ARCHIVE_SUFFIX = ".tar.gz"
#: Limits on what an archive may unpack to, so a small archive cannot fill the disk (a decompression bomb): at most
#: `MAX_EXPANSION` times its own size, but always at least `MIN_EXTRACTED_ALLOWANCE` bytes (SavedModel weights hardly
#: compress; a tokenizer's vocabulary does), and at most `MAX_MEMBERS` files and folders.
MAX_EXPANSION = 50
MIN_EXTRACTED_ALLOWANCE = 512 * 1024 * 1024
MAX_MEMBERS = 10_000


class ArchiveError(MmeError, ValueError):
    """An archive or its inputs cannot be used; the message says what to fix."""


def _tar_member(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Archives must not depend on who built them.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_archive(model_dir: Path, output: Path) -> Path:
    """Pack the contents of ``model_dir`` (not the folder itself) into ``output`` (``.tar.gz``)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    with tarfile.open(partial, "w:gz") as archive:
        for child in sorted(model_dir.iterdir()):
            archive.add(child, arcname=child.name, filter=_tar_member)
    partial.replace(output)
    return output


def _refusal(member: tarfile.TarInfo) -> str | None:
    """Why ``member`` may not be extracted, or ``None`` when it is a plain file or folder inside the archive."""
    name = PurePosixPath(member.name)
    if name.is_absolute():
        return f"{member.name!r} is an absolute path"
    if ".." in name.parts:
        return f"{member.name!r} climbs out of the archive with '..'"
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        # A symlink's target is relative to its folder; a hard link's to the archive root.
        resolved = (name.parent / target) if member.issym() else target
        depth = 0
        for part in resolved.parts:
            depth += -1 if part == ".." else (0 if part == "." else 1)
            if depth < 0:
                break
        if target.is_absolute() or depth < 0:
            return f"{member.name!r} links outside the archive ({member.linkname!r})"
    elif not (member.isfile() or member.isdir()):
        return f"{member.name!r} is a device, FIFO or other special file"
    return None


def extraction_allowance(archive_bytes: int) -> int:
    """The most bytes an archive of `archive_bytes` may unpack to (see `MAX_EXPANSION`)."""
    return max(MAX_EXPANSION * archive_bytes, MIN_EXTRACTED_ALLOWANCE)


class CheckedArchive:
    """An archive whose every member passed the checks, still open: `content_bytes` is what it unpacks to, known
    before anything is written, so a caller can make room first. Use it as a context manager."""

    def __init__(self, path: Path, tar: tarfile.TarFile, members: list[tarfile.TarInfo], content_bytes: int) -> None:
        self.path = path
        self.content_bytes = content_bytes
        self._tar = tar
        self._members = members

    def extract_to(self, destination: Path) -> Path:
        """Write the checked members into ``destination`` (created).

        Raises:
            ArchiveError: the data turns out unreadable (a truncated or corrupt gzip stream) or breaks a rule.
            OSError: ``destination`` cannot be written (disk full, read-only, permissions): the cache's problem, not
                the archive's, so it is not worded as a refusal.
        """
        try:
            destination.mkdir(parents=True, exist_ok=True)
            # The "data" filter re-checks the rules as it writes, and drops modes a model never needs.
            self._tar.extractall(destination, members=self._members, filter="data")
        except tarfile.FilterError as error:
            raise ArchiveError(f"{self.path.name} is refused: {error}") from None
        except OSError as error:
            if error.errno is not None:  # gzip's format errors carry no errno; the disk's do
                raise
            raise ArchiveError(f"{self.path.name} is not a readable .tar.gz archive: {error}") from None
        except (tarfile.TarError, EOFError, zlib.error) as error:
            raise ArchiveError(f"{self.path.name} is not a readable .tar.gz archive: {error}") from None
        return destination

    def close(self) -> None:
        self._tar.close()

    def __enter__(self) -> CheckedArchive:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def check_archive(archive: Path) -> CheckedArchive:
    """Open ``archive`` and check every member from the tar headers, writing nothing: it must hold no absolute path,
    ``..``, link leaving the folder or special file, and unpack to at most `extraction_allowance` bytes in at most
    `MAX_MEMBERS` entries.

    Raises:
        ArchiveError: the file is not a gzip tar, or breaks one of the rules above.
    """
    allowance = extraction_allowance(archive.stat().st_size) if archive.is_file() else 0
    try:
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 - handed over open; CheckedArchive closes it
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise ArchiveError(f"{archive.name} is not a readable .tar.gz archive: {error}") from None
    try:
        members = []
        total = 0
        # Read header by header, so a bomb of entries is stopped at the limit rather than listed whole.
        for member in tar:
            reason = _refusal(member)
            if reason is not None:
                raise ArchiveError(f"{archive.name} is refused: {reason}")
            members.append(member)
            total += member.size if member.isfile() else 0
            if len(members) > MAX_MEMBERS:
                raise ArchiveError(f"{archive.name} is refused: it holds more than {MAX_MEMBERS} entries")
            if total > allowance:
                raise ArchiveError(
                    f"{archive.name} is refused: it unpacks to more than {allowance} bytes, {MAX_EXPANSION} "
                    f"times its own size (a model's weights hardly compress)"
                )
        if not members:
            raise ArchiveError(f"{archive.name} is refused: it is empty")
    except ArchiveError:
        tar.close()
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        tar.close()
        raise ArchiveError(f"{archive.name} is not a readable .tar.gz archive: {error}") from None
    return CheckedArchive(archive, tar, members, total)


def extract_archive(archive: Path, destination: Path) -> Path:
    """Extract ``archive`` into ``destination`` (created), refusing anything that would land outside it, and
    anything that would unpack to more than `extraction_allowance` bytes or `MAX_MEMBERS` entries.

    Every member is checked, from the tar headers, before anything is written (`check_archive`).

    Raises:
        ArchiveError: the file is not a gzip tar, or holds an absolute path, ``..``, a link leaving the folder,
            a device file, too many entries or too many bytes; nothing outside ``destination`` is written.
        OSError: ``destination`` cannot be written (disk full, read-only, permissions).
    """
    with check_archive(archive) as checked:
        return checked.extract_to(destination)
