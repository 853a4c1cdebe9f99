"""The options every command on a deployed stage takes (`--stage`, `--owner`, `--region`), and the stage they name."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mme.aws.names import NAME_PATTERN, StageNames
from mme.aws.stage import OWNER_VARIABLE, DeployedStage, find_stage
from mme.cli.output import fail

StageOption = Annotated[str, typer.Option("--stage", help="Stage name from cdk.json, e.g. dev.")]
OwnerOption = Annotated[
    str,
    typer.Option(
        "--owner",
        envvar=OWNER_VARIABLE,
        help="Owner of a directly deployed stage (Mme-<owner>-<stage>-*); empty for a stage the pipeline deploys.",
    ),
]
RegionOption = Annotated[str | None, typer.Option("--region", help="AWS region; default from the AWS configuration.")]


def aws_session(region: str | None) -> Any:
    """A boto3 session in `region` (else the configured one); refuses to go on without a region."""
    import boto3

    session = boto3.session.Session(region_name=region)
    if session.region_name is None:
        raise fail("no AWS region: give --region or set AWS_REGION / AWS_DEFAULT_REGION")
    return session


def stage_names(stage: str, owner: str) -> StageNames:
    """The names of stage `stage` of `owner` ("" = the pipeline's), or a usage error naming the bad option."""
    for option, value in (("--stage", stage), ("--owner", owner)):
        if (value or option == "--stage") and not NAME_PATTERN.match(value):
            raise typer.BadParameter(
                f"{value!r}: lower-case letters, digits and '-', starting with a letter, at most 20 characters",
                param_hint=option,
            )
    return StageNames(stage=stage, owner=owner)


def deployed_stage(session: Any, stage: str, owner: str) -> DeployedStage:
    """The deployed stage named by the options (raises `StageNotFoundError` when it is not deployed)."""
    return find_stage(session, stage_names(stage, owner))
