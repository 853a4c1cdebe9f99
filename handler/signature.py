"""What a ``serving_default`` signature takes and gives, and how the handler feeds and reads it.

:func:`describe_signature` reads a loaded signature into plain data (:class:`SignatureDescription`): its inputs with
dtype and static sequence length, its outputs with width, and the activation the graph ends in for each output.
:func:`plan_serving` combines that with ``mme.json`` into a :class:`ServingPlan`, or refuses with a
:class:`~handler.errors.ModelLoadError` that lists what the signature has and gives the exact line to add.

Default bindings (signature input -> tokenizer output), the names BERT exports use:

- ``input_ids``, ``input_word_ids`` -> ``input_ids``
- ``attention_mask``, ``input_mask`` -> ``attention_mask``
- ``token_type_ids``, ``segment_ids``, ``input_type_ids`` -> ``token_type_ids``
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from handler.errors import ModelLoadError
from handler.manifest import MANIFEST_FILE, TOKENIZER_OUTPUTS, Manifest, OutputKind

logger = logging.getLogger(__name__)

SIGNATURE = "serving_default"
DEFAULT_MAX_SEQUENCE_LENGTH = 128

WELL_KNOWN_INPUTS: Mapping[str, str] = {
    "input_ids": "input_ids",
    "input_word_ids": "input_ids",
    "attention_mask": "attention_mask",
    "input_mask": "attention_mask",
    "token_type_ids": "token_type_ids",
    "segment_ids": "token_type_ids",
    "input_type_ids": "token_type_ids",
}
FEEDABLE_DTYPES = ("int32", "int64")
#: Graph ops that end a classifier in probabilities.
_PROBABILITY_OPS = {"Softmax": "softmax", "Sigmoid": "sigmoid"}
#: Ops that pass a tensor through unchanged, or call a function whose output is followed.
_PASS_THROUGH_OPS = {"Identity", "IdentityN", "StopGradient", "Snapshot"}
_CALL_OPS = {"StatefulPartitionedCall", "PartitionedCall"}


@dataclass(frozen=True)
class TensorDescription:
    """One signature input or output: name, dtype and shape (``None`` for a dynamic dimension)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...] | None

    def __str__(self) -> str:
        if self.shape is None:
            return f"{self.name} ({self.dtype}, any shape)"
        dims = ", ".join(
            "batch" if i == 0 and d is None else ("?" if d is None else str(d)) for i, d in enumerate(self.shape)
        )
        return f"{self.name} ({self.dtype} [{dims}])"


@dataclass(frozen=True)
class SignatureDescription:
    """The signature as plain data. ``activations`` maps an output name to ``softmax``/``sigmoid`` where the graph
    ends in one."""

    inputs: tuple[TensorDescription, ...]
    outputs: tuple[TensorDescription, ...]
    activations: Mapping[str, str]

    def input(self, name: str) -> TensorDescription:
        return next(spec for spec in self.inputs if spec.name == name)

    def output(self, name: str) -> TensorDescription:
        return next(spec for spec in self.outputs if spec.name == name)


@dataclass(frozen=True)
class InputBinding:
    """A signature input and the tokenizer output fed to it, as the signature's dtype."""

    signature_input: str
    tokenizer_output: str
    dtype: str
    #: ``default`` (a well-known name) or ``mme.json``.
    source: str


@dataclass(frozen=True)
class ServingPlan:
    """How the handler feeds and reads one model."""

    bindings: tuple[InputBinding, ...]
    #: Tokens per text: texts are truncated to it, and padded to it when ``static_length``.
    max_sequence_length: int
    #: True when the signature fixes the sequence length: every batch is padded to ``max_sequence_length``.
    static_length: bool
    output_name: str
    #: Columns of the output row; 1 is a binary classifier with one probability or logit.
    output_width: int | None
    output_kind: OutputKind
    #: Where ``output_kind`` came from: ``softmax in the graph``, ``sigmoid in the graph``, ``mme.json``, ``default``.
    output_kind_source: str

    def tokenizer_outputs(self) -> set[str]:
        return {binding.tokenizer_output for binding in self.bindings}


def describe_signature(signature: Any) -> SignatureDescription:
    """Read a loaded ``ConcreteFunction`` signature: its inputs, outputs and the activation each output ends in."""
    specs = signature.structured_input_signature[1]
    inputs = tuple(_tensor(name, spec) for name, spec in sorted(specs.items()))
    outputs = tuple(_tensor(name, spec) for name, spec in sorted(signature.structured_outputs.items()))
    return SignatureDescription(inputs=inputs, outputs=outputs, activations=_final_activations(signature))


