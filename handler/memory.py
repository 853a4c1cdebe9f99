"""Memory for one more model: refuse a load with 507 before the kernel's OOM killer decides instead.

Under a container memory limit (or on a full instance) a load that does not fit is killed by the kernel: MMS then
answers 500 "Failed to start workers", which SageMaker does not treat as "evict and retry", and the kernel may pick
a worker of a model that is already serving (DESIGN.md). So a worker about to load checks the memory left first and
raises :class:`~handler.errors.ModelOutOfMemoryError` (MMS answers 507) when the model will not fit; and while it
loads, it offers itself to the OOM killer first, so that a misjudged load kills the loading worker, never a serving
one or MMS itself.

The shared model host (``MME_MODEL_HOST=shared``) runs the same check with its own terms: a load there starts no
runtime, so it needs only its own estimate, while a headroom stays free for the requests in flight of every model it
holds; it counts what loads still in progress will take, so two concurrent loads cannot both be granted the same
free memory (docs/model-host.md).
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

from handler.errors import ModelOutOfMemoryError, ModelTooLargeError

logger = logging.getLogger(__name__)

_MIB = 1024 * 1024
#: A limit this large is the kernel's way of saying "no limit" (cgroup v1 reports 2**63 rounded to a page).
_NO_LIMIT = 2**60
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: Kernel OOM badness adjustment: -1000 (never) .. 1000 (first). Raising it needs no privilege, and lowering it back
#: to 0 or above needs none either.
_OOM_SCORE_ADJ = Path("/proc/self/oom_score_adj")
LOADING_OOM_SCORE_ADJ = 1000
SERVING_OOM_SCORE_ADJ = 500


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def cgroup_free_bytes(root: Path = CGROUP_ROOT) -> int | None:
    """Memory left under this container's cgroup limit (limit minus usage, reclaimable page cache not counted as
    used), or None without a limit. Reads cgroup v2, else v1."""
    if (root / "memory.max").is_file():  # v2
        limit, usage = _read_int(root / "memory.max"), _read_int(root / "memory.current")
        inactive = _stat(root / "memory.stat", "inactive_file")
    else:  # v1
        folder = root / "memory"
        limit, usage = _read_int(folder / "memory.limit_in_bytes"), _read_int(folder / "memory.usage_in_bytes")
        inactive = _stat(folder / "memory.stat", "total_inactive_file")
    if limit is None or usage is None or limit >= _NO_LIMIT:
        return None
    return limit - max(usage - inactive, 0)


def cgroup_limit_bytes(root: Path = CGROUP_ROOT) -> int | None:
    """This container's cgroup memory limit, or None without one. Reads cgroup v2, else v1."""
    if (root / "memory.max").is_file():  # v2
        limit = _read_int(root / "memory.max")  # "max" (no limit) is not a number
    else:  # v1
        limit = _read_int(root / "memory" / "memory.limit_in_bytes")
    return None if limit is None or limit >= _NO_LIMIT else limit


def cgroup_working_set_bytes(folder: Path) -> int | None:
    """What the kernel charges the cgroup whose memory folder is ``folder`` and would not reclaim before an OOM
    kill: usage minus inactive page cache (as ``docker stats`` and the kubelet count it). Reads cgroup v2 (the
    folder holds ``memory.current``), else v1; None when neither file is there."""
    if (folder / "memory.current").is_file():  # v2
        usage, inactive = _read_int(folder / "memory.current"), _stat(folder / "memory.stat", "inactive_file")
    else:  # v1
        usage = _read_int(folder / "memory.usage_in_bytes")
        inactive = _stat(folder / "memory.stat", "total_inactive_file")
    return None if usage is None else max(usage - inactive, 0)


def system_total_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """The machine's memory (``MemTotal``), or None."""
    return _meminfo_bytes(meminfo, "MemTotal:")


