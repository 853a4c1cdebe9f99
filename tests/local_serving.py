"""Finding what `mme serve` started, on the host or in the Docker engine: MMS processes and serving containers."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import psutil

from mme.image import DOCKER


def serving_containers() -> list[str]:
    """Names of the serving containers `mme serve --image` started that the engine still has."""
    if not Path(DOCKER).is_file():
        return []
    answer = subprocess.run(
        [DOCKER, "ps", "--all", "--format", "{{.Names}}", "--filter", "name=mme-serving-"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return answer.stdout.split()


def mms_front_ends() -> list[psutil.Process]:
    """The MMS Java front ends on this machine, on the host or inside a container."""
    return [p for p in mms_processes() if "com.amazonaws.ml.mms.ModelServer" in " ".join(p.info["cmdline"] or [])]


def mms_processes() -> list[psutil.Process]:
    """Every MMS front end and worker on this machine."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "com.amazonaws.ml.mms.ModelServer" in cmdline or "model_service_worker" in cmdline:
            found.append(process)
    return found


def mms_workers() -> set[int]:
    """Pids of every MMS model worker on this machine, on the host or inside a container."""
    return {process.pid for process in mms_processes() if "model_service_worker" in " ".join(process.cmdline())}


@dataclass(frozen=True)
class MotoS3:
    """A moto server on loopback: its URL, an S3 client on it, and the environment that points `mme serve` at it."""

    url: str
    client: Any
    environment: dict[str, str]


T = TypeVar("T")


class BackgroundCalls(Generic[T]):
    """Each function of ``calls`` called back to back on a thread of its own until the ``with`` block ends; every
    result is kept in ``results``, in the order they came. Leaving the block waits for each thread's call in flight,
    and fails if one is still waiting for an answer after two minutes."""

    def __init__(self, calls: Sequence[Callable[[], T]]) -> None:
        self.results: list[T] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(call,), daemon=True) for call in calls]

    def _run(self, call: Callable[[], T]) -> None:
        while not self._stop.is_set():
            result = call()
            with self._lock:
                self.results.append(result)

    def __enter__(self) -> BackgroundCalls[T]:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)
            assert not thread.is_alive(), "a client is still waiting for an answer"
