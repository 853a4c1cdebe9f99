"""Every tunable of the serving container, read from the environment in one place.

Each field documents its environment variable and default. SageMaker sets the ``SAGEMAKER_*`` variables on a real
endpoint; the ``MME_*`` ones are ours (the CDK app sets them on the model's container). The path settings exist so
the same entrypoint runs on a host outside the container, with every file it writes redirected.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from handler.telemetry.names import CAPTURE_CONTENTS, METRICS_NAMESPACE

#: The handler MMS calls for every model: ``module:function`` (a function-style handler, see DESIGN.md).
HANDLER_ENTRY_POINT = "handler.service:handle"
#: The handler of ``MME_MODEL_HOST=shared``: no TensorFlow in the worker, it forwards to the model host.
THIN_HANDLER_ENTRY_POINT = "handler.thin_service:handle"

#: ``MME_MODEL_HOST`` values: each MMS worker holds its own TensorFlow runtime and model (the baseline), or one
#: model host process holds TensorFlow and every model and the workers forward to it.
PER_WORKER = "per-worker"
SHARED = "shared"
MODEL_HOST_MODES = (PER_WORKER, SHARED)

#: Under the run folder: the model host's Unix socket (shared mode). Shorter than MMS's socket names, so the run
#: folder's length check covers it.
MODEL_HOST_SOCKET = "model-host.sock"


def model_host_socket(run_dir: Path) -> Path:
    """The Unix socket the shared model host listens on."""
    return run_dir / MODEL_HOST_SOCKET


#: Under the run folder: the Unix socket ``serve``'s telemetry collector listens on for the workers' reports.
TELEMETRY_SOCKET = "telemetry.sock"


def telemetry_socket(run_dir: Path) -> Path:
    """The Unix socket the handlers report each request and load to (:mod:`handler.telemetry.collector`)."""
    return run_dir / TELEMETRY_SOCKET


# MMS puts each worker's Unix socket at <run dir>/tmp/.mms.sock.<port>; Linux caps a socket path at 107 bytes.
_SOCKET_SUFFIX = "/tmp/.mms.sock.65535"  # noqa: S108 - a path inside the run dir, not /tmp
_UNIX_SOCKET_PATH_MAX = 107


#: Under the run folder: one file per model whose load failed, holding the handler's reason as JSON
#: (``{"reason": str, "exceeds_total_memory": bool}``). MMS answers a failed load with only "Failed to start workers";
#: a front end on the same host (``mme serve``) reads the reason here, and whether evicting other models can help.
LOAD_ERRORS_FOLDER = "load-errors"


def load_error_file(run_dir: Path, model_name: str) -> Path:
    """Where the handler leaves the reason a load of ``model_name`` failed."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", model_name).lstrip(".") or "_"
    return run_dir / LOAD_ERRORS_FOLDER / f"{safe}.json"


#: Names the container-wide tokenizer for archives that ship none.
DEFAULT_TOKENIZER_VARIABLE = "MME_DEFAULT_TOKENIZER_DIR"


class SettingsError(ValueError):
    """An environment variable holds a value the container cannot use; the message names it."""


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be >= {minimum}")
    return value


def _percent(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if not 0 <= value <= 100:
        raise SettingsError(f"{name}={raw} must be between 0 and 100")
    return value


def _model_percent(env: Mapping[str, str], name: str) -> dict[str, float]:
    raw = env.get(name, "").strip()
    if not raw:
        return {}
    try:
        shares = json.loads(raw)
    except ValueError:
        raise SettingsError(f'{name} is not JSON; write an object like {{"sentiment.tar.gz": 5}}') from None
    if not isinstance(shares, dict):
        raise SettingsError(f'{name} must be a JSON object like {{"sentiment.tar.gz": 5}}')
    checked = {}
    for model, share in shares.items():
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 100:
            raise SettingsError(f"{name}: the share of {model!r} must be a number between 0 and 100, not {share!r}")
        checked[str(model)] = float(share)
    return checked


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"true", "1", "yes", "on"}:
        return True
    if raw in {"false", "0", "no", "off"}:
        return False
    raise SettingsError(f"{name}={raw!r} must be true or false")


def _optional_path(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name, "").strip()
    return Path(raw) if raw else None


