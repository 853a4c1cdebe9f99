"""Memory for one more model: refuse a load with 507 before the kernel's OOM killer decides instead.

Under a container memory limit (or on a full instance) a load that does not fit is killed by the kernel: MMS then
answers 500 "Failed to start workers", which SageMaker does not treat as "evict and retry", and the kernel may pick
a worker of a model that is already serving (DESIGN.md). So a worker about to load checks the memory left first and
raises :class:`~handler.errors.ModelOutOfMemoryError` (MMS answers 507) when the model will not fit; and while it
loads, it offers itself to the OOM killer first, so that a misjudged load kills the loading worker, never a serving
one or MMS itself.
"""

from __future__ import annotations

import logging
from pathlib import Path

from handler.errors import ModelOutOfMemoryError

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


def system_available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """The kernel's estimate of memory available without swapping (``MemAvailable``), or None."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
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
    cgroup_root: Path = CGROUP_ROOT,
    meminfo: Path = Path("/proc/meminfo"),
) -> None:
    """Refuse a load that would not fit: free memory must cover ``reserve_mb`` (a worker's TensorFlow runtime) plus
    twice the SavedModel's files (weights in memory, and the graph built from them). ``reserve_mb`` 0 checks nothing.

    Raises:
        ModelOutOfMemoryError: less memory is free than the load needs; MMS answers 507 and a front end evicts.
    """
    if reserve_mb <= 0:
        return
    free = [value for value in (cgroup_free_bytes(cgroup_root), system_available_bytes(meminfo)) if value is not None]
    if not free:
        return
    needed = reserve_mb * _MIB + 2 * folder_bytes(saved_model_dir)
    if min(free) < needed:
        raise ModelOutOfMemoryError(
            f"not enough memory to load {saved_model_dir.parent.name or saved_model_dir}: {min(free) // _MIB} MiB "
            f"free, about {needed // _MIB} MiB needed (MME_LOAD_MEMORY_RESERVE_MB={reserve_mb} plus twice the "
            "SavedModel); unload a model first"
        )


def offer_to_oom_killer(score_adj: int) -> None:
    """Set this process's OOM score adjustment; best effort (a kernel or sandbox may refuse)."""
    try:
        _OOM_SCORE_ADJ.write_text(str(score_adj))
    except OSError as error:
        logger.debug("cannot set oom_score_adj to %d: %s", score_adj, error)
