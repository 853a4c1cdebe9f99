"""The built image as SageMaker runs it: root, labels, read-only models, SIGTERM, and a memory limit."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from handler.serve import MMS_DIED_EXIT_STATUS
from mme.archive import extract_archive
from mme.image import DOCKER, STOP_GRACE_SECONDS, ImageContainer


def _docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def models_root(demo_archives: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("image-models")
    extract_archive(demo_archives["sentiment"], root / "sentiment")
    return root


@pytest.fixture
def run_image(serving_image: str, models_root: Path, tmp_path: Path) -> Iterator[Callable[..., ImageContainer]]:
    started: list[ImageContainer] = []

    def run(**options: object) -> ImageContainer:
        container = ImageContainer(tmp_path / f"run-{len(started)}", image=serving_image, models_root=models_root,
                                   **options)  # type: ignore[arg-type]  # fmt: skip
        started.append(container)
        return container.start()

    yield run
    for container in started:
        container.stop()
        assert not container.exists()


def test_image_runs_as_root_with_both_sagemaker_labels(serving_image: str) -> None:
    config = json.loads(_docker("image", "inspect", "--format", "{{json .Config}}", serving_image).stdout)
    assert config["User"] in ("", "root", "0")
    assert config["Labels"]["com.amazonaws.sagemaker.capabilities.multi-models"] == "true"
    assert config["Labels"]["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"


def test_serving_process_is_root_and_models_are_read_only(run_image: Callable[..., ImageContainer]) -> None:
    container = run_image()
    assert _docker("exec", container.name, "id", "-u").stdout.strip() == "0"
    write = _docker("exec", container.name, "touch", "/opt/ml/models/sentiment/x")
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr
    assert container.client.load("sentiment", container.models_root / "sentiment").status == 200
    answer = container.client.invoke("sentiment", json.dumps({"input_text": "I loved it, wonderful"}))
    assert answer.json()["label"] == "positive"


def test_sigterm_stops_the_container_cleanly_within_sagemakers_30_seconds(
    run_image: Callable[..., ImageContainer],
) -> None:
    container = run_image()
    assert container.client.load("sentiment", container.models_root / "sentiment").status == 200
    started = time.monotonic()
    container.stop()
    assert time.monotonic() - started < STOP_GRACE_SECONDS
    assert container.exit_status == 0
    assert not container.exists()


def _load_until_refused(container: ImageContainer, limit: int = 12) -> tuple[list[str], int]:
    loaded: list[str] = []
    for index in range(limit):
        name = f"copy{index}"
        answer = container.client.load(name, container.models_root / "sentiment")
        if answer.status != 200:
            container.client.discard(name)
            return loaded, answer.status
        loaded.append(name)
    pytest.fail(f"{limit} models fitted under the memory limit: raise the count or lower the limit")


def _all_serve(container: ImageContainer, names: list[str]) -> None:
    for name in names:
        answer = container.client.invoke(name, json.dumps({"input_text": "awful, I hated it"}))
        assert answer.status == 200, (name, answer.text)
        assert answer.json()["label"] == "negative"


def test_under_a_memory_limit_a_load_that_does_not_fit_is_507_and_loaded_models_keep_serving(
    run_image: Callable[..., ImageContainer],
) -> None:
    container = run_image(memory="1g", environment={"MME_MODEL_HOST": "per-worker"})
    loaded, status = _load_until_refused(container)
    assert status == 507, "SageMaker evicts and retries only on 507"
    assert loaded, "not even one model fitted in 1 GiB"
    left = json.loads(container.load_error_file(f"copy{len(loaded)}").read_text())
    assert "not enough memory to load" in left["reason"]
    assert left["exceeds_total_memory"] is False  # it fits once another model is unloaded
    _all_serve(container, loaded)
    assert container.running
    # What SageMaker does next: unload the least recently used model, and the load fits.
    assert container.client.unload(loaded[0]).status == 200
    assert container.client.load("again", container.models_root / "sentiment").status == 200
    _all_serve(container, [*loaded[1:], "again"])
    # No serving model's worker died on the way (MMS logs that, then restarts it).
    assert not any("Worker disconnected. WORKER_MODEL_LOADED" in line for line in container.log_lines())


def test_a_load_the_kernel_kills_takes_only_the_loading_worker(run_image: Callable[..., ImageContainer]) -> None:
    # Per-worker mode, with the check off, the kernel's OOM killer decides: MMS answers 500, and the worker it kills
    # must be the one loading (it offers itself first), never a serving model's nor MMS itself.
    container = run_image(memory="1g", environment={"MME_LOAD_MEMORY_RESERVE_MB": "0", "MME_MODEL_HOST": "per-worker"})
    loaded, status = _load_until_refused(container)
    assert status == 500
    assert loaded
    _all_serve(container, loaded)
    assert container.running
    assert not any("Worker disconnected. WORKER_MODEL_LOADED" in line for line in container.log_lines())


def test_a_dead_mms_ends_the_container_with_a_log_line_and_its_own_exit_status(
    run_image: Callable[..., ImageContainer],
) -> None:
    container = run_image()
    init = container.init_pid()
    assert init is not None
    java = [p for p in psutil.Process(init).children(recursive=True) if p.name() == "java"]
    assert len(java) == 1, "one MMS front end per container"
    java[0].kill()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while container.running:
        assert time.monotonic() < deadline, "the container outlived its MMS: it looks alive but serves nothing"
        time.sleep(0.5)
    assert container.exit_status == MMS_DIED_EXIT_STATUS
    assert any(f"serve exits with status {MMS_DIED_EXIT_STATUS}" in line for line in container.log_lines())


def _model_hosts(container: ImageContainer) -> list[psutil.Process]:
    init = container.init_pid()
    assert init is not None
    hosts = []
    for process in psutil.Process(init).children(recursive=True):
        with contextlib.suppress(psutil.ZombieProcess, psutil.NoSuchProcess):  # the image's init reaps late
            if "handler.host" in " ".join(process.cmdline()):
                hosts.append(process)
    return hosts


def test_a_killed_model_host_is_restarted_and_its_models_answer_again(
    run_image: Callable[..., ImageContainer],
) -> None:
    container = run_image()  # shared mode, the default
    assert container.client.load("sentiment", container.models_root / "sentiment").status == 200
    _all_serve(container, ["sentiment"])
    (host,) = _model_hosts(container)
    host.kill()
    host.wait(30)
    # The next request may meet the dead host (503, a clear 5xx) while serve restarts it; within the start timeout
    # one is answered again from a reload, and nothing hangs: every call is bounded by the client's timeout.
    deadline = time.monotonic() + 90
    statuses = []
    while True:
        answer = container.client.invoke("sentiment", json.dumps({"input_text": "awful, I hated it"}))
        statuses.append(answer.status)
        if answer.status == 200:
            break
        assert answer.status == 503, (answer.status, answer.text)
        assert time.monotonic() < deadline, f"no answer after the host was killed: {statuses}"
        time.sleep(0.5)
    assert answer.json()["label"] == "negative"
    (restarted,) = _model_hosts(container)
    assert restarted.pid != host.pid
    assert container.running
    assert any("model host" in line and "restart" in line.lower() for line in container.log_lines())