def total_memory_bytes(cgroup_root: Path = CGROUP_ROOT, meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """All the memory this container can ever have: its cgroup limit, or the machine's memory without one."""
    totals = [value for value in (cgroup_limit_bytes(cgroup_root), system_total_bytes(meminfo)) if value is not None]
    return min(totals) if totals else None


#: TensorFlow's out-of-memory message names the tensor it could not allocate, e.g. "OOM when allocating tensor with
#: shape[1073741824,1024] and type float on /job:localhost/...".
_TF_OOM = re.compile(r"OOM when allocating tensor with shape\[([0-9,\s]*)\] and type (\w+)")
#: Bytes per element of TensorFlow's type names (DataTypeString); an unknown type counts 1, an underestimate.
_TF_TYPE_BYTES = {"float": 4, "double": 8, "half": 2, "bfloat16": 2, "int8": 1, "uint8": 1, "int16": 2,
                  "uint16": 2, "int32": 4, "uint32": 4, "int64": 8, "uint64": 8, "bool": 1, "complex64": 8,
                  "complex128": 16}  # fmt: skip


def tensorflow_request_bytes(message: str) -> int | None:
    """The size of the tensor a TensorFlow out-of-memory message says it could not allocate, or None."""
    match = _TF_OOM.search(message)
    if match is None:
        return None
    dimensions = [int(size) for size in match.group(1).replace(" ", "").split(",") if size]
    return math.prod(dimensions) * _TF_TYPE_BYTES.get(match.group(2), 1)


def beyond_total_memory(
    error: ModelOutOfMemoryError, *, cgroup_root: Path = CGROUP_ROOT, meminfo: Path = Path("/proc/meminfo")
) -> ModelOutOfMemoryError:
    """``error`` as a :class:`ModelTooLargeError` when TensorFlow asked for one tensor larger than all the memory the
    container can have (so no eviction can make it fit), else ``error`` itself."""
    requested = tensorflow_request_bytes(str(error))
    total = total_memory_bytes(cgroup_root, meminfo)
    if requested is None or total is None or requested <= total or isinstance(error, ModelTooLargeError):
        return error
    return ModelTooLargeError(
        f"{error} (one tensor of {requested // _MIB} MiB, more than the container's {total // _MIB} MiB in total)"
    )


def system_available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """The kernel's estimate of memory available without swapping (``MemAvailable``), or None."""
    return _meminfo_bytes(meminfo, "MemAvailable:")


def _meminfo_bytes(meminfo: Path, field: str) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def folder_bytes(folder: Path) -> int:
    """Total size of the files under ``folder``."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def check_room_for(
    saved_model_dir: Path,
    *,
    reserve_mb: int,
    headroom_mb: int = 0,
    pending_bytes: int = 0,
    cgroup_root: Path = CGROUP_ROOT,
    meminfo: Path = Path("/proc/meminfo"),
) -> int:
    """Refuse a load that would not fit, and return what it needs (bytes) when it does.

    The load needs ``reserve_mb`` (per-worker mode: the loading worker's own TensorFlow runtime; 0 in the shared
    model host, which starts none) plus twice the SavedModel's files (weights in memory, and the graph built from
    them). Free memory, less ``pending_bytes`` (what loads still in progress will take), must cover that need plus
    ``headroom_mb``, kept free for requests in flight. ``reserve_mb`` and ``headroom_mb`` both 0 checks nothing
    (and returns 0).

    Raises:
        ModelTooLargeError: the need plus the headroom is more than all the memory the container can have: no
            eviction helps.
        ModelOutOfMemoryError: less memory is free than the load needs; MMS answers 507 and a front end evicts.
    """
    if reserve_mb <= 0 and headroom_mb <= 0:
        return 0
    needed = max(reserve_mb, 0) * _MIB + 2 * folder_bytes(saved_model_dir)
    kept_free = max(headroom_mb, 0) * _MIB
    name = saved_model_dir.parent.name or saved_model_dir
    why = "twice the SavedModel"
    if reserve_mb > 0:
        why = f"MME_LOAD_MEMORY_RESERVE_MB={reserve_mb} plus {why}"
    if headroom_mb > 0:
        why = f"{why}, and MME_MEMORY_HEADROOM_MB={headroom_mb} kept free"
    total = total_memory_bytes(cgroup_root, meminfo)
    if total is not None and needed + kept_free > total:
        raise ModelTooLargeError(
            f"{name} needs about {(needed + kept_free) // _MIB} MiB ({why}), more than the container's "
            f"{total // _MIB} MiB in total: it cannot load even with no other model loaded"
        )
    free = [value for value in (cgroup_free_bytes(cgroup_root), system_available_bytes(meminfo)) if value is not None]
    if not free:
        return needed
    left = min(free) - pending_bytes
    if left < needed + kept_free:
        pending = f", {pending_bytes // _MIB} MiB of it promised to loads in progress" if pending_bytes else ""
        raise ModelOutOfMemoryError(
            f"not enough memory to load {name}: {min(free) // _MIB} MiB free{pending}, about "
            f"{(needed + kept_free) // _MIB} MiB needed ({why}); unload a model first"
        )
    return needed


def offer_to_oom_killer(score_adj: int) -> None:
    """Set this process's OOM score adjustment; best effort (a kernel or sandbox may refuse)."""
    try:
        _OOM_SCORE_ADJ.write_text(str(score_adj))
    except OSError as error:
        logger.debug("cannot set oom_score_adj to %d: %s", score_adj, error)