@dataclass(frozen=True, kw_only=True)
class ServingSettings:
    """The container's configuration. Build it with :meth:`from_env`."""

    #: ``SAGEMAKER_BIND_TO_PORT`` (8080): the one port MMS serves inference and management on.
    port: int = 8080
    #: ``MME_BIND_HOST`` (``0.0.0.0``): the address MMS listens on; tests and ``mme serve`` use ``127.0.0.1``.
    bind_host: str = "0.0.0.0"  # noqa: S104 - a container must listen on all interfaces
    #: ``SAGEMAKER_MODEL_SERVER_WORKERS`` (1): Python worker processes per loaded model when it is loaded. In
    #: per-worker mode each holds a whole TensorFlow runtime (~650 MB), so more than one rarely pays on a multi-model
    #: endpoint; in shared mode they are thin forwarders.
    workers_per_model: int = 1
    #: ``MME_RESPONSE_TIMEOUT_SECONDS`` (60): MMS gives up on a worker after this long; SageMaker's own limit is 60.
    response_timeout_seconds: int = 60
    #: ``SAGEMAKER_MAX_PAYLOAD_IN_MB`` (6): the largest request body MMS accepts (SageMaker's limit is 6 MB).
    max_payload_mb: int = 6
    #: ``MME_TF_INTRA_OP_THREADS`` (0 = TensorFlow's choice, one per core): threads inside one op, set once for the
    #: model host (per worker in per-worker mode).
    tf_intra_op_threads: int = 0
    #: ``MME_TF_INTER_OP_THREADS`` (0 = TensorFlow's choice): ops run in parallel, likewise.
    tf_inter_op_threads: int = 0
    #: ``MME_JVM_HEAP`` (``1g``): the MMS front end's Java heap (``-Xmx``); the models live in the Python workers.
    jvm_heap: str = "1g"
    #: ``MME_LOG_LEVEL`` (``INFO``): level of the handler's Python logs.
    log_level: str = "INFO"
    #: ``MME_MAX_TEXTS_PER_REQUEST`` (64): more texts in one request is a 400, to bound a request's latency.
    max_texts_per_request: int = 64
    #: ``MME_LOAD_MEMORY_RESERVE_MB`` (300), per-worker mode: a load is refused with 507 unless this much memory
    #: plus twice the SavedModel's size is free (the loading worker's own TensorFlow runtime costs ~250 MiB); 0 turns
    #: the check off. Shared mode starts no runtime per load and uses ``MME_MEMORY_HEADROOM_MB`` instead.
    load_memory_reserve_mb: int = 300
    #: ``MME_MEMORY_HEADROOM_MB`` (512), shared mode: memory the model host keeps free under the container's limit at
    #: every load, for what grows after it: the tensors of requests in flight (a bert-base batch of 16 texts of 128
    #: tokens peaks near 100 MiB, and the host runs one request per model at a time, several at once) and the
    #: host's and MMS's own growth (allocator fragmentation, the JVM heap). A load is refused with 507 unless free
    #: memory, less what loads in progress will take, covers twice its SavedModel plus this; 0 turns the check off.
    #: Per-worker mode uses ``MME_LOAD_MEMORY_RESERVE_MB`` instead (docs/model-host.md).
    memory_headroom_mb: int = 512
    #: ``MME_DEFAULT_TOKENIZER_DIR`` (unset): tokenizer for archives that ship none (the original ``0/``-only ones);
    #: on AWS the stage setting ``default_tokenizer`` bakes one into the image and sets this, locally
    #: ``mme serve --default-tokenizer`` does.
    default_tokenizer_dir: Path | None = None
    #: ``MME_MMS_CONFIG_FILE`` (``/etc/sagemaker-mms.properties``): where the MMS configuration is written.
    mms_config_file: Path = Path("/etc/sagemaker-mms.properties")
    #: ``MME_RUN_DIR`` (``/tmp/mme``): MMS logs, pid file, worker sockets and JVM temp files.
    run_dir: Path = Path("/tmp/mme")  # noqa: S108 - the one writable scratch place every container has
    #: ``MME_MODEL_HOST`` (``shared``): ``shared`` runs one model host process holding TensorFlow and every model,
    #: which ``serve`` starts and restarts, and MMS's workers forward to it, so a model costs about its weights
    #: (docs/model-host.md); ``per-worker`` gives each MMS worker its own TensorFlow runtime (~250 MB per model however
    #: small), the design this project started from, kept selectable as the baseline.
    model_host: str = SHARED
    #: ``MME_MODEL_HOST_START_TIMEOUT_SECONDS`` (60): how long ``serve`` waits for a (re)started model host to listen,
    #: and a worker waits to reach it; TensorFlow's import takes a few seconds of it.
    model_host_start_timeout_seconds: int = 60
    #: ``MME_MAX_BATCH_SIZE`` (8): shared mode, most texts per model call when concurrent requests for one model are
    #: batched (docs/model-host.md); 1 turns batching off. A demo model takes 1.1 ms for 1 text and 1.5 ms for 8
    #: (0.19 ms a text, most of the gain: 16 give 0.13), and a batch's latency grows with it (padded to its longest
    #: text), so 8 buys most of the throughput at little latency. A larger request runs alone.
    max_batch_size: int = 8
    #: ``MME_MAX_BATCH_DELAY_MS`` (0): shared mode, how long a batch waits for more requests after its first one
    #: arrived, only while another worker of the model could still send. 0 batches what queued while the model's
    #: previous call ran (Triton's default), which is what a busy model has; a wait would be paid by every request
    #: of a model with idle workers, and back-to-back requests at concurrency 1 give a model a second worker:
    #: measured with 5 ms, bert-base's warm p50 through ``mme serve`` was 1.36x the in-process floor.
    max_batch_delay_ms: int = 0
    #: ``MME_PARALLEL_BATCHES`` (2): shared mode, how many batches of one model may be in the model at once. On a CPU
    #: a large model's calls gain from running side by side (TensorFlow spreads them over the cores) as much as
    #: from batching, whose batch is padded to its longest text: measured here with bert-base shape, 8 texts in
    #: one call gave 39 texts/s and 8 concurrent single calls 46. 2 matches the default instance's 2 vCPUs.
    parallel_batches: int = 2
    #: ``MME_MAX_WORKERS_PER_MODEL`` (4): in shared mode, the most thin MMS workers ``serve`` gives a busy model
    #: (docs/model-host.md, "Workers per model"). A thin worker costs ~10 MB; twice the 2 cores of the default
    #: instance keeps both cores on the model while a batch gathers the next requests. Per-worker mode ignores it.
    max_workers_per_model: int = 4
    #: ``MME_WORKER_IDLE_SECONDS`` (60): in shared mode, a model that had no request in flight for this long goes
    #: back to ``SAGEMAKER_MODEL_SERVER_WORKERS`` workers.
    worker_idle_seconds: int = 60
    #: ``MME_WORKER_SCALE_INTERVAL_SECONDS`` (1): in shared mode, how often ``serve`` reads the host's per-model
    #: activity and decides each model's workers.
    worker_scale_interval_seconds: int = 1
    #: ``MME_CAPTURE_DESTINATION`` (unset = capture off): where sampled requests are captured as JSON Lines
    #: (docs/observability.md): ``s3://bucket/prefix/`` or a local folder. A deployed stage sets its model bucket's
    #: ``capture/`` prefix when its ``capture_percent`` (or a per-model override) is above 0.
    capture_destination: str = ""
    #: ``MME_CAPTURE_PERCENT`` (100): the share of each model's requests captured, 0 to 100.
    capture_percent: float = 100.0
    #: ``MME_CAPTURE_MODEL_PERCENT`` (``{}``): per-model shares overriding ``MME_CAPTURE_PERCENT``, as a JSON object
    #: (``{"sentiment.tar.gz": 5}``); 0 turns a model's capture off.
    capture_model_percent: Mapping[str, float] = field(default_factory=dict)
    #: ``MME_CAPTURE_CONTENT`` (``both``): what a record holds of the request: ``inputs``, ``outputs`` or ``both``.
    capture_content: str = "both"
    #: ``MME_CAPTURE_MAX_RECORD_BYTES`` (262144): a record's payloads are cut to fit (and marked ``truncated``).
    capture_max_record_bytes: int = 256 * 1024
    #: ``MME_CAPTURE_BATCH_BYTES`` (4194304) and ``MME_CAPTURE_BATCH_SECONDS`` (60): a model's records of one hour are
    #: written as one object once they reach this size or the oldest has waited this long, whichever comes first.
    capture_batch_bytes: int = 4 * 1024 * 1024
    capture_batch_seconds: int = 60
    #: ``MME_CAPTURE_BUFFER_MB`` (64): records waiting to be written, at most; a record that does not fit is dropped,
    #: counted and logged (a slow or failing destination never slows a request).
    capture_buffer_mb: int = 64
    #: ``MME_CAPTURE_WRITE_ATTEMPTS`` (5): tries per object (botocore's standard retry mode with backoff on S3);
    #: an object that still fails is dropped, counted and logged.
    capture_write_attempts: int = 5
    #: ``MME_CAPTURE_FLUSH_SECONDS`` (15): at SIGTERM, how long ``serve`` spends writing what is buffered, after MMS
    #: has stopped; with MMS's own stop it fits SageMaker's 30 s.
    capture_flush_seconds: int = 15
    #: ``MME_CAPTURE_KMS_KEY_ID`` (unset): written objects are encrypted with this KMS key (SSE-KMS); unset, the
    #: bucket's default encryption applies.
    capture_kms_key_id: str = ""
    #: ``MME_METRICS_ENABLED`` (true): per-model metrics as CloudWatch Embedded Metric Format lines on stdout.
    metrics_enabled: bool = True
    #: ``MME_METRICS_NAMESPACE`` (``MultiModelEndpoint/Models``) and ``MME_METRICS_ENDPOINT`` (``local``): the
    #: metrics' namespace and the value of their ``EndpointName`` dimension (a stage sets its endpoint's name).
    metrics_namespace: str = METRICS_NAMESPACE
    metrics_endpoint: str = "local"
    #: ``MME_METRICS_INTERVAL_SECONDS`` (60): one line per model per interval (CloudWatch's standard resolution);
    #: ``mme serve`` uses 5 so its figures follow closely.
    metrics_interval_seconds: int = 60

    @property
    def memory_kept_free_mb(self) -> int:
        """MiB a load keeps free beyond its own estimate: the headroom in shared mode, the loading worker's runtime
        reserve in per-worker mode (what ``mme cost`` sets aside on each instance)."""
        return self.memory_headroom_mb if self.model_host == SHARED else self.load_memory_reserve_mb

    @property
    def runtimes_per_model(self) -> int:
        """Copies of a loaded model, each with the memory it costs: one per worker in per-worker mode; one in shared
        mode, whose workers are thin forwarders."""
        return self.workers_per_model if self.model_host == PER_WORKER else 1

    @property
    def telemetry_enabled(self) -> bool:
        """Whether the handlers report requests at all: metrics are on, or something is captured."""
        return self.metrics_enabled or bool(self.capture_destination)

    def capture_percent_of(self, model: str) -> float:
        """The share of ``model``'s requests captured, 0 to 100 (0 when capture is off)."""
        if not self.capture_destination:
            return 0.0
        return self.capture_model_percent.get(model, self.capture_percent)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServingSettings:
        """Read the settings from ``env`` (default: ``os.environ``).

        Raises:
            SettingsError: a variable is malformed; the message names it.
        """
        env = os.environ if env is None else env
        log_level = env.get("MME_LOG_LEVEL", "INFO").strip().upper() or "INFO"
        if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise SettingsError(f"MME_LOG_LEVEL={log_level!r} must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        jvm_heap = env.get("MME_JVM_HEAP", "1g").strip() or "1g"
        if not (jvm_heap[:-1].isdigit() and jvm_heap[-1].lower() in "kmg"):
            raise SettingsError(f"MME_JVM_HEAP={jvm_heap!r} must look like 512m or 2g")
        run_dir = _optional_path(env, "MME_RUN_DIR") or Path("/tmp/mme")  # noqa: S108
        if len(str(run_dir) + _SOCKET_SUFFIX) > _UNIX_SOCKET_PATH_MAX:
            raise SettingsError(
                f"MME_RUN_DIR={str(run_dir)!r} is too long: MMS's worker sockets under it would exceed the "
                f"{_UNIX_SOCKET_PATH_MAX}-byte limit of a Unix socket path; use a folder of at most "
                f"{_UNIX_SOCKET_PATH_MAX - len(_SOCKET_SUFFIX)} characters"
            )
        model_host = env.get("MME_MODEL_HOST", "").strip().lower() or SHARED
        if model_host not in MODEL_HOST_MODES:
            raise SettingsError(f"MME_MODEL_HOST={model_host!r} must be one of {', '.join(MODEL_HOST_MODES)}")
        workers_per_model = _int(env, "SAGEMAKER_MODEL_SERVER_WORKERS", 1, minimum=1)
        max_workers_per_model = _int(env, "MME_MAX_WORKERS_PER_MODEL", 4, minimum=1)
        if model_host == SHARED and max_workers_per_model < workers_per_model:
            raise SettingsError(
                f"MME_MAX_WORKERS_PER_MODEL={max_workers_per_model} must be >= "
                f"SAGEMAKER_MODEL_SERVER_WORKERS={workers_per_model}, the workers every model starts with"
            )
        capture_content = env.get("MME_CAPTURE_CONTENT", "").strip().lower() or "both"
        if capture_content not in CAPTURE_CONTENTS:
            raise SettingsError(f"MME_CAPTURE_CONTENT={capture_content!r} must be one of {', '.join(CAPTURE_CONTENTS)}")
        return cls(
            port=_int(env, "SAGEMAKER_BIND_TO_PORT", 8080, minimum=1),
            bind_host=env.get("MME_BIND_HOST", "").strip() or "0.0.0.0",  # noqa: S104
            workers_per_model=workers_per_model,
            response_timeout_seconds=_int(env, "MME_RESPONSE_TIMEOUT_SECONDS", 60, minimum=1),
            max_payload_mb=_int(env, "SAGEMAKER_MAX_PAYLOAD_IN_MB", 6, minimum=1),
            tf_intra_op_threads=_int(env, "MME_TF_INTRA_OP_THREADS", 0),
            tf_inter_op_threads=_int(env, "MME_TF_INTER_OP_THREADS", 0),
            jvm_heap=jvm_heap,
            log_level=log_level,
            max_texts_per_request=_int(env, "MME_MAX_TEXTS_PER_REQUEST", 64, minimum=1),
            load_memory_reserve_mb=_int(env, "MME_LOAD_MEMORY_RESERVE_MB", 300),
            memory_headroom_mb=_int(env, "MME_MEMORY_HEADROOM_MB", 512),
            default_tokenizer_dir=_optional_path(env, DEFAULT_TOKENIZER_VARIABLE),
            mms_config_file=_optional_path(env, "MME_MMS_CONFIG_FILE") or Path("/etc/sagemaker-mms.properties"),
            run_dir=run_dir,
            model_host=model_host,
            model_host_start_timeout_seconds=_int(env, "MME_MODEL_HOST_START_TIMEOUT_SECONDS", 60, minimum=1),
            max_batch_size=_int(env, "MME_MAX_BATCH_SIZE", 8, minimum=1),
            max_batch_delay_ms=_int(env, "MME_MAX_BATCH_DELAY_MS", 0),
            parallel_batches=_int(env, "MME_PARALLEL_BATCHES", 2, minimum=1),
            max_workers_per_model=max_workers_per_model,
            worker_idle_seconds=_int(env, "MME_WORKER_IDLE_SECONDS", 60, minimum=1),
            worker_scale_interval_seconds=_int(env, "MME_WORKER_SCALE_INTERVAL_SECONDS", 1, minimum=1),
            capture_destination=env.get("MME_CAPTURE_DESTINATION", "").strip(),
            capture_percent=_percent(env, "MME_CAPTURE_PERCENT", 100.0),
            capture_model_percent=_model_percent(env, "MME_CAPTURE_MODEL_PERCENT"),
            capture_content=capture_content,
            capture_max_record_bytes=_int(env, "MME_CAPTURE_MAX_RECORD_BYTES", 256 * 1024, minimum=1024),
            capture_batch_bytes=_int(env, "MME_CAPTURE_BATCH_BYTES", 4 * 1024 * 1024, minimum=1),
            capture_batch_seconds=_int(env, "MME_CAPTURE_BATCH_SECONDS", 60, minimum=1),
            capture_buffer_mb=_int(env, "MME_CAPTURE_BUFFER_MB", 64, minimum=1),
            capture_write_attempts=_int(env, "MME_CAPTURE_WRITE_ATTEMPTS", 5, minimum=1),
            capture_flush_seconds=_int(env, "MME_CAPTURE_FLUSH_SECONDS", 15),
            capture_kms_key_id=env.get("MME_CAPTURE_KMS_KEY_ID", "").strip(),
            metrics_enabled=_bool(env, "MME_METRICS_ENABLED", True),
            metrics_namespace=env.get("MME_METRICS_NAMESPACE", "").strip() or METRICS_NAMESPACE,
            metrics_endpoint=env.get("MME_METRICS_ENDPOINT", "").strip() or "local",
            metrics_interval_seconds=_int(env, "MME_METRICS_INTERVAL_SECONDS", 60, minimum=1),
        )
