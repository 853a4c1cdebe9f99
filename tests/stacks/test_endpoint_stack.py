"""Endpoint stack: MultiModel contract, least-privilege roles, logs, autoscaling and alarms."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Match, Template
from cdk_synth import REPO_ROOT, Synthesized, synth_app

#: What the dev endpoint stack imports from the dev model store stack.
BUCKET_NAME = {"Fn::ImportValue": "Mme-dev-ModelStore:ModelBucketName"}
KEY_ARN = {"Fn::ImportValue": "Mme-dev-ModelStore:ModelStoreKeyArn"}
#: Capture on through a per-model share alone (the stage's own share stays 0).
CAPTURE_BY_OVERRIDE = {
    "capture_model_percent": {"sentiment.tar.gz": 100, "topic.tar.gz": 0},
    "capture_content": "inputs",
    "capture_max_record_kb": 64,
}

#: The only actions allowed on Resource "*", per role: none supports a resource known at synth (see the stacks).
DOCUMENTED_STAR_ACTIONS = {
    "ServingExecutionRole": {"ecr:GetAuthorizationToken", "cloudwatch:PutMetricData"},
    "AutoscalingFunctionRole": {
        "application-autoscaling:DescribeScalableTargets",
        "application-autoscaling:DescribeScalingPolicies",
    },
}


def _role_statements(template: Template, role: str = "ServingExecutionRole") -> list[dict[str, Any]]:
    """Statements of the policies attached to the role whose logical ID starts with `role`."""
    statements: list[dict[str, Any]] = []
    for policy in template.find_resources("AWS::IAM::Policy").values():
        (attached,) = policy["Properties"]["Roles"]
        if attached["Ref"].startswith(role):
            statements += policy["Properties"]["PolicyDocument"]["Statement"]
    return statements


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def _environment(template: Template) -> dict[str, Any]:
    (model,) = template.find_resources("AWS::SageMaker::Model").values()
    return dict(model["Properties"]["PrimaryContainer"]["Environment"])


def _capture_statements(template: Template) -> dict[str, dict[str, Any]]:
    """Statements of the execution role that write or encrypt anything, by Sid."""
    writes = ("s3:Put", "s3:Delete", "kms:Encrypt", "kms:GenerateDataKey", "kms:ReEncrypt")
    return {s.get("Sid", ""): s for s in _role_statements(template) if any(a.startswith(writes) for a in _actions(s))}


@pytest.fixture(scope="module")
def capture_synth(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    return synth_app(tmp_path_factory.mktemp("capture"), {"stages": {"dev": CAPTURE_BY_OVERRIDE}})


@pytest.fixture(scope="module")
def capture_endpoint(capture_synth: Synthesized) -> Template:
    return capture_synth.template(capture_synth.stage("dev").endpoint)


def _flat(value: Any) -> str:
    """Flatten an intrinsic to a comparable string (Fn::Join parts concatenated, refs as <Id>)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Join" in value:
        sep, parts = value["Fn::Join"]
        return sep.join(_flat(p) for p in parts)
    if isinstance(value, dict) and "Ref" in value:
        return f"<{value['Ref']}>"
    if isinstance(value, dict) and "Fn::ImportValue" in value:
        return f"<import:{value['Fn::ImportValue']}>"
    return repr(value)


def test_model_is_multimodel_on_the_prefix_with_network_isolation(dev_endpoint: Template) -> None:
    models = dev_endpoint.find_resources("AWS::SageMaker::Model")
    assert len(models) == 1
    props = next(iter(models.values()))["Properties"]
    assert "ModelName" not in props
    assert props["EnableNetworkIsolation"] is True
    container = props["PrimaryContainer"]
    assert container["Mode"] == "MultiModel"
    assert container["MultiModelConfig"] == {"ModelCacheSetting": "Enabled"}
    assert _flat(container["ModelDataUrl"]) == "s3://<import:Mme-dev-ModelStore:ModelBucketName>/models/"
    assert container["Environment"]["SAGEMAKER_MODEL_SERVER_WORKERS"] == "1"
    assert container["Environment"]["MME_MAX_TEXTS_PER_REQUEST"] == "64"
    assert "ecr" in _flat(container["Image"]) or "Fn::Sub" in container["Image"]


