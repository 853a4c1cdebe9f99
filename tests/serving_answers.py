"""Requests of every shape the codec reads, and comparing answers to a tolerance: for checking that two runtimes of
the container (per-worker and shared model host) answer alike."""

from __future__ import annotations

import json
from typing import Any

import pytest

#: Requests of every shape the codec reads, answered by both demo models.
REQUESTS: list[tuple[bytes, str, str | None]] = [
    (b'{"input_text": "I loved this film, it was wonderful"}', "application/json", None),
    (json.dumps({"inputs": ["the striker scored twice", "terrible service, I hated it"]}).encode(), "application/json",
     None),
    (b'{"input_text": "a"}\n{"inputs": ["cheap flight to the beach", "garlic and tomato sauce"]}',
     "application/jsonlines", None),
    (b'{"input_text": "a new laptop"}', "application/json", "application/jsonlines"),
    ("café au lait, très bien".encode(), "text/plain; charset=utf-8", None),
]  # fmt: skip


def assert_close(actual: Any, expected: Any, *, tolerance: float = 1e-5) -> None:
    """Equal JSON values, floats to ``tolerance``."""
    if isinstance(expected, float):
        assert actual == pytest.approx(expected, abs=tolerance)
    elif isinstance(expected, dict):
        assert isinstance(actual, dict)
        assert actual.keys() == expected.keys()
        for key, value in expected.items():
            assert_close(actual[key], value, tolerance=tolerance)
    elif isinstance(expected, list):
        assert isinstance(actual, list)
        assert len(actual) == len(expected)
        for got, want in zip(actual, expected, strict=True):
            assert_close(got, want, tolerance=tolerance)
    else:
        assert actual == expected


def parse(body: bytes, content_type: str) -> Any:
    if content_type.startswith("application/jsonlines"):
        return [json.loads(line) for line in body.decode().splitlines()]
    return json.loads(body)
