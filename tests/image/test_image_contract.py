"""The SageMaker multi-model container contract against the built image, run as SageMaker runs it: ``docker run
IMAGE serve`` with ``SAGEMAKER_*`` set, models read-only under /opt/ml/models, loopback only; in both model host
modes (the shared host, the default, and the per-worker baseline)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from container_contract import *  # noqa: F403 - the contract's cases run against this module's container

from mme.image import ImageContainer


@pytest.fixture(scope="module", params=["shared", "per-worker"])
def container(
    request: pytest.FixtureRequest, serving_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ImageContainer]:
    # Every folder the tests make lives under the session's base temp: mounted, it is what /opt/ml/models holds.
    server = ImageContainer(
        tmp_path_factory.mktemp("image-run"),
        image=serving_image,
        models_root=tmp_path_factory.getbasetemp(),
        environment={"MME_MAX_TEXTS_PER_REQUEST": "8", "MME_MODEL_HOST": request.param},
    )
    with server:
        yield server
    assert not server.exists(), "the container outlived its stop"
