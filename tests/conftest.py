"""Fixtures shared by every layer: the demo model archives, and small SavedModels built in code."""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from mme.demo_models import TrainedModel

DEMO_NAMES = ("sentiment", "topic")


@pytest.fixture(scope="session")
def trained_demo_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrainedModel]:
    """Both demo models, trained once per session from generated text."""
    from mme.demo_models import DEMO_MODELS, train_demo_model

    out = tmp_path_factory.mktemp("trained")
    return {spec.name: train_demo_model(spec, out) for spec in DEMO_MODELS}


@pytest.fixture(scope="session")
def demo_archives(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"sentiment": .../sentiment.tar.gz, "topic": .../topic.tar.gz}``.

    ``MME_TEST_DEMO_MODELS`` may name a folder that already holds both (from ``mme demo-models``) to skip training
    while iterating; CI trains them.
    """
    cached = os.environ.get("MME_TEST_DEMO_MODELS")
    if cached:
        archives = {name: Path(cached) / f"{name}.tar.gz" for name in DEMO_NAMES}
        if all(path.is_file() for path in archives.values()):
            return archives
    from mme.archive import write_archive

    trained: dict[str, TrainedModel] = request.getfixturevalue("trained_demo_models")
    out = tmp_path_factory.mktemp("demo-archives")
    return {name: write_archive(model.model_dir, out / f"{name}.tar.gz") for name, model in trained.items()}


@pytest.fixture(scope="session")
def demo_model_dirs(demo_archives: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo archives extracted, one folder each (what SageMaker hands the container)."""
    root = tmp_path_factory.mktemp("demo-models")
    dirs = {}
    for name, archive in demo_archives.items():
        with tarfile.open(archive) as tar:
            tar.extractall(root / name, filter="data")
        dirs[name] = root / name
    return dirs


def _copy_tokenizer(model_dir: Path, destination: Path) -> Path:
    destination.mkdir(parents=True, exist_ok=True)
    for item in model_dir.iterdir():
        if item.is_file() and item.name != "mme.json":
            shutil.copy2(item, destination / item.name)
    return destination


@pytest.fixture(scope="session")
def demo_tokenizer(demo_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sentiment model's tokenizer files alone (what ``save_pretrained`` wrote), in a folder of their own."""
    return _copy_tokenizer(demo_model_dirs["sentiment"], tmp_path_factory.mktemp("tokenizer"))


def _save_greedy_model(root: Path, tokenizer: Path, *, min_tokens: int) -> Path:
    """A model that asks TensorFlow for a 4 TiB tensor when a text has at least ``min_tokens`` tokens."""
    import tensorflow as tf

    class Greedy(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.int32)])
        def serve(self, input_ids: tf.Tensor, attention_mask: tf.Tensor) -> dict[str, tf.Tensor]:
            # The size depends on the input, so nothing is allocated (or folded) when the graph is saved.
            long_enough = tf.cast(tf.shape(input_ids)[1] >= min_tokens, tf.int32)
            rows = tf.shape(input_ids)[0] * (2**30) * long_enough
            huge = tf.zeros(tf.stack([rows, 1024]), tf.float32)
            total = tf.reduce_sum(huge) + tf.cast(tf.reduce_sum(attention_mask), tf.float32)
            return {"logits": tf.stack([total, -total])[tf.newaxis, :] * tf.ones([tf.shape(input_ids)[0], 1])}

    module = Greedy()
    tf.saved_model.save(module, str(root / "0"), signatures={"serving_default": module.serve})
    shutil.copytree(tokenizer, root, dirs_exist_ok=True)
    return root


@pytest.fixture(scope="session")
def oom_model_dir(demo_tokenizer: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model that runs out of memory on every input: loading it (the warm-up) fails."""
    return _save_greedy_model(tmp_path_factory.mktemp("oom-model"), demo_tokenizer, min_tokens=0)


@pytest.fixture(scope="session")
def oom_on_long_text_model_dir(demo_tokenizer: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model that loads (its warm-up text is short) and runs out of memory on texts of 12 tokens or more."""
    return _save_greedy_model(tmp_path_factory.mktemp("oom-long-model"), demo_tokenizer, min_tokens=12)


@pytest.fixture(scope="session")
def keras_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every case of ``keras_models.CASES`` saved with tf_keras ``model.save(root/0)``: name -> root (``0/`` only,
    like the original archives)."""
    from keras_models import CASES, save_keras_model

    out = tmp_path_factory.mktemp("keras-models")
    return {name: save_keras_model(case, out / name) for name, case in CASES.items()}


@pytest.fixture(scope="session")
def keras_archives(
    keras_models: dict[str, Path], demo_tokenizer: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Each Keras model packaged by ``mme package`` with the demo tokenizer and only the flags its case needs."""
    from keras_models import CASES
    from typer.testing import CliRunner

    from mme.cli import app

    out = tmp_path_factory.mktemp("keras-archives")
    archives = {}
    for name, root in keras_models.items():
        archive = out / f"{name}.tar.gz"
        args = ["package", "--saved-model", str(root / "0"), "--tokenizer", str(demo_tokenizer), "-o", str(archive)]
        result = CliRunner().invoke(app, [*args, *CASES[name].package_flags])
        assert result.exit_code == 0, result.output
        archives[name] = archive
    return archives


#: The image `make image` builds; MME_TEST_IMAGE names another.
TEST_IMAGE = os.environ.get("MME_TEST_IMAGE", "mme-serving:local")


@pytest.fixture(scope="session")
def serving_image() -> str:
    """The serving image on the local Docker engine. Without an engine or the image, image tests skip with the
    reason; under CI (``CI=true``) they fail instead, so CI can never pass without running them."""
    from mme.image import docker_available, image_exists

    problem = docker_available()
    if problem is None and not image_exists(TEST_IMAGE):
        problem = f"the engine has no image {TEST_IMAGE!r}: run `make image`"
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the image tests: {problem}")
        pytest.skip(problem)
    return TEST_IMAGE
