"""The Typer application: global options, command registration, error handling."""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption

from regctl import __version__
from regctl.cli.state import State
from regctl.cli.status import report_error
from regctl.errors import ExitStatus, InvalidInput
from regctl.render import Format, to_json

HELP = """Run pending user registrations stored in Redis.

With no Redis configured, regctl uses an embedded local server (see `regctl server`).

Example: regctl list --older-than 2h

The options below work anywhere on the line: `regctl purge -q --url redis://db`.
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
        as_json = _asks_json(sys.argv[1:] if args is None else list(args))
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

            message = _own_words(visible(" ".join(str(exc.format_message()).split())))
            sys.stderr.write(f"Error: {message} — see `{visible(where)} --help`\n")
            if as_json:
                error = {"ok": False, "reason": "usage", "message": message}
                sys.stdout.write(to_json(error | {"exit_code": exc.exit_code}) + "\n")
            sys.exit(exc.exit_code)
        sys.exit(status if isinstance(status, int) else 0)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if ctx.parent is None:
            args = _hoisted(self, ctx, args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: Any) -> Any:
        outcome = "ok"
        try:
            return super().invoke(ctx)
        except typer.Exit as done:
            said = ctx.obj.outcome if isinstance(ctx.obj, State) else None
            outcome = said or ("ok" if not done.exit_code else f"exit {int(done.exit_code)}")
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


# The formats of commands that do not have every one (-o name needs identifiers).
_ALL = frozenset(Format)
_NO_NAMES = _ALL - {Format.NAME}
FORMATS = {
    "export": frozenset({Format.TABLE, Format.JSON, Format.NDJSON}),
    "completion": frozenset({Format.TABLE}),
    **dict.fromkeys(
        (
            "purge",
            "stats",
            "audit",
            "import",
            "health",
            "doctor",
            "selftest",
            "config",
            "server start",
            "server stop",
            "server status",
            "secret status",
            "secret rotate",
        ),
        _NO_NAMES,
    ),
}


class RegctlCommand(TyperCommand):
    """A command whose help also lists the global options it accepts, and which
    refuses an output format it does not have before it does anything."""

    def invoke(self, ctx: Any) -> Any:
        state = ctx.find_root().obj
        path = ctx.command_path.partition(" ")[2]
        formats = FORMATS.get(path, _ALL)
        if isinstance(state, State) and state.output and state.output not in formats:
            raise InvalidInput(
                f"`regctl {path}` has no -o {state.output} output",
                f"use {', '.join(f.value for f in Format if f in formats)}",
            )
        return super().invoke(ctx)

    def format_options(self, ctx: Any, formatter: Any) -> None:
        super().format_options(ctx, formatter)
        root = ctx.find_root()
        shared = [p for p in root.command.get_params(root) if p.name not in _ROOT_ONLY]
        with formatter.section("Global options (anywhere on the line)"):
            formatter.write_dl([record for p in shared if (record := p.get_help_record(root))])


_ROOT_ONLY = ("help", "install_completion", "show_completion")


def _option_table(command: Any, ctx: typer.Context) -> dict[str, bool]:
    """Each option name of ``command`` -> whether it takes a value."""
    names: dict[str, bool] = {}
    for param in command.get_params(ctx):
        if isinstance(param, TyperOption):
            takes_value = not (param.is_flag or param.count)
            names.update(dict.fromkeys([*param.opts, *param.secondary_opts], takes_value))
    return names


def _hoisted(root: TyperGroup, ctx: typer.Context, args: list[str]) -> list[str]:
    """``args`` with the global options given after the command name moved before it,
    so `regctl purge -q` means `regctl -q purge` (as with kubectl and gh). A command's
    own option of the same name wins; nothing after ``--`` moves."""
    global_options = _option_table(root, ctx)
    command: Any = root
    local: dict[str, bool] = global_options
    front: list[str] = []
    rest: list[str] = []
    named_at: int | None = None  # the command name's place: hoisted options go before it
    tokens = iter(args)
    for arg in tokens:
        if arg == "--":
            rest += [arg, *tokens]
            break
        name, attached = _split_option(arg)
        table = local if name in local else global_options if name in global_options else None
        if table is not None and (table[name] or not attached):
            target = rest if table is local else front
            target.append(arg)
            if table[name] and not attached:
                target += list(itertools.islice(tokens, 1))  # its value
        else:
            rest.append(arg)
            sub = command.get_command(ctx, arg) if isinstance(command, TyperGroup) else None
            if sub is not None:
                named_at = len(rest) - 1 if named_at is None else named_at
                command, local = sub, _option_table(sub, ctx)
    if named_at is None:
        return args
    return rest[:named_at] + front + rest[named_at:]


# The range checks' wording (pydantic's, through typer) in regctl's words.
_RANGE_WORDS = (
    ("Input should be greater than or equal to", "must be at least"),
    ("Input should be less than or equal to", "must be at most"),
    ("Input should be greater than", "must be more than"),
    ("Input should be less than", "must be less than"),
    ("Input should be", "must be"),
)


def _own_words(message: str) -> str:
    for theirs, ours in _RANGE_WORDS:
        message = message.replace(theirs, ours)
    return message


def _split_option(arg: str) -> tuple[str, bool]:
    """(option name, whether its value is attached): --url=x, -ojson, -o, --url."""
    if arg.startswith("--"):
        return arg.partition("=")[0], "=" in arg
    if arg.startswith("-") and len(arg) > 2:
        return arg[:2], True  # -ojson (or flags run together, -qy: left to click)
    return arg, False


def _asks_json(args: list[str]) -> bool:
    """``-o json`` (or ndjson) anywhere before ``--``, read before click parses anything."""
    tokens = iter(args)
    for arg in tokens:
        if arg == "--":
            return False
        name, attached = _split_option(arg)
        if name in ("-o", "--output"):
            value = arg[len(name) :].lstrip("=") if attached else next(tokens, None)
            if value in ("json", "ndjson"):
                return True
    return False


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
    no_headers: Annotated[
        bool, typer.Option("--no-headers", help="No header line in tables, TSV and CSV.")
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
        no_headers=no_headers,
        debug=debug,
        no_color=no_color,
    )
    ctx.obj = state
    ctx.call_on_close(state.close)


def build_app() -> typer.Typer:
    from regctl.cli import (
        config_cmd,
        diagnose,
        maintenance,
        records,
        secret_cmd,
        server_cmd,
        transfer_cmd,
    )

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
    for module in (records, maintenance, transfer_cmd, diagnose, config_cmd):
        for command in module.COMMANDS:
            app.command(command.__name__.rstrip("_"), cls=RegctlCommand)(command)
    for name, group in (("server", server_cmd), ("secret", secret_cmd)):
        sub = typer.Typer(help=group.HELP, no_args_is_help=True, rich_markup_mode=None)
        for command in group.COMMANDS:
            sub.command(cls=RegctlCommand)(command)
        app.add_typer(sub, name=name)
    return app
