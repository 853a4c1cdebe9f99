"""`mme status`, `mme sleep`, `mme wake` and `mme invoke`'s stage options, against a stage in moto."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from moto_stage import SWITCH, MotoStage
from typer.testing import CliRunner

from mme.aws.names import ASLEEP, AWAKE
from mme.cli import app

RUNNER = CliRunner()


@contextmanager
def cloudformation_acting(stage: MotoStage, when: str, act: Callable[[], None]) -> Iterator[None]:
    """CloudFormation's part, which moto does not play: once the switch reads `when`, do `act` (in the background,
    while the command waits)."""
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if stage.switch() == when:
                act()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=5)


def test_status_shows_the_switch_the_stack_and_the_endpoint(moto_stage: MotoStage) -> None:
    result = RUNNER.invoke(app, ["status", "--stage", "dev"])
    assert result.exit_code == 0, result.output
    assert "stage:    dev (eu-west-1)" in result.output
    assert "models:   s3://models-bucket/models/" in result.output
    assert "Mme-dev-Endpoint: awake (stack CREATE_COMPLETE; endpoint InService, 1 instance(s))" in result.output


def test_sleep_then_wake_go_through_the_stack_and_wait_for_the_endpoint(
    moto_stage: MotoStage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stage's own session, which records each request the commands send (moto answers the stack update with
    # "No updates", so the request is what shows that one was asked for).
    monkeypatch.setattr("mme.cli.endpoint.aws_session", lambda region: moto_stage.session)
    with cloudformation_acting(moto_stage, ASLEEP, moto_stage.delete_endpoint):
        result = RUNNER.invoke(app, ["sleep", "--stage", "dev", "--poll", "0.2", "--timeout", "60"])
    assert result.exit_code == 0, result.output
    assert "asleep (stack CREATE_COMPLETE; endpoint none)" in result.output
    assert moto_stage.switch() == ASLEEP

    again = RUNNER.invoke(app, ["sleep", "--stage", "dev"])
    assert again.exit_code == 0
    assert "already asleep" in again.output
    assert len(moto_stage.calls["UpdateStack"]) == 1

    with cloudformation_acting(moto_stage, AWAKE, moto_stage.create_endpoint):
        result = RUNNER.invoke(app, ["wake", "--stage", "dev", "--poll", "0.2", "--timeout", "60"])
    assert result.exit_code == 0, result.output
    assert "awake (stack CREATE_COMPLETE; endpoint InService" in result.output
    assert moto_stage.switch() == AWAKE
    assert len(moto_stage.calls["UpdateStack"]) == 2


def test_a_wake_that_never_arrives_gives_up_clearly(moto_stage: MotoStage) -> None:
    moto_stage.client("ssm").put_parameter(Name=SWITCH, Value=ASLEEP, Type="String", Overwrite=True)
    moto_stage.delete_endpoint()
    result = RUNNER.invoke(app, ["wake", "--stage", "dev", "--poll", "0.2", "--timeout", "1"])
    assert result.exit_code == 2
    assert "gave up waiting" in result.output
    assert "Traceback" not in result.output


def test_a_stage_that_is_not_deployed_names_what_to_deploy(moto_stage: MotoStage) -> None:
    result = RUNNER.invoke(app, ["status", "--stage", "qa"])
    assert result.exit_code == 2
    assert "stage 'qa' is not deployed in eu-west-1" in result.output
    assert "Mme-qa-ModelStore" in result.output
    owned = RUNNER.invoke(app, ["sleep", "--stage", "dev", "--owner", "alice"])
    assert owned.exit_code == 2
    assert "owner 'alice'" in owned.output


def test_invoke_names_its_target_one_way_and_wakes_only_a_stage(moto_stage: MotoStage) -> None:
    both = RUNNER.invoke(app, ["invoke", "--model", "m.tar.gz", "--text", "hi", "--endpoint", "e", "--stage", "dev"])
    assert both.exit_code == 2
    assert "exactly one of --endpoint" in both.output
    wake = RUNNER.invoke(app, ["invoke", "--model", "m.tar.gz", "--text", "hi", "--endpoint", "e", "--wake"])
    assert wake.exit_code == 2
    assert "--wake needs --stage" in wake.output
