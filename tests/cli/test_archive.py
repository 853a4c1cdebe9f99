"""Safe extraction: hostile archives are refused and nothing is written outside the destination."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from mme.archive import ArchiveError, extract_archive, write_archive


def _archive(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            data = b"x" if member.isfile() else None
            if data is not None:
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(
    "member",
    [
        _member("/etc/evil"),
        _member("../evil"),
        _member("0/../../evil"),
        _member("link", tarfile.SYMTYPE, "/etc/passwd"),
        _member("link", tarfile.SYMTYPE, "../../outside"),
        _member("hard", tarfile.LNKTYPE, "../../outside"),
        _member("device", tarfile.CHRTYPE),
    ],
    ids=["absolute", "dotdot", "nested-dotdot", "symlink-absolute", "symlink-out", "hardlink-out", "device"],
)
def test_hostile_member_is_refused_and_nothing_lands_outside(tmp_path: Path, member: tarfile.TarInfo) -> None:
    archive = _archive(tmp_path / "bad.tar.gz", [_member("0/ok.txt"), member])
    destination = tmp_path / "cache" / "model"
    with pytest.raises(ArchiveError, match="is refused"):
        extract_archive(archive, destination)
    outside = {path for path in tmp_path.rglob("*") if not path.is_relative_to(tmp_path / "cache")}
    assert outside == {archive}


def test_not_a_tar_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"definitely not gzip")
    with pytest.raises(ArchiveError, match=r"not a readable \.tar\.gz"):
        extract_archive(junk, tmp_path / "out")


def test_round_trip_keeps_the_layout(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "0" / "variables").mkdir(parents=True)
    (source / "0" / "saved_model.pb").write_bytes(b"pb")
    (source / "vocab.txt").write_text("[PAD]\n")
    archive = write_archive(source, tmp_path / "m.tar.gz")
    out = extract_archive(archive, tmp_path / "out")
    assert (out / "0" / "saved_model.pb").read_bytes() == b"pb"
    assert (out / "vocab.txt").read_text() == "[PAD]\n"
    assert (out / "0" / "variables").is_dir()


def _zeros_archive(path: Path, files: dict[str, int]) -> Path:
    """A .tar.gz of files full of zeros (`name -> bytes`): tiny compressed, large unpacked."""
    with tarfile.open(path, "w:gz") as tar:
        for name, size in files.items():
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))
    return path


def test_a_decompression_bomb_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mme.archive.MIN_EXTRACTED_ALLOWANCE", 1024 * 1024)
    bomb = _zeros_archive(tmp_path / "bomb.tar.gz", {"0/saved_model.pb": 4 * 1024 * 1024, "big": 8 * 1024 * 1024})
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ArchiveError, match="unpacks to more than 1048576 bytes"):
        extract_archive(bomb, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_archive_of_too_many_entries_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mme.archive.MAX_MEMBERS", 100)
    many = _zeros_archive(tmp_path / "many.tar.gz", {f"f{i}": 0 for i in range(150)})
    with pytest.raises(ArchiveError, match="more than 100 entries"):
        extract_archive(many, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_empty_archive_is_refused(tmp_path: Path) -> None:
    empty = _zeros_archive(tmp_path / "empty.tar.gz", {})
    with pytest.raises(ArchiveError, match="is empty"):
        extract_archive(empty, tmp_path / "out")


def test_an_ordinary_archive_is_well_within_the_limits(tmp_path: Path) -> None:
    archive = _zeros_archive(tmp_path / "ok.tar.gz", {"0/saved_model.pb": 2 * 1024 * 1024, "vocab.txt": 1000})
    out = extract_archive(archive, tmp_path / "out")
    assert (out / "0" / "saved_model.pb").stat().st_size == 2 * 1024 * 1024
