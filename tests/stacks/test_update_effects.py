"""What each ordinary change does to a deployed stage, read from the templates a deploy would apply.

README's "What each change does" is this file in prose: each row is one test here. A change that touches only the
resources named below updates the endpoint in place (same logical ID, same name), and with RetainAllVariantProperties
the live instance count survives it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cdk_synth import synth_app

#: Logical-ID prefixes of the resources that matter for downtime and capacity.
WATCHED = {
    "ServingModel": "Model",
    "ServingEndpointConfig": "EndpointConfig",
    "ServingEndpoint": "Endpoint",
    "AutoscalingRelease": "Release",
    "AutoscalingScaling": "Scaling",
}


def _dev_endpoint(outdir: Path, dev: dict[str, Any]) -> dict[str, Any]:
    synthesized = synth_app(outdir, {"stages": {"dev": dev}})
    return synthesized.template(synthesized.stage("dev").endpoint).to_json()["Resources"]


def _watched(resources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The watched resources by short name (the logical ID with its hash, which must not change, kept aside)."""
    found: dict[str, dict[str, Any]] = {}
    for logical_id, resource in resources.items():
        for prefix, name in WATCHED.items():
            rest = logical_id.removeprefix(prefix)
            # The prefix plus CDK's 8-character hash, and nothing else (ServingEndpointConfig is not ServingEndpoint).
            if rest != logical_id and len(rest) == 8 and rest.isalnum():
                found[name] = {"logical_id": logical_id, **resource}
    assert set(found) == set(WATCHED.values()), sorted(resources)
    return found


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return _watched(_dev_endpoint(tmp_path_factory.mktemp("baseline"), {}))


@pytest.mark.parametrize(
    ("change", "touched"),
    [
        # A container setting (as an image push, which changes the Model's image URI): a new Model, so a new endpoint
        # config and an in-place endpoint update (SageMaker starts new instances, then drains the old: no downtime).
        ({"log_level": "DEBUG"}, {"Model"}),
        # The instance type: a new endpoint config; the release resource deregisters autoscaling before the endpoint
        # update and the scaling resource registers it after.
        ({"instance_type": "ml.c5.xlarge"}, {"EndpointConfig", "Release", "Scaling"}),
        # The autoscaling range: re-registration only, which clamps the live count into it at once; no endpoint update.
        (
            {"min_instance_count": 2, "max_instance_count": 4, "initial_instance_count": 2},
            {"EndpointConfig", "Release", "Scaling"},
        ),
        ({"max_instance_count": 4}, {"Release", "Scaling"}),
        ({"target_invocations_per_instance": 500}, {"Release", "Scaling"}),
        # The initial count alone: a new endpoint config, but the endpoint keeps its live count (retained).
        ({"initial_instance_count": 2}, {"EndpointConfig"}),
        # Alarms and logs touch nothing that serves.
        ({"alarm_5xx_errors": 50, "log_retention_days": 90}, set()),
        ({"alarm_model_error_rate_percent": 20}, set()),
        # Turning capture on is a container setting (and a grant); its other settings while it is off are nothing.
        ({"capture_percent": 10}, {"Model"}),
        ({"capture_content": "inputs", "capture_max_record_kb": 64}, set()),
    ],
)
def test_a_change_touches_only_what_it_must_and_never_replaces_the_endpoint(
    tmp_path_factory: pytest.TempPathFactory,
    baseline: dict[str, dict[str, Any]],
    change: dict[str, Any],
    touched: set[str],
) -> None:
    changed = _watched(_dev_endpoint(tmp_path_factory.mktemp("changed"), change))
    differing = {name for name in WATCHED.values() if changed[name] != baseline[name]}
    assert differing == touched
    # Never a new logical ID (which would replace the resource) and never another endpoint name.
    assert {name: r["logical_id"] for name, r in changed.items()} == {
        name: r["logical_id"] for name, r in baseline.items()
    }
    endpoint = changed["Endpoint"]["Properties"]
    assert endpoint["EndpointName"] == baseline["Endpoint"]["Properties"]["EndpointName"]
    assert endpoint["RetainAllVariantProperties"] is True


def test_the_release_precedes_the_endpoint_and_the_registration_follows_it(
    baseline: dict[str, dict[str, Any]],
) -> None:
    assert baseline["Release"]["logical_id"] in baseline["Endpoint"]["DependsOn"]
    scaling_name = baseline["Scaling"]["Properties"]["EndpointName"]
    assert scaling_name == {"Fn::GetAtt": [baseline["Endpoint"]["logical_id"], "EndpointName"]}


def test_a_template_without_a_change_is_identical(
    tmp_path_factory: pytest.TempPathFactory, baseline: dict[str, dict[str, Any]]
) -> None:
    # The control for the tests above: two synths of the same settings do not differ, so a difference is the change.
    again = _watched(_dev_endpoint(tmp_path_factory.mktemp("again"), {}))
    assert again == baseline
