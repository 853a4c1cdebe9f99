"""A model bucket in moto's S3 for the CLI's tests: the region and bucket name they use, and the fixture."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

REGION = "us-east-1"
BUCKET = "mme-dev-models"


def moto_environment(monkeypatch: pytest.MonkeyPatch, *also_unset: str) -> None:
    """Credentials and region for moto in the environment, and nothing of the developer's own AWS set-up (nor the
    variables named in ``also_unset``)."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "MME_OWNER", *also_unset):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto's AWS with an empty bucket :data:`BUCKET` in :data:`REGION` (:func:`moto_environment`)."""
    moto_environment(monkeypatch)
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket=BUCKET)
        yield client
