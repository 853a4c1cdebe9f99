"""The image definition, checked without a Docker engine: what it copies exists, and it runs what we test."""

from __future__ import annotations

import re
import shlex
import sys
from importlib.metadata import version
from pathlib import Path

from handler.settings import ServingSettings

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


def _env() -> dict[str, str]:
    """Every ``ENV NAME=value`` of the image (values hold no spaces)."""
    env = {}
    for keyword, args in _instructions():
        if keyword == "ENV":
            env.update(item.split("=", 1) for item in args.split())
    return env


def _runs() -> list[str]:
    """Every RUN's arguments, whitespace collapsed."""
    return [" ".join(args.split()) for keyword, args in _instructions() if keyword == "RUN"]


def test_image_installs_exactly_the_tested_requirements_in_a_venv() -> None:
    copies = " ".join(args for keyword, args in _instructions() if keyword == "COPY")
    assert "container/requirements.txt /opt/program/requirements.txt" in copies
    (pip_run,) = [run for run in _runs() if "pip install" in run]
    assert "python3 -m venv /opt/venv" in pip_run
    assert "/opt/venv/bin/pip install --no-cache-dir --upgrade -r /opt/program/requirements.txt" in pip_run
    # The venv comes first on PATH: `serve` runs `python`, and MMS's workers the interpreter that started it.
    assert _env()["PATH"].split(":")[0] == "/opt/venv/bin"
    pins = {}
    for line in (ROOT / "container" / "requirements.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", line)
        if match:
            pins[match.group(1)] = match.group(2)
    assert {"tensorflow-cpu", "transformers", "multi-model-server", "sagemaker-inference"} <= set(pins)
    for package, pinned in pins.items():
        assert version(package) == pinned, f"the tests run {package} {version(package)}, the image pins {pinned}"


def test_image_runs_the_python_the_tests_run_on_debian_bookworm_slim() -> None:
    instructions = _instructions()
    # ECR Public's copy of Docker's official image (Docker Hub's pull limits hit CodeBuild); scripts/image.sh makes
    # a local stand-in under exactly this name.
    assert instructions[0] == ("FROM", "public.ecr.aws/debian/debian:bookworm-slim")
    assert [keyword for keyword, _ in instructions].count("FROM") == 1
    (apt_run,) = [run for run in _runs() if "apt-get install" in run]
    packages = dict(word.split("=", 1) for word in apt_run.split() if "=" in word and not word.startswith("-"))
    # Bookworm's python3 is the minor version the tests run on.
    assert packages["python3"] == packages["python3-venv"] == "{}.{}.*".format(*sys.version_info[:2])
    assert packages["openjdk-17-jre-headless"] == "17.*"
    # Lean: no recommended packages, no compiler or headers, no apt lists left in the layer.
    assert "--no-install-recommends" in apt_run
    assert "rm -rf /var/lib/apt/lists/*" in apt_run
    assert not {"gcc", "g++", "build-essential", "python3-dev", "python3-pip"} & set(packages)
    # Debian's slim images lack this folder, and the JRE's post-install fails without it.
    assert apt_run.startswith("mkdir -p /usr/share/man/man1 ")


def test_pip_ca_bundle_is_an_optional_build_secret() -> None:
    # Where TLS is inspected, `make image` passes the machine's CA bundle as the secret pip-cert; CodeBuild passes
    # none, so the mount must not be required and pip may read it only when it is there. It never lands in a layer.
    (pip_run,) = [run for run in _runs() if "pip install" in run]
    assert pip_run.startswith("--mount=type=secret,id=pip-cert ")
    assert "required" not in pip_run.split()[0]
    assert "if [ -f /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi &&" in pip_run
    text = DOCKERFILE.read_text()
    assert text.count("/run/secrets/") == 2
    assert "PIP_CERT" not in " ".join(args for keyword, args in _instructions() if keyword in {"ENV", "ARG"})


def test_image_declares_the_multi_model_capabilities_and_entrypoint() -> None:
    instructions = _instructions()
    labels = " ".join(args for keyword, args in instructions if keyword == "LABEL")
    assert "com.amazonaws.sagemaker.capabilities.multi-models=true" in labels
    assert "com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true" in labels
    assert ("ENTRYPOINT", '["/usr/bin/tini", "--", "serve"]') in instructions
    assert "HF_HUB_OFFLINE=1" in " ".join(args for keyword, args in instructions if keyword == "ENV")


def test_image_runs_as_root() -> None:
    # SageMaker expects every container to run as root; no USER instruction leaves the base image's root.
    assert [args for keyword, args in _instructions() if keyword == "USER"] == []
    assert "useradd" not in " ".join(_runs())


def test_run_dir_settings_are_valid_and_hold_the_mms_configuration() -> None:
    env = _env()
    settings = ServingSettings.from_env({key: env[key] for key in ("MME_RUN_DIR", "MME_MMS_CONFIG_FILE")})
    assert settings.run_dir == Path("/opt/mme/run")
    assert settings.mms_config_file.parent == settings.run_dir


def test_entrypoint_run_bit_is_set_by_the_dockerfile() -> None:
    # Not by the checkout's file mode, which a copy of the repository may lose.
    copies = [args for keyword, args in _instructions() if keyword == "COPY" and "container/serve" in args]
    assert copies == ["--chmod=755 container/serve /usr/local/bin/serve"]


def test_serve_script_runs_the_tested_entrypoint() -> None:
    script = (ROOT / "container" / "serve").read_text()
    assert "exec python -m handler.serve" in script
