"""The Typer application: global options, command registration, error handling."""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Protocol, TypeGuard

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption

from regctl import __version__
from regctl.cli.render import Format, to_json
from regctl.cli.state import State, closed_pipe
from regctl.cli.status import failure, interrupted, plugin_line, report_error, written
from regctl.errors import ExitStatus, InvalidInput, RegctlError, local_io

HELP = """Run pending user registrations stored in Redis.

With no Redis configured, regctl uses an embedded local server (see `regctl server`).

\b
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
        argv = sys.argv[1:] if args is None else list(args)
        _reopen_closed_streams()
        try:
            status = super().main(standalone_mode=False, **run)
        except BrokenPipeError:  # help or version into a closed pipe
            closed_pipe()
        except SystemExit:
            if type(sys.stdout).__name__ == "PacifyFlushWrapper":  # click met a closed pipe
                closed_pipe()
            raise
        except typer.Abort as stopped:  # end of input, Ctrl-C or SIGTERM at a prompt
            from regctl.cli import by_sigterm

            sys.exit(interrupted(_asks_json(argv), terminated=by_sigterm(stopped)))
        except RegctlError as exc:  # found while reading the line, before any command
            sys.exit(_usage_error(exc.message, exc.exit_code, None, argv, self))
        except Exception as exc:
            if not _is_usage_error(exc):
                raise
            context = getattr(exc, "ctx", None)
            message = str(exc.format_message())
            if context is not None and message == context.get_help():
                if not _asks_json(argv):
                    with contextlib.suppress(BrokenPipeError):  # bare `regctl`: help
                        sys.stdout.write(context.get_help() + "\n")
                        sys.stdout.flush()
                        sys.exit(ExitStatus.OK)
                    closed_pipe()
                message = "Missing command."  # (-o json: one JSON document, help is none)
            sys.exit(_usage_error(message, exc.exit_code, context, argv, self))
        sys.exit(status if isinstance(status, int) else ExitStatus.OK)

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
            closed_pipe()
        except typer.Abort:
            outcome = "interrupted"
            raise
        except (Exception, KeyboardInterrupt) as exc:
            if _is_usage_error(exc):
                outcome = "invalid_input"  # a usage error: nothing ran
                raise  # typer's usage errors: main() prints them and exits 2
            exc = local_io(exc) or exc  # (a full disk under the output: no bug of regctl's)
            outcome = (
                exc.reason
                if isinstance(exc, RegctlError)
                else "interrupted"
                if isinstance(exc, KeyboardInterrupt)
                else "internal_error"
            )
            state = ctx.obj if isinstance(ctx.obj, State) else None
            raise typer.Exit(report_error(state, exc)) from None
        finally:
            if isinstance(ctx.obj, State):
                ctx.obj.record_audit(outcome)


class _UsageError(Protocol):
    exit_code: int
    ctx: Any

    def format_message(self) -> str: ...


def _is_usage_error(exc: BaseException) -> TypeGuard[_UsageError]:
    """typer's usage errors (bad option, missing argument...): its public exception
    classes do not include their base, which says how to print it and with what code."""
    return hasattr(exc, "format_message") and hasattr(exc, "exit_code")


# The formats of commands that do not have every one (-o name needs identifiers).
_ALL = frozenset(Format)
_NO_NAMES = _ALL - {Format.NAME}
FORMATS = {
    "export": frozenset({Format.JSON, Format.NDJSON}),  # (no -o: NDJSON)
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
            "limits show",
            "limits reset",
        ),
        _NO_NAMES,
    ),
}


class RegctlCommand(TyperCommand):
    """A command whose help also lists the global options it accepts, and which
    refuses an output format it does not have before it does anything."""

    def invoke(self, ctx: Any) -> Any:
        for param in self.params:  # `--domain "$D"` with D unset must not mean "all"
            value = ctx.params.get(param.name)
            if value == "" or (isinstance(value, list | tuple) and "" in value):
                shown = param.opts[0] if isinstance(param, TyperOption) else param.name.upper()
                raise InvalidInput(f"{shown} must not be empty")
        state = ctx.find_root().obj
        path = ctx.command_path.partition(" ")[2]
        formats = FORMATS.get(path, _ALL)
        if isinstance(state, State) and state.output and state.output not in formats:
            refused = InvalidInput(
                f"`regctl {path}` has no -o {state.output} output",
                f"use {', '.join(f.value for f in Format if f in formats)}",
            )
            if path == "health":
                from regctl.cli.diagnose import refused_check

                refused_check(state, refused, bool(ctx.params.get("nagios")))
            raise refused
        return super().invoke(ctx)

    def format_options(self, ctx: Any, formatter: Any) -> None:
        super().format_options(ctx, formatter)
        _global_options_help(ctx, formatter)


class RegctlSubgroup(TyperGroup):
    """`regctl server`, `regctl secret`: their help lists the global options too."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        super().format_options(ctx, formatter)
        _global_options_help(ctx, formatter)


