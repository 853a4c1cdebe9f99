"""Shared mode's memory check through real MMS (``python -m handler.serve``, ``MME_MODEL_HOST=shared``): a load the
model host cannot make room for is MMS's 507, and a model too large for the container even alone is a 507 whose
reason file tells the front end that evicting cannot help. The memory limit is this machine's (no cgroup limit
here); the headroom is set so that free memory falls short by design. Under a real ``docker run --memory`` limit:
tests/image/test_image_serve.py."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from handler.memory import folder_bytes, total_memory_bytes
from handler.model import find_saved_model
from mme.container import LocalContainer, processes_under

MIB = 1024 * 1024
#: How far below the container's total the headroom leaves a demo model's need: far less than this machine uses.
SHORT_OF_TOTAL_MB = 64


@pytest.fixture(scope="module")
def models(demo_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sentiment demo model, and a copy whose SavedModel is 128 MiB larger (a sparse file in ``assets/``)."""
    large = tmp_path_factory.mktemp("large") / "sentiment-large"
    shutil.copytree(demo_model_dirs["sentiment"], large)
    padding = find_saved_model(large) / "assets" / "padding.bin"
    padding.parent.mkdir(exist_ok=True)
    with padding.open("wb") as file:
        file.truncate(128 * MIB)
    return {"small": demo_model_dirs["sentiment"], "large": large}


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]) -> Iterator[LocalContainer]:
    """Shared mode whose headroom leaves the small model's need only 64 MiB short of all the machine's memory: it
    fits alone in principle, but never in what is free; the large one's need is more than the total."""
    total = total_memory_bytes()
    assert total is not None
    need = 2 * folder_bytes(find_saved_model(models["small"]))
    headroom_mb = (total - need) // MIB - SHORT_OF_TOTAL_MB
    run_dir = tmp_path_factory.mktemp("mms-shared-tight")
    environment = {"MME_MODEL_HOST": "shared", "MME_MEMORY_HEADROOM_MB": str(headroom_mb)}
    with LocalContainer(run_dir, environment=environment) as server:
        yield server
    assert processes_under(run_dir) == [], "an MMS, worker or model host process outlived the server"


def _host_pid(server: LocalContainer) -> int:
    [process] = server.model_host_processes()
    return process.pid


def test_a_load_the_host_has_no_room_for_is_507_that_eviction_can_answer(
    tight: LocalContainer, models: dict[str, Path]
) -> None:
    host = _host_pid(tight)
    assert tight.client.load("small", models["small"]).status == 507
    left = json.loads(tight.load_error_file("small").read_text())
    assert left["exceeds_total_memory"] is False
    assert "MiB free, about" in left["reason"]
    assert "MME_MEMORY_HEADROOM_MB" in left["reason"]
    tight.client.discard("small")
    assert tight.client.describe("small").status == 404
    assert _host_pid(tight) == host  # refused before loading: the host never came near the OOM killer


def test_a_model_too_large_for_the_container_even_alone_is_507_with_exceeds_total_memory(
    tight: LocalContainer, models: dict[str, Path]
) -> None:
    host = _host_pid(tight)
    assert tight.client.load("large", models["large"]).status == 507
    left = json.loads(tight.load_error_file("large").read_text())
    assert left["exceeds_total_memory"] is True
    assert "more than the container's" in left["reason"]
    tight.client.discard("large")
    assert _host_pid(tight) == host
