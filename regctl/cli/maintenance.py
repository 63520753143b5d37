"""Commands over everything pending: purge, stats and the audit trail."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from regctl.cli.inputs import given, selected
from regctl.cli.live import CountOption, IntervalOption, check_live, watch
from regctl.cli.render import Format, escape, key_value_table, table, timestamp, to_json
from regctl.cli.state import State
from regctl.cli.status import failure_of
from regctl.errors import InvalidInput, LocalIOError
from regctl.metrics import check_metrics_path, write_purge_metrics
from regctl.model import MAX_FUNNEL_DAYS, Filter, check_audited
from regctl.reports import FUNNEL_EVENTS, MAX_TOP_DOMAINS, FunnelDay, Stats
from regctl.store.base import MAX_LOCK_WAIT_S
from regctl.text import plural


def purge(
    ctx: typer.Context,
    older_than: Annotated[
        str | None, typer.Option(help="Also delete live records created more than this ago.")
    ] = None,
    domain: Annotated[
        str | None, typer.Option(help="Also delete live records of this domain.")
    ] = None,
    locked: Annotated[bool, typer.Option("--locked", help="Also delete locked records.")] = False,
    orphans: Annotated[
        bool, typer.Option("--orphans", help="Also walk the index for entries without a record.")
    ] = False,
    reindex: Annotated[
        bool,
        typer.Option("--reindex", help="First re-index records an eviction left outside it."),
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count, change nothing.")] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Delete live records without asking.")
    ] = False,
    batch: Annotated[int, typer.Option(min=1, max=1000, help="Entries per server step.")] = 500,
    wait: Annotated[
        float,
        typer.Option(
            min=0, max=MAX_LOCK_WAIT_S, help="Wait this many seconds for a running purge."
        ),
    ] = 0,
    metrics_file: Annotated[
        Path | None,
        typer.Option(help="Write Prometheus textfile metrics here after a successful run."),
    ] = None,
) -> None:
    """Remove expired registrations and index leftovers; with filters, live records too.

    \b
    Example (cron): */5 * * * * regctl purge --quiet --wait 60
    """
    state: State = ctx.obj
    selection = selected(domain=domain, older_than=older_than, locked=True if locked else None)
    _check_run_flags(dry_run, wait, metrics_file)
    walk = selection if (orphans or not selection.is_empty) else None
    if not selection.is_empty and not dry_run and not yes:
        _confirm_live_deletes(state, walk)
    if not dry_run:  # (after the question: a declined purge changed nothing)
        state.audited("purge", given(domain=domain, older_than=older_than, locked=locked))
    started = time.monotonic()
    # (what the store reports: its buckets' expired entries, then the records walked;
    # what was purged before a Ctrl-C stays purged, and a rerun finishes the rest)
    with state.progress("buckets, then records examined") as tally:
        report = state.manager.purge(
            walk, dry_run=dry_run, batch=batch, on_progress=tally.at, wait=wait, reindex=reindex
        )
    seconds = time.monotonic() - started
    done: dict[str, Any] = {"duration_s": round(seconds, 3), "store": state.store_description}
    try:
        if metrics_file is not None and not dry_run:
            write_purge_metrics(metrics_file, report, seconds, state.manager.counts())
    except LocalIOError as exc:  # (the purge ran: its report is still the document)
        state.report(report, **done, **failure_of(exc))
        raise
    state.report(report, **done)


def _check_run_flags(dry_run: bool, wait: float, metrics_file: Path | None) -> None:
    """What only a real run does (a dry run takes no lease), asked of a dry run: refused,
    not ignored; the metrics file, checked before any work."""
    if dry_run and wait:
        raise InvalidInput("--wait is for a running purge's lease, which --dry-run takes none of")
    if metrics_file is None:
        return
    if dry_run:
        raise InvalidInput("--metrics-file is written after a real purge, not a --dry-run")
    if not metrics_file.name:
        raise InvalidInput("--metrics-file names no file")
    check_metrics_path(metrics_file)


def _confirm_live_deletes(state: State, walk: Filter | None) -> None:
    """Ask at a terminal, naming how many live records and which store; refuse elsewhere."""
    refusal = "purge with filters deletes live registrations"
    state.require_terminal(refusal)  # before counting: nobody would see the question
    with state.progress("counting: buckets, then records examined") as tally:
        matched = state.manager.purge(walk, dry_run=True, on_progress=tally.at).matched
    if not matched:
        return  # nothing live to delete: the expired leftovers go without a question
    where = f"{state.store_description} (prefix {state.settings.prefix})"
    state.confirm(f"Delete {plural(matched, 'live registration')} from {where}?", refusal)


def stats(
    ctx: typer.Context,
    top: Annotated[int, typer.Option(min=0, max=MAX_TOP_DOMAINS, help="How many top domains.")] = 5,
    days: Annotated[
        int, typer.Option(min=1, max=MAX_FUNNEL_DAYS, help="Days of the funnel to show.")
    ] = 7,
    interval: IntervalOption = None,
    count: CountOption = None,
) -> None:
    """Totals, top domains, an age histogram, and the daily funnel with conversion.

    The funnel counts, per server day: created, codes sent, verified, locked, and
    expired unverified (counted when purge removes them).

    \b
    Example: regctl stats --days 14
    """
    state: State = ctx.obj
    check_live(state, interval, count)
    manager = state.manager

    def sample() -> tuple[Stats, list[FunnelDay]]:
        return manager.stats(top), manager.funnel(days)

    if interval is not None:
        watch(state, interval, count, sample, _view, _data, lambda s: _stats_pairs(s[0]))
        return
    result = sample()
    if state.wants_json():
        state.json({**_data(result), "store": state.store_description})
    elif state.wants_table:
        state.show(_view(result))
    else:
        state.rows(("metric", "value"), _stats_rows(result))


def _data(sample: tuple[Stats, list[FunnelDay]]) -> dict[str, Any]:
    result, funnel = sample
    return {
        "timestamp": timestamp(int(time.time() * 1000)),
        "total": result.total,
        "locked": result.locked,
        "code_expired": result.code_expired,
        "expiring_within_hour": result.expiring_within_hour,
        "damaged": result.damaged,
        "top_domains": [{"domain": d, "count": n} for d, n in result.top_domains],
        "ages": [{"age": label, "count": n} for label, n in result.ages],
        "funnel": [{**asdict(d), "conversion": d.conversion} for d in funnel],
    }


def _stats_rows(sample: tuple[Stats, list[FunnelDay]]) -> list[tuple[str, str]]:
    result, funnel = sample
    rows = _stats_pairs(result)
    rows += [(f"domain {d}", str(n)) for d, n in result.top_domains]
    rows += [(f"age {label}", str(n)) for label, n in result.ages]
    rows += [
        (f"funnel {d.day} {event}", str(getattr(d, event)))
        for d in funnel
        for event in FUNNEL_EVENTS
    ]
    return rows


def _view(sample: tuple[Stats, list[FunnelDay]]) -> Any:
    from rich.console import Group

    result, funnel = sample
    return Group(_stats_view(result), _ages_view(result), _funnel_view(funnel))


def _stats_pairs(result: Stats) -> list[tuple[str, str]]:
    return [
        ("pending", str(result.total)),
        ("locked", str(result.locked)),
        ("code expired", str(result.code_expired)),
        ("expiring within 1h", str(result.expiring_within_hour)),
        ("damaged (left out)", str(result.damaged)),
    ]


def _stats_view(result: Stats) -> Any:
    from rich.console import Group

    domains = [(domain, str(n)) for domain, n in result.top_domains]
    parts = [key_value_table(_stats_pairs(result))]
    if domains:
        parts.append(key_value_table(domains, title="\ntop domains"))
    return Group(*parts)


def _ages_view(result: Stats) -> Any:
    most = max((n for _, n in result.ages), default=0) or 1
    out = table("AGE", "PENDING", "", title="\nage of pending registrations")
    for label, n in result.ages:
        out.add_row(label, str(n), "[cyan]" + "█" * round(30 * n / most) + "[/cyan]")
    return out


def _funnel_view(funnel: list[FunnelDay]) -> Any:
    out = table("DAY", *(e.upper() for e in FUNNEL_EVENTS), "CONVERSION", title="\nfunnel")
    for d in funnel:
        rate = "-" if d.conversion is None else f"{d.conversion:.0%}"
        out.add_row(d.day, *(str(getattr(d, e)) for e in FUNNEL_EVENTS), rate)
    return out


def audit(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Newest entries to show.")] = 50,
    command: Annotated[str | None, typer.Option(help="Only this command (add, purge...).")] = None,
    target: Annotated[str | None, typer.Option(help="Only targets containing this.")] = None,
) -> None:
    """Show who did what: the audit trail of mutating commands, newest first.

    \b
    Example: regctl audit --target alice@example.com
    """
    if command is not None:
        check_audited(command)  # (before the store: the embedded one would start)
    state: State = ctx.obj
    rows = state.manager.audit_trail(limit, command=command, target=target)
    columns = ("at", "who", "command", "target", "outcome")
    if state.wants_json():
        entries = [{**r, "at": timestamp(int(r["at"]))} for r in rows]
        if state.format() is Format.NDJSON:
            state.write(to_json(e) + "\n" for e in entries)
        else:
            state.json(entries)
        return
    cells = [[timestamp(int(r["at"])), *(r.get(c, "") for c in columns[1:])] for r in rows]
    if state.wants_table:
        out = table(*(c.upper() for c in columns))
        for row in cells:
            out.add_row(*(escape(v) for v in row))
        state.show(out)
    else:
        state.rows(columns, cells)


COMMANDS = (purge, stats, audit)
