"""The SageMaker multi-model container contract, against real MMS started through the image's entrypoint on this
host, in both model host modes: shared (the default: MMS's workers forward to the model host) and per-worker (the
baseline). The same cases run against the built image in tests/image."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from container_contract import *  # noqa: F403 - the contract's cases run against this module's container

from mme.container import LocalContainer, processes_under

# Every test of a mode shares one server: starting MMS costs seconds, and the contract is about one long-lived server.


@pytest.fixture(scope="module", params=["shared", "per-worker"])
def container(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalContainer]:
    run_dir = tmp_path_factory.mktemp(f"mms-{request.param}")
    server = LocalContainer(run_dir, environment={"MME_MAX_TEXTS_PER_REQUEST": "8", "MME_MODEL_HOST": request.param})
    with server:
        yield server
    assert processes_under(run_dir) == [], "an MMS, worker or model host process outlived the server"
