"""How commands end: a refusal with a message, and sizes and pairs parsed from options."""

from __future__ import annotations

import re

import typer


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` in red on stderr; raise the result to exit with status 2."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}


def parse_size(text: str) -> int:
    """Bytes in a size such as ``4GiB``, ``512MB``, ``1.5g`` or ``1000000``.

    Raises:
        typer.BadParameter: the text is not a positive size.
    """
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _SIZE_UNITS or float(match.group(1)) <= 0:
        raise typer.BadParameter(f"{text!r} is not a size: use a number with an optional unit, like 4GiB or 512MB")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def environment_pairs(pairs: list[str]) -> dict[str, str]:
    environment = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{pair!r} must look like NAME=VALUE")
        environment[name] = value
    return environment
