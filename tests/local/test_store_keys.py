"""TargetModel keys the stores refuse, with SageMaker's error shape rather than a 500."""

from __future__ import annotations

from pathlib import Path

import pytest

from mme.store import LocalStore, ModelNotFoundError, StoreError, validate_key


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("", "empty"),
        ("/etc/passwd", "relative to the model prefix"),
        ("a/../../b.tar.gz", "without '..'"),
        ("x" * 1025, "at most 1024"),
        ("tab\there.tar.gz", "control character"),
        ("new\nline.tar.gz", "control character"),
    ],
)
def test_a_key_sagemaker_would_refuse_is_refused_with_the_reason(key: str, fragment: str) -> None:
    with pytest.raises(StoreError, match=fragment):
        validate_key(key)


def test_a_key_no_file_can_have_is_simply_not_found(tmp_path: Path) -> None:
    # 256 characters in one segment: a valid TargetModel that no file system can hold (was a 500).
    store = LocalStore(tmp_path)
    with pytest.raises(ModelNotFoundError, match="could not find model data"):
        store.stat("m" * 256 + ".tar.gz")
    with pytest.raises(ModelNotFoundError, match="could not find model data"):
        store.stat("team-a/" + "m" * 300)


def test_long_keys_that_exist_are_served(tmp_path: Path) -> None:
    name = "m" * 240 + ".tar.gz"
    (tmp_path / name).write_bytes(b"archive")
    assert LocalStore(tmp_path).stat(name).size == len(b"archive")


@pytest.mark.parametrize("key", ["a.tar.gz/", "./a.tar.gz", "team//b.tar.gz", "team/./b.tar.gz"])
def test_a_key_that_only_a_path_would_match_is_not_found(tmp_path: Path, key: str) -> None:
    # S3 holds no object under these keys; a folder store must not find the file they normalise to.
    (tmp_path / "a.tar.gz").write_bytes(b"archive")
    (tmp_path / "team").mkdir()
    (tmp_path / "team" / "b.tar.gz").write_bytes(b"archive")
    with pytest.raises(ModelNotFoundError, match="no archive has that exact key"):
        LocalStore(tmp_path).stat(key)
