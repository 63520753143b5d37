"""Exit statuses, and the one place errors become them.

The statuses are ``regctl.errors.ExitStatus`` (the README's table); ``health`` alone
exits 0/1/2/3 = OK/WARNING/CRITICAL/UNKNOWN.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from typing import TYPE_CHECKING, Any, TextIO

from regctl.cli.render import to_json
from regctl.errors import CooldownActive, ExitStatus, RateLimited, RegctlError
from regctl.model import VerifyOutcome
from regctl.text import visible

if TYPE_CHECKING:
    from regctl.cli.state import State


VERIFY_STATUS = {
    VerifyOutcome.VERIFIED: ExitStatus.OK,
    VerifyOutcome.INVALID_CODE: ExitStatus.REFUSED,
    VerifyOutcome.LOCKED: ExitStatus.REFUSED,
    VerifyOutcome.CODE_EXPIRED: ExitStatus.REFUSED,
    VerifyOutcome.NOT_FOUND: ExitStatus.NOT_FOUND,
}


# The JSON `reason`s the command gives itself (an error gives its class's `reason`).
REASONS = {
    "usage": (ExitStatus.USAGE, "The command line is wrong; nothing ran."),
    "declined": (ExitStatus.REFUSED, "A confirmation was not answered yes; nothing changed."),
    "interrupted": (ExitStatus.INTERRUPTED, "Ctrl-C, or end of input at a prompt."),
    "internal_error": (ExitStatus.INTERNAL, "A bug: rerun with --debug and report it."),
    "invalid_code": (VERIFY_STATUS[VerifyOutcome.INVALID_CODE], "verify: a wrong code."),
    "code_expired": (VERIFY_STATUS[VerifyOutcome.CODE_EXPIRED], "verify: the code expired."),
}


def failure(reason: str, message: str, status: int) -> dict[str, Any]:
    """The JSON error object, one shape for every failure."""
    return {"ok": False, "reason": reason, "message": message, "exit_code": int(status)}


def failure_of(exc: RegctlError) -> dict[str, Any]:
    """``exc`` as the JSON error object, with its hint (what to do) when it has one."""
    document = failure(exc.reason, exc.message, exc.exit_code)
    if exc.hint:
        document["hint"] = exc.hint
    return document


def plugin_line(level: str, message: str) -> str:
    """A monitoring-plugin status line without performance data ("|" would start it)."""
    return f"REGCTL {level} - {visible(' '.join(message.replace('|', '/').split()))}"


def interrupted(as_json: bool, *, terminated: bool = False) -> int:
    """Ctrl-C (or end of input at a prompt), or SIGTERM: say so, in JSON too when
    asked; exit 130 (SIGTERM: 143, which the process then ends by)."""
    sys.stderr.write("Interrupted\n")
    status = ExitStatus.TERMINATED if terminated else ExitStatus.INTERRUPTED
    if as_json:
        said = "terminated by SIGTERM" if terminated else "interrupted"
        sys.stdout.write(to_json(failure("interrupted", said, status)) + "\n")
    return status


def written(stream: TextIO, text: str) -> None:
    """``text`` on ``stream``, flushed, or nothing if the stream cannot take it (a full
    disk under it): the exit status still says what happened."""
    with contextlib.suppress(OSError):
        stream.write(text)
        stream.flush()


def report_error(state: State | None, exc: BaseException) -> int:
    """Print one line on stderr (and a JSON error in JSON modes); return the exit status."""
    if isinstance(exc, KeyboardInterrupt):
        from regctl.cli import by_sigterm

        as_json = state is not None and state.wants_json() and not state.json_written
        return interrupted(as_json, terminated=by_sigterm(exc))
    if state is not None and state.debug:
        with contextlib.suppress(OSError):
            traceback.print_exception(exc, file=sys.stderr)
    if not isinstance(exc, RegctlError):
        exc = RegctlError(
            f"unexpected {type(exc).__name__}", "rerun with --debug and report the traceback"
        )
        exc.exit_code, exc.reason = ExitStatus.INTERNAL, "internal_error"
    line = f"Error: {exc.line()}"
    written(sys.stderr, visible(" ".join(line.split())) + "\n")  # data in it reaches a terminal
    if state is not None and state.wants_json() and not state.json_written:
        document = failure_of(exc)
        if isinstance(exc, CooldownActive | RateLimited):  # (when to try again)
            document["retry_after_ms"] = exc.retry_after_ms
        written(sys.stdout, to_json(document) + "\n")
    return int(exc.exit_code)