def test_endpoint_config_sets_instances_volume_timeouts_and_kms(dev_endpoint: Template) -> None:
    dev_endpoint.has_resource_properties(
        "AWS::SageMaker::EndpointConfig",
        {
            "KmsKeyId": Match.any_value(),
            "ProductionVariants": [
                Match.object_like(
                    {
                        "VariantName": "AllTraffic",
                        "InstanceType": "ml.m5.large",
                        "InitialInstanceCount": 1,
                        "VolumeSizeInGB": 30,
                        "ModelDataDownloadTimeoutInSeconds": 600,
                        "ContainerStartupHealthCheckTimeoutInSeconds": 600,
                    }
                )
            ],
        },
    )
    config = next(iter(dev_endpoint.find_resources("AWS::SageMaker::EndpointConfig").values()))["Properties"]
    assert "EndpointConfigName" not in config
    assert "DataCaptureConfig" not in config  # SageMaker refuses it on multi-model endpoints


def test_updates_keep_the_live_instance_count(dev_endpoint: Template) -> None:
    dev_endpoint.has_resource_properties("AWS::SageMaker::Endpoint", {"RetainAllVariantProperties": True})


@pytest.mark.parametrize("role", sorted(DOCUMENTED_STAR_ACTIONS))
def test_no_wildcard_actions_and_star_only_for_documented_actions(dev_endpoint: Template, role: str) -> None:
    statements = _role_statements(dev_endpoint, role)
    assert statements
    for statement in statements:
        for action in _actions(statement):
            assert "*" not in action, statement
        if statement["Resource"] == "*":
            assert set(_actions(statement)) <= DOCUMENTED_STAR_ACTIONS[role], statement


def test_metrics_permission_is_namespace_conditioned(dev_endpoint: Template) -> None:
    (statement,) = [s for s in _role_statements(dev_endpoint) if "cloudwatch:PutMetricData" in _actions(s)]
    assert statement["Condition"] == {"StringEquals": {"cloudwatch:namespace": "/aws/sagemaker/Endpoints"}}


def test_role_reads_only_the_model_prefix(dev_endpoint: Template) -> None:
    statements = _role_statements(dev_endpoint)
    (get,) = [s for s in statements if "s3:GetObject" in _actions(s)]
    assert _flat(get["Resource"]).endswith("/models/*")
    (listing,) = [s for s in statements if "s3:ListBucket" in _actions(s)]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["models/", "models/*"]}}
    assert not any(a.startswith("s3:Put") or a.startswith("s3:Delete") for s in statements for a in _actions(s))
    (decrypt,) = [s for s in statements if "kms:Decrypt" in _actions(s)]
    assert "kms:ViaService" in decrypt["Condition"]["StringEquals"]


def test_the_endpoint_log_group_is_created_with_retention_and_the_role_writes_to_it(
    synthesized: Synthesized, dev_endpoint: Template
) -> None:
    name = synthesized.stage("dev").endpoint.serving.endpoint_name
    (log_group_id,) = [
        logical_id
        for logical_id, group in dev_endpoint.find_resources("AWS::Logs::LogGroup").items()
        if group["Properties"].get("LogGroupName") == f"/aws/sagemaker/Endpoints/{name}"
    ]
    group = dev_endpoint.to_json()["Resources"][log_group_id]
    assert group["Properties"]["RetentionInDays"] == 30
    assert group["DeletionPolicy"] == "Delete"
    # CloudWatch Logs authorizes these on `log-group:NAME:*`, which is the group's Arn attribute.
    (statement,) = [s for s in _role_statements(dev_endpoint) if any(a.startswith("logs:") for a in _actions(s))]
    assert sorted(_actions(statement)) == [
        "logs:CreateLogGroup",
        "logs:CreateLogStream",
        "logs:DescribeLogStreams",
        "logs:PutLogEvents",
    ]
    assert statement["Resource"] == {"Fn::GetAtt": [log_group_id, "Arn"]}
    # Created before the endpoint, or SageMaker would create it first (no retention) and the stack's create fail.
    (endpoint,) = dev_endpoint.find_resources("AWS::SageMaker::Endpoint").values()
    assert log_group_id in endpoint["DependsOn"]