def _tensor(name: str, spec: Any) -> TensorDescription:
    shape = None if spec.shape.rank is None else tuple(spec.shape.as_list())
    return TensorDescription(name=name, dtype=spec.dtype.name, shape=shape)


def _final_activations(signature: Any) -> dict[str, str]:
    """Output name -> ``softmax``/``sigmoid`` for outputs the graph computes with one, through identities and calls.

    Reading the graph is best effort: a graph it cannot follow reports nothing, and ``mme.json`` says what the
    output holds instead.
    """
    try:
        graph_def = signature.graph.as_graph_def()
        functions = {function.signature.name: function for function in graph_def.library.function}
        top_nodes = {node.name: node for node in graph_def.node}
        found = {}
        # A signature's flat outputs follow its output names in sorted order (how tf.nest flattens a dict).
        for name, tensor in zip(sorted(signature.structured_outputs), signature.outputs, strict=True):
            node_name, _, position = tensor.name.partition(":")
            activation = _follow(top_nodes, functions, node_name, int(position or 0), depth=0)
            if activation is not None:
                found[name] = activation
        return found
    except Exception:  # a graph this reader does not understand is not an error: mme.json can say the kind
        logger.debug("could not read the graph's final activations", exc_info=True)
        return {}


def _follow(
    nodes: Mapping[str, Any], functions: Mapping[str, Any], name: str, position: int, *, depth: int
) -> str | None:
    """The activation op that produces output ``position`` of node ``name``, or None."""
    for _ in range(200):
        node = nodes.get(name)
        if node is None or depth > 20:
            return None
        if node.op in _PROBABILITY_OPS:
            return _PROBABILITY_OPS[node.op]
        if node.op in _PASS_THROUGH_OPS:
            data_inputs = [item for item in node.input if not item.startswith("^")]
            name, position = _parse_input(data_inputs[position if node.op == "IdentityN" else 0])
            continue
        if node.op in _CALL_OPS:
            function = functions.get(node.attr["f"].func.name)
            if function is None:
                return None
            output_arg = function.signature.output_arg[position].name
            inner_name, inner_position = _parse_input(function.ret[output_arg])
            inner_nodes = {inner.name: inner for inner in function.node_def}
            return _follow(inner_nodes, functions, inner_name, inner_position, depth=depth + 1)
        return None
    return None


def _parse_input(reference: str) -> tuple[str, int]:
    """``node``, ``node:2`` (graphs) or ``node:arg:2`` (functions) -> (node, output position).

    Within a function the position counts within the named output argument; the ops followed here have one.
    """
    parts = reference.split(":")
    return parts[0], int(parts[-1]) if len(parts) > 1 else 0


def _suggested_output(name: str, taken: set[str]) -> str:
    """A guess for the hint only (never bound without the user saying so): the tokenizer output a name suggests."""
    lowered = name.lower()
    for words, output in (
        (("mask", "valid", "attention"), "attention_mask"),
        (("type", "segment"), "token_type_ids"),
        (("ids", "token", "word", "input"), "input_ids"),
    ):
        if any(word in lowered for word in words) and output not in taken:
            return output
    return "|".join(TOKENIZER_OUTPUTS)


def _binding_hint(description: SignatureDescription, bound: Mapping[str, str]) -> str:
    taken = set(bound.values())
    mapping = {}
    for spec in description.inputs:
        mapping[spec.name] = bound.get(spec.name) or _suggested_output(spec.name, taken)
        taken.add(mapping[spec.name])
    flags = " ".join(f"--input {name}={output}" for name, output in mapping.items())
    return f'add to {MANIFEST_FILE}:  "inputs": {json.dumps(mapping)}  (or pass `mme package {flags}`)'


def _bind_inputs(description: SignatureDescription, manifest: Manifest) -> tuple[InputBinding, ...]:
    overrides = manifest.binding_overrides()
    names = [spec.name for spec in description.inputs]
    listing = ", ".join(str(spec) for spec in description.inputs)
    unknown = [name for name in overrides if name not in names]
    if unknown:
        raise ModelLoadError(
            f"{MANIFEST_FILE} binds {unknown}, which the {SIGNATURE!r} signature does not take; it takes {listing}. "
            + _binding_hint(description, {k: v for k, v in overrides.items() if k in names})
        )
    bound = {name: overrides.get(name) or WELL_KNOWN_INPUTS.get(name) for name in names}
    unbound = [name for name, output in bound.items() if output is None]
    if unbound:
        raise ModelLoadError(
            f"the {SIGNATURE!r} signature takes {listing}; nothing is bound to {', '.join(map(repr, unbound))}. "
            "Bind every input to a tokenizer output: "
            + _binding_hint(description, {k: v for k, v in bound.items() if v})
        )
    bindings = []
    for spec in description.inputs:
        output = bound[spec.name]
        assert output is not None
        if spec.dtype not in FEEDABLE_DTYPES or spec.shape is None or len(spec.shape) != 2:
            raise ModelLoadError(
                f"the {SIGNATURE!r} input {spec} cannot be fed token ids: it must be int32 or int64 of shape "
                "[batch, sequence]. Export the model with integer token inputs (the tokenizer runs in the handler)"
            )
        source = "mme.json" if spec.name in overrides else "default"
        bindings.append(InputBinding(spec.name, output, spec.dtype, source))
    return tuple(bindings)


