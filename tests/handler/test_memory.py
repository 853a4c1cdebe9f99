"""Room for one more model: reading the cgroup's limit and the kernel's available memory, and the 507 refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from handler.errors import ModelOutOfMemoryError, ModelTooLargeError
from handler.memory import (
    beyond_total_memory,
    cgroup_free_bytes,
    cgroup_working_set_bytes,
    check_room_for,
    system_available_bytes,
    tensorflow_request_bytes,
    total_memory_bytes,
)

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


def test_total_memory_is_the_cgroup_limit_or_else_the_machines(tmp_path: Path) -> None:
    meminfo = _files(tmp_path, {"meminfo": "MemTotal:       4194304 kB\nMemAvailable:    2048 kB\n"}) / "meminfo"
    v1 = _files(tmp_path / "v1", {"memory/memory.limit_in_bytes": str(1024 * MIB)})
    v2 = _files(tmp_path / "v2", {"memory.max": f"{512 * MIB}\n"})
    unlimited = _files(tmp_path / "none", {"memory.max": "max\n"})
    assert total_memory_bytes(v1, meminfo) == 1024 * MIB
    assert total_memory_bytes(v2, meminfo) == 512 * MIB
    assert total_memory_bytes(unlimited, meminfo) == 4096 * MIB


def test_cgroup_working_set_leaves_out_reclaimable_cache_v1_and_v2(tmp_path: Path) -> None:
    v1 = _files(tmp_path / "v1", {"memory.usage_in_bytes": str(900 * MIB),
                                  "memory.stat": f"cache 5\ntotal_inactive_file {100 * MIB}\n"})  # fmt: skip
    v2 = _files(tmp_path / "v2", {"memory.current": str(700 * MIB), "memory.stat": f"inactive_file {200 * MIB}\n"})
    assert cgroup_working_set_bytes(v1) == 800 * MIB
    assert cgroup_working_set_bytes(v2) == 500 * MIB
    assert cgroup_working_set_bytes(tmp_path / "gone") is None


def test_tensorflows_out_of_memory_message_gives_the_tensors_size() -> None:
    # As TensorFlow 2.21 words it (the greedy test model's warm-up).
    message = ("Graph execution error:\n\nOOM when allocating tensor with shape[1073741824,1024] and type float on "
               "/job:localhost/replica:0/task:0/device:CPU:0 by allocator mklcpu\n\t [[{{node zeros}}]]")  # fmt: skip
    assert tensorflow_request_bytes(message) == 4 * 1024**4
    assert tensorflow_request_bytes("OOM when allocating tensor with shape[3, 5] and type int64 on ...") == 120
    assert tensorflow_request_bytes("failed to allocate memory") is None


def test_a_tensor_larger_than_the_whole_container_means_too_large_even_alone(tmp_path: Path) -> None:
    cgroup = _files(tmp_path / "cg", {"memory.max": str(1024 * MIB)})
    meminfo = _files(tmp_path, {"meminfo": "MemTotal: 20000000 kB\n"}) / "meminfo"
    huge = ModelOutOfMemoryError("out of memory: OOM when allocating tensor with shape[2048,1048576] and type float")
    refusal = beyond_total_memory(huge, cgroup_root=cgroup, meminfo=meminfo)
    assert isinstance(refusal, ModelTooLargeError)
    assert isinstance(refusal, MemoryError)  # still a 507 for MMS
    assert "one tensor of 8192 MiB, more than the container's 1024 MiB in total" in str(refusal)
    small = ModelOutOfMemoryError("OOM when allocating tensor with shape[256,1048576] and type float")
    assert beyond_total_memory(small, cgroup_root=cgroup, meminfo=meminfo) is small  # may fit once others unload
    vague = ModelOutOfMemoryError("out of memory")
    assert beyond_total_memory(vague, cgroup_root=cgroup, meminfo=meminfo) is vague


def test_a_load_needing_more_than_the_whole_container_is_too_large_not_just_out_of_memory(tmp_path: Path) -> None:
    saved_model = tmp_path / "model" / "0"
    saved_model.mkdir(parents=True)
    (saved_model / "variables.data").write_bytes(b"\0" * (400 * MIB))
    cgroup = _files(tmp_path / "cg", {"memory.max": str(1024 * MIB), "memory.current": str(100 * MIB)})
    meminfo = _files(tmp_path, {"meminfo": "MemTotal: 20000000 kB\nMemAvailable: 20000000 kB\n"}) / "meminfo"
    with pytest.raises(ModelTooLargeError, match=r"about 1100 MiB .* more than the container's 1024 MiB in total"):
        check_room_for(saved_model, reserve_mb=300, cgroup_root=cgroup, meminfo=meminfo)
    # Needing 1000 MiB of 1024 fits alone, so it is the ordinary 507 that eviction answers.
    with pytest.raises(ModelOutOfMemoryError) as caught:
        check_room_for(saved_model, reserve_mb=200, cgroup_root=cgroup, meminfo=meminfo)
    assert not isinstance(caught.value, ModelTooLargeError)


def _saved_model(root: Path, mib: int) -> Path:
    saved_model = root / "0"
    saved_model.mkdir(parents=True)
    (saved_model / "saved_model.pb").write_bytes(b"\0")
    with (saved_model / "variables.data").open("wb") as variables:
        variables.truncate(mib * MIB - 1)  # sparse: its size counts, no disk is written
    return saved_model


def test_shared_rule_needs_twice_the_model_with_the_headroom_kept_free_cgroup_v2(tmp_path: Path) -> None:
    saved_model = _saved_model(tmp_path / "model", 50)
    cgroup = _files(tmp_path / "cg", {"memory.max": str(2048 * MIB), "memory.current": str(1448 * MIB),
                                      "memory.stat": f"inactive_file {100 * MIB}\n"})  # fmt: skip
    meminfo = _files(tmp_path, {"meminfo": "MemTotal: 20000000 kB\nMemAvailable: 20000000 kB\n"}) / "meminfo"
    # 700 MiB free: the model's 100 MiB and 512 MiB of headroom fit, and the check returns what the load will take.
    assert check_room_for(saved_model, reserve_mb=0, headroom_mb=512, cgroup_root=cgroup, meminfo=meminfo) == 100 * MIB
    with pytest.raises(ModelOutOfMemoryError, match=r"700 MiB free, about 712 MiB needed \(twice the SavedModel, "
                                                    r"and MME_MEMORY_HEADROOM_MB=612 kept free\)"):  # fmt: skip
        check_room_for(saved_model, reserve_mb=0, headroom_mb=612, cgroup_root=cgroup, meminfo=meminfo)


def test_shared_rule_counts_memory_promised_to_loads_in_progress_cgroup_v1(tmp_path: Path) -> None:
    saved_model = _saved_model(tmp_path / "model", 50)
    cgroup = _files(tmp_path / "cg", {"memory/memory.limit_in_bytes": str(2048 * MIB),
                                      "memory/memory.usage_in_bytes": str(1348 * MIB)})  # fmt: skip
    meminfo = _files(tmp_path, {"meminfo": "MemTotal: 20000000 kB\nMemAvailable: 20000000 kB\n"}) / "meminfo"
    assert check_room_for(saved_model, reserve_mb=0, headroom_mb=512, cgroup_root=cgroup, meminfo=meminfo) == 100 * MIB
    # Another load was granted 100 MiB and has not taken it yet: the same free memory is not granted twice.
    with pytest.raises(
        ModelOutOfMemoryError, match=r"700 MiB free, 100 MiB of it promised to loads in progress"
    ) as caught:
        check_room_for(saved_model, reserve_mb=0, headroom_mb=512, pending_bytes=100 * MIB, cgroup_root=cgroup,
                       meminfo=meminfo)  # fmt: skip
    assert not isinstance(caught.value, ModelTooLargeError)  # it fits once those loads end or others unload


def test_shared_rule_refuses_at_once_a_model_that_with_the_headroom_exceeds_the_limit(tmp_path: Path) -> None:
    saved_model = _saved_model(tmp_path / "model", 300)
    v1 = _files(tmp_path / "v1", {"memory/memory.limit_in_bytes": str(1024 * MIB),
                                  "memory/memory.usage_in_bytes": str(100 * MIB)})  # fmt: skip
    v2 = _files(tmp_path / "v2", {"memory.max": str(1024 * MIB), "memory.current": str(100 * MIB)})
    meminfo = _files(tmp_path, {"meminfo": "MemTotal: 20000000 kB\nMemAvailable: 20000000 kB\n"}) / "meminfo"
    for cgroup in (v1, v2):
        with pytest.raises(ModelTooLargeError, match=r"about 1112 MiB .* more than the container's 1024 MiB"):
            check_room_for(saved_model, reserve_mb=0, headroom_mb=512, cgroup_root=cgroup, meminfo=meminfo)
        # 600 MiB of model and 300 kept free fit within 1024 MiB, and within the 924 MiB free: it loads.
        check_room_for(saved_model, reserve_mb=0, headroom_mb=300, cgroup_root=cgroup, meminfo=meminfo)


def test_no_reserve_and_no_headroom_checks_nothing(tmp_path: Path) -> None:
    saved_model = _saved_model(tmp_path / "model", 1)
    cgroup = _files(tmp_path / "cg", {"memory.max": str(1024 * MIB), "memory.current": str(1024 * MIB)})
    assert check_room_for(saved_model, reserve_mb=0, headroom_mb=0, cgroup_root=cgroup) == 0
