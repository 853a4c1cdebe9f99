"""Finding what `mme serve` started, on the host or in the Docker engine: MMS processes and serving containers."""

from __future__ import annotations

import http.client
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

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


class FaultyProxy:
    """An HTTP proxy on loopback in front of ``target`` (a moto server) that fails or delays requests: the first
    ``fail_first`` requests (every one when ``fail_first`` is None) get a 500 with an S3 error body, and every request
    that is forwarded waits ``delay_seconds`` first. ``requests`` counts what it was sent."""

    def __init__(self, target: str, *, fail_first: int | None = 0, delay_seconds: float = 0.0) -> None:
        self.target = urlsplit(target)
        self.fail_first = fail_first
        self.delay_seconds = delay_seconds
        self.requests = 0
        self.failed = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                with proxy._lock:
                    proxy.requests += 1
                    fail = proxy.fail_first is None or proxy.failed < proxy.fail_first
                    proxy.failed += int(fail)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if fail:
                    error = b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"
                    self.send_response(500)
                    self.send_header("Content-Length", str(len(error)))
                    self.end_headers()
                    self.wfile.write(error)
                    return
                time.sleep(proxy.delay_seconds)
                connection = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port, timeout=60)
                headers = {name: value for name, value in self.headers.items() if name.lower() != "host"}
                headers["Host"] = proxy.target.netloc
                connection.request(self.command, self.path, body=body, headers=headers)
                answer = connection.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                connection.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any  # noqa: N815 - http.server's names

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
