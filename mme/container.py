"""Running the serving container's own entrypoint on this host, and talking to it with the MME container API.

:class:`LocalContainer` starts ``python -m handler.serve`` (the code path of the image's ``serve``) on a loopback
port with every path redirected into a run folder, and stops it without leaving an MMS or worker process behind.
:class:`ContainerClient` speaks the SageMaker multi-model container contract (DESIGN.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil
import requests

from handler.settings import load_error_file
from mme import MmeError

logger = logging.getLogger(__name__)


class ContainerError(MmeError, RuntimeError):
    """The container did not start, or answered a management call with an unexpected status."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now, below Linux's ephemeral range.

    MMS refuses ports it considers invalid (54361 was refused here), and ports below the ephemeral range cannot be
    taken by some client's outgoing connection in the meantime.
    """
    candidates = list(range(20000, 32000))
    random.shuffle(candidates)
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    raise ContainerError("no free TCP port between 20000 and 32000")


def processes_under(run_dir: Path) -> list[psutil.Process]:
    """Processes whose command line mentions ``run_dir``: the MMS front end and its workers (their sockets and
    temp folder live there)."""
    marker = str(run_dir)
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            cmdline = process.info["cmdline"] or []
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(marker in part for part in cmdline) and process.pid != os.getpid():
            found.append(process)
    return found


def wait_until_pinged(process: subprocess.Popen[bytes], ping_url: str, timeout: float, log_file: Path) -> None:
    """Wait until ``ping_url`` answers 200.

    Raises:
        ContainerError: ``process`` exited first, or ``timeout`` seconds passed; the message holds its log's end.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ContainerError(f"{process.args} exited with {process.returncode}:\n{_tail(log_file)}")
        try:
            if requests.get(ping_url, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.25)
    raise ContainerError(f"no answer from {ping_url} within {timeout:.0f} s:\n{_tail(log_file)}")


def _tail(log_file: Path, lines: int = 30) -> str:
    if not log_file.exists():
        return ""
    return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])


