"""Commands about regctl itself: config and completion."""

from __future__ import annotations

import contextlib
import enum
import io
import os
from typing import TYPE_CHECKING, Annotated, Any

import typer

from regctl.cli.render import key_value_table
from regctl.cli.state import State

if TYPE_CHECKING:
    from regctl.settings import LoadedSettings


class Shell(enum.StrEnum):
    BASH = "bash"
    ZSH = "zsh"
    FISH = "fish"


def _shown(name: str, value: Any) -> str:
    from pydantic import SecretStr

    from regctl.urls import mask_url

    if value is None:
        return ""
    if isinstance(value, SecretStr):
        return "***"
    if name in ("redis_url", "mail_url"):
        return mask_url(str(value))
    return str(value)


def _source(loaded: LoadedSettings, name: str) -> str:
    source = loaded.sources.get(name, "default")
    ignored = loaded.ignored.get(name)
    return f"{source}; ignored: {', '.join(ignored)}" if ignored else source


def config(ctx: typer.Context) -> None:
    """Show the effective settings and where each came from (secrets masked).

    \b
    Example: regctl --env-file prod.env config
    """
    state: State = ctx.obj
    loaded = state.loaded
    settings = loaded.settings
    rows = [
        (name, _shown(name, getattr(settings, name)), _source(loaded, name))
        for name in type(settings).model_fields
    ]
    if not settings.redis_url:
        rows.append(("store", "embedded (no Redis URL configured)", "default"))
    if state.wants_json():
        state.json(
            {
                name: {"value": value, "source": loaded.sources.get(name, "default")}
                | ({"ignored": loaded.ignored[name]} if name in loaded.ignored else {})
                for name, value, _ in rows
            }
        )
    elif state.wants_table:
        state.show(key_value_table((name, f"{value}  ({source})") for name, value, source in rows))
    else:
        state.rows(("setting", "value", "source"), rows)


COMPLETE_VAR = "_REGCTL_COMPLETE"


def completion(shell: Annotated[Shell, typer.Argument(help="bash, zsh or fish.")]) -> None:
    """Print the shell completion script.

    \b
    Example: source <(regctl completion bash)
    """
    typer.echo(completion_script(shell), nl=False)


def completion_script(shell: Shell) -> str:
    """The script typer generates for ``regctl`` in ``shell``: what the completion
    protocol prints for ``_REGCTL_COMPLETE=source_<shell> regctl`` (the variable the
    scripts themselves use to ask for completions), captured in-process."""
    from regctl.cli.app import build_app

    printed = io.StringIO()
    saved = os.environ.get(COMPLETE_VAR)
    os.environ[COMPLETE_VAR] = f"source_{shell.value}"
    try:
        with contextlib.redirect_stdout(printed), contextlib.suppress(SystemExit):
            command = typer.main.get_command(build_app())
            command.main([], prog_name="regctl", complete_var=COMPLETE_VAR, standalone_mode=False)
    finally:
        if saved is None:
            del os.environ[COMPLETE_VAR]
        else:
            os.environ[COMPLETE_VAR] = saved
    return printed.getvalue().lstrip("\n")


COMMANDS = (config, completion)
