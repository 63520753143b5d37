"""Commands on registrations: add, list, inspect, resend, resend-many, verify, unlock, delete."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from regctl.cli.inputs import (
    DomainOption,
    DryRunOption,
    EmailArg,
    NoSend,
    OlderThanOption,
    ShowCode,
    check_delivery,
    deliver_code,
    either,
    given,
    read_code,
    read_secret_inputs,
    selected,
)
from regctl.cli.render import (
    COLUMNS,
    WIDE_COLUMNS,
    Format,
    LeftOut,
    escape,
    inspect_pairs,
    key_value_table,
    record_cells,
    record_json,
    record_line,
    records_table,
    report_summary,
    skipped_damaged,
)
from regctl.cli.state import State, Tally
from regctl.cli.status import VERIFY_STATUS, failure_of
from regctl.errors import ConfigError, DeliveryFailed, InvalidInput, locked_out, not_pending
from regctl.model import PendingRegistration, Resent, SortKey, VerifyOutcome, VerifyResult
from regctl.reports import BulkResendReport
from regctl.text import plural, visible
from regctl.validation import parse_rate

_DELIVERY_TEXT = {
    "mail": "code mailed",
    "console": "code written to the console",
    "not_sent": "code not sent",
    "failed": "code NOT delivered",
}


def _replicas(acked: int | None) -> dict[str, int]:
    """How many replicas acknowledged the write (with --wait-replicas; fewer than
    asked never gets here: the store raises NotReplicated)."""
    return {} if acked is None else {"replicas_acked": acked}


def _deliver_and_report(
    state: State,
    reg: PendingRegistration,
    code: str,
    *,
    send: bool,
    show_code: bool,
    summary: str,
) -> None:
    """Mail the code, print the outcome (the code only if asked), then raise a
    delivery failure: the code is stored either way, so scripts still get it."""
    replicas = _replicas(reg.replicas_acked)
    undelivered: DeliveryFailed | None = None
    try:
        delivery = deliver_code(state, reg, code, send)
    except DeliveryFailed as exc:
        delivery, undelivered = "failed", exc
    extra: dict[str, Any] = {"code": code} if show_code else {}
    if undelivered is not None:  # stored, not delivered: one document that says both
        extra |= failure_of(undelivered)
    data = record_json(
        reg,
        state.manager.policy,
        delivery=delivery,
        store=state.store_description,
        **replicas,
        **extra,
    )
    state.result(data, f"{summary}; {_DELIVERY_TEXT[delivery]}", [reg.email])
    if show_code and state.format() in (Format.TABLE, Format.WIDE):
        state.lines([code] if state.quiet or not state.is_tty else [f"code: {code}"])
    if undelivered is not None:
        raise undelivered


def add(
    ctx: typer.Context,
    email: EmailArg,
    first_name: Annotated[str, typer.Option("--first-name", "-f", help="Given name.")],
    last_name: Annotated[str, typer.Option("--last-name", "-l", help="Family name.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin's first line.")
    ] = False,
    password_hash: Annotated[
        str | None, typer.Option("--password-hash", help="An Argon2id PHC string instead.")
    ] = None,
    password_hash_stdin: Annotated[
        bool,
        typer.Option(
            "--password-hash-stdin", help="Read the PHC string from stdin (not seen in ps)."
        ),
    ] = False,
    show_code: ShowCode = False,
    no_send: NoSend = False,
) -> None:
    """Add a pending registration and send its verification code.

    \b
    Example: printf '%s\\n' "$PW" | regctl add bob@example.com -f Bob -l Stone --password-stdin
    """
    state: State = ctx.obj
    state.audited("add", email)
    check_delivery(state, not no_send, show_code=show_code)
    password, password_hash = read_secret_inputs(password_stdin, password_hash, password_hash_stdin)
    added = state.manager.add(
        email, first_name, last_name, password=password, password_hash=password_hash
    )
    reg = added.registration
    _deliver_and_report(
        state,
        reg,
        added.code,
        send=not no_send,
        show_code=show_code,
        summary=f"added {escape(reg.email)}",
    )


def list_(
    ctx: typer.Context,
    domain: DomainOption = None,
    older_than: OlderThanOption = None,
    newer_than: Annotated[str | None, typer.Option(help="Created less than this ago.")] = None,
    locked: Annotated[bool, typer.Option("--locked", help="Only locked ones.")] = False,
    unlocked: Annotated[bool, typer.Option("--unlocked", help="Only unlocked ones.")] = False,
    code_expired: Annotated[
        bool, typer.Option("--code-expired", help="Only those whose code has expired.")
    ] = False,
    code_valid: Annotated[
        bool, typer.Option("--code-valid", help="Only those whose code still works.")
    ] = False,
    sort: Annotated[
        SortKey, typer.Option(help="Order: expires, created or newest.")
    ] = SortKey.EXPIRES,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many.")] = None,
    field: Annotated[
        list[str] | None,
        typer.Option(
            "--field",
            "-F",
            help=f"Only these columns, in this order (repeat or comma-separate): "
            f"{', '.join(WIDE_COLUMNS)}.",
        ),
    ] = None,
    raw_csv: Annotated[
        bool,
        typer.Option(
            "--raw-csv",
            help=(
                "CSV cells exactly as stored (no formula guard; a terminal still sees "
                "control characters escaped)."
            ),
        ),
    ] = False,
) -> None:
    """List pending registrations (streamed; empty is not an error).

    \b
    Example: regctl list --older-than 2h --domain example.com -o ndjson
    """
    state: State = ctx.obj
    selection = selected(
        domain=domain,
        older_than=older_than,
        newer_than=newer_than,
        locked=either("--locked", locked, "--unlocked", unlocked),
        code_expired=either("--code-expired", code_expired, "--code-valid", code_valid),
    )
    fmt = state.format()
    columns = _columns(field, fmt)
    if raw_csv and fmt is not Format.CSV:
        raise InvalidInput("--raw-csv needs -o csv")
    left_out = LeftOut()
    rows = state.manager.list(selection, sort=sort, limit=limit, on_damaged=left_out)
    _show_records(state, _started(rows), columns, raw_csv)
    if left_out.count:
        state.warn(left_out.warning("not listed"))


def _show_records(
    state: State, rows: Iterator[PendingRegistration], columns: tuple[str, ...], raw_csv: bool
) -> None:
    fmt, policy = state.format(), state.manager.policy
    if fmt is Format.JSON:
        state.json_array(record_json(r, policy) for r in rows)
    elif fmt is Format.NDJSON:
        state.write(record_line(r, policy) + "\n" for r in rows)
    elif fmt is Format.NAME:
        state.lines(visible(r.email) for r in rows)
    elif state.wants_table:  # a table needs every row: count them as they come
        with state.progress("reading") as tally:
            table = records_table(
                tally.track(rows), policy, columns, show_header=not state.no_headers
            )
        state.show(table)
    else:
        state.rows(columns, (record_cells(r, policy, columns) for r in rows), raw=raw_csv)


def _columns(fields: list[str] | None, fmt: Format) -> tuple[str, ...]:
    """The columns --field names (checked before anything is read), else the format's."""
    if not fields:
        return WIDE_COLUMNS if fmt in (Format.WIDE, Format.CSV) else COLUMNS
    if fmt in (Format.JSON, Format.NDJSON, Format.NAME):
        raise InvalidInput(f"--field selects columns of table, wide and csv output, not {fmt}")
    names = tuple(n.strip() for f in fields for n in f.split(","))
    unknown = [n for n in names if n not in WIDE_COLUMNS]
    if unknown:
        raise InvalidInput(
            f"unknown field {unknown[0]!r}", f"choose from {', '.join(WIDE_COLUMNS)}"
        )
    return names


