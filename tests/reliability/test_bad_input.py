"""Hundreds of bad requests against a running ``mme serve``: each gets a 4xx naming the problem (413 above the payload
limit, 408 for a body that stalls), never a 5xx or a stack trace, and the next good request is answered. Afterwards
no log of the endpoint holds any request's text.

Two sources of bad input: named cases, one per kind a hostile or careless client sends (malformed JSON, wrong types,
huge strings, deep nesting, invalid UTF-8, lone surrogates, empty bodies, odd or huge headers, unknown and over-long
models, oversized, slow and truncated bodies, broken HTTP), and hypothesis drawing arbitrary bodies, content types and
headers.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mme.serve_process import ServeProcess

#: In the text of every request, good or bad, so the logs can be searched for request text afterwards.
MARKER = "zebracrossing"
GOOD_BODY = json.dumps({"input_text": f"I loved this film {MARKER}"}).encode()
PATH = "/endpoints/local/invocations"
PAYLOAD_LIMIT = 6 * 1024 * 1024
BODY_TIMEOUT_SECONDS = 1.0


@dataclass(frozen=True)
class Case:
    """One bad request: its body and headers (``None`` drops a default header), or raw bytes to send as they are."""

    name: str
    body: bytes = b""
    headers: dict[str, str | None] = field(default_factory=dict)
    raw: bytes | None = None  # a whole request, sent as it is on its own connection
    stall_after: int | None = None  # send this many bytes of the body, then stop sending
    status: int | None = None  # the exact status expected, when the case has one


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


def _headers(case: Case) -> dict[str, str]:
    defaults: dict[str, str | None] = {
        "X-Amzn-SageMaker-Target-Model": "sentiment.tar.gz",
        "Content-Type": "application/json",
    }
    merged = {**defaults, **case.headers}
    return {name: value for name, value in merged.items() if value is not None}


def send(endpoint: ServeProcess, case: Case) -> Answer:
    """Send ``case`` on a fresh connection and read the answer."""
    if case.raw is not None or case.stall_after is not None:
        return _send_raw(endpoint, case)
    connection = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=60)
    try:
        connection.request("POST", PATH, body=case.body, headers=_headers(case))
        response = connection.getresponse()
        return Answer(response.status, response.read())
    finally:
        connection.close()


def _send_raw(endpoint: ServeProcess, case: Case) -> Answer:
    if case.raw is not None:
        request = case.raw
    else:
        head = [f"POST {PATH} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(case.body)}"]
        head += [f"{name}: {value}" for name, value in _headers(case).items()]
        request = ("\r\n".join(head) + "\r\n\r\n").encode() + case.body[: case.stall_after]
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=60) as connection:
        connection.sendall(request)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
            if b"\r\n\r\n" in received and _complete(received):
                break
    status_line = received.split(b"\r\n", 1)[0].split()
    assert len(status_line) >= 2, f"{case.name}: no HTTP answer ({received[:200]!r})"
    return Answer(int(status_line[1]), received.split(b"\r\n\r\n", 1)[1])


def _complete(received: bytes) -> bool:
    head, body = received.split(b"\r\n\r\n", 1)
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def good_answer(endpoint: ServeProcess) -> None:
    answer = send(endpoint, Case("good", GOOD_BODY))
    assert answer.status == 200, answer
    assert json.loads(answer.body)["label"] == "positive"


def assert_refused_cleanly(case: Case, answer: Answer) -> None:
    """A 4xx (a model's own 4xx wrapped in SageMaker's 424 ModelError) with no stack trace in the body."""
    if case.status is not None:
        assert answer.status == case.status, f"{case.name}: {answer}"
    assert 400 <= answer.status < 500, f"{case.name}: {answer.status} {answer.body[:300]!r}"
    if answer.status == 424:
        original = json.loads(answer.body)["OriginalStatusCode"]
        assert 400 <= original < 500, f"{case.name}: the container answered {original}: {answer.body[:300]!r}"
    assert b"Traceback" not in answer.body, case.name
    assert b'File "' not in answer.body, case.name


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


def _named_cases() -> list[Case]:
    text = f"what a lovely day {MARKER}"
    good = json.dumps({"input_text": text})
    cases: list[Case] = []
    # Malformed JSON: every proper prefix of a good body, and some garbage.
    cases += [Case(f"prefix {n}", good[:n].encode()) for n in range(1, len(good)) if good[:n].strip()]
    cases += [
        Case(f"garbage {i}", body)
        for i, body in enumerate(
            [b"{", b"}", b"[", b"nul", b"{input_text: 1}", b"{'input_text': 'x'}", b'{"input_text": "a",}',
             b'{"input_text" "a"}', b"NaN", b"Infinity", b'{"input_text": "a"} trailing', b"\x00\x01\x02",
             b'"just a string"', b"123", b"true", b"null", b"[]", b"{}", b'[{"input_text": "a"}]', b"{" * 100]
        )
    ]  # fmt: skip
    # Wrong types.
    wrong = [1, 1.5, None, True, [], {}, [1], [None], [[text]], {"a": text}, -1e308]
    cases += [Case(f"input_text={value!r}", _json({"input_text": value})) for value in wrong]
    cases += [Case(f"inputs={value!r}", _json({"inputs": value})) for value in [*wrong[:6], [text, 1], [text, None]]]
    cases += [
        Case("both fields", _json({"input_text": text, "inputs": [text]})),
        Case("no field", _json({"text": text})),
        Case("blank text", _json({"input_text": "   "})),
        Case("empty list", _json({"inputs": []})),
        Case("too many texts", _json({"inputs": [text] * 10_000})),
        Case("json lines with one bad line", f'{good}\n{{"input_text": 5}}\n'.encode(),
             {"Content-Type": "application/jsonlines"}),
        Case("json lines garbage", b"\n\n{\n", {"Content-Type": "application/jsonlines"}),
    ]  # fmt: skip
    # Deep nesting.
    for depth in (64, 1000, 100_000):
        cases.append(Case(f"nested arrays {depth}", b"[" * depth + b"]" * depth))
        cases.append(Case(f"nested in input_text {depth}", b'{"input_text": ' + b"[" * depth + b"]" * depth + b"}"))
        cases.append(Case(f"nested objects {depth}", b'{"a":' * depth + b"1" + b"}" * depth))
    # Invalid UTF-8 and lone surrogates, as JSON and as plain text.
    bad_bytes = [b"\xff", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf0\x28\x8c\xbc", b"\x80"]
    for i, raw in enumerate(bad_bytes):
        cases.append(Case(f"invalid utf-8 json {i}", b'{"input_text": "' + raw + MARKER.encode() + b'"}'))
        cases.append(Case(f"invalid utf-8 text {i}", raw + MARKER.encode(), {"Content-Type": "text/plain"}))
    for escape in ("\\ud800", "\\udfff", "\\udc00x", "a\\ud83d", "\\ud83d\\ud83d"):
        cases.append(Case(f"lone surrogate {escape}", f'{{"input_text": "{MARKER} {escape}"}}'.encode()))
        cases.append(Case(f"lone surrogate in list {escape}", f'{{"inputs": ["ok {MARKER}", "{escape}"]}}'.encode()))
    # Empty bodies and odd content types.
    for content_type in ("application/json", "text/plain", "application/jsonlines", "text/csv", ""):
        cases.append(Case(f"empty body {content_type or 'no type'}", b"", {"Content-Type": content_type or None}))
    odd_types = ["text/csv", "application/x-npy", "image/png", "multipart/form-data; boundary=x", "garbage",
                 "application/json; charset=latin-1", "x" * 2000, "*/*", "application/octet-stream"]  # fmt: skip
    for content_type in odd_types:
        body = b"\x89PNG\x00" + MARKER.encode()
        cases.append(Case(f"content type {content_type[:40]}", body, {"Content-Type": content_type}))
    for accept in ("application/xml", "text/html", "garbage", "image/*", "x" * 500):
        cases.append(Case(f"accept {accept[:40]}", GOOD_BODY, {"Accept": accept}))
    # Headers: missing, huge, too many.
    cases += [
        Case("no target model", GOOD_BODY, {"X-Amzn-SageMaker-Target-Model": None}),
        Case("empty target model", GOOD_BODY, {"X-Amzn-SageMaker-Target-Model": ""}),
        Case("huge header", GOOD_BODY, {"X-Padding": "a" * 10_000}, status=400),
        Case("huge custom attributes", GOOD_BODY, {"X-Amzn-SageMaker-Custom-Attributes": "a" * 9000}, status=400),
        Case("many headers", GOOD_BODY, {f"X-Extra-{i}": "1" for i in range(200)}, status=400),
    ]
    # Unknown, hostile and over-long models.
    models = ["missing.tar.gz", "../sentiment.tar.gz", "/etc/passwd", "team-a/../../x.tar.gz", "a" * 300 + ".tar.gz",
              "a/" * 600, "%2e%2e/sentiment.tar.gz", "sentiment.tar.gz/", ".", "..", "escape.tar.gz",
              "symlink.tar.gz", "x" * 1100, "Sentiment.tar.gz", "./sentiment.tar.gz", "team-a//topic-v2.tar.gz",
              "sentiment", "\x7f"]  # fmt: skip
    cases += [Case(f"model {model[:40]!r}", GOOD_BODY, {"X-Amzn-SageMaker-Target-Model": model}) for model in models]
    # Oversized payloads: above the limit, declared or streamed in chunks.
    cases.append(Case("payload above the limit", b"a" * (PAYLOAD_LIMIT + 1), status=413))
    chunk = b"a" * 65536
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(PAYLOAD_LIMIT // len(chunk) + 2))
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n"
        "X-Amzn-SageMaker-Target-Model: sentiment.tar.gz\r\n\r\n"
    )
    cases.append(Case("chunked payload above the limit", raw=head.encode() + chunked + b"0\r\n\r\n", status=413))
    # Slow and truncated bodies: the endpoint waits BODY_TIMEOUT_SECONDS, then answers 408.
    cases.append(Case("body stalls after its headers", GOOD_BODY, stall_after=0, status=408))
    cases.append(Case("body truncated halfway", GOOD_BODY, stall_after=len(GOOD_BODY) // 2, status=408))
    # Broken HTTP.
    broken = [
        b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST " + PATH.encode() + b" HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"POST " + PATH.encode() + b" HTTP/1.1\r\nBad Header Line\r\n\r\n",
        b"GET " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"POST /no/such/route HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    ]
    cases += [Case(f"broken http {i}", raw=request) for i, request in enumerate(broken)]
    return cases


NAMED_CASES = _named_cases()


@pytest.fixture(scope="module")
def endpoint(serve: Callable[..., ServeProcess], store: Path) -> ServeProcess:
    endpoint = serve(store, "--body-timeout-seconds", str(BODY_TIMEOUT_SECONDS))
    good_answer(endpoint)  # loaded once, so every case reaches the model
    return endpoint


@pytest.mark.parametrize("serve", ["host"], indirect=True)
def test_every_named_bad_request_is_a_clean_4xx_and_the_endpoint_answers_the_next(endpoint: ServeProcess) -> None:
    assert len({case.name for case in NAMED_CASES}) == len(NAMED_CASES)
    failures = []
    for case in NAMED_CASES:
        answer = send(endpoint, case)
        try:
            assert_refused_cleanly(case, answer)
        except AssertionError as error:
            failures.append(str(error))
        good_answer(endpoint)
    assert not failures, "\n".join(failures)


_HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200)
_CONTENT_TYPES = (
    st.sampled_from(["application/json", "text/plain", "application/jsonlines", "text/csv", "application/octet-stream"])
    | _HEADER_TEXT
)
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)
_BODIES = (
    st.binary(max_size=3000)
    | st.text(max_size=500).map(lambda text: text.encode("utf-8", "surrogatepass"))
    | _JSON_VALUES.map(lambda value: json.dumps(value).encode())
    | st.fixed_dictionaries({"input_text": _JSON_VALUES}).map(lambda value: json.dumps(value).encode())
    | st.fixed_dictionaries({"inputs": _JSON_VALUES}).map(lambda value: json.dumps(value).encode())
)


@pytest.mark.parametrize("serve", ["host"], indirect=True)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(
    body=_BODIES,
    content_type=_CONTENT_TYPES,
    accept=st.none() | _HEADER_TEXT,
    attributes=st.none() | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=1100),
)
def test_any_body_and_headers_get_2xx_or_a_clean_4xx_and_the_endpoint_answers_the_next(
    endpoint: ServeProcess, body: bytes, content_type: str, accept: str | None, attributes: str | None
) -> None:
    headers: dict[str, str | None] = {"Content-Type": content_type, "Accept": accept}
    if attributes is not None:
        headers["X-Amzn-SageMaker-Custom-Attributes"] = attributes
    case = Case("drawn", body, headers)
    answer = send(endpoint, case)
    if answer.status != 200:
        assert_refused_cleanly(case, answer)
    good_answer(endpoint)


@pytest.mark.parametrize("serve", ["host"], indirect=True)
def test_no_log_holds_request_text(endpoint: ServeProcess) -> None:
    # Runs after the cases above: hundreds of requests carried the marker, good and bad.
    good_answer(endpoint)
    time.sleep(1)  # MMS writes its logs asynchronously
    logs = [path for path in endpoint.tmp_dir.rglob("*") if path.is_file() and endpoint.cache_dir not in path.parents]
    assert any(path.suffix == ".log" for path in logs), f"no logs found under {endpoint.tmp_dir}"
    holding = [str(path) for path in logs if MARKER.encode() in path.read_bytes()]
    assert not holding, f"request text in {holding}"
