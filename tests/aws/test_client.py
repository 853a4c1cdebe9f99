"""Wake on demand from Python (mme/client.py): a sleeping stage is detected from the runtime's own answer, woken
through its stack, waited for, then invoked.

The control plane is moto; the runtime is a real local endpoint (`mme serve` on the demo models): first one that
does not know the stage's endpoint (SageMaker's "Endpoint ... not found" ValidationError, as while asleep), then,
when the client has flipped the switch, the test plays CloudFormation's part and starts the endpoint under its real
name on the same address.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto_stage import STACK, SWITCH, MotoStage

from mme.aws.endpoint_state import Progress
from mme.aws.names import ASLEEP, AWAKE
from mme.aws.runtime import runtime_client
from mme.client import EndpointAsleepError, StageClient
from mme.serve_process import DUMMY_CREDENTIALS, ServeProcess


@pytest.fixture
def asleep(moto_stage: MotoStage) -> MotoStage:
    moto_stage.client("ssm").put_parameter(Name=SWITCH, Value=ASLEEP, Type="String", Overwrite=True)
    moto_stage.delete_endpoint()
    return moto_stage


@pytest.fixture
def demo_models(demo_archives: dict[str, Path]) -> Path:
    """The folder holding sentiment.tar.gz and topic.tar.gz: the local endpoint's store."""
    (folder,) = {path.parent for path in demo_archives.values()}
    return folder


@pytest.fixture
def placeholder(demo_models: Path, tmp_path: Path) -> Iterator[list[ServeProcess]]:
    """A local endpoint that answers for another endpoint name; the list collects every endpoint started."""
    serves = [ServeProcess(demo_models, tmp_dir=tmp_path / "a", cache_dir=tmp_path / "cache",
                           options=["--endpoint-name", "placeholder"]).start()]  # fmt: skip
    try:
        yield serves
    finally:
        for serve in serves:
            serve.stop()


def _runtime(url: str) -> object:
    session = boto3.session.Session(region_name="us-east-1", **DUMMY_CREDENTIALS)
    return runtime_client(session, endpoint_url=url)


def test_without_wake_a_sleeping_stage_says_how_to_wake_it(asleep: MotoStage, placeholder: list[ServeProcess]) -> None:
    client = StageClient("dev", session=asleep.session, runtime=_runtime(placeholder[0].url))
    with pytest.raises(EndpointAsleepError) as raised:
        client.predict("sentiment.tar.gz", "I loved it")
    assert "mme wake --stage dev" in str(raised.value)
    assert "asleep" in str(raised.value)
    assert "UpdateStack" not in asleep.calls
    assert asleep.switch() == ASLEEP


def test_with_wake_the_client_wakes_the_stage_waits_and_predicts(
    asleep: MotoStage, placeholder: list[ServeProcess], tmp_path: Path, demo_models: Path
) -> None:
    first = placeholder[0]
    looks: list[Progress] = []

    def cloudformation_creates_the_endpoint(look: Progress) -> None:
        looks.append(look)
        if len(looks) == 1:
            assert asleep.switch() == AWAKE  # the client asked for it before waiting
            asleep.create_endpoint()
            first.stop()
            endpoint = ServeProcess(demo_models, tmp_dir=tmp_path / "b", cache_dir=tmp_path / "cache",
                                    options=["--endpoint-name", STACK])  # fmt: skip
            endpoint.port, endpoint.url = first.port, first.url
            placeholder.append(endpoint.start())

    client = StageClient(
        "dev",
        session=asleep.session,
        runtime=_runtime(first.url),
        wake=True,
        on_progress=cloudformation_creates_the_endpoint,
        poll_seconds=0.2,
    )
    answer = client.predict("sentiment.tar.gz", "I loved this film, it was wonderful")
    assert answer["label"] == "positive"
    assert set(answer["scores"]) == {"negative", "positive"}
    (update,) = asleep.calls["UpdateStack"]
    assert update["UsePreviousTemplate"] is True
    assert [look.state.endpoint_status for look in looks][-1] == "InService"
    assert json.loads(client.invoke("topic.tar.gz", '{"input_text": "a cheap flight"}'))["label"] == "travel"
