"""The image definition, checked without a Docker engine: what it copies exists, and it runs what we test."""

from __future__ import annotations

import re
import shlex
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "container" / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _arg_defaults() -> dict[str, str]:
    """``ARG NAME=default`` values: what a build without ``--build-arg`` uses."""
    defaults = {}
    for keyword, args in _instructions():
        if keyword == "ARG" and "=" in args:
            name, default = args.split("=", 1)
            defaults[name.strip()] = default.strip()
    return defaults


def _with_arg_defaults(text: str) -> str:
    defaults = _arg_defaults()

    def default(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in defaults, f"${name} is used in the Dockerfile but has no ARG default"
        return defaults[name]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", default, text)


def test_every_copied_source_exists_in_the_build_context() -> None:
    copies = [shlex.split(args) for keyword, args in _instructions() if keyword in {"COPY", "ADD"}]
    assert copies, "the Dockerfile copies nothing"
    for parts in copies:
        sources = [_with_arg_defaults(part) for part in parts[:-1] if not part.startswith("--")]
        for source in sources:
            assert "$" not in source, source
            assert (ROOT / source).exists(), f"COPY source {source} is missing from the repository root"


def test_default_tokenizer_copy_defaults_to_the_empty_placeholder() -> None:
    copies = [args for keyword, args in _instructions() if keyword == "COPY" and "DEFAULT_TOKENIZER" in args]
    assert copies == ["${DEFAULT_TOKENIZER}/ /opt/mme/default-tokenizer/"]
    placeholder = ROOT / _arg_defaults()["DEFAULT_TOKENIZER"]
    assert placeholder == ROOT / "container" / "default-tokenizer"
    # Only the README: a tokenizer here would be baked into every image without any stage asking for it.
    assert sorted(child.name for child in placeholder.iterdir()) == ["README.md"]


def test_image_installs_exactly_the_tested_requirements() -> None:
    runs = " ".join(args for keyword, args in _instructions() if keyword == "RUN")
    copies = " ".join(args for keyword, args in _instructions() if keyword == "COPY")
    assert "container/requirements.txt /opt/program/requirements.txt" in copies
    assert "pip install --no-cache-dir -r /opt/program/requirements.txt" in runs
    pins = {}
    for line in (ROOT / "container" / "requirements.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", line)
        if match:
            pins[match.group(1)] = match.group(2)
    assert {"tensorflow-cpu", "transformers", "multi-model-server", "sagemaker-inference"} <= set(pins)
    for package, pinned in pins.items():
        assert version(package) == pinned, f"the tests run {package} {version(package)}, the image pins {pinned}"


def test_image_declares_the_multi_model_capabilities_and_entrypoint() -> None:
    instructions = _instructions()
    labels = " ".join(args for keyword, args in instructions if keyword == "LABEL")
    assert "com.amazonaws.sagemaker.capabilities.multi-models=true" in labels
    assert "com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true" in labels
    assert ("ENTRYPOINT", '["serve"]') in instructions
    env = " ".join(args for keyword, args in instructions if keyword == "ENV")
    assert "HF_HUB_OFFLINE=1" in env
    assert instructions[0][1].startswith("python:3.11-")
    assert "bookworm" in instructions[0][1]
    assert any(keyword == "USER" and args != "root" for keyword, args in instructions)


def test_serve_script_runs_the_tested_entrypoint() -> None:
    script = (ROOT / "container" / "serve").read_text()
    assert "exec python -m handler.serve" in script
    assert (ROOT / "container" / "serve").stat().st_mode & 0o111
