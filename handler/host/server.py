"""The model host process: one TensorFlow runtime, every loaded model, answering on a Unix socket.

``python -m handler.host --socket PATH [--parent-pid PID]``. Each connection (one per MMS worker) is served on a
thread of its own, so a request for one model never waits for another model's request or for a load: TensorFlow
releases the GIL inside its ops, and a load holds the registry's lock only to record its result. Requests are
answered exactly as the per-worker handler answers them (:func:`handler.request.answer_request`); concurrent requests
for one model share model calls (:mod:`handler.host.batching`).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import logging
import os
import signal
import socket
import socketserver
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handler.errors import HandlerError, ModelLoadError, ModelOutOfMemoryError, ModelTooLargeError
from handler.host.activity import ModelActivity
from handler.host.batching import BatchingClassifier
from handler.host.protocol import ConnectionClosedError, Message, ProtocolError, receive_message, send_message
from handler.memory import SERVING_OOM_SCORE_ADJ, beyond_total_memory, check_room_for, offer_to_oom_killer
from handler.model import TextClassifier, configure_tensorflow, find_saved_model, load_model_dir
from handler.request import answer_request
from handler.settings import ServingSettings, SettingsError

logger = logging.getLogger(__name__)

#: A model is identified by its MMS name and the folder it was loaded from: a name MMS unloads and loads again from
#: another folder is another model, even while the old one's last lease is still being released.
ModelKey = tuple[str, str]


@dataclass
class _Loaded:
    classifier: BatchingClassifier
    leases: int


class ModelRegistry:
    """The models loaded in this process, each loaded once and shared by every connection that leased it."""

    def __init__(self, settings: ServingSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._models: dict[ModelKey, _Loaded] = {}
        self._loading: dict[ModelKey, Future[None]] = {}
        # Memory promised to loads in progress (bytes), granted and returned under its own lock: a load is checked
        # against free memory less what the others will still take.
        self._room_lock = threading.Lock()
        self._promised_bytes = 0

    def acquire(self, key: ModelKey) -> None:
        """Lease the model ``key``, loading it unless it is loaded (or being loaded: then wait for that load).

        Raises:
            ModelLoadError: the folder is not servable.
            ModelOutOfMemoryError: the model does not fit.
        """
        while True:
            with self._lock:
                loaded = self._models.get(key)
                if loaded is not None:
                    loaded.leases += 1
                    return
                pending = self._loading.get(key)
                if pending is None:
                    pending = self._loading[key] = Future()
                    break
            # Another connection is loading it: share that load (and its error), then lease what it loaded.
            pending.result()
        try:
            classifier = self._batching(key, self._load(key))
        except BaseException as error:
            with self._lock:
                del self._loading[key]
            pending.set_exception(error)
            raise
        with self._lock:
            self._models[key] = _Loaded(classifier, leases=1)
            del self._loading[key]
        pending.set_result(None)

    def _load(self, key: ModelKey) -> TextClassifier:
        name, folder = key
        model_dir = Path(folder)
        promised = 0
        if model_dir.is_dir():
            saved_model = find_saved_model(model_dir)
            with self._room_lock:
                # No runtime per load here (MME_LOAD_MEMORY_RESERVE_MB sizes a per-worker one): the model's own
                # estimate, with the headroom kept free for every model's requests in flight.
                promised = check_room_for(
                    saved_model,
                    reserve_mb=0,
                    headroom_mb=self._settings.memory_headroom_mb,
                    pending_bytes=self._promised_bytes,
                )
                self._promised_bytes += promised
        try:
            classifier = load_model_dir(model_dir, self._settings)
        finally:
            with self._room_lock:
                self._promised_bytes -= promised
        logger.info("model %s loaded from %s", name, folder)
        return classifier

    def _batching(self, key: ModelKey, classifier: TextClassifier) -> BatchingClassifier:
        return BatchingClassifier(
            classifier,
            max_batch_size=self._settings.max_batch_size,
            max_batch_delay=self._settings.max_batch_delay_ms / 1000,
            # Each connection sends one request at a time: no more than its leases can be waiting for this model.
            senders=lambda: self._leases(key),
            name=key[0],
            model_calls=self._settings.parallel_batches,
        )

    def _leases(self, key: ModelKey) -> int:
        with self._lock:
            loaded = self._models.get(key)
            return 0 if loaded is None else loaded.leases

    def release(self, key: ModelKey) -> None:
        """End one lease of ``key``; the last one unloads the model."""
        with self._lock:
            loaded = self._models.get(key)
            if loaded is None:
                return
            loaded.leases -= 1
            if loaded.leases > 0:
                return
            del self._models[key]
        loaded.classifier.close()  # its thread holds the model too
        del loaded
        # A loaded SavedModel holds reference cycles: collect them now, so its memory is freed at unload.
        gc.collect()
        logger.info("model %s unloaded (from %s)", *key)

    def get(self, key: ModelKey) -> TextClassifier | None:
        with self._lock:
            loaded = self._models.get(key)
        return None if loaded is None else loaded.classifier

    def describe(self) -> dict[str, dict[str, Any]]:
        """Name -> ``{"model_dir", "leases", "batches", "texts"}`` of every loaded model: ``batches`` model calls have
        predicted ``texts`` texts since it was loaded."""
        with self._lock:
            models = {key: (m.leases, m.classifier.counts) for key, m in self._models.items()}
        return {
            name: {"model_dir": folder, "leases": leases, "batches": counts.batches, "texts": counts.texts}
            for (name, folder), (leases, counts) in models.items()
        }


def _error(status: int, message: str) -> tuple[dict[str, Any], bytes]:
    return {"status": status, "message": message}, b""


class ModelHost:
    """What the host answers, per connection: the operations of :mod:`handler.host.protocol`."""

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.registry = ModelRegistry(settings)
        self.activity = ModelActivity()

    def answer(self, request: Message, leases: dict[str, ModelKey]) -> tuple[dict[str, Any], bytes]:
        """The answer to one request of a connection holding ``leases`` (model name -> key), which it updates."""
        op = request.fields.get("op")
        name = str(request.fields.get("model", ""))
        if op == "predict":
            with self.activity.request(name):
                return self._predict(request, leases.get(name))
        if op == "load":
            return self._lease(name, str(request.fields.get("model_dir", "")), leases)
        if op == "unload":
            key = leases.pop(name, None)
            if key is None:
                return _error(404, f"model {name} is not loaded on this connection")
            self.registry.release(key)
            return {"status": 200}, b""
        if op == "status":
            models = self.registry.describe()
            activity = self.activity.snapshot(keep=models)
            return {"status": 200, "pid": os.getpid(), "models": models, "activity": activity}, b""
        return _error(400, f"unknown operation {op!r}")

    def _lease(self, name: str, model_dir: str, leases: dict[str, ModelKey]) -> tuple[dict[str, Any], bytes]:
        key = (name, model_dir)
        if leases.get(name) == key:
            return {"status": 200}, b""
        try:
            self.registry.acquire(key)
        except ModelOutOfMemoryError as error:
            # The thin worker tells the front end whether unloading other models could ever make room.
            refusal = beyond_total_memory(error)
            logger.error("cannot load model %s: %s", name, refusal)
            fields, payload = _error(ModelOutOfMemoryError.status, str(refusal))
            return {**fields, "exceeds_total_memory": isinstance(refusal, ModelTooLargeError)}, payload
        except HandlerError as error:
            logger.error("cannot load model %s: %s", name, error.message)
            return _error(error.status, error.message)
        except Exception as error:
            logger.exception("loading model %s failed", name)
            return _error(ModelLoadError.status, f"loading the model failed: {type(error).__name__}: {error}")
        previous = leases.get(name)
        leases[name] = key
        if previous is not None:
            self.registry.release(previous)
        return {"status": 200}, b""

    def _predict(self, request: Message, key: ModelKey | None) -> tuple[dict[str, Any], bytes]:
        classifier = None if key is None else self.registry.get(key)
        if key is None or classifier is None:
            return _error(404, f"model {request.fields.get('model')} is not loaded on this connection")
        try:
            answer = answer_request(
                classifier,
                request.payload if request.fields.get("has_body", True) else None,
                request.fields.get("content_type"),
                request.fields.get("accept"),
                max_texts=self.settings.max_texts_per_request,
            )
        except HandlerError as error:
            # Not the message: it may quote the request, and logs never hold request text.
            logger.info("request for %s rejected with %d (%s)", key[0], error.status, type(error).__name__)
            return _error(error.status, error.message)
        except ModelOutOfMemoryError as error:
            logger.error("model %s ran out of memory: %s", key[0], error)
            return _error(ModelOutOfMemoryError.status, str(error))
        except Exception as error:
            logger.exception("predicting with model %s failed", key[0])
            return _error(503, f"the model host failed on this request ({type(error).__name__}); see its log")
        fields = {
            "status": 200,
            "content_type": answer.content_type,
            "model_seconds": answer.model_seconds,
            "batch_size": answer.batch_size,
        }
        return fields, answer.body


class _ConnectionHandler(socketserver.BaseRequestHandler):
    """One peer (an MMS worker): its requests in order, and its leases, ended when it goes away."""

    server: ModelHostServer

    def handle(self) -> None:
        connection: socket.socket = self.request
        leases: dict[str, ModelKey] = {}
        try:
            while True:
                try:
                    request = receive_message(connection)
                except ConnectionClosedError:
                    return
                fields, payload = self.server.host.answer(request, leases)
                send_message(connection, fields, payload)
        except (OSError, ProtocolError) as error:
            logger.warning("dropping a connection: %s", error)
        finally:
            for key in leases.values():
                self.server.host.registry.release(key)


class ModelHostServer(socketserver.ThreadingUnixStreamServer):
    """The host's listening socket: a thread per connection, none of which keeps the process alive."""

    daemon_threads = True

    def __init__(self, socket_path: Path, host: ModelHost) -> None:
        self.host = host
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()  # left by a host that was killed
        # Owner-only: any process that can connect can load a folder as a model.
        previous = os.umask(0o077)
        try:
            super().__init__(str(socket_path), _ConnectionHandler)
        finally:
            os.umask(previous)