@dataclass(frozen=True)
class Response:
    """An HTTP answer from the container; ``headers`` has lower-case names."""

    status: int
    body: bytes
    headers: Mapping[str, str]

    @classmethod
    def of(cls, status: int, body: bytes, headers: Mapping[str, str]) -> Response:
        """A response with its header names lower-cased (HTTP header names are case-insensitive)."""
        return cls(status, body, {name.lower(): value for name, value in headers.items()})

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON."""
        import json

        return json.loads(self.body)


class ContainerClient:
    """The SageMaker multi-model container API of one server (``GET /ping``, ``/models``, ``invoke``)."""

    def __init__(self, base_url: str, *, timeout: float = 120.0, model_url: Callable[[Path], str] = str) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._model_url = model_url
        self._session = requests.Session()

    def _call(self, method: str, path: str, **kwargs: Any) -> Response:
        answer = self._session.request(method, self.base_url + path, timeout=self._timeout, **kwargs)
        return Response.of(answer.status_code, answer.content, answer.headers)

    def ping(self) -> Response:
        return self._call("GET", "/ping")

    def load(self, model_name: str, url: str | Path) -> Response:
        """``POST /models``: 200 when ready, 409 already loaded, 404 bad url, 507 out of memory.

        A ``Path`` is a model folder on this host, given to the container as the container sees it.
        """
        where = self._model_url(url) if isinstance(url, Path) else url
        return self._call("POST", "/models", json={"model_name": model_name, "url": where})

    def unload(self, model_name: str) -> Response:
        return self._call("DELETE", f"/models/{model_name}")

    def discard(self, model_name: str, *, settle_seconds: float = 1.0) -> Response:
        """Unregister a model whose load failed and make sure it stays unregistered; the last ``DELETE``'s answer.

        MMS answers a failed load before it cleans up, and its own clean-up, when it runs on the worker's thread,
        interrupts itself and puts the model back (``ModelManager.unregisterModel``). A ``DELETE`` that lands in
        between answers 404 while the model is about to return, so a 404 is watched for ``settle_seconds``.
        """
        answer = self.unload(model_name)
        deadline = time.monotonic() + settle_seconds
        while answer.status != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
            if self.describe(model_name).status != 404:
                answer = self.unload(model_name)
                logger.info(
                    "model %s came back after a failed load; unregistered it again [%d]", model_name, answer.status
                )
        return answer

    def describe(self, model_name: str) -> Response:
        return self._call("GET", f"/models/{model_name}")

    def list_models(self, *, limit: int | None = None, next_page_token: str | None = None) -> Response:
        params: dict[str, str | int] = {}
        if limit is not None:
            params["limit"] = limit
        if next_page_token is not None:
            params["next_page_token"] = next_page_token
        return self._call("GET", "/models", params=params)

    def invoke(
        self,
        model_name: str,
        body: bytes | str,
        *,
        content_type: str = "application/json",
        accept: str | None = None,
    ) -> Response:
        headers = {"Content-Type": content_type}
        if accept is not None:
            headers["Accept"] = accept
        return self._call("POST", f"/models/{model_name}/invoke", data=body, headers=headers)

    def close(self) -> None:
        self._session.close()


class LocalContainer:
    """The container's entrypoint running as a supervised child process on this host.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. ``environment`` adds container tunables
    (``MME_*``, ``SAGEMAKER_*``) on top of the redirections this class sets.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        port: int | None = None,
        environment: Mapping[str, str] | None = None,
        startup_timeout: float = 120.0,
    ) -> None:
        self.run_dir = run_dir.resolve()
        self.port = port or free_port()
        self._environment = dict(environment or {})
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        # The last process stopped, for its exit status.
        self._stopped: subprocess.Popen[bytes] | None = None
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.client = ContainerClient(self.base_url, model_url=self.model_url)
        # Shared mode: the model host's PSS with no model loaded, by pid (a restarted host starts empty again).
        self._host_idle_pss: dict[int, int] = {}

    @property
    def running(self) -> bool:
        """Whether the entrypoint process is alive (it exits when MMS does)."""
        return self._process is not None and self._process.poll() is None

    @property
    def exit_status(self) -> int | None:
        """The server's exit status once it has exited, also after :meth:`stop` (None while it runs)."""
        process = self._process or self._stopped
        return None if process is None else process.poll()

    def worker_processes(self) -> list[psutil.Process]:
        """The MMS Python workers of this server: one per loaded model and worker slot."""
        workers = []
        for process in processes_under(self.run_dir):
            try:
                if any("model_service_worker" in part for part in process.cmdline()):
                    workers.append(process)
            except psutil.NoSuchProcess:
                continue
        return workers

    def model_host_processes(self) -> list[psutil.Process]:
        """The shared model host of this server (``MME_MODEL_HOST=shared``; none in per-worker mode)."""
        hosts = []
        for process in processes_under(self.run_dir):
            with contextlib.suppress(psutil.NoSuchProcess):
                if "handler.host" in process.cmdline():
                    hosts.append(process)
        return hosts

    def models_memory_bytes(self) -> int:
        """Memory the loaded models take now, as the kernel charges it: the proportional set size (PSS) of the MMS
        model workers, summed, plus in shared mode the model host's PSS above its PSS with no model loaded.

        PSS splits each shared page among the processes that map it, so TensorFlow's libraries, mapped by every
        worker, count once in the sum and not once per worker as summed RSS counts them (630 MB RSS per worker where
        a worker adds about 240 MB, DESIGN.md). MMS's Java front end is left out: it is there with no model loaded,
        and unloading models cannot shrink it; so is the model host's TensorFlow runtime, for the same reason. The
        host's empty PSS is read when this class first sees its pid: at start, or just after a restart, when it holds
        no model yet (models reload on their next request).
        """
        total = 0
        for process in self.worker_processes():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += process.memory_full_info().pss
        for host in self.model_host_processes():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                pss = host.memory_full_info().pss
                total += max(pss - self._host_idle_pss.setdefault(host.pid, pss), 0)
        return total

    @property
    def log_file(self) -> Path:
        """Everything the entrypoint, MMS and the workers print."""
        return self.run_dir / "serve.log"

    def model_url(self, model_dir: Path) -> str:
        """The ``url`` of ``POST /models`` for a model folder on this host: the container shares this filesystem."""
        return str(model_dir.resolve())

    def load_error_file(self, model_name: str) -> Path:
        """Where, on this host, the handler leaves the reason a load of ``model_name`` failed."""
        return load_error_file(self.run_dir, model_name)

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "handler.serve"]

    def _process_environment(self) -> dict[str, str]:
        return {
            **os.environ,
            **self._environment,
            "SAGEMAKER_BIND_TO_PORT": str(self.port),
            "MME_BIND_HOST": "127.0.0.1",
            "MME_RUN_DIR": str(self.run_dir),
            "MME_MMS_CONFIG_FILE": str(self.run_dir / "mms.properties"),
        }

    def start(self) -> LocalContainer:
        """Start the entrypoint and wait until ``GET /ping`` answers 200.

        Raises:
            ContainerError: the server exited or did not answer within the startup timeout.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.client = ContainerClient(self.base_url, model_url=self.model_url)
        with self.log_file.open("ab") as log:
            # A session of its own, so stopping reaches every process the server started.
            self._process = subprocess.Popen(  # noqa: S603 - our own interpreter, or the engine's client
                self._command(),
                env=self._process_environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_until_pinged(self._process, f"{self.base_url}/ping", self._startup_timeout, self.log_file)
        except ContainerError:
            self.stop()
            raise
        logger.info("container ready on port %d", self.port)
        self.models_memory_bytes()  # reads the model host's PSS while it holds no model
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and make sure no MMS front end or worker is left."""
        self.client.close()
        process, self._process = self._process, None
        self._stopped = process or self._stopped
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("the server ignored SIGTERM for %.0f s; killing it", timeout)
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        # Workers that MMS left blocked (DESIGN.md) and anything outside the session still hold the run folder.
        leftovers = processes_under(self.run_dir)
        for leftover in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()
        psutil.wait_procs(leftovers, timeout=timeout)

    def __enter__(self) -> LocalContainer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def log_lines(self) -> Iterator[str]:
        """The server's log so far, line by line."""
        if self.log_file.exists():
            yield from self.log_file.read_text(errors="replace").splitlines()
