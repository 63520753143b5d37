"""Diagnostic commands: health, doctor, selftest."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from regctl import __version__
from regctl.cli.live import CountOption, IntervalOption, check_live, watch
from regctl.cli.render import escape, table
from regctl.cli.state import State
from regctl.cli.status import plugin_line
from regctl.errors import ExitStatus, InvalidInput, RegctlError, StoreUnavailable
from regctl.text import visible

if TYPE_CHECKING:
    from rich.table import Table

    from regctl.diagnostics import Finding, Health, Step, Thresholds

_LEVEL_STYLE = {"ok": "green", "warning": "yellow", "critical": "red", "unknown": "magenta"}


def health(
    ctx: typer.Context,
    warn_latency: Annotated[float, typer.Option(help="WARNING above this round trip (ms).")] = 50,
    crit_latency: Annotated[float, typer.Option(help="CRITICAL above this round trip (ms).")] = 500,
    warn_memory: Annotated[
        float, typer.Option(help="WARNING above this share of maxmemory.")
    ] = 0.8,
    crit_memory: Annotated[
        float, typer.Option(help="CRITICAL above this share of maxmemory.")
    ] = 0.95,
    interval: IntervalOption = None,
    count: CountOption = None,
    nagios: Annotated[
        bool,
        typer.Option("--nagios", help="One monitoring-plugin line with performance data."),
    ] = False,
) -> None:
    """Check Redis and the store; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.

    --nagios prints the plugin form (`REGCTL OK - … | latency_ms=…`). With
    --interval it keeps watching (one line per sample in a pipe) until Ctrl-C.

    \b
    Example: regctl health --nagios
    """
    from regctl.diagnostics import health as check

    state: State = ctx.obj
    limits = _health_limits(
        state, nagios, interval, count, warn_latency, crit_latency, warn_memory, crit_memory
    )
    report = _health_once(state, limits, nagios)
    if interval is not None:
        last = watch(
            state,
            interval,
            count,
            lambda: check(state.store, __version__, limits),
            lambda r: _health_view(r, state),
            lambda r: r.data,
            _health_cells,
        )
        raise typer.Exit(last.level if count is not None else ExitStatus.OK)  # (Ctrl-C: 130)
    _show_health(state, report, limits, nagios)
    raise typer.Exit(report.level)


def _health_limits(
    state: State, nagios: bool, interval: float | None, count: int | None, *values: float
) -> Thresholds:
    """The checked thresholds; with --nagios a mistake in the check itself is UNKNOWN."""
    from regctl.diagnostics import Thresholds

    try:
        check_live(state, interval, count)
        if nagios and (interval is not None or state.output is not None):
            raise InvalidInput("--nagios is an output of its own: not with -o or --interval")
        return Thresholds(*values)
    except InvalidInput as exc:
        refused_check(state, exc, nagios)


def refused_check(state: State, exc: InvalidInput, nagios: bool) -> NoReturn:
    """A mistake in the health check itself: UNKNOWN (2 would read as CRITICAL), with
    --nagios as the plugin's line."""
    from regctl.diagnostics import Level

    if not nagios:
        exc.exit_code = Level.UNKNOWN
        raise exc
    state.lines([plugin_line(Level.UNKNOWN.name, exc.message)])
    raise typer.Exit(Level.UNKNOWN) from None


def _health_once(state: State, limits: Thresholds, nagios: bool) -> Health:
    """The first report; a store down or stalled before the checks could start is
    CRITICAL, no store at all (bad configuration) the plugin's UNKNOWN."""
    from regctl.diagnostics import Level
    from regctl.diagnostics.health import HealthProbe

    try:
        budget = state.settings.health_timeout
        return HealthProbe(state.store_within(budget), __version__).check(budget, limits)
    except RegctlError as exc:
        level = Level.CRITICAL if isinstance(exc, StoreUnavailable) else Level.UNKNOWN
        if nagios:
            state.lines([plugin_line(level.name, exc.message)])
        else:
            state.err.print(f"{level.name}: {escape(exc.message)}")
        if state.wants_json():
            state.json({"status": level.name.lower(), "version": __version__, "error": exc.message})
        raise typer.Exit(level) from None


def _show_health(state: State, report: Health, limits: Thresholds, nagios: bool) -> None:
    from regctl.diagnostics import nagios_line

    if nagios:
        state.lines([visible(nagios_line(report, limits))])
    elif state.wants_json():
        state.json(report.data)
    elif state.wants_table:
        state.show(_health_view(report, state))
    else:
        rows = [(c.name, c.level.name.lower(), c.detail) for c in report.checks]
        state.rows(("check", "status", "detail"), rows)


