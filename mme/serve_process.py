"""``mme serve`` as a child process: how ``mme demo``, the tests and the benchmarks run the local endpoint."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

from mme.container import ContainerError, free_port, wait_until_pinged

# A local endpoint checks no signature, but botocore needs credentials to sign with.
DUMMY_CREDENTIALS = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}


class ServeProcess:
    """``mme serve --store STORE [options]`` on a free loopback port.

    Its run folder goes under ``tmp_dir`` (as ``TMPDIR``), so every process it starts can be found there.
    """

    def __init__(
        self,
        store: str | Path,
        *,
        tmp_dir: Path,
        cache_dir: Path,
        options: Sequence[str] = (),
        environment: Mapping[str, str] | None = None,
        startup_timeout: float = 120.0,
    ) -> None:
        self.store = str(store)
        self.tmp_dir = tmp_dir
        self.cache_dir = cache_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_dir / "serve.log"
        self._options = list(options)
        self._environment = dict(environment or {})
        self._startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServeProcess:
        """Start the command and wait until ``GET /ping`` answers 200.

        Raises:
            ContainerError: it exited or did not come up in time; the message holds its log.
        """
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "mme.cli", "serve", "--store", self.store, "--port", str(self.port),
                   "--cache-dir", str(self.cache_dir), *self._options]  # fmt: skip
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                command,
                env={**os.environ, "TMPDIR": str(self.tmp_dir), **self._environment},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until_pinged(self.process, f"{self.url}/ping", self._startup_timeout, self.log)
        except ContainerError:
            self.stop()
            raise
        return self

    def metric(self, name: str, labels: str = "") -> float:
        """One value from ``GET /metrics`` (0 when the series does not exist yet)."""
        text = requests.get(f"{self.url}/metrics", timeout=10).text
        pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.e+-]+)$"
        match = re.search(pattern, text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    def metric_sum(self, name: str) -> float:
        """The sum of every series of ``name`` from ``GET /metrics``, whatever their labels (0 when there is none)."""
        text = requests.get(f"{self.url}/metrics", timeout=10).text
        pattern = re.escape(name) + r"(?:\{[^}]*\})? ([0-9.e+-]+)$"
        return sum(float(value) for value in re.findall(pattern, text, re.MULTILINE))

    def client(self, *, retries: int = 1) -> Any:
        """An unmodified boto3 SageMaker Runtime client for this endpoint; ``retries=1`` makes one attempt."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "sagemaker-runtime",
            endpoint_url=self.url,
            region_name="us-east-1",
            config=Config(retries={"mode": "standard", "max_attempts": retries}),
            **DUMMY_CREDENTIALS,
        )

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        """Signal the command, wait for it to shut everything down, and return its exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
