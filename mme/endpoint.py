"""``mme serve``: a local multi-model endpoint that answers SageMaker Runtime's ``InvokeEndpoint``.

An aiohttp server plays SageMaker's multi-model front end; behind it the container's own software (MMS through
the image's ``serve`` entrypoint) runs as a supervised child on a private loopback port. An unmodified boto3
``sagemaker-runtime`` client with ``endpoint_url`` pointed here gets the same answers and exception classes as on AWS.

Routes: SageMaker's ``POST /endpoints/{name}/invocations`` and ``GET /ping``; besides them, ``GET /metrics``
(Prometheus) and ``GET /models`` (read-only, for ``mme models``): every archive in the store and whether it is loaded,
``{"models": [{"target_model": "sentiment.tar.gz", "size": 401833, "last_modified": "2026-01-02T03:04:05+00:00",
"loaded": true}, ...]}`` sorted by ``target_model``. A loaded model the store no longer holds is listed with ``null``
size and date; a store that cannot be listed answers 502 with ``{"message": ...}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler
from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mme import MmeError
from mme.aws.model_listing import StoredModel, list_store
from mme.container import LocalContainer
from mme.errors import (
    InternalFailureError,
    ModelError,
    PayloadTooLargeError,
    RequestTimeoutError,
    SageMakerError,
    ServiceUnavailableError,
    ValidationError,
)
from mme.metrics import MAX_MODEL_LABELS, EmfFollower, EndpointMetrics
from mme.models import CachePolicy, ModelCache
from mme.store import ModelStore, StoreError, validate_key

logger = logging.getLogger(__name__)

TARGET_MODEL = "X-Amzn-SageMaker-Target-Model"
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
REQUEST_ID = "X-Amzn-RequestId"
INVOKED_VARIANT = "x-Amzn-Invoked-Production-Variant"
#: SageMaker's payload limit for a real-time invocation, in MB (``SAGEMAKER_MAX_PAYLOAD_IN_MB``).
MAX_PAYLOAD_MB = 6
#: Default seconds a request's body may take to arrive once its headers have (`EndpointConfig.body_timeout_seconds`).
BODY_TIMEOUT_SECONDS = 30.0
#: SageMaker's invocation timeout: how long the container may take to answer
#: (`EndpointConfig.invocation_timeout_seconds`).
INVOCATION_TIMEOUT_SECONDS = 60.0
#: Default seconds in-flight requests may take to finish after SIGTERM (`EndpointConfig.shutdown_grace_seconds`):
#: with the container's own stop it stays within the 30 s SageMaker gives a container between SIGTERM and SIGKILL.
SHUTDOWN_GRACE_SECONDS = 20.0
#: Limits on a request's head, above which aiohttp answers 400 before any handler runs: one header line (custom
#: attributes are at most 1024 characters on SageMaker) and the number of headers.
MAX_HEADER_LINE_BYTES = 8190
MAX_HEADERS = 100
_SUPERVISE_EVERY_SECONDS = 1.0


class EndpointListingError(MmeError):
    """A local endpoint's ``GET /models`` cannot be read; the message says why and what to check."""