def _started(rows: Iterator[PendingRegistration]) -> Iterator[PendingRegistration]:
    """Fetch the first record before anything is printed, so that an unreachable
    server is an error with no half-written output (not a header, then an error)."""
    first = next(rows, None)
    return iter(()) if first is None else itertools.chain([first], rows)


def inspect(ctx: typer.Context, email: EmailArg) -> None:
    """Show one registration: status, attempts, resends, cooldown, code and record expiry.

    \b
    Example: regctl inspect alice@example.com
    """
    state: State = ctx.obj
    reg = state.manager.get(email)
    if reg is None:
        raise not_pending(email, "it was verified, expired or never added")
    policy = state.manager.policy
    if state.wants_json():
        state.json(record_json(reg, policy, store=state.store_description))
    elif state.format() is Format.NAME:
        state.lines([visible(reg.email)])
    elif state.wants_table:
        state.show(key_value_table(inspect_pairs(reg, policy)))
    else:
        state.rows(("field", "value"), inspect_pairs(reg, policy))


def resend(
    ctx: typer.Context, email: EmailArg, show_code: ShowCode = False, no_send: NoSend = False
) -> None:
    """Send a new code; the old one stops working. Cooldown and cap apply.

    \b
    Example: regctl resend alice@example.com
    """
    state: State = ctx.obj
    state.audited("resend", email)
    check_delivery(state, not no_send, show_code=show_code)
    resent = state.manager.resend(email)
    reg = resent.registration
    left = reg.resends_left(state.manager.policy)
    _deliver_and_report(
        state,
        reg,
        resent.code,
        send=not no_send,
        show_code=show_code,
        summary=f"new code for {escape(reg.email)} ({left} resends left)",
    )


