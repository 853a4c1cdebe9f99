"""Every tunable of the serving container, read from the environment in one place.

Each field documents its environment variable and default. SageMaker sets the ``SAGEMAKER_*`` variables on a real
endpoint; the ``MME_*`` ones are ours (the CDK app sets them on the model's container). The path settings exist so
the same entrypoint runs on a host outside the container, with every file it writes redirected.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

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
        )
