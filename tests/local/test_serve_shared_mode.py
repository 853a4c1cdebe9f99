"""`mme serve --container-env MME_MODEL_HOST=shared` selects the shared model host, on the host and in the image."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from mme.serve_process import ServeProcess


def test_container_env_selects_shared_mode_and_models_answer(serve: Callable[..., ServeProcess], store: Path) -> None:
    endpoint = serve(store, "--container-env", "MME_MODEL_HOST=shared")
    answer = endpoint.client().invoke_endpoint(
        EndpointName="local", TargetModel="sentiment.tar.gz", ContentType="application/json",
        Body=json.dumps({"input_text": "awful, I hated it"}),
    )  # fmt: skip
    assert json.loads(answer["Body"].read())["label"] == "negative"
    # The container's log (its run folder lives under the serve's own temporary folder while it runs).
    [log] = endpoint.tmp_dir.glob("mme-serve-*/container/serve.log")
    assert "model host ready" in log.read_text(errors="replace")
