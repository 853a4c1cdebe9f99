"""The thin MMS handler of shared mode: no TensorFlow in the worker, and nothing hangs when the host fails.

Against a stand-in host that fails in the ways a real one does only by accident (it dies under a request, or never
answers); the real host behind real MMS is tests/handler/test_model_host_on_mms.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from mms.context import Context, RequestProcessor

from handler import thin_service
from handler.host.protocol import ConnectionClosedError, receive_message, send_message
from handler.settings import load_error_file, model_host_socket


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A run folder with a short path: a Unix socket path is capped at 107 bytes."""
    folder = Path(tempfile.mkdtemp(prefix="mh-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_the_thin_handler_imports_neither_tensorflow_nor_transformers() -> None:
    code = (
        "import sys, handler.thin_service, handler.host.client, handler.mms_request;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'transformers', 'keras', 'numpy'}))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == "[]"


class StandInHost(socketserver.ThreadingUnixStreamServer):
    """Answers loads; on a predict, does what ``on_predict`` says: ``"die"`` closes the connection (the host died
    under the request), ``"hang"`` never answers, ``"answer"`` answers 200."""

    daemon_threads = True

    def __init__(self, socket_path: Path) -> None:
        self.on_predict = "answer"
        self.loads: list[str] = []
        self.connections: list[socket.socket] = []
        super().__init__(str(socket_path), _StandInHandler)


class _StandInHandler(socketserver.BaseRequestHandler):
    server: StandInHost

    def handle(self) -> None:
        self.server.connections.append(self.request)
        try:
            while True:
                request = receive_message(self.request)
                if request.fields["op"] == "load":
                    self.server.loads.append(request.fields["model_dir"])
                    send_message(self.request, {"status": 200})
                elif self.server.on_predict == "die":
                    return
                elif self.server.on_predict == "hang":
                    threading.Event().wait(30)
                    return
                else:
                    send_message(self.request, {"status": 200, "content_type": "application/json"}, b'{"ok": 1}')
        except ConnectionClosedError:
            return


@pytest.fixture
def stand_in(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandInHost]:
    monkeypatch.setenv("MME_RUN_DIR", str(short_dir))
    monkeypatch.setenv("MME_RESPONSE_TIMEOUT_SECONDS", "1")
    monkeypatch.setenv("MME_MODEL_HOST_START_TIMEOUT_SECONDS", "5")
    monkeypatch.setattr(thin_service, "_lease", None)
    server = StandInHost(model_host_socket(short_dir))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _context(model_dir: Path) -> Context:
    context = Context("m", str(model_dir), None, 1, None, "1.1.11")
    context.request_processor = [RequestProcessor({"Content-Type": "text/plain"})]
    return context


@pytest.mark.parametrize("failure", ["die", "hang"])
def test_a_request_the_host_fails_under_is_503_and_the_next_one_reloads(
    stand_in: StandInHost, short_dir: Path, failure: str
) -> None:
    context = _context(short_dir / "model")
    thin_service.handle(None, context)
    stand_in.on_predict = failure
    [body] = thin_service.handle([{"body": bytearray(b"hi")}], context)
    assert context.get_response_status(0)[0] == 503
    assert "model host is unavailable" in json.loads(body)["error"]
    stand_in.on_predict = "answer"
    [body] = thin_service.handle([{"body": bytearray(b"hi")}], context)
    assert json.loads(body) == {"ok": 1}
    # The broken connection took its lease along: the model was loaded again, from the same folder.
    assert stand_in.loads == [str(short_dir / "model")] * 2


def test_a_host_that_never_comes_up_fails_the_load_with_the_reason_file(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MME_RUN_DIR", str(short_dir))
    monkeypatch.setenv("MME_MODEL_HOST_START_TIMEOUT_SECONDS", "1")
    monkeypatch.setattr(thin_service, "_lease", None)
    with pytest.raises(thin_service.ModelLoadError, match="model host is unavailable"):
        thin_service.handle(None, _context(short_dir / "model"))
    assert "model host is unavailable" in load_error_file(short_dir, "m").read_text()


def test_a_host_that_does_not_come_back_makes_requests_503_not_hang(
    stand_in: StandInHost, short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MME_MODEL_HOST_START_TIMEOUT_SECONDS", "1")
    context = _context(short_dir / "model")
    thin_service.handle(None, context)
    # The host goes away between requests, and no new one starts.
    stand_in.shutdown()
    stand_in.server_close()
    model_host_socket(short_dir).unlink()
    for connection in stand_in.connections:
        connection.shutdown(socket.SHUT_RDWR)
    [body] = thin_service.handle([{"body": bytearray(b"hi")}], context)
    assert context.get_response_status(0)[0] == 503
    assert "did not accept a connection" in json.loads(body)["error"]
