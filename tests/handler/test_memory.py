"""Room for one more model: reading the cgroup's limit and the kernel's available memory, and the 507 refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from handler.errors import ModelOutOfMemoryError
from handler.memory import cgroup_free_bytes, check_room_for, system_available_bytes

MIB = 1024 * 1024


def _files(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_cgroup_v2_free_is_limit_minus_usage_without_reclaimable_cache(tmp_path: Path) -> None:
    root = _files(tmp_path, {"memory.max": f"{1024 * MIB}\n", "memory.current": f"{700 * MIB}\n",
                             "memory.stat": f"anon 1\ninactive_file {200 * MIB}\nactive_file 5\n"})  # fmt: skip
    assert cgroup_free_bytes(root) == 524 * MIB


def test_cgroup_v1_free_and_no_limit(tmp_path: Path) -> None:
    limited = _files(tmp_path / "a", {"memory/memory.limit_in_bytes": str(1024 * MIB),
                                      "memory/memory.usage_in_bytes": str(900 * MIB),
                                      "memory/memory.stat": f"total_inactive_file {100 * MIB}\n"})  # fmt: skip
    assert cgroup_free_bytes(limited) == 224 * MIB
    unlimited = _files(tmp_path / "b", {"memory/memory.limit_in_bytes": "9223372036854771712",
                                        "memory/memory.usage_in_bytes": str(900 * MIB)})  # fmt: skip
    assert cgroup_free_bytes(unlimited) is None
    assert cgroup_free_bytes(_files(tmp_path / "c", {"memory.max": "max\n", "memory.current": "5\n"})) is None


def test_mem_available_from_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:    2048 kB\n")
    assert system_available_bytes(meminfo) == 2 * MIB
    assert system_available_bytes(tmp_path / "missing") is None


def test_a_load_that_does_not_fit_is_refused_with_a_memory_error_saying_why(tmp_path: Path) -> None:
    saved_model = tmp_path / "model" / "0"
    saved_model.mkdir(parents=True)
    (saved_model / "variables.data").write_bytes(b"\0" * (50 * MIB))
    cgroup = _files(tmp_path / "cg", {"memory.max": str(1024 * MIB), "memory.current": str(700 * MIB)})
    meminfo = _files(tmp_path, {"meminfo": "MemAvailable: 20000000 kB\n"}) / "meminfo"
    with pytest.raises(ModelOutOfMemoryError, match=r"324 MiB free, about 400 MiB needed") as caught:
        check_room_for(saved_model, reserve_mb=300, cgroup_root=cgroup, meminfo=meminfo)
    assert isinstance(caught.value, MemoryError)  # what MMS answers with 507
    check_room_for(saved_model, reserve_mb=200, cgroup_root=cgroup, meminfo=meminfo)  # 300 MiB needed: fits
    check_room_for(saved_model, reserve_mb=0, cgroup_root=cgroup, meminfo=meminfo)  # the check is off