def _global_options_help(ctx: Any, formatter: Any) -> None:
    root = ctx.find_root()
    shared = [p for p in root.command.get_params(root) if p.name not in _ROOT_ONLY]
    with formatter.section("Global options (anywhere on the line)"):
        formatter.write_dl([record for p in shared if (record := p.get_help_record(root))])


_ROOT_ONLY = ("help", "install_completion", "show_completion")


def _option_table(params: Any) -> dict[str, bool]:
    """Each option name among ``params`` -> whether it takes a value."""
    names: dict[str, bool] = {}
    for param in params:
        if isinstance(param, TyperOption):
            takes_value = not (param.is_flag or param.count)
            names.update(dict.fromkeys([*param.opts, *param.secondary_opts], takes_value))
    return names


def _hoisted(root: TyperGroup, ctx: typer.Context, args: list[str]) -> list[str]:
    """``args`` with the global options given after the command name moved before it,
    so `regctl purge -q` means `regctl -q purge` (as with kubectl and gh). A command's
    own option of the same name wins; nothing after ``--`` moves."""
    # (not --install-completion: it would run for any command)
    global_options = _option_table(p for p in root.get_params(ctx) if p.name not in _ROOT_ONLY)
    command: Any = root
    local: dict[str, bool] = global_options
    front: list[str] = []
    rest: list[str] = []
    named_at: int | None = None  # the command name's place: hoisted options go before it
    tokens = iter(_flags_apart(args, lambda: {**global_options, **_all_local(root, ctx)}))
    for arg in tokens:
        if arg == "--":
            rest += [arg, *tokens]
            break
        name, attached = _split_option(arg)
        table = local if name in local else global_options if name in global_options else None
        if table is not None and (table[name] or not attached):
            value = list(itertools.islice(tokens, 1)) if table[name] and not attached else []
            if table[name] and not attached and not value:
                raise InvalidInput(f"{arg} needs a value")
            target = rest if table is local else front
            target += [arg, *value]
        else:
            rest.append(arg)
            sub = command.get_command(ctx, arg) if isinstance(command, TyperGroup) else None
            if sub is not None:
                named_at = len(rest) - 1 if named_at is None else named_at
                command, local = sub, _option_table(sub.get_params(ctx))
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
    ("Value error, ", ""),
    ("Missing command.", "a command is missing"),
)


def _own_words(message: str) -> str:
    for theirs, ours in _RANGE_WORDS:
        message = message.replace(theirs, ours)
    return message


def _reopen_closed_streams() -> None:
    """`regctl purge >&-` (stdout closed, not a pipe): the work still runs, its output
    goes nowhere, as it would into a closed pipe."""
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the process's life
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115


