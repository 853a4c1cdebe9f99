"""The model cache on disk: a size limit of its own (least recently used copies deleted first, a loaded model's copy
never), a full disk and an unwritable cache folder, each a clear error, with nothing half-written left or served.

The server tests put the cache on a real small filesystem (a tmpfs mounted for the test, so they need root) and
choose its sizes from the demo archives' real sizes. They run on the host only: the image variant serves the same
cache code, and a host tmpfs mounted under the test's folder is not what its container sees.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from botocore.exceptions import ClientError

from mme.cache_storage import CachedCopy, CacheStorage, choose_unloaded
from mme.container import ContainerError
from mme.errors import ServiceUnavailableError, ValidationError
from mme.serve_process import ServeProcess

host_only = pytest.mark.parametrize("serve", ["host"], indirect=True)

TEXTS = {"sentiment": ("I loved it, wonderful", "positive"), "topic": ("the striker scored twice", "sports")}


def _answer(endpoint: ServeProcess, model: str) -> str:
    text, _ = TEXTS["topic" if model.startswith("topic") else "sentiment"]
    answer = endpoint.client().invoke_endpoint(
        EndpointName="local", TargetModel=model, ContentType="text/plain", Body=text
    )
    return json.loads(answer["Body"].read())["label"]


def _expected(model: str) -> str:
    return TEXTS["topic" if model.startswith("topic") else "sentiment"][1]


def _error(endpoint: ServeProcess, model: str) -> tuple[int, dict[str, str]]:
    """Status and JSON body of a request that must fail (a plain HTTP client, so nothing is retried)."""
    text, _ = TEXTS["sentiment"]
    response = requests.post(
        f"{endpoint.url}/endpoints/local/invocations",
        data=text,
        headers={"X-Amzn-SageMaker-Target-Model": model, "Content-Type": "text/plain"},
        timeout=120,
    )
    return response.status_code, response.json()


def _sizes(archive: Path) -> tuple[int, int]:
    """An archive's own size and what it unpacks to (from its tar headers)."""
    with tarfile.open(archive) as tar:
        content = sum(member.size for member in tar if member.isfile())
    return archive.stat().st_size, content


def _bytes_under(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _folders(cache: Path) -> set[str]:
    return {path.name for path in (cache / "models").iterdir()}


def _names(endpoint: ServeProcess) -> dict[str, str]:
    """TargetModel -> opaque model folder name, as the server's log says it loaded them."""
    return dict(re.findall(r"loaded (\S+) as (m[0-9a-f]+) in", endpoint.log.read_text()))


def _loaded(endpoint: ServeProcess) -> set[str]:
    listing = requests.get(f"{endpoint.url}/models", timeout=30).json()["models"]
    return {model["target_model"] for model in listing if model["loaded"]}


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Mount a tmpfs of the given size (bytes) for the test; unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs as the cache needs root")
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], check=True)
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        # Lazily if a process of a failed test still holds it open; it goes when that process does.
        if subprocess.run(["umount", str(point)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], check=True)


def _fill(disk: Path, *, leave: int) -> Path:
    """Write a ballast file so that about ``leave`` bytes stay free on ``disk``."""
    ballast = disk / "ballast"
    ballast.unlink(missing_ok=True)
    status = os.statvfs(disk)
    with ballast.open("wb") as out:
        out.write(b"\0" * max(status.f_bavail * status.f_frsize - leave, 0))
    return ballast


def _remount(disk: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(disk)], check=True)


# --- the least recently used choice, without a server ----------------------------------------------------------------


def _copy(name: str, size: int, last_used: float) -> CachedCopy:
    return CachedCopy(name=name, path=Path(name), size=size, last_used=last_used)


def test_unloaded_copies_go_least_recently_used_first_and_only_as_many_as_needed() -> None:
    copies = [_copy("new", 100, 30.0), _copy("old", 100, 10.0), _copy("middle", 100, 20.0)]
    assert [c.name for c in choose_unloaded(copies, in_use=[], to_free=150)] == ["old", "middle"]
    assert [c.name for c in choose_unloaded(copies, in_use=[], to_free=1)] == ["old"]
    assert choose_unloaded(copies, in_use=[], to_free=0) == []