def resend_many(
    ctx: typer.Context,
    older_than: OlderThanOption = None,
    domain: DomainOption = None,
    never_resent: Annotated[
        bool, typer.Option("--never-resent", help="Only those never sent a second code.")
    ] = False,
    rate: Annotated[
        str | None, typer.Option(help="At most this many mails, like 10/min or 2/s.")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many new codes.")
    ] = None,
    dry_run: DryRunOption = False,
    no_send: NoSend = False,
) -> None:
    """Send a new code to every registration the filters select, at the given rate.

    Cooldown and cap apply to each; stopping and rerunning never sends anyone two
    codes inside the cooldown.

    \b
    Example: regctl resend-many --older-than 2h --never-resent --rate 10/min --dry-run
    """
    state: State = ctx.obj
    selection = selected(domain=domain, older_than=older_than)
    if selection.is_empty and not never_resent:
        raise InvalidInput("give filters for a bulk resend (e.g. --older-than 2h)")
    per_second = parse_rate(rate) if rate else None  # (a usage error before configuration's)
    check_delivery(state, not no_send)  # (a dry run too: it foretells the real one)
    from regctl.mail import MailConfig

    if not no_send and not MailConfig.from_settings(state.settings).enabled:
        raise ConfigError(
            "REGCTL_MAIL_URL is none: every code resend-many makes would reach nobody, "
            "and each old code dies",
            "set REGCTL_MAIL_URL (smtp://..., console), or pass --no-send to replace "
            "the codes without mail",
        )
    if not dry_run:
        target = given(domain=domain, older_than=older_than, never_resent=never_resent)
        state.audited("resend-many", target)
    # (stopped, it says how far it got; a dry run makes none)
    progress = contextlib.nullcontext(Tally("", None)) if dry_run else state.progress("new codes")
    with progress as tally:

        def each(resent: Resent) -> str:
            """Deliver one new code, and put it on the record at once (stopped while
            mailing: made, its mail unknown)."""
            outcome = "interrupted"
            try:
                delivery = deliver_code(state, resent.registration, resent.code, not no_send)
                outcome = "ok"
            except DeliveryFailed:
                outcome = "delivery_failed"
                raise
            finally:
                tally.add()
                state.audit("resend-many", resent.registration.email, outcome)
            return delivery

        report = state.manager.resend_many(
            selection,
            never_resent=never_resent,
            limit=limit,
            per_second=per_second,
            dry_run=dry_run,
            deliver=None if no_send and dry_run else each,  # (a dry run counts, never calls)
        )
    skipped = skipped_damaged(report)
    if skipped:
        state.warn(skipped)
    failure = _undelivered(report) if report.failed else None
    if dry_run and state.format() in (Format.TABLE, Format.WIDE):  # who would get one
        state.lines(visible(email) for email in report.recipients)
        state.note(report_summary(report))
    elif failure is None:
        state.report(report, names=report.recipients)
    else:  # one document that says the run failed, as the error would
        state.report(
            report,
            names=report.recipients,
            reason=failure.reason,
            message=failure.message,
            exit_code=failure.exit_code,
        )
        raise failure


