"""Safe by default: ``mme serve`` and its model server listen on loopback only, and a fault inside the endpoint answers
SageMaker's ``InternalFailure`` naming the request, with its traceback in the log and never in the response."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from mme.endpoint import _no_tracebacks
from mme.serve_process import ServeProcess


def _listening_addresses(pids: set[int]) -> set[str]:
    return {
        connection.laddr.ip
        for connection in psutil.net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN and connection.pid in pids
    }


def test_the_endpoint_and_its_model_server_listen_on_loopback_only(
    serve: Callable[..., ServeProcess], store: Path
) -> None:
    endpoint = serve(store)
    assert endpoint.process is not None
    serving = {endpoint.process.pid}
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        # The model server: host processes under the endpoint's folder, or MMS inside its container.
        if str(endpoint.tmp_dir) in cmdline or "com.amazonaws.ml.mms.ModelServer" in cmdline:
            serving.add(process.pid)
    addresses = _listening_addresses(serving)
    assert len(addresses) >= 2, addresses  # the endpoint and MMS
    assert all(_loopback(address) for address in addresses), addresses


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    # Java listens on IPv4 through an IPv6 socket: ::ffff:127.0.0.1.
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def test_a_fault_inside_the_endpoint_is_an_internal_failure_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(request: web.Request) -> web.Response:
        raise KeyError("a bug in the endpoint")

    async def call() -> tuple[int, dict[str, str], str]:
        app = web.Application(middlewares=[_no_tracebacks])
        app.router.add_post("/endpoints/local/invocations", broken)
        async with TestClient(TestServer(app)) as client:
            response = await client.post("/endpoints/local/invocations", data=b"{}")
            return response.status, dict(response.headers), await response.text()

    with caplog.at_level(logging.ERROR, logger="mme.endpoint"):
        status, headers, text = asyncio.run(call())
    assert status == 500
    body = json.loads(text)
    assert body["__type"] == "InternalFailure"
    assert headers["x-amzn-ErrorType"] == "InternalFailure"
    assert headers["x-amzn-RequestId"] in body["message"]
    assert "Traceback" not in text
    assert "a bug in the endpoint" not in text
    # The operator still gets the whole story, under the same request id.
    assert any(record.exc_info and headers["x-amzn-RequestId"] in record.getMessage() for record in caplog.records)