@dataclass(frozen=True, kw_only=True)
class EndpointConfig:
    """One local endpoint.

    - ``store``: the model store (a folder or ``s3://bucket/prefix/``).
    - ``run_dir``: where the container's logs, sockets and the model cache live.
    - ``endpoint_name`` (default ``local``): the only EndpointName this endpoint answers to.
    - ``variant_name`` (default ``AllTraffic``, SageMaker's default): returned as the invoked production variant.
    - ``policy``: what stays loaded (see :class:`CachePolicy`).
    - ``container_environment``: container tunables (``MME_*``, ``SAGEMAKER_*``) for the model server.
    - ``container`` (default: the container's software as host processes under ``run_dir``): the model server
      runtime, for example an :class:`~mme.image.ImageContainer` serving ``cache_dir/models``.
    - ``body_timeout_seconds`` (default 30): how long a request's body may take to arrive after its headers; a client
      that stalls gets a 408 instead of holding a connection for minutes.
    - ``max_payload_bytes`` (default 6 MB, SageMaker's): a larger body gets 413 before it is read.
    - ``invocation_timeout_seconds`` (default 60, SageMaker's): how long the container may take to answer an
      invocation of a loaded model; then the caller gets SageMaker's ``ModelError`` with status 0 ("timed out").
    - ``shutdown_grace_seconds`` (default 20): after SIGTERM, how long in-flight requests may take to finish.
    - ``metrics_max_models`` (default 50): target models with a ``model`` label of their own in ``GET /metrics``;
      later ones are folded into ``other``.
    """

    store: ModelStore
    run_dir: Path
    cache_dir: Path
    endpoint_name: str = "local"
    variant_name: str = "AllTraffic"
    policy: CachePolicy = field(default_factory=CachePolicy)
    container_environment: Mapping[str, str] = field(default_factory=dict)
    container: LocalContainer | None = None
    body_timeout_seconds: float = BODY_TIMEOUT_SECONDS
    max_payload_bytes: int = MAX_PAYLOAD_MB * 1024 * 1024
    invocation_timeout_seconds: float = INVOCATION_TIMEOUT_SECONDS
    shutdown_grace_seconds: float = SHUTDOWN_GRACE_SECONDS
    metrics_max_models: int = MAX_MODEL_LABELS


def _error_response(error: SageMakerError, request_id: str) -> web.Response:
    headers = {"x-amzn-RequestId": request_id}
    if error.code:
        headers["x-amzn-ErrorType"] = error.code
    return web.Response(status=error.status, body=error.body(), content_type="application/json", headers=headers)


