"""The container's entrypoint: settings in, MMS up (``serve``).

Starts multi-model-server in multi-model mode through sagemaker-inference's ``start_model_server`` with our
handler, and blocks until MMS exits. With ``MME_MODEL_HOST=shared`` it first starts the model host
(:mod:`handler.host`), supervises it while MMS runs, gives MMS the thin handler that forwards to it, and scales
each model's thin workers with its load (:mod:`handler.host.scaler`).

Every path MMS writes to comes from :class:`ServingSettings`, so the same code path runs on a host outside the
container (tests, ``mme serve``).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from pathlib import Path

import psutil

from handler.settings import HANDLER_ENTRY_POINT, SHARED, THIN_HANDLER_ENTRY_POINT, ServingSettings, SettingsError

logger = logging.getLogger(__name__)


def handler_entry_point(settings: ServingSettings) -> str:
    """The handler MMS runs in its workers: the whole model (per-worker mode), or the thin one of shared mode."""
    return THIN_HANDLER_ENTRY_POINT if settings.model_host == SHARED else HANDLER_ENTRY_POINT


def mms_environment(settings: ServingSettings) -> dict[str, str]:
    """The environment that makes sagemaker-inference and MMS honour ``settings``."""
    run_dir = settings.run_dir
    tmp_dir = run_dir / "tmp"
    vmargs = " ".join(
        [
            f"-Xmx{settings.jvm_heap}",
            # Java 17 sizes itself from the container's cgroup limit, which is what a SageMaker instance wants.
            "-XX:+UseContainerSupport",
            # Keeps the JVM from writing /tmp/hsperfdata_*, outside the run folder.
            "-XX:-UsePerfData",
            f"-Djava.io.tmpdir={tmp_dir}",
        ]
    )
    return {
        # Read by sagemaker_inference at import: multi-model mode.
        "SAGEMAKER_MULTI_MODEL": "true",
        "SAGEMAKER_HANDLER": handler_entry_point(settings),
        "SAGEMAKER_BIND_TO_PORT": str(settings.port),
        "SAGEMAKER_MODEL_SERVER_WORKERS": str(settings.workers_per_model),
        "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS": str(settings.response_timeout_seconds),
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": str(settings.max_payload_mb),
        "SAGEMAKER_MODEL_SERVER_VMARGS": vmargs,
        # MMS reads MMS_* variables as configuration (enable_envvars_config=true): they override the
        # 0.0.0.0 addresses sagemaker-inference writes, so a host run can stay on loopback.
        "MMS_INFERENCE_ADDRESS": f"http://{settings.bind_host}:{settings.port}",
        "MMS_MANAGEMENT_ADDRESS": f"http://{settings.bind_host}:{settings.port}",
        # MMS keeps its pid file in tempfile.gettempdir() and its logs in LOG_LOCATION.
        "TMPDIR": str(tmp_dir),
        "TEMP": str(tmp_dir),
        "LOG_LOCATION": str(run_dir / "logs"),
        "METRICS_LOCATION": str(run_dir / "logs"),
        # Nothing may be fetched from a hub at run time: every model ships its tokenizer.
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


#: The entrypoint's exit status when MMS dies under it (2 is a malformed setting).
MMS_DIED_EXIT_STATUS = 3
#: Set once MMS has stopped on a request to stop (SIGTERM), so that :func:`watch_mms` lets ``serve`` finish its exit.
MMS_STOPPED = threading.Event()
#: MMS's launcher records the Java process's pid here, in its temp folder (``TMPDIR``, the run folder's tmp/).
MMS_PID_FILE = ".model_server.pid"


def watch_mms(
    pid_file: Path, *, every_seconds: float = 1.0, startup_seconds: float = 90.0, grace_seconds: float = 5.0
) -> None:
    """Exit the process when MMS's Java process is gone and the toolkit has not noticed within ``grace_seconds``.

    sagemaker-inference waits on MMS's Java process, but it finds that process by polling once a second: when MMS
    dies before it is found, the toolkit polls on for its whole start-up timeout, and the container looks alive
    while serving nothing. MMS's launcher records Java's pid in ``pid_file``; once that process is gone, a normal
    stop (SIGTERM) sets :data:`MMS_STOPPED` within the grace period (``serve`` then flushes and exits), and anything
    else is a death that is made visible:
    a log line and exit status :data:`MMS_DIED_EXIT_STATUS`, so the platform (or ``mme serve``) replaces it.
    """
    deadline = time.monotonic() + startup_seconds
    pid = None
    while pid is None:
        if time.monotonic() > deadline:
            _exit_because(f"MMS did not start within {startup_seconds:.0f} s (no {pid_file})")
        time.sleep(0.1)
        pid = _recorded_pid(pid_file)
    while _running(pid):
        time.sleep(every_seconds)
    if MMS_STOPPED.wait(grace_seconds):
        return
    _exit_because(f"MMS (pid {pid}) exited")


def _recorded_pid(pid_file: Path) -> int | None:
    try:
        text = pid_file.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def own_mms_process(pid_file: Path) -> psutil.Process:
    """This run's MMS Java process, from the pid its launcher recorded in `pid_file`.

    Replaces sagemaker-inference's lookup, which takes whichever process on the machine has MMS's class name in its
    command line: with another MMS on the host (a second `mme serve`, or a serving container, whose processes a host
    sees), it found that one, and its SIGTERM handler then stopped the other instance. Raises (as the toolkit's
    lookup does, which its retry loop expects) until this run's MMS has started.
    """
    pid = _recorded_pid(pid_file)
    if pid is None or not _running(pid):
        raise RuntimeError(f"this run's MMS has not started yet (no live pid in {pid_file})")
    return psutil.Process(pid)


def _exit_because(reason: str) -> None:
    logger.error("%s; serve exits with status %d", reason, MMS_DIED_EXIT_STATUS)
    logging.shutdown()
    os._exit(MMS_DIED_EXIT_STATUS)


def main() -> None:
    """Start MMS and block until it exits. Exits with status 2 on a malformed setting."""
    try:
        settings = ServingSettings.from_env()
    except SettingsError as error:
        print(f"serve: {error}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for folder in (settings.run_dir / "tmp", settings.run_dir / "logs", settings.mms_config_file.parent):
        folder.mkdir(parents=True, exist_ok=True)
    os.environ.update(mms_environment(settings))
    # start_model_server runs `multi-model-server` from PATH: on a host that is this interpreter's environment.
    os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    # MMS resolves its logs relative to the working directory.
    os.chdir(settings.run_dir)

    # First registered, so it stops last: after MMS, its workers and the model host, nothing more can be reported.
    _start_telemetry(settings)
    if settings.model_host == SHARED:
        _start_model_host(settings)
        _start_worker_scaler(settings)

    # Imported only now: the module reads SAGEMAKER_MULTI_MODEL when it is imported.
    from sagemaker_inference import model_server

    model_server.MMS_CONFIG_FILE = str(settings.mms_config_file)
    logger.info("starting MMS on %s:%d (run dir %s)", settings.bind_host, settings.port, settings.run_dir)
    pid_file = settings.run_dir / "tmp" / MMS_PID_FILE
    stale = _recorded_pid(pid_file)
    if stale is not None and not _running(stale):
        pid_file.unlink()  # from an MMS that ran in this folder before; the watch must not read it
    threading.Thread(target=watch_mms, args=(pid_file,), name="watch MMS", daemon=True).start()
    # Our own lookup of the process to wait on and stop (own_mms_process says why).
    model_server._retrieve_mms_server_process = lambda: own_mms_process(pid_file)
    model_server.start_model_server(handler_service=handler_entry_point(settings))
    # MMS stopped because serve was asked to stop (SIGTERM): what follows (flushing capture) is no death.
    MMS_STOPPED.set()


def _start_model_host(settings: ServingSettings) -> None:
    """Start the model host before MMS, so the first load finds it; exit with MMS's death status if it cannot."""
    from handler.host.supervisor import ModelHostNotReadyError, ModelHostSupervisor

    supervisor = ModelHostSupervisor(settings)
    # After MMS (and so every worker) has stopped; a serve that is killed takes the host along (PDEATHSIG).
    atexit.register(supervisor.stop)
    try:
        supervisor.start()
    except ModelHostNotReadyError as error:
        supervisor.stop()
        _exit_because(str(error))


def _start_telemetry(settings: ServingSettings) -> None:
    """Per-model metrics and request capture (docs/observability.md): the collector the workers report to."""
    from handler.telemetry.collector import TelemetryCollector

    if not settings.telemetry_enabled:
        return
    collector = TelemetryCollector(settings)
    atexit.register(collector.stop)
    collector.start()


def _start_worker_scaler(settings: ServingSettings) -> None:
    """Scale busy models' thin workers up, and idle ones back (docs/model-host.md, "Workers per model")."""
    from handler.host.scaler import WorkerScaler

    scaler = WorkerScaler(settings)
    # atexit runs last-registered first: the scaler stops before the host does.
    atexit.register(scaler.stop)
    scaler.start()


if __name__ == "__main__":
    main()