def test_nothing_in_the_endpoint_stack_outlives_it(tmp_path_factory: Any) -> None:
    from cdk_synth import synth_app

    # With alarm_email, the topic's KMS key too (a retained key would bill every destroy and redeploy).
    synthesized = synth_app(tmp_path_factory.mktemp("email"), {"stages": {"dev": {"alarm_email": "ops@example.com"}}})
    template = synthesized.template(synthesized.stage("dev").endpoint)
    resources = template.to_json()["Resources"]
    assert any(r["Type"] == "AWS::KMS::Key" for r in resources.values())
    for logical_id, resource in resources.items():
        assert resource.get("DeletionPolicy", "Delete") == "Delete", logical_id
    template.has_resource_properties("AWS::SNS::Topic", {"KmsMasterKeyId": Match.any_value()})
    template.has_resource_properties("AWS::SNS::Subscription", {"Protocol": "email", "Endpoint": "ops@example.com"})
    alarms = template.find_resources("AWS::CloudWatch::Alarm")
    assert all(a["Properties"]["AlarmActions"] for a in alarms.values())


def test_image_pull_is_limited_to_the_asset_repository(dev_endpoint: Template) -> None:
    (pull,) = [s for s in _role_statements(dev_endpoint) if "ecr:BatchGetImage" in _actions(s)]
    assert "container-assets" in _flat(pull["Resource"])


def _custom_resources(template: Template, resource_type: str) -> dict[str, Any]:
    return template.find_resources(resource_type)


def test_autoscaling_is_owned_by_two_custom_resources_around_the_endpoint(dev_endpoint: Template) -> None:
    ((release_id, release),) = _custom_resources(dev_endpoint, "Custom::EndpointScalingRelease").items()
    ((scaling_id, scaling),) = _custom_resources(dev_endpoint, "Custom::EndpointScaling").items()
    ((endpoint_id, endpoint),) = dev_endpoint.find_resources("AWS::SageMaker::Endpoint").items()
    spec = {
        "VariantName": "AllTraffic",
        "InstanceType": "ml.m5.large",
        "MinCapacity": "1",
        "MaxCapacity": "2",
        "TargetInvocationsPerInstance": "200",
        "ScaleInCooldownSeconds": "600",
        "ScaleOutCooldownSeconds": "120",
        "PolicyName": "InvocationsPerInstance",
    }
    for resource in (release, scaling):
        assert spec.items() <= resource["Properties"].items()
        assert "Fn::GetAtt" in resource["Properties"]["ServiceToken"]
    # The release runs before the endpoint update (it names the endpoint literally), the registration after it.
    assert release["Properties"]["EndpointName"] == "Mme-dev-Endpoint"
    assert release_id in endpoint["DependsOn"]
    assert scaling["Properties"]["EndpointName"] == {"Fn::GetAtt": [endpoint_id, "EndpointName"]}
    # No native target or policy that CloudFormation would re-create out of order.
    dev_endpoint.resource_count_is("AWS::ApplicationAutoScaling::ScalableTarget", 0)
    dev_endpoint.resource_count_is("AWS::ApplicationAutoScaling::ScalingPolicy", 0)
    assert scaling_id != release_id


def test_the_scaling_function_may_touch_only_this_endpoint(dev_endpoint: Template) -> None:
    statements = _role_statements(dev_endpoint, "AutoscalingFunctionRole")
    sagemaker = [s for s in statements if any(a.startswith("sagemaker:") for a in _actions(s))]
    resources = {
        _flat(r) for s in sagemaker for r in (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])
    }
    assert {r.split(":")[-1] for r in resources} == {"endpoint/mme-dev-endpoint", "endpoint-config/*"}
    (write,) = [s for s in statements if "application-autoscaling:RegisterScalableTarget" in _actions(s)]
    assert _flat(write["Resource"]).endswith(":scalable-target/*")
    assert write["Condition"] == {
        "StringEquals": {
            "application-autoscaling:service-namespace": "sagemaker",
            "application-autoscaling:scalable-dimension": "sagemaker:variant:DesiredInstanceCount",
        }
    }
    (slr,) = [s for s in statements if "iam:CreateServiceLinkedRole" in _actions(s)]
    assert slr["Condition"] == {
        "StringEquals": {"iam:AWSServiceName": "sagemaker.application-autoscaling.amazonaws.com"}
    }
    (function,) = dev_endpoint.find_resources("AWS::Lambda::Function").values()
    assert function["Properties"]["Handler"] == "index.handler"
    assert function["Properties"]["Runtime"].startswith("python3.")


