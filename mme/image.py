"""The serving image on a local Docker engine, run the way SageMaker runs it, behind the same client as host mode.

:class:`ImageContainer` is a :class:`~mme.container.LocalContainer` whose server is ``docker run IMAGE serve``:
models read-only under ``/opt/ml/models``, ``SAGEMAKER_*`` variables as SageMaker sets them, stopped with SIGTERM
and killed 30 s later. Networking is the host's loopback only (``--network host`` with MMS bound to 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import psutil

from handler.memory import CGROUP_ROOT, cgroup_working_set_bytes
from handler.settings import LOAD_ERRORS_FOLDER
from mme.container import ContainerError, LocalContainer, free_port

logger = logging.getLogger(__name__)

#: The engine's own client: another docker client earlier on PATH may lack BuildKit (DESIGN.md).
DOCKER = "/usr/bin/docker"
#: Where SageMaker mounts the models of a multi-model endpoint.
CONTAINER_MODELS_DIR = PurePosixPath("/opt/ml/models")
#: The container's run folder, short for MMS's Unix sockets; its load-errors folder is shared with this host.
CONTAINER_RUN_DIR = PurePosixPath("/tmp/mme-run")  # noqa: S108 - inside the container
#: SageMaker stops a container with SIGTERM and kills it this many seconds later.
STOP_GRACE_SECONDS = 30


def docker_available() -> str | None:
    """None when the engine answers through ``DOCKER``, else why not (for a skip or an error message)."""
    if not Path(DOCKER).is_file():
        return f"{DOCKER} is missing: run `make image` (installs docker.io and starts the engine)"
    try:
        answer = subprocess.run(  # noqa: S603 - a fixed binary
            [DOCKER, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"the Docker engine does not answer: {error}"
    if answer.returncode != 0:
        return f"the Docker engine does not answer: {answer.stderr.strip() or answer.stdout.strip()}"
    return None


def image_exists(image: str) -> bool:
    """Whether the engine holds ``image``."""
    answer = subprocess.run([DOCKER, "image", "inspect", image], capture_output=True, timeout=60)  # noqa: S603
    return answer.returncode == 0


class ImageContainer(LocalContainer):
    """``docker run IMAGE serve`` on a loopback port, with ``models_root`` mounted read-only at /opt/ml/models.

    - ``memory`` (default: no limit): the container's memory limit (``docker run --memory``), swap included.
    - ``mounts``: more read-only folders, host path -> path in the container (a default tokenizer, for example).
    - ``writable_mounts``: folders the container writes, likewise (``mme serve --capture DIR``).
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        image: str,
        models_root: Path,
        port: int | None = None,
        environment: Mapping[str, str] | None = None,
        memory: str | None = None,
        mounts: Mapping[Path, str] | None = None,
        writable_mounts: Mapping[Path, str] | None = None,
        startup_timeout: float = 180.0,
    ) -> None:
        super().__init__(run_dir, port=port, environment=environment, startup_timeout=startup_timeout)
        self._fixed_port = port is not None
        self.image = image
        self.models_root = models_root.resolve()
        self.memory = memory
        self.mounts = {Path(host).resolve(): target for host, target in (mounts or {}).items()}
        self.writable_mounts = {Path(host).resolve(): target for host, target in (writable_mounts or {}).items()}
        self.name = f"mme-serving-{uuid.uuid4().hex[:12]}"
        self._init_pid: int | None = None
        # The container's charge with no model worker running (see models_memory_bytes).
        self._idle_bytes: int | None = None

    def model_url(self, model_dir: Path) -> str:
        """Where the container sees a model folder of this host: under /opt/ml/models.

        Raises:
            ContainerError: the folder is not under ``models_root``, so the container cannot see it.
        """
        try:
            relative = model_dir.resolve().relative_to(self.models_root)
        except ValueError:
            raise ContainerError(
                f"{model_dir} is outside {self.models_root}, the folder mounted at {CONTAINER_MODELS_DIR}"
            ) from None
        return str(CONTAINER_MODELS_DIR / relative.as_posix())

    def _command(self) -> list[str]:
        load_errors = self.run_dir / LOAD_ERRORS_FOLDER
        load_errors.mkdir(parents=True, exist_ok=True)
        environment = {
            # What SageMaker sets on a multi-model endpoint's container.
            "SAGEMAKER_MULTI_MODEL": "true",
            "SAGEMAKER_BIND_TO_PORT": str(self.port),
            "SAGEMAKER_SAFE_PORT_RANGE": f"{self.port + 1}-{self.port + 100}",
            # Loopback only: with the host's network, MMS would otherwise listen on every interface.
            "MME_BIND_HOST": "127.0.0.1",
            "MME_RUN_DIR": str(CONTAINER_RUN_DIR),
            **self._environment,
        }
        command = [DOCKER, "run", "--rm", "--name", self.name, "--network", "host",
                   "--stop-timeout", str(STOP_GRACE_SECONDS),
                   "--volume", f"{self.models_root}:{CONTAINER_MODELS_DIR}:ro",
                   "--volume", f"{load_errors}:{CONTAINER_RUN_DIR / LOAD_ERRORS_FOLDER}"]  # fmt: skip
        for host, target in self.mounts.items():
            command += ["--volume", f"{host}:{target}:ro"]
        for host, target in self.writable_mounts.items():
            command += ["--volume", f"{host}:{target}"]
        for name, value in environment.items():
            command += ["--env", f"{name}={value}"]
        if self.memory is not None:
            command += ["--memory", self.memory, "--memory-swap", self.memory]
        return [*command, self.image, "serve"]

    def _process_environment(self) -> dict[str, str]:
        # The client's own environment (DOCKER_HOST, DOCKER_CONFIG, ...); the container's is in the command.
        return dict(os.environ)

    def start(self) -> ImageContainer:
        """Run the image and wait until ``GET /ping`` answers 200.

        Raises:
            ContainerError: no engine, no such image, or the container exited or did not answer in time.
        """
        problem = docker_available()
        if problem is not None:
            raise ContainerError(problem)
        if not image_exists(self.image):
            raise ContainerError(f"the engine has no image {self.image!r}: build it with `make image`")
        self._init_pid = None
        if not self._fixed_port:
            # A container started right after another on the same host port was seen to exit (DESIGN.md): every
            # start, a restart included, gets a port of its own.
            self.port = free_port()
            self.base_url = f"http://127.0.0.1:{self.port}"
        super().start()
        self._idle_bytes = None
        self.models_memory_bytes()  # no model loaded yet: measures the charge of MMS alone
        return self

    def init_pid(self) -> int | None:
        """The host pid of the container's first process (the entrypoint), or None when it is not running."""
        if self._init_pid is None or not psutil.pid_exists(self._init_pid):
            answer = subprocess.run(  # noqa: S603 - a fixed binary
                [DOCKER, "inspect", "--format", "{{.State.Pid}}", self.name], capture_output=True, text=True, timeout=30
            )
            pid = int(answer.stdout.strip() or 0) if answer.returncode == 0 else 0
            self._init_pid = pid or None
        return self._init_pid

    def worker_processes(self) -> list[psutil.Process]:
        """The MMS Python workers inside the container, as processes of this host."""
        pid = self.init_pid()
        if pid is None:
            return []
        try:
            processes = psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        workers = []
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                if any("model_service_worker" in part for part in process.cmdline()):
                    workers.append(process)
        return workers

    def memory_cgroup(self) -> Path | None:
        """The container's memory cgroup folder on this host (cgroup v1 or v2), or None when it is not running.

        Found through the entrypoint's ``/proc/PID/cgroup``, so it does not depend on where the engine's cgroup
        driver puts containers (``docker/ID`` with cgroupfs, ``system.slice/docker-ID.scope`` with systemd).
        """
        pid = self.init_pid()
        if pid is None:
            return None
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            _, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(","):  # v1
                return CGROUP_ROOT / "memory" / path.lstrip("/")
        for line in lines:
            if line.startswith("0::"):  # v2: one hierarchy, memory in it
                return CGROUP_ROOT / line[3:].lstrip("/")
        return None

    def models_memory_bytes(self) -> int:
        """Memory the loaded models take now, as the kernel charges it: the container's cgroup charge (its working
        set: usage minus reclaimable page cache, what counts against ``--memory``) above its charge with no model
        worker running.

        The charge with no worker is measured at start and again whenever no worker runs, so MMS's Java heap, which
        grows into its committed size over the first minutes of traffic (DESIGN.md), is not counted as models'.
        Without a readable cgroup, the workers' summed PSS (as on the host).
        """
        folder = self.memory_cgroup()
        charged = cgroup_working_set_bytes(folder) if folder is not None else None
        if charged is None:
            return super().models_memory_bytes()
        if not self.worker_processes():
            self._idle_bytes = charged
            return 0
        return max(charged - (self._idle_bytes or 0), 0)

    def exists(self) -> bool:
        """Whether the engine still has this container (running or not)."""
        answer = subprocess.run(  # noqa: S603 - a fixed binary
            [DOCKER, "ps", "--all", "--quiet", "--filter", f"name=^{self.name}$"], capture_output=True, text=True
        )
        return bool(answer.stdout.strip())

    def stop(self, timeout: float = STOP_GRACE_SECONDS + 15) -> None:
        """``docker stop`` (SIGTERM, SIGKILL after 30 s, as SageMaker does); the container is removed (``--rm``)."""
        self.client.close()
        process, self._process = self._process, None
        self._stopped = process or self._stopped  # docker run exits with the container's status
        if self.exists():
            subprocess.run([DOCKER, "stop", "--time", str(STOP_GRACE_SECONDS), self.name],  # noqa: S603
                           capture_output=True, timeout=timeout)  # fmt: skip
        if process is not None:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.exists():  # --rm normally removed it; a failed start may leave one behind
            subprocess.run([DOCKER, "rm", "--force", self.name], capture_output=True, timeout=timeout)  # noqa: S603
        self._init_pid = None
