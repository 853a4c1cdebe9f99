"""The SageMaker multi-model container contract, against real MMS started through the image's entrypoint on this
host (the same cases run against the built image in tests/image)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from container_contract import *  # noqa: F403 - the contract's cases run against this module's container

from mme.container import LocalContainer, processes_under

# Every test here shares one server: starting MMS costs seconds, and the contract is about one long-lived server.


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalContainer]:
    run_dir = tmp_path_factory.mktemp("mms-run")
    server = LocalContainer(run_dir, environment={"MME_MAX_TEXTS_PER_REQUEST": "8", "MME_MODEL_HOST": "per-worker"})
    with server:
        yield server
    assert processes_under(run_dir) == [], "an MMS or worker process outlived the server"
