"""`mme demo`, the main job: `mme serve` on the demo models, both called through boto3, then a clean stop."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path


def _mme(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mme.cli", *args],
        cwd=cwd,
        env={**os.environ, "TMPDIR": str(cwd)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_demo_predicts_with_both_models_from_relative_paths(demo_archives: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    for archive in demo_archives.values():
        shutil.copy2(archive, tmp_path / "models" / archive.name)
    result = _mme("demo", "--models", "models", "--cache-dir", "cache", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    predicted = re.findall(r"^\s+(\S+\.tar\.gz)\s+(\w+)\s", result.stdout, re.MULTILINE)
    assert predicted == [
        ("sentiment.tar.gz", "positive"),
        ("sentiment.tar.gz", "negative"),
        ("topic.tar.gz", "sports"),
        ("topic.tar.gz", "tech"),
        ("topic.tar.gz", "food"),
        ("topic.tar.gz", "travel"),
    ]
    assert "stopped (exit status 0)" in result.stdout
    assert (tmp_path / "cache" / "models").is_dir()


def test_demo_without_models_says_how_to_build_them(tmp_path: Path) -> None:
    result = _mme("demo", "--models", "nowhere", cwd=tmp_path)
    assert result.returncode == 2
    assert "run `mme demo-models --out nowhere` first" in result.stderr
