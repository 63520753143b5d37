"""Secrets read from people and pipes, options shared by commands, and code delivery."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from regctl.errors import InvalidInput
from regctl.model import Filter
from regctl.validation import normalize_domain, parse_duration

if TYPE_CHECKING:
    from regctl.cli.state import State
    from regctl.model import PendingRegistration

EmailArg = Annotated[str, typer.Argument(help="The address, in any letter case.")]
ShowCode = Annotated[
    bool, typer.Option("--show-code", help="Print the new code once (for scripts).")
]
NoSend = Annotated[bool, typer.Option("--no-send", help="Store the code but do not mail it.")]
# The filters that select registrations (list, purge, resend-many), parsed by selected().
DomainOption = Annotated[str | None, typer.Option(help="Only this email domain.")]
OlderThanOption = Annotated[str | None, typer.Option(help="Created more than this ago (2h, 1d).")]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Count or list; change nothing.")]


def given(**options: object) -> str:
    """The options given, as an audit entry's target: ``domain=x older-than=2h``."""
    return " ".join(f"{k.replace('_', '-')}={v}" for k, v in options.items() if v)


def either(flag: str, given: bool, opposite: str, opposite_given: bool) -> bool | None:
    """A state one of two opposite flags selects (None: neither given); both, refused."""
    if given and opposite_given:
        raise InvalidInput(f"give one of {flag} and {opposite}")
    return True if given else False if opposite_given else None


def selected(
    *,
    domain: str | None = None,
    older_than: str | None = None,
    newer_than: str | None = None,
    locked: bool | None = None,
    code_expired: bool | None = None,
) -> Filter:
    """The registrations the filter options select, each checked (no store touched)."""
    older_than_ms = parse_duration(older_than) if older_than else None
    newer_than_ms = parse_duration(newer_than) if newer_than else None
    if older_than_ms is not None and newer_than_ms is not None and older_than_ms >= newer_than_ms:
        raise InvalidInput(
            f"--older-than {older_than} and --newer-than {newer_than} select nothing",
            "--newer-than must be the longer of the two: --older-than 1h --newer-than 2h",
        )
    return Filter(
        domain=normalize_domain(domain) if domain else None,
        older_than_ms=older_than_ms,
        newer_than_ms=newer_than_ms,
        locked=locked,
        code_expired=code_expired,
    )


def _stdin_line(what: str) -> str:
    try:
        line = sys.stdin.readline()
        line.encode()  # undecodable bytes may arrive as surrogates: refuse them here
    except (UnicodeDecodeError, UnicodeEncodeError):
        raise InvalidInput(f"the {what} on standard input is not UTF-8 text") from None
    if not line:
        raise InvalidInput(f"no {what} on standard input")
    return line.rstrip("\r\n")


def ask(prompt: str) -> str:
    """A line typed at the terminal, asked on stderr. (typer's prompt writes the
    prompt's last character to stdout, into the output a script redirected.) Ctrl-C
    or end of input: typer.Abort, as typer's own prompts."""
    try:
        sys.stderr.write(prompt)
        sys.stderr.flush()
        line = sys.stdin.readline()
    except KeyboardInterrupt:
        raise typer.Abort() from None
    if not line:
        raise typer.Abort()
    return line.rstrip("\r\n")


def ask_yes(question: str) -> bool:
    """Whether the person at the terminal answers yes (no by default)."""
    while True:
        answer = ask(f"{question} [y/N]: ").strip().lower()
        if answer in ("y", "yes", "n", "no", ""):
            return answer in ("y", "yes")
        sys.stderr.write("Error: invalid input\n")


def read_password(from_stdin: bool) -> str:
    """From stdin (first line) or a hidden prompt with confirmation; never an argument."""
    if from_stdin:
        return _stdin_line("password")
    if not sys.stdin.isatty():
        raise InvalidInput(
            "no password given", "use --password-stdin or --password-hash in scripts"
        )
    password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    return password


def read_secret_inputs(
    password_stdin: bool, password_hash: str | None, hash_stdin: bool
) -> tuple[str | None, str | None]:
    """(password, password_hash) from the one way given; stdin keeps both out of `ps`."""
    if password_stdin + (password_hash is not None) + hash_stdin > 1:
        raise InvalidInput(
            "give one of --password-stdin, --password-hash and --password-hash-stdin"
        )
    if hash_stdin:
        return None, _stdin_line("password hash")
    if password_hash is not None:
        return None, password_hash
    return read_password(password_stdin), None


def read_code(code: str | None) -> str:
    """The argument, else a line on stdin (pipe), else a prompt."""
    if code is not None:
        return code
    if not sys.stdin.isatty():
        return _stdin_line("code")
    while not (entered := ask("Code: ").strip()):  # (Enter alone: asked again)
        pass
    return entered


def check_delivery(state: State, send: bool, *, show_code: bool = False) -> None:
    """Before any write: fail on mail settings that could not deliver the code, and on
    an output that could not show the code asked for (`-o name` prints the address alone)."""
    from regctl.cli.render import Format
    from regctl.mail import Mailer

    if show_code and state.format() is Format.NAME:
        raise InvalidInput("-o name prints only the address: --show-code needs another -o")
    if send:
        Mailer.from_settings(state.settings)  # checks the template


def deliver_code(state: State, reg: PendingRegistration, code: str, send: bool) -> str:
    """Mail the code as REGCTL_MAIL_URL says; return mail, console or not_sent."""
    from regctl.mail import Mailer

    return Mailer.from_settings(state.settings).send_code(reg, code) if send else "not_sent"
