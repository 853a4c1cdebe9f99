"""Finding what `mme serve` started, on the host or in the Docker engine: MMS processes and serving containers."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from mme.image import DOCKER


def serving_containers() -> list[str]:
    """Names of the serving containers `mme serve --image` started that the engine still has."""
    if not Path(DOCKER).is_file():
        return []
    answer = subprocess.run(
        [DOCKER, "ps", "--all", "--format", "{{.Names}}", "--filter", "name=mme-serving-"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return answer.stdout.split()


def mms_front_ends() -> list[psutil.Process]:
    """The MMS Java front ends on this machine, on the host or inside a container."""
    return [p for p in mms_processes() if "com.amazonaws.ml.mms.ModelServer" in " ".join(p.info["cmdline"] or [])]


def mms_processes() -> list[psutil.Process]:
    """Every MMS front end and worker on this machine."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "com.amazonaws.ml.mms.ModelServer" in cmdline or "model_service_worker" in cmdline:
            found.append(process)
    return found


def mms_workers() -> set[int]:
    """Pids of every MMS model worker on this machine, on the host or inside a container."""
    return {process.pid for process in mms_processes() if "model_service_worker" in " ".join(process.cmdline())}


@dataclass(frozen=True)
class MotoS3:
    """A moto server on loopback: its URL, an S3 client on it, and the environment that points `mme serve` at it."""

    url: str
    client: Any
    environment: dict[str, str]
