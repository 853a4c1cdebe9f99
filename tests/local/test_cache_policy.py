"""What stays loaded: a model budget, a memory budget, a disabled cache, and slow loads (429)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from botocore.exceptions import ClientError
from local_serving import serving_containers

from handler.memory import CGROUP_ROOT, cgroup_working_set_bytes
from mme.container import processes_under
from mme.image import DOCKER
from mme.serve_process import ServeProcess

ROUND_ROBIN = ["sentiment.tar.gz", "topic.tar.gz", "sentiment-copy.tar.gz"] * 3


def _label(endpoint: ServeProcess, model: str, text: str) -> str:
    answer = endpoint.client().invoke_endpoint(
        EndpointName="local", TargetModel=model, ContentType="text/plain", Body=text
    )
    return json.loads(answer["Body"].read())["label"]


def _round_robin(endpoint: ServeProcess) -> None:
    for model in ROUND_ROBIN:
        expected = "sports" if model.startswith("topic") else "positive"
        text = "the striker scored twice in the final match" if expected == "sports" else "I loved it, wonderful"
        assert _label(endpoint, model, text) == expected


def test_budget_of_one_model_round_robin_over_three_all_succeed(
    serve: Callable[..., ServeProcess], store: Path
) -> None:
    endpoint = serve(store, "--max-loaded-models", "1")
    _round_robin(endpoint)
    assert endpoint.metric("mme_loaded_models") == 1
    assert endpoint.metric("mme_model_loads_total") == len(ROUND_ROBIN)
    assert endpoint.metric("mme_model_evictions_total") == len(ROUND_ROBIN) - 1
    endpoint.stop()


class _Meter:
    """What the kernel charges for the models of one endpoint, measured from outside it, and the summed RSS of the
    processes holding them: on the host the workers' summed PSS plus the model host's PSS above its PSS at start
    (shared mode); in the image the container's cgroup charge above its charge at start."""

    def __init__(self, endpoint: ServeProcess, containers_before: set[str]) -> None:
        self.endpoint = endpoint
        self.cgroup: Path | None = None
        self.root: psutil.Process | None = None
        started = set(serving_containers()) - containers_before
        if started:  # the image variant
            (name,) = started
            pid = subprocess.run([DOCKER, "inspect", "--format", "{{.State.Pid}}", name],
                                 capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
            self.root = psutil.Process(int(pid))
            memory = next(line for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if ":memory:" in line)
            self.cgroup = CGROUP_ROOT / "memory" / memory.split(":", 2)[2].lstrip("/")
        self.idle = self._cgroup_charge() if self.cgroup is not None else 0
        self.host_idle = sum(process.memory_full_info().pss for process in self.model_hosts())

    def _cgroup_charge(self) -> int:
        assert self.cgroup is not None
        charge = cgroup_working_set_bytes(self.cgroup)
        assert charge is not None, f"no memory cgroup at {self.cgroup}"
        return charge

    def _processes(self, marker: str) -> list[psutil.Process]:
        processes = self.root.children(recursive=True) if self.root else processes_under(self.endpoint.tmp_dir)
        found = []
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):  # a zombie too (the image's init reaps late)
                if marker in " ".join(process.cmdline()):
                    found.append(process)
        return found

    def workers(self) -> list[psutil.Process]:
        return self._processes("model_service_worker")

    def model_hosts(self) -> list[psutil.Process]:
        return self._processes("handler.host")

    def charged(self) -> int:
        if self.cgroup is not None:
            return self._cgroup_charge() - self.idle
        hosts = sum(process.memory_full_info().pss for process in self.model_hosts())
        return sum(process.memory_full_info().pss for process in self.workers()) + hosts - self.host_idle

    def summed_rss(self) -> int:
        return sum(process.memory_info().rss for process in [*self.workers(), *self.model_hosts()])


@pytest.fixture(scope="module", params=["shared", "per-worker"])
def model_host_mode(request: pytest.FixtureRequest) -> list[str]:
    """``mme serve`` options selecting each model host mode in turn."""
    return ["--container-env", f"MME_MODEL_HOST={request.param}"]


