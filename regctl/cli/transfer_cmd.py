"""export and import: NDJSON backups and copies between servers."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import typer

from regctl.cli.inputs import OutputOption
from regctl.cli.state import State
from regctl.errors import InvalidInput
from regctl.model import ImportReport
from regctl.render import escape, to_json


def export(
    ctx: typer.Context,
    include_secrets: Annotated[
        bool,
        typer.Option("--include-secrets", help="Add password and code hashes (for restore)."),
    ] = False,
) -> None:
    """Write every pending registration as NDJSON to stdout (redacted by default).

    Example: regctl export --include-secrets > backup.ndjson
    """
    from regctl.diagnostics import unseen_after_eviction

    state: State = ctx.obj
    rows = state.manager.export(include_secrets=include_secrets)
    state.write(to_json(row) + "\n" for row in rows)
    unseen = unseen_after_eviction(state.store)
    if unseen:
        sys.stderr.write(
            f"Warning: {unseen} record(s) lost their index entry to eviction and are not in "
            "this export — run `regctl purge --reindex`, then export again\n"
        )


def import_(
    ctx: typer.Context,
    source: Annotated[
        str, typer.Argument(help="NDJSON from `export --include-secrets`, or - for stdin.")
    ],
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite pending ones.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check and count only.")] = False,
    output: OutputOption = None,
) -> None:
    """Restore registrations with their remaining lifetimes; existing ones are kept.

    Exit 2 if any line was invalid (the valid ones are imported).

    Example: regctl --url redis://new-host import backup.ndjson
    """
    state: State = ctx.obj
    if not dry_run:
        state.audited("import", source)
    if source == "-":
        report = _run_import(state, sys.stdin, replace, dry_run)
    else:
        try:
            with Path(source).open(encoding="utf-8", errors="replace") as handle:
                report = _run_import(state, handle, replace, dry_run)
        except OSError as exc:
            raise InvalidInput(f"cannot read {source}: {exc.strerror}") from None
    if state.wants_json(output):
        state.json(
            {
                "ok": not report.invalid,
                "dry_run": report.dry_run,
                "restored": report.restored,
                "existing": report.existing,
                "expired": report.expired,
                "invalid": report.invalid,
                "errors": report.errors,
                "counters_reset": report.reset,
            }
        )
    else:
        verb = "would restore" if dry_run else "restored"
        state.say(
            f"{verb} {report.restored}; kept {report.existing} existing; skipped "
            f"{report.expired} expired and {report.invalid} invalid"
        )
        for error in report.errors:
            state.note(f"  {escape(error)}")
        if report.reset:
            state.note(f"  gave {len(report.reset)} back attempts or resends: --replace")
    if not dry_run:
        for email in report.reset:  # an operator granted fresh guesses: on the record
            state.audit("import --replace", email, "attempts or resends reset")
    if report.invalid:
        raise typer.Exit(2)


def _run_import(state: State, handle: Iterable[str], replace: bool, dry_run: bool) -> ImportReport:
    manager = state.manager
    if not (state.err_is_tty and not state.quiet):
        return manager.import_records(handle, replace=replace, dry_run=dry_run)
    from rich.progress import Progress

    with Progress(console=state.err, transient=True) as bar:
        task = bar.add_task("importing", total=None)
        return manager.import_records(
            handle,
            replace=replace,
            dry_run=dry_run,
            on_progress=lambda n: bar.advance(task, n),
        )


def register(app: typer.Typer) -> None:
    app.command()(export)
    app.command("import")(import_)