def _undelivered(report: BulkResendReport) -> DeliveryFailed:
    stopped = "stopped: delivery failed repeatedly; " if report.stopped else ""
    return DeliveryFailed(
        f"{stopped}stored but not delivered: {plural(report.failed, 'code')} "
        f"({', '.join(report.undelivered)})",
        "after the outage, rerun the same command (it resumes: those already sent "
        "are in their cooldown); --never-resent would skip the undelivered too: "
        "resend them by name",
    )


def verify(
    ctx: typer.Context,
    email: EmailArg,
    code: Annotated[str | None, typer.Argument(help="The code; else stdin or a prompt.")] = None,
) -> None:
    """Check a code; on success the registration is consumed and printed.

    \b
    Example: regctl -o json verify alice@example.com 123456
    """
    state: State = ctx.obj
    candidate = read_code(code)
    state.audited("verify", email)  # (after the prompt: an abandoned one changed nothing)
    result = state.manager.verify(email, candidate)
    reg = result.registration
    data: dict[str, Any] = {
        "ok": result.ok,
        "reason": result.outcome.value,
        "attempts_left": result.attempts_left,
        "store": state.store_description,
        **_replicas(result.replicas_acked),
    }
    if reg is None:
        refusal, status = _refusal(result, email), VERIFY_STATUS[result.outcome]
        if state.format() in (Format.JSON, Format.NDJSON, Format.CSV):  # (a failure's shape)
            state.result(data | {"message": refusal, "exit_code": int(status)}, "")
        state.err.print(f"Error: {escape(refusal)}")
        state.outcome = result.outcome.value
        raise typer.Exit(status)
    data["registration"] = reg.public_dict(include_password_hash=True)
    if state.format() in (Format.TABLE, Format.WIDE) and not state.is_tty:
        # In a pipe: the consumed record as TSV, for the script that creates the user.
        state.rows(COLUMNS, [record_cells(reg, state.manager.policy, COLUMNS)])
        return
    message = f"verified {escape(reg.email)} ({escape(reg.first_name)} {escape(reg.last_name)})"
    state.result(data | {"email": reg.email}, message, [reg.email])


def _refusal(result: VerifyResult, email: str) -> str:
    """Why a verify did not consume the registration, in one line."""
    if result.outcome is VerifyOutcome.INVALID_CODE:
        return f"wrong code for {email}; {plural(result.attempts_left, 'attempt')} left"
    if result.outcome is VerifyOutcome.LOCKED:
        return locked_out(email).line()
    if result.outcome is VerifyOutcome.CODE_EXPIRED:
        return f"the code for {email} has expired — run `regctl resend`"
    return not_pending(email).message


def unlock(ctx: typer.Context, email: EmailArg) -> None:
    """Clear a lockout after too many wrong codes (attempts back to zero).

    \b
    Example: regctl unlock alice@example.com
    """
    state: State = ctx.obj
    state.audited("unlock", email)
    if not state.manager.unlock(email):
        raise not_pending(email)
    data = {"ok": True, "unlocked": email, "store": state.store_description}
    state.result(data, f"unlocked {escape(email)}", [email])


def delete(
    ctx: typer.Context,
    email: EmailArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Required in production.")] = False,
) -> None:
    """Delete one pending registration (with REGCTL_ENV=production: asked at a
    terminal, else only with --yes).

    \b
    Example: regctl delete alice@example.com
    """
    state: State = ctx.obj
    if state.settings.env == "production" and not yes:
        if state.manager.get(email) is None:  # nothing to ask about
            raise not_pending(email)
        where = f"{state.store_description} (prefix {state.settings.prefix}, production)"
        state.confirm(
            f"Delete {email} from {where}?",
            "this is production: deleting a live registration needs --yes",
        )
    state.audited("delete", email)
    if not state.manager.delete(email):
        raise not_pending(email)
    data = {"ok": True, "deleted": email, "store": state.store_description}
    state.result(data, f"deleted {escape(email)}", [email])


COMMANDS = (add, list_, inspect, resend, resend_many, verify, unlock, delete)