def test_a_copy_in_use_is_never_chosen_even_when_the_rest_is_not_enough() -> None:
    copies = [_copy("loaded", 500, 1.0), _copy("idle", 100, 50.0)]
    assert [c.name for c in choose_unloaded(copies, in_use=["loaded"], to_free=10_000)] == ["idle"]


def _copy_folder(models: Path, name: str, size: int, last_used: float) -> Path:
    folder = models / name / "0"
    folder.mkdir(parents=True)
    (folder / "weights").write_bytes(b"w" * size)
    os.utime(models / name, (last_used, last_used))
    return models / name


def test_the_order_of_last_use_survives_a_restart(tmp_path: Path) -> None:
    storage = CacheStorage(tmp_path, max_bytes=10_000)
    storage.prepare()
    now = time.time()
    for age, name in enumerate(["a", "b", "c"]):
        _copy_folder(storage.models_dir, name, 1000, now - 100 + age)
    storage.record_use(storage.models_dir / "a")  # used last, before the restart
    restarted = CacheStorage(tmp_path, max_bytes=10_000)
    restarted.prepare()
    victims = choose_unloaded(restarted.copies(), in_use=[], to_free=1500)
    assert [c.name for c in victims] == ["b", "c"]
    assert {c.name: c.size for c in restarted.copies()} == {"a": 1000, "b": 1000, "c": 1000}


def _install(
    storage: CacheStorage,
    name: str,
    archive: Path,
    *,
    in_use: dict[str, float],
    loaded: list[str],
    download: Callable[[Path], None] | None = None,
) -> list[str]:
    """Install ``archive`` as ``name``; ``loaded`` are unloaded (most recently used last) when the storage asks.
    The names unloaded, in order."""
    unloaded: list[str] = []

    async def unload() -> Path | None:
        if not loaded:
            return None
        victim = loaded.pop(0)
        in_use.pop(victim, None)
        unloaded.append(victim)
        return storage.models_dir / victim

    asyncio.run(
        storage.install(
            key=f"{name}.tar.gz",
            name=name,
            archive_bytes=archive.stat().st_size,
            destination=storage.models_dir / name,
            download=download or (lambda path: shutil.copyfile(archive, path)),
            in_use=lambda: in_use,
            unload_least_recently_used=unload,
        )
    )
    return unloaded


def test_room_comes_from_unloaded_copies_first_then_from_unloading(
    tmp_path: Path, demo_archives: dict[str, Path]
) -> None:
    archive = demo_archives["sentiment"]
    archive_bytes, content = _sizes(archive)
    now = time.time()
    # Three old copies of the model's size: two loaded, one (the most recently used) not.
    storage = CacheStorage(tmp_path, max_bytes=3 * content + archive_bytes)
    storage.prepare()
    for age, name in enumerate(["loaded-old", "loaded-new", "idle"]):
        _copy_folder(storage.models_dir, name, content, now - 100 + age)
    in_use = {"loaded-old": now - 50, "loaded-new": now - 40}
    loaded = ["loaded-old", "loaded-new"]

    assert _install(storage, "fresh", archive, in_use=in_use, loaded=loaded) == []
    assert _folders(tmp_path) == {"loaded-old", "loaded-new", "fresh"}, "the idle copy goes, though used last"
    assert storage.used_bytes() <= storage.max_bytes

    in_use["fresh"] = now
    assert _install(storage, "fresher", archive, in_use=in_use, loaded=loaded) == ["loaded-old"]
    assert _folders(tmp_path) == {"loaded-new", "fresh", "fresher"}
    assert storage.used_bytes() <= storage.max_bytes


def test_a_model_larger_than_the_whole_limit_is_refused_naming_the_option(
    tmp_path: Path, demo_archives: dict[str, Path]
) -> None:
    archive = demo_archives["sentiment"]
    archive_bytes, content = _sizes(archive)
    storage = CacheStorage(tmp_path, max_bytes=archive_bytes + content - 1)
    storage.prepare()
    with pytest.raises(ValidationError, match=r"more than the cache's limit .* larger --max-cache-size"):
        _install(storage, "big", archive, in_use={}, loaded=[])
    assert _folders(tmp_path) == set()
    assert list((tmp_path / "downloads").iterdir()) == []


