"""Starting the model host before MMS, and restarting it whenever it dies (``serve`` in shared mode)."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time

from handler.host.client import ModelHostClient, ModelHostUnavailableError
from handler.settings import ServingSettings, model_host_socket

logger = logging.getLogger(__name__)

#: A host that dies at once (a broken install, say) is restarted at most this often, so the log stays readable.
RESTART_PAUSE_SECONDS = 1.0
#: How long the host gets to stop on SIGTERM before it is killed: a host stuck inside TensorFlow holding the GIL
#: never runs its signal handler.
STOP_GRACE_SECONDS = 5.0


class ModelHostNotReadyError(RuntimeError):
    """The model host exited, or did not answer, before it was ready."""


class ModelHostSupervisor:
    """One model host process at a time: started by :meth:`start`, restarted when it dies until :meth:`stop`."""

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.socket_path = model_host_socket(settings.run_dir)
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        process = self._process
        return None if process is None else process.pid

    def start(self) -> None:
        """Start the host, wait until it answers, and supervise it from a background thread.

        Raises:
            ModelHostNotReadyError: the host exited or did not answer within the start timeout.
        """
        self._launch_and_wait()
        threading.Thread(target=self._supervise, name="supervise model host", daemon=True).start()

    def _launch_and_wait(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            # The host's output is the entrypoint's: the container's log (CloudWatch on AWS).
            self._process = subprocess.Popen(  # noqa: S603 - this interpreter, our own module
                [
                    sys.executable,
                    "-m",
                    "handler.host",
                    "--socket",
                    str(self.socket_path),
                    "--parent-pid",
                    str(os.getpid()),
                ],
            )
            process = self._process
        logger.info("model host starting (pid %d)", process.pid)
        self._wait_until_ready(process)
        logger.info("model host ready (pid %d)", process.pid)

    def _wait_until_ready(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.settings.model_host_start_timeout_seconds
        while True:
            if process.poll() is not None:
                raise ModelHostNotReadyError(f"the model host (pid {process.pid}) exited before it was ready")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ModelHostNotReadyError(
                    f"the model host (pid {process.pid}) did not answer within "
                    f"{self.settings.model_host_start_timeout_seconds} s"
                )
            try:
                # A short connect timeout: the loop checks the process between tries.
                with ModelHostClient(self.socket_path, connect_timeout=min(remaining, 1.0), call_timeout=10) as client:
                    answer = client.call({"op": "status"})
                if answer.status == 200 and answer.fields.get("pid") == process.pid:
                    return
            except ModelHostUnavailableError:
                continue  # not listening yet (or the socket is a dead host's)

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            process = self._process
            assert process is not None
            # sagemaker-inference's SIGCHLD handler may reap the host first: Popen then reports status 0.
            status = process.wait()
            if self._stopping.is_set():
                return
            logger.error("the model host (pid %d) exited with status %s; restarting it", process.pid, status)
            self._stopping.wait(RESTART_PAUSE_SECONDS)
            try:
                self._launch_and_wait()
            except ModelHostNotReadyError as error:
                logger.error("%s; trying again", error)
                self._kill(self._process)

    def stop(self) -> None:
        """Stop the host (SIGTERM, then SIGKILL after a grace period) and supervise no more."""
        with self._lock:
            self._stopping.set()
            process = self._process
        self._kill(process, grace=STOP_GRACE_SECONDS)

    @staticmethod
    def _kill(process: subprocess.Popen[bytes] | None, *, grace: float = 0.0) -> None:
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            logger.warning("the model host (pid %d) ignored SIGTERM; killing it", process.pid)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()
