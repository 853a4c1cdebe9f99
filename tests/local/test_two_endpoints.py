"""Two `mme serve` on one host never touch each other: stopping one leaves the other serving (each container's
entrypoint waits on, and stops, its own MMS, not whichever MMS the machine runs)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from mme.serve_process import ServeProcess

BODY = json.dumps({"input_text": "I loved this film"})


def _label(endpoint: ServeProcess) -> str:
    answer = endpoint.client().invoke_endpoint(
        EndpointName="local", TargetModel="sentiment.tar.gz", ContentType="application/json", Body=BODY
    )
    return str(json.loads(answer["Body"].read())["label"])


def test_stopping_one_endpoint_leaves_the_other_serving(serve: Callable[..., ServeProcess], store: Path) -> None:
    first = serve(store)
    second = serve(store)
    assert _label(first) == _label(second) == "positive"
    assert first.stop() == 0
    assert _label(second) == "positive"
    # And the other way round, with the second's container started after the first's.
    third = serve(store)
    assert second.stop() == 0
    assert _label(third) == "positive"