@pytest.fixture(scope="module")
def model_memory(serve: Callable[..., ServeProcess], store: Path, model_host_mode: list[str]) -> tuple[list[int], int]:
    """Measured with no budget: the models' charge with the first one, two and three models of the round robin
    loaded, and the summed RSS of the processes holding them (the workers, and the model host in shared mode)."""
    containers_before = set(serving_containers())
    endpoint = serve(store, *model_host_mode)
    meter = _Meter(endpoint, containers_before)
    charged = []
    for model in ROUND_ROBIN[:3]:
        _label(endpoint, model, "I loved it, wonderful")
        charged.append(meter.charged())
    rss = meter.summed_rss()
    assert endpoint.metric("mme_loaded_models") == 3
    endpoint.stop()
    return charged, rss


def test_memory_budget_between_one_and_two_models_keeps_one_loaded(
    serve: Callable[..., ServeProcess], store: Path, model_memory: tuple[list[int], int], model_host_mode: list[str]
) -> None:
    (one, two, _), _ = model_memory
    endpoint = serve(store, *model_host_mode, "--memory-budget", str((one + two) // 2))
    _round_robin(endpoint)
    assert endpoint.metric("mme_loaded_models") == 1
    assert endpoint.metric("mme_model_loads_total") == len(ROUND_ROBIN)
    assert endpoint.metric("mme_model_evictions_total") == len(ROUND_ROBIN) - 1
    endpoint.stop()


def test_memory_budget_above_three_models_charge_keeps_all_three_though_their_summed_rss_is_above_it(
    serve: Callable[..., ServeProcess], store: Path, model_memory: tuple[list[int], int], model_host_mode: list[str]
) -> None:
    (one, _, three), rss = model_memory
    # One increment above the three models: before a load the front end counts the next model as the loaded ones'
    # average, which carries the TensorFlow libraries the first worker brought in, so more than an increment.
    budget = three + (three - one) // 2
    # The point: summed RSS counts the TensorFlow libraries once per per-worker worker, and the model host's
    # runtime in shared mode, and would have evicted here.
    assert budget < rss, f"three models charge {three} bytes, their processes' summed RSS is {rss}"
    endpoint = serve(store, *model_host_mode, "--memory-budget", str(budget))
    _round_robin(endpoint)
    assert endpoint.metric("mme_loaded_models") == 3
    assert endpoint.metric("mme_model_loads_total") == 3
    assert endpoint.metric("mme_model_evictions_total") == 0
    endpoint.stop()


def test_disabled_model_cache_unloads_after_every_invocation(serve: Callable[..., ServeProcess], store: Path) -> None:
    endpoint = serve(store, "--model-cache", "disabled")
    assert _label(endpoint, "sentiment.tar.gz", "I loved it, wonderful") == "positive"
    assert _label(endpoint, "sentiment.tar.gz", "awful, I hated every minute") == "negative"
    assert endpoint.metric("mme_loaded_models") == 0
    assert endpoint.metric("mme_model_loads_total") == 2
    assert endpoint.metric("mme_model_unloads_total") == 2
    assert endpoint.metric("mme_model_evictions_total") == 0
    endpoint.stop()


def test_request_during_a_slow_load_is_model_not_ready_and_the_load_goes_on(
    serve: Callable[..., ServeProcess], store: Path
) -> None:
    endpoint = serve(store, "--load-wait-seconds", "0.05")
    client = endpoint.client()
    with pytest.raises(ClientError) as caught:
        client.invoke_endpoint(EndpointName="local", TargetModel="topic.tar.gz", ContentType="text/plain", Body="x")
    assert isinstance(caught.value, client.exceptions.ModelNotReadyException)
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    deadline = time.monotonic() + 60
    while endpoint.metric("mme_loaded_models") < 1:
        assert time.monotonic() < deadline, "the load did not finish in the background"
        time.sleep(0.25)
    assert _label(endpoint, "topic.tar.gz", "simmer the garlic and tomatoes for the pasta sauce") == "food"
    endpoint.stop()


def test_malformed_options_are_cli_errors(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mme.cli import app

    runner = CliRunner()
    bad_size = runner.invoke(app, ["serve", "--store", str(tmp_path), "--memory-budget", "lots"])
    assert bad_size.exit_code == 2
    assert "is not a size" in bad_size.output
    missing = runner.invoke(app, ["serve", "--store", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2
    assert "does not exist" in missing.output
    bad_uri = runner.invoke(app, ["serve", "--store", "s3://"])
    assert bad_uri.exit_code == 2
    assert "is not an s3://bucket/prefix/ URI" in bad_uri.output