def _sequence_length(
    description: SignatureDescription, bindings: tuple[InputBinding, ...], manifest: Manifest, tokenizer_limit: int
) -> tuple[int, bool]:
    # Bound inputs are [batch, sequence] (checked when binding): the second dimension is the sequence length.
    shapes = [description.input(binding.signature_input).shape or (None, None) for binding in bindings]
    statics = sorted({shape[1] for shape in shapes if shape[1] is not None})
    if len(statics) > 1:
        raise ModelLoadError(f"the {SIGNATURE!r} inputs fix different sequence lengths {statics}")
    if statics:
        length = statics[0]
        if manifest.max_sequence_length is not None and manifest.max_sequence_length != length:
            raise ModelLoadError(
                f"{MANIFEST_FILE} sets max_sequence_length {manifest.max_sequence_length}, but the {SIGNATURE!r} "
                f"signature fixes {length} tokens per text: remove max_sequence_length or set it to {length}"
            )
        return length, True
    return manifest.max_sequence_length or min(DEFAULT_MAX_SEQUENCE_LENGTH, tokenizer_limit), False


def _choose_output(description: SignatureDescription, manifest: Manifest) -> TensorDescription:
    names = [spec.name for spec in description.outputs]
    listing = ", ".join(str(spec) for spec in description.outputs)
    if manifest.output_name is not None:
        if manifest.output_name not in names:
            raise ModelLoadError(
                f"{MANIFEST_FILE} names output_name {manifest.output_name!r}, but the {SIGNATURE!r} signature "
                f"outputs {listing}"
            )
        chosen = manifest.output_name
    elif "logits" in names:
        chosen = "logits"
    elif len(names) == 1:
        chosen = names[0]
    else:
        raise ModelLoadError(
            f"the {SIGNATURE!r} signature outputs {listing}, and none is 'logits': name the one holding the "
            f'class scores: add to {MANIFEST_FILE}:  "output_name": "{names[0]}"  (or pass `mme package '
            f"--output-name {names[0]}`)"
        )
    spec = description.output(chosen)
    if spec.shape is not None and len(spec.shape) not in (1, 2):
        raise ModelLoadError(
            f"the output {spec} is not one row of class scores per text: a classifier outputs [batch, classes]"
        )
    return spec


def plan_serving(description: SignatureDescription, manifest: Manifest, *, tokenizer_limit: int) -> ServingPlan:
    """How to feed and read the signature, from its description and ``mme.json``.

    ``tokenizer_limit`` is the tokenizer's ``model_max_length``: the default length of a dynamic signature is at
    most that.

    Raises:
        ModelLoadError: an input cannot be bound or fed, lengths conflict, or no output can be chosen; the message
            lists what the signature has and what to add.
    """
    bindings = _bind_inputs(description, manifest)
    length, static = _sequence_length(description, bindings, manifest, tokenizer_limit)
    output = _choose_output(description, manifest)
    width = None if output.shape is None else (1 if len(output.shape) == 1 else output.shape[-1])
    activation = description.activations.get(output.name)
    if manifest.output_kind is not None:
        kind, source = manifest.output_kind, MANIFEST_FILE
        detected = OutputKind.PROBABILITIES if activation else None
        if detected is not None and detected is not kind:
            logger.warning(
                "%s says output_kind %s, but the graph ends in %s: %s wins",
                MANIFEST_FILE,
                kind,
                activation,
                MANIFEST_FILE,
            )
    elif activation is not None:
        kind, source = OutputKind.PROBABILITIES, f"{activation} in the graph"
    else:
        kind, source = OutputKind.LOGITS, "default"
    return ServingPlan(
        bindings=bindings,
        max_sequence_length=length,
        static_length=static,
        output_name=output.name,
        output_width=width,
        output_kind=kind,
        output_kind_source=source,
    )
