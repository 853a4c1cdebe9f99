"""The model host's load check (shared mode), against fake cgroup files: a load's own estimate plus the headroom,
loads in progress counted so two cannot be granted the same free memory, and a model too large for the container
refused as such. Through real MMS: tests/handler/test_model_host_on_mms.py."""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import pytest

from handler import memory
from handler.errors import ModelLoadError, ModelOutOfMemoryError
from handler.host import server
from handler.host.protocol import Message
from handler.host.server import ModelHost, ModelRegistry
from handler.settings import ServingSettings

MIB = 1024 * 1024


def _model(root: Path, mib: int) -> Path:
    saved_model = root / "0"
    saved_model.mkdir(parents=True)
    (saved_model / "saved_model.pb").write_bytes(b"\0")
    with (saved_model / "variables.data").open("wb") as variables:
        variables.truncate(mib * MIB - 1)  # sparse: its size counts, no disk is written
    return root


class BlockingLoads:
    """Stands in for TensorFlow's load: each load says it started, then waits until released (or fails)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.fail = False

    def __call__(self, model_dir: Path, settings: ServingSettings) -> object:
        self.started.set()
        assert self.release.wait(30)
        if self.fail:
            raise ModelLoadError(f"{model_dir.name} is broken")
        return object()


@pytest.fixture
def loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> BlockingLoads:
    """Memory as a 2 GiB cgroup (v2) with 700 MiB free; loads that block until released."""
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "memory.max").write_text(f"{2048 * MIB}\n")
    (cgroup / "memory.current").write_text(f"{1348 * MIB}\n")
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 20000000 kB\nMemAvailable: 20000000 kB\n")
    check = functools.partial(memory.check_room_for, cgroup_root=cgroup, meminfo=meminfo)
    monkeypatch.setattr(server, "check_room_for", check)
    monkeypatch.setattr(memory, "CGROUP_ROOT", cgroup)  # what beyond_total_memory reads
    blocking = BlockingLoads()
    monkeypatch.setattr(server, "load_model_dir", blocking)
    return blocking


def test_a_load_in_progress_keeps_its_estimate_from_a_concurrent_load(tmp_path: Path, loads: BlockingLoads) -> None:
    # 700 MiB free, 550 kept free: one 100 MiB model fits, not two.
    registry = ModelRegistry(ServingSettings(memory_headroom_mb=550))
    first = ("first", str(_model(tmp_path / "first", 50)))
    second = ("second", str(_model(tmp_path / "second", 50)))
    loading = threading.Thread(target=registry.acquire, args=(first,))
    loading.start()
    assert loads.started.wait(30)
    with pytest.raises(ModelOutOfMemoryError, match=r"700 MiB free, 100 MiB of it promised to loads in progress"):
        registry.acquire(second)
    loads.release.set()
    loading.join(30)
    assert registry.get(first) is not None
    # The promise ends with the load (the fake cgroup does not see the loaded model): the second fits now.
    registry.acquire(second)
    assert registry.get(second) is not None


def test_a_failed_load_returns_its_promise(tmp_path: Path, loads: BlockingLoads) -> None:
    registry = ModelRegistry(ServingSettings(memory_headroom_mb=550))
    loads.fail = True
    loads.release.set()
    with pytest.raises(ModelLoadError):
        registry.acquire(("broken", str(_model(tmp_path / "broken", 50))))
    loads.fail = False
    registry.acquire(("next", str(_model(tmp_path / "next", 50))))


def test_a_model_too_large_for_the_container_even_alone_is_answered_as_such(
    tmp_path: Path, loads: BlockingLoads
) -> None:
    host = ModelHost(ServingSettings(memory_headroom_mb=512))
    # 2 x 800 MiB plus 512 MiB kept free is more than the 2048 MiB limit: no eviction can help.
    large = Message({"op": "load", "model": "large", "model_dir": str(_model(tmp_path / "large", 800))}, b"")
    fields, _ = host.answer(large, {})
    assert fields["status"] == 507
    assert fields["exceeds_total_memory"] is True
    assert "more than the container's 2048 MiB in total" in fields["message"]
    # Needing 2 x 100 MiB fits alone but not in the 700 MiB free now: a 507 that eviction answers.
    fitting = Message({"op": "load", "model": "fits", "model_dir": str(_model(tmp_path / "fits", 100))}, b"")
    fields, _ = host.answer(fitting, {})
    assert (fields["status"], fields["exceeds_total_memory"]) == (507, False)
    assert not loads.started.is_set()  # refused before loading anything


def test_headroom_zero_checks_nothing(tmp_path: Path, loads: BlockingLoads) -> None:
    loads.release.set()
    registry = ModelRegistry(ServingSettings(memory_headroom_mb=0))
    registry.acquire(("large", str(_model(tmp_path / "large", 800))))