def test_alarms_watch_mme_trouble_not_memory(dev_endpoint: Template) -> None:
    alarms = dev_endpoint.find_resources("AWS::CloudWatch::Alarm").values()
    # The per-model error-rate alarm is a query (tests/stacks/test_model_monitoring.py).
    by_metric = {a["Properties"]["MetricName"]: a["Properties"] for a in alarms if "MetricName" in a["Properties"]}
    assert set(by_metric) == {
        "ModelCacheHit",
        "ModelUnloadingTime",
        "ModelLoadingWaitTime",
        "Invocation5XXErrors",
        "ModelLatency",
        "OverheadLatency",
    }
    assert by_metric["ModelLoadingWaitTime"]["ExtendedStatistic"] == "p99"
    assert by_metric["ModelLoadingWaitTime"]["Threshold"] == 20_000_000  # microseconds
    assert by_metric["ModelLatency"]["Threshold"] == 1_000_000  # 1000 ms in microseconds
    assert by_metric["ModelUnloadingTime"]["Statistic"] == "SampleCount"
    assert by_metric["ModelCacheHit"]["ComparisonOperator"] == "LessThanThreshold"
    dev_endpoint.resource_count_is("AWS::CloudWatch::Dashboard", 1)
    dev_endpoint.resource_count_is("AWS::SNS::Topic", 0)  # no alarm_email by default


def test_outputs_and_ssm_parameter_name_the_endpoint(dev_endpoint: Template) -> None:
    outputs = dev_endpoint.to_json()["Outputs"]
    assert {"EndpointName", "ModelPrefix"} <= set(outputs)
    dev_endpoint.has_resource_properties("AWS::SSM::Parameter", {"Name": "/mme/dev/endpoint-name"})


def test_endpoint_is_named_after_its_stack(synthesized: Synthesized, dev_endpoint: Template) -> None:
    stack = synthesized.stage("dev").endpoint
    dev_endpoint.has_resource_properties("AWS::SageMaker::Endpoint", {"EndpointName": stack.stack_name})
    assert stack.stack_name == "Mme-dev-Endpoint"


def test_image_build_context_holds_only_container_and_handler(synthesized: Synthesized) -> None:
    asset_dirs = [p for p in synthesized.outdir.glob("asset.*") if (p / "container").is_dir()]
    assert len(asset_dirs) == 1
    top = {p.name for p in asset_dirs[0].iterdir()}
    assert top == {"container", "handler"}
    assert (asset_dirs[0] / "container" / "Dockerfile").is_file()
    assert not list(asset_dirs[0].rglob("__pycache__"))


def test_image_asset_builds_the_dockerfile_for_amd64_with_no_secret(synthesized: Synthesized) -> None:
    # What `cdk deploy` (CodeBuild in the pipeline) builds: this Dockerfile for SageMaker's x86 instances, with no
    # build secret, SSH agent or network setting that only this machine could supply.
    stack = synthesized.stage("dev").endpoint
    manifest = json.loads((Path(stack.node.scope.outdir) / f"{stack.artifact_id}.assets.json").read_text())
    (image,) = manifest["dockerImages"].values()
    source = image["source"]
    assert set(source) == {"directory", "dockerFile", "platform"}, source
    assert source["dockerFile"] == "container/Dockerfile"
    assert source["platform"] == "linux/amd64"
    # The staged Dockerfile is the repository's, and its only secret (the CA bundle pip needs where TLS is inspected)
    # is optional: BuildKit skips a missing secret mount unless it says required=true.
    staged = (Path(stack.node.scope.outdir) / source["directory"] / source["dockerFile"]).read_text()
    assert staged == (REPO_ROOT / "container" / "Dockerfile").read_text()
    mounts = re.findall(r"--mount=(\S+)", staged)
    assert mounts == ["type=secret,id=pip-cert"]
    assert "if [ -f /run/secrets/pip-cert ]" in staged


def test_capture_is_off_by_default_with_no_capture_variables_and_no_write_access(dev_endpoint: Template) -> None:
    environment = _environment(dev_endpoint)
    assert not [name for name in environment if name.startswith("MME_CAPTURE_")]
    assert _capture_statements(dev_endpoint) == {}