def _usage_error(text: str, status: int, context: Any, argv: list[str], root: Any) -> int:
    """One line on stderr (and the JSON error object, or the plugin's UNKNOWN line for
    `health --nagios`); click would print usage, a hint and the error."""
    from regctl.text import visible

    message = _own_words(visible(" ".join(text.split())))
    where = context.command_path if context is not None else "regctl"
    hint = f"see `{visible(where)} --help`"
    if where.endswith(" resend") and message.startswith("No such option"):
        hint = "a resend by filters is `regctl resend-many` (see its --help)"
    written(sys.stderr, f"Error: {message} — {hint}\n")
    words = argv[: argv.index("--") if "--" in argv else None]
    if _of_health(context, words, root):
        status = 3  # a monitoring runner reads 2 as CRITICAL: a bad check is UNKNOWN
        if "--nagios" in words:  # (given to another command, only an option it lacks)
            sys.stdout.write(plugin_line("UNKNOWN", message) + "\n")
            return status
    if _asks_json(argv):
        sys.stdout.write(to_json(failure("usage", message, status)) + "\n")
    return status


def _of_health(context: Any, words: list[str], root: Any) -> bool:
    """Whether a usage error is `health`'s, whose exits follow the plugin convention."""
    if context is not None and context.parent is not None:
        return bool(context.info_name == "health")
    # (found reading the line, or the root's: the command is the first word that is
    # neither an option nor an option's value, as in `--prefix health list`)
    valued = _option_table(root.params)
    tokens = iter(words)
    for word in tokens:
        if not word.startswith("-") or word == "-":
            return word == "health"
        if word.startswith("--"):
            name, attached = _split_option(word)
            if valued.get(name) and not attached:
                next(tokens, None)
            continue
        for at, letter in enumerate(word[1:], 2):  # -qo json: flags run together
            if valued.get(f"-{letter}"):
                if at == len(word):
                    next(tokens, None)
                break
    return False


def _all_local(group: Any, ctx: typer.Context) -> dict[str, bool]:
    """The options of every command under ``group`` (for splitting -qy apart)."""
    names: dict[str, bool] = {}
    for name in group.list_commands(ctx):
        sub = group.get_command(ctx, name)
        if isinstance(sub, TyperGroup):
            names |= _all_local(sub, ctx)
        elif sub is not None:
            names |= _option_table(sub.get_params(ctx))
    return names


def _flags_apart(args: list[str], all_options: Callable[[], dict[str, bool]]) -> list[str]:
    """Short flags run together (`-qy`, `-qo json`) written one by one, as click
    would read them, so each can be placed; anything else is left as it is. Every
    command's options are gathered only when such a run is there."""
    out: list[str] = []
    options: dict[str, bool] | None = None
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        if arg.startswith("-") and not arg.startswith("--") and len(arg) > 2:
            options = all_options() if options is None else options
            parts = _short_run(arg, options)
            if parts is not None:
                out += parts
                continue
        out.append(arg)
    return out


def _short_run(arg: str, options: dict[str, bool]) -> list[str] | None:
    """`-qy` -> [-q, -y]; `-qojson` -> [-q, -ojson]; None unless the first letters are
    known flags (`-ojson` alone is an option with its value, not a run)."""
    parts = []
    for i, letter in enumerate(arg[1:], 1):
        name = f"-{letter}"
        if name not in options:
            return None
        if options[name]:  # takes a value: the rest of the token is it
            parts.append(name + arg[i + 1 :])
            break
        parts.append(name)
    return parts if len(parts) > 1 else None


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
    value = None  # the last -o wins, as when click parses it
    for arg in tokens:
        if arg == "--":
            break
        name, attached = _split_option(arg)
        if name == "--output":
            value = arg.partition("=")[2] if attached else next(tokens, None)
        elif arg.startswith("-") and not arg.startswith("--") and "o" in arg[1:]:
            value = arg[arg.index("o", 1) + 1 :] or next(tokens, None)  # -o, -ojson, -qo json
    return value in ("json", "ndjson")


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
        limits_cmd,
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
            app.command(command.__name__.rstrip("_").replace("_", "-"), cls=RegctlCommand)(command)
    for name, group in (("server", server_cmd), ("secret", secret_cmd), ("limits", limits_cmd)):
        sub = typer.Typer(
            cls=RegctlSubgroup, help=group.HELP, no_args_is_help=True, rich_markup_mode=None
        )
        for command in group.COMMANDS:
            sub.command(cls=RegctlCommand)(command)
        app.add_typer(sub, name=name)
    return app
