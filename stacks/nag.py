"""cdk-nag helpers: finding ids as cdk-nag prints them, so acknowledgements name exactly what they cover."""

from __future__ import annotations

import json

from aws_cdk import Stack
from constructs import Construct


def nag_resource(scope: Construct, value: str) -> str:
    """`value` (an ARN that may hold tokens) as cdk-nag prints it in a finding id such as `IAM5[Resource::...]`.

    cdk-nag flattens `Fn::Join`, writes `Fn::ImportValue` as the export's name, `Ref`/`Fn::GetAtt` as
    `<Id>`/`<Id.Attr>` and any other intrinsic as compact JSON. Computing the id keeps acknowledgements exact
    without copying generated logical IDs by hand.
    """
    return _render_nag(Stack.of(scope).resolve(value))


def _render_nag(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((key, arg),) = value.items()
        if key == "Fn::Join":
            separator, parts = arg
            return str(separator).join(_render_nag(part) for part in parts)
        if key == "Fn::ImportValue":
            return _render_nag(arg)
        if key == "Ref":
            return f"<{arg}>"
        if key == "Fn::GetAtt":
            return f"<{arg[0]}.{arg[1]}>"
    return json.dumps(value, separators=(",", ":"))