def _health_cells(report: Health) -> list[tuple[str, str]]:
    """The columns of a streamed sample: the same ones whatever the checks found."""
    facts = report.data.get("redis", {})
    total = report.data.get("pending_registrations", {}).get("total")
    problems = [c.name for c in report.checks if c.level.name != "OK"]
    return [
        ("status", report.level.name),
        ("latency_ms", str(facts.get("latency_ms", ""))),
        ("pending", "" if total is None else str(total)),
        ("used_memory", str(facts.get("used_memory", ""))),
        ("problems", ",".join(problems)),
    ]


def _health_view(report: Health, state: State) -> Any:
    from rich.console import Group

    checks = table("CHECK", "STATUS", "DETAIL")
    for c in report.checks:
        level = c.level.name.lower()
        checks.add_row(c.name, f"[{_LEVEL_STYLE[level]}]{level}[/]", escape(c.detail))
    heading = f"[bold]{report.level.name}[/bold] {escape(state.store_description)}"
    parts: list[Any] = [heading, checks]
    view = report.data.get("topology")
    if view is not None:
        parts.append(_nodes_table(view["nodes"]))
    return Group(*parts)


def _nodes_table(nodes: list[dict[str, Any]]) -> Table:
    out = table("NODE", "ROLE", "SLOTS", "MEMORY", "CLIENTS", "LATENCY", "LINK", title="\nnodes")
    for n in nodes:
        link = n.get("link") or n.get("master_link_status") or ""
        cells = (
            n.get("address"),
            n.get("role"),
            n.get("slots"),
            n.get("used_memory_human"),
            n.get("connected_clients"),
            f"{n.get('latency_ms', 0):.2f} ms",
            link,
        )
        out.add_row(*(escape(str("" if c is None else c)) for c in cells))
    return out


def doctor(ctx: typer.Context) -> None:
    """Look for problems: eviction, persistence, memory, TTL-less keys, orphans, ACL, version.

    Exit 1 when anything is found at warning or error level.

    \b
    Example: regctl doctor
    """
    from regctl.diagnostics import doctor as examine

    state: State = ctx.obj
    findings = examine(state.store)
    problems = any(f.severity in ("error", "warning") for f in findings)
    if state.wants_json():
        state.json(
            {
                "ok": not problems,
                "store": state.store_description,
                "findings": [f.__dict__ for f in findings],
            }
        )
    elif state.wants_table:
        if not problems:
            state.say("[green]no problems found[/green]")
        if findings:  # (even under --quiet: they are what doctor is run for)
            state.out.print(_findings_text(findings))
    else:
        state.rows(
            ("severity", "code", "message", "fix"),
            [(f.severity, f.code, f.message, f.fix) for f in findings],
        )
    if problems:
        raise typer.Exit(ExitStatus.REFUSED)


def selftest(ctx: typer.Context) -> None:
    """Run the 8-step end-to-end test in a throwaway namespace (always cleaned up).

    \b
    Example: regctl selftest
    """
    from regctl.diagnostics import selftest as run

    state: State = ctx.obj
    steps = run(state.store, __version__)
    ok = all(s.ok for s in steps)
    if state.wants_json():
        state.json(
            {
                "ok": ok,
                "store": state.store_description,
                "steps": [
                    {"step": s.name, "ok": s.ok, "ms": round(s.ms, 3), "detail": s.detail}
                    for s in steps
                ],
            }
        )
    elif state.wants_table:
        state.show(_steps_table(steps))
    else:
        state.rows(
            ("step", "result", "ms", "detail"),
            [(s.name, "ok" if s.ok else "FAIL", f"{s.ms:.1f}", s.detail) for s in steps],
        )
    if not ok:
        raise typer.Exit(ExitStatus.REFUSED)


def _findings_text(findings: list[Finding]) -> str:
    lines = []
    for f in findings:
        style = {"error": "red", "warning": "yellow"}.get(f.severity, "blue")
        lines.append(f"[{style}]{f.severity}[/] {escape(f.message)}\n  fix: {escape(f.fix)}")
    return "\n".join(lines)


def _steps_table(steps: list[Step]) -> Table:
    rows = table("#", "STEP", "RESULT", "TIME", "DETAIL")
    for i, s in enumerate(steps, 1):
        result = "[green]ok[/green]" if s.ok else "[red]FAIL[/red]"
        rows.add_row(str(i), s.name, result, f"{s.ms:.1f} ms", escape(s.detail))
    return rows


COMMANDS = (health, doctor, selftest)
