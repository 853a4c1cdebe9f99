"""One deployment stage: the model store stack and the endpoint stack that reads from it."""

from __future__ import annotations

from aws_cdk import Environment, Stage
from constructs import Construct

from mme.aws.names import ENDPOINT_UNIT, MODEL_STORE_UNIT
from stacks.endpoint import EndpointStack
from stacks.model_store import ModelStoreStack
from stacks.pipeline_steps import StagePostDeployRole
from stacks.settings import StageSettings


class ServingStage(Stage):
    """Model store + endpoint for one stage. Used directly by `app.py` or added to the pipeline.

    Props:
        settings: the stage's validated settings.
        env: where both stacks deploy (the pipeline passes its own when the stage names no account/region).
        pipeline_account: set by the pipeline (its own account): the endpoint stack then also holds the role the
            pipeline's post-deploy steps assume in this stage's account (`post_deploy_role`). Default None: no role.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: StageSettings,
        env: Environment | None = None,
        pipeline_account: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id, env=env)
        self.settings = settings
        self.model_store = ModelStoreStack(
            self, "ModelStore", settings=settings, stack_name=settings.names.stack_name(MODEL_STORE_UNIT)
        )
        self.endpoint = EndpointStack(
            self,
            "Endpoint",
            settings=settings,
            store_stack_name=self.model_store.stack_name,
            stack_name=settings.names.stack_name(ENDPOINT_UNIT),
        )
        self.endpoint.add_stack_dependency(self.model_store, "The endpoint reads models from the store's bucket")
        self.post_deploy_role: StagePostDeployRole | None = None
        if pipeline_account is not None:
            self.post_deploy_role = StagePostDeployRole(
                self.endpoint,
                "PostDeployRole",
                pipeline_account=pipeline_account,
                endpoint_name=self.endpoint.serving.endpoint_name if settings.smoke_test_target_model else None,
                switch_parameter=self.endpoint.switch.switch_parameter,
                protected_stacks=[s for s in (self.model_store, self.endpoint) if s.termination_protection],
            )