def test_metrics_variables_name_the_endpoint_and_the_namespace(dev_endpoint: Template) -> None:
    environment = _environment(dev_endpoint)
    assert environment["MME_METRICS_ENABLED"] == "true"
    assert environment["MME_METRICS_ENDPOINT"] == "Mme-dev-Endpoint"
    assert environment["MME_METRICS_NAMESPACE"] == "MultiModelEndpoint/Models"
    assert environment["MME_METRICS_INTERVAL_SECONDS"] == "60"


def test_a_model_override_turns_capture_on_to_the_capture_prefix_under_the_store_key(
    capture_endpoint: Template,
) -> None:
    environment = _environment(capture_endpoint)
    assert environment["MME_CAPTURE_DESTINATION"] == {"Fn::Join": ["", ["s3://", BUCKET_NAME, "/capture/"]]}
    assert environment["MME_CAPTURE_KMS_KEY_ID"] == KEY_ARN
    assert environment["MME_CAPTURE_PERCENT"] == "0.0"  # the container's own default is 100
    assert environment["MME_CAPTURE_MODEL_PERCENT"] == '{"sentiment.tar.gz": 100.0, "topic.tar.gz": 0.0}'
    assert environment["MME_CAPTURE_CONTENT"] == "inputs"
    assert environment["MME_CAPTURE_MAX_RECORD_BYTES"] == "65536"
    assert environment["MME_METRICS_ENDPOINT"] == "Mme-dev-Endpoint"


def test_capture_grants_put_on_the_capture_prefix_and_a_data_key_only(capture_endpoint: Template) -> None:
    assert _capture_statements(capture_endpoint) == {
        "WriteCapturedRequests": {
            "Action": "s3:PutObject",
            "Effect": "Allow",
            "Resource": {"Fn::Join": ["", ["arn:aws:s3:::", BUCKET_NAME, "/capture/*"]]},
            "Sid": "WriteCapturedRequests",
        },
        "EncryptCapturedRequests": {
            "Action": ["kms:Encrypt", "kms:GenerateDataKey"],
            "Condition": {"StringEquals": {"kms:ViaService": "s3.eu-west-1.amazonaws.com"}},
            "Effect": "Allow",
            "Resource": KEY_ARN,
            "Sid": "EncryptCapturedRequests",
        },
    }
    # Nothing else new: it reads and lists the model prefix only, as without capture.
    statements = _role_statements(capture_endpoint)
    (get,) = [s for s in statements if "s3:GetObject" in _actions(s)]
    assert _flat(get["Resource"]).endswith("/models/*")
    (listing,) = [s for s in statements if "s3:ListBucket" in _actions(s)]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["models/", "models/*"]}}
    assert {a for s in statements for a in _actions(s) if a.startswith(("s3:", "kms:"))} == {
        "s3:GetObject",
        "s3:ListBucket",
        "s3:PutObject",
        "kms:Decrypt",
        "kms:Encrypt",
        "kms:GenerateDataKey",
    }


def test_capture_grants_pass_cdk_nag_with_a_specific_acknowledgement(capture_synth: Synthesized) -> None:
    report = json.loads((capture_synth.outdir / "validation-report.json").read_text())
    for plugin in report["pluginReports"]:
        assert plugin["violations"] == [], plugin["violations"][:3]


def test_the_stage_share_and_a_custom_capture_prefix_reach_destination_and_grant(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    synthesized = synth_app(
        tmp_path_factory.mktemp("prefix"), {"stages": {"dev": {"capture_percent": 2.5, "capture_prefix": "requests/"}}}
    )
    template = synthesized.template(synthesized.stage("dev").endpoint)
    environment = _environment(template)
    assert environment["MME_CAPTURE_DESTINATION"] == {"Fn::Join": ["", ["s3://", BUCKET_NAME, "/requests/"]]}
    assert environment["MME_CAPTURE_PERCENT"] == "2.5"
    assert environment["MME_CAPTURE_MODEL_PERCENT"] == "{}"
    put = _capture_statements(template)["WriteCapturedRequests"]
    assert put["Resource"] == {"Fn::Join": ["", ["arn:aws:s3:::", BUCKET_NAME, "/requests/*"]]}
