"""Commands about regctl itself: config and completion."""

from __future__ import annotations

import enum
from typing import Annotated, Any

import typer

from regctl.cli.inputs import OutputOption
from regctl.cli.state import State
from regctl.render import key_value_table, tsv_lines


class Shell(enum.StrEnum):
    BASH = "bash"
    ZSH = "zsh"
    FISH = "fish"


def _shown(name: str, value: Any) -> str:
    from pydantic import SecretStr

    from regctl.connection import mask_url

    if value is None:
        return ""
    if isinstance(value, SecretStr):
        return "***"
    if name in ("redis_url", "mail_url"):
        return mask_url(str(value))
    return str(value)


def config(ctx: typer.Context, output: OutputOption = None) -> None:
    """Show the effective settings and where each came from (secrets masked).

    Example: regctl --env-file prod.env config
    """
    state: State = ctx.obj
    loaded = state.loaded
    settings = loaded.settings
    rows = [
        (name, _shown(name, getattr(settings, name)), loaded.sources.get(name, "default"))
        for name in type(settings).model_fields
    ]
    if not settings.redis_url:
        rows.append(("store", "embedded (no Redis URL configured)", "default"))
    if state.wants_json(output):
        state.json({name: {"value": value, "source": source} for name, value, source in rows})
    elif state.is_tty:
        state.show(key_value_table((name, f"{value}  ({source})") for name, value, source in rows))
    else:
        state.lines(tsv_lines(("setting", "value", "source"), rows))


def completion(shell: Annotated[Shell, typer.Argument(help="bash, zsh or fish.")]) -> None:
    """Print the shell completion script.

    Example: regctl completion bash > /etc/bash_completion.d/regctl
    """
    typer.echo(completion_script(shell), nl=False)


def completion_script(shell: Shell) -> str:
    """The script typer generates for ``regctl`` in ``shell``."""
    # typer exposes the script only through --show-completion; this is the same function.
    from typer._completion_shared import get_completion_script

    return get_completion_script(prog_name="regctl", complete_var="_REGCTL_COMPLETE", shell=shell)


def register(app: typer.Typer) -> None:
    app.command()(config)
    app.command()(completion)
