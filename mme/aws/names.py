"""The names a deployed stage is found by: stack names and SSM parameters.

One home for them, with no CDK import, so the CDK app (`stacks/`) that creates them and the `mme` commands that
look them up cannot disagree.

A stage the pipeline deploys is shared and has no owner: `Mme-prod-Endpoint`, `/mme/prod/...`. A stage deployed
directly with `cdk deploy` belongs to whoever deployed it (`owner`, by default the OS user name), so two people
in one account never overwrite each other and never touch the pipeline's stacks: `Mme-alice-dev-Endpoint`,
`/mme/alice/dev/...`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: First segment of every stack name of this app.
STACK_NAME_PREFIX = "Mme"
#: Stage and owner names: lower-case, so they fit S3, SSM and SageMaker naming alike, and short enough that
#: `Mme-<owner>-<stage>-ModelStore` stays within SageMaker's 63-character endpoint names.
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,19}\Z")
#: The stacks of a stage (`unit` of `StageNames.stack_name`).
MODEL_STORE_UNIT = "ModelStore"
ENDPOINT_UNIT = "Endpoint"
#: SSM parameters under a stage's prefix (a contract between the stacks and the `mme` CLI).
BUCKET_PARAMETER = "bucket"
KEY_ARN_PARAMETER = "key-arn"
MODEL_PREFIX_PARAMETER = "model-prefix"
#: Where the endpoint captures requests in the bucket (the stage setting `capture_prefix`, e.g. "capture/"). A store
#: deployed before this parameter existed lacks it; readers then assume the default (`mme.aws.stage`).
CAPTURE_PREFIX_PARAMETER = "capture-prefix"
ENDPOINT_NAME_PARAMETER = "endpoint-name"
#: The stage's sleep switch: `AWAKE` or `ASLEEP`. The endpoint stack reads it as an SSM-typed stack parameter on every
#: create and update, whoever runs it (`cdk deploy`, the pipeline, `mme sleep`/`wake`, idle auto-sleep), so every path
#: agrees on whether the endpoint should exist.
ENDPOINT_STATE_PARAMETER = "endpoint-state"
AWAKE = "awake"
ASLEEP = "asleep"
#: "true" while a stage's wake schedule keeps it awake (between its scheduled wake and sleep): idle auto-sleep leaves
#: it alone then. Written by the schedule's function; absent means "false".
KEEP_AWAKE_PARAMETER = "keep-awake"


@dataclass(frozen=True, kw_only=True)
class StageNames:
    """Names of one stage. `owner` "" = the pipeline's shared stage; otherwise a direct deploy's owner."""

    stage: str
    owner: str = ""

    def __post_init__(self) -> None:
        for what, value in (("stage", self.stage), ("owner", self.owner)):
            if (value or what == "stage") and not NAME_PATTERN.match(value):
                raise ValueError(
                    f"{what} name {value!r}: allowed: lower-case letters, digits and '-', starting with a letter, "
                    "at most 20 characters"
                )

    @property
    def qualified(self) -> str:
        """`<owner>-<stage>`, or `<stage>` for a pipeline stage."""
        return f"{self.owner}-{self.stage}" if self.owner else self.stage

    def stack_name(self, unit: str) -> str:
        """CloudFormation stack name of `unit` (`MODEL_STORE_UNIT` | `ENDPOINT_UNIT`), e.g. `Mme-alice-dev-Endpoint`."""
        return f"{STACK_NAME_PREFIX}-{self.qualified}-{unit}"

    @property
    def ssm_prefix(self) -> str:
        """Default SSM path of the stage's parameters, e.g. `/mme/alice/dev` (a stage setting may override it)."""
        return "/mme/" + "/".join(part for part in (self.owner, self.stage) if part)


def owner_from_user_name(user: str) -> str:
    """A valid owner name made from an OS user name ("Alice.Smith" -> "alice-smith"), or "" if none can be made."""
    name = re.sub(r"[^a-z0-9-]+", "-", user.lower()).strip("-")
    name = name.lstrip("0123456789-")[:20].rstrip("-")
    return name if NAME_PATTERN.match(name) else ""
