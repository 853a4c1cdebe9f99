"""The container's entrypoint: settings in, MMS up (``serve``).

Starts multi-model-server in multi-model mode through sagemaker-inference's ``start_model_server`` with our
handler, and blocks until MMS exits. Every path MMS writes to comes from :class:`ServingSettings`, so the same code
path runs on a host outside the container (tests, ``mme serve``).
"""

from __future__ import annotations

import logging
import os
import sys

from handler.settings import HANDLER_ENTRY_POINT, ServingSettings, SettingsError

logger = logging.getLogger(__name__)


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
        "SAGEMAKER_HANDLER": HANDLER_ENTRY_POINT,
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

    # Imported only now: the module reads SAGEMAKER_MULTI_MODEL when it is imported.
    from sagemaker_inference import model_server

    model_server.MMS_CONFIG_FILE = str(settings.mms_config_file)
    logger.info("starting MMS on %s:%d (run dir %s)", settings.bind_host, settings.port, settings.run_dir)
    model_server.start_model_server(handler_service=HANDLER_ENTRY_POINT)


if __name__ == "__main__":
    main()
