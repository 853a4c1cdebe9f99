"""Request decoding and response encoding, without a model or MMS."""

from __future__ import annotations

import json

import pytest

from handler.codec import (
    JSON,
    JSON_LINES,
    Prediction,
    decode_request,
    encode_error,
    encode_response,
    response_type,
)
from handler.errors import BadRequestError, NotAcceptableError, UnsupportedContentTypeError


def _prediction(label: str) -> Prediction:
    return Prediction(label=label, scores={label: 1.0}, output=[1.0])


def test_input_text_is_one_single_record() -> None:
    request = decode_request(b'{"input_text": "hello"}', "application/json; charset=utf-8", max_texts=4)
    assert request.texts == ["hello"]
    assert request.records[0].single


def test_inputs_list_is_answered_with_a_list() -> None:
    request = decode_request(json.dumps({"inputs": ["a", "b"]}), JSON, max_texts=4)
    body = json.loads(encode_response([_prediction("x"), _prediction("y")], request, JSON))
    assert [item["label"] for item in body] == ["x", "y"]


def test_json_lines_answers_every_line_in_order() -> None:
    body = b'{"input_text": "a"}\n\n{"inputs": ["b", "c"]}\n'
    request = decode_request(body, "application/jsonlines", max_texts=4)
    assert request.texts == ["a", "b", "c"]
    accept = response_type(None, request)
    assert accept == JSON_LINES
    lines = encode_response([_prediction("1"), _prediction("2"), _prediction("3")], request, accept).splitlines()
    assert json.loads(lines[0])["label"] == "1"
    assert [item["label"] for item in json.loads(lines[1])] == ["2", "3"]


def test_json_lines_request_may_ask_for_one_json_array() -> None:
    request = decode_request(b'{"input_text": "a"}\n{"input_text": "b"}', JSON_LINES, max_texts=4)
    body = json.loads(encode_response([_prediction("1"), _prediction("2")], request, response_type(JSON, request)))
    assert [item["label"] for item in body] == ["1", "2"]


def test_plain_text_is_one_text() -> None:
    assert decode_request(b"just words", "text/plain", max_texts=1).texts == ["just words"]


def test_missing_content_type_defaults_to_json() -> None:
    assert decode_request(b'{"input_text": "x"}', None, max_texts=1).texts == ["x"]


@pytest.mark.parametrize(
    ("body", "content_type", "fragment"),
    [
        (b"{not json", JSON, "not valid JSON"),
        (b'{"text": "x"}', JSON, 'no "input_text" or "inputs"'),
        (b'{"input_text": 3}', JSON, "must be a string"),
        (b'{"input_text": "   "}', JSON, "is empty"),
        (b'{"inputs": []}', JSON, "empty list"),
        (b'{"inputs": ["ok", 7]}', JSON, '"inputs"[1] must be a string'),
        (b'{"inputs": {"a": 1}}', JSON, "must be a list"),
        (b'["x"]', JSON, "must be a JSON object"),
        (b'{"input_text": "a", "inputs": ["b"]}', JSON, "both"),
        (b"", JSON, "body is empty"),
        (b'{"input_text": "a"}\nnope', JSON_LINES, "line 2 is not valid JSON"),
        (b"\xff\xfe", "text/plain", "not UTF-8"),
        # A lone surrogate, as JSON can escape it: once a 503 from the tokenizer.
        (b'{"input_text": "\\ud800"}', JSON, "lone surrogate '\\ud800' at position 0"),
        (b'{"inputs": ["fine", "a\\udfffb"]}', JSON, '"inputs"[1] is not valid Unicode'),
        # Nested about 1000 deep: once a RecursionError and a 503.
        (b'{"input_text": ' + b"[" * 5000 + b"]" * 5000 + b"}", JSON, "nested too deeply"),
        (b"[" * 100_000, JSON, "nested too deeply"),
    ],
)
def test_bad_bodies_are_rejected_with_a_message_naming_the_problem(
    body: bytes, content_type: str, fragment: str
) -> None:
    with pytest.raises(BadRequestError) as caught:
        decode_request(body, content_type, max_texts=4)
    assert fragment in caught.value.message
    assert caught.value.status == 400


def test_too_many_texts_is_a_400_naming_the_limit() -> None:
    with pytest.raises(BadRequestError, match="at most 2"):
        decode_request(json.dumps({"inputs": ["a", "b", "c"]}), JSON, max_texts=2)


def test_unsupported_content_type_is_415() -> None:
    with pytest.raises(UnsupportedContentTypeError) as caught:
        decode_request(b"<x/>", "application/xml", max_texts=1)
    assert caught.value.status == 415
    assert "application/xml" in caught.value.message


def test_unsupported_accept_is_406() -> None:
    request = decode_request(b'{"input_text": "x"}', JSON, max_texts=1)
    with pytest.raises(NotAcceptableError) as caught:
        response_type("text/csv", request)
    assert caught.value.status == 406


def test_accept_picks_the_first_supported_type() -> None:
    request = decode_request(b'{"input_text": "x"}', JSON, max_texts=1)
    assert response_type("text/csv, application/jsonlines;q=0.5", request) == JSON_LINES
    assert response_type("*/*", request) == JSON


def test_error_body_is_json_with_the_message() -> None:
    assert json.loads(encode_error("bad thing")) == {"error": "bad thing"}