@web.middleware
async def _no_tracebacks(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A fault of the endpoint itself is a JSON ``InternalFailure`` naming the request; the traceback goes to the log
    only, never into a response."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        request_id = str(uuid.uuid4())
        logger.exception("request %s (%s %s) failed inside the endpoint", request_id, request.method, request.path)
        error = InternalFailureError(
            f"the local endpoint failed on this request; its log has the details ({request_id})"
        )
        return _error_response(error, request_id)


class LocalEndpoint:
    """The front end's request handling and the container's supervision."""

    def __init__(self, config: EndpointConfig) -> None:
        self.config = config
        self.metrics = EndpointMetrics(max_models=config.metrics_max_models)
        self.container = config.container or LocalContainer(
            config.run_dir / "container", environment=config.container_environment
        )
        self.cache = ModelCache(
            store=config.store,
            container=self.container,
            cache_dir=config.cache_dir,
            policy=config.policy,
            metrics=self.metrics,
        )
        self._restart_lock = asyncio.Lock()
        self.metrics.track_loaded(lambda: list(self.cache.loaded))

    def application(self) -> web.Application:
        """The aiohttp application; its lifecycle starts and stops the container."""
        app = web.Application(client_max_size=self.config.max_payload_bytes, middlewares=[_no_tracebacks])
        app.router.add_post("/endpoints/{endpoint_name}/invocations", self.invoke)
        app.router.add_get("/ping", self.ping)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/models", self.list_models)
        app.cleanup_ctx.append(self._lifecycle)
        return app

    async def _lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        logger.info("starting the model container (MMS) under %s", self.container.run_dir)
        await asyncio.to_thread(self.container.start)
        emf = EmfFollower(self.container.log_file, self.metrics.take_emf).start()
        async with self.cache:
            supervisor = asyncio.create_task(self._supervise(), name="supervise container")
            try:
                yield
            finally:
                supervisor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await supervisor
        await asyncio.to_thread(self.container.stop)
        emf.stop()
        emf.read_new_lines()  # the last period, written as the container stopped
        logger.info("model container stopped")

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(_SUPERVISE_EVERY_SECONDS)
            if not self.container.running:
                await self.restart_container()

    async def restart_container(self) -> None:
        """Restart a dead container; requests meanwhile get ``ServiceUnavailable``."""
        async with self._restart_lock:
            if self.container.running:
                return
            logger.error(
                "the model container exited with status %s; restarting it (see %s)",
                self.container.exit_status,
                self.container.log_file,
            )
            self.cache.forget_all()
            await asyncio.to_thread(self.container.stop)
            await asyncio.to_thread(self.container.start)

    async def ping(self, request: web.Request) -> web.Response:
        if not self.container.running:
            return web.json_response({"status": "unavailable"}, status=503)
        return web.json_response({"status": "healthy", "loaded_models": len(self.cache.loaded)})

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def list_models(self, request: web.Request) -> web.Response:
        """``GET /models``: the store's archives and which are loaded (the module docstring shows the answer)."""
        loaded = self.cache.loaded
        try:
            stored = await asyncio.to_thread(list_store, self.config.store)
        except (MmeError, ClientError, BotoCoreError) as error:
            return web.json_response({"message": f"cannot list {self.config.store.uri}: {error}"}, status=502)
        models = {model.target_model: model for model in stored}
        for key in loaded.keys() - models.keys():
            models[key] = StoredModel(target_model=key, size=None, last_modified=None)
        listing = [
            {
                "target_model": model.target_model,
                "size": model.size,
                "last_modified": model.last_modified.isoformat() if model.last_modified else None,
                "loaded": model.target_model in loaded,
            }
            for model in sorted(models.values(), key=lambda model: model.target_model)
        ]
        return web.json_response({"models": listing})

    async def invoke(self, request: web.Request) -> web.Response:
        """``InvokeEndpoint``: resolve TargetModel, load it if needed, forward the request to the container."""
        request_id = str(uuid.uuid4())
        key = request.headers.get(TARGET_MODEL, "")
        started = time.monotonic()
        try:
            response = await self._invoke(request, key, request_id)
        except SageMakerError as error:
            status = error.status
            if isinstance(error, ModelError):
                # The model's own status says whose fault it was (0: it did not answer in time).
                status = error.original_status if error.original_status >= 400 else 504
                # Not the message: the container's answer may quote the request, and logs never hold request text.
                logger.info("%s -> %s %d", key, error.code, error.original_status)
            self.metrics.invocation(key or "-", time.monotonic() - started, status=status, error=error.code)
            return _error_response(error, request_id)
        self.metrics.invocation(key, time.monotonic() - started)
        response.headers["x-amzn-RequestId"] = request_id
        return response

    async def _invoke(self, request: web.Request, key: str, request_id: str) -> web.Response:
        endpoint_name = request.match_info["endpoint_name"]
        if endpoint_name != self.config.endpoint_name:
            raise ValidationError(
                f"Endpoint {endpoint_name} not found (this local endpoint is {self.config.endpoint_name!r})"
            )
        if not key:
            raise ValidationError(f"{TARGET_MODEL} is required: name the model archive, for example sentiment.tar.gz")
        try:
            validate_key(key)
        except StoreError as error:
            raise ValidationError(str(error)) from None
        limit = self.config.max_payload_bytes
        too_large = PayloadTooLargeError(f"HTTP content length exceeded {limit} bytes.")
        if (request.content_length or 0) > limit:
            raise too_large
        try:
            body = await asyncio.wait_for(request.read(), timeout=self.config.body_timeout_seconds)
        except web.HTTPRequestEntityTooLarge:  # a chunked body, whose length shows only while it is read
            raise too_large from None
        except TimeoutError:
            raise RequestTimeoutError(
                f"the request body did not arrive within {self.config.body_timeout_seconds:g} s of its headers"
            ) from None
        # As SageMaker's front end does: the container learns the target model (MMS's model name is a hash) and,
        # here, the request's id, which its captured records carry.
        headers = {
            "Content-Type": request.headers.get("Content-Type", "application/octet-stream"),
            TARGET_MODEL: key,
            REQUEST_ID: request_id,
        }
        for name in ("Accept", CUSTOM_ATTRIBUTES):
            if name in request.headers:
                headers[name] = request.headers[name]

        # One retry covers a model that vanished from the container (restart) or a 507 that an eviction fixes.
        for attempt in range(2):
            model = await self.cache.acquire(key)
            try:
                answer = await asyncio.wait_for(
                    self.cache.invoke(model, body, headers), timeout=self.config.invocation_timeout_seconds
                )
            except TimeoutError:
                await self.cache.replace_unresponsive(model)
                # SageMaker's words and shape for a container that does not answer in time.
                message = (
                    "Your invocation timed out while waiting for a response from container primary "
                    f"(after {self.config.invocation_timeout_seconds:g} s)."
                )
                raise ModelError(
                    f'Received server error (0) from primary with message "{message}"',
                    original_status=0,
                    original_message=message,
                ) from None
            finally:
                await self.cache.release(model)
            if answer.status == 200:
                out_headers = {INVOKED_VARIANT: self.config.variant_name}
                if CUSTOM_ATTRIBUTES.lower() in answer.headers:
                    out_headers[CUSTOM_ATTRIBUTES] = answer.headers[CUSTOM_ATTRIBUTES.lower()]
                return web.Response(
                    body=answer.body,
                    headers={**out_headers, "Content-Type": answer.content_type or "application/json"},
                )
            if attempt == 0 and answer.status == 404:
                self.cache.forget(model)
                continue
            if attempt == 0 and answer.status == 507 and await self.cache.make_room_after_oom(model):
                continue
            side = "client" if answer.status < 500 else "server"
            raise ModelError(
                f'Received {side} error ({answer.status}) from model with message "{answer.text}"',
                original_status=answer.status,
                original_message=answer.text,
            )
        raise ServiceUnavailableError(f"model {key} could not be served; try again")  # pragma: no cover


async def _serve(config: EndpointConfig, host: str, port: int, on_ready: Callable[[str], None]) -> None:
    endpoint = LocalEndpoint(config)
    runner = web.AppRunner(
        endpoint.application(),
        access_log=None,
        handle_signals=False,
        # On SIGTERM the listener closes at once, and requests in flight get this long to finish.
        shutdown_timeout=config.shutdown_grace_seconds,
        max_line_size=MAX_HEADER_LINE_BYTES,
        max_field_size=MAX_HEADER_LINE_BYTES,
        max_headers=MAX_HEADERS,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await runner.setup()  # starts the container
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        on_ready(f"http://{host}:{port}")
        await stop.wait()
        logger.info("shutting down")
    finally:
        await runner.cleanup()  # stops the container and every worker


def run_endpoint(
    config: EndpointConfig, *, host: str, port: int, on_ready: Callable[[str], None] = lambda url: None
) -> None:
    """Serve until SIGINT or SIGTERM, then stop the container and every worker it started.

    ``on_ready`` gets the endpoint URL once it accepts requests.

    Raises:
        OSError: the address cannot be bound (the container is stopped again first).
    """
    asyncio.run(_serve(config, host, port, on_ready))


def endpoint_models(url: str, *, timeout: float = 30.0) -> list[StoredModel]:
    """What the local endpoint at `url` (``mme serve``) lists on ``GET /models``, with the loaded flags.

    Raises:
        EndpointListingError: nothing answers at `url`, or it does not list models.
    """
    import requests

    listing = url.rstrip("/") + "/models"
    try:
        response = requests.get(listing, timeout=timeout)
    except requests.RequestException as error:
        raise EndpointListingError(
            f"no endpoint answers at {url} ({type(error).__name__}): start one with `mme serve --store ...`, or check "
            "--endpoint-url"
        ) from None
    if response.status_code == 404:
        raise EndpointListingError(
            f"{listing} does not exist (HTTP 404): --endpoint-url must be a local endpoint started by `mme serve`"
        )
    if not response.ok:
        raise EndpointListingError(f"{listing} answered HTTP {response.status_code}: {response.text[:300]}")
    try:
        return [
            StoredModel(
                target_model=str(item["target_model"]),
                size=item["size"],
                last_modified=datetime.fromisoformat(item["last_modified"]) if item["last_modified"] else None,
                loaded=bool(item["loaded"]),
            )
            for item in response.json()["models"]
        ]
    except (ValueError, KeyError, TypeError):
        raise EndpointListingError(f"{listing} answered no model listing: {response.text[:300]}") from None
