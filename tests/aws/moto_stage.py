"""A deployed stage in moto (imported by conftest.py and the tests): names, the stand-in stack, `MotoStage`.

moto's CloudFormation does not model what a sleep changes (it keeps a resource whose Condition turns false, and it
does not notice a changed SSM parameter value on an update with the previous template: see ../shared/DESIGN.md), so
the endpoint stack here is a small stand-in template with the same parameter and condition, and the endpoint is
created through SageMaker's API under its real name. Tests assert the calls `mme` makes and the state moto keeps;
where CloudFormation would act, a test does what CloudFormation does (delete or create the endpoint) and says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mme.aws.names import StageNames

REGION = "eu-west-1"
NAMES = StageNames(stage="dev")
STACK = NAMES.stack_name("Endpoint")
SWITCH = f"{NAMES.ssm_prefix}/endpoint-state"
KEEP_AWAKE = f"{NAMES.ssm_prefix}/keep-awake"
#: What the model store stack publishes under the stage's prefix, by parameter name. The capture prefix is not the
#: default, so a reader that assumed the default instead of reading it would be caught.
STORE_PARAMETERS = {"bucket": "models-bucket", "model-prefix": "models/", "capture-prefix": "requests/"}

#: The endpoint stack's parameter and condition as the CDK app writes them (tests/stacks pins the real template).
STAND_IN_TEMPLATE = {
    "Parameters": {"EndpointState": {"Type": "AWS::SSM::Parameter::Value<String>", "Default": SWITCH}},
    "Conditions": {"EndpointAwake": {"Fn::Equals": [{"Ref": "EndpointState"}, "awake"]}},
    "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
}


@dataclass
class MotoStage:
    """Clients on the mocked account, and every request `mme` sent, by operation name."""

    session: Any
    calls: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # On the session, so the clients `mme` makes from it record their requests too.
        def record(params: dict[str, Any], model: Any, **_: Any) -> None:
            self.calls.setdefault(model.name, []).append(params)

        self.session.events.register("provide-client-params", record)

    def client(self, service: str) -> Any:
        return self.session.client(service)

    def create_endpoint(self) -> None:
        """What CloudFormation does when the switch turns "awake": create the endpoint (moto: InService at once)."""
        sagemaker = self.session.client("sagemaker")
        sagemaker.create_endpoint(EndpointName=STACK, EndpointConfigName="config")

    def delete_endpoint(self) -> None:
        """What CloudFormation does when the switch turns "asleep": delete the endpoint."""
        self.session.client("sagemaker").delete_endpoint(EndpointName=STACK)

    def switch(self) -> str:
        return str(self.session.client("ssm").get_parameter(Name=SWITCH)["Parameter"]["Value"])
