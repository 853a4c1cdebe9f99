"""Endpoint stack: MultiModel contract, least-privilege role, autoscaling and alarms."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from aws_cdk.assertions import Match, Template
from cdk_synth import REPO_ROOT, Synthesized

#: The only actions allowed on Resource "*": neither supports resource-level permissions (see stacks/endpoint.py).
DOCUMENTED_STAR_ACTIONS = {"ecr:GetAuthorizationToken", "cloudwatch:PutMetricData"}


def _role_statements(template: Template) -> list[dict[str, Any]]:
    statements: list[dict[str, Any]] = []
    for policy in template.find_resources("AWS::IAM::Policy").values():
        statements += policy["Properties"]["PolicyDocument"]["Statement"]
    return statements


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def _flat(value: Any) -> str:
    """Flatten an intrinsic to a comparable string (Fn::Join parts concatenated, refs as <Id>)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Join" in value:
        sep, parts = value["Fn::Join"]
        return sep.join(_flat(p) for p in parts)
    if isinstance(value, dict) and "Ref" in value:
        return f"<{value['Ref']}>"
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
    url = _flat(container["ModelDataUrl"])
    assert url.startswith("s3://<SsmParameterValue"), url
    assert url.endswith("/models/"), url
    assert container["Environment"]["SAGEMAKER_MODEL_SERVER_WORKERS"] == "1"
    assert container["Environment"]["MME_MAX_TEXTS_PER_REQUEST"] == "64"
    assert "ecr" in _flat(container["Image"]) or "Fn::Sub" in container["Image"]


def test_bucket_and_key_come_from_the_stores_ssm_parameters(dev_endpoint: Template) -> None:
    parameters = dev_endpoint.to_json()["Parameters"]
    defaults = {p["Default"] for p in parameters.values() if p["Type"].startswith("AWS::SSM::Parameter::Value")}
    assert {"/mme/dev/bucket", "/mme/dev/key-arn"} <= defaults


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
    assert "DataCaptureConfig" not in config  # off by default


def test_no_wildcard_actions_and_star_only_for_documented_actions(dev_endpoint: Template) -> None:
    for statement in _role_statements(dev_endpoint):
        for action in _actions(statement):
            assert "*" not in action, statement
        if statement["Resource"] == "*":
            assert set(_actions(statement)) <= DOCUMENTED_STAR_ACTIONS, statement


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


def test_logs_are_limited_to_the_endpoints_log_group(synthesized: Synthesized, dev_endpoint: Template) -> None:
    name = synthesized.stage("dev").endpoint.serving.endpoint_name
    log_statements = [s for s in _role_statements(dev_endpoint) if any(a.startswith("logs:") for a in _actions(s))]
    assert log_statements
    for statement in log_statements:
        assert f":log-group:/aws/sagemaker/Endpoints/{name}" in _flat(statement["Resource"])


def test_image_pull_is_limited_to_the_asset_repository(dev_endpoint: Template) -> None:
    (pull,) = [s for s in _role_statements(dev_endpoint) if "ecr:BatchGetImage" in _actions(s)]
    assert "container-assets" in _flat(pull["Resource"])


def test_capture_adds_put_on_capture_prefix_only(tmp_path_factory: Any) -> None:
    from cdk_synth import synth_app

    synthesized = synth_app(
        tmp_path_factory.mktemp("capture"),
        {"stages": {"dev": {"data_capture_percent": 20, "alarm_email": "ops@example.com"}}},
    )
    template = synthesized.template(synthesized.stage("dev").endpoint)
    (put,) = [s for s in _role_statements(template) if "s3:PutObject" in _actions(s)]
    assert _flat(put["Resource"]).endswith("/capture/*")
    template.has_resource_properties(
        "AWS::SageMaker::EndpointConfig",
        {"DataCaptureConfig": Match.object_like({"EnableCapture": True, "InitialSamplingPercentage": 20})},
    )
    template.has_resource_properties("AWS::SNS::Topic", {"KmsMasterKeyId": Match.any_value()})
    template.has_resource_properties("AWS::SNS::Subscription", {"Protocol": "email", "Endpoint": "ops@example.com"})
    alarms = template.find_resources("AWS::CloudWatch::Alarm")
    assert all(a["Properties"]["AlarmActions"] for a in alarms.values())


def test_autoscaling_tracks_invocations_and_memory(dev_endpoint: Template) -> None:
    dev_endpoint.has_resource_properties(
        "AWS::ApplicationAutoScaling::ScalableTarget",
        {
            "ServiceNamespace": "sagemaker",
            "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
            "MinCapacity": 1,
            "MaxCapacity": 2,
        },
    )
    dev_endpoint.has_resource_properties(
        "AWS::ApplicationAutoScaling::ScalingPolicy",
        {
            "PolicyType": "TargetTrackingScaling",
            "TargetTrackingScalingPolicyConfiguration": Match.object_like(
                {
                    "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
                    "TargetValue": 200,
                }
            ),
        },
    )
    dev_endpoint.has_resource_properties(
        "AWS::ApplicationAutoScaling::ScalingPolicy",
        {
            "TargetTrackingScalingPolicyConfiguration": Match.object_like(
                {
                    "CustomizedMetricSpecification": Match.object_like(
                        {"MetricName": "MemoryUtilization", "Namespace": "/aws/sagemaker/Endpoints"}
                    ),
                    "TargetValue": 75,
                }
            ),
        },
    )


def test_alarms_cover_the_mme_metrics(dev_endpoint: Template) -> None:
    alarms = dev_endpoint.find_resources("AWS::CloudWatch::Alarm").values()
    by_metric = {a["Properties"]["MetricName"]: a["Properties"] for a in alarms}
    assert set(by_metric) == {
        "ModelCacheHit",
        "ModelUnloadingTime",
        "ModelLoadingWaitTime",
        "Invocation5XXErrors",
        "MemoryUtilization",
        "OverheadLatency",
    }
    assert by_metric["ModelLoadingWaitTime"]["ExtendedStatistic"] == "p99"
    assert by_metric["ModelLoadingWaitTime"]["Threshold"] == 20_000_000  # microseconds
    assert by_metric["ModelUnloadingTime"]["Statistic"] == "SampleCount"
    assert by_metric["ModelCacheHit"]["ComparisonOperator"] == "LessThanThreshold"
    assert by_metric["MemoryUtilization"]["Namespace"] == "/aws/sagemaker/Endpoints"
    dev_endpoint.resource_count_is("AWS::CloudWatch::Dashboard", 1)
    dev_endpoint.resource_count_is("AWS::SNS::Topic", 0)  # no alarm_email by default


def test_outputs_and_ssm_parameter_name_the_endpoint(dev_endpoint: Template) -> None:
    outputs = dev_endpoint.to_json()["Outputs"]
    assert {"EndpointName", "ModelBucketName", "ModelPrefix"} <= set(outputs)
    dev_endpoint.has_resource_properties("AWS::SSM::Parameter", {"Name": "/mme/dev/endpoint-name"})


def test_endpoint_is_named_after_its_stack(synthesized: Synthesized, dev_endpoint: Template) -> None:
    stack = synthesized.stage("dev").endpoint
    dev_endpoint.has_resource_properties("AWS::SageMaker::Endpoint", {"EndpointName": stack.stack_name})
    assert stack.stack_name == "Mme-dev-Endpoint"


def test_image_build_context_holds_only_container_and_handler(synthesized: Synthesized) -> None:
    asset_dirs = [p for p in synthesized.outdir.glob("asset.*") if p.is_dir()]
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
