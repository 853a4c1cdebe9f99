"""The ``mme`` console command: one module per command group, registered on one Typer app.

Errors are worded once, here: every `mme` error derives from `MmeError`, botocore's are worded too, and each command
is wrapped so that one of them becomes ``error: <message>`` and exit status 2. Commands raise instead of catching.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from botocore.exceptions import BotoCoreError, ClientError

from mme import MmeError
from mme.cli.output import fail

Command = TypeVar("Command", bound=Callable[..., Any])


class MmeTyper(typer.Typer):
    """A Typer app whose commands turn `MmeError` and botocore errors into a message and exit status 2."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Command], Command]:
        """As `typer.Typer.command`; the registered callback words the errors above (the function is unchanged)."""
        register = super().command(*args, **kwargs)

        def decorator(function: Command) -> Command:
            @functools.wraps(function)  # Typer reads the parameters through __wrapped__
            def worded(*call_args: Any, **call_kwargs: Any) -> Any:
                try:
                    return function(*call_args, **call_kwargs)
                except (MmeError, ClientError, BotoCoreError) as error:
                    raise fail(error_message(error)) from None

            register(worded)
            return function

        return decorator


app = MmeTyper(
    no_args_is_help=True,
    add_completion=False,
    help="Many text classifiers on one SageMaker multi-model endpoint: build, package, serve and run them.",
)


@app.callback()
def _configure(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress.")] = False) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def error_message(error: BaseException) -> str:
    """What the user reads for `error`: botocore's ``Code: Message`` for an AWS answer, else the error's text."""
    details = getattr(error, "response", {}).get("Error", {})
    if details:
        # A ModelError's message already quotes the container's answer.
        return f"{details.get('Code', 'error')}: {details.get('Message', error)}"
    return str(error)


def main() -> None:
    """Console entry point."""
    app()


# Registration: each module adds its commands to `app`.
from mme.cli import capture, cost, endpoint, local, models, top  # noqa: E402, F401

__all__ = ["app", "main"]
