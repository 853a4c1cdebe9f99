"""Planning how a signature is fed and read, from its description and mme.json: no TensorFlow needed."""

from __future__ import annotations

import math

import pytest

from handler.errors import ModelLoadError
from handler.manifest import Manifest, OutputKind
from handler.model import prediction_of, probabilities_of
from handler.signature import SignatureDescription, TensorDescription, plan_serving


def _signature(
    inputs: dict[str, tuple[str, tuple[int | None, ...] | None]],
    outputs: dict[str, tuple[int | None, ...] | None] | None = None,
    activations: dict[str, str] | None = None,
) -> SignatureDescription:
    return SignatureDescription(
        inputs=tuple(TensorDescription(name, dtype, shape) for name, (dtype, shape) in sorted(inputs.items())),
        outputs=tuple(
            TensorDescription(name, "float32", shape)
            for name, shape in sorted((outputs or {"logits": (None, 2)}).items())
        ),
        activations=activations or {},
    )


def _plan(description: SignatureDescription, **manifest: object):
    return plan_serving(description, Manifest.from_json(manifest), tokenizer_limit=512)


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (("input_ids", "attention_mask", "token_type_ids"), ("input_ids", "attention_mask", "token_type_ids")),
        (("input_ids", "input_mask", "segment_ids"), ("input_ids", "attention_mask", "token_type_ids")),
        (("input_word_ids", "input_mask", "input_type_ids"), ("input_ids", "attention_mask", "token_type_ids")),
        (("input_ids", "input_mask"), ("input_ids", "attention_mask")),
    ],
)
def test_well_known_bert_names_bind_themselves(names: tuple[str, ...], expected: tuple[str, ...]) -> None:
    plan = _plan(_signature({name: ("int32", (None, None)) for name in names}))
    bound = {binding.signature_input: binding.tokenizer_output for binding in plan.bindings}
    assert bound == dict(zip(names, expected, strict=True))
    assert {binding.source for binding in plan.bindings} == {"default"}


def test_unbound_input_lists_the_inputs_and_prints_the_line_to_add() -> None:
    description = _signature({"ids": ("int32", (None, 64)), "valid": ("int32", (None, 64))})
    with pytest.raises(ModelLoadError) as caught:
        _plan(description)
    message = caught.value.message
    assert "takes ids (int32 [batch, 64]), valid (int32 [batch, 64])" in message
    assert "nothing is bound to 'ids', 'valid'" in message
    assert 'add to mme.json:  "inputs": {"ids": "input_ids", "valid": "attention_mask"}' in message
    assert "mme package --input ids=input_ids --input valid=attention_mask" in message


def test_an_input_no_name_suggests_gets_the_choices_in_the_hint() -> None:
    description = _signature({"input_ids": ("int32", (None, None)), "x": ("int32", (None, None))})
    with pytest.raises(ModelLoadError, match=r'"x": "input_ids\|attention_mask\|token_type_ids"'):
        _plan(description)


def test_mme_json_binds_any_name_and_overrides_a_default() -> None:
    description = _signature({"ids": ("int32", (None, None)), "input_mask": ("int32", (None, None))})
    plan = _plan(description, inputs={"ids": "input_ids", "input_mask": "attention_mask"})
    assert [(b.signature_input, b.tokenizer_output, b.source) for b in plan.bindings] == [
        ("ids", "input_ids", "mme.json"),
        ("input_mask", "attention_mask", "mme.json"),
    ]


def test_older_input_names_still_bind_each_to_itself() -> None:
    description = _signature({"input_ids": ("int32", (None, None)), "attention_mask": ("int32", (None, None))})
    plan = _plan(description, input_names=["input_ids", "attention_mask"])
    assert {(b.signature_input, b.tokenizer_output) for b in plan.bindings} == {
        ("input_ids", "input_ids"),
        ("attention_mask", "attention_mask"),
    }


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (("float32", (None, None)), "input_ids (float32 [batch, ?]) cannot be fed token ids"),
        (("string", (None,)), "input_ids (string [batch]) cannot be fed token ids"),
        (("int32", (None, None, 8)), "input_ids (int32 [batch, ?, 8]) cannot be fed token ids"),
    ],
)
def test_an_input_that_cannot_take_token_ids_is_refused(spec: tuple[str, tuple], fragment: str) -> None:
    with pytest.raises(ModelLoadError, match=r"must be int32 or int64 of shape \[batch, sequence\]") as caught:
        _plan(_signature({"input_ids": spec}))
    assert fragment in caught.value.message


