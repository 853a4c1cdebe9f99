#!/usr/bin/env python3
"""CDK app entry point: read context and environment once, validate, compose the stacks.

With `repository` + `connection_arn` in the context it synthesizes the self-mutating pipeline (`MmePipeline`),
which deploys every stage; without them (or with `-c direct=true`) it synthesizes each stage's stacks directly for
`cdk deploy`, named after their owner (`-c owner=...`, default the OS user) so they never collide with another
developer's stacks or with the pipeline's.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping

from aws_cdk import App, Environment, Validations
from cdk_nag import AwsSolutionsChecks

from stacks.pipeline import PipelineStack
from stacks.settings import AppSettings, load_app_settings
from stacks.stage import ServingStage

PIPELINE_STACK_ID = "MmePipeline"


def compose(app: App, settings: AppSettings, *, default_env: Environment) -> None:
    """Add the pipeline (or the stages directly) to `app` and register the cdk-nag AwsSolutions checks.

    `default_env` is where stages without their own account/region go (the CLI's credentials).
    """
    if settings.pipeline.enabled:
        PipelineStack(app, PIPELINE_STACK_ID, pipeline=settings.pipeline, stages=settings.stages, env=default_env)
    else:
        for stage in settings.stages:
            ServingStage(
                app,
                f"Mme{stage.name.capitalize()}",
                settings=stage,
                env=Environment(
                    account=stage.account or default_env.account, region=stage.region or default_env.region
                ),
            )
    # cdk-nag 3 runs as a policy-validation plugin, which (unlike 2.x Aspects) also reaches pipeline stages.
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))


def default_environment(environ: Mapping[str, str]) -> Environment:
    """The CLI's account/region (set by `cdk` from the credentials), or env-agnostic when there are none."""
    return Environment(
        account=environ.get("CDK_DEFAULT_ACCOUNT") or None, region=environ.get("CDK_DEFAULT_REGION") or None
    )


def os_user_name() -> str:
    """Who runs `cdk` (the login name from the environment, else the password database): the default owner of
    directly deployed stages; "" when neither says."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a uid with no passwd entry, as in some containers
        return ""


def main() -> None:
    """Entry point for `cdk synth`/`cdk deploy` (cdk.json: `.venv/bin/python app.py`)."""
    app = App()
    settings = load_app_settings(app.node.get_all_context(), user_name=os_user_name())
    compose(app, settings, default_env=default_environment(os.environ))
    app.synth()


if __name__ == "__main__":
    main()
