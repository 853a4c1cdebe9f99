"""Inspecting and packaging models: what ``mme inspect`` reports and ``mme package`` builds.

A model source is any of: a ``.tar.gz`` archive (repackaged from the archive itself), an extracted model folder
(version folders such as ``0/``, maybe a tokenizer and ``mme.json``), or a bare SavedModel folder (what
``model.save(dir/0)`` or ``tf.saved_model.save`` wrote). Both commands read it with the handler's own loading code,
so what they report is what the container will do.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from handler.codec import Prediction
from handler.errors import HandlerError, ModelOutOfMemoryError
from handler.manifest import MANIFEST_FILE, Manifest, ResponseFormat
from handler.model import ModelReading, archive_tokenizer, classifier_of, read_model_dir
from handler.settings import DEFAULT_TOKENIZER_VARIABLE, ServingSettings
from handler.signature import SIGNATURE
from mme.archive import ARCHIVE_SUFFIX, ArchiveError, extract_archive, write_archive

logger = logging.getLogger(__name__)

VERSION_FOLDER = "0"
VALIDATION_TEXT = "a short sentence to check that the model answers"


@dataclass(frozen=True)
class ModelReport:
    """What the handler makes of a model: bindings, length, output, labels, tokenizer and a test prediction."""

    source: Path
    reading: ModelReading
    #: Where the tokenizer comes from, in words.
    tokenizer: str
    prediction: Prediction | None
    #: Why there is no test prediction, when there is none.
    no_prediction_reason: str = ""

    def lines(self) -> list[str]:
        """The report as printed, one line per fact."""
        reading, plan = self.reading, self.reading.plan
        bindings = {binding.signature_input: binding for binding in plan.bindings}
        lines = [f"model:      {self.source}", f"SavedModel: {reading.saved_model_dir.name}/ ({SIGNATURE!r} signature)"]
        for index, spec in enumerate(reading.description.inputs):
            binding = bindings[spec.name]
            lines.append(
                f"{'inputs:' if index == 0 else '':11} {spec} <- {binding.tokenizer_output} ({binding.source})"
            )
        if plan.static_length:
            length = f"{plan.max_sequence_length} tokens per text, fixed by the signature: padded and truncated to it"
        else:
            limit = f"at most {plan.max_sequence_length}"
            if reading.tokenizer is None:
                limit += " (or the default tokenizer's lower limit)"
            length = f"{limit} tokens per text (longer texts truncated); batches padded to their longest text"
        lines.append(f"length:     {length}")
        output = reading.description.output(plan.output_name)
        binary = " (one column: a binary classifier)" if plan.output_width == 1 else ""
        lines.append(f"output:     {output}: {plan.output_kind} ({plan.output_kind_source}){binary}")
        lines.append(f"labels:     {', '.join(reading.labels)}")
        response = reading.manifest.response_format or ResponseFormat.PREDICTION
        answer = (
            "the bare output row, as hand-made handlers answered"
            if response is ResponseFormat.RAW
            else f'{{"label", "scores", "{plan.output_kind}"}}'
        )
        lines.append(f"answers:    {answer} ({response})")
        lines.append(f"tokenizer:  {self.tokenizer}")
        if self.prediction is not None:
            scores = ", ".join(f"{label} {score:.4f}" for label, score in self.prediction.scores.items())
            lines.append(f"test:       {VALIDATION_TEXT!r} -> {self.prediction.label} ({scores})")
            lines.append(f"            output row {json.dumps(self.prediction.output)}")
        else:
            lines.append(f"test:       no test prediction: {self.no_prediction_reason}")
        return lines


def _settings(default_tokenizer: Path | None) -> ServingSettings:
    """Default settings with the default tokenizer given, else the one the environment names (as the container)."""
    configured = os.environ.get(DEFAULT_TOKENIZER_VARIABLE, "").strip()
    return ServingSettings(default_tokenizer_dir=default_tokenizer or (Path(configured) if configured else None))


def _tokenizer_origin(model_dir: Path, reading: ModelReading) -> str:
    if reading.tokenizer_dir is not None and reading.tokenizer_dir.is_relative_to(model_dir):
        shipped = reading.tokenizer_dir
        where = "archive root" if shipped == model_dir else f"{shipped.relative_to(model_dir)}/"
        return f"shipped in the archive ({where})"
    if reading.tokenizer_dir is not None:
        return f"none in the archive: served with the container's default tokenizer (here {reading.tokenizer_dir})"
    return "none in the archive: the container's default tokenizer (MME_DEFAULT_TOKENIZER_DIR) will be used"


def _read(model_dir: Path, settings: ServingSettings, *, require_prediction: bool, source: Path) -> ModelReport:
    """Read ``model_dir`` with the handler and predict once when a tokenizer is at hand.

    Raises:
        ArchiveError: the handler refuses the model; the message is the handler's.
    """
    try:
        reading = read_model_dir(model_dir, settings, require_tokenizer=require_prediction)
        prediction = None
        reason = ""
        if reading.tokenizer is not None:
            prediction = classifier_of(reading).predict([VALIDATION_TEXT])[0]
        else:
            reason = (
                "the archive ships no tokenizer; pass --default-tokenizer DIR (the one the container will use) to "
                "test it"
            )
    except (HandlerError, ModelOutOfMemoryError) as error:
        raise ArchiveError(str(error)) from None
    return ModelReport(
        source=source,
        reading=reading,
        tokenizer=_tokenizer_origin(model_dir, reading),
        prediction=prediction,
        no_prediction_reason=reason,
    )


@contextmanager
def _model_folder(source: Path) -> Iterator[Path]:
    """``source`` as an extracted model folder: the folder itself, or a temporary one for an archive or a bare
    SavedModel (linked as ``0/``).

    Raises:
        ArchiveError: the source does not exist, is not an archive, or holds no SavedModel.
    """
    if not source.exists():
        raise ArchiveError(f"{source} does not exist")
    if source.is_file():
        if not source.name.endswith(ARCHIVE_SUFFIX):
            raise ArchiveError(f"{source} is a file but not a <model>{ARCHIVE_SUFFIX} archive")
        with tempfile.TemporaryDirectory(prefix="mme-model-") as work:
            yield extract_archive(source, Path(work) / "model")
    elif (source / "saved_model.pb").is_file():
        with tempfile.TemporaryDirectory(prefix="mme-model-") as work:
            staged = Path(work) / "model"
            staged.mkdir()
            (staged / VERSION_FOLDER).symlink_to(source.resolve(), target_is_directory=True)
            yield staged
    elif any((child / "saved_model.pb").is_file() for child in source.iterdir() if child.name.isdigit()):
        yield source
    else:
        raise ArchiveError(
            f"{source} holds no SavedModel: give the folder model.save or tf.saved_model.save wrote (the one "
            "with saved_model.pb), or a model folder with a version folder such as 0/"
        )


def inspect_model(source: Path, *, default_tokenizer: Path | None = None) -> ModelReport:
    """Report what the handler makes of ``source`` (archive, model folder or SavedModel folder); writes nothing.

    Raises:
        ArchiveError: the source is unreadable or the handler refuses it; the message says what to fix.
    """
    settings = _settings(default_tokenizer)
    with _model_folder(source) as model_dir:
        return _read(model_dir, settings, require_prediction=False, source=source)


def _replace_tokenizer(staging: Path, tokenizer: Path) -> None:
    if not tokenizer.is_dir() or archive_tokenizer(tokenizer) != tokenizer:
        raise ArchiveError(
            f"--tokenizer {tokenizer} is not a folder written by a tokenizer's save_pretrained "
            "(it has no tokenizer.json, tokenizer_config.json or vocab.txt)"
        )
    # The archive's own tokenizer (root files or tokenizer/) gives way to the one given.
    shutil.rmtree(staging / "tokenizer", ignore_errors=True)
    for item in staging.iterdir():
        if item.is_file() and item.name != MANIFEST_FILE:
            item.unlink()
    for item in tokenizer.iterdir():
        # Only the tokenizer's own files: a folder that also holds a model's mme.json must not replace this one's.
        if item.is_file() and item.name != MANIFEST_FILE:
            shutil.copy2(item, staging / item.name)


def package_model(
    *,
    source: Path,
    output: Path,
    tokenizer: Path | None = None,
    no_tokenizer: bool = False,
    default_tokenizer: Path | None = None,
    overrides: Manifest | None = None,
    overwrite: bool = False,
) -> ModelReport:
    """Build ``output`` from ``source`` (SavedModel folder, model folder or archive), ``tokenizer`` and ``mme.json``
    fields merged over the source's own, validate it with the handler (one test prediction), then write it.

    ``no_tokenizer`` builds an archive that relies on the container's default tokenizer; ``default_tokenizer`` (or
    ``MME_DEFAULT_TOKENIZER_DIR``) is that tokenizer here, for the test prediction.

    Raises:
        ArchiveError: an input is missing, conflicting or unusable, or the output exists; nothing is written then.
    """
    if not output.name.endswith(ARCHIVE_SUFFIX) or output.name == ARCHIVE_SUFFIX:
        raise ArchiveError(f"the output {output} must be named <model>{ARCHIVE_SUFFIX}")
    if output.resolve() == source.resolve():
        raise ArchiveError(
            f"the output {output} is the source: artifacts are immutable, so a repackaged model gets a new key "
            "(for example name-v2.tar.gz)"
        )
    if output.exists() and not overwrite:
        raise ArchiveError(f"{output} exists: a new model version gets a new name (or pass --overwrite)")
    if tokenizer is not None and no_tokenizer:
        raise ArchiveError("--tokenizer and --no-tokenizer contradict each other: give one of them")
    settings = _settings(default_tokenizer)

    with tempfile.TemporaryDirectory(prefix="mme-package-") as staging_name:
        staging = Path(staging_name) / "model"
        with _model_folder(source) as model_dir:
            shutil.copytree(model_dir, staging)  # a linked SavedModel is copied, not linked
        if tokenizer is not None:
            _replace_tokenizer(staging, tokenizer)
        shipped = archive_tokenizer(staging)
        if no_tokenizer and shipped is not None:
            raise ArchiveError(
                f"--no-tokenizer, but {source} ships a tokenizer ({shipped.relative_to(staging) or '.'}/): "
                "drop the flag to keep it"
            )
        if shipped is None and not no_tokenizer:
            raise ArchiveError(
                f"{source} has no tokenizer: pass --tokenizer DIR (a folder written by save_pretrained), or "
                "--no-tokenizer for an archive served with the container's default tokenizer"
            )
        if no_tokenizer and settings.default_tokenizer_dir is None:
            raise ArchiveError(
                "--no-tokenizer needs the container's default tokenizer here to test the model: pass "
                f"--default-tokenizer DIR or set {DEFAULT_TOKENIZER_VARIABLE}"
            )
        try:
            manifest = Manifest.read(staging).merged(overrides or Manifest())
        except HandlerError as error:
            raise ArchiveError(str(error)) from None
        fields = manifest.to_json()
        (staging / MANIFEST_FILE).unlink(missing_ok=True)
        if fields:
            (staging / MANIFEST_FILE).write_text(json.dumps(fields, indent=2) + "\n", encoding="utf-8")
        report = _read(staging, settings, require_prediction=True, source=output)
        write_archive(staging, output)
    logger.info("wrote %s", output)
    return report
