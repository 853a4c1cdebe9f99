"""Loading model folders and predicting in process: the handler's model interface, without MMS."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import tensorflow as tf

from handler.errors import ModelLoadError, ModelOutOfMemoryError
from handler.model import find_saved_model, load_model_dir
from handler.settings import ServingSettings

SETTINGS = ServingSettings()


@pytest.fixture(scope="module")
def sentiment(demo_model_dirs: dict[str, Path]):
    return load_model_dir(demo_model_dirs["sentiment"], SETTINGS)


def test_demo_model_predicts_unambiguous_sentiment(sentiment) -> None:
    good, bad = sentiment.predict(["I loved it, a wonderful film", "awful, I hated every minute of it"])
    assert (good.label, bad.label) == ("positive", "negative")
    assert set(good.scores) == {"negative", "positive"}
    assert sum(good.scores.values()) == pytest.approx(1.0)
    assert len(good.output) == 2
    assert good.output_kind == "logits"


def test_batch_and_single_predictions_agree(sentiment) -> None:
    texts = ["great", "a long and rather boring evening that I would not repeat"]
    batch = sentiment.predict(texts)
    alone = [sentiment.predict([text])[0] for text in texts]
    for together, single in zip(batch, alone, strict=True):
        assert together.output == pytest.approx(single.output, abs=1e-4)


def test_highest_numeric_version_folder_is_served(tmp_path: Path, demo_model_dirs: dict[str, Path]) -> None:
    model = tmp_path / "m"
    shutil.copytree(demo_model_dirs["sentiment"], model)
    shutil.copytree(model / "0", model / "7")
    (model / "12").mkdir()  # no SavedModel inside: not a version
    assert find_saved_model(model) == model / "7"


def test_original_zero_only_archive_uses_the_default_tokenizer(
    tmp_path: Path, demo_model_dirs: dict[str, Path], demo_tokenizer: Path
) -> None:
    original = tmp_path / "original"
    shutil.copytree(demo_model_dirs["sentiment"] / "0", original / "0")
    shutil.copy2(demo_model_dirs["sentiment"] / "mme.json", original / "mme.json")
    with pytest.raises(ModelLoadError, match="no tokenizer"):
        load_model_dir(original, SETTINGS)
    classifier = load_model_dir(original, ServingSettings(default_tokenizer_dir=demo_tokenizer))
    assert classifier.predict(["I loved it, wonderful"])[0].label == "positive"


def test_tokenizer_in_a_tokenizer_folder_is_found(
    tmp_path: Path, demo_model_dirs: dict[str, Path], demo_tokenizer: Path
) -> None:
    model = tmp_path / "m"
    shutil.copytree(demo_model_dirs["sentiment"] / "0", model / "0")
    shutil.copytree(demo_tokenizer, model / "tokenizer")
    assert load_model_dir(model, SETTINGS).labels == ("LABEL_0", "LABEL_1")


def test_folder_without_saved_model_names_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("nothing to serve")
    with pytest.raises(ModelLoadError, match=r"no TensorFlow SavedModel .* 0/saved_model.pb"):
        load_model_dir(tmp_path, SETTINGS)


def test_saved_model_without_serving_signature_is_a_load_error(tmp_path: Path, demo_tokenizer: Path) -> None:
    module = tf.Module()
    module.weight = tf.Variable(1.0)
    tf.saved_model.save(module, str(tmp_path / "0"))
    shutil.copytree(demo_tokenizer, tmp_path, dirs_exist_ok=True)
    with pytest.raises(ModelLoadError, match="no 'serving_default' signature"):
        load_model_dir(tmp_path, SETTINGS)


@pytest.mark.parametrize(
    ("manifest", "fragment"),
    [
        ({"labels": ["only-one"]}, "lists 1 labels but the model outputs 2"),
        ({"labels": "negative"}, "'labels' must be a non-empty list"),
        ({"max_sequence_length": 0}, "'max_sequence_length' must be an integer >= 2"),
        ({"input_names": ["input_ids", "pixels"]}, "binds ['pixels'], which the 'serving_default' signature does not"),
        ({"inputs": {"pixels": "input_ids"}}, "binds ['pixels'], which the 'serving_default' signature does not"),
        ({"inputs": {"input_ids": "pixels"}}, "inputs['input_ids'] is 'pixels'; a tokenizer output is one of"),
        ({"output_name": "probabilities"}, "names output_name 'probabilities', but the 'serving_default' signature"),
        ({"output_kind": "odds"}, "'output_kind' must be one of ['logits', 'probabilities'], not 'odds'"),
        ({"response_format": "xml"}, "'response_format' must be one of ['prediction', 'raw'], not 'xml'"),
        ({"colour": "blue"}, "unknown keys ['colour']"),
    ],
)
def test_bad_manifest_is_a_load_error_naming_the_key(
    tmp_path: Path, demo_model_dirs: dict[str, Path], manifest: dict[str, object], fragment: str
) -> None:
    model = tmp_path / "m"
    shutil.copytree(demo_model_dirs["sentiment"], model)
    (model / "mme.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError) as caught:
        load_model_dir(model, SETTINGS)
    assert fragment in caught.value.message


def test_resource_exhausted_at_load_becomes_memory_error(oom_model_dir: Path) -> None:
    with pytest.raises(ModelOutOfMemoryError) as caught:
        load_model_dir(oom_model_dir, SETTINGS)
    assert isinstance(caught.value, MemoryError)


def test_resource_exhausted_at_predict_becomes_memory_error(oom_on_long_text_model_dir: Path) -> None:
    classifier = load_model_dir(oom_on_long_text_model_dir, SETTINGS)
    assert len(classifier.predict(["short"])) == 1
    with pytest.raises(ModelOutOfMemoryError, match="out of memory while predicting"):
        classifier.predict(["this sentence is long enough to need more than twelve tokens once it is tokenized"])


def _save_short_position_model(root: Path, tokenizer: Path, *, positions: int) -> Path:
    """A dynamic-length model with position embeddings for `positions` tokens only: longer inputs fail in TF."""
    import tensorflow as tf

    class ShortPositions(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = tf.Variable(tf.random.stateless_normal([positions, 2], seed=[1, 2]))

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.int32)])
        def serve(self, input_ids: tf.Tensor, attention_mask: tf.Tensor) -> dict[str, tf.Tensor]:
            # Out-of-range positions raise InvalidArgumentError on CPU, as a BERT's position embeddings do.
            by_position = tf.gather(self.table, tf.range(tf.shape(input_ids)[1]))
            mask = tf.cast(attention_mask, tf.float32)[:, :, tf.newaxis]
            return {"logits": tf.reduce_sum(by_position[tf.newaxis] * mask, axis=1)}

    module = ShortPositions()
    tf.saved_model.save(module, str(root / "0"), signatures={"serving_default": module.serve})
    shutil.copytree(tokenizer, root, dirs_exist_ok=True)
    return root


def test_a_model_with_shorter_position_embeddings_is_served_at_the_length_it_takes(
    tmp_path: Path, demo_tokenizer: Path
) -> None:
    # No mme.json: the default length (128) is longer than the model takes; long texts once failed at predict.
    model = _save_short_position_model(tmp_path / "short", demo_tokenizer, positions=24)
    classifier = load_model_dir(model, SETTINGS)
    assert classifier.plan.max_sequence_length == 24
    (prediction,) = classifier.predict(["good " * 500])
    assert set(prediction.scores) == {"LABEL_0", "LABEL_1"}


def test_a_length_mme_json_sets_but_the_model_refuses_fails_the_load(tmp_path: Path, demo_tokenizer: Path) -> None:
    model = _save_short_position_model(tmp_path / "short", demo_tokenizer, positions=24)
    (model / "mme.json").write_text(json.dumps({"max_sequence_length": 64}))
    with pytest.raises(ModelLoadError, match=r"fails on texts of 64 tokens, the max_sequence_length in mme\.json"):
        load_model_dir(model, SETTINGS)
