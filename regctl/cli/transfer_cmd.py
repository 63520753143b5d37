"""export and import: NDJSON backups and copies between servers."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import IO, Annotated

import typer

from regctl.cli.render import Format, LeftOut, escape, to_json
from regctl.cli.state import State
from regctl.cli.status import failure_of, report_error
from regctl.errors import InvalidInput
from regctl.reports import ImportReport
from regctl.text import plural


def export(
    ctx: typer.Context,
    include_secrets: Annotated[
        bool,
        typer.Option("--include-secrets", help="Add password and code hashes (for restore)."),
    ] = False,
) -> None:
    """Write every pending registration as NDJSON to stdout (redacted by default).

    With -o json, one JSON array instead. At a terminal, stderr shows the count,
    rate and time left, then a summary.

    \b
    Example: regctl export --include-secrets > backup.ndjson
    """
    from regctl.diagnostics import unseen_after_eviction

    state: State = ctx.obj
    manager = state.manager
    # Index entries, an estimate for the time left: counted only when it is shown.
    total = manager.counts().total if state.shows_progress else None
    left_out = LeftOut()
    with state.progress("exported", total) as tally:
        rows = tally.track(manager.export(include_secrets=include_secrets, on_damaged=left_out))
        if state.format() is Format.JSON:
            state.json_array(rows)
        else:
            state.write(to_json(row) + "\n" for row in rows)
    if left_out.count:
        state.warn(left_out.warning("not in this export"))
    unseen = unseen_after_eviction(state.store)
    if unseen:
        state.warn(
            f"not in this export: {plural(unseen, 'record')} whose index entry "
            "eviction removed — run `regctl purge --reindex`, then export again"
        )


def import_(
    ctx: typer.Context,
    source: Annotated[
        str, typer.Argument(help="NDJSON from `export --include-secrets`, or - for stdin.")
    ],
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite pending ones.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check and count only.")] = False,
) -> None:
    """Restore registrations with their remaining lifetimes; existing ones are kept.

    Exit 2 if any line was invalid (the valid ones are imported).

    \b
    Example: regctl import backup.ndjson --dry-run
    """
    state: State = ctx.obj
    if not dry_run:
        state.audited("import", source)
    report = _run_import(state, source, replace, dry_run)
    if not report.reached_store:  # (a file refused whole, or empty: nothing written at all)
        state.audit_event = None
    refused = None
    if report.invalid:
        done = "checked" if dry_run else "imported"
        named = "named without -q" if state.quiet and not state.wants_json() else "named"
        valid = f"the valid ones were {done}" if report.reached_store else "none was valid"
        refused = InvalidInput(
            f"{plural(report.invalid, 'line')} of {'stdin' if source == '-' else source} refused",
            f"{valid}; fix the lines {named}, then import them again",
        )
        # (the report is the one JSON document: it says so as every failure does)
        state.report(report, **failure_of(refused))
    else:
        state.report(report)
    if not state.wants_json():
        for error in report.errors:
            state.note(f"  {escape(error)}")
        if report.invalid > len(report.errors):
            state.note(f"  and {report.invalid - len(report.errors)} more")
        if report.reset:
            state.note(f"  gave {len(report.reset)} back attempts or resends: --replace")
    if not dry_run:
        for email in report.reset:  # an operator granted fresh guesses: on the record
            state.audit("import --replace", email, "attempts or resends reset")
    if refused is not None:
        # (not raised: the valid lines were imported, and the audit entry says so)
        state.outcome = plural(report.invalid, "invalid line")
        raise typer.Exit(report_error(state, refused))


def _run_import(state: State, source: str, replace: bool, dry_run: bool) -> ImportReport:
    """Import from a file or stdin (``-``), with a count at a terminal; for a file, a bar
    and the time left by its size."""
    # Bytes that are no UTF-8 come through as surrogates, and the manager refuses
    # their line (neither replaced nor fatal), whatever the locale.
    if source == "-":
        if sys.stdin is None:  # (`regctl import - <&-`)
            raise InvalidInput("cannot read stdin: it is closed")
        stdin = getattr(sys.stdin, "buffer", None)
        if stdin is None:  # (already text: taken as it comes)
            return _import_lines(state, sys.stdin, None, replace, dry_run)
        lines = io.TextIOWrapper(stdin, "utf-8-sig", "surrogateescape")  # (a BOM: skipped)
        try:
            return _import_lines(state, lines, None, replace, dry_run)
        finally:
            lines.detach()  # (stdin itself stays open)
    try:
        path = Path(source)
        with path.open(encoding="utf-8-sig", errors="surrogateescape") as handle:
            return _import_lines(state, handle, path.stat().st_size, replace, dry_run)
    except OSError as exc:
        raise InvalidInput(f"cannot read {source}: {exc.strerror}") from None


def _import_lines(
    state: State, handle: IO[str], size: int | None, replace: bool, dry_run: bool
) -> ImportReport:
    from regctl.transfer import bounded_lines

    with state.progress("lines read", size, sized=True) as tally:
        read = bounded_lines(handle)  # (a line of gigabytes is not held whole)
        lines = tally.track(read, weight=byte_size) if size else tally.track(read)
        return state.manager.import_records(lines, replace=replace, dry_run=dry_run)


def byte_size(line: str) -> int:
    """The bytes ``line`` was read from (UTF-8, stray bytes kept as surrogates): what
    the file's size counts, so the bar ends at 100 % with text that is not ASCII."""
    return len(line) if line.isascii() else len(line.encode("utf-8", "surrogateescape"))


COMMANDS = (export, import_)