def test_int64_inputs_are_fed_as_int64() -> None:
    plan = _plan(_signature({"input_ids": ("int64", (None, None)), "attention_mask": ("int64", (None, None))}))
    assert {binding.dtype for binding in plan.bindings} == {"int64"}


def test_static_length_is_the_default_and_pads_to_it() -> None:
    plan = _plan(_signature({"input_ids": ("int32", (None, 64)), "input_mask": ("int32", (None, 64))}))
    assert (plan.max_sequence_length, plan.static_length) == (64, True)
    assert _plan(_signature({"input_ids": ("int32", (None, 64))}), max_sequence_length=64).max_sequence_length == 64


def test_static_length_conflicting_with_mme_json_is_refused() -> None:
    with pytest.raises(ModelLoadError, match=r"sets max_sequence_length 128, but .* fixes 64 tokens per text"):
        _plan(_signature({"input_ids": ("int32", (None, 64))}), max_sequence_length=128)


def test_dynamic_length_defaults_to_128_or_the_tokenizer_limit() -> None:
    description = _signature({"input_ids": ("int32", (None, None))})
    assert plan_serving(description, Manifest(), tokenizer_limit=512).max_sequence_length == 128
    assert plan_serving(description, Manifest(), tokenizer_limit=32).max_sequence_length == 32
    planned = plan_serving(description, Manifest(max_sequence_length=300), tokenizer_limit=512)
    assert (planned.max_sequence_length, planned.static_length) == (300, False)


def test_output_choice_logits_then_the_only_one_then_mme_json() -> None:
    inputs = {"input_ids": ("int32", (None, None))}
    assert _plan(_signature(inputs, {"logits": (None, 3), "pooled": (None, 8)})).output_name == "logits"
    assert _plan(_signature(inputs, {"dense_3": (None, 3)})).output_name == "dense_3"
    assert _plan(_signature(inputs, {"a": (None, 3), "b": (None, 3)}), output_name="b").output_name == "b"


def test_several_outputs_without_logits_print_the_line_to_add() -> None:
    with pytest.raises(ModelLoadError) as caught:
        _plan(_signature({"input_ids": ("int32", (None, None))}, {"probs": (None, 3), "pooled": (None, 8)}))
    assert "outputs pooled (float32 [batch, 8]), probs (float32 [batch, 3]), and none is 'logits'" in str(caught.value)
    assert '"output_name": "pooled"' in str(caught.value)


def test_output_kind_comes_from_the_graph_then_mme_json_then_defaults_to_logits() -> None:
    inputs = {"input_ids": ("int32", (None, None))}
    softmax = _plan(_signature(inputs, {"probs": (None, 3)}, {"probs": "softmax"}))
    assert (softmax.output_kind, softmax.output_kind_source) == (OutputKind.PROBABILITIES, "softmax in the graph")
    said = _plan(_signature(inputs, {"probs": (None, 3)}), output_kind="probabilities")
    assert (said.output_kind, said.output_kind_source) == (OutputKind.PROBABILITIES, "mme.json")
    plain = _plan(_signature(inputs, {"logits": (None, 3)}))
    assert (plain.output_kind, plain.output_kind_source) == (OutputKind.LOGITS, "default")


def test_scores_equal_the_models_own_probabilities() -> None:
    row = [0.0003, 0.9997]
    prediction = prediction_of(row, ("neg", "pos"), OutputKind.PROBABILITIES)
    assert prediction.scores == {"neg": 0.0003, "pos": 0.9997}
    assert prediction.label == "pos"
    assert prediction.to_json()["probabilities"] == row


def test_logits_become_softmax_scores() -> None:
    prediction = prediction_of([1.0, 3.0], ("neg", "pos"), OutputKind.LOGITS)
    expected = math.exp(3) / (math.exp(1) + math.exp(3))
    assert prediction.scores["pos"] == pytest.approx(expected)
    assert prediction.to_json()["logits"] == [1.0, 3.0]


@pytest.mark.parametrize(
    ("row", "kind", "positive"), [([0.9], OutputKind.PROBABILITIES, 0.9), ([0.0], OutputKind.LOGITS, 0.5)]
)
def test_a_single_column_is_a_binary_classifier(row: list[float], kind: OutputKind, positive: float) -> None:
    probabilities = probabilities_of(row, kind)
    assert probabilities == pytest.approx([1 - positive, positive])
    assert prediction_of([-800.0], ("no", "yes"), OutputKind.LOGITS).scores == {"no": 1.0, "yes": 0.0}