def test_disk_full_deletes_unloaded_copies_and_tries_once_more(tmp_path: Path, demo_archives: dict[str, Path]) -> None:
    archive = demo_archives["sentiment"]
    storage = CacheStorage(tmp_path, max_bytes=10**9)
    storage.prepare()
    _copy_folder(storage.models_dir, "idle", 1000, time.time())
    attempts: list[bool] = []

    def download(path: Path) -> None:
        # Half written, then the disk is full: as a real ENOSPC leaves it.
        path.write_bytes(archive.read_bytes()[:1000])
        attempts.append(True)
        if len(attempts) == 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        shutil.copyfile(archive, path)

    _install(storage, "fresh", archive, in_use={}, loaded=[], download=download)
    assert len(attempts) == 2
    assert _folders(tmp_path) == {"fresh"}
    assert list((tmp_path / "downloads").iterdir()) == []


def test_disk_full_with_nothing_to_delete_is_a_503_that_leaves_nothing(
    tmp_path: Path, demo_archives: dict[str, Path]
) -> None:
    archive = demo_archives["sentiment"]
    storage = CacheStorage(tmp_path, max_bytes=10**9)
    storage.prepare()

    def download(path: Path) -> None:
        path.write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(ServiceUnavailableError, match=rf"model cache {re.escape(str(tmp_path))} ran out of disk space"):
        _install(storage, "fresh", archive, in_use={}, loaded=[], download=download)
    assert _folders(tmp_path) == set()
    assert list((tmp_path / "downloads").iterdir()) == []


# --- against a running mme serve, on a real small filesystem -------------------------------------------------------


@host_only
def test_round_robin_over_three_models_keeps_within_a_limit_of_two(
    serve: Callable[..., ServeProcess], store: Path, tmpfs: Callable[[int], Path]
) -> None:
    sentiment, topic = _sizes(store / "sentiment.tar.gz"), _sizes(store / "topic.tar.gz")
    # The second model installs beside the first; the third (archive and content side by side) cannot.
    fits_two = sentiment[1] + sum(topic)
    too_small_for_three = sentiment[1] + topic[1] + sum(sentiment)
    assert fits_two < too_small_for_three
    limit = (fits_two + too_small_for_three) // 2
    cache = tmpfs(64 * 1024**2) / "cache"
    endpoint = serve(store, "--cache-dir", str(cache), "--max-cache-size", str(limit))

    order = ["sentiment.tar.gz", "topic.tar.gz", "sentiment-copy.tar.gz"] * 2
    for step, model in enumerate(order):
        assert _answer(endpoint, model) == _expected(model)
        assert _bytes_under(cache) <= limit
        recent = set(order[max(0, step - 1) : step + 1])
        names = _names(endpoint)
        assert _loaded(endpoint) == recent
        assert _folders(cache) == {names[key] for key in recent}, f"after {model}: least recently used copy kept"
        assert list((cache / "downloads").iterdir()) == []

    # From the server's own log, in order: a copy is deleted only while its model is not loaded.
    loaded: set[str] = set()
    deleted = 0
    for line in endpoint.log.read_text().splitlines():
        if match := re.search(r"mme.models: loaded \S+ as (m[0-9a-f]+)", line):
            loaded.add(match.group(1))
        elif match := re.search(r"mme.models: unloaded \S+ \((m[0-9a-f]+)\)", line):
            loaded.discard(match.group(1))
        elif match := re.search(r"deleted the cached copy (m[0-9a-f]+)", line):
            assert match.group(1) not in loaded, line
            deleted += 1
    assert deleted == len(order) - 2
    endpoint.stop()


