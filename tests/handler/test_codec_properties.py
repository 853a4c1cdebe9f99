"""Property-based tests of request decoding: whatever arrives, the answer is a decoded request or a 4xx naming the
problem, never another exception (which MMS would turn into a 5xx)."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handler.codec import JSON, JSON_LINES, TEXT, decode_request, response_type
from handler.errors import HandlerError

#: Content types as clients send them: the supported ones in odd spellings, and anything at all.
CONTENT_TYPES = st.one_of(
    st.sampled_from([JSON, JSON_LINES, TEXT, "application/jsonlines", "Application/JSON; charset=utf-8", "", None]),
    st.text(max_size=40),
)
#: Any JSON value, nested.
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
#: Request-shaped objects with wrong or odd values in the fields that matter.
REQUEST_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "input_text": JSON_VALUES | st.text(),
        "inputs": st.lists(st.text() | JSON_VALUES, max_size=6) | JSON_VALUES,
    },
)
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decodes_or_refuses(body: bytes | str | None, content_type: str | None) -> None:
    refusal: HandlerError | None = None
    try:
        decoded = decode_request(body, content_type, max_texts=16)
    except HandlerError as error:
        refusal = error
    if refusal is not None:
        assert 400 <= refusal.status < 500
        assert refusal.message
        return
    for record in decoded.records:
        for text in record.texts:
            assert isinstance(text, str)
            assert text.strip()
            text.encode("utf-8")  # what a tokenizer gets is always valid Unicode


@PROPERTY_SETTINGS
@given(body=st.binary(max_size=300), content_type=CONTENT_TYPES)
def test_any_bytes_with_any_content_type_decode_or_get_a_4xx(body: bytes, content_type: str | None) -> None:
    _decodes_or_refuses(body, content_type)


@PROPERTY_SETTINGS
@given(value=JSON_VALUES | REQUEST_LIKE, content_type=st.sampled_from([JSON, JSON_LINES, None]))
def test_any_json_value_decodes_or_gets_a_4xx(value: object, content_type: str | None) -> None:
    _decodes_or_refuses(json.dumps(value), content_type)


#: Any text, lone surrogates included (Hypothesis leaves them out unless asked).
ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=[]))


@PROPERTY_SETTINGS
@given(text=ANY_TEXT, escape=st.booleans())
def test_any_text_as_json_or_plain_text_decodes_or_gets_a_4xx(text: str, escape: bool) -> None:
    # `json.dumps` escapes lone surrogates as \\udXXX, which is how they arrive from a client.
    body = json.dumps({"input_text": text}, ensure_ascii=escape)
    _decodes_or_refuses(body.encode("utf-8", errors="surrogatepass"), JSON)
    _decodes_or_refuses(text.encode("utf-8", errors="surrogatepass"), TEXT)


@PROPERTY_SETTINGS
@given(depth=st.integers(min_value=1, max_value=20_000))
def test_any_nesting_depth_decodes_or_gets_a_4xx(depth: int) -> None:
    _decodes_or_refuses('{"input_text": ' + "[" * depth + "]" * depth + "}", JSON)


@PROPERTY_SETTINGS
@given(accept=st.text(max_size=60) | st.none())
def test_any_accept_header_is_answered_or_a_4xx(accept: str | None) -> None:
    decoded = decode_request(b'{"input_text": "fine"}', JSON, max_texts=4)
    refusal: HandlerError | None = None
    try:
        chosen = response_type(accept, decoded)
    except HandlerError as error:
        refusal = error
    if refusal is not None:
        assert refusal.status == 406
        return
    assert chosen in {JSON, JSON_LINES}
