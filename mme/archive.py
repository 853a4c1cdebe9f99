"""Model archives (``<name>.tar.gz``, one per TargetModel): building, validating and extracting them safely.

The layout is the one the handler serves (see :mod:`handler.model`): the SavedModel in ``0/``, the tokenizer
files at the root, and ``mme.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from handler.codec import Prediction
from handler.errors import HandlerError, ModelOutOfMemoryError
from handler.manifest import MANIFEST_FILE
from handler.model import load_model_dir
from handler.settings import ServingSettings

logger = logging.getLogger(__name__)

ARCHIVE_SUFFIX = ".tar.gz"
VERSION_FOLDER = "0"
_VALIDATION_TEXT = "a short sentence to check that the model answers"


class ArchiveError(ValueError):
    """An archive or its inputs cannot be used; the message says what to fix."""


def _tar_member(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Archives must not depend on who built them.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_archive(model_dir: Path, output: Path) -> Path:
    """Pack the contents of ``model_dir`` (not the folder itself) into ``output`` (``.tar.gz``)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    with tarfile.open(partial, "w:gz") as archive:
        for child in sorted(model_dir.iterdir()):
            archive.add(child, arcname=child.name, filter=_tar_member)
    partial.replace(output)
    return output


def _refusal(member: tarfile.TarInfo) -> str | None:
    """Why ``member`` may not be extracted, or ``None`` when it is a plain file or folder inside the archive."""
    name = PurePosixPath(member.name)
    if name.is_absolute():
        return f"{member.name!r} is an absolute path"
    if ".." in name.parts:
        return f"{member.name!r} climbs out of the archive with '..'"
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        # A symlink's target is relative to its folder; a hard link's to the archive root.
        resolved = (name.parent / target) if member.issym() else target
        depth = 0
        for part in resolved.parts:
            depth += -1 if part == ".." else (0 if part == "." else 1)
            if depth < 0:
                break
        if target.is_absolute() or depth < 0:
            return f"{member.name!r} links outside the archive ({member.linkname!r})"
    elif not (member.isfile() or member.isdir()):
        return f"{member.name!r} is a device, FIFO or other special file"
    return None


def extract_archive(archive: Path, destination: Path) -> Path:
    """Extract ``archive`` into ``destination`` (created), refusing anything that would land outside it.

    Every member is checked before anything is written.

    Raises:
        ArchiveError: the file is not a gzip tar, or holds an absolute path, ``..``, a link leaving the folder,
            or a device file; nothing outside ``destination`` is written.
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                reason = _refusal(member)
                if reason is not None:
                    raise ArchiveError(f"{archive.name} is refused: {reason}")
            destination.mkdir(parents=True, exist_ok=True)
            # The "data" filter re-checks all of the above as it writes, and drops modes a model never needs.
            tar.extractall(destination, members=members, filter="data")
    except tarfile.FilterError as error:
        raise ArchiveError(f"{archive.name} is refused: {error}") from None
    except (tarfile.TarError, EOFError, OSError) as error:
        raise ArchiveError(f"{archive.name} is not a readable .tar.gz archive: {error}") from None
    return destination


def validate_model_dir(model_dir: Path, settings: ServingSettings | None = None) -> Prediction:
    """Load ``model_dir`` with the handler's own loading code and predict once.

    Raises:
        ArchiveError: the handler cannot load or run it; the message is the handler's.
    """
    try:
        classifier = load_model_dir(model_dir, settings or ServingSettings())
        return classifier.predict([_VALIDATION_TEXT])[0]
    except (HandlerError, ModelOutOfMemoryError) as error:
        raise ArchiveError(str(error)) from None


def package_model(
    *,
    saved_model: Path,
    tokenizer: Path,
    output: Path,
    labels: Sequence[str] | None = None,
    max_sequence_length: int | None = None,
    overwrite: bool = False,
) -> Prediction:
    """Build ``output`` from a SavedModel folder and a ``save_pretrained`` tokenizer folder, validate it by loading
    and predicting once, and return that validation prediction.

    Raises:
        ArchiveError: an input is missing or unusable, or the output exists; nothing is written then.
    """
    if not output.name.endswith(ARCHIVE_SUFFIX) or output.name == ARCHIVE_SUFFIX:
        raise ArchiveError(f"the output {output} must be named <model>{ARCHIVE_SUFFIX}")
    if output.exists() and not overwrite:
        raise ArchiveError(f"{output} exists: a new model version gets a new name (or pass --overwrite)")
    if not (saved_model / "saved_model.pb").is_file():
        raise ArchiveError(
            f"--saved-model {saved_model} has no saved_model.pb: point it at the folder tf.saved_model.save wrote"
        )
    if not tokenizer.is_dir() or not any(tokenizer.iterdir()):
        raise ArchiveError(f"--tokenizer {tokenizer} is not a folder written by a tokenizer's save_pretrained")
    if labels is not None and (not labels or any(not label.strip() for label in labels)):
        raise ArchiveError("--labels must be a comma-separated list of non-empty names, in logit order")
    if labels is not None and len(set(labels)) != len(labels):
        raise ArchiveError(f"--labels has duplicates: {list(labels)}")

    with tempfile.TemporaryDirectory(prefix="mme-package-") as staging_name:
        staging = Path(staging_name)
        shutil.copytree(saved_model, staging / VERSION_FOLDER)
        for item in tokenizer.iterdir():
            if item.is_file():
                shutil.copy2(item, staging / item.name)
        manifest: dict[str, object] = {}
        if labels is not None:
            manifest["labels"] = [label.strip() for label in labels]
        if max_sequence_length is not None:
            manifest["max_sequence_length"] = max_sequence_length
        if manifest:
            (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        prediction = validate_model_dir(staging)
        write_archive(staging, output)
    logger.info("wrote %s", output)
    return prediction