@host_only
def test_full_disk_is_a_clear_503_that_leaves_nothing_and_passes_once_space_is_back(
    serve: Callable[..., ServeProcess], store: Path, tmpfs: Callable[[int], Path]
) -> None:
    archive_bytes, content = _sizes(store / "sentiment.tar.gz")
    disk = tmpfs(8 * 1024**2)
    cache = disk / "cache"
    endpoint = serve(store, "--cache-dir", str(cache), "--max-loaded-models", "1")

    # Too full for the download, then too full for the extraction.
    for leave in (archive_bytes // 2, archive_bytes + content // 2):
        ballast = _fill(disk, leave=leave)
        status, body = _error(endpoint, "sentiment.tar.gz")
        assert status == 503, body
        assert body["__type"] == "ServiceUnavailable"
        assert f"model cache {cache} ran out of disk space installing sentiment.tar.gz" in body["message"]
        assert "bytes free on its disk" in body["message"]
        assert "free space on that disk" in body["message"]
        assert _folders(cache) == set(), "nothing half-extracted stays"
        assert list((cache / "downloads").iterdir()) == []

    ballast.unlink()
    assert _answer(endpoint, "sentiment.tar.gz") == "positive"
    assert _answer(endpoint, "topic.tar.gz") == "sports"  # the sentiment model is unloaded; its copy stays
    names = _names(endpoint)
    assert _folders(cache) == {names["sentiment.tar.gz"], names["topic.tar.gz"]}

    # Room for the download but not the content: the unloaded copy is deleted to make it, the loaded one kept.
    _fill(disk, leave=archive_bytes + content // 2)
    assert _answer(endpoint, "sentiment-copy.tar.gz") == "positive"
    names = _names(endpoint)
    assert _folders(cache) == {names["topic.tar.gz"], names["sentiment-copy.tar.gz"]}
    endpoint.stop()


@host_only
def test_a_cache_that_turns_read_only_is_a_clear_503_until_it_is_writable_again(
    serve: Callable[..., ServeProcess], store: Path, tmpfs: Callable[[int], Path]
) -> None:
    disk = tmpfs(16 * 1024**2)
    cache = disk / "cache"
    endpoint = serve(store, "--cache-dir", str(cache))
    assert _answer(endpoint, "sentiment.tar.gz") == "positive"
    _remount(disk, "ro")
    try:
        status, body = _error(endpoint, "topic.tar.gz")
        assert status == 503, body
        assert body["__type"] == "ServiceUnavailable"
        assert f"model cache {cache} cannot be written installing topic.tar.gz" in body["message"]
        assert "Read-only file system" in body["message"]
        assert "make it writable again" in body["message"]
        assert _answer(endpoint, "sentiment.tar.gz") == "positive", "a loaded model keeps serving"
    finally:
        _remount(disk, "rw")
    assert _answer(endpoint, "topic.tar.gz") == "sports"
    assert len(_folders(cache)) == 2
    endpoint.stop()


@pytest.mark.parametrize("obstacle", ["read-only mount", "a file in the way"])
def test_serve_refuses_to_start_on_an_unwritable_cache(
    obstacle: str, store: Path, tmpfs: Callable[[int], Path], tmp_path: Path
) -> None:
    if obstacle == "read-only mount":
        disk = tmpfs(1024**2)
        _remount(disk, "ro")
        cache = disk / "cache"
    else:
        (tmp_path / "file").write_text("not a folder")
        cache = tmp_path / "file" / "cache"
    endpoint = ServeProcess(store, tmp_dir=tmp_path / "serve", cache_dir=cache)
    with pytest.raises(ContainerError):
        endpoint.start()
    assert endpoint.stop() == 2
    output = endpoint.log.read_text()
    assert f"error: the model cache folder {cache} cannot be written" in output
    assert "give --cache-dir a folder you can write" in output
    assert "Traceback" not in output
    assert "starting the model container" not in output


@host_only
def test_an_archive_too_large_for_the_limit_is_a_400_naming_the_option(
    serve: Callable[..., ServeProcess], store: Path, tmp_path: Path
) -> None:
    archive_bytes, _ = _sizes(store / "sentiment.tar.gz")
    endpoint = serve(store, "--cache-dir", str(tmp_path / "cache"), "--max-cache-size", str(archive_bytes + 1))
    with pytest.raises(ClientError) as raised:
        _answer(endpoint, "sentiment.tar.gz")
    error = raised.value.response["Error"]
    assert error["Code"] == "ValidationError"
    assert "--max-cache-size" in error["Message"]
    assert _folders(tmp_path / "cache") == set()
    endpoint.stop()
