"""The SageMaker multi-model container contract in shared mode (``MME_MODEL_HOST=shared``): the same cases as
test_mms_contract.py, against real MMS whose workers forward to the model host."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from container_contract import *  # noqa: F403 - the contract's cases run against this module's container

from mme.container import LocalContainer, processes_under


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalContainer]:
    run_dir = tmp_path_factory.mktemp("mms-shared")
    server = LocalContainer(run_dir, environment={"MME_MAX_TEXTS_PER_REQUEST": "8", "MME_MODEL_HOST": "shared"})
    with server:
        yield server
    assert processes_under(run_dir) == [], "an MMS, worker or model host process outlived the server"
