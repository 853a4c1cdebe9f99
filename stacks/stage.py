"""One deployment stage: the model store stack and the endpoint stack that reads from it."""

from __future__ import annotations

from aws_cdk import Environment, Stage
from constructs import Construct

from stacks.endpoint import EndpointStack
from stacks.model_store import ModelStoreStack
from stacks.settings import StageSettings


def stack_name(settings: StageSettings, unit: str) -> str:
    """CloudFormation stack name of `unit` ("ModelStore" | "Endpoint") in a stage.

    The same in direct mode and in the pipeline, so switching from `cdk deploy` to the pipeline updates the existing
    stacks (and keeps the bucket) instead of creating new ones.
    """
    return f"Mme-{settings.name}-{unit}"


class ServingStage(Stage):
    """Model store + endpoint for one stage. Used directly by `app.py` or added to the pipeline.

    Props:
        settings: the stage's validated settings.
        env: where both stacks deploy (the pipeline passes its own when the stage names no account/region).
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, settings: StageSettings, env: Environment | None = None
    ) -> None:
        super().__init__(scope, construct_id, env=env)
        self.settings = settings
        self.model_store = ModelStoreStack(
            self, "ModelStore", settings=settings, stack_name=stack_name(settings, "ModelStore")
        )
        self.endpoint = EndpointStack(
            self,
            "Endpoint",
            settings=settings,
            stack_name=stack_name(settings, "Endpoint"),
        )
        self.endpoint.add_stack_dependency(self.model_store, "The endpoint reads models from the store's bucket")
