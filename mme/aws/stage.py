"""Find a deployed stage from its name: the SSM parameters its stacks publish (`mme.aws.names`).

Every `mme` command that works on a stage (`--stage dev`, with `--owner` for a direct deploy) starts here, so a stage
is found the same way everywhere, and a missing one fails with what to deploy or which option to fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from handler.telemetry.names import CAPTURE_PREFIX
from mme import MmeError
from mme.aws.names import (
    BUCKET_PARAMETER,
    CAPTURE_PREFIX_PARAMETER,
    ENDPOINT_NAME_PARAMETER,
    ENDPOINT_STATE_PARAMETER,
    ENDPOINT_UNIT,
    MODEL_PREFIX_PARAMETER,
    MODEL_STORE_UNIT,
    StageNames,
)

#: Environment variable naming the owner of directly deployed stages, for `--owner`'s default.
OWNER_VARIABLE = "MME_OWNER"
#: The capture prefix of a stage whose store does not publish one (deployed before `CAPTURE_PREFIX_PARAMETER`
#: existed): a stage's default `capture_prefix` (stacks/settings.py).
DEFAULT_CAPTURE_PREFIX = f"{CAPTURE_PREFIX}/"


class StageNotFoundError(MmeError):
    """The stage's model store is not deployed in this account and region (or under that owner)."""


@dataclass(frozen=True, kw_only=True)
class DeployedStage:
    """Where a stage's models live and what its endpoint is called, as its stacks published them.

    `endpoint_name` is None while the endpoint stack does not exist (never deployed, or destroyed).
    `capture_prefix` is where in the bucket the endpoint captures requests (`DEFAULT_CAPTURE_PREFIX` for a store
    that does not publish it).
    """

    names: StageNames
    region: str
    bucket: str
    model_prefix: str
    capture_prefix: str
    endpoint_name: str | None

    @property
    def model_store_stack(self) -> str:
        """Name of the stage's model store stack."""
        return self.names.stack_name(MODEL_STORE_UNIT)

    @property
    def endpoint_stack(self) -> str:
        """Name of the stage's endpoint stack."""
        return self.names.stack_name(ENDPOINT_UNIT)

    @property
    def switch_parameter(self) -> str:
        """The stage's sleep switch (`<ssm_prefix>/endpoint-state`)."""
        return f"{self.names.ssm_prefix}/{ENDPOINT_STATE_PARAMETER}"

    def model_key(self, target_model: str) -> str:
        """The S3 key SageMaker loads for `target_model`."""
        return f"{self.model_prefix}{target_model}"


def _parameter(ssm: Any, name: str) -> str | None:
    try:
        return str(ssm.get_parameter(Name=name)["Parameter"]["Value"])
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ParameterNotFound":
            return None
        raise


def find_stage(session: Any, names: StageNames, *, ssm_prefix: str | None = None) -> DeployedStage:
    """Read the stage's parameters under `ssm_prefix` (default: the names' own) with a boto3 `session`.

    The capture prefix parameter is optional: a store stack last deployed before it existed is taken to capture
    under the default (`DEFAULT_CAPTURE_PREFIX`); deploying that stack again publishes its real prefix.

    Raises `StageNotFoundError` when the model store's parameters are missing, naming the stack to deploy and the
    region and owner looked in.
    """
    prefix = ssm_prefix or names.ssm_prefix
    ssm = session.client("ssm")
    bucket = _parameter(ssm, f"{prefix}/{BUCKET_PARAMETER}")
    model_prefix = _parameter(ssm, f"{prefix}/{MODEL_PREFIX_PARAMETER}")
    region = str(ssm.meta.region_name)
    if bucket is None or model_prefix is None:
        owner_hint = (
            f"owner {names.owner!r}" if names.owner else "no owner (a pipeline stage; give --owner for a direct deploy)"
        )
        raise StageNotFoundError(
            f"stage {names.stage!r} is not deployed in {region} with {owner_hint}: no SSM parameter "
            f"{prefix}/{BUCKET_PARAMETER}. Deploy {names.stack_name(MODEL_STORE_UNIT)} (README, 'Deploying to AWS'), "
            "or check --stage, --owner and --region"
        )
    return DeployedStage(
        names=names,
        region=region,
        bucket=bucket,
        model_prefix=model_prefix,
        capture_prefix=_parameter(ssm, f"{prefix}/{CAPTURE_PREFIX_PARAMETER}") or DEFAULT_CAPTURE_PREFIX,
        endpoint_name=_parameter(ssm, f"{prefix}/{ENDPOINT_NAME_PARAMETER}"),
    )
