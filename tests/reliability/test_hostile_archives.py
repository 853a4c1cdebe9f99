"""Hostile model archives served through ``mme serve``: each is refused with a message naming the problem, nothing is
written outside the cache (the disk is scanned for the files each archive tries to plant), and nothing is left
inside it, while the good models keep serving."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from mme.archive import MAX_MEMBERS, MIN_EXTRACTED_ALLOWANCE
from mme.serve_process import ServeProcess

#: Planted file names are unique to this run, so a scan finds only what these archives wrote.
PLANTED = f"mme-planted-{uuid.uuid4().hex[:12]}"


def _tar(path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, *, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


class _Zeros(io.RawIOBase):
    """``size`` zero bytes, streamed, so a bomb is built without holding it in memory."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


def _bomb(path: Path) -> Path:
    size = MIN_EXTRACTED_ALLOWANCE + 64 * 1024 * 1024
    with gzip.open(path, "wb", compresslevel=1) as packed, tarfile.open(fileobj=packed, mode="w") as tar:
        info = tarfile.TarInfo("0/variables/variables.data-00000-of-00001")
        info.size = size
        tar.addfile(info, io.BufferedReader(_Zeros(size), buffer_size=1 << 20))
    return path


def _hostile_store(root: Path, good: Path) -> None:
    """Write one archive per key of `HOSTILE` into ``root``, and a good model."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy2(good, root / "sentiment.tar.gz")
    evil = b"planted"
    _tar(root / "traversal.tar.gz", (_member(f"../../../{PLANTED}-traversal"), evil))
    _tar(root / "absolute.tar.gz", (_member(f"/tmp/{PLANTED}-absolute"), evil))
    _tar(root / "symlink-out.tar.gz", (_member("0", tarfile.SYMTYPE, link="/etc"), None))
    _tar(root / "symlink-up.tar.gz", (_member("tokenizer", tarfile.SYMTYPE, link="../../.."), None))
    _tar(root / "hardlink-out.tar.gz", (_member("passwd", tarfile.LNKTYPE, link="/etc/passwd"), None))
    _tar(root / "device.tar.gz", (_member("0/dev", tarfile.CHRTYPE), None))
    _tar(root / "fifo.tar.gz", (_member("0/fifo", tarfile.FIFOTYPE), None))
    _tar(root / "empty.tar.gz")
    _tar(root / "too-many.tar.gz", *[(_member(f"f{i}"), b"") for i in range(MAX_MEMBERS + 1)])
    whole = good.read_bytes()
    (root / "truncated.tar.gz").write_bytes(whole[: len(whole) // 2])
    (root / "not-gzip.tar.gz").write_bytes(b"this is not an archive " * 100)
    _bomb(root / "bomb.tar.gz")


#: Each attack's archive -> a fragment its refusal must contain.
HOSTILE = {
    "traversal.tar.gz": "climbs out of the archive",
    "absolute.tar.gz": "absolute path",
    "symlink-out.tar.gz": "links outside the archive",
    "symlink-up.tar.gz": "links outside the archive",
    "hardlink-out.tar.gz": "links outside the archive",
    "device.tar.gz": "device, FIFO or other special file",
    "fifo.tar.gz": "device, FIFO or other special file",
    "empty.tar.gz": "is empty",
    "too-many.tar.gz": f"more than {MAX_MEMBERS} entries",
    "truncated.tar.gz": "not a readable .tar.gz",
    "not-gzip.tar.gz": "not a readable .tar.gz",
    "bomb.tar.gz": "unpacks to more than",
}


@pytest.fixture(scope="module")
def hostile_store(demo_archives: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("hostile-store")
    _hostile_store(root, demo_archives["sentiment"])
    yield root
    shutil.rmtree(root, ignore_errors=True)  # the bomb alone is hundreds of kB


@pytest.fixture(scope="module")
def endpoint(serve: Callable[..., ServeProcess], hostile_store: Path) -> ServeProcess:
    return serve(hostile_store)


def _invoke(endpoint: ServeProcess, model: str) -> requests.Response:
    return requests.post(
        f"{endpoint.url}/endpoints/local/invocations",
        data=b"I loved this film",
        headers={"X-Amzn-SageMaker-Target-Model": model, "Content-Type": "text/plain"},
        timeout=120,
    )


def _planted_anywhere(roots: list[Path]) -> list[str]:
    found = []
    for root in roots:
        for folder, dirs, files in os.walk(root, followlinks=False):
            found += [os.path.join(folder, name) for name in dirs + files if name.startswith(PLANTED)]
    return found


@pytest.mark.parametrize("serve", ["host"], indirect=True)
@pytest.mark.parametrize("model", HOSTILE)
def test_a_hostile_archive_is_refused_naming_the_problem_and_leaves_nothing_anywhere(
    endpoint: ServeProcess, model: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cache_before = sorted(path.name for path in (endpoint.cache_dir / "models").iterdir())
    answer = _invoke(endpoint, model)
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["__type"] == "ValidationError"
    assert HOSTILE[model] in body["message"], body["message"]
    assert model in body["message"]
    # Nothing planted outside the cache (the whole temp tree, where the cache and store live, and /tmp itself) ...
    assert _planted_anywhere([Path(tmp_path_factory.getbasetemp()), Path("/tmp")]) == []
    # ... and nothing left inside it: no new model folder, no partial extraction, no download.
    assert sorted(path.name for path in (endpoint.cache_dir / "models").iterdir()) == cache_before
    assert list((endpoint.cache_dir / "downloads").iterdir()) == []
    # The good model is unaffected.
    good = _invoke(endpoint, "sentiment.tar.gz")
    assert good.status_code == 200
    assert json.loads(good.content)["label"] == "positive"
