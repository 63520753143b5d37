"""The Typer application: global options, command registration, error handling."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

from regctl import __version__
from regctl.cli.state import State
from regctl.cli.status import report_error
from regctl.errors import ExitStatus
from regctl.render import Format

HELP = """Run pending user registrations stored in Redis.

With no Redis configured, regctl uses an embedded local server (see `regctl server`).

Example: regctl add alice@example.com --first-name Alice --last-name Liddell
"""


class RegctlGroup(TyperGroup):
    """Turns every error raised by a command into one stderr line and an exit status,
    and records mutating commands in the audit trail with their outcome."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        """Usage errors as one line too (click would print usage, a hint and the error)."""
        run = {
            "args": args,
            "prog_name": prog_name,
            "complete_var": complete_var,
            "windows_expand_args": windows_expand_args,
            **extra,
        }
        if not standalone_mode:
            return super().main(standalone_mode=False, **run)
        try:
            status = super().main(standalone_mode=False, **run)
        except typer.Abort:  # end of input or Ctrl-C at a prompt
            sys.stderr.write("Interrupted\n")
            sys.exit(ExitStatus.INTERRUPTED)
        except Exception as exc:
            if not hasattr(exc, "format_message") or not hasattr(exc, "exit_code"):
                raise
            context = getattr(exc, "ctx", None)
            if type(exc).__name__ == "NoArgsIsHelpError" and context is not None:
                sys.stdout.write(context.get_help() + "\n")  # bare `regctl`: help, not an error
                sys.exit(ExitStatus.OK)
            where = context.command_path if context is not None else "regctl"
            from regctl.render import visible

            message = visible(" ".join(str(exc.format_message()).split()))
            sys.stderr.write(f"Error: {message} — see `{visible(where)} --help`\n")
            sys.exit(exc.exit_code)
        sys.exit(status if isinstance(status, int) else 0)

    def invoke(self, ctx: Any) -> Any:
        outcome = "ok"
        try:
            return super().invoke(ctx)
        except typer.Exit as done:
            outcome = "ok" if not done.exit_code else f"exit {int(done.exit_code)}"
            raise
        except BrokenPipeError:
            outcome = "closed_pipe"
            _closed_pipe()
        except (Exception, KeyboardInterrupt) as exc:
            if type(exc).__module__.startswith("typer"):
                raise  # usage errors: typer prints them and exits 2
            outcome = getattr(exc, "reason", "interrupted")
            state = ctx.obj if isinstance(ctx.obj, State) else None
            raise typer.Exit(report_error(state, exc)) from None
        finally:
            if isinstance(ctx.obj, State):
                ctx.obj.record_audit(outcome)


def _closed_pipe() -> NoReturn:
    """The reader went away (`regctl list | head -1`): end quietly, as 128 + SIGPIPE.
    stdout points at /dev/null first, or Python would complain again at exit."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(ExitStatus.CLOSED_PIPE)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"regctl {__version__}")
        raise typer.Exit()


def main_callback(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option("--url", help="Redis URL (default: REGCTL_REDIS_URL, REDIS_URL, or embedded)"),
    ] = None,
    prefix: Annotated[str | None, typer.Option(help="Key prefix (REGCTL_PREFIX).")] = None,
    env_file: Annotated[
        Path | None, typer.Option("--env-file", help="Read settings from this .env file.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML config file (REGCTL_CONFIG).")
    ] = None,
    output: Annotated[Format | None, typer.Option("--output", "-o", help="Output format.")] = None,
    wait_replicas: Annotated[
        int | None,
        typer.Option(
            "--wait-replicas", min=0, help="Replicas that must acknowledge add/resend/verify."
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only errors (and requested data).")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Tracebacks on errors.")] = False,
    no_color: Annotated[
        bool, typer.Option("--no-color", help="No colour (also NO_COLOR).")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    state = State(
        overrides={"redis_url": url, "prefix": prefix, "wait_replicas": wait_replicas},
        env_file=env_file,
        config_file=config,
        output=output,
        quiet=quiet,
        debug=debug,
        no_color=no_color,
    )
    ctx.obj = state
    ctx.call_on_close(state.close)


def build_app() -> typer.Typer:
    from regctl.cli import secret_cmd, server_cmd
    from regctl.cli.config_cmd import register as register_config
    from regctl.cli.diagnose import register as register_diagnose
    from regctl.cli.maintenance import register as register_maintenance
    from regctl.cli.records import register as register_records
    from regctl.cli.transfer_cmd import register as register_transfer

    app = typer.Typer(
        cls=RegctlGroup,
        help=HELP,
        no_args_is_help=True,
        add_completion=True,
        rich_markup_mode=None,  # plain help: `--help` never loads rich
        pretty_exceptions_enable=False,
        pretty_exceptions_show_locals=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(main_callback)
    for register in (
        register_records,
        register_maintenance,
        register_transfer,
        register_diagnose,
        register_config,
    ):
        register(app)
    for name, group in (("server", server_cmd), ("secret", secret_cmd)):
        sub = typer.Typer(help=group.HELP, no_args_is_help=True)
        for command in group.COMMANDS:
            sub.command()(command)
        app.add_typer(sub, name=name)
    return app
