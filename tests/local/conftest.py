"""A running ``mme serve`` (the real CLI, as a child process) and boto3 clients pointed at it."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import requests
from botocore.config import Config

from mme.archive import write_archive
from mme.container import free_port, processes_under


@dataclass
class ServedEndpoint:
    """An ``mme serve`` child process and how to reach it."""

    url: str
    process: subprocess.Popen[str]
    tmp_dir: Path
    cache_dir: Path
    log: Path

    def client(self, *, retries: int = 1):
        """An unmodified boto3 SageMaker Runtime client; ``retries=1`` means no retry, so errors surface as-is."""
        return boto3.client(
            "sagemaker-runtime",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=Config(retries={"mode": "standard", "max_attempts": retries}),
        )

    def metric(self, name: str, labels: str = "") -> float:
        """One value from ``GET /metrics`` (0 when the series does not exist yet)."""
        text = requests.get(f"{self.url}/metrics", timeout=10).text
        pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.e+-]+)$"
        match = re.search(pattern, text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Signal the command and wait for it; returns its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture(scope="session")
def store(demo_archives: dict[str, Path], oom_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store folder: the demo models, a copy under a third key, a model too big to load, hostile archives."""
    root = tmp_path_factory.mktemp("store")
    for name, archive in demo_archives.items():
        shutil.copy2(archive, root / f"{name}.tar.gz")
    shutil.copy2(demo_archives["sentiment"], root / "sentiment-copy.tar.gz")
    (root / "team-a").mkdir()
    shutil.copy2(demo_archives["topic"], root / "team-a" / "topic-v2.tar.gz")
    write_archive(oom_model_dir, root / "greedy.tar.gz")
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


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServedEndpoint]]:
    """Start ``mme serve --store STORE [options]``; every server started is stopped at the end of the module,
    and no MMS or worker process may outlive it."""
    started: list[ServedEndpoint] = []

    def start(store: str | Path, *options: str, env: dict[str, str] | None = None) -> ServedEndpoint:
        tmp_dir = tmp_path_factory.mktemp("serve")
        cache_dir = tmp_dir / "cache"
        port = free_port()
        log = tmp_dir / "serve.log"
        command = [sys.executable, "-m", "mme.cli", "serve", "--store", str(store), "--port", str(port),
                   "--cache-dir", str(cache_dir), *options]  # fmt: skip
        process = subprocess.Popen(
            command,
            # The command's run folder goes under TMPDIR: the test can then find every process it started.
            env={**os.environ, "TMPDIR": str(tmp_dir), **(env or {})},
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            text=True,
        )
        endpoint = ServedEndpoint(f"http://127.0.0.1:{port}", process, tmp_dir, cache_dir, log)
        started.append(endpoint)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, f"mme serve exited: {log.read_text()}"
            try:
                if requests.get(f"{endpoint.url}/ping", timeout=2).status_code == 200:
                    return endpoint
            except requests.ConnectionError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"mme serve did not come up: {log.read_text()}")

    yield start
    for endpoint in started:
        endpoint.stop()
        assert processes_under(endpoint.tmp_dir) == [], "a process of mme serve outlived it"
