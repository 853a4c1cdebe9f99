"""Fixtures of a running ``mme serve`` (the real CLI, as a child process), its model store and a moto S3 server.

The suites that serve (``tests/local``, ``tests/reliability``) import them into their ``conftest.py``.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
from local_serving import MotoS3, mms_processes, serving_containers
from moto.server import ThreadedMotoServer

from mme.archive import write_archive
from mme.container import free_port, processes_under
from mme.serve_process import ServeProcess


@pytest.fixture(scope="session")
def store(
    demo_archives: dict[str, Path],
    oom_model_dir: Path,
    oom_on_long_text_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """A model store folder: the demo models, a copy under a third key, models that run out of memory at load or
    on long texts, and hostile archives."""
    root = tmp_path_factory.mktemp("store")
    for name, archive in demo_archives.items():
        shutil.copy2(archive, root / f"{name}.tar.gz")
    shutil.copy2(demo_archives["sentiment"], root / "sentiment-copy.tar.gz")
    (root / "team-a").mkdir()
    shutil.copy2(demo_archives["topic"], root / "team-a" / "topic-v2.tar.gz")
    write_archive(oom_model_dir, root / "greedy.tar.gz")
    write_archive(oom_on_long_text_model_dir, root / "greedy-on-long.tar.gz")
    with tarfile.open(root / "escape.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    with tarfile.open(root / "symlink.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("0")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc"
        tar.addfile(info)
    return root


@pytest.fixture(scope="module", params=["host", "image"])
def serve(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., ServeProcess]]:
    """Start ``mme serve --store STORE [options]``, with the container's software as host processes or, for the
    ``image`` variant, the serving image on the Docker engine (``--image``); every server started is stopped at the
    end of the module, and no MMS process or serving container may outlive it."""
    runtime = ["--image", request.getfixturevalue("serving_image")] if request.param == "image" else []
    started: list[ServeProcess] = []

    def start(store: str | Path, *options: str, env: dict[str, str] | None = None) -> ServeProcess:
        tmp_dir = tmp_path_factory.mktemp("serve")
        endpoint = ServeProcess(
            store, tmp_dir=tmp_dir, cache_dir=tmp_dir / "cache", options=[*runtime, *options], environment=env
        )
        started.append(endpoint)
        return endpoint.start()

    yield start
    for endpoint in started:
        endpoint.stop()
        assert processes_under(endpoint.tmp_dir) == [], "a process of mme serve outlived it"
    # Every MMS a test started is stopped by then, so after the last stop none may be left anywhere.
    assert mms_processes() == [], "an MMS front end or worker outlived mme serve"
    assert serving_containers() == [], "a serving container outlived mme serve"


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[MotoS3]:
    """A moto S3 server on a free loopback port for the module."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    url = f"http://127.0.0.1:{port}"
    credentials = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")  # fmt: skip
    yield MotoS3(url=url, client=client, environment={**credentials, "AWS_ENDPOINT_URL": url})
    server.stop()