def _die_with_parent(parent_pid: int | None) -> None:
    """Ask the kernel for SIGTERM when ``serve`` dies, so a killed entrypoint never leaves a host behind."""
    if parent_pid is None:
        return
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent_pid:  # it died before the request took effect
        sys.exit(f"model host: the parent process {parent_pid} is gone")


def main(argv: list[str] | None = None) -> None:
    """Run the host until SIGTERM. Exits with status 2 on a malformed setting."""
    parser = argparse.ArgumentParser(prog="python -m handler.host", description=__doc__)
    parser.add_argument("--socket", type=Path, required=True, help="the Unix socket to listen on")
    parser.add_argument("--parent-pid", type=int, help="exit when this process (serve) exits")
    args = parser.parse_args(argv)
    _die_with_parent(args.parent_pid)
    try:
        settings = ServingSettings.from_env()
    except SettingsError as error:
        print(f"model host: {error}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Imported before listening, so the first load does not pay for it, and TensorFlow's thread pools are set once
    # for every model of the process.
    import tensorflow  # noqa: F401
    import transformers  # noqa: F401

    configure_tensorflow(settings)
    # The load check is the first defence. If it misjudges, the kernel should kill the host rather than MMS's Java:
    # a dead host takes every model, but serve restarts it and the front end loads them again on demand, while a dead
    # MMS ends the container. The host is usually the largest process anyway; this makes it so while it is small.
    offer_to_oom_killer(SERVING_OOM_SCORE_ADJ)
    server = ModelHostServer(args.socket, ModelHost(settings))

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    logger.info("model host (pid %d) listening on %s", os.getpid(), args.socket)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        with contextlib.suppress(FileNotFoundError):
            args.socket.unlink()
        logger.info("model host (pid %d) stopped", os.getpid())
